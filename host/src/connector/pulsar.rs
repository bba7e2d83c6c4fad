//! The `tuya-pulsar` and `tuya-business` connectors: Tuya's message service, a customised
//! Apache Pulsar.
//!
//! Authentication is Tuya's `auth1` method (the access id and a password derived from the
//! access key), the topic `persistent://{accessId}/out/event` (or `event-test`), a Failover
//! subscription `{accessId}-sub`. The encryption mode travels in the `em` message property,
//! which is handed to the decoder with the payload.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use pulsar::consumer::ConsumerOptions;
use pulsar::error::{ConnectionError, ConsumerError, ServiceDiscoveryError};
use pulsar::proto::{MessageIdData, ServerError};
use pulsar::{
    Authentication, ConnectionRetryOptions, Consumer, OperationRetryOptions, Pulsar, SubType,
    TokioExecutor,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Backoff, Connector, Context, Ended, Kind, Sessions, Start, TuyaKeys, reconnecting};
use crate::config::{ConfigError, Expanded, Table};
use crate::dialect::{Dialect, DialectName, tuya};
use crate::endpoint::{Endpoint, Scheme};
use crate::pipeline::Closed;
use crate::pipeline::{Acker, Delivery, Settle};
use crate::sync::lock;

/// Messages each partition's consumer may hold ahead of the pipeline at most (the FLOW
/// permits it grants the broker, and the size of its receive queue).
const RECEIVER_QUEUE: u32 = 1000;
/// The message size the read-ahead is sized for: Tuya's messages are under 4 KiB. The crate
/// counts read-ahead in messages, not bytes, so `buffer_bytes` becomes a number of permits
/// by this size (between 10 and [`RECEIVER_QUEUE`]).
const READ_AHEAD_MESSAGE: usize = 16 * 1024;
/// How long a stopping connector keeps its consumer to acknowledge what is still in flight.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A session that lasted this long worked, even without a message: the backoff starts over.
const WORKED_AFTER: Duration = Duration::from_secs(60);
/// A connection probe (and, with a short `stall_timeout`, a ping) that takes longer than this
/// failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Messages each partition consumer may read ahead of the pipeline.
    pub receiver_queue: u32,
    /// Bytes of messages the pipeline may hold from this connector before it stops reading
    /// (`buffer_bytes`).
    pub buffer_bytes: usize,
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
            .field("receiver_queue", &self.receiver_queue)
            .field("buffer_bytes", &self.buffer_bytes)
            .finish()
    }
}

/// The Tuya message service kinds: `tuya-pulsar` (the IoT Core envelope, or
/// `dialect = "tuya-business"`) and `tuya-business` (the Smart Business envelope).
pub const KIND: Kind = Kind {
    names: &["tuya-pulsar", "tuya-business"],
    read: |table| super::configured(PulsarSettings::read(table)),
};

/// A Tuya connector's own keys (besides [`TuyaKeys`]).
#[derive(Deserialize)]
#[serde(default)]
struct PulsarConfig {
    /// `tuya` or `tuya-business` (a `tuya-business` connector carries only the latter).
    dialect: Option<DialectName>,
    /// The broker URL, overriding the one `region` gives (`pulsar+ssl://host:port`,
    /// `pulsar://…`).
    url: Option<Expanded>,
    /// A PEM file of CA certificates trusted besides the system's.
    ca_file: Option<Expanded>,
    /// The data centre (`cn`, `us`, `us-east`, `eu`, `eu-west`, `in`).
    region: Option<Expanded>,
    /// The production (`prod`) or test (`test`) message channel.
    env: tuya::Env,
    /// The subscription is `{access_id}-{subscription_suffix}`.
    subscription_suffix: Expanded,
    /// Rebuild the consumer when no message arrived for this long, in seconds (0: never).
    /// Pulsar consumers are known to stop silently after a connection loss; a rebuilt one
    /// gets the unacknowledged messages again, and duplicates are dropped by event id.
    stall_timeout_s: u64,
    /// Bytes of messages read ahead of the pipeline at most (as a number of messages by
    /// [`READ_AHEAD_MESSAGE`]).
    buffer_bytes: usize,
}

impl Default for PulsarConfig {
    fn default() -> Self {
        PulsarConfig {
            dialect: None,
            url: None,
            ca_file: None,
            region: None,
            env: tuya::Env::default(),
            subscription_suffix: Expanded::from("sub"),
            stall_timeout_s: 300,
            buffer_bytes: super::default_buffer_bytes(),
        }
    }
}

impl PulsarSettings {
    /// Checks a `tuya-pulsar` or `tuya-business` connector's table and derives its settings.
    pub fn from_config(table: &Table) -> Result<Self, ConfigError> {
        Self::read(table).map(|(_, settings)| settings)
    }

    /// The dialect and the settings of a `tuya-pulsar` or `tuya-business` connector's table.
    fn read(table: &Table) -> Result<(Dialect, Self), ConfigError> {
        let (config, tuya) = table.read_both::<PulsarConfig, TuyaKeys>()?;
        let carried: &[DialectName] = match table.kind.as_str() {
            "tuya-business" => &[DialectName::TuyaBusiness],
            _ => &[DialectName::Tuya, DialectName::TuyaBusiness],
        };
        let keys = tuya.keys(table)?;
        let dialect = super::dialect_name(table, carried, config.dialect)?.build(
            tuya.sign,
            false,
            || Ok(keys.clone()),
            || Err(table.invalid("the Tuya dialects take no `device_topic`")),
        )?;
        table.required(&tuya.access_id, "access_id")?;
        Ok((dialect, PulsarSettings::derive(table, &config, keys)?))
    }
}

impl Connector for PulsarSettings {
    fn files(&self) -> Vec<(PathBuf, &'static str)> {
        super::ca_file(&self.ca_file)
    }

    fn identity(&self, _now_ms: u64) -> Vec<(String, String)> {
        PulsarSettings::identity(self)
    }

    fn start(&self, _name: &str, _runtime: &tokio::runtime::Handle) -> Start {
        let settings = self.clone();
        Start::receiving(move |context| run(settings, context))
    }
}

impl PulsarSettings {
    /// Derives the settings from the connector's own keys and its Tuya `keys` (whose access
    /// id the caller checked is given).
    fn derive(table: &Table, config: &PulsarConfig, keys: tuya::Keys) -> Result<Self, ConfigError> {
        let url = match (&config.url, &config.region) {
            (Some(url), _) => {
                let url = url.as_str();
                Endpoint::parse_named(url, Scheme::PULSAR).map_err(|e| table.invalid(e))?;
                url.to_owned()
            }
            (None, Some(region)) => region
                .as_str()
                .parse::<tuya::Region>()
                .map_err(|e| table.invalid(format!("region: {e}")))?
                .pulsar_url()
                .to_owned(),
            (None, None) => {
                return Err(table.invalid(
                    "a Tuya connector needs `region` (cn, us, us-east, eu, eu-west, in) or `url`",
                ));
            }
        };
        let suffix = config.subscription_suffix.as_str();
        if suffix.is_empty() {
            return Err(table.invalid("subscription_suffix must not be empty"));
        }
        Ok(PulsarSettings {
            url,
            topic: keys.topic(config.env),
            subscription: keys.subscription(suffix),
            keys,
            ca_file: config.ca_file.as_ref().map(|f| table.path(f)),
            stall_timeout: (config.stall_timeout_s > 0)
                .then(|| Duration::from_secs(config.stall_timeout_s)),
            receiver_queue: u32::try_from(config.buffer_bytes / READ_AHEAD_MESSAGE)
                .unwrap_or(u32::MAX)
                .clamp(10, RECEIVER_QUEUE),
            buffer_bytes: config.buffer_bytes,
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

    /// How often the supervisor checks the consumer: often enough to notice a stall well
    /// within `stall_timeout`, at most every 15 s.
    fn check_interval(&self) -> Duration {
        self.stall_timeout
            .map_or(Duration::from_secs(15), |stall| stall / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(15))
    }

    fn tls(&self) -> bool {
        self.url.starts_with("pulsar+ssl://")
    }
}

/// A delivery being handed to the pipeline (which may wait while it is full).
type Submitting<'a> = Pin<Box<dyn Future<Output = Result<(), Closed>> + Send + 'a>>;

/// A settlement on its way from the pipeline to the task that owns the consumer: `None` when
/// the delivery was dropped unsettled (the service stopping), which only wakes the task up.
type Settlement = (String, MessageIdData, Option<Settle>);

/// A message as the broker identifies it on the subscription: its partition's topic and id.
type Key = (String, u64, u64, Option<i32>);

fn key(topic: &str, id: &MessageIdData) -> Key {
    (topic.to_owned(), id.ledger_id, id.entry_id, id.batch_index)
}

/// What outlives a session: the messages the pipeline holds, and the channel their
/// settlements come back on. A settlement made after its session ended is acknowledged on
/// the next consumer (message ids stay valid on the subscription), and a message the broker
/// delivers again while the pipeline still holds it is not handed over a second time: its
/// first copy's settlement acknowledges it. (Handing it over would let the pipeline take it
/// for a duplicate and ack it at once, before the first copy is processed.)
struct Pending {
    held: Arc<Mutex<HashSet<Key>>>,
    /// Bytes of the messages in `held`.
    bytes: Arc<AtomicUsize>,
    settlements: mpsc::UnboundedSender<Settlement>,
    settled: mpsc::UnboundedReceiver<Settlement>,
}

impl Pending {
    fn new() -> Self {
        let (settlements, settled) = mpsc::unbounded_channel();
        Pending {
            held: Arc::default(),
            bytes: Arc::default(),
            settlements,
            settled,
        }
    }

    fn is_empty(&self) -> bool {
        lock(&self.held).is_empty()
    }
}

/// Sends a delivery's settlement to the consumer's task, and releases its key either way
/// (settled, or dropped unsettled).
struct Settler {
    key: Option<Key>,
    id: MessageIdData,
    held: Arc<Mutex<HashSet<Key>>>,
    /// The message's size, counted in `bytes` while it is held.
    size: usize,
    bytes: Arc<AtomicUsize>,
    settlements: mpsc::UnboundedSender<Settlement>,
}

impl Settler {
    fn send(mut self, how: Option<Settle>) {
        if let Some(key) = self.key.take() {
            lock(&self.held).remove(&key);
            self.bytes.fetch_sub(self.size, Ordering::Relaxed);
            // After the connector stopped nobody listens: the broker redelivers the message.
            let _ = self.settlements.send((key.0, self.id.clone(), how));
        }
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.held).remove(&key);
            self.bytes.fetch_sub(self.size, Ordering::Relaxed);
            let _ = self.settlements.send((key.0, self.id.clone(), None));
        }
    }
}

/// Runs the connector until the service stops: a supervisor that builds a client and a
/// consumer, receives until the connection fails or the consumer stalls, and rebuilds them
/// after a backoff pause (1 s doubling to 60 s with jitter, reset after a session that
/// worked). A refused authentication is retried the same way: the credentials may be fixed
/// on the console while the service runs, and the other connectors keep running meanwhile.
///
/// Acknowledgement: each message is acked once the pipeline settled it `Ack` (processed, or
/// stored as a dead letter), negative-acked (redelivered by the broker) when it settled it
/// `Retry`, and left unacknowledged when its session ended first: the broker delivers it
/// again to the rebuilt consumer, and the pipeline drops the duplicate by event id.
pub async fn run(settings: PulsarSettings, mut context: Context) -> anyhow::Result<()> {
    crate::tls::install_provider();
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut pending = Pending::new();
    let mut sessions = PulsarSessions {
        settings: &settings,
        pending: &mut pending,
    };
    reconnecting(&mut context, backoff, &mut sessions).await?;
    context.stopped();
    Ok(())
}

/// The connector's sessions, one after another, and what they still hold of the pipeline's.
struct PulsarSessions<'a> {
    settings: &'a PulsarSettings,
    pending: &'a mut Pending,
}

impl Sessions for PulsarSessions<'_> {
    async fn session(&mut self, context: &mut Context) -> Ended {
        match session(self.settings, context, self.pending).await {
            Ended::Fatal(error) => Ended::Fatal(format!("{}: {error}", context.place())),
            ended => ended,
        }
    }
}

/// One client and consumer, from connecting to losing them (or stopping).
async fn session(settings: &PulsarSettings, context: &mut Context, pending: &mut Pending) -> Ended {
    let mut shutdown = context.shutdown.clone();
    let client = tokio::select! {
        client = connect(settings) => client,
        _ = shutdown.changed() => return Ended::Stopping,
    };
    let client = match client {
        Ok(client) => client,
        Err(ended) => return ended,
    };
    let subscribing = client
        .consumer()
        .with_topic(&settings.topic)
        .with_subscription(&settings.subscription)
        .with_subscription_type(SubType::Failover)
        .with_consumer_name(format!("iotrules-{}", context.name()))
        .with_batch_size(settings.receiver_queue)
        .with_options(ConsumerOptions::default().with_receiver_queue_size(settings.receiver_queue))
        .build::<Vec<u8>>();
    let consumer = tokio::select! {
        consumer = subscribing => consumer,
        _ = shutdown.changed() => return Ended::Stopping,
    };
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = match consumer {
        Ok(consumer) => consumer,
        Err(e) => {
            return Ended::Lost {
                error: explain(settings, "cannot subscribe", &e),
                worked: false,
            };
        }
    };
    let partitions = consumer.topics().len();
    tracing::info!(
        connector = %context.name(),
        topic = %settings.topic,
        subscription = %settings.subscription,
        partitions,
        "Subscribed"
    );
    context.connected();
    let ended = receive(settings, context, &mut consumer, partitions, pending).await;
    // Best effort: tell the broker now rather than when the connection times out, so the
    // next consumer of the Failover subscription takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
    ended
}

/// Builds the client: `auth1` credentials, TLS trust, and short in-crate retries (the
/// supervisor does the long ones, with backoff and reporting).
async fn connect(settings: &PulsarSettings) -> Result<Pulsar<TokioExecutor>, Ended> {
    let mut builder = Pulsar::builder(settings.url.as_str(), TokioExecutor)
        .with_auth(Authentication {
            name: tuya::AUTH_METHOD.to_owned(),
            data: settings.keys.pulsar_auth_data().into_bytes(),
        })
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retries: 2,
            connection_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            ..ConnectionRetryOptions::default()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            max_retries: Some(3),
        });
    if settings.tls() {
        let chain = trust_chain(settings.ca_file.as_deref()).map_err(Ended::Fatal)?;
        builder = builder.with_certificate_chain(chain);
    }
    match builder.build().await {
        Ok(client) => Ok(client),
        Err(e) => {
            // The crate folds every non-retryable handshake failure (a refused CONNECT, a
            // TLS error) into one "fatal error" and logs the cause: ask the broker ourselves.
            let error = match probe(settings).await {
                Some(found) => found,
                None => explain(settings, "cannot connect", &e),
            };
            Err(Ended::Lost {
                error,
                worked: false,
            })
        }
    }
}

/// Why a connection fails, found by doing the first step ourselves: TCP, TLS with the
/// connector's trust (system roots and `ca_file`), and a CONNECT with the `auth1`
/// credentials. `None` if all of it works (the failure was further on).
async fn probe(settings: &PulsarSettings) -> Option<String> {
    let endpoint = match Endpoint::parse_named(&settings.url, Scheme::PULSAR) {
        Ok(endpoint) => endpoint,
        Err(error) => return Some(error),
    };
    let address = endpoint.address();
    let connecting = tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(&address));
    let stream = match connecting.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Some(format!("cannot connect to {address}: {e}")),
        Err(_) => {
            return Some(format!(
                "cannot connect to {address}: no answer in {} s",
                CHECK_TIMEOUT.as_secs()
            ));
        }
    };
    if !settings.tls() {
        return handshake(settings, stream).await;
    }
    let config = match crate::tls::client_config(settings.ca_file.as_deref()) {
        Ok(config) => config,
        Err(e) => return Some(e.to_string()),
    };
    let name = match rustls::pki_types::ServerName::try_from(endpoint.host.clone()) {
        Ok(name) => name,
        Err(e) => {
            return Some(format!(
                "{} is not a valid TLS server name: {e}",
                endpoint.host
            ));
        }
    };
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    match tokio::time::timeout(CHECK_TIMEOUT, tls).await {
        Ok(Ok(stream)) => handshake(settings, stream).await,
        Ok(Err(e)) => Some(format!("TLS with {address} failed: {e}")),
        Err(_) => Some(format!(
            "TLS with {address}: no answer in {} s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// Sends CONNECT with the credentials and reads the broker's answer.
async fn handshake<S>(settings: &PulsarSettings, stream: S) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::SinkExt as _;
    use pulsar::message::{Codec, Message, proto};
    let mut framed = tokio_util::codec::Framed::new(stream, Codec);
    let connect = Message {
        command: proto::BaseCommand {
            r#type: proto::base_command::Type::Connect as i32,
            connect: Some(proto::CommandConnect {
                client_version: format!("iotrules {}", env!("CARGO_PKG_VERSION")),
                auth_method_name: Some(tuya::AUTH_METHOD.to_owned()),
                auth_data: Some(settings.keys.pulsar_auth_data().into_bytes()),
                protocol_version: Some(12),
                ..Default::default()
            }),
            ..Default::default()
        },
        payload: None,
    };
    if let Err(e) = framed.send(connect).await {
        return Some(format!("cannot talk to the broker: {e}"));
    }
    let answer = match tokio::time::timeout(CHECK_TIMEOUT, framed.next()).await {
        Ok(Some(Ok(answer))) => answer,
        Ok(Some(Err(e))) => {
            return Some(format!("the broker's answer to CONNECT is unreadable: {e}"));
        }
        Ok(None) => return Some("the broker closed the connection after CONNECT".into()),
        Err(_) => {
            return Some(format!(
                "the broker did not answer CONNECT in {} s",
                CHECK_TIMEOUT.as_secs()
            ));
        }
    };
    let error = answer.command.error?;
    let code = ServerError::try_from(error.error).ok();
    if matches!(
        code,
        Some(ServerError::AuthenticationError | ServerError::AuthorizationError)
    ) {
        return Some(format!(
            "{} (the broker says: {})",
            refused(settings),
            error.message
        ));
    }
    Some(format!(
        "the broker refused the connection ({code:?}): {}",
        error.message
    ))
}

/// The message for refused credentials.
fn refused(settings: &PulsarSettings) -> String {
    format!(
        "authentication refused by the broker: check access_id/access_key; username {}",
        settings.keys.access_id()
    )
}

/// The extra trust anchors handed to the pulsar crate, as PEM: the system's roots and the
/// `ca_file`'s certificates. The crate always trusts its compiled-in Mozilla roots
/// (`webpki-roots`) and adds these; it verifies the host name.
fn trust_chain(ca_file: Option<&Path>) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let mut certificates: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            // The crate refuses the whole chain if one certificate is not a usable anchor.
            .filter(|cert| rustls::RootCertStore::empty().add(cert.clone()).is_ok())
            .collect();
    if let Some(path) = ca_file {
        let extra = crate::tls::read_certificates(path).map_err(|e| e.to_string())?;
        for cert in &extra {
            if let Err(e) = rustls::RootCertStore::empty().add(cert.clone()) {
                return Err(format!(
                    "ca_file {}: a certificate is not a usable CA: {e}",
                    path.display()
                ));
            }
        }
        certificates.extend(extra);
    }
    let mut pem = Vec::new();
    for cert in certificates {
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}

/// Receives until the session ends: hands each message to the pipeline (waiting while it is
/// full, which stops the reading and so the FLOW permits), settles what the pipeline
/// settled, and checks the consumer on a timer.
async fn receive(
    settings: &PulsarSettings,
    context: &mut Context,
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    partitions: usize,
    pending: &mut Pending,
) -> Ended {
    // Messages the crate has ready are queued on the workers without waking them; they are
    // woken once it has none (the last branch of the loop).
    let ingest = context.ingest.deferring();
    let mut submitting: Option<Submitting<'_>> = None;
    let started = tokio::time::Instant::now();
    let mut received = false;
    let mut last_message = started;
    let mut read_since_check = false;
    let mut checks = tokio::time::interval(settings.check_interval());
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checks.reset();
    let mut shutdown = context.shutdown.clone();
    let buffer_full = context.metrics.buffer_full.with(&[context.name()]);
    let mut was_full = false;
    let lost = |error: String, received: bool| Ended::Lost {
        error,
        worked: received || started.elapsed() >= WORKED_AFTER,
    };
    loop {
        // The pipeline holds `buffer_bytes` of this connector's messages: read no further
        // until it settles some (the crate's queue fills and its FLOW permits stop).
        let full = pending.bytes.load(Ordering::Relaxed) >= settings.buffer_bytes;
        if full && !was_full {
            buffer_full.inc();
        }
        was_full = full;
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                // A delivery still waiting for the pipeline is dropped unsettled: the broker
                // delivers it again after the restart.
                drop(submitting.take());
                return finish(consumer, pending).await;
            }
            Some(first) = pending.settled.recv() => {
                // Every settlement already made, in one turn of the loop: the pipeline
                // settles in bursts, and a turn per acknowledgement cost more than the
                // acknowledgement.
                let mut next = Some(first);
                while let Some((topic, id, how)) = next {
                    if let Err(e) = settle(consumer, &topic, id, how).await {
                        return lost(format!("cannot acknowledge: {e}"), received);
                    }
                    next = pending.settled.try_recv().ok();
                }
            }
            submitted = async {
                match submitting.as_mut() {
                    Some(submit) => submit.await,
                    None => std::future::pending().await,
                }
            } => {
                submitting = None;
                if submitted.is_err() {
                    // The pipeline closed: the service is stopping.
                    return finish(consumer, pending).await;
                }
            }
            next = consumer.next(), if submitting.is_none() && !full => match next {
                Some(Ok(message)) => {
                    received = true;
                    read_since_check = true;
                    last_message = tokio::time::Instant::now();
                    if let Some(delivery) = delivery(message, pending) {
                        submitting = Some(Box::pin(ingest.submit(delivery)));
                    }
                }
                Some(Err(e)) => return lost(explain(settings, "the consumer failed", &e), received),
                None => return lost("the consumer's stream ended".into(), received),
            },
            _ = checks.tick() => {
                // Holding back (a submission waiting, or the byte budget full) starves the
                // consumer on purpose: that is no stall, and no time for a ping either. The
                // crate's consumer engine answers the ping's request for its connection only
                // between messages, and it waits on its full queue to us meanwhile, so the
                // ping would go unanswered and cost the session. A consumer that delivered
                // since the last check is alive without one.
                let holding_back = submitting.is_some() || full;
                let ping = !holding_back && !std::mem::take(&mut read_since_check);
                if let Some(stall) = settings.stall_timeout
                    && !holding_back
                    && last_message.elapsed() >= stall
                {
                    let error = format!(
                        "no message for {} s: rebuilding the consumer (stall_timeout_s)",
                        stall.as_secs()
                    );
                    return lost(error, received);
                }
                if let Some(error) = check(settings, consumer, partitions, ping).await {
                    return lost(error, received);
                }
            }
            () = std::future::ready(()), if ingest.owes_wake() => ingest.wake_workers(),
        }
    }
}

/// What is wrong with a consumer, if anything: a partition whose consumer ended (the crate
/// drops it and carries on with the others, silently), or, with `ping`, a connection that
/// does not answer a ping.
async fn check(
    settings: &PulsarSettings,
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    partitions: usize,
    ping: bool,
) -> Option<String> {
    let live = consumer.topics().len();
    if live < partitions {
        return Some(format!(
            "the consumers of {} of {partitions} partitions stopped",
            partitions - live
        ));
    }
    if !ping {
        return None;
    }
    let timeout = (settings.check_interval() * 2).clamp(Duration::from_secs(1), CHECK_TIMEOUT);
    match tokio::time::timeout(timeout, consumer.check_connection()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(explain(settings, "the connection check failed", &e)),
        Err(_) => Some(format!(
            "the connection check got no answer in {:.1} s",
            timeout.as_secs_f64()
        )),
    }
}

/// A message as a delivery: its payload, its properties (`em`, `tid`, …) in the order the
/// producer set them, and an acker that sends the settlement to the consumer's task. `None`
/// when the pipeline still holds an earlier copy of the same message.
fn delivery(message: pulsar::consumer::Message<Vec<u8>>, pending: &Pending) -> Option<Delivery> {
    let pulsar::consumer::Message {
        topic,
        payload,
        message_id,
        ..
    } = message;
    let id = message_id.id;
    let key = key(&topic, &id);
    if !lock(&pending.held).insert(key.clone()) {
        tracing::debug!(%topic, entry = id.entry_id, "Redelivered while still in the pipeline");
        return None;
    }
    let properties = payload
        .metadata
        .properties
        .into_iter()
        .map(|p| (p.key, p.value))
        .collect();
    let size = payload.data.len();
    pending.bytes.fetch_add(size, Ordering::Relaxed);
    let settler = Settler {
        key: Some(key),
        id,
        held: pending.held.clone(),
        size,
        bytes: pending.bytes.clone(),
        settlements: pending.settlements.clone(),
    };
    Some(Delivery {
        payload: payload.data,
        properties,
        acker: Acker::new(move |how| settler.send(Some(how))),
    })
}

async fn settle(
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    topic: &str,
    id: MessageIdData,
    how: Option<Settle>,
) -> Result<(), ConsumerError> {
    match how {
        Some(Settle::Ack) => consumer.ack_with_id(topic, id).await,
        Some(Settle::Retry) => consumer.nack_with_id(topic, id).await,
        None => Ok(()),
    }
}

/// Stopping: no more reading, but what the pipeline still settles within [`STOP_GRACE`] is
/// acknowledged; the rest is delivered again after the restart.
async fn finish(consumer: &mut Consumer<Vec<u8>, TokioExecutor>, pending: &mut Pending) -> Ended {
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    loop {
        // Settlements already sent, then wait for the rest while the pipeline holds any.
        while let Ok((topic, id, how)) = pending.settled.try_recv() {
            if settle(consumer, &topic, id, how).await.is_err() {
                return Ended::Stopping;
            }
        }
        if pending.is_empty() {
            return Ended::Stopping;
        }
        match tokio::time::timeout_at(deadline, pending.settled.recv()).await {
            Ok(Some((topic, id, how))) => {
                if settle(consumer, &topic, id, how).await.is_err() {
                    return Ended::Stopping;
                }
            }
            Ok(None) | Err(_) => return Ended::Stopping,
        }
    }
}

/// A client error as the operator should read it, naming what failed; a refused
/// authentication says which credentials to check.
fn explain(settings: &PulsarSettings, what: &str, error: &pulsar::Error) -> String {
    if refused_authentication(error) {
        return format!("{} ({error})", refused(settings));
    }
    format!("{what} ({}): {error}", settings.url)
}

fn refused_authentication(error: &pulsar::Error) -> bool {
    let connection = match error {
        pulsar::Error::Connection(e)
        | pulsar::Error::Consumer(ConsumerError::Connection(e))
        | pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Connection(e)) => e,
        pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(
            Some(ServerError::AuthenticationError | ServerError::AuthorizationError),
            _,
        )) => return true,
        pulsar::Error::Authentication(_) => return true,
        _ => return false,
    };
    matches!(
        connection,
        ConnectionError::PulsarError(
            Some(ServerError::AuthenticationError | ServerError::AuthorizationError),
            _
        ) | ConnectionError::Authentication(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::Plan;

    const KEY: &str = "secretKEY0123456789abcdefXYZ";

    fn settings(extra: &str) -> PulsarSettings {
        let text = format!(
            r#"
            rules = "r"
            plugins = "p"
            [[connector]]
            name = "tuya"
            kind = "tuya-pulsar"
            access_id = "accessid1"
            access_key = "{KEY}"
            {extra}
            [[command_path]]
            name = "out"
            kind = "log"
            "#
        );
        let config = Config::parse(Path::new("/etc/iot/iotrules.toml"), &text).unwrap();
        PulsarSettings::from_config(&config.connectors[0]).unwrap()
    }

    #[test]
    fn regions_topic_and_subscription_follow_tuyas_conventions() {
        let eu = settings("region = \"eu\"\nenv = \"test\"\nsubscription_suffix = \"b\"");
        assert_eq!(eu.url, "pulsar+ssl://mqe.tuyaeu.com:7285/");
        assert_eq!(eu.topic, "persistent://accessid1/out/event-test");
        assert_eq!(eu.subscription, "accessid1-b");
        let own = settings("url = \"pulsar://127.0.0.1:6650\"");
        assert_eq!(own.topic, "persistent://accessid1/out/event");
        assert_eq!(own.subscription, "accessid1-sub");
        assert!(!own.tls() && eu.tls());
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_showing_it() {
        let text = format!(
            "[[connector]]\nname = \"tuya\"\nkind = \"tuya-pulsar\"\naccess_id = \"accessid1\"\n\
             access_key = \"{KEY}\"\nurl = \"pulsar+ssl://me:s3cret@mqe.tuyaeu.com:7285\"\n"
        );
        let error = Plan::parse(Path::new("x.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(error.contains("credentials do not belong"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        let error = Plan::parse(
            Path::new("x.toml"),
            &text.replace("pulsar+ssl://", "http://"),
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn neither_debug_nor_identity_shows_the_key() {
        let settings = settings("region = \"us\"");
        let shown = format!("{settings:?} {:?}", settings.identity());
        assert!(shown.contains("accessid1"), "{shown}");
        assert!(!shown.contains(KEY), "{shown}");
        assert!(!shown.contains(&settings.keys.pulsar_password()), "{shown}");
    }

    #[test]
    fn the_stall_check_runs_often_enough_to_notice_a_stall() {
        let mut settings = settings("region = \"cn\"");
        assert_eq!(settings.stall_timeout, Some(Duration::from_secs(300)));
        assert_eq!(settings.check_interval(), Duration::from_secs(15));
        settings.stall_timeout = Some(Duration::from_secs(2));
        assert_eq!(settings.check_interval(), Duration::from_millis(500));
        settings.stall_timeout = None;
        assert_eq!(settings.check_interval(), Duration::from_secs(15));
    }

    #[test]
    fn the_trust_chain_carries_the_ca_file_and_names_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = trust_chain(Some(&missing)).unwrap_err();
        assert!(error.contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(trust_chain(Some(&empty)).unwrap_err().contains("empty.pem"));
        let system = trust_chain(None).unwrap();
        let pem = String::from_utf8(system).unwrap();
        assert_eq!(
            pem.matches("-----BEGIN CERTIFICATE-----").count(),
            pem.matches("-----END CERTIFICATE-----").count()
        );
    }
}
