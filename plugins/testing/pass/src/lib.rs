//! For the host's benches: keeps every event and does nothing else, so its cost is the floor of
//! a `handle` call (the event lowered into the guest, lifted there, the verdict back).

use iotrules_plugin_sdk::prelude::*;

struct Pass;

impl Plugin for Pass {
    fn init(_: &Config) -> Result<Self, String> {
        Ok(Pass)
    }

    fn handle(&mut self, _: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        Ok(Outcome::keep())
    }
}

iotrules_plugin_sdk::export_plugin!(Pass);
