//! One live plugin instance: its store (memory cap, deadline, WASI context granting only what
//! the rule grants, and the host side its imports reach, [`super::host`]), and the calls
//! into it.

use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::bindings::{v1, v2, v3};
use super::host::{HostState, MemoryCap, Viewed};
use super::runtime::{Pre, Runtime};
use super::state::{PendingWrites, StateQuota, is_timer_key};
use super::ticker::{Calls, Overdue};
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

/// How much of the guest's stderr is kept, to report a panic message.
const STDERR_CAPACITY: usize = 4096;

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
    /// Keeps the runtime's ticker running while the instance lives.
    _runtime: Arc<Runtime>,
    limits: Limits,
    /// Marked while the guest runs, with when its deadline passes, for the epoch ticker.
    calls: Calls,
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
        let calls = runtime.calls();
        let on_epoch = calls.share();
        let (deadline, mut overdue) = (limits.deadline, Overdue::default());
        store.epoch_deadline_callback(move |_| Ok(on_epoch.on_epoch(deadline, &mut overdue)));
        calls.enter(limits.deadline);
        store.set_epoch_deadline(1);
        let bindings = match pre {
            Pre::V3(pre) => pre.instantiate(&mut store).map(Bindings::V3),
            Pre::V2(pre) => pre.instantiate(&mut store).map(Bindings::V2),
            Pre::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
        };
        calls.leave();
        let bindings = bindings.map_err(|error| classify(&store, limits, &error))?;
        let mut instance = Instance {
            store,
            bindings,
            _runtime: runtime.clone(),
            limits,
            calls,
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
        self.calls.leave();
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
        self.calls.leave();
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

    /// Starts the deadline for the next call: the store calls back at the epoch's next
    /// advance, and the ticker is woken if the deadline comes before its next look.
    fn arm(&mut self) {
        self.calls.enter(self.limits.deadline);
        self.store.data_mut().panic = None;
        self.store.set_epoch_deadline(1);
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
