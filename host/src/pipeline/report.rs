//! What happens to events that an operator should hear of, in one place: each is a small
//! struct whose `emit` counts it, notes it for `/status`, and logs it with its variable parts
//! as fields, rate-limited (Vector's internal events are the model).
//!
//! The log is limited per kind and place (a connector, a rule, a command path): the first
//! one is logged, further ones within [`WINDOW`] are only counted and noted, and the first one
//! after the window says how many were not logged (`suppressed`). A fleet that sends a
//! thousand bad messages a second writes one log line per ten seconds about it, not a
//! thousand; the counters and `/status` still see every one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Counter;
use crate::status::LastErrors;
use crate::sync::lock;

/// How long the log stays quiet about one kind of trouble in one place after telling it.
pub(super) const WINDOW: Duration = Duration::from_secs(10);

/// How long the log stays quiet about the twin's evictions after telling them.
pub(super) const EVICTION_WINDOW: Duration = Duration::from_secs(60);

/// Where reports go: the recent errors of `/status`, and the log through a limiter.
pub(super) struct Reports {
    errors: Arc<LastErrors>,
    windows: Mutex<HashMap<(&'static str, Arc<str>), Window>>,
    /// The twin's evictions, which every worker reports into one log.
    evictions: Mutex<Evictions>,
}

/// When the twin's evictions were last logged, and how many there were since.
#[derive(Debug, Default)]
struct Evictions {
    logged: Option<Instant>,
    since: u64,
}

/// What to log of the twin's evictions.
#[derive(Debug, PartialEq)]
enum EvictionLine {
    /// The first eviction of the process.
    First(u64),
    /// Evictions since the last line, a window or more ago.
    Since(u64),
}

impl Evictions {
    /// Counts `evicted` more; the line to log if one is due.
    fn admit(&mut self, evicted: u64, now: Instant) -> Option<EvictionLine> {
        self.since += evicted;
        let line = match self.logged {
            None => EvictionLine::First(self.since),
            Some(logged) if now.duration_since(logged) >= EVICTION_WINDOW => {
                EvictionLine::Since(self.since)
            }
            Some(_) => return None,
        };
        self.logged = Some(now);
        self.since = 0;
        Some(line)
    }
}

/// One kind of trouble in one place: when it was last logged, and what was not logged since.
struct Window {
    logged: Instant,
    suppressed: u64,
}

impl Reports {
    pub(super) fn new(errors: Arc<LastErrors>) -> Self {
        Reports {
            errors,
            windows: Mutex::new(HashMap::new()),
            evictions: Mutex::new(Evictions::default()),
        }
    }

    /// `Some(suppressed)` when this one is to be logged, with how many were not logged
    /// before it; `None` while the kind's window in `place` is still quiet.
    fn admit(&self, kind: &'static str, place: &str, now: Instant) -> Option<u64> {
        let mut windows = lock(&self.windows);
        if let Some(window) = windows.get_mut(&(kind, Arc::from(place))) {
            if now.duration_since(window.logged) < WINDOW {
                window.suppressed += 1;
                return None;
            }
            let suppressed = window.suppressed;
            *window = Window {
                logged: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        windows.insert(
            (kind, Arc::from(place)),
            Window {
                logged: now,
                suppressed: 0,
            },
        );
        Some(0)
    }

    fn note(&self, place: String, message: &str) {
        self.errors.push(place, message);
    }
}

/// A message that does not become an event (it did not decode, or its connector could not
/// read it): stored as a dead letter, so nothing is lost.
pub(super) struct MessageRefused<'a> {
    pub(super) connector: &'a str,
    pub(super) kind: &'a str,
    pub(super) error: &'a str,
    pub(super) counter: &'a Counter,
}

impl MessageRefused<'_> {
    pub(super) fn emit(&self, reports: &Reports) {
        self.counter.inc();
        reports.note(format!("connector \"{}\"", self.connector), self.error);
        if let Some(suppressed) = reports.admit("message-refused", self.connector, Instant::now()) {
            tracing::warn!(
                connector = self.connector,
                kind = self.kind,
                error = self.error,
                suppressed,
                "Message refused, stored as a dead letter"
            );
        }
    }
}

/// A rule's condition could not be evaluated on an event.
pub(super) struct ConditionFailed<'a> {
    pub(super) rule: &'a str,
    pub(super) error: &'a str,
    pub(super) counter: &'a Counter,
}

impl ConditionFailed<'_> {
    pub(super) fn emit(&self, reports: &Reports) {
        self.counter.inc();
        reports.note(format!("rule \"{}\"", self.rule), self.error);
        if let Some(suppressed) = reports.admit("condition-failed", self.rule, Instant::now()) {
            tracing::warn!(
                rule = self.rule,
                error = self.error,
                suppressed,
                "A rule's condition failed on an event; the rule's on_error applies"
            );
        }
    }
}

/// A step of a rule failed on an event (its plugin trapped, ran out of time, returned an
/// error); the rule's `on_error` decides what becomes of the event.
pub(super) struct StepFailed<'a> {
    pub(super) rule: &'a str,
    pub(super) device: &'a str,
    pub(super) error: &'a str,
    pub(super) counter: &'a Counter,
}

impl StepFailed<'_> {
    pub(super) fn emit(&self, reports: &Reports) {
        self.counter.inc();
        reports.note(format!("rule \"{}\"", self.rule), self.error);
        if let Some(suppressed) = reports.admit("step-failed", self.rule, Instant::now()) {
            tracing::warn!(
                rule = self.rule,
                device = self.device,
                error = self.error,
                suppressed,
                "A rule step failed on an event; the rule's on_error applies"
            );
        }
    }
}

/// A command a rule emitted that was not sent (no path, a path the rule may not use, a
/// device id the path refuses): dead-lettered for a replay once fixed.
pub(super) struct CommandRefused<'a> {
    pub(super) rule: &'a str,
    pub(super) error: &'a str,
    pub(super) counter: &'a Counter,
}

impl CommandRefused<'_> {
    pub(super) fn emit(&self, reports: &Reports) {
        self.counter.inc();
        reports.note(format!("rule \"{}\"", self.rule), self.error);
        if let Some(suppressed) = reports.admit("command-refused", self.rule, Instant::now()) {
            tracing::error!(
                rule = self.rule,
                error = self.error,
                suppressed,
                "A command was not sent; it is stored as a dead letter"
            );
        }
    }
}

/// A command its path gave up on: dead-lettered for a replay once the path works.
pub(super) struct CommandFailed<'a> {
    pub(super) path: &'a str,
    pub(super) rule: &'a str,
    pub(super) error: &'a str,
    pub(super) counters: [&'a Counter; 2],
}

impl CommandFailed<'_> {
    pub(super) fn emit(&self, reports: &Reports) {
        for counter in self.counters {
            counter.inc();
        }
        reports.note(format!("command path \"{}\"", self.path), self.error);
        if let Some(suppressed) = reports.admit("command-failed", self.path, Instant::now()) {
            tracing::error!(
                path = self.path,
                rule = self.rule,
                error = self.error,
                suppressed,
                "A command was not delivered; it is stored as a dead letter"
            );
        }
    }
}

/// The dead-letter store refused letters: the message goes back to its transport, or is
/// held (see `settle::conclude`).
pub(super) struct DeadLetterStoreFailed<'a> {
    pub(super) connector: &'a str,
    pub(super) error: &'a str,
}

impl DeadLetterStoreFailed<'_> {
    pub(super) fn emit(&self, reports: &Reports) {
        reports.note("dead-letter store".into(), self.error);
        if let Some(suppressed) = reports.admit("store-failed", self.connector, Instant::now()) {
            tracing::error!(
                connector = self.connector,
                error = self.error,
                suppressed,
                "Cannot store a dead letter; the message goes back to its connector for \
                 another try"
            );
        }
    }
}

/// The twin evicted devices to stay within its bound: counted every time, logged the first
/// time with the bound and how to raise it, then at most once per [`EVICTION_WINDOW`] with
/// the count since (never per event: a full twin evicts on every new device).
pub(super) struct TwinEvicted<'a> {
    pub(super) evicted: usize,
    pub(super) max_devices: usize,
    pub(super) counter: &'a Counter,
}

impl TwinEvicted<'_> {
    pub(super) fn emit(&self, reports: &Reports) {
        let evicted = self.evicted as u64;
        self.counter.add(evicted);
        let line = lock(&reports.evictions).admit(evicted, Instant::now());
        match line {
            Some(EvictionLine::First(evicted)) => tracing::warn!(
                max_devices = self.max_devices,
                evicted,
                "The device twin is full: it now evicts the devices updated longest ago, which \
                 conditions and plugins no longer see; raise `max_devices` in `[twin]` to keep \
                 more"
            ),
            Some(EvictionLine::Since(evicted)) => tracing::warn!(
                max_devices = self.max_devices,
                evicted,
                "The device twin evicted devices since the last report (`[twin] max_devices`)"
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_and_place_then_the_count_of_what_was_not_logged() {
        let reports = Reports::new(Arc::new(LastErrors::default()));
        let start = Instant::now();
        assert_eq!(reports.admit("refused", "a", start), Some(0));
        assert_eq!(reports.admit("refused", "a", start + WINDOW / 2), None);
        assert_eq!(reports.admit("refused", "a", start + WINDOW / 2), None);
        assert_eq!(
            reports.admit("refused", "b", start),
            Some(0),
            "another place"
        );
        assert_eq!(reports.admit("failed", "a", start), Some(0), "another kind");
        assert_eq!(reports.admit("refused", "a", start + WINDOW), Some(2));
        assert_eq!(reports.admit("refused", "a", start + WINDOW), None);
    }

    #[test]
    fn evictions_are_told_at_once_then_once_a_window_with_the_count_since() {
        let mut evictions = Evictions::default();
        let start = Instant::now();
        assert_eq!(evictions.admit(2, start), Some(EvictionLine::First(2)));
        assert_eq!(evictions.admit(1, start + EVICTION_WINDOW / 2), None);
        assert_eq!(evictions.admit(3, start + EVICTION_WINDOW / 2), None);
        assert_eq!(
            evictions.admit(1, start + EVICTION_WINDOW),
            Some(EvictionLine::Since(5))
        );
        assert_eq!(evictions.admit(1, start + EVICTION_WINDOW), None);
    }
}
