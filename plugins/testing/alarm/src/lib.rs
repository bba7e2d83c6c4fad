//! For the host's timer tests: sets, cancels and answers timers as its config says, and
//! reports each event and each firing as a command, so a test sees what ran and in what order.
//!
//! Config (all optional):
//! - `name` (default `alarm`): the timer's name.
//! - `delay_ms` (default 0): the timer is set this long after the host's clock.
//! - `set_on_seq`: set the timer on the event whose `seq` property is this; without it, every
//!   event that is not a timer sets (re-arms) it.
//! - `cancel_on_seq`: cancel it on the event whose `seq` is this.
//! - `fail_after_set_on_seq`: set the timer, then fail the call, on the event whose `seq` is
//!   this (a failed call keeps no timer).
//! - `fail_on_timer` (default false): fail the call the timer makes.
//! - `repeat` (default 0): set the timer again, `delay_ms` after it was due, this many times.
//!
//! Commands, through the rule's path:
//! - every event: `seen` with `{"seq": N}` (its `seq` property), and the device's last `seq`
//!   is kept in state;
//! - every firing: `fired` with `{"seq": S, "timer": name, "due": ms, "count": C}`, S being
//!   the last `seq` the device's events had when the timer fired and C how many times it
//!   fired for the device (kept in state). The verdict replaces the timer event with one of
//!   attribute `alarm-count` = C.

use iotrules_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_name")]
    name: String,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    set_on_seq: Option<i64>,
    #[serde(default)]
    cancel_on_seq: Option<i64>,
    #[serde(default)]
    fail_after_set_on_seq: Option<i64>,
    #[serde(default)]
    fail_on_timer: bool,
    #[serde(default)]
    repeat: u64,
}

fn default_name() -> String {
    "alarm".to_owned()
}

struct Alarm(Settings);

impl Plugin for Alarm {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Alarm(config.parse()?))
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        let settings = &self.0;
        let device = event.device().id.clone();
        let last_key = format!("last:{device}");
        if let Some(name) = event.timer() {
            let count_key = format!("count:{device}:{name}");
            let count = ctx.get_state::<u64>(&count_key)?.unwrap_or(0) + 1;
            ctx.set_state(&count_key, &count)?;
            if settings.fail_on_timer {
                return Err(format!("asked to fail on timer {name}"));
            }
            if count <= settings.repeat {
                ctx.set_timer(name, event.time_ms() + settings.delay_ms)?;
            }
            let last = ctx.get_state::<i64>(&last_key)?.unwrap_or(0);
            let params = serde_json::json!({
                "seq": last, "timer": name, "due": event.time_ms(), "count": count,
            });
            let command = Command {
                via: None,
                device: event.device().clone(),
                name: "fired".to_owned(),
                params: params.to_string(),
                reply_to: None,
            };
            let changes = Changes::new().set_attribute(event, "alarm-count", count.to_string());
            return Ok(Outcome::update(changes).with_command(command));
        }
        let seq = event.property_i64("seq").unwrap_or(0);
        ctx.set_state(&last_key, &seq)?;
        let due = ctx.now_ms() + settings.delay_ms;
        if settings.set_on_seq.is_none_or(|on| on == seq) {
            ctx.set_timer(&settings.name, due)?;
        }
        if settings.cancel_on_seq == Some(seq) {
            ctx.cancel_timer(&settings.name);
        }
        if settings.fail_after_set_on_seq == Some(seq) {
            ctx.set_timer(&settings.name, due)?;
            return Err("asked to fail after setting the timer".to_owned());
        }
        let command = Command {
            via: None,
            device: event.device().clone(),
            name: "seen".to_owned(),
            params: serde_json::json!({ "seq": seq }).to_string(),
            reply_to: None,
        };
        Ok(Outcome::keep().with_command(command))
    }
}

iotrules_plugin_sdk::export_plugin!(Alarm);
