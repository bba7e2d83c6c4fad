//! `watchdog`: raises an alert when a device has been silent, or offline, for too long, and
//! (optionally) another when it comes back.
//!
//! Every event of a watched device re-arms its silence timer, `silent_s` ahead; an `offline`
//! event arms its offline timer, `offline_s` ahead, and an `online` event cancels it. When a
//! timer fires, the step replaces the timer's event with an alert, so the rule's later steps
//! and its output see it like any device event, and sends the configured command (a webhook,
//! say). Device events themselves always pass on unchanged.
//!
//! ```toml
//! [[rule]]
//! name = "freezer-watchdog"
//! when = { device = "freezer-*" }
//! commands.via = "ops-webhook"
//!
//! [[rule.step]]
//! plugin = "watchdog"
//! config = { devices = ["freezer-*"], silent_s = 3600, offline_s = 600, recovered = true, command = { name = "alert", params = { team = "kitchen" } } }
//! ```
//!
//! - `devices`: device ids, or patterns of them (`*` any run of characters, `?` any one).
//! - `products`: products whose every device is watched. With neither `devices` nor
//!   `products`, every device the rule passes the step is watched (the rule's `when` chooses).
//! - `silent_s` (> 0): alert `watchdog.silent` when a device sent no event for this long.
//! - `offline_s`: alert `watchdog.offline` when a device's `offline` event was not followed by
//!   an `online` one within this long (`0`: at once). At least one of the two is required.
//! - `recovered` (default `false`): alert `watchdog.recovered` when a device that was alerted
//!   about comes back: any event ends a silence, an `online` event ends an offline spell.
//! - `command`: a command to send with every alert: `name` (required), `via` (default: the
//!   rule's path), `device` and `product` (default: the watched device itself), `params` (a
//!   table, default `{}`). The alert's payload fields are set over `params`, so the receiver
//!   always learns which device and what happened.
//!
//! The alert event keeps the timer event's id, source, vendor, device and time (when the
//! timer was due) and attributes; its kind is `device-event`, its action the alert, it has no
//! properties, and its payload says what happened:
//!
//! ```json
//! {"alert": "watchdog.silent", "device": "freezer-1", "since_ms": 1763884800000, "duration_s": 3600}
//! ```
//!
//! `since_ms` is when the device was last heard from (silent), went offline (offline), or the
//! alert's spell began (recovered); `duration_s` how long the spell had lasted when the alert
//! was raised (for `watchdog.recovered`: its whole length), and a recovered alert names the
//! alert it ends in `recovered_from`. `product` is there when the device has one.
//!
//! Each alert is raised once per spell: a silent device is alerted about again only after it
//! has spoken and fallen silent anew, an offline one after it came online and went offline
//! again (further `offline` events meanwhile change nothing). The silence is measured on the
//! host's clock from when the event was handled, not by the device's own clock, and
//! `since_ms` is worked out from the timer's due time, so after `silent_s` or `offline_s`
//! changes, the first alert's `since_ms` assumes the new length. A recovered alert is raised
//! by a timer due at once, right after the event that ended the spell (which passes on
//! unchanged, as all device events do).
//!
//! Timers are named `silent`, `offline`, `recovered-silent` and `recovered-offline`. A timer
//! event that raises nothing (the device is no longer watched, or its check was taken out of
//! the config) is dropped: it is the step's own business.
//!
//! State: per watched device at most four pending timers, and one key (`alerts/<device>`,
//! a few dozen bytes) while an alert is open or a recovery is due; nothing per event.

use iotrules_plugin_sdk::command::CommandTemplate;
use iotrules_plugin_sdk::prelude::*;
use iotrules_plugin_sdk::select::Devices;
use serde::{Deserialize, Serialize};

/// The action of the alert raised when a device comes back.
const RECOVERED: &str = "watchdog.recovered";

/// The rule step's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    products: Vec<String>,
    #[serde(default)]
    silent_s: Option<u64>,
    #[serde(default)]
    offline_s: Option<u64>,
    #[serde(default)]
    recovered: bool,
    #[serde(default)]
    command: Option<CommandTemplate>,
}

/// The two things the watchdog checks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    Silent,
    Offline,
}

impl Check {
    const ALL: [Check; 2] = [Check::Silent, Check::Offline];

    /// The timer that raises this alert.
    fn timer(self) -> &'static str {
        match self {
            Check::Silent => "silent",
            Check::Offline => "offline",
        }
    }

    /// The timer that raises the recovered alert after this one.
    fn recovered_timer(self) -> &'static str {
        match self {
            Check::Silent => "recovered-silent",
            Check::Offline => "recovered-offline",
        }
    }

    /// The alert's action.
    fn action(self) -> &'static str {
        match self {
            Check::Silent => "watchdog.silent",
            Check::Offline => "watchdog.offline",
        }
    }

    /// Which check a timer belongs to, and whether it is the recovered one.
    fn of_timer(name: &str) -> Option<(Check, bool)> {
        Check::ALL.into_iter().find_map(|check| {
            if name == check.timer() {
                Some((check, false))
            } else if name == check.recovered_timer() {
                Some((check, true))
            } else {
                None
            }
        })
    }
}

/// A spell of silence or offline that was alerted about.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Spell {
    /// When it began.
    since_ms: u64,
    /// When the device came back, once it has and the recovered alert is still to be raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    back_ms: Option<u64>,
}

/// A device's alerted spells, kept while one is open or its recovery is to be alerted.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Alerts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    silent: Option<Spell>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offline: Option<Spell>,
}

impl Alerts {
    fn spell(&mut self, check: Check) -> &mut Option<Spell> {
        match check {
            Check::Silent => &mut self.silent,
            Check::Offline => &mut self.offline,
        }
    }

    /// Whether the alert was raised and the device has not come back since.
    fn is_open(&self, check: Check) -> bool {
        let spell = match check {
            Check::Silent => &self.silent,
            Check::Offline => &self.offline,
        };
        spell.is_some_and(|s| s.back_ms.is_none())
    }
}

/// An alert to raise: what the payload and the command say.
struct Alert<'a> {
    action: &'static str,
    device: &'a Device,
    since_ms: u64,
    duration_s: u64,
    recovered_from: Option<&'static str>,
}

impl Alert<'_> {
    fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("alert".into(), self.action.into());
        fields.insert("device".into(), self.device.id.as_str().into());
        if let Some(product) = &self.device.product {
            fields.insert("product".into(), product.as_str().into());
        }
        fields.insert("since_ms".into(), self.since_ms.into());
        fields.insert("duration_s".into(), self.duration_s.into());
        if let Some(from) = self.recovered_from {
            fields.insert("recovered_from".into(), from.into());
        }
        fields
    }

    /// The timer's event made into the alert.
    fn event(&self, timer: &EventView) -> Event {
        let mut event = timer.to_event();
        event.kind = Kind::DeviceEvent;
        event.action = self.action.to_owned();
        event.properties.clear();
        event.payload = serde_json::Value::Object(self.fields()).to_string();
        event
    }
}

struct Watchdog {
    settings: Settings,
    watched: Devices,
}

/// The state key of a device's alerts.
fn alerts_key(event: &EventView) -> String {
    format!("alerts/{}", event.device_key())
}

impl Watchdog {
    /// The configured length of a check, if it is on.
    fn limit_s(&self, check: Check) -> Option<u64> {
        match check {
            Check::Silent => self.settings.silent_s,
            Check::Offline => self.settings.offline_s,
        }
    }

    /// The configured command, carrying the alert.
    fn command(&self, alert: &Alert) -> Option<Command> {
        let template = self.settings.command.as_ref()?;
        Some(template.command(alert.device, alert.fields()))
    }

    /// The device is back from an alerted spell: note it for the recovered alert, or forget
    /// the spell.
    fn back(
        &self,
        check: Check,
        alerts: &mut Alerts,
        now_ms: u64,
        ctx: &mut Ctx,
    ) -> Result<(), String> {
        if !alerts.is_open(check) {
            return Ok(());
        }
        let spell = alerts.spell(check);
        if self.settings.recovered {
            if let Some(spell) = spell {
                spell.back_ms = Some(now_ms);
            }
            ctx.set_timer(check.recovered_timer(), now_ms)?;
        } else {
            *spell = None;
        }
        Ok(())
    }

    /// An event of a watched device: re-arm, arm or cancel its timers.
    fn seen(&self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        let now_ms = ctx.now_ms();
        if let Some(silent_s) = self.settings.silent_s {
            ctx.set_timer_in(Check::Silent.timer(), silent_s.saturating_mul(1000))?;
        }
        let key = alerts_key(event);
        let before: Alerts = ctx.get_state(&key)?.unwrap_or_default();
        let mut alerts = before.clone();
        self.back(Check::Silent, &mut alerts, now_ms, ctx)?;
        match event.kind() {
            Kind::Offline => {
                let timer = Check::Offline.timer();
                if let Some(offline_s) = self.settings.offline_s
                    && !alerts.is_open(Check::Offline)
                    && ctx.timer(timer).is_none()
                {
                    ctx.set_timer_in(timer, offline_s.saturating_mul(1000))?;
                }
            }
            Kind::Online => {
                ctx.cancel_timer(Check::Offline.timer());
                self.back(Check::Offline, &mut alerts, now_ms, ctx)?;
            }
            _ => {}
        }
        if alerts != before {
            save(ctx, &key, &alerts)?;
        }
        Ok(Outcome::keep())
    }

    /// One of the step's timers fired: raise its alert, if it still has one to raise.
    fn fired(&self, name: &str, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        let device = event.device();
        let Some((check, recovered)) = Check::of_timer(name) else {
            ctx.debug(format_args!(
                "watchdog: {}: timer `{name}` is not one of this plugin's; dropped",
                device.id
            ));
            return Ok(Outcome::drop());
        };
        let key = alerts_key(event);
        let mut alerts: Alerts = ctx.get_state(&key)?.unwrap_or_default();
        let now_ms = ctx.now_ms().max(event.time_ms());
        let alert = if recovered {
            let Some(Spell {
                since_ms,
                back_ms: Some(back_ms),
            }) = alerts.spell(check).take()
            else {
                return Ok(Outcome::drop());
            };
            Alert {
                action: RECOVERED,
                device,
                since_ms,
                duration_s: back_ms.saturating_sub(since_ms) / 1000,
                recovered_from: Some(check.action()),
            }
        } else {
            let Some(limit_s) = self
                .limit_s(check)
                .filter(|_| self.watched.includes(device))
            else {
                ctx.debug(format_args!(
                    "watchdog: {}: `{name}` fired, but the device or the check is no longer configured; dropped",
                    device.id
                ));
                return Ok(Outcome::drop());
            };
            let since_ms = event.time_ms().saturating_sub(limit_s.saturating_mul(1000));
            *alerts.spell(check) = Some(Spell {
                since_ms,
                back_ms: None,
            });
            Alert {
                action: check.action(),
                device,
                since_ms,
                duration_s: now_ms.saturating_sub(since_ms) / 1000,
                recovered_from: None,
            }
        };
        save(ctx, &key, &alerts)?;
        ctx.debug(format_args!(
            "watchdog: {}: {} (since {} ms)",
            device.id, alert.action, alert.since_ms
        ));
        Ok(Outcome::replace(alert.event(event)).with_commands(self.command(&alert)))
    }
}

/// Stores a device's alerts, or removes the key when none is left.
fn save(ctx: &mut Ctx, key: &str, alerts: &Alerts) -> Result<(), String> {
    if *alerts == Alerts::default() {
        ctx.delete_state(key);
        Ok(())
    } else {
        ctx.set_state(key, alerts)
    }
}

impl Plugin for Watchdog {
    fn init(config: &Config) -> Result<Self, String> {
        let mut settings: Settings = config.parse()?;
        if settings.silent_s.is_none() && settings.offline_s.is_none() {
            return Err(
                "config: give `silent_s`, `offline_s` or both: the seconds of silence or offline that raise an alert"
                    .to_owned(),
            );
        }
        if settings.silent_s == Some(0) {
            return Err(
                "config: `silent_s`: must be more than 0 (every device is silent for 0 s)"
                    .to_owned(),
            );
        }
        if let Some(command) = &settings.command {
            command.check("command")?;
        }
        let watched = Devices::new(
            std::mem::take(&mut settings.devices),
            std::mem::take(&mut settings.products),
        );
        Ok(Watchdog { settings, watched })
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        if let Some(name) = event.timer() {
            return self.fired(name, event, ctx);
        }
        if !self.watched.includes(event.device()) {
            return Ok(Outcome::keep());
        }
        self.seen(event, ctx)
    }
}

iotrules_plugin_sdk::export_plugin!(Watchdog);

#[cfg(test)]
mod tests;
