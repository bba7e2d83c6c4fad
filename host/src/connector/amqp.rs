//! The `alibaba-amqp` and `huawei-amqp` connectors: the clouds' server-side subscriptions over
//! AMQP 1.0.
//!
//! Both log in with SASL PLAIN and a username that carries a fresh timestamp (so the
//! credentials are derived again for every connection), attach one receiver link and settle
//! each message `accepted` once the pipeline is done with it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::{MessageDecodeError, RecvError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Message, Modified};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Receiver, Session};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{
    Backoff, Connector, Context, Ended, Kind, Sessions, Start, only_dialect, reconnecting,
};
use crate::config::{ConfigError, Expanded, Secret, Table};
use crate::dialect::DialectName::{Alibaba, Huawei};
use crate::dialect::crypto::SignMethod;
use crate::dialect::{Dialect, DialectName, alibaba, huawei};
use crate::endpoint::{Endpoint, Scheme};
use crate::pipeline::{self, Deferring};

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
    /// The largest message the receiver accepts (its link's `max-message-size`): with at
    /// most `credit` messages unsettled, what a connection holds stays within `buffer_bytes`.
    pub max_message_size: u64,
}

/// The smallest `max-message-size` a receiver announces, whatever `buffer_bytes` and
/// `credit` say: Alibaba's messages reach 256 KiB.
const MIN_MESSAGE_SIZE: usize = 256 * 1024;

/// The server-side subscriptions: `alibaba-amqp` and `huawei-amqp`.
pub const KIND: Kind = Kind {
    names: &["alibaba-amqp", "huawei-amqp"],
    read: |table| super::configured(AmqpSettings::read(table)),
};

/// The keys both AMQP kinds take.
#[derive(Deserialize)]
#[serde(default)]
struct AmqpConfig {
    /// The kind's own dialect (`alibaba` or `huawei`), which it implies.
    dialect: Option<DialectName>,
    /// The broker URL (`amqps://host:port`, `amqp://…`); Alibaba derives it by default.
    url: Option<Expanded>,
    /// A PEM file of CA certificates trusted besides the system's.
    ca_file: Option<Expanded>,
    /// Alibaba's `iotInstanceId` (empty for the public instance), Huawei's `instanceId`.
    instance_id: Option<Expanded>,
    /// The source address of the receiver link (Alibaba: ignored by the server, empty by
    /// default; Huawei: the queue).
    source: Option<Expanded>,
    /// The idle time-out announced in the open frame, in seconds (30 to 300).
    idle_timeout_s: u64,
    /// Messages the server may send ahead of acknowledgements, per connection.
    credit: u32,
    /// Connections opened in parallel, each with one receiver (Alibaba: about one per 500
    /// messages/s, at most 128 per consumer group).
    connections: usize,
    /// Bytes of messages held ahead of the pipeline at most: credit times the largest
    /// message accepted.
    buffer_bytes: usize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            dialect: None,
            url: None,
            ca_file: None,
            instance_id: None,
            source: None,
            idle_timeout_s: 60,
            credit: 20,
            connections: 1,
            buffer_bytes: super::default_buffer_bytes(),
        }
    }
}

/// `alibaba-amqp`'s own keys.
#[derive(Default, Deserialize)]
#[serde(default)]
struct AlibabaConfig {
    /// The account id (`uid`) of a public instance's host.
    uid: Option<Expanded>,
    /// The region id of a public instance (`cn-shanghai`, …).
    region: Option<Expanded>,
    /// The AccessKey id (`authId`).
    access_key_id: Option<Expanded>,
    /// The AccessKey secret (the password's HMAC key).
    access_key_secret: Option<Secret>,
    /// The consumer group id; replicas sharing a group share its messages.
    consumer_group: Option<Expanded>,
    /// The client id in the username (default `iotrules-{connector name}`; with several
    /// connections each gets `-{n}` appended).
    client_id: Option<Expanded>,
    /// The password's HMAC (`hmacmd5`, `hmacsha1`, `hmacsha256`).
    sign_method: SignMethod,
    /// Bodies arrive base64-encoded (a console option).
    body_base64: bool,
}

/// `huawei-amqp`'s own keys.
#[derive(Default, Deserialize)]
#[serde(default)]
struct HuaweiConfig {
    /// The access key paired with `access_code`.
    access_key: Option<Secret>,
    /// The access code (the SASL password).
    access_code: Option<Secret>,
    /// The queue to receive from (or give `source`).
    queue: Option<Expanded>,
}

impl AmqpSettings {
    /// Checks a `alibaba-amqp` or `huawei-amqp` connector's table and derives its settings.
    pub fn from_config(table: &Table) -> Result<Self, ConfigError> {
        Self::read(table).map(|(_, settings)| settings)
    }

    /// The dialect and the settings of a `alibaba-amqp` or `huawei-amqp` connector's table.
    fn read(table: &Table) -> Result<(Dialect, Self), ConfigError> {
        if table.kind == "alibaba-amqp" {
            let (common, own) = table.read_both::<AmqpConfig, AlibabaConfig>()?;
            let dialect = only_dialect(table, Alibaba, common.dialect, own.body_base64, &None)?;
            Ok((dialect, AmqpSettings::alibaba(table, &common, &own)?))
        } else {
            let (common, own) = table.read_both::<AmqpConfig, HuaweiConfig>()?;
            let dialect = only_dialect(table, Huawei, common.dialect, false, &None)?;
            Ok((dialect, AmqpSettings::huawei(table, &common, &own)?))
        }
    }
}

impl Connector for AmqpSettings {
    fn files(&self) -> Vec<(PathBuf, &'static str)> {
        super::ca_file(&self.ca_file)
    }

    fn identity(&self, now_ms: u64) -> Vec<(String, String)> {
        AmqpSettings::identity(self, now_ms)
    }

    fn start(&self, _name: &str, _runtime: &tokio::runtime::Handle) -> Start {
        let settings = self.clone();
        Start::receiving(move |context| run(settings, context))
    }
}

/// What both kinds derive from [`AmqpConfig`], checked.
struct Common {
    url: Option<String>,
    instance_id: String,
    ca_file: Option<PathBuf>,
    idle_timeout: Duration,
    max_message_size: u64,
}

impl Common {
    fn check(table: &Table, config: &AmqpConfig) -> Result<Self, ConfigError> {
        if !IDLE_TIMEOUT_S.contains(&config.idle_timeout_s) {
            return Err(table.invalid(format!(
                "idle_timeout_s {} is outside 30..=300 (the servers refuse others)",
                config.idle_timeout_s
            )));
        }
        if config.credit == 0 {
            return Err(table.invalid("credit must be at least 1"));
        }
        if !(1..=MAX_CONNECTIONS).contains(&config.connections) {
            return Err(table.invalid(format!(
                "connections must be 1 to {MAX_CONNECTIONS} (the limit per consumer group)"
            )));
        }
        let url = match &config.url {
            Some(url) => {
                let url = url.as_str();
                Endpoint::parse_named(url, Scheme::AMQP).map_err(|e| table.invalid(e))?;
                Some(url.to_owned())
            }
            None => None,
        };
        Ok(Common {
            url,
            instance_id: config
                .instance_id
                .as_ref()
                .map_or("", |i| i.as_str())
                .to_owned(),
            ca_file: config.ca_file.as_ref().map(|f| table.path(f)),
            idle_timeout: Duration::from_secs(config.idle_timeout_s),
            max_message_size: (config.buffer_bytes / config.credit as usize).max(MIN_MESSAGE_SIZE)
                as u64,
        })
    }
}

impl AmqpSettings {
    /// Checks an `alibaba-amqp` connector's table and derives its settings.
    fn alibaba(
        table: &Table,
        config: &AmqpConfig,
        own: &AlibabaConfig,
    ) -> Result<Self, ConfigError> {
        let common = Common::check(table, config)?;
        let url = match common.url {
            Some(url) => url,
            None if !common.instance_id.is_empty() => format!(
                "amqps://{}:{}",
                alibaba::amqp::instance_host(&common.instance_id),
                alibaba::amqp::AMQPS_PORT
            ),
            None => {
                let (Some(uid), Some(region)) = (&own.uid, &own.region) else {
                    return Err(table.invalid(
                        "an alibaba-amqp connector needs `uid` and `region` (public instance), \
                         `instance_id`, or `url`",
                    ));
                };
                format!(
                    "amqps://{}:{}",
                    alibaba::amqp::public_instance_host(uid.as_str(), region.as_str()),
                    alibaba::amqp::AMQPS_PORT
                )
            }
        };
        let access_key_id = table.required(&own.access_key_id, "access_key_id")?;
        let secret = table.required_secret(&own.access_key_secret, "access_key_secret")?;
        let group = table.required(&own.consumer_group, "consumer_group")?;
        let client_id = own.client_id.as_ref().map_or_else(
            || format!("iotrules-{}", table.name),
            |c| c.as_str().to_owned(),
        );
        if client_id.contains('|') {
            return Err(table.invalid("client_id must not contain `|`"));
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
                    iot_instance_id: common.instance_id.clone(),
                    consumer_group_id: group.to_owned(),
                    sign_method: own.sign_method,
                    encode_base64: own.body_base64,
                })
            })
            .collect();
        Ok(AmqpSettings {
            url,
            hostname: None,
            logins,
            source: config.source.as_ref().map_or("", |s| s.as_str()).to_owned(),
            credit: config.credit,
            idle_timeout: common.idle_timeout,
            ca_file: common.ca_file,
            max_message_size: common.max_message_size,
        })
    }

    /// Checks a `huawei-amqp` connector's table and derives its settings.
    fn huawei(table: &Table, config: &AmqpConfig, own: &HuaweiConfig) -> Result<Self, ConfigError> {
        let common = Common::check(table, config)?;
        let Some(url) = common.url else {
            return Err(table.invalid(
                "a huawei-amqp connector needs `url` (amqps://HOST:5671, the AMQP access address \
                 on the console's Access Details page)",
            ));
        };
        let access_key = table.required_secret(&own.access_key, "access_key")?;
        let access_code = table.required_secret(&own.access_code, "access_code")?;
        let credentials = huawei::AmqpCredentials::new(access_key, access_code, common.instance_id);
        let queue = match (&own.queue, &config.source) {
            (Some(_), Some(_)) => {
                return Err(table.invalid("give `queue` or `source`, not both"));
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
            idle_timeout: common.idle_timeout,
            ca_file: common.ca_file,
            max_message_size: common.max_message_size,
        })
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

/// How long connecting, logging in and attaching may take (Alibaba closes a connection that
/// has not authenticated or attached within 15 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long closing the link, session and connection may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause before reconnecting, doubled up to [`MAX_PAUSE`] (Alibaba's demos).
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between reconnects.
const MAX_PAUSE: Duration = Duration::from_secs(20);

/// Runs the connector until the service stops: one task per login (`connections = N`), each
/// connecting, receiving and reconnecting on its own.
pub async fn run(settings: AmqpSettings, context: super::Context) -> anyhow::Result<()> {
    let endpoint = match Endpoint::parse_named(&settings.url, Scheme::AMQP) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            context.failed(&error);
            anyhow::bail!(error);
        }
    };
    let tls = super::tls_connector(&context, &endpoint, settings.ca_file.as_deref())?;
    let settings = Arc::new(settings);
    let endpoint = Arc::new(endpoint);
    let mut connections = tokio::task::JoinSet::new();
    for index in 0..settings.logins.len() {
        let connection = Connection {
            settings: settings.clone(),
            endpoint: endpoint.clone(),
            tls: tls.clone(),
            index,
            context: context.clone(),
        };
        connections.spawn(connection.run());
    }
    while connections.join_next().await.is_some() {}
    context.stopped();
    Ok(())
}

/// One of the connector's connections, with its login: connects, receives and reconnects
/// until the service stops.
struct Connection {
    settings: Arc<AmqpSettings>,
    endpoint: Arc<Endpoint>,
    tls: Option<tokio_rustls::TlsConnector>,
    index: usize,
    context: super::Context,
}

impl Sessions for Connection {
    async fn session(&mut self, _context: &mut Context) -> Ended {
        match self.connect_and_receive().await {
            Ended::Lost { error, worked } if self.settings.logins.len() > 1 => Ended::Lost {
                error: format!("connection {}: {error}", self.index + 1),
                worked,
            },
            ended => ended,
        }
    }
}

impl Connection {
    async fn run(mut self) {
        let mut context = self.context.clone();
        // A connection's session never ends fatally (its settings were checked at start), so
        // the supervisor's result says nothing `/status` does not.
        let _ = reconnecting(
            &mut context,
            Backoff::new(FIRST_PAUSE, MAX_PAUSE),
            &mut self,
        )
        .await;
    }

    /// One connection: log in, attach, receive until it is lost or the service stops.
    async fn connect_and_receive(&mut self) -> Ended {
        let now = self.context.clock.now_ms();
        let login = &self.settings.logins[self.index];
        let username = login.username(now);
        if self.index == 0 {
            self.context
                .status
                .set_identity(self.settings.identity(now));
        }
        let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open(&username, now)).await;
        let (mut connection, mut session, receiver) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return Ended::failed(error),
            Err(_) => {
                return Ended::failed(format!(
                    "{}: no answer within {} s (connect, log in as \"{username}\", attach)",
                    self.endpoint_text(),
                    HANDSHAKE_TIMEOUT.as_secs()
                ));
            }
        };
        self.context.connected();
        tracing::info!(
            connector = %self.context.name(),
            connection = self.index + 1,
            username = %username,
            "Receiving from {} (source \"{}\")",
            self.endpoint_text(),
            self.settings.source
        );
        let mut link = Link::new(receiver, self.settings.credit);
        let ended = link.receive(&mut self.context).await;
        match ended {
            Ended::Stopping => {
                let close = async {
                    let _ = link.receiver.close().await;
                    let _ = session.end().await;
                    let _ = connection.close().await;
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                Ended::Stopping
            }
            fatal @ Ended::Fatal(_) => fatal,
            Ended::Lost { error, .. } => {
                drop(link);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = session.end().await;
                    let _ = connection.close().await;
                })
                .await;
                Ended::lost(error)
            }
        }
    }

    fn endpoint_text(&self) -> String {
        self.endpoint.address()
    }

    /// Connects (TCP, TLS for `amqps://`), logs in with SASL PLAIN, begins a session and
    /// attaches the receiver, granting it the configured credit.
    async fn open(
        &self,
        username: &str,
        now: u64,
    ) -> Result<(ConnectionHandle<()>, SessionHandle<()>, Receiver), String> {
        let endpoint = &*self.endpoint;
        let place = self.endpoint_text();
        let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("cannot connect to {place}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = format!("iotrules-{}-{}", self.context.name(), self.index + 1);
        let password = self.settings.logins[self.index].password(now);
        let hostname = self
            .settings
            .hostname
            .as_deref()
            .unwrap_or(endpoint.host.as_str());
        let builder = fe2o3_amqp::Connection::builder()
            .container_id(name.clone())
            .hostname(hostname)
            .idle_time_out(
                u32::try_from(self.settings.idle_timeout.as_millis()).unwrap_or(u32::MAX),
            )
            .sasl_profile(SaslProfile::Plain {
                username: username.to_owned(),
                password,
            })
            // TLS, when wanted, is ours (below): the builder speaks AMQP over the stream.
            .scheme("amqp");
        let opened = match &self.tls {
            Some(tls) => {
                let server = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| format!("\"{}\" is not a TLS server name: {e}", endpoint.host))?;
                let stream = tls
                    .connect(server, tcp)
                    .await
                    .map_err(|e| format!("TLS with {place} failed: {e}"))?;
                builder.open_with_stream(stream).await
            }
            None => builder.open_with_stream(tcp).await,
        };
        let mut connection = opened.map_err(|e| match e {
            OpenError::SaslError { code, .. } => format!(
                "{place} refused the login of username \"{username}\" (SASL {code:?}): check the \
                 credentials, and that the clock is right (the username carries a timestamp)"
            ),
            other => format!("cannot open an AMQP connection to {place}: {other}"),
        })?;
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|e| format!("{place} refused a session: {e}"))?;
        let receiver = Receiver::builder()
            .name(name)
            .source(self.settings.source.as_str())
            .credit_mode(CreditMode::Manual)
            .auto_accept(false)
            .max_message_size(self.settings.max_message_size)
            .attach(&mut session)
            .await
            .map_err(|e| {
                format!(
                    "{place} refused to attach a receiver to source \"{}\": {e}",
                    self.settings.source
                )
            })?;
        Ok((connection, session, receiver))
    }
}

/// What the pipeline decided about a delivery, on its way back to the link that received it;
/// `true` for a message the client could not decode, which is settled `rejected` once its
/// dead letter is stored (accepting it would tell the broker it was processed).
type Settlement = (DeliveryInfo, pipeline::Settle, bool);

/// A receiver link and its accounting: the broker may send at most `window` messages beyond
/// those settled, so the messages held (waiting for the pipeline, or in it) never exceed the
/// credit however slow the pipeline is.
struct Link {
    receiver: Receiver,
    window: u32,
    /// Received and not yet settled.
    unsettled: u32,
    /// Deliveries to accept together (see [`Link::settle`]); empty between settlements.
    accepted: Vec<DeliveryInfo>,
    settlements: mpsc::UnboundedReceiver<Settlement>,
    /// Handed to each delivery's acker. Unbounded, yet never holds more than `window`.
    settle: mpsc::UnboundedSender<Settlement>,
}

impl Link {
    fn new(receiver: Receiver, window: u32) -> Self {
        let (settle, settlements) = mpsc::unbounded_channel();
        Link {
            receiver,
            window,
            unsettled: 0,
            accepted: Vec::with_capacity(window as usize),
            settlements,
            settle,
        }
    }

    /// Grants the credit, then hands every message to the pipeline and settles it when the
    /// pipeline says, until the link fails or the service stops.
    async fn receive(&mut self, context: &mut super::Context) -> Ended {
        if let Err(e) = self.receiver.set_credit(self.window).await {
            return Ended::lost(format!("cannot grant link credit: {e}"));
        }
        // A burst of messages is queued on the workers and they are woken once, when the
        // link has nothing more ready (the last branch).
        let ingest = context.ingest.deferring();
        loop {
            tokio::select! {
                biased;
                _ = context.shutdown.changed() => return Ended::Stopping,
                Some(settlement) = self.settlements.recv() => {
                    if let Err(error) = self.settle(settlement).await {
                        return Ended::lost(error);
                    }
                }
                received = self.receiver.recv::<Body<Value>>() => {
                    let submission = match received {
                        Ok(delivery) => Submission::Message(self.delivery(delivery)),
                        // The transfer arrived whole, and only its content is wrong: the link
                        // is fine. Reconnecting would bring the same message back forever.
                        Err(RecvError::MessageDecode(error)) => self.undecodable(error),
                        Err(e) => return Ended::lost(format!("the link was lost: {e}")),
                    };
                    self.unsettled += 1;
                    if let Err(error) = self.top_up().await {
                        return Ended::lost(error);
                    }
                    if let Some(ended) = self.submit(submission, &ingest, context).await {
                        return ended;
                    }
                }
                () = std::future::ready(()), if ingest.owes_wake() => ingest.wake_workers(),
            }
        }
    }

    /// Submits one delivery, settling what the pipeline finishes meanwhile (the pipeline may
    /// be full, waiting for exactly those settlements).
    async fn submit(
        &mut self,
        submission: Submission,
        ingest: &Deferring,
        context: &mut super::Context,
    ) -> Option<Ended> {
        let submit = async {
            match submission {
                Submission::Message(delivery) => ingest.submit(delivery).await,
                Submission::Undecodable(delivery, message) => {
                    ingest.ingest().refuse(delivery, "amqp", message).await
                }
            }
        };
        tokio::pin!(submit);
        loop {
            tokio::select! {
                biased;
                submitted = &mut submit => {
                    return submitted.err().map(|_| Ended::Stopping);
                }
                _ = context.shutdown.changed() => return Some(Ended::Stopping),
                Some(settlement) = self.settlements.recv() => {
                    if let Err(error) = self.settle(settlement).await {
                        return Some(Ended::lost(error));
                    }
                }
            }
        }
    }

    /// Settles `first` and every settlement already waiting behind it, then tops the credit
    /// up once.
    ///
    /// The acceptances go in one call: fe2o3-amqp sends one disposition frame per run of
    /// consecutive delivery ids, where settling one by one sent a frame (and woke the
    /// session) per message. Nothing waits to be batched: only what the pipeline has already
    /// settled is taken, and at most the window of it.
    async fn settle(&mut self, first: Settlement) -> Result<(), String> {
        let mut next = Some(first);
        while let Some((info, how, undecodable)) = next {
            match how {
                pipeline::Settle::Ack if !undecodable => self.accepted.push(info),
                _ => self.settle_apart(info, how).await?,
            }
            self.unsettled = self.unsettled.saturating_sub(1);
            next = self.settlements.try_recv().ok();
        }
        if !self.accepted.is_empty() {
            self.receiver
                .accept_all(self.accepted.drain(..))
                .await
                .map_err(|e| format!("cannot settle a delivery: {e}"))?;
        }
        self.top_up().await
    }

    /// Settles one delivery that is not simply accepted: an `Ack` here is one of a message the
    /// client could not decode, `rejected` once its dead letter is stored; a `Retry` is
    /// `modified` with `delivery-failed` so that it is delivered again.
    async fn settle_apart(
        &mut self,
        info: DeliveryInfo,
        how: pipeline::Settle,
    ) -> Result<(), String> {
        let settled = match how {
            pipeline::Settle::Ack => {
                let error = definitions::Error::new(
                    AmqpError::DecodeError,
                    Some("iotrules could not decode the message; kept as a dead letter".into()),
                    None,
                );
                self.receiver.reject(info, error).await
            }
            pipeline::Settle::Retry => {
                let modified = Modified {
                    delivery_failed: Some(true),
                    undeliverable_here: None,
                    message_annotations: None,
                };
                self.receiver.modify(info, modified).await
            }
        };
        settled.map_err(|e| format!("cannot settle a delivery: {e}"))
    }

    /// Grants credit again once every message granted so far has arrived and at least half
    /// the window is settled: `window - unsettled`, so that unsettled messages and credit
    /// together never exceed the window.
    ///
    /// Granting only at zero credit is deliberate. A flow sent while transfers are on the
    /// wire is exact by the specification (the peer subtracts what it sent since), but
    /// RabbitMQ 3.x's AMQP 1.0 plugin resets its queue's credit on top of messages it has
    /// dispatched and not yet sent, overshoots, and the receiver must then fail the link
    /// ("more transfers than allowed"). At zero credit nothing is in flight, so any peer
    /// counts the same.
    async fn top_up(&mut self) -> Result<(), String> {
        if self.receiver.credit() > 0 {
            return Ok(());
        }
        let free = self.window.saturating_sub(self.unsettled);
        if free >= (self.window / 2).max(1) {
            self.receiver
                .set_credit(free)
                .await
                .map_err(|e| format!("cannot grant link credit: {e}"))?;
        }
        Ok(())
    }

    /// Our delivery of an AMQP message: its body and its application properties.
    fn delivery(
        &self,
        delivery: fe2o3_amqp::link::delivery::Delivery<Body<Value>>,
    ) -> pipeline::Delivery {
        let info = DeliveryInfo::from(&delivery);
        let (payload, properties) = message_parts(delivery.into_message());
        let settle = self.settle.clone();
        pipeline::Delivery {
            payload,
            properties,
            acker: pipeline::Acker::new(move |how| {
                // A closed channel means the link is gone: the broker delivers it again.
                let _ = settle.send((info, how, false));
            }),
        }
    }

    /// A message the client could not decode, for the dead letters: what can be read of it
    /// (its delivery tag and the decoder's error), settled `rejected` once stored.
    fn undecodable(&self, error: MessageDecodeError) -> Submission {
        let MessageDecodeError { info, source } = error;
        let tag = hex::encode(info.delivery_tag().as_slice());
        let message = format!(
            "the AMQP message (delivery tag {tag}) cannot be decoded: {source}; it is rejected"
        );
        let settle = self.settle.clone();
        let delivery = pipeline::Delivery {
            payload: Vec::new(),
            properties: vec![("delivery-tag".to_owned(), tag)],
            acker: pipeline::Acker::new(move |how| {
                let _ = settle.send((info, how, true));
            }),
        };
        Submission::Undecodable(delivery, message)
    }
}

/// What a link hands the pipeline.
enum Submission {
    /// A message to decode and process.
    Message(pipeline::Delivery),
    /// A message the client could not decode: straight to the dead letters, with why.
    Undecodable(pipeline::Delivery, String),
}

/// What the dialect gets of a received AMQP message: its body as bytes ([`body_bytes`]) and
/// its application properties that have a text form ([`property_text`]), in message order.
///
/// Public, though only this connector calls it, so that the fuzz targets (`fuzz/`) and their
/// smoke test can feed it messages decoded from arbitrary bytes: it is the step between
/// fe2o3-amqp's decoder and the dialects.
pub fn message_parts(message: Message<Body<Value>>) -> (Vec<u8>, Vec<(String, String)>) {
    let properties = message
        .application_properties
        .map(|p| {
            p.0.into_iter()
                .filter_map(|(key, value)| property_text(value).map(|text| (key, text)))
                .collect()
        })
        .unwrap_or_default();
    (body_bytes(message.body), properties)
}

/// The message bytes: the data sections joined, or an amqp-value string or binary. Other
/// bodies (sequences, typed values) are passed on as their debug text, so the dialect refuses
/// them into the dead letters with something readable.
fn body_bytes(body: Body<Value>) -> Vec<u8> {
    match body {
        Body::Data(sections) => {
            let mut bytes = Vec::new();
            for section in sections.into_iter() {
                bytes.extend_from_slice(&section.0);
            }
            bytes
        }
        Body::Value(AmqpValue(Value::String(text))) => text.into_bytes(),
        Body::Value(AmqpValue(Value::Binary(bytes))) => bytes.into_vec(),
        Body::Empty => Vec::new(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// An application property as text: strings, symbols, numbers and booleans (Alibaba's
/// `generateTime` is a long); other types are left out.
fn property_text(value: SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::String(text) => text,
        SimpleValue::Symbol(symbol) => symbol.0,
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::Data;

    /// The settings of the `[[connector]]` named `c` of `toml`, from `/etc/iot/iotrules.toml`.
    fn settings(toml: &str) -> AmqpSettings {
        let text = format!("[[connector]]\nname = \"c\"\n{toml}");
        let config =
            crate::config::Config::parse(std::path::Path::new("/etc/iot/iotrules.toml"), &text)
                .expect("config");
        AmqpSettings::from_config(&config.connectors[0]).expect("settings")
    }

    #[test]
    fn alibaba_hosts_derive_and_each_connection_has_its_client_id() {
        let settings = settings(
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
        );
        assert_eq!(
            settings.url,
            "amqps://1941269044154518.iot-amqp.cn-shanghai.aliyuncs.com:5671"
        );
        assert_eq!(
            settings.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/iot/ca.pem"))
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
        let shown = format!("{settings:?} {:?}", settings.identity(7));
        assert!(!shown.contains("secret-that-must-not-show"), "{shown}");
    }

    #[test]
    fn huawei_receives_from_the_default_queue_on_vhost_default() {
        let settings = settings(
            r#"
            kind = "huawei-amqp"
            url = "amqps://abc.iot-amqps.cn-north-4.myhuaweicloud.com:5671"
            access_key = "AK12"
            access_code = "code-that-must-not-show"
            instance_id = "inst-9"
            "#,
        );
        assert_eq!(settings.source, "DefaultQueue");
        assert_eq!(settings.hostname.as_deref(), Some("default"));
        assert_eq!(
            settings.logins[0].username(5),
            "accessKey=AK12|timestamp=5|instanceId=inst-9"
        );
        assert!(!format!("{settings:?}").contains("code-that-must-not-show"));
    }

    #[test]
    fn endpoints_take_the_scheme_default_port_and_refuse_credentials_in_the_url() {
        let tls = Endpoint::parse("amqps://iot.example.com", Scheme::AMQP).unwrap();
        assert_eq!(
            (tls.tls, tls.host.as_str(), tls.port),
            (true, "iot.example.com", 5671)
        );
        let plain = Endpoint::parse("amqp://127.0.0.1:5673/", Scheme::AMQP).unwrap();
        assert_eq!(
            (plain.tls, plain.host.as_str(), plain.port),
            (false, "127.0.0.1", 5673)
        );
        let v6 = Endpoint::parse("amqp://[::1]:5672", Scheme::AMQP).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5672));
        assert!(Endpoint::parse("amqp://user:pw@host:5672", Scheme::AMQP).is_err());
        let error =
            Endpoint::parse_named("amqps://user:s3cret@host:5671", Scheme::AMQP).unwrap_err();
        assert!(error.contains("credentials do not belong"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert!(Endpoint::parse("amqp://host:port", Scheme::AMQP).is_err());
        assert!(Endpoint::parse("http://host", Scheme::AMQP).is_err());
    }

    #[test]
    fn bodies_and_properties_become_bytes_and_text() {
        let data = Body::Data(
            vec![
                Data(b"{\"a\":".to_vec().into()),
                Data(b"1}".to_vec().into()),
            ]
            .into(),
        );
        assert_eq!(body_bytes(data), b"{\"a\":1}");
        let text = Body::Value(AmqpValue(Value::String("hello".into())));
        assert_eq!(body_bytes(text), b"hello");
        assert_eq!(
            property_text(SimpleValue::Long(1700000000999)).as_deref(),
            Some("1700000000999")
        );
        assert_eq!(
            property_text(SimpleValue::String("m-1".into())).as_deref(),
            Some("m-1")
        );
        assert_eq!(property_text(SimpleValue::Null), None);
    }
}
