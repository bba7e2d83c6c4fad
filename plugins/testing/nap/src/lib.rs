//! For the host's deadline tests: every call sleeps `{"ms": N}` milliseconds (wasi:clocks and
//! wasi:io/poll, so its thread is off the CPU, as when the machine gives it to another
//! thread), then runs a short loop, whose heads check the engine's epoch as any guest code
//! does, and keeps the event.

use std::time::Duration;

use iotrules_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    ms: u64,
}

struct Nap {
    time: Duration,
}

impl Plugin for Nap {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Nap {
            time: Duration::from_millis(settings.ms),
        })
    }

    fn handle(&mut self, _: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        std::thread::sleep(self.time);
        let mut turns = 0u64;
        for _ in 0..10_000 {
            // black_box: the loop must run, not be folded away.
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
        Ok(Outcome::keep())
    }
}

iotrules_plugin_sdk::export_plugin!(Nap);
