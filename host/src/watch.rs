//! Watching a directory for changed files: the plugins' and the rules' hot reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

/// Watches one directory (not its subdirectories) while it lives; dropping it stops watching.
pub(crate) struct DirWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl DirWatcher {
    /// Watches `dir` for files that `wanted` takes being created, changed, renamed in or
    /// out, or removed. Once the directory has been quiet for `debounce`, the changed files
    /// go to `changed`, called on a thread of its own named `thread`, so that what it does
    /// (a reload) never holds up the watching; batches that queued up while it ran are
    /// handed over as one. `what` names the directory in errors.
    pub fn start(
        dir: &Path,
        what: &'static str,
        debounce: Duration,
        wanted: fn(&Path) -> bool,
        thread: &str,
        mut changed: impl FnMut(BTreeSet<PathBuf>) + Send + 'static,
    ) -> notify::Result<Self> {
        let (batches, received) = mpsc::channel::<BTreeSet<PathBuf>>();
        let shown = dir.display().to_string();
        let mut debouncer =
            new_debouncer(
                debounce,
                None,
                move |result: DebounceEventResult| match result {
                    Ok(events) => {
                        let batch: BTreeSet<PathBuf> = events
                            .iter()
                            .filter(|event| {
                                matches!(
                                    event.kind,
                                    EventKind::Create(_)
                                        | EventKind::Modify(_)
                                        | EventKind::Remove(_)
                                )
                            })
                            .flat_map(|event| event.paths.iter())
                            .filter(|path| wanted(path))
                            .cloned()
                            .collect();
                        if !batch.is_empty() {
                            let _ = batches.send(batch);
                        }
                    }
                    Err(errors) => {
                        for error in errors {
                            tracing::error!(dir = %shown, "Watching the {what} directory: {error}");
                        }
                    }
                },
            )?;
        debouncer.watch(dir, RecursiveMode::NonRecursive)?;
        thread::Builder::new()
            .name(thread.to_owned())
            .spawn(move || {
                while let Ok(mut batch) = received.recv() {
                    while let Ok(more) = received.try_recv() {
                        batch.extend(more);
                    }
                    changed(batch);
                }
            })?;
        Ok(DirWatcher {
            _debouncer: debouncer,
        })
    }
}
