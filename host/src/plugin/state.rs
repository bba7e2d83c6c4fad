//! Plugin state: a small key-value store per rule step, held by the host so it survives
//! instance restarts and reloads. Writes made during a call are buffered and applied only
//! when the call succeeds.
//!
//! # Bounds
//!
//! State is meant to be small (a last value per device, a counter), and everything a step
//! keeps is held in memory by the store's cache for the life of the process, so the host
//! bounds it where the plugin writes: a `state-set` over a bound fails with a reason through
//! its `result`, which the SDK's `set_state` returns, and nothing is written. The bounds:
//!
//! - a key of at most [`MAX_KEY_BYTES`] and a value of at most [`MAX_VALUE_BYTES`];
//! - at most [`MAX_SETS_PER_CALL`] distinct keys set by one `init` or `handle` call, so one
//!   event's commit stays one small transaction;
//! - per step, at most [`StateQuota::keys`] keys and [`StateQuota::bytes`] bytes (keys plus
//!   values), counting what is stored and what the call has written so far. A write that
//!   does not grow the state (replacing a value by one no larger) is always accepted, so a
//!   step already over a lowered quota can still update what it has.
//!
//! `state-delete` has no error channel and is never refused; it cannot grow anything.
//! The quota is checked against the stored state as the call began to write: steps of one
//! rule on several workers write the same namespace, so together they may pass it by what
//! their calls in flight write, at most [`MAX_SETS_PER_CALL`] keys each.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// The prefix of the state keys that hold timers. A plugin's `state-set` of such a key is
/// refused, its `state-get` reads nothing and its `state-delete` does nothing.
pub const TIMER_PREFIX: &str = "@timer/";

/// Whether a state key is one of the host's timer keys.
pub fn is_timer_key(key: &str) -> bool {
    key.starts_with(TIMER_PREFIX)
}

/// The longest state key, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// The largest state value, in bytes.
pub(crate) const MAX_VALUE_BYTES: usize = 64 << 10;
/// The most distinct keys one call may set.
pub const MAX_SETS_PER_CALL: usize = 1000;

/// The most one step's state may hold. The defaults, 10 000 keys and 16 MiB, fit a value per
/// device for a large site, or a few hundred values at [`MAX_VALUE_BYTES`]; a rule step may
/// set its own (`state_keys`, `state_mb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateQuota {
    /// Keys.
    pub keys: usize,
    /// Bytes of keys plus values.
    pub bytes: usize,
}

impl Default for StateQuota {
    fn default() -> Self {
        StateQuota {
            keys: 10_000,
            bytes: 16 << 20,
        }
    }
}

/// How much a namespace holds: what a [`StateQuota`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateUsage {
    /// Keys.
    pub keys: usize,
    /// Bytes of keys plus values.
    pub bytes: usize,
}

/// Where plugin state lives. Keys are scoped by a namespace (one per rule step).
pub trait StateStore: Send + Sync {
    /// The value under `key`, if any.
    fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>>;
    /// Applies one successful call's writes, in order; `None` deletes.
    fn apply(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>);
    /// How much a namespace holds. Called once per call that writes, to check its quota.
    fn usage(&self, namespace: &str) -> StateUsage;
    /// The size of the entry under `key` (key plus value), if any: lets a write be checked
    /// against the quota without copying the value it replaces.
    fn entry_size(&self, namespace: &str, key: &str) -> Option<usize> {
        self.get(namespace, key)
            .map(|value| key.len() + value.len())
    }

    /// Something to wait for before every write applied so far is durable, or `None` when
    /// they already are (a store that writes as it applies, or keeps nothing). A store may
    /// make them durable in the caller's thread first, when that is quicker than handing them
    /// to a thread of its own: it is called from threads that may block, never from a task.
    fn durable(&self) -> Option<Durable> {
        None
    }

    /// How many calls applied so far are not durable yet (0 for a store that writes as it
    /// applies): what a caller that does not wait for [`durable`](Self::durable) bounds by.
    fn backlog(&self) -> u64 {
        0
    }

    /// Every stored timer entry of every step's namespace (keys under [`TIMER_PREFIX`]):
    /// namespace, key, value. Read once, at start. The host's own namespaces (those starting with [`HOST_NAMESPACE_PREFIX`]) are
    /// left out: their keys are not the steps' and may look like timers.
    fn timers(&self) -> Vec<(String, String, Vec<u8>)>;

    /// Hands `each` every entry of `namespace` as stored, key and value, without going
    /// through a cache or filling one. For a host namespace whose entries the host holds in
    /// memory itself (the device twins), read once at start: a cache would hold them twice.
    fn read_uncached(&self, namespace: &str, each: &mut dyn FnMut(&str, &[u8]));

    /// Keeps the host namespace `namespace` as `data` holds it: from now on the store asks
    /// `data` for its changes (see [`changed`](Self::changed)) and writes them there.
    fn keep(&self, namespace: &str, data: Arc<dyn HostData>);

    /// Says that the data kept in `namespace` changed: the changes made so far are written
    /// with the next commit, which [`durable`](Self::durable) asked from now on waits for.
    /// Changes of many calls go in one write per entry: each entry as it is at the commit.
    fn changed(&self, namespace: &str);

    /// Counts into `metrics` what the store counts (its commits), including what it
    /// counted before.
    fn register_metrics(&self, _metrics: &crate::metrics::Metrics) {}
}

/// Data the host holds in memory itself and has a store keep (the device twins): the store
/// asks it, when it writes, what changed since it last asked.
pub trait HostData: Send + Sync + std::fmt::Debug {
    /// The entries changed since the last call, each as it is now: key and value, `None`
    /// for an entry that is gone.
    fn take_changes(&self) -> Vec<(String, Option<Vec<u8>>)>;
}

impl HostData for crate::twin::Twins {
    fn take_changes(&self) -> Vec<(String, Option<Vec<u8>>)> {
        crate::twin::Twins::take_changes(self)
    }
}

/// The first character of the namespaces the host keeps its own data in (the twins'
/// `@twin`), which no step's `{rule}/{step}` namespace is; its timers are never among them.
pub const HOST_NAMESPACE_PREFIX: char = '@';

/// Resolves once the state writes applied up to a point are committed (or dropped as
/// failed, which the store reports itself): what the pipeline waits for before it
/// acknowledges an event whose plugin calls wrote state.
#[derive(Debug)]
pub struct Durable {
    through: u64,
    done: tokio::sync::watch::Receiver<u64>,
}

impl Durable {
    /// Waits until `done` reaches `through`.
    pub fn new(through: u64, done: tokio::sync::watch::Receiver<u64>) -> Self {
        Durable { through, done }
    }

    /// Waits for it; at once if the store's writer is gone.
    pub async fn wait(mut self) {
        let through = self.through;
        let _ = self.done.wait_for(|done| *done >= through).await;
    }
}

/// State in memory, lost when the process exits.
///
/// The host data it keeps (see [`StateStore::keep`]) is already in memory: it is copied in
/// only when read back ([`StateStore::read_uncached`]), not at every change.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    entries: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
    kept: Mutex<HashMap<String, Arc<dyn HostData>>>,
}

impl MemoryStateStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every key of every namespace: a rule test starts each test from nothing.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many keys a namespace holds.
    pub fn len(&self, namespace: &str) -> usize {
        self.lock().get(namespace).map_or(0, HashMap::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Vec<u8>>>> {
        // A panic while holding the lock cannot leave a map half-updated in a way that
        // matters here (each write is one insert or remove), so a poisoned lock is used as is.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StateStore for MemoryStateStore {
    fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        self.lock().get(namespace)?.get(key).cloned()
    }

    fn apply(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>) {
        let mut entries = self.lock();
        if !entries.contains_key(namespace) {
            entries.insert(namespace.to_owned(), HashMap::new());
        }
        let Some(space) = entries.get_mut(namespace) else {
            return;
        };
        for (key, value) in writes {
            match value {
                Some(value) => space.insert(key, value),
                None => space.remove(&key),
            };
        }
    }

    /// Counts the namespace's entries: linear, which is fine for the tests and rule tests
    /// this store serves.
    fn usage(&self, namespace: &str) -> StateUsage {
        let entries = self.lock();
        let Some(space) = entries.get(namespace) else {
            return StateUsage::default();
        };
        StateUsage {
            keys: space.len(),
            bytes: space.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }

    fn entry_size(&self, namespace: &str, key: &str) -> Option<usize> {
        let entries = self.lock();
        entries
            .get(namespace)?
            .get(key)
            .map(|v| key.len() + v.len())
    }

    fn timers(&self) -> Vec<(String, String, Vec<u8>)> {
        let entries = self.lock();
        let mut timers = Vec::new();
        let steps = entries
            .iter()
            .filter(|(namespace, _)| !namespace.starts_with(HOST_NAMESPACE_PREFIX));
        for (namespace, space) in steps {
            for (key, value) in space.iter().filter(|(key, _)| is_timer_key(key)) {
                timers.push((namespace.clone(), key.clone(), value.clone()));
            }
        }
        timers
    }

    fn read_uncached(&self, namespace: &str, each: &mut dyn FnMut(&str, &[u8])) {
        let kept = lock(&self.kept).get(namespace).cloned();
        if let Some(kept) = kept {
            self.apply(namespace, kept.take_changes());
        }
        let entries = self.lock();
        for (key, value) in entries.get(namespace).into_iter().flatten() {
            each(key, value);
        }
    }

    fn keep(&self, namespace: &str, data: Arc<dyn HostData>) {
        lock(&self.kept).insert(namespace.to_owned(), data);
    }

    /// Nothing to do: the changes are taken when the namespace is read back.
    fn changed(&self, _namespace: &str) {}
}

/// One key's pending write.
#[derive(Debug)]
struct Pending {
    /// The value to store; `None` deletes.
    value: Option<Vec<u8>>,
    /// The size of the stored entry this write replaces, read at the key's first write in
    /// the call, so the call's effect on the namespace's usage is known.
    stored: Option<usize>,
    /// Whether this call has `state-set` the key (what [`MAX_SETS_PER_CALL`] counts).
    set: bool,
}

impl Pending {
    fn size(&self, key: &str) -> Option<usize> {
        self.value.as_ref().map(|value| key.len() + value.len())
    }
}

/// The writes of the call in progress, visible to its own reads: one entry per key, the
/// last write winning, so a read is one lookup however many writes the call made.
#[derive(Debug, Default)]
pub(crate) struct PendingWrites {
    writes: HashMap<String, Pending>,
    /// The namespace's stored usage, read at the call's first `state-set`.
    stored: Option<StateUsage>,
    /// What the pending writes add to the stored keys and bytes (negative: remove).
    keys_delta: isize,
    bytes_delta: isize,
    /// Distinct keys this call has set.
    sets: usize,
}

impl PendingWrites {
    /// The latest pending write of `key`: `Some(None)` when it was deleted.
    pub(crate) fn get(&self, key: &str) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|pending| pending.value.as_deref())
    }

    /// Buffers `key = value`, or refuses it with the reason when it is over a bound (see
    /// the module's doc); a refused write changes nothing.
    pub(crate) fn set(
        &mut self,
        store: &dyn StateStore,
        namespace: &str,
        quota: StateQuota,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "state key of {} bytes is over the {MAX_KEY_BYTES}-byte limit",
                key.len()
            ));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "state value of {} bytes under `{}` is over the {MAX_VALUE_BYTES}-byte limit",
                value.len(),
                crate::dialect::clip(&key)
            ));
        }
        let (stored, current, already_set) = match self.writes.get(&key) {
            Some(pending) => (pending.stored, pending.size(&key), pending.set),
            None => {
                let stored = store.entry_size(namespace, &key);
                (stored, stored, false)
            }
        };
        if !already_set && self.sets >= MAX_SETS_PER_CALL {
            return Err(format!(
                "this call has already set {MAX_SETS_PER_CALL} keys, the most one call may set"
            ));
        }
        let usage = *self.stored.get_or_insert_with(|| store.usage(namespace));
        let size = key.len() + value.len();
        let keys_added = isize::from(current.is_none());
        let bytes_added = size as isize - current.unwrap_or(0) as isize;
        let keys = usage.keys as isize + self.keys_delta + keys_added;
        let bytes = usage.bytes as isize + self.bytes_delta + bytes_added;
        if keys_added > 0 && keys > quota.keys as isize {
            return Err(format!(
                "a new key would pass the step's limit of {} keys (`state_keys` of the rule \
                 step); delete keys or raise the limit",
                quota.keys
            ));
        }
        if bytes_added > 0 && bytes > quota.bytes as isize {
            return Err(format!(
                "a write of {size} bytes would bring the step's state to {bytes} bytes, over \
                 its limit of {} (`state_mb` of the rule step)",
                quota.bytes
            ));
        }
        self.keys_delta += keys_added;
        self.bytes_delta += bytes_added;
        if !already_set {
            self.sets += 1;
        }
        self.writes.insert(
            key,
            Pending {
                value: Some(value),
                stored,
                set: true,
            },
        );
        Ok(())
    }

    /// Buffers the removal of `key`. Never refused: it cannot grow the state. A key that is
    /// neither stored nor pending needs no write at all.
    pub(crate) fn delete(&mut self, store: &dyn StateStore, namespace: &str, key: String) {
        match self.writes.entry(key) {
            Entry::Occupied(mut entry) => {
                let size = entry.get().size(entry.key());
                if let Some(size) = size {
                    self.keys_delta -= 1;
                    self.bytes_delta -= size as isize;
                }
                entry.get_mut().value = None;
            }
            Entry::Vacant(entry) => {
                if let Some(size) = store.entry_size(namespace, entry.key()) {
                    self.keys_delta -= 1;
                    self.bytes_delta -= size as isize;
                    entry.insert(Pending {
                        value: None,
                        stored: Some(size),
                        set: false,
                    });
                }
            }
        }
    }

    /// The call's writes, one per key, to apply; leaves nothing pending for the next call.
    pub(crate) fn take(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let writes = std::mem::take(&mut self.writes);
        *self = PendingWrites::default();
        writes
            .into_iter()
            .map(|(key, pending)| (key, pending.value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_apply_in_order_and_deletes_remove() {
        let store = MemoryStateStore::new();
        store.apply(
            "rule/0",
            vec![
                ("a".into(), Some(b"1".to_vec())),
                ("a".into(), Some(b"2".to_vec())),
                ("b".into(), Some(b"x".to_vec())),
                ("b".into(), None),
            ],
        );
        assert_eq!(store.get("rule/0", "a").as_deref(), Some(&b"2"[..]));
        assert_eq!(store.get("rule/0", "b"), None);
        assert_eq!(store.get("rule/1", "a"), None, "namespaces are separate");
    }

    #[test]
    fn clear_forgets_every_namespace() {
        let store = MemoryStateStore::new();
        store.apply("a/1", vec![("k".into(), Some(b"1".to_vec()))]);
        store.apply("b/1", vec![("k".into(), Some(b"2".to_vec()))]);
        store.clear();
        assert_eq!(store.get("a/1", "k"), None);
        assert_eq!(store.len("b/1"), 0);
    }

    const NS: &str = "rule/1";

    fn set(
        pending: &mut PendingWrites,
        store: &dyn StateStore,
        key: &str,
        value: &[u8],
    ) -> Result<(), String> {
        pending.set(store, NS, StateQuota::default(), key.into(), value.to_vec())
    }

    #[test]
    fn pending_reads_see_the_latest_write_and_commit_one_write_per_key() {
        let store = MemoryStateStore::new();
        let mut pending = PendingWrites::default();
        assert_eq!(pending.get("k"), None);
        set(&mut pending, &store, "k", b"1").expect("set");
        set(&mut pending, &store, "k", b"2").expect("set");
        assert_eq!(pending.get("k"), Some(Some(&b"2"[..])));
        pending.delete(&store, NS, "k".into());
        assert_eq!(pending.get("k"), Some(None));
        set(&mut pending, &store, "k", b"3").expect("set");
        set(&mut pending, &store, "j", b"x").expect("set");
        let mut writes = pending.take();
        writes.sort();
        assert_eq!(
            writes,
            [
                ("j".to_owned(), Some(b"x".to_vec())),
                ("k".to_owned(), Some(b"3".to_vec()))
            ]
        );
        assert_eq!(pending.get("k"), None, "taken");
    }

    #[test]
    fn a_delete_of_a_stored_key_is_kept_and_of_an_absent_key_writes_nothing() {
        let store = MemoryStateStore::new();
        store.apply(NS, vec![("stored".into(), Some(b"v".to_vec()))]);
        let mut pending = PendingWrites::default();
        pending.delete(&store, NS, "stored".into());
        pending.delete(&store, NS, "absent".into());
        assert_eq!(pending.get("absent"), None);
        assert_eq!(pending.take(), [("stored".to_owned(), None)]);
    }

    #[test]
    fn keys_and_values_over_their_size_are_refused() {
        let store = MemoryStateStore::new();
        let mut pending = PendingWrites::default();
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        let error = set(&mut pending, &store, &long, b"v").unwrap_err();
        assert_eq!(error, "state key of 1025 bytes is over the 1024-byte limit");
        let error = set(&mut pending, &store, "big", &vec![0; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert_eq!(
            error,
            "state value of 65537 bytes under `big` is over the 65536-byte limit"
        );
        set(
            &mut pending,
            &store,
            &"k".repeat(MAX_KEY_BYTES),
            &vec![0; MAX_VALUE_BYTES],
        )
        .expect("at the limits");
        assert_eq!(pending.take().len(), 1);
    }

    #[test]
    fn one_call_sets_at_most_the_per_call_number_of_keys_and_rewrites_are_free() {
        let store = MemoryStateStore::new();
        let mut pending = PendingWrites::default();
        for i in 0..MAX_SETS_PER_CALL {
            set(&mut pending, &store, &format!("k{i}"), b"v").expect("within the bound");
        }
        let error = set(&mut pending, &store, "one-more", b"v").unwrap_err();
        assert_eq!(
            error,
            "this call has already set 1000 keys, the most one call may set"
        );
        assert_eq!(
            pending.get("one-more"),
            None,
            "a refused write changes nothing"
        );
        set(&mut pending, &store, "k7", b"again").expect("a key already set is free");
        pending.delete(&store, NS, "k8".into());
        set(&mut pending, &store, "k8", b"back").expect("so is one set then deleted");
        assert_eq!(pending.take().len(), MAX_SETS_PER_CALL);

        set(&mut pending, &store, "one-more", b"v").expect("the next call starts afresh");
    }

    #[test]
    fn the_key_quota_counts_stored_and_pending_keys_and_deletes_make_room() {
        let store = MemoryStateStore::new();
        let quota = StateQuota {
            keys: 3,
            bytes: usize::MAX >> 1,
        };
        store.apply(
            NS,
            vec![
                ("a".into(), Some(b"1".to_vec())),
                ("b".into(), Some(b"1".to_vec())),
            ],
        );
        let mut pending = PendingWrites::default();
        pending
            .set(&store, NS, quota, "c".into(), b"1".to_vec())
            .expect("third key");
        let error = pending
            .set(&store, NS, quota, "d".into(), b"1".to_vec())
            .unwrap_err();
        assert_eq!(
            error,
            "a new key would pass the step's limit of 3 keys (`state_keys` of the rule step); \
             delete keys or raise the limit"
        );
        pending
            .set(&store, NS, quota, "a".into(), b"2".to_vec())
            .expect("replacing a stored key adds none");
        pending.delete(&store, NS, "b".into());
        pending
            .set(&store, NS, quota, "d".into(), b"1".to_vec())
            .expect("a delete made room");
        store.apply(NS, pending.take());
        assert_eq!(store.usage(NS).keys, 3);
    }

    #[test]
    fn the_byte_quota_refuses_growth_but_lets_a_step_over_it_shrink() {
        let store = MemoryStateStore::new();
        // "k" + 99 bytes, "j" + 99 bytes: 200 bytes stored, over a quota lowered to 150.
        store.apply(
            NS,
            vec![
                ("k".into(), Some(vec![0; 99])),
                ("j".into(), Some(vec![0; 99])),
            ],
        );
        let quota = StateQuota {
            keys: 100,
            bytes: 150,
        };
        let mut pending = PendingWrites::default();
        let error = pending
            .set(&store, NS, quota, "k".into(), vec![0; 100])
            .unwrap_err();
        assert_eq!(
            error,
            "a write of 101 bytes would bring the step's state to 201 bytes, over its limit \
             of 150 (`state_mb` of the rule step)"
        );
        pending
            .set(&store, NS, quota, "k".into(), vec![0; 9])
            .expect("a smaller value is always taken");
        // Now 110 bytes with the pending write: 40 more fit, 41 do not.
        pending
            .set(&store, NS, quota, "new".into(), vec![0; 37])
            .expect("up to the quota");
        assert!(
            pending
                .set(&store, NS, quota, "more".into(), vec![0; 1])
                .is_err()
        );
        store.apply(NS, pending.take());
        assert_eq!(
            store.usage(NS),
            StateUsage {
                keys: 3,
                bytes: 150
            }
        );
    }

    #[test]
    fn timers_leave_out_the_host_namespaces_and_an_uncached_read_gives_a_namespace() {
        let store = MemoryStateStore::new();
        let timer = format!("{}dev/t", TIMER_PREFIX);
        store.apply("rule/1", vec![(timer.clone(), Some(b"{}".to_vec()))]);
        store.apply("@twin", vec![(timer.clone(), Some(b"{}".to_vec()))]);
        let timers = store.timers();
        assert_eq!(timers.len(), 1);
        assert_eq!(timers[0].0, "rule/1");
        let mut read = Vec::new();
        store.read_uncached("@twin", &mut |key, value| {
            read.push((key.to_owned(), value.len()))
        });
        assert_eq!(read, [(timer, 2)]);
    }
}
