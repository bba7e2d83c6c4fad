//! The WebAssembly plugin host.
//!
//! Plugins are components of the `iotrules:plugin` world (`plugin-sdk/wit/plugin.wit`). The
//! pieces, from the bottom:
//!
//! - [`Runtime`]: one wasmtime `Engine` and `Linker` for the process, the epoch ticker that
//!   enforces per-call deadlines (waking only when a running call's deadline comes), and the
//!   on-disk cache of compiled components.
//! - [`Version`]: one compiled plugin file, type-checked against the world (`PluginPre`).
//! - [`Instance`]: a live instance of a version with its own store, memory cap and WASI
//!   context that grants nothing; reused across events.
//! - [`Registry`]: the plugins of a directory by name, each a [`Slot`] whose current version
//!   is swapped atomically on reload; consecutive failures quarantine a version.
//! - [`Step`]: what a rule step holds: its plugin slot, its config and limits, and the
//!   instance it runs events on, replaced when the slot's version changes.
//! - [`Watcher`]: reloads changed files off the hot path.
//! - [`GrantPolicy`]: the grants no rule may give a plugin (the config's secrets).

mod convert;
mod grants;
mod host;
mod instance;
mod registry;
mod runtime;
mod state;
mod ticker;
pub mod timers;
mod watch;

pub use grants::{GrantPolicy, system_dir};
pub use instance::{Grants, Limits};
pub use registry::StepOutcome;
pub use registry::{DEFAULT_QUARANTINE_AFTER, Registry, ReloadReport, Step, Version};
pub use runtime::{Runtime, RuntimeConfig};
pub use state::{Durable, HostData, StateUsage};
pub use state::{
    HOST_NAMESPACE_PREFIX, MAX_SETS_PER_CALL, MemoryStateStore, StateQuota, StateStore,
    TIMER_PREFIX,
};
pub use timers::{Schedule, TimerRecord};
pub use watch::{DEFAULT_DEBOUNCE, Watcher};

use std::sync::Arc;

/// What the host offers every plugin instance through its imports: state, timers, the device
/// twins and the clock. Shared by all the instances of a registry.
#[derive(Clone)]
pub(crate) struct Services {
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) timers: Arc<Schedule>,
    pub(crate) twins: Arc<crate::twin::Twins>,
    pub(crate) clock: crate::time::Clock,
}

use std::fmt;
use std::time::Duration;

use crate::event::{Command, Event};

/// The guest interfaces, generated from the WIT worlds: the current one (0.3.0,
/// `plugin-sdk/wit`), and 0.2.0 and 0.1.0 (`host/wit/plugin-0.2.0`, `host/wit/plugin-0.1.0`),
/// whose plugins still run.
pub(crate) mod bindings {
    pub(crate) mod v3 {
        wasmtime::component::bindgen!({
            path: "../plugin-sdk/wit",
            world: "plugin",
            imports: { default: trappable },
            with: { "iotrules:plugin/types.event-view": super::super::host::EventView },
        });
    }
    pub(crate) mod v2 {
        wasmtime::component::bindgen!({
            path: "wit/plugin-0.2.0",
            world: "plugin",
            imports: { default: trappable },
            with: { "iotrules:plugin/types.event-view": super::super::host::EventView },
        });
    }

    pub(crate) mod v1 {
        wasmtime::component::bindgen!({
            path: "wit/plugin-0.1.0",
            world: "plugin",
            imports: { default: trappable },
            // The event handed to `handle` borrows the host's strings instead of cloning them:
            // they are copied into the guest's memory once, by the lowering, not twice.
            ownership: Borrowing { duplicate_if_necessary: true },
        });
    }

    pub(crate) use v1::iotrules::plugin::types as iotrules_v1;
    pub(crate) use v2::iotrules::plugin::types as iotrules_v2;
    pub(crate) use v3::iotrules::plugin::types as iotrules_v3;
}

/// What a plugin decided about an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Pass the event on unchanged.
    Keep,
    /// Stop the event here, for this rule.
    Drop,
    /// Pass this event on instead.
    Replace(Box<Event>),
}

/// A plugin's answer for one event: a verdict and the commands to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub commands: Vec<Command>,
}

/// Why a plugin could not be loaded, started, or could not handle an event.
///
/// Every variant names the plugin; none carries event data or secrets.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("plugin `{plugin}`: cannot read {path}: {reason}")]
    Read {
        plugin: String,
        path: String,
        reason: String,
    },
    /// Not a component wasmtime can compile (a core module, garbage, a truncated file).
    #[error("plugin `{plugin}`: not a valid WebAssembly component: {reason}")]
    Compile { plugin: String, reason: String },
    /// A component, but not of the `iotrules:plugin` world (0.3.0, 0.2.0 or 0.1.0): a missing export or
    /// import it asks for that the host does not offer.
    #[error("plugin `{plugin}`: does not implement the iotrules:plugin world: {reason}")]
    WrongWorld { plugin: String, reason: String },
    /// `init` refused the step's configuration.
    #[error("plugin `{plugin}`: init refused the config: {reason}")]
    Init { plugin: String, reason: String },
    /// `handle` returned an error.
    #[error("plugin `{plugin}`: handle failed: {reason}")]
    Failed { plugin: String, reason: String },
    /// The call ran past its deadline and was interrupted.
    #[error("plugin `{plugin}`: exceeded its {}-ms deadline and was stopped", deadline.as_millis())]
    Deadline { plugin: String, deadline: Duration },
    /// The guest tried to grow its memory past the cap.
    #[error("plugin `{plugin}`: exceeded its memory cap of {cap} bytes (asked for {asked})")]
    Memory {
        plugin: String,
        cap: usize,
        asked: usize,
    },
    /// The guest panicked; `message` is the panic message it printed.
    #[error("plugin `{plugin}`: panicked: {message}")]
    Panic { plugin: String, message: String },
    /// Any other trap (an out-of-bounds access, a host call refused, …).
    #[error("plugin `{plugin}`: trapped: {reason}")]
    Trap { plugin: String, reason: String },
    /// The plugin's output was malformed (a command whose params are not JSON, …).
    #[error("plugin `{plugin}`: invalid output: {reason}")]
    Output { plugin: String, reason: String },
    /// The version failed too many times in a row and is not called until its file changes.
    #[error(
        "plugin `{plugin}`: quarantined after {failures} failures in a row (last: {last}); \
         replace its file to try again"
    )]
    Quarantined {
        plugin: String,
        failures: u32,
        last: String,
    },
    /// No plugin of this name is loaded.
    #[error("plugin `{plugin}` is not loaded (no {plugin}.wasm in the plugins directory)")]
    Missing { plugin: String },
}

impl PluginError {
    /// The plugin the error is about.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Read { plugin, .. }
            | PluginError::Compile { plugin, .. }
            | PluginError::WrongWorld { plugin, .. }
            | PluginError::Init { plugin, .. }
            | PluginError::Failed { plugin, .. }
            | PluginError::Deadline { plugin, .. }
            | PluginError::Memory { plugin, .. }
            | PluginError::Panic { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Output { plugin, .. }
            | PluginError::Quarantined { plugin, .. }
            | PluginError::Missing { plugin } => plugin,
        }
    }

    /// A short, stable name of the kind, for metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Read { .. } => "read",
            PluginError::Compile { .. } => "compile",
            PluginError::WrongWorld { .. } => "wrong-world",
            PluginError::Init { .. } => "init",
            PluginError::Failed { .. } => "failed",
            PluginError::Deadline { .. } => "deadline",
            PluginError::Memory { .. } => "memory",
            PluginError::Panic { .. } => "panic",
            PluginError::Trap { .. } => "trap",
            PluginError::Output { .. } => "output",
            PluginError::Quarantined { .. } => "quarantined",
            PluginError::Missing { .. } => "missing",
        }
    }
}

/// A wasmtime error with its whole cause chain on one line.
pub(crate) struct Chain<'a>(pub &'a wasmtime::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for cause in self.0.chain() {
            if !first {
                f.write_str(": ")?;
            }
            first = false;
            // Backtraces make multi-line causes; the first line says what happened.
            let text = cause.to_string();
            f.write_str(text.lines().next().unwrap_or_default())?;
        }
        Ok(())
    }
}
