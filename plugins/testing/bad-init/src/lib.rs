//! Broken on purpose: `init` refuses every configuration, so the host must reject the rule
//! (or keep the previous version running on reload) and show this message.

use iotrules_plugin_sdk::prelude::*;

/// The error `init` returns, for tests to match.
pub const REASON: &str = "config: `mode`: testing-bad-init refuses every configuration";

struct BadInit;

impl Plugin for BadInit {
    fn init(_: &Config) -> Result<Self, String> {
        Err(REASON.to_owned())
    }

    fn handle(&mut self, _: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        Ok(Outcome::keep())
    }
}

iotrules_plugin_sdk::export_plugin!(BadInit);
