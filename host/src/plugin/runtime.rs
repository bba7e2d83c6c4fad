//! The process-wide wasmtime engine, linker, epoch ticker and compiled-component cache.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{Plugin, PluginPre};
use super::instance::HostState;
use super::{Chain, PluginError};

/// How the engine is set up. The defaults suit a service with tens of plugins and a few
/// workers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are kept between runs (`None`: compile on every start).
    pub cache_dir: Option<PathBuf>,
    /// The epoch tick: deadlines are enforced to within one tick.
    pub tick: Duration,
    /// The largest memory cap any step may ask for; it sizes the pooling allocator's slots.
    pub max_memory_bytes: usize,
    /// How many plugin instances may be alive at once (pooling allocator slots).
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            tick: Duration::from_millis(1),
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
    _ticker: mpsc::Sender<()>,
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
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;

        let (stop, stopped) = mpsc::channel::<()>();
        let ticking = engine.clone();
        let tick = config.tick;
        thread::Builder::new()
            .name("iotrules-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    ticking.increment_epoch();
                }
            })?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            config,
            _ticker: stop,
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Epoch ticks that cover at least `deadline`: the call may run up to one tick longer.
    pub(crate) fn deadline_ticks(&self, deadline: Duration) -> u64 {
        let tick = self.config.tick.as_nanos().max(1);
        let ticks = deadline.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Compiles (or loads from the cache) a component and type-checks it against the world.
    pub fn prepare(&self, plugin: &str, bytes: &[u8]) -> Result<PluginPre<HostState>, PluginError> {
        let component = self.component(plugin, bytes)?;
        let wrong_world = |error: wasmtime::Error| PluginError::WrongWorld {
            plugin: plugin.to_owned(),
            reason: Chain(&error).to_string(),
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        PluginPre::new(pre).map_err(wrong_world)
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
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash (part of the file name), into the cache directory that only
            // this service writes; wasmtime still checks its header and refuses a mismatch.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => tracing::warn!(
                    "plugin `{plugin}`: ignoring unusable cache file {}: {}",
                    path.display(),
                    Chain(&error)
                ),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(compile_error)?;
        if let Err(error) = write_cache(&component, &path) {
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

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_cache(component: &Component, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, &bytes)?;
    temp.persist(path)?;
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
