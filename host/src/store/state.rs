//! Plugin state kept in the store's SQLite file, so it survives restarts, with an
//! in-memory cache in front because plugins read state on every call.
//!
//! # The cache mirrors what is on disk, never more
//!
//! A namespace (one rule step) is loaded whole on first use, and from then on reads are
//! answered from memory. A successful call's writes go to SQLite in one transaction and,
//! only once that committed, into the cache. If the transaction fails (disk full, file
//! locked beyond the busy timeout, read-only file), SQLite rolls it back and the cache is
//! left as it was: the writes of that call are dropped as a whole, as if the call had
//! failed, and the failure is logged at ERROR. The alternative, keeping the writes in
//! memory only, would let a plugin see state that a restart silently takes away; with this
//! choice what a plugin reads is always what a restart would give it.
//!
//! Each namespace has its own lock, held across the SQLite write and the cache update, so
//! two calls of the same step update the disk and the cache in the same order; reads of
//! other namespaces are not held up by a write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::Store;
use crate::plugin::{StateStore, StateUsage};
use crate::sync::lock;

/// One namespace's entries; `None` until first loaded from the file.
type Space = Option<Entries>;

/// A loaded namespace, with the size of its keys and values kept as they change so that
/// the quota check after each write (`StateStore::usage`) does not sum them.
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Vec<u8>>,
    bytes: usize,
}

impl Entries {
    fn write(&mut self, key: String, value: Option<Vec<u8>>) {
        let key_len = key.len();
        let old = match value {
            Some(value) => {
                self.bytes += key_len + value.len();
                self.map.insert(key, value)
            }
            None => self.map.remove(&key),
        };
        if let Some(old) = old {
            self.bytes -= key_len + old.len();
        }
    }
}

/// [`StateStore`] in the store's SQLite file, cached in memory.
///
/// Loaded namespaces stay cached for the life of the process: there is one per rule step
/// and plugin state is small by design.
#[derive(Debug)]
pub struct SqliteStateStore {
    store: Arc<Store>,
    spaces: Mutex<HashMap<String, Arc<Mutex<Space>>>>,
}

impl SqliteStateStore {
    /// Plugin state in `store`'s file, which it shares with the dead letters.
    pub fn new(store: Arc<Store>) -> Self {
        SqliteStateStore {
            store,
            spaces: Mutex::new(HashMap::new()),
        }
    }

    /// The lock of one namespace's cache, created empty (not loaded) on first use.
    fn space(&self, namespace: &str) -> Arc<Mutex<Space>> {
        let mut spaces = lock(&self.spaces);
        if let Some(space) = spaces.get(namespace) {
            return Arc::clone(space);
        }
        let space = Arc::new(Mutex::new(None));
        spaces.insert(namespace.to_owned(), Arc::clone(&space));
        space
    }

    /// The namespace's entries, loading them from the file if this is the first use.
    /// `None` if loading failed (logged); the next call tries again.
    fn loaded<'s>(&self, namespace: &str, space: &'s mut Space) -> Option<&'s Entries> {
        if space.is_none() {
            match load(&self.store.conn(), namespace) {
                Ok(map) => {
                    let bytes = map.iter().map(|(k, v)| k.len() + v.len()).sum();
                    *space = Some(Entries { map, bytes });
                }
                Err(error) => {
                    tracing::error!(
                        store = %self.store.path().display(),
                        namespace,
                        %error,
                        "Cannot read plugin state; the step sees none until a read succeeds"
                    );
                    return None;
                }
            }
        }
        space.as_ref()
    }
}

impl StateStore for SqliteStateStore {
    fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let space = self.space(namespace);
        let mut space = lock(&space);
        self.loaded(namespace, &mut space)?.map.get(key).cloned()
    }

    /// From the cache (loading the namespace on first use); nothing if it cannot be read,
    /// as [`get`](StateStore::get) then reads nothing either.
    fn usage(&self, namespace: &str) -> StateUsage {
        let space = self.space(namespace);
        let mut space = lock(&space);
        self.loaded(namespace, &mut space)
            .map_or_else(StateUsage::default, |entries| StateUsage {
                keys: entries.map.len(),
                bytes: entries.bytes,
            })
    }

    fn entry_size(&self, namespace: &str, key: &str) -> Option<usize> {
        let space = self.space(namespace);
        let mut space = lock(&space);
        let value = self.loaded(namespace, &mut space)?.map.get(key)?;
        Some(key.len() + value.len())
    }

    fn apply(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>) {
        if writes.is_empty() {
            return;
        }
        let space = self.space(namespace);
        let mut space = lock(&space);
        if let Err(error) = save(&mut self.store.conn(), namespace, &writes) {
            // Keys and values are the plugin's data and may be sensitive: only counts.
            tracing::error!(
                store = %self.store.path().display(),
                namespace,
                writes = writes.len(),
                %error,
                "Plugin state not saved; the writes of one plugin call were dropped"
            );
            return;
        }
        // An unloaded namespace will read these writes from the file when first used.
        if let Some(entries) = space.as_mut() {
            for (key, value) in writes {
                entries.write(key, value);
            }
        }
    }
}

fn load(conn: &Connection, namespace: &str) -> rusqlite::Result<HashMap<String, Vec<u8>>> {
    let mut select =
        conn.prepare_cached("SELECT key, value FROM plugin_state WHERE namespace = ?")?;
    let rows = select.query_map([namespace], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// Applies the writes in order, all or none.
fn save(
    conn: &mut Connection,
    namespace: &str,
    writes: &[(String, Option<Vec<u8>>)],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO plugin_state (namespace, key, value) VALUES (?, ?, ?) \
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM plugin_state WHERE namespace = ? AND key = ?")?;
        for (key, value) in writes {
            match value {
                Some(value) => upsert.execute(params![namespace, key, value])?,
                None => delete.execute(params![namespace, key])?,
            };
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (Arc<Store>, SqliteStateStore) {
        let store = Arc::new(Store::open_in_memory().expect("store"));
        (Arc::clone(&store), SqliteStateStore::new(store))
    }

    fn set(key: &str, value: &[u8]) -> (String, Option<Vec<u8>>) {
        (key.to_owned(), Some(value.to_vec()))
    }

    /// The value under `key` in the file, bypassing the cache.
    fn on_disk(store: &Store, namespace: &str, key: &str) -> Option<Vec<u8>> {
        load(&store.conn(), namespace).expect("load").remove(key)
    }

    #[test]
    fn writes_apply_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db");
        {
            let state = SqliteStateStore::new(Arc::new(Store::open(&path).expect("open")));
            state.apply(
                "lamp/0",
                vec![
                    set("a", b"1"),
                    set("a", b"2"),
                    set("b", b"x"),
                    ("b".into(), None),
                    set("bin", &[0, 159, 255]),
                ],
            );
            assert_eq!(state.get("lamp/0", "a").as_deref(), Some(&b"2"[..]));
        }
        let state = SqliteStateStore::new(Arc::new(Store::open(&path).expect("reopen")));
        assert_eq!(state.get("lamp/0", "a").as_deref(), Some(&b"2"[..]));
        assert_eq!(state.get("lamp/0", "b"), None);
        assert_eq!(
            state.get("lamp/0", "bin").as_deref(),
            Some(&[0, 159, 255][..])
        );
        assert_eq!(state.get("lamp/1", "a"), None, "namespaces are separate");
    }

    #[test]
    fn a_failed_write_changes_neither_the_file_nor_the_cache() {
        let (store, state) = state();
        state.apply("ns", vec![set("a", b"1")]);
        assert_eq!(state.get("ns", "a").as_deref(), Some(&b"1"[..]), "loaded");
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON plugin_state WHEN NEW.key = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .expect("trigger");

        // The first write of the call would succeed alone; the second fails: none stays.
        state.apply("ns", vec![set("a", b"2"), set("poison", b"x")]);

        assert_eq!(state.get("ns", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(state.get("ns", "poison"), None);
        assert_eq!(on_disk(&store, "ns", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(on_disk(&store, "ns", "poison"), None);

        store
            .conn()
            .execute_batch("DROP TRIGGER poison")
            .expect("drop trigger");
        state.apply("ns", vec![set("a", b"3")]);
        assert_eq!(
            state.get("ns", "a").as_deref(),
            Some(&b"3"[..]),
            "writes resume"
        );
    }

    #[test]
    fn usage_follows_writes_replacements_and_deletes() {
        let (store, state) = state();
        state.apply("ns", vec![set("a", b"12345")]);
        assert_eq!(
            state.usage("ns"),
            StateUsage { keys: 1, bytes: 6 },
            "loaded from the file"
        );
        state.apply(
            "ns",
            vec![
                set("a", b"1"),
                set("bb", b"22"),
                set("c", b"3"),
                ("c".into(), None),
            ],
        );
        assert_eq!(state.usage("ns"), StateUsage { keys: 2, bytes: 6 });
        assert_eq!(state.entry_size("ns", "bb"), Some(4));
        assert_eq!(state.entry_size("ns", "c"), None);
        assert_eq!(state.usage("other"), StateUsage::default());
        let reopened = SqliteStateStore::new(store);
        assert_eq!(reopened.usage("ns"), state.usage("ns"), "the file agrees");
    }

    #[test]
    fn reads_after_first_use_come_from_the_cache() {
        let (store, state) = state();
        // Written behind the state store's back before first use: the lazy load sees it.
        store
            .conn()
            .execute("INSERT INTO plugin_state VALUES ('ns', 'k', x'01')", [])
            .expect("insert");
        assert_eq!(state.get("ns", "k").as_deref(), Some(&[1][..]));
        // Deleted behind its back after: reads no longer go to the file.
        store
            .conn()
            .execute("DELETE FROM plugin_state", [])
            .expect("delete");
        assert_eq!(state.get("ns", "k").as_deref(), Some(&[1][..]));
    }

    #[test]
    fn writes_to_a_namespace_never_read_are_found_when_it_is_loaded() {
        let (store, state) = state();
        state.apply("ns", vec![set("k", b"v")]);
        assert!(lock(&state.space("ns")).is_none(), "a write does not load");
        assert_eq!(on_disk(&store, "ns", "k").as_deref(), Some(&b"v"[..]));
        assert_eq!(state.get("ns", "k").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_failed_load_reads_as_absent_and_is_retried() {
        let (store, state) = state();
        state.apply("ns", vec![set("k", b"v")]);
        store
            .conn()
            .execute_batch("ALTER TABLE plugin_state RENAME TO hidden")
            .expect("hide table");
        assert_eq!(state.get("ns", "k"), None);
        store
            .conn()
            .execute_batch("ALTER TABLE hidden RENAME TO plugin_state")
            .expect("restore table");
        assert_eq!(state.get("ns", "k").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn concurrent_writers_leave_the_cache_equal_to_the_file() {
        let (store, state) = state();
        let state = Arc::new(state);
        assert_eq!(state.get("ns", "k"), None, "load before the race");
        let threads: Vec<_> = (0u8..4)
            .map(|t| {
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    for i in 0u8..50 {
                        state.apply("ns", vec![set("k", &[t, i])]);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writer thread");
        }
        let cached = state.get("ns", "k");
        assert!(cached.as_deref().is_some_and(|v| v[1] == 49), "{cached:?}");
        assert_eq!(cached, on_disk(&store, "ns", "k"));
    }
}
