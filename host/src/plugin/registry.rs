//! The plugins of a directory, by name, with atomic version swaps and quarantine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, mpsc};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use super::Services;
use super::grants::GrantPolicy;
use super::instance::{Grants, Instance, Limits};
use super::runtime::{Pre, Runtime};
use super::state::{MemoryStateStore, StateStore};
use super::timers::Schedule;
use super::{Outcome, PluginError};
use crate::event::Event;
use crate::sync::lock;
use crate::time::Clock;
use crate::twin::{DEFAULT_MAX_DEVICES, Twins};

/// The plugin world a component built with this repository's SDK implements.
pub(crate) const CURRENT_WORLD: &str = "0.3.0";

/// How many failures in a row quarantine a version, unless configured otherwise.
pub const DEFAULT_QUARANTINE_AFTER: u32 = 5;

/// One loaded, type-checked plugin file.
pub struct Version {
    /// The plugin's name: its file name without `.wasm`.
    pub plugin: Arc<str>,
    /// 1 for the first version loaded in this process, then counting up per plugin.
    pub number: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    pub path: PathBuf,
    pre: Pre,
    /// Failures in a row, across every step running this version.
    failures: AtomicU32,
    /// Set once the version is quarantined: the error that tipped it. Read on every call, so
    /// a lock-free cell: the workers sharing a version only read its cache line.
    quarantined: OnceLock<String>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("plugin", &self.plugin)
            .field("number", &self.number)
            .field("sha256", &self.sha256)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Version {
    /// The error that quarantined this version, if it is quarantined.
    pub fn quarantined(&self) -> Option<String> {
        self.quarantined.get().cloned()
    }

    /// The version of the `iotrules:plugin` world the component implements: `0.3.0`
    /// ([`CURRENT_WORLD`]), or `0.2.0` or `0.1.0` for one built with an older SDK.
    pub fn world(&self) -> &'static str {
        match self.pre {
            Pre::V3(_) => CURRENT_WORLD,
            Pre::V2(_) => "0.2.0",
            Pre::V1(_) => "0.1.0",
        }
    }
}

/// A plugin name's current version, swapped atomically on reload.
pub struct Slot {
    name: Arc<str>,
    current: ArcSwap<Version>,
    /// The configs of the steps using this plugin (with how many steps use each): a new
    /// version must `init` with every one of them before it is swapped in.
    configs: Mutex<HashMap<Arc<str>, usize>>,
}

impl Slot {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version new events run on.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    fn register(&self, config: &Arc<str>) {
        *lock(&self.configs).entry(config.clone()).or_insert(0) += 1;
    }

    fn unregister(&self, config: &Arc<str>) {
        let mut configs = lock(&self.configs);
        if let Some(count) = configs.get_mut(config) {
            *count -= 1;
            if *count == 0 {
                configs.remove(config);
            }
        }
    }
}

/// What happened to a plugin file.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadReport {
    /// A new version now serves new events.
    Loaded {
        plugin: String,
        version: u64,
        sha256: String,
        /// The plugin world it was built for: `0.3.0`, `0.2.0` or `0.1.0` (see [`Version::world`]).
        world: &'static str,
        /// From reading the file to the swap: compile (or cache load), instantiate, init.
        took: Duration,
    },
    /// The file was refused; the previous version, if any, keeps serving.
    Rejected { plugin: String, error: PluginError },
    /// The file's bytes are those already serving.
    Unchanged { plugin: String },
    /// The file was removed; the last version keeps serving until the rules stop using it.
    Removed { plugin: String },
    /// A version failed too often in a row and is no longer called.
    Quarantined {
        plugin: String,
        version: u64,
        error: PluginError,
    },
}

/// The plugins of one directory.
pub struct Registry {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    /// State, timers, twins and clock, which every instance's host functions reach.
    services: Services,
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    quarantine_after: u32,
    next_version: AtomicU64,
    subscribers: Arc<Mutex<Vec<mpsc::Sender<ReloadReport>>>>,
    /// Serializes loads, so two reloads of one file cannot swap out of order.
    loading: Mutex<()>,
    /// The grants rules may not give these plugins.
    grant_policy: GrantPolicy,
}

impl Registry {
    /// A registry for `dir`, with plugin state kept in `state`. Nothing is loaded yet.
    pub fn new(runtime: Arc<Runtime>, dir: impl Into<PathBuf>, state: Arc<dyn StateStore>) -> Self {
        Registry {
            runtime,
            dir: dir.into(),
            services: Services {
                state,
                timers: Arc::new(Schedule::new()),
                twins: Arc::new(Twins::new(DEFAULT_MAX_DEVICES)),
                clock: Clock::System,
            },
            slots: RwLock::new(HashMap::new()),
            quarantine_after: DEFAULT_QUARANTINE_AFTER,
            next_version: AtomicU64::new(1),
            subscribers: Arc::default(),
            loading: Mutex::new(()),
            grant_policy: GrantPolicy::default(),
        }
    }

    /// Where the plugins' state is kept.
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.services.state
    }

    /// The plugins' pending timers.
    pub fn timers(&self) -> &Arc<Schedule> {
        &self.services.timers
    }

    /// The device twins plugins read.
    pub fn twins(&self) -> &Arc<Twins> {
        &self.services.twins
    }

    /// Plugins read these twins (the service's, bounded by its config).
    pub fn with_twins(mut self, twins: Arc<Twins>) -> Self {
        self.services.twins = twins;
        self
    }

    /// The grants the rules using these plugins may not give (the config's secrets; by
    /// default only the system directories, which the rule loader always refuses).
    pub(crate) fn with_grant_policy(mut self, policy: GrantPolicy) -> Self {
        self.grant_policy = policy;
        self
    }

    /// See [`Registry::with_grant_policy`].
    pub fn grant_policy(&self) -> &GrantPolicy {
        &self.grant_policy
    }

    /// Quarantine a version after `failures` failures in a row (at least 1).
    pub fn with_quarantine_after(mut self, failures: u32) -> Self {
        self.quarantine_after = failures.max(1);
        self
    }

    /// The clock every instance's `now-ms` reads and timers are due by (the system clock
    /// unless set).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.services.clock = clock;
        self
    }

    /// The clock plugins read, which timers are due by.
    pub fn clock(&self) -> &Clock {
        &self.services.clock
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Reports of every later load, reject, removal and quarantine.
    pub fn subscribe(&self) -> mpsc::Receiver<ReloadReport> {
        let (sender, receiver) = mpsc::channel();
        lock(&self.subscribers).push(sender);
        receiver
    }

    /// Loads every `*.wasm` file directly in the directory.
    pub fn load_all(&self) -> std::io::Result<Vec<ReloadReport>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| plugin_name(path).is_some())
            .collect();
        paths.sort();
        Ok(paths.iter().map(|path| self.load_file(path)).collect())
    }

    /// The plugin names loaded.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.slots).keys().cloned().collect();
        names.sort();
        names
    }

    pub fn slot(&self, plugin: &str) -> Option<Arc<Slot>> {
        read(&self.slots).get(plugin).cloned()
    }

    /// Loads (or reloads) one file: compile off the hot path, type-check, instantiate and
    /// `init` with every config in use; only then swap it in. Anything else leaves the
    /// serving version in place.
    pub fn load_file(&self, path: &Path) -> ReloadReport {
        let Some(plugin) = plugin_name(path) else {
            return ReloadReport::Rejected {
                plugin: path.display().to_string(),
                error: PluginError::Read {
                    plugin: path.display().to_string(),
                    path: path.display().to_string(),
                    reason: "a plugin file is named NAME.wasm, NAME of letters, digits, - and _"
                        .into(),
                },
            };
        };
        let _loading = lock(&self.loading);
        let started = Instant::now();
        let report = self.load(&plugin, path, started);
        match &report {
            ReloadReport::Loaded {
                version,
                world,
                took,
                ..
            } => {
                tracing::info!(
                    plugin,
                    version,
                    world,
                    took_ms = took.as_millis() as u64,
                    "plugin loaded"
                );
                if *world != CURRENT_WORLD {
                    tracing::info!(
                        plugin,
                        "plugin built for the iotrules:plugin@{world} world: it runs, but gets \
                         the whole event on every call; rebuilt with the current SDK \
                         ({CURRENT_WORLD}) it reads only the fields it uses"
                    );
                }
            }
            ReloadReport::Rejected { error, .. } => {
                tracing::error!(
                    plugin,
                    "plugin file refused, previous version kept: {error}"
                )
            }
            ReloadReport::Removed { .. } => tracing::warn!(
                plugin,
                "plugin file removed; its last version keeps serving the rules that use it"
            ),
            ReloadReport::Unchanged { .. } | ReloadReport::Quarantined { .. } => {}
        }
        self.publish(&report);
        report
    }

    fn load(&self, plugin: &str, path: &Path, started: Instant) -> ReloadReport {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return ReloadReport::Removed {
                    plugin: plugin.to_owned(),
                };
            }
            Err(e) => {
                return rejected(PluginError::Read {
                    plugin: plugin.to_owned(),
                    path: path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let slot = self.slot(plugin);
        if let Some(slot) = &slot
            && slot.current().sha256 == sha256
        {
            return ReloadReport::Unchanged {
                plugin: plugin.to_owned(),
            };
        }
        let pre = match self.runtime.prepare(plugin, &bytes) {
            Ok(pre) => pre,
            Err(error) => return rejected(error),
        };
        let name: Arc<str> = Arc::from(plugin);
        if let Err(error) = self.trial(&name, &pre, slot.as_deref()) {
            return rejected(error);
        }
        let version = Arc::new(Version {
            plugin: name.clone(),
            number: self.next_version.fetch_add(1, Ordering::Relaxed),
            sha256: sha256.clone(),
            path: path.to_owned(),
            pre,
            failures: AtomicU32::new(0),
            quarantined: OnceLock::new(),
        });
        let number = version.number;
        let world = version.world();
        match slot {
            Some(slot) => slot.current.store(version),
            None => {
                let slot = Arc::new(Slot {
                    name,
                    current: ArcSwap::from(version),
                    configs: Mutex::new(HashMap::new()),
                });
                write(&self.slots).insert(plugin.to_owned(), slot);
            }
        }
        ReloadReport::Loaded {
            plugin: plugin.to_owned(),
            version: number,
            sha256,
            world,
            took: started.elapsed(),
        }
    }

    /// Instantiates the candidate and runs `init` with each config in use, against scratch
    /// state so a trial leaves nothing behind.
    fn trial(&self, plugin: &Arc<str>, pre: &Pre, slot: Option<&Slot>) -> Result<(), PluginError> {
        let configs: Vec<Arc<str>> = slot
            .map(|slot| lock(&slot.configs).keys().cloned().collect())
            .unwrap_or_default();
        let scratch = Services {
            state: Arc::new(MemoryStateStore::new()),
            timers: Arc::new(Schedule::new()),
            ..self.services.clone()
        };
        let namespace: Arc<str> = Arc::from("trial");
        let limits = Limits::default();
        if configs.is_empty() {
            Instance::start(
                &self.runtime,
                pre,
                plugin,
                None,
                limits,
                &Grants::default(),
                &scratch,
                &namespace,
            )?;
            return Ok(());
        }
        for config in configs {
            Instance::start(
                &self.runtime,
                pre,
                plugin,
                Some(&config),
                limits,
                &Grants::default(),
                &scratch,
                &namespace,
            )?;
        }
        Ok(())
    }

    /// A rule step running `plugin` with `config` (JSON text). The instance is started now,
    /// so a config the plugin refuses is reported when the rule loads, not on its first event.
    /// `namespace` scopes the step's state (e.g. `rule-name/step-index`).
    pub fn step(
        &self,
        plugin: &str,
        config: &str,
        limits: Limits,
        grants: Grants,
        namespace: &str,
    ) -> Result<Step, PluginError> {
        if limits.memory_bytes > self.runtime.config().max_memory_bytes {
            return Err(PluginError::Init {
                plugin: plugin.to_owned(),
                reason: format!(
                    "memory cap {} bytes is over the runtime's maximum of {}",
                    limits.memory_bytes,
                    self.runtime.config().max_memory_bytes
                ),
            });
        }
        let slot = self.slot(plugin).ok_or_else(|| PluginError::Missing {
            plugin: plugin.to_owned(),
        })?;
        let mut step = Step {
            runtime: self.runtime.clone(),
            slot,
            config: Arc::from(config),
            limits,
            grants,
            services: self.services.clone(),
            namespace: Arc::from(namespace),
            instance: None,
            quarantine_after: self.quarantine_after,
            subscribers: self.subscribers.clone(),
        };
        let version = step.slot.current();
        step.instance = Some((version.clone(), step.start(&version)?));
        step.slot.register(&step.config);
        Ok(step)
    }

    fn publish(&self, report: &ReloadReport) {
        lock(&self.subscribers).retain(|s| s.send(report.clone()).is_ok());
    }
}

fn rejected(error: PluginError) -> ReloadReport {
    ReloadReport::Rejected {
        plugin: error.plugin().to_owned(),
        error,
    }
}

/// `NAME` of `DIR/NAME.wasm`, if NAME is a valid plugin name.
pub(crate) fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let valid = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| stem.to_owned())
}

/// What a step returned for one event, and which version produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub outcome: Outcome,
    /// The [`Version::number`] that handled the event.
    pub version: u64,
}

/// One rule step: a plugin, its config, limits and grants, and the instance it runs on.
///
/// A step handles one event at a time (`&mut self`), so an event always finishes on the
/// version it started on; the next event picks up a newer version if one was swapped in.
pub struct Step {
    runtime: Arc<Runtime>,
    slot: Arc<Slot>,
    config: Arc<str>,
    limits: Limits,
    grants: Grants,
    services: Services,
    namespace: Arc<str>,
    instance: Option<(Arc<Version>, Instance)>,
    quarantine_after: u32,
    subscribers: Arc<Mutex<Vec<mpsc::Sender<ReloadReport>>>>,
}

impl Step {
    pub fn plugin(&self) -> &str {
        self.slot.name()
    }

    /// The version number of the instance this step runs, if it has one.
    pub fn version(&self) -> Option<u64> {
        self.instance.as_ref().map(|(version, _)| version.number)
    }

    /// Runs the plugin on `event`. A failure (an error, trap, deadline or memory cap) fails
    /// only this call; the next call starts a fresh instance if this one trapped. After
    /// `quarantine_after` failures in a row the version is quarantined until its file changes.
    pub fn handle(&mut self, event: &Event) -> Result<StepOutcome, PluginError> {
        self.call(event, None)
    }

    /// Hands the step the event of its timer stored under `key`, which came due: the timer is
    /// deleted in the call's commit (unless the call sets it again), or on its own if the
    /// call fails, so it fires once.
    pub fn fire(&mut self, event: &Event, key: &str) -> Result<StepOutcome, PluginError> {
        let called = self.call(event, Some(key));
        if called.is_err() {
            self.services
                .state
                .apply(&self.namespace, vec![(key.to_owned(), None)]);
        }
        called
    }

    /// The state namespace of the step: `{rule}/{step}`.
    pub fn namespace(&self) -> &Arc<str> {
        &self.namespace
    }

    fn call(&mut self, event: &Event, timer: Option<&str>) -> Result<StepOutcome, PluginError> {
        // A guard, not a clone: the steps on every worker share the version, and a reference
        // count changed per call would bounce its cache line between them.
        let version = self.slot.current.load();
        if let Some(last) = version.quarantined.get() {
            return Err(PluginError::Quarantined {
                plugin: self.slot.name().to_owned(),
                failures: version.failures.load(Ordering::Relaxed),
                last: last.clone(),
            });
        }
        let stale = !matches!(&self.instance, Some((running, _)) if Arc::ptr_eq(running, &version));
        if stale {
            self.instance = None;
            match self.start(&version) {
                Ok(instance) => self.instance = Some((Arc::clone(&version), instance)),
                Err(error) => return Err(self.failed(&version, error)),
            }
        }
        let Some((_, instance)) = self.instance.as_mut() else {
            unreachable!("an instance was just started");
        };
        match instance.handle(event, timer) {
            Ok(outcome) => {
                // Written only when there is something to reset, for the same reason.
                if version.failures.load(Ordering::Relaxed) != 0 {
                    version.failures.store(0, Ordering::Relaxed);
                }
                Ok(StepOutcome {
                    outcome,
                    version: version.number,
                })
            }
            Err(error) => {
                if !matches!(
                    error,
                    PluginError::Failed { .. } | PluginError::Output { .. }
                ) {
                    // A trapped instance cannot be entered again.
                    self.instance = None;
                }
                Err(self.failed(&version, error))
            }
        }
    }

    fn start(&self, version: &Version) -> Result<Instance, PluginError> {
        Instance::start(
            &self.runtime,
            &version.pre,
            &version.plugin,
            Some(&self.config),
            self.limits,
            &self.grants,
            &self.services,
            &self.namespace,
        )
    }

    /// Counts a failure and quarantines the version when it has failed too often in a row.
    fn failed(&self, version: &Version, error: PluginError) -> PluginError {
        let failures = version.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // Only the first failure past the limit sets the cell, so it alone reports.
        if failures >= self.quarantine_after && version.quarantined.set(error.to_string()).is_ok() {
            tracing::error!(
                plugin = &*version.plugin,
                version = version.number,
                "plugin quarantined after {failures} failures in a row: {error}"
            );
            let report = ReloadReport::Quarantined {
                plugin: version.plugin.to_string(),
                version: version.number,
                error: error.clone(),
            };
            lock(&self.subscribers).retain(|s| s.send(report.clone()).is_ok());
        }
        error
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.slot.unregister(&self.config);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_come_from_file_names() {
        assert_eq!(
            plugin_name(Path::new("/p/dead-band_2.wasm")).as_deref(),
            Some("dead-band_2")
        );
        assert_eq!(plugin_name(Path::new("/p/x.wat")), None);
        assert_eq!(plugin_name(Path::new("/p/.wasm")), None);
        assert_eq!(plugin_name(Path::new("/p/a b.wasm")), None);
    }
}
