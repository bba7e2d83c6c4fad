//! Settlement: a delivery is acknowledged once its rules are done, its commands confirmed and
//! its dead letters stored; otherwise it goes back to its transport, or is held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::job::{Origin, Pending};
use super::report::{CommandFailed, DeadLetterStoreFailed};
use super::{Settle, Shared};
use crate::command::{CommandError, CommandPath, Confirmation, Confirmer};
use crate::event::Command;
use crate::metrics::Counter;
use crate::plugin::Durable;
use crate::store::DeadLetterRecord;
use crate::sync::lock;

/// A command queued on its path, waiting for confirmation.
pub(super) struct Queued {
    pub(super) route: Arc<Route>,
    /// The command's device id and name, for the error message.
    pub(super) device: String,
    pub(super) name: String,
    pub(super) confirmation: Confirmation,
}

/// A rule's commands on one command path, as a worker resolved them once: the path, the
/// names a failure is reported by, and the counters a confirmation adds to,
/// `iotrules_commands_total{path}` and `iotrules_rule_commands_total{rule}`, sent and failed.
///
/// Each queued command holds the route rather than a reference to each of these: that was
/// six reference counts taken on the worker and given back on the runtime thread per command,
/// each a write to a line that moves between the cores.
pub(super) struct Route {
    pub(super) target: Arc<dyn CommandPath>,
    pub(super) path: Arc<str>,
    pub(super) rule: Arc<str>,
    pub(super) sent: Arc<Counter>,
    pub(super) failed: Arc<Counter>,
    pub(super) rule_sent: Arc<Counter>,
    pub(super) rule_failed: Arc<Counter>,
}

/// An event its worker is done with that still waits for its commands, its dead letters or
/// the commit of the plugin state written up to the end of its batch (its [`Part`]'s).
pub(super) struct Unsettled {
    pub(super) pending: Pending,
    pub(super) origin: Origin,
    pub(super) event_id: String,
    pub(super) queued: Vec<Queued>,
    pub(super) letters: Vec<DeadLetterRecord>,
    /// Whether it waits for that commit: a delivery that takes no acknowledgement (MQTT QoS
    /// 0) does not while the store keeps up.
    pub(super) waits: bool,
}

/// A worker's settle task: one task waits for every event of the worker that has commands,
/// dead letters or state to commit, instead of a task spawned per event.
///
/// The events of one batch wait together, for one commit: the worker takes one [`Durable`]
/// at the end of the batch, when every state write of its events is queued (usually none:
/// the worker commits the writes itself then, see the state store), and the task waits for
/// it once and then settles the batch's events in order, each at once when its
/// commands are already confirmed (the usual case by the time the commit is in), else on
/// its own. Each event took a `Durable` of its own before: a subscription to the writer's
/// commits taken and dropped per event, one waiter per event for the writer to wake, and one
/// future per event to poll, on lines that all three threads write.
///
/// The worker hands events over in groups: a batch's events go together when the batch ends
/// (a longer batch of timers every [`Settler::GROUP`] events; several batches' together,
/// with one commit, while the worker is behind), so a busy worker wakes the task once per
/// batch rather than once per event. The group's commands
/// go with it, and the task queues them on their paths, a path's all in one
/// [`CommandPath::enqueue_all`]: a command lane is woken once per group too, and by a task of
/// its own runtime. A worker that woke each lane itself would wake one of the runtime's
/// threads for it, and measured with `bench pipeline` (`perf record -e sched:sched_wakeup`),
/// those wake-ups were most of the pipeline's.
///
/// The channel holds [`Settler::AHEAD`] groups. A full lane holds up the task (which goes on
/// settling the events it has), the channel fills, and the worker waits: its next jobs stay
/// bare jobs in its queue rather than events already run, each with its commands and
/// confirmations, and intake waits on the worker's queue as it would on a slow worker.
/// (An unbounded channel, bounded only by the in-flight budget, let the workers fill that
/// budget with run events: `scripts/flood` peaked 15 MiB higher.)
pub(super) struct Settler {
    sender: mpsc::Sender<Group>,
    group: Group,
    /// The events handed over since the last batch ended: the running batch's, and those of
    /// the batches put off before it.
    open: Vec<Unsettled>,
}

/// Events handed over together, batch by batch, and their commands.
#[derive(Default)]
struct Group {
    parts: Vec<Part>,
    /// How many events the parts hold.
    events: usize,
    /// The commands of the events, by path, in the order they were queued.
    outbox: Vec<(Arc<dyn CommandPath>, Outgoing)>,
}

/// The events of one batch, and the commit of the state written up to its end, which none of
/// them is acknowledged before.
struct Part {
    events: Vec<Unsettled>,
    durable: Option<Durable>,
}

/// Commands for one path, each with the way to confirm it.
type Outgoing = Vec<(Command, Confirmer)>;

impl Settler {
    /// The most events a worker keeps before it hands them over: a bound on how long an
    /// event already done can wait for its worker (that many events' work). Four batches:
    /// a worker behind puts off its commits until a group is full (see `Worker::handle`).
    pub(super) const GROUP: usize = 128;

    /// The most groups handed over whose commands are not yet on their paths.
    const AHEAD: usize = 2;

    /// Starts the task on the pipeline's runtime. It ends once the worker dropped its
    /// [`Settler`] and every event it was given is settled.
    pub(super) fn start(shared: &Arc<Shared>) -> Settler {
        let (sender, mut receiver) = mpsc::channel::<Group>(Self::AHEAD);
        let shared = shared.clone();
        shared.runtime.clone().spawn(async move {
            let mut settling = FuturesUnordered::new();
            loop {
                tokio::select! {
                    next = receiver.recv() => match next {
                        Some(Group { parts, outbox, .. }) => {
                            for part in parts {
                                settling.push(settle_part(&shared, part));
                            }
                            let queue = async {
                                for (path, commands) in outbox {
                                    path.enqueue_all(commands).await;
                                }
                            };
                            tokio::pin!(queue);
                            loop {
                                tokio::select! {
                                    () = &mut queue => break,
                                    Some(()) = settling.next(), if !settling.is_empty() => {}
                                }
                            }
                        }
                        None => break,
                    },
                    Some(()) = settling.next(), if !settling.is_empty() => {}
                }
            }
            while settling.next().await.is_some() {}
        });
        Settler {
            sender,
            group: Group::default(),
            open: Vec::with_capacity(Self::GROUP),
        }
    }

    /// Queues `command` for `path`, to go out with the group: its confirmation.
    pub(super) fn send(&mut self, path: &Arc<dyn CommandPath>, command: Command) -> Confirmation {
        let (confirmer, confirmation) = tokio::sync::oneshot::channel();
        let outbox = &mut self.group.outbox;
        let index = match outbox
            .iter()
            .position(|(queued, _)| Arc::ptr_eq(queued, path))
        {
            Some(index) => index,
            None => {
                outbox.push((path.clone(), Vec::new()));
                outbox.len() - 1
            }
        };
        outbox[index].1.push((command, confirmer));
        confirmation
    }

    /// Takes an event of the batch running to wait for; hands the group over once it is
    /// full, the batch's events so far waiting for every state write queued until then.
    pub(super) fn hand_over(&mut self, shared: &Shared, unsettled: Unsettled) {
        self.open.push(unsettled);
        if self.group.events + self.open.len() >= Self::GROUP {
            let durable = shared.registry.state().durable();
            self.end_batch(durable);
            self.flush(shared);
        }
    }

    /// How many events were handed over since the last batch ended.
    pub(super) fn kept(&self) -> usize {
        self.open.len()
    }

    /// Ends the batch running: its events handed over wait for `durable`, taken once all
    /// their state writes were queued.
    pub(super) fn end_batch(&mut self, durable: Option<Durable>) {
        if self.open.is_empty() {
            return;
        }
        let events = std::mem::replace(&mut self.open, Vec::with_capacity(Self::GROUP));
        self.group.events += events.len();
        self.group.parts.push(Part { events, durable });
    }

    /// Hands over the commands queued so far, not their events (those of a batch put off,
    /// see `Worker::handle`): a command need not wait for its event's commit, only its
    /// event's acknowledgement does. Waits as [`flush`](Self::flush) does; if the task is
    /// gone, the commands are dropped unsent and their events go back when flushed.
    pub(super) fn send_commands(&mut self) {
        if self.group.outbox.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut self.group.outbox);
        let _ = self.sender.blocking_send(Group {
            outbox,
            ..Group::default()
        });
    }

    /// Hands over the events kept, with their commands; waits while the task is
    /// [`AHEAD`](Self::AHEAD) groups behind. Settles them as retries in the (shutdown) case
    /// where the task is gone: their commands are not sent.
    pub(super) fn flush(&mut self, shared: &Shared) {
        if !self.open.is_empty() {
            // Not reached from a worker, which ends each batch before it flushes.
            let durable = shared.registry.state().durable();
            self.end_batch(durable);
        }
        if self.group.parts.is_empty() && self.group.outbox.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.group);
        if let Err(mpsc::error::SendError(group)) = self.sender.blocking_send(group) {
            for unsettled in group.parts.into_iter().flat_map(|part| part.events) {
                finish(shared, unsettled.pending, Err(()));
            }
        }
    }
}

/// Waits for a batch's commit, then settles its events in order: at once each one whose
/// commands are all answered, the others each on its own (one slow command path holds up
/// only the events with commands on it).
async fn settle_part(shared: &Arc<Shared>, part: Part) {
    let Part {
        mut events,
        durable,
    } = part;
    if durable.is_none() || events.iter().all(|unsettled| unsettled.waits) {
        settle_after(shared, events, durable).await;
        return;
    }
    let free: Vec<_> = events
        .extract_if(.., |unsettled| !unsettled.waits)
        .collect();
    futures::join!(
        settle_after(shared, free, None),
        settle_after(shared, events, durable)
    );
}

/// [`settle_part`] of `events` once `durable` is in.
async fn settle_after(shared: &Arc<Shared>, events: Vec<Unsettled>, durable: Option<Durable>) {
    if let Some(durable) = durable {
        durable.wait().await;
    }
    let mut later = Vec::new();
    let mut acked = Acked::new(shared);
    for unsettled in events {
        if unsettled
            .queued
            .iter()
            .any(|queued| queued.confirmation.is_empty())
        {
            later.push(settle(shared, unsettled));
            continue;
        }
        // None empty: all answered, so `try_recv` takes each answer.
        let unsettled =
            take_answers(shared, unsettled, async |mut answer| answer.try_recv().ok()).await;
        if unsettled.letters.is_empty() {
            acked.push(unsettled.pending);
        } else {
            // Storing them may take a while (and holds the event while the store refuses).
            later.push(settle(shared, unsettled));
        }
    }
    drop(acked);
    if !later.is_empty() {
        futures::future::join_all(later).await;
    }
}

/// Deliveries acknowledged one after the other whose in-flight slots go back together, when
/// it is dropped: one release of the budget's semaphore (a lock, and a write to the count
/// that intake takes slots from) and one change of the in-flight gauge for all of them,
/// instead of one each.
struct Acked<'a> {
    shared: &'a Shared,
    slots: Option<OwnedSemaphorePermit>,
    count: u64,
}

impl<'a> Acked<'a> {
    fn new(shared: &'a Shared) -> Self {
        Acked {
            shared,
            slots: None,
            count: 0,
        }
    }

    /// [`finish`]es `pending` as acknowledged, keeping its slot.
    fn push(&mut self, pending: Pending) {
        let Pending {
            acker,
            _permit: slot,
            received,
            dedup,
        } = pending;
        let shared = self.shared;
        let copies = dedup.map_or_else(Vec::new, |mark| shared.seen.finished(mark, false));
        acker.settle(Settle::Ack);
        shared.metrics.event_latency.observe(received.elapsed());
        self.count += 1;
        match &mut self.slots {
            Some(slots) => slots.merge(slot),
            None => self.slots = Some(slot),
        }
        for copy in copies {
            self.push(copy);
        }
    }
}

impl Drop for Acked<'_> {
    fn drop(&mut self) {
        self.shared.metrics.in_flight.sub(self.count);
        drop(self.slots.take());
    }
}

/// Waits for an event's commands, then stores its dead letters and settles it.
async fn settle(shared: &Arc<Shared>, unsettled: Unsettled) {
    let unsettled = take_answers(shared, unsettled, async |answer| answer.await.ok()).await;
    conclude(
        shared,
        unsettled.pending,
        unsettled.letters,
        &unsettled.origin,
    )
    .await;
}

/// Takes the answer of each of an event's commands from `answer` (`None` when its path
/// stopped before answering) and counts it; one that was not delivered is reported and
/// becomes a dead letter of the event. Gives the event back with its commands answered.
async fn take_answers(
    shared: &Shared,
    mut unsettled: Unsettled,
    mut answer: impl AsyncFnMut(Confirmation) -> Option<Result<(), CommandError>>,
) -> Unsettled {
    for Queued {
        route,
        device,
        name,
        confirmation,
    } in std::mem::take(&mut unsettled.queued)
    {
        let reason = match answer(confirmation).await {
            Some(Ok(())) => {
                route.sent.inc();
                route.rule_sent.inc();
                continue;
            }
            Some(Err(error)) => error.to_string(),
            None => format!("command path \"{}\" stopped before confirming", route.path),
        };
        let message = format!("command {name} for device {device} not delivered: {reason}");
        CommandFailed {
            path: &route.path,
            rule: &route.rule,
            error: &message,
            counters: [&route.failed, &route.rule_failed],
        }
        .emit(&shared.reports);
        let mut letter = letter(
            &unsettled.origin,
            "command",
            message,
            Some(&unsettled.event_id),
        );
        letter.rule = Some(route.rule.to_string());
        unsettled.letters.push(letter);
    }
    unsettled
}

/// Settles a delivery, and the copies of it that arrived while it was in flight: acked when
/// `done` is ok, sent back for a retry otherwise (its id is then forgotten by the
/// de-duplication, so the redelivery is not taken for a duplicate).
pub(super) fn finish(shared: &Shared, pending: Pending, done: Result<(), ()>) {
    let Pending {
        acker,
        _permit,
        received,
        dedup,
    } = pending;
    let how = if done.is_ok() {
        Settle::Ack
    } else {
        Settle::Retry
    };
    let copies = dedup.map_or_else(Vec::new, |mark| {
        shared.seen.finished(mark, how == Settle::Retry)
    });
    acker.settle(how);
    shared.metrics.event_latency.observe(received.elapsed());
    shared.metrics.in_flight.dec();
    for copy in copies {
        finish(shared, copy, done);
    }
}

/// A dead letter of `origin`'s message.
pub(super) fn letter(
    origin: &Origin,
    kind: &str,
    message: String,
    event_id: Option<&str>,
) -> DeadLetterRecord {
    DeadLetterRecord {
        connector: origin.connector.name.clone(),
        vendor: Some(origin.vendor),
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

/// Stores `letters`, all or none; Err when they could not be stored.
async fn store_letters(
    shared: &Arc<Shared>,
    letters: &Arc<Vec<DeadLetterRecord>>,
) -> Result<(), ()> {
    if letters.is_empty() {
        return Ok(());
    }
    let stored = {
        let letters = letters.clone();
        let sink = shared.dead_letters.clone();
        tokio::task::spawn_blocking(move || sink.store(&letters)).await
    };
    match stored {
        Ok(Ok(())) => {
            for letter in letters.iter() {
                shared
                    .metrics
                    .dead_letters
                    .with(&[&letter.connector, &letter.kind])
                    .inc();
            }
            Ok(())
        }
        Ok(Err(reason)) => {
            DeadLetterStoreFailed {
                connector: &letters[0].connector,
                error: &reason,
            }
            .emit(&shared.reports);
            Err(())
        }
        Err(_) => Err(()),
    }
}

/// How messages that cannot be finished go back to their transport.
#[derive(Debug, Clone, Copy)]
pub(super) struct Redelivery {
    /// Deliveries sent back before the pipeline holds the message instead.
    pub(super) attempts: u32,
    /// The pause before the first redelivery; doubled for each further one.
    pub(super) first_delay: Duration,
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
pub(super) struct Attempts(HashMap<[u8; 16], u32>);

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
    digest.update(origin.connector.name.as_bytes());
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
pub(super) async fn conclude(
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
            connector = &*origin.connector.name,
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
        origin.connector.name, failed
    );
    tracing::error!(connector = &*origin.connector.name, "{message}");
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
        connector = &*origin.connector.name,
        "A held message is stored as a dead letter and acknowledged"
    );
    lock(&shared.attempts).forget(&key);
    shared.metrics.events_held.dec();
    finish(shared, pending, Ok(()));
}
