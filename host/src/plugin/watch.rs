//! Hot reload: watch the plugins directory and reload changed files off the hot path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::registry::{Registry, plugin_name};
use crate::watch::DirWatcher;

/// How long a file must be quiet before it is reloaded: long enough to see a copy finish,
/// short enough that a change serves within a quarter of a second.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Watches a registry's directory while it lives; dropping it stops watching.
pub struct Watcher {
    _dir: DirWatcher,
}

impl Watcher {
    /// Starts watching `registry`'s directory (not its subdirectories). Changed, created,
    /// renamed-in and removed `*.wasm` files are handed to a reload thread, which calls
    /// [`Registry::load_file`] for each; events keep flowing on the serving versions meanwhile.
    pub fn start(registry: Arc<Registry>, debounce: Duration) -> notify::Result<Self> {
        let dir = registry.dir().to_owned();
        let wanted = |path: &Path| plugin_name(path).is_some();
        let reload = move |batch: BTreeSet<PathBuf>| {
            for path in batch {
                registry.load_file(&path);
            }
        };
        Ok(Watcher {
            _dir: DirWatcher::start(
                &dir,
                "plugins",
                debounce,
                wanted,
                "iotrules-plugin-reload",
                reload,
            )?,
        })
    }
}
