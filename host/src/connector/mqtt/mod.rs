//! The device MQTT links (`alibaba-mqtt`, `huawei-mqtt`): iotrules connected to a broker as a
//! device, receiving what the cloud sends the device and publishing what the device says.
//!
//! A link is two things at once, sharing one connection:
//! - a connector: every publish it receives (a command, a property-set request, a custom
//!   topic's message) becomes a [`Delivery`](crate::pipeline::Delivery) with its topic, and a QoS 1
//!   publish is acknowledged (PUBACK) only once the pipeline has settled it, so nothing is
//!   lost when the service stops with it in flight: the broker sends it again to the
//!   persistent session;
//! - a command path of the same name ([`crate::command::mqtt`]): each command becomes a
//!   publish, confirmed by its PUBACK.
//!
//! The MQTT 3.1.1 session is ours, over rumqttc's packet codec: the login is derived again at
//! every connection (Alibaba's carries a timestamp, Huawei's an hour stamp), the filters are
//! subscribed at every connection and a refused one (SUBACK 0x80) is an error, and a publish
//! still waiting for its PUBACK when the connection ends fails at once, so that the command
//! path tries it again on the next connection. (rumqttc's own event loop resends such
//! publishes itself and reports acknowledgements by packet id only, which cannot be tied to
//! the command that is waiting; its TLS features also bring a second crypto provider.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, Publish, Subscribe,
    SubscribeFilter, SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::endpoint::{Endpoint, Scheme};
use crate::command::PathSettings;
use crate::config::{ConfigError, ConnectorConfig, ConnectorKind};
use crate::dialect::{alibaba, huawei};
use crate::pipeline;

/// The largest packet sent or accepted (Alibaba's limit is 256 KiB; IoTDA's 1 MiB). Public
/// for the fuzz targets, which read packets as this connector does.
pub const MAX_PACKET: usize = 1024 * 1024;
/// Commands handed to a connection and not yet taken by it (it takes them while its window
/// of publishes waiting for their PUBACK, `command_window`, has room).
const REQUESTS_QUEUED: usize = 256;
/// The most inbound publishes handed to the pipeline in one submission ([`Session::next_run`]).
const RUN_COUNT: usize = 64;
/// The most bytes of topics and payloads in one submission, unless its first is larger.
const RUN_BYTES: usize = 64 * 1024;
/// How long connecting, logging in and subscribing may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// The first pause before reconnecting, doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between reconnects.
const MAX_PAUSE: Duration = Duration::from_secs(30);

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
    pub ca_file: Option<std::path::PathBuf>,
    /// How commands become publishes.
    pub outbound: Outbound,
    /// The command path's lanes, time-out and retries.
    pub path: PathSettings,
    /// How long a command waits for the link to (re)connect.
    pub reconnect_wait: Duration,
    /// The byte budget of inbound publishes waiting for the pipeline.
    pub buffer_bytes: usize,
}

impl MqttSettings {
    /// Checks an `alibaba-mqtt` / `huawei-mqtt` connector's config and derives its settings.
    pub fn from_config(config: &ConnectorConfig) -> Result<Self, ConfigError> {
        let qos = match config.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => {
                return Err(config.invalid(format!(
                    "qos {other}: a link subscribes and publishes with QoS 0 or 1"
                )));
            }
        };
        if !(1..=u64::from(u16::MAX)).contains(&config.keep_alive_s) {
            return Err(config.invalid("keep_alive_s must be 1 to 65535"));
        }
        if config.command_timeout_ms == 0 {
            return Err(config.invalid("command_timeout_ms must be at least 1"));
        }
        if config.buffer_bytes == 0 {
            return Err(config.invalid("buffer_bytes must be at least 1"));
        }
        if !(1..=usize::from(u16::MAX)).contains(&config.command_window) {
            return Err(config.invalid(
                "command_window must be 1 to 65535 (a publish waiting for its PUBACK holds one \
                 of the 65 535 packet ids)",
            ));
        }
        let explicit = match &config.url {
            Some(url) => Some(
                Endpoint::parse(url.as_str(), Scheme::MQTT).map_err(|reason| {
                    config.invalid(format!(
                        "url \"{}\": {reason}",
                        crate::config::redacted_url(url.as_str())
                    ))
                })?,
            ),
            None => None,
        };
        let (endpoint, login, subscriptions, outbound) = match config.kind {
            ConnectorKind::AlibabaMqtt => {
                let product_key = config.required(&config.product_key, "product_key")?;
                let device_name = config.required(&config.device_name, "device_name")?;
                let secret = config.required_secret(&config.device_secret, "device_secret")?;
                for (key, value) in [("product_key", product_key), ("device_name", device_name)] {
                    if !topic_segment(value) {
                        return Err(config.invalid(format!(
                            "{key} \"{value}\" cannot go into a topic (no `/`, `+`, `#`)"
                        )));
                    }
                }
                let endpoint = match explicit {
                    Some(endpoint) => endpoint,
                    None => {
                        let instance = config.instance_id.as_ref().map_or("", |i| i.as_str());
                        let host = if !instance.is_empty() {
                            alibaba::mqtt::instance_host(instance)
                        } else {
                            let Some(region) = &config.region else {
                                return Err(config.invalid(
                                    "an alibaba-mqtt connector needs `region` (public \
                                     instance), `instance_id`, or `url`",
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
                let mut credentials =
                    alibaba::DeviceCredentials::new(product_key, device_name, secret);
                if let Some(client_id) = &config.client_id {
                    if client_id.as_str().contains('|') {
                        return Err(config.invalid("client_id must not contain `|`"));
                    }
                    credentials.client_id = client_id.as_str().to_owned();
                }
                credentials.sign_method = config.sign_method;
                credentials.tls = endpoint.tls;
                let topics = credentials.topics();
                let mut subscriptions = vec![
                    topics.property_set(),
                    topics.service("+"),
                    topics.rrpc_request_filter(),
                ];
                for suffix in &config.user_topics {
                    subscriptions.push(topics.full_topic(suffix.as_str()));
                }
                let outbound = Outbound::Alibaba {
                    topics,
                    device: format!("{product_key}.{device_name}"),
                };
                (
                    endpoint,
                    MqttLogin::Alibaba(credentials),
                    subscriptions,
                    outbound,
                )
            }
            ConnectorKind::HuaweiMqtt => {
                let Some(endpoint) = explicit else {
                    return Err(config.invalid(
                        "a huawei-mqtt connector needs `url` (mqtts://HOST:8883, the device \
                         access address on the console's Access Details page)",
                    ));
                };
                let device_id = config.required(&config.device_id, "device_id")?;
                if !topic_segment(device_id) {
                    return Err(config.invalid(format!(
                        "device_id \"{device_id}\" cannot go into a topic (no `/`, `+`, `#`)"
                    )));
                }
                let secret = config.required_secret(&config.device_secret, "device_secret")?;
                let credentials =
                    huawei::DeviceCredentials::new(device_id, secret, config.sign_type);
                let subscriptions = if config.legacy {
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
                    legacy: config.legacy,
                };
                (
                    endpoint,
                    MqttLogin::Huawei(credentials),
                    subscriptions,
                    outbound,
                )
            }
            ConnectorKind::Mqtt => {
                let Some(endpoint) = explicit else {
                    return Err(config.invalid(
                        "an mqtt connector needs `url` (mqtt://HOST:1883 or mqtts://HOST:8883)",
                    ));
                };
                if config.subscribe.is_empty() {
                    return Err(config.invalid("an mqtt connector needs `subscribe` filters"));
                }
                let topic = config.required(&config.publish_topic, "publish_topic")?;
                if topic.contains(['+', '#']) {
                    return Err(config.invalid(format!(
                        "publish_topic \"{topic}\": a topic to publish on has no wildcards"
                    )));
                }
                let client_id = config.client_id.as_ref().map_or_else(
                    || format!("iotrules-{}", config.name),
                    |c| c.as_str().to_owned(),
                );
                let login = match (&config.username, &config.password) {
                    (Some(user), password) => Some((
                        user.as_str().to_owned(),
                        password.clone().unwrap_or_default(),
                    )),
                    (None, Some(_)) => {
                        return Err(config.invalid("`password` without `username`"));
                    }
                    (None, None) => None,
                };
                (
                    endpoint,
                    MqttLogin::Plain { client_id, login },
                    config
                        .subscribe
                        .iter()
                        .map(|f| f.as_str().to_owned())
                        .collect(),
                    Outbound::Generic {
                        topic: topic.to_owned(),
                    },
                )
            }
            other => {
                return Err(config.invalid(format!("{} is not an MQTT link", other.as_str())));
            }
        };
        Ok(MqttSettings {
            endpoint,
            login,
            subscriptions,
            qos,
            clean_session: config.clean_session,
            keep_alive: Duration::from_secs(config.keep_alive_s),
            ca_file: config.ca_file.as_ref().map(|f| f.as_str().into()),
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

/// True if `text` can be one level of a topic.
fn topic_segment(text: &str) -> bool {
    !text.is_empty() && !text.contains(['/', '+', '#', '\0'])
}

/// One publish the command path asks for, answered when the broker acknowledged it (QoS 1)
/// or it was written (QoS 0).
pub struct Outgoing {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The answer: an error says why it was not acknowledged.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// The part of a link the command path holds: the way into the current connection.
pub struct LinkHandle {
    current: tokio::sync::watch::Sender<Option<Live>>,
    /// How long a command waits for a connection.
    reconnect_wait: Duration,
    /// The number of the latest connection (they count from 1).
    connections: std::sync::atomic::AtomicU64,
}

/// A connection taking commands, and its number.
#[derive(Clone)]
struct Live {
    number: u64,
    requests: mpsc::Sender<Outgoing>,
}

impl LinkHandle {
    /// A handle with no connection yet, whose commands wait up to `reconnect_wait` for one.
    pub fn new(reconnect_wait: Duration) -> Arc<Self> {
        Arc::new(LinkHandle {
            current: tokio::sync::watch::Sender::new(None),
            reconnect_wait,
            connections: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Waits until the link has a live connection, up to its `reconnect_wait`: a command
    /// whose link is reconnecting waits for it rather than failing its attempts while the
    /// broker is away.
    pub async fn connected(&self) -> Result<(), String> {
        let is_live = |live: &Option<Live>| live.as_ref().is_some_and(|l| !l.requests.is_closed());
        if is_live(&self.current.borrow()) {
            return Ok(());
        }
        let mut current = self.current.subscribe();
        let live = current.wait_for(is_live);
        match tokio::time::timeout(self.reconnect_wait, live).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "the link has had no connection for {} s (command_reconnect_wait_s)",
                self.reconnect_wait.as_secs()
            )),
        }
    }

    /// Hands `outgoing` to the current connection, whose publishes go out in the order they
    /// are handed over; returns the connection's number. An error when there is none (call
    /// [`connected`](Self::connected) first), it was lost meanwhile, or it is not connection
    /// `on` (the one a lane's earlier publishes went out on, which must not be overtaken).
    pub async fn publish(&self, outgoing: Outgoing, on: Option<u64>) -> Result<u64, String> {
        let live = self.current.borrow().clone();
        let Some(live) = live.filter(|live| on.is_none_or(|on| on == live.number)) else {
            return Err("the link's connection was lost".into());
        };
        live.requests
            .send(outgoing)
            .await
            .map_err(|_| "the link's connection was lost".to_owned())?;
        Ok(live.number)
    }

    /// Makes `requests` the current connection's way in (`None`: there is none).
    fn set(&self, requests: Option<mpsc::Sender<Outgoing>>) {
        let live = requests.map(|requests| Live {
            number: self
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            requests,
        });
        self.current.send_replace(live);
    }
}

/// Runs the link's connections until the service stops, reconnecting with backoff.
pub async fn run(
    settings: MqttSettings,
    handle: Arc<LinkHandle>,
    mut context: super::Context,
) -> anyhow::Result<()> {
    let tls = if settings.endpoint.tls {
        match crate::tls::client_config(settings.ca_file.as_deref()) {
            Ok(config) => Some(tokio_rustls::TlsConnector::from(config)),
            Err(e) => {
                let error = e.to_string();
                context.failed(&error);
                anyhow::bail!(error);
            }
        }
    } else {
        None
    };
    let mut backoff = super::Backoff::new(FIRST_PAUSE, MAX_PAUSE);
    loop {
        if context.stopping() {
            break;
        }
        let mut connection = Connection {
            settings: &settings,
            tls: tls.as_ref(),
            context: &mut context,
            handle: &handle,
        };
        match connection.run().await {
            Ended::Stopping => break,
            Ended::Lost { error, worked } => {
                handle.set(None);
                if worked {
                    backoff.reset();
                }
                let pause = backoff.next_pause();
                context.disconnected(&error, pause);
                if context.pause(pause).await {
                    break;
                }
            }
        }
    }
    // The handle keeps the last connection: a stopping link drains on it (Session::drain).
    context.stopped();
    Ok(())
}

/// Why a connection ended.
enum Ended {
    /// The service is stopping (or the pipeline closed): do not reconnect.
    Stopping,
    /// It failed or was lost: reconnect after a pause. `worked` when it had been receiving.
    Lost { error: String, worked: bool },
}

fn lost(error: String) -> Ended {
    Ended::Lost {
        error,
        worked: true,
    }
}

/// A byte stream to the broker, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The MQTT side of one connection: the socket, the buffers and the packet codec.
struct Wire {
    stream: Box<dyn Stream>,
    read: BytesMut,
    write: BytesMut,
}

impl Wire {
    /// Writes one packet (and any queued before it).
    async fn send(&mut self, packet: Packet) -> Result<(), String> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Encodes a packet behind those queued, to go out with them at the next
    /// [`flush`](Self::flush): one write for a run of publishes or PUBACKs.
    fn queue(&mut self, packet: Packet) -> Result<(), String> {
        packet
            .write(&mut self.write, MAX_PACKET)
            .map(drop)
            .map_err(|e| format!("cannot encode a packet: {e}"))
    }

    /// Writes the queued packets.
    async fn flush(&mut self) -> Result<(), String> {
        if self.write.is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(&self.write).await;
        self.write.clear();
        written.map_err(|e| format!("cannot write to the broker: {e}"))?;
        self.stream
            .flush()
            .await
            .map_err(|e| format!("cannot write to the broker: {e}"))
    }

    /// The next complete packet already read, if any.
    fn next_packet(&mut self) -> Result<Option<Packet>, String> {
        match Packet::read(&mut self.read, MAX_PACKET) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("the broker sent a malformed packet: {e}")),
        }
    }

    /// Reads more bytes; an error when the broker closed the connection.
    async fn fill(&mut self) -> Result<(), String> {
        match self.read.len() {
            n if n > MAX_PACKET * 2 => Err("the broker sent an oversized packet".into()),
            _ => match self.stream.read_buf(&mut self.read).await {
                Ok(0) => Err("the broker closed the connection".into()),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("cannot read from the broker: {e}")),
            },
        }
    }

    /// Reads until a complete packet is there.
    async fn receive(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

/// One connection of the link.
struct Connection<'a> {
    settings: &'a MqttSettings,
    tls: Option<&'a tokio_rustls::TlsConnector>,
    context: &'a mut super::Context,
    handle: &'a LinkHandle,
}

impl Connection<'_> {
    async fn run(&mut self) -> Ended {
        let now = self.context.clock.now_ms();
        self.context
            .status
            .set_identity(self.settings.identity(now));
        let credentials = self.settings.login.credentials(now);
        let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open(&credentials)).await;
        let (wire, early) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => {
                return Ended::Lost {
                    error,
                    worked: false,
                };
            }
            Err(_) => {
                return Ended::Lost {
                    error: format!(
                        "{}: no answer within {} s (connect as client id \"{}\", username \
                         \"{}\", subscribe)",
                        self.place(),
                        HANDSHAKE_TIMEOUT.as_secs(),
                        credentials.client_id,
                        credentials.username
                    ),
                    worked: false,
                };
            }
        };
        self.context.connected();
        tracing::info!(
            connector = %self.context.name(),
            client_id = %credentials.client_id,
            username = %credentials.username,
            "Connected to {} and subscribed to {}",
            self.place(),
            self.settings.subscriptions.join(", ")
        );
        let (requests_tx, requests) = mpsc::channel(REQUESTS_QUEUED);
        self.handle.set(Some(requests_tx));
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let mut session = Session {
            wire,
            requests,
            acks,
            acks_tx,
            waiting: HashMap::new(),
            window: self.settings.path.window,
            last_pkid: 0,
            awaiting_pong: false,
            qos: self.settings.qos,
            received: early,
            unsettled: 0,
        };
        let ended = session.serve(self.settings.keep_alive, self.context).await;
        if matches!(ended, Ended::Stopping) && self.context.stopping() {
            // The pipeline drains the events in flight after the connectors have returned,
            // and their answers go out on this connection: it stays open for them.
            tokio::spawn(session.drain(self.settings.keep_alive));
        } else {
            // Commands wait for the next connection from now on; then the publishes still
            // waiting for their PUBACK fail (dropped with the session) and are tried again
            // on it.
            self.handle.set(None);
            drop(session);
        }
        ended
    }

    fn place(&self) -> String {
        format!(
            "{}:{}",
            self.settings.endpoint.host, self.settings.endpoint.port
        )
    }

    /// Connects (TCP, TLS for `mqtts://`), logs in and subscribes. Publishes that arrive
    /// before the SUBACK (a persistent session's backlog) are returned to be handled next.
    async fn open(&self, credentials: &Credentials) -> Result<(Wire, Inbox), String> {
        let endpoint = &self.settings.endpoint;
        let place = self.place();
        let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("cannot connect to {place}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match self.tls {
            Some(tls) => {
                let server = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| format!("\"{}\" is not a TLS server name: {e}", endpoint.host))?;
                Box::new(
                    tls.connect(server, tcp)
                        .await
                        .map_err(|e| format!("TLS with {place} failed: {e}"))?,
                )
            }
            None => Box::new(tcp),
        };
        let mut wire = Wire {
            stream,
            read: BytesMut::with_capacity(8 * 1024),
            write: BytesMut::with_capacity(8 * 1024),
        };
        let mut connect = Connect::new(credentials.client_id.clone());
        connect.keep_alive = u16::try_from(self.settings.keep_alive.as_secs()).unwrap_or(u16::MAX);
        connect.clean_session = self.settings.clean_session;
        if !credentials.username.is_empty() {
            connect.login = Some(Login::new(
                credentials.username.clone(),
                credentials.password.clone(),
            ));
        }
        wire.send(Packet::Connect(connect)).await?;
        let who = format!(
            "client id \"{}\", username \"{}\"",
            credentials.client_id, credentials.username
        );
        match wire.receive().await? {
            Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            }) => {}
            Packet::ConnAck(ConnAck { code, .. }) => {
                return Err(format!(
                    "{place} refused the login of {who}: {}",
                    refusal(code)
                ));
            }
            other => {
                return Err(format!(
                    "{place} answered the login of {who} with {other:?} instead of CONNACK"
                ));
            }
        }
        let filters: Vec<SubscribeFilter> = self
            .settings
            .subscriptions
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), self.settings.qos))
            .collect();
        let mut subscribe = Subscribe::new_many(filters);
        subscribe.pkid = 1;
        wire.send(Packet::Subscribe(subscribe)).await?;
        let mut early = Inbox::new(
            self.settings.buffer_bytes,
            self.context
                .metrics
                .buffer_full
                .with(&[self.context.name()]),
        );
        loop {
            match wire.receive().await? {
                Packet::SubAck(suback) if suback.pkid == 1 => {
                    for (filter, code) in
                        self.settings.subscriptions.iter().zip(&suback.return_codes)
                    {
                        if *code == SubscribeReasonCode::Failure {
                            return Err(format!(
                                "{place} refused the subscription of {who} to \"{filter}\" \
                                 (SUBACK 0x80): check that the device may subscribe to it"
                            ));
                        }
                    }
                    return Ok((wire, early));
                }
                Packet::Publish(publish) => early.push(publish),
                _ => {}
            }
        }
    }
}

/// What a refused CONNACK means, and what to check.
fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::BadUserNamePassword => {
            "bad username or password (check the device secret, and that the clock is right: \
             the login carries a time stamp)"
        }
        ConnectReturnCode::NotAuthorized => {
            "not authorized (check the device secret and that the device is enabled, and that \
             the clock is right: the login carries a time stamp)"
        }
        ConnectReturnCode::BadClientId => {
            "client id rejected (check the client id and the sign settings)"
        }
        ConnectReturnCode::ServiceUnavailable => "service unavailable (the broker is busy)",
        ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 is not accepted",
        ConnectReturnCode::Success => "success",
    }
}

/// How long a stopping link keeps its connection for the answers of the events the pipeline
/// is still draining (the service's own `shutdown_timeout_s` normally ends it first).
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// How an inbound QoS 1 publish was settled by the pipeline.
enum Settled {
    /// Done: PUBACK it.
    Ack(u16),
    /// To be tried again (after the pipeline's redelivery pause). MQTT 3.1.1 has no negative
    /// acknowledgement, and a broker sends an unacknowledged publish again only at the next
    /// connection, while it counts against the client's in-flight window (20 on a stock
    /// mosquitto): left pending, enough of them would stall the link. So the link hands the
    /// publish to the pipeline again itself.
    Again(Publish),
}

/// Inbound publishes read from the socket and not yet taken by the pipeline, within a byte
/// budget (`buffer_bytes`).
///
/// The socket is read all the time (the PUBACKs of the link's own publishes arrive on it,
/// and the pipeline may be full of events waiting for exactly those), so the budget is kept
/// by not keeping what does not fit: a QoS 0 publish is dropped (at most once is its
/// contract), a QoS 1 publish is left unacknowledged, and the broker sends it again at the
/// next connection, which the link makes as soon as the publishes it kept are done (it
/// cannot ask for them otherwise: MQTT 3.1.1 has no negative acknowledgement). Each counts in
/// `iotrules_connector_buffer_full_total`. A broker that keeps an in-flight window (20 on a
/// stock mosquitto) never gets near the budget with QoS 1; one that keeps none does.
struct Inbox {
    queue: std::collections::VecDeque<Publish>,
    bytes: usize,
    budget: usize,
    full: Arc<crate::metrics::Counter>,
    /// QoS 1 publishes not kept on this connection: the broker sends them again only at the
    /// next one, so the link reconnects once what it kept is done.
    left_unacked: u64,
}

impl Inbox {
    fn new(budget: usize, full: Arc<crate::metrics::Counter>) -> Self {
        Inbox {
            queue: std::collections::VecDeque::new(),
            bytes: 0,
            budget,
            full,
            left_unacked: 0,
        }
    }

    fn size(publish: &Publish) -> usize {
        publish.topic.len() + publish.payload.len()
    }

    /// Keeps `publish` if it fits (one always does when the inbox is empty).
    fn push(&mut self, publish: Publish) {
        let size = Self::size(&publish);
        // Once a QoS 1 publish was left to the broker, every later one is too: taking a
        // later one now, when there is room again, would put it before the earlier one that
        // the broker sends again at the next connection (order per device).
        let behind = self.left_unacked > 0 && publish.qos != QoS::AtMostOnce;
        if behind || (!self.queue.is_empty() && self.bytes + size > self.budget) {
            if self.full.get() == 0 {
                tracing::warn!(
                    budget = self.budget,
                    "Inbound buffer full: publishes that do not fit are dropped (QoS 0) or left \
                     for the broker to send again (QoS 1); see \
                     iotrules_connector_buffer_full_total"
                );
            }
            self.full.inc();
            if publish.qos != QoS::AtMostOnce {
                self.left_unacked += 1;
            }
            return;
        }
        self.bytes += size;
        self.queue.push_back(publish);
    }

    /// Takes back a publish the pipeline wants to try again: it was in the budget already.
    fn again(&mut self, publish: Publish) {
        self.bytes += Self::size(&publish);
        self.queue.push_back(publish);
    }

    fn pop(&mut self) -> Option<Publish> {
        let publish = self.queue.pop_front()?;
        self.bytes -= Self::size(&publish);
        Some(publish)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The size of the next publish to pop, if any.
    fn peek_size(&self) -> Option<usize> {
        self.queue.front().map(Self::size)
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

/// A pipeline intake in progress.
type Submitting = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), crate::pipeline::Closed>> + Send>,
>;

/// A connected session: the publishes waiting for PUBACK by packet id, the inbound
/// publishes waiting for the pipeline.
///
/// The socket is read all the time, even while the pipeline is full: the PUBACKs of the
/// link's own publishes arrive on it, and the pipeline may be full of events waiting for
/// exactly those (an answer to a command is confirmed by its PUBACK before the command's
/// event is done). Inbound publishes wait in `received` meanwhile.
struct Session {
    wire: Wire,
    requests: mpsc::Receiver<Outgoing>,
    /// Inbound QoS 1 publishes the pipeline has settled.
    acks: mpsc::UnboundedReceiver<Settled>,
    acks_tx: mpsc::UnboundedSender<Settled>,
    waiting: HashMap<u16, oneshot::Sender<Result<(), String>>>,
    /// How many may wait for their PUBACK at once (`command_window`).
    window: usize,
    last_pkid: u16,
    awaiting_pong: bool,
    qos: QoS,
    received: Inbox,
    /// Inbound QoS 1 publishes handed to the pipeline and not yet settled.
    unsettled: usize,
}

impl Session {
    /// Receives, publishes and acknowledges until the connection is lost or the service
    /// stops. Whatever is still waiting for a PUBACK then fails (dropping `waiting`).
    async fn serve(&mut self, keep_alive: Duration, context: &mut super::Context) -> Ended {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut submitting: Option<Submitting> = None;
        loop {
            loop {
                let packet = match self.wire.next_packet() {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(error) => return lost(error),
                };
                if let Some(ended) = self.packet(packet) {
                    return ended;
                }
            }
            if self.received.left_unacked > 0
                && submitting.is_none()
                && self.received.is_empty()
                && self.unsettled == 0
            {
                return lost(format!(
                    "reconnecting: {} QoS 1 publishes did not fit the inbound buffer \
                     (buffer_bytes = {}), and the broker sends them again at the next \
                     connection",
                    self.received.left_unacked, self.received.budget
                ));
            }
            if submitting.is_none() && !self.received.is_empty() {
                let run = self.next_run();
                let ingest = context.ingest.clone();
                submitting = Some(Box::pin(async move {
                    for delivery in run {
                        ingest.submit(delivery).await?;
                    }
                    Ok(())
                }));
            }
            tokio::select! {
                biased;
                _ = context.shutdown.changed() => return Ended::Stopping,
                Some(settled) = self.acks.recv() => {
                    // The PUBACKs settled meanwhile go out in one write.
                    let mut next = Some(settled);
                    while let Some(settled) = next {
                        self.unsettled = self.unsettled.saturating_sub(1);
                        match settled {
                            Settled::Ack(pkid) => {
                                let puback = Packet::PubAck(PubAck::new(pkid));
                                if let Err(error) = self.wire.queue(puback) {
                                    return lost(error);
                                }
                            }
                            Settled::Again(publish) => self.received.again(publish),
                        }
                        next = self.acks.try_recv().ok();
                    }
                    if let Err(error) = self.wire.flush().await {
                        return lost(error);
                    }
                }
                submitted = async {
                    match submitting.as_mut() {
                        Some(submit) => submit.await,
                        None => std::future::pending().await,
                    }
                }, if submitting.is_some() => {
                    submitting = None;
                    if submitted.is_err() {
                        return Ended::Stopping;
                    }
                }
                filled = self.wire.fill() => {
                    if let Err(error) = filled {
                        return lost(error);
                    }
                }
                Some(outgoing) = self.requests.recv(), if self.waiting.len() < self.window => {
                    if let Err(error) = self.publish_all(outgoing).await {
                        return lost(error);
                    }
                }
                _ = ping.tick() => {
                    if self.awaiting_pong {
                        return lost(format!(
                            "no PINGRESP within the keep-alive of {} s",
                            keep_alive.as_secs()
                        ));
                    }
                    self.awaiting_pong = true;
                    if let Err(error) = self.wire.send(Packet::PingReq).await {
                        return lost(error);
                    }
                }
            }
        }
    }

    /// After the service stopped receiving: keeps publishing the commands of the events the
    /// pipeline still drains, and acknowledging those it settles, until every command path
    /// has gone (the service has finished) or [`DRAIN_LIMIT`]; then disconnects. Publishes
    /// still arriving are not taken: unacknowledged, they come again at the next start.
    async fn drain(mut self, keep_alive: Duration) {
        let deadline = tokio::time::sleep(DRAIN_LIMIT);
        tokio::pin!(deadline);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let mut paths_gone = false;
        self.received.clear();
        loop {
            while let Ok(Some(packet)) = self.wire.next_packet() {
                if let Packet::PubAck(ack) = packet
                    && let Some(done) = self.waiting.remove(&ack.pkid)
                {
                    let _ = done.send(Ok(()));
                }
            }
            if paths_gone && self.waiting.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = &mut deadline => break,
                Some(settled) = self.acks.recv() => {
                    // One to try again is left unacknowledged: the broker sends it again at
                    // the next start.
                    if let Settled::Ack(pkid) = settled
                        && self.wire.send(Packet::PubAck(PubAck::new(pkid))).await.is_err()
                    {
                        return;
                    }
                }
                filled = self.wire.fill() => {
                    if filled.is_err() {
                        return;
                    }
                }
                outgoing = self.requests.recv(), if !paths_gone && self.waiting.len() < self.window => {
                    match outgoing {
                        Some(outgoing) => {
                            if self.publish_all(outgoing).await.is_err() {
                                return;
                            }
                        }
                        None => paths_gone = true,
                    }
                }
                _ = ping.tick() => {
                    if self.wire.send(Packet::PingReq).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = self.wire.send(Packet::Disconnect).await;
    }

    fn packet(&mut self, packet: Packet) -> Option<Ended> {
        match packet {
            Packet::Publish(publish) => self.received.push(publish),
            Packet::PubAck(ack) => {
                if let Some(done) = self.waiting.remove(&ack.pkid) {
                    let _ = done.send(Ok(()));
                }
            }
            Packet::PingResp => self.awaiting_pong = false,
            Packet::Disconnect => return Some(lost("the broker disconnected".into())),
            _ => {}
        }
        None
    }

    /// Sends `outgoing` and the publishes requested behind it, as many as the window takes,
    /// in one write; each QoS 1 publish waits for its PUBACK in `waiting`, a QoS 0 one is
    /// done once written. On an error the session ends, and with it every publish waiting.
    async fn publish_all(&mut self, outgoing: Outgoing) -> Result<(), String> {
        let mut written = Vec::new();
        let mut next = Some(outgoing);
        while let Some(Outgoing {
            topic,
            payload,
            done,
        }) = next
        {
            let mut publish = Publish::new(topic, self.qos, payload);
            if self.qos == QoS::AtMostOnce {
                self.wire.queue(Packet::Publish(publish))?;
                written.push(done);
            } else {
                let pkid = self.next_pkid();
                publish.pkid = pkid;
                self.wire.queue(Packet::Publish(publish))?;
                self.waiting.insert(pkid, done);
            }
            next = if self.waiting.len() < self.window {
                self.requests.try_recv().ok()
            } else {
                None
            };
        }
        self.wire.flush().await?;
        for done in written {
            let _ = done.send(Ok(()));
        }
        Ok(())
    }

    /// A packet id not in use by a publish waiting for its PUBACK (1 is the SUBSCRIBE's,
    /// which was answered before any publish).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.waiting.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    /// The next publishes to hand to the pipeline, in order: as many as are waiting, up to
    /// [`RUN_COUNT`] and [`RUN_BYTES`] (at least one). A run goes in one submission, so the
    /// session's loop turns once per run rather than once per publish; what a run holds is
    /// outside the inbox's budget, which that bound keeps small.
    fn next_run(&mut self) -> Vec<pipeline::Delivery> {
        let mut run = Vec::new();
        let mut bytes = 0;
        while run.len() < RUN_COUNT
            && let Some(size) = self.received.peek_size()
            && (run.is_empty() || bytes + size <= RUN_BYTES)
            && let Some(publish) = self.received.pop()
        {
            bytes += size;
            run.push(self.delivery(publish));
        }
        run
    }

    /// The delivery of an inbound publish: its payload, its topic, and for QoS 1 an acker
    /// that sends the PUBACK once the pipeline settles it.
    fn delivery(&mut self, publish: Publish) -> pipeline::Delivery {
        let acker = match publish.qos {
            QoS::AtMostOnce => pipeline::Acker::none(),
            _ => {
                self.unsettled += 1;
                let acks = self.acks_tx.clone();
                let again = publish.clone();
                pipeline::Acker::new(move |how| {
                    // A closed channel: the connection is gone, and the broker sends the
                    // publish again at the next one.
                    let _ = acks.send(match how {
                        pipeline::Settle::Ack => Settled::Ack(again.pkid),
                        pipeline::Settle::Retry => Settled::Again(again),
                    });
                })
            }
        };
        let (payload, properties) = publish_parts(publish);
        pipeline::Delivery {
            payload,
            properties,
            acker,
        }
    }
}

/// What the dialect gets of an inbound publish: its payload, and its topic as the property
/// [`ATTR_TOPIC`](crate::event::ATTR_TOPIC).
///
/// Public, though only this connector calls it, so that the fuzz targets (`fuzz/`) and their
/// smoke test can feed it packets read from arbitrary bytes (with [`MAX_PACKET`]).
pub fn publish_parts(publish: Publish) -> (Vec<u8>, Vec<(String, String)>) {
    (
        publish.payload.to_vec(),
        vec![(crate::event::ATTR_TOPIC.to_owned(), publish.topic)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let error = crate::config::Config::parse(std::path::Path::new("x.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(error.contains("credentials do not belong"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert!(Endpoint::parse("tcp://host", Scheme::MQTT).is_err());
    }
}
