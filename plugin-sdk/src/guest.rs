//! The component side of [`crate::export_plugin!`]: the real host over the WIT imports, and
//! the glue that keeps the plugin instance between calls.
//!
//! Compiled for wasm32 only, so nothing native can reach the imports (whose non-wasm stubs
//! panic).

use std::cell::RefCell;
use std::sync::Once;

use crate::bindings::iotrules::plugin::host as imports;
use crate::bindings::iotrules::plugin::types::EventView as HostView;
use crate::{Config, Ctx, EventView, Host, Level, Outcome, Plugin, Twin};

/// The host, reached through the component's imports.
struct WasmHost;

impl Host for WasmHost {
    fn log(&mut self, level: Level, message: &str) {
        imports::log(level, message);
    }

    fn log_enabled(&self, level: Level) -> bool {
        imports::log_enabled(level)
    }

    fn now_ms(&self) -> u64 {
        imports::now_ms()
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        imports::state_get(key)
    }

    fn state_set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        imports::state_set(key, value)
    }

    fn state_delete(&mut self, key: &str) {
        imports::state_delete(key);
    }

    fn set_timer(&mut self, name: &str, at_ms: u64) -> Result<(), String> {
        imports::set_timer(name, at_ms)
    }

    fn cancel_timer(&mut self, name: &str) {
        imports::cancel_timer(name);
    }

    fn timer(&self, name: &str) -> Option<u64> {
        imports::timer(name)
    }

    fn twin(&self, id: &str) -> Option<Twin> {
        imports::device_twin(id)
    }
}

/// Sends panic messages to the host's log before the panic aborts (traps) the call: a
/// component's stderr goes nowhere, and the operator should see why the step failed.
fn report_panics_to_host() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            imports::log(Level::Error, &format!("plugin {info}"));
        }));
    });
}

/// The WIT `init` export: makes the plugin and keeps it in `slot`.
pub fn init<P: Plugin>(slot: &RefCell<Option<P>>, config: String) -> Result<(), String> {
    report_panics_to_host();
    let mut slot = slot
        .try_borrow_mut()
        .map_err(|_| "init called while the plugin is busy".to_owned())?;
    // A failed re-init must not leave the old instance serving events.
    *slot = None;
    *slot = Some(P::init(&Config::new(config))?);
    Ok(())
}

/// The WIT `handle` export: runs the kept plugin on one event.
pub fn handle<P: Plugin>(slot: &RefCell<Option<P>>, event: &HostView) -> Result<Outcome, String> {
    let mut slot = slot
        .try_borrow_mut()
        .map_err(|_| "handle called while the plugin is busy".to_owned())?;
    let plugin = slot
        .as_mut()
        .ok_or_else(|| "handle called before a successful init".to_owned())?;
    plugin.handle(&EventView::of_host(event), &mut Ctx::new(&mut WasmHost))
}
