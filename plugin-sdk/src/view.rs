//! [`EventView`]: the event `handle` is given, read from the host field by field.

use std::cell::{OnceCell, RefCell};

use crate::bindings::iotrules::plugin::types::EventView as HostView;
use crate::{Changes, Device, Event, Kind, Property, Value};

/// The event a plugin is handling.
///
/// The host keeps the event; each method copies one field into the plugin the first time it
/// is called and keeps it for the rest of the call. A plugin that reads the device and one
/// property pays for those, not for every field, property and attribute of the event (which
/// is what 0.1.0's whole-event `handle` cost on every call). [`EventView::whole`] reads it
/// all at once, for a plugin that wants the record.
///
/// In unit tests ([`crate::testing::TestHost::handle`]) a view reads an [`Event`] record.
pub struct EventView<'a> {
    from: Backing<'a>,
    id: OnceCell<String>,
    source: OnceCell<String>,
    vendor: OnceCell<String>,
    kind: OnceCell<Kind>,
    action: OnceCell<String>,
    device: OnceCell<Device>,
    time_ms: OnceCell<u64>,
    properties: OnceCell<Vec<Property>>,
    payload: OnceCell<String>,
    attributes: OnceCell<Vec<(String, String)>>,
    whole: OnceCell<Event>,
    /// Properties read one at a time, by code (`None`: the event has none of that code).
    looked_up: RefCell<Vec<(String, Option<Property>)>>,
}

/// Where a view reads from.
enum Backing<'a> {
    // Only the component (wasm32) is handed views by a host.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    Host(&'a HostView),
    Record(&'a Event),
}

impl<'a> EventView<'a> {
    /// The view of the event the host handed `handle`.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn of_host(view: &'a HostView) -> Self {
        Self::new(Backing::Host(view))
    }

    /// A view of an event record, as the host would hand it (for tests, and for running a
    /// plugin on an event it holds).
    pub fn of(event: &'a Event) -> Self {
        Self::new(Backing::Record(event))
    }

    fn new(from: Backing<'a>) -> Self {
        EventView {
            from,
            id: OnceCell::new(),
            source: OnceCell::new(),
            vendor: OnceCell::new(),
            kind: OnceCell::new(),
            action: OnceCell::new(),
            device: OnceCell::new(),
            time_ms: OnceCell::new(),
            properties: OnceCell::new(),
            payload: OnceCell::new(),
            attributes: OnceCell::new(),
            whole: OnceCell::new(),
            looked_up: RefCell::new(Vec::new()),
        }
    }

    /// The event as a record, if one is at hand without asking the host.
    fn record(&self) -> Option<&Event> {
        match self.from {
            Backing::Record(event) => Some(event),
            Backing::Host(_) => self.whole.get(),
        }
    }

    /// A field: from the record if there is one, else from the host, once.
    fn field<'s, T>(
        &'s self,
        cell: &'s OnceCell<T>,
        of_record: impl FnOnce(&'s Event) -> &'s T,
        of_host: impl FnOnce(&HostView) -> T,
    ) -> &'s T {
        if let Some(value) = cell.get() {
            return value;
        }
        match self.from {
            Backing::Record(event) => of_record(event),
            Backing::Host(view) => match self.whole.get() {
                Some(event) => of_record(event),
                None => cell.get_or_init(|| of_host(view)),
            },
        }
    }

    /// `event.id`: the de-duplication id.
    pub fn id(&self) -> &str {
        self.field(&self.id, |e| &e.id, HostView::id).as_str()
    }

    /// `event.source`: the connector that received it.
    pub fn source(&self) -> &str {
        self.field(&self.source, |e| &e.source, HostView::source)
            .as_str()
    }

    /// `event.vendor`: `tuya`, `alibaba`, `huawei` or `mqtt`.
    pub fn vendor(&self) -> &str {
        self.field(&self.vendor, |e| &e.vendor, HostView::vendor)
            .as_str()
    }

    /// `event.kind`.
    pub fn kind(&self) -> Kind {
        *self.field(&self.kind, |e| &e.kind, HostView::kind)
    }

    /// The timer's name when this is a timer coming due (kind [`Kind::Timer`]), else `None`.
    pub fn timer(&self) -> Option<&str> {
        (self.kind() == Kind::Timer).then(|| self.action())
    }

    /// `event.action`: the vendor's own name for what happened.
    pub fn action(&self) -> &str {
        self.field(&self.action, |e| &e.action, HostView::action)
            .as_str()
    }

    /// `event.device`.
    pub fn device(&self) -> &Device {
        self.field(&self.device, |e| &e.device, HostView::device)
    }

    /// `event.time_ms`.
    pub fn time_ms(&self) -> u64 {
        *self.field(&self.time_ms, |e| &e.time_ms, HostView::time_ms)
    }

    /// Every property.
    pub fn properties(&self) -> &[Property] {
        self.field(&self.properties, |e| &e.properties, HostView::properties)
            .as_slice()
    }

    /// `event.payload`: the vendor body, JSON text.
    pub fn payload(&self) -> &str {
        self.field(&self.payload, |e| &e.payload, HostView::payload)
            .as_str()
    }

    /// Every attribute, sorted by name.
    pub fn attributes(&self) -> &[(String, String)] {
        self.field(&self.attributes, |e| &e.attributes, HostView::attributes)
            .as_slice()
    }

    /// The whole event as a record (every field read at once).
    pub fn whole(&self) -> &Event {
        match self.from {
            Backing::Record(event) => event,
            Backing::Host(view) => self.whole.get_or_init(|| view.whole()),
        }
    }

    /// A copy of the whole event, to change and pass on with [`crate::Outcome::replace`]
    /// (when only a field or two change, [`crate::Outcome::update`] sends less).
    pub fn to_event(&self) -> Event {
        self.whole().clone()
    }

    /// The first property with this code. Asks the host for that one property unless every
    /// property was already read.
    pub fn property(&self, code: &str) -> Option<Property> {
        let known = self
            .record()
            .map(|event| event.properties.as_slice())
            .or_else(|| self.properties.get().map(Vec::as_slice));
        if let Some(properties) = known {
            return properties.iter().find(|p| p.code == code).cloned();
        }
        let Backing::Host(view) = self.from else {
            unreachable!("a record view always knows its properties");
        };
        let mut looked_up = self.looked_up.borrow_mut();
        if let Some((_, property)) = looked_up.iter().find(|(c, _)| c == code) {
            return property.clone();
        }
        let property = view.property(code);
        looked_up.push((code.to_owned(), property.clone()));
        property
    }

    /// The value of the first property with this code.
    pub fn value(&self, code: &str) -> Option<Value> {
        self.property(code).map(|p| p.value)
    }

    /// The property's value as a number (see [`Value::as_f64`]); `None` if the event has no
    /// such property or it is not a number.
    pub fn property_f64(&self, code: &str) -> Option<f64> {
        self.value(code).as_ref().and_then(Value::as_f64)
    }

    /// The property's value as a whole number (see [`Value::as_i64`]).
    pub fn property_i64(&self, code: &str) -> Option<i64> {
        self.value(code).as_ref().and_then(Value::as_i64)
    }

    /// The property's value as a boolean.
    pub fn property_bool(&self, code: &str) -> Option<bool> {
        self.value(code).as_ref().and_then(Value::as_bool)
    }

    /// The property's value as text.
    pub fn property_str(&self, code: &str) -> Option<String> {
        match self.value(code)? {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    /// An attribute's value (`topic`, `message-id`, …). Asks the host for that one attribute
    /// unless every attribute was already read.
    pub fn attribute(&self, name: &str) -> Option<String> {
        let known = self
            .record()
            .map(|event| event.attributes.as_slice())
            .or_else(|| self.attributes.get().map(Vec::as_slice));
        match (known, &self.from) {
            (Some(attributes), _) => attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone()),
            (None, Backing::Host(view)) => view.attribute(name),
            (None, Backing::Record(_)) => unreachable!("a record view always knows its attributes"),
        }
    }

    /// The vendor body parsed as JSON, to read a field the normalized view does not carry.
    pub fn payload_json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(self.payload()).map_err(|e| format!("event payload: {e}"))
    }

    /// A key naming this event's device uniquely within its vendor, for plugin state (see
    /// [`Event::device_key`]).
    pub fn device_key(&self) -> String {
        crate::model::device_key(self.vendor(), self.device())
    }
}

impl Changes {
    /// No changes yet: add them with the other methods.
    pub fn new() -> Self {
        Changes {
            kind: None,
            action: None,
            device: None,
            time_ms: None,
            properties: None,
            payload: None,
            attributes: None,
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Changes::new()
    }

    /// A new kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// A new action.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// A new device.
    pub fn device(mut self, device: impl Into<Device>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// A new time, Unix ms.
    pub fn time_ms(mut self, time_ms: u64) -> Self {
        self.time_ms = Some(time_ms);
        self
    }

    /// All the properties, replacing the event's.
    pub fn properties(mut self, properties: Vec<Property>) -> Self {
        self.properties = Some(properties);
        self
    }

    /// A new payload, JSON text.
    pub fn payload(mut self, payload: impl Into<String>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// All the attributes, replacing the event's.
    pub fn attributes(mut self, attributes: Vec<(String, String)>) -> Self {
        self.attributes = Some(attributes);
        self
    }

    /// Sets one property of `event` (the first with this code, or a new one at the end),
    /// keeping the others: the first change to the properties reads them from `event`.
    pub fn set_property(mut self, event: &EventView, code: &str, value: impl Into<Value>) -> Self {
        let properties = self
            .properties
            .get_or_insert_with(|| event.properties().to_vec());
        crate::model::set_property(properties, code, value.into());
        self
    }

    /// Sets one attribute of `event`, keeping the others sorted by name: the first change to
    /// the attributes reads them from `event`.
    pub fn set_attribute(
        mut self,
        event: &EventView,
        name: &str,
        value: impl Into<String>,
    ) -> Self {
        let attributes = self
            .attributes
            .get_or_insert_with(|| event.attributes().to_vec());
        crate::model::set_attribute(attributes, name, value.into());
        self
    }

    /// `event` with these changes made, as the host makes them.
    pub fn apply_to(&self, event: &Event) -> Event {
        let mut changed = event.clone();
        if let Some(kind) = self.kind {
            changed.kind = kind;
        }
        if let Some(action) = &self.action {
            changed.action = action.clone();
        }
        if let Some(device) = &self.device {
            changed.device = device.clone();
        }
        if let Some(time_ms) = self.time_ms {
            changed.time_ms = time_ms;
        }
        if let Some(properties) = &self.properties {
            changed.properties = properties.clone();
        }
        if let Some(payload) = &self.payload {
            changed.payload = payload.clone();
        }
        if let Some(attributes) = &self.attributes {
            // As the host does: sorted by name, a later pair winning over an earlier one.
            let mut sorted: Vec<(String, String)> = Vec::with_capacity(attributes.len());
            for (name, value) in attributes {
                crate::model::set_attribute(&mut sorted, name, value.clone());
            }
            changed.attributes = sorted;
        }
        changed
    }
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::event;

    #[test]
    fn a_view_of_a_record_reads_its_fields() {
        let record = event("lamp-1")
            .vendor("alibaba")
            .product("a1B2")
            .property("t", 21.5)
            .property("mode", "auto")
            .attribute("topic", "t/1")
            .build();
        let view = EventView::of(&record);
        assert_eq!(view.id(), record.id);
        assert_eq!(view.device().id, "lamp-1");
        assert_eq!(view.property_f64("t"), Some(21.5));
        assert_eq!(view.property_str("mode").as_deref(), Some("auto"));
        assert_eq!(view.property("missing"), None);
        assert_eq!(view.attribute("topic").as_deref(), Some("t/1"));
        assert_eq!(view.device_key(), "a1B2/lamp-1");
        assert_eq!(view.whole(), &record);
    }

    #[test]
    fn changes_set_fields_on_top_of_the_event() {
        let record = event("d")
            .property("a", 1)
            .property("b", 2)
            .attribute("topic", "t")
            .build();
        let view = EventView::of(&record);
        let changes = Changes::new()
            .set_property(&view, "a", 10)
            .set_property(&view, "c", "x")
            .set_attribute(&view, "message-id", "m")
            .action("renamed");
        let changed = changes.apply_to(&record);
        assert_eq!(changed.property_i64("a"), Some(10));
        assert_eq!(changed.property_i64("b"), Some(2));
        assert_eq!(changed.property_str("c"), Some("x"));
        assert_eq!(
            changed.attributes,
            vec![
                ("message-id".to_owned(), "m".to_owned()),
                ("topic".to_owned(), "t".to_owned())
            ]
        );
        assert_eq!(changed.action, "renamed");
        assert_eq!(changed.id, record.id);
        assert!(Changes::new().is_empty());
        assert!(!changes.is_empty());
    }
}
