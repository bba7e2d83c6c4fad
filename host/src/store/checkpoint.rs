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
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::*;

    /// The tests' log limit: 256 pages, 1 MiB.
    const LIMIT: i64 = 256;

    /// A store file in WAL mode with a table to write, as the service sets it up.
    fn store(dir: &Path) -> (PathBuf, Arc<Mutex<Connection>>) {
        let path = dir.join("busy.db");
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
        (path, writer)
    }

    /// Commits of eight 4 KB rows back to back on `writer` (as the service's commits are, on
    /// the connection the checkpointer is given) until `stop`: never a pause between them for
    /// a checkpoint on another connection to land in.
    fn commit_until(writer: &Mutex<Connection>, stop: &AtomicBool) {
        let mut commits = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let writer = lock(writer);
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
        }
    }

    /// Runs `look` while another thread commits on `writer` without pause ([`commit_until`]);
    /// the commits stop when `look` returns or panics, so a failed look fails the test
    /// rather than leaving it waiting for the committing thread.
    fn while_committing<T>(writer: &Mutex<Connection>, look: impl FnOnce() -> T) -> T {
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| commit_until(writer, &stop));
            let _stop = Stop(&stop);
            look()
        })
    }

    fn file_size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Waits (up to 30 s) until `wal` holds at least `bytes`.
    fn wait_for_log(wal: &Path, bytes: u64) {
        let start = Instant::now();
        while file_size(wal) < bytes {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the log never reached {bytes} bytes"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_checkpoint_past_the_limit_empties_the_log_while_commits_never_stop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, writer) = store(dir.path());
        let wal = path.with_extension("db-wal");
        let conn = Connection::open(&path).expect("checkpoint connection");
        while_committing(&writer, || {
            // Only emptying the log shrinks its file (SQLite otherwise writes it again from
            // its start, at its full size). Each round lets it pass 16 MiB, far over the
            // limit of 1 MiB, then checkpoints once: the log must be emptied by that one
            // checkpoint, not by a later one that finds a gap between two commits. What the
            // commits write again between the checkpoint and the look at the file is far
            // less than 8 MiB.
            for round in 1..=5 {
                wait_for_log(&wal, 16 << 20);
                let before = file_size(&wal);
                checkpoint(&conn, &writer, LIMIT).expect("checkpoint");
                let after = file_size(&wal);
                assert!(
                    after < 8 << 20,
                    "round {round}: the checkpoint left the log at {after} bytes (it had \
                     {before}): it was not emptied while commits went on"
                );
            }
        });
    }

    #[test]
    fn the_checkpointer_empties_the_log_while_commits_never_stop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, writer) = store(dir.path());
        let wal = path.with_extension("db-wal");
        let _checkpointer =
            Checkpointer::start(&path, writer.clone(), LIMIT).expect("checkpointer");
        // The thread checkpoints every interval: within 20 s, the log is seen to shrink.
        let emptied = while_committing(&writer, || {
            let start = Instant::now();
            let (mut last, mut emptied) = (0, false);
            while !emptied && start.elapsed() < Duration::from_secs(20) {
                let size = file_size(&wal);
                emptied = size < last;
                last = size;
                std::thread::sleep(Duration::from_millis(1));
            }
            emptied
        });
        assert!(emptied, "the log was not emptied in 20 s of commits");
    }
}
