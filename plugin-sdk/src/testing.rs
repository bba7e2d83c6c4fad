//! Run a plugin natively, in plain `cargo test`: a fake host and an event builder.
//!
//! [`TestHost`] keeps state and timers in memory, has a clock that only moves when the test
//! moves it, and records log lines. [`TestHost::handle`] calls a plugin the way the real host
//! does, including throwing away the state and timer writes of a call that returns an error;
//! [`TestHost::fire_due`] calls it with the timers the clock has reached, as the host does.
//!
//! ```
//! use iotrules_plugin_sdk::prelude::*;
//! use iotrules_plugin_sdk::testing::{TestHost, event};
//!
//! struct Echo;
//! impl Plugin for Echo {
//!     fn init(_: &Config) -> Result<Self, String> { Ok(Echo) }
//!     fn handle(&mut self, ev: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
//!         ctx.set_state("last", &ev.property_f64("t"))?;
//!         Ok(Outcome::keep())
//!     }
//! }
//!
//! let mut host = TestHost::new();
//! let mut plugin: Echo = host.init("{}").unwrap();
//! let out = host.handle(&mut plugin, &event("d1").property("t", 21.5).build()).unwrap();
//! assert!(out.is_keep());
//! assert_eq!(host.state::<Option<f64>>("last"), Some(Some(21.5)));
//! ```

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::{
    Config, Ctx, Device, Event, EventView, Host, Kind, Level, Outcome, Plugin, Property, Twin,
    Value,
};

/// The clock a new [`TestHost`] starts at: 2024-01-01T00:00:00Z.
pub const START_MS: u64 = 1_704_067_200_000;

/// An in-memory host for unit tests.
#[derive(Debug, Clone)]
pub struct TestHost {
    now_ms: u64,
    state: BTreeMap<String, Vec<u8>>,
    /// Pending timers by (device, name): when due, and the event that set it (for the
    /// timer event's device, source and vendor).
    timers: BTreeMap<(String, String), (u64, Event)>,
    /// The event of the call in progress: whose device timers are for.
    current: Option<Event>,
    twins: BTreeMap<String, Twin>,
    logs: Vec<(Level, String)>,
    refuse_writes: Option<String>,
}

/// A timer that came due in [`TestHost::fire_due`], with what the plugin made of it.
#[derive(Debug, Clone)]
pub struct Fired {
    /// The device it was set for.
    pub device: String,
    /// Its name.
    pub name: String,
    /// When it was due.
    pub at_ms: u64,
    /// The plugin's answer to the timer event.
    pub outcome: Result<Outcome, String>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// A host with empty state, no logs, and the clock at [`START_MS`].
    pub fn new() -> Self {
        TestHost {
            now_ms: START_MS,
            state: BTreeMap::new(),
            timers: BTreeMap::new(),
            current: None,
            twins: BTreeMap::new(),
            logs: Vec::new(),
            refuse_writes: None,
        }
    }

    /// A context for calling a plugin, or [`Ctx`] helpers, directly. Unlike
    /// [`TestHost::handle`], writes through it are kept whatever happens.
    pub fn ctx(&mut self) -> Ctx<'_> {
        Ctx::new(self)
    }

    /// Starts a plugin with this configuration (JSON text), as the host's `init` does.
    pub fn init<P: Plugin>(&mut self, config: &str) -> Result<P, String> {
        P::init(&Config::new(config))
    }

    /// Gives a plugin one event, as the host's `handle` does: if the plugin returns an error,
    /// its state writes during the call are discarded.
    pub fn handle<P: Plugin>(&mut self, plugin: &mut P, event: &Event) -> Result<Outcome, String> {
        let before = (self.state.clone(), self.timers.clone());
        self.current = Some(event.clone());
        let result = plugin.handle(&EventView::of(event), &mut Ctx::new(self));
        self.current = None;
        if result.is_err() {
            (self.state, self.timers) = before;
        }
        result
    }

    /// Calls the plugin with every timer due at the clock's time, earliest first (as the host
    /// does: each is removed as it fires, and may be set again by the call), until none is
    /// due. Move the clock first with [`TestHost::advance_ms`].
    pub fn fire_due<P: Plugin>(&mut self, plugin: &mut P) -> Vec<Fired> {
        let mut fired = Vec::new();
        while let Some((key, at)) = self
            .timers
            .iter()
            .filter(|(_, (at, _))| *at <= self.now_ms)
            .min_by_key(|(_, (at, _))| *at)
            .map(|(key, (at, _))| (key.clone(), *at))
        {
            let Some((_, setter)) = self.timers.remove(&key) else {
                break;
            };
            let event = timer_event(&setter, &key.1, at);
            let outcome = self.handle(plugin, &event);
            if outcome.is_err() {
                // The host drops a timer whose call failed: it fires once.
                self.timers.remove(&key);
            }
            fired.push(Fired {
                device: key.0,
                name: key.1,
                at_ms: at,
                outcome,
            });
        }
        fired
    }

    /// The pending timers: (device, name) → when due.
    pub fn timers(&self) -> BTreeMap<(String, String), u64> {
        self.timers
            .iter()
            .map(|(key, (at, _))| (key.clone(), *at))
            .collect()
    }

    /// Sets the twin [`Ctx::twin`] returns for its device.
    pub fn set_twin(&mut self, twin: Twin) {
        self.twins.insert(twin.device.id.clone(), twin);
    }

    /// The clock, Unix ms.
    pub fn now(&self) -> u64 {
        self.now_ms
    }

    /// Sets the clock.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// Moves the clock forward.
    pub fn advance_ms(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// The state stored under `key`, parsed from JSON; `None` if absent or of another shape.
    pub fn state<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.state
            .get(key)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
    }

    /// Every state entry, by key.
    pub fn state_entries(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.state
    }

    /// Makes every later state write fail with this reason, as a host over its limits would.
    pub fn refuse_state_writes(&mut self, reason: &str) {
        self.refuse_writes = Some(reason.to_owned());
    }

    /// The log lines written so far, oldest first.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.logs
    }

    /// Whether some log line at `level` contains `text`.
    pub fn logged(&self, level: Level, text: &str) -> bool {
        self.logs
            .iter()
            .any(|(l, message)| *l == level && message.contains(text))
    }
}

impl Host for TestHost {
    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn state_get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.get(key).cloned()
    }

    fn state_set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        if let Some(reason) = &self.refuse_writes {
            return Err(reason.clone());
        }
        self.state.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn state_delete(&mut self, key: &str) {
        self.state.remove(key);
    }

    fn set_timer(&mut self, name: &str, at_ms: u64) -> Result<(), String> {
        if let Some(reason) = &self.refuse_writes {
            return Err(reason.clone());
        }
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err("a timer's name is 1 to 256 bytes with no control character".to_owned());
        }
        let Some(event) = &self.current else {
            return Err("there is no event, so no device, to set a timer for".to_owned());
        };
        self.timers.insert(
            (event.device.id.clone(), name.to_owned()),
            (at_ms, event.clone()),
        );
        Ok(())
    }

    fn cancel_timer(&mut self, name: &str) {
        if let Some(event) = &self.current {
            self.timers
                .remove(&(event.device.id.clone(), name.to_owned()));
        }
    }

    fn timer(&self, name: &str) -> Option<u64> {
        let event = self.current.as_ref()?;
        self.timers
            .get(&(event.device.id.clone(), name.to_owned()))
            .map(|(at, _)| *at)
    }

    fn twin(&self, id: &str) -> Option<Twin> {
        self.twins.get(id).cloned()
    }
}

/// The event the host hands a step when its timer `name`, set while handling `setter`, is
/// due at `at_ms`: kind [`Kind::Timer`], action `name`, the setter's device, source and
/// vendor, no properties, payload `{}`.
pub fn timer_event(setter: &Event, name: &str, at_ms: u64) -> Event {
    Event {
        id: format!("timer:{}:{name}:{at_ms}", setter.device.id),
        source: setter.source.clone(),
        vendor: setter.vendor.clone(),
        kind: Kind::Timer,
        action: name.to_owned(),
        device: setter.device.clone(),
        time_ms: at_ms,
        properties: Vec::new(),
        payload: "{}".to_owned(),
        attributes: vec![("timer".to_owned(), name.to_owned())],
    }
}

/// Starts building a test event about this device: a Tuya `properties` event from source
/// `test`, at [`START_MS`], with payload `{}` and no properties yet.
pub fn event(device_id: &str) -> EventBuilder {
    EventBuilder {
        event: Event {
            id: format!("test-{device_id}"),
            source: "test".to_owned(),
            vendor: "tuya".to_owned(),
            kind: Kind::Properties,
            action: "status".to_owned(),
            device: Device::new(device_id),
            time_ms: START_MS,
            properties: Vec::new(),
            payload: "{}".to_owned(),
            attributes: Vec::new(),
        },
    }
}

/// Builds an [`Event`] for a test; start with [`event`].
#[derive(Debug, Clone)]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    /// Sets the event id.
    pub fn id(mut self, id: &str) -> Self {
        self.event.id = id.to_owned();
        self
    }

    /// Sets the connector name.
    pub fn source(mut self, source: &str) -> Self {
        self.event.source = source.to_owned();
        self
    }

    /// Sets the vendor (`tuya`, `alibaba`, `huawei`, `mqtt`).
    pub fn vendor(mut self, vendor: &str) -> Self {
        self.event.vendor = vendor.to_owned();
        self
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.event.kind = kind;
        self
    }

    /// Sets the vendor's action name.
    pub fn action(mut self, action: &str) -> Self {
        self.event.action = action.to_owned();
        self
    }

    /// Sets the device's product.
    pub fn product(mut self, product: &str) -> Self {
        self.event.device.product = Some(product.to_owned());
        self
    }

    /// Sets the event time.
    pub fn time_ms(mut self, time_ms: u64) -> Self {
        self.event.time_ms = time_ms;
        self
    }

    /// Adds a property.
    pub fn property(mut self, code: &str, value: impl Into<Value>) -> Self {
        self.event.properties.push(Property::new(code, value));
        self
    }

    /// Adds a property of a Huawei service.
    pub fn service_property(mut self, service: &str, code: &str, value: impl Into<Value>) -> Self {
        let mut property = Property::new(code, value);
        property.service = Some(service.to_owned());
        self.event.properties.push(property);
        self
    }

    /// Sets the payload (JSON text).
    pub fn payload(mut self, json: &str) -> Self {
        self.event.payload = json.to_owned();
        self
    }

    /// Sets an attribute.
    pub fn attribute(mut self, name: &str, value: &str) -> Self {
        self.event.set_attribute(name, value);
        self
    }

    /// The event.
    pub fn build(self) -> Event {
        self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes state, then fails when the event says so.
    struct Flaky;

    impl Plugin for Flaky {
        fn init(_: &Config) -> Result<Self, String> {
            Ok(Flaky)
        }
        fn handle(&mut self, event: &EventView, ctx: &mut Ctx<'_>) -> Result<Outcome, String> {
            ctx.set_state("seen", &event.id())?;
            ctx.debug("handled");
            if event.property_bool("fail") == Some(true) {
                return Err("asked to fail".to_owned());
            }
            Ok(Outcome::keep())
        }
    }

    #[test]
    fn failed_calls_leave_no_state_behind() {
        let mut host = TestHost::new();
        let mut plugin: Flaky = host.init("{}").unwrap();
        host.handle(&mut plugin, &event("a").id("1").build())
            .unwrap();
        let err = host
            .handle(
                &mut plugin,
                &event("a").id("2").property("fail", true).build(),
            )
            .unwrap_err();
        assert_eq!(err, "asked to fail");
        assert_eq!(host.state::<String>("seen").as_deref(), Some("1"));
        assert!(host.logged(Level::Debug, "handled"));
        assert_eq!(host.logs().len(), 2);
    }

    #[test]
    fn the_clock_moves_only_when_told() {
        let mut host = TestHost::new();
        assert_eq!(host.ctx().now_ms(), START_MS);
        host.advance_ms(1500);
        assert_eq!(host.ctx().now_ms(), START_MS + 1500);
        host.set_now_ms(7);
        assert_eq!(host.now(), 7);
    }
}
