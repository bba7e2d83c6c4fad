//! `command-ack`: answers every command a device received (a Huawei `cloudReq` or IoTDA
//! command, an Alibaba property-set request, service call or RRPC) with a reply that echoes
//! the request, so the cloud sees the command acknowledged. Put it in front of the steps that
//! carry the command out, or use it alone for devices that only need to say "done".
//!
//! ```toml
//! [[rule]]
//! name = "ack-commands"
//! when = { source = "lamp-link", kind = "command" }
//! commands.via = "lamp-link"          # the device MQTT link the request came on
//!
//! [[rule.step]]
//! plugin = "command-ack"
//! config = { params = { result_code = 0 } }
//! ```
//!
//! The reply is a command to the event's device named like the event's action (the
//! Alibaba method or service, the Huawei command or `properties.set`), with `reply_to` set to
//! the event's `request-id` attribute (Alibaba `id`, IoTDA `request_id`, RRPC message id) or
//! else its `mid` (Huawei legacy). The link turns it into the vendor's reply on the right
//! topic (see the README's "Device MQTT links").
//!
//! - `params` (default `{}`): the reply's parameters. Alibaba reads `code` (default 200),
//!   `data` and `message`; Huawei reads `result_code` (default 0), `paras`, `response_name`.
//! - `via`: the command path (default: the rule's).
//! - `actions`: answer only commands with one of these actions (default: every command).
//!
//! Events always pass on unchanged; an event that is not a command, or that carries no
//! request to answer, gets no reply.

use iotrules_plugin_sdk::prelude::*;

/// The attribute carrying a request id (Alibaba `id`, IoTDA `request_id`, RRPC message id).
const ATTR_REQUEST_ID: &str = "request-id";
/// The attribute carrying a Huawei legacy `mid`.
const ATTR_MID: &str = "mid";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "empty_object")]
    params: serde_json::Value,
    #[serde(default)]
    via: Option<String>,
    #[serde(default)]
    actions: Option<Vec<String>>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

struct CommandAck {
    settings: Settings,
}

impl Plugin for CommandAck {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !settings.params.is_object() {
            return Err("`params` must be an object (the reply's parameters)".into());
        }
        Ok(CommandAck { settings })
    }

    fn handle(&mut self, event: &EventView, _: &mut Ctx) -> Result<Outcome, String> {
        if event.kind() != Kind::Command {
            return Ok(Outcome::keep());
        }
        if let Some(actions) = &self.settings.actions
            && !actions.iter().any(|action| action == event.action())
        {
            return Ok(Outcome::keep());
        }
        let Some(request) = event
            .attribute(ATTR_REQUEST_ID)
            .or_else(|| event.attribute(ATTR_MID))
        else {
            return Ok(Outcome::keep());
        };
        let mut reply = Command::new(event.device(), event.action())
            .params(&self.settings.params)
            .reply_to(request);
        if let Some(via) = &self.settings.via {
            reply = reply.via(via.as_str());
        }
        Ok(Outcome::keep().with_command(reply))
    }
}

iotrules_plugin_sdk::export_plugin!(CommandAck);

#[cfg(test)]
mod tests {
    use super::*;
    use iotrules_plugin_sdk::testing::{TestHost, event};

    #[test]
    fn a_legacy_command_is_answered_with_its_mid() {
        let mut host = TestHost::new();
        let mut plugin: CommandAck = host.init(r#"{"params": {"result_code": 0}}"#).unwrap();
        let command = event("lamp")
            .kind(Kind::Command)
            .action("switch")
            .attribute(ATTR_MID, "42")
            .build();
        let out = host.handle(&mut plugin, &command).unwrap();
        assert!(out.is_keep());
        assert_eq!(out.commands.len(), 1);
        let reply = &out.commands[0];
        assert_eq!(reply.name, "switch");
        assert_eq!(reply.reply_to.as_deref(), Some("42"));
        assert_eq!(reply.device.id, "lamp");
        assert_eq!(reply.params_json(), serde_json::json!({"result_code": 0}));
    }

    #[test]
    fn the_request_id_wins_over_the_mid_and_via_is_set() {
        let mut host = TestHost::new();
        let mut plugin: CommandAck = host.init(r#"{"via": "link"}"#).unwrap();
        let command = event("lamp")
            .kind(Kind::Command)
            .action("thing.service.property.set")
            .attribute(ATTR_REQUEST_ID, "123")
            .attribute(ATTR_MID, "7")
            .build();
        let out = host.handle(&mut plugin, &command).unwrap();
        let reply = &out.commands[0];
        assert_eq!(reply.reply_to.as_deref(), Some("123"));
        assert_eq!(reply.via.as_deref(), Some("link"));
        assert_eq!(reply.params, "{}");
    }

    #[test]
    fn other_events_and_commands_without_a_request_get_no_reply() {
        let mut host = TestHost::new();
        let mut plugin: CommandAck = host.init(r#"{"actions": ["switch"]}"#).unwrap();
        let report = event("lamp").attribute(ATTR_MID, "1").build();
        let no_request = event("lamp").kind(Kind::Command).action("switch").build();
        let other_action = event("lamp")
            .kind(Kind::Command)
            .action("reboot")
            .attribute(ATTR_MID, "1")
            .build();
        for event in [report, no_request, other_action] {
            let out = host.handle(&mut plugin, &event).unwrap();
            assert!(out.is_keep() && out.commands.is_empty());
        }
    }

    #[test]
    fn params_that_are_not_an_object_are_refused() {
        let mut host = TestHost::new();
        let error = host.init::<CommandAck>(r#"{"params": 1}"#).err().unwrap();
        assert!(error.contains("must be an object"), "{error}");
    }
}
