//! `window`: per device and property, aggregates over tumbling or sliding windows (`avg`,
//! `min`, `max`, `count`, `last`), or a condition held for a duration; each emitted as an
//! event of its own when its timer fires.
//!
//! **Windows.** Numbers a watched device reports for `properties` are summed into buckets
//! in host state. A window `size_s` wide closes by a timer at its end, aligned to multiples of
//! `size_s` from the epoch (5-minute windows end at :00, :05, …), and the step replaces that
//! timer's event with the window's aggregates: an event of kind `properties`, action `window`,
//! whose properties are named `<property>_<aggregate>_<size>` (`power_w_avg_5m`) unless
//! `output` renames them. With `every_s`, windows hop: one `size_s` wide ends every `every_s`
//! (a 5-minute average every minute), and the buckets are `every_s` wide.
//!
//! ```toml
//! [[rule]]
//! name = "meter-power-5m"
//! when = { vendor = "huawei", device = "meter-*" }
//!
//! [[rule.step]]
//! plugin = "window"
//! config = { properties = ["power_w"], size_s = 300, aggregates = ["avg", "max"], output = { avg = "power_avg_5m" } }
//! ```
//!
//! - `properties` (required for windows): the property codes to aggregate. Only numbers
//!   count; other values are ignored.
//! - `size_s` (required for windows, > 0): the window's width.
//! - `every_s`: the hop of sliding windows (default: `size_s`, tumbling). It must divide
//!   `size_s`, at most 60 times.
//! - `aggregates` (default `["avg"]`): any of `avg`, `min`, `max`, `count`, `last`.
//! - `output`: property names for the aggregates, by `<aggregate>` (for every property) or
//!   `<property>.<aggregate>` (for one; wins over the other): `output = { avg =
//!   "power_avg_5m" }`. The names must all differ.
//!
//! A window in which the device reported none of the properties emits nothing. The emitted
//! event carries the aggregates of the properties the window saw, at the window's end time
//! (`time_ms`), and its payload says the span:
//! `{"device": "meter-1", "start_ms": …, "end_ms": …, "values": {"power_avg_5m": 812.5}}`.
//!
//! **Held.** `held = { property = "temperature", above = -10, for_s = 600 }` (or `below`,
//! both for "between", or `equals` for any value): when a watched device's report makes the
//! condition hold, a timer is armed for `for_s`; a report that makes it false cancels it;
//! when it fires, the step replaces its event with one of kind `device-event`, action
//! `window.held`, payload
//! `{"alert": "window.held", "device": "freezer-1", "property": "temperature", "condition":
//! "above -10", "since_ms": …, "duration_s": 600, "value": -7.5}` (`value`: the host twin's
//! last value of the property, when it has one, which is also the event's one property). It
//! is emitted once per spell: not again until the condition has stopped holding and held anew
//! for `for_s`. A value the condition cannot judge (text against a bound) changes nothing.
//!
//! - `devices`, `products`: the devices to watch, as in `watchdog`: ids or patterns (`*`,
//!   `?`), products; neither: every device the rule passes the step.
//! - `pass` (default `true`): events the step takes samples from pass on unchanged; `false`
//!   drops them, so only the emitted events leave the step. Other events always pass.
//! - `command`: a command sent with each emitted event: `name` (required), `via`, `device`
//!   and `product` (default: the event's device), `params` (a table, default `{}`) with the
//!   emitted payload's fields set over it.
//!
//! A step is either windows (`size_s`) or held (`held`), not both: use two steps.
//!
//! Time is the host's clock (when the step handled the report), not the device's. Timers are
//! named `window` and `held`, per device; one that finds nothing to emit (the config changed
//! meanwhile) drops its event. State, per device: windows keep one key, `window/<device>`,
//! of at most `size_s / every_s + 1` buckets (so 2 for tumbling windows, at most 61) of five
//! numbers per property, and one timer; held keeps one key, `held/<device>`, only while the
//! condition holds, and one timer. Changing `size_s` or `every_s` closes the windows already
//! open by the new shape.

mod buckets;
mod held;

use std::collections::{BTreeMap, BTreeSet};

use iotrules_plugin_sdk::command::CommandTemplate;
use iotrules_plugin_sdk::prelude::*;
use iotrules_plugin_sdk::select::Devices;
use serde::Deserialize;

use buckets::{Bucket, Closed, Shape};
use held::{HeldSettings, Holding};

/// The timer that closes a device's next window.
const WINDOW_TIMER: &str = "window";
/// The timer that fires when a device's condition has held for `for_s`.
const HELD_TIMER: &str = "held";
/// The action of a closed window's event.
const WINDOW_ACTION: &str = "window";
/// The action of a held condition's event.
const HELD_ACTION: &str = "window.held";
/// The most windows one bucket may serve: bounds a device's state.
const MAX_HOPS: u64 = 60;

/// The rule step's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    products: Vec<String>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    size_s: Option<u64>,
    #[serde(default)]
    every_s: Option<u64>,
    #[serde(default)]
    aggregates: Option<Vec<Aggregate>>,
    #[serde(default)]
    output: BTreeMap<String, String>,
    #[serde(default)]
    held: Option<HeldSettings>,
    #[serde(default = "default_pass")]
    pass: bool,
    #[serde(default)]
    command: Option<CommandTemplate>,
}

fn default_pass() -> bool {
    true
}

/// What a window reports of a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Aggregate {
    Avg,
    Min,
    Max,
    Count,
    Last,
}

impl Aggregate {
    fn name(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Count => "count",
            Aggregate::Last => "last",
        }
    }

    fn of(self, agg: &buckets::Agg) -> Value {
        match self {
            Aggregate::Avg => Value::Float(agg.avg()),
            Aggregate::Min => Value::Float(agg.min),
            Aggregate::Max => Value::Float(agg.max),
            Aggregate::Count => Value::Integer(i64::try_from(agg.count).unwrap_or(i64::MAX)),
            Aggregate::Last => Value::Float(agg.last),
        }
    }
}

/// One property of a closed window's event.
#[derive(Debug)]
struct Output {
    property: String,
    aggregate: Aggregate,
    name: String,
}

/// The windows a step keeps.
#[derive(Debug)]
struct Windows {
    properties: Vec<String>,
    shape: Shape,
    outputs: Vec<Output>,
}

/// What a step does.
#[derive(Debug)]
enum Mode {
    Windows(Windows),
    Held(HeldSettings),
}

struct Window {
    mode: Mode,
    watched: Devices,
    pass: bool,
    command: Option<CommandTemplate>,
}

/// A duration as the default output names write it: `30s`, `5m`, `1h`.
fn short_duration(seconds: u64) -> String {
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// Checks the window keys and works out the shape and the output names.
fn windows(settings: &mut Settings, size_s: u64) -> Result<Windows, String> {
    if size_s == 0 {
        return Err("config: `size_s`: must be more than 0".to_owned());
    }
    let every_s = settings.every_s.unwrap_or(size_s);
    if every_s == 0 || !size_s.is_multiple_of(every_s) {
        return Err(format!(
            "config: `every_s`: must divide `size_s` ({size_s}) into whole hops"
        ));
    }
    if size_s / every_s > MAX_HOPS {
        return Err(format!(
            "config: `every_s`: at most {MAX_HOPS} hops per window (`size_s` / `every_s`), to bound the state per device"
        ));
    }
    let properties = std::mem::take(&mut settings.properties);
    if properties.is_empty() {
        return Err("config: `properties`: name the properties to aggregate".to_owned());
    }
    let aggregates: BTreeSet<Aggregate> = settings
        .aggregates
        .take()
        .unwrap_or_else(|| vec![Aggregate::Avg])
        .into_iter()
        .collect();
    if aggregates.is_empty() {
        return Err("config: `aggregates`: name at least one aggregate".to_owned());
    }
    let mut outputs = Vec::new();
    let mut used = BTreeSet::new();
    let size = short_duration(size_s);
    for property in &properties {
        for &aggregate in &aggregates {
            let own = format!("{property}.{}", aggregate.name());
            let name = settings
                .output
                .get(&own)
                .or_else(|| settings.output.get(aggregate.name()))
                .cloned()
                .unwrap_or_else(|| format!("{property}_{}_{size}", aggregate.name()));
            if !used.insert(name.clone()) {
                return Err(format!(
                    "config: `output`: two aggregates would both be named `{name}`"
                ));
            }
            outputs.push(Output {
                property: property.clone(),
                aggregate,
                name,
            });
        }
    }
    if let Some(key) = settings.output.keys().find(|key| {
        !outputs.iter().any(|o| {
            **key == o.aggregate.name() || **key == format!("{}.{}", o.property, o.aggregate.name())
        })
    }) {
        return Err(format!(
            "config: `output.{key}`: not an aggregate of this window (`<aggregate>` or `<property>.<aggregate>`)"
        ));
    }
    Ok(Windows {
        properties,
        shape: Shape {
            size_ms: size_s.saturating_mul(1000),
            every_ms: every_s.saturating_mul(1000),
        },
        outputs,
    })
}

impl Window {
    /// What becomes of an event the step took samples from.
    fn passed(&self) -> Outcome {
        if self.pass {
            Outcome::keep()
        } else {
            Outcome::drop()
        }
    }

    /// `event` (a timer's) made into the emitted event, with the command if there is one.
    fn emit(
        &self,
        event: &EventView,
        kind: Kind,
        action: &str,
        properties: Vec<Property>,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Outcome {
        let mut emitted = event.to_event();
        emitted.kind = kind;
        emitted.action = action.to_owned();
        emitted.properties = properties;
        emitted.payload = serde_json::Value::Object(fields.clone()).to_string();
        let command = self
            .command
            .as_ref()
            .map(|c| c.command(&emitted.device, fields));
        Outcome::replace(emitted).with_commands(command)
    }

    /// A report of a watched device: its numbers go into the current bucket.
    fn sample(
        &self,
        windows: &Windows,
        event: &EventView,
        ctx: &mut Ctx,
    ) -> Result<Outcome, String> {
        let samples: Vec<(&str, f64)> = windows
            .properties
            .iter()
            .filter_map(|code| {
                let value = event.property_f64(code).filter(|v| v.is_finite())?;
                Some((code.as_str(), value))
            })
            .collect();
        if samples.is_empty() {
            return Ok(Outcome::keep());
        }
        let key = format!("window/{}", event.device_key());
        let mut buckets: Vec<Bucket> = ctx.get_state(&key)?.unwrap_or_default();
        let end_ms = windows.shape.add(&mut buckets, ctx.now_ms(), &samples);
        ctx.set_state(&key, &buckets)?;
        if ctx.timer(WINDOW_TIMER).is_none() {
            ctx.set_timer(WINDOW_TIMER, end_ms)?;
        }
        Ok(self.passed())
    }

    /// The window timer fired: close the window ending now, and arm the next one's.
    fn close(
        &self,
        windows: &Windows,
        event: &EventView,
        ctx: &mut Ctx,
    ) -> Result<Outcome, String> {
        let key = format!("window/{}", event.device_key());
        let mut buckets: Vec<Bucket> = ctx.get_state(&key)?.unwrap_or_default();
        let end_ms = event.time_ms();
        let closed = windows.shape.close(&mut buckets, end_ms);
        match windows.shape.next_end(&buckets, end_ms) {
            Some(next) => {
                ctx.set_state(&key, &buckets)?;
                ctx.set_timer(WINDOW_TIMER, next)?;
            }
            None => ctx.delete_state(&key),
        }
        let Some(Closed {
            start_ms,
            end_ms,
            values,
        }) = closed
        else {
            return Ok(Outcome::drop());
        };
        let properties: Vec<Property> = windows
            .outputs
            .iter()
            .filter_map(|o| {
                let agg = values.get(&o.property)?;
                Some(Property::new(o.name.as_str(), o.aggregate.of(agg)))
            })
            .collect();
        let values_json: serde_json::Map<String, serde_json::Value> = properties
            .iter()
            .map(|p| (p.code.clone(), p.value.to_json()))
            .collect();
        let mut fields = serde_json::Map::new();
        fields.insert("device".into(), event.device().id.as_str().into());
        fields.insert("start_ms".into(), start_ms.into());
        fields.insert("end_ms".into(), end_ms.into());
        fields.insert("values".into(), values_json.into());
        ctx.debug(format_args!(
            "window: {}: window [{start_ms}, {end_ms}) closed with {} aggregate(s)",
            event.device().id,
            properties.len()
        ));
        // The timer's event is at the window's end: when it was due.
        Ok(self.emit(event, Kind::Properties, WINDOW_ACTION, properties, fields))
    }

    /// A report of a watched device: does the condition start or stop holding?
    fn held_seen(
        &self,
        held: &HeldSettings,
        event: &EventView,
        ctx: &mut Ctx,
    ) -> Result<Outcome, String> {
        let Some(value) = event.value(&held.property) else {
            return Ok(Outcome::keep());
        };
        let Some(holds) = held.holds(&value) else {
            return Ok(self.passed());
        };
        let key = format!("held/{}", event.device_key());
        let holding: Option<Holding> = ctx.get_state(&key)?;
        match (holds, holding) {
            (true, None) => {
                let since_ms = ctx.now_ms();
                ctx.set_state(
                    &key,
                    &Holding {
                        since_ms,
                        emitted: false,
                    },
                )?;
                ctx.set_timer_in(HELD_TIMER, held.for_s.saturating_mul(1000))?;
            }
            (false, Some(_)) => {
                ctx.delete_state(&key);
                ctx.cancel_timer(HELD_TIMER);
            }
            (true, Some(_)) | (false, None) => {}
        }
        Ok(self.passed())
    }

    /// The held timer fired: the condition held for `for_s`.
    fn held_fired(
        &self,
        held: &HeldSettings,
        event: &EventView,
        ctx: &mut Ctx,
    ) -> Result<Outcome, String> {
        let key = format!("held/{}", event.device_key());
        let Some(mut holding) = ctx.get_state::<Holding>(&key)? else {
            return Ok(Outcome::drop());
        };
        if holding.emitted {
            return Ok(Outcome::drop());
        }
        holding.emitted = true;
        ctx.set_state(&key, &holding)?;
        let device = event.device();
        let value = ctx.twin(&device.id).and_then(|twin| {
            twin.properties
                .into_iter()
                .find(|p| p.code == held.property)
                .map(|p| p.value)
        });
        let now_ms = ctx.now_ms().max(event.time_ms());
        let mut fields = serde_json::Map::new();
        fields.insert("alert".into(), HELD_ACTION.into());
        fields.insert("device".into(), device.id.as_str().into());
        fields.insert("property".into(), held.property.as_str().into());
        fields.insert("condition".into(), held.describe().into());
        fields.insert("since_ms".into(), holding.since_ms.into());
        fields.insert(
            "duration_s".into(),
            (now_ms.saturating_sub(holding.since_ms) / 1000).into(),
        );
        let properties = match value {
            Some(value) => {
                fields.insert("value".into(), value.to_json());
                vec![Property::new(held.property.as_str(), value)]
            }
            None => Vec::new(),
        };
        ctx.debug(format_args!(
            "window: {}: `{}` {} for {} s",
            device.id,
            held.property,
            held.describe(),
            held.for_s
        ));
        Ok(self.emit(event, Kind::DeviceEvent, HELD_ACTION, properties, fields))
    }
}

impl Plugin for Window {
    fn init(config: &Config) -> Result<Self, String> {
        let mut settings: Settings = config.parse()?;
        let mode = match (settings.size_s, settings.held.take()) {
            (Some(_), Some(_)) => {
                return Err(
                    "config: `held`: a step keeps windows (`size_s`) or watches a held condition (`held`), not both; use two steps"
                        .to_owned(),
                );
            }
            (None, None) => {
                return Err(
                    "config: give `size_s` (windows of `properties`) or `held` (a condition held for a time)"
                        .to_owned(),
                );
            }
            (Some(size_s), None) => Mode::Windows(windows(&mut settings, size_s)?),
            (None, Some(held)) => {
                let window_key = [
                    ("properties", !settings.properties.is_empty()),
                    ("every_s", settings.every_s.is_some()),
                    ("aggregates", settings.aggregates.is_some()),
                    ("output", !settings.output.is_empty()),
                ]
                .into_iter()
                .find_map(|(key, given)| given.then_some(key));
                if let Some(key) = window_key {
                    return Err(format!(
                        "config: `{key}`: belongs to windows (`size_s`), not to `held`"
                    ));
                }
                held.check()?;
                Mode::Held(held)
            }
        };
        if let Some(command) = &settings.command {
            command.check("command")?;
        }
        Ok(Window {
            mode,
            watched: Devices::new(settings.devices, settings.products),
            pass: settings.pass,
            command: settings.command,
        })
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        if let Some(name) = event.timer() {
            return match (&self.mode, name) {
                (Mode::Windows(windows), WINDOW_TIMER) => self.close(windows, event, ctx),
                (Mode::Held(held), HELD_TIMER) => self.held_fired(held, event, ctx),
                _ => {
                    ctx.debug(format_args!(
                        "window: {}: timer `{name}` does not fit this step's config; dropped",
                        event.device().id
                    ));
                    Ok(Outcome::drop())
                }
            };
        }
        if !self.watched.includes(event.device()) {
            return Ok(Outcome::keep());
        }
        match &self.mode {
            Mode::Windows(windows) => self.sample(windows, event, ctx),
            Mode::Held(held) => self.held_seen(held, event, ctx),
        }
    }
}

iotrules_plugin_sdk::export_plugin!(Window);

#[cfg(test)]
mod tests;
