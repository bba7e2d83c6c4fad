//! Alibaba Cloud IoT Platform: server-side AMQP subscription, device-side MQTT (Link SDK) and
//! the RPC OpenAPI for commands.
//!
//! - [`amqp`]: the `aksign` SASL PLAIN username and password of a consumer group login.
//! - [`mqtt`]: a device's login (client id, username, HMAC password), its topics, and Alink
//!   JSON requests and replies.
//! - [`openapi`]: RPC-style request signing for `Pub`, `SetDeviceProperty`,
//!   `InvokeThingService` and `RRpc`.
//! - [`Decoder`]: AMQP bodies and device MQTT payloads → [`Event`]s, by topic (see
//!   `normalize` for the mapping). Alibaba neither signs nor encrypts bodies; the only
//!   transformation is the optional base64 of `encode=base64` subscriptions.

pub mod amqp;
pub mod mqtt;
mod normalize;
pub mod openapi;

use crate::dialect::{DecodeError, RawMessage, base64_field};
use crate::event::Event;

pub use amqp::AmqpCredentials;
pub use mqtt::DeviceCredentials;
pub use mqtt::Topics;
pub use openapi::ApiCredentials;

/// Attribute: the device's `iotId`, Alibaba's globally unique device id.
pub(crate) const ATTR_IOT_ID: &str = "iot-id";
/// Attribute: an Alink reply's `code` (200 is success).
pub(crate) const ATTR_CODE: &str = "code";

/// The [`crate::event::ATTR_ENVELOPE`] value of an AMQP subscription body.
pub(crate) const ENVELOPE_AMQP: &str = "alibaba-amqp";
/// The [`crate::event::ATTR_ENVELOPE`] value of a device-side MQTT (`/sys/...`) payload.
pub(crate) const ENVELOPE_MQTT: &str = "alibaba-mqtt";

/// The transport property holding the topic: the AMQP application property `topic`, or the
/// MQTT topic.
pub(crate) const TOPIC_PROPERTY: &str = "topic";
/// The AMQP application property holding the cloud's message id.
pub(crate) const MESSAGE_ID_PROPERTY: &str = "messageId";
/// The AMQP application property holding when the cloud generated the message (Unix ms).
pub(crate) const GENERATE_TIME_PROPERTY: &str = "generateTime";

/// Decodes Alibaba messages.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    body_base64: bool,
}

impl Decoder {
    /// A decoder; `body_base64` when the subscription asked for `encode=base64`
    /// ([`AmqpCredentials::encode_base64`]), so bodies arrive as base64 text.
    pub fn new(body_base64: bool) -> Self {
        Decoder { body_base64 }
    }

    /// The body as the device or cloud sent it: base64-decoded when the subscription asked
    /// for it, otherwise unchanged.
    pub fn decrypt(&self, message: &RawMessage<'_>) -> Result<Vec<u8>, DecodeError> {
        if !self.body_base64 {
            return Ok(message.payload.to_vec());
        }
        let text = std::str::from_utf8(message.payload).map_err(|_| {
            DecodeError::shape(
                "Alibaba body",
                "`encode=base64` is set but the body is not base64 text",
            )
        })?;
        base64_field("body", text.trim())
    }

    /// Normalizes one message by its `topic` property, which Alibaba always sends; a message
    /// without one is refused (error kind json), since the body alone does not say what it is.
    pub fn decode(&self, message: &RawMessage<'_>) -> Result<Event, DecodeError> {
        if self.body_base64 {
            let body = self.decrypt(message)?;
            normalize::decode(&RawMessage {
                payload: &body,
                ..*message
            })
        } else {
            normalize::decode(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::{ErrorKind, base64_encode};
    use crate::event::Kind;
    use proptest::prelude::*;

    const STATUS: &str = r#"{"status":"online","iotId":"i1","productKey":"a1Pk","deviceName":"lamp","time":"2018-08-31 15:32:28.205","utcTime":"2018-08-31T07:32:28.205Z","lastTime":"2018-08-31 15:32:28.195","utcLastTime":"2018-08-31T07:32:28.195Z","clientIp":"123.123.123.123"}"#;

    fn properties(topic: &str) -> Vec<(String, String)> {
        vec![(TOPIC_PROPERTY.to_owned(), topic.to_owned())]
    }

    #[test]
    fn a_base64_body_is_decoded_before_normalizing() {
        let props = properties("/as/mqtt/status/a1Pk/lamp");
        let sealed = base64_encode(STATUS.as_bytes());
        let message = RawMessage::new("ali", sealed.as_bytes()).with_properties(&props);
        let event = Decoder::new(true).decode(&message).unwrap();
        assert_eq!(event.kind, Kind::Online);
        assert_eq!(
            Decoder::new(true).decrypt(&message).unwrap(),
            STATUS.as_bytes()
        );
    }

    #[test]
    fn a_body_that_is_not_base64_is_a_base64_error_when_base64_is_expected() {
        let props = properties("/as/mqtt/status/a1Pk/lamp");
        let message = RawMessage::new("ali", STATUS.as_bytes()).with_properties(&props);
        let error = Decoder::new(true).decode(&message).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Base64);
        assert!(error.to_string().contains("body"), "{error}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            topic in "\\PC{0,40}",
            base64 in any::<bool>(),
        ) {
            let props = properties(&topic);
            let message = RawMessage::new("ali", &body).with_properties(&props);
            let _ = Decoder::new(base64).decode(&message);
            let _ = Decoder::new(base64).decrypt(&message);
        }
    }
}
