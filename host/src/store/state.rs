//! Plugin state kept in the store's SQLite file, so it survives restarts, with an
//! in-memory cache in front because plugins read state on every call.
//!
//! # Group commit
//!
//! A plugin call's writes are visible to the next call at once, and reach the file a moment
//! later: the writes of every call made meanwhile are committed in one transaction, so that
//! a busy pipeline pays for one commit per batch instead of one per call. No event is
//! acknowledged before the state it produced is in the file: a worker at the end of its batch
//! asks [`StateStore::durable`] what to wait for, and that commits whatever is queued right
//! there, in the worker's thread, unless a commit is under way or the file is busy. Then, and
//! for the writes nobody waits for (of messages no transport acknowledges, as MQTT's QoS 0),
//! the store's writer thread commits: those it lets gather for up to [`LAZY`], until someone
//! starts waiting.
//!
//! The worker commits rather than the writer thread because the hand-off cost more than the
//! commit: at 43 000 events/s (`bench pipeline` on two cores) the writer was woken some 2 800
//! times a second, and each time it waited for a core (a tenth of the wake-ups 0.4 ms or
//! more, `perf sched timehist`) while both ran the workers, with every event of the batch
//! waiting behind it. At half the full rate, committing in the worker lowered the p50 from
//! receipt to acknowledgement in 8 of 8 rounds side by side, and the p99 in 7 of 8.
//!
//! # The cache mirrors what is on disk, never more
//!
//! A namespace (one rule step) is loaded whole on first use, and from then on reads are
//! answered from memory: from the writes still waiting for their commit, then from the
//! committed entries. A call's writes go into the committed entries only once their
//! transaction committed. If the call's savepoint or the transaction fails (disk full, file
//! locked beyond the busy timeout, read-only file), SQLite rolls it back and the waiting
//! writes are taken away: the writes of that call are dropped as a whole, as if the call had
//! failed, and the failure is logged at ERROR. The alternative, keeping the writes in
//! memory only, would let a plugin see state that a restart silently takes away; with this
//! choice what a plugin reads is, within one commit, what a restart would give it.
//!
//! The host's own namespaces (the twins', see [`HOST_NAMESPACE_PREFIX`]) are only read from
//! the file, after what is queued is committed ([`StateStore::read_uncached`]): their writes
//! go to the writer without a copy kept for readers.
//!
//! Each namespace has its own lock, held while a call's writes are queued and while a
//! commit's outcome is applied to it, so two calls of the same step reach the disk and the
//! cache in the order they were made; reads of other namespaces are not held up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, params};
use tokio::sync::watch;

use super::{BUSY_TIMEOUT, Store};
use crate::metrics::{Counter, Metrics};
use crate::plugin::{Durable, HOST_NAMESPACE_PREFIX, HostData, StateStore, StateUsage};
use crate::sync::{lock, try_lock};

/// A write: the key and its new value, `None` to delete it.
type Write = (String, Option<Vec<u8>>);

/// One namespace: its committed entries (`None` until first loaded from the file) and the
/// writes waiting for their commit.
#[derive(Debug, Default)]
struct Space {
    entries: Option<Entries>,
    /// The newest waiting write of each key, with the number of the call that made it.
    waiting: HashMap<String, (u64, Option<Vec<u8>>)>,
    /// What a reader sees (the entries with the waiting writes over them), kept as they
    /// change so that the quota check after each call does not sum them. Only meaningful
    /// once the entries are loaded.
    view: StateUsage,
}

impl Space {
    /// What `key` reads as: its waiting write, else its committed value.
    fn read(&self, key: &str) -> Option<Option<&Vec<u8>>> {
        if let Some((_, value)) = self.waiting.get(key) {
            return Some(value.as_ref());
        }
        Some(self.entries.as_ref()?.map.get(key))
    }

    /// Queues `value` for `key` as call `call`'s write.
    fn wait(&mut self, call: u64, key: &str, value: Option<Vec<u8>>) {
        if self.entries.is_some() {
            let before = self.read(key).flatten().map(|v| v.len());
            adjust(
                &mut self.view,
                key.len(),
                before,
                value.as_ref().map(Vec::len),
            );
        }
        self.waiting.insert(key.to_owned(), (call, value));
    }

    /// Call `call`'s write of `key` is done with: committed (`value` goes into the entries)
    /// or dropped. The waiting write goes away unless a later call wrote the key again.
    fn settle(&mut self, call: u64, key: String, value: Option<Vec<u8>>, committed: bool) {
        let newest = self.waiting.get(&key).is_some_and(|(by, _)| *by == call);
        if newest {
            let (_, waiting) = self.waiting.remove(&key).unwrap_or_default();
            if !committed && let Some(entries) = &self.entries {
                let now = entries.map.get(&key).map(Vec::len);
                adjust(
                    &mut self.view,
                    key.len(),
                    waiting.as_ref().map(Vec::len),
                    now,
                );
            }
        }
        if committed && let Some(entries) = &mut self.entries {
            entries.write(key, value);
        }
    }

    /// The view once the entries are loaded: them, with the waiting writes over them.
    fn recount(&mut self) {
        let Some(entries) = &self.entries else {
            return;
        };
        let mut view = StateUsage {
            keys: entries.map.len(),
            bytes: entries.bytes,
        };
        for (key, (_, value)) in &self.waiting {
            let before = entries.map.get(key).map(Vec::len);
            adjust(&mut view, key.len(), before, value.as_ref().map(Vec::len));
        }
        self.view = view;
    }
}

/// Moves `usage` from a key holding a value of `before` bytes (or none) to one of `after`.
fn adjust(usage: &mut StateUsage, key: usize, before: Option<usize>, after: Option<usize>) {
    if let Some(before) = before {
        usage.keys -= 1;
        usage.bytes -= key + before;
    }
    if let Some(after) = after {
        usage.keys += 1;
        usage.bytes += key + after;
    }
}

/// A loaded namespace's committed entries, with the size of their keys and values.
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

/// One call's writes, queued for the writer.
struct Call {
    number: u64,
    namespace: String,
    space: Arc<Mutex<Space>>,
    writes: Vec<Write>,
    /// For a namespace of kept host data ([`StateStore::changed`]): its writes are its data's
    /// changes, taken when the writer takes the call.
    kept: bool,
}

/// The calls waiting for the writer.
#[derive(Default)]
struct Queue {
    calls: Vec<Call>,
    /// The number of the last call queued.
    last: u64,
    /// The number of the last call someone waits for ([`StateStore::durable`], a flush).
    waited: u64,
    /// The namespaces of kept data with a call in `calls`: a change made before the writer
    /// takes the calls is written by that call, so another one for it would add nothing.
    kept_queued: Vec<String>,
    /// When the first of `calls` was queued: the writer commits them [`LAZY`] after it at
    /// the latest.
    since: Option<Instant>,
    /// Whether the writer sleeps with nothing queued: the next call wakes it.
    idle: bool,
    /// Whether the writer lets calls nobody waits for gather (see [`LAZY`]): whoever starts
    /// waiting then wakes it.
    lazy: bool,
    closed: bool,
}

impl Queue {
    /// Queues `call`; true when the writer is to be woken for it: it sleeps with nothing
    /// queued, or the call fills what it lets gather.
    fn push(&mut self, call: Call) -> bool {
        if self.calls.is_empty() {
            self.since = Some(Instant::now());
        }
        self.calls.push(call);
        let wake = self.idle || (self.lazy && self.calls.len() == LAZY_CALLS);
        // Once is enough: the calls queued before it runs need no other wake-up.
        self.idle = false;
        wake
    }

    /// Notes that someone waits for every call queued so far; true when the writer is to be
    /// woken for it.
    fn wait_for_last(&mut self) -> bool {
        self.waited = self.last;
        self.lazy
    }
}

/// What the writer thread shares with the callers.
struct Shared {
    store: Arc<Store>,
    /// The host data kept in its namespaces ([`StateStore::keep`]).
    kept: Mutex<HashMap<String, Arc<dyn HostData>>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Held through a commit, from taking the calls to marking them done, by whoever
    /// commits: calls are committed in the order they were queued, and `done` only grows.
    committing: Mutex<()>,
    /// The number of the last call whose writes are committed or dropped.
    done: watch::Sender<u64>,
    /// Signalled with `done`, for [`SqliteStateStore::flush`].
    done_lock: Mutex<u64>,
    done_signal: Condvar,
    /// Transactions that wrote calls (`iotrules_state_commits_total`).
    commits: Arc<Counter>,
}

/// [`StateStore`] in the store's SQLite file, cached in memory, written by group commit.
///
/// Loaded namespaces stay cached for the life of the process: there is one per rule step
/// and plugin state is small by design. Dropping it commits what is queued.
pub struct SqliteStateStore {
    shared: Arc<Shared>,
    spaces: Mutex<HashMap<String, Arc<Mutex<Space>>>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStateStore")
            .field("store", &self.shared.store.path())
            .finish_non_exhaustive()
    }
}

impl SqliteStateStore {
    /// Plugin state in `store`'s file, which it shares with the dead letters. Starts the
    /// writer thread.
    pub fn new(store: Arc<Store>) -> Self {
        let shared = Arc::new(Shared {
            store,
            kept: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            committing: Mutex::new(()),
            done: watch::Sender::new(0),
            done_lock: Mutex::new(0),
            done_signal: Condvar::new(),
            commits: Arc::default(),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("iotrules-state".into())
                .spawn(move || write_batches(&shared))
                .map_err(|error| {
                    tracing::error!(%error, "Cannot start the plugin state writer thread");
                })
                .ok()
        };
        SqliteStateStore {
            shared,
            spaces: Mutex::new(HashMap::new()),
            writer,
        }
    }

    /// How many transactions have written calls so far.
    pub fn commits(&self) -> u64 {
        self.shared.commits.get()
    }

    /// Waits until every write queued so far is committed or dropped.
    pub fn flush(&self) {
        let last = {
            let mut queue = lock(&self.shared.queue);
            if queue.wait_for_last() {
                self.shared.wake.notify_one();
            }
            queue.last
        };
        let mut done = lock(&self.shared.done_lock);
        while *done < last && self.writer.is_some() {
            done = self
                .shared
                .done_signal
                .wait(done)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// The lock of one namespace's cache, created empty (not loaded) on first use.
    fn space(&self, namespace: &str) -> Arc<Mutex<Space>> {
        let mut spaces = lock(&self.spaces);
        if let Some(space) = spaces.get(namespace) {
            return Arc::clone(space);
        }
        let space = Arc::new(Mutex::new(Space::default()));
        spaces.insert(namespace.to_owned(), Arc::clone(&space));
        space
    }

    /// Loads the namespace's entries from the file if this is the first use. False if
    /// loading failed (logged); the next call tries again.
    fn load(&self, namespace: &str, space: &mut Space) -> bool {
        if space.entries.is_none() {
            match load(&self.shared.store.conn(), namespace) {
                Ok(map) => {
                    let bytes = map.iter().map(|(k, v)| k.len() + v.len()).sum();
                    space.entries = Some(Entries { map, bytes });
                    space.recount();
                }
                Err(error) => {
                    tracing::error!(
                        store = %self.shared.store.path().display(),
                        namespace,
                        %error,
                        "Cannot read plugin state; the step sees none until a read succeeds"
                    );
                    return false;
                }
            }
        }
        true
    }
}

impl Drop for SqliteStateStore {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl StateStore for SqliteStateStore {
    fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let space = self.space(namespace);
        let mut space = lock(&space);
        if let Some((_, value)) = space.waiting.get(key) {
            return value.clone();
        }
        if !self.load(namespace, &mut space) {
            return None;
        }
        space.read(key).flatten().cloned()
    }

    /// From the cache (loading the namespace on first use); nothing if it cannot be read,
    /// as [`get`](StateStore::get) then reads nothing either.
    fn usage(&self, namespace: &str) -> StateUsage {
        let space = self.space(namespace);
        let mut space = lock(&space);
        if self.load(namespace, &mut space) {
            space.view
        } else {
            StateUsage::default()
        }
    }

    fn entry_size(&self, namespace: &str, key: &str) -> Option<usize> {
        let space = self.space(namespace);
        let mut space = lock(&space);
        if !space.waiting.contains_key(key) && !self.load(namespace, &mut space) {
            return None;
        }
        let value = space.read(key).flatten()?;
        Some(key.len() + value.len())
    }

    fn apply(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>) {
        if writes.is_empty() {
            return;
        }
        let space_lock = self.space(namespace);
        let mut space = lock(&space_lock);
        let mut queue = lock(&self.shared.queue);
        queue.last += 1;
        let number = queue.last;
        // The host's own namespaces (the twins) are read from the file, after the commit
        // (`read_uncached`), never through the cache: their writes are not copied for readers.
        if !namespace.starts_with(HOST_NAMESPACE_PREFIX) {
            for (key, value) in &writes {
                space.wait(number, key, value.clone());
            }
        }
        // Woken only when it sleeps on an empty queue (or gathers a full one): waking it for
        // every call would cost a system call per call while it is busy committing.
        let wake = queue.push(Call {
            number,
            namespace: namespace.to_owned(),
            space: Arc::clone(&space_lock),
            writes,
            kept: false,
        });
        drop(queue);
        drop(space);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    fn keep(&self, namespace: &str, data: Arc<dyn HostData>) {
        lock(&self.shared.kept).insert(namespace.to_owned(), data);
    }

    /// Queues a call whose writes the writer takes from the kept data when it takes the
    /// call: whatever changed up to then, each entry once, as it is then.
    fn changed(&self, namespace: &str) {
        let mut queue = lock(&self.shared.queue);
        if queue.kept_queued.iter().any(|queued| queued == namespace) {
            return;
        }
        let space = self.space(namespace);
        queue.kept_queued.push(namespace.to_owned());
        queue.last += 1;
        let number = queue.last;
        let wake = queue.push(Call {
            number,
            namespace: namespace.to_owned(),
            space,
            writes: Vec::new(),
            kept: true,
        });
        drop(queue);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    fn timers(&self) -> Vec<(String, String, Vec<u8>)> {
        self.flush();
        match timers(&self.shared.store.conn()) {
            Ok(timers) => timers,
            Err(error) => {
                tracing::error!(
                    store = %self.shared.store.path().display(),
                    %error,
                    "Cannot read the stored timers; none will fire until the next start"
                );
                Vec::new()
            }
        }
    }

    /// Straight from the file, after what is queued is committed; logged (and nothing
    /// handed) if it cannot be read.
    fn read_uncached(&self, namespace: &str, each: &mut dyn FnMut(&str, &[u8])) {
        self.flush();
        if let Err(error) = scan(&self.shared.store.conn(), namespace, each) {
            tracing::error!(
                store = %self.shared.store.path().display(),
                namespace,
                %error,
                "Cannot read the host's stored data; it starts empty"
            );
        }
    }

    fn register_metrics(&self, metrics: &Metrics) {
        metrics
            .state_commits
            .adopt(&[], self.shared.commits.clone());
    }

    fn backlog(&self) -> u64 {
        let last = lock(&self.shared.queue).last;
        last.saturating_sub(*self.shared.done.borrow())
    }

    /// Commits what is queued in the caller's thread when nobody else is committing and the
    /// file is free; else the writer thread commits it (at once: someone waits).
    fn durable(&self) -> Option<Durable> {
        let shared = &*self.shared;
        if lock(&shared.queue).last <= *shared.done.borrow() {
            return None;
        }
        if let Some(committing) = try_lock(&shared.committing)
            && let Some(conn) = shared.store.try_conn()
        {
            // Holding `committing`, nobody else has calls taken and not done: this commit
            // takes every call queued until now, the last one the caller waits for included.
            // Unless another process holds the file's write lock (`iotrules dead-letters
            // purge`, a backup): the writer thread waits for it, not the caller.
            if commit_queued(shared, &committing, conn, false) {
                return None;
            }
        }
        let done = shared.done.subscribe();
        let mut queue = lock(&shared.queue);
        let last = queue.last;
        if *done.borrow() >= last {
            return None;
        }
        if queue.wait_for_last() {
            self.shared.wake.notify_one();
        }
        drop(queue);
        Some(Durable::new(last, done))
    }
}

/// How long the writer lets calls that nobody waits for gather before it commits them (the
/// writes of deliveries no transport acknowledges, as MQTT's QoS 0: their events are settled
/// without waiting). A commit costs tens of microseconds whatever it holds; committing such a
/// stream as it comes costs a share of a core for nothing.
const LAZY: Duration = Duration::from_millis(50);

/// The most calls the writer lets gather that way.
const LAZY_CALLS: usize = 1024;

/// The writer thread: commits the calls queued when someone waits for them (and could not
/// commit them in its own thread), when [`LAZY`] has passed since the first of them, or when
/// [`LAZY_CALLS`] gathered; until the store is dropped and the queue is empty.
fn write_batches(shared: &Shared) {
    loop {
        let mut queue = lock(&shared.queue);
        loop {
            if queue.calls.is_empty() {
                if queue.closed {
                    return;
                }
                queue.idle = true;
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                queue.idle = false;
                continue;
            }
            let waited = queue.waited > *shared.done.borrow();
            if waited || queue.closed || queue.calls.len() >= LAZY_CALLS {
                break;
            }
            let since = *queue.since.get_or_insert_with(Instant::now);
            let Some(left) = (since + LAZY).checked_duration_since(Instant::now()) else {
                break;
            };
            queue.lazy = true;
            queue = shared
                .wake
                .wait_timeout(queue, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
            queue.lazy = false;
        }
        drop(queue);
        let committing = lock(&shared.committing);
        commit_queued(shared, &committing, shared.store.conn(), true);
    }
}

/// Commits every call queued, in one transaction, and marks them done. `_committing` is
/// [`Shared::committing`], held until they are. Without `wait`, takes nothing and returns
/// false when another connection holds the file's write lock, instead of waiting for it up
/// to the busy timeout.
fn commit_queued(
    shared: &Shared,
    _committing: &MutexGuard<'_, ()>,
    mut conn: MutexGuard<'_, Connection>,
    wait: bool,
) -> bool {
    // Begun before the calls are taken, so that those of a caller that does not wait stay
    // queued for the writer.
    let began = begin(&conn, wait);
    if !wait
        && let Err(error) = &began
        && matches!(
            error.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    {
        return false;
    }
    let mut calls = {
        let mut queue = lock(&shared.queue);
        queue.kept_queued.clear();
        queue.since = None;
        std::mem::take(&mut queue.calls)
    };
    let Some(last) = calls.last().map(|call| call.number) else {
        end(&conn);
        return true;
    };
    take_kept_changes(shared, &mut calls);
    let saved = save_batch(&mut conn, &calls, began.is_ok());
    shared.commits.inc();
    // Before any namespace's lock: a reader loading its namespace holds that lock and waits
    // for the connection.
    drop(conn);
    for (call, saved) in calls.into_iter().zip(saved) {
        if let Err(error) = &saved {
            // Keys and values are the plugin's data and may be sensitive: only counts.
            tracing::error!(
                store = %shared.store.path().display(),
                namespace = call.namespace,
                writes = call.writes.len(),
                %error,
                "Plugin state not saved; the writes of one plugin call were dropped"
            );
        }
        let mut space = lock(&call.space);
        for (key, value) in call.writes {
            space.settle(call.number, key, value, saved.is_ok());
        }
    }
    shared.done.send_replace(last);
    *lock(&shared.done_lock) = last;
    shared.done_signal.notify_all();
    true
}

/// Begins the write transaction, waiting for the file's write lock up to the busy timeout
/// if `wait`, else not at all.
fn begin(conn: &Connection, wait: bool) -> rusqlite::Result<()> {
    if wait {
        return conn.execute_batch("BEGIN IMMEDIATE");
    }
    conn.busy_timeout(Duration::ZERO)?;
    let began = conn.execute_batch("BEGIN IMMEDIATE");
    if let Err(error) = conn.busy_timeout(BUSY_TIMEOUT) {
        // Not left open: the calls are then written call by call, each in a transaction.
        end(conn);
        return Err(error);
    }
    began
}

/// Ends the transaction left open, if any, changing nothing.
fn end(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// Fills the calls of kept host data with the changes their data has now. Every such call
/// was queued after the changes it stands for were made, so taking them now covers them;
/// later calls of the same namespace in the batch find what changed since, usually nothing.
fn take_kept_changes(shared: &Shared, calls: &mut [Call]) {
    if !calls.iter().any(|call| call.kept) {
        return;
    }
    let kept = lock(&shared.kept);
    for call in calls.iter_mut().filter(|call| call.kept) {
        if let Some(data) = kept.get(&call.namespace) {
            call.writes = data.take_changes();
        }
    }
}

/// Saves the calls in one transaction, each call all or none; what became of each call, in
/// order.
///
/// The batch is written straight through first: a savepoint per call is two more statements
/// per call, paid for a failure that hardly ever comes. Only when a write fails is the
/// transaction rolled back and written again call by call, each in a savepoint, so that the
/// failure drops only its own call's writes.
///
/// Straight through, each key is written once, with the last value the batch gives it
/// ([`save_last`]): the rows that writing every write in order leaves, for fewer statements.
///
/// `began`: the transaction to write straight through in is open ([`begin`]); if not, or if
/// that fails, the calls are written call by call.
fn save_batch(conn: &mut Connection, calls: &[Call], began: bool) -> Vec<Result<(), String>> {
    if began {
        if save_last(conn, calls)
            .and_then(|()| conn.execute_batch("COMMIT"))
            .is_ok()
        {
            return calls.iter().map(|_| Ok(())).collect();
        }
        end(conn);
    }
    let mut outcomes = Vec::with_capacity(calls.len());
    let committed = (|| {
        let mut tx = conn.transaction()?;
        for call in calls {
            let mut savepoint = tx.savepoint()?;
            let saved = save(&savepoint, &call.namespace, &call.writes);
            if saved.is_ok() {
                savepoint.commit()?;
            } else {
                savepoint.rollback()?;
            }
            outcomes.push(saved.map_err(|error| error.to_string()));
        }
        tx.commit()
    })();
    match committed {
        Ok(()) => outcomes,
        Err(error) => calls.iter().map(|_| Err(error.to_string())).collect(),
    }
}

fn load(conn: &Connection, namespace: &str) -> rusqlite::Result<HashMap<String, Vec<u8>>> {
    let mut select =
        conn.prepare_cached("SELECT key, value FROM plugin_state WHERE namespace = ?")?;
    let rows = select.query_map([namespace], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// Every timer entry of every step's namespace: the keys from `@timer/` up to (not
/// including) `@timer0`, `0` being the character after `/`, outside the host's namespaces.
fn timers(conn: &Connection) -> rusqlite::Result<Vec<(String, String, Vec<u8>)>> {
    let mut select = conn.prepare_cached(
        "SELECT namespace, key, value FROM plugin_state WHERE key >= ?1 AND key < ?2 \
         AND substr(namespace, 1, 1) <> ?3",
    )?;
    let prefix = crate::plugin::TIMER_PREFIX;
    let end = format!("{}0", &prefix[..prefix.len() - 1]);
    let host = HOST_NAMESPACE_PREFIX.to_string();
    let rows = select.query_map([prefix, end.as_str(), host.as_str()], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })?;
    rows.collect()
}

/// Hands `each` every entry of `namespace`, one row at a time (a namespace of a hundred
/// thousand twins is never all in memory as bytes at once).
fn scan(
    conn: &Connection,
    namespace: &str,
    each: &mut dyn FnMut(&str, &[u8]),
) -> rusqlite::Result<()> {
    let mut select =
        conn.prepare_cached("SELECT key, value FROM plugin_state WHERE namespace = ?")?;
    let mut rows = select.query([namespace])?;
    while let Some(row) = rows.next()? {
        let key = row.get_ref(0)?.as_str()?;
        let value = row.get_ref(1)?.as_bytes()?;
        each(key, value);
    }
    Ok(())
}

/// Writes a key's value, replacing the one it had.
const UPSERT: &str = "INSERT INTO plugin_state (namespace, key, value) VALUES (?, ?, ?) \
     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value";

/// Removes a key.
const DELETE: &str = "DELETE FROM plugin_state WHERE namespace = ? AND key = ?";

/// Applies one call's writes in order.
fn save(conn: &Connection, namespace: &str, writes: &[Write]) -> rusqlite::Result<()> {
    write_rows(
        conn,
        writes
            .iter()
            .map(|(key, value)| ((namespace, key.as_str()), value)),
    )
}

/// Writes each key that `calls` write once, with the last value they give it, in key order.
/// A batch holds the writes of every event since the last commit, and a device that reported
/// twice meanwhile has its keys written twice: at full rate (`bench pipeline`, the twin on), a
/// commit held 65 writes of 52 keys.
fn save_last(conn: &Connection, calls: &[Call]) -> rusqlite::Result<()> {
    let mut last: BTreeMap<(&str, &str), &Option<Vec<u8>>> = BTreeMap::new();
    for call in calls {
        for (key, value) in &call.writes {
            last.insert((&call.namespace, key), value);
        }
    }
    write_rows(conn, last)
}

/// Writes each (namespace, key) its value, or removes it for `None`, in the order given.
fn write_rows<'a>(
    conn: &Connection,
    rows: impl IntoIterator<Item = ((&'a str, &'a str), &'a Option<Vec<u8>>)>,
) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(UPSERT)?;
    let mut delete = conn.prepare_cached(DELETE)?;
    for ((namespace, key), value) in rows {
        match value {
            Some(value) => upsert.execute(params![namespace, key, value])?,
            None => delete.execute(params![namespace, key])?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn state() -> (Arc<Store>, SqliteStateStore) {
        let store = Arc::new(Store::open_in_memory().expect("store"));
        (Arc::clone(&store), SqliteStateStore::new(store))
    }

    fn set(key: &str, value: &[u8]) -> (String, Option<Vec<u8>>) {
        (key.to_owned(), Some(value.to_vec()))
    }

    /// Makes every write of the key `poison` fail, as a full disk would.
    fn poison(store: &Store) {
        store
            .conn()
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON plugin_state WHEN NEW.key = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .expect("trigger");
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
        poison(&store);

        // The first write of the call would succeed alone; the second fails: none stays.
        state.apply("ns", vec![set("a", b"2"), set("poison", b"x")]);
        state.flush();

        assert_eq!(state.get("ns", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(state.get("ns", "poison"), None);
        assert_eq!(on_disk(&store, "ns", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(on_disk(&store, "ns", "poison"), None);

        store
            .conn()
            .execute_batch("DROP TRIGGER poison")
            .expect("drop trigger");
        state.apply("ns", vec![set("a", b"3")]);
        state.flush();
        assert_eq!(
            state.get("ns", "a").as_deref(),
            Some(&b"3"[..]),
            "writes resume"
        );
        assert_eq!(on_disk(&store, "ns", "a").as_deref(), Some(&b"3"[..]));
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
        state.flush();
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
        state.flush();
        assert!(
            lock(&state.space("ns")).entries.is_none(),
            "a write does not load"
        );
        assert_eq!(on_disk(&store, "ns", "k").as_deref(), Some(&b"v"[..]));
        assert_eq!(state.get("ns", "k").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_failed_load_reads_as_absent_and_is_retried() {
        let (store, state) = state();
        state.apply("ns", vec![set("k", b"v")]);
        state.flush();
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
        state.flush();
        let cached = state.get("ns", "k");
        assert!(cached.as_deref().is_some_and(|v| v[1] == 49), "{cached:?}");
        assert_eq!(cached, on_disk(&store, "ns", "k"));
    }

    #[test]
    fn a_caller_waiting_for_its_writes_commits_them_itself_when_the_file_is_free() {
        let (store, state) = state();
        state.apply("ns", vec![set("k", b"1")]);
        state.apply("other", vec![set("j", b"2")]);
        assert!(
            state.durable().is_none(),
            "committed in the caller's thread: nothing left to wait for"
        );
        assert_eq!(on_disk(&store, "ns", "k").as_deref(), Some(&b"1"[..]));
        assert_eq!(on_disk(&store, "other", "j").as_deref(), Some(&b"2"[..]));
        assert_eq!(state.get("ns", "k").as_deref(), Some(&b"1"[..]));
        assert_eq!(state.backlog(), 0);
    }

    #[test]
    fn a_caller_leaves_the_wait_for_another_process_s_write_lock_to_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("iotrules.db");
        let store = Arc::new(Store::open(&file).expect("store"));
        let state = SqliteStateStore::new(Arc::clone(&store));
        let other = Connection::open(&file).expect("second connection");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        state.apply("ns", vec![set("k", b"1")]);
        // Committing in the caller's thread would hold it for the busy timeout, then drop
        // the writes: it hands them to the writer, which waits for the lock.
        let durable = state
            .durable()
            .expect("the writes wait for the lock, not the caller");
        other.execute_batch("COMMIT").expect("release the lock");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(durable.wait());
        assert_eq!(on_disk(&store, "ns", "k").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn writes_are_read_at_once_and_durable_only_once_committed() {
        let (store, state) = state();
        assert!(
            state.durable().is_none(),
            "nothing written, nothing to wait for"
        );
        assert_eq!(state.get("ns", "k"), None, "loaded");
        let durable = {
            // The writer cannot commit while the test holds the connection.
            let _held = store.conn();
            state.apply("ns", vec![set("k", b"1")]);
            state.apply("ns", vec![set("k", b"2"), set("j", b"x")]);
            assert_eq!(
                state.get("ns", "k").as_deref(),
                Some(&b"2"[..]),
                "read at once"
            );
            assert_eq!(state.usage("ns"), StateUsage { keys: 2, bytes: 4 });
            let durable = state.durable().expect("writes wait for their commit");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let waited = runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), durable.wait()).await
            });
            assert!(waited.is_err(), "durable before the commit");
            state.durable().expect("still waiting")
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(durable.wait());
        assert_eq!(on_disk(&store, "ns", "k").as_deref(), Some(&b"2"[..]));
        assert_eq!(on_disk(&store, "ns", "j").as_deref(), Some(&b"x"[..]));
        assert!(state.durable().is_none(), "all committed");
    }

    #[test]
    fn a_failed_call_in_a_batch_drops_only_its_own_writes() {
        let (store, state) = state();
        assert_eq!(state.get("ns", "a"), None, "loaded");
        poison(&store);
        {
            // Held: the three calls are committed together, in one transaction.
            let _held = store.conn();
            state.apply("ns", vec![set("a", b"1")]);
            state.apply("ns", vec![set("b", b"2"), set("poison", b"x")]);
            state.apply("ns", vec![set("c", b"3")]);
        }
        state.flush();
        assert_eq!(state.get("ns", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(
            state.get("ns", "b"),
            None,
            "the failed call's writes are dropped"
        );
        assert_eq!(state.get("ns", "poison"), None);
        assert_eq!(state.get("ns", "c").as_deref(), Some(&b"3"[..]));
        assert_eq!(state.usage("ns"), StateUsage { keys: 2, bytes: 4 });
        assert_eq!(on_disk(&store, "ns", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(on_disk(&store, "ns", "b"), None);
        assert_eq!(on_disk(&store, "ns", "c").as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn a_key_written_by_several_calls_of_one_commit_is_written_once_with_its_last_value() {
        let (store, state) = state();
        assert_eq!(state.get("ns", "a"), None, "loaded");
        // Counts the rows the commits insert, update and delete.
        store
            .conn()
            .execute_batch(
                "CREATE TABLE row_writes (n INTEGER);
                 CREATE TRIGGER count_insert AFTER INSERT ON plugin_state
                     BEGIN INSERT INTO row_writes VALUES (1); END;
                 CREATE TRIGGER count_update AFTER UPDATE ON plugin_state
                     BEGIN INSERT INTO row_writes VALUES (1); END;
                 CREATE TRIGGER count_delete AFTER DELETE ON plugin_state
                     BEGIN INSERT INTO row_writes VALUES (1); END;",
            )
            .expect("triggers");
        {
            // Held: the calls are committed together, in one transaction.
            let _held = store.conn();
            state.apply("ns", vec![set("a", b"1"), set("b", b"1")]);
            state.apply("ns", vec![set("a", b"2")]);
            state.apply("ns", vec![set("a", b"3"), ("b".into(), None)]);
            state.apply("other", vec![set("a", b"x")]);
        }
        state.flush();
        let row_writes: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM row_writes", [], |row| row.get(0))
            .expect("count");
        // `a` inserted once with its last value, `b` never stored (its last write removes
        // it), the other namespace's `a` inserted: not the six row writes of every call.
        assert_eq!(row_writes, 2);
        assert_eq!(on_disk(&store, "ns", "a").as_deref(), Some(&b"3"[..]));
        assert_eq!(on_disk(&store, "ns", "b"), None);
        assert_eq!(on_disk(&store, "other", "a").as_deref(), Some(&b"x"[..]));
        assert_eq!(state.get("ns", "a").as_deref(), Some(&b"3"[..]));
        assert_eq!(state.get("ns", "b"), None);
        assert_eq!(state.usage("ns"), StateUsage { keys: 1, bytes: 2 });
    }

    #[test]
    fn an_uncached_read_sees_every_committed_entry_and_loads_nothing_into_the_cache() {
        let (_store, state) = state();
        state.apply("@twin", vec![set("a", b"1"), set("b", b"2")]);
        state.apply("@twin", vec![("a".into(), None), set("c", b"3")]);
        let mut read = Vec::new();
        state.read_uncached("@twin", &mut |key, value| {
            read.push((key.to_owned(), value.to_vec()));
        });
        read.sort();
        assert_eq!(
            read,
            [
                ("b".to_owned(), b"2".to_vec()),
                ("c".to_owned(), b"3".to_vec())
            ]
        );
        assert!(
            lock(&state.space("@twin")).entries.is_none(),
            "the namespace is not cached"
        );
        assert!(lock(&state.spaces).get("other").is_none());
    }

    #[test]
    fn a_host_namespace_write_is_held_once_until_its_commit_not_copied_for_readers() {
        let (store, state) = state();
        // Hold the writer back: it waits for the connection while this holds it.
        let blocker = store.conn();
        state.apply("@twin", vec![set("dev", b"{\"twin\":1}")]);
        state.apply("rule/1", vec![set("k", b"v")]);
        assert!(
            lock(&state.space("@twin")).waiting.is_empty(),
            "a twin waiting for its commit has no second copy for readers"
        );
        assert_eq!(
            lock(&state.space("rule/1")).waiting.len(),
            1,
            "a step's write is visible to its next call before the commit"
        );
        drop(blocker);
        let mut read = Vec::new();
        state.read_uncached("@twin", &mut |key, value| {
            read.push((key.to_owned(), value.to_vec()));
        });
        assert_eq!(read, [("dev".to_owned(), b"{\"twin\":1}".to_vec())]);
    }

    /// Host data whose changes are set by the test; counts how often it was asked.
    #[derive(Debug, Default)]
    struct Changes {
        pending: Mutex<Vec<Write>>,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl HostData for Changes {
        fn take_changes(&self) -> Vec<Write> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::mem::take(&mut *lock(&self.pending))
        }
    }

    #[test]
    fn changes_of_kept_data_queue_one_call_until_the_writer_takes_it() {
        let (store, state) = state();
        let data = Arc::new(Changes::default());
        state.keep("@twin", data.clone());
        {
            // Held back, the writer has taken at most the first call and waits with it.
            let _held = store.conn();
            for n in 0..100 {
                lock(&data.pending).push(set(&format!("k{n}"), b"1"));
                state.changed("@twin");
            }
            assert!(state.backlog() <= 2, "{} calls behind", state.backlog());
        }
        state.flush();
        assert_eq!(state.backlog(), 0);
        for n in [0, 99] {
            assert_eq!(
                on_disk(&store, "@twin", &format!("k{n}")),
                Some(b"1".to_vec())
            );
        }
    }

    #[test]
    fn writes_nobody_waits_for_are_committed_all_the_same() {
        let (store, state) = state();
        state.apply("rule/1", vec![set("k", b"v")]);
        // Nothing asks for `durable` or a flush: the writer commits on its own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while on_disk(&store, "rule/1", "k").is_none() {
            assert!(Instant::now() < deadline, "never committed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(state.backlog(), 0);
    }

    #[test]
    fn kept_host_data_is_taken_as_it_is_at_the_commit_and_durable_covers_it() {
        let (store, state) = state();
        let data = Arc::new(Changes::default());
        state.keep("@twin", data.clone());
        let durable = {
            // Hold the writer back while the data changes three times.
            let _held = store.conn();
            *lock(&data.pending) = vec![set("a", b"1"), set("b", b"1")];
            state.changed("@twin");
            state.changed("@twin");
            lock(&data.pending).push(("b".into(), None));
            state.changed("@twin");
            state.durable().expect("the changes wait for their commit")
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(durable.wait());
        assert_eq!(on_disk(&store, "@twin", "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(on_disk(&store, "@twin", "b"), None, "the last change of b");
        assert!(
            data.asked.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "asked at the commit"
        );
        assert!(lock(&data.pending).is_empty(), "every change taken");
        // Data changed without `changed` is not written until it is said.
        lock(&data.pending).push(set("c", b"1"));
        state.flush();
        assert_eq!(on_disk(&store, "@twin", "c"), None);
        state.changed("@twin");
        state.flush();
        assert_eq!(on_disk(&store, "@twin", "c").as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn timers_are_read_from_the_steps_namespaces_only() {
        let (_store, state) = state();
        let timer = format!("{}dev/t", crate::plugin::TIMER_PREFIX);
        state.apply("rule/1", vec![set(&timer, b"{}")]);
        // A device whose id looks like a timer key, in the host's twin namespace.
        state.apply("@twin", vec![set(&timer, b"{}")]);
        let timers = state.timers();
        assert_eq!(timers.len(), 1, "{timers:?}");
        assert_eq!(timers[0].0, "rule/1");
    }
}
