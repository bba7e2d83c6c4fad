//! The process-wide wasmtime engine, linker, epoch ticker and compiled-component cache.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{v1, v2, v3};
use super::host::HostState;
use super::ticker::{Calls, Ticker};
use super::{Chain, PluginError};

/// A compiled plugin, type-checked against the WIT world it was built for.
pub(crate) enum Pre {
    /// The current world: 0.3.0, with timers and twins.
    V3(v3::PluginPre<HostState>),
    /// 0.2.0: `handle` reads the event through an `event-view`.
    V2(v2::PluginPre<HostState>),
    /// 0.1.0: `handle` gets the whole event.
    V1(v1::PluginPre<HostState>),
}

/// How the engine is set up. The defaults suit a service with tens of plugins and a few
/// workers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are kept between runs (`None`: compile on every start).
    pub cache_dir: Option<PathBuf>,
    /// The largest memory cap any step may ask for; it sizes the pooling allocator's slots.
    pub max_memory_bytes: usize,
    /// How many plugin instances may be alive at once (pooling allocator slots).
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_memory_bytes: 256 << 20,
            max_instances: 256,
        }
    }
}

/// The engine and linker shared by every plugin, and the ticker that advances the engine's
/// epoch so per-call deadlines can interrupt a guest.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    /// Dropping it stops the ticker thread.
    ticker: Ticker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator, epoch interruption) and the linker (the `host`
    /// interface plus WASI, whose context each instance builds with nothing granted).
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        let engine = match Engine::new(&engine_config(&config, true)) {
            Ok(engine) => engine,
            Err(error) => {
                // Some sandboxes cap virtual memory below what the pool reserves; plugins
                // still run, instantiation is just slower.
                tracing::warn!(
                    "pooling allocator unavailable ({}), using on-demand allocation",
                    Chain(&error)
                );
                Engine::new(&engine_config(&config, false))?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        v3::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
        v2::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
        v1::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;

        let ticker = Ticker::start(engine.clone())?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            config,
            ticker,
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Whether the epoch ticker sleeps until a plugin call starts (see [`super::ticker`]).
    pub fn ticker_asleep(&self) -> bool {
        self.ticker.asleep()
    }

    /// Epoch advances so far: one each time the ticker found a call past its deadline.
    pub fn ticks(&self) -> u64 {
        self.ticker.ticks()
    }

    /// A mark for one instance's calls, which wakes the ticker when a call starts.
    pub(super) fn calls(&self) -> Calls {
        self.ticker.calls()
    }

    /// Compiles (or loads from the cache) a component and type-checks it against the world:
    /// the current one (0.3.0), else 0.2.0, else 0.1.0.
    pub(crate) fn prepare(&self, plugin: &str, bytes: &[u8]) -> Result<Pre, PluginError> {
        let component = self.component(plugin, bytes)?;
        let wrong_world = |error: wasmtime::Error| PluginError::WrongWorld {
            plugin: plugin.to_owned(),
            reason: Chain(&error).to_string(),
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let current = match v3::PluginPre::new(pre.clone()) {
            Ok(pre) => return Ok(Pre::V3(pre)),
            Err(error) => error,
        };
        let previous = match v2::PluginPre::new(pre.clone()) {
            Ok(pre) => return Ok(Pre::V2(pre)),
            Err(error) => error,
        };
        match v1::PluginPre::new(pre) {
            Ok(pre) => Ok(Pre::V1(pre)),
            Err(old) => Err(PluginError::WrongWorld {
                plugin: plugin.to_owned(),
                reason: format!(
                    "as iotrules:plugin@0.3.0: {}; as 0.2.0: {}; as 0.1.0: {}",
                    Chain(&current),
                    Chain(&previous),
                    Chain(&old)
                ),
            }),
        }
    }

    /// The compiled component, from the cache when this engine compiled these bytes before.
    fn component(&self, plugin: &str, bytes: &[u8]) -> Result<Component, PluginError> {
        let compile_error = |error: wasmtime::Error| PluginError::Compile {
            plugin: plugin.to_owned(),
            reason: Chain(&error).to_string(),
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::Compile {
                plugin: plugin.to_owned(),
                reason: "the file does not start with the WebAssembly magic `\\0asm`".into(),
            });
        }
        let Some(path) = self.cache_path(bytes) else {
            return Component::new(&self.engine, bytes).map_err(compile_error);
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let dir_trust = match std::fs::symlink_metadata(dir) {
            Ok(_) => trusted(dir, Entry::Dir),
            // Not there yet: write_cache creates it, ours and private.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(format!("cannot inspect it: {error}")),
        };
        if let Err(reason) = &dir_trust {
            tracing::warn!(
                plugin,
                dir = %dir.display(),
                "The plugin cache directory is not private to this user ({reason}): \
                 compiling without the cache"
            );
        } else if path.exists() {
            match trusted(&path, Entry::File) {
                // SAFETY: deserializing runs the file's machine code. The file is ours, in a
                // directory that is ours, and neither is writable by anyone else, so it was
                // written by `write_cache` (`Component::serialize` of an engine with the same
                // compatibility hash, part of the file name); wasmtime still checks its header
                // and refuses a mismatch.
                Ok(()) => match unsafe { Component::deserialize_file(&self.engine, &path) } {
                    Ok(component) => return Ok(component),
                    Err(error) => tracing::warn!(
                        "plugin `{plugin}`: ignoring unusable cache file {}: {}",
                        path.display(),
                        Chain(&error)
                    ),
                },
                Err(reason) => tracing::warn!(
                    plugin,
                    file = %path.display(),
                    "A plugin cache file someone else could have written was ignored \
                     ({reason}); compiling again and replacing it"
                ),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(compile_error)?;
        if dir_trust.is_ok()
            && let Err(error) = write_cache(&component, &path)
        {
            tracing::warn!(
                "plugin `{plugin}`: cannot write cache file {}: {error}",
                path.display()
            );
        }
        Ok(component)
    }

    /// `{cache_dir}/{sha256 of the bytes}-{engine compatibility hash}.cwasm`.
    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.config.cache_dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let digest = hex::encode(Sha256::digest(bytes));
        Some(dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish())))
    }
}

/// Writes through a temporary file (mode 0600) and a rename, so a crash never leaves half a
/// file. A missing cache directory is created with mode 0700: what is in it is loaded as
/// machine code.
fn write_cache(component: &Component, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let bytes = component.serialize()?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, &bytes)?;
    temp.persist(path)?;
    Ok(())
}

/// What [`trusted`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File,
    Dir,
}

/// Whether only this user could have written `path`: a cache file is loaded as machine code
/// without verification (`Component::deserialize_file`), so a file someone else could plant
/// or change must not be. It must be a plain file or directory (not a symlink), owned by the
/// effective user, and not writable by group or others. The error says which test failed.
#[cfg(unix)]
fn trusted(path: &Path, entry: Entry) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;

    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot inspect it: {e}"))?;
    let right_type = match entry {
        Entry::File => meta.file_type().is_file(),
        Entry::Dir => meta.file_type().is_dir(),
    };
    if !right_type {
        return Err(match entry {
            Entry::File => "not a regular file".into(),
            Entry::Dir => "not a directory".into(),
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets group or others write",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Without Unix permissions to read, the cache directory's own access control is trusted.
#[cfg(not(unix))]
fn trusted(_path: &Path, _entry: Entry) -> Result<(), String> {
    Ok(())
}

fn engine_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut engine = Config::new();
    engine.wasm_component_model(true);
    engine.epoch_interruption(true);
    engine.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .max_memory_size(config.max_memory_bytes);
        engine.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    engine
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The smallest component: the preamble alone. It compiles (to nothing), which is all the
    /// cache needs.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn runtime(cache_dir: &Path) -> Arc<Runtime> {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(cache_dir.to_owned()),
            max_instances: 2,
            max_memory_bytes: 1 << 20,
        })
        .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_cache_directory_is_created_private_and_its_files_are_ours() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let runtime = runtime(&dir);
        runtime.component("empty", EMPTY_COMPONENT).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = runtime.cache_path(EMPTY_COMPONENT).unwrap();
        assert_eq!(mode(&file) & 0o077, 0);
        assert_eq!(trusted(&file, Entry::File), Ok(()));
        assert_eq!(trusted(&dir, Entry::Dir), Ok(()));
    }

    #[test]
    fn a_cache_file_others_could_write_is_recompiled_and_replaced_not_loaded() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let runtime = runtime(&dir);
        runtime.component("empty", EMPTY_COMPONENT).unwrap();
        let file = runtime.cache_path(EMPTY_COMPONENT).unwrap();
        // A valid compiled file, but one anybody could have swapped: loaded as it is, it
        // would stay group/other-writable; refused, it is compiled again and rewritten.
        chmod(&file, 0o666);
        let error = trusted(&file, Entry::File).unwrap_err();
        assert!(error.contains("mode 666"), "{error}");
        runtime.component("empty", EMPTY_COMPONENT).unwrap();
        assert_eq!(mode(&file) & 0o077, 0, "the file was rewritten by us");
    }

    #[test]
    fn a_cache_directory_others_could_write_is_neither_read_nor_written() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let runtime = runtime(&dir);
        runtime.component("empty", EMPTY_COMPONENT).unwrap();
        let file = runtime.cache_path(EMPTY_COMPONENT).unwrap();
        chmod(&dir, 0o777);
        let error = trusted(&dir, Entry::Dir).unwrap_err();
        assert!(error.contains("group or others"), "{error}");
        // A planted file: the directory's state makes it untrustworthy, whatever its mode.
        std::fs::write(&file, b"planted").unwrap();
        runtime.component("empty", EMPTY_COMPONENT).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"planted", "left alone");
        chmod(&dir, 0o700);
    }

    #[test]
    fn a_symlinked_cache_file_is_not_trusted() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("elsewhere.cwasm");
        std::fs::write(&target, b"x").unwrap();
        let link = root.path().join("link.cwasm");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            trusted(&link, Entry::File),
            Err("not a regular file".to_owned())
        );
    }
}
