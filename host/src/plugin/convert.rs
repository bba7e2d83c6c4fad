//! The host's event model ↔ the WIT types of every world version. Everything coming back
//! from a guest is checked: JSON text must be JSON, the vendor must be known.
//!
//! 0.3.0 ([`v3`]) and 0.2.0 ([`v2`]) types are owned: the host hands them out one field at a
//! time from the `event-view` methods. Their `types` interfaces differ only by 0.3.0's
//! `timer` kind, so one source (`convert/world.rs`) serves both, included in each module;
//! a 0.2.0 plugin is never handed a timer (only a step that set one gets it), and would see
//! it as `other`. 0.1.0 (`v1`) borrows the host's strings for the whole event it lowers into
//! every call; what a 0.1.0 guest sends back is moved into the 0.2.0 types and checked by
//! the same code.

use super::bindings::iotrules_v1 as v1;
use super::bindings::iotrules_v2 as wit_v2;
use super::Outcome;
use crate::event::{Event, Json, Kind, Property, Value};
use v1::Kind as V1Kind;
use wit_v2::Kind as V2Kind;

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

/// The kinds of the host's model and of the WIT versions, matched by name; `$extra` arms
/// cover what one side has and the other does not (`timer`, new in 0.3.0).
macro_rules! convert_kind {
    ($kind:expr, $from:ident => $to:ident $(, $extra:pat => $into:expr)*) => {
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
            $($extra => $into,)*
        }
    };
}

fn kind_to_v1(kind: Kind) -> V1Kind {
    convert_kind!(kind, Kind => V1Kind, Kind::Timer => V1Kind::Other)
}

fn kind_v1_to_v2(kind: V1Kind) -> V2Kind {
    convert_kind!(kind, V1Kind => V2Kind)
}

/// The 0.3.0 world's types.
pub(crate) mod v3 {
    use super::super::bindings::iotrules_v3 as wit;
    use super::super::{Outcome, Verdict};
    use super::json;
    use crate::event::{Command, Device, Event, Json, Kind, Property, Value, Vendor};
    use wit::Kind as WitKind;

    pub(crate) fn kind_to(kind: Kind) -> WitKind {
        convert_kind!(kind, Kind => WitKind, Kind::Timer => WitKind::Timer)
    }

    fn kind_from(kind: WitKind) -> Kind {
        convert_kind!(kind, WitKind => Kind, WitKind::Timer => Kind::Timer)
    }

    include!("convert/world.rs");

    /// A device's twin, for `device-twin`.
    pub(crate) fn twin_to(twin: &crate::twin::Twin) -> wit::Twin {
        wit::Twin {
            device: device_to(&twin.device),
            online: twin.online,
            last_seen_ms: twin.last_seen_ms,
            online_changed_ms: twin.online_changed_ms,
            properties: twin
                .properties
                .iter()
                .map(|property| wit::TwinProperty {
                    code: property.code.to_string(),
                    value: value_to(&property.value),
                    time_ms: property.time_ms,
                    service: property.service.as_deref().map(str::to_owned),
                })
                .collect(),
        }
    }
}

/// The 0.2.0 world's types.
pub(crate) mod v2 {
    use super::super::bindings::iotrules_v2 as wit;
    use super::super::{Outcome, Verdict};
    use super::json;
    use crate::event::{Command, Device, Event, Json, Kind, Property, Value, Vendor};
    use wit::Kind as WitKind;

    pub(crate) fn kind_to(kind: Kind) -> WitKind {
        convert_kind!(kind, Kind => WitKind, Kind::Timer => WitKind::Other)
    }

    fn kind_from(kind: WitKind) -> Kind {
        convert_kind!(kind, WitKind => Kind)
    }

    include!("convert/world.rs");
}

fn device_v1_to_v2(device: v1::DeviceResult) -> wit_v2::Device {
    wit_v2::Device {
        id: device.id,
        product: device.product,
        name: device.name,
    }
}

fn property_v1_to_v2(property: v1::PropertyResult) -> wit_v2::Property {
    wit_v2::Property {
        code: property.code,
        value: match property.value {
            v1::ValueResult::Null => wit_v2::Value::Null,
            v1::ValueResult::Boolean(b) => wit_v2::Value::Boolean(b),
            v1::ValueResult::Integer(i) => wit_v2::Value::Integer(i),
            v1::ValueResult::Float(f) => wit_v2::Value::Float(f),
            v1::ValueResult::Text(s) => wit_v2::Value::Text(s),
            v1::ValueResult::Json(s) => wit_v2::Value::Json(s),
        },
        time_ms: property.time_ms,
        service: property.service,
    }
}

fn event_v1_to_v2(event: v1::EventResult) -> wit_v2::Event {
    wit_v2::Event {
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
        v1::Verdict::Keep => wit_v2::Verdict::Keep,
        v1::Verdict::Drop => wit_v2::Verdict::Drop,
        v1::Verdict::Replace(event) => wit_v2::Verdict::Replace(event_v1_to_v2(event)),
    };
    let commands = outcome
        .commands
        .into_iter()
        .map(|command| wit_v2::Command {
            via: command.via,
            device: device_v1_to_v2(command.device),
            name: command.name,
            params: command.params,
            reply_to: command.reply_to,
        })
        .collect();
    v2::outcome_from(wit_v2::Outcome { verdict, commands }, original)
}

fn json(what: &str, text: String) -> Result<Json, String> {
    Json::from_text(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Device, Vendor};
    use crate::plugin::Verdict;
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
        assert_eq!(v2::event_from(v2::event_to(&event), None).unwrap(), event);
        assert_eq!(
            v2::event_from(v2::event_to(&event), Some(&event)).unwrap(),
            event
        );
        // What a 0.1.0 guest that hands the event back unchanged returns.
        let back = v2::event_from(event_v1_to_v2(echoed(&event)), Some(&event)).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn an_update_changes_only_the_fields_it_names() {
        let original = sample();
        let changes = wit_v2::Changes {
            kind: None,
            action: Some("renamed".into()),
            device: None,
            time_ms: Some(99),
            properties: Some(vec![v2::property_to(&Property::new(
                "on",
                Value::Boolean(false),
            ))]),
            payload: None,
            attributes: None,
        };
        let outcome = wit_v2::Outcome {
            verdict: wit_v2::Verdict::Update(changes),
            commands: Vec::new(),
        };
        let Verdict::Replace(updated) = v2::outcome_from(outcome, &original).unwrap().verdict else {
            panic!("an update passes on a changed event");
        };
        let mut expected = original.clone();
        expected.action = "renamed".into();
        expected.time_ms = 99;
        expected.properties = vec![Property::new("on", Value::Boolean(false))];
        assert_eq!(*updated, expected);

        let broken = wit_v2::Changes {
            kind: None,
            action: None,
            device: None,
            time_ms: None,
            properties: None,
            payload: Some("{broken".into()),
            attributes: None,
        };
        let error = v2::updated(broken, &original).unwrap_err();
        assert!(error.contains("updated payload is not JSON"), "{error}");
    }

    #[test]
    fn malformed_guest_output_is_refused_with_what_was_wrong() {
        let mut v2_event = v2::event_to(&sample());
        v2_event.vendor = "acme".into();
        assert!(v2::event_from(v2_event, None).unwrap_err().contains("acme"));

        // A changed payload is checked even when the original was JSON.
        let original = sample();
        let mut v1_event = echoed(&original);
        v1_event.payload = "{broken".into();
        let error = v2::event_from(event_v1_to_v2(v1_event), Some(&original)).unwrap_err();
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
