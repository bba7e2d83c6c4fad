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
//! log passes [`LOG_LIMIT`], the thread copies the rest with a `RESTART` checkpoint on the
//! service's own connection, under its lock: no commit of the service can land meanwhile (a
//! checkpoint on another connection waits for a gap between commits that a busy writer may
//! never leave), and it only waits, for at most [`RESTART_WAIT`], for a reader of an older
//! snapshot (`iotrules dead-letters`). The passive pass has copied almost all of the log by
//! then, so commits wait for the copy of the rest and a sync, about a millisecond; the next
//! commit starts the log over, writing its file again from the start. The file keeps its
//! size, so the disk holds at most the limit and what one interval adds to it.
//!
//! A `TRUNCATE` checkpoint, which also shrinks the file to nothing, held the lock for 23 to
//! 26 ms each time at 43 000 events/s (`bench pipeline`, the twin on): truncating a file of
//! 64 MiB is most of that, and every event in flight waited for it; the half-load p99 over
//! 5 s was 6.9 ms against 2.8 with `RESTART`.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, StoreError, sqlite};
use crate::sync::lock;

/// How often the log is copied into the file.
///
/// Each checkpoint that copies anything syncs the log first, which writes out to the disk
/// what the commits left in the page cache since the last one: the commits do not sync
/// (`synchronous=NORMAL`), so the writes come out in one burst per interval. In `bench
/// pipeline` at half load (39 000 events/s, the twin on, 0.9 KB written per event) every
/// 250 ms that was a burst of about 8 MB, 6 to 11 ms long, and the slow events of a round
/// came in stalls of a few milliseconds each that lined up with them. The workers were not
/// waiting for the disk themselves (a scheduler trace of six rounds found them in the
/// kernel's disk waits 15 times, the checkpoint threads 1 822 times), yet they ran late
/// while it wrote. With the store on tmpfs the round's p99 was 1.5 ms, and with the
/// checkpoints turned off it fell in each of three pairs of rounds (3.1→2.1, 4.1→1.6,
/// 7.9→3.7 ms).
///
/// Every 50 ms the bursts are a fifth of that, and the bytes written per event the same.
/// The p99 of the twin-on rounds, 50 ms against 250 ms, alternating: 2.4, 2.0, 2.5 and
/// 13.6 ms (a round whose p50 was 1.8 ms: the machine stalled) against 3.9, 4.9, 2.9 and
/// 3.1 ms; in a second sitting 2.6, 2.3, 1.8 and 2.1 ms against 3.1, 3.0, 2.1 and 2.1 ms.
/// A disk that syncs slowly is synced more often, from this thread; no commit waits for it.
const INTERVAL: Duration = Duration::from_millis(50);

/// The log's size, in pages, past which a checkpoint has it start over: 64 MiB of 4 KiB
/// pages.
pub(super) const LOG_LIMIT: i64 = 16_384;

/// How long a checkpoint that has the log start over waits for a reader of an older
/// snapshot; commits wait meanwhile. If that is not enough, the next try is an interval later.
const RESTART_WAIT: Duration = Duration::from_millis(200);

/// The checkpointing thread of one store; stopped (after a last checkpoint) when dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the WAL of the store at `path`, starting it over whenever it passes
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
    writer.busy_timeout(RESTART_WAIT)?;
    let copied = writer.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_row| Ok(()));
    writer.busy_timeout(BUSY_TIMEOUT)?;
    copied
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// the connection the checkpointer is given) until `stop`, counting them in `commits`:
    /// never a pause between them for a checkpoint on another connection to land in.
    fn commit_until(writer: &Mutex<Connection>, stop: &AtomicBool, commits: &AtomicU64) {
        while !stop.load(Ordering::Relaxed) {
            let writer = lock(writer);
            let tx = writer.unchecked_transaction().expect("begin");
            let done = commits.load(Ordering::Relaxed) as i64;
            for row in 0..8i64 {
                tx.execute(
                    "INSERT OR REPLACE INTO t VALUES (?, randomblob(4000))",
                    [(done * 8 + row) % 4096],
                )
                .expect("write");
            }
            tx.commit().expect("commit");
            commits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs `look` while another thread commits on `writer` without pause ([`commit_until`]),
    /// giving it the count of commits so far; the commits stop when `look` returns or panics,
    /// so a failed look fails the test rather than leaving it waiting for the committing
    /// thread.
    fn while_committing<T>(writer: &Mutex<Connection>, look: impl FnOnce(&AtomicU64) -> T) -> T {
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = AtomicBool::new(false);
        let commits = AtomicU64::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| commit_until(writer, &stop, &commits));
            let _stop = Stop(&stop);
            look(&commits)
        })
    }

    fn file_size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// The log's generation: the checkpoint sequence number in its header, 0 in the first
    /// and counted up by SQLite each time the log starts over (0 before it has a header).
    fn generation(wal: &Path) -> u32 {
        let mut header = [0u8; 16];
        match std::fs::File::open(wal)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
        {
            Ok(()) => u32::from_be_bytes([header[12], header[13], header[14], header[15]]),
            Err(_) => 0,
        }
    }

    /// Waits (up to 30 s) until `done()`; `what` names it in the failure.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_checkpoint_past_the_limit_starts_the_log_over_while_commits_never_stop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, writer) = store(dir.path());
        let wal = path.with_extension("db-wal");
        let conn = Connection::open(&path).expect("checkpoint connection");
        while_committing(&writer, |commits| {
            // The log passes 16 MiB, far over the limit of 1 MiB: what a commit adds to it,
            // on average.
            wait_until("the log reached 16 MiB", || file_size(&wal) >= 16 << 20);
            let per_commit = file_size(&wal) / commits.load(Ordering::Relaxed).max(1);
            // Each round checkpoints once, then lets the commits write 8 MiB more: the log
            // must have started over with that one checkpoint, not a later one that finds a
            // gap between two commits, and been written again from its start, its file not
            // growing by what they wrote.
            for round in 1..=5 {
                let was = generation(&wal);
                checkpoint(&conn, &writer, LIMIT).expect("checkpoint");
                // Its passive pass let the log grow meanwhile; from here on it must not.
                let before = file_size(&wal);
                let until = commits.load(Ordering::Relaxed) + (8 << 20) / per_commit;
                wait_until("8 MiB more written", || {
                    commits.load(Ordering::Relaxed) >= until
                });
                let (after, now) = (file_size(&wal), generation(&wal));
                assert!(
                    now > was,
                    "round {round}: the log did not start over (generation {was}, then {now})"
                );
                assert!(
                    after < before + (4 << 20),
                    "round {round}: the log grew from {before} to {after} bytes: the commits \
                     after the checkpoint were appended instead of written from its start"
                );
            }
        });
    }

    #[test]
    fn the_checkpointer_starts_the_log_over_while_commits_never_stop() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, writer) = store(dir.path());
        let wal = path.with_extension("db-wal");
        let _checkpointer =
            Checkpointer::start(&path, writer.clone(), LIMIT).expect("checkpointer");
        // The thread checkpoints every interval: within 20 s, the log starts over three times.
        let (first, last) = while_committing(&writer, |_| {
            let start = Instant::now();
            wait_until("the log has a header", || file_size(&wal) >= 32);
            let first = generation(&wal);
            while generation(&wal) < first + 3 && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(1));
            }
            (first, generation(&wal))
        });
        assert!(
            last >= first + 3,
            "the log started over {} times in 20 s of commits, not 3",
            last - first
        );
    }
}
