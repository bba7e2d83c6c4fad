//! The MQTT links (`alibaba-mqtt`, `huawei-mqtt`, `mqtt`): iotrules connected to a broker as
//! a device (or, for `mqtt`, as a client of any broker), receiving what the cloud sends the
//! device and publishing what the device says.
//!
//! A link is two things at once, sharing one connection, and this folder holds all of it:
//! - its settings, read from its `[[connector]]` table (this file);
//! - a connector: every publish it receives (a command, a property-set request, a custom
//!   topic's message) becomes a [`Delivery`](crate::pipeline::Delivery) with its topic, and a
//!   QoS 1 publish is acknowledged (PUBACK) only once the pipeline has settled it, so nothing
//!   is lost when the service stops with it in flight: the broker sends it again to the
//!   persistent session ([`session`]);
//! - a command path of the same name ([`command`]): each command becomes a publish (its
//!   topic and payload are the dialect's: [`crate::dialect::alibaba::mqtt`],
//!   [`crate::dialect::huawei::mqtt`], [`crate::dialect::json`]), confirmed by its PUBACK,
//!   handed to the connection through the [`LinkHandle`] ([`link`]).
//!
//! The MQTT 3.1.1 session is ours, over rumqttc's packet codec: the login is derived again at
//! every connection (Alibaba's carries a timestamp, Huawei's an hour stamp), the filters are
//! subscribed at every connection and a refused one (SUBACK 0x80) is an error, and a publish
//! still waiting for its PUBACK when the connection ends fails at once, so that the command
//! path tries it again on the next connection. (rumqttc's own event loop resends such
//! publishes itself and reports acknowledgements by packet id only, which cannot be tied to
//! the command that is waiting; its TLS features also bring a second crypto provider.)

mod command;
mod link;
mod session;

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use serde::Deserialize;

pub(crate) use self::command::MqttTransport;
pub use self::link::LinkHandle;
pub use self::link::Outgoing;
pub use self::session::{publish_parts, run};
use super::{Connector, Kind, Start, only_dialect};
use crate::command::{Lanes, PathSettings};
use crate::config::{ConfigError, Expanded, Secret, Table};
use crate::dialect::DialectName::{Alibaba, Huawei, Json};
use crate::dialect::crypto::SignMethod;
use crate::dialect::{Dialect, DialectName, alibaba, huawei};
use crate::endpoint::{Endpoint, Scheme};

/// The largest packet sent or accepted (Alibaba's limit is 256 KiB; IoTDA's 1 MiB). Public
/// for the fuzz targets, which read packets as this connector does.
pub const MAX_PACKET: usize = 1024 * 1024;

/// Who the link logs in as.
#[derive(Debug, Clone)]
pub enum MqttLogin {
    /// An Alibaba device (Link SDK signing, a timestamp in client id and password).
    Alibaba(alibaba::DeviceCredentials),
    /// A Huawei device (HMAC of the secret under the UTC hour stamp).
    Huawei(huawei::DeviceCredentials),
    /// A fixed client id and an optional username and password (`mqtt`).
    Plain {
        /// The client id.
        client_id: String,
        /// The username and password, if the broker wants a login.
        login: Option<(String, crate::config::Secret)>,
    },
}

/// The client id, username and password of one connection.
pub struct Credentials {
    /// The MQTT client id.
    pub client_id: String,
    /// The username (empty: no login).
    pub username: String,
    /// The password (never log it).
    pub password: String,
}

impl MqttLogin {
    /// The login of a connection made at `now_ms`.
    pub fn credentials(&self, now_ms: u64) -> Credentials {
        match self {
            MqttLogin::Alibaba(c) => Credentials {
                client_id: c.mqtt_client_id(Some(now_ms)),
                username: c.username(),
                password: c.password(Some(now_ms)),
            },
            MqttLogin::Huawei(c) => Credentials {
                client_id: c.client_id_at(now_ms),
                username: c.username().to_owned(),
                password: c.password_at(now_ms),
            },
            MqttLogin::Plain { client_id, login } => Credentials {
                client_id: client_id.clone(),
                username: login.as_ref().map_or_else(String::new, |(u, _)| u.clone()),
                password: login
                    .as_ref()
                    .map_or_else(String::new, |(_, p)| p.expose().to_owned()),
            },
        }
    }
}

/// Where the link's commands go: the device the link speaks for, and its topic family.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Alink JSON on the device's `/sys/{pk}/{dn}/...` topics.
    Alibaba {
        /// The device's topics.
        topics: alibaba::Topics,
        /// The device id events carry (`{pk}.{dn}`).
        device: String,
    },
    /// IoTDA `$oc/devices/{id}/sys/...` topics, or the legacy v1 ones.
    Huawei {
        /// The device id.
        device: String,
        /// Legacy v1 topics.
        legacy: bool,
    },
    /// Any broker: the topic from a template (`{device}`, `{name}`), the params as payload.
    Generic {
        /// The topic template.
        topic: String,
    },
}

/// An MQTT link's settings, derived from its config.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Who logs in.
    pub login: MqttLogin,
    /// The filters subscribed at every connection.
    pub subscriptions: Vec<String>,
    /// The subscriptions' maximum QoS and the publishes' QoS.
    pub qos: QoS,
    /// Start each connection with a clean session.
    pub clean_session: bool,
    /// The keep-alive interval.
    pub keep_alive: Duration,
    /// Extra trusted CA certificates.
    pub ca_file: Option<PathBuf>,
    /// How commands become publishes.
    pub outbound: Outbound,
    /// The command path's lanes, time-out and retries.
    pub path: PathSettings,
    /// How long a command waits for the link to (re)connect.
    pub reconnect_wait: Duration,
    /// The byte budget of inbound publishes waiting for the pipeline.
    pub buffer_bytes: usize,
}

/// The MQTT links: `alibaba-mqtt`, `huawei-mqtt` and `mqtt` (any broker, plain JSON).
pub const KIND: Kind = Kind {
    names: &["alibaba-mqtt", "huawei-mqtt", "mqtt"],
    read: |table| super::configured(MqttSettings::read(table)),
};

/// The keys every MQTT link takes.
#[derive(Deserialize)]
#[serde(default)]
struct LinkConfig {
    /// The kind's own dialect (`alibaba`, `huawei`, `json`), which it implies.
    dialect: Option<DialectName>,
    /// The broker (`mqtts://host:8883`, `mqtt://host:1883`); `alibaba-mqtt` derives it by
    /// default.
    url: Option<Expanded>,
    /// A PEM file of CA certificates trusted besides the system's.
    ca_file: Option<Expanded>,
    /// The maximum QoS of subscriptions and the QoS of publishes (0 or 1).
    qos: u8,
    /// Start a clean session at every connection (the broker forgets the subscriptions and
    /// the QoS 1 messages that arrived while the link was away). The default keeps a
    /// persistent session, so nothing published meanwhile is lost.
    clean_session: bool,
    /// The keep-alive interval announced at connection, in seconds.
    keep_alive_s: u64,
    /// As a command path: how long a publish may wait for its PUBACK, in ms.
    command_timeout_ms: u64,
    /// As a command path: further attempts after a failed publish.
    command_retries: u32,
    /// As a command path: how long a command waits for the link to (re)connect before that
    /// attempt fails, in seconds. A broker blip then delays commands instead of burning their
    /// retries while the link is away.
    command_reconnect_wait_s: u64,
    /// As a command path: QoS 1 publishes sent and not yet acknowledged (PUBACK), at most,
    /// over the link's lanes; each lane sends its devices' commands in order within it and
    /// sends again in order what a lost connection cut off. MQTT 3.1.1 gives the broker no way
    /// to announce a limit (MQTT 5's receive maximum), so the default is the one a stock
    /// mosquitto announces to MQTT 5 clients (`max_inflight_messages`, 20); 1 sends one
    /// command at a time.
    command_window: usize,
    /// Bytes of inbound publishes waiting for the pipeline at most: what does not fit is
    /// dropped at QoS 0 or left for the broker to send again at QoS 1.
    buffer_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            dialect: None,
            url: None,
            ca_file: None,
            qos: 1,
            clean_session: false,
            keep_alive_s: 60,
            command_timeout_ms: 5_000,
            command_retries: 2,
            command_reconnect_wait_s: 60,
            command_window: 20,
            buffer_bytes: super::default_buffer_bytes(),
        }
    }
}

/// `alibaba-mqtt`'s own keys: the device it logs in as.
#[derive(Default, Deserialize)]
#[serde(default)]
struct AlibabaConfig {
    /// The device's product key.
    product_key: Option<Expanded>,
    /// The device's name.
    device_name: Option<Expanded>,
    /// The device secret the login is derived from.
    device_secret: Option<Secret>,
    /// The region id of a public instance (`cn-shanghai`, …).
    region: Option<Expanded>,
    /// An enterprise instance's id, whose host it connects to.
    instance_id: Option<Expanded>,
    /// The client id (default: the device's `{pk}.{dn}`).
    client_id: Option<Expanded>,
    /// The password's HMAC (`hmacmd5`, `hmacsha1`, `hmacsha256`).
    sign_method: SignMethod,
    /// Custom topics to subscribe to besides the thing-model ones, as the suffix after
    /// `/{pk}/{dn}/` (`user/get`).
    user_topics: Vec<Expanded>,
}

/// `huawei-mqtt`'s own keys: the device it logs in as.
#[derive(Default, Deserialize)]
#[serde(default)]
struct HuaweiConfig {
    /// The device id IoTDA assigned (`{product_id}_{node_id}`).
    device_id: Option<Expanded>,
    /// The device secret the login is derived from.
    device_secret: Option<Secret>,
    /// `"0"` (the broker does not check the client id's hour stamp, the default) or `"1"`
    /// (it does).
    sign_type: huawei::SignType,
    /// Speak the legacy v1 topics (`/huawei/v1/devices/...`) instead of IoTDA's
    /// `$oc/devices/...`.
    legacy: bool,
}

/// `mqtt`'s own keys.
#[derive(Default, Deserialize)]
#[serde(default)]
struct PlainConfig {
    /// The topic filters to subscribe to; `$share/{group}/{filter}` shares a filter's
    /// messages between the links (replicas) of one group.
    subscribe: Vec<Expanded>,
    /// Where the device id is in a received topic, e.g. `zigbee2mqtt/{device}` (`+` matches
    /// any level, a final `#` any rest).
    device_topic: Option<Expanded>,
    /// The topic a command is published on, e.g. `zigbee2mqtt/{device}/set` (`{device}` is
    /// the command's device id, `{name}` its name); the params are the payload.
    publish_topic: Option<Expanded>,
    /// The client id (default `iotrules-{connector name}`).
    client_id: Option<Expanded>,
    /// The username, if the broker wants a login.
    username: Option<Expanded>,
    /// The password of `username`.
    password: Option<Secret>,
}

/// What a link kind derives from its own keys: where it connects, who logs in, what it
/// subscribes to, how its commands become publishes.
type Parts = (Endpoint, MqttLogin, Vec<String>, Outbound);

impl MqttSettings {
    /// Checks a MQTT link connector's table and derives its settings.
    pub fn from_config(table: &Table) -> Result<Self, ConfigError> {
        Self::read(table).map(|(_, settings)| settings)
    }

    /// The dialect and the settings of a MQTT link connector's table.
    fn read(table: &Table) -> Result<(Dialect, Self), ConfigError> {
        let (dialect, link, parts) = match table.kind.as_str() {
            "alibaba-mqtt" => {
                let (link, own) = table.read_both::<LinkConfig, AlibabaConfig>()?;
                let dialect = only_dialect(table, Alibaba, link.dialect, false, &None)?;
                let explicit = MqttSettings::explicit_url(table, &link)?;
                (dialect, link, alibaba_parts(table, explicit, &own)?)
            }
            "huawei-mqtt" => {
                let (link, own) = table.read_both::<LinkConfig, HuaweiConfig>()?;
                let dialect = only_dialect(table, Huawei, link.dialect, false, &None)?;
                let explicit = MqttSettings::explicit_url(table, &link)?;
                (dialect, link, huawei_parts(table, explicit, &own)?)
            }
            _ => {
                let (link, own) = table.read_both::<LinkConfig, PlainConfig>()?;
                let dialect = only_dialect(table, Json, link.dialect, false, &own.device_topic)?;
                let explicit = MqttSettings::explicit_url(table, &link)?;
                (dialect, link, plain_parts(table, explicit, &own)?)
            }
        };
        Ok((dialect, MqttSettings::new(table, &link, parts)?))
    }
}

impl Connector for MqttSettings {
    fn files(&self) -> Vec<(PathBuf, &'static str)> {
        super::ca_file(&self.ca_file)
    }

    fn identity(&self, now_ms: u64) -> Vec<(String, String)> {
        MqttSettings::identity(self, now_ms)
    }

    fn is_command_path(&self) -> bool {
        true
    }

    fn start(&self, name: &str, runtime: &tokio::runtime::Handle) -> Start {
        let handle = LinkHandle::new(self.reconnect_wait);
        let transport = MqttTransport::new(handle.clone(), self.outbound.clone());
        let path = Lanes::start(name, transport, self.path, runtime);
        let settings = self.clone();
        Start {
            command_path: Some(path),
            run: Box::new(move |context| Box::pin(run(settings, handle, context))),
        }
    }
}

fn alibaba_parts(
    table: &Table,
    explicit: Option<Endpoint>,
    own: &AlibabaConfig,
) -> Result<Parts, ConfigError> {
    let product_key = table.required(&own.product_key, "product_key")?;
    let device_name = table.required(&own.device_name, "device_name")?;
    let secret = table.required_secret(&own.device_secret, "device_secret")?;
    for (key, value) in [("product_key", product_key), ("device_name", device_name)] {
        if !crate::dialect::topic_segment(value) {
            return Err(table.invalid(format!(
                "{key} \"{value}\" cannot go into a topic (no `/`, `+`, `#`)"
            )));
        }
    }
    let endpoint = match explicit {
        Some(endpoint) => endpoint,
        None => {
            let instance = own.instance_id.as_ref().map_or("", |i| i.as_str());
            let host = if !instance.is_empty() {
                alibaba::mqtt::instance_host(instance)
            } else {
                let Some(region) = &own.region else {
                    return Err(table.invalid(
                        "an alibaba-mqtt connector needs `region` (public instance), \
                         `instance_id`, or `url`",
                    ));
                };
                alibaba::mqtt::public_instance_host(product_key, region.as_str())
            };
            Endpoint {
                tls: true,
                host,
                port: alibaba::mqtt::TLS_PORT,
            }
        }
    };
    let mut credentials = alibaba::DeviceCredentials::new(product_key, device_name, secret);
    if let Some(client_id) = &own.client_id {
        if client_id.as_str().contains('|') {
            return Err(table.invalid("client_id must not contain `|`"));
        }
        credentials.client_id = client_id.as_str().to_owned();
    }
    credentials.sign_method = own.sign_method;
    credentials.tls = endpoint.tls;
    let topics = credentials.topics();
    let mut subscriptions = vec![
        topics.property_set(),
        topics.service("+"),
        topics.rrpc_request_filter(),
    ];
    for suffix in &own.user_topics {
        subscriptions.push(topics.full_topic(suffix.as_str()));
    }
    let outbound = Outbound::Alibaba {
        topics,
        device: format!("{product_key}.{device_name}"),
    };
    Ok((
        endpoint,
        MqttLogin::Alibaba(credentials),
        subscriptions,
        outbound,
    ))
}

fn huawei_parts(
    table: &Table,
    explicit: Option<Endpoint>,
    own: &HuaweiConfig,
) -> Result<Parts, ConfigError> {
    let Some(endpoint) = explicit else {
        return Err(table.invalid(
            "a huawei-mqtt connector needs `url` (mqtts://HOST:8883, the device access address \
             on the console's Access Details page)",
        ));
    };
    let device_id = table.required(&own.device_id, "device_id")?;
    if !crate::dialect::topic_segment(device_id) {
        return Err(table.invalid(format!(
            "device_id \"{device_id}\" cannot go into a topic (no `/`, `+`, `#`)"
        )));
    }
    let secret = table.required_secret(&own.device_secret, "device_secret")?;
    let credentials = huawei::DeviceCredentials::new(device_id, secret, own.sign_type);
    let subscriptions = if own.legacy {
        vec![huawei::mqtt::legacy_command_topic(device_id)]
    } else {
        vec![
            huawei::mqtt::commands_filter(device_id),
            huawei::mqtt::properties_set_filter(device_id),
            huawei::mqtt::properties_get_filter(device_id),
            huawei::mqtt::messages_down_topic(device_id),
        ]
    };
    let outbound = Outbound::Huawei {
        device: device_id.to_owned(),
        legacy: own.legacy,
    };
    Ok((
        endpoint,
        MqttLogin::Huawei(credentials),
        subscriptions,
        outbound,
    ))
}

fn plain_parts(
    table: &Table,
    explicit: Option<Endpoint>,
    own: &PlainConfig,
) -> Result<Parts, ConfigError> {
    let Some(endpoint) = explicit else {
        return Err(
            table.invalid("an mqtt connector needs `url` (mqtt://HOST:1883 or mqtts://HOST:8883)")
        );
    };
    if own.subscribe.is_empty() {
        return Err(table.invalid("an mqtt connector needs `subscribe` filters"));
    }
    let topic = table.required(&own.publish_topic, "publish_topic")?;
    if topic.contains(['+', '#']) {
        return Err(table.invalid(format!(
            "publish_topic \"{topic}\": a topic to publish on has no wildcards"
        )));
    }
    let client_id = own.client_id.as_ref().map_or_else(
        || format!("iotrules-{}", table.name),
        |c| c.as_str().to_owned(),
    );
    let login = match (&own.username, &own.password) {
        (Some(user), password) => Some((
            user.as_str().to_owned(),
            password.clone().unwrap_or_default(),
        )),
        (None, Some(_)) => {
            return Err(table.invalid("`password` without `username`"));
        }
        (None, None) => None,
    };
    Ok((
        endpoint,
        MqttLogin::Plain { client_id, login },
        own.subscribe
            .iter()
            .map(|f| f.as_str().to_owned())
            .collect(),
        Outbound::Generic {
            topic: topic.to_owned(),
        },
    ))
}

impl MqttSettings {
    /// The checks every link kind shares, and its settings from them and its kind's `parts`.
    fn new(table: &Table, config: &LinkConfig, parts: Parts) -> Result<Self, ConfigError> {
        let (endpoint, login, subscriptions, outbound) = parts;
        Ok(MqttSettings {
            endpoint,
            login,
            subscriptions,
            qos: Self::qos(table, config)?,
            clean_session: config.clean_session,
            keep_alive: Duration::from_secs(config.keep_alive_s),
            ca_file: config.ca_file.as_ref().map(|f| table.path(f)),
            outbound,
            path: PathSettings {
                lanes: 4,
                queue: 256,
                timeout: Duration::from_millis(config.command_timeout_ms),
                retries: config.command_retries,
                rate_per_s: 0.0,
                window: config.command_window,
            },
            reconnect_wait: Duration::from_secs(config.command_reconnect_wait_s),
            buffer_bytes: config.buffer_bytes,
        })
    }

    /// The checks of the keys every link takes, and its `url`, if it has one.
    fn explicit_url(table: &Table, config: &LinkConfig) -> Result<Option<Endpoint>, ConfigError> {
        Self::qos(table, config)?;
        if !(1..=u64::from(u16::MAX)).contains(&config.keep_alive_s) {
            return Err(table.invalid("keep_alive_s must be 1 to 65535"));
        }
        if config.command_timeout_ms == 0 {
            return Err(table.invalid("command_timeout_ms must be at least 1"));
        }
        if config.buffer_bytes == 0 {
            return Err(table.invalid("buffer_bytes must be at least 1"));
        }
        if !(1..=usize::from(u16::MAX)).contains(&config.command_window) {
            return Err(table.invalid(
                "command_window must be 1 to 65535 (a publish waiting for its PUBACK holds one \
                 of the 65 535 packet ids)",
            ));
        }
        config
            .url
            .as_ref()
            .map(|url| {
                Endpoint::parse(url.as_str(), Scheme::MQTT).map_err(|reason| {
                    table.invalid(format!(
                        "url \"{}\": {reason}",
                        crate::config::redacted_url(url.as_str())
                    ))
                })
            })
            .transpose()
    }

    fn qos(table: &Table, config: &LinkConfig) -> Result<QoS, ConfigError> {
        match config.qos {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            other => Err(table.invalid(format!(
                "qos {other}: a link subscribes and publishes with QoS 0 or 1"
            ))),
        }
    }

    /// What identifies the link to its broker at `now_ms`, without the password: the URL,
    /// client id, username and subscriptions.
    pub fn identity(&self, now_ms: u64) -> Vec<(String, String)> {
        let credentials = self.login.credentials(now_ms);
        vec![
            ("url".into(), self.endpoint.url(Scheme::MQTT)),
            ("client-id".into(), credentials.client_id),
            ("username".into(), credentials.username),
            ("subscriptions".into(), self.subscriptions.join(" ")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_s_defaults_are_a_persistent_qos_1_session_with_a_window_of_20() {
        let text = "[[connector]]\nname = \"meter\"\nkind = \"huawei-mqtt\"\n\
                    url = \"mqtt://h:1\"\ndevice_id = \"d\"\ndevice_secret = \"s\"\n";
        let config = crate::config::Config::parse(std::path::Path::new("x.toml"), text).unwrap();
        let settings = MqttSettings::from_config(&config.connectors[0]).unwrap();
        assert_eq!(settings.qos, QoS::AtLeastOnce);
        assert!(!settings.clean_session);
        assert_eq!(settings.keep_alive, Duration::from_secs(60));
        assert_eq!(settings.path.timeout, Duration::from_millis(5_000));
        assert_eq!((settings.path.retries, settings.path.window), (2, 20));
        assert_eq!(settings.reconnect_wait, Duration::from_secs(60));
        assert_eq!(settings.buffer_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn endpoints_take_the_scheme_default_port_and_refuse_credentials_in_the_url() {
        let tls = Endpoint::parse("mqtts://iot.example.com", Scheme::MQTT).unwrap();
        assert_eq!(
            (tls.tls, tls.host.as_str(), tls.port),
            (true, "iot.example.com", 8883)
        );
        let plain = Endpoint::parse("mqtt://127.0.0.1:1884", Scheme::MQTT).unwrap();
        assert_eq!((plain.tls, plain.port), (false, 1884));
        assert_eq!(plain.url(Scheme::MQTT), "mqtt://127.0.0.1:1884");
        assert_eq!(
            Endpoint::parse("mqtt://[::1]:1", Scheme::MQTT)
                .unwrap()
                .url(Scheme::MQTT),
            "mqtt://[::1]:1"
        );
        assert!(Endpoint::parse("mqtt://u:p@host", Scheme::MQTT).is_err());
        let text = "[[connector]]\nname = \"link\"\nkind = \"mqtt\"\n\
                    url = \"mqtts://u:s3cret@broker.example.com\"\nsubscribe = [\"a/#\"]\n\
                    device_topic = \"a/{device}\"\n";
        let error = crate::plan::Plan::parse(std::path::Path::new("x.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(error.contains("credentials do not belong"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert!(Endpoint::parse("tcp://host", Scheme::MQTT).is_err());
    }
}
