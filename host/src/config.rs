//! The service configuration, `iotrules.toml`.
//!
//! ```toml
//! rules = "rules"                  # rule files; relative paths are relative to this file
//! plugins = "plugins/dist"         # plugin components, NAME.wasm
//! store = "iotrules.db"            # SQLite: dead letters and plugin state
//! cache = "plugin-cache"           # compiled plugins (default: beside the store)
//!
//! [admin]
//! listen = "127.0.0.1:9464"        # /metrics, /healthz, /status; omit the table to disable
//!
//! [pipeline]
//! workers = 2                      # threads running rules; events of a device stay on one
//! queue = 256                      # events waiting per worker
//! max_in_flight = 4096             # events received and not yet acknowledged, in all
//! dedup_window_s = 600             # an event id seen within this long is a duplicate
//! dedup_capacity = 100000          # ids remembered at most
//! shutdown_timeout_s = 30          # how long SIGINT/SIGTERM waits for events in flight
//! order = "device"                 # or "connector": what keeps arrival order (see Order)
//!
//! [dead_letters]                   # the oldest go first past any limit (see DeadLettersConfig)
//! max_rows = 1000000               # letters kept at most
//! max_mb = 1024                    # MiB of payloads, messages and properties kept at most
//! max_age_days = 7                 # days a letter is kept
//!
//! [[connector]]
//! name = "tuya-eu"
//! kind = "replay"                  # more kinds arrive with the connector milestones
//! dialect = "tuya"                 # tuya | tuya-business | alibaba | huawei
//! access_id = "…"
//! access_key = "${TUYA_ACCESS_KEY}"
//! file = "recorded/tuya.jsonl"
//!
//! [[command_path]]
//! name = "tuya-openapi"
//! kind = "log"                     # prints commands; or "webhook" (POST as JSON), "tuya-openapi",
//!                                  # "alibaba-openapi" (see crate::command)
//! ```
//!
//! Any string value may reference the environment: `${NAME}` is the variable's value (an
//! error if it is unset), `${NAME:-default}` falls back to `default`, `$$` is a literal `$`.
//! Secrets (`access_key`, …) are held as [`Secret`], whose `Debug` prints `***`, so a
//! logged config never shows them.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::dialect::crypto::SignMethod;
use crate::dialect::{Dialect, DialectName, SignMode, huawei, json, tuya};

/// A configuration file, read and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The rules directory.
    pub rules: PathBuf,
    /// The plugins directory.
    pub plugins: PathBuf,
    /// The SQLite store.
    pub store: PathBuf,
    /// Where compiled plugins are cached between runs.
    pub cache: PathBuf,
    /// The admin HTTP server, if enabled.
    pub admin: Option<AdminConfig>,
    /// Pipeline sizing.
    pub pipeline: PipelineConfig,
    /// How much the dead-letter store keeps.
    pub dead_letters: DeadLettersConfig,
    /// Where events come from.
    pub connectors: Vec<ConnectorConfig>,
    /// Where commands go.
    pub command_paths: Vec<CommandPathConfig>,
    /// The clock connectors stamp credentials with: the system's, unless a test pins it
    /// (brokers under test know the passwords a fixed time derives).
    pub clock: crate::time::Clock,
    /// The environment variables the file references (`${NAME}`), sorted: that is where
    /// its secrets come from, so no rule may grant them to a plugin.
    pub env_references: Vec<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on (port 0: any free port, logged at start).
    #[serde(deserialize_with = "expanded_address")]
    pub listen: SocketAddr,
}

fn expanded_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = Expanded::deserialize(deserializer)?;
    text.as_str().parse().map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{}\" is not an address and port: {e}",
            text.as_str()
        ))
    })
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Worker threads running rules.
    pub workers: usize,
    /// Events waiting per worker.
    pub queue: usize,
    /// Events received and not yet acknowledged, across all connectors.
    pub max_in_flight: usize,
    /// How long an event id is remembered for de-duplication, in seconds (0 disables it).
    pub dedup_window_s: u64,
    /// How many event ids are remembered at most.
    pub dedup_capacity: usize,
    /// How long a shutdown waits for events in flight, in seconds.
    pub shutdown_timeout_s: u64,
    /// Which events keep their order relative to each other.
    pub order: Order,
    /// How many times a message whose processing cannot be finished (its dead letter cannot
    /// be stored) goes back to its transport for another delivery before the pipeline holds
    /// it instead, trying the store again until it works.
    pub redelivery_attempts: u32,
    /// The pause before the first such redelivery, in ms; each further one doubles it, up to
    /// a minute.
    pub redelivery_delay_ms: u64,
}

/// Which events are handled one after another, in arrival order (the rest run in parallel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// The events of one device (the default): devices spread over the workers.
    #[default]
    Device,
    /// Every event of one connector: for rules whose plugins correlate several devices
    /// (a motion sensor and the lights it switches), whose state must see the devices'
    /// events in arrival order. Connectors spread over the workers.
    Connector,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue: 256,
            max_in_flight: 4096,
            dedup_window_s: 600,
            dedup_capacity: 100_000,
            shutdown_timeout_s: 30,
            order: Order::Device,
            redelivery_attempts: 3,
            redelivery_delay_ms: 1_000,
        }
    }
}

/// `[dead_letters]`: the limits of the dead-letter store; past any of them the oldest
/// letters are evicted. Each must be at least 1. Why the defaults are what they are:
/// [`Retention`](crate::store::Retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLettersConfig {
    /// Letters kept at most.
    pub max_rows: u64,
    /// MiB of letters kept at most: payloads, error messages and transport properties.
    pub max_mb: u64,
    /// Days a letter is kept, counted from when it was stored.
    pub max_age_days: u64,
}

impl Default for DeadLettersConfig {
    fn default() -> Self {
        let retention = crate::store::Retention::default();
        DeadLettersConfig {
            max_rows: retention.max_rows,
            max_mb: retention.max_bytes >> 20,
            max_age_days: retention.max_age.as_secs() / 86_400,
        }
    }
}

impl DeadLettersConfig {
    /// The limits in the store's units.
    pub fn retention(&self) -> crate::store::Retention {
        crate::store::Retention {
            max_rows: self.max_rows,
            max_bytes: self.max_mb.saturating_mul(1 << 20),
            max_age: std::time::Duration::from_secs(self.max_age_days.saturating_mul(86_400)),
        }
    }
}

/// A `[[connector]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Its name, in events (`source`), metrics, dead letters and `/status`.
    pub name: String,
    /// The transport.
    pub kind: ConnectorKind,
    /// The vendor dialect its messages are in; the cloud connectors imply theirs.
    #[serde(default)]
    pub dialect: Option<DialectName>,
    /// Tuya: the project's access id.
    #[serde(default)]
    pub access_id: Option<Expanded>,
    /// Tuya: the project's access key (the decryption key).
    #[serde(default)]
    pub access_key: Option<Secret>,
    /// Tuya: what to do with a message whose signature does not match (default `warn`,
    /// see [`default_sign`]).
    #[serde(default = "default_sign")]
    pub sign: SignMode,
    /// Alibaba: bodies arrive base64-encoded (a console option).
    #[serde(default)]
    pub body_base64: bool,
    /// `replay`: the recorded messages, JSON lines.
    #[serde(default)]
    pub file: Option<Expanded>,
    /// `replay`: messages per second; 0 (the default) is as fast as the pipeline takes them.
    #[serde(default)]
    pub rate: f64,
    /// `replay`: start again at the first line after the last; otherwise stop.
    #[serde(default, rename = "loop")]
    pub repeat: bool,
    /// `replay`: where to keep the position of the first unacknowledged line, so that a
    /// restart resumes there (and redelivers what was not acknowledged).
    #[serde(default)]
    pub offset_file: Option<Expanded>,

    /// Cloud connectors: the broker URL, overriding the one derived from `region` and the
    /// like (`pulsar+ssl://host:port`, `pulsar://…`, `amqps://host:port`, `amqp://…`).
    #[serde(default)]
    pub url: Option<Expanded>,
    /// Cloud connectors: a PEM file of CA certificates trusted besides the system's.
    #[serde(default)]
    pub ca_file: Option<Expanded>,
    /// Tuya: the data centre (`cn`, `us`, `us-east`, `eu`, `eu-west`, `in`); Alibaba: the
    /// region id of a public instance (`cn-shanghai`, …).
    #[serde(default)]
    pub region: Option<Expanded>,
    /// Tuya: the production (`prod`) or test (`test`) message channel.
    #[serde(default)]
    pub env: tuya::Env,
    /// Tuya: the subscription is `{access_id}-{subscription_suffix}`.
    #[serde(default = "default_subscription_suffix")]
    pub subscription_suffix: Expanded,
    /// Tuya: rebuild the consumer when no message arrived for this long, in seconds (0: never).
    /// Pulsar consumers are known to stop silently after a connection loss; a rebuilt one
    /// gets the unacknowledged messages again, and duplicates are dropped by event id.
    #[serde(default = "default_stall_timeout_s")]
    pub stall_timeout_s: u64,
    /// Alibaba: the account id (`uid`) of a public instance's host.
    #[serde(default)]
    pub uid: Option<Expanded>,
    /// Alibaba (`iotInstanceId`, empty for the public instance) and Huawei (`instanceId`).
    #[serde(default)]
    pub instance_id: Option<Expanded>,
    /// Alibaba: the AccessKey id (`authId`).
    #[serde(default)]
    pub access_key_id: Option<Expanded>,
    /// Alibaba: the AccessKey secret (the password's HMAC key).
    #[serde(default)]
    pub access_key_secret: Option<Secret>,
    /// Alibaba: the consumer group id; replicas sharing a group share its messages.
    #[serde(default)]
    pub consumer_group: Option<Expanded>,
    /// Alibaba: the client id in the username (default `iotrules-{connector name}`; with
    /// several connections each gets `-{n}` appended).
    #[serde(default)]
    pub client_id: Option<Expanded>,
    /// Alibaba: the password's HMAC (`hmacmd5`, `hmacsha1`, `hmacsha256`).
    #[serde(default)]
    pub sign_method: SignMethod,
    /// Huawei: the access code (the SASL password) paired with `access_key`.
    #[serde(default)]
    pub access_code: Option<Secret>,
    /// Huawei: the queue to receive from.
    #[serde(default)]
    pub queue: Option<Expanded>,
    /// AMQP: the source address of the receiver link (Alibaba: ignored by the server, empty
    /// by default; Huawei: the queue).
    #[serde(default)]
    pub source: Option<Expanded>,
    /// AMQP: the idle time-out announced in the open frame, in seconds (30 to 300).
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// AMQP: messages the server may send ahead of acknowledgements, per connection.
    #[serde(default = "default_credit")]
    pub credit: u32,
    /// AMQP: connections opened in parallel, each with one receiver (Alibaba: about one per
    /// 500 messages/s, at most 128 per consumer group).
    #[serde(default = "default_connections")]
    pub connections: usize,

    /// Device MQTT links (`alibaba-mqtt`): the device's product key.
    #[serde(default)]
    pub product_key: Option<Expanded>,
    /// `alibaba-mqtt`: the device's name.
    #[serde(default)]
    pub device_name: Option<Expanded>,
    /// `alibaba-mqtt`, `huawei-mqtt`: the device secret the login is derived from.
    #[serde(default)]
    pub device_secret: Option<Secret>,
    /// `huawei-mqtt`: the device id IoTDA assigned (`{product_id}_{node_id}`).
    #[serde(default)]
    pub device_id: Option<Expanded>,
    /// `huawei-mqtt`: `"0"` (the broker does not check the client id's hour stamp, the
    /// default) or `"1"` (it does).
    #[serde(default)]
    pub sign_type: huawei::SignType,
    /// `huawei-mqtt`: speak the legacy v1 topics (`/huawei/v1/devices/...`) instead of IoTDA's
    /// `$oc/devices/...`.
    #[serde(default)]
    pub legacy: bool,
    /// `alibaba-mqtt`: custom topics to subscribe to besides the thing-model ones, as the
    /// suffix after `/{pk}/{dn}/` (`user/get`).
    #[serde(default)]
    pub user_topics: Vec<Expanded>,
    /// `mqtt`: the topic filters to subscribe to; `$share/{group}/{filter}` shares a filter's
    /// messages between the links (replicas) of one group.
    #[serde(default)]
    pub subscribe: Vec<Expanded>,
    /// `mqtt`: where the device id is in a received topic, e.g. `zigbee2mqtt/{device}`
    /// (`+` matches any level, a final `#` any rest).
    #[serde(default)]
    pub device_topic: Option<Expanded>,
    /// `mqtt`: the topic a command is published on, e.g. `zigbee2mqtt/{device}/set`
    /// (`{device}` is the command's device id, `{name}` its name); the params are the payload.
    #[serde(default)]
    pub publish_topic: Option<Expanded>,
    /// `mqtt`: the username, if the broker wants a login.
    #[serde(default)]
    pub username: Option<Expanded>,
    /// `mqtt`: the password of `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// MQTT links: the maximum QoS of subscriptions and the QoS of publishes (0 or 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// MQTT links: start a clean session at every connection (the broker forgets the
    /// subscriptions and the QoS 1 messages that arrived while the link was away). The default
    /// keeps a persistent session, so nothing published meanwhile is lost.
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT links: the keep-alive interval announced at connection, in seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// MQTT links as command paths: how long a publish may wait for its PUBACK, in ms.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// MQTT links as command paths: further attempts after a failed publish.
    #[serde(default = "default_command_retries")]
    pub command_retries: u32,
    /// MQTT links as command paths: how long a command waits for the link to (re)connect
    /// before that attempt fails, in seconds. A broker blip then delays commands instead of
    /// burning their retries while the link is away.
    #[serde(default = "default_command_reconnect_wait_s")]
    pub command_reconnect_wait_s: u64,
    /// MQTT links as command paths: QoS 1 publishes sent and not yet acknowledged (PUBACK),
    /// at most, over the link's lanes; each lane sends its devices' commands in order within
    /// it and sends again in order what a lost connection cut off. MQTT 3.1.1 gives the broker
    /// no way to announce a limit (MQTT 5's receive maximum), so the default is the one a
    /// stock mosquitto announces to MQTT 5 clients (`max_inflight_messages`, 20); 1 sends one
    /// command at a time.
    #[serde(default = "default_command_window")]
    pub command_window: usize,
    /// Inbound messages read from the transport and not yet taken by the pipeline, in bytes
    /// at most (MQTT links: what does not fit is dropped at QoS 0 or left for the broker to
    /// send again at QoS 1; AMQP: credit times the largest message accepted; Pulsar: the
    /// read-ahead times the largest message).
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: usize,
}

fn default_qos() -> u8 {
    1
}
fn default_keep_alive_s() -> u64 {
    60
}
fn default_command_timeout_ms() -> u64 {
    5_000
}
fn default_command_retries() -> u32 {
    2
}
fn default_command_reconnect_wait_s() -> u64 {
    60
}
fn default_command_window() -> usize {
    20
}
fn default_buffer_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_subscription_suffix() -> Expanded {
    Expanded("sub".into())
}
fn default_stall_timeout_s() -> u64 {
    300
}
fn default_idle_timeout_s() -> u64 {
    60
}
fn default_credit() -> u32 {
    20
}
fn default_connections() -> usize {
    1
}

/// Connector transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorKind {
    /// Recorded messages from a file.
    Replay,
    /// Tuya's message service (Pulsar), IoT Core envelope (or `dialect = "tuya-business"`).
    TuyaPulsar,
    /// Tuya's message service (Pulsar), Smart Business envelope.
    TuyaBusiness,
    /// Alibaba Cloud IoT server-side subscription (AMQP 1.0).
    AlibabaAmqp,
    /// Huawei Cloud IoTDA server-side push (AMQP 1.0).
    HuaweiAmqp,
    /// An Alibaba Cloud IoT device's own MQTT connection (Link SDK login, Alink JSON).
    AlibabaMqtt,
    /// A Huawei IoTDA device's own MQTT connection (legacy v1 or `$oc` topics).
    HuaweiMqtt,
    /// Any MQTT broker, plain JSON (local devices, zigbee2mqtt-style bridges).
    Mqtt,
}

impl ConnectorKind {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Replay => "replay",
            ConnectorKind::TuyaPulsar => "tuya-pulsar",
            ConnectorKind::TuyaBusiness => "tuya-business",
            ConnectorKind::AlibabaAmqp => "alibaba-amqp",
            ConnectorKind::HuaweiAmqp => "huawei-amqp",
            ConnectorKind::AlibabaMqtt => "alibaba-mqtt",
            ConnectorKind::HuaweiMqtt => "huawei-mqtt",
            ConnectorKind::Mqtt => "mqtt",
        }
    }

    /// True for the MQTT links, which are command paths as well as connectors.
    pub fn is_mqtt_link(self) -> bool {
        matches!(
            self,
            ConnectorKind::AlibabaMqtt | ConnectorKind::HuaweiMqtt | ConnectorKind::Mqtt
        )
    }

    /// The dialects its messages can be in, the first being the default.
    fn dialects(self) -> &'static [DialectName] {
        match self {
            ConnectorKind::Replay => &[],
            ConnectorKind::TuyaPulsar => &[DialectName::Tuya, DialectName::TuyaBusiness],
            ConnectorKind::TuyaBusiness => &[DialectName::TuyaBusiness],
            ConnectorKind::AlibabaAmqp | ConnectorKind::AlibabaMqtt => &[DialectName::Alibaba],
            ConnectorKind::HuaweiAmqp | ConnectorKind::HuaweiMqtt => &[DialectName::Huawei],
            ConnectorKind::Mqtt => &[DialectName::Json],
        }
    }
}

/// A connector's Tuya signature policy when the config names none: `warn`.
///
/// No official Tuya SDK checks the envelope's `sign` and the rule has not been confirmed on
/// live traffic, so a first deployment whose messages were signed differently would
/// otherwise send every real message to the dead letters. Mismatches are counted
/// (`iotrules_signature_mismatches_total`), logged once and shown in `/status`; `enforce` is
/// the setting once they stay at zero.
fn default_sign() -> SignMode {
    SignMode::Warn
}

impl ConnectorConfig {
    /// The dialect's name: as configured, or the one the kind implies.
    pub fn dialect_name(&self) -> Result<DialectName, ConfigError> {
        let allowed = self.kind.dialects();
        match (self.dialect, allowed.first()) {
            (None, Some(implied)) => Ok(*implied),
            (None, None) => Err(self.invalid("`dialect` is required for a replay connector")),
            (Some(name), _) if allowed.is_empty() || allowed.contains(&name) => Ok(name),
            (Some(name), _) => Err(self.invalid(format!(
                "a {} connector does not carry dialect \"{}\" (it carries {})",
                self.kind.as_str(),
                name.as_str(),
                allowed
                    .iter()
                    .map(|d| format!("\"{}\"", d.as_str()))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
        }
    }

    /// A required string setting, or an error naming it.
    pub fn required<'a>(
        &self,
        value: &'a Option<Expanded>,
        key: &str,
    ) -> Result<&'a str, ConfigError> {
        match value {
            Some(value) if !value.as_str().is_empty() => Ok(value.as_str()),
            _ => Err(self.invalid(format!("a {} connector needs `{key}`", self.kind.as_str()))),
        }
    }

    /// A required secret, or an error naming it.
    pub fn required_secret<'a>(
        &self,
        value: &'a Option<Secret>,
        key: &str,
    ) -> Result<&'a str, ConfigError> {
        match value {
            Some(value) if !value.expose().is_empty() => Ok(value.expose()),
            _ => Err(self.invalid(format!("a {} connector needs `{key}`", self.kind.as_str()))),
        }
    }

    /// The decoder for this connector's messages.
    pub fn dialect(&self) -> Result<Dialect, ConfigError> {
        let keys = || {
            let key = self.access_key.as_ref().ok_or_else(|| {
                self.invalid("access_key is required for the Tuya dialects (the decryption key)")
            })?;
            let id = self.access_id.as_ref().map_or("", |id| id.as_str());
            tuya::Keys::new(id.to_owned(), key.expose())
                .map_err(|e| self.invalid(format!("access_key: {e}")))
        };
        let template = || {
            json::TopicTemplate::parse(self.required(&self.device_topic, "device_topic")?)
                .map_err(|e| self.invalid(format!("device_topic: {e}")))
        };
        self.dialect_name()?
            .build(self.sign, self.body_base64, keys, template)
    }

    /// An error in this connector's settings.
    pub fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            place: format!("connector \"{}\"", self.name),
            reason: reason.into(),
        }
    }
}

/// A `[[command_path]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPathConfig {
    /// Its name, as rules and plugins give it in `via`.
    pub name: String,
    /// How commands travel.
    pub kind: CommandPathKind,
    /// `webhook`: the URL commands are POSTed to (`http://` or `https://`); the OpenAPI
    /// paths: the API's base URL, overriding the one `region` gives.
    #[serde(default)]
    pub url: Option<Expanded>,
    /// `webhook`: an `Authorization` header value.
    #[serde(default)]
    pub authorization: Option<Secret>,
    /// `https://` URLs: a PEM file of CA certificates trusted besides the system's.
    #[serde(default)]
    pub ca_file: Option<Expanded>,
    /// `tuya-openapi`: the data centre (`cn`, `us`, `us-east`, `eu`, `eu-west`, `in`);
    /// `alibaba-openapi`: the region id (`cn-shanghai`, …), also sent as `RegionId`.
    #[serde(default)]
    pub region: Option<Expanded>,
    /// `tuya-openapi`: the cloud project's access id (`client_id`).
    #[serde(default)]
    pub access_id: Option<Expanded>,
    /// `tuya-openapi`: the cloud project's access secret (the signing key).
    #[serde(default)]
    pub access_key: Option<Secret>,
    /// `alibaba-openapi`: the AccessKey id.
    #[serde(default)]
    pub access_key_id: Option<Expanded>,
    /// `alibaba-openapi`: the AccessKey secret (the signing key).
    #[serde(default)]
    pub access_key_secret: Option<Secret>,
    /// `alibaba-openapi`: `IotInstanceId` of an enterprise instance (omit for the public one).
    #[serde(default)]
    pub iot_instance_id: Option<Expanded>,
    /// Attempts started per second at most, over all lanes (0, the default: no limit). The
    /// vendors' APIs throttle per account; this keeps a burst of commands under their limit.
    #[serde(default)]
    pub rate_per_s: f64,
    /// How long one delivery attempt may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts after a failed one (with backoff), before the command fails.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Commands waiting to be sent, per lane, before the workers wait.
    #[serde(default = "default_path_queue")]
    pub queue: usize,
    /// Lanes sending in parallel; commands for one device always take the same lane, in order.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    2
}
fn default_path_queue() -> usize {
    256
}
fn default_lanes() -> usize {
    4
}

/// Command path kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandPathKind {
    /// Prints each command as a line of JSON on standard output.
    Log,
    /// POSTs each command as JSON to a URL; a 2xx answer confirms it.
    Webhook,
    /// Tuya's cloud OpenAPI: `POST /v1.0/iot-03/devices/{id}/commands`, signed, with a token.
    TuyaOpenapi,
    /// Alibaba's IoT Platform OpenAPI: RPC-signed `Pub`, `SetDeviceProperty`,
    /// `InvokeThingService`, `RRpc`.
    AlibabaOpenapi,
}

/// A string from the config with its environment references expanded.
#[derive(Clone, PartialEq, Eq)]
pub struct Expanded(String);

impl Expanded {
    /// The value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Expanded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        expand_env(&text, |name| std::env::var(name).ok())
            .map(Expanded)
            .map_err(serde::de::Error::custom)
    }
}

/// A secret from the config (after `${ENV}` expansion). It prints as `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the code that needs it (a key derivation, a header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Expanded::deserialize(deserializer).map(|e| Secret(e.0))
    }
}

/// Expands `${NAME}`, `${NAME:-default}` and `$$` in `text`, looking names up with `lookup`.
/// The error names the variable; it never contains a value.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!(
                    "`${{` without a closing `}}` in \"{}\"",
                    clip(text)
                ));
            };
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!(
                    "`${{{}}}` is not an environment reference (`${{NAME}}` or `${{NAME:-default}}`)",
                    clip(reference)
                ));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The names of the `${NAME}` and `${NAME:-default}` references in `text` (comments
/// included: a name there is at worst refused to rules needlessly), sorted, each once.
/// `$${…}` is a literal and names nothing.
pub fn env_references(text: &str) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        rest = after;
        let Some(body) = after.strip_prefix('{') else {
            continue;
        };
        let end = body.find(['}', ':']).unwrap_or(body.len());
        let name = &body[..end];
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            names.insert(name.to_owned());
        }
    }
    names.into_iter().collect()
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(60) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// `url` fit for an error message: a `user:password@` before the host becomes `***@`.
///
/// The URL parsers refuse credentials in a URL (they are derived, or configured apart as
/// secrets), and say so; echoing the refused URL whole would print the password they were
/// refusing into the log and `/status`.
pub fn redacted_url(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |at| at + 3);
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| start + at);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (message with line and column).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// toml's message, with the place.
        message: String,
    },
    /// A value is wrong given the others.
    #[error("{place}: {reason}")]
    Invalid {
        /// Which table or value.
        place: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_rules")]
    rules: Expanded,
    #[serde(default = "default_plugins")]
    plugins: Expanded,
    #[serde(default = "default_store")]
    store: Expanded,
    #[serde(default)]
    cache: Option<Expanded>,
    #[serde(default)]
    admin: Option<AdminConfig>,
    #[serde(default)]
    pipeline: PipelineConfig,
    #[serde(default)]
    dead_letters: DeadLettersConfig,
    #[serde(default, rename = "connector")]
    connectors: Vec<ConnectorConfig>,
    #[serde(default, rename = "command_path")]
    command_paths: Vec<CommandPathConfig>,
}

fn default_rules() -> Expanded {
    Expanded("rules".into())
}
fn default_plugins() -> Expanded {
    Expanded("plugins".into())
}
fn default_store() -> Expanded {
    Expanded("iotrules.db".into())
}

impl Config {
    /// The names commands can go `via`: every `[[command_path]]` and every MQTT link (a link
    /// is also the command path of its name), sorted.
    pub fn command_path_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .command_paths
            .iter()
            .map(|p| p.name.clone())
            .chain(
                self.connectors
                    .iter()
                    .filter(|c| c.kind.is_mqtt_link())
                    .map(|c| c.name.clone()),
            )
            .collect();
        names.sort();
        names
    }

    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// Parses and checks `text`, read from `file` (relative paths in it are taken from the
    /// file's directory).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: one_line(&e),
        })?;
        let base = file.parent().unwrap_or(Path::new(""));
        let resolve = |path: &Expanded| base.join(path.as_str());
        let mut connectors = raw.connectors;
        for connector in &mut connectors {
            if let Some(path) = &connector.file {
                connector.file = Some(Expanded(resolve(path).display().to_string()));
            }
            if let Some(path) = &connector.offset_file {
                connector.offset_file = Some(Expanded(resolve(path).display().to_string()));
            }
            if let Some(path) = &connector.ca_file {
                connector.ca_file = Some(Expanded(resolve(path).display().to_string()));
            }
        }
        let mut command_paths = raw.command_paths;
        for path in &mut command_paths {
            if let Some(ca_file) = &path.ca_file {
                path.ca_file = Some(Expanded(resolve(ca_file).display().to_string()));
            }
        }
        let config = Config {
            file: file.to_owned(),
            rules: resolve(&raw.rules),
            plugins: resolve(&raw.plugins),
            cache: match &raw.cache {
                Some(cache) => resolve(cache),
                None => resolve(&raw.store).with_file_name("plugin-cache"),
            },
            store: resolve(&raw.store),
            admin: raw.admin,
            pipeline: raw.pipeline,
            dead_letters: raw.dead_letters,
            connectors,
            command_paths,
            clock: crate::time::Clock::System,
            env_references: env_references(text),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |place: String, reason: String| Err(ConfigError::Invalid { place, reason });
        let p = &self.pipeline;
        for (name, value) in [
            ("workers", p.workers),
            ("queue", p.queue),
            ("max_in_flight", p.max_in_flight),
        ] {
            if value == 0 {
                return invalid(format!("[pipeline] {name}"), "must be at least 1".into());
            }
        }
        let d = &self.dead_letters;
        for (name, value) in [
            ("max_rows", d.max_rows),
            ("max_mb", d.max_mb),
            ("max_age_days", d.max_age_days),
        ] {
            if value == 0 {
                return invalid(
                    format!("[dead_letters] {name}"),
                    "must be at least 1 (set it high to keep more)".into(),
                );
            }
        }
        let mut names = HashSet::new();
        for connector in &self.connectors {
            let place = format!("connector \"{}\"", connector.name);
            check_name(&connector.name, "connector")?;
            if !names.insert(connector.name.as_str()) {
                return invalid(place, "another connector has this name".into());
            }
            connector.dialect()?;
            match connector.kind {
                ConnectorKind::Replay => {
                    if connector.file.is_none() {
                        return invalid(place, "a replay connector needs `file`".into());
                    }
                    if !(connector.rate.is_finite() && connector.rate >= 0.0) {
                        return invalid(place, "rate must be 0 (unlimited) or more".into());
                    }
                    if connector.repeat && connector.offset_file.is_some() {
                        return invalid(
                            place,
                            "`loop` and `offset_file` do not go together: a looping replay \
                             has no position to resume"
                                .into(),
                        );
                    }
                }
                ConnectorKind::TuyaPulsar | ConnectorKind::TuyaBusiness => {
                    crate::connector::pulsar::PulsarSettings::from_config(connector)?;
                }
                ConnectorKind::AlibabaAmqp | ConnectorKind::HuaweiAmqp => {
                    crate::connector::amqp::AmqpSettings::from_config(connector)?;
                }
                ConnectorKind::AlibabaMqtt | ConnectorKind::HuaweiMqtt | ConnectorKind::Mqtt => {
                    crate::connector::mqtt::MqttSettings::from_config(connector)?;
                }
            }
        }
        let mut names = HashSet::new();
        for path in &self.command_paths {
            let place = format!("command_path \"{}\"", path.name);
            check_name(&path.name, "command_path")?;
            if !names.insert(path.name.as_str()) {
                return invalid(place, "another command path has this name".into());
            }
            if let Some(link) = self
                .connectors
                .iter()
                .find(|c| c.kind.is_mqtt_link() && c.name == path.name)
            {
                return invalid(
                    place,
                    format!(
                        "the {} connector of this name is already the command path \"{}\"",
                        link.kind.as_str(),
                        link.name
                    ),
                );
            }
            if path.lanes == 0 || path.queue == 0 {
                return invalid(place, "lanes and queue must be at least 1".into());
            }
            if !(path.rate_per_s.is_finite() && path.rate_per_s >= 0.0) {
                return invalid(place, "rate_per_s must be 0 (no limit) or more".into());
            }
            if let Some(url) = &path.url
                && let Err(reason) = crate::command::http::Url::parse(url.as_str())
            {
                return invalid(place, reason);
            }
            match path.kind {
                CommandPathKind::Log => {}
                CommandPathKind::Webhook => {
                    if path.url.is_none() {
                        return invalid(place, "a webhook needs `url`".into());
                    }
                }
                CommandPathKind::TuyaOpenapi => {
                    crate::command::tuya::TuyaSettings::from_config(path)?;
                }
                CommandPathKind::AlibabaOpenapi => {
                    crate::command::alibaba::AlibabaSettings::from_config(path)?;
                }
            }
        }
        Ok(())
    }

    /// A config for running rules without connectors (tests, `iotrules test`): the rules and
    /// plugins directories given, defaults for the rest.
    pub fn for_dirs(rules: PathBuf, plugins: PathBuf) -> Config {
        Config {
            file: PathBuf::new(),
            rules,
            plugins,
            store: PathBuf::from("iotrules.db"),
            cache: PathBuf::from("plugin-cache"),
            admin: None,
            pipeline: PipelineConfig::default(),
            dead_letters: DeadLettersConfig::default(),
            connectors: Vec::new(),
            command_paths: Vec::new(),
            clock: crate::time::Clock::System,
            env_references: Vec::new(),
        }
    }
}

fn check_name(name: &str, what: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            place: format!("{what} \"{name}\""),
            reason: "a name is letters, digits, `-`, `_` and `.`".into(),
        })
    }
}

/// toml's multi-line message (with a source excerpt) as one line: `line L, column C: reason`.
fn one_line(error: &toml::de::Error) -> String {
    let message = error.message().trim();
    match error.span() {
        Some(_) => {
            let text = error.to_string();
            // The Display form starts with "TOML parse error at line L, column C".
            let place = text
                .lines()
                .next()
                .and_then(|first| first.strip_prefix("TOML parse error at "))
                .unwrap_or("");
            if place.is_empty() {
                message.to_owned()
            } else {
                format!("{place}: {message}")
            }
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_expand_with_defaults_and_escapes() {
        assert_eq!(expand_env("a${KEY}b", env).unwrap(), "as3cretb");
        assert_eq!(expand_env("${MISSING:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_env("${EMPTY:-dflt}", env).unwrap(), "");
        assert_eq!(expand_env("$$HOME $x", env).unwrap(), "$HOME $x");
        assert_eq!(expand_env("plain", env).unwrap(), "plain");
    }

    #[test]
    fn the_referenced_variables_are_listed_once_and_escapes_skipped() {
        let text = "a = \"${TUYA_KEY}\"\nb = \"x${HOOK_AUTH:-none}y${TUYA_KEY}\"\n\
                    c = \"$${NOT_ONE} ${1BAD} $PLAIN\"\n";
        assert_eq!(env_references(text), ["HOOK_AUTH", "TUYA_KEY"]);
    }

    #[test]
    fn bad_references_name_the_variable_not_a_value() {
        let error = expand_env("${MISSING}", env).unwrap_err();
        assert_eq!(error, "environment variable MISSING is not set");
        assert!(expand_env("${KEY", env).unwrap_err().contains("closing"));
        assert!(
            expand_env("${1A}", env)
                .unwrap_err()
                .contains("not an environment reference")
        );
    }

    #[test]
    fn a_url_s_user_and_password_are_left_out_of_what_errors_show() {
        assert_eq!(
            redacted_url("amqps://user:s3cret@host:5671/x@y"),
            "amqps://***@host:5671/x@y"
        );
        assert_eq!(redacted_url("u:s3cret@host"), "***@host");
        assert_eq!(
            redacted_url("https://host/path?a=b@c"),
            "https://host/path?a=b@c"
        );
        let error = Config::parse(
            Path::new("x.toml"),
            "[[command_path]]\nname = \"hook\"\nkind = \"webhook\"\n\
             url = \"https://ops:s3cret@hooks.example.com/in\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("credentials"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret("s3cret".into());
        assert_eq!(format!("{secret:?}"), "***");
    }

    const MINIMAL: &str = r#"
        rules = "r"
        plugins = "p"
        [[connector]]
        name = "a"
        kind = "replay"
        dialect = "huawei"
        file = "a.jsonl"
        [[command_path]]
        name = "out"
        kind = "log"
    "#;

    #[test]
    fn paths_resolve_from_the_config_file() {
        let config = Config::parse(Path::new("/etc/iot/iotrules.toml"), MINIMAL).unwrap();
        assert_eq!(config.rules, Path::new("/etc/iot/r"));
        assert_eq!(config.plugins, Path::new("/etc/iot/p"));
        assert_eq!(config.store, Path::new("/etc/iot/iotrules.db"));
        assert_eq!(
            config.connectors[0].file.as_ref().unwrap().as_str(),
            "/etc/iot/a.jsonl"
        );
        assert_eq!(config.command_paths[0].lanes, 4);
    }

    #[test]
    fn dead_letter_limits_default_to_a_week_a_gib_and_a_million_and_refuse_zero() {
        let file = Path::new("c.toml");
        let config = Config::parse(file, MINIMAL).unwrap();
        assert_eq!(
            config.dead_letters.retention(),
            crate::store::Retention::default()
        );
        assert_eq!(
            config.dead_letters,
            DeadLettersConfig {
                max_rows: 1_000_000,
                max_mb: 1024,
                max_age_days: 7,
            }
        );

        let text = format!("{MINIMAL}\n[dead_letters]\nmax_mb = 64\nmax_age_days = 2\n");
        let retention = Config::parse(file, &text).unwrap().dead_letters.retention();
        assert_eq!(retention.max_bytes, 64 << 20);
        assert_eq!(
            retention.max_age,
            std::time::Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            retention.max_rows, 1_000_000,
            "unset keys keep their default"
        );

        let zero = format!("{MINIMAL}\n[dead_letters]\nmax_rows = 0\n");
        let error = Config::parse(file, &zero).unwrap_err().to_string();
        assert!(
            error.starts_with("[dead_letters] max_rows: must be at least 1"),
            "{error}"
        );
    }

    #[test]
    fn errors_name_the_place() {
        let file = Path::new("c.toml");
        let unknown = Config::parse(file, "rulez = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.starts_with("c.toml: line 1, column 1"), "{unknown}");
        assert!(unknown.contains("rulez"), "{unknown}");

        let kind = MINIMAL.replace("kind = \"replay\"", "kind = \"carrier-pigeon\"");
        let error = Config::parse(file, &kind).unwrap_err().to_string();
        assert!(
            error.contains("line 6") && error.contains("carrier-pigeon"),
            "{error}"
        );

        let tuya = MINIMAL.replace("\"huawei\"", "\"tuya\"");
        let error = Config::parse(file, &tuya).unwrap_err().to_string();
        assert_eq!(
            error,
            "connector \"a\": access_key is required for the Tuya dialects (the decryption key)"
        );

        let twice = format!("{MINIMAL}\n[[command_path]]\nname = \"out\"\nkind = \"log\"\n");
        let error = Config::parse(file, &twice).unwrap_err().to_string();
        assert_eq!(
            error,
            "command_path \"out\": another command path has this name"
        );

        let missing = MINIMAL.replace("file = \"a.jsonl\"", "file = \"${NO_SUCH_VAR_X}\"");
        let error = Config::parse(file, &missing).unwrap_err().to_string();
        assert!(
            error.contains("line 8") && error.contains("NO_SUCH_VAR_X is not set"),
            "{error}"
        );
    }

    fn connector(toml: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("/etc/iot/iotrules.toml"),
            &format!("[[connector]]\nname = \"c\"\n{toml}"),
        )
    }

    const TUYA: &str = r#"
        kind = "tuya-pulsar"
        access_id = "p1234567890abcdef"
        access_key = "0123456789abcdef0123456789abcdef"
        region = "eu"
    "#;

    #[test]
    fn a_tuya_connector_derives_url_topic_and_subscription() {
        let config = connector(TUYA).unwrap();
        let c = &config.connectors[0];
        assert_eq!(c.dialect_name().unwrap(), DialectName::Tuya);
        let identity = crate::connector::identity(c, 0).unwrap();
        let get = |key: &str| &identity.iter().find(|(k, _)| k == key).unwrap().1;
        assert_eq!(get("url"), "pulsar+ssl://mqe.tuyaeu.com:7285/");
        assert_eq!(get("topic"), "persistent://p1234567890abcdef/out/event");
        assert_eq!(get("subscription"), "p1234567890abcdef-sub");
        assert!(!format!("{identity:?}").contains("0123456789abcdef0123"));

        let test = connector(&format!(
            "{TUYA}\nenv = \"test\"\nsubscription_suffix = \"b\""
        ))
        .unwrap();
        let identity = crate::connector::identity(&test.connectors[0], 0).unwrap();
        assert!(identity.contains(&(
            "topic".into(),
            "persistent://p1234567890abcdef/out/event-test".into()
        )));
        assert!(identity.contains(&("subscription".into(), "p1234567890abcdef-b".into())));
    }

    #[test]
    fn cloud_connectors_name_what_is_missing_or_wrong() {
        let error = |toml: &str| connector(toml).unwrap_err().to_string();
        assert_eq!(
            error("kind = \"tuya-pulsar\"\naccess_key = \"0123456789abcdef0123456789\""),
            "connector \"c\": a tuya-pulsar connector needs `access_id`"
        );
        assert!(
            error(&TUYA.replace("region = \"eu\"", "region = \"mars\""))
                .contains("unknown Tuya region `mars`")
        );
        assert!(
            error(&format!("{TUYA}\ndialect = \"alibaba\""))
                .contains("a tuya-pulsar connector does not carry dialect \"alibaba\"")
        );
        assert!(error(&format!("{TUYA}\nurl = \"http://x\"")).contains("expected pulsar+ssl://"));
        assert!(
            error("kind = \"huawei-amqp\"\naccess_key = \"ak\"\naccess_code = \"c\"")
                .contains("needs `url`")
        );
        assert!(
            error("kind = \"alibaba-amqp\"\nurl = \"amqps://h:5671\"\nidle_timeout_s = 10")
                .contains("idle_timeout_s 10 is outside 30..=300")
        );
        assert_eq!(
            error("kind = \"replay\"\nfile = \"x\""),
            "connector \"c\": `dialect` is required for a replay connector"
        );
    }

    #[test]
    fn a_broker_url_of_another_scheme_is_refused_without_showing_its_password() {
        let error = |toml: &str| connector(toml).unwrap_err().to_string();
        let amqp = error(
            "kind = \"huawei-amqp\"\naccess_key = \"ak\"\naccess_code = \"c\"\n\
             url = \"http://u:s3cret@h\"",
        );
        assert!(amqp.contains("expected amqps://"), "{amqp}");
        assert!(!amqp.contains("s3cret"), "{amqp}");
        let pulsar = error(&format!("{TUYA}\nurl = \"pulsar+ssl://u:s3cret@h:7285\""));
        assert!(pulsar.contains("credentials do not belong"), "{pulsar}");
        assert!(!pulsar.contains("s3cret"), "{pulsar}");
    }

    #[test]
    fn alibaba_hosts_derive_and_each_connection_has_its_client_id() {
        let config = connector(
            r#"
            kind = "alibaba-amqp"
            uid = "1941269044154518"
            region = "cn-shanghai"
            access_key_id = "LTAIexample"
            access_key_secret = "secret-that-must-not-show"
            consumer_group = "DEFAULT_GROUP"
            connections = 2
            ca_file = "ca.pem"
            "#,
        )
        .unwrap();
        let c = &config.connectors[0];
        let settings = crate::connector::amqp::AmqpSettings::from_config(c).unwrap();
        assert_eq!(
            settings.url,
            "amqps://1941269044154518.iot-amqp.cn-shanghai.aliyuncs.com:5671"
        );
        assert_eq!(
            settings.ca_file.as_deref(),
            Some(Path::new("/etc/iot/ca.pem"))
        );
        assert_eq!(settings.credit, 20);
        let usernames: Vec<String> = settings.logins.iter().map(|l| l.username(7)).collect();
        assert_eq!(
            usernames,
            [
                "iotrules-c-0|authMode=aksign,signMethod=hmacsha256,timestamp=7,authId=LTAIexample,iotInstanceId=,consumerGroupId=DEFAULT_GROUP|",
                "iotrules-c-1|authMode=aksign,signMethod=hmacsha256,timestamp=7,authId=LTAIexample,iotInstanceId=,consumerGroupId=DEFAULT_GROUP|",
            ]
        );
        let shown = format!(
            "{settings:?} {:?}",
            crate::connector::identity(c, 7).unwrap()
        );
        assert!(!shown.contains("secret-that-must-not-show"), "{shown}");
    }

    #[test]
    fn huawei_receives_from_the_default_queue_on_vhost_default() {
        let config = connector(
            r#"
            kind = "huawei-amqp"
            url = "amqps://abc.iot-amqps.cn-north-4.myhuaweicloud.com:5671"
            access_key = "AK12"
            access_code = "code-that-must-not-show"
            instance_id = "inst-9"
            "#,
        )
        .unwrap();
        let settings =
            crate::connector::amqp::AmqpSettings::from_config(&config.connectors[0]).unwrap();
        assert_eq!(settings.source, "DefaultQueue");
        assert_eq!(settings.hostname.as_deref(), Some("default"));
        assert_eq!(
            settings.logins[0].username(5),
            "accessKey=AK12|timestamp=5|instanceId=inst-9"
        );
        assert!(!format!("{settings:?}").contains("code-that-must-not-show"));
    }

    #[test]
    fn mqtt_links_derive_host_login_and_subscriptions_and_name_what_is_wrong() {
        let config = connector(
            r#"
            kind = "alibaba-mqtt"
            product_key = "a1Pk"
            device_name = "lamp"
            device_secret = "device-secret-that-must-not-show"
            region = "cn-shanghai"
            user_topics = ["user/get"]
            "#,
        )
        .unwrap();
        let c = &config.connectors[0];
        let identity = crate::connector::identity(c, 7).unwrap();
        let get = |key: &str| identity.iter().find(|(k, _)| k == key).unwrap().1.clone();
        assert_eq!(
            get("url"),
            "mqtts://a1Pk.iot-as-mqtt.cn-shanghai.aliyuncs.com:8883"
        );
        assert_eq!(
            get("client-id"),
            "a1Pk.lamp|securemode=2,signmethod=hmacsha256,timestamp=7|"
        );
        assert_eq!(get("username"), "lamp&a1Pk");
        assert!(get("subscriptions").contains("/sys/a1Pk/lamp/thing/service/property/set"));
        assert!(get("subscriptions").contains("/a1Pk/lamp/user/get"));
        assert!(!format!("{identity:?}").contains("device-secret-that-must-not-show"));

        let error = |toml: &str| connector(toml).unwrap_err().to_string();
        let huawei = "kind = \"huawei-mqtt\"\ndevice_id = \"d\"\ndevice_secret = \"s\"";
        assert!(error(huawei).contains("needs `url`"));
        assert!(error(&format!("{huawei}\nurl = \"mqtt://h:1\"\nqos = 2")).contains("QoS 0 or 1"));
        assert!(error(&format!("{huawei}\nurl = \"http://h\"")).contains("expected mqtts://"));
        let clash = format!(
            "{huawei}\nurl = \"mqtt://h:1\"\n[[command_path]]\nname = \"c\"\nkind = \"log\""
        );
        assert!(error(&clash).contains("already the command path"));
    }

    #[test]
    fn an_mqtt_link_is_a_command_path_name_beside_the_configured_paths() {
        let text = format!(
            "{MINIMAL}\n[[connector]]\nname = \"meter\"\nkind = \"huawei-mqtt\"\n\
             url = \"mqtt://h:1\"\ndevice_id = \"d\"\ndevice_secret = \"s\"\n"
        );
        let config = Config::parse(Path::new("/etc/iot/iotrules.toml"), &text).unwrap();
        assert_eq!(config.command_path_names(), ["meter", "out"]);
    }
}
