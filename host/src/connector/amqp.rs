//! The `alibaba-amqp` and `huawei-amqp` connectors: the clouds' server-side subscriptions over
//! AMQP 1.0.
//!
//! Both log in with SASL PLAIN and a username that carries a fresh timestamp (so the
//! credentials are derived again for every connection), attach one receiver link and settle
//! each message `accepted` once the pipeline is done with it.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, ConnectorConfig, ConnectorKind};
use crate::vendor::{alibaba, huawei};

/// The idle time-outs Alibaba accepts in the open frame.
const IDLE_TIMEOUT_S: std::ops::RangeInclusive<u64> = 30..=300;
/// Alibaba's limit of connections per consumer group.
const MAX_CONNECTIONS: usize = 128;

/// Whose login: the vendors derive username and password differently.
#[derive(Debug, Clone)]
pub enum AmqpLogin {
    /// `clientId|authMode=aksign,…|` and an HMAC password.
    Alibaba(alibaba::AmqpCredentials),
    /// `accessKey=…|timestamp=…|instanceId=…` and the access code.
    Huawei(huawei::AmqpCredentials),
}

impl AmqpLogin {
    /// The SASL PLAIN username for a login at `now_ms`.
    pub fn username(&self, now_ms: u64) -> String {
        match self {
            AmqpLogin::Alibaba(c) => c.username(now_ms),
            AmqpLogin::Huawei(c) => c.username(now_ms),
        }
    }

    /// The SASL PLAIN password for a login at `now_ms` (never log it).
    pub fn password(&self, now_ms: u64) -> String {
        match self {
            AmqpLogin::Alibaba(c) => c.password(now_ms),
            AmqpLogin::Huawei(c) => c.password().to_owned(),
        }
    }
}

/// An AMQP connector's settings, derived from its config.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqps://host:port` or `amqp://host:port`.
    pub url: String,
    /// The open frame's hostname, when the vendor wants one (Huawei: `default`).
    pub hostname: Option<String>,
    /// The login of each connection (Alibaba: one client id per connection).
    pub logins: Vec<AmqpLogin>,
    /// The receiver link's source address.
    pub source: String,
    /// Link credit per connection.
    pub credit: u32,
    /// The idle time-out announced in the open frame.
    pub idle_timeout: Duration,
    /// Extra trusted CA certificates.
    pub ca_file: Option<PathBuf>,
}

impl AmqpSettings {
    /// Checks an `alibaba-amqp` / `huawei-amqp` connector's config and derives its settings.
    pub fn from_config(config: &ConnectorConfig) -> Result<Self, ConfigError> {
        if !IDLE_TIMEOUT_S.contains(&config.idle_timeout_s) {
            return Err(config.invalid(format!(
                "idle_timeout_s {} is outside 30..=300 (the servers refuse others)",
                config.idle_timeout_s
            )));
        }
        if config.credit == 0 {
            return Err(config.invalid("credit must be at least 1"));
        }
        if !(1..=MAX_CONNECTIONS).contains(&config.connections) {
            return Err(config.invalid(format!(
                "connections must be 1 to {MAX_CONNECTIONS} (the limit per consumer group)"
            )));
        }
        let explicit_url = match &config.url {
            Some(url) => {
                let url = url.as_str();
                if !(url.starts_with("amqps://") || url.starts_with("amqp://")) {
                    return Err(config.invalid(format!(
                        "url \"{url}\": expected amqps://HOST:PORT (or amqp:// without TLS)"
                    )));
                }
                Some(url.to_owned())
            }
            None => None,
        };
        let instance_id = config
            .instance_id
            .as_ref()
            .map_or("", |i| i.as_str())
            .to_owned();
        let ca_file = config.ca_file.as_ref().map(|f| f.as_str().into());
        let idle_timeout = Duration::from_secs(config.idle_timeout_s);
        match config.kind {
            ConnectorKind::AlibabaAmqp => {
                let url = match explicit_url {
                    Some(url) => url,
                    None if !instance_id.is_empty() => format!(
                        "amqps://{}:{}",
                        alibaba::amqp::instance_host(&instance_id),
                        alibaba::amqp::AMQPS_PORT
                    ),
                    None => {
                        let (Some(uid), Some(region)) = (&config.uid, &config.region) else {
                            return Err(config.invalid(
                                "an alibaba-amqp connector needs `uid` and `region` (public \
                                 instance), `instance_id`, or `url`",
                            ));
                        };
                        format!(
                            "amqps://{}:{}",
                            alibaba::amqp::public_instance_host(uid.as_str(), region.as_str()),
                            alibaba::amqp::AMQPS_PORT
                        )
                    }
                };
                let access_key_id = config.required(&config.access_key_id, "access_key_id")?;
                let secret =
                    config.required_secret(&config.access_key_secret, "access_key_secret")?;
                let group = config.required(&config.consumer_group, "consumer_group")?;
                let client_id = config.client_id.as_ref().map_or_else(
                    || format!("iotrules-{}", config.name),
                    |c| c.as_str().to_owned(),
                );
                if client_id.contains('|') {
                    return Err(config.invalid("client_id must not contain `|`"));
                }
                let logins = (0..config.connections)
                    .map(|n| {
                        AmqpLogin::Alibaba(alibaba::AmqpCredentials {
                            client_id: if config.connections == 1 {
                                client_id.clone()
                            } else {
                                format!("{client_id}-{n}")
                            },
                            access_key_id: access_key_id.to_owned(),
                            access_key_secret: secret.to_owned(),
                            iot_instance_id: instance_id.clone(),
                            consumer_group_id: group.to_owned(),
                            sign_method: config.sign_method,
                            encode_base64: config.body_base64,
                        })
                    })
                    .collect();
                Ok(AmqpSettings {
                    url,
                    hostname: None,
                    logins,
                    source: config.source.as_ref().map_or("", |s| s.as_str()).to_owned(),
                    credit: config.credit,
                    idle_timeout,
                    ca_file,
                })
            }
            ConnectorKind::HuaweiAmqp => {
                let Some(url) = explicit_url else {
                    return Err(config.invalid(
                        "a huawei-amqp connector needs `url` (amqps://HOST:5671, the AMQP access \
                         address on the console's Access Details page)",
                    ));
                };
                let access_key = config.required_secret(&config.access_key, "access_key")?;
                let access_code = config.required_secret(&config.access_code, "access_code")?;
                let credentials =
                    huawei::AmqpCredentials::new(access_key, access_code, instance_id);
                let queue = match (&config.queue, &config.source) {
                    (Some(_), Some(_)) => {
                        return Err(config.invalid("give `queue` or `source`, not both"));
                    }
                    (Some(name), None) | (None, Some(name)) => name.as_str().to_owned(),
                    (None, None) => huawei::amqp::DEFAULT_QUEUE.to_owned(),
                };
                Ok(AmqpSettings {
                    url,
                    hostname: Some(huawei::amqp::VHOST.to_owned()),
                    logins: vec![AmqpLogin::Huawei(credentials); config.connections],
                    source: queue,
                    credit: config.credit,
                    idle_timeout,
                    ca_file,
                })
            }
            other => Err(config.invalid(format!("{} is not an AMQP connector", other.as_str()))),
        }
    }

    /// What identifies the connector to the broker at `now_ms`, without secrets (`/status`,
    /// `decode`): the URL, the source and the first connection's username.
    pub fn identity(&self, now_ms: u64) -> Vec<(String, String)> {
        let mut identity = vec![
            ("url".into(), self.url.clone()),
            ("source".into(), self.source.clone()),
            ("connections".into(), self.logins.len().to_string()),
        ];
        if let Some(login) = self.logins.first() {
            identity.push(("username".into(), login.username(now_ms)));
        }
        identity
    }
}

/// Runs the connector until the service stops. (The transport is being built: this
/// placeholder refuses to start, so a config naming it fails loudly instead of idling.)
pub async fn run(settings: AmqpSettings, context: super::Context) -> anyhow::Result<()> {
    let _ = settings;
    let error = "this connector's transport is not built yet";
    context.failed(error);
    anyhow::bail!(error)
}
