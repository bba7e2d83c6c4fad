//! `normalize-units`: a transform that renames datapoints to one vocabulary across vendors
//! and converts their values to one unit, so later steps and rules can say `temperature` and
//! mean degrees Celsius whatever the device.
//!
//! Tuya reports `va_temperature` in tenths of a degree and `bright_value_v2` from 10 to 1000;
//! Alibaba's thing model says `CurrentTemperature`. Each mapping names a property code, the
//! code to give it, and optionally a conversion:
//!
//! ```toml
//! [[rule.step]]
//! plugin = "normalize-units"
//! config.mappings = [
//!   { from = "va_temperature", to = "temperature", vendor = "tuya", scale = 0.1, round = 1 },
//!   { from = "bright_value_v2", to = "brightness", range = { from = [10, 1000], to = [0, 100] }, round = 0 },
//!   { from = "CurrentTemperature", to = "temperature", vendor = "alibaba" },
//! ]
//! ```
//!
//! A mapping's fields:
//!
//! - `from` (required): the property code to convert.
//! - `to`: the code to give it (default: keep `from`, convert only).
//! - `vendor`, `product`, `service`: apply only to events of this vendor (`tuya`, `alibaba`,
//!   `huawei`, `mqtt`) or product, or to properties of this Huawei service.
//! - `scale` and `offset`: `value × scale + offset`.
//! - `range = { from = [a, b], to = [c, d] }`: maps `a..b` linearly onto `c..d`, clamping to
//!   `c..d` unless `clamp = false`. Not together with `scale`/`offset`.
//! - `round`: decimals to round to; `0` makes the value an integer.
//! - `keep_original`: add the converted property and keep the original too (default: replace).
//!
//! The first mapping that fits a property applies. A converted property keeps its position,
//! time and service, and replaces any property of the target code (in the same service) the
//! event already had. A property whose value is not a number is left as it is when its
//! mapping converts (a rename alone applies to any value). The vendor payload is never
//! touched. The event is replaced when something changed, and kept as it is otherwise.

use iotrules_plugin_sdk::prelude::*;
use serde::Deserialize;

/// The rule step's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    mappings: Vec<Mapping>,
}

/// One datapoint's new name and conversion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapping {
    from: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    vendor: Option<String>,
    #[serde(default)]
    product: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    offset: Option<f64>,
    #[serde(default)]
    range: Option<Range>,
    #[serde(default = "yes")]
    clamp: bool,
    #[serde(default)]
    round: Option<u8>,
    #[serde(default)]
    keep_original: bool,
}

/// A linear map from one interval onto another.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    from: [f64; 2],
    to: [f64; 2],
}

fn yes() -> bool {
    true
}

/// The most decimals `round` accepts: beyond this an `f64` has no digits left to round.
const MAX_DECIMALS: u8 = 15;

impl Mapping {
    /// Checks what `serde` cannot; `field` is this mapping's path (`mappings[2]`).
    fn validate(&self, field: &str) -> Result<(), String> {
        let refuse = |message: String| Err(format!("config: `{field}`: {message}"));
        if self.from.is_empty() {
            return refuse("`from` is empty".to_owned());
        }
        if self.to.as_deref() == Some("") {
            return refuse("`to` is empty".to_owned());
        }
        if self.keep_original && self.to.as_ref().is_none_or(|to| *to == self.from) {
            return refuse("`keep_original` needs a `to` other than `from`".to_owned());
        }
        if self.range.is_some() && (self.scale.is_some() || self.offset.is_some()) {
            return refuse("give either `range` or `scale`/`offset`, not both".to_owned());
        }
        let numbers = self.scale.into_iter().chain(self.offset);
        let numbers = numbers.chain(
            self.range
                .iter()
                .flat_map(|r| r.from.into_iter().chain(r.to)),
        );
        if numbers.clone().any(|n| !n.is_finite()) {
            return refuse("`scale`, `offset` and `range` must be finite numbers".to_owned());
        }
        if let Some(range) = &self.range
            && range.from[0] == range.from[1]
        {
            return refuse(format!(
                "`range.from` must span an interval, not [{0}, {0}]",
                range.from[0]
            ));
        }
        if self.round.is_some_and(|decimals| decimals > MAX_DECIMALS) {
            return refuse(format!("`round` is at most {MAX_DECIMALS} decimals"));
        }
        Ok(())
    }

    fn converts(&self) -> bool {
        self.scale.is_some()
            || self.offset.is_some()
            || self.range.is_some()
            || self.round.is_some()
    }

    fn applies_to(&self, event: &EventView, property: &Property) -> bool {
        property.code == self.from
            && self.vendor.as_ref().is_none_or(|v| v == event.vendor())
            && self
                .product
                .as_ref()
                .is_none_or(|p| event.device().product.as_ref() == Some(p))
            && self
                .service
                .as_ref()
                .is_none_or(|s| property.service.as_ref() == Some(s))
    }

    /// The converted value, or `None` if it needs a number and `value` is not one.
    fn convert(&self, value: &Value) -> Option<Value> {
        if !self.converts() {
            return Some(value.clone());
        }
        let x = value.as_f64()?;
        let y = match &self.range {
            Some(range) => {
                let [a, b] = range.from;
                let [c, d] = range.to;
                let y = c + (x - a) * (d - c) / (b - a);
                if self.clamp {
                    y.clamp(c.min(d), c.max(d))
                } else {
                    y
                }
            }
            None => x * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0),
        };
        Some(match self.round {
            Some(0) => whole(y.round()),
            Some(decimals) => {
                let factor = 10f64.powi(decimals.into());
                Value::Float((y * factor).round() / factor)
            }
            // An integer scaled by nothing fractional stays an integer.
            None if matches!(value, Value::Integer(_)) && y.fract() == 0.0 => whole(y),
            None => Value::Float(y),
        })
    }
}

/// A whole `f64` as an integer value when it fits, else as a float.
fn whole(y: f64) -> Value {
    if y >= -(2f64.powi(63)) && y < 2f64.powi(63) {
        Value::Integer(y as i64)
    } else {
        Value::Float(y)
    }
}

struct NormalizeUnits {
    mappings: Vec<Mapping>,
}

impl Plugin for NormalizeUnits {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.mappings.is_empty() {
            return Err("config: `mappings`: give at least one mapping".to_owned());
        }
        for (index, mapping) in settings.mappings.iter().enumerate() {
            mapping.validate(&format!("mappings[{index}]"))?;
        }
        Ok(NormalizeUnits {
            mappings: settings.mappings,
        })
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        // Most events carry nothing to convert: answer keep without copying the event.
        let mut plan: Vec<(usize, &Mapping)> = Vec::new();
        for (index, property) in event.properties().iter().enumerate() {
            if let Some(mapping) = self.mappings.iter().find(|m| m.applies_to(event, property)) {
                plan.push((index, mapping));
            }
        }
        if plan.is_empty() {
            return Ok(Outcome::keep());
        }

        let mut properties: Vec<(Property, bool)> = event
            .properties()
            .iter()
            .map(|p| (p.clone(), false))
            .collect();
        let mut added = Vec::new();
        for (index, mapping) in plan {
            let original = &event.properties()[index];
            let Some(value) = mapping.convert(&original.value) else {
                ctx.debug(format_args!(
                    "normalize-units: {}: `{}` is {}, not a number; left as it is",
                    event.device().id,
                    original.code,
                    original.value
                ));
                continue;
            };
            let converted = Property {
                code: mapping.to.clone().unwrap_or_else(|| original.code.clone()),
                value,
                ..original.clone()
            };
            if mapping.keep_original {
                added.push((converted, true));
            } else {
                properties[index] = (converted, true);
            }
        }
        properties.extend(added);

        // A property is named by its code within its service (Huawei), so a converted one
        // displaces only a property of the same code in the same service.
        let targets: Vec<(String, Option<String>)> = properties
            .iter()
            .filter(|(_, converted)| *converted)
            .map(|(p, _)| (p.code.clone(), p.service.clone()))
            .collect();
        if targets.is_empty() {
            return Ok(Outcome::keep());
        }
        let displaced = |p: &Property| {
            targets
                .iter()
                .any(|(code, service)| *code == p.code && *service == p.service)
        };
        // Only the properties change, so only they go back to the host.
        let properties = properties
            .into_iter()
            .filter(|(p, converted)| *converted || !displaced(p))
            .map(|(p, _)| p)
            .collect();
        Ok(Outcome::update(Changes::new().properties(properties)))
    }
}

iotrules_plugin_sdk::export_plugin!(NormalizeUnits);

#[cfg(test)]
mod tests {
    use super::*;
    use iotrules_plugin_sdk::testing::{TestHost, event};

    const CONFIG: &str = r#"{"mappings": [
        {"from": "va_temperature", "to": "temperature", "vendor": "tuya", "scale": 0.1, "round": 1},
        {"from": "bright_value_v2", "to": "brightness", "range": {"from": [10, 1000], "to": [0, 100]}, "round": 0},
        {"from": "CurrentTemperature", "to": "temperature", "vendor": "alibaba"}
    ]}"#;

    /// The plugin's answer, an update shown as the replacement it makes (the event the next
    /// step sees), so the tests read the converted event whole.
    fn run(config: &str, ev: &Event) -> Outcome {
        let mut host = TestHost::new();
        let mut plugin: NormalizeUnits = host.init(config).unwrap();
        let out = host.handle(&mut plugin, ev).unwrap();
        match out.changes() {
            Some(changes) => Outcome::replace(changes.apply_to(ev)).with_commands(out.commands),
            None => out,
        }
    }

    #[test]
    fn a_conversion_sends_back_only_the_properties() {
        let mut host = TestHost::new();
        let mut plugin: NormalizeUnits = host.init(CONFIG).unwrap();
        let ev = event("d")
            .vendor("tuya")
            .property("va_temperature", 231)
            .build();
        let out = host.handle(&mut plugin, &ev).unwrap();
        let changes = out.changes().expect("an update");
        assert_eq!(
            changes,
            &Changes::new().properties(vec![Property::new("temperature", 23.1)])
        );
    }

    fn normalized(ev: &Event) -> Event {
        let out = run(CONFIG, ev);
        assert!(out.commands.is_empty());
        out.replacement().cloned().expect("the event is replaced")
    }

    #[test]
    fn tuya_tenths_become_degrees_in_place() {
        let mut ev = event("d")
            .property("switch", true)
            .property("va_temperature", 231)
            .property("va_humidity", 40)
            .payload(r#"{"status":[{"code":"va_temperature","value":231}]}"#)
            .build();
        ev.properties[1].time_ms = Some(1_700_000_000_000);
        let out = normalized(&ev);
        let codes: Vec<&str> = out.properties.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["switch", "temperature", "va_humidity"]);
        assert_eq!(out.properties[1].value, Value::Float(23.1));
        assert_eq!(out.properties[1].time_ms, Some(1_700_000_000_000));
        assert_eq!(out.payload, ev.payload, "the vendor body is never touched");
        assert_eq!((out.id, out.device), (ev.id, ev.device));
    }

    #[test]
    fn brightness_range_maps_to_a_whole_percentage_and_clamps() {
        let percent = |raw: i64| {
            normalized(&event("d").property("bright_value_v2", raw).build()).properties[0].clone()
        };
        assert_eq!(percent(10).value, Value::Integer(0));
        assert_eq!(percent(505).value, Value::Integer(50));
        assert_eq!(percent(1000).value, Value::Integer(100));
        assert_eq!(percent(1200).value, Value::Integer(100));
        assert_eq!(percent(0).value, Value::Integer(0));
        assert_eq!(percent(0).code, "brightness");
    }

    #[test]
    fn unclamped_ranges_extrapolate() {
        let config = r#"{"mappings": [{"from": "b", "range": {"from": [0, 10], "to": [0, 100]}, "clamp": false}]}"#;
        let out = run(config, &event("d").property("b", 12).build());
        assert_eq!(
            out.replacement().unwrap().properties[0].value,
            Value::Integer(120)
        );
    }

    #[test]
    fn vendor_filters_keep_mappings_apart() {
        let ali = event("lamp")
            .vendor("alibaba")
            .property("CurrentTemperature", 22.5)
            .build();
        let out = normalized(&ali);
        assert_eq!(out.property_f64("temperature"), Some(22.5));
        assert_eq!(out.property("CurrentTemperature"), None);

        // The same code from another vendor is not this mapping's business.
        let tuya = event("d").property("CurrentTemperature", 22.5).build();
        assert!(run(CONFIG, &tuya).is_keep());
        let huawei = event("d")
            .vendor("huawei")
            .property("va_temperature", 231)
            .build();
        assert!(run(CONFIG, &huawei).is_keep());
    }

    #[test]
    fn product_and_service_filters_apply() {
        let config = r#"{"mappings": [{"from": "temp", "to": "temperature", "product": "p1", "service": "Sensor"}]}"#;
        let fits = event("d")
            .product("p1")
            .service_property("Sensor", "temp", 20)
            .build();
        assert_eq!(
            run(config, &fits).replacement().unwrap().properties[0]
                .service
                .as_deref(),
            Some("Sensor")
        );
        let other_service = event("d")
            .product("p1")
            .service_property("Meter", "temp", 20)
            .build();
        assert!(run(config, &other_service).is_keep());
        let other_product = event("d")
            .product("p2")
            .service_property("Sensor", "temp", 20)
            .build();
        assert!(run(config, &other_product).is_keep());
    }

    #[test]
    fn scale_and_offset_convert_fahrenheit() {
        let config = r#"{"mappings": [{"from": "temp_f", "to": "temperature", "scale": 0.5555555555555556, "offset": -17.77777777777778, "round": 1}]}"#;
        let out = run(config, &event("d").property("temp_f", 98.6).build());
        assert_eq!(
            out.replacement().unwrap().properties[0].value,
            Value::Float(37.0)
        );
    }

    #[test]
    fn integers_stay_integers_unless_the_conversion_makes_a_fraction() {
        let config = r#"{"mappings": [{"from": "a", "scale": 10}, {"from": "b", "scale": 0.5}, {"from": "c", "to": "d"}]}"#;
        let ev = event("x")
            .property("a", 3)
            .property("b", 3)
            .property("c", "on")
            .build();
        let out = run(config, &ev);
        let props = &out.replacement().unwrap().properties;
        assert_eq!(props[0].value, Value::Integer(30));
        assert_eq!(props[1].value, Value::Float(1.5));
        assert_eq!(
            (props[2].code.as_str(), &props[2].value),
            ("d", &Value::Text("on".into()))
        );
    }

    #[test]
    fn events_with_nothing_to_convert_are_kept_not_copied() {
        assert!(run(CONFIG, &event("d").property("switch_led", true).build()).is_keep());
        assert!(run(CONFIG, &event("d").kind(Kind::Online).build()).is_keep());
    }

    #[test]
    fn non_numbers_are_left_alone_when_a_conversion_needs_a_number() {
        let mut host = TestHost::new();
        let mut plugin: NormalizeUnits = host.init(CONFIG).unwrap();
        let ev = event("d").property("va_temperature", "n/a").build();
        assert!(host.handle(&mut plugin, &ev).unwrap().is_keep());
        assert!(host.logged(Level::Debug, "d: `va_temperature` is \"n/a\", not a number"));
    }

    #[test]
    fn a_converted_property_replaces_one_of_the_same_code() {
        let ev = event("d")
            .property("temperature", 99.0)
            .property("va_temperature", 200)
            .build();
        let out = normalized(&ev);
        assert_eq!(out.properties.len(), 1);
        assert_eq!(out.property_f64("temperature"), Some(20.0));
    }

    #[test]
    fn a_property_of_the_same_code_in_another_service_stays() {
        let config =
            r#"{"mappings": [{"from": "temp", "service": "Sensor", "scale": 0.1, "round": 1}]}"#;
        let ev = event("d")
            .vendor("huawei")
            .service_property("Sensor", "temp", 215)
            .service_property("Meter", "temp", 40)
            .build();
        let out = run(config, &ev);
        let props = &out.replacement().unwrap().properties;
        assert_eq!(props.len(), 2);
        assert_eq!(props[0].value, Value::Float(21.5));
        assert_eq!(props[1], ev.properties[1]);
    }

    #[test]
    fn keep_original_adds_the_converted_property() {
        let config = r#"{"mappings": [{"from": "va_temperature", "to": "temperature", "scale": 0.1, "round": 1, "keep_original": true}]}"#;
        let out = run(config, &event("d").property("va_temperature", 235).build());
        let props = &out.replacement().unwrap().properties;
        assert_eq!(props.len(), 2);
        assert_eq!(props[0], Property::new("va_temperature", 235));
        assert_eq!(props[1], Property::new("temperature", 23.5));
    }

    #[test]
    fn bad_configs_are_refused_naming_the_mapping() {
        let refuse = |config: &str| NormalizeUnits::init(&Config::new(config)).err().unwrap();
        assert_eq!(refuse("{}"), "config: missing field `mappings`");
        assert_eq!(
            refuse(r#"{"mappings": []}"#),
            "config: `mappings`: give at least one mapping"
        );
        assert_eq!(
            refuse(r#"{"mappings": [{"from": "a"}, {"to": "b"}]}"#),
            "config: `mappings[1]`: missing field `from`"
        );
        assert_eq!(
            refuse(
                r#"{"mappings": [{"from": "a", "scale": 2, "range": {"from": [0, 1], "to": [0, 2]}}]}"#
            ),
            "config: `mappings[0]`: give either `range` or `scale`/`offset`, not both"
        );
        assert_eq!(
            refuse(r#"{"mappings": [{"from": "a", "range": {"from": [5, 5], "to": [0, 2]}}]}"#),
            "config: `mappings[0]`: `range.from` must span an interval, not [5, 5]"
        );
        assert_eq!(
            refuse(r#"{"mappings": [{"from": "a", "range": {"from": [0, 1]}}]}"#),
            "config: `mappings[0].range`: missing field `to`"
        );
        assert_eq!(
            refuse(r#"{"mappings": [{"from": "a", "keep_original": true}]}"#),
            "config: `mappings[0]`: `keep_original` needs a `to` other than `from`"
        );
        assert_eq!(
            refuse(r#"{"mappings": [{"from": "a", "round": 16}]}"#),
            "config: `mappings[0]`: `round` is at most 15 decimals"
        );
        assert!(
            refuse(r#"{"mappings": [{"from": "a", "factor": 2}]}"#)
                .starts_with("config: `mappings[0].factor`: unknown field `factor`")
        );
    }
}
