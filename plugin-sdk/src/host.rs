//! What a plugin can ask of the host: logging, the clock and its state.
//!
//! Plugins never call the WIT imports directly. They get a [`Ctx`], which goes through the
//! [`Host`] trait: inside the component that is [`crate::guest`]'s implementation over the
//! imports; in native unit tests it is [`crate::testing::TestHost`]. So a plugin's tests run
//! with plain `cargo test`, and the import stubs `wit-bindgen` generates for non-wasm targets
//! (which panic) are never reached.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Level, Twin};

/// The host functions of the WIT `host` interface, one method each.
///
/// Implemented by the SDK for the real host and by [`crate::testing::TestHost`]; a plugin
/// only needs it to write its own fake.
pub trait Host {
    /// Writes a line to the host's log.
    fn log(&mut self, level: Level, message: &str);

    /// Whether a line at `level` would be written. Hosts that cannot tell say yes.
    fn log_enabled(&self, level: Level) -> bool {
        let _ = level;
        true
    }

    /// The host's clock, Unix ms.
    fn now_ms(&self) -> u64;

    /// Reads the state stored under `key`.
    fn state_get(&self, key: &str) -> Option<Vec<u8>>;

    /// Stores `value` under `key`; the host may refuse (a size limit), with a reason.
    fn state_set(&mut self, key: &str, value: &[u8]) -> Result<(), String>;

    /// Removes the state stored under `key`.
    fn state_delete(&mut self, key: &str);

    /// Sets the current device's timer `name` to be due at `at_ms`; the host may refuse,
    /// with a reason. A host without timers refuses every one.
    fn set_timer(&mut self, name: &str, at_ms: u64) -> Result<(), String> {
        let _ = (name, at_ms);
        Err("this host has no timers".to_owned())
    }

    /// Cancels the current device's timer `name`, if set.
    fn cancel_timer(&mut self, name: &str) {
        let _ = name;
    }

    /// When the current device's timer `name` is due, if it is set.
    fn timer(&self, name: &str) -> Option<u64> {
        let _ = name;
        None
    }

    /// The host's twin of device `id`, if it has one.
    fn twin(&self, id: &str) -> Option<Twin> {
        let _ = id;
        None
    }
}

/// A plugin's access to the host during one `handle` call.
///
/// State is host-held and belongs to this rule step: it survives instance restarts and plugin
/// reloads, and a call that returns an error leaves none of its writes behind. The typed
/// helpers store JSON, so state stays readable with `iotrules` tools and survives adding a
/// field with `#[serde(default)]`.
pub struct Ctx<'h> {
    host: &'h mut dyn Host,
}

impl<'h> Ctx<'h> {
    /// A context over any host; the SDK makes these for you.
    pub fn new(host: &'h mut dyn Host) -> Self {
        Ctx { host }
    }

    /// The host's clock, Unix ms. Use this rather than the system clock: rule tests set it.
    pub fn now_ms(&self) -> u64 {
        self.host.now_ms()
    }

    /// Writes a log line at `level`, if the host would write it. Per-event lines belong at
    /// [`Level::Debug`] or below.
    ///
    /// `message` is anything displayable, and is only formatted when the level is enabled:
    /// pass `format_args!("…{x}…")` rather than `&format!(…)` on the per-event path, so a
    /// disabled debug line costs one host call and no formatting.
    pub fn log(&mut self, level: Level, message: impl std::fmt::Display) {
        if self.host.log_enabled(level) {
            self.host.log(level, &message.to_string());
        }
    }

    /// Whether a line at `level` would be written (to skip work that only feeds a log line).
    pub fn log_enabled(&self, level: Level) -> bool {
        self.host.log_enabled(level)
    }

    /// Writes a [`Level::Trace`] line.
    pub fn trace(&mut self, message: impl std::fmt::Display) {
        self.log(Level::Trace, message);
    }

    /// Writes a [`Level::Debug`] line: the right level for something that happens per event.
    pub fn debug(&mut self, message: impl std::fmt::Display) {
        self.log(Level::Debug, message);
    }

    /// Writes an [`Level::Info`] line.
    pub fn info(&mut self, message: impl std::fmt::Display) {
        self.log(Level::Info, message);
    }

    /// Writes a [`Level::Warn`] line.
    pub fn warn(&mut self, message: impl std::fmt::Display) {
        self.log(Level::Warn, message);
    }

    /// Writes an [`Level::Error`] line.
    pub fn error(&mut self, message: impl std::fmt::Display) {
        self.log(Level::Error, message);
    }

    /// Reads JSON state stored under `key` by [`Ctx::set_state`]. `Ok(None)` when there is
    /// none; an error naming the key when what is stored does not parse as `T` (for example
    /// after an incompatible change to the plugin's state type).
    pub fn get_state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        match self.host.state_get(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("state `{key}`: {e}")),
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn set_state<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|e| format!("state `{key}`: {e}"))?;
        self.set_state_bytes(key, &bytes)
    }

    /// Removes the state stored under `key`.
    pub fn delete_state(&mut self, key: &str) {
        self.host.state_delete(key);
    }

    /// Reads the raw bytes stored under `key`.
    pub fn get_state_bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.host.state_get(key)
    }

    /// Stores raw bytes under `key`.
    pub fn set_state_bytes(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        self.host
            .state_set(key, value)
            .map_err(|reason| format!("state `{key}`: the host refused the write: {reason}"))
    }

    /// Sets the timer `name` of the current event's device to be due at `at_ms` (Unix ms, on
    /// [`Ctx::now_ms`]'s clock), replacing its time if it is already set. When it is due, the
    /// host calls this step's `handle` with an event of [`Kind::Timer`](crate::Kind::Timer)
    /// whose `action` is `name` (see [`EventView::timer`](crate::EventView::timer)). Like
    /// state, it takes effect only if this call returns `Ok`, and survives restarts and
    /// reloads. An error names the timer and the host's reason (a bad name, the step's quota).
    pub fn set_timer(&mut self, name: &str, at_ms: u64) -> Result<(), String> {
        self.host
            .set_timer(name, at_ms)
            .map_err(|reason| format!("timer `{name}`: the host refused it: {reason}"))
    }

    /// Sets the timer `name` to be due `delay_ms` from now.
    pub fn set_timer_in(&mut self, name: &str, delay_ms: u64) -> Result<(), String> {
        let at = self.now_ms().saturating_add(delay_ms);
        self.set_timer(name, at)
    }

    /// Cancels the current event's device's timer `name`, if it is set.
    pub fn cancel_timer(&mut self, name: &str) {
        self.host.cancel_timer(name);
    }

    /// When the current event's device's timer `name` is due, if it is set.
    pub fn timer(&self, name: &str) -> Option<u64> {
        self.host.timer(name)
    }

    /// The host's twin of device `id`: its last value of every property, online or not, when
    /// last seen. Any device, not only the current event's.
    pub fn twin(&self, id: &str) -> Option<Twin> {
        self.host.twin(id)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::TestHost;

    /// A host that writes nothing below warn, counting what reaches it.
    struct Quiet {
        lines: Vec<String>,
    }

    impl super::Host for Quiet {
        fn log(&mut self, _: super::Level, message: &str) {
            self.lines.push(message.to_owned());
        }
        fn log_enabled(&self, level: super::Level) -> bool {
            matches!(level, super::Level::Warn | super::Level::Error)
        }
        fn now_ms(&self) -> u64 {
            0
        }
        fn state_get(&self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn state_set(&mut self, _: &str, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn state_delete(&mut self, _: &str) {}
    }

    /// Displays by panicking: proves a message was never formatted.
    struct NeverFormat;

    impl std::fmt::Display for NeverFormat {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("a disabled log line was formatted");
        }
    }

    #[test]
    fn disabled_levels_are_neither_formatted_nor_sent() {
        let mut host = Quiet { lines: Vec::new() };
        let mut ctx = super::Ctx::new(&mut host);
        ctx.debug(NeverFormat);
        ctx.trace(NeverFormat);
        ctx.warn(format_args!("kept {}", 1));
        assert!(!ctx.log_enabled(super::Level::Info));
        assert_eq!(host.lines, ["kept 1"]);
    }

    #[test]
    fn typed_state_round_trips_as_json() {
        let mut host = TestHost::new();
        let mut ctx = host.ctx();
        assert_eq!(ctx.get_state::<Vec<u32>>("k"), Ok(None));
        ctx.set_state("k", &vec![1u32, 2]).unwrap();
        assert_eq!(ctx.get_state::<Vec<u32>>("k"), Ok(Some(vec![1, 2])));
        ctx.delete_state("k");
        assert_eq!(ctx.get_state::<Vec<u32>>("k"), Ok(None));
    }

    #[test]
    fn state_of_the_wrong_shape_is_an_error_naming_the_key() {
        let mut host = TestHost::new();
        let mut ctx = host.ctx();
        ctx.set_state_bytes("last", b"{\"v\":1}").unwrap();
        let err = ctx.get_state::<u32>("last").unwrap_err();
        assert!(err.starts_with("state `last`: invalid type"), "{err}");
    }

    #[test]
    fn refused_writes_say_so() {
        let mut host = TestHost::new();
        host.refuse_state_writes("over the 64 KiB limit");
        let err = host.ctx().set_state("k", &1).unwrap_err();
        assert_eq!(
            err,
            "state `k`: the host refused the write: over the 64 KiB limit"
        );
    }
}
