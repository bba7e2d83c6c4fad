//! The optional `command` a step sends with what it emits.

use iotrules_plugin_sdk::{Command, Device};
use serde::Deserialize;

/// The `command` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandSettings {
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

impl CommandSettings {
    /// Refuses a table that cannot make a sensible command.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("config: `command.name`: name the command to send".to_owned());
        }
        if self.product.is_some() && self.device.is_none() {
            return Err(
                "config: `command.product`: goes with `command.device`; without it the command goes to the event's device, with its own product"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// The command about `about` (its target unless the table names one), with `fields` set
    /// over the table's `params`.
    pub(crate) fn command(
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
