//! The watchdog against the SDK's test host: its timers, alerts, commands and state.

use super::*;
use iotrules_plugin_sdk::testing::{Fired, START_MS, TestHost, event};

/// An hour of silence or five minutes offline raise an alert, through a webhook command.
const CONFIG: &str = r#"{
    "devices": ["freezer-*"],
    "products": ["a1Meter"],
    "silent_s": 3600,
    "offline_s": 300,
    "command": { "name": "alert", "via": "ops-webhook", "device": "ops", "params": { "team": "kitchen" } }
}"#;

struct Rig {
    host: TestHost,
    plugin: Watchdog,
}

impl Rig {
    fn new(config: &str) -> Self {
        let mut host = TestHost::new();
        let plugin = host.init(config).unwrap();
        Rig { host, plugin }
    }

    fn send(&mut self, ev: Event) -> Outcome {
        self.host.handle(&mut self.plugin, &ev).unwrap()
    }

    /// Moves the clock and fires the timers then due.
    fn wait_s(&mut self, seconds: u64) -> Vec<Fired> {
        self.host.advance_ms(seconds * 1000);
        self.host.fire_due(&mut self.plugin)
    }

    /// The names of the device's pending timers.
    fn timers_of(&self, device: &str) -> Vec<String> {
        self.host
            .timers()
            .into_keys()
            .filter(|(d, _)| d == device)
            .map(|(_, name)| name)
            .collect()
    }
}

fn report(device: &str) -> Event {
    event(device).property("temperature", -18.5).build()
}

fn kind(device: &str, kind: Kind) -> Event {
    event(device).kind(kind).build()
}

/// The one timer that fired: its name, and the alert event it was replaced with.
fn alert(fired: &[Fired]) -> (&str, Event, &Outcome) {
    assert_eq!(fired.len(), 1, "one timer fired: {fired:?}");
    let outcome = fired[0].outcome.as_ref().unwrap();
    let event = outcome
        .replacement()
        .expect("an alert replaces the timer event")
        .clone();
    (fired[0].name.as_str(), event, outcome)
}

fn payload(event: &Event) -> serde_json::Value {
    event.payload_json().unwrap()
}

#[test]
fn silence_raises_one_alert_and_every_event_rearms_the_timer() {
    let mut rig = Rig::new(CONFIG);
    assert!(rig.send(report("freezer-1")).is_keep());
    assert!(rig.wait_s(3000).is_empty());
    assert!(rig.send(report("freezer-1")).is_keep());
    assert!(
        rig.wait_s(3599).is_empty(),
        "an hour after the last event, not the first"
    );
    let fired = rig.wait_s(1);
    let (name, alert, _) = alert(&fired);
    assert_eq!(name, "silent");
    assert_eq!(alert.action, "watchdog.silent");
    assert_eq!(
        payload(&alert),
        serde_json::json!({
            "alert": "watchdog.silent",
            "device": "freezer-1",
            "since_ms": START_MS + 3_000_000,
            "duration_s": 3600,
        })
    );
    assert!(rig.wait_s(86_400).is_empty(), "once per silence");
}

#[test]
fn the_alert_is_a_device_event_in_place_of_the_timer_event() {
    let mut rig = Rig::new(CONFIG);
    rig.send(
        event("freezer-1")
            .source("tuya-eu")
            .property("t", 1)
            .build(),
    );
    let fired = rig.wait_s(3600);
    let (_, alert, _) = alert(&fired);
    assert_eq!(alert.kind, Kind::DeviceEvent);
    assert_eq!(alert.device.id, "freezer-1");
    assert_eq!(alert.source, "tuya-eu");
    assert_eq!(
        alert.time_ms,
        START_MS + 3_600_000,
        "when the timer was due"
    );
    assert!(alert.properties.is_empty());
    assert!(
        alert.id.starts_with("timer:"),
        "the timer event's id: {}",
        alert.id
    );
}

#[test]
fn the_command_carries_the_alert_over_the_configured_params() {
    let mut rig = Rig::new(CONFIG);
    rig.send(report("freezer-1"));
    let fired = rig.wait_s(3600);
    let (_, _, outcome) = alert(&fired);
    let [command] = outcome.commands.as_slice() else {
        panic!("one command: {:?}", outcome.commands)
    };
    assert_eq!(command.name, "alert");
    assert_eq!(command.via.as_deref(), Some("ops-webhook"));
    assert_eq!(command.device.id, "ops");
    assert_eq!(
        command.params_json(),
        serde_json::json!({
            "team": "kitchen",
            "alert": "watchdog.silent",
            "device": "freezer-1",
            "since_ms": START_MS,
            "duration_s": 3600,
        })
    );
}

#[test]
fn without_a_command_device_the_command_goes_to_the_watched_device() {
    let config = r#"{"products": ["a1Meter"], "silent_s": 60, "command": {"name": "ping"}}"#;
    let mut rig = Rig::new(config);
    rig.send(
        event("meter-1")
            .vendor("alibaba")
            .product("a1Meter")
            .build(),
    );
    let fired = rig.wait_s(60);
    let (_, alert, outcome) = alert(&fired);
    let command = &outcome.commands[0];
    assert_eq!(
        command.device,
        Device::new("meter-1").with_product("a1Meter")
    );
    assert_eq!(command.via, None, "the rule's default path");
    assert_eq!(payload(&alert)["product"], "a1Meter");
}

#[test]
fn offline_not_followed_by_online_raises_the_offline_alert() {
    let mut rig = Rig::new(CONFIG);
    rig.send(kind("freezer-1", Kind::Offline));
    assert_eq!(rig.timers_of("freezer-1"), ["offline", "silent"]);
    let fired = rig.wait_s(300);
    let (name, alert, _) = alert(&fired);
    assert_eq!(name, "offline");
    assert_eq!(alert.action, "watchdog.offline");
    assert_eq!(payload(&alert)["since_ms"], START_MS);
    assert_eq!(payload(&alert)["duration_s"], 300);
    // Still offline an hour later: the silence alert follows, the offline one is not repeated.
    let fired = rig.wait_s(3300);
    assert_eq!(alert_name(&fired), ["silent"]);
}

fn alert_name(fired: &[Fired]) -> Vec<&str> {
    fired.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn online_cancels_the_offline_timer() {
    let mut rig = Rig::new(CONFIG);
    rig.send(kind("freezer-1", Kind::Offline));
    rig.host.advance_ms(120_000);
    assert!(rig.send(kind("freezer-1", Kind::Online)).is_keep());
    assert_eq!(rig.timers_of("freezer-1"), ["silent"]);
    assert!(rig.wait_s(600).is_empty());
}

#[test]
fn repeated_offline_events_do_not_push_the_alert_back() {
    let mut rig = Rig::new(CONFIG);
    rig.send(kind("freezer-1", Kind::Offline));
    rig.host.advance_ms(200_000);
    rig.send(kind("freezer-1", Kind::Offline));
    let fired = rig.wait_s(100);
    assert_eq!(alert_name(&fired), ["offline"]);
    assert_eq!(payload(&alert(&fired).1)["since_ms"], START_MS);
    // Another offline while the alert is open arms nothing.
    rig.send(kind("freezer-1", Kind::Offline));
    assert_eq!(rig.timers_of("freezer-1"), ["silent"]);
}

#[test]
fn offline_s_zero_alerts_right_after_the_offline_event() {
    let mut rig = Rig::new(r#"{"offline_s": 0}"#);
    assert!(rig.send(kind("gw-1", Kind::Offline)).is_keep());
    assert_eq!(alert_name(&rig.wait_s(0)), ["offline"]);
}

#[test]
fn recovered_alerts_follow_the_event_that_ends_a_silence() {
    let config = r#"{"devices": ["freezer-1"], "silent_s": 600, "recovered": true, "command": {"name": "alert"}}"#;
    let mut rig = Rig::new(config);
    rig.send(report("freezer-1"));
    assert_eq!(alert_name(&rig.wait_s(600)), ["silent"]);
    rig.host.advance_ms(900_000);
    // The device's own event passes on unchanged; the recovery is due at once after it.
    let out = rig.send(report("freezer-1"));
    assert!(out.is_keep());
    assert!(out.commands.is_empty());
    let fired = rig.wait_s(0);
    let (name, alert, outcome) = alert(&fired);
    assert_eq!(name, "recovered-silent");
    assert_eq!(alert.action, "watchdog.recovered");
    assert_eq!(
        payload(&alert),
        serde_json::json!({
            "alert": "watchdog.recovered",
            "device": "freezer-1",
            "since_ms": START_MS,
            "duration_s": 1500,
            "recovered_from": "watchdog.silent",
        })
    );
    assert_eq!(
        outcome.commands[0].params_json()["alert"],
        "watchdog.recovered"
    );
    assert!(rig.host.state_entries().is_empty(), "nothing left open");
    assert_eq!(rig.timers_of("freezer-1"), ["silent"], "watching again");
}

#[test]
fn only_online_ends_an_offline_spell() {
    let config = r#"{"offline_s": 60, "recovered": true}"#;
    let mut rig = Rig::new(config);
    rig.send(kind("gw-1", Kind::Offline));
    assert_eq!(alert_name(&rig.wait_s(60)), ["offline"]);
    rig.host.advance_ms(60_000);
    rig.send(report("gw-1"));
    assert!(rig.wait_s(0).is_empty(), "a report is not an online event");
    rig.send(kind("gw-1", Kind::Online));
    let fired = rig.wait_s(0);
    let (name, alert, _) = alert(&fired);
    assert_eq!(name, "recovered-offline");
    assert_eq!(payload(&alert)["recovered_from"], "watchdog.offline");
    assert_eq!(
        payload(&alert)["duration_s"],
        120,
        "offline at 0 s, online at 120 s"
    );
}

#[test]
fn without_recovered_coming_back_forgets_the_spell_and_rearms() {
    let mut rig = Rig::new(CONFIG);
    rig.send(report("freezer-1"));
    rig.wait_s(3600);
    assert_eq!(rig.host.state_entries().len(), 1, "the open alert");
    rig.host.advance_ms(10_000);
    assert!(rig.send(report("freezer-1")).is_keep());
    assert!(rig.host.state_entries().is_empty());
    assert_eq!(rig.timers_of("freezer-1"), ["silent"]);
    assert_eq!(
        alert_name(&rig.wait_s(3600)),
        ["silent"],
        "a new silence, a new alert"
    );
}

#[test]
fn devices_not_watched_pass_on_without_timers() {
    let mut rig = Rig::new(CONFIG);
    assert!(rig.send(report("fridge-1")).is_keep());
    assert!(rig.send(event("m").product("other").build()).is_keep());
    assert!(rig.host.timers().is_empty());
    assert!(rig.send(event("m").product("a1Meter").build()).is_keep());
    assert_eq!(rig.timers_of("m"), ["silent"]);
}

#[test]
fn devices_are_watched_apart() {
    let mut rig = Rig::new(CONFIG);
    rig.send(report("freezer-1"));
    rig.host.advance_ms(1_800_000);
    rig.send(report("freezer-2"));
    let fired = rig.wait_s(1_800);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].device, "freezer-1");
    let fired = rig.wait_s(1_800);
    assert_eq!(fired[0].device, "freezer-2");
}

#[test]
fn timers_that_raise_nothing_are_dropped() {
    let mut rig = Rig::new(CONFIG);
    rig.send(report("freezer-1"));
    // The config changes while the timer is pending: the device is no longer watched.
    rig.plugin = rig
        .host
        .init(r#"{"devices": ["other"], "silent_s": 3600}"#)
        .unwrap();
    let fired = rig.wait_s(3600);
    assert!(fired[0].outcome.as_ref().unwrap().is_drop());
    assert!(rig.host.state_entries().is_empty());
    // A timer of another name (an older version's) too.
    let stray = iotrules_plugin_sdk::testing::timer_event(&report("other"), "stray", START_MS);
    assert!(rig.host.handle(&mut rig.plugin, &stray).unwrap().is_drop());
}

#[test]
fn a_refused_timer_fails_the_event_and_leaves_nothing() {
    let mut rig = Rig::new(CONFIG);
    rig.host.refuse_state_writes("quota");
    let err = rig
        .host
        .handle(&mut rig.plugin, &report("freezer-1"))
        .unwrap_err();
    assert_eq!(err, "timer `silent`: the host refused it: quota");
    assert!(rig.host.timers().is_empty());
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let refuse = |config: &str| Watchdog::init(&Config::new(config)).err().unwrap();
    assert!(refuse("{}").starts_with("config: give `silent_s`, `offline_s` or both"));
    assert!(refuse(r#"{"silent_s": 0}"#).starts_with("config: `silent_s`: must be more than 0"));
    assert_eq!(
        refuse(r#"{"silent_s": 60, "command": {"via": "x"}}"#),
        "config: `command`: missing field `name`"
    );
    assert!(
        refuse(r#"{"silent_s": 60, "command": {"name": "a", "params": [1]}}"#)
            .starts_with("config: `command.params`: invalid type: sequence")
    );
    assert!(
        refuse(r#"{"silent_s": 60, "command": {"name": "a", "product": "p"}}"#)
            .starts_with("config: `command.product`: goes with `command.device`")
    );
    assert!(
        refuse(r#"{"silent_s": 60, "silence_s": 5}"#)
            .starts_with("config: `silence_s`: unknown field `silence_s`")
    );
}
