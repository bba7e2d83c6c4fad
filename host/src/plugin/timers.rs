//! Timers: a rule step's named alarms for a device, kept with the step's state.
//!
//! A plugin sets a timer (`set-timer`) for the device of the event it handles; when the timer
//! is due, the pipeline hands the step an event of kind `timer` (see
//! [`crate::pipeline`]). What makes timers exactly as reliable as state is that they *are*
//! state: a timer is an entry of its step's namespace under a key the host reserves
//! ([`TIMER_PREFIX`], which plugins can neither read nor write), so it is written by the same
//! call commit, in the same group-commit transaction, as the state it goes with, and a call
//! that fails leaves no timer behind. A firing deletes the entry in the commit of the call it
//! makes, so a timer that fired does not fire again after a restart, and one that was due
//! while the service was down is found at start and fires then.
//!
//! [`Schedule`] is the in-memory index of every pending timer by due time, which the
//! pipeline's timer task reads: filled from the store at start ([`Schedule::load`]) and kept
//! up to date by every call commit that sets or cancels a timer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::state::{StateStore, TIMER_PREFIX, is_timer_key};
use crate::event::{Device, Event, Json, Kind, Vendor};
use crate::sync::lock;

/// The longest timer name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The attribute of a timer event that holds the timer's name (also its `action`).
pub const ATTR_TIMER: &str = "timer";

/// What is stored for a pending timer: enough to make its event and to know its step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerRecord {
    /// The timer's name.
    pub name: String,
    /// When it is due, Unix ms.
    pub at_ms: u64,
    /// The device it was set for, as the setting event named it.
    pub device: Device,
    /// The connector of the event whose call set it: the timer event's `source`, and the
    /// worker queue it goes to when events are ordered per connector.
    pub source: String,
    /// The setting event's vendor.
    pub vendor: Vendor,
    /// The plugin of the step that set it: a step that runs another plugin since is another
    /// step, and its timers are dropped.
    pub plugin: String,
}

impl TimerRecord {
    /// The event the step is handed when this timer is due.
    pub fn event(&self) -> Event {
        let mut event = Event {
            id: format!("timer:{}:{}:{}", self.device.id, self.name, self.at_ms),
            source: self.source.clone(),
            vendor: self.vendor,
            kind: Kind::Timer,
            action: self.name.clone(),
            device: self.device.clone(),
            time_ms: self.at_ms,
            properties: Vec::new(),
            payload: Json::from_text("{}".to_owned()).unwrap_or_else(|_| Json::null()),
            attributes: Default::default(),
        };
        event
            .attributes
            .insert(ATTR_TIMER.to_owned(), self.name.clone());
        event
    }
}

/// The state key of `device`'s timer `name`: the device's length first, so that any device id
/// and name make a distinct key.
pub fn timer_key(device: &str, name: &str) -> String {
    format!("{TIMER_PREFIX}{}:{device}{name}", device.len())
}

/// Checks a timer name a plugin gave.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a timer needs a name".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "timer name of {} bytes is over the {MAX_NAME_BYTES}-byte limit",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a timer name may not hold control characters".to_owned());
    }
    Ok(())
}

/// A pending timer: the step namespace and state key it is stored under, and its record.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The step's state namespace, `{rule}/{step}`.
    pub namespace: Arc<str>,
    /// Its state key ([`timer_key`]).
    pub key: String,
    pub record: TimerRecord,
}

/// The in-memory index of pending timers, by due time.
#[derive(Debug, Default)]
pub struct Schedule {
    inner: Mutex<Inner>,
    /// Woken when a timer is set earlier than the earliest one the timer task sleeps for.
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// (due, sequence) → the timer: the sequence keeps timers due at the same ms in the order
    /// they were set.
    by_due: BTreeMap<(u64, u64), Pending>,
    /// (namespace, key) → its place in `by_due`.
    by_key: HashMap<(Arc<str>, String), (u64, u64)>,
    next: u64,
}

impl Schedule {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the timers kept in `store` (at start: those of earlier runs). Returns how many,
    /// and the entries that could not be read (each logged, and left in the store).
    pub fn load(&self, store: &dyn StateStore) -> usize {
        let mut loaded = 0;
        for (namespace, key, value) in store.timers() {
            match serde_json::from_slice::<TimerRecord>(&value) {
                Ok(record) => {
                    self.set(Arc::from(namespace), key, record);
                    loaded += 1;
                }
                Err(error) => tracing::error!(
                    namespace,
                    %error,
                    "A stored timer cannot be read and will not fire"
                ),
            }
        }
        loaded
    }

    /// Sets (or moves) a timer.
    pub fn set(&self, namespace: Arc<str>, key: String, record: TimerRecord) {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let id = (namespace.clone(), key.clone());
        if let Some(place) = inner.by_key.remove(&id) {
            inner.by_due.remove(&place);
        }
        let earliest = inner.by_due.keys().next().map(|(at, _)| *at);
        inner.next += 1;
        let place = (record.at_ms, inner.next);
        let wake = earliest.is_none_or(|earliest| record.at_ms < earliest);
        inner.by_key.insert(id, place);
        inner.by_due.insert(
            place,
            Pending {
                namespace,
                key,
                record,
            },
        );
        if wake {
            self.changed.notify_one();
        }
    }

    /// Forgets a timer (cancelled, or fired).
    pub fn remove(&self, namespace: &Arc<str>, key: &str) {
        let mut inner = lock(&self.inner);
        if let Some(place) = inner.by_key.remove(&(namespace.clone(), key.to_owned())) {
            inner.by_due.remove(&place);
        }
    }

    /// Applies a call's committed writes of timer keys: a value sets, `None` cancels.
    pub(crate) fn apply(&self, namespace: &Arc<str>, writes: &[(String, Option<Vec<u8>>)]) {
        for (key, value) in writes.iter().filter(|(key, _)| is_timer_key(key)) {
            match value.as_deref().map(serde_json::from_slice::<TimerRecord>) {
                Some(Ok(record)) => self.set(namespace.clone(), key.clone(), record),
                // Written by the host itself from a record: cannot fail to read back.
                Some(Err(_)) | None => self.remove(namespace, key),
            }
        }
    }

    /// Whether a timer is pending under this namespace and key.
    pub fn contains(&self, namespace: &Arc<str>, key: &str) -> bool {
        lock(&self.inner)
            .by_key
            .contains_key(&(namespace.clone(), key.to_owned()))
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<u64> {
        lock(&self.inner).by_due.keys().next().map(|(at, _)| *at)
    }

    /// Takes the timers due at `now_ms` out of the schedule, earliest first, at most `max`.
    pub fn take_due(&self, now_ms: u64, max: usize) -> Vec<Pending> {
        let mut inner = lock(&self.inner);
        let mut due = Vec::new();
        while due.len() < max {
            let Some(entry) = inner.by_due.first_entry() else {
                break;
            };
            if entry.key().0 > now_ms {
                break;
            }
            let pending = entry.remove();
            inner
                .by_key
                .remove(&(pending.namespace.clone(), pending.key.clone()));
            due.push(pending);
        }
        due
    }

    /// Removes and returns every timer `keep` refuses (the timers of steps that are gone).
    pub fn drop_unless(&self, mut keep: impl FnMut(&Pending) -> bool) -> Vec<Pending> {
        let mut inner = lock(&self.inner);
        let gone: Vec<(u64, u64)> = inner
            .by_due
            .iter()
            .filter(|(_, pending)| !keep(pending))
            .map(|(place, _)| *place)
            .collect();
        let mut dropped = Vec::with_capacity(gone.len());
        for place in gone {
            if let Some(pending) = inner.by_due.remove(&place) {
                inner
                    .by_key
                    .remove(&(pending.namespace.clone(), pending.key.clone()));
                dropped.push(pending);
            }
        }
        dropped
    }

    /// How many timers are pending.
    pub fn len(&self) -> usize {
        lock(&self.inner).by_due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every timer (a rule test starts each test from nothing).
    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.by_due.clear();
        inner.by_key.clear();
    }

    /// Resolves when a timer was set earlier than every other: the timer task sleeps until
    /// the earliest due time or this.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::MemoryStateStore;

    fn record(name: &str, at_ms: u64) -> TimerRecord {
        TimerRecord {
            name: name.to_owned(),
            at_ms,
            device: Device {
                id: "lamp".into(),
                ..Device::default()
            },
            source: "test".into(),
            vendor: Vendor::Tuya,
            plugin: "p".into(),
        }
    }

    #[test]
    fn keys_are_distinct_for_every_device_and_name() {
        assert_ne!(timer_key("ab", "c"), timer_key("a", "bc"));
        assert!(is_timer_key(&timer_key("a", "b")));
        assert!(!is_timer_key("timer/a"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("off").is_ok());
        assert_eq!(check_name("").unwrap_err(), "a timer needs a name");
        assert!(
            check_name(&"x".repeat(257))
                .unwrap_err()
                .contains("257 bytes")
        );
        assert!(check_name("a\nb").unwrap_err().contains("control"));
    }

    #[test]
    fn timers_come_due_in_time_order_and_a_moved_timer_once() {
        let schedule = Schedule::new();
        let ns: Arc<str> = Arc::from("rule/1");
        schedule.set(ns.clone(), "k1".into(), record("a", 300));
        schedule.set(ns.clone(), "k2".into(), record("b", 100));
        schedule.set(ns.clone(), "k3".into(), record("c", 200));
        schedule.set(ns.clone(), "k1".into(), record("a", 150));
        assert_eq!(schedule.len(), 3);
        assert_eq!(schedule.next_due(), Some(100));
        let due = schedule.take_due(200, 10);
        let names: Vec<_> = due.iter().map(|p| p.record.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert!(schedule.is_empty());
    }

    #[test]
    fn take_due_stops_at_now_and_at_max() {
        let schedule = Schedule::new();
        let ns: Arc<str> = Arc::from("rule/1");
        for i in 0..5 {
            schedule.set(ns.clone(), format!("k{i}"), record("t", 100 + i));
        }
        assert_eq!(schedule.take_due(99, 10).len(), 0);
        assert_eq!(schedule.take_due(102, 2).len(), 2);
        assert_eq!(schedule.take_due(102, 10).len(), 1);
        assert_eq!(schedule.len(), 2);
    }

    #[test]
    fn committed_writes_set_and_cancel() {
        let schedule = Schedule::new();
        let ns: Arc<str> = Arc::from("rule/1");
        let value = serde_json::to_vec(&record("off", 500)).unwrap();
        let key = timer_key("lamp", "off");
        schedule.apply(
            &ns,
            &[
                ("plain".into(), Some(b"1".to_vec())),
                (key.clone(), Some(value)),
            ],
        );
        assert_eq!(schedule.len(), 1);
        assert_eq!(schedule.next_due(), Some(500));
        schedule.apply(&ns, &[(key, None)]);
        assert!(schedule.is_empty());
    }

    #[test]
    fn load_finds_the_timers_of_every_step() {
        let store = MemoryStateStore::new();
        let value = serde_json::to_vec(&record("off", 500)).unwrap();
        store.apply("a/1", vec![(timer_key("lamp", "off"), Some(value.clone()))]);
        store.apply("b/2", vec![(timer_key("lamp", "off"), Some(value))]);
        store.apply("b/2", vec![("plain".into(), Some(b"1".to_vec()))]);
        store.apply(
            "b/2",
            vec![(timer_key("x", "y"), Some(b"not json".to_vec()))],
        );
        let schedule = Schedule::new();
        assert_eq!(schedule.load(&store), 2);
        let dropped = schedule.drop_unless(|p| &*p.namespace == "a/1");
        assert_eq!(dropped.len(), 1);
        assert_eq!(&*dropped[0].namespace, "b/2");
        assert_eq!(schedule.len(), 1);
    }

    #[test]
    fn the_timer_event_names_the_timer() {
        let event = record("off", 500).event();
        assert_eq!(event.kind, Kind::Timer);
        assert_eq!(event.action, "off");
        assert_eq!(event.time_ms, 500);
        assert_eq!(event.device.id, "lamp");
        assert_eq!(event.attribute(ATTR_TIMER), Some("off"));
    }
}
