//! The normalized event model: what every vendor message becomes, what rules match on, what
//! plugins receive, and the commands they send back.
//!
//! One shape serves every vendor so that a rule written for a Tuya light can be pointed at a
//! Huawei one. Nothing a vendor sent is thrown away: the decrypted body stays in
//! [`Event::payload`] verbatim, and transport metadata (topic, message id, trace id, …) lands
//! in [`Event::attributes`]. The normalized fields are a convenient, typed view on top.
//!
//! The names match the WIT types of the plugin interface (`event`, `device`, `property`,
//! `value`, `kind`, `command`).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// Attribute: the MQTT topic or the AMQP `topic` application property the message came on.
pub(crate) const ATTR_TOPIC: &str = "topic";
/// Attribute: the transport's message id (AMQP `messageId`, Pulsar message id).
pub(crate) const ATTR_MESSAGE_ID: &str = "message-id";
/// Attribute: a request id that a reply must echo (Alink `id`, Huawei `request_id`).
pub(crate) const ATTR_REQUEST_ID: &str = "request-id";
/// Attribute: Huawei legacy command correlation number (`mid`, 1–65535).
pub(crate) const ATTR_MID: &str = "mid";
/// Attribute: Tuya's trace id (the Pulsar `tid` message property).
pub(crate) const ATTR_TRACE_ID: &str = "trace-id";
/// Attribute: the vendor's business code or category (Tuya `bizCode`, Huawei `resource`).
pub(crate) const ATTR_BIZ_CODE: &str = "biz-code";
/// Attribute: the envelope the message arrived in (`tuya-pulsar`, `tuya-business`, `alibaba-amqp`, …).
pub(crate) const ATTR_ENVELOPE: &str = "envelope";
/// Attribute: how the envelope's signature was treated: `verified`, `mismatch` (warn mode let the
/// message through) or `unchecked` (mode off, or the vendor does not sign).
pub const ATTR_SIGNATURE: &str = "signature";
/// Attribute: how a non-JSON body was carried in the payload: `text` (a JSON string) or `base64`.
pub(crate) const ATTR_CONTENT: &str = "content";
/// Attribute: the gateway a sub-device's message came through.
pub(crate) const ATTR_GATEWAY: &str = "gateway";

/// A JSON document kept as its exact text.
///
/// Used for the event payload and for structured values, so a body is never re-encoded (key
/// order, number formatting and unknown fields survive) and costs nothing to keep. The text
/// is always one well-formed JSON value: every constructor checks it, except
/// [`Json::from_parsed`], which the decoders use for a body they have just parsed in full.
#[derive(Clone)]
pub struct Json(String);

impl Json {
    /// Takes a JSON text, checking that it is one well-formed JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(Json(text))
    }

    /// Takes a text that the caller has already parsed successfully as one complete JSON
    /// value, so it is not scanned a second time on the per-event path.
    pub(crate) fn from_parsed(text: String) -> Self {
        Json(text)
    }

    /// A JSON string holding `text`.
    pub fn string(text: &str) -> Self {
        Self::from_serializable(&text)
    }

    /// The JSON `null`.
    pub fn null() -> Self {
        Json("null".to_owned())
    }

    /// Serializes any value; serialization of plain data cannot fail, so this does not either.
    pub(crate) fn from_serializable<T: Serialize + ?Sized>(value: &T) -> Self {
        serde_json::to_string(value).map_or_else(|_| Self::null(), Json)
    }

    /// The JSON text, exactly as it was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text into a tree, for code that needs to look inside.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Json {
    fn default() -> Self {
        Self::null()
    }
}

impl From<serde_json::Value> for Json {
    fn from(value: serde_json::Value) -> Self {
        Self::from_serializable(&value)
    }
}

impl Serialize for Json {
    /// Writes the text inline (not as a string), through `RawValue` so JSON serializers
    /// embed it verbatim.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Json {
    /// Goes through a tree rather than `RawValue` so events can also be read from formats
    /// other than JSON (rule test fixtures in TOML).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Json::from)
    }
}

/// Which cloud (or plain MQTT) an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Tuya: the Pulsar message service, both its IoT Core and Smart Business envelopes.
    Tuya,
    /// Alibaba Cloud IoT Platform: AMQP server-side subscription and device-side MQTT.
    Alibaba,
    /// Huawei Cloud IoTDA: AMQP push and device-side MQTT (legacy v1 and `$oc` topics).
    Huawei,
    /// A generic MQTT broker with no vendor dialect.
    Mqtt,
}

impl Vendor {
    /// Every vendor, in the order error messages list them.
    pub const ALL: [Vendor; 4] = [Vendor::Tuya, Vendor::Alibaba, Vendor::Huawei, Vendor::Mqtt];

    /// The lower-case name used in rules, metrics and the plugin interface.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Tuya => "tuya",
            Vendor::Alibaba => "alibaba",
            Vendor::Huawei => "huawei",
            Vendor::Mqtt => "mqtt",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event is about, across vendors. The vendor's own name for it is in [`Event::action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The device reported property (datapoint) values: Tuya status / `dp_report`, Alibaba
    /// property post, Huawei property report. [`Event::properties`] holds them.
    Properties,
    /// The device came online.
    Online,
    /// The device went offline.
    Offline,
    /// The device's registration changed: bound, unbound, reset, created, deleted, enabled,
    /// disabled, renamed, shared, firmware upgrade progress.
    Lifecycle,
    /// The device raised an event of its thing model (an alarm, a fault, a button press):
    /// Alibaba `thing/event/{id}/post`, Huawei `device.event`.
    DeviceEvent,
    /// A command or a property-set request addressed to the device: Huawei `cloudReq` and
    /// `$oc/.../commands`, Alibaba `property/set`, service calls and RRPC, Tuya `deviceDpCommand`.
    /// A reply is a [`Command`] whose `reply_to` is [`ATTR_REQUEST_ID`] or [`ATTR_MID`].
    Command,
    /// A device's answer to a command.
    CommandReply,
    /// A free-form message: custom topics, Huawei `messages`, Tuya voice intents.
    Message,
    /// Anything else the vendor sends (user, home, room, scene events, …): kept, not interpreted.
    Other,
    /// A timer a rule step set came due: not from a vendor, made by the host and handed only
    /// to the step that set it (then the rule's later steps). `action` is the timer's name.
    Timer,
}

impl Kind {
    /// Every kind an event from a connector can have, in the order error messages list them:
    /// what a rule's `when` and a rule test's input may name. Not [`Kind::Timer`], which
    /// only the host makes and hands only to the step that set the timer.
    pub const ALL: [Kind; 9] = [
        Kind::Properties,
        Kind::Online,
        Kind::Offline,
        Kind::Lifecycle,
        Kind::DeviceEvent,
        Kind::Command,
        Kind::CommandReply,
        Kind::Message,
        Kind::Other,
    ];

    /// The kebab-case name used in rules and the plugin interface.
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

/// The device an event is about, or a command is for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// The vendor's device identifier: Tuya `devId`, Huawei `device_id`, and for Alibaba
    /// `${productKey}.${deviceName}` (a `deviceName` is unique only within its product; the
    /// Link SDK's client id has the same form).
    pub id: String,
    /// The product (model) the device belongs to: Tuya `productKey`/`productId`, Alibaba
    /// `productKey`, Huawei `product_id`. `None` when the message does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The device's name, when the message carries one: a display name, or for Alibaba the
    /// `deviceName` that, with `product`, addresses the device in commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
}

/// A typed property value. Scalars are typed; arrays and objects stay JSON.
///
/// In JSON it is written as the plain value (`true`, `764`, `23.5`, `"white"`, `{…}`), not tagged.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// JSON `null`, or no value.
    #[default]
    Null,
    /// A boolean (switches).
    Boolean(bool),
    /// A whole number that fits in 64 signed bits.
    Integer(i64),
    /// Any other number.
    Float(f64),
    /// A string (enums, text datapoints).
    Text(String),
    /// An array or object, as JSON text.
    Json(Json),
}

impl Value {
    /// The numeric value, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Integer(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// Types a value that a vendor sent as text (Tuya's Smart Business platform writes
    /// `"true"` for a boolean). Only exact, canonical spellings are converted, so a text
    /// datapoint such as a PIN `"0123"` is never turned into a number.
    pub(crate) fn from_lenient_text(text: &str) -> Value {
        match text {
            "true" => return Value::Boolean(true),
            "false" => return Value::Boolean(false),
            _ => {}
        }
        if let Ok(i) = text.parse::<i64>()
            && i.to_string() == text
        {
            return Value::Integer(i);
        }
        if let Ok(f) = text.parse::<f64>()
            && f.is_finite()
            && text.contains('.')
            && serde_json::to_string(&f).is_ok_and(|canonical| canonical == text)
        {
            return Value::Float(f);
        }
        Value::Text(text.to_owned())
    }
}

impl From<serde_json::Value> for Value {
    fn from(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Boolean(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Text(s),
            compound => Value::Json(Json::from(compound)),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Boolean(b) => serializer.serialize_bool(*b),
            Value::Integer(i) => serializer.serialize_i64(*i),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Text(s) => serializer.serialize_str(s),
            Value::Json(json) => json.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    /// A visitor rather than a detour through `serde_json::Value`, so scalar datapoints (the
    /// common case, parsed on every event) allocate nothing beyond their text.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Boolean(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Integer(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
                Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Integer))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
                Ok(Value::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Text(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
                let tree =
                    serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Value::Json(Json::from(tree)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
                let tree =
                    serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Value::Json(Json::from(tree)))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

/// One reported property (Tuya datapoint, Alibaba thing-model property, Huawei service property).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Property {
    /// The property's code: Tuya `code` (or the dp id when a device sends no code), Alibaba
    /// identifier, Huawei property name.
    pub code: String,
    /// The value, typed.
    pub value: Value,
    /// When the device measured it (Unix ms), if the vendor says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    /// The Huawei `service_id` the property belongs to; property names are only unique within
    /// a service. `None` for vendors without services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Property {
    /// A property with just a code and a value.
    pub fn new(code: impl Into<String>, value: Value) -> Self {
        Property {
            code: code.into(),
            value,
            time_ms: None,
            service: None,
        }
    }
}

/// A normalized event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// An id for de-duplication: the vendor's message or data id where it has one (Tuya
    /// `dataId`, AMQP `messageId`, Huawei `request_id`), else the envelope signature or a
    /// digest of the raw message, so a redelivered message gets the same id.
    pub id: String,
    /// The connector (by its configured name) that received the message.
    pub source: String,
    /// The cloud it came from.
    pub vendor: Vendor,
    /// What it is about.
    pub kind: Kind,
    /// The vendor's own name for what happened: Tuya `bizCode`/`eventType` (`status` for
    /// protocol 4), the Alink method (`thing.event.property.post`), Huawei `resource.event`
    /// or topic action.
    pub action: String,
    /// The device it is about.
    pub device: Device,
    /// When it happened, Unix ms: the device's or cloud's time if the message says, else the
    /// envelope's time.
    pub time_ms: u64,
    /// Reported property values, for [`Kind::Properties`] and any event that carries values.
    #[serde(default)]
    pub properties: Vec<Property>,
    /// The decrypted vendor body, verbatim: every field, including ones not normalized above.
    pub payload: Json,
    /// Transport and envelope metadata (see the `ATTR_*` constants).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    /// The first property with this code.
    pub fn property(&self, code: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.code == code)
    }

    /// An attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

/// A command from a rule or plugin to a device, or a reply to a command the device received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The command path to send it on (a configured MQTT link or vendor API); `None` uses the
    /// rule's default path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The target device.
    pub device: Device,
    /// What to do: a Tuya datapoint code (`switch_led`), an Alibaba service identifier or Alink
    /// method, a Huawei command name.
    pub name: String,
    /// The arguments as JSON: the datapoint value for Tuya, the property map or service
    /// arguments for Alibaba, `paras` for Huawei.
    pub params: Json,
    /// Set when this answers a request the device received: the request's
    /// [`ATTR_REQUEST_ID`] or [`ATTR_MID`] attribute, which the reply must echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_serialize_as_plain_json() {
        let props = vec![
            Property::new("a", Value::Boolean(true)),
            Property::new("b", Value::Integer(764)),
            Property::new("c", Value::Float(23.5)),
            Property::new("d", Value::Text("white".into())),
            Property::new(
                "e",
                Value::Json(Json::from_text("[1,{\"x\":2}]".into()).unwrap()),
            ),
            Property::new("f", Value::Null),
        ];
        let text = serde_json::to_string(&props).unwrap();
        assert_eq!(
            text,
            r#"[{"code":"a","value":true},{"code":"b","value":764},{"code":"c","value":23.5},{"code":"d","value":"white"},{"code":"e","value":[1,{"x":2}]},{"code":"f","value":null}]"#
        );
        let back: Vec<Property> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, props);
    }

    #[test]
    fn u64_beyond_i64_becomes_float_not_an_error() {
        let v: Value = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(v, Value::Float(18446744073709551615.0));
    }

    #[test]
    fn lenient_text_converts_only_canonical_spellings() {
        assert_eq!(Value::from_lenient_text("true"), Value::Boolean(true));
        assert_eq!(Value::from_lenient_text("false"), Value::Boolean(false));
        assert_eq!(Value::from_lenient_text("42"), Value::Integer(42));
        assert_eq!(Value::from_lenient_text("-7"), Value::Integer(-7));
        assert_eq!(Value::from_lenient_text("23.5"), Value::Float(23.5));
        assert_eq!(Value::from_lenient_text("0123"), Value::Text("0123".into()));
        assert_eq!(Value::from_lenient_text("1e3"), Value::Text("1e3".into()));
        assert_eq!(Value::from_lenient_text("True"), Value::Text("True".into()));
        assert_eq!(Value::from_lenient_text("NaN"), Value::Text("NaN".into()));
        assert_eq!(Value::from_lenient_text(""), Value::Text(String::new()));
    }

    #[test]
    fn payload_json_is_kept_verbatim() {
        let text = r#"{"z":1,  "a":[1.50,2]}"#;
        let json = Json::from_text(text.to_owned()).unwrap();
        assert_eq!(json.as_str(), text);
        assert!(Json::from_text("{".to_owned()).is_err());
        assert_eq!(Json::string("a\"b").as_str(), r#""a\"b""#);
    }

    #[test]
    fn kinds_use_their_interface_names() {
        for kind in Kind::ALL {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
    }
}
