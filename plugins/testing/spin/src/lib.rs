//! Broken on purpose: `handle` never returns. The host's per-call deadline (epoch
//! interruption) must stop it, fail the event's step, and keep the service running.

use iotrules_plugin_sdk::prelude::*;

struct Spin;

impl Plugin for Spin {
    fn init(_: &Config) -> Result<Self, String> {
        Ok(Spin)
    }

    fn handle(&mut self, _: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        let mut turns = 0u64;
        loop {
            // black_box: the loop must burn fuel/time, not be proven endless and folded away.
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
}

iotrules_plugin_sdk::export_plugin!(Spin);
