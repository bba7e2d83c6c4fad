//! Alibaba bodies → [`Event`], by topic.
//!
//! The AMQP subscription forwards each message with its topic in the `topic` application
//! property: the data-flow forms `/${pk}/${dn}/thing/...` and `/as/mqtt/status/${pk}/${dn}`,
//! whose bodies the cloud writes, and custom `/${pk}/${dn}/user/...` topics, whose payload
//! passes through unchanged. A device-side MQTT link sees the `/sys/${pk}/${dn}/...` topics,
//! whose payloads are Alink JSON (`{"id","version","params","method"}` or a reply).
//!
//! Choices the documentation leaves open:
//! - `device.id` is `${productKey}.${deviceName}` (the Link SDK's client id), unique across
//!   products and the same whichever path the event took; `product` and `name` hold the two
//!   parts, which is what the command APIs address. The `iotId` is the attribute `iot-id`.
//! - `action` is what a rule matches on: the event or service identifier for device events
//!   and service calls, the `action` of a lifecycle body, `online`/`offline` for a status, the
//!   part after `user/` for a custom topic, and otherwise the topic's path after the device,
//!   dotted (`thing.event.property.post`, `thing.service.property.set_reply`), which is the
//!   Alink method name.
//! - `id`: the AMQP `messageId` when present (Alibaba's unique message id, the key it says to
//!   de-duplicate on); otherwise (always over MQTT) a digest of the topic and the Alink `id`
//!   or the RRPC message id, which the vendor gives per request; otherwise a fresh id per
//!   receipt. A digest of the payload would make the same custom-topic message sent twice a
//!   duplicate that the pipeline drops.
//! - `time_ms`: the latest property time, else the body's own time (`gmtCreate`, `utcTime`,
//!   `messageCreateTime`, an event's `time`), else the AMQP `generateTime`, else 0.
//! - Alink property params come in a long form `{"code":{"value":v,"time":ms}}` and a short
//!   form `{"code":v}`; an object whose only keys are `value` and `time` is read as the long
//!   form, anything else as the value itself.
//! - Firmware (`/ota/`) messages and gateway topology changes are [`Kind::Lifecycle`], as for
//!   Huawei; device replies forwarded by the cloud are [`Kind::CommandReply`].
//! - A known topic whose body is not the documented shape is a json error; an unknown topic is
//!   [`Kind::Other`] with the payload kept, because Alibaba adds topics over time.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::mqtt::AlinkId;
use super::{
    ATTR_CODE, ATTR_IOT_ID, ENVELOPE_AMQP, ENVELOPE_MQTT, GENERATE_TIME_PROPERTY,
    MESSAGE_ID_PROPERTY, TOPIC_PROPERTY,
};
use crate::dialect::{
    CowStr, DecodeError, LenientU64, Named, RawMessage, body_as_payload, crypto, parse_json_str,
    receipt_id, utf8,
};
use crate::event::{
    ATTR_ENVELOPE, ATTR_GATEWAY, ATTR_MESSAGE_ID, ATTR_REQUEST_ID, ATTR_TOPIC, Device, Event, Json,
    Kind, Property, Value, Vendor,
};
use crate::time;

const TOPIC: &str = "Alibaba topic";
const BODY: &str = "Alibaba body";
const ALINK: &str = "Alibaba Alink payload";

/// Where a topic leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    /// `/as/mqtt/status/${pk}/${dn}`.
    Status,
    /// `/${pk}/${dn}/thing/event/property/post`: the cloud's property body with `items`.
    PropertyPost,
    /// `/${pk}/${dn}/thing/event/${id}/post`: the cloud's event body.
    EventPost(&'a str),
    /// `/${pk}/${dn}/thing/lifecycle`.
    Lifecycle,
    /// `/${pk}/${dn}/thing/topo/lifecycle`: sub-devices added to or removed from a gateway.
    TopoLifecycle,
    /// `/${pk}/${dn}/thing/downlink/reply/message`: a device's reply to a cloud call.
    DownlinkReply,
    /// `/sys/${pk}/${dn}/thing/event/property/post`: Alink request.
    AlinkPropertyPost,
    /// `/sys/${pk}/${dn}/thing/event/${id}/post`: Alink request.
    AlinkEventPost(&'a str),
    /// `/sys/${pk}/${dn}/thing/service/property/set`: Alink request from the cloud.
    PropertySet,
    /// `/sys/${pk}/${dn}/thing/service/${id}`: Alink service call from the cloud.
    Service(&'a str),
    /// `/sys/${pk}/${dn}/rrpc/request/${messageId}`: any bytes.
    Rrpc(&'a str),
    /// `/sys/.../*_reply`: an Alink reply.
    Reply,
    /// `/${pk}/${dn}/ota/...` or `/ota/device/.../${pk}/${dn}`.
    Ota,
    /// `/${pk}/${dn}/user/...`: any bytes.
    User(&'a str),
    /// Anything else about a device.
    Other,
}

/// A topic taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topic<'a> {
    product_key: &'a str,
    device_name: &'a str,
    route: Route<'a>,
    /// The path after the device, dotted: the default action.
    action: String,
    /// `/sys/...`: a device-side topic, whose payloads are Alink JSON.
    sys: bool,
}

impl<'a> Topic<'a> {
    fn parse(text: &'a str) -> Result<Self, DecodeError> {
        let bad = |problem: &str| {
            DecodeError::shape(TOPIC, format!("`{}` {problem}", crate::dialect::clip(text)))
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| bad("does not start with `/`"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (sys, product_key, device_name, path): (bool, &str, &str, &[&str]) = match parts[..] {
            ["as", "mqtt", "status", pk, dn] => {
                return Topic {
                    product_key: pk,
                    device_name: dn,
                    route: Route::Status,
                    action: "status".to_owned(),
                    sys: false,
                }
                .checked(text);
            }
            ["ota", "device", _, pk, dn] => {
                return Topic {
                    product_key: pk,
                    device_name: dn,
                    route: Route::Ota,
                    action: rest.replace('/', "."),
                    sys: false,
                }
                .checked(text);
            }
            ["sys", pk, dn, ref path @ ..] => (true, pk, dn, path),
            [pk, dn, ref path @ ..] => (false, pk, dn, path),
            _ => return Err(bad("names no product key and device name")),
        };
        // Segments before `path`: the empty one before the leading `/`, `sys`, pk, dn.
        let before = usize::from(sys) + 3;
        let route = match (sys, path) {
            // A custom topic's action is its path after `user/`, slashes kept.
            (_, ["user", ..]) => {
                Route::User(text.splitn(before + 2, '/').nth(before + 1).unwrap_or(""))
            }
            (false, ["thing", "event", "property", "post"]) => Route::PropertyPost,
            (false, ["thing", "event", id, "post"]) => Route::EventPost(id),
            (false, ["thing", "lifecycle"]) => Route::Lifecycle,
            (false, ["thing", "topo", "lifecycle"]) => Route::TopoLifecycle,
            (false, ["thing", "downlink", "reply", "message"]) => Route::DownlinkReply,
            (_, ["ota", ..]) => Route::Ota,
            (true, ["thing", "event", "property", "post"]) => Route::AlinkPropertyPost,
            (true, ["thing", "event", id, "post"]) => Route::AlinkEventPost(id),
            (true, ["thing", "service", "property", "set"]) => Route::PropertySet,
            (true, ["rrpc", "request", message_id]) => Route::Rrpc(message_id),
            (true, [.., last]) if last.ends_with("_reply") => Route::Reply,
            (true, ["thing", "service", id]) => Route::Service(id),
            _ => Route::Other,
        };
        Topic {
            product_key,
            device_name,
            route,
            action: path.join("."),
            sys,
        }
        .checked(text)
    }

    fn checked(self, text: &str) -> Result<Self, DecodeError> {
        if self.product_key.is_empty() || self.device_name.is_empty() {
            return Err(DecodeError::shape(
                TOPIC,
                format!(
                    "`{}` has an empty product key or device name",
                    crate::dialect::clip(text)
                ),
            ));
        }
        Ok(self)
    }
}

/// Named values in the order sent: AMQP `items`, Alink `params`, an event's `value`.
type Params = Named<Item>;

/// One named value: the long form `{"value":v,"time":ms}` or the value itself.
#[derive(Debug)]
struct Item {
    value: Value,
    time_ms: Option<u64>,
}

impl<'de> Deserialize<'de> for Item {
    /// One pass: scalars and arrays are the value itself; an object is read key by key as the
    /// long form until a key other than `value` or `time` shows it is a struct value, which is
    /// then kept whole as JSON.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;

        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value, or {\"value\": v, \"time\": ms}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
                let mut value: Option<Value> = None;
                let mut time: Option<serde_json::Value> = None;
                while let Some(key) = map.next_key::<CowStr<'de>>()? {
                    match key.0.as_ref() {
                        "value" if value.is_none() => value = Some(map.next_value()?),
                        "time" if time.is_none() => time = Some(map.next_value()?),
                        _ => {
                            // A struct value: put back what was read, then take the rest.
                            let mut object = serde_json::Map::new();
                            if let Some(value) = value {
                                let value =
                                    serde_json::to_value(&value).unwrap_or(serde_json::Value::Null);
                                object.insert("value".to_owned(), value);
                            }
                            if let Some(time) = time {
                                object.insert("time".to_owned(), time);
                            }
                            object.insert(key.0.into_owned(), map.next_value()?);
                            while let Some((k, v)) = map.next_entry()? {
                                object.insert(k, v);
                            }
                            return Ok(Item::whole(serde_json::Value::Object(object)));
                        }
                    }
                }
                Ok(match value {
                    Some(value) => Item {
                        value,
                        time_ms: time.as_ref().and_then(lenient_ms),
                    },
                    // `{}` or `{"time": …}` alone: a struct value, not the long form.
                    None => {
                        let mut object = serde_json::Map::new();
                        if let Some(time) = time {
                            object.insert("time".to_owned(), time);
                        }
                        Item::whole(serde_json::Value::Object(object))
                    }
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
                let tree = serde_json::Value::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(Item::whole(tree))
            }
            fn visit_unit<E>(self) -> Result<Item, E> {
                Ok(Item::scalar(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Item, E> {
                Ok(Item::scalar(Value::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Item, D::Error> {
                Item::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Item, E> {
                Ok(Item::scalar(Value::Boolean(b)))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Item, E> {
                Ok(Item::scalar(Value::Integer(i)))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Item, E> {
                Ok(Item::scalar(
                    i64::try_from(u).map_or(Value::Float(u as f64), Value::Integer),
                ))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Item, E> {
                Ok(Item::scalar(Value::Float(f)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Item, E> {
                Ok(Item::scalar(Value::Text(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Item, E> {
                Ok(Item::scalar(Value::Text(s)))
            }
        }

        d.deserialize_any(ItemVisitor)
    }
}

impl Item {
    fn scalar(value: Value) -> Self {
        Item {
            value,
            time_ms: None,
        }
    }

    fn whole(tree: serde_json::Value) -> Self {
        Item::scalar(Value::Json(Json::from(tree)))
    }
}

/// A time in ms written as a number or a string of digits.
fn lenient_ms(time: &serde_json::Value) -> Option<u64> {
    match time {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Params {
    fn into_properties(self, default_time: Option<u64>) -> Vec<Property> {
        self.0
            .into_iter()
            .map(|(code, item)| Property {
                code,
                value: item.value,
                time_ms: item.time_ms.or(default_time),
                service: None,
            })
            .collect()
    }
}

/// The device fields every cloud-written body may carry.
#[derive(Debug, Default)]
struct Common {
    iot_id: Option<String>,
    product_key: Option<String>,
    device_name: Option<String>,
    request_id: Option<AlinkId>,
}

/// Every cloud-written body (property post, event, status, lifecycle, downlink reply) in one
/// struct: one pass, no buffering (`#[serde(flatten)]` would buffer the whole body first).
/// Each route reads the fields its body documents; unknown fields stay in the payload.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Body<'a> {
    iot_id: Option<String>,
    product_key: Option<String>,
    device_name: Option<String>,
    request_id: Option<AlinkId>,
    gmt_create: LenientU64,
    message_create_time: LenientU64,
    /// A property post's values.
    items: Option<Params>,
    /// An event's identifier and values.
    identifier: Option<String>,
    value: Params,
    /// An event's time in ms (a status's `time` is local text, and reads as none).
    time: LenientU64,
    /// A status.
    status: Option<String>,
    utc_time: Option<String>,
    /// A lifecycle change, and the gateway of a topology change.
    action: Option<String>,
    gw_iot_id: Option<String>,
    /// A downlink reply.
    code: Option<i64>,
    topic: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

impl Body<'_> {
    fn take_common(&mut self) -> Common {
        Common {
            iot_id: self.iot_id.take(),
            product_key: self.product_key.take(),
            device_name: self.device_name.take(),
            request_id: self.request_id.take(),
        }
    }
}

/// An Alink request, read leniently: only the parts an event needs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AlinkIn<'a> {
    id: Option<AlinkId>,
    method: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    code: Option<i64>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// An Alink event's params: `{"value":{...},"time":ms}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AlinkEventParams {
    value: Params,
    time: LenientU64,
}

/// What one body says, before it is put into an [`Event`].
#[derive(Default)]
struct Reading {
    kind: Option<Kind>,
    action: Option<String>,
    properties: Vec<Property>,
    time_ms: Option<u64>,
    request_id: Option<String>,
    code: Option<i64>,
    common: Common,
    gateway: Option<String>,
}

/// Normalizes one message; its `topic` property says what the body is.
pub fn decode(message: &RawMessage<'_>) -> Result<Event, DecodeError> {
    let topic_text = message.property(TOPIC_PROPERTY).ok_or_else(|| {
        DecodeError::shape(
            TOPIC,
            "missing: pass the AMQP `topic` application property or the MQTT topic",
        )
    })?;
    let topic = Topic::parse(topic_text)?;
    let payload = message.payload;
    let mut event = Event {
        id: String::new(),
        source: message.source.to_owned(),
        vendor: Vendor::Alibaba,
        kind: Kind::Other,
        action: String::new(),
        device: Device {
            // Joined by hand: one allocation, without `format!`'s machinery.
            id: [topic.product_key, ".", topic.device_name].concat(),
            product: Some(topic.product_key.to_owned()),
            name: Some(topic.device_name.to_owned()),
        },
        time_ms: 0,
        properties: Vec::new(),
        payload: Json::null(),
        attributes: BTreeMap::new(),
    };

    let reading = match topic.route {
        Route::User(_) | Route::Rrpc(_) | Route::Other => {
            // Free-form: any bytes are fine.
            body_as_payload(payload, &mut event);
            let mut reading = Reading {
                kind: Some(match topic.route {
                    Route::User(_) => Kind::Message,
                    Route::Rrpc(_) => Kind::Command,
                    _ => Kind::Other,
                }),
                ..Reading::default()
            };
            if let Route::Rrpc(message_id) = topic.route {
                reading.action = Some("rrpc".to_owned());
                reading.request_id = Some(message_id.to_owned());
            }
            if let Route::User(path) = topic.route {
                reading.action = Some(path.to_owned());
            }
            reading
        }
        Route::Ota => {
            // Firmware bodies are read leniently (`read_json`), so one that is not JSON (an
            // empty body, text) is kept as a free-form body is: the payload must be JSON.
            let text = utf8(BODY, payload)?;
            let reading = read_json(Route::Ota, text)?;
            body_as_payload(payload, &mut event);
            reading
        }
        route => {
            let text = utf8(if topic.sys { ALINK } else { BODY }, payload)?;
            let reading = read_json(route, text)?;
            event.payload = Json::from_parsed(text.to_owned());
            reading
        }
    };

    event.kind = reading.kind.unwrap_or(Kind::Other);
    event.action = reading
        .action
        .filter(|a| !a.is_empty())
        .unwrap_or(topic.action);
    event.time_ms = latest(&reading.properties)
        .or(reading.time_ms)
        .or_else(|| {
            message
                .property(GENERATE_TIME_PROPERTY)
                .and_then(|t| t.trim().parse().ok())
        })
        .unwrap_or(0);
    event.properties = reading.properties;

    let attributes = &mut event.attributes;
    attributes.insert(ATTR_TOPIC.to_owned(), topic_text.to_owned());
    let envelope = if topic.sys {
        ENVELOPE_MQTT
    } else {
        ENVELOPE_AMQP
    };
    attributes.insert(ATTR_ENVELOPE.to_owned(), envelope.to_owned());
    if let Some(message_id) = message.property(MESSAGE_ID_PROPERTY) {
        attributes.insert(ATTR_MESSAGE_ID.to_owned(), message_id.to_owned());
    }
    let request_id = reading
        .request_id
        .or_else(|| reading.common.request_id.map(|id| id.0));
    event.id = match (message.property(MESSAGE_ID_PROPERTY), &request_id) {
        (Some(id), _) if !id.is_empty() => id.to_owned(),
        (_, Some(request)) if !request.is_empty() => {
            crypto::md5_hex(&[topic_text.as_bytes(), b"\nid=", request.as_bytes()])
        }
        _ => receipt_id(),
    };
    if let Some(request_id) = request_id.filter(|r| !r.is_empty()) {
        attributes.insert(ATTR_REQUEST_ID.to_owned(), request_id);
    }
    if let Some(code) = reading.code {
        attributes.insert(ATTR_CODE.to_owned(), code.to_string());
    }
    if let Some(iot_id) = reading.common.iot_id.filter(|i| !i.is_empty()) {
        attributes.insert(ATTR_IOT_ID.to_owned(), iot_id);
    }
    if let Some(gateway) = reading.gateway.filter(|g| !g.is_empty()) {
        attributes.insert(ATTR_GATEWAY.to_owned(), gateway);
    }
    // A body that names another device than its topic is refused rather than guessed at.
    for (field, named, from_topic) in [
        ("productKey", reading.common.product_key, topic.product_key),
        ("deviceName", reading.common.device_name, topic.device_name),
    ] {
        if let Some(named) = named.filter(|n| !n.is_empty() && n != from_topic) {
            return Err(DecodeError::shape(
                BODY,
                format!(
                    "`{field}` is `{}` but the topic names `{}`",
                    crate::dialect::clip(&named),
                    crate::dialect::clip(from_topic)
                ),
            ));
        }
    }
    Ok(event)
}

/// Reads the JSON body of a structured topic.
fn read_json(route: Route<'_>, text: &str) -> Result<Reading, DecodeError> {
    let mut body: Body<'_> = match route {
        Route::AlinkPropertyPost
        | Route::AlinkEventPost(_)
        | Route::PropertySet
        | Route::Service(_)
        | Route::Reply => return read_alink(route, text),
        Route::User(_) | Route::Rrpc(_) | Route::Other => return Ok(Reading::default()),
        // Firmware bodies vary by step; only the device fields are read, leniently.
        Route::Ota => parse_json_str(BODY, text).unwrap_or_default(),
        _ => parse_json_str(BODY, text)?,
    };
    let mut reading = Reading {
        common: body.take_common(),
        time_ms: body.gmt_create.0,
        ..Reading::default()
    };
    match route {
        Route::PropertyPost => {
            let items = body
                .items
                .ok_or_else(|| DecodeError::shape(BODY, "a property post has no `items`"))?;
            reading.kind = Some(Kind::Properties);
            reading.properties = items.into_properties(None);
        }
        Route::EventPost(identifier) => {
            let time_ms = body.time.0.or(body.gmt_create.0);
            reading.kind = Some(Kind::DeviceEvent);
            reading.action = Some(body.identifier.unwrap_or_else(|| identifier.to_owned()));
            reading.properties = body.value.into_properties(time_ms);
            reading.time_ms = time_ms;
        }
        Route::Status => {
            let status = body
                .status
                .ok_or_else(|| DecodeError::shape(BODY, "a status has no `status`"))?;
            reading.kind = Some(match status.as_str() {
                "online" => Kind::Online,
                "offline" => Kind::Offline,
                _ => Kind::Other,
            });
            reading.action = Some(status);
            reading.time_ms = body.utc_time.as_deref().and_then(time::parse_iso);
        }
        Route::Lifecycle | Route::TopoLifecycle => {
            let action = body
                .action
                .ok_or_else(|| DecodeError::shape(BODY, "a lifecycle message has no `action`"))?;
            reading.kind = Some(Kind::Lifecycle);
            reading.action = Some(action);
            reading.time_ms = body.message_create_time.0.or(body.gmt_create.0);
            reading.gateway = body.gw_iot_id;
        }
        Route::DownlinkReply => {
            reading.kind = Some(Kind::CommandReply);
            // The action is the request's topic as an Alink method, matching the reply's own
            // topic on the device side.
            reading.action = body
                .topic
                .as_deref()
                .and_then(|t| Topic::parse(t).ok())
                .map(|t| t.action);
            reading.properties = object_properties(body.data);
            reading.code = body.code;
        }
        _ => reading.kind = Some(Kind::Lifecycle),
    }
    Ok(reading)
}

/// Reads an Alink request or reply on a `/sys/` topic.
fn read_alink(route: Route<'_>, text: &str) -> Result<Reading, DecodeError> {
    let alink: AlinkIn<'_> = parse_json_str(ALINK, text)?;
    let id = alink
        .id
        .map(|id| id.0)
        .ok_or_else(|| DecodeError::shape(ALINK, "no `id`"))?;
    let mut reading = Reading {
        request_id: Some(id),
        ..Reading::default()
    };
    if let Route::Reply = route {
        let code = alink
            .code
            .ok_or_else(|| DecodeError::shape(ALINK, "a reply has no `code`"))?;
        reading.kind = Some(Kind::CommandReply);
        reading.code = Some(code);
        reading.properties = object_properties(alink.data);
        return Ok(reading);
    }
    let params = alink.params.map_or("null", RawValue::get);
    match route {
        Route::AlinkEventPost(identifier) => {
            let params: AlinkEventParams = parse_json_str(ALINK, params)?;
            reading.kind = Some(Kind::DeviceEvent);
            reading.action = Some(identifier.to_owned());
            reading.time_ms = params.time.0;
            reading.properties = params.value.into_properties(params.time.0);
        }
        Route::Service(identifier) => {
            reading.kind = Some(Kind::Command);
            reading.action = Some(identifier.to_owned());
            reading.properties = parse_params(params)?;
        }
        Route::PropertySet => {
            reading.kind = Some(Kind::Command);
            reading.properties = parse_params(params)?;
        }
        _ => {
            reading.kind = Some(Kind::Properties);
            reading.properties = parse_params(params)?;
        }
    }
    // The method is informative only: the topic decides, as it does for the cloud.
    let _ = alink.method;
    Ok(reading)
}

fn parse_params(text: &str) -> Result<Vec<Property>, DecodeError> {
    let params: Params = parse_json_str(ALINK, text)?;
    Ok(params.into_properties(None))
}

/// A reply's `data` as properties when it is an object of named values; otherwise none (it
/// stays in the payload).
fn object_properties(data: Option<&RawValue>) -> Vec<Property> {
    data.and_then(|raw| serde_json::from_str::<Params>(raw.get()).ok())
        .map(|params| params.into_properties(None))
        .unwrap_or_default()
}

fn latest(properties: &[Property]) -> Option<u64> {
    properties.iter().filter_map(|p| p.time_ms).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::ErrorKind;

    fn decode_on(topic: &str, body: &str) -> Result<Event, DecodeError> {
        decode_with(&[(TOPIC_PROPERTY, topic)], body)
    }

    fn decode_with(properties: &[(&str, &str)], body: &str) -> Result<Event, DecodeError> {
        let properties: Vec<(String, String)> = properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        decode(&RawMessage::new("ali", body.as_bytes()).with_properties(&properties))
    }

    const PROPERTY_POST: &str = r#"{"iotId":"4z819VQHk6VSLmmBJfrf00107ee200","requestId":"2","productKey":"a1Pk","deviceName":"lamp","gmtCreate":1510799670074,"deviceType":"Ammeter","items":{"Power":{"value":"on","time":1510799670074},"Position":{"time":1510292697470,"value":{"latitude":39.9,"longitude":116.38}},"Temp":{"value":23.5,"time":1510799670075}},"checkFailedData":{}}"#;

    #[test]
    fn amqp_property_post_becomes_properties_in_order_with_their_times() {
        let event = decode_with(
            &[
                (TOPIC_PROPERTY, "/a1Pk/lamp/thing/event/property/post"),
                (MESSAGE_ID_PROPERTY, "1234567890"),
                (GENERATE_TIME_PROPERTY, "1510799670999"),
            ],
            PROPERTY_POST,
        )
        .unwrap();
        assert_eq!(event.kind, Kind::Properties);
        assert_eq!(event.vendor, Vendor::Alibaba);
        assert_eq!(event.id, "1234567890");
        assert_eq!(event.action, "thing.event.property.post");
        assert_eq!(event.device.id, "a1Pk.lamp");
        assert_eq!(event.device.product.as_deref(), Some("a1Pk"));
        assert_eq!(event.device.name.as_deref(), Some("lamp"));
        let codes: Vec<&str> = event.properties.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["Power", "Position", "Temp"]);
        assert_eq!(event.properties[0].value, Value::Text("on".into()));
        assert_eq!(event.properties[1].time_ms, Some(1510292697470));
        assert!(matches!(event.properties[1].value, Value::Json(_)));
        assert_eq!(event.properties[2].value, Value::Float(23.5));
        assert_eq!(event.time_ms, 1510799670075, "the latest property time");
        assert_eq!(
            event.attribute("iot-id"),
            Some("4z819VQHk6VSLmmBJfrf00107ee200")
        );
        assert_eq!(event.attribute("request-id"), Some("2"));
        assert_eq!(event.attribute("message-id"), Some("1234567890"));
        assert_eq!(event.attribute("envelope"), Some(ENVELOPE_AMQP));
        // Unknown fields stay in the payload.
        assert!(event.payload.as_str().contains("checkFailedData"));
    }

    #[test]
    fn a_property_post_without_items_is_a_json_error() {
        let error =
            decode_on("/a1Pk/lamp/thing/event/property/post", r#"{"iotId":"x"}"#).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Json);
        assert!(error.to_string().contains("items"), "{error}");
    }

    #[test]
    fn status_maps_online_and_offline_with_the_utc_time() {
        let body = r#"{"status":"offline","iotId":"i1","productKey":"a1Pk","deviceName":"lamp","time":"2018-08-31 15:32:28.205","utcTime":"2018-08-31T07:32:28.205Z","clientIp":"1.2.3.4"}"#;
        let event = decode_on("/as/mqtt/status/a1Pk/lamp", body).unwrap();
        assert_eq!(event.kind, Kind::Offline);
        assert_eq!(event.action, "offline");
        assert_eq!(event.device.id, "a1Pk.lamp");
        assert_eq!(event.time_ms, 1535700748205);
        let online = body.replace("offline", "online");
        assert_eq!(
            decode_on("/as/mqtt/status/a1Pk/lamp", &online)
                .unwrap()
                .kind,
            Kind::Online
        );
    }

    #[test]
    fn lifecycle_action_names_the_event() {
        let body = r#"{"action":"delete","iotId":"i1","productKey":"a1Pk","deviceName":"lamp","messageCreateTime":1510292739881}"#;
        let event = decode_on("/a1Pk/lamp/thing/lifecycle", body).unwrap();
        assert_eq!(event.kind, Kind::Lifecycle);
        assert_eq!(event.action, "delete");
        assert_eq!(event.time_ms, 1510292739881);
    }

    #[test]
    fn a_body_naming_another_device_than_its_topic_is_refused() {
        let body = r#"{"action":"delete","productKey":"a1Other","deviceName":"lamp"}"#;
        let error = decode_on("/a1Pk/lamp/thing/lifecycle", body).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Json);
        assert!(error.to_string().contains("productKey"), "{error}");
    }

    #[test]
    fn amqp_event_post_is_a_device_event_named_by_its_identifier() {
        let body = r#"{"identifier":"BrokenInfo","name":"broken","type":"info","iotId":"i1","productKey":"a1Pk","deviceName":"lamp","gmtCreate":1510799670074,"value":{"Power":"on","Rate":3},"time":1510799670074}"#;
        let event = decode_on("/a1Pk/lamp/thing/event/BrokenInfo/post", body).unwrap();
        assert_eq!(event.kind, Kind::DeviceEvent);
        assert_eq!(event.action, "BrokenInfo");
        assert_eq!(event.property("Rate").unwrap().value, Value::Integer(3));
        assert_eq!(event.property("Rate").unwrap().time_ms, Some(1510799670074));
    }

    #[test]
    fn downlink_reply_is_a_command_reply_with_code_and_request_id() {
        let body = r#"{"gmtCreate":1510292739881,"iotId":"i1","productKey":"a1Pk","deviceName":"lamp","requestId":"123","code":200,"message":"success","topic":"/sys/a1Pk/lamp/thing/service/property/set","data":{"Power":"on"}}"#;
        let event = decode_on("/a1Pk/lamp/thing/downlink/reply/message", body).unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
        assert_eq!(event.action, "thing.service.property.set");
        assert_eq!(event.attribute("code"), Some("200"));
        assert_eq!(event.attribute("request-id"), Some("123"));
        assert_eq!(
            event.property("Power").unwrap().value,
            Value::Text("on".into())
        );
    }

    /// Found by fuzzing (`fuzz/seeds/alibaba/regression-ota-empty-body`): the lenient
    /// firmware reading let a body that is not JSON become the payload verbatim.
    #[test]
    fn a_firmware_body_that_is_not_json_is_kept_as_text_so_the_payload_stays_json() {
        for body in ["", "0\"3Ps", "progress 50%"] {
            let event = decode_on("/a1Pk/lamp/ota/upgrade/progress", body).unwrap();
            assert_eq!(event.kind, Kind::Lifecycle);
            assert_eq!(event.payload.as_str(), serde_json::to_string(body).unwrap());
            assert_eq!(event.attribute("content"), Some("text"));
        }
        let event = decode_on("/a1Pk/lamp/ota/upgrade/progress", r#"{"step":"50"}"#).unwrap();
        assert_eq!(event.payload.as_str(), r#"{"step":"50"}"#);
        assert_eq!(event.attribute("content"), None);
    }

    #[test]
    fn custom_topic_passes_any_payload_through_as_a_message() {
        let event = decode_on("/a1Pk/lamp/user/update/json", "not json at all").unwrap();
        assert_eq!(event.kind, Kind::Message);
        assert_eq!(event.action, "update/json");
        assert_eq!(event.payload.as_str(), r#""not json at all""#);
        assert_eq!(event.attribute("content"), Some("text"));

        let event = decode_on("/a1Pk/lamp/user/get", r#"{"on":1}"#).unwrap();
        assert_eq!(event.payload.as_str(), r#"{"on":1}"#);
        assert_eq!(event.action, "get");
    }

    #[test]
    fn alink_property_post_reads_long_and_short_forms() {
        let body = r#"{"id":"7","version":"1.0","params":{"Power":{"value":"on","time":1524448722000},"Temp":21,"Pos":{"lat":1,"value":2},"Range":{"value":2,"time":"7","max":3}},"method":"thing.event.property.post"}"#;
        let event = decode_on("/sys/a1Pk/lamp/thing/event/property/post", body).unwrap();
        assert_eq!(event.kind, Kind::Properties);
        assert_eq!(event.attribute("envelope"), Some(ENVELOPE_MQTT));
        assert_eq!(event.attribute("request-id"), Some("7"));
        let power = event.property("Power").unwrap();
        assert_eq!(power.value, Value::Text("on".into()));
        assert_eq!(power.time_ms, Some(1524448722000));
        assert_eq!(event.property("Temp").unwrap().value, Value::Integer(21));
        // An object with other keys than value/time is a struct value, not the long form.
        assert!(matches!(
            event.property("Pos").unwrap().value,
            Value::Json(_)
        ));
        assert_eq!(event.time_ms, 1524448722000);
        // The MQTT path has no message id: the id is a digest of the topic and the Alink id,
        // stable across redeliveries.
        let again = decode_on("/sys/a1Pk/lamp/thing/event/property/post", body).unwrap();
        assert_eq!(event.id, again.id);
        assert_eq!(event.id.len(), 32);
    }

    #[test]
    fn the_same_custom_topic_message_received_twice_is_two_events_not_a_duplicate() {
        let first = decode_on("/a1Pk/lamp/user/get", "beep").unwrap();
        let second = decode_on("/a1Pk/lamp/user/get", "beep").unwrap();
        assert_ne!(first.id, second.id);
    }

    #[test]
    fn property_set_and_service_calls_are_commands() {
        let body = r#"{"id":12,"version":"1.0","params":{"PowerSwitch":1},"method":"thing.service.property.set"}"#;
        let event = decode_on("/sys/a1Pk/lamp/thing/service/property/set", body).unwrap();
        assert_eq!(event.kind, Kind::Command);
        assert_eq!(event.action, "thing.service.property.set");
        assert_eq!(event.attribute("request-id"), Some("12"));
        assert_eq!(
            event.property("PowerSwitch").unwrap().value,
            Value::Integer(1)
        );

        let body =
            r#"{"id":"13","version":"1.0","params":{"Seconds":5},"method":"thing.service.Reboot"}"#;
        let event = decode_on("/sys/a1Pk/lamp/thing/service/Reboot", body).unwrap();
        assert_eq!(event.kind, Kind::Command);
        assert_eq!(event.action, "Reboot");
    }

    #[test]
    fn alink_event_post_reads_value_and_time() {
        let body = r#"{"id":"1","version":"1.0","params":{"value":{"ErrorCode":4},"time":1524448722000},"method":"thing.event.Fault.post"}"#;
        let event = decode_on("/sys/a1Pk/lamp/thing/event/Fault/post", body).unwrap();
        assert_eq!(event.kind, Kind::DeviceEvent);
        assert_eq!(event.action, "Fault");
        assert_eq!(
            event.property("ErrorCode").unwrap().value,
            Value::Integer(4)
        );
        assert_eq!(event.time_ms, 1524448722000);
    }

    #[test]
    fn replies_carry_their_code_and_request_id() {
        let body = r#"{"id":"7","code":200,"data":{},"message":"success"}"#;
        let event = decode_on("/sys/a1Pk/lamp/thing/event/property/post_reply", body).unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
        assert_eq!(event.action, "thing.event.property.post_reply");
        assert_eq!(event.attribute("code"), Some("200"));
        assert_eq!(event.attribute("request-id"), Some("7"));

        let error = decode_on(
            "/sys/a1Pk/lamp/thing/event/property/post_reply",
            r#"{"id":"7"}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("code"), "{error}");
    }

    #[test]
    fn rrpc_request_is_a_command_keyed_by_its_message_id() {
        let event = decode_on("/sys/a1Pk/lamp/rrpc/request/1091", "\u{1}\u{2}binary").unwrap();
        assert_eq!(event.kind, Kind::Command);
        assert_eq!(event.action, "rrpc");
        assert_eq!(event.attribute("request-id"), Some("1091"));
    }

    #[test]
    fn an_alink_request_and_reply_encoded_here_decode_back() {
        use super::super::mqtt::{AlinkReply, AlinkRequest, Topics};
        let topics = Topics::new("a1Pk", "lamp");
        let properties = [Property::new("Power", Value::Boolean(true))];
        let request = AlinkRequest::property_post("99", &properties);
        let text = String::from_utf8(request.encode()).unwrap();
        let event = decode_on(&topics.property_post(), &text).unwrap();
        assert_eq!(event.kind, Kind::Properties);
        assert_eq!(event.property("Power").unwrap().value, Value::Boolean(true));

        let reply = AlinkReply::success("99", Json::null());
        let text = String::from_utf8(reply.encode()).unwrap();
        let event = decode_on(&topics.property_set_reply(), &text).unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
        assert_eq!(event.attribute("request-id"), Some("99"));
    }

    #[test]
    fn unknown_topics_are_kept_as_other_and_bad_topics_refused() {
        let event = decode_on("/a1Pk/lamp/thing/list/found", r#"{"a":1}"#).unwrap();
        assert_eq!(event.kind, Kind::Other);
        assert_eq!(event.action, "thing.list.found");

        for bad in [
            "",
            "a1Pk/lamp/thing",
            "/a1Pk",
            "//lamp/user/x",
            "/as/mqtt/status/a1Pk/",
        ] {
            let error = decode_on(bad, "{}").unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Json, "{bad}: {error}");
        }
        let error = decode_with(&[], "{}").unwrap_err();
        assert!(error.to_string().contains("topic"), "{error}");
    }

    #[test]
    fn a_known_topic_with_a_body_that_is_not_json_is_a_json_error() {
        let error = decode_on("/as/mqtt/status/a1Pk/lamp", "online").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Json);
        let error = decode_on("/as/mqtt/status/a1Pk/lamp", r#"{"status":5}"#).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Json);
    }
}
