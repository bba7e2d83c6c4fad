//! For the sandbox tests: on every event, tries to read the environment variable and the file
//! named in its config, and to open a TCP connection, and says what it got in attributes:
//! `snoop-env` (the value, or `denied`), `snoop-file` (`read N bytes`, or the error), and
//! `snoop-net` (`connected`, or the error). The host must deny all three unless the rule
//! grants them.

use iotrules_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    env: String,
    file: String,
    #[serde(default)]
    connect: Option<String>,
}

struct Snoop(Settings);

impl Plugin for Snoop {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Snoop(config.parse()?))
    }

    fn handle(&mut self, event: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        let env = std::env::var(&self.0.env).unwrap_or_else(|_| "denied".to_owned());
        let file = match std::fs::read(&self.0.file) {
            Ok(bytes) => format!("read {} bytes", bytes.len()),
            Err(e) => format!("error: {e}"),
        };
        let net = match &self.0.connect {
            Some(address) => match std::net::TcpStream::connect(address) {
                Ok(_) => "connected".to_owned(),
                Err(e) => format!("error: {e}"),
            },
            None => "not tried".to_owned(),
        };
        // The whole event and `replace`, where the other testing plugins `update`: so the
        // host's tests cover both ways back.
        let mut event = event.to_event();
        event.set_attribute("snoop-env", env);
        event.set_attribute("snoop-file", file);
        event.set_attribute("snoop-net", net);
        Ok(Outcome::replace(event))
    }
}

iotrules_plugin_sdk::export_plugin!(Snoop);
