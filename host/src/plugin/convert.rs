//! The host's event model ↔ the WIT types of both world versions. Everything coming back
//! from a guest is checked: JSON text must be JSON, the vendor must be known.
//!
//! 0.2.0 (`v2`) types are owned: the host hands them out one field at a time from the
//! `event-view` methods. 0.1.0 (`v1`) borrows the host's strings for the whole event it
//! lowers into every call; what a 0.1.0 guest sends back is moved into the 0.2.0 types and
//! checked by the same code.

use super::bindings::iotrules_v1 as v1;
use super::bindings::iotrules_v2 as v2;
use super::{Outcome, Verdict};
use crate::event::{Command, Device, Event, Json, Kind, Property, Value, Vendor};
use v1::Kind as V1Kind;
use v2::Kind as V2Kind;

/// Runs `f` with `event` as the 0.1.0 WIT type, borrowing its strings.
pub(crate) fn with_v1_event<R>(event: &Event, f: impl FnOnce(v1::EventParam<'_>) -> R) -> R {
    let properties: Vec<_> = event.properties.iter().map(property_to_v1).collect();
    let attributes: Vec<_> = event
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    f(v1::EventParam {
        id: &event.id,
        source: &event.source,
        vendor: event.vendor.as_str(),
        kind: kind_to_v1(event.kind),
        action: &event.action,
        device: v1::DeviceParam {
            id: &event.device.id,
            product: event.device.product.as_deref(),
            name: event.device.name.as_deref(),
        },
        time_ms: event.time_ms,
        properties: &properties,
        payload: event.payload.as_str(),
        attributes: &attributes,
    })
}

fn property_to_v1(property: &Property) -> v1::PropertyParam<'_> {
    v1::PropertyParam {
        code: &property.code,
        value: match &property.value {
            Value::Null => v1::ValueParam::Null,
            Value::Boolean(b) => v1::ValueParam::Boolean(*b),
            Value::Integer(i) => v1::ValueParam::Integer(*i),
            Value::Float(f) => v1::ValueParam::Float(*f),
            Value::Text(s) => v1::ValueParam::Text(s),
            Value::Json(json) => v1::ValueParam::Json(json.as_str()),
        },
        time_ms: property.time_ms,
        service: property.service.as_deref(),
    }
}

/// The same nine kinds in the host's model and in both WIT versions, matched by name.
macro_rules! convert_kind {
    ($kind:expr, $from:ident => $to:ident) => {
        match $kind {
            $from::Properties => $to::Properties,
            $from::Online => $to::Online,
            $from::Offline => $to::Offline,
            $from::Lifecycle => $to::Lifecycle,
            $from::DeviceEvent => $to::DeviceEvent,
            $from::Command => $to::Command,
            $from::CommandReply => $to::CommandReply,
            $from::Message => $to::Message,
            $from::Other => $to::Other,
        }
    };
}

fn kind_to_v1(kind: Kind) -> V1Kind {
    convert_kind!(kind, Kind => V1Kind)
}

pub(crate) fn kind_to_v2(kind: Kind) -> V2Kind {
    convert_kind!(kind, Kind => V2Kind)
}

fn kind_from_v2(kind: V2Kind) -> Kind {
    convert_kind!(kind, V2Kind => Kind)
}

fn kind_v1_to_v2(kind: V1Kind) -> V2Kind {
    convert_kind!(kind, V1Kind => V2Kind)
}

pub(crate) fn device_to_v2(device: &Device) -> v2::Device {
    v2::Device {
        id: device.id.clone(),
        product: device.product.clone(),
        name: device.name.clone(),
    }
}

pub(crate) fn property_to_v2(property: &Property) -> v2::Property {
    v2::Property {
        code: property.code.clone(),
        value: match &property.value {
            Value::Null => v2::Value::Null,
            Value::Boolean(b) => v2::Value::Boolean(*b),
            Value::Integer(i) => v2::Value::Integer(*i),
            Value::Float(f) => v2::Value::Float(*f),
            Value::Text(s) => v2::Value::Text(s.clone()),
            Value::Json(json) => v2::Value::Json(json.as_str().to_owned()),
        },
        time_ms: property.time_ms,
        service: property.service.clone(),
    }
}

pub(crate) fn attributes_to_v2(event: &Event) -> Vec<(String, String)> {
    event
        .attributes
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The whole event, for `event-view.whole`.
pub(crate) fn event_to_v2(event: &Event) -> v2::Event {
    v2::Event {
        id: event.id.clone(),
        source: event.source.clone(),
        vendor: event.vendor.as_str().to_owned(),
        kind: kind_to_v2(event.kind),
        action: event.action.clone(),
        device: device_to_v2(&event.device),
        time_ms: event.time_ms,
        properties: event.properties.iter().map(property_to_v2).collect(),
        payload: event.payload.as_str().to_owned(),
        attributes: attributes_to_v2(event),
    }
}

fn device_v1_to_v2(device: v1::DeviceResult) -> v2::Device {
    v2::Device {
        id: device.id,
        product: device.product,
        name: device.name,
    }
}

fn property_v1_to_v2(property: v1::PropertyResult) -> v2::Property {
    v2::Property {
        code: property.code,
        value: match property.value {
            v1::ValueResult::Null => v2::Value::Null,
            v1::ValueResult::Boolean(b) => v2::Value::Boolean(b),
            v1::ValueResult::Integer(i) => v2::Value::Integer(i),
            v1::ValueResult::Float(f) => v2::Value::Float(f),
            v1::ValueResult::Text(s) => v2::Value::Text(s),
            v1::ValueResult::Json(s) => v2::Value::Json(s),
        },
        time_ms: property.time_ms,
        service: property.service,
    }
}

fn event_v1_to_v2(event: v1::EventResult) -> v2::Event {
    v2::Event {
        id: event.id,
        source: event.source,
        vendor: event.vendor,
        kind: kind_v1_to_v2(event.kind),
        action: event.action,
        device: device_v1_to_v2(event.device),
        time_ms: event.time_ms,
        properties: event
            .properties
            .into_iter()
            .map(property_v1_to_v2)
            .collect(),
        payload: event.payload,
        attributes: event.attributes,
    }
}

/// A 0.1.0 guest's answer, checked like a 0.2.0 one.
pub(crate) fn outcome_from_v1(outcome: v1::Outcome, original: &Event) -> Result<Outcome, String> {
    let verdict = match outcome.verdict {
        v1::Verdict::Keep => v2::Verdict::Keep,
        v1::Verdict::Drop => v2::Verdict::Drop,
        v1::Verdict::Replace(event) => v2::Verdict::Replace(event_v1_to_v2(event)),
    };
    let commands = outcome
        .commands
        .into_iter()
        .map(|command| v2::Command {
            via: command.via,
            device: device_v1_to_v2(command.device),
            name: command.name,
            params: command.params,
            reply_to: command.reply_to,
        })
        .collect();
    outcome_from_v2(v2::Outcome { verdict, commands }, original)
}

fn device_from_v2(device: v2::Device) -> Device {
    Device {
        id: device.id,
        product: device.product,
        name: device.name,
    }
}

fn property_from_v2(property: v2::Property) -> Result<Property, String> {
    let value = match property.value {
        v2::Value::Null => Value::Null,
        v2::Value::Boolean(b) => Value::Boolean(b),
        v2::Value::Integer(i) => Value::Integer(i),
        v2::Value::Float(f) => Value::Float(f),
        v2::Value::Text(s) => Value::Text(s),
        v2::Value::Json(text) => Value::Json(json(&format!("property `{}`", property.code), text)?),
    };
    Ok(Property {
        code: property.code,
        value,
        time_ms: property.time_ms,
        service: property.service,
    })
}

fn properties_from_v2(properties: Vec<v2::Property>) -> Result<Vec<Property>, String> {
    properties.into_iter().map(property_from_v2).collect()
}

fn json(what: &str, text: String) -> Result<Json, String> {
    Json::from_text(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

/// A payload the plugin sent back: `original`'s, unparsed, when it is the same text (the
/// common case), else parsed.
fn payload_from_v2(payload: String, original: Option<&Event>, what: &str) -> Result<Json, String> {
    match original {
        Some(original) if original.payload.as_str() == payload => Ok(original.payload.clone()),
        _ => json(what, payload),
    }
}

/// `original` is the event the plugin was given: a payload it passed back unchanged (the
/// common case) is not parsed again.
fn event_from_v2(event: v2::Event, original: Option<&Event>) -> Result<Event, String> {
    let vendor = match event.vendor.as_str() {
        "tuya" => Vendor::Tuya,
        "alibaba" => Vendor::Alibaba,
        "huawei" => Vendor::Huawei,
        "mqtt" => Vendor::Mqtt,
        other => {
            return Err(format!(
                "replacement event has unknown vendor `{}`",
                crate::dialect::clip(other)
            ));
        }
    };
    Ok(Event {
        id: event.id,
        source: event.source,
        vendor,
        kind: kind_from_v2(event.kind),
        action: event.action,
        device: device_from_v2(event.device),
        time_ms: event.time_ms,
        properties: properties_from_v2(event.properties)?,
        payload: payload_from_v2(event.payload, original, "replacement event payload")?,
        attributes: event.attributes.into_iter().collect(),
    })
}

/// `original` with an `update` verdict's changes made.
fn updated(changes: v2::Changes, original: &Event) -> Result<Event, String> {
    Ok(Event {
        id: original.id.clone(),
        source: original.source.clone(),
        vendor: original.vendor,
        kind: changes.kind.map_or(original.kind, kind_from_v2),
        action: changes.action.unwrap_or_else(|| original.action.clone()),
        device: changes
            .device
            .map_or_else(|| original.device.clone(), device_from_v2),
        time_ms: changes.time_ms.unwrap_or(original.time_ms),
        properties: match changes.properties {
            Some(properties) => properties_from_v2(properties)?,
            None => original.properties.clone(),
        },
        payload: match changes.payload {
            Some(payload) => payload_from_v2(payload, Some(original), "updated payload")?,
            None => original.payload.clone(),
        },
        attributes: match changes.attributes {
            Some(attributes) => attributes.into_iter().collect(),
            None => original.attributes.clone(),
        },
    })
}

fn command_from_v2(command: v2::Command) -> Result<Command, String> {
    Ok(Command {
        params: json(
            &format!("params of command `{}`", command.name),
            command.params,
        )?,
        via: command.via,
        device: device_from_v2(command.device),
        name: command.name,
        reply_to: command.reply_to,
    })
}

pub(crate) fn outcome_from_v2(outcome: v2::Outcome, original: &Event) -> Result<Outcome, String> {
    let verdict = match outcome.verdict {
        v2::Verdict::Keep => Verdict::Keep,
        v2::Verdict::Drop => Verdict::Drop,
        v2::Verdict::Replace(event) => {
            Verdict::Replace(Box::new(event_from_v2(event, Some(original))?))
        }
        v2::Verdict::Update(changes) => Verdict::Replace(Box::new(updated(changes, original)?)),
    };
    let commands = outcome
        .commands
        .into_iter()
        .map(command_from_v2)
        .collect::<Result<_, _>>()?;
    Ok(Outcome { verdict, commands })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::iotrules_v1 as wit;

    fn sample() -> Event {
        let mut event = Event {
            id: "e1".into(),
            source: "demo".into(),
            vendor: Vendor::Huawei,
            kind: Kind::DeviceEvent,
            action: "alarm".into(),
            device: Device {
                id: "d1".into(),
                product: Some("p".into()),
                name: None,
            },
            time_ms: 42,
            properties: vec![
                Property::new("on", Value::Boolean(true)),
                Property::new("pos", Value::Json(Json::from_text("[1,2]".into()).unwrap())),
            ],
            payload: Json::from_text(r#"{"x":1}"#.into()).unwrap(),
            attributes: Default::default(),
        };
        event.properties[0].service = Some("svc".into());
        event.properties[0].time_ms = Some(7);
        event.attributes.insert("topic".into(), "t".into());
        event
    }

    /// What a guest that hands the event back unchanged returns: the borrowed event, owned.
    fn echoed(event: &Event) -> wit::EventResult {
        with_v1_event(event, |event| wit::EventResult {
            id: event.id.into(),
            source: event.source.into(),
            vendor: event.vendor.into(),
            kind: event.kind,
            action: event.action.into(),
            device: echoed_device(&event.device),
            time_ms: event.time_ms,
            properties: event
                .properties
                .iter()
                .map(|p| wit::PropertyResult {
                    code: p.code.into(),
                    value: match p.value {
                        wit::ValueParam::Null => wit::ValueResult::Null,
                        wit::ValueParam::Boolean(b) => wit::ValueResult::Boolean(b),
                        wit::ValueParam::Integer(i) => wit::ValueResult::Integer(i),
                        wit::ValueParam::Float(f) => wit::ValueResult::Float(f),
                        wit::ValueParam::Text(s) => wit::ValueResult::Text(s.into()),
                        wit::ValueParam::Json(s) => wit::ValueResult::Json(s.into()),
                    },
                    time_ms: p.time_ms,
                    service: p.service.map(Into::into),
                })
                .collect(),
            payload: event.payload.into(),
            attributes: event
                .attributes
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        })
    }

    fn echoed_device(device: &wit::DeviceParam<'_>) -> wit::DeviceResult {
        wit::DeviceResult {
            id: device.id.into(),
            product: device.product.map(Into::into),
            name: device.name.map(Into::into),
        }
    }

    #[test]
    fn an_event_survives_the_round_trip_through_the_wit_types() {
        let event = sample();
        assert_eq!(event_from_v2(event_to_v2(&event), None).unwrap(), event);
        assert_eq!(
            event_from_v2(event_to_v2(&event), Some(&event)).unwrap(),
            event
        );
        // What a 0.1.0 guest that hands the event back unchanged returns.
        let back = event_from_v2(event_v1_to_v2(echoed(&event)), Some(&event)).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn an_update_changes_only_the_fields_it_names() {
        let original = sample();
        let changes = v2::Changes {
            kind: None,
            action: Some("renamed".into()),
            device: None,
            time_ms: Some(99),
            properties: Some(vec![property_to_v2(&Property::new(
                "on",
                Value::Boolean(false),
            ))]),
            payload: None,
            attributes: None,
        };
        let outcome = v2::Outcome {
            verdict: v2::Verdict::Update(changes),
            commands: Vec::new(),
        };
        let Verdict::Replace(updated) = outcome_from_v2(outcome, &original).unwrap().verdict else {
            panic!("an update passes on a changed event");
        };
        let mut expected = original.clone();
        expected.action = "renamed".into();
        expected.time_ms = 99;
        expected.properties = vec![Property::new("on", Value::Boolean(false))];
        assert_eq!(*updated, expected);

        let broken = v2::Changes {
            kind: None,
            action: None,
            device: None,
            time_ms: None,
            properties: None,
            payload: Some("{broken".into()),
            attributes: None,
        };
        let error = super::updated(broken, &original).unwrap_err();
        assert!(error.contains("updated payload is not JSON"), "{error}");
    }

    #[test]
    fn malformed_guest_output_is_refused_with_what_was_wrong() {
        let mut v2_event = event_to_v2(&sample());
        v2_event.vendor = "acme".into();
        assert!(event_from_v2(v2_event, None).unwrap_err().contains("acme"));

        // A changed payload is checked even when the original was JSON.
        let original = sample();
        let mut v1_event = echoed(&original);
        v1_event.payload = "{broken".into();
        let error = event_from_v2(event_v1_to_v2(v1_event), Some(&original)).unwrap_err();
        assert!(error.contains("payload is not JSON"), "{error}");

        let command = wit::Command {
            via: None,
            device: wit::DeviceResult {
                id: "d".into(),
                product: None,
                name: None,
            },
            name: "switch".into(),
            params: "{not json".into(),
            reply_to: None,
        };
        let outcome = wit::Outcome {
            verdict: wit::Verdict::Keep,
            commands: vec![command],
        };
        let error = outcome_from_v1(outcome, &sample()).unwrap_err();
        assert!(error.contains("params of command `switch`"), "{error}");
    }
}
