//! The `json` dialect: plain JSON over any MQTT broker (local devices, zigbee2mqtt-style
//! bridges), for the generic `mqtt` link.
//!
//! There is no vendor envelope: the device comes from the topic, through a template such as
//! `zigbee2mqtt/{device}` (`{device}` is one topic level; `+` matches any one level and a
//! final `#` any rest), and a JSON object's top-level scalar fields become the event's
//! properties (`{"state":"ON","brightness":128}` → `state`, `brightness`). Nested values
//! stay in the payload, which is kept verbatim. A payload that is not a JSON object is kept
//! as a [`Kind::Message`].

use std::collections::BTreeMap;

use super::{DecodeError, RawMessage, body_as_payload, receipt_id, skip_map, skip_seq};
use crate::event::{ATTR_TOPIC, Device, Event, Json, Kind, Property, Value, Vendor};

/// The placeholder of the device id in a topic template.
pub(crate) const DEVICE: &str = "{device}";

/// What the properties of a bare JSON object are (its top-level fields are the values).
const ACTION_STATE: &str = "state";

/// A topic template taken apart into levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<String>,
}

impl TopicTemplate {
    /// Parses a template with exactly one `{device}` level; `+` and a final `#` are
    /// wildcards. The error says what is wrong.
    pub fn parse(template: &str) -> Result<Self, String> {
        let levels: Vec<String> = template.split('/').map(str::to_owned).collect();
        if levels.iter().filter(|l| *l == DEVICE).count() != 1 {
            return Err(format!(
                "topic template \"{template}\" needs exactly one level that is `{DEVICE}`"
            ));
        }
        for (index, level) in levels.iter().enumerate() {
            if level == "#" && index + 1 != levels.len() {
                return Err(format!(
                    "topic template \"{template}\": `#` can only be the last level"
                ));
            }
            if level != DEVICE
                && level != "+"
                && level != "#"
                && level.contains(['{', '}', '+', '#'])
            {
                return Err(format!(
                    "topic template \"{template}\": level \"{level}\" mixes a placeholder or \
                     wildcard with text"
                ));
            }
        }
        Ok(TopicTemplate { levels })
    }

    /// The device id in `topic` and the levels after the template's last one (for a final
    /// `#`), or `None` if the topic does not fit.
    pub fn device<'a>(&self, topic: &'a str) -> Option<(&'a str, String)> {
        let mut parts = topic.split('/');
        let mut device = None;
        for level in &self.levels {
            if level == "#" {
                let rest: Vec<&str> = parts.collect();
                return device.map(|d| (d, rest.join(".")));
            }
            let part = parts.next()?;
            if level == DEVICE {
                if part.is_empty() {
                    return None;
                }
                device = Some(part);
            } else if level != "+" && level != part {
                return None;
            }
        }
        match parts.next() {
            Some(_) => None,
            None => device.map(|d| (d, String::new())),
        }
    }
}

/// Decodes JSON published on topics that fit a template.
#[derive(Debug, Clone)]
pub struct Decoder {
    template: TopicTemplate,
}

impl Decoder {
    /// A decoder taking the device from topics that fit `template`.
    pub fn new(template: TopicTemplate) -> Self {
        Decoder { template }
    }

    /// Normalizes one message: the device from the topic, the properties from a JSON
    /// object's scalar fields. A topic that does not fit the template is an error naming it.
    pub fn decode(&self, message: &RawMessage<'_>) -> Result<Event, DecodeError> {
        let Some(topic) = message.property(ATTR_TOPIC) else {
            return Err(DecodeError::shape("message", "has no `topic` property"));
        };
        let Some((device, rest)) = self.template.device(topic) else {
            return Err(DecodeError::shape(
                "topic",
                format!(
                    "\"{}\" does not fit the connector's device_topic template",
                    super::clip(topic)
                ),
            ));
        };
        let mut event = Event {
            // Plain MQTT carries no message id, and the same payload again is a new reading
            // (a second button press, a state repeated): an id from the content would let
            // the pipeline's de-duplication drop it. Each receipt is its own event.
            id: receipt_id(),
            source: message.source.to_owned(),
            vendor: Vendor::Mqtt,
            kind: Kind::Message,
            action: if rest.is_empty() {
                ACTION_STATE.to_owned()
            } else {
                rest
            },
            device: Device::new(device),
            time_ms: 0,
            properties: Vec::new(),
            payload: Json::null(),
            attributes: BTreeMap::new(),
        };
        event
            .attributes
            .insert(ATTR_TOPIC.to_owned(), topic.to_owned());
        let json = std::str::from_utf8(message.payload)
            .ok()
            .and_then(|text| Some((text, serde_json::from_str::<TopLevel>(text).ok()?)));
        match json {
            Some((text, TopLevel(fields))) => {
                event.payload = Json::from_parsed(text.to_owned());
                if let Some(properties) = fields {
                    event.kind = Kind::Properties;
                    event.properties = properties;
                }
            }
            None => body_as_payload(message.payload, &mut event),
        }
        Ok(event)
    }
}

/// A payload read as JSON in one pass: the scalar fields of an object as properties, or
/// `None` for any other JSON value. The properties are what a `serde_json::Value` would hold
/// (ordered by name, the last of a repeated name kept), without building one.
struct TopLevel(Option<Vec<Property>>);

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopLevelVisitor;

        impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
            type Value = TopLevel;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel, A::Error> {
                let mut fields: Vec<(String, Option<Value>)> = Vec::new();
                while let Some(code) = map.next_key::<String>()? {
                    fields.push((code, map.next_value::<Scalar>()?.0));
                }
                // Newest first, so that of a repeated name the stable sort keeps the last
                // one in front, where `dedup_by` keeps it.
                fields.reverse();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                fields.dedup_by(|later, kept| later.0 == kept.0);
                let properties = fields
                    .into_iter()
                    .filter_map(|(code, value)| Some(Property::new(code, value?)))
                    .collect();
                Ok(TopLevel(Some(properties)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<TopLevel, A::Error> {
                skip_seq(seq)?;
                Ok(TopLevel(None))
            }

            fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
                Ok(TopLevel(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
                Ok(TopLevel(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
                Ok(TopLevel(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
                Ok(TopLevel(None))
            }

            fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
                Ok(TopLevel(None))
            }

            fn visit_unit<E>(self) -> Result<TopLevel, E> {
                Ok(TopLevel(None))
            }
        }

        d.deserialize_any(TopLevelVisitor)
    }
}

/// A field's value as a property value; `None` for arrays and objects, which are skipped.
struct Scalar(Option<Value>);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(Some(Value::Null)))
            }

            fn visit_bool<E>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar(Some(Value::Boolean(b))))
            }

            fn visit_i64<E>(self, i: i64) -> Result<Scalar, E> {
                Ok(Scalar(Some(Value::Integer(i))))
            }

            fn visit_u64<E>(self, u: u64) -> Result<Scalar, E> {
                Ok(Scalar(Some(
                    i64::try_from(u).map_or(Value::Float(u as f64), Value::Integer),
                )))
            }

            fn visit_f64<E>(self, f: f64) -> Result<Scalar, E> {
                Ok(Scalar(Some(Value::Float(f))))
            }

            fn visit_str<E>(self, text: &str) -> Result<Scalar, E> {
                Ok(Scalar(Some(Value::Text(text.to_owned()))))
            }

            fn visit_string<E>(self, text: String) -> Result<Scalar, E> {
                Ok(Scalar(Some(Value::Text(text))))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                skip_seq(seq)?;
                Ok(Scalar(None))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                skip_map(map)?;
                Ok(Scalar(None))
            }
        }

        d.deserialize_any(ScalarVisitor)
    }
}

/// The topic and payload of `command` on an `mqtt` link publishing on `topic` (a template of
/// `{device}` and `{name}`): the params as they are.
pub(crate) fn command_message(
    topic: &str,
    command: &crate::event::Command,
) -> Result<(String, Vec<u8>), String> {
    let device = command.device.id.as_str();
    if !super::topic_segment(device) {
        return Err(format!("device id \"{device}\" cannot go into a topic"));
    }
    if command.name.contains(['+', '#', '\0']) {
        return Err(format!("name \"{}\" cannot go into a topic", command.name));
    }
    Ok((
        fill_topic(topic, device, &command.name),
        command.params.as_str().into(),
    ))
}

/// `template` with its `{device}` and `{name}` filled in, in one pass: a placeholder that the
/// device id or the name itself holds stays as it is.
fn fill_topic(template: &str, device: &str, name: &str) -> String {
    let mut topic = String::with_capacity(template.len() + device.len() + name.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        topic.push_str(&rest[..at]);
        let from = &rest[at..];
        rest = if let Some(after) = from.strip_prefix(DEVICE) {
            topic.push_str(device);
            after
        } else if let Some(after) = from.strip_prefix("{name}") {
            topic.push_str(name);
            after
        } else {
            topic.push('{');
            &from[1..]
        };
    }
    topic.push_str(rest);
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(template: &str, topic: &str, payload: &str) -> Result<Event, DecodeError> {
        let decoder = Decoder::new(TopicTemplate::parse(template).unwrap());
        let properties = [("topic".to_owned(), topic.to_owned())];
        decoder.decode(&RawMessage::new("z", payload.as_bytes()).with_properties(&properties))
    }

    #[test]
    fn a_json_object_becomes_the_properties_of_the_device_in_the_topic() {
        let event = decode(
            "zigbee2mqtt/{device}",
            "zigbee2mqtt/lamp-1",
            r#"{"state":"ON","brightness":128,"temp":21.5,"color":{"x":0.3}}"#,
        )
        .unwrap();
        assert_eq!(event.device.id, "lamp-1");
        assert_eq!(event.vendor, Vendor::Mqtt);
        assert_eq!(event.kind, Kind::Properties);
        assert_eq!(event.action, "state");
        let codes: Vec<&str> = event.properties.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["brightness", "state", "temp"]);
        assert_eq!(
            event.property("brightness").unwrap().value,
            Value::Integer(128)
        );
        assert!(event.payload.as_str().contains("\"color\""));
        assert_eq!(event.attribute("topic"), Some("zigbee2mqtt/lamp-1"));
    }

    /// The properties as a `serde_json::Value` of the payload holds them: what the one-pass
    /// reading must answer.
    fn as_a_value_holds_them(payload: &str) -> Option<Vec<Property>> {
        let serde_json::Value::Object(fields) = serde_json::from_str(payload).ok()? else {
            return None;
        };
        let scalar = |value| {
            Some(match value {
                serde_json::Value::Null => Value::Null,
                serde_json::Value::Bool(b) => Value::Boolean(b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::Integer(i),
                    None => Value::Float(n.as_f64()?),
                },
                serde_json::Value::String(text) => Value::Text(text),
                _ => return None,
            })
        };
        Some(
            fields
                .into_iter()
                .filter_map(|(code, value)| Some(Property::new(code, scalar(value)?)))
                .collect(),
        )
    }

    #[test]
    fn fields_are_read_in_one_pass_as_a_json_value_would_hold_them() {
        for payload in [
            r#"{"state":"ON","brightness":128,"temp":21.5,"color":{"x":0.3}}"#,
            r#"{"b":1,"a":2,"b":3}"#,
            r#"{"b":1,"a":2,"b":[1,2]}"#,
            r#"{"b":{"c":1},"b":"text"}"#,
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"e":1e3,"n":null}"#,
            r#"{"esc":"a\"b\u00e9","t":true,"f":false,"list":[{"x":1}],"":0}"#,
            r#"{}"#,
        ] {
            let event = decode("z2m/{device}", "z2m/lamp", payload).unwrap();
            assert_eq!(event.kind, Kind::Properties, "{payload}");
            assert_eq!(
                Some(event.properties),
                as_a_value_holds_them(payload),
                "{payload}"
            );
            assert_eq!(event.payload.as_str(), payload);
        }
        for (payload, kind, content) in [
            ("[1,{\"a\":2}]", Kind::Message, None),
            ("12", Kind::Message, None),
            ("\"on\"", Kind::Message, None),
            ("{\"a\":1} x", Kind::Message, Some("text")),
            ("{\"a\":", Kind::Message, Some("text")),
        ] {
            let event = decode("z2m/{device}", "z2m/lamp", payload).unwrap();
            assert_eq!(
                (event.kind, event.attribute("content")),
                (kind, content),
                "{payload}"
            );
            assert!(event.properties.is_empty(), "{payload}");
        }
    }

    #[test]
    fn a_command_topic_fills_its_placeholders_once() {
        for (template, device, name, topic) in [
            ("z2m/{device}/set", "lamp", "on", "z2m/lamp/set"),
            ("{device}/{name}/{device}", "a", "b", "a/b/a"),
            ("x/{other}/{name}{", "d", "n", "x/{other}/n{"),
            (
                "z/{device}/{name}",
                "a{name}",
                "{device}",
                "z/a{name}/{device}",
            ),
        ] {
            assert_eq!(fill_topic(template, device, name), topic, "{template}");
        }
    }

    #[test]
    fn the_same_message_received_twice_is_two_events_not_a_duplicate() {
        let first = decode("z2m/{device}", "z2m/button", r#"{"action":"single"}"#).unwrap();
        let second = decode("z2m/{device}", "z2m/button", r#"{"action":"single"}"#).unwrap();
        assert_ne!(first.id, second.id);
    }

    #[test]
    fn wildcards_match_levels_and_a_final_hash_becomes_the_action() {
        let event = decode("home/+/{device}/#", "home/kitchen/plug/power/now", "12").unwrap();
        assert_eq!(event.device.id, "plug");
        assert_eq!(event.action, "power.now");
        assert_eq!(event.kind, Kind::Message);
        let text = decode("home/{device}", "home/plug", "not json").unwrap();
        assert_eq!(text.attribute("content"), Some("text"));
    }

    #[test]
    fn topics_that_do_not_fit_and_bad_templates_are_refused() {
        for topic in [
            "other/lamp",
            "zigbee2mqtt",
            "zigbee2mqtt/lamp/set",
            "zigbee2mqtt/",
        ] {
            let error = decode("zigbee2mqtt/{device}", topic, "{}").unwrap_err();
            assert!(
                error.to_string().contains("does not fit"),
                "{topic}: {error}"
            );
        }
        assert!(TopicTemplate::parse("a/b").is_err());
        assert!(TopicTemplate::parse("{device}/{device}").is_err());
        assert!(TopicTemplate::parse("#/{device}").is_err());
        assert!(TopicTemplate::parse("a+/{device}").is_err());
    }
}
