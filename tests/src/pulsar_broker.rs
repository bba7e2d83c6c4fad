//! A small Pulsar broker for the `tuya-pulsar` tests: the real binary protocol (the `pulsar`
//! crate's protobuf types and frame codec) over TCP or TLS, one partitioned topic, one
//! Failover subscription, and the behaviour the connector depends on:
//!
//! - CONNECT checks Tuya's `auth1` credentials (`{"username","password"}` JSON) and answers an
//!   ERROR (AuthenticationError) to anything else, then closes;
//! - PARTITIONED_METADATA gives the topic its partitions, LOOKUP points back at this broker;
//! - SUBSCRIBE, FLOW permits (a consumer gets no more messages than it asked for), MESSAGE with
//!   the metadata properties (`em`, `tid`, …), individual ACKs (recorded, in order),
//!   REDELIVER_UNACKNOWLEDGED_MESSAGES, CLOSE_CONSUMER, PING/PONG;
//! - messages delivered and not acknowledged go back to the queue when their consumer leaves
//!   (closes, or its connection drops) and are delivered again to the next one.
//!
//! Messages survive [`PulsarBroker::stop`] and [`PulsarBroker::restart`] (same port), as a
//! persistent topic's do. It is a test peer: no producers, no batches, one subscription.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt as _, StreamExt as _};
use pulsar::message::proto::{self, base_command::Type};
use pulsar::message::{Codec, Message, Payload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// A process-wide order of events: the broker stamps each ACK with it, and a test stamps what
/// it observes (a command sent for an event) with it, to compare "processed" with "acked".
pub fn sequence() -> u64 {
    static SEQUENCE: AtomicU64 = AtomicU64::new(1);
    SEQUENCE.fetch_add(1, Ordering::SeqCst)
}

/// Where a message is: its partition and entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub partition: usize,
    pub entry: u64,
}

/// An acknowledgement the broker received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub id: MessageId,
    /// [`sequence`] when it arrived.
    pub at: u64,
}

pub use crate::tls::TestCa;

/// How the broker is set up.
pub struct BrokerConfig {
    /// The `auth1` username (the access id) and password it accepts.
    pub username: String,
    pub password: String,
    /// The partitioned topic, e.g. `persistent://{accessId}/out/event`.
    pub topic: String,
    pub partitions: usize,
    /// Serve TLS with this CA's server certificate.
    pub tls: Option<Arc<TestCa>>,
}

struct Stored {
    payload: Vec<u8>,
    properties: Vec<(String, String)>,
    redeliveries: u32,
}

/// One consumer attached to a partition.
struct Attached {
    connection: u64,
    /// Its connection went silent ([`PulsarBroker::mute_connections`]).
    muted: Arc<AtomicBool>,
    consumer_id: u64,
    permits: u32,
    frames: mpsc::UnboundedSender<Message>,
}

#[derive(Default)]
struct Partition {
    messages: Vec<Stored>,
    /// Entries waiting to be delivered (new, or given back), in order.
    queued: BTreeSet<u64>,
    /// Delivered and not yet acknowledged.
    unacked: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    /// Failover: the first is the active consumer, the others wait.
    consumers: Vec<Attached>,
}

impl Partition {
    /// Sends queued messages to the active consumer while it has permits.
    fn pump(&mut self, index: usize) {
        let Some(active) = self.consumers.first_mut() else {
            return;
        };
        if active.muted.load(Ordering::SeqCst) {
            return;
        }
        while active.permits > 0 {
            let Some(entry) = self.queued.pop_first() else {
                return;
            };
            let stored = &self.messages[entry as usize];
            let message = Message {
                command: proto::BaseCommand {
                    r#type: Type::Message as i32,
                    message: Some(proto::CommandMessage {
                        consumer_id: active.consumer_id,
                        message_id: message_id(index, entry),
                        redelivery_count: Some(stored.redeliveries),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                payload: Some(Payload {
                    metadata: proto::MessageMetadata {
                        producer_name: "test-broker".into(),
                        sequence_id: entry,
                        publish_time: 1_700_000_000_000 + entry,
                        properties: stored
                            .properties
                            .iter()
                            .map(|(key, value)| proto::KeyValue {
                                key: key.clone(),
                                value: value.clone(),
                            })
                            .collect(),
                        ..Default::default()
                    },
                    data: stored.payload.clone(),
                }),
            };
            if active.frames.send(message).is_err() {
                self.queued.insert(entry);
                return;
            }
            active.permits -= 1;
            self.unacked.insert(entry);
        }
    }

    /// Gives every delivered, unacknowledged message back to the queue.
    fn give_back_all(&mut self) {
        for entry in std::mem::take(&mut self.unacked) {
            self.give_back(entry);
        }
    }

    fn give_back(&mut self, entry: u64) {
        self.unacked.remove(&entry);
        if let Some(stored) = self.messages.get_mut(entry as usize) {
            stored.redeliveries += 1;
            self.queued.insert(entry);
        }
    }
}

struct State {
    partitions: Vec<Partition>,
    next_partition: usize,
    acks: Vec<Acked>,
    connections: HashMap<u64, (JoinHandle<()>, Arc<AtomicBool>)>,
    next_connection: u64,
    refused: usize,
    subscribes: usize,
}

struct Shared {
    config: BrokerConfig,
    /// The port it listens on (restarts keep it): lookups point here.
    port: u16,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The broker: a listener on 127.0.0.1 and the topic's messages.
pub struct PulsarBroker {
    shared: Arc<Shared>,
    address: SocketAddr,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl PulsarBroker {
    /// Starts on a free port (must run inside a tokio runtime).
    pub async fn start(config: BrokerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let partitions = (0..config.partitions)
            .map(|_| Partition::default())
            .collect();
        let shared = Arc::new(Shared {
            config,
            port: address.port(),
            state: Mutex::new(State {
                partitions,
                next_partition: 0,
                acks: Vec::new(),
                connections: HashMap::new(),
                next_connection: 1,
                refused: 0,
                subscribes: 0,
            }),
        });
        let accepting = tokio::spawn(accept(listener, shared.clone()));
        PulsarBroker {
            shared,
            address,
            listener: Mutex::new(Some(accepting)),
        }
    }

    /// The service URL for clients: `pulsar://127.0.0.1:PORT` or
    /// `pulsar+ssl://localhost:PORT` (the certificate's name).
    pub fn url(&self) -> String {
        match self.shared.config.tls {
            Some(_) => format!("pulsar+ssl://localhost:{}", self.address.port()),
            None => format!("pulsar://127.0.0.1:{}", self.address.port()),
        }
    }

    /// Appends a message to `partition` (or the next one, round-robin) and delivers it if a
    /// consumer has permits.
    pub fn publish(
        &self,
        partition: Option<usize>,
        payload: impl Into<Vec<u8>>,
        properties: &[(&str, &str)],
    ) -> MessageId {
        let mut state = self.shared.state();
        let count = state.partitions.len();
        let index = partition.unwrap_or_else(|| {
            state.next_partition = (state.next_partition + 1) % count;
            state.next_partition
        }) % count;
        let part = &mut state.partitions[index];
        let entry = part.messages.len() as u64;
        part.messages.push(Stored {
            payload: payload.into(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            redeliveries: 0,
        });
        part.queued.insert(entry);
        part.pump(index);
        MessageId {
            partition: index,
            entry,
        }
    }

    /// Every ACK received, in order (an id acked twice appears twice).
    pub fn acks(&self) -> Vec<Acked> {
        self.shared.state().acks.clone()
    }

    /// Whether `id` was acknowledged.
    pub fn is_acked(&self, id: MessageId) -> bool {
        let state = self.shared.state();
        state.partitions[id.partition].acked.contains(&id.entry)
    }

    /// How many messages are acknowledged.
    pub fn acked_count(&self) -> usize {
        let state = self.shared.state();
        state.partitions.iter().map(|p| p.acked.len()).sum()
    }

    /// How many CONNECTs were refused for bad credentials.
    pub fn refused(&self) -> usize {
        self.shared.state().refused
    }

    /// How many SUBSCRIBEs were accepted.
    pub fn subscribes(&self) -> usize {
        self.shared.state().subscribes
    }

    /// Drops every client connection (the listener stays): what a broker restart or a network
    /// cut looks like to the client. Unacknowledged messages go back to the queue.
    pub fn kill_connections(&self) {
        let connections: Vec<JoinHandle<()>> = {
            let mut state = self.shared.state();
            state
                .connections
                .drain()
                .map(|(_, (task, _))| task)
                .collect()
        };
        for task in connections {
            task.abort();
        }
    }

    /// Makes every open connection silent: it stays open, but nothing more is sent on it (no
    /// messages, no PONGs, no answers): the half-dead connection after which Pulsar clients
    /// are known to stop receiving. New connections are served normally.
    pub fn mute_connections(&self) {
        let state = self.shared.state();
        for (_, muted) in state.connections.values() {
            muted.store(true, Ordering::SeqCst);
        }
    }

    /// Stops listening and drops every connection; the messages stay.
    pub fn stop(&self) {
        if let Some(listener) = self.listener.lock().unwrap().take() {
            listener.abort();
        }
        self.kill_connections();
    }

    /// Listens again on the same port after [`stop`](Self::stop).
    pub async fn restart(&self) {
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                // The aborted listener's socket closes asynchronously.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        let accepting = tokio::spawn(accept(listener, self.shared.clone()));
        *self.listener.lock().unwrap() = Some(accepting);
    }
}

impl Drop for PulsarBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn message_id(partition: usize, entry: u64) -> proto::MessageIdData {
    proto::MessageIdData {
        ledger_id: 1,
        entry_id: entry,
        partition: Some(partition as i32),
        ..Default::default()
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let mut state = shared.state();
        let id = state.next_connection;
        state.next_connection += 1;
        let muted = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(connection(stream, id, muted.clone(), shared.clone()));
        state.connections.insert(id, (task, muted));
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    id: u64,
    muted: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    match shared.config.tls.clone() {
        Some(ca) => {
            let acceptor = ca.acceptor();
            if let Ok(stream) = acceptor.accept(stream).await {
                serve(stream, id, muted, shared).await;
            }
        }
        None => serve(stream, id, muted, shared).await,
    }
}

/// Releases a connection's consumers when it ends, however it ends (closed, failed, or
/// aborted by `kill_connections`).
struct Detach {
    shared: Arc<Shared>,
    connection: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.connections.remove(&self.connection);
        for (index, partition) in state.partitions.iter_mut().enumerate() {
            let was_active = partition
                .consumers
                .first()
                .is_some_and(|c| c.connection == self.connection);
            partition
                .consumers
                .retain(|c| c.connection != self.connection);
            if was_active {
                partition.give_back_all();
                partition.pump(index);
            }
        }
    }
}

async fn serve<S>(stream: S, connection: u64, muted: Arc<AtomicBool>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _detach = Detach {
        shared: shared.clone(),
        connection,
    };
    let (mut sink, mut frames) = Framed::new(stream, Codec).split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
    let silent = muted.clone();
    let writer = async move {
        while let Some(message) = outgoing.recv().await {
            if silent.load(Ordering::SeqCst) {
                continue;
            }
            if sink.send(message).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        // The first frame must be a CONNECT with good credentials.
        let Some(Ok(first)) = frames.next().await else {
            return;
        };
        if let Err(reason) = authenticate(&shared.config, &first.command) {
            shared.state().refused += 1;
            let _ = out.send(command(
                Type::Error,
                proto::BaseCommand {
                    error: Some(proto::CommandError {
                        request_id: 0,
                        error: proto::ServerError::AuthenticationError as i32,
                        message: reason,
                    }),
                    ..Default::default()
                },
            ));
            // Let the writer flush the error, then close.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            return;
        }
        let _ = out.send(command(
            Type::Connected,
            proto::BaseCommand {
                connected: Some(proto::CommandConnected {
                    server_version: "iotrules-test-broker".into(),
                    protocol_version: Some(12),
                    max_message_size: Some(5 * 1024 * 1024),
                }),
                ..Default::default()
            },
        ));
        // consumer id on this connection → partition
        let mut consumers: HashMap<u64, usize> = HashMap::new();
        while let Some(Ok(frame)) = frames.next().await {
            let link = Link {
                id: connection,
                muted: &muted,
                out: &out,
            };
            if !handle(&shared, &link, &mut consumers, frame.command) {
                break;
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

fn authenticate(config: &BrokerConfig, first: &proto::BaseCommand) -> Result<(), String> {
    let Some(connect) = &first.connect else {
        return Err("the first command must be CONNECT".into());
    };
    if connect.auth_method_name.as_deref() != Some("auth1") {
        return Err(format!(
            "auth method {:?} is not supported (auth1 is)",
            connect.auth_method_name
        ));
    }
    let data = connect.auth_data.as_deref().unwrap_or_default();
    let credentials: serde_json::Value =
        serde_json::from_slice(data).map_err(|_| "auth data is not JSON".to_owned())?;
    if credentials["username"] == config.username.as_str()
        && credentials["password"] == config.password.as_str()
    {
        Ok(())
    } else {
        Err("Unable to authenticate".into())
    }
}

fn command(kind: Type, mut base: proto::BaseCommand) -> Message {
    base.r#type = kind as i32;
    Message {
        command: base,
        payload: None,
    }
}

fn success(request_id: u64) -> Message {
    command(
        Type::Success,
        proto::BaseCommand {
            success: Some(proto::CommandSuccess {
                request_id,
                schema: None,
            }),
            ..Default::default()
        },
    )
}

fn error(request_id: u64, error: proto::ServerError, message: String) -> Message {
    command(
        Type::Error,
        proto::BaseCommand {
            error: Some(proto::CommandError {
                request_id,
                error: error as i32,
                message,
            }),
            ..Default::default()
        },
    )
}

/// The partition a topic name denotes: `{topic}-partition-N`.
fn partition_of(config: &BrokerConfig, topic: &str) -> Option<usize> {
    let index: usize = topic
        .strip_prefix(config.topic.as_str())?
        .strip_prefix("-partition-")?
        .parse()
        .ok()?;
    (index < config.partitions).then_some(index)
}

/// The connection a command came on.
struct Link<'a> {
    id: u64,
    muted: &'a Arc<AtomicBool>,
    out: &'a mpsc::UnboundedSender<Message>,
}

/// Handles one command; false closes the connection.
fn handle(
    shared: &Shared,
    link: &Link<'_>,
    consumers: &mut HashMap<u64, usize>,
    base: proto::BaseCommand,
) -> bool {
    let (connection, out) = (link.id, link.out);
    let config = &shared.config;
    let reply = |message: Message| out.send(message).is_ok();
    if base.ping.is_some() {
        return reply(command(
            Type::Pong,
            proto::BaseCommand {
                pong: Some(proto::CommandPong {}),
                ..Default::default()
            },
        ));
    }
    if base.pong.is_some() {
        return true;
    }
    if let Some(request) = base.partition_metadata {
        let partitions = if request.topic == config.topic {
            config.partitions as u32
        } else {
            0
        };
        return reply(command(
            Type::PartitionedMetadataResponse,
            proto::BaseCommand {
                partition_metadata_response: Some(proto::CommandPartitionedTopicMetadataResponse {
                    partitions: Some(partitions),
                    request_id: request.request_id,
                    response: Some(
                        proto::command_partitioned_topic_metadata_response::LookupType::Success
                            as i32,
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
    }
    if let Some(request) = base.lookup_topic {
        let port = shared.port;
        return reply(command(
            Type::LookupResponse,
            proto::BaseCommand {
                lookup_topic_response: Some(proto::CommandLookupTopicResponse {
                    broker_service_url: Some(format!("pulsar://127.0.0.1:{port}")),
                    broker_service_url_tls: Some(format!("pulsar+ssl://localhost:{port}")),
                    response: Some(
                        proto::command_lookup_topic_response::LookupType::Connect as i32,
                    ),
                    request_id: request.request_id,
                    authoritative: Some(true),
                    proxy_through_service_url: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
    }
    if let Some(request) = base.subscribe {
        let Some(index) = partition_of(config, &request.topic) else {
            return reply(error(
                request.request_id,
                proto::ServerError::TopicNotFound,
                format!("topic {} not found", request.topic),
            ));
        };
        let mut state = shared.state();
        state.subscribes += 1;
        consumers.insert(request.consumer_id, index);
        state.partitions[index].consumers.push(Attached {
            connection,
            muted: link.muted.clone(),
            consumer_id: request.consumer_id,
            permits: 0,
            frames: out.clone(),
        });
        return reply(success(request.request_id));
    }
    if let Some(flow) = base.flow {
        if let Some(&index) = consumers.get(&flow.consumer_id) {
            let mut state = shared.state();
            let partition = &mut state.partitions[index];
            if let Some(attached) = partition
                .consumers
                .iter_mut()
                .find(|c| c.connection == connection && c.consumer_id == flow.consumer_id)
            {
                attached.permits = attached.permits.saturating_add(flow.message_permits);
            }
            partition.pump(index);
        }
        return true;
    }
    if let Some(ack) = base.ack {
        if let Some(&index) = consumers.get(&ack.consumer_id) {
            let mut state = shared.state();
            for id in &ack.message_id {
                let entry = id.entry_id;
                let partition = &mut state.partitions[index];
                if (entry as usize) < partition.messages.len() {
                    partition.unacked.remove(&entry);
                    partition.queued.remove(&entry);
                    partition.acked.insert(entry);
                    state.acks.push(Acked {
                        id: MessageId {
                            partition: index,
                            entry,
                        },
                        at: sequence(),
                    });
                }
            }
        }
        if let Some(request_id) = ack.request_id {
            return reply(command(
                Type::AckResponse,
                proto::BaseCommand {
                    ack_response: Some(proto::CommandAckResponse {
                        consumer_id: ack.consumer_id,
                        request_id: Some(request_id),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ));
        }
        return true;
    }
    if let Some(redeliver) = base.redeliver_unacknowledged_messages {
        if let Some(&index) = consumers.get(&redeliver.consumer_id) {
            let mut state = shared.state();
            let partition = &mut state.partitions[index];
            if redeliver.message_ids.is_empty() {
                partition.give_back_all();
            } else {
                for id in &redeliver.message_ids {
                    if partition.unacked.contains(&id.entry_id) {
                        partition.give_back(id.entry_id);
                    }
                }
            }
            partition.pump(index);
        }
        return true;
    }
    if let Some(close) = base.close_consumer {
        if let Some(index) = consumers.remove(&close.consumer_id) {
            let mut state = shared.state();
            let partition = &mut state.partitions[index];
            let was_active = partition
                .consumers
                .first()
                .is_some_and(|c| c.connection == connection && c.consumer_id == close.consumer_id);
            partition
                .consumers
                .retain(|c| !(c.connection == connection && c.consumer_id == close.consumer_id));
            if was_active {
                partition.give_back_all();
                partition.pump(index);
            }
        }
        return reply(success(close.request_id));
    }
    // Anything else with a request id gets an error rather than silence.
    if let Some(request_id) = request_id_of(&base) {
        return reply(error(
            request_id,
            proto::ServerError::NotAllowedError,
            format!(
                "the test broker does not handle command type {}",
                base.r#type
            ),
        ));
    }
    true
}

fn request_id_of(base: &proto::BaseCommand) -> Option<u64> {
    if let Some(c) = &base.get_last_message_id {
        return Some(c.request_id);
    }
    if let Some(c) = &base.consumer_stats {
        return Some(c.request_id);
    }
    if let Some(c) = &base.unsubscribe {
        return Some(c.request_id);
    }
    if let Some(c) = &base.seek {
        return Some(c.request_id);
    }
    if let Some(c) = &base.get_topics_of_namespace {
        return Some(c.request_id);
    }
    if let Some(c) = &base.producer {
        return Some(c.request_id);
    }
    None
}
