//! The TOML shape of a rule file, as serde reads it. Unknown keys are errors naming the key;
//! values that need checking beyond their type (patterns, expressions, plugin names) keep
//! their spans so the loader can point at them.

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A rule file: `[[rule]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDoc {
    #[serde(default)]
    pub(crate) rule: Vec<Spanned<RuleDoc>>,
}

/// One `[[rule]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDoc {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    #[serde(default)]
    pub(crate) when: WhenDoc,
    #[serde(default, rename = "if")]
    pub(crate) condition: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) on_error: OnError,
    #[serde(default)]
    pub(crate) commands: CommandsDoc,
    #[serde(default)]
    pub(crate) step: Vec<Spanned<StepDoc>>,
}

fn yes() -> bool {
    true
}

/// `when = { … }`: each field a string or a list of strings.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WhenDoc {
    pub(crate) source: Option<Spanned<OneOrMany>>,
    pub(crate) vendor: Option<Spanned<OneOrMany>>,
    pub(crate) kind: Option<Spanned<OneOrMany>>,
    pub(crate) device: Option<Spanned<OneOrMany>>,
    pub(crate) product: Option<Spanned<OneOrMany>>,
    pub(crate) action: Option<Spanned<OneOrMany>>,
}

/// `"x"` or `["x", "y"]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

/// What a rule does with an event when one of its steps fails (an error, a trap, a deadline,
/// the memory cap, a quarantined plugin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop the rule; the event goes to the dead-letter store with the error, so it can be
    /// replayed once the plugin is fixed. Commands of earlier steps are not sent: a replay
    /// would send them again.
    #[default]
    DeadLetter,
    /// Record the error and go on with the next step, on the event as the failed step got it.
    SkipStep,
    /// Stop the rule and forget the event (the failure is still counted and reported).
    Drop,
}

impl OnError {
    /// The name used in rule files and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::DeadLetter => "dead-letter",
            OnError::SkipStep => "skip-step",
            OnError::Drop => "drop",
        }
    }
}

/// `commands = { via = "…", allow = ["…"] }`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandsDoc {
    pub(crate) via: Option<String>,
    /// Command paths the plugins may name besides `via`; `"*"` is any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) allow: Vec<Spanned<String>>,
}

/// One `[[rule.step]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepDoc {
    pub(crate) plugin: Spanned<String>,
    #[serde(default)]
    pub(crate) config: Option<toml::Table>,
    pub(crate) deadline_ms: Option<Spanned<u64>>,
    pub(crate) memory_mb: Option<Spanned<u64>>,
    pub(crate) state_keys: Option<Spanned<u64>>,
    pub(crate) state_mb: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) grants: GrantsDoc,
    #[serde(default)]
    pub(crate) commands: CommandsDoc,
}

/// `grants = { env = [...], read_dirs = [...] }`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantsDoc {
    #[serde(default)]
    pub(crate) env: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) read_dirs: Vec<Spanned<String>>,
}

/// A TOML value as JSON, for a plugin's `init`. Dates and times become their TOML text.
pub(crate) fn to_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => items.iter().map(to_json).collect(),
        toml::Value::Table(table) => table_to_json(table),
    }
}

/// A TOML table as a JSON object.
pub(crate) fn table_to_json(table: &toml::Table) -> serde_json::Value {
    serde_json::Value::Object(table.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
}
