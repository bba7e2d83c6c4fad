//! The event pipeline: delivery → decode → de-duplicate → rules → commands → acknowledge.
//!
//! - **Intake** ([`Ingest::submit`], called by a connector): takes a slot of the in-flight
//!   budget (waiting while the pipeline is full: backpressure), decodes the delivery with the
//!   connector's dialect, drops a duplicate event id, and queues the event on the worker that
//!   owns its device. A message that does not decode goes to the dead letters, then is acked.
//! - **Workers** (threads, `workers` of them): each owns an instance of every rule's plugin
//!   chain and takes the events of its devices in arrival order, so events of one device are
//!   handled one after another, in order, while devices spread over the workers (with
//!   `order = "connector"`, a connector's events all stay on one worker, in order). Every rule
//!   whose `when` and `if` take the event runs, independently of the others. Commands are
//!   queued on their paths in the order the rules emitted them.
//! - **Completion**: the delivery is acknowledged only when every matching rule has finished,
//!   every command has been confirmed by its path, and every dead letter is stored. A command
//!   its path gives up on becomes a dead letter (kind `command`); a dead letter that cannot be
//!   stored makes the delivery go back for another try rather than be lost.
//! - **Shutdown** ([`Pipeline::drain`]): once the connectors stop submitting, the workers
//!   finish their queues and the pipeline waits for the last acknowledgement.

mod dedup;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub use self::dedup::Dedup;
use crate::command::{CommandPaths, Confirmation};
use crate::config::{Order, PipelineConfig};
use crate::connector::{Acker, Delivery, Settle};
use crate::event::{ATTR_SIGNATURE, Command, Event};
use crate::metrics::{Counter, Histogram, Metrics};
use crate::plugin::Registry;
use crate::rules::{EventScope, OnError, RefusedCommand, RuleOutcome, RuleRuntime, RuleSet, Rules};
use crate::status::LastErrors;
use crate::sync::lock;
use crate::vendor::tuya::SignatureCheck;
use crate::vendor::{Dialect, ErrorKind, RawMessage, SignMode};

/// A message the service could not process, as it goes to the dead-letter store.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// The connector that received it.
    pub connector: Arc<str>,
    /// Its dialect.
    pub vendor: &'static str,
    /// Its transport properties.
    pub properties: Vec<(String, String)>,
    /// The message exactly as received.
    pub payload: Vec<u8>,
    /// The error kind: a decode kind (`signature`, `decrypt`, …), `plugin:KIND`
    /// (`plugin:deadline`, …), `condition` or `command`.
    pub kind: String,
    /// The whole error message.
    pub message: String,
    /// The rule that failed on it.
    pub rule: Option<String>,
    /// The failed step, from 1.
    pub step: Option<u32>,
    /// The event's id, when it decoded.
    pub event_id: Option<String>,
    /// When it was stored, Unix ms.
    pub time_ms: u64,
}

/// Where dead letters are kept. `store` is called off the async threads and may block.
pub trait DeadLetterSink: Send + Sync {
    /// Stores one; an error means it is not stored (the delivery is retried).
    fn store(&self, letter: &DeadLetterRecord) -> Result<(), String>;

    /// Hands the sink's own counters (evictions) to the service's metrics, once at start.
    fn register_metrics(&self, _metrics: &crate::metrics::Metrics) {}
}

/// Dead letters kept in memory (tests, benches, `iotrules test`).
#[derive(Debug, Default)]
pub struct MemoryDeadLetters(Mutex<Vec<DeadLetterRecord>>);

impl MemoryDeadLetters {
    /// What was stored so far.
    pub fn letters(&self) -> Vec<DeadLetterRecord> {
        lock(&self.0).clone()
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    fn store(&self, letter: &DeadLetterRecord) -> Result<(), String> {
        lock(&self.0).push(letter.clone());
        Ok(())
    }
}

/// The pipeline stopped taking deliveries (shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline has shut down")]
pub struct Closed;

struct Shared {
    rules: Arc<Rules>,
    registry: Arc<Registry>,
    paths: CommandPaths,
    dead_letters: Arc<dyn DeadLetterSink>,
    metrics: Arc<Metrics>,
    errors: Arc<LastErrors>,
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
    /// Ids seen, and the copies of those still in flight.
    seen: Mutex<Seen>,
    runtime: tokio::runtime::Handle,
    hasher: std::collections::hash_map::RandomState,
    order: Order,
    redelivery: Redelivery,
    /// Failed attempts at finishing a message, by [`attempt_key`].
    attempts: Mutex<Attempts>,
}

/// The running pipeline: its workers and the way in.
pub struct Pipeline {
    shared: Arc<Shared>,
    senders: Vec<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

/// What a pipeline needs besides its settings.
pub struct Parts {
    /// The rules in service.
    pub rules: Arc<Rules>,
    /// The plugins they use.
    pub registry: Arc<Registry>,
    /// Where commands go.
    pub paths: CommandPaths,
    /// Where dead letters go.
    pub dead_letters: Arc<dyn DeadLetterSink>,
    /// The service's metrics.
    pub metrics: Arc<Metrics>,
    /// The service's recent errors, for `/status`.
    pub errors: Arc<LastErrors>,
}

/// Tuya signature mismatches of one connector: counted, and the first one under `warn`
/// logged (once: every later one is only counted, and `/status` keeps showing the count).
struct SignatureWatch {
    mode: SignMode,
    mismatches: Arc<Counter>,
    warned: AtomicBool,
}

impl SignatureWatch {
    /// For a connector decoding with `dialect`; `None` when nothing is checked.
    fn new(metrics: &Metrics, connector: &str, dialect: &Dialect) -> Option<Self> {
        let mode = dialect.sign_mode().filter(|mode| *mode != SignMode::Off)?;
        Some(SignatureWatch {
            mode,
            mismatches: metrics.signature_mismatches.with(&[connector]),
            warned: AtomicBool::new(false),
        })
    }

    /// Counts a mismatch that `warn` let through, and says so the first time.
    fn passed(&self, connector: &str) {
        self.mismatches.inc();
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                connector,
                "A Tuya envelope signature did not match and the message was processed anyway \
                 (sign = \"warn\", the default). Further mismatches are only counted \
                 (iotrules_signature_mismatches_total, /status); check the access key, and set \
                 sign = \"enforce\" once the count stays at zero"
            );
        }
    }
}

/// A connector's resolved counters.
struct ConnectorCounters {
    events_in: Arc<Counter>,
    events_out: Arc<Counter>,
    refused: Arc<Counter>,
    duplicate: Arc<Counter>,
    no_rule: Arc<Counter>,
    dropped_by_rules: Arc<Counter>,
}

impl ConnectorCounters {
    fn new(metrics: &Metrics, connector: &str) -> Self {
        let dropped = |reason| metrics.events_dropped.with(&[connector, reason]);
        ConnectorCounters {
            events_in: metrics.events_in.with(&[connector]),
            events_out: metrics.events_out.with(&[connector]),
            refused: dropped("refused"),
            duplicate: dropped("duplicate"),
            no_rule: dropped("no-rule"),
            dropped_by_rules: dropped("rules"),
        }
    }
}

/// Where a delivery came from, kept with its event for dead letters.
struct Origin {
    connector: Arc<str>,
    vendor: &'static str,
    payload: Vec<u8>,
    properties: Vec<(String, String)>,
    counters: Arc<ConnectorCounters>,
}

/// The event ids the pipeline has seen.
///
/// A transport may deliver a message again while its first copy is still in flight (Alibaba
/// redelivers what is unsettled after about 30 s; a command path with retries can hold the
/// first copy longer). Acknowledging the copy at once would lose the message if the first
/// then went back for a retry, or the process died: the transport would have forgotten it.
/// So a copy of an id in flight is held, and settles the way the first copy settles, when it
/// does; a copy of an id already done is acknowledged.
struct Seen {
    dedup: Dedup,
    /// The ids whose first copy is in flight, with the copies that arrived meanwhile.
    in_flight: HashMap<Box<str>, Vec<Pending>>,
}

/// The acknowledgement side of a delivery in flight: settling it returns its in-flight slot.
struct Pending {
    acker: Acker,
    _permit: OwnedSemaphorePermit,
    received: Instant,
    dedup_id: Option<String>,
}

struct Job {
    event: Event,
    origin: Origin,
    pending: Pending,
}

impl Pipeline {
    /// Starts the workers. Commands and dead-letter writes run on `runtime`.
    pub fn start(
        settings: &PipelineConfig,
        parts: Parts,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<Pipeline> {
        let max_in_flight = u32::try_from(settings.max_in_flight)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let shared = Arc::new(Shared {
            rules: parts.rules,
            registry: parts.registry,
            paths: parts.paths,
            dead_letters: parts.dead_letters,
            metrics: parts.metrics,
            errors: parts.errors,
            in_flight: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            seen: Mutex::new(Seen {
                dedup: Dedup::new(
                    Duration::from_secs(settings.dedup_window_s),
                    settings.dedup_capacity,
                ),
                in_flight: HashMap::new(),
            }),
            runtime,
            hasher: Default::default(),
            order: settings.order,
            redelivery: Redelivery {
                attempts: settings.redelivery_attempts,
                first_delay: Duration::from_millis(settings.redelivery_delay_ms),
            },
            attempts: Mutex::new(Attempts::default()),
        });
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for index in 0..settings.workers.max(1) {
            let (sender, receiver) = mpsc::channel(settings.queue.max(1));
            let shared = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("iotrules-worker-{index}"))
                    .spawn(move || Worker::new(shared).run(receiver))?,
            );
            senders.push(sender);
        }
        Ok(Pipeline {
            shared,
            senders,
            workers,
        })
    }

    /// The way in for a connector named `connector`, decoding with `dialect`.
    pub fn ingest(&self, connector: &str, dialect: Dialect) -> Ingest {
        Ingest {
            shared: self.shared.clone(),
            senders: self.senders.clone(),
            connector: Arc::from(connector),
            signature: SignatureWatch::new(&self.shared.metrics, connector, &dialect).map(Arc::new),
            dialect: Arc::new(dialect),
            counters: Arc::new(ConnectorCounters::new(&self.shared.metrics, connector)),
        }
    }

    /// Events received and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.shared.max_in_flight as usize - self.shared.in_flight.available_permits()
    }

    /// Stops taking events once every [`Ingest`] is dropped, lets the workers finish what
    /// is queued, and waits up to `timeout` for the last acknowledgement. True when
    /// everything in flight was settled; false when the timeout cut it short (what was not
    /// acknowledged is delivered again by its transport).
    pub async fn drain(self, timeout: Duration) -> bool {
        let Pipeline {
            shared,
            senders,
            workers,
        } = self;
        drop(senders);
        let deadline = tokio::time::Instant::now() + timeout;
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        });
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            return false;
        }
        let all = shared.in_flight.clone();
        matches!(
            tokio::time::timeout_at(deadline, all.acquire_many_owned(shared.max_in_flight)).await,
            Ok(Ok(_))
        )
    }
}

/// A connector's way into the pipeline. Cheap to clone; the pipeline stops when every clone
/// is dropped and [`Pipeline::drain`] is called.
#[derive(Clone)]
pub struct Ingest {
    shared: Arc<Shared>,
    senders: Vec<mpsc::Sender<Job>>,
    connector: Arc<str>,
    dialect: Arc<Dialect>,
    counters: Arc<ConnectorCounters>,
    signature: Option<Arc<SignatureWatch>>,
}

impl Ingest {
    /// The connector's name.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// Takes one delivery; waits while the pipeline is full. The delivery is settled later,
    /// through its acker, when the pipeline is done with it.
    pub async fn submit(&self, delivery: Delivery) -> Result<(), Closed> {
        let permit = self.slot().await?;
        self.submit_with(delivery, permit, None).await
    }

    /// A slot of the in-flight budget, waiting while the pipeline is full.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, Closed> {
        self.shared
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Closed)
    }

    /// Takes a message the connector could not read itself (an AMQP message its client
    /// cannot decode): it goes to the dead letters as `kind` with `message` and what of it
    /// could be read, and is then settled like any refused message (acknowledged once
    /// stored). Waits while the pipeline is full.
    pub async fn refuse(
        &self,
        delivery: Delivery,
        kind: &'static str,
        message: String,
    ) -> Result<(), Closed> {
        let permit = self.slot().await?;
        self.submit_with(delivery, permit, Some((kind, message)))
            .await
    }

    async fn submit_with(
        &self,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
        unreadable: Option<(&'static str, String)>,
    ) -> Result<(), Closed> {
        let shared = &self.shared;
        shared.metrics.in_flight.inc();
        self.counters.events_in.inc();
        let Delivery {
            payload,
            properties,
            acker,
        } = delivery;
        let mut pending = Pending {
            acker,
            _permit: permit,
            received: Instant::now(),
            dedup_id: None,
        };
        let origin = Origin {
            connector: self.connector.clone(),
            vendor: self.dialect.name(),
            payload,
            properties,
            counters: self.counters.clone(),
        };
        if let Some((kind, message)) = unreadable {
            self.refused(pending, origin, kind, message);
            return Ok(());
        }
        let decoded = self.dialect.decode(
            &RawMessage::new(&self.connector, &origin.payload).with_properties(&origin.properties),
        );
        let event = match decoded {
            Ok(event) => {
                if let Some(watch) = &self.signature
                    && watch.mode == SignMode::Warn
                    && event.attribute(ATTR_SIGNATURE) == Some(SignatureCheck::Mismatch.as_str())
                {
                    watch.passed(&self.connector);
                }
                event
            }
            Err(error) => {
                if let Some(watch) = &self.signature
                    && error.kind() == ErrorKind::Signature
                {
                    watch.mismatches.inc();
                }
                self.refused(pending, origin, error.kind().as_str(), error.to_string());
                return Ok(());
            }
        };
        {
            let mut seen = lock(&shared.seen);
            if seen.dedup.first_time(&event.id, pending.received) {
                seen.in_flight.entry(event.id.as_str().into()).or_default();
                pending.dedup_id = Some(event.id.clone());
            } else {
                self.counters.duplicate.inc();
                tracing::debug!(
                    target: "iotrules::event",
                    connector = &*self.connector,
                    id = %event.id,
                    "Duplicate event dropped"
                );
                match seen.in_flight.get_mut(event.id.as_str()) {
                    // Settled with the first copy.
                    Some(copies) => copies.push(pending),
                    None => {
                        drop(seen);
                        finish(shared, pending, Ok(()));
                    }
                }
                return Ok(());
            }
        }
        let worker = match self.shared.order {
            Order::Device => self.worker_for(&event.device.id),
            Order::Connector => self.worker_for(&self.connector),
        };
        self.senders[worker]
            .send(Job {
                event,
                origin,
                pending,
            })
            .await
            .map_err(|_| Closed)
    }

    /// A message that will not become an event: counted, reported, stored as a dead letter
    /// of `kind`, then settled.
    fn refused(&self, pending: Pending, origin: Origin, kind: &str, message: String) {
        self.counters.refused.inc();
        tracing::warn!(
            connector = &*self.connector,
            kind,
            "Message refused, stored as a dead letter: {message}"
        );
        self.shared
            .errors
            .push(format!("connector \"{}\"", self.connector), &message);
        let letter = letter(&origin, kind, message, None);
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            conclude(&shared, pending, vec![letter], &origin).await;
        });
    }

    fn worker_for(&self, key: &str) -> usize {
        (self.shared.hasher.hash_one(key) % self.senders.len() as u64) as usize
    }
}

/// Settles a delivery, and the copies of it that arrived while it was in flight: acked when
/// `done` is ok, sent back for a retry otherwise (its id is then forgotten by the
/// de-duplication, so the redelivery is not taken for a duplicate).
fn finish(shared: &Shared, pending: Pending, done: Result<(), ()>) {
    let Pending {
        acker,
        _permit,
        received,
        dedup_id,
    } = pending;
    let how = if done.is_ok() {
        Settle::Ack
    } else {
        Settle::Retry
    };
    let copies = dedup_id.map_or_else(Vec::new, |id| {
        let mut seen = lock(&shared.seen);
        if how == Settle::Retry {
            seen.dedup.forget(&id);
        }
        seen.in_flight.remove(id.as_str()).unwrap_or_default()
    });
    acker.settle(how);
    shared.metrics.event_latency.observe(received.elapsed());
    shared.metrics.in_flight.dec();
    for copy in copies {
        finish(shared, copy, done);
    }
}

fn letter(
    origin: &Origin,
    kind: &str,
    message: String,
    event_id: Option<&str>,
) -> DeadLetterRecord {
    DeadLetterRecord {
        connector: origin.connector.clone(),
        vendor: origin.vendor,
        properties: origin.properties.clone(),
        payload: origin.payload.clone(),
        kind: kind.to_owned(),
        message,
        rule: None,
        step: None,
        event_id: event_id.map(str::to_owned),
        time_ms: crate::time::now_ms(),
    }
}

/// Stores `letters`; Err when any could not be stored.
async fn store_letters(
    shared: &Arc<Shared>,
    letters: &Arc<Vec<DeadLetterRecord>>,
) -> Result<(), ()> {
    if letters.is_empty() {
        return Ok(());
    }
    let letters = letters.clone();
    let sink = shared.dead_letters.clone();
    let metrics = shared.metrics.clone();
    let errors = shared.errors.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let mut ok = true;
        for letter in letters.iter() {
            match sink.store(letter) {
                Ok(()) => metrics
                    .dead_letters
                    .with(&[&letter.connector, &letter.kind])
                    .inc(),
                Err(reason) => {
                    ok = false;
                    tracing::error!(
                        connector = &*letter.connector,
                        "Cannot store a dead letter; the message goes back to its connector \
                         for another try: {reason}"
                    );
                    errors.push("dead-letter store".into(), &reason);
                }
            }
        }
        ok
    })
    .await;
    match stored {
        Ok(true) => Ok(()),
        _ => Err(()),
    }
}

/// How messages that cannot be finished go back to their transport.
#[derive(Debug, Clone, Copy)]
struct Redelivery {
    /// Deliveries sent back before the pipeline holds the message instead.
    attempts: u32,
    /// The pause before the first redelivery; doubled for each further one.
    first_delay: Duration,
}

/// The longest pause before a redelivery, or between two tries of a held message.
const MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(60);

impl Redelivery {
    /// The pause after the `failed`-th failed attempt (from 1).
    fn delay(&self, failed: u32) -> Duration {
        self.first_delay
            .saturating_mul(1 << failed.saturating_sub(1).min(16))
            .min(MAX_REDELIVERY_DELAY)
    }
}

/// Failed attempts at finishing messages, counted across their redeliveries.
///
/// A redelivered message is a new delivery, and its event id may be new too (a receipt id),
/// so the count is keyed by the connector and the message's bytes. Bounded: past
/// [`Attempts::CAPACITY`] keys the counts start over, which costs a few more (still delayed)
/// redeliveries, never a lost message.
#[derive(Debug, Default)]
struct Attempts(HashMap<[u8; 16], u32>);

impl Attempts {
    const CAPACITY: usize = 10_000;

    /// Counts one more failure of `key`; returns how many there have been.
    fn failed(&mut self, key: [u8; 16]) -> u32 {
        if self.0.len() >= Self::CAPACITY && !self.0.contains_key(&key) {
            self.0.clear();
        }
        let count = self.0.entry(key).or_default();
        *count += 1;
        *count
    }

    fn forget(&mut self, key: &[u8; 16]) {
        self.0.remove(key);
    }
}

/// What identifies a message across its redeliveries: its connector and bytes.
fn attempt_key(origin: &Origin) -> [u8; 16] {
    use md5::Digest as _;
    let mut digest = md5::Md5::new();
    digest.update(origin.connector.as_bytes());
    digest.update([0]);
    digest.update(&origin.payload);
    digest.finalize().into()
}

/// Finishes a message once its rules are done: stores its dead letters, then acknowledges
/// it. When the store refuses them, the message goes back to its transport after a pause
/// that doubles with each failure, `redelivery.attempts` times at most (so a failing store
/// never spins a core redelivering it); after that the pipeline holds the message, unsettled
/// and counted in `iotrules_events_held`, and tries the store again with the same backoff
/// until it takes the letters: never dropped, and while held messages fill the in-flight
/// budget, intake waits.
async fn conclude(
    shared: &Arc<Shared>,
    pending: Pending,
    letters: Vec<DeadLetterRecord>,
    origin: &Origin,
) {
    let letters = Arc::new(letters);
    if store_letters(shared, &letters).await.is_ok() {
        finish(shared, pending, Ok(()));
        return;
    }
    let key = attempt_key(origin);
    let failed = lock(&shared.attempts).failed(key);
    if failed <= shared.redelivery.attempts {
        let delay = shared.redelivery.delay(failed);
        tracing::warn!(
            connector = &*origin.connector,
            failed,
            delay_ms = delay.as_millis() as u64,
            "Message goes back to its transport after a pause: its dead letters cannot be stored"
        );
        tokio::time::sleep(delay).await;
        finish(shared, pending, Err(()));
        return;
    }
    shared.metrics.events_held.inc();
    let message = format!(
        "a message of connector \"{}\" is held: its dead letters were refused {} times; the \
         pipeline keeps it and tries the store again",
        origin.connector, failed
    );
    tracing::error!(connector = &*origin.connector, "{message}");
    shared.errors.push("pipeline".into(), &message);
    let mut tries = failed;
    loop {
        tokio::time::sleep(shared.redelivery.delay(tries)).await;
        if store_letters(shared, &letters).await.is_ok() {
            break;
        }
        tries = tries.saturating_add(1);
    }
    tracing::info!(
        connector = &*origin.connector,
        "A held message is stored as a dead letter and acknowledged"
    );
    lock(&shared.attempts).forget(&key);
    shared.metrics.events_held.dec();
    finish(shared, pending, Ok(()));
}

/// A command queued on its path, waiting for confirmation.
struct Queued {
    path: String,
    /// The command's device and name, for the error message.
    command: Command,
    /// The rule that emitted it.
    rule: Arc<str>,
    confirmation: Confirmation,
    sent: Arc<Counter>,
    failed: Arc<Counter>,
    rule_sent: Arc<Counter>,
    rule_failed: Arc<Counter>,
}

/// Resolved per-rule counters.
struct RuleCounters {
    matches: Arc<Counter>,
    passed: Arc<Counter>,
    dropped: Arc<Counter>,
    dead_letter: Arc<Counter>,
    dropped_on_error: Arc<Counter>,
}

struct Worker {
    shared: Arc<Shared>,
    set: Option<Arc<RuleSet>>,
    runtimes: Vec<RuleRuntime>,
    retry_instantiate_at: Option<Instant>,
    /// The counters of `runtimes`' rules, index for index.
    rule_counters: Vec<RuleCounters>,
    plugin_calls: HashMap<Arc<str>, Arc<Histogram>>,
    commands_sent: HashMap<String, (Arc<Counter>, Arc<Counter>)>,
    /// `iotrules_rule_commands_total` by rule: sent, failed.
    rule_commands: HashMap<Arc<str>, (Arc<Counter>, Arc<Counter>)>,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Self {
        Worker {
            shared,
            set: None,
            runtimes: Vec::new(),
            retry_instantiate_at: None,
            rule_counters: Vec::new(),
            plugin_calls: HashMap::new(),
            commands_sent: HashMap::new(),
            rule_commands: HashMap::new(),
        }
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            self.refresh();
            self.handle(job);
        }
    }

    /// Starts the rules' plugin instances for the set in service when it changed. If that
    /// fails (a plugin refusing now what it accepted at load), the worker keeps running the
    /// set it has and tries again a second later.
    fn refresh(&mut self) {
        let rules = &self.shared.rules;
        if let Some(set) = &self.set
            && rules.is_current(set)
        {
            return;
        }
        if let Some(at) = self.retry_instantiate_at
            && Instant::now() < at
        {
            return;
        }
        let set = rules.current();
        match set.instantiate(&self.shared.registry) {
            Ok(runtimes) => {
                let metrics = &self.shared.metrics;
                self.rule_counters = runtimes
                    .iter()
                    .map(|runtime| rule_counters(metrics, runtime.rule().name()))
                    .collect();
                self.runtimes = runtimes;
                self.set = Some(set);
                self.retry_instantiate_at = None;
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!(
                        "Cannot start the new rules on a worker, keeping the previous ones: {error}"
                    );
                    self.shared.errors.push("rules".into(), &error.to_string());
                }
                self.retry_instantiate_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    fn handle(&mut self, job: Job) {
        let Job {
            event,
            origin,
            pending,
        } = job;
        let scope = EventScope::new(&event);
        let mut commands: Vec<(Arc<str>, Command)> = Vec::new();
        let mut refused: Vec<(Arc<str>, RefusedCommand)> = Vec::new();
        let mut letters = Vec::new();
        let mut matched = 0;
        let mut passed = false;
        let mut trace = String::new();
        let trace_on = tracing::enabled!(target: "iotrules::event", tracing::Level::DEBUG);
        for (runtime, counters) in self.runtimes.iter_mut().zip(&self.rule_counters) {
            let rule = runtime.rule().clone();
            let takes = match rule.matches(&scope) {
                Ok(takes) => takes,
                Err(error) => {
                    let message = error.to_string();
                    self.shared
                        .metrics
                        .rule_errors
                        .with(&[&rule.name, "condition"])
                        .inc();
                    self.shared
                        .errors
                        .push(format!("rule \"{}\"", rule.name), &message);
                    if rule.on_error() == OnError::DeadLetter {
                        let mut letter = letter(&origin, "condition", message, Some(&event.id));
                        letter.rule = Some(rule.name.to_string());
                        letters.push(letter);
                        counters.dead_letter.inc();
                    }
                    continue;
                }
            };
            if !takes {
                continue;
            }
            matched += 1;
            counters.matches.inc();
            let result = runtime.run(&event);
            for version in &result.versions {
                self.plugin_calls
                    .entry(version.plugin.clone())
                    .or_insert_with(|| self.shared.metrics.plugin_calls.with(&[&version.plugin]))
                    .observe(version.elapsed);
            }
            for error in &result.errors {
                self.shared
                    .metrics
                    .rule_errors
                    .with(&[&rule.name, error.kind()])
                    .inc();
                let message = error.to_string();
                tracing::warn!(rule = &*rule.name, device = %event.device.id, "{message}");
                self.shared
                    .errors
                    .push(format!("rule \"{}\"", rule.name), &message);
            }
            let outcome = match &result.outcome {
                RuleOutcome::Passed(output) => {
                    passed = true;
                    counters.passed.inc();
                    if matches!(output, Cow::Owned(_)) {
                        "passed (replaced)"
                    } else {
                        "passed"
                    }
                }
                RuleOutcome::Dropped { .. } => {
                    counters.dropped.inc();
                    "dropped"
                }
                RuleOutcome::DeadLetter => {
                    counters.dead_letter.inc();
                    if let Some(error) = result.errors.last() {
                        let mut letter = letter(
                            &origin,
                            &format!("plugin:{}", error.kind()),
                            format!("rule \"{}\" {error}", rule.name),
                            Some(&event.id),
                        );
                        letter.rule = Some(rule.name.to_string());
                        letter.step = u32::try_from(error.step).ok();
                        letters.push(letter);
                    }
                    "dead-letter"
                }
                RuleOutcome::DroppedOnError => {
                    counters.dropped_on_error.inc();
                    "dropped on error"
                }
            };
            if trace_on {
                let _ = write!(trace, "; rule {}: {outcome}", rule.name);
                if !result.commands.is_empty() {
                    let _ = write!(trace, ", {} command(s)", result.commands.len());
                }
            }
            commands.extend(
                result
                    .commands
                    .into_iter()
                    .map(|command| (rule.name.clone(), command)),
            );
            refused.extend(
                result
                    .refused
                    .into_iter()
                    .map(|command| (rule.name.clone(), command)),
            );
        }
        for (rule, refused) in refused {
            let command = &refused.command;
            let message = format!(
                "command {} for device {} not sent: {}",
                command.name, command.device.id, refused.reason
            );
            tracing::error!(rule = &*rule, "{message}");
            self.shared
                .errors
                .push(format!("rule \"{rule}\""), &message);
            let mut letter = letter(&origin, "command", message, Some(&event.id));
            letter.rule = Some(rule.to_string());
            letter.step = u32::try_from(refused.step).ok();
            letters.push(letter);
            self.rule_counter(&rule).1.inc();
        }
        if trace_on {
            tracing::debug!(
                target: "iotrules::event",
                "{} {} {}{}{}{}",
                origin.connector,
                event.kind.as_str(),
                event.device.id,
                properties_text(&event),
                if matched == 0 { "; no rule" } else { "" },
                trace
            );
        }
        if passed {
            origin.counters.events_out.inc();
        } else if matched == 0 {
            origin.counters.no_rule.inc();
        } else {
            origin.counters.dropped_by_rules.inc();
        }
        if commands.is_empty() && letters.is_empty() {
            finish(&self.shared, pending, Ok(()));
            return;
        }
        let confirmations = self.enqueue(commands, &origin, &event, &mut letters);
        drop(scope);
        let shared = self.shared.clone();
        let event_id = event.id;
        self.shared.runtime.spawn(async move {
            for Queued {
                path,
                command,
                rule,
                confirmation,
                sent,
                failed,
                rule_sent,
                rule_failed,
            } in confirmations
            {
                let result = match confirmation.await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("command path \"{path}\" stopped before confirming")),
                };
                if result.is_ok() {
                    sent.inc();
                    rule_sent.inc();
                }
                if let Err(reason) = result {
                    failed.inc();
                    rule_failed.inc();
                    let message = format!(
                        "command {} for device {} not delivered: {reason}",
                        command.name, command.device.id
                    );
                    tracing::error!("{message}");
                    shared
                        .errors
                        .push(format!("command path \"{path}\""), &message);
                    let mut letter = letter(&origin, "command", message, Some(&event_id));
                    letter.rule = Some(rule.to_string());
                    letters.push(letter);
                }
            }
            conclude(&shared, pending, letters, &origin).await;
        });
    }

    /// Queues each command on its path, in order. A command without a known path fails at
    /// once, as a dead letter.
    fn enqueue(
        &mut self,
        commands: Vec<(Arc<str>, Command)>,
        origin: &Origin,
        event: &Event,
        letters: &mut Vec<DeadLetterRecord>,
    ) -> Vec<Queued> {
        let mut confirmations = Vec::with_capacity(commands.len());
        for (rule, command) in commands {
            let Some(via) = command.via.clone() else {
                let message = format!(
                    "command {} for device {} names no command path: set `commands.via` on the \
                     rule or step",
                    command.name, command.device.id
                );
                tracing::error!("{message}");
                let mut letter = letter(origin, "command", message, Some(&event.id));
                letter.rule = Some(rule.to_string());
                letters.push(letter);
                self.rule_counter(&rule).1.inc();
                continue;
            };
            let Some(path) = self.shared.paths.get(&via).cloned() else {
                let message = format!(
                    "command {} for device {}: no command path named \"{via}\" (configured: {})",
                    command.name,
                    command.device.id,
                    self.shared.paths.names().join(", ")
                );
                tracing::error!("{message}");
                let mut letter = letter(origin, "command", message, Some(&event.id));
                letter.rule = Some(rule.to_string());
                letters.push(letter);
                self.rule_counter(&rule).1.inc();
                continue;
            };
            let (rule_sent, rule_failed) = self.rule_counter(&rule);
            let (sent, failed) = self
                .commands_sent
                .entry(via.clone())
                .or_insert_with(|| {
                    (
                        self.shared.metrics.commands.with(&[&via, "sent"]),
                        self.shared.metrics.commands.with(&[&via, "failed"]),
                    )
                })
                .clone();
            let summary = Command {
                via: None,
                device: command.device.clone(),
                name: command.name.clone(),
                params: crate::event::Json::null(),
                reply_to: None,
            };
            confirmations.push(Queued {
                confirmation: path.enqueue(command),
                path: via,
                command: summary,
                rule,
                sent,
                failed,
                rule_sent,
                rule_failed,
            });
        }
        confirmations
    }

    /// `iotrules_rule_commands_total{rule}`: sent, failed.
    fn rule_counter(&mut self, rule: &Arc<str>) -> (Arc<Counter>, Arc<Counter>) {
        self.rule_commands
            .entry(rule.clone())
            .or_insert_with(|| {
                let metrics = &self.shared.metrics;
                (
                    metrics.rule_commands.with(&[rule, "sent"]),
                    metrics.rule_commands.with(&[rule, "failed"]),
                )
            })
            .clone()
    }
}

fn rule_counters(metrics: &Metrics, rule: &str) -> RuleCounters {
    let outcome = |outcome| metrics.rule_outcomes.with(&[rule, outcome]);
    RuleCounters {
        matches: metrics.rule_matches.with(&[rule]),
        passed: outcome("passed"),
        dropped: outcome("dropped"),
        dead_letter: outcome("dead-letter"),
        dropped_on_error: outcome("dropped-on-error"),
    }
}

/// `code=value …` of an event, for the event trace.
fn properties_text(event: &Event) -> String {
    let mut text = String::new();
    for property in event.properties.iter().take(8) {
        let value = serde_json::to_string(&property.value).unwrap_or_default();
        let _ = write!(text, " {}={value}", property.code);
    }
    if event.properties.len() > 8 {
        let _ = write!(text, " …(+{})", event.properties.len() - 8);
    }
    text
}
