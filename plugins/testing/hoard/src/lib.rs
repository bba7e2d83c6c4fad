//! For the host's state-bound tests: each `handle` call writes `keys` new state keys of
//! `bytes` bytes each (`{event id}/{n}`), more than a well-behaved plugin would, so the host
//! must refuse the write that passes a bound.
//!
//! Before that it writes `last` twice and reads it back, failing unless the read sees the
//! second write: last-write-wins within a call. A refused write fails the call with the
//! host's reason, prefixed `hoard: `; otherwise the event is kept with attribute
//! `hoard-written` (keys written by this call).

use iotrules_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Hoard {
    keys: u32,
    bytes: u32,
}

impl Plugin for Hoard {
    fn init(config: &Config) -> Result<Self, String> {
        config.parse()
    }

    fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
        ctx.set_state_bytes("last", b"first")
            .map_err(|e| format!("hoard: {e}"))?;
        ctx.set_state_bytes("last", event.id().as_bytes())
            .map_err(|e| format!("hoard: {e}"))?;
        if ctx.get_state_bytes("last").as_deref() != Some(event.id().as_bytes()) {
            return Err("hoard: state-get did not see the call's last write".into());
        }
        let value = vec![b'h'; self.bytes as usize];
        for n in 0..self.keys {
            ctx.set_state_bytes(&format!("{}/{n}", event.id()), &value)
                .map_err(|e| format!("hoard: {e}"))?;
        }
        let changes = Changes::new().set_attribute(event, "hoard-written", self.keys.to_string());
        Ok(Outcome::update(changes))
    }
}

iotrules_plugin_sdk::export_plugin!(Hoard);
