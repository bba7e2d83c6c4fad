//! Hot reload: watch the plugins directory and reload changed files off the hot path.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::registry::{Registry, plugin_name};

/// How long a file must be quiet before it is reloaded: long enough to see a copy finish,
/// short enough that a change serves within a quarter of a second.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Watches a registry's directory while it lives; dropping it stops watching.
pub struct Watcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl Watcher {
    /// Starts watching `registry`'s directory (not its subdirectories). Changed, created,
    /// renamed-in and removed `*.wasm` files are handed to a reload thread, which calls
    /// [`Registry::load_file`] for each; events keep flowing on the serving versions meanwhile.
    pub fn start(registry: Arc<Registry>, debounce: Duration) -> notify::Result<Self> {
        let (paths, changed) = mpsc::channel::<BTreeSet<PathBuf>>();
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
                            .filter(|path| plugin_name(path).is_some())
                            .cloned()
                            .collect();
                        if !batch.is_empty() {
                            let _ = paths.send(batch);
                        }
                    }
                    Err(errors) => {
                        for error in errors {
                            tracing::error!("watching the plugins directory: {error}");
                        }
                    }
                },
            )?;
        debouncer.watch(registry.dir(), RecursiveMode::NonRecursive)?;
        thread::Builder::new()
            .name("iotrules-plugin-reload".into())
            .spawn(move || {
                while let Ok(batch) = changed.recv() {
                    for path in batch {
                        registry.load_file(&path);
                    }
                }
            })?;
        Ok(Watcher {
            _debouncer: debouncer,
        })
    }
}
