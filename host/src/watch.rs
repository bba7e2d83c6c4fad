//! Watching a directory for changed files: the plugins' and the rules' hot reload.
//!
//! The debouncing is our own, on the platform watcher's events, so that a watched directory
//! costs nothing while it is quiet: the thread sleeps until a change arrives, and then only
//! until the directory has been quiet for the debounce. (`notify-debouncer-full`, used
//! before, ticks four times per debounce whether anything changed or not: an idle service
//! woke 120 times a second for its two directories, most of its wake-ups.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::sync::lock;

/// Watches one directory (not its subdirectories) while it lives; dropping it stops watching.
pub(crate) struct DirWatcher {
    /// Dropped first: no event comes after it.
    _watcher: notify::RecommendedWatcher,
    pending: Arc<Pending>,
}

/// The changes seen and not yet handed over, shared by the platform watcher's thread (which
/// adds to them) and the debouncing thread (which takes them).
#[derive(Default)]
struct Pending {
    changes: Mutex<Changes>,
    arrived: Condvar,
}

#[derive(Default)]
struct Changes {
    /// Distinct paths, so the set is bounded by the directory's files however often they
    /// change.
    paths: BTreeSet<PathBuf>,
    /// When the latest change arrived (`None` while there are none).
    latest: Option<Instant>,
    /// Set when the watcher is dropped: the thread ends.
    stopped: bool,
}

impl DirWatcher {
    /// Watches `dir` for files that `wanted` takes being created, changed, renamed in or
    /// out, or removed. Once the directory has been quiet for `debounce`, the changed files
    /// go to `changed`, called on a thread of its own named `thread`; changes that arrive
    /// while it runs (a reload) are kept, and go as the next batch. `what` names the
    /// directory in errors.
    pub fn start(
        dir: &Path,
        what: &'static str,
        debounce: Duration,
        wanted: fn(&Path) -> bool,
        thread: &str,
        changed: impl FnMut(BTreeSet<PathBuf>) + Send + 'static,
    ) -> notify::Result<Self> {
        let pending = Arc::new(Pending::default());
        let shown = dir.display().to_string();
        let seen = pending.clone();
        let mut watcher = notify::recommended_watcher(
            move |result: notify::Result<notify::Event>| match result {
                Ok(event) => seen.add(event, wanted),
                Err(error) => {
                    tracing::error!(dir = %shown, "Watching the {what} directory: {error}");
                }
            },
        )?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        let taken = pending.clone();
        thread::Builder::new()
            .name(thread.to_owned())
            .spawn(move || taken.hand_over(debounce, changed))?;
        Ok(DirWatcher {
            _watcher: watcher,
            pending,
        })
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        lock(&self.pending.changes).stopped = true;
        self.pending.arrived.notify_one();
    }
}

impl Pending {
    /// Keeps the wanted paths of `event` if it creates, changes, renames or removes files.
    fn add(&self, event: notify::Event, wanted: fn(&Path) -> bool) {
        if !matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) {
            return;
        }
        let mut paths = event
            .paths
            .into_iter()
            .filter(|path| wanted(path))
            .peekable();
        if paths.peek().is_none() {
            return;
        }
        let mut changes = lock(&self.changes);
        changes.paths.extend(paths);
        changes.latest = Some(Instant::now());
        drop(changes);
        self.arrived.notify_one();
    }

    /// Hands each batch to `changed` once no change came for `debounce`, until stopped.
    /// Sleeps while there is nothing.
    fn hand_over(&self, debounce: Duration, mut changed: impl FnMut(BTreeSet<PathBuf>)) {
        let mut changes = lock(&self.changes);
        loop {
            if changes.stopped {
                return;
            }
            let quiet = match changes.latest {
                None => {
                    changes = self
                        .arrived
                        .wait(changes)
                        .unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                Some(latest) => latest.elapsed(),
            };
            if quiet < debounce {
                changes = self
                    .arrived
                    .wait_timeout(changes, debounce - quiet)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let batch = std::mem::take(&mut changes.paths);
            changes.latest = None;
            drop(changes);
            changed(batch);
            changes = lock(&self.changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn toml(path: &Path) -> bool {
        path.extension().is_some_and(|e| e == "toml")
    }

    /// Voluntary context switches of this process's threads named `name`.
    fn switches(name: &str) -> u64 {
        let mut total = 0;
        for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
            let task = task.expect("task").path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    /// Watches `dir` for `*.toml` files on a thread named `thread`: the watcher, and the
    /// batches it hands over.
    fn watch(
        dir: &Path,
        debounce: Duration,
        thread: &str,
    ) -> (DirWatcher, mpsc::Receiver<BTreeSet<PathBuf>>) {
        let (batches, received) = mpsc::channel();
        let watcher = DirWatcher::start(dir, "test", debounce, toml, thread, move |batch| {
            batches.send(batch).unwrap()
        })
        .unwrap();
        (watcher, received)
    }

    #[test]
    fn a_burst_of_changes_is_handed_over_once_when_the_directory_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let (_watcher, received) = watch(dir.path(), Duration::from_millis(300), "watch-burst");
        for name in ["a.toml", "b.toml", "c.toml", "ignored.txt"] {
            std::fs::write(dir.path().join(name), "x = 1").unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let batch = received.recv_timeout(Duration::from_secs(10)).unwrap();
        let names: Vec<_> = batch
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.toml", "b.toml", "c.toml"]);
        assert!(
            received.recv_timeout(Duration::from_secs(1)).is_err(),
            "one batch for one burst"
        );
        std::fs::remove_file(dir.path().join("b.toml")).unwrap();
        let batch = received.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(batch, BTreeSet::from([dir.path().join("b.toml")]));
    }

    #[test]
    fn the_watching_thread_sleeps_while_the_directory_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let (_watcher, received) = watch(dir.path(), Duration::from_millis(40), "watch-idle");
        std::fs::write(dir.path().join("a.toml"), "x = 1").unwrap();
        received.recv_timeout(Duration::from_secs(10)).unwrap();
        let before = switches("watch-idle");
        std::thread::sleep(Duration::from_secs(1));
        let woken = switches("watch-idle") - before;
        // A thread that looked every debounce (40 ms) would wake 25 times in the second.
        assert!(woken <= 2, "woke {woken} times in a quiet second");
    }
}
