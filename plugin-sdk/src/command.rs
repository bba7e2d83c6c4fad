//! A command table in a step's config: what to send along with each event the step emits.
//!
//! Plugins that raise alerts or emit aggregates (a watchdog, a window) let the operator attach
//! one command to them, a webhook say, with the same keys everywhere:
//!
//! ```toml
//! command = { name = "alert", via = "ops-webhook", device = "ops", params = { team = "kitchen" } }
//! ```
//!
//! - `name` (required): the command's name.
//! - `via`: the path it takes (default: the rule's).
//! - `device` and `product`: whom it is for (default: the device the emitted event is about,
//!   with its own product). `product` only goes with `device`.
//! - `params`: a table, default `{}`. The emitted event's fields are set over it, so the
//!   receiver always learns which device and what happened.
//!
//! Embed a [`CommandTemplate`] in the plugin's settings, [`check`](CommandTemplate::check) it in
//! `init`, and make each command with [`CommandTemplate::command`]:
//!
//! ```
//! use iotrules_plugin_sdk::{Config, Device, command::CommandTemplate};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings {
//!     #[serde(default)]
//!     command: Option<CommandTemplate>,
//! }
//!
//! let settings: Settings =
//!     Config::new(r#"{"command": {"name": "alert", "params": {"team": "kitchen"}}}"#).parse().unwrap();
//! let template = settings.command.unwrap();
//! template.check("command").unwrap();
//!
//! let mut fields = serde_json::Map::new();
//! fields.insert("alert".into(), "too-warm".into());
//! let command = template.command(&Device::new("freezer-1"), fields);
//! assert_eq!(command.device.id, "freezer-1");
//! assert_eq!(command.params_json(), serde_json::json!({"team": "kitchen", "alert": "too-warm"}));
//! ```

use serde::Deserialize;

use crate::{Command, Device};

/// The `command` table of a step's config; see the [module](self) for its keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandTemplate {
    name: String,
    #[serde(default)]
    via: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    product: Option<String>,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
}

impl CommandTemplate {
    /// Refuses a table that cannot make a sensible command: one with an empty `name`, or a
    /// `product` without a `device`. `key` is where the table sits in the config (`command`),
    /// so that the message names the field as [`Config::parse`](crate::Config::parse) does.
    pub fn check(&self, key: &str) -> Result<(), String> {
        if self.name.is_empty() {
            return Err(format!("config: `{key}.name`: name the command to send"));
        }
        if self.product.is_some() && self.device.is_none() {
            return Err(format!(
                "config: `{key}.product`: goes with `{key}.device`; without it the command goes to the event's device, with its own product"
            ));
        }
        Ok(())
    }

    /// The command that goes with an emitted event about `about`: to the table's `device` if
    /// it names one, else to `about`; its params are the table's `params` with `fields` set
    /// over them.
    pub fn command(
        &self,
        about: &Device,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Command {
        let device = match &self.device {
            Some(id) => Device {
                id: id.clone(),
                product: self.product.clone(),
                name: None,
            },
            None => about.clone(),
        };
        let mut params = self.params.clone();
        params.extend(fields);
        let command = Command::new(device, self.name.as_str()).params(params);
        match &self.via {
            Some(via) => command.via(via.as_str()),
            None => command,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Config;

    fn template(json: serde_json::Value) -> Result<CommandTemplate, String> {
        Config::from(json).parse()
    }

    fn fields(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match json {
            serde_json::Value::Object(map) => map,
            other => panic!("not a table: {other}"),
        }
    }

    #[test]
    fn a_bare_name_goes_to_the_events_device_by_the_rules_path() {
        let template = template(json!({"name": "ping"})).unwrap();
        template.check("command").unwrap();
        let about = Device::new("freezer-1").with_product("a1Freezer");
        let command = template.command(&about, fields(json!({"alert": "silent"})));
        assert_eq!(command.name, "ping");
        assert_eq!(command.device, about);
        assert_eq!(command.via, None);
        assert_eq!(command.params_json(), json!({"alert": "silent"}));
    }

    #[test]
    fn a_named_device_and_path_are_used_and_fields_win_over_params() {
        let template = template(json!({
            "name": "alert",
            "via": "ops-webhook",
            "device": "ops",
            "product": "pager",
            "params": {"team": "kitchen", "alert": "overridden"}
        }))
        .unwrap();
        template.check("command").unwrap();
        let command = template.command(
            &Device::new("freezer-1"),
            fields(json!({"alert": "silent"})),
        );
        assert_eq!(command.device, Device::new("ops").with_product("pager"));
        assert_eq!(command.via.as_deref(), Some("ops-webhook"));
        assert_eq!(
            command.params_json(),
            json!({"team": "kitchen", "alert": "silent"})
        );
    }

    #[test]
    fn an_empty_name_or_a_product_without_a_device_is_refused_naming_the_key() {
        let refused = |json| template(json).unwrap().check("alert_command").unwrap_err();
        assert_eq!(
            refused(json!({"name": ""})),
            "config: `alert_command.name`: name the command to send"
        );
        assert!(
            refused(json!({"name": "a", "product": "p"}))
                .starts_with("config: `alert_command.product`: goes with `alert_command.device`")
        );
    }

    #[test]
    fn unknown_keys_and_a_missing_name_are_refused_when_parsed() {
        assert_eq!(
            template(json!({"via": "x"})).unwrap_err(),
            "config: missing field `name`"
        );
        assert!(
            template(json!({"name": "a", "param": {}}))
                .unwrap_err()
                .starts_with("config: `param`: unknown field `param`")
        );
    }
}
