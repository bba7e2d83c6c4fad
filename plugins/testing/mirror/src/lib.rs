//! For the host's tests of the 0.2.0 `event-view`: rebuilds each event from the view's
//! methods, one field at a time, and passes the rebuilt event on (`replace`), so a test can
//! compare it with the event the host holds. It fails the call if the fields read one by one
//! differ from `whole()`.
//!
//! Config: `{"codes": [...], "attributes": [...]}`: properties and attributes looked up by
//! name first (`property(code)`, `attribute(name)`: one host call each), reported in
//! attributes `looked-up-property-CODE` (the value as JSON, or `none`) and
//! `looked-up-attribute-NAME` (the value, or `none`).

use iotrules_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Mirror {
    #[serde(default)]
    codes: Vec<String>,
    #[serde(default)]
    attributes: Vec<String>,
}

impl Plugin for Mirror {
    fn init(config: &Config) -> Result<Self, String> {
        config.parse()
    }

    fn handle(&mut self, event: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        // Looked up before the lists are read, so each is its own host call.
        let mut looked_up = Vec::new();
        for code in &self.codes {
            let found = event.property(code).map(|p| p.value.to_string());
            looked_up.push((format!("looked-up-property-{code}"), found));
        }
        for name in &self.attributes {
            looked_up.push((format!("looked-up-attribute-{name}"), event.attribute(name)));
        }
        let mut rebuilt = Event {
            id: event.id().to_owned(),
            source: event.source().to_owned(),
            vendor: event.vendor().to_owned(),
            kind: event.kind(),
            action: event.action().to_owned(),
            device: event.device().clone(),
            time_ms: event.time_ms(),
            properties: event.properties().to_vec(),
            payload: event.payload().to_owned(),
            attributes: event.attributes().to_vec(),
        };
        if &rebuilt != event.whole() {
            return Err(format!(
                "mirror: the fields read one by one differ from whole(): {rebuilt:?} against {:?}",
                event.whole()
            ));
        }
        for (name, value) in looked_up {
            rebuilt.set_attribute(&name, value.unwrap_or_else(|| "none".to_owned()));
        }
        Ok(Outcome::replace(rebuilt))
    }
}

iotrules_plugin_sdk::export_plugin!(Mirror);
