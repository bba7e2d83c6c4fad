//! Broken on purpose: `handle` panics. The panic traps the call; the SDK first logs the
//! message through the host (`plugin panicked at …: testing-panic: …` at error level).

use iotrules_plugin_sdk::prelude::*;

struct Panic;

impl Plugin for Panic {
    fn init(_: &Config) -> Result<Self, String> {
        Ok(Panic)
    }

    fn handle(&mut self, event: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        panic!("testing-panic: refusing event {}", event.id());
    }
}

iotrules_plugin_sdk::export_plugin!(Panic);
