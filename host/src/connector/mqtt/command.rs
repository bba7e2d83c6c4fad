//! The command side of a device MQTT link: each command becomes one publish on the link's
//! connection ([`crate::connector::mqtt`]), confirmed by its PUBACK. A lane keeps up to the
//! link's `command_window` of them in flight ([`Transport::send`]).
//!
//! What a command means on a device link (the link speaks as the device):
//! - a command with `reply_to` answers the request the device received, on the reply topic
//!   of that request;
//! - a command without it is the device's own upward message: a property report, an event,
//!   a custom topic's message.
//!
//! | link | `reply_to` | `name` | publish |
//! |---|---|---|---|
//! | `alibaba-mqtt` | Alink `id` | `thing.service.property.set` | `…/property/set_reply`, Alink reply |
//! | `alibaba-mqtt` | RRPC message id | `rrpc` | `…/rrpc/response/{id}`, `params` as the body |
//! | `alibaba-mqtt` | Alink `id` | service identifier | `…/thing/service/{name}_reply`, Alink reply |
//! | `alibaba-mqtt` | – | `thing.event.property.post` | `…/thing/event/property/post`, Alink request |
//! | `alibaba-mqtt` | – | `thing.event.{id}.post` | `…/thing/event/{id}/post`, Alink request |
//! | `alibaba-mqtt` | – | `user/…` | `/{pk}/{dn}/user/…`, `params` as the body |
//! | `huawei-mqtt` legacy | `mid` | any | `deviceRsp` on `…/data/json` |
//! | `huawei-mqtt` legacy | – | service id | `deviceReq` report on `…/data/json` |
//! | `huawei-mqtt` | `request_id` | `properties.set` | `…/properties/set/response/request_id=…` |
//! | `huawei-mqtt` | `request_id` | any other | `…/commands/response/request_id=…` |
//! | `huawei-mqtt` | – | service id | `…/sys/properties/report`, the params as its properties |
//!
//! Alibaba replies take `code` (default 200), `data` (default `{}`) and `message` from the
//! params; Huawei replies take `result_code` (or `errcode`, default 0), `response_name`,
//! `paras` (or `body`) and `result_desc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value as JsonValue;
use tokio::sync::oneshot;

use super::{Failure, Sent, Transport};
use crate::connector::mqtt::{LinkHandle, Outbound, Outgoing};
use crate::dialect::alibaba::{AlinkReply, AlinkRequest};
use crate::dialect::huawei::reply;
use crate::event::{Command, Json, Property, Value};

/// Publishes commands on an MQTT link.
pub struct MqttTransport {
    link: Arc<LinkHandle>,
    outbound: Outbound,
    /// Alink request ids of the device's own messages.
    next_id: AtomicU64,
}

impl MqttTransport {
    /// A transport over `link`, turning commands into publishes as `outbound` says.
    pub fn new(link: Arc<LinkHandle>, outbound: Outbound) -> Self {
        MqttTransport {
            link,
            outbound,
            next_id: AtomicU64::new(1),
        }
    }

    /// The topic and payload of `command`, or why it cannot be sent (a refusal: sending it
    /// again would not help).
    pub fn message(&self, command: &Command) -> Result<(String, Vec<u8>), String> {
        // Read only where the message is built from the params' fields (a generic link
        // sends them as they are).
        let params = || -> Result<JsonValue, String> {
            serde_json::from_str(command.params.as_str())
                .map_err(|e| format!("the params are not JSON: {e}"))
        };
        match &self.outbound {
            Outbound::Alibaba { topics, device } => {
                same_device(command, device)?;
                let name = command.name.as_str();
                if let Some(request) = &command.reply_to {
                    if name == "rrpc" {
                        return Ok((
                            topics.rrpc_response(request),
                            command.params.as_str().into(),
                        ));
                    }
                    let topic = if name == crate::dialect::alibaba::mqtt::METHOD_PROPERTY_SET {
                        topics.property_set_reply()
                    } else if segment(name) {
                        topics.service_reply(name)
                    } else {
                        return Err(format!(
                            "cannot answer with \"{name}\": name a service identifier, \
                             `thing.service.property.set` or `rrpc`"
                        ));
                    };
                    let params = params()?;
                    let reply = AlinkReply {
                        id: request.clone(),
                        code: params
                            .get("code")
                            .and_then(JsonValue::as_i64)
                            .unwrap_or(200),
                        data: json_field(&params, "data")
                            .unwrap_or_else(|| Json::from_serializable(&serde_json::Map::new())),
                        message: params
                            .get("message")
                            .and_then(JsonValue::as_str)
                            .unwrap_or("success")
                            .to_owned(),
                    };
                    return Ok((topic, reply.encode()));
                }
                if let Some(suffix) = name.strip_prefix("user/") {
                    if suffix.is_empty() || suffix.contains(['+', '#']) {
                        return Err(format!("\"{name}\" is not a custom topic"));
                    }
                    return Ok((topics.full_topic(name), command.params.as_str().into()));
                }
                let topic = match name.split('.').collect::<Vec<_>>().as_slice() {
                    ["thing", "event", "property", "post"] => topics.property_post(),
                    ["thing", "event", identifier, "post"] if segment(identifier) => {
                        topics.event_post(identifier)
                    }
                    _ => {
                        return Err(format!(
                            "\"{name}\" is not something a device sends: use \
                             `thing.event.property.post`, `thing.event.{{id}}.post` or a \
                             `user/...` topic (or set reply_to to answer a request)"
                        ));
                    }
                };
                let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
                let request = AlinkRequest::new(id, name, command.params.clone());
                Ok((topic, request.encode()))
            }
            Outbound::Generic { topic } => {
                let device = command.device.id.as_str();
                if !segment(device) {
                    return Err(format!("device id \"{device}\" cannot go into a topic"));
                }
                if command.name.contains(['+', '#', '\0']) {
                    return Err(format!("name \"{}\" cannot go into a topic", command.name));
                }
                let topic = topic
                    .replace(crate::dialect::json::DEVICE, device)
                    .replace("{name}", &command.name);
                Ok((topic, command.params.as_str().into()))
            }
            Outbound::Huawei { device, legacy } => {
                same_device(command, device)?;
                let params = params()?;
                let code = params
                    .get("result_code")
                    .or_else(|| params.get("errcode"))
                    .and_then(JsonValue::as_i64)
                    .unwrap_or(0);
                let publish = match (&command.reply_to, legacy) {
                    (Some(mid), true) => {
                        let mid = mid
                            .parse()
                            .map_err(|_| format!("reply_to \"{mid}\" is not a legacy mid"))?;
                        let body = json_field(&params, "body");
                        reply::device_rsp(device, mid, code, body.as_ref())
                    }
                    (Some(request_id), false) if command.name == "properties.set" => {
                        let desc = params
                            .get("result_desc")
                            .and_then(JsonValue::as_str)
                            .unwrap_or(if code == 0 { "success" } else { "failure" });
                        reply::properties_set_response(device, request_id, code, desc)
                    }
                    (Some(request_id), false) => {
                        let paras = json_field(&params, "paras");
                        let name = params.get("response_name").and_then(JsonValue::as_str);
                        reply::command_response(device, request_id, code, name, paras.as_ref())
                    }
                    (None, legacy) => {
                        let properties = service_properties(&command.name, &params)?;
                        if *legacy {
                            reply::device_req(device, &properties, None)
                        } else {
                            reply::property_report(device, &properties, None)
                        }
                    }
                };
                let publish = publish.map_err(|e| e.to_string())?;
                Ok((publish.topic, publish.payload))
            }
        }
    }
}

impl Transport for MqttTransport {
    async fn ready(&self) -> Result<(), Failure> {
        self.link.connected().await.map_err(Failure::retry)
    }

    async fn deliver(&self, command: &Command) -> Result<(), Failure> {
        self.send(command, None).await?.confirmed.await
    }

    /// Hands the publish to the link's connection, which writes a lane's publishes in the
    /// order it is given them and answers each by the PUBACK of its own packet id; a publish
    /// still unacknowledged when the connection ends fails, so the lane sends it again.
    async fn send(&self, command: &Command, on: Option<u64>) -> Result<Sent, Failure> {
        let (topic, payload) = self.message(command).map_err(Failure::permanent)?;
        let (done, acknowledged) = oneshot::channel();
        let connection = self
            .link
            .publish(
                Outgoing {
                    topic: topic.clone(),
                    payload,
                    done,
                },
                on,
            )
            .await
            .map_err(Failure::retry)?;
        let confirmed = async move {
            match acknowledged.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(Failure::retry(format!("publish to \"{topic}\": {error}"))),
                Err(_) => Err(Failure::retry(format!(
                    "publish to \"{topic}\": the connection was lost before its PUBACK"
                ))),
            }
        };
        Ok(Sent {
            connection,
            confirmed: Box::pin(confirmed),
        })
    }
}

/// A link speaks for one device: a command for another is refused, not sent as this one.
fn same_device(command: &Command, device: &str) -> Result<(), String> {
    if command.device.id == device {
        Ok(())
    } else {
        Err(format!(
            "the link speaks for device \"{device}\", not \"{}\"",
            command.device.id
        ))
    }
}

/// True if `text` can be one topic level.
fn segment(text: &str) -> bool {
    !text.is_empty() && !text.contains(['/', '+', '#', '\0'])
}

/// A field of the params as JSON text.
fn json_field(params: &JsonValue, key: &str) -> Option<Json> {
    params.get(key).map(Json::from_serializable)
}

/// The params object as the properties of service `service` (a Huawei report groups
/// properties by service).
fn service_properties(service: &str, params: &JsonValue) -> Result<Vec<Property>, String> {
    let JsonValue::Object(map) = params else {
        return Err(format!(
            "a property report needs an object of properties as params (service \"{service}\")"
        ));
    };
    Ok(map
        .iter()
        .map(|(code, value)| {
            let mut property = Property::new(code.clone(), typed(value));
            property.service = Some(service.to_owned());
            property
        })
        .collect())
}

/// A JSON value as a property value.
fn typed(value: &JsonValue) -> Value {
    match value {
        JsonValue::Null => Value::Null,
        JsonValue::Bool(b) => Value::Boolean(*b),
        JsonValue::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => n.as_f64().map_or(Value::Null, Value::Float),
        },
        JsonValue::String(text) => Value::Text(text.clone()),
        other => Value::Json(Json::from_serializable(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::alibaba::Topics;
    use crate::event::Device;

    fn command(device: &str, name: &str, params: &str, reply_to: Option<&str>) -> Command {
        Command {
            via: Some("link".into()),
            device: Device::new(device),
            name: name.into(),
            params: Json::from_text(params.into()).unwrap(),
            reply_to: reply_to.map(str::to_owned),
        }
    }

    fn alibaba() -> MqttTransport {
        MqttTransport::new(
            LinkHandle::new(std::time::Duration::from_secs(1)),
            Outbound::Alibaba {
                topics: Topics::new("a1Pk", "lamp"),
                device: "a1Pk.lamp".into(),
            },
        )
    }

    fn huawei(legacy: bool) -> MqttTransport {
        MqttTransport::new(
            LinkHandle::new(std::time::Duration::from_secs(1)),
            Outbound::Huawei {
                device: "d1".into(),
                legacy,
            },
        )
    }

    fn text(message: (String, Vec<u8>)) -> (String, String) {
        (message.0, String::from_utf8(message.1).unwrap())
    }

    #[test]
    fn alibaba_replies_go_to_the_request_s_reply_topic() {
        let link = alibaba();
        let service = link
            .message(&command(
                "a1Pk.lamp",
                "Reboot",
                r#"{"code":460}"#,
                Some("9"),
            ))
            .unwrap();
        assert_eq!(
            text(service),
            (
                "/sys/a1Pk/lamp/thing/service/Reboot_reply".into(),
                r#"{"id":"9","code":460,"data":{},"message":"success"}"#.into()
            )
        );
        let rrpc = link
            .message(&command("a1Pk.lamp", "rrpc", r#"{"ok":true}"#, Some("m-1")))
            .unwrap();
        assert_eq!(
            text(rrpc),
            (
                "/sys/a1Pk/lamp/rrpc/response/m-1".into(),
                r#"{"ok":true}"#.into()
            )
        );
    }

    #[test]
    fn alibaba_upward_messages_are_alink_requests_or_custom_topics() {
        let link = alibaba();
        let (topic, body) = text(
            link.message(&command(
                "a1Pk.lamp",
                "thing.event.Fault.post",
                r#"{"c":1}"#,
                None,
            ))
            .unwrap(),
        );
        assert_eq!(topic, "/sys/a1Pk/lamp/thing/event/Fault/post");
        assert_eq!(
            body,
            r#"{"id":"1","version":"1.0","params":{"c":1},"method":"thing.event.Fault.post"}"#
        );
        let (topic, body) = text(
            link.message(&command("a1Pk.lamp", "user/up", "[1]", None))
                .unwrap(),
        );
        assert_eq!(
            (topic.as_str(), body.as_str()),
            ("/a1Pk/lamp/user/up", "[1]")
        );
    }

    #[test]
    fn commands_a_link_cannot_send_are_refused_with_the_reason() {
        let link = alibaba();
        let other = link.message(&command(
            "a1Pk.other",
            "thing.event.property.post",
            "{}",
            None,
        ));
        assert!(
            other
                .unwrap_err()
                .contains("speaks for device \"a1Pk.lamp\"")
        );
        let unknown = link.message(&command("a1Pk.lamp", "reboot", "{}", None));
        assert!(
            unknown
                .unwrap_err()
                .contains("not something a device sends")
        );
        let wildcard = link.message(&command("a1Pk.lamp", "user/#", "{}", None));
        assert!(wildcard.is_err());
        let mid = huawei(true).message(&command("d1", "switch", "{}", Some("70000")));
        assert!(mid.unwrap_err().contains("70000"));
    }

    #[test]
    fn huawei_reports_group_the_params_under_the_command_s_service() {
        let (topic, body) = text(
            huawei(false)
                .message(&command("d1", "Light", r#"{"on":true,"level":3}"#, None))
                .unwrap(),
        );
        assert_eq!(topic, "$oc/devices/d1/sys/properties/report");
        assert_eq!(
            serde_json::from_str::<JsonValue>(&body).unwrap(),
            serde_json::json!({"services": [{"service_id": "Light", "properties": {"on": true, "level": 3}}]})
        );
        let (topic, body) = text(
            huawei(false)
                .message(&command(
                    "d1",
                    "properties.set",
                    r#"{"result_code":1}"#,
                    Some("r9"),
                ))
                .unwrap(),
        );
        assert_eq!(
            topic,
            "$oc/devices/d1/sys/properties/set/response/request_id=r9"
        );
        assert_eq!(body, r#"{"result_code":1,"result_desc":"failure"}"#);
        let (topic, _) = text(
            huawei(true)
                .message(&command("d1", "Light", r#"{"on":true}"#, None))
                .unwrap(),
        );
        assert_eq!(topic, "/huawei/v1/devices/d1/data/json");
    }
}
