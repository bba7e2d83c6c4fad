//! The way in: a connector's deliveries become events queued on the worker of their device.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::dedup::Admission;
use super::job::{Connector, Job, Origin, Pending};
use super::queue::Queue;
use super::report::MessageRefused;
use super::settle;
use super::{Acker, Closed, Delivery, Shared};
use crate::config::Order;
use crate::dialect::tuya::SignatureCheck;
use crate::dialect::{Dialect, ErrorKind, RawMessage, SignMode};
use crate::event::ATTR_SIGNATURE;
use crate::metrics::{Counter, Metrics};

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

/// A connector's way into the pipeline. Cheap to clone (a reference count: a connector may
/// clone it per message); the pipeline stops when every clone is dropped and
/// [`Pipeline::drain`](super::Pipeline::drain) is called.
#[derive(Clone)]
pub struct Ingest(Arc<Inlet>);

impl Ingest {
    pub(super) fn new(
        shared: Arc<Shared>,
        senders: Vec<Queue>,
        connector: &str,
        dialect: Dialect,
    ) -> Self {
        Ingest(Arc::new(Inlet::new(shared, senders, connector, dialect)))
    }

    /// The connector's name.
    pub fn connector(&self) -> &str {
        &self.0.connector.name
    }

    /// Takes one delivery; waits while the pipeline is full. The delivery is settled later,
    /// through its acker, when the pipeline is done with it.
    pub async fn submit(&self, delivery: Delivery) -> Result<(), Closed> {
        self.0.submit(delivery, Wake::Now).await
    }

    /// A way in that defers waking the workers, for a connector that receives in bursts:
    /// see [`Deferring`].
    pub fn deferring(&self) -> Deferring {
        Deferring(self.clone())
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
        self.0.refuse(delivery, kind, message).await
    }
}

/// An [`Ingest`] that does not wake a worker for each event it queues: a connector that
/// receives in bursts submits a burst through it and calls [`Deferring::wake_workers`] once
/// its source has nothing more ready, so that a worker is woken once per burst rather than
/// once per event (see `queue.rs`). A submission that has to wait (the pipeline or the
/// worker's queue full) wakes what is owed first, so nothing waits on a sleeping worker; and
/// dropping it wakes what is owed, so a connector that stops (or whose session ends) leaves
/// no event asleep in a queue.
pub struct Deferring(Ingest);

impl Deferring {
    /// As [`Ingest::submit`], without waking the worker the event goes to.
    pub async fn submit(&self, delivery: Delivery) -> Result<(), Closed> {
        self.0.0.submit(delivery, Wake::Later).await
    }

    /// True when an event was queued on a worker not woken since.
    pub fn owes_wake(&self) -> bool {
        self.0
            .0
            .owed
            .iter()
            .any(|owed| owed.load(Ordering::Relaxed))
    }

    /// Wakes the workers that events were queued on (by this connector, through any of its
    /// [`Deferring`]s) since they were last woken.
    pub fn wake_workers(&self) {
        self.0.0.wake_owed();
    }

    /// The plain way in, for what should not wait.
    pub fn ingest(&self) -> &Ingest {
        &self.0
    }
}

impl Drop for Deferring {
    fn drop(&mut self) {
        self.wake_workers();
    }
}

/// When a worker is woken for the event queued on it.
#[derive(Clone, Copy)]
enum Wake {
    Now,
    /// At the connector's [`Deferring::wake_workers`] or the drop of its [`Deferring`], or
    /// before a submission waits for the pipeline.
    Later,
}

/// What an [`Ingest`] holds.
struct Inlet {
    shared: Arc<Shared>,
    senders: Vec<Queue>,
    /// By worker: an event was queued there and the worker not woken since.
    owed: Vec<AtomicBool>,
    connector: Arc<Connector>,
    dialect: Dialect,
    signature: Option<SignatureWatch>,
}

impl Inlet {
    fn new(shared: Arc<Shared>, senders: Vec<Queue>, connector: &str, dialect: Dialect) -> Self {
        Inlet {
            owed: senders.iter().map(|_| AtomicBool::new(false)).collect(),
            signature: SignatureWatch::new(&shared.metrics, connector, &dialect),
            connector: Arc::new(Connector::new(&shared.metrics, connector)),
            shared,
            senders,
            dialect,
        }
    }

    async fn submit(&self, delivery: Delivery, wake: Wake) -> Result<(), Closed> {
        let permit = self.slot().await?;
        self.submit_with(delivery, permit, None, wake).await
    }

    /// A slot of the in-flight budget, waiting while the pipeline is full (and waking the
    /// workers it owes first: the slots come back as they finish).
    async fn slot(&self) -> Result<OwnedSemaphorePermit, Closed> {
        let in_flight = self.shared.in_flight.clone();
        if let Ok(permit) = in_flight.clone().try_acquire_owned() {
            return Ok(permit);
        }
        self.wake_owed();
        in_flight.acquire_owned().await.map_err(|_| Closed)
    }

    fn wake_owed(&self) {
        for (queue, owed) in self.senders.iter().zip(&self.owed) {
            if owed.load(Ordering::Relaxed) && owed.swap(false, Ordering::AcqRel) {
                queue.ring();
            }
        }
    }

    async fn refuse(
        &self,
        delivery: Delivery,
        kind: &'static str,
        message: String,
    ) -> Result<(), Closed> {
        let permit = self.slot().await?;
        self.submit_with(delivery, permit, Some((kind, message)), Wake::Now)
            .await
    }

    async fn submit_with(
        &self,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
        unreadable: Option<(&'static str, String)>,
        wake: Wake,
    ) -> Result<(), Closed> {
        let shared = &self.shared;
        let received = Instant::now();
        self.connector.events_in.inc();
        let Delivery {
            payload,
            properties,
            acker,
        } = delivery;
        let origin = Origin {
            connector: self.connector.clone(),
            vendor: self.dialect.name(),
            payload,
            properties,
        };
        if let Some((kind, message)) = unreadable {
            let pending = self.pending(acker, permit, received);
            self.refused(pending, origin, kind, message);
            return Ok(());
        }
        let decoded = self.dialect.decode(
            &RawMessage::new(&self.connector.name, &origin.payload)
                .with_properties(&origin.properties),
        );
        let event = match decoded {
            Ok(event) => {
                if let Some(watch) = &self.signature
                    && watch.mode == SignMode::Warn
                    && event.attribute(ATTR_SIGNATURE) == Some(SignatureCheck::Mismatch.as_str())
                {
                    watch.passed(&self.connector.name);
                }
                event
            }
            Err(error) => {
                if let Some(watch) = &self.signature
                    && error.kind() == ErrorKind::Signature
                {
                    watch.mismatches.inc();
                }
                let pending = self.pending(acker, permit, received);
                self.refused(pending, origin, error.kind().as_str(), error.to_string());
                return Ok(());
            }
        };
        let worker = match self.shared.order {
            Order::Device => self.worker_for(&event.device.id),
            Order::Connector => self.worker_for(&self.connector.name),
        };
        // Room on the worker's queue first, before the event is recorded anywhere: this is
        // the one wait after the slot, and a connector drops this future when its session
        // ends meanwhile (a Pulsar consumer rebuilt under load). Nothing may be left behind
        // then: an id marked in flight that no worker will ever finish would hold every
        // redelivery of the message, with its slot, for the life of the process.
        let room = self.senders[worker].reserve(|| self.wake_owed()).await?;
        let mut pending = self.pending(acker, permit, received);
        // Only ids that a copy of the message would carry again are kept.
        if self.dialect.ids_identify_messages() {
            pending = match shared.seen.admit(&event.id, received, pending) {
                Admission::First(mut pending, mark) => {
                    pending.dedup = mark;
                    pending
                }
                duplicate => {
                    self.connector.duplicate.inc();
                    tracing::debug!(
                        target: "iotrules::event",
                        connector = &*self.connector.name,
                        id = %event.id,
                        "Duplicate event dropped"
                    );
                    if let Admission::Done(pending) = duplicate {
                        settle::finish(shared, pending, Ok(()));
                    }
                    return Ok(());
                }
            };
        }
        let job = Job {
            event,
            origin,
            pending,
            timer: None,
        };
        match wake {
            Wake::Now => room.send(job),
            Wake::Later => {
                room.send_unrung(job);
                // After the job is in: whoever clears this rings for it.
                self.owed[worker].store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// The delivery in flight from here on: counted until [`settle::finish`] settles it.
    /// Made only where it is handed on without a wait, so that the count cannot be left
    /// behind by a dropped future.
    fn pending(&self, acker: Acker, permit: OwnedSemaphorePermit, received: Instant) -> Pending {
        self.shared.metrics.in_flight.inc();
        Pending {
            acker,
            _permit: permit,
            received,
            dedup: None,
        }
    }

    /// A message that will not become an event: counted, reported, stored as a dead letter
    /// of `kind`, then settled.
    fn refused(&self, pending: Pending, origin: Origin, kind: &str, message: String) {
        MessageRefused {
            connector: &self.connector.name,
            kind,
            error: &message,
            counter: &self.connector.refused,
        }
        .emit(&self.shared.reports);
        let letter = settle::letter(&origin, kind, message, None);
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            settle::conclude(&shared, pending, vec![letter], &origin).await;
        });
    }

    fn worker_for(&self, key: &str) -> usize {
        (self.shared.hasher.hash_one(key) % self.senders.len() as u64) as usize
    }
}
