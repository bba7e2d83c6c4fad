//! Helpers on the WIT types: reading and changing an event's properties and attributes,
//! building commands, and choosing an outcome.
//!
//! The types themselves are generated from `wit/plugin.wit` (see [`crate::bindings`]) and
//! re-exported at the crate root; this module only adds methods, so what a plugin holds is
//! exactly what crosses the component boundary, with no conversion on the way.

use std::fmt;

use serde::Serialize;

use crate::{Changes, Command, Device, Event, Kind, Outcome, Property, Value, Verdict};

/// The vendor name of Alibaba Cloud IoT, whose device names are unique only within a product.
const VENDOR_ALIBABA: &str = "alibaba";

impl Value {
    /// The number, if this is an integer or a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Integer(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The whole number, if this is an integer, or a float with no fractional part that fits
    /// in an `i64` (some vendors write `21.0` for 21).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Integer(i) => Some(i),
            // 2^63 is exactly representable; anything below it with no fraction converts exactly.
            Value::Float(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => {
                Some(f as i64)
            }
            _ => None,
        }
    }

    /// The boolean, if this is one. Text such as `"true"` is not converted: the host already
    /// types the canonical spellings vendors send as text.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// The text, if this is a string value (enums such as Tuya's `pir`/`none`).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a JSON tree. Compound values are parsed from their text; text the host
    /// sent that is not JSON (which it never should) reads as `null`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Boolean(b) => serde_json::Value::Bool(*b),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Json(text) => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Whether this value equals a JSON value from a plugin's configuration: numbers compare
    /// by value (`1` matches `1.0`), text matches a JSON string, compound values compare as
    /// trees.
    pub fn matches_json(&self, expected: &serde_json::Value) -> bool {
        match (self, expected) {
            (Value::Null, serde_json::Value::Null) => true,
            (Value::Boolean(a), serde_json::Value::Bool(b)) => a == b,
            (Value::Integer(_) | Value::Float(_), serde_json::Value::Number(n)) => {
                self.as_f64() == n.as_f64()
            }
            (Value::Text(a), serde_json::Value::String(b)) => a == b,
            (Value::Json(_), serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
                &self.to_json() == expected
            }
            _ => false,
        }
    }
}

impl From<serde_json::Value> for Value {
    /// Types a JSON value the way the host does: whole numbers that fit become integers,
    /// other numbers floats, arrays and objects stay JSON text.
    fn from(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Boolean(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => n.as_f64().map_or(Value::Null, Value::Float),
            },
            serde_json::Value::String(s) => Value::Text(s),
            compound => Value::Json(compound.to_string()),
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Integer(i.into())
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Integer(i.into())
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl fmt::Display for Value {
    /// Writes the value as JSON (`true`, `235`, `"pir"`, `{…}`), as the host shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Json(text) => f.write_str(text),
            other => write!(f, "{}", other.to_json()),
        }
    }
}

impl Kind {
    /// The kebab-case name used in rules and the WIT (`properties`, `device-event`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Properties => "properties",
            Kind::Online => "online",
            Kind::Offline => "offline",
            Kind::Lifecycle => "lifecycle",
            Kind::DeviceEvent => "device-event",
            Kind::Command => "command",
            Kind::CommandReply => "command-reply",
            Kind::Message => "message",
            Kind::Other => "other",
            Kind::Timer => "timer",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Device {
    /// A device known only by its id.
    pub fn new(id: impl Into<String>) -> Self {
        Device {
            id: id.into(),
            product: None,
            name: None,
        }
    }

    /// The same device, with its product set (Alibaba needs it to address a device).
    pub fn with_product(mut self, product: impl Into<String>) -> Self {
        self.product = Some(product.into());
        self
    }
}

impl From<&str> for Device {
    fn from(id: &str) -> Self {
        Device::new(id)
    }
}

impl From<String> for Device {
    fn from(id: String) -> Self {
        Device::new(id)
    }
}

impl From<&Device> for Device {
    fn from(device: &Device) -> Self {
        device.clone()
    }
}

impl Property {
    /// A property with just a code and a value.
    pub fn new(code: impl Into<String>, value: impl Into<Value>) -> Self {
        Property {
            code: code.into(),
            value: value.into(),
            time_ms: None,
            service: None,
        }
    }
}

impl Event {
    /// The first property with this code.
    pub fn property(&self, code: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.code == code)
    }

    /// The first property with this code, to change in place.
    pub fn property_mut(&mut self, code: &str) -> Option<&mut Property> {
        self.properties.iter_mut().find(|p| p.code == code)
    }

    /// The value of the first property with this code.
    pub fn value(&self, code: &str) -> Option<&Value> {
        self.property(code).map(|p| &p.value)
    }

    /// The property's value as a number (see [`Value::as_f64`]); `None` if the event has no
    /// such property or it is not a number.
    pub fn property_f64(&self, code: &str) -> Option<f64> {
        self.value(code).and_then(Value::as_f64)
    }

    /// The property's value as a whole number (see [`Value::as_i64`]).
    pub fn property_i64(&self, code: &str) -> Option<i64> {
        self.value(code).and_then(Value::as_i64)
    }

    /// The property's value as a boolean.
    pub fn property_bool(&self, code: &str) -> Option<bool> {
        self.value(code).and_then(Value::as_bool)
    }

    /// The property's value as text.
    pub fn property_str(&self, code: &str) -> Option<&str> {
        self.value(code).and_then(Value::as_str)
    }

    /// Sets the value of the first property with this code, or appends a new property.
    pub fn set_property(&mut self, code: &str, value: impl Into<Value>) {
        set_property(&mut self.properties, code, value.into());
    }

    /// Removes every property with this code and returns the first of them.
    pub fn remove_property(&mut self, code: &str) -> Option<Property> {
        let index = self.properties.iter().position(|p| p.code == code)?;
        let first = self.properties.remove(index);
        self.properties.retain(|p| p.code != code);
        Some(first)
    }

    /// An attribute's value (`topic`, `message-id`, …).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an attribute, replacing its value if it exists, keeping the list sorted by name
    /// as the host sends it.
    pub fn set_attribute(&mut self, name: &str, value: impl Into<String>) {
        set_attribute(&mut self.attributes, name, value.into());
    }

    /// Removes an attribute and returns its value.
    pub fn remove_attribute(&mut self, name: &str) -> Option<String> {
        let index = self.attributes.iter().position(|(n, _)| n == name)?;
        Some(self.attributes.remove(index).1)
    }

    /// The vendor body parsed as JSON, to read a field the normalized view does not carry.
    pub fn payload_json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.payload).map_err(|e| format!("event payload: {e}"))
    }

    /// A key naming this event's device uniquely within its vendor, for plugin state: the
    /// device id, prefixed with the product for Alibaba, whose device names are unique only
    /// within a product.
    pub fn device_key(&self) -> String {
        device_key(&self.vendor, &self.device)
    }
}

/// See [`Event::device_key`].
pub(crate) fn device_key(vendor: &str, device: &Device) -> String {
    match &device.product {
        Some(product) if vendor == VENDOR_ALIBABA => format!("{product}/{}", device.id),
        _ => device.id.clone(),
    }
}

/// Sets the value of the first property with this code, or appends a new property.
pub(crate) fn set_property(properties: &mut Vec<Property>, code: &str, value: Value) {
    match properties.iter_mut().find(|p| p.code == code) {
        Some(property) => property.value = value,
        None => properties.push(Property::new(code, value)),
    }
}

/// Sets an attribute in a list sorted by name, as the host sends them.
pub(crate) fn set_attribute(attributes: &mut Vec<(String, String)>, name: &str, value: String) {
    match attributes.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(index) => attributes[index].1 = value,
        Err(index) => attributes.insert(index, (name.to_owned(), value)),
    }
}

impl Command {
    /// A command named `name` (a Tuya datapoint code, an Alibaba service or Alink method, a
    /// Huawei command name) for a device, with empty parameters (`{}`), on the rule's default
    /// command path.
    ///
    /// ```
    /// use iotrules_plugin_sdk::Command;
    ///
    /// let on = Command::new("vdevo-light-1", "switch_led").params(true).via("tuya-api");
    /// assert_eq!(on.params, "true");
    /// let set = Command::new("lamp-1", "thing.service.property.set").param("LightSwitch", 1);
    /// assert_eq!(set.params, r#"{"LightSwitch":1}"#);
    /// ```
    pub fn new(device: impl Into<Device>, name: impl Into<String>) -> Self {
        Command {
            via: None,
            device: device.into(),
            name: name.into(),
            params: "{}".to_owned(),
            reply_to: None,
        }
    }

    /// Sets one named parameter, making the parameters a JSON object if they are not one yet.
    /// A value with no JSON form (a map with non-string keys) is written as `null`.
    pub fn param(mut self, key: &str, value: impl Serialize) -> Self {
        let mut params = match serde_json::from_str(&self.params) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        params.insert(key.to_owned(), to_json(value));
        self.params = serde_json::Value::Object(params).to_string();
        self
    }

    /// Sets the whole parameters: for Tuya, the datapoint's value (`true`, `500`, `"white"`);
    /// for Alibaba and Huawei, the argument object. A value with no JSON form is written as
    /// `null`.
    pub fn params(mut self, value: impl Serialize) -> Self {
        self.params = to_json(value).to_string();
        self
    }

    /// Sends it on this command path (a configured MQTT link or vendor API) instead of the
    /// rule's default.
    pub fn via(mut self, path: impl Into<String>) -> Self {
        self.via = Some(path.into());
        self
    }

    /// Marks it as the reply to a request the device received, echoing that request's
    /// `request-id` or `mid` attribute.
    pub fn reply_to(mut self, request: impl Into<String>) -> Self {
        self.reply_to = Some(request.into());
        self
    }

    /// The parameters parsed as JSON (`null` if they are not JSON, which this SDK never
    /// writes).
    pub fn params_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.params).unwrap_or(serde_json::Value::Null)
    }
}

/// Serializes plain data; the only failure (a map with non-string keys) becomes `null`.
fn to_json(value: impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

impl Outcome {
    /// Pass the event on unchanged.
    pub fn keep() -> Self {
        Self::with_verdict(Verdict::Keep)
    }

    /// Stop the event here: later steps of the rule do not see it.
    pub fn drop() -> Self {
        Self::with_verdict(Verdict::Drop)
    }

    /// Pass this event on instead of the one received.
    pub fn replace(event: Event) -> Self {
        Self::with_verdict(Verdict::Replace(event))
    }

    /// Pass the event on with these changes made. Only the changed fields cross back to the
    /// host, so this is cheaper than [`Outcome::replace`] when a field or two change.
    pub fn update(changes: Changes) -> Self {
        Self::with_verdict(Verdict::Update(changes))
    }

    fn with_verdict(verdict: Verdict) -> Self {
        Outcome {
            verdict,
            commands: Vec::new(),
        }
    }

    /// Adds a command to send (whatever the verdict).
    pub fn with_command(mut self, command: Command) -> Self {
        self.commands.push(command);
        self
    }

    /// Adds several commands to send, in order.
    pub fn with_commands(mut self, commands: impl IntoIterator<Item = Command>) -> Self {
        self.commands.extend(commands);
        self
    }

    /// Whether the verdict is keep.
    pub fn is_keep(&self) -> bool {
        matches!(self.verdict, Verdict::Keep)
    }

    /// Whether the verdict is drop.
    pub fn is_drop(&self) -> bool {
        matches!(self.verdict, Verdict::Drop)
    }

    /// The replacement event, if the verdict is replace.
    pub fn replacement(&self) -> Option<&Event> {
        match &self.verdict {
            Verdict::Replace(event) => Some(event),
            _ => None,
        }
    }

    /// The changes, if the verdict is update.
    pub fn changes(&self) -> Option<&Changes> {
        match &self.verdict {
            Verdict::Update(changes) => Some(changes),
            _ => None,
        }
    }

    /// What the next step sees when this is the answer for `event`: `event` itself (keep),
    /// nothing (drop), the replacement, or `event` with the changes made.
    pub fn passed_on(&self, event: &Event) -> Option<Event> {
        match &self.verdict {
            Verdict::Keep => Some(event.clone()),
            Verdict::Drop => None,
            Verdict::Replace(replacement) => Some(replacement.clone()),
            Verdict::Update(changes) => Some(changes.apply_to(event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::event;

    #[test]
    fn numbers_read_across_integer_and_float() {
        assert_eq!(Value::Integer(235).as_f64(), Some(235.0));
        assert_eq!(Value::Float(21.0).as_i64(), Some(21));
        assert_eq!(Value::Float(21.5).as_i64(), None);
        assert_eq!(Value::Float(f64::NAN).as_i64(), None);
        assert_eq!(Value::Float(1e19).as_i64(), None);
        assert_eq!(Value::Text("21".into()).as_f64(), None);
        assert_eq!(Value::Boolean(true).as_i64(), None);
    }

    #[test]
    fn json_values_type_like_the_host() {
        assert_eq!(Value::from(serde_json::json!(764)), Value::Integer(764));
        assert_eq!(Value::from(serde_json::json!(23.5)), Value::Float(23.5));
        assert_eq!(
            Value::from(serde_json::json!("pir")),
            Value::Text("pir".into())
        );
        assert_eq!(
            Value::from(serde_json::json!({"h": 1})),
            Value::Json(r#"{"h":1}"#.into())
        );
        assert_eq!(Value::Json(r#"{"h":1}"#.into()).to_string(), r#"{"h":1}"#);
        assert_eq!(Value::Text("a\"b".into()).to_string(), r#""a\"b""#);
    }

    #[test]
    fn values_match_config_json_by_meaning() {
        assert!(Value::Integer(1).matches_json(&serde_json::json!(1.0)));
        assert!(Value::Text("pir".into()).matches_json(&serde_json::json!("pir")));
        assert!(!Value::Text("true".into()).matches_json(&serde_json::json!(true)));
        assert!(Value::Json(r#"{"a": 1}"#.into()).matches_json(&serde_json::json!({"a": 1})));
        assert!(!Value::Boolean(false).matches_json(&serde_json::json!(0)));
    }

    #[test]
    fn set_property_replaces_or_appends() {
        let mut ev = event("d").property("a", 1).build();
        ev.set_property("a", 2);
        ev.set_property("b", "x");
        assert_eq!(ev.property_i64("a"), Some(2));
        assert_eq!(ev.property_str("b"), Some("x"));
        assert_eq!(ev.properties.len(), 2);
        assert_eq!(
            ev.remove_property("a").map(|p| p.value),
            Some(Value::Integer(2))
        );
        assert_eq!(ev.property("a"), None);
    }

    #[test]
    fn attributes_stay_sorted_and_unique() {
        let mut ev = event("d").build();
        ev.set_attribute("topic", "t");
        ev.set_attribute("message-id", "m");
        ev.set_attribute("topic", "t2");
        assert_eq!(
            ev.attributes,
            vec![
                ("message-id".to_owned(), "m".to_owned()),
                ("topic".to_owned(), "t2".to_owned())
            ]
        );
        assert_eq!(ev.attribute("topic"), Some("t2"));
        assert_eq!(ev.remove_attribute("topic").as_deref(), Some("t2"));
        assert_eq!(ev.attribute("topic"), None);
    }

    #[test]
    fn alibaba_device_keys_carry_the_product() {
        let ali = event("lamp-1").vendor("alibaba").product("a1B2").build();
        assert_eq!(ali.device_key(), "a1B2/lamp-1");
        let tuya = event("vdevo1").vendor("tuya").product("p").build();
        assert_eq!(tuya.device_key(), "vdevo1");
    }

    #[test]
    fn command_params_build_json() {
        let c = Command::new("d", "switch_led")
            .param("switch_led", true)
            .param("bright_value_v2", 500)
            .via("tuya-api");
        assert_eq!(
            c.params_json(),
            serde_json::json!({"switch_led": true, "bright_value_v2": 500})
        );
        assert_eq!(c.via.as_deref(), Some("tuya-api"));
        let whole = Command::new("d", "switch_led").params(false).param("x", 1);
        assert_eq!(
            whole.params, r#"{"x":1}"#,
            "param on a scalar starts an object"
        );
        assert_eq!(Command::new("d", "reboot").params, "{}");
        let reply = Command::new("d", "rsp").reply_to("42");
        assert_eq!(reply.reply_to.as_deref(), Some("42"));
    }

    #[test]
    fn outcomes_carry_verdict_and_commands() {
        let ev = event("d").build();
        let out = Outcome::replace(ev.clone()).with_command(Command::new("d", "x"));
        assert_eq!(out.replacement(), Some(&ev));
        assert_eq!(out.commands.len(), 1);
        assert!(Outcome::keep().is_keep());
        assert!(Outcome::drop().is_drop());
        assert_eq!(Kind::DeviceEvent.to_string(), "device-event");
    }
}
