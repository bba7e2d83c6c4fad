//! Server-side AMQP push: how an application authenticates to IoTDA's AMQP endpoint.
//!
//! AMQP 1.0 over TLS (`amqps://${host}:5671`), SASL PLAIN, vhost `default`. The username
//! carries a millisecond timestamp that must be within 5 minutes of the server's clock, so it
//! is built per connection attempt; the password is the plain access code. Messages are
//! received from a queue (the receiver's source address) and acknowledged with `accepted`.
//! The bodies are decoded by [`super::Decoder`].

use std::fmt;

/// The AMQP port (TLS only).
pub const PORT: u16 = 5671;
/// The AMQP virtual host IoTDA expects in the open frame's hostname.
pub const VHOST: &str = "default";
/// The queue every instance has; rules can forward to other queues.
pub(crate) const DEFAULT_QUEUE: &str = "DefaultQueue";

/// The access credentials for IoTDA's AMQP endpoint. `Debug` never shows the access code.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpCredentials {
    /// The access key of the access credential (console: "Access Details").
    pub access_key: String,
    /// The access code paired with the access key; it is the SASL password.
    pub access_code: String,
    /// The IoTDA instance id, which selects the instance when a region has several.
    pub instance_id: String,
}

impl AmqpCredentials {
    pub fn new(
        access_key: impl Into<String>,
        access_code: impl Into<String>,
        instance_id: impl Into<String>,
    ) -> Self {
        AmqpCredentials {
            access_key: access_key.into(),
            access_code: access_code.into(),
            instance_id: instance_id.into(),
        }
    }

    /// `accessKey=${accessKey}|timestamp=${ms}|instanceId=${instanceId}`, with `timestamp_ms`
    /// the current Unix time in milliseconds (the server refuses it 5 minutes either side).
    pub fn username(&self, timestamp_ms: u64) -> String {
        format!(
            "accessKey={}|timestamp={timestamp_ms}|instanceId={}",
            self.access_key, self.instance_id
        )
    }

    /// The SASL PLAIN password: the access code itself, unhashed.
    pub fn password(&self) -> &str {
        &self.access_code
    }
}

impl fmt::Debug for AmqpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpCredentials")
            .field("access_key", &self.access_key)
            .field("access_code", &"<redacted>")
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> AmqpCredentials {
        AmqpCredentials::new("AK12", "code-that-is-secret", "inst-9")
    }

    #[test]
    fn username_joins_key_timestamp_and_instance_with_bars() {
        assert_eq!(
            credentials().username(1_700_000_000_123),
            "accessKey=AK12|timestamp=1700000000123|instanceId=inst-9"
        );
    }

    #[test]
    fn password_is_the_plain_access_code() {
        assert_eq!(credentials().password(), "code-that-is-secret");
    }

    #[test]
    fn debug_output_never_shows_the_access_code() {
        let text = format!("{:?}", credentials());
        assert!(!text.contains("code-that-is-secret"), "{text}");
        assert!(text.contains("AK12"));
    }
}
