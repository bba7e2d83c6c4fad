//! The window step against the SDK's test host: its timers, emitted events and state.

use super::*;
use iotrules_plugin_sdk::testing::{Fired, START_MS, TestHost, event};

/// The test host's clock starts at midnight, so on a window boundary.
const MIN: u64 = 60_000;

const FIVE_MINUTES: &str = r#"{
    "properties": ["power_w"],
    "size_s": 300,
    "aggregates": ["avg", "min", "max", "count", "last"]
}"#;

const FREEZER: &str = r#"{
    "devices": ["freezer-*"],
    "held": { "property": "temperature", "above": -10, "for_s": 600 }
}"#;

struct Rig {
    host: TestHost,
    plugin: Window,
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

    /// Moves the clock to `ms` after the start and fires the timers then due.
    fn at(&mut self, ms: u64) -> Vec<Fired> {
        self.host.set_now_ms(START_MS + ms);
        self.host.fire_due(&mut self.plugin)
    }

    /// Sends a report `ms` after the start (firing what is due first, as the host does).
    fn report_at(&mut self, ms: u64, ev: Event) -> Outcome {
        assert!(self.at(ms).is_empty(), "no timer due before this report");
        self.send(ev)
    }

    fn timer_of(&self, device: &str, name: &str) -> Option<u64> {
        self.host
            .timers()
            .get(&(device.to_owned(), name.to_owned()))
            .map(|at| at - START_MS)
    }
}

fn power(device: &str, watts: f64) -> Event {
    event(device).property("power_w", watts).build()
}

fn temperature(device: &str, celsius: f64) -> Event {
    event(device).property("temperature", celsius).build()
}

/// The event the one timer that fired was replaced with, and the outcome.
fn emitted(fired: &[Fired]) -> (Event, &Outcome) {
    assert_eq!(fired.len(), 1, "one timer fired: {fired:?}");
    let outcome = fired[0].outcome.as_ref().unwrap();
    let event = outcome
        .replacement()
        .expect("the step replaces its timer's event")
        .clone();
    (event, outcome)
}

fn properties(event: &Event) -> Vec<(&str, Value)> {
    event
        .properties
        .iter()
        .map(|p| (p.code.as_str(), p.value.clone()))
        .collect()
}

#[test]
fn a_tumbling_window_closes_at_its_aligned_end_with_every_aggregate() {
    let mut rig = Rig::new(FIVE_MINUTES);
    assert!(rig.report_at(30_000, power("meter-1", 100.0)).is_keep());
    assert_eq!(
        rig.timer_of("meter-1", "window"),
        Some(5 * MIN),
        "aligned, not 5 min after"
    );
    rig.report_at(90_000, power("meter-1", 300.0));
    rig.report_at(4 * MIN, power("meter-1", 200.0));
    assert!(rig.at(5 * MIN - 1).is_empty());
    let fired = rig.at(5 * MIN);
    assert_eq!(fired[0].name, "window");
    let (window, _) = emitted(&fired);
    assert_eq!(window.kind, Kind::Properties);
    assert_eq!(window.action, "window");
    assert_eq!(window.device.id, "meter-1");
    assert_eq!(window.time_ms, START_MS + 5 * MIN);
    assert_eq!(
        properties(&window),
        [
            ("power_w_avg_5m", Value::Float(200.0)),
            ("power_w_min_5m", Value::Float(100.0)),
            ("power_w_max_5m", Value::Float(300.0)),
            ("power_w_count_5m", Value::Integer(3)),
            ("power_w_last_5m", Value::Float(200.0)),
        ]
    );
    assert_eq!(
        window.payload_json().unwrap(),
        serde_json::json!({
            "device": "meter-1",
            "start_ms": START_MS,
            "end_ms": START_MS + 5 * MIN,
            "values": {
                "power_w_avg_5m": 200.0, "power_w_min_5m": 100.0, "power_w_max_5m": 300.0,
                "power_w_count_5m": 3, "power_w_last_5m": 200.0,
            },
        })
    );
    assert!(rig.host.timers().is_empty(), "no samples, no next window");
    assert!(
        rig.host.state_entries().is_empty(),
        "nothing kept between windows"
    );
}

#[test]
fn the_next_sample_opens_the_next_window() {
    let mut rig = Rig::new(r#"{"properties": ["power_w"], "size_s": 300}"#);
    rig.report_at(MIN, power("meter-1", 100.0));
    emitted(&rig.at(5 * MIN));
    assert!(rig.at(20 * MIN).is_empty(), "quiet windows emit nothing");
    rig.send(power("meter-1", 50.0));
    assert_eq!(rig.timer_of("meter-1", "window"), Some(25 * MIN));
    let (window, _) = emitted(&rig.at(25 * MIN));
    assert_eq!(
        properties(&window),
        [("power_w_avg_5m", Value::Float(50.0))]
    );
}

#[test]
fn events_in_an_open_window_pass_unless_pass_is_false() {
    let mut rig = Rig::new(r#"{"properties": ["power_w"], "size_s": 300, "pass": false}"#);
    assert!(rig.send(power("meter-1", 1.0)).is_drop());
    assert!(
        rig.send(event("meter-1").property("voltage", 230).build())
            .is_keep(),
        "not a sample: passes"
    );
    assert!(
        rig.send(event("meter-1").property("power_w", "high").build())
            .is_keep()
    );
    let mut rig = Rig::new(FIVE_MINUTES);
    let report = power("meter-1", 1.0);
    assert!(rig.send(report).is_keep());
}

#[test]
fn sliding_windows_hop_and_stop_when_their_samples_age_out() {
    let config = r#"{"properties": ["power_w"], "size_s": 300, "every_s": 60, "aggregates": ["avg", "count"]}"#;
    let mut rig = Rig::new(config);
    rig.report_at(30_000, power("meter-1", 100.0));
    assert_eq!(
        rig.timer_of("meter-1", "window"),
        Some(MIN),
        "every hop closes a window"
    );
    let (first, _) = emitted(&rig.at(MIN));
    assert_eq!(
        first.payload_json().unwrap()["start_ms"],
        START_MS - 4 * MIN
    );
    assert_eq!(
        properties(&first),
        [
            ("power_w_avg_5m", Value::Float(100.0)),
            ("power_w_count_5m", Value::Integer(1))
        ]
    );
    rig.send(power("meter-1", 200.0));
    let (second, _) = emitted(&rig.at(2 * MIN));
    assert_eq!(
        properties(&second),
        [
            ("power_w_avg_5m", Value::Float(150.0)),
            ("power_w_count_5m", Value::Integer(2))
        ]
    );
    // Windows ending at 3, 4 and 5 min still hold both samples; the one at 6 min only the
    // second; after that none.
    for minute in 3..=5 {
        let (window, _) = emitted(&rig.at(minute * MIN));
        assert_eq!(
            window.property_i64("power_w_count_5m"),
            Some(2),
            "at {minute} min"
        );
    }
    let (last, _) = emitted(&rig.at(6 * MIN));
    assert_eq!(last.property_f64("power_w_avg_5m"), Some(200.0));
    assert!(rig.at(60 * MIN).is_empty());
    assert!(rig.host.state_entries().is_empty());
}

#[test]
fn a_devices_state_stays_within_its_bucket_bound() {
    let config = r#"{"properties": ["power_w"], "size_s": 300, "every_s": 60}"#;
    let mut rig = Rig::new(config);
    for second in (0..3600).step_by(7) {
        rig.host.set_now_ms(START_MS + second * 1000);
        rig.host.fire_due(&mut rig.plugin);
        rig.send(power("meter-1", 1.0));
        let buckets: Vec<Bucket> = rig.host.state("window/meter-1").unwrap();
        assert!(
            buckets.len() <= 6,
            "{} buckets at {second} s",
            buckets.len()
        );
    }
}

#[test]
fn windows_closed_late_are_emitted_one_by_one_in_order() {
    let mut rig = Rig::new(r#"{"properties": ["power_w"], "size_s": 300}"#);
    rig.send(power("meter-1", 10.0));
    // The host was down over the window's end; a report reaches the step first.
    rig.host.set_now_ms(START_MS + 7 * MIN);
    rig.send(power("meter-1", 20.0));
    let fired = rig.host.fire_due(&mut rig.plugin);
    assert_eq!(fired.len(), 1, "the second window is still open");
    let (first, _) = emitted(&fired);
    assert_eq!(first.property_f64("power_w_avg_5m"), Some(10.0));
    let (second, _) = emitted(&rig.at(10 * MIN));
    assert_eq!(second.property_f64("power_w_avg_5m"), Some(20.0));
}

#[test]
fn output_names_by_aggregate_and_by_property() {
    let config = r#"{
        "properties": ["power_w", "voltage"],
        "size_s": 3600,
        "aggregates": ["avg", "max"],
        "output": { "avg": "avg_1h", "power_w.avg": "power_avg_1h" }
    }"#;
    let mut rig = Rig::new(config);
    rig.send(
        event("meter-1")
            .property("power_w", 100)
            .property("voltage", 230)
            .build(),
    );
    let (window, _) = emitted(&rig.at(60 * MIN));
    let names: Vec<&str> = window.properties.iter().map(|p| p.code.as_str()).collect();
    assert_eq!(
        names,
        ["power_avg_1h", "power_w_max_1h", "avg_1h", "voltage_max_1h"]
    );
}

#[test]
fn devices_are_windowed_apart_and_only_those_selected() {
    let config = r#"{"products": ["meter"], "properties": ["power_w"], "size_s": 300}"#;
    let mut rig = Rig::new(config);
    let of = |id: &str, product: &str, watts: f64| {
        event(id)
            .product(product)
            .property("power_w", watts)
            .build()
    };
    rig.send(of("m1", "meter", 1.0));
    rig.send(of("m2", "meter", 3.0));
    assert!(rig.send(of("plug", "socket", 5.0)).is_keep());
    let fired = rig.at(5 * MIN);
    let by_device: Vec<(&str, Option<f64>)> = fired
        .iter()
        .map(|f| {
            let window = f.outcome.as_ref().unwrap().replacement().unwrap();
            (f.device.as_str(), window.property_f64("power_w_avg_5m"))
        })
        .collect();
    assert_eq!(by_device, [("m1", Some(1.0)), ("m2", Some(3.0))]);
}

#[test]
fn the_command_carries_the_window() {
    let config = r#"{
        "properties": ["power_w"], "size_s": 300,
        "command": { "name": "report", "via": "ops-webhook", "device": "dashboard", "params": { "unit": "W" } }
    }"#;
    let mut rig = Rig::new(config);
    rig.send(power("meter-1", 42.0));
    let fired = rig.at(5 * MIN);
    let (_, outcome) = emitted(&fired);
    let command = &outcome.commands[0];
    assert_eq!(
        (command.name.as_str(), command.device.id.as_str()),
        ("report", "dashboard")
    );
    assert_eq!(command.via.as_deref(), Some("ops-webhook"));
    assert_eq!(
        command.params_json(),
        serde_json::json!({
            "unit": "W", "device": "meter-1", "start_ms": START_MS, "end_ms": START_MS + 5 * MIN,
            "values": { "power_w_avg_5m": 42.0 },
        })
    );
}

#[test]
fn a_condition_held_for_its_time_is_emitted_once() {
    let mut rig = Rig::new(FREEZER);
    assert!(rig.send(temperature("freezer-1", -18.0)).is_keep());
    assert!(rig.host.timers().is_empty());
    rig.host.set_now_ms(START_MS + MIN);
    rig.send(temperature("freezer-1", -8.0));
    assert_eq!(rig.timer_of("freezer-1", "held"), Some(11 * MIN));
    // Still above: the spell goes on, the timer stays where it was.
    rig.report_at(5 * MIN, temperature("freezer-1", -6.0));
    assert_eq!(rig.timer_of("freezer-1", "held"), Some(11 * MIN));
    let mut twin = Twin {
        device: Device::new("freezer-1"),
        online: Some(true),
        last_seen_ms: START_MS + 5 * MIN,
        online_changed_ms: None,
        properties: vec![TwinProperty {
            code: "temperature".into(),
            value: Value::Float(-6.0),
            time_ms: START_MS + 5 * MIN,
            service: None,
        }],
    };
    rig.host.set_twin(twin.clone());
    let fired = rig.at(11 * MIN);
    assert_eq!(fired[0].name, "held");
    let (held, _) = emitted(&fired);
    assert_eq!(held.kind, Kind::DeviceEvent);
    assert_eq!(held.action, "window.held");
    assert_eq!(properties(&held), [("temperature", Value::Float(-6.0))]);
    assert_eq!(
        held.payload_json().unwrap(),
        serde_json::json!({
            "alert": "window.held", "device": "freezer-1", "property": "temperature",
            "condition": "above -10", "since_ms": START_MS + MIN, "duration_s": 600,
            "value": -6.0,
        })
    );
    // Above for another hour: nothing more.
    rig.report_at(30 * MIN, temperature("freezer-1", -5.0));
    assert!(rig.at(90 * MIN).is_empty());
    // Cold again, then warm again: a new spell, a new event.
    rig.send(temperature("freezer-1", -20.0));
    assert!(rig.host.state_entries().is_empty());
    rig.send(temperature("freezer-1", -9.0));
    twin.properties[0].value = Value::Float(-9.0);
    rig.host.set_twin(twin);
    let (again, _) = emitted(&rig.at(100 * MIN));
    assert_eq!(
        again.payload_json().unwrap()["since_ms"],
        START_MS + 90 * MIN
    );
}

#[test]
fn a_condition_that_stops_holding_in_time_cancels_the_timer() {
    let mut rig = Rig::new(FREEZER);
    rig.send(temperature("freezer-1", -5.0));
    rig.report_at(9 * MIN, temperature("freezer-1", -12.0));
    assert!(rig.host.timers().is_empty());
    assert!(rig.host.state_entries().is_empty());
    assert!(rig.at(60 * MIN).is_empty());
}

#[test]
fn held_without_a_twin_value_says_so_by_leaving_it_out() {
    let config = r#"{"held": {"property": "door", "equals": "open", "for_s": 120}, "command": {"name": "notify"}}"#;
    let mut rig = Rig::new(config);
    rig.send(event("door-1").property("door", "open").build());
    let fired = rig.at(2 * MIN);
    let (held, outcome) = emitted(&fired);
    assert!(held.properties.is_empty());
    let payload = held.payload_json().unwrap();
    assert_eq!(payload["condition"], "equals \"open\"");
    assert_eq!(payload.get("value"), None);
    let command = &outcome.commands[0];
    assert_eq!(command.device.id, "door-1", "the event's device by default");
    assert_eq!(command.params_json(), payload);
}

#[test]
fn values_the_condition_cannot_judge_change_nothing() {
    let mut rig = Rig::new(FREEZER);
    rig.send(temperature("freezer-1", -5.0));
    rig.report_at(
        MIN,
        event("freezer-1").property("temperature", "error").build(),
    );
    assert_eq!(rig.timer_of("freezer-1", "held"), Some(10 * MIN));
    assert!(
        rig.send(temperature("fridge-1", 4.0)).is_keep(),
        "not watched"
    );
    assert_eq!(rig.host.timers().len(), 1);
}

#[test]
fn timers_that_do_not_fit_the_config_are_dropped() {
    let mut rig = Rig::new(FREEZER);
    rig.send(temperature("freezer-1", -5.0));
    rig.plugin = rig.host.init(FIVE_MINUTES).unwrap();
    let fired = rig.at(10 * MIN);
    assert!(fired[0].outcome.as_ref().unwrap().is_drop());
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let refuse = |config: &str| Window::init(&Config::new(config)).err().unwrap();
    assert!(refuse("{}").starts_with("config: give `size_s`"));
    assert_eq!(
        refuse(r#"{"size_s": 300}"#),
        "config: `properties`: name the properties to aggregate"
    );
    assert!(
        refuse(r#"{"properties": ["p"], "size_s": 300, "every_s": 70}"#)
            .starts_with("config: `every_s`: must divide `size_s` (300)")
    );
    assert!(
        refuse(r#"{"properties": ["p"], "size_s": 3600, "every_s": 1}"#)
            .starts_with("config: `every_s`: at most 60 hops")
    );
    assert!(refuse(r#"{"properties": ["p"], "size_s": 0}"#).starts_with("config: `size_s`"));
    assert!(
        refuse(r#"{"properties": ["p"], "size_s": 60, "aggregates": ["median"]}"#)
            .starts_with("config: `aggregates[0]`: unknown variant `median`")
    );
    assert_eq!(
        refuse(
            r#"{"properties": ["p"], "size_s": 60, "aggregates": ["avg", "max"], "output": {"avg": "x", "max": "x"}}"#
        ),
        "config: `output`: two aggregates would both be named `x`"
    );
    assert!(
        refuse(r#"{"properties": ["p"], "size_s": 60, "output": {"max": "x"}}"#)
            .starts_with("config: `output.max`: not an aggregate of this window")
    );
    assert!(refuse(
        r#"{"size_s": 60, "properties": ["p"], "held": {"property": "t", "above": 1, "for_s": 1}}"#
    )
    .starts_with("config: `held`: a step keeps windows"));
    assert!(
        refuse(r#"{"held": {"property": "t", "above": 1, "for_s": 1}, "properties": ["p"]}"#)
            .starts_with("config: `properties`: belongs to windows")
    );
    assert_eq!(
        refuse(r#"{"held": {"property": "t", "above": 1}}"#),
        "config: `held`: missing field `for_s`"
    );
    assert!(
        refuse(r#"{"held": {"property": "t", "above": 1, "for_s": 1}, "command": {"name": ""}}"#)
            .starts_with("config: `command.name`")
    );
    assert!(
        refuse(r#"{"properties": ["p"], "size_s": 60, "sizes": 1}"#)
            .starts_with("config: `sizes`: unknown field")
    );
}
