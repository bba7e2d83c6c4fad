//! For the twin tests: reads the host's twin of another device through the `device-twin`
//! import and stamps what it saw on the event, so a test can check the import end to end.
//!
//! Config: `{"device": "ID", "code": "CODE"}`. Every event gets the attribute `twin-CODE`:
//! the JSON of the last value of property `CODE` in the twin of device `ID`, `absent` when
//! the twin has no such property, or `no-twin` when the host has no twin of `ID`; and
//! `twin-seen` with that twin's `last-seen-ms` (when there is one).

use iotrules_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    device: String,
    code: String,
}

struct TwinPeek {
    settings: Settings,
    attribute: String,
}

impl Plugin for TwinPeek {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(TwinPeek {
            attribute: format!("twin-{}", settings.code),
            settings,
        })
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        let twin = ctx.twin(&self.settings.device);
        let seen = match &twin {
            None => "no-twin".to_owned(),
            Some(twin) => twin
                .properties
                .iter()
                .find(|property| property.code == self.settings.code)
                .map_or_else(|| "absent".to_owned(), |p| p.value.to_json().to_string()),
        };
        let mut changes = Changes::new().set_attribute(event, &self.attribute, seen);
        if let Some(twin) = &twin {
            changes = changes.set_attribute(event, "twin-seen", twin.last_seen_ms.to_string());
        }
        Ok(Outcome::update(changes))
    }
}

iotrules_plugin_sdk::export_plugin!(TwinPeek);
