//! The command side of an MQTT link: each command becomes one publish on the link's
//! connection, confirmed by its PUBACK. A lane keeps up to the link's `command_window` of
//! them in flight ([`Transport::send`]).
//!
//! What a command means on a device link (the link speaks as the device): a command with
//! `reply_to` answers the request the device received, on the reply topic of that request; a
//! command without it is the device's own upward message (a property report, an event, a
//! custom topic's message). The topics and payloads are the dialect's:
//! [`alibaba::mqtt::command_message`], [`huawei::reply::command_message`]; an `mqtt` link
//! publishes the params as they are ([`json::command_message`]). A device link speaks for
//! one device: a command for another is refused, not sent as this one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::Outbound;
use super::link::{LinkHandle, Outgoing};
use crate::command::{Failure, Sent, Transport};
use crate::dialect::{alibaba, huawei, json};
use crate::event::Command;

/// Publishes commands on an MQTT link.
pub(crate) struct MqttTransport {
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
        match &self.outbound {
            Outbound::Alibaba { topics, device } => {
                same_device(command, device)?;
                alibaba::mqtt::command_message(topics, command, || {
                    self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
                })
            }
            Outbound::Huawei { device, legacy } => {
                same_device(command, device)?;
                huawei::reply::command_message(device, *legacy, command)
            }
            Outbound::Generic { topic } => json::command_message(topic, command),
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

#[cfg(test)]
mod tests {
    use serde_json::Value as JsonValue;

    use super::*;
    use crate::dialect::alibaba::Topics;
    use crate::event::{Device, Json};

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
