//! For reload tests: keeps every event and stamps it, so a test can tell which build and
//! which instance served it.
//!
//! - attribute `plugin-version`: the config's `version` if given, else the
//!   `IOTRULES_TEST_VERSION` environment variable at build time, else `1`. Build two versions
//!   with `IOTRULES_TEST_VERSION=2 scripts/build-plugins`, or configure them.
//! - attribute `plugin-sequence`: how many events this instance has handled, from 1; it
//!   restarts at 1 in a new instance.
//! - attribute `plugin-total`: how many events this rule step has handled across instances,
//!   kept in host state (so it survives reloads, and does not count failed calls).

use iotrules_plugin_sdk::prelude::*;

const BUILT_VERSION: &str = match option_env!("IOTRULES_TEST_VERSION") {
    Some(version) => version,
    None => "1",
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    version: Option<String>,
}

struct Sequence {
    version: String,
    handled: u64,
}

impl Plugin for Sequence {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Sequence {
            version: settings.version.unwrap_or_else(|| BUILT_VERSION.to_owned()),
            handled: 0,
        })
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        self.handled += 1;
        let total = ctx.get_state::<u64>("total")?.unwrap_or(0) + 1;
        ctx.set_state("total", &total)?;
        let changes = Changes::new()
            .set_attribute(event, "plugin-version", self.version.as_str())
            .set_attribute(event, "plugin-sequence", self.handled.to_string())
            .set_attribute(event, "plugin-total", total.to_string());
        Ok(Outcome::update(changes))
    }
}

iotrules_plugin_sdk::export_plugin!(Sequence);
