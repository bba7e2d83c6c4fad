//! `deadband`: a filter that lets a property report through only when a watched number has
//! moved by more than a threshold since the last report it let through for that device.
//!
//! Sensors such as Tuya's `va_temperature` report every few seconds with changes in the last
//! digit; downstream rules and stores only care when the value really moves. The comparison is
//! against the last *kept* value, not the last seen one, so a slow drift is still reported once
//! it adds up. What was kept is remembered per device in host state, so it survives restarts
//! and reloads.
//!
//! ```toml
//! [[rule.step]]
//! plugin = "deadband"
//! config = { datapoints = ["temperature", "va_temperature"], threshold = 0.5, thresholds = { va_temperature = 5 }, min_interval_s = 10, max_interval_s = 900 }
//! ```
//!
//! - `datapoints` (required): the property codes to watch. An event is kept when any of them
//!   moved by more than its threshold, or has not been seen for the device before.
//! - `threshold` (required, ≥ 0): in the datapoint's own unit.
//! - `thresholds`: a different threshold for some of the datapoints, by code, for those in
//!   another unit (Tuya's `va_temperature` is in tenths of a degree).
//! - `min_interval_s`: never keep two reports of a device closer than this (a change is then
//!   reported by the first report after the interval that still shows it).
//! - `max_interval_s`: keep a report anyway when the last kept one is this old (a heartbeat).
//! - `unmatched`: `"keep"` (default) or `"drop"`: what to do with events that are not property
//!   reports or carry none of the datapoints as a number.
//!
//! Time is the host's clock, not the event's: devices with unset clocks report 1970.

use std::collections::BTreeMap;

use iotrules_plugin_sdk::prelude::*;
use serde::{Deserialize, Serialize};

/// The rule step's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    datapoints: Vec<String>,
    threshold: f64,
    #[serde(default)]
    thresholds: BTreeMap<String, f64>,
    #[serde(default)]
    min_interval_s: Option<u64>,
    #[serde(default)]
    max_interval_s: Option<u64>,
    #[serde(default)]
    unmatched: Unmatched,
}

/// What becomes of events the filter does not apply to.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Unmatched {
    #[default]
    Keep,
    Drop,
}

/// What is remembered per device: the values of the last kept report, and when it was kept.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    at_ms: u64,
    values: BTreeMap<String, f64>,
}

struct Deadband {
    settings: Settings,
}

impl Deadband {
    fn unmatched(&self) -> Outcome {
        match self.settings.unmatched {
            Unmatched::Keep => Outcome::keep(),
            Unmatched::Drop => Outcome::drop(),
        }
    }

    fn threshold(&self, code: &str) -> f64 {
        self.settings
            .thresholds
            .get(code)
            .copied()
            .unwrap_or(self.settings.threshold)
    }

    /// Why a report should be kept, or `None` to drop it.
    fn reason_to_keep(&self, readings: &[(&str, f64)], last: &Kept, now_ms: u64) -> Option<String> {
        let since_s = now_ms.saturating_sub(last.at_ms) / 1000;
        if self
            .settings
            .min_interval_s
            .is_some_and(|min| since_s < min)
        {
            return None;
        }
        if self
            .settings
            .max_interval_s
            .is_some_and(|max| since_s >= max)
        {
            return Some(format!("last kept {since_s} s ago"));
        }
        readings
            .iter()
            .find_map(|&(code, value)| match last.values.get(code) {
                None => Some(format!("first {code}")),
                Some(&before) if (value - before).abs() > self.threshold(code) => {
                    Some(format!("{code} moved from {before} to {value}"))
                }
                Some(_) => None,
            })
    }
}

impl Plugin for Deadband {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.datapoints.is_empty() {
            return Err("config: `datapoints`: name at least one datapoint to watch".to_owned());
        }
        check_threshold("threshold", settings.threshold)?;
        for (code, &threshold) in &settings.thresholds {
            if !settings.datapoints.contains(code) {
                return Err(format!(
                    "config: `thresholds.{code}`: `{code}` is not one of the `datapoints`"
                ));
            }
            check_threshold(&format!("thresholds.{code}"), threshold)?;
        }
        if let (Some(min), Some(max)) = (settings.min_interval_s, settings.max_interval_s)
            && max <= min
        {
            return Err(format!(
                "config: `max_interval_s` ({max}) must be longer than `min_interval_s` ({min})"
            ));
        }
        Ok(Deadband { settings })
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        if event.kind() != Kind::Properties {
            return Ok(self.unmatched());
        }
        let readings: Vec<(&str, f64)> = self
            .settings
            .datapoints
            .iter()
            .filter_map(|code| Some((code.as_str(), event.property_f64(code)?)))
            .collect();
        if readings.is_empty() {
            return Ok(self.unmatched());
        }

        let device = event.device_key();
        let key = format!("device/{device}");
        let now_ms = ctx.now_ms();
        let mut last = ctx.get_state::<Kept>(&key)?.unwrap_or_default();
        let first = last.values.is_empty();
        let reason = if first {
            Some("first report".to_owned())
        } else {
            self.reason_to_keep(&readings, &last, now_ms)
        };
        let Some(reason) = reason else {
            ctx.debug(format_args!(
                "deadband: {device}: dropped, no change beyond the threshold"
            ));
            return Ok(Outcome::drop());
        };

        ctx.debug(format_args!("deadband: {device}: kept, {reason}"));
        last.at_ms = now_ms;
        for (code, value) in readings {
            last.values.insert(code.to_owned(), value);
        }
        ctx.set_state(&key, &last)?;
        Ok(Outcome::keep())
    }
}

fn check_threshold(field: &str, threshold: f64) -> Result<(), String> {
    if threshold.is_finite() && threshold >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "config: `{field}`: must be a number of at least 0, not {threshold}"
        ))
    }
}

iotrules_plugin_sdk::export_plugin!(Deadband);

#[cfg(test)]
mod tests {
    use super::*;
    use iotrules_plugin_sdk::testing::{TestHost, event};

    const CONFIG: &str = r#"{
        "datapoints": ["temperature", "va_temperature"],
        "threshold": 0.5,
        "thresholds": {"va_temperature": 5}
    }"#;

    fn temperature(device: &str, value: f64) -> Event {
        event(device).property("temperature", value).build()
    }

    /// Runs the plugin over a device's readings and says which were kept.
    fn kept(host: &mut TestHost, plugin: &mut Deadband, readings: &[f64]) -> Vec<bool> {
        readings
            .iter()
            .map(|&t| {
                let out = host.handle(plugin, &temperature("d1", t)).unwrap();
                assert!(out.commands.is_empty());
                out.is_keep()
            })
            .collect()
    }

    #[test]
    fn first_report_is_kept_then_small_changes_are_dropped() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        assert_eq!(
            kept(&mut host, &mut plugin, &[21.0, 21.2, 20.6, 21.6, 21.6]),
            [true, false, false, true, false]
        );
    }

    #[test]
    fn a_change_of_exactly_the_threshold_is_dropped() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        assert_eq!(
            kept(&mut host, &mut plugin, &[20.0, 20.5, 19.5]),
            [true, false, false]
        );
    }

    #[test]
    fn slow_drift_is_reported_once_it_adds_up() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        // Each step is 0.3, under the threshold, but 20.0 → 20.6 is over it.
        assert_eq!(
            kept(&mut host, &mut plugin, &[20.0, 20.3, 20.6, 20.9, 21.2]),
            [true, false, true, false, true]
        );
    }

    #[test]
    fn devices_are_tracked_separately() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        assert!(
            host.handle(&mut plugin, &temperature("a", 20.0))
                .unwrap()
                .is_keep()
        );
        assert!(
            host.handle(&mut plugin, &temperature("b", 20.1))
                .unwrap()
                .is_keep()
        );
        assert!(
            host.handle(&mut plugin, &temperature("a", 20.1))
                .unwrap()
                .is_drop()
        );
        // Alibaba device names are unique only within a product.
        let ali = |product| {
            event("lamp")
                .vendor("alibaba")
                .product(product)
                .property("temperature", 20.0)
                .build()
        };
        assert!(host.handle(&mut plugin, &ali("p1")).unwrap().is_keep());
        assert!(host.handle(&mut plugin, &ali("p2")).unwrap().is_keep());
        assert!(host.handle(&mut plugin, &ali("p1")).unwrap().is_drop());
    }

    #[test]
    fn integer_tenths_use_their_own_threshold() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        let tenths = |v: i64| event("d").property("va_temperature", v).build();
        assert!(host.handle(&mut plugin, &tenths(235)).unwrap().is_keep());
        assert!(host.handle(&mut plugin, &tenths(239)).unwrap().is_drop());
        assert!(host.handle(&mut plugin, &tenths(241)).unwrap().is_keep());
    }

    #[test]
    fn any_watched_datapoint_moving_keeps_the_report() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        let both = |t: f64, va: i64| {
            event("d")
                .property("temperature", t)
                .property("va_temperature", va)
                .build()
        };
        assert!(
            host.handle(&mut plugin, &both(20.0, 200))
                .unwrap()
                .is_keep()
        );
        assert!(
            host.handle(&mut plugin, &both(20.1, 204))
                .unwrap()
                .is_drop()
        );
        assert!(
            host.handle(&mut plugin, &both(20.1, 206))
                .unwrap()
                .is_keep()
        );
        assert!(
            host.handle(&mut plugin, &both(20.7, 206))
                .unwrap()
                .is_keep()
        );
    }

    #[test]
    fn min_interval_holds_back_changes_until_it_has_passed() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host
            .init(r#"{"datapoints": ["temperature"], "threshold": 0.5, "min_interval_s": 60}"#)
            .unwrap();
        assert!(
            host.handle(&mut plugin, &temperature("d", 20.0))
                .unwrap()
                .is_keep()
        );
        host.advance_ms(30_000);
        assert!(
            host.handle(&mut plugin, &temperature("d", 25.0))
                .unwrap()
                .is_drop()
        );
        host.advance_ms(30_000);
        assert!(
            host.handle(&mut plugin, &temperature("d", 25.0))
                .unwrap()
                .is_keep()
        );
    }

    #[test]
    fn max_interval_keeps_an_unchanged_heartbeat() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host
            .init(r#"{"datapoints": ["temperature"], "threshold": 0.5, "max_interval_s": 900}"#)
            .unwrap();
        assert!(
            host.handle(&mut plugin, &temperature("d", 20.0))
                .unwrap()
                .is_keep()
        );
        host.advance_ms(899_000);
        assert!(
            host.handle(&mut plugin, &temperature("d", 20.0))
                .unwrap()
                .is_drop()
        );
        host.advance_ms(1_000);
        assert!(
            host.handle(&mut plugin, &temperature("d", 20.0))
                .unwrap()
                .is_keep()
        );
        host.advance_ms(1_000);
        assert!(
            host.handle(&mut plugin, &temperature("d", 20.0))
                .unwrap()
                .is_drop()
        );
    }

    #[test]
    fn what_was_kept_survives_a_new_instance() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        assert!(
            host.handle(&mut plugin, &temperature("d", 20.0))
                .unwrap()
                .is_keep()
        );
        drop(plugin);
        let mut restarted: Deadband = host.init(CONFIG).unwrap();
        assert!(
            host.handle(&mut restarted, &temperature("d", 20.2))
                .unwrap()
                .is_drop()
        );
    }

    #[test]
    fn other_events_pass_or_drop_as_configured() {
        let mut host = TestHost::new();
        let online = event("d").kind(Kind::Online).build();
        let humidity = event("d").property("humidity", 40).build();
        let text = event("d").property("temperature", "n/a").build();

        let mut passing: Deadband = host.init(CONFIG).unwrap();
        for ev in [&online, &humidity, &text] {
            assert!(host.handle(&mut passing, ev).unwrap().is_keep(), "{ev:?}");
        }
        let mut strict: Deadband = host
            .init(r#"{"datapoints": ["temperature"], "threshold": 1, "unmatched": "drop"}"#)
            .unwrap();
        for ev in [&online, &humidity, &text] {
            assert!(host.handle(&mut strict, ev).unwrap().is_drop(), "{ev:?}");
        }
        assert!(host.state_entries().is_empty());
    }

    #[test]
    fn decisions_are_logged_at_debug() {
        let mut host = TestHost::new();
        let mut plugin: Deadband = host.init(CONFIG).unwrap();
        host.handle(&mut plugin, &temperature("d", 20.0)).unwrap();
        host.handle(&mut plugin, &temperature("d", 21.0)).unwrap();
        assert!(host.logged(Level::Debug, "d: kept, temperature moved from 20 to 21"));
        assert!(host.logs().iter().all(|(level, _)| *level == Level::Debug));
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let refuse = |config: &str| Deadband::init(&Config::new(config)).err().unwrap();
        assert_eq!(
            refuse(r#"{"datapoints": ["t"]}"#),
            "config: missing field `threshold`"
        );
        assert_eq!(
            refuse(r#"{"datapoints": [], "threshold": 1}"#),
            "config: `datapoints`: name at least one datapoint to watch"
        );
        assert_eq!(
            refuse(r#"{"datapoints": ["t"], "threshold": -1}"#),
            "config: `threshold`: must be a number of at least 0, not -1"
        );
        assert_eq!(
            refuse(r#"{"datapoints": ["t"], "threshold": 1, "thresholds": {"u": 1}}"#),
            "config: `thresholds.u`: `u` is not one of the `datapoints`"
        );
        assert_eq!(
            refuse(r#"{"datapoints": ["t"], "threshold": 1, "thresholds": {"t": -2}}"#),
            "config: `thresholds.t`: must be a number of at least 0, not -2"
        );
        assert_eq!(
            refuse(
                r#"{"datapoints": ["t"], "threshold": 1, "min_interval_s": 60, "max_interval_s": 60}"#
            ),
            "config: `max_interval_s` (60) must be longer than `min_interval_s` (60)"
        );
        assert!(
            refuse(r#"{"datapoints": ["t"], "threshold": 1, "unmatched": "pass"}"#)
                .starts_with("config: `unmatched`: unknown variant `pass`")
        );
        assert!(
            refuse(r#"{"datapoint": ["t"], "threshold": 1}"#)
                .starts_with("config: `datapoint`: unknown field `datapoint`")
        );
    }
}
