//! Credentials for the server-side subscription (AMQP 1.0, SASL PLAIN, `authMode=aksign`).
//!
//! The username carries every connection parameter; the password is an HMAC of the access key
//! id and the same timestamp under the AccessKey secret, so both must be computed from one
//! timestamp, and recomputed on every reconnect (the server refuses stale timestamps).

use std::fmt;

use crate::dialect::base64_encode;
use crate::dialect::crypto::SignMethod;

/// The AMQP port: Alibaba accepts only `amqps://`.
pub(crate) const AMQPS_PORT: u16 = 5671;

/// The AMQP host of the public instance: `${uid}.iot-amqp.${region}.aliyuncs.com`, where
/// `uid` is the Alibaba Cloud account id.
pub(crate) fn public_instance_host(uid: &str, region: &str) -> String {
    format!("{uid}.iot-amqp.{region}.aliyuncs.com")
}

/// The AMQP host of an enterprise instance: `${iotInstanceId}.amqp.iothub.aliyuncs.com`.
pub(crate) fn instance_host(iot_instance_id: &str) -> String {
    format!("{iot_instance_id}.amqp.iothub.aliyuncs.com")
}

/// What an AMQP client needs to log in to a consumer group.
///
/// `Debug` never shows `access_key_secret`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpCredentials {
    /// Any id naming this client (Alibaba's demos use a host name or MAC address); the
    /// console lists connected clients by it, so make it unique per replica.
    pub client_id: String,
    /// The AccessKey id (`authId`).
    pub access_key_id: String,
    /// The AccessKey secret: the HMAC key of the password.
    pub access_key_secret: String,
    /// The instance id, empty for the public instance.
    pub iot_instance_id: String,
    /// The consumer group to join; replicas sharing one group share its messages.
    pub consumer_group_id: String,
    /// The HMAC of the password, named in the username.
    pub sign_method: SignMethod,
    /// Asks the server to base64 the bodies (`encode=base64`); the decoder must then be built
    /// with `body_base64` set.
    pub encode_base64: bool,
}

impl AmqpCredentials {
    /// The SASL PLAIN username for a login at `timestamp_ms`.
    ///
    /// The key=value pairs are written in the documented order (the server accepts any).
    /// `encode=base64` goes last, after `consumerGroupId`, as Alibaba's own STOMP/AMQP
    /// samples place it.
    pub fn username(&self, timestamp_ms: u64) -> String {
        let encode = if self.encode_base64 {
            ",encode=base64"
        } else {
            ""
        };
        format!(
            "{}|authMode=aksign,signMethod={},timestamp={timestamp_ms},authId={},iotInstanceId={},consumerGroupId={}{encode}|",
            self.client_id,
            self.sign_method.as_str(),
            self.access_key_id,
            self.iot_instance_id,
            self.consumer_group_id,
        )
    }

    /// The SASL PLAIN password for a login at `timestamp_ms` (the username's timestamp):
    /// `base64(HMAC(secret, "authId=${AccessKeyId}&timestamp=${ms}"))`.
    pub fn password(&self, timestamp_ms: u64) -> String {
        let content = format!("authId={}&timestamp={timestamp_ms}", self.access_key_id);
        base64_encode(
            &self
                .sign_method
                .mac(self.access_key_secret.as_bytes(), content.as_bytes()),
        )
    }
}

impl fmt::Debug for AmqpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpCredentials")
            .field("client_id", &self.client_id)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("iot_instance_id", &self.iot_instance_id)
            .field("consumer_group_id", &self.consumer_group_id)
            .field("sign_method", &self.sign_method)
            .field("encode_base64", &self.encode_base64)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "not-a-real-access-key-secret";

    fn credentials() -> AmqpCredentials {
        AmqpCredentials {
            client_id: "replica-1".into(),
            access_key_id: "LTAIexample".into(),
            access_key_secret: SECRET.into(),
            iot_instance_id: String::new(),
            consumer_group_id: "DEFAULT_GROUP".into(),
            sign_method: SignMethod::HmacSha1,
            encode_base64: false,
        }
    }

    #[test]
    fn username_keeps_documented_order_and_empty_instance_id() {
        assert_eq!(
            credentials().username(1573489088171),
            "replica-1|authMode=aksign,signMethod=hmacsha1,timestamp=1573489088171,authId=LTAIexample,iotInstanceId=,consumerGroupId=DEFAULT_GROUP|"
        );
    }

    #[test]
    fn base64_encoding_request_goes_last_inside_the_bars() {
        let creds = AmqpCredentials {
            encode_base64: true,
            ..credentials()
        };
        assert!(
            creds
                .username(1)
                .ends_with(",consumerGroupId=DEFAULT_GROUP,encode=base64|")
        );
    }

    #[test]
    fn password_is_base64_hmac_of_auth_id_and_timestamp() {
        let creds = credentials();
        let expected = base64_encode(&SignMethod::HmacSha1.mac(
            SECRET.as_bytes(),
            b"authId=LTAIexample&timestamp=1573489088171",
        ));
        assert_eq!(creds.password(1573489088171), expected);
        assert_ne!(creds.password(1573489088171), creds.password(1573489088172));
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let shown = format!("{:?}", credentials());
        assert!(!shown.contains(SECRET));
        assert!(shown.contains("LTAIexample"));
    }

    #[test]
    fn hosts_follow_the_documented_patterns() {
        assert_eq!(
            public_instance_host("1941269044154518", "cn-shanghai"),
            "1941269044154518.iot-amqp.cn-shanghai.aliyuncs.com"
        );
        assert_eq!(
            instance_host("iot-ydfrztow"),
            "iot-ydfrztow.amqp.iothub.aliyuncs.com"
        );
    }
}
