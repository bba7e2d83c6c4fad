//! The TOML shape of a test file, as serde reads it. Unknown keys are errors naming the key;
//! values checked beyond their type (rule names, input numbers, files) keep their spans so
//! the loader can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::dialect::{DialectName, SignMode};
use crate::event::{Kind, Vendor};

/// A test file: `[[test]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDoc {
    #[serde(default)]
    pub(crate) test: Vec<Spanned<TestDoc>>,
}

/// One `[[test]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestDoc {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) rules: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) input: Vec<Spanned<InputDoc>>,
    #[serde(default)]
    pub(crate) expect: Vec<Spanned<ExpectDoc>>,
}

/// One `[[test.input]]`: an event written compactly, or a raw vendor message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputDoc {
    pub(crate) after_s: Option<Spanned<f64>>,
    pub(crate) raw: Option<Spanned<RawDoc>>,
    pub(crate) vendor: Option<Vendor>,
    pub(crate) kind: Option<Kind>,
    pub(crate) device: Option<Spanned<DeviceDoc>>,
    pub(crate) product: Option<String>,
    pub(crate) properties: Option<toml::Table>,
    pub(crate) services: Option<BTreeMap<String, toml::Table>>,
    pub(crate) action: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) payload: Option<toml::Value>,
    pub(crate) attributes: Option<BTreeMap<String, String>>,
    pub(crate) time_ms: Option<u64>,
    #[serde(default)]
    pub(crate) expect: Vec<Spanned<ExpectDoc>>,
}

impl InputDoc {
    /// The event fields that a `raw` input may not have, with their names.
    pub(crate) fn event_fields(&self) -> Vec<&'static str> {
        [
            ("vendor", self.vendor.is_some()),
            ("kind", self.kind.is_some()),
            ("device", self.device.is_some()),
            ("product", self.product.is_some()),
            ("properties", self.properties.is_some()),
            ("services", self.services.is_some()),
            ("action", self.action.is_some()),
            ("source", self.source.is_some()),
            ("id", self.id.is_some()),
            ("payload", self.payload.is_some()),
            ("attributes", self.attributes.is_some()),
            ("time_ms", self.time_ms.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// `device = "id"` or `device = { id = "…", product = "…", name = "…" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a device id, or a table with `id`, `product` and `name`"
)]
pub(crate) enum DeviceDoc {
    Id(String),
    Table(DeviceTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceTable {
    pub(crate) id: Option<String>,
    pub(crate) product: Option<String>,
    pub(crate) name: Option<String>,
}

/// `raw = { … }`: a captured message and what `iotrules decode` would need to decode it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDoc {
    pub(crate) vendor: DialectName,
    pub(crate) file: Spanned<String>,
    #[serde(default)]
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) access_key_env: Option<String>,
    #[serde(default)]
    pub(crate) access_id: String,
    #[serde(default)]
    pub(crate) sign: SignMode,
    #[serde(default)]
    pub(crate) body_base64: bool,
    /// The json dialect: where the device is in the topic (the `topic` property).
    pub(crate) device_topic: Option<String>,
    pub(crate) source: Option<String>,
}

/// One expectation, in `[[test.expect]]` or `[[test.input.expect]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectDoc {
    pub(crate) input: Option<Spanned<usize>>,
    pub(crate) rule: Option<Spanned<String>>,
    pub(crate) matched: Option<Vec<Spanned<String>>>,
    pub(crate) verdict: Option<VerdictDoc>,
    pub(crate) step: Option<Spanned<usize>>,
    pub(crate) commands: Option<Vec<CommandDoc>>,
    pub(crate) errors: Option<Vec<ErrorDoc>>,
    pub(crate) event: Option<EventDoc>,
    /// The expectation is about the firing of this timer during the input, not its event.
    pub(crate) timer: Option<Spanned<String>>,
    /// With `timer`: the device it was set for.
    pub(crate) device: Option<Spanned<String>>,
    /// Every timer that fired during the input, by name, in order.
    pub(crate) fired: Option<Vec<String>>,
}

/// What a rule made of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum VerdictDoc {
    Keep,
    Replace,
    Pass,
    Drop,
    DeadLetter,
    DropOnError,
    NoMatch,
    IfError,
}

impl VerdictDoc {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            VerdictDoc::Keep => "keep",
            VerdictDoc::Replace => "replace",
            VerdictDoc::Pass => "pass",
            VerdictDoc::Drop => "drop",
            VerdictDoc::DeadLetter => "dead-letter",
            VerdictDoc::DropOnError => "drop-on-error",
            VerdictDoc::NoMatch => "no-match",
            VerdictDoc::IfError => "if-error",
        }
    }
}

/// An expected command: the fields to compare.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandDoc {
    pub(crate) device: Option<DeviceDoc>,
    pub(crate) name: Option<String>,
    pub(crate) params: Option<toml::Value>,
    pub(crate) via: Option<String>,
    pub(crate) reply_to: Option<String>,
}

/// An expected step failure: the fields to compare.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorDoc {
    pub(crate) step: Option<usize>,
    pub(crate) plugin: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) message: Option<String>,
}

/// The expected output event, in the input's compact form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventDoc {
    pub(crate) id: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) vendor: Option<Vendor>,
    pub(crate) kind: Option<Kind>,
    pub(crate) action: Option<String>,
    pub(crate) device: Option<DeviceDoc>,
    pub(crate) time_ms: Option<u64>,
    pub(crate) properties: Option<toml::Table>,
    pub(crate) services: Option<BTreeMap<String, toml::Table>>,
    pub(crate) payload: Option<toml::Value>,
    pub(crate) attributes: Option<BTreeMap<String, String>>,
}
