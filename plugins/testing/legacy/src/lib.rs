//! For the compatibility tests: a plugin built for the 0.1.0 world (`host/wit/plugin-0.1.0`),
//! as plugins were before the SDK moved to 0.2.0, with `wit-bindgen` directly. `handle` gets
//! the whole event; it passes on a copy with attribute `legacy-world` = `0.1.0` and sends the
//! event's device one command, `echo`, with `{"seq": N}` from the integer property `seq`.

wit_bindgen::generate!({ path: "../../../host/wit/plugin-0.1.0", world: "plugin" });

use iotrules::plugin::types::{Command, Value, Verdict};

struct Legacy;

impl Guest for Legacy {
    fn init(_: String) -> Result<(), String> {
        Ok(())
    }

    fn handle(mut event: Event) -> Result<Outcome, String> {
        let seq = event.properties.iter().find(|p| p.code == "seq");
        let seq = match seq.map(|p| &p.value) {
            Some(Value::Integer(i)) => i.to_string(),
            _ => "null".to_owned(),
        };
        let command = Command {
            via: None,
            device: event.device.clone(),
            name: "echo".to_owned(),
            params: format!("{{\"seq\":{seq}}}"),
            reply_to: None,
        };
        event
            .attributes
            .push(("legacy-world".to_owned(), "0.1.0".to_owned()));
        Ok(Outcome {
            verdict: Verdict::Replace(event),
            commands: vec![command],
        })
    }
}

export!(Legacy);
