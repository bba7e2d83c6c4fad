//! Checkpoints of the store's write-ahead log, on a thread of their own.
//!
//! Left to itself, SQLite checkpoints from inside the commit that takes the WAL past 1 000
//! pages: that commit copies the log into the file and syncs both, and every event waiting
//! for its plugin state to be committed waits for those syncs too. The service's connection
//! turns that off (`wal_autocheckpoint = 0`) and this thread checkpoints instead, on a
//! connection of its own, every [`INTERVAL`]: `PASSIVE`, which never takes the write lock,
//! so commits go on while it copies and syncs. The log's size stays bounded by what is
//! written in an interval (while no reader holds an old snapshot, as with SQLite's own
//! checkpoints).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, StoreError, sqlite};
use crate::sync::lock;

/// How often the log is copied into the file.
const INTERVAL: Duration = Duration::from_millis(250);

/// The checkpointing thread of one store; stopped (after a last checkpoint) when dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the WAL of the store at `path`.
    pub(super) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
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
                .spawn(move || run(&conn, &file, &stop))
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

fn run(conn: &Connection, path: &Path, stop: &(Mutex<bool>, Condvar)) {
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
        match checkpoint(conn) {
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

fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    // (busy, frames in the log, frames checkpointed): a PASSIVE checkpoint copies what no
    // reader still needs and returns; the rest goes next time.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_row| Ok(()))
}
