//! `motion-light`: switches lights on when a motion sensor sees someone, and off again when
//! the sensors see no one, but only the lights it switched on itself.
//!
//! A light someone switched on by hand before the motion stays on when the motion ends: the
//! plugin watches the lights' own status reports, and a light already reported on when motion
//! starts is left alone. Which lights it switched on is kept in host state, so a restart or
//! reload between "motion" and "no motion" still switches them off. Events always pass on
//! unchanged; the plugin only adds commands.
//!
//! ```toml
//! [[rule]]
//! name = "hallway-motion-light"
//! when = { source = "tuya-eu", kind = "properties" }
//!
//! [[rule.step]]
//! plugin = "motion-light"
//! config = { sensors = ["vdevo-pir-1"], lights = ["vdevo-light-1", "vdevo-light-2"], via = "tuya-api" }
//! ```
//!
//! - `sensors` / `sensor_products`: the motion sensors, by device id or by product (at least
//!   one of the two).
//! - `datapoint`: the sensor's presence code (default `pir`).
//! - `present` / `absent`: the values meaning someone / no one (default `["pir", "presence",
//!   true]` and `["none", false]`: Tuya's `pir` and `presence_state` enums, or a boolean
//!   `presence`). Other values are ignored.
//! - `lights` (required): device ids, or `{ id = "…", product = "…" }` tables (Alibaba needs
//!   the product to address a device).
//! - `command` (default `switch_led`), `on` (default `true`), `off` (default `false`): the
//!   command name and the parameters that switch a light on and off. For Tuya the name is the
//!   datapoint and the parameters its value; for Alibaba, for example,
//!   `command = "thing.service.property.set"`, `on = { LightSwitch = 1 }`.
//! - `via`: the command path (default: the rule's).
//! - `light_datapoint`, `light_on`: how a light's own report says it is on (default: the
//!   `command` code with the `on` value). Any other value of that datapoint means off.
//! - `respect_manual` (default `true`): leave lights alone that were on before the motion.
//!   With `false`, motion takes over every light, and the end of motion switches all off.
//! - `quiet_s` (seconds, > 0): also end the motion when a sensor has not reported presence for
//!   this long. Most PIR sensors report motion and never "no motion"; with `quiet_s` each
//!   presence report (re-)arms a timer of the sensor's, and when it fires the sensor counts as
//!   seeing no one, as if it had reported `absent`. An `absent` report still ends the motion
//!   at once, and cancels the sensor's timer. Without `quiet_s`, only `absent` ends it.
//!
//! ```toml
//! config = { sensors = ["vdevo-pir-1"], lights = ["vdevo-light-1"], quiet_s = 300 }
//! ```
//!
//! With several sensors, the lights go off when the last sensor that saw someone reports no
//! one (or falls quiet). A light switched off by hand while on for motion is forgotten and not
//! switched again until the next motion.
//!
//! The quiet timer is named `quiet`, per sensor. Its event (kind `timer`) passes on unchanged
//! like every other, carrying the switch-off commands. A timer armed before `quiet_s` was
//! removed from the config still ends its sensor's motion when it fires.

use std::collections::BTreeSet;

use iotrules_plugin_sdk::prelude::*;
use serde::{Deserialize, Serialize};

/// The single state key: the plugin's memory is small and changes as a whole.
const STATE_KEY: &str = "lights";

/// The sensor's timer that ends its motion after `quiet_s` without a presence report.
const QUIET_TIMER: &str = "quiet";

/// The rule step's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    sensors: Vec<String>,
    #[serde(default)]
    sensor_products: Vec<String>,
    #[serde(default = "default_datapoint")]
    datapoint: String,
    #[serde(default = "default_present")]
    present: Vec<serde_json::Value>,
    #[serde(default = "default_absent")]
    absent: Vec<serde_json::Value>,
    lights: Vec<LightRef>,
    #[serde(default = "default_command")]
    command: String,
    #[serde(default = "default_on")]
    on: serde_json::Value,
    #[serde(default = "default_off")]
    off: serde_json::Value,
    #[serde(default)]
    via: Option<String>,
    #[serde(default)]
    light_datapoint: Option<String>,
    #[serde(default)]
    light_on: Option<serde_json::Value>,
    #[serde(default = "default_respect_manual")]
    respect_manual: bool,
    #[serde(default)]
    quiet_s: Option<u64>,
}

fn default_datapoint() -> String {
    "pir".to_owned()
}

fn default_present() -> Vec<serde_json::Value> {
    vec!["pir".into(), "presence".into(), true.into()]
}

fn default_absent() -> Vec<serde_json::Value> {
    vec!["none".into(), false.into()]
}

fn default_command() -> String {
    "switch_led".to_owned()
}

fn default_on() -> serde_json::Value {
    true.into()
}

fn default_off() -> serde_json::Value {
    false.into()
}

fn default_respect_manual() -> bool {
    true
}

/// A light in the configuration: its id, or its id and product.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a device id, or a table with `id` and optional `product`"
)]
enum LightRef {
    Id(String),
    Device {
        id: String,
        #[serde(default)]
        product: Option<String>,
    },
}

/// A configured light, ready to match events and address commands.
#[derive(Debug)]
struct Light {
    device: Device,
    /// The name it has in the plugin's state.
    key: String,
}

impl Light {
    fn is(&self, device: &Device) -> bool {
        self.device.id == device.id
            && self
                .device
                .product
                .as_ref()
                .is_none_or(|p| device.product.as_ref() == Some(p))
    }
}

/// What the plugin remembers between events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Memory {
    /// Sensors whose last report said someone is there.
    present: BTreeSet<String>,
    /// Lights this plugin switched on and has not switched off since.
    switched_on: BTreeSet<String>,
    /// Lights whose own last report said they are on.
    reported_on: BTreeSet<String>,
}

/// What a sensor's report means.
enum Presence {
    Someone,
    NoOne,
}

struct MotionLight {
    settings: Settings,
    lights: Vec<Light>,
    light_datapoint: String,
    light_on: serde_json::Value,
}

impl MotionLight {
    fn is_sensor(&self, device: &Device) -> bool {
        self.settings.sensors.contains(&device.id)
            || device
                .product
                .as_ref()
                .is_some_and(|p| self.settings.sensor_products.contains(p))
    }

    fn presence(&self, value: &Value) -> Option<Presence> {
        if self.settings.present.iter().any(|v| value.matches_json(v)) {
            Some(Presence::Someone)
        } else if self.settings.absent.iter().any(|v| value.matches_json(v)) {
            Some(Presence::NoOne)
        } else {
            None
        }
    }

    fn command(&self, light: &Light, params: &serde_json::Value) -> Command {
        let command = Command::new(&light.device, self.settings.command.as_str()).params(params);
        match &self.settings.via {
            Some(via) => command.via(via.as_str()),
            None => command,
        }
    }

    /// A light's own report: remember whether it is on. Off (by hand, or our own command's
    /// echo) also ends our claim on it, so the end of motion will not touch it.
    fn light_report(&self, light: &Light, value: &Value, memory: &mut Memory) {
        if value.matches_json(&self.light_on) {
            memory.reported_on.insert(light.key.clone());
        } else {
            memory.reported_on.remove(&light.key);
            memory.switched_on.remove(&light.key);
        }
    }

    /// Someone is there: switch on the lights that are neither ours already nor on by hand.
    fn someone(&self, sensor: String, memory: &mut Memory) -> Vec<Command> {
        memory.present.insert(sensor);
        let mut commands = Vec::new();
        for light in &self.lights {
            let ours = memory.switched_on.contains(&light.key);
            let on_by_hand =
                self.settings.respect_manual && memory.reported_on.contains(&light.key);
            if !ours && !on_by_hand {
                commands.push(self.command(light, &self.settings.on));
                memory.switched_on.insert(light.key.clone());
            }
        }
        commands
    }

    /// No one is there: once no sensor sees anyone, switch off the lights we switched on.
    fn no_one(&self, sensor: &str, memory: &mut Memory) -> Vec<Command> {
        memory.present.remove(sensor);
        if !memory.present.is_empty() {
            return Vec::new();
        }
        let mut commands = Vec::new();
        for light in &self.lights {
            if memory.switched_on.remove(&light.key) {
                commands.push(self.command(light, &self.settings.off));
                memory.reported_on.remove(&light.key);
            }
        }
        commands
    }

    /// A sensor's quiet timer fired: it has seen no one for `quiet_s`, as if it said so.
    fn quiet(&self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        let before: Memory = ctx.get_state(STATE_KEY)?.unwrap_or_default();
        let mut memory = before.clone();
        let sensor = event.device_key();
        let commands = self.no_one(&sensor, &mut memory);
        ctx.debug(format_args!(
            "motion-light: {sensor}: no motion reported within the quiet time; sending {} command(s)",
            commands.len()
        ));
        if memory != before {
            ctx.set_state(STATE_KEY, &memory)?;
        }
        Ok(Outcome::keep().with_commands(commands))
    }
}

impl Plugin for MotionLight {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.sensors.is_empty() && settings.sensor_products.is_empty() {
            return Err(
                "config: `sensors`: name the motion sensors, by id in `sensors` or by product in `sensor_products`"
                    .to_owned(),
            );
        }
        if settings.lights.is_empty() {
            return Err("config: `lights`: name at least one light to switch".to_owned());
        }
        if settings.quiet_s == Some(0) {
            return Err(
                "config: `quiet_s`: give the seconds without motion before the lights go off (more than 0), or leave it out"
                    .to_owned(),
            );
        }
        if settings.present.is_empty() || settings.absent.is_empty() {
            return Err("config: `present` and `absent` each need at least one value".to_owned());
        }
        if let Some(both) = settings
            .present
            .iter()
            .find(|v| settings.absent.contains(v))
        {
            return Err(format!(
                "config: `present` and `absent` both contain {both}"
            ));
        }
        let lights = settings
            .lights
            .iter()
            .map(|light| match light {
                LightRef::Id(id) => Light {
                    device: Device::new(id.as_str()),
                    key: id.clone(),
                },
                LightRef::Device { id, product } => Light {
                    device: Device {
                        id: id.clone(),
                        product: product.clone(),
                        name: None,
                    },
                    key: match product {
                        Some(product) => format!("{product}/{id}"),
                        None => id.clone(),
                    },
                },
            })
            .collect();
        Ok(MotionLight {
            light_datapoint: settings
                .light_datapoint
                .clone()
                .unwrap_or_else(|| settings.command.clone()),
            light_on: settings
                .light_on
                .clone()
                .unwrap_or_else(|| settings.on.clone()),
            lights,
            settings,
        })
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        if event.timer() == Some(QUIET_TIMER) {
            return self.quiet(event, ctx);
        }
        if event.kind() != Kind::Properties {
            return Ok(Outcome::keep());
        }
        let light = self.lights.iter().find(|l| l.is(event.device()));
        let light_value = light.and_then(|_| event.value(&self.light_datapoint));
        let sensor_value = if self.is_sensor(event.device()) {
            event.value(&self.settings.datapoint)
        } else {
            None
        };
        if light_value.is_none() && sensor_value.is_none() {
            return Ok(Outcome::keep());
        }

        let before: Memory = ctx.get_state(STATE_KEY)?.unwrap_or_default();
        let mut memory = before.clone();
        let mut commands = Vec::new();
        if let (Some(light), Some(value)) = (light, light_value) {
            self.light_report(light, &value, &mut memory);
        }
        if let Some(value) = sensor_value {
            let sensor = event.device_key();
            match self.presence(&value) {
                Some(Presence::Someone) => {
                    commands = self.someone(sensor, &mut memory);
                    if let Some(quiet_s) = self.settings.quiet_s {
                        ctx.set_timer_in(QUIET_TIMER, quiet_s.saturating_mul(1000))?;
                    }
                }
                Some(Presence::NoOne) => {
                    commands = self.no_one(&sensor, &mut memory);
                    ctx.cancel_timer(QUIET_TIMER);
                }
                None => ctx.debug(format_args!(
                    "motion-light: {sensor}: `{}` = {value} means neither presence nor absence; ignored",
                    self.settings.datapoint
                )),
            }
        }
        if !commands.is_empty() {
            ctx.debug(format_args!(
                "motion-light: {}: sending {} command(s)",
                event.device().id,
                commands.len()
            ));
        }
        if memory != before {
            ctx.set_state(STATE_KEY, &memory)?;
        }
        Ok(Outcome::keep().with_commands(commands))
    }
}

iotrules_plugin_sdk::export_plugin!(MotionLight);

#[cfg(test)]
mod tests {
    use super::*;
    use iotrules_plugin_sdk::testing::{Fired, TestHost, event};

    const CONFIG: &str = r#"{
        "sensors": ["pir-1", "pir-2"],
        "lights": ["light-1", "light-2"],
        "via": "tuya-api"
    }"#;

    fn pir(sensor: &str, value: &str) -> Event {
        event(sensor).property("pir", value).build()
    }

    fn light(id: &str, on: bool) -> Event {
        event(id).property("switch_led", on).build()
    }

    /// The (light, params) of each command, in order.
    fn sent(out: &Outcome) -> Vec<(String, String)> {
        assert!(out.is_keep(), "events always pass on");
        out.commands
            .iter()
            .map(|c| (c.device.id.clone(), c.params.clone()))
            .collect()
    }

    fn on(id: &str) -> (String, String) {
        (id.to_owned(), "true".to_owned())
    }

    fn off(id: &str) -> (String, String) {
        (id.to_owned(), "false".to_owned())
    }

    struct Rig {
        host: TestHost,
        plugin: MotionLight,
    }

    impl Rig {
        fn new(config: &str) -> Self {
            let mut host = TestHost::new();
            let plugin = host.init(config).unwrap();
            Rig { host, plugin }
        }

        fn send(&mut self, ev: Event) -> Vec<(String, String)> {
            sent(&self.host.handle(&mut self.plugin, &ev).unwrap())
        }

        /// Moves the clock and fires the timers then due.
        fn wait_s(&mut self, seconds: u64) -> Vec<Fired> {
            self.host.advance_ms(seconds * 1000);
            self.host.fire_due(&mut self.plugin)
        }

        /// When the sensor's quiet timer is due, if it is set.
        fn quiet_due(&self, sensor: &str) -> Option<u64> {
            self.host
                .timers()
                .get(&(sensor.to_owned(), QUIET_TIMER.to_owned()))
                .copied()
        }
    }

    /// Five minutes of quiet ends the motion.
    const QUIET: &str = r#"{
        "sensors": ["pir-1", "pir-2"],
        "lights": ["light-1", "light-2"],
        "quiet_s": 300
    }"#;

    /// The commands the one timer that fired sent, checking it was the sensor's quiet timer.
    fn sent_by_quiet(fired: &[Fired], sensor: &str) -> Vec<(String, String)> {
        assert_eq!(fired.len(), 1, "one timer fired: {fired:?}");
        assert_eq!(
            (fired[0].device.as_str(), fired[0].name.as_str()),
            (sensor, QUIET_TIMER)
        );
        sent(fired[0].outcome.as_ref().unwrap())
    }

    #[test]
    fn motion_switches_the_lights_on_through_the_configured_path() {
        let mut rig = Rig::new(CONFIG);
        let out = rig
            .host
            .handle(&mut rig.plugin, &pir("pir-1", "pir"))
            .unwrap();
        assert_eq!(sent(&out), [on("light-1"), on("light-2")]);
        let command = &out.commands[0];
        assert_eq!(command.name, "switch_led");
        assert_eq!(command.via.as_deref(), Some("tuya-api"));
        assert_eq!(command.reply_to, None);
    }

    #[test]
    fn no_motion_switches_off_what_motion_switched_on() {
        let mut rig = Rig::new(CONFIG);
        rig.send(pir("pir-1", "pir"));
        // The lights' echo of our own command does not make them "on by hand".
        assert!(rig.send(light("light-1", true)).is_empty());
        assert_eq!(
            rig.send(pir("pir-1", "none")),
            [off("light-1"), off("light-2")]
        );
        assert!(rig.send(pir("pir-1", "none")).is_empty());
    }

    #[test]
    fn repeated_motion_sends_no_repeated_commands() {
        let mut rig = Rig::new(CONFIG);
        assert_eq!(rig.send(pir("pir-1", "pir")).len(), 2);
        assert!(rig.send(pir("pir-1", "pir")).is_empty());
    }

    #[test]
    fn a_light_on_by_hand_before_motion_is_left_alone() {
        let mut rig = Rig::new(CONFIG);
        assert!(rig.send(light("light-2", true)).is_empty());
        assert_eq!(rig.send(pir("pir-1", "pir")), [on("light-1")]);
        assert_eq!(rig.send(pir("pir-1", "none")), [off("light-1")]);
    }

    #[test]
    fn without_respect_manual_motion_takes_over_every_light() {
        let config =
            r#"{"sensors": ["pir-1"], "lights": ["light-1", "light-2"], "respect_manual": false}"#;
        let mut rig = Rig::new(config);
        rig.send(light("light-2", true));
        assert_eq!(
            rig.send(pir("pir-1", "pir")),
            [on("light-1"), on("light-2")]
        );
        assert_eq!(
            rig.send(pir("pir-1", "none")),
            [off("light-1"), off("light-2")]
        );
    }

    #[test]
    fn a_light_switched_off_by_hand_is_not_switched_off_again() {
        let mut rig = Rig::new(CONFIG);
        rig.send(pir("pir-1", "pir"));
        rig.send(light("light-1", false));
        assert_eq!(rig.send(pir("pir-1", "none")), [off("light-2")]);
    }

    #[test]
    fn what_it_switched_on_survives_a_restart() {
        let mut rig = Rig::new(CONFIG);
        rig.send(light("light-2", true));
        rig.send(pir("pir-1", "pir"));
        rig.plugin = rig.host.init(CONFIG).unwrap();
        assert_eq!(rig.send(pir("pir-1", "none")), [off("light-1")]);
    }

    #[test]
    fn lights_stay_on_until_every_sensor_sees_no_one() {
        let mut rig = Rig::new(CONFIG);
        rig.send(pir("pir-1", "pir"));
        assert!(rig.send(pir("pir-2", "pir")).is_empty());
        assert!(rig.send(pir("pir-1", "none")).is_empty());
        assert_eq!(rig.send(pir("pir-2", "none")).len(), 2);
    }

    #[test]
    fn boolean_presence_sensors_matched_by_product_work() {
        let config =
            r#"{"sensor_products": ["mmwave"], "datapoint": "presence", "lights": ["light-1"]}"#;
        let mut rig = Rig::new(config);
        let presence = |v: bool| {
            event("radar-7")
                .product("mmwave")
                .property("presence", v)
                .build()
        };
        assert_eq!(rig.send(presence(true)), [on("light-1")]);
        assert_eq!(rig.send(presence(false)), [off("light-1")]);
        // A device of another product with the same datapoint is not a sensor.
        let stranger = event("radar-8")
            .product("other")
            .property("presence", true)
            .build();
        assert!(rig.send(stranger).is_empty());
    }

    #[test]
    fn alibaba_lights_are_addressed_with_their_product_and_own_values() {
        let config = r#"{
            "sensors": ["pir-1"],
            "lights": [{"id": "lamp-1", "product": "a1B2"}],
            "command": "thing.service.property.set",
            "on": {"LightSwitch": 1},
            "off": {"LightSwitch": 0},
            "light_datapoint": "LightSwitch",
            "light_on": 1
        }"#;
        let mut rig = Rig::new(config);
        let lamp = |v: i64| {
            event("lamp-1")
                .vendor("alibaba")
                .product("a1B2")
                .property("LightSwitch", v)
                .build()
        };
        rig.send(lamp(1));
        assert!(rig.send(pir("pir-1", "pir")).is_empty(), "on by hand");
        rig.send(lamp(0));
        let out = rig
            .host
            .handle(&mut rig.plugin, &pir("pir-1", "pir"))
            .unwrap();
        let command = &out.commands[0];
        assert_eq!(command.device.product.as_deref(), Some("a1B2"));
        assert_eq!(command.name, "thing.service.property.set");
        assert_eq!(command.params, r#"{"LightSwitch":1}"#);
        assert_eq!(command.via, None, "the rule's default path");
    }

    #[test]
    fn unknown_values_and_other_events_pass_without_commands() {
        let mut rig = Rig::new(CONFIG);
        assert!(rig.send(pir("pir-1", "tamper")).is_empty());
        assert!(
            rig.host
                .logged(Level::Debug, "`pir` = \"tamper\" means neither")
        );
        assert!(
            rig.send(pir("pir-9", "pir")).is_empty(),
            "not a configured sensor"
        );
        assert!(
            rig.send(event("pir-1").kind(Kind::Online).build())
                .is_empty()
        );
        assert!(
            rig.send(event("pir-1").property("battery", 80).build())
                .is_empty()
        );
        assert_eq!(
            rig.host.state::<Memory>(STATE_KEY),
            None,
            "nothing worth remembering"
        );
    }

    #[test]
    fn a_refused_state_write_fails_the_event_without_commands() {
        let mut rig = Rig::new(CONFIG);
        rig.host.refuse_state_writes("store full");
        let err = rig
            .host
            .handle(&mut rig.plugin, &pir("pir-1", "pir"))
            .unwrap_err();
        assert_eq!(
            err,
            "state `lights`: the host refused the write: store full"
        );
    }

    #[test]
    fn quiet_time_switches_off_after_the_last_motion_report() {
        let mut rig = Rig::new(QUIET);
        let start = rig.host.now();
        assert_eq!(rig.send(pir("pir-1", "pir")).len(), 2);
        assert_eq!(rig.quiet_due("pir-1"), Some(start + 300_000));
        assert!(rig.wait_s(200).is_empty());
        // Motion again re-arms the timer from now: no commands, a later switch-off.
        assert!(rig.send(pir("pir-1", "pir")).is_empty());
        assert_eq!(rig.quiet_due("pir-1"), Some(start + 500_000));
        assert!(
            rig.wait_s(299).is_empty(),
            "300 s after the first report, not the last"
        );
        let fired = rig.wait_s(1);
        assert_eq!(fired[0].at_ms, start + 500_000);
        assert_eq!(
            sent_by_quiet(&fired, "pir-1"),
            [off("light-1"), off("light-2")]
        );
        assert!(rig.host.timers().is_empty(), "it fires once");
        assert_eq!(rig.host.state::<Memory>(STATE_KEY), Some(Memory::default()));
        // The next motion starts over.
        assert_eq!(rig.send(pir("pir-1", "pir")).len(), 2);
    }

    #[test]
    fn the_quiet_timers_event_passes_on_unchanged() {
        let mut rig = Rig::new(QUIET);
        rig.send(pir("pir-1", "pir"));
        let fired = rig.wait_s(300);
        let outcome = fired[0].outcome.as_ref().unwrap();
        assert!(outcome.is_keep());
        assert_eq!(outcome.commands[0].name, "switch_led");
        assert!(rig.host.logged(Level::Debug, "within the quiet time"));
    }

    #[test]
    fn quiet_time_leaves_a_light_on_by_hand_alone() {
        let mut rig = Rig::new(QUIET);
        rig.send(light("light-2", true));
        assert_eq!(rig.send(pir("pir-1", "pir")), [on("light-1")]);
        assert_eq!(sent_by_quiet(&rig.wait_s(300), "pir-1"), [off("light-1")]);
        // Motion while a light is on by hand still arms the timer, which then switches nothing.
        rig.send(light("light-1", true));
        rig.send(light("light-2", true));
        assert!(rig.send(pir("pir-1", "pir")).is_empty());
        assert!(sent_by_quiet(&rig.wait_s(300), "pir-1").is_empty());
    }

    #[test]
    fn an_absent_report_switches_off_at_once_and_cancels_the_timer() {
        let mut rig = Rig::new(QUIET);
        rig.send(pir("pir-1", "pir"));
        rig.host.advance_ms(10_000);
        assert_eq!(
            rig.send(pir("pir-1", "none")),
            [off("light-1"), off("light-2")]
        );
        assert_eq!(rig.quiet_due("pir-1"), None);
        assert!(rig.wait_s(600).is_empty());
    }

    #[test]
    fn with_quiet_time_the_lights_stay_on_until_every_sensor_is_quiet() {
        let mut rig = Rig::new(QUIET);
        rig.send(pir("pir-1", "pir"));
        rig.host.advance_ms(100_000);
        assert!(rig.send(pir("pir-2", "pir")).is_empty());
        // pir-1 falls quiet while pir-2 still sees someone.
        assert!(sent_by_quiet(&rig.wait_s(200), "pir-1").is_empty());
        assert_eq!(
            sent_by_quiet(&rig.wait_s(100), "pir-2"),
            [off("light-1"), off("light-2")]
        );
    }

    #[test]
    fn a_pending_quiet_timer_survives_a_restart() {
        let mut rig = Rig::new(QUIET);
        rig.send(pir("pir-1", "pir"));
        rig.plugin = rig.host.init(QUIET).unwrap();
        assert_eq!(sent_by_quiet(&rig.wait_s(300), "pir-1").len(), 2);
    }

    #[test]
    fn without_quiet_time_no_timer_is_set() {
        let mut rig = Rig::new(CONFIG);
        rig.send(pir("pir-1", "pir"));
        assert!(rig.host.timers().is_empty());
        assert!(rig.wait_s(86_400).is_empty());
    }

    #[test]
    fn a_refused_timer_fails_the_event_without_commands_or_state() {
        let mut rig = Rig::new(QUIET);
        rig.host.refuse_state_writes("quota");
        let err = rig
            .host
            .handle(&mut rig.plugin, &pir("pir-1", "pir"))
            .unwrap_err();
        assert_eq!(err, "timer `quiet`: the host refused it: quota");
        assert!(rig.host.timers().is_empty());
        assert_eq!(rig.host.state::<Memory>(STATE_KEY), None);
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let refuse = |config: &str| MotionLight::init(&Config::new(config)).err().unwrap();
        assert_eq!(
            refuse(r#"{"sensors": ["p"]}"#),
            "config: missing field `lights`"
        );
        assert!(
            refuse(r#"{"lights": ["l"]}"#)
                .starts_with("config: `sensors`: name the motion sensors")
        );
        assert_eq!(
            refuse(r#"{"sensors": ["p"], "lights": []}"#),
            "config: `lights`: name at least one light to switch"
        );
        assert_eq!(
            refuse(r#"{"sensors": ["p"], "lights": ["l", 7]}"#),
            "config: `lights[1]`: a device id, or a table with `id` and optional `product`"
        );
        assert_eq!(
            refuse(r#"{"sensors": ["p"], "lights": ["l"], "present": ["x"], "absent": ["x"]}"#),
            r#"config: `present` and `absent` both contain "x""#
        );
        assert!(
            refuse(r#"{"sensors": ["p"], "lights": ["l"], "quiet_s": 0}"#)
                .starts_with("config: `quiet_s`: give the seconds")
        );
        assert_eq!(
            refuse(r#"{"sensors": ["p"], "lights": ["l"], "quiet_s": -5}"#),
            "config: `quiet_s`: invalid value: integer `-5`, expected u64"
        );
        assert!(
            refuse(r#"{"sensors": ["p"], "lights": ["l"], "light": "x"}"#)
                .starts_with("config: `light`: unknown field `light`")
        );
    }
}
