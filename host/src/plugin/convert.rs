//! The host's event model ↔ the WIT types. Everything coming back from a guest is checked:
//! JSON text must be JSON, the vendor must be known.

use super::bindings::iotrules::plugin::types as wit;
use super::{Outcome, Verdict};
use crate::event::{Command, Device, Event, Json, Kind, Property, Value, Vendor};

/// Runs `f` with `event` as the WIT type, borrowing its strings.
pub(crate) fn with_wit_event<R>(event: &Event, f: impl FnOnce(wit::EventParam<'_>) -> R) -> R {
    let properties: Vec<_> = event.properties.iter().map(property_to_wit).collect();
    let attributes: Vec<_> = event
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    f(wit::EventParam {
        id: &event.id,
        source: &event.source,
        vendor: event.vendor.as_str(),
        kind: kind_to_wit(event.kind),
        action: &event.action,
        device: device_to_wit(&event.device),
        time_ms: event.time_ms,
        properties: &properties,
        payload: event.payload.as_str(),
        attributes: &attributes,
    })
}

fn kind_to_wit(kind: Kind) -> wit::Kind {
    match kind {
        Kind::Properties => wit::Kind::Properties,
        Kind::Online => wit::Kind::Online,
        Kind::Offline => wit::Kind::Offline,
        Kind::Lifecycle => wit::Kind::Lifecycle,
        Kind::DeviceEvent => wit::Kind::DeviceEvent,
        Kind::Command => wit::Kind::Command,
        Kind::CommandReply => wit::Kind::CommandReply,
        Kind::Message => wit::Kind::Message,
        Kind::Other => wit::Kind::Other,
    }
}

fn kind_from_wit(kind: wit::Kind) -> Kind {
    match kind {
        wit::Kind::Properties => Kind::Properties,
        wit::Kind::Online => Kind::Online,
        wit::Kind::Offline => Kind::Offline,
        wit::Kind::Lifecycle => Kind::Lifecycle,
        wit::Kind::DeviceEvent => Kind::DeviceEvent,
        wit::Kind::Command => Kind::Command,
        wit::Kind::CommandReply => Kind::CommandReply,
        wit::Kind::Message => Kind::Message,
        wit::Kind::Other => Kind::Other,
    }
}

fn device_to_wit(device: &Device) -> wit::DeviceParam<'_> {
    wit::DeviceParam {
        id: &device.id,
        product: device.product.as_deref(),
        name: device.name.as_deref(),
    }
}

fn device_from_wit(device: wit::DeviceResult) -> Device {
    Device {
        id: device.id,
        product: device.product,
        name: device.name,
    }
}

fn property_to_wit(property: &Property) -> wit::PropertyParam<'_> {
    wit::PropertyParam {
        code: &property.code,
        value: match &property.value {
            Value::Null => wit::ValueParam::Null,
            Value::Boolean(b) => wit::ValueParam::Boolean(*b),
            Value::Integer(i) => wit::ValueParam::Integer(*i),
            Value::Float(f) => wit::ValueParam::Float(*f),
            Value::Text(s) => wit::ValueParam::Text(s),
            Value::Json(json) => wit::ValueParam::Json(json.as_str()),
        },
        time_ms: property.time_ms,
        service: property.service.as_deref(),
    }
}

fn property_from_wit(property: wit::PropertyResult) -> Result<Property, String> {
    let value = match property.value {
        wit::ValueResult::Null => Value::Null,
        wit::ValueResult::Boolean(b) => Value::Boolean(b),
        wit::ValueResult::Integer(i) => Value::Integer(i),
        wit::ValueResult::Float(f) => Value::Float(f),
        wit::ValueResult::Text(s) => Value::Text(s),
        wit::ValueResult::Json(text) => {
            Value::Json(json(&format!("property `{}`", property.code), text)?)
        }
    };
    Ok(Property {
        code: property.code,
        value,
        time_ms: property.time_ms,
        service: property.service,
    })
}

fn json(what: &str, text: String) -> Result<Json, String> {
    Json::from_text(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

/// `original` is the event the plugin was given: a payload it passed back unchanged (the
/// common case) is not parsed again.
fn event_from_wit(event: wit::EventResult, original: Option<&Event>) -> Result<Event, String> {
    let vendor = match event.vendor.as_str() {
        "tuya" => Vendor::Tuya,
        "alibaba" => Vendor::Alibaba,
        "huawei" => Vendor::Huawei,
        "mqtt" => Vendor::Mqtt,
        other => {
            return Err(format!(
                "replacement event has unknown vendor `{}`",
                crate::vendor::clip(other)
            ));
        }
    };
    Ok(Event {
        id: event.id,
        source: event.source,
        vendor,
        kind: kind_from_wit(event.kind),
        action: event.action,
        device: device_from_wit(event.device),
        time_ms: event.time_ms,
        properties: event
            .properties
            .into_iter()
            .map(property_from_wit)
            .collect::<Result<_, _>>()?,
        payload: match original {
            Some(original) if original.payload.as_str() == event.payload => {
                original.payload.clone()
            }
            _ => json("replacement event payload", event.payload)?,
        },
        attributes: event.attributes.into_iter().collect(),
    })
}

fn command_from_wit(command: wit::Command) -> Result<Command, String> {
    Ok(Command {
        params: json(
            &format!("params of command `{}`", command.name),
            command.params,
        )?,
        via: command.via,
        device: device_from_wit(command.device),
        name: command.name,
        reply_to: command.reply_to,
    })
}

pub(crate) fn outcome_from_wit(outcome: wit::Outcome, original: &Event) -> Result<Outcome, String> {
    let verdict = match outcome.verdict {
        wit::Verdict::Keep => Verdict::Keep,
        wit::Verdict::Drop => Verdict::Drop,
        wit::Verdict::Replace(event) => {
            Verdict::Replace(Box::new(event_from_wit(event, Some(original))?))
        }
    };
    let commands = outcome
        .commands
        .into_iter()
        .map(command_from_wit)
        .collect::<Result<_, _>>()?;
    Ok(Outcome { verdict, commands })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        with_wit_event(event, |event| wit::EventResult {
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
        let back = event_from_wit(echoed(&event), None).unwrap();
        assert_eq!(back, event);
        let back = event_from_wit(echoed(&event), Some(&event)).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn malformed_guest_output_is_refused_with_what_was_wrong() {
        let mut wit_event = echoed(&sample());
        wit_event.vendor = "acme".into();
        assert!(
            event_from_wit(wit_event, None)
                .unwrap_err()
                .contains("acme")
        );

        // A changed payload is checked even when the original was JSON.
        let original = sample();
        let mut wit_event = echoed(&original);
        wit_event.payload = "{broken".into();
        let error = event_from_wit(wit_event, Some(&original)).unwrap_err();
        assert!(error.contains("payload is not JSON"), "{error}");

        let command = wit::Command {
            via: None,
            device: echoed_device(&device_to_wit(&Device::new("d"))),
            name: "switch".into(),
            params: "{not json".into(),
            reply_to: None,
        };
        let outcome = wit::Outcome {
            verdict: wit::Verdict::Keep,
            commands: vec![command],
        };
        let error = outcome_from_wit(outcome, &sample()).unwrap_err();
        assert!(error.contains("params of command `switch`"), "{error}");
    }
}
