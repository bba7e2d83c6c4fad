//! The timer task: hands each due timer to the worker of its device, as an event of kind
//! `timer` addressed to the rule step that set it.
//!
//! A due timer enters the worker's queue like a delivery: behind the events of its device
//! already queued, holding a slot of the in-flight budget, and settled by the same code (its
//! commands confirmed, its dead letters stored, the commit of the state its call wrote
//! waited for). What acknowledges it is the deletion of its entry, which its step's call
//! commits with its other writes. Until then the entry stays in the store: a timer taken
//! from the schedule when the service stops fires at the next start.
//!
//! When the rules change, the timers of steps that are gone (a rule removed or disabled, a
//! step removed, or a step that now runs another plugin) are deleted from the store.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::job::{Connector, Fire, Job, Origin, Pending};
use super::queue::WeakQueue;
use super::{Acker, Settle, Shared};
use crate::config::Order;
use crate::plugin::timers::Pending as Timer;
use crate::rules::RuleSet;

/// The connector name a timer's event is counted and dead-lettered under.
pub(crate) const TIMER_CONNECTOR: &str = "timer";

/// The most timers taken from the schedule at once.
const BATCH: usize = 256;

/// The longest the task sleeps without looking at the rules and the clock again (a wall
/// clock set forward makes timers due early, not late).
const RECHECK: Duration = Duration::from_secs(1);

/// How long a timer whose firing could not be settled (a dead letter that could not be
/// stored) waits before it fires again.
const RETRY_DELAY_MS: u64 = 1000;

/// Runs until `stop` is set: fires what is due, sweeps the timers of gone steps.
pub(super) async fn run(
    shared: Arc<Shared>,
    senders: Vec<WeakQueue>,
    mut stop: watch::Receiver<bool>,
) {
    let schedule = shared.registry.timers().clone();
    let clock = shared.registry.clock().clone();
    let connector = Arc::new(Connector::new(&shared.metrics, TIMER_CONNECTOR));
    let mut set: Option<Arc<RuleSet>> = None;
    // Woken by every reload, so the timers of removed steps go at once, not when due.
    let mut reloads = shared.rules.swapped();
    let mut steps = HashMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        if set.as_ref().is_none_or(|set| !shared.rules.is_current(set)) {
            let current = shared.rules.current();
            steps = current.steps_by_namespace();
            sweep(&shared, &steps);
            set = Some(current);
        }
        let now = clock.now_ms();
        let due = schedule.take_due(now, BATCH);
        let full = due.len() == BATCH;
        for timer in due {
            let Some((rule, step, plugin)) = steps.get(&*timer.namespace) else {
                forget(&shared, &timer, "its rule step is gone");
                continue;
            };
            if **plugin != *timer.record.plugin {
                forget(&shared, &timer, "its rule step runs another plugin now");
                continue;
            }
            let fire = Fire {
                rule: rule.clone(),
                step: *step,
                plugin: plugin.clone(),
                namespace: timer.namespace.clone(),
                key: timer.key.clone(),
            };
            let permit = tokio::select! {
                permit = shared.in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = stop.changed() => {
                    // The entry stays in the store: it fires at the next start.
                    return;
                }
            };
            let key = match shared.order {
                Order::Device => &timer.record.device.id,
                Order::Connector => &timer.record.source,
            };
            let worker = (shared.hasher.hash_one(key) % senders.len() as u64) as usize;
            connector.events_in.inc();
            shared.metrics.in_flight.inc();
            let job = Job {
                event: timer.record.event(),
                origin: Origin {
                    connector: connector.clone(),
                    vendor: TIMER_CONNECTOR,
                    payload: serde_json::to_vec(&timer.record).unwrap_or_default(),
                    properties: vec![("namespace".to_owned(), timer.namespace.to_string())],
                },
                pending: Pending {
                    acker: retry_acker(&shared, &timer),
                    _permit: permit,
                    received: std::time::Instant::now(),
                    dedup: None,
                },
                timer: Some(fire),
            };
            // Weak: a pipeline dropped without a drain lets its workers end.
            let Some(sender) = senders[worker].upgrade() else {
                return;
            };
            let Ok(room) = sender.reserve(|| ()).await else {
                return;
            };
            room.send(job);
        }
        if full {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = schedule
            .next_due()
            .map_or(RECHECK, |at| {
                Duration::from_millis(at.saturating_sub(clock.now_ms()))
            })
            .min(RECHECK);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = schedule.changed() => {}
            _ = reloads.changed() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Deletes the timers whose step is gone from the store and the schedule.
fn sweep(shared: &Shared, steps: &HashMap<String, (Arc<str>, usize, Arc<str>)>) {
    let dropped = shared.registry.timers().drop_unless(|timer| {
        steps
            .get(&*timer.namespace)
            .is_some_and(|(_, _, plugin)| **plugin == *timer.record.plugin)
    });
    if dropped.is_empty() {
        return;
    }
    tracing::info!(
        timers = dropped.len(),
        "Dropped the pending timers of rule steps that are gone"
    );
    for timer in &dropped {
        delete(shared, timer);
    }
}

/// A due timer that no step takes: deleted.
fn forget(shared: &Shared, timer: &Timer, why: &str) {
    tracing::debug!(
        namespace = &*timer.namespace,
        timer = timer.record.name,
        "Timer dropped: {why}"
    );
    delete(shared, timer);
}

fn delete(shared: &Shared, timer: &Timer) {
    shared
        .registry
        .state()
        .apply(&timer.namespace, vec![(timer.key.clone(), None)]);
}

/// Settles a timer's firing: nothing to do when it is done with (its call deleted its entry);
/// when it must be tried again, the timer is stored and scheduled again, a moment later,
/// unless its step set it anew meanwhile.
fn retry_acker(shared: &Shared, timer: &Timer) -> Acker {
    let registry = shared.registry.clone();
    let timer = timer.clone();
    let clock = registry.clock().clone();
    Acker::new(move |how| {
        if how != Settle::Retry || registry.timers().contains(&timer.namespace, &timer.key) {
            return;
        }
        let mut record = timer.record;
        record.at_ms = clock.now_ms() + RETRY_DELAY_MS;
        if let Ok(value) = serde_json::to_vec(&record) {
            registry
                .state()
                .apply(&timer.namespace, vec![(timer.key.clone(), Some(value))]);
            registry.timers().set(timer.namespace, timer.key, record);
        }
    })
}
