//! For the pipeline tests and benches: keeps every event and sends its device one command,
//! `echo`, whose params are `{"seq": N}` with the event's integer property `seq` (or `null`),
//! so a test can follow each event to its command and check the order per device.
//!
//! Config: `{"command": "NAME"}` renames the command (default `echo`).

use iotrules_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_command")]
    command: String,
}

fn default_command() -> String {
    "echo".into()
}

struct Echo {
    command: String,
}

impl Plugin for Echo {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Echo {
            command: settings.command,
        })
    }

    fn handle(&mut self, event: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        let seq = event.property_i64("seq");
        let command = Command::new(event.device(), self.command.as_str()).param("seq", seq);
        Ok(Outcome::keep().with_command(command))
    }
}

iotrules_plugin_sdk::export_plugin!(Echo);
