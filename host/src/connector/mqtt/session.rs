//! The link's MQTT 3.1.1 session over rumqttc's packet codec: connecting and logging in,
//! subscribing, receiving publishes for the pipeline, sending the command path's publishes
//! and reconnecting.

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

use super::link::{LinkHandle, Outgoing};
use super::{Credentials, MAX_PACKET, MqttSettings};
use crate::connector::{Backoff, Context, Ended, Sessions, reconnecting, tls_connector};
use crate::pipeline;

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

/// Runs the link's connections until the service stops, reconnecting with backoff.
pub async fn run(
    settings: MqttSettings,
    handle: Arc<LinkHandle>,
    mut context: Context,
) -> anyhow::Result<()> {
    let tls = tls_connector(&context, &settings.endpoint, settings.ca_file.as_deref())?;
    let mut sessions = LinkSessions {
        settings: &settings,
        tls: tls.as_ref(),
        handle: &handle,
    };
    reconnecting(
        &mut context,
        Backoff::new(FIRST_PAUSE, MAX_PAUSE),
        &mut sessions,
    )
    .await?;
    // The handle keeps the last connection: a stopping link drains on it (Session::drain).
    context.stopped();
    Ok(())
}

/// The link's connections, one after another.
struct LinkSessions<'a> {
    settings: &'a MqttSettings,
    tls: Option<&'a tokio_rustls::TlsConnector>,
    handle: &'a Arc<LinkHandle>,
}

impl Sessions for LinkSessions<'_> {
    async fn session(&mut self, context: &mut Context) -> Ended {
        let mut connection = Connection {
            settings: self.settings,
            tls: self.tls,
            context,
            handle: self.handle,
        };
        let ended = connection.run().await;
        if let Ended::Lost { .. } = ended {
            self.handle.set(None);
        }
        ended
    }
}

/// A byte stream to the broker, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long leaving a connection on purpose waits for the broker to close it.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

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

    /// Leaves the connection so that what was written reaches the broker: DISCONNECT, the
    /// write side shut, and whatever the broker still sends read and dropped until it closes
    /// (at most [`CLOSE_WAIT`]). Dropping a socket with unread bytes in it resets the
    /// connection, and a broker that sees the reset may lose the PUBACKs it had not yet read,
    /// then send those publishes again at the next connection: duplicates.
    async fn close(&mut self) {
        if self.send(Packet::Disconnect).await.is_err() || self.stream.shutdown().await.is_err() {
            return;
        }
        let mut scratch = [0u8; 8192];
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while matches!(self.stream.read(&mut scratch).await, Ok(read) if read > 0) {}
        })
        .await;
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
    context: &'a mut Context,
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
    async fn serve(&mut self, keep_alive: Duration, context: &mut Context) -> Ended {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut submitting: Option<Submitting> = None;
        loop {
            loop {
                let packet = match self.wire.next_packet() {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(error) => return Ended::lost(error),
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
                // The PUBACKs just written must reach the broker, or it sends those again too.
                self.wire.close().await;
                return Ended::lost(format!(
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
                    // The run is one burst: the workers are woken once, when it is in (or
                    // when a submission has to wait), as the run's handle drops.
                    let ingest = ingest.deferring();
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
                                    return Ended::lost(error);
                                }
                            }
                            Settled::Again(publish) => self.received.again(publish),
                        }
                        next = self.acks.try_recv().ok();
                    }
                    if let Err(error) = self.wire.flush().await {
                        return Ended::lost(error);
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
                        return Ended::lost(error);
                    }
                }
                Some(outgoing) = self.requests.recv(), if self.waiting.len() < self.window => {
                    if let Err(error) = self.publish_all(outgoing).await {
                        return Ended::lost(error);
                    }
                }
                _ = ping.tick() => {
                    if self.awaiting_pong {
                        return Ended::lost(format!(
                            "no PINGRESP within the keep-alive of {} s",
                            keep_alive.as_secs()
                        ));
                    }
                    self.awaiting_pong = true;
                    if let Err(error) = self.wire.send(Packet::PingReq).await {
                        return Ended::lost(error);
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
            Packet::Disconnect => return Some(Ended::lost("the broker disconnected")),
            _ => {}
        }
        None
    }

    /// Sends `outgoing` and the publishes requested behind it, as many as the window takes,
    /// in one write; each QoS 1 publish waits for its PUBACK in `waiting`, a QoS 0 one is
    /// done once written. On an error the session ends, and with it every publish waiting.
    ///
    /// When no more are requested, the session lets the runtime's other tasks run once
    /// before it writes: the command lanes woken by the same group of events hand theirs
    /// over meanwhile, and they go in the same write. Without it a write carried 2 publishes
    /// on average in `bench mqtt` at QoS 0, with it 6, and the link's runtime thread spent
    /// 10% less CPU per message (a quarter of it had been in `sendto`).
    async fn publish_all(&mut self, outgoing: Outgoing) -> Result<(), String> {
        let mut written = Vec::new();
        let mut yielded = false;
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
                match self.requests.try_recv().ok() {
                    // Once per write: what a yield finds here came with the same group.
                    None if !yielded => {
                        yielded = true;
                        tokio::task::yield_now().await;
                        self.requests.try_recv().ok()
                    }
                    next => next,
                }
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
