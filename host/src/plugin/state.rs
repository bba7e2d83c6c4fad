//! Plugin state: a small key-value store per rule step, held by the host so it survives
//! instance restarts and reloads. Writes made during a call are buffered and applied only
//! when the call succeeds.

use std::collections::HashMap;
use std::sync::Mutex;

/// Where plugin state lives. Keys are scoped by a namespace (one per rule step).
pub trait StateStore: Send + Sync {
    /// The value under `key`, if any.
    fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>>;
    /// Applies one successful call's writes, in order; `None` deletes.
    fn apply(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>);
}

/// State in memory, lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    entries: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
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
}

/// The writes of the call in progress, visible to its own reads.
#[derive(Debug, Default)]
pub(crate) struct PendingWrites(Vec<(String, Option<Vec<u8>>)>);

impl PendingWrites {
    /// The latest pending write of `key`: `Some(None)` when it was deleted.
    pub(crate) fn get(&self, key: &str) -> Option<Option<&[u8]>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    pub(crate) fn set(&mut self, key: String, value: Option<Vec<u8>>) {
        self.0.push((key, value));
    }

    pub(crate) fn take(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.0)
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

    #[test]
    fn pending_reads_see_the_latest_write() {
        let mut pending = PendingWrites::default();
        assert_eq!(pending.get("k"), None);
        pending.set("k".into(), Some(b"1".to_vec()));
        pending.set("k".into(), None);
        assert_eq!(pending.get("k"), Some(None));
        assert_eq!(pending.take().len(), 2);
        assert_eq!(pending.get("k"), None);
    }
}
