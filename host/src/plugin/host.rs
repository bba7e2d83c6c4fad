//! The host side of a plugin instance: the store's data ([`HostState`]) and the functions a
//! plugin imports through it (logging, its state, its timers, the device twins, the event it
//! is handling), the same in every WIT version but for the generated types. The instance
//! ([`super::instance`]) builds this state and calls into the guest; the runtime
//! ([`super::runtime`]) links these functions once for every instance.

use std::ptr::NonNull;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{v1, v2, v3};
use super::state::{PendingWrites, StateQuota, is_timer_key};
use super::timers::{TimerRecord, check_name, timer_key};
use super::{Services, convert};
use crate::event::Event;

/// The `tracing` target of plugin log lines (filter with `RUST_LOG=iotrules::plugin=debug`).
const LOG_TARGET: &str = "iotrules::plugin";

/// The store's data: WASI, the memory cap, the host functions' context.
pub(crate) struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryCap,
    pub(super) plugin: Arc<str>,
    pub(super) services: Services,
    pub(super) namespace: Arc<str>,
    pub(super) pending: PendingWrites,
    pub(super) quota: StateQuota,
    pub(super) stderr: MemoryOutputPipe,
    /// The last panic report the guest logged during the current call (the SDK's panic hook
    /// logs one before the panic traps).
    pub(super) panic: Option<String>,
    /// The event of the 0.2.0 or 0.3.0 `handle` call in progress, which `event-view` reads
    /// and whose device timers are set for.
    pub(super) viewed: Viewed,
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
pub(super) struct Viewed(pub(super) Option<NonNull<Event>>);

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
pub(super) struct MemoryCap {
    pub(super) cap: usize,
    pub(super) refused: Option<usize>,
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
