//! The `tuya-pulsar` and `tuya-business` connectors: Tuya's message service, a customised
//! Apache Pulsar.
//!
//! Authentication is Tuya's `auth1` method (the access id and a password derived from the
//! access key), the topic `persistent://{accessId}/out/event` (or `event-test`), a Failover
//! subscription `{accessId}-sub`. The encryption mode travels in the `em` message property,
//! which is handed to the decoder with the payload.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, ConnectorConfig, ConnectorKind};
use crate::vendor::tuya;

/// A Pulsar connector's settings, derived from its config.
#[derive(Clone)]
pub struct PulsarSettings {
    /// `pulsar+ssl://host:port` or `pulsar://host:port`.
    pub url: String,
    /// The access id and key: the `auth1` credentials derive from them.
    pub keys: tuya::Keys,
    /// The (partitioned) topic.
    pub topic: String,
    /// The Failover subscription.
    pub subscription: String,
    /// Extra trusted CA certificates.
    pub ca_file: Option<PathBuf>,
    /// Rebuild the consumer after this long without a message.
    pub stall_timeout: Option<Duration>,
}

impl std::fmt::Debug for PulsarSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarSettings")
            .field("url", &self.url)
            .field("access_id", &self.keys.access_id())
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .field("ca_file", &self.ca_file)
            .field("stall_timeout", &self.stall_timeout)
            .finish()
    }
}

impl PulsarSettings {
    /// Checks a `tuya-pulsar` / `tuya-business` connector's config and derives its settings.
    pub fn from_config(config: &ConnectorConfig) -> Result<Self, ConfigError> {
        debug_assert!(matches!(
            config.kind,
            ConnectorKind::TuyaPulsar | ConnectorKind::TuyaBusiness
        ));
        let access_id = config.required(&config.access_id, "access_id")?;
        let access_key = config.required_secret(&config.access_key, "access_key")?;
        let keys = tuya::Keys::new(access_id, access_key)
            .map_err(|e| config.invalid(format!("access_key: {e}")))?;
        let url = match (&config.url, &config.region) {
            (Some(url), _) => {
                let url = url.as_str();
                if !(url.starts_with("pulsar://") || url.starts_with("pulsar+ssl://")) {
                    return Err(config.invalid(format!(
                        "url \"{url}\": expected pulsar+ssl://HOST:PORT (or pulsar:// without TLS)"
                    )));
                }
                url.to_owned()
            }
            (None, Some(region)) => region
                .as_str()
                .parse::<tuya::Region>()
                .map_err(|e| config.invalid(format!("region: {e}")))?
                .pulsar_url()
                .to_owned(),
            (None, None) => {
                return Err(config.invalid(
                    "a Tuya connector needs `region` (cn, us, us-east, eu, eu-west, in) or `url`",
                ));
            }
        };
        let suffix = config.subscription_suffix.as_str();
        if suffix.is_empty() {
            return Err(config.invalid("subscription_suffix must not be empty"));
        }
        Ok(PulsarSettings {
            url,
            topic: keys.topic(config.env),
            subscription: keys.subscription(suffix),
            keys,
            ca_file: config.ca_file.as_ref().map(|f| f.as_str().into()),
            stall_timeout: (config.stall_timeout_s > 0)
                .then(|| Duration::from_secs(config.stall_timeout_s)),
        })
    }

    /// What identifies the connector to the broker, without secrets (`/status`, `decode`).
    pub fn identity(&self) -> Vec<(String, String)> {
        vec![
            ("url".into(), self.url.clone()),
            ("auth_method".into(), tuya::AUTH_METHOD.into()),
            ("username".into(), self.keys.access_id().into()),
            ("topic".into(), self.topic.clone()),
            ("subscription".into(), self.subscription.clone()),
            ("subscription_type".into(), "Failover".into()),
        ]
    }
}

/// Runs the connector until the service stops. (The transport is being built: this
/// placeholder refuses to start, so a config naming it fails loudly instead of idling.)
pub async fn run(settings: PulsarSettings, context: super::Context) -> anyhow::Result<()> {
    let _ = settings;
    let error = "this connector's transport is not built yet";
    context.failed(error);
    anyhow::bail!(error)
}
