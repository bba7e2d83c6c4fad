//! Huawei bodies → [`Event`]: AMQP push bodies by their `resource` and `event`, device MQTT
//! payloads by their topic.
//!
//! Bodies are read through typed structs (property reports are the common case), with
//! property values kept in the order the device sent them. A known resource or topic whose
//! body has the wrong shape is a shape error; an unknown one becomes [`Kind::Other`] with the
//! body kept, never an error, because IoTDA adds resources and topics over time.
//!
//! Choices the documentation leaves open:
//! - `action` is the vendor's name for the message: `resource.event` for a push,
//!   the topic's action for MQTT (`properties.report`, `commands.response`), or the legacy
//!   `msgType`. A command is the exception: its action is the command's name (`cmd`,
//!   `command_name`), what rules match on, and the same as the reply [`crate::event::Command`]'s
//!   `name`; `properties.set`/`properties.get` have no name and keep the topic's action.
//! - `time_ms`: a push's `event_time_ms`, else its `event_time`; then (and for MQTT) the
//!   latest service `event_time`; else 0, since a decoder reads no clock and a made-up time
//!   would look real.
//! - `id`: a push's `request_id` (IoTDA's message id), else an MD5 digest of the body (a
//!   push body carries its `event_time`, so the same body is the same message). For MQTT,
//!   only what the vendor gives: a digest of the topic when the topic carries a `request_id`
//!   (a command and its response share the request id but not the topic), else of the topic
//!   and a legacy `mid`; else a fresh id per receipt. A digest of the payload would make the
//!   same downlink sent twice (`messages/down`, a custom topic) a duplicate that the pipeline
//!   drops. Request ids and legacy `mid`s (which repeat every 65 535 commands) are also
//!   attributes, for correlating a reply.
//! - Device events whose services are all `$ota` (firmware and software upgrade) are
//!   [`Kind::Lifecycle`]; other device events are [`Kind::DeviceEvent`].
//! - Device status `ONLINE`/`OFFLINE` are online/offline; `ABNORMAL`, `INACTIVE` and `FROZEN`
//!   are lifecycle; anything else is other.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::mqtt::{DeviceTopic, Route};
use super::{ATTR_SERVICE_ID, ENVELOPE_AMQP, ENVELOPE_MQTT};
use crate::dialect::{
    CowStr, DecodeError, LenientU64, Named, RawMessage, body_as_payload, crypto, digest_id,
    parse_json, parse_json_str, receipt_id, utf8,
};
use crate::event::{
    ATTR_BIZ_CODE, ATTR_ENVELOPE, ATTR_GATEWAY, ATTR_MID, ATTR_REQUEST_ID, ATTR_TOPIC, Device,
    Event, Json, Kind, Property, Value, Vendor,
};
use crate::time;

const PUSH: &str = "Huawei push body";
const PUSH_BODY: &str = "Huawei push `notify_data.body`";
const TOPIC: &str = "Huawei MQTT topic";
const PAYLOAD: &str = "Huawei MQTT payload";

/// The service id of IoTDA's firmware and software upgrade events.
const OTA_SERVICE: &str = "$ota";

/// A JSON object of named values (`properties`, `paras`, `serviceData`), kept in the order
/// sent. `null` reads as empty.
type Params = Named<Value>;

impl Params {
    fn extend_into(self, out: &mut Vec<Property>, service: Option<&str>, time_ms: Option<u64>) {
        out.extend(self.0.into_iter().map(|(code, value)| Property {
            code,
            value,
            time_ms,
            service: service.map(str::to_owned),
        }));
    }

    fn into_properties(self, service: Option<&str>) -> Vec<Property> {
        let mut out = Vec::with_capacity(self.0.len());
        self.extend_into(&mut out, service, None);
        out
    }
}

/// One entry of `services` (IoTDA) or `data` (legacy `deviceReq`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Service {
    #[serde(alias = "serviceId")]
    service_id: Option<String>,
    /// Reported or set values; legacy `serviceData`.
    #[serde(alias = "serviceData")]
    properties: Params,
    /// An event's arguments.
    paras: Params,
    #[serde(alias = "eventTime")]
    event_time: Option<String>,
}

/// `{"object_device_id","services":[…]}`: property report, set and get-response bodies, events.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServicesBody {
    object_device_id: Option<String>,
    services: Option<Vec<Service>>,
}

/// IoTDA commands, command responses and property-get requests.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CommandBody {
    object_device_id: Option<String>,
    service_id: Option<String>,
    command_name: Option<String>,
    paras: Params,
}

/// Legacy v1 bodies: `cloudReq` on the command topic, `deviceReq` and `deviceRsp` on the
/// data topic.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LegacyBody {
    #[serde(rename = "msgType")]
    msg_type: Option<String>,
    mid: LenientU64,
    #[serde(rename = "serviceId")]
    service_id: Option<String>,
    cmd: Option<String>,
    paras: Params,
    /// `deviceRsp` results.
    body: Params,
    /// `deviceReq` items.
    data: Option<Vec<Service>>,
}

/// A push body: `{"resource","event","event_time","request_id","notify_data"}`.
#[derive(Debug, Deserialize)]
struct Push<'a> {
    #[serde(default)]
    resource: Option<String>,
    #[serde(default, borrow)]
    event: Option<CowStr<'a>>,
    #[serde(default, borrow)]
    event_time: Option<CowStr<'a>>,
    #[serde(default, borrow)]
    event_time_ms: Option<CowStr<'a>>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default, borrow)]
    notify_data: Option<NotifyData<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct NotifyData<'a> {
    #[serde(default)]
    header: Option<Header>,
    /// Read once the resource says which shape it has.
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Header {
    device_id: Option<String>,
    product_id: Option<String>,
    gateway_id: Option<String>,
}

/// `device.status` body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusBody {
    status: Option<String>,
}

/// `device` create/update/delete body: the device record itself, with no header.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeviceBody {
    device_id: Option<String>,
    product_id: Option<String>,
    gateway_id: Option<String>,
    device_name: Option<String>,
}

/// The optional addressing in a JSON `messages/down` body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Addressed {
    object_device_id: Option<String>,
}

/// Normalizes an AMQP push body. `topic` is the transport's `topic` property, if any.
pub(crate) fn amqp(message: &RawMessage<'_>, topic: Option<&str>) -> Result<Event, DecodeError> {
    let text = utf8(PUSH, message.payload)?;
    let push: Push<'_> = parse_json_str(PUSH, text)?;
    let resource = push
        .resource
        .filter(|r| !r.is_empty())
        .ok_or_else(|| DecodeError::shape(PUSH, "no `resource`"))?;
    let notify = push.notify_data.unwrap_or_default();
    let header = notify.header.unwrap_or_default();
    let body = notify.body;

    let mut device = Device {
        id: header.device_id.unwrap_or_default(),
        product: header.product_id,
        name: None,
    };
    let mut gateway = header.gateway_id;
    let mut properties = Vec::new();
    let mut service_id = None;
    let kind = match resource.as_str() {
        "device.property" => {
            let parsed: ServicesBody = parse_body(body)?;
            properties = collect(parsed.services.unwrap_or_default(), take_properties);
            Kind::Properties
        }
        "device.event" => {
            let parsed: ServicesBody = parse_body(body)?;
            let services = parsed.services.unwrap_or_default();
            let kind = event_kind(&services);
            properties = collect(services, take_paras);
            kind
        }
        "device.status" => {
            let parsed: StatusBody = parse_body(body)?;
            status_kind(parsed.status.as_deref())
        }
        "device.message" => Kind::Message,
        "device.command" | "device.command_response" => {
            let parsed: CommandBody = parse_body(body)?;
            properties = parsed.paras.into_properties(parsed.service_id.as_deref());
            service_id = parsed.service_id;
            if resource == "device.command" {
                Kind::Command
            } else {
                Kind::CommandReply
            }
        }
        "device" => {
            let parsed: DeviceBody = parse_body(body)?;
            if device.id.is_empty() {
                device.id = parsed.device_id.unwrap_or_default();
            }
            device.product = device.product.or(parsed.product_id);
            device.name = parsed.device_name;
            gateway = gateway.or(parsed.gateway_id);
            Kind::Lifecycle
        }
        _ => Kind::Other,
    };
    // Notifications about devices must say which; others (batch tasks, products) need not.
    if device.id.is_empty() && (resource == "device" || resource.starts_with("device.")) {
        return Err(DecodeError::shape(
            PUSH,
            "no `notify_data.header.device_id` naming the device",
        ));
    }

    let time_ms = push
        .event_time_ms
        .as_deref()
        .and_then(time::parse_iso)
        .or_else(|| push.event_time.as_deref().and_then(parse_time))
        .or_else(|| latest(&properties))
        .unwrap_or(0);
    let request_id = push.request_id.filter(|r| !r.is_empty());
    let id = request_id
        .clone()
        .unwrap_or_else(|| digest_id(message.payload));
    let action = match push.event.as_deref() {
        // Joined by hand: one allocation, without `format!`'s machinery.
        Some(event) if !event.is_empty() => [resource.as_str(), ".", event].concat(),
        _ => resource.clone(),
    };

    let mut attributes = BTreeMap::new();
    attributes.insert(ATTR_ENVELOPE.to_owned(), ENVELOPE_AMQP.to_owned());
    attributes.insert(ATTR_BIZ_CODE.to_owned(), resource);
    if let Some(topic) = topic {
        attributes.insert(ATTR_TOPIC.to_owned(), topic.to_owned());
    }
    if let Some(request_id) = request_id {
        attributes.insert(ATTR_REQUEST_ID.to_owned(), request_id);
    }
    if let Some(service_id) = service_id {
        attributes.insert(ATTR_SERVICE_ID.to_owned(), service_id);
    }
    if let Some(gateway) = gateway.filter(|g| !g.is_empty() && *g != device.id) {
        attributes.insert(ATTR_GATEWAY.to_owned(), gateway);
    }

    Ok(Event {
        id,
        source: message.source.to_owned(),
        vendor: Vendor::Huawei,
        kind,
        action,
        device,
        time_ms,
        properties,
        payload: Json::from_parsed(text.to_owned()),
        attributes,
    })
}

/// What one MQTT payload says, before it is put into an [`Event`].
#[derive(Default)]
struct Reading {
    kind: Option<Kind>,
    /// Replaces the topic's action (a command's name, a legacy `msgType`).
    action: Option<String>,
    properties: Vec<Property>,
    /// The sub-device a gateway's message is about.
    object_device_id: Option<String>,
    service_id: Option<String>,
    mid: Option<u64>,
}

/// Normalizes a device MQTT payload published on `topic_text`, already taken apart as `topic`.
pub fn mqtt(
    message: &RawMessage<'_>,
    topic_text: &str,
    topic: DeviceTopic<'_>,
) -> Result<Event, DecodeError> {
    if topic.device_id.is_empty() {
        return Err(DecodeError::shape(TOPIC, "names no device id"));
    }
    let payload = message.payload;
    let mut event = Event {
        id: String::new(),
        source: message.source.to_owned(),
        vendor: Vendor::Huawei,
        kind: Kind::Other,
        action: topic.action,
        device: Device::new(topic.device_id),
        time_ms: 0,
        properties: Vec::new(),
        payload: Json::null(),
        attributes: BTreeMap::new(),
    };

    let reading = match topic.route {
        Route::MessagesUp | Route::MessagesDown | Route::User | Route::Other => {
            // Free-form: any bytes are fine, and a JSON body may still address a sub-device.
            body_as_payload(payload, &mut event);
            let addressed: Addressed = parse_json(PAYLOAD, payload).unwrap_or_default();
            Reading {
                kind: Some(match topic.route {
                    Route::Other => Kind::Other,
                    _ => Kind::Message,
                }),
                object_device_id: addressed.object_device_id,
                ..Reading::default()
            }
        }
        route => {
            let text = utf8(PAYLOAD, payload)?;
            let reading = read_json(route, text)?;
            event.payload = Json::from_parsed(text.to_owned());
            reading
        }
    };

    event.id = match (topic.request_id, reading.mid) {
        (Some(_), _) => crypto::md5_hex(&[topic_text.as_bytes()]),
        (None, Some(mid)) => {
            crypto::md5_hex(&[topic_text.as_bytes(), b"\nmid=", mid.to_string().as_bytes()])
        }
        (None, None) => receipt_id(),
    };
    event.kind = reading.kind.unwrap_or(Kind::Other);
    if let Some(action) = reading.action.filter(|a| !a.is_empty()) {
        event.action = action;
    }
    event.time_ms = latest(&reading.properties).unwrap_or(0);
    event.properties = reading.properties;
    let attributes = &mut event.attributes;
    attributes.insert(ATTR_TOPIC.to_owned(), topic_text.to_owned());
    attributes.insert(ATTR_ENVELOPE.to_owned(), ENVELOPE_MQTT.to_owned());
    if let Some(request_id) = topic.request_id {
        attributes.insert(ATTR_REQUEST_ID.to_owned(), request_id.to_owned());
    }
    if let Some(mid) = reading.mid {
        attributes.insert(ATTR_MID.to_owned(), mid.to_string());
    }
    if let Some(service_id) = reading.service_id {
        attributes.insert(ATTR_SERVICE_ID.to_owned(), service_id);
    }
    if let Some(object) = reading
        .object_device_id
        .filter(|o| !o.is_empty() && o != topic.device_id)
    {
        attributes.insert(ATTR_GATEWAY.to_owned(), topic.device_id.to_owned());
        event.device.id = object;
    }
    Ok(event)
}

/// Reads the JSON payload of a structured topic.
fn read_json(route: Route, text: &str) -> Result<Reading, DecodeError> {
    Ok(match route {
        Route::LegacyData => {
            let body: LegacyBody = parse_json_str(PAYLOAD, text)?;
            match body.msg_type.as_deref() {
                Some("deviceRsp") => Reading {
                    kind: Some(Kind::CommandReply),
                    properties: body.body.into_properties(None),
                    mid: body.mid.0,
                    action: body.msg_type,
                    ..Reading::default()
                },
                Some("deviceReq") => Reading {
                    kind: Some(Kind::Properties),
                    properties: collect(body.data.unwrap_or_default(), take_properties),
                    action: body.msg_type,
                    ..Reading::default()
                },
                _ => Reading {
                    action: body.msg_type,
                    ..Reading::default()
                },
            }
        }
        Route::LegacyCommand => {
            let body: LegacyBody = parse_json_str(PAYLOAD, text)?;
            match body.msg_type.as_deref() {
                None | Some("cloudReq") => Reading {
                    kind: Some(Kind::Command),
                    properties: body.paras.into_properties(body.service_id.as_deref()),
                    action: body.cmd,
                    service_id: body.service_id,
                    mid: body.mid.0,
                    ..Reading::default()
                },
                _ => Reading {
                    action: body.msg_type,
                    ..Reading::default()
                },
            }
        }
        Route::Commands | Route::PropertiesGet | Route::CommandResponse => {
            let body: CommandBody = parse_json_str(PAYLOAD, text)?;
            let (kind, action) = match route {
                Route::Commands => (Kind::Command, body.command_name),
                Route::PropertiesGet => (Kind::Command, None),
                _ => (Kind::CommandReply, None),
            };
            Reading {
                kind: Some(kind),
                action,
                properties: body.paras.into_properties(body.service_id.as_deref()),
                object_device_id: body.object_device_id,
                service_id: body.service_id,
                mid: None,
            }
        }
        Route::PropertiesSet
        | Route::PropertiesSetResponse
        | Route::PropertiesGetResponse
        | Route::PropertiesReport
        | Route::EventsUp
        | Route::EventsDown => {
            let body: ServicesBody = parse_json_str(PAYLOAD, text)?;
            let services = body.services.unwrap_or_default();
            let (kind, properties) = match route {
                Route::EventsUp | Route::EventsDown => {
                    (event_kind(&services), collect(services, take_paras))
                }
                Route::PropertiesSet => (Kind::Command, collect(services, take_properties)),
                Route::PropertiesReport => (Kind::Properties, collect(services, take_properties)),
                _ => (Kind::CommandReply, collect(services, take_properties)),
            };
            Reading {
                kind: Some(kind),
                properties,
                object_device_id: body.object_device_id,
                ..Reading::default()
            }
        }
        Route::MessagesUp | Route::MessagesDown | Route::User | Route::Other => Reading::default(),
    })
}

/// Parses a push's `notify_data.body` as `T`; an absent or `null` body is `T`'s default.
fn parse_body<'a, T: Deserialize<'a> + Default>(
    body: Option<&'a RawValue>,
) -> Result<T, DecodeError> {
    body.map_or_else(
        || Ok(T::default()),
        |raw| parse_json_str(PUSH_BODY, raw.get()),
    )
}

fn take_properties(service: &mut Service) -> Params {
    std::mem::take(&mut service.properties)
}

fn take_paras(service: &mut Service) -> Params {
    std::mem::take(&mut service.paras)
}

/// One property per value of every service, tagged with the service and its event time.
fn collect(services: Vec<Service>, values: fn(&mut Service) -> Params) -> Vec<Property> {
    let mut out = Vec::new();
    for mut service in services {
        let time_ms = service.event_time.as_deref().and_then(parse_time);
        values(&mut service).extend_into(&mut out, service.service_id.as_deref(), time_ms);
    }
    out
}

fn event_kind(services: &[Service]) -> Kind {
    if !services.is_empty()
        && services
            .iter()
            .all(|s| s.service_id.as_deref() == Some(OTA_SERVICE))
    {
        Kind::Lifecycle
    } else {
        Kind::DeviceEvent
    }
}

fn status_kind(status: Option<&str>) -> Kind {
    let Some(status) = status else {
        return Kind::Other;
    };
    let is = |name: &str| status.eq_ignore_ascii_case(name);
    if is("ONLINE") {
        Kind::Online
    } else if is("OFFLINE") {
        Kind::Offline
    } else if is("ABNORMAL") || is("INACTIVE") || is("FROZEN") {
        Kind::Lifecycle
    } else {
        Kind::Other
    }
}

/// Huawei writes `20151212T121212Z`; ISO 8601 is accepted too rather than dropped.
fn parse_time(text: &str) -> Option<u64> {
    time::parse_compact(text).or_else(|| time::parse_iso(text))
}

fn latest(properties: &[Property]) -> Option<u64> {
    properties.iter().filter_map(|p| p.time_ms).max()
}

#[cfg(test)]
mod tests {
    use super::super::Decoder;
    use super::*;
    use crate::dialect::ErrorKind;

    fn decode(topic: Option<&str>, body: &str) -> Result<Event, DecodeError> {
        let properties: Vec<(String, String)> = topic
            .map(|t| vec![("topic".to_owned(), t.to_owned())])
            .unwrap_or_default();
        Decoder::new().decode(&RawMessage::new("hw", body.as_bytes()).with_properties(&properties))
    }

    fn push(resource: &str, event: &str, body: &str) -> String {
        format!(
            r#"{{"resource":"{resource}","event":"{event}","event_time":"20151212T121212Z","request_id":"req-1","notify_data":{{"header":{{"device_id":"dev1","product_id":"prod1","app_id":"app","gateway_id":"gw1","node_id":"n1"}},"body":{body}}}}}"#
        )
    }

    const REPORT: &str = r#"{"resource":"device.property","event":"report","event_time":"20151212T121212Z","request_id":"3fe58d5e","notify_data":{"header":{"device_id":"d1","product_id":"p1","app_id":"a","gateway_id":"d1","node_id":"n"},"body":{"services":[{"service_id":"Battery","properties":{"voltage":3.7,"batteryLevel":57},"event_time":"20151212T121213Z"},{"service_id":"Env","properties":{"temp":"hot"}}]}},"extra":1}"#;

    #[test]
    fn push_property_report_becomes_properties_tagged_with_their_service() {
        let event = decode(None, REPORT).unwrap();
        assert_eq!(event.vendor, Vendor::Huawei);
        assert_eq!(event.source, "hw");
        assert_eq!(event.kind, Kind::Properties);
        assert_eq!(event.action, "device.property.report");
        assert_eq!(event.id, "3fe58d5e");
        assert_eq!(event.device.id, "d1");
        assert_eq!(event.device.product.as_deref(), Some("p1"));
        assert_eq!(event.time_ms, 1_449_922_332_000);
        assert_eq!(event.payload.as_str(), REPORT);
        let codes: Vec<(&str, Option<&str>)> = event
            .properties
            .iter()
            .map(|p| (p.code.as_str(), p.service.as_deref()))
            .collect();
        assert_eq!(
            codes,
            [
                ("voltage", Some("Battery")),
                ("batteryLevel", Some("Battery")),
                ("temp", Some("Env"))
            ]
        );
        let level = event.property("batteryLevel").unwrap();
        assert_eq!(level.value, Value::Integer(57));
        assert_eq!(level.time_ms, Some(1_449_922_333_000));
        assert_eq!(event.property("temp").unwrap().time_ms, None);
        assert_eq!(event.attribute("envelope"), Some("huawei-amqp"));
        assert_eq!(event.attribute("biz-code"), Some("device.property"));
        assert_eq!(event.attribute("request-id"), Some("3fe58d5e"));
        assert_eq!(
            event.attribute("gateway"),
            None,
            "gateway equals the device"
        );
    }

    #[test]
    fn push_through_a_gateway_names_the_gateway() {
        let event = decode(None, &push("device.property", "report", "{}")).unwrap();
        assert_eq!(event.attribute("gateway"), Some("gw1"));
        assert!(event.properties.is_empty());
    }

    #[test]
    fn push_status_maps_online_offline_and_the_rest_to_lifecycle() {
        for (status, kind) in [
            ("ONLINE", Kind::Online),
            ("OFFLINE", Kind::Offline),
            ("ABNORMAL", Kind::Lifecycle),
            ("INACTIVE", Kind::Lifecycle),
            ("FROZEN", Kind::Lifecycle),
            ("SOMETHING_NEW", Kind::Other),
        ] {
            let body = format!(r#"{{"status":"{status}","last_online_time":"20151212T121212Z"}}"#);
            let event = decode(None, &push("device.status", "update", &body)).unwrap();
            assert_eq!(event.kind, kind, "{status}");
            assert_eq!(event.action, "device.status.update");
        }
    }

    #[test]
    fn push_message_is_a_message_with_the_body_kept() {
        let body = r#"{"content":{"a":1},"topic":"$oc/devices/dev1/user/x"}"#;
        let text = push("device.message", "report", body);
        let event = decode(None, &text).unwrap();
        assert_eq!(event.kind, Kind::Message);
        assert_eq!(event.payload.as_str(), text);
    }

    #[test]
    fn push_command_and_command_response_carry_paras_and_service() {
        let body = r#"{"service_id":"Switch","command_name":"ON_OFF","paras":{"value":"ON"}}"#;
        let command = decode(None, &push("device.command", "create", body)).unwrap();
        assert_eq!(command.kind, Kind::Command);
        assert_eq!(command.attribute("service-id"), Some("Switch"));
        let value = command.property("value").unwrap();
        assert_eq!(value.value, Value::Text("ON".into()));
        assert_eq!(value.service.as_deref(), Some("Switch"));
        let reply = decode(None, &push("device.command_response", "report", body)).unwrap();
        assert_eq!(reply.kind, Kind::CommandReply);
        assert_eq!(reply.action, "device.command_response.report");
    }

    #[test]
    fn push_device_event_is_a_device_event_unless_all_ota() {
        let alarm = r#"{"services":[{"service_id":"Alarm","event_type":"smoke","event_time":"20151212T121212Z","paras":{"level":3}}]}"#;
        let event = decode(None, &push("device.event", "report", alarm)).unwrap();
        assert_eq!(event.kind, Kind::DeviceEvent);
        let level = event.property("level").unwrap();
        assert_eq!(level.service.as_deref(), Some("Alarm"));
        assert_eq!(level.time_ms, Some(1_449_922_332_000));

        let ota = r#"{"services":[{"service_id":"$ota","event_type":"upgrade_progress_report","paras":{"progress":80}}]}"#;
        let event = decode(None, &push("device.event", "report", ota)).unwrap();
        assert_eq!(event.kind, Kind::Lifecycle);
    }

    #[test]
    fn push_device_lifecycle_reads_the_device_from_the_body() {
        let text = r#"{"resource":"device","event":"create","event_time":"20151212T121212Z","notify_data":{"body":{"device_id":"d9","product_id":"p9","gateway_id":"d9","device_name":"Meter"}}}"#;
        let event = decode(None, text).unwrap();
        assert_eq!(event.kind, Kind::Lifecycle);
        assert_eq!(event.action, "device.create");
        assert_eq!(event.device.id, "d9");
        assert_eq!(event.device.product.as_deref(), Some("p9"));
        assert_eq!(event.device.name.as_deref(), Some("Meter"));
        assert_eq!(event.id, digest_id(text.as_bytes()), "no request_id");
    }

    #[test]
    fn push_of_an_unknown_resource_is_kept_as_other() {
        let event = decode(None, &push("device.shadow", "update", r#"[1,2]"#)).unwrap();
        assert_eq!(event.kind, Kind::Other);
        let batch =
            r#"{"resource":"batchtask","event":"update","notify_data":{"body":{"task_id":"t"}}}"#;
        let event = decode(None, batch).unwrap();
        assert_eq!(event.kind, Kind::Other);
        assert_eq!(event.device.id, "");
        assert_eq!(event.time_ms, 0, "no time in the body");
    }

    #[test]
    fn push_time_prefers_event_time_ms() {
        let text = REPORT.replace(
            r#""event_time":"20151212T121212Z","#,
            r#""event_time":"20151212T121212Z","event_time_ms":"2015-12-12T12:12:12.345Z","#,
        );
        assert_eq!(decode(None, &text).unwrap().time_ms, 1_449_922_332_345);
    }

    #[test]
    fn push_without_a_device_id_is_a_json_error() {
        let text = r#"{"resource":"device.property","event":"report","notify_data":{"header":{"product_id":"p"},"body":{"services":[]}}}"#;
        let err = decode(None, text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Json);
        assert!(err.to_string().contains("device_id"), "{err}");
    }

    #[test]
    fn push_that_is_not_json_or_has_no_resource_is_a_json_error() {
        for bad in ["not json", "[1]", "{}", "\u{0}", r#"{"resource":5}"#] {
            assert_eq!(
                decode(None, bad).unwrap_err().kind(),
                ErrorKind::Json,
                "{bad}"
            );
        }
        let binary = Decoder::new().decode(&RawMessage::new("hw", &[0xff, 0xfe]));
        assert_eq!(binary.unwrap_err().kind(), ErrorKind::Json);
    }

    #[test]
    fn push_with_a_malformed_body_for_its_resource_is_a_json_error() {
        let text = push("device.property", "report", r#"{"services":{"x":1}}"#);
        assert_eq!(decode(None, &text).unwrap_err().kind(), ErrorKind::Json);
    }

    #[test]
    fn push_keeps_a_transport_topic_that_is_not_a_device_topic() {
        let event = decode(Some("custom/queue/topic"), REPORT).unwrap();
        assert_eq!(event.attribute("topic"), Some("custom/queue/topic"));
        assert_eq!(event.kind, Kind::Properties);
    }

    #[test]
    fn legacy_cloud_req_is_a_command_named_by_cmd_with_its_mid() {
        let body = r#"{"msgType":"cloudReq","serviceId":"Switch","cmd":"SET_SWITCH","paras":{"on":true},"mid":42}"#;
        let topic = "/huawei/v1/devices/dev-7/command/json";
        let event = decode(Some(topic), body).unwrap();
        assert_eq!(event.kind, Kind::Command);
        assert_eq!(event.action, "SET_SWITCH");
        assert_eq!(event.device.id, "dev-7");
        assert_eq!(event.attribute("mid"), Some("42"));
        assert_eq!(event.attribute("service-id"), Some("Switch"));
        assert_eq!(event.attribute("topic"), Some(topic));
        assert_eq!(event.attribute("envelope"), Some("huawei-mqtt"));
        let on = event.property("on").unwrap();
        assert_eq!(
            (on.value.clone(), on.service.as_deref()),
            (Value::Boolean(true), Some("Switch"))
        );
        assert_eq!(event.payload.as_str(), body);
        assert_eq!(event.time_ms, 0);
    }

    #[test]
    fn legacy_mid_written_as_a_string_is_still_read() {
        let body = r#"{"msgType":"cloudReq","cmd":"X","paras":{},"mid":"7"}"#;
        let event = decode(Some("/huawei/v1/devices/d/command/json"), body).unwrap();
        assert_eq!(event.attribute("mid"), Some("7"));
    }

    #[test]
    fn legacy_device_req_is_properties_per_service_with_compact_times() {
        let body = r#"{"msgType":"deviceReq","data":[{"serviceId":"Meter","serviceData":{"kwh":12.5},"eventTime":"20151212T121212Z"},{"serviceId":"Door","serviceData":{"open":false}}]}"#;
        let event = decode(Some("/huawei/v1/devices/d/data/json"), body).unwrap();
        assert_eq!(event.kind, Kind::Properties);
        assert_eq!(event.action, "deviceReq");
        assert_eq!(event.time_ms, 1_449_922_332_000);
        let kwh = event.property("kwh").unwrap();
        assert_eq!(kwh.service.as_deref(), Some("Meter"));
        assert_eq!(kwh.time_ms, Some(1_449_922_332_000));
        assert_eq!(
            event.property("open").unwrap().service.as_deref(),
            Some("Door")
        );
    }

    #[test]
    fn legacy_device_rsp_on_the_data_topic_is_a_reply_with_its_mid() {
        let body = r#"{"msgType":"deviceRsp","mid":42,"errcode":0,"body":{"state":"ok"}}"#;
        let event = decode(Some("/huawei/v1/devices/d/data/json"), body).unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
        assert_eq!(event.attribute("mid"), Some("42"));
        assert_eq!(
            event.property("state").unwrap().value,
            Value::Text("ok".into())
        );
    }

    #[test]
    fn iotda_command_names_the_action_and_keeps_the_request_id() {
        let body = r#"{"object_device_id":"dev1","service_id":"Light","command_name":"SET_LEVEL","paras":{"level":80}}"#;
        let event = decode(Some("$oc/devices/dev1/sys/commands/request_id=rq-5"), body).unwrap();
        assert_eq!(event.kind, Kind::Command);
        assert_eq!(event.action, "SET_LEVEL");
        assert_eq!(event.id.len(), 32, "digest id, not the request id");
        assert_eq!(event.attribute("request-id"), Some("rq-5"));
        assert_eq!(event.attribute("service-id"), Some("Light"));
        assert_eq!(event.attribute("gateway"), None);
        assert_eq!(event.property("level").unwrap().value, Value::Integer(80));
    }

    #[test]
    fn iotda_command_for_a_sub_device_names_the_gateway() {
        let body = r#"{"object_device_id":"sub-1","service_id":"S","command_name":"C","paras":{}}"#;
        let event = decode(Some("$oc/devices/gw-1/sys/commands/request_id=r"), body).unwrap();
        assert_eq!(event.device.id, "sub-1");
        assert_eq!(event.attribute("gateway"), Some("gw-1"));
    }

    #[test]
    fn iotda_property_set_and_get_are_commands_with_topic_actions() {
        let set = r#"{"object_device_id":"d","services":[{"service_id":"S","properties":{"a":1,"b":"x"}}]}"#;
        let event = decode(Some("$oc/devices/d/sys/properties/set/request_id=r1"), set).unwrap();
        assert_eq!(event.kind, Kind::Command);
        assert_eq!(event.action, "properties.set");
        assert_eq!(event.properties.len(), 2);
        assert_eq!(event.properties[0].service.as_deref(), Some("S"));

        let get = r#"{"object_device_id":"d","service_id":"S"}"#;
        let event = decode(Some("$oc/devices/d/sys/properties/get/request_id=r2"), get).unwrap();
        assert_eq!(event.kind, Kind::Command);
        assert_eq!(event.action, "properties.get");
        assert_eq!(event.attribute("service-id"), Some("S"));
        assert_eq!(event.attribute("request-id"), Some("r2"));
    }

    #[test]
    fn iotda_property_report_is_properties() {
        let body = r#"{"services":[{"service_id":"S","properties":{"t":21.5},"event_time":"20151212T121212Z"}]}"#;
        let event = decode(Some("$oc/devices/d/sys/properties/report"), body).unwrap();
        assert_eq!(event.kind, Kind::Properties);
        assert_eq!(event.action, "properties.report");
        assert_eq!(event.time_ms, 1_449_922_332_000);
        assert_eq!(event.property("t").unwrap().value, Value::Float(21.5));
        assert_eq!(event.attribute("request-id"), None);
        // No request id: each receipt is its own event.
        let again = decode(Some("$oc/devices/d/sys/properties/report"), body).unwrap();
        assert_ne!(event.id, again.id);
    }

    #[test]
    fn the_same_downlink_received_twice_is_two_events_not_a_duplicate() {
        for topic in [
            "$oc/devices/d/sys/messages/down",
            "/huawei/v1/devices/d/command/json",
        ] {
            let body = r#"{"msgType":"cloudReq","cmd":"beep","paras":{}}"#;
            let first = decode(Some(topic), body).unwrap();
            let second = decode(Some(topic), body).unwrap();
            assert_ne!(first.id, second.id, "{topic}");
        }
        // A legacy command carries its `mid`: a redelivery keeps the id.
        let body = r#"{"msgType":"cloudReq","cmd":"beep","paras":{},"mid":7}"#;
        let topic = Some("/huawei/v1/devices/d/command/json");
        assert_eq!(
            decode(topic, body).unwrap().id,
            decode(topic, body).unwrap().id
        );
    }

    #[test]
    fn command_and_its_response_get_different_ids_but_a_redelivery_keeps_its_id() {
        let command = r#"{"service_id":"S","command_name":"C","paras":{}}"#;
        let first = decode(Some("$oc/devices/d/sys/commands/request_id=r1"), command).unwrap();
        let again = decode(Some("$oc/devices/d/sys/commands/request_id=r1"), command).unwrap();
        let reply = decode(
            Some("$oc/devices/d/sys/commands/response/request_id=r1"),
            r#"{"result_code":0}"#,
        )
        .unwrap();
        assert_eq!(first.id, again.id);
        assert_ne!(first.id, reply.id);
        assert_eq!(first.attribute("request-id"), reply.attribute("request-id"));
    }

    #[test]
    fn iotda_responses_are_command_replies() {
        let response = r#"{"result_code":0,"response_name":"OK","paras":{"done":true}}"#;
        let event = decode(
            Some("$oc/devices/d/sys/commands/response/request_id=r3"),
            response,
        )
        .unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
        assert_eq!(event.action, "commands.response");
        assert_eq!(event.attribute("request-id"), Some("r3"));
        assert_eq!(event.property("done").unwrap().value, Value::Boolean(true));
        let set = r#"{"result_code":0,"result_desc":"success"}"#;
        let event = decode(
            Some("$oc/devices/d/sys/properties/set/response/request_id=r4"),
            set,
        )
        .unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
    }

    #[test]
    fn iotda_messages_down_keep_any_body() {
        let topic = "$oc/devices/d/sys/messages/down";
        let text = decode(Some(topic), "hello, device").unwrap();
        assert_eq!(text.kind, Kind::Message);
        assert_eq!(text.action, "messages.down");
        assert_eq!(text.payload.as_str(), r#""hello, device""#);
        assert_eq!(text.attribute("content"), Some("text"));
        let json = decode(Some(topic), r#"{"object_device_id":"sub","content":"hi"}"#).unwrap();
        assert_eq!(json.device.id, "sub");
        assert_eq!(json.attribute("gateway"), Some("d"));
        let binary = Decoder::new()
            .decode(
                &RawMessage::new("hw", &[0xff, 0x00])
                    .with_properties(&[("topic".to_owned(), topic.to_owned())]),
            )
            .unwrap();
        assert_eq!(binary.attribute("content"), Some("base64"));
    }

    #[test]
    fn iotda_events_are_device_events_or_lifecycle_for_ota() {
        let body = r#"{"object_device_id":"d","services":[{"service_id":"$ota","event_type":"version_report","event_time":"20151212T121212Z","paras":{"fw_version":"v2"}}]}"#;
        let event = decode(Some("$oc/devices/d/sys/events/up"), body).unwrap();
        assert_eq!(event.kind, Kind::Lifecycle);
        assert_eq!(
            event.property("fw_version").unwrap().value,
            Value::Text("v2".into())
        );
        let alarm = body.replace("$ota", "Alarm");
        let event = decode(Some("$oc/devices/d/sys/events/down"), &alarm).unwrap();
        assert_eq!(event.kind, Kind::DeviceEvent);
    }

    #[test]
    fn unknown_and_custom_device_topics_are_kept() {
        let event = decode(
            Some("$oc/devices/gw/sys/gateway/sub_devices/properties/report"),
            r#"{"devices":[]}"#,
        )
        .unwrap();
        assert_eq!(event.kind, Kind::Other);
        assert_eq!(event.action, "gateway.sub_devices.properties.report");
        let event = decode(Some("$oc/devices/d/user/telemetry"), "raw").unwrap();
        assert_eq!(event.kind, Kind::Message);
        assert_eq!(event.action, "user.telemetry");
    }

    #[test]
    fn structured_topic_with_a_non_json_payload_is_a_json_error() {
        for topic in [
            "$oc/devices/d/sys/properties/report",
            "$oc/devices/d/sys/commands/request_id=1",
            "/huawei/v1/devices/d/command/json",
        ] {
            let err = decode(Some(topic), "nope").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Json, "{topic}");
        }
    }

    #[test]
    fn device_topic_without_a_device_id_is_a_json_error() {
        let err = decode(Some("$oc/devices//sys/properties/report"), "{}").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Json);
    }
}
