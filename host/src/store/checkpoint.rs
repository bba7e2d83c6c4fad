//! Checkpoints of the store's write-ahead log, on a thread of their own.
//!
//! Left to itself, SQLite checkpoints from inside the commit that takes the WAL past 1 000
//! pages: that commit copies the log into the file and syncs both, and every event waiting
//! for its plugin state to be committed waits for those syncs too. The service's connection
//! turns that off (`wal_autocheckpoint = 0`) and this thread checkpoints instead, on a
//! connection of its own, every [`INTERVAL`]: `PASSIVE`, which never takes the write lock,
//! so commits go on while it copies and syncs.
//!
//! A passive checkpoint alone does not bound the log under writes that never stop. SQLite
//! starts the log over only at a commit that finds all of it copied, and a commit always
//! lands while the copy and its sync run: `scripts/flood` grew the log to 2.2 GB in 60 s
//! (the file itself 1 MB), and a service under steady load would fill its disk. So once the
//! log passes [`LOG_LIMIT`], the thread empties it with a `TRUNCATE` checkpoint on the
//! service's own connection, under its lock: no commit of the service can land meanwhile (a
//! checkpoint on another connection waits for a gap between commits that a busy writer may
//! never leave), and it only waits, for at most [`TRUNCATE_WAIT`], for a reader of an older
//! snapshot (`iotrules dead-letters`). The passive pass has copied almost all of the log by
//! then, so commits wait for the copy of the rest, a sync and the truncation.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, StoreError, sqlite};
use crate::sync::lock;

/// How often the log is copied into the file.
const INTERVAL: Duration = Duration::from_millis(250);

/// The log's size, in pages, past which a checkpoint empties it: 64 MiB of 4 KiB pages.
pub(super) const LOG_LIMIT: i64 = 16_384;

/// How long a checkpoint that empties the log waits for a reader of an older snapshot;
/// commits wait meanwhile. If that is not enough, the next try is an interval later.
const TRUNCATE_WAIT: Duration = Duration::from_millis(200);

/// The checkpointing thread of one store; stopped (after a last checkpoint) when dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the WAL of the store at `path`, emptying it whenever it passes
    /// `log_limit` pages ([`LOG_LIMIT`] for the service).
    pub(super) fn start(
        path: &Path,
        writer: Arc<Mutex<Connection>>,
        log_limit: i64,
    ) -> Result<Checkpointer, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(sqlite(path, "open the checkpoint connection"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite(path, "set the busy timeout"))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            let file = path.to_owned();
            std::thread::Builder::new()
                .name("iotrules-checkpoint".into())
                .spawn(move || run(&conn, &writer, &file, log_limit, &stop))
                .map_err(|source| StoreError::Thread {
                    path: path.to_owned(),
                    source,
                })?
        };
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    conn: &Connection,
    writer: &Mutex<Connection>,
    path: &Path,
    log_limit: i64,
    stop: &(Mutex<bool>, Condvar),
) {
    let mut failing = false;
    loop {
        let stopping = {
            let stopped = lock(&stop.0);
            let (stopped, _) = stop
                .1
                .wait_timeout_while(stopped, INTERVAL, |stopped| !*stopped)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *stopped
        };
        match checkpoint(conn, writer, log_limit) {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                // Once per run of failures: the next commit carries on regardless, and the
                // log only grows until a checkpoint succeeds.
                failing = true;
                tracing::warn!(
                    store = %path.display(),
                    %error,
                    "Cannot checkpoint the store's write-ahead log; it grows until this works"
                );
            }
            Err(_) => {}
        }
        if stopping {
            return;
        }
    }
}

fn checkpoint(
    conn: &Connection,
    writer: &Mutex<Connection>,
    log_limit: i64,
) -> rusqlite::Result<()> {
    // (busy, pages in the log, pages copied): a PASSIVE checkpoint copies what no reader
    // still needs and returns; the rest goes next time.
    let log: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))?;
    if log <= log_limit {
        return Ok(());
    }
    let writer = lock(writer);
    writer.busy_timeout(TRUNCATE_WAIT)?;
    let emptied = writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_row| Ok(()));
    writer.busy_timeout(BUSY_TIMEOUT)?;
    emptied
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_log_stays_bounded_while_commits_never_stop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("busy.db");
        let writer = Arc::new(Mutex::new(Connection::open(&path).expect("open")));
        let mode: String = lock(&writer)
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .expect("wal");
        assert_eq!(mode, "wal");
        lock(&writer)
            .execute_batch(
                "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
            )
            .expect("schema");
        const LIMIT: i64 = 256;
        let _checkpointer =
            Checkpointer::start(&path, writer.clone(), LIMIT).expect("checkpointer");
        let wal = path.with_extension("db-wal");
        let wal_size = || std::fs::metadata(&wal).map_or(0, |m| m.len());

        // Commits of eight 4 KB rows back to back for two seconds, on the connection the
        // checkpointer was given (as the service's commits are): never a pause between them
        // for a passive checkpoint to catch up in.
        let until = Instant::now() + Duration::from_secs(2);
        let (mut commits, mut largest) = (0i64, 0u64);
        while Instant::now() < until {
            let writer = lock(&writer);
            let tx = writer.unchecked_transaction().expect("begin");
            for row in 0..8i64 {
                tx.execute(
                    "INSERT OR REPLACE INTO t VALUES (?, randomblob(4000))",
                    [(commits * 8 + row) % 4096],
                )
                .expect("write");
            }
            tx.commit().expect("commit");
            commits += 1;
            largest = largest.max(wal_size());
        }
        // At least a page per row went into the log.
        let written = commits as u64 * 8 * 4096;
        assert!(
            written > 20 << 20,
            "only {written} bytes written: too few to tell"
        );
        assert!(
            largest < written / 3,
            "the log reached {largest} bytes of the {written} written: it was never emptied"
        );
    }
}
