//! What flows through the pipeline: a job (an event on its way to its worker), where its
//! delivery came from, how it is acknowledged, and the timer it fires. The rooms that hand a
//! job on ([`intake`](super::intake), [`queue`](super::queue), [`worker`](super::worker),
//! [`settle`](super::settle), [`timers`](super::timers)) all stand on these types, and this
//! room on none of them.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::Acker;
use super::dedup::Mark;
use crate::event::Event;
use crate::metrics::{Counter, Metrics};

/// An event on its way to a worker.
pub(super) struct Job {
    pub(super) event: Event,
    pub(super) origin: Origin,
    pub(super) pending: Pending,
    /// Set when the event is a timer that came due, for the step that set it.
    pub(super) timer: Option<Fire>,
}

/// Where a delivery came from, kept with its event for dead letters.
pub(super) struct Origin {
    pub(super) connector: Arc<Connector>,
    pub(super) vendor: &'static str,
    pub(super) payload: Vec<u8>,
    pub(super) properties: Vec<(String, String)>,
}

/// A connector's name and resolved counters, one reference per event for all of them.
pub(super) struct Connector {
    pub(super) name: Arc<str>,
    pub(super) events_in: Arc<Counter>,
    pub(super) events_out: Arc<Counter>,
    pub(super) refused: Arc<Counter>,
    pub(super) duplicate: Arc<Counter>,
    pub(super) no_rule: Arc<Counter>,
    pub(super) dropped_by_rules: Arc<Counter>,
}

impl Connector {
    pub(super) fn new(metrics: &Metrics, connector: &str) -> Self {
        let dropped = |reason| metrics.events_dropped.with(&[connector, reason]);
        Connector {
            name: Arc::from(connector),
            events_in: metrics.events_in.with(&[connector]),
            events_out: metrics.events_out.with(&[connector]),
            refused: dropped("refused"),
            duplicate: dropped("duplicate"),
            no_rule: dropped("no-rule"),
            dropped_by_rules: dropped("rules"),
        }
    }
}

/// The acknowledgement side of a delivery in flight: settling it returns its in-flight slot.
pub(super) struct Pending {
    pub(super) acker: Acker,
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) received: Instant,
    /// Its event id's mark, once the de-duplication marked it in flight.
    pub(super) dedup: Option<Mark>,
}

/// Where a job's timer goes: the rule and the step, and the timer's state key.
pub(super) struct Fire {
    pub(super) rule: Arc<str>,
    /// The step's index, from 0.
    pub(super) step: usize,
    /// The plugin that set it: a step running another is not its step.
    pub(super) plugin: Arc<str>,
    pub(super) namespace: Arc<str>,
    pub(super) key: String,
}
