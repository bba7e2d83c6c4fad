//! For the compatibility tests: a plugin built for the 0.2.0 world (`host/wit/plugin-0.2.0`),
//! as plugins were before the SDK moved to 0.3.0 (timers and the twin), with `wit-bindgen`
//! directly. `handle` reads the event through the `event-view` resource and answers with the
//! `update` verdict: the event's attributes with `legacy-world` = `0.2.0` added. Like `legacy`
//! (and `echo`), it sends the event's device one command, `echo`, with `{"seq": N}` from the
//! integer property `seq` (`null` without one), read with the view's one-property lookup: a
//! test numbers its events `seq` = 1, 2, … and sees the same commands from all three.

wit_bindgen::generate!({ path: "../../../host/wit/plugin-0.2.0", world: "plugin" });

use iotrules::plugin::types::{Changes, Command, Value, Verdict};

/// The attribute every event passed on carries, naming the world the plugin was built for.
const WORLD_ATTRIBUTE: &str = "legacy-world";

struct LegacyV2;

impl Guest for LegacyV2 {
    fn init(_: String) -> Result<(), String> {
        Ok(())
    }

    fn handle(event: &EventView) -> Result<Outcome, String> {
        let seq = match event.property("seq").map(|p| p.value) {
            Some(Value::Integer(i)) => i.to_string(),
            _ => "null".to_owned(),
        };
        let command = Command {
            via: None,
            device: event.device(),
            name: "echo".to_owned(),
            params: format!("{{\"seq\":{seq}}}"),
            reply_to: None,
        };
        // The host sorts the attributes and lets a later pair win, so appending is enough.
        let mut attributes = event.attributes();
        attributes.push((WORLD_ATTRIBUTE.to_owned(), "0.2.0".to_owned()));
        let changes = Changes {
            kind: None,
            action: None,
            device: None,
            time_ms: None,
            properties: None,
            payload: None,
            attributes: Some(attributes),
        };
        Ok(Outcome {
            verdict: Verdict::Update(changes),
            commands: vec![command],
        })
    }
}

export!(LegacyV2);
