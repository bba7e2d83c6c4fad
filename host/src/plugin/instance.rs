//! One live plugin instance: its store (memory cap, deadline, WASI context granting only what
//! the rule grants), the host functions it imports, and the calls into it.

use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{v1, v2, v3};
use super::runtime::Runtime;
use super::state::is_timer_key;
use super::state::{PendingWrites, StateQuota};
use super::timers::{TimerRecord, check_name, timer_key};
use super::{Chain, Outcome, PluginError, Services, convert};
use crate::event::Event;

/// Per-step limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long one `init` or `handle` call may run.
    pub deadline: Duration,
    /// The most linear memory the instance may have.
    pub memory_bytes: usize,
    /// The most state the step may keep.
    pub state: StateQuota,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(50),
            memory_bytes: 32 << 20,
            state: StateQuota::default(),
        }
    }
}

/// What a rule grants a plugin beyond computing. Nothing by default: no environment
/// variables, no files, no network (WASI sockets are always refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the plugin may read, with the values the host had at load.
    pub env: Vec<String>,
    /// Host directories mounted read-only at the same path inside the guest.
    pub read_dirs: Vec<PathBuf>,
}

/// The `tracing` target of plugin log lines (filter with `RUST_LOG=iotrules::plugin=debug`).
const LOG_TARGET: &str = "iotrules::plugin";

/// How much of the guest's stderr is kept, to report a panic message.
const STDERR_CAPACITY: usize = 4096;

/// The store's data: WASI, the memory cap, the host functions' context.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    plugin: Arc<str>,
    services: Services,
    namespace: Arc<str>,
    pending: PendingWrites,
    quota: StateQuota,
    stderr: MemoryOutputPipe,
    /// The last panic report the guest logged during the current call (the SDK's panic hook
    /// logs one before the panic traps).
    panic: Option<String>,
    /// The event of the 0.2.0 or 0.3.0 `handle` call in progress, which `event-view` reads
    /// and whose device timers are set for.
    viewed: Viewed,
}

/// The host side of a 0.2.0 or 0.3.0 plugin's `event-view` resource: the event of the call in
/// progress, which the plugin reads through `HostState`. Every call's view has the same
/// handle (there is only ever one event in a call), so there is nothing to allocate per call.
pub struct EventView;

/// The event a `handle` call is about, while the call runs.
///
/// A pointer, not a copy or an `Arc`: the event is the caller's, borrowed for the call, and
/// cloning it per step would cost what the view exists to save.
#[derive(Default)]
struct Viewed(Option<NonNull<Event>>);

// SAFETY: the pointer is only dereferenced on the thread running the call that set it
// (`Instance::handle`), while the `&Event` it came from is borrowed by that call; `Event` is
// `Sync`, so reading it from whichever thread owns the store is sound.
unsafe impl Send for Viewed {}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    fn log(&mut self, level: tracing::Level, message: String) {
        if level == tracing::Level::ERROR && message.contains("panicked at ") {
            self.panic = Some(message.clone());
        }
        let plugin = &*self.plugin;
        let namespace = &*self.namespace;
        match level {
            tracing::Level::TRACE => {
                tracing::trace!(target: LOG_TARGET, plugin, step = namespace, "{message}")
            }
            tracing::Level::DEBUG => {
                tracing::debug!(target: LOG_TARGET, plugin, step = namespace, "{message}")
            }
            tracing::Level::INFO => {
                tracing::info!(target: LOG_TARGET, plugin, step = namespace, "{message}")
            }
            tracing::Level::WARN => {
                tracing::warn!(target: LOG_TARGET, plugin, step = namespace, "{message}")
            }
            tracing::Level::ERROR => {
                tracing::error!(target: LOG_TARGET, plugin, step = namespace, "{message}")
            }
        }
    }

    fn log_enabled(level: tracing::Level) -> bool {
        match level {
            tracing::Level::TRACE => tracing::enabled!(target: LOG_TARGET, tracing::Level::TRACE),
            tracing::Level::DEBUG => tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG),
            tracing::Level::INFO => tracing::enabled!(target: LOG_TARGET, tracing::Level::INFO),
            tracing::Level::WARN => tracing::enabled!(target: LOG_TARGET, tracing::Level::WARN),
            // Errors are always written: the panic report rides on them.
            tracing::Level::ERROR => true,
        }
    }

    /// A key of the plugin's (not one of the host's timer keys) read from the call's
    /// pending writes, then the store.
    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        if is_timer_key(&key) {
            return None;
        }
        self.read(&key)
    }

    fn read(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(pending) = self.pending.get(key) {
            return pending.map(<[u8]>::to_vec);
        }
        self.services.state.get(&self.namespace, key)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if is_timer_key(&key) {
            return Err(format!(
                "keys starting with `{}` are the host's (they hold timers)",
                super::TIMER_PREFIX
            ));
        }
        self.pending.set(
            &*self.services.state,
            &self.namespace,
            self.quota,
            key,
            value,
        )
    }

    fn state_delete(&mut self, key: String) {
        if !is_timer_key(&key) {
            self.pending
                .delete(&*self.services.state, &self.namespace, key);
        }
    }

    /// `set-timer`: a write of the timer's record under its key, with the call's state.
    fn set_timer(&mut self, name: String, at_ms: u64) -> wasmtime::Result<Result<(), String>> {
        if let Err(reason) = check_name(&name) {
            return Ok(Err(reason));
        }
        let Some(event) = self.viewed.0 else {
            return Ok(Err(
                "there is no event, so no device, to set a timer for: set timers from handle"
                    .to_owned(),
            ));
        };
        // SAFETY: as in `viewed`.
        let event = unsafe { event.as_ref() };
        let key = timer_key(&event.device.id, &name);
        let record = TimerRecord {
            name,
            at_ms,
            device: event.device.clone(),
            source: event.source.clone(),
            vendor: event.vendor,
            plugin: self.plugin.to_string(),
        };
        let value = serde_json::to_vec(&record)?;
        Ok(self.pending.set(
            &*self.services.state,
            &self.namespace,
            self.quota,
            key,
            value,
        ))
    }

    /// The key of the current event's device's timer `name`, if there is an event.
    fn timer_key(&self, name: &str) -> Option<String> {
        // SAFETY: as in `viewed`.
        let event = unsafe { self.viewed.0?.as_ref() };
        Some(timer_key(&event.device.id, name))
    }

    fn cancel_timer(&mut self, name: String) {
        if let Some(key) = self.timer_key(&name) {
            self.pending
                .delete(&*self.services.state, &self.namespace, key);
        }
    }

    fn timer(&self, name: String) -> Option<u64> {
        let value = self.read(&self.timer_key(&name)?)?;
        serde_json::from_slice::<TimerRecord>(&value)
            .ok()
            .map(|record| record.at_ms)
    }

    /// The event the 0.2.0 `handle` call in progress is about.
    fn viewed(&self) -> wasmtime::Result<&Event> {
        match self.viewed.0 {
            // SAFETY: `Instance::handle` sets the pointer from the `&Event` it was given
            // before calling the guest and clears it when the call returns, and the guest
            // can reach an `event-view` only during that call: the borrowed handle it gets
            // is gone when the call returns, and it has no other.
            Some(event) => Ok(unsafe { event.as_ref() }),
            None => wasmtime::bail!("event-view used outside a handle call"),
        }
    }
}

/// The `host` interface: the same functions in every WIT version but for the generated types,
/// and `$more`, those a version added.
macro_rules! host_interface {
    ($version:ident $($more:tt)*) => {
        impl $version::iotrules::plugin::host::Host for HostState {
            fn log(
                &mut self,
                level: $version::iotrules::plugin::host::Level,
                message: String,
            ) -> wasmtime::Result<()> {
                HostState::log(self, host_level!($version, level), message);
                Ok(())
            }

            fn log_enabled(
                &mut self,
                level: $version::iotrules::plugin::host::Level,
            ) -> wasmtime::Result<bool> {
                Ok(HostState::log_enabled(host_level!($version, level)))
            }

            fn now_ms(&mut self) -> wasmtime::Result<u64> {
                Ok(self.services.clock.now_ms())
            }

            fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
                Ok(HostState::state_get(self, key))
            }

            fn state_set(
                &mut self,
                key: String,
                value: Vec<u8>,
            ) -> wasmtime::Result<Result<(), String>> {
                Ok(HostState::state_set(self, key, value))
            }

            fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
                HostState::state_delete(self, key);
                Ok(())
            }

            $($more)*
        }
    };
}

macro_rules! host_level {
    ($version:ident, $level:expr) => {{
        use $version::iotrules::plugin::host::Level;
        match $level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        }
    }};
}

host_interface!(v1);
host_interface!(v2);
host_interface!(v3
    fn set_timer(&mut self, name: String, at_ms: u64) -> wasmtime::Result<Result<(), String>> {
        HostState::set_timer(self, name, at_ms)
    }

    fn cancel_timer(&mut self, name: String) -> wasmtime::Result<()> {
        HostState::cancel_timer(self, name);
        Ok(())
    }

    fn timer(&mut self, name: String) -> wasmtime::Result<Option<u64>> {
        Ok(HostState::timer(self, name))
    }

    fn device_twin(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Option<v3::iotrules::plugin::types::Twin>> {
        Ok(self.services.twins.with(&id, convert::v3::twin_to))
    }
);

impl v1::iotrules::plugin::types::Host for HostState {}

impl v2::iotrules::plugin::types::Host for HostState {}

impl v3::iotrules::plugin::types::Host for HostState {}

/// The `event-view` resource of the worlds that have one (0.2.0 and 0.3.0): the same methods
/// over each version's types.
macro_rules! event_view {
    ($version:ident) => {
        impl $version::iotrules::plugin::types::HostEventView for HostState {
            fn id(&mut self, _: Resource<EventView>) -> wasmtime::Result<String> {
                Ok(self.viewed()?.id.clone())
            }

            fn source(&mut self, _: Resource<EventView>) -> wasmtime::Result<String> {
                Ok(self.viewed()?.source.clone())
            }

            fn vendor(&mut self, _: Resource<EventView>) -> wasmtime::Result<String> {
                Ok(self.viewed()?.vendor.as_str().to_owned())
            }

            fn kind(
                &mut self,
                _: Resource<EventView>,
            ) -> wasmtime::Result<$version::iotrules::plugin::types::Kind> {
                Ok(convert::$version::kind_to(self.viewed()?.kind))
            }

            fn action(&mut self, _: Resource<EventView>) -> wasmtime::Result<String> {
                Ok(self.viewed()?.action.clone())
            }

            fn device(
                &mut self,
                _: Resource<EventView>,
            ) -> wasmtime::Result<$version::iotrules::plugin::types::Device> {
                Ok(convert::$version::device_to(&self.viewed()?.device))
            }

            fn time_ms(&mut self, _: Resource<EventView>) -> wasmtime::Result<u64> {
                Ok(self.viewed()?.time_ms)
            }

            fn properties(
                &mut self,
                _: Resource<EventView>,
            ) -> wasmtime::Result<Vec<$version::iotrules::plugin::types::Property>> {
                Ok(self
                    .viewed()?
                    .properties
                    .iter()
                    .map(convert::$version::property_to)
                    .collect())
            }

            fn property(
                &mut self,
                _: Resource<EventView>,
                code: String,
            ) -> wasmtime::Result<Option<$version::iotrules::plugin::types::Property>> {
                let event = self.viewed()?;
                Ok(event
                    .properties
                    .iter()
                    .find(|property| property.code == code)
                    .map(convert::$version::property_to))
            }

            fn payload(&mut self, _: Resource<EventView>) -> wasmtime::Result<String> {
                Ok(self.viewed()?.payload.as_str().to_owned())
            }

            fn attributes(
                &mut self,
                _: Resource<EventView>,
            ) -> wasmtime::Result<Vec<(String, String)>> {
                Ok(convert::$version::attributes_to(self.viewed()?))
            }

            fn attribute(
                &mut self,
                _: Resource<EventView>,
                name: String,
            ) -> wasmtime::Result<Option<String>> {
                Ok(self.viewed()?.attributes.get(&name).cloned())
            }

            fn whole(
                &mut self,
                _: Resource<EventView>,
            ) -> wasmtime::Result<$version::iotrules::plugin::types::Event> {
                Ok(convert::$version::event_to(self.viewed()?))
            }

            fn drop(&mut self, _: Resource<EventView>) -> wasmtime::Result<()> {
                // The guest only ever borrows the view; there is nothing to free.
                Ok(())
            }
        }
    };
}

event_view!(v2);
event_view!(v3);

/// Caps linear memory, remembering a refused growth so the trap can be named.
struct MemoryCap {
    cap: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            // An error (not `Ok(false)`) traps at once: a guest allocator that gets `-1`
            // from `memory.grow` would abort with a less clear message.
            wasmtime::bail!("memory cap of {} bytes reached", self.cap);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A compiled plugin, type-checked against the WIT world it was built for.
pub(crate) enum Pre {
    /// The current world: 0.2.0 with timers and twins.
    V3(v3::PluginPre<HostState>),
    /// 0.2.0: `handle` reads the event through an `event-view`.
    V2(v2::PluginPre<HostState>),
    /// 0.1.0: `handle` gets the whole event.
    V1(v1::PluginPre<HostState>),
}

/// A live instance's exports.
enum Bindings {
    V3(v3::Plugin),
    V2(v2::Plugin),
    V1(v1::Plugin),
}

/// A live instance of one plugin version, configured for one rule step.
pub struct Instance {
    store: Store<HostState>,
    bindings: Bindings,
    runtime: Arc<Runtime>,
    limits: Limits,
}

impl Instance {
    /// Instantiates `pre` in a fresh store and calls `init(config)` (with no config, only
    /// instantiates: enough to prove the component links and starts).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        runtime: &Arc<Runtime>,
        pre: &Pre,
        plugin: &Arc<str>,
        config: Option<&str>,
        limits: Limits,
        grants: &Grants,
        services: &Services,
        namespace: &Arc<str>,
    ) -> Result<Self, PluginError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = wasi_context(grants, stderr.clone()).map_err(|error| PluginError::Init {
            plugin: plugin.to_string(),
            reason: format!("cannot grant what the rule asks: {}", Chain(&error)),
        })?;
        let data = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                cap: limits.memory_bytes,
                refused: None,
            },
            plugin: plugin.clone(),
            services: services.clone(),
            namespace: namespace.clone(),
            pending: PendingWrites::default(),
            quota: limits.state,
            stderr,
            panic: None,
            viewed: Viewed::default(),
        };
        let mut store = Store::new(runtime.engine(), data);
        store.limiter(|data| &mut data.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(runtime.deadline_ticks(limits.deadline));
        let bindings = match pre {
            Pre::V3(pre) => pre.instantiate(&mut store).map(Bindings::V3),
            Pre::V2(pre) => pre.instantiate(&mut store).map(Bindings::V2),
            Pre::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
        }
        .map_err(|error| classify(&store, limits, &error))?;
        let mut instance = Instance {
            store,
            bindings,
            runtime: runtime.clone(),
            limits,
        };
        if let Some(config) = config {
            instance.init(config)?;
        }
        Ok(instance)
    }

    fn init(&mut self, config: &str) -> Result<(), PluginError> {
        self.arm();
        let result = match &self.bindings {
            Bindings::V3(plugin) => plugin.call_init(&mut self.store, config),
            Bindings::V2(plugin) => plugin.call_init(&mut self.store, config),
            Bindings::V1(plugin) => plugin.call_init(&mut self.store, config),
        };
        match result {
            Ok(Ok(())) => {
                self.commit();
                Ok(())
            }
            Ok(Err(reason)) => {
                self.rollback();
                Err(PluginError::Init {
                    plugin: self.plugin(),
                    reason,
                })
            }
            Err(error) => {
                self.rollback();
                Err(classify(&self.store, self.limits, &error))
            }
        }
    }

    /// Runs `handle` on one event. After an `Err` other than [`PluginError::Failed`] the
    /// instance is spent (a trapped component cannot be entered again): drop it.
    ///
    /// `timer` is the state key of the step's timer whose event this is: deleted with the
    /// call's writes, unless the call sets the timer again.
    pub fn handle(&mut self, event: &Event, timer: Option<&str>) -> Result<Outcome, PluginError> {
        self.arm();
        if let Some(key) = timer {
            let data = self.store.data_mut();
            data.pending
                .delete(&*data.services.state, &data.namespace, key.to_owned());
        }
        let result = match &self.bindings {
            Bindings::V3(plugin) => {
                self.store.data_mut().viewed = Viewed(Some(NonNull::from(event)));
                // Every call's view has the same handle: the host knows which event it is.
                let result = plugin.call_handle(&mut self.store, Resource::new_borrow(0));
                self.store.data_mut().viewed = Viewed(None);
                result
                    .map(|handled| handled.map(|outcome| convert::v3::outcome_from(outcome, event)))
            }
            Bindings::V2(plugin) => {
                self.store.data_mut().viewed = Viewed(Some(NonNull::from(event)));
                let result = plugin.call_handle(&mut self.store, Resource::new_borrow(0));
                self.store.data_mut().viewed = Viewed(None);
                result
                    .map(|handled| handled.map(|outcome| convert::v2::outcome_from(outcome, event)))
            }
            Bindings::V1(plugin) => {
                convert::with_v1_event(event, |input| plugin.call_handle(&mut self.store, input))
                    .map(|handled| handled.map(|outcome| convert::outcome_from_v1(outcome, event)))
            }
        };
        match result {
            Ok(Ok(Ok(outcome))) => {
                self.commit();
                Ok(outcome)
            }
            Ok(Ok(Err(reason))) => {
                self.rollback();
                Err(PluginError::Output {
                    plugin: self.plugin(),
                    reason,
                })
            }
            Ok(Err(reason)) => {
                self.rollback();
                Err(PluginError::Failed {
                    plugin: self.plugin(),
                    reason,
                })
            }
            Err(error) => {
                self.rollback();
                Err(classify(&self.store, self.limits, &error))
            }
        }
    }

    /// The plugin's name, for an error. Not cloned per call: the instances of a plugin on
    /// every worker share the name's reference count.
    fn plugin(&self) -> String {
        self.store.data().plugin.to_string()
    }

    /// Starts the deadline for the next call.
    fn arm(&mut self) {
        self.store.data_mut().panic = None;
        let ticks = self.runtime.deadline_ticks(self.limits.deadline);
        self.store.set_epoch_deadline(ticks);
    }

    /// Applies the call's writes; the timers it set or cancelled go into the schedule once
    /// the store has them, so a timer due at once is fired with its entry there to delete.
    fn commit(&mut self) {
        let data = self.store.data_mut();
        let writes = data.pending.take();
        if !writes.is_empty() {
            let timers: Vec<_> = writes
                .iter()
                .filter(|(key, _)| is_timer_key(key))
                .cloned()
                .collect();
            data.services.state.apply(&data.namespace, writes);
            if !timers.is_empty() {
                data.services.timers.apply(&data.namespace, &timers);
            }
        }
    }

    fn rollback(&mut self) {
        self.store.data_mut().pending.take();
    }
}

/// A WASI context with nothing granted but what the rule lists, and stderr captured (to
/// report a panic's message) instead of inherited.
fn wasi_context(grants: &Grants, stderr: MemoryOutputPipe) -> wasmtime::Result<WasiCtx> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stderr(stderr)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    for dir in &grants.read_dirs {
        let guest = dir.to_string_lossy();
        builder.preopened_dir(dir, guest.as_ref(), FsPerms::ReadOnly)?;
    }
    Ok(builder.build())
}

/// Names what went wrong in a call that returned a wasmtime error.
fn classify(store: &Store<HostState>, limits: Limits, error: &wasmtime::Error) -> PluginError {
    let data = store.data();
    let plugin = data.plugin.to_string();
    if let Some(asked) = data.limiter.refused {
        return PluginError::Memory {
            plugin,
            cap: limits.memory_bytes,
            asked,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Deadline {
            plugin,
            deadline: limits.deadline,
        },
        Some(Trap::UnreachableCodeReached) => match data
            .panic
            .as_deref()
            .and_then(|logged| panic_message(logged.as_bytes()))
            .or_else(|| panic_message(&data.stderr.contents()))
        {
            Some(message) => PluginError::Panic { plugin, message },
            None => PluginError::Trap {
                plugin,
                reason: Chain(error).to_string(),
            },
        },
        _ => PluginError::Trap {
            plugin,
            reason: Chain(error).to_string(),
        },
    }
}

/// The message of the last Rust panic the guest printed (`thread '…' panicked at …:\nMSG`).
fn panic_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let start = text.rfind("panicked at ")?;
    let rest = &text[start + "panicked at ".len()..];
    let mut lines = rest.lines();
    let location = lines.next()?.trim_end_matches(':');
    let message = lines.next().unwrap_or_default().trim();
    let mut text = format!("{message} (at {location})");
    if let Some((cut, _)) = text.char_indices().nth(300) {
        text.truncate(cut);
        text.push('…');
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_reads_rusts_panic_output() {
        let stderr = b"\nthread '<unnamed>' panicked at src/lib.rs:12:9:\nsensor exploded\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("sensor exploded (at src/lib.rs:12:9)")
        );
        assert_eq!(panic_message(b"no panic here"), None);
    }
}
