//! The service's local SQLite file: dead letters and plugin state.
//!
//! One file holds what must survive a restart: deliveries the service could not process
//! ([`dead_letters`]), kept byte for byte so they can be inspected and replayed, and the
//! key-value state of plugins ([`state`]). The file runs in WAL mode so the `iotrules
//! dead-letters` command can read it while the service writes, with `synchronous=NORMAL`
//! (a commit is durable once the WAL is checkpointed; a power cut may lose the last
//! commits but never corrupts the file) and a busy timeout so the two processes wait for
//! each other instead of failing.
//!
//! The schema version lives in SQLite's `user_version`; [`MIGRATIONS`] takes a file from
//! any older version to the current one, each step in its own transaction.

mod checkpoint;
mod dead_letters;
mod retention;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

pub use dead_letters::{
    DeadLetter, DeadLetterRecord, DeadLetterSink, DeadLetterSummary, Filter, MemoryDeadLetters,
};
pub use retention::Retention;
pub use state::SqliteStateStore;

/// How long one process waits for the other's write lock before an operation fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Store::path`] shows for a store that lives in memory.
const IN_MEMORY: &str = ":memory:";

/// Schema migrations: entry `n` takes a file from `user_version` `n` to `n + 1`. Append
/// new steps; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: dead letters and plugin state.
    "CREATE TABLE dead_letters (
        -- AUTOINCREMENT: an id is never reused after a purge, so an id an operator
        -- noted down cannot later name a different letter.
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms    INTEGER NOT NULL,
        connector  TEXT    NOT NULL,
        vendor     TEXT,
        -- JSON array of [key, value] pairs, in the order the transport gave them.
        properties TEXT    NOT NULL,
        payload    BLOB    NOT NULL,
        kind       TEXT    NOT NULL,
        message    TEXT    NOT NULL,
        rule       TEXT,
        step       INTEGER,
        event_id   TEXT,
        replays    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX dead_letters_by_time ON dead_letters (time_ms, id);
    CREATE TABLE plugin_state (
        namespace TEXT NOT NULL,
        key       TEXT NOT NULL,
        value     BLOB NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID;",
    // 2: running totals of the dead letters, kept by triggers so that retention reads
    // them in one row instead of scanning the table, and so that a purge by the
    // `dead-letters` command (another process) keeps them right too.
    "CREATE TABLE dead_letter_totals (
        only  INTEGER PRIMARY KEY CHECK (only = 0),
        rows  INTEGER NOT NULL,
        -- payload, message and properties, in bytes (see retention::letter_bytes).
        bytes INTEGER NOT NULL
    );
    INSERT INTO dead_letter_totals (only, rows, bytes)
        SELECT 0, count(*), coalesce(sum(length(payload) + length(CAST(message AS BLOB))
            + length(CAST(properties AS BLOB))), 0)
        FROM dead_letters;
    CREATE TRIGGER dead_letter_totals_insert AFTER INSERT ON dead_letters BEGIN
        UPDATE dead_letter_totals SET rows = rows + 1,
            bytes = bytes + length(NEW.payload) + length(CAST(NEW.message AS BLOB))
                + length(CAST(NEW.properties AS BLOB));
    END;
    CREATE TRIGGER dead_letter_totals_delete AFTER DELETE ON dead_letters BEGIN
        UPDATE dead_letter_totals SET rows = rows - 1,
            bytes = bytes - length(OLD.payload) - length(CAST(OLD.message AS BLOB))
                - length(CAST(OLD.properties AS BLOB));
    END;
    CREATE TRIGGER dead_letter_totals_update
        AFTER UPDATE OF payload, message, properties ON dead_letters BEGIN
        UPDATE dead_letter_totals SET
            bytes = bytes - length(OLD.payload) - length(CAST(OLD.message AS BLOB))
                - length(CAST(OLD.properties AS BLOB))
                + length(NEW.payload) + length(CAST(NEW.message AS BLOB))
                + length(CAST(NEW.properties AS BLOB));
    END;",
];

/// The schema version this build writes and understands.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the store could not be opened or used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A command that only reads or cleans up was pointed at a file that does not exist;
    /// it does not create an empty one.
    #[error("no dead-letter store at {}", path.display())]
    Missing {
        /// The path that was given.
        path: PathBuf,
    },
    /// The file exists but is not a SQLite database (or is damaged beyond SQLite's header).
    #[error("{} is not an iotrules store: the file is not a SQLite database", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is a SQLite database that iotrules never initialized (schema version 0).
    #[error(
        "{} is not an iotrules store: a SQLite database without the iotrules schema",
        path.display()
    )]
    NotAStore {
        /// The file.
        path: PathBuf,
    },
    /// A newer iotrules wrote the file; this build does not know its schema.
    #[error(
        "{}: schema version {found} is newer than this iotrules understands ({supported}); \
         use a newer iotrules",
        path.display()
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// The `user_version` found in the file.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
    /// SQLite refused an operation; the source says why (locked, disk full, read-only...).
    #[error("{}: cannot {op}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What was being done, as a verb phrase ("add a dead letter").
        op: &'static str,
        /// SQLite's reason.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value could not be read back (it was written by something other than
    /// this code, or the file is damaged).
    #[error("{}: dead letter {id}: stored {field} is unreadable: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The dead letter's id.
        id: i64,
        /// The column.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The thread that checkpoints the file's write-ahead log could not be started.
    #[error("{}: cannot start the checkpoint thread", path.display())]
    Thread {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// The service's SQLite file, shared by every thread that records dead letters or reads
/// and writes plugin state.
///
/// One connection behind a mutex: writes are small and rare next to the work of the
/// pipeline, and SQLite serializes writers to one file anyway. Dead-letter methods are in
/// [`dead_letters`]; [`SqliteStateStore`] puts plugin state in the same file.
#[derive(Debug)]
pub struct Store {
    /// Shared with the checkpoint thread, which has a long log start over under its lock.
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// The service's limits on the dead letters; `None` for the commands that inspect the
    /// file, which never evict.
    retainer: Option<retention::Retainer>,
    /// Checkpoints the WAL in the background, for the service's store (the commands that
    /// inspect the file leave it to SQLite). It holds the connection too, which closes
    /// once both are dropped: after the thread's last checkpoint.
    _checkpointer: Option<checkpoint::Checkpointer>,
}

impl Store {
    /// Opens the store at `path`, creating the file (readable by its owner only: it holds
    /// raw device messages) and its schema if needed, and migrating an older schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref();
        create_private(path);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sqlite(path, "open"))?;
        let mut store = Store::init(conn, path.to_owned(), true)?;
        // No checkpoint inside a commit: the checkpoint thread does them (see `checkpoint`).
        store
            .conn()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sqlite(path, "turn off automatic checkpoints"))?;
        store._checkpointer = Some(checkpoint::Checkpointer::start(
            path,
            store.conn.clone(),
            checkpoint::LOG_LIMIT,
        )?);
        Ok(store)
    }

    /// Opens an existing store, never creating one: for commands that inspect or clean up
    /// what the service stored. A missing file is [`StoreError::Missing`], a SQLite file
    /// without the iotrules schema is [`StoreError::NotAStore`]. An older schema is
    /// migrated, as the service would.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| {
            if path.exists() {
                sqlite(path, "open")(source)
            } else {
                StoreError::Missing {
                    path: path.to_owned(),
                }
            }
        })?;
        Store::init(conn, path.to_owned(), false)
    }

    /// A store that lives in memory and is gone when dropped: for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from(IN_MEMORY);
        let conn = Connection::open_in_memory().map_err(sqlite(&path, "open"))?;
        Store::init(conn, path, true)
    }

    /// Keeps the dead letters within `limits` from now on: the oldest beyond them are
    /// evicted at once (so a lowered limit applies at start) and after each letter added.
    /// `clock` dates the age limit; rule tests and the tests here pin it. Only the service
    /// sets limits: the commands that inspect the file never evict.
    pub fn with_retention(mut self, limits: Retention, clock: crate::time::Clock) -> Store {
        let retainer = retention::Retainer::new(limits, clock);
        retainer.enforce(&self.conn(), &self.path, true);
        self.retainer = Some(retainer);
        self
    }

    /// The file this store is in (`:memory:` for [`Store::open_in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the connection up and brings the schema to [`SCHEMA_VERSION`]. `create`
    /// allows initializing a file that has no schema yet.
    fn init(conn: Connection, path: PathBuf, create: bool) -> Result<Store, StoreError> {
        let mut conn = conn;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite(&path, "set the busy timeout"))?;
        // Read the version before changing anything, so that a file that is not ours is
        // refused untouched (not switched to WAL). This is also the first read of the
        // file, where SQLite notices that it is not a database.
        let version = user_version(&conn).map_err(sqlite(&path, "read the schema version"))?;
        if version == 0 && !create {
            return Err(StoreError::NotAStore { path });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // WAL cannot be set inside a transaction; an in-memory database answers "memory".
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite(&path, "switch to WAL mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite(&path, "set synchronous=NORMAL"))?;
        migrate(&mut conn, &path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path,
            retainer: None,
            _checkpointer: None,
        })
    }

    /// The connection, for one operation.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held dropped any open transaction, which rolls it
        // back: the connection is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection if nobody holds it now (a dead-letter write, a checkpoint that has the
    /// log start over), for an operation that has somewhere else to go rather than wait.
    fn try_conn(&self) -> Option<MutexGuard<'_, Connection>> {
        crate::sync::try_lock(&self.conn)
    }

    /// Maps a SQLite error from `op` on this store.
    fn error(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        sqlite(&self.path, op)
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies the missing migrations. Each runs in an IMMEDIATE transaction that re-reads the
/// version first, so the service and a command opening the same file at once do not both
/// apply a step.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(path, "begin the schema migration"))?;
        let version = user_version(&tx).map_err(sqlite(path, "read the schema version"))?;
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            // Current (or newer, which `init` refused before): nothing to do.
            return Ok(());
        };
        tx.execute_batch(step)
            .map_err(sqlite(path, "migrate the schema"))?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(sqlite(path, "record the schema version"))?;
        tx.commit()
            .map_err(sqlite(path, "commit the schema migration"))?;
    }
}

/// Creates `path` empty with owner-only permissions if it does not exist, so that SQLite
/// (which gives its `-wal` and `-shm` files the database's permissions) never makes the
/// raw messages world-readable.
fn create_private(path: &Path) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    // An error means the file exists already, or cannot be created here: SQLite's open
    // that follows reports the latter in its own words.
    let _created = options.open(path);
}

/// A mapper from a SQLite error during `op` on `path` to a [`StoreError`], recognizing a
/// file that is not a database.
fn sqlite(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let path = path.to_owned();
    move |source| {
        if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
            StoreError::NotADatabase { path }
        } else {
            StoreError::Sqlite { path, op, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_shared_between_threads() {
        assert_send_sync::<Store>();
        assert_send_sync::<SqliteStateStore>();
    }

    #[test]
    fn the_service_s_store_checkpoints_its_log_on_a_thread_not_inside_a_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.db");
        let store = Store::open(&path).expect("open");
        let automatic: i64 = store
            .conn()
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .expect("wal_autocheckpoint");
        assert_eq!(automatic, 0, "a commit must not checkpoint");
        let file_size = || std::fs::metadata(&path).expect("metadata").len();
        let before = file_size();
        // 4 MiB in 1 000 commits: past SQLite's own threshold of 1 000 pages, all in the log
        // until something checkpoints it into the file.
        let value = vec![7u8; 4096];
        for key in 0..1000 {
            store
                .conn()
                .execute(
                    "INSERT INTO plugin_state (namespace, key, value) VALUES ('n', ?, ?)",
                    rusqlite::params![key.to_string(), value],
                )
                .expect("insert");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file_size() < before + 4_000_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            file_size() >= before + 4_000_000,
            "the file still holds {} bytes: the log was not checkpointed into it",
            file_size()
        );
    }

    #[test]
    fn new_file_gets_the_current_schema_in_wal_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("new.db");
        let store = Store::open(&path).expect("open");
        let conn = store.conn();
        assert_eq!(user_version(&conn).expect("version"), SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions();
            assert_eq!(
                mode.mode() & 0o077,
                0,
                "only the owner may read raw messages"
            );
        }
    }

    #[test]
    fn open_existing_refuses_a_missing_file_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.db");
        let error = Store::open_existing(&path).expect_err("missing");
        assert!(matches!(error, StoreError::Missing { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("no dead-letter store at {}", path.display())
        );
        assert!(!path.exists());
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notes.db");
        let notes = b"these are my notes, not a database\n".repeat(200);
        std::fs::write(&path, &notes).expect("write");
        for result in [Store::open(&path), Store::open_existing(&path)] {
            let error = result.expect_err("not a database");
            assert!(
                matches!(error, StoreError::NotADatabase { .. }),
                "{error:?}"
            );
            assert!(error.to_string().contains("notes.db"), "{error}");
        }
        assert!(
            std::fs::read(&path).expect("read") == notes,
            "the file is left as it was"
        );
    }

    #[test]
    fn open_existing_refuses_a_foreign_sqlite_database_untouched() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
            .expect("foreign database");
        let error = Store::open_existing(&path).expect_err("not ours");
        assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
        let conn = Connection::open(&path).expect("reopen");
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .expect("count");
        assert_eq!(tables, 1, "no iotrules tables were added");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("future.db");
        drop(Store::open(&path).expect("open"));
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("bump version");
        let error = Store::open(&path).expect_err("too new");
        assert!(
            matches!(error, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{error:?}"
        );
    }

    #[test]
    fn reopening_a_current_file_migrates_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("twice.db");
        drop(Store::open(&path).expect("first open"));
        let store = Store::open_existing(&path).expect("second open");
        assert_eq!(
            user_version(&store.conn()).expect("version"),
            SCHEMA_VERSION
        );
    }
}
