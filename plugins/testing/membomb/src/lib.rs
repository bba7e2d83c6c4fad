//! Broken on purpose: `handle` allocates 1 MiB chunks, touching every page, until memory
//! runs out. The host's memory limit (`StoreLimits`) must stop the growth and fail the step;
//! the allocation failure aborts the call, which traps.

use iotrules_plugin_sdk::prelude::*;

const CHUNK: usize = 1 << 20;

struct MemBomb;

impl Plugin for MemBomb {
    fn init(_: &Config) -> Result<Self, String> {
        Ok(MemBomb)
    }

    fn handle(&mut self, _: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![0xA5; CHUNK]));
        }
    }
}

iotrules_plugin_sdk::export_plugin!(MemBomb);
