//! The event pipeline: delivery → decode → de-duplicate → rules → commands → acknowledge.
//!
//! Each room has one reason to change:
//! - [`delivery`]: what a connector hands in ([`Delivery`]) and how it is settled with its
//!   transport ([`Acker`], [`Settle`]): the pipeline's contract with the connectors.
//! - [`intake`] ([`Ingest::submit`], called by a connector): takes a slot of the in-flight
//!   budget (waiting while the pipeline is full: backpressure), decodes the delivery with the
//!   connector's dialect, holds back a duplicate event id, and queues the event on the worker
//!   that owns its device. A message that does not decode goes to the dead letters, then is
//!   acked. A connector that receives in bursts queues through a [`Deferring`], which wakes
//!   a sleeping worker once per burst rather than once per event ([`queue`]).
//! - [`worker`] (threads, `workers` of them): each owns an instance of every rule's plugin
//!   chain and takes the events of its devices in arrival order, so events of one device are
//!   handled one after another, in order, while devices spread over the workers (with
//!   `order = "connector"`, a connector's events all stay on one worker, in order). Every rule
//!   whose `when` and `if` take the event runs, independently of the others. A worker takes
//!   what is queued in batches (up to 32 events, never waiting for more) and runs them rule by
//!   rule, so that one plugin's code and memory stay in the caches across the batch. Commands
//!   are queued on their paths in the order the rules emitted them. Before a batch's rules
//!   run, its events update the device twin (`crate::twin`), whose changes are stored with
//!   the plugin state's group commit, so an event is acknowledged only once they are.
//! - [`settle`]: the delivery is acknowledged only when every matching rule has finished,
//!   every command has been confirmed by its path, and every dead letter is stored. An event
//!   with nothing to wait for is settled by its worker at once; the others go to their
//!   worker's one settle task, which waits for all of them together. A command its path
//!   gives up on becomes a dead letter (kind `command`); a dead letter that cannot be stored
//!   makes the delivery go back for another try rather than be lost.
//! - [`job`]: what the rooms above hand on to each other: a [`job::Job`] (an event on its way
//!   to its worker), the [`job::Origin`] of its delivery, its [`job::Pending`]
//!   acknowledgement, and the timer it fires. Every room above stands on it, and it on none
//!   of them, so the rooms' imports run one way, as the data does.
//! - Shutdown ([`Pipeline::drain`]): once the connectors stop submitting, the workers
//!   finish their queues and the pipeline waits for the last acknowledgement.

mod dedup;
mod delivery;
mod intake;
mod job;
mod queue;
mod report;
mod settle;
mod timers;
mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Semaphore;

use self::dedup::Seen;
pub use self::delivery::{Acker, Delivery, Settle};
pub use self::intake::{Deferring, Ingest};
use self::queue::Queue;
use self::settle::{Attempts, Redelivery};
use crate::command::CommandPaths;
use crate::config::{Order, PipelineConfig};
use crate::metrics::Metrics;
use crate::plugin::Registry;
use crate::rules::Rules;
use crate::status::LastErrors;
use crate::store::DeadLetterSink;

/// The pipeline stopped taking deliveries (shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline has shut down")]
pub struct Closed;

/// What the intake, the workers and the settle tasks share.
struct Shared {
    rules: Arc<Rules>,
    registry: Arc<Registry>,
    paths: CommandPaths,
    dead_letters: Arc<dyn DeadLetterSink>,
    metrics: Arc<Metrics>,
    errors: Arc<LastErrors>,
    /// The per-event troubles, counted, noted and logged (rate-limited) in one place.
    reports: report::Reports,
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
    /// Ids seen, and the copies of those still in flight.
    seen: Seen<job::Pending>,
    runtime: tokio::runtime::Handle,
    hasher: std::collections::hash_map::RandomState,
    order: Order,
    redelivery: Redelivery,
    /// Failed attempts at finishing a message, by [`settle::attempt_key`].
    attempts: std::sync::Mutex<Attempts>,
}

/// The running pipeline: its workers and the way in.
pub struct Pipeline {
    shared: Arc<Shared>,
    senders: Vec<Queue>,
    workers: Vec<JoinHandle<()>>,
    /// Stops the timer task, which holds senders to every worker.
    timers_stop: tokio::sync::watch::Sender<bool>,
    timers: tokio::task::JoinHandle<()>,
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

impl Pipeline {
    /// Starts the workers and their settle tasks. Commands and dead-letter writes run on
    /// `runtime`.
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
            reports: report::Reports::new(parts.errors.clone()),
            errors: parts.errors,
            in_flight: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            seen: Seen::new(
                Duration::from_secs(settings.dedup_window_s),
                settings.dedup_capacity,
            ),
            runtime,
            hasher: Default::default(),
            order: settings.order,
            redelivery: Redelivery {
                attempts: settings.redelivery_attempts,
                first_delay: Duration::from_millis(settings.redelivery_delay_ms),
            },
            attempts: std::sync::Mutex::new(Attempts::default()),
        });
        // The twins are back before the first event updates them.
        let twins = shared.registry.twins();
        let state = shared.registry.state();
        let (loaded, evicted) =
            twins.load(|each| state.read_uncached(crate::twin::NAMESPACE, each));
        if !evicted.is_empty() {
            let deletes = evicted.into_iter().map(|device| (device, None)).collect();
            state.apply(crate::twin::NAMESPACE, deletes);
        }
        if loaded.restored + loaded.unreadable + loaded.evicted > 0 {
            tracing::info!(
                devices = loaded.restored,
                unreadable = loaded.unreadable,
                evicted = loaded.evicted,
                max_devices = twins.max_devices(),
                "Device twins loaded from the store"
            );
        }
        if twins.enabled() {
            state.keep(crate::twin::NAMESPACE, twins.clone());
        }
        shared.metrics.twin_devices.set(twins.len() as u64);
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for index in 0..settings.workers.max(1) {
            let (sender, receiver) = queue::queue(settings.queue);
            let settler = settle::Settler::start(&shared);
            let shared = shared.clone();
            let scheduling = settings.scheduling;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("iotrules-worker-{index}"))
                    .spawn(move || {
                        crate::sync::schedule_thread(scheduling);
                        worker::Worker::new(shared, settler).run(receiver)
                    })?,
            );
            senders.push(sender);
        }
        let loaded = shared.registry.timers().load(&**shared.registry.state());
        if loaded > 0 {
            tracing::info!(timers = loaded, "Pending timers loaded from the store");
        }
        let (timers_stop, stop) = tokio::sync::watch::channel(false);
        let timers = shared.runtime.spawn(timers::run(
            shared.clone(),
            senders.iter().map(Queue::downgrade).collect(),
            stop,
        ));
        Ok(Pipeline {
            shared,
            senders,
            workers,
            timers_stop,
            timers,
        })
    }

    /// The way in for a connector named `connector`, decoding with `dialect`.
    pub fn ingest(&self, connector: &str, dialect: crate::dialect::Dialect) -> Ingest {
        Ingest::new(
            self.shared.clone(),
            self.senders.clone(),
            connector,
            dialect,
        )
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
            timers_stop,
            timers,
        } = self;
        // The timer task first: it holds senders to the workers. A timer it took but had not
        // queued stays in the store and fires at the next start.
        let _ = timers_stop.send(true);
        let _ = timers.await;
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
