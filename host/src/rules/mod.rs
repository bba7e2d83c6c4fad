//! Rule files: which events a rule takes and the plugin chain it runs them through.
//!
//! A rule file is TOML in the rules directory, with one or more `[[rule]]` tables:
//!
//! ```toml
//! [[rule]]
//! name = "hallway-light"                       # unique across all files
//! description = "Lights on while someone is in the hallway"
//! enabled = true                               # default
//! when = { source = "tuya-*", vendor = "tuya", kind = "properties", device = ["vdevo-*"] }
//! if = 'props.pir == "pir"'                    # CEL, optional
//! on_error = "dead-letter"                     # or "skip-step", "drop"
//! commands.via = "tuya-api"                    # default command path
//! commands.allow = ["lamp-mqtt"]               # other paths its plugins may name ("*": any)
//!
//! [[rule.step]]
//! plugin = "motion-light"                      # plugins/motion-light.wasm
//! config = { sensors = ["vdevo-pir"], lights = ["vdevo-lamp"] }   # JSON for `init`
//! deadline_ms = 50                             # default
//! memory_mb = 32                               # default
//! state_keys = 10000                           # default: keys its plugin state may hold
//! state_mb = 16                                # default: MiB of keys and values
//! grants = { env = ["TZ"], read_dirs = ["/srv/iotrules/tables"] }
//! commands.via = "tuya-api"                    # this step's default, over the rule's
//! ```
//!
//! - `when` fields (`source`, `vendor`, `kind`, `device`, `product`, `action`) each take a
//!   string or a list; `source`, `device`, `product` and `action` are globs (`*`, `?`,
//!   `[…]`, `{a,b}`). Checked first, on every event; cheap.
//! - `if` is a CEL expression over `event`, `props` and `payload` (see [`condition`]),
//!   compiled at load.
//! - A rule needs at least one step. Unknown keys are errors. Steps are numbered from 1 in
//!   errors and results; a step's plugin state lives under the namespace `{rule}/{step}`,
//!   so it survives reloads as long as the rule keeps its name and the step its place.
//! - `enabled = false` keeps a rule checked (format, patterns, expression) but off; its
//!   plugins are neither checked nor started.
//! - A step's plugin may send commands only through its rule's and its own `commands.via`
//!   and the paths listed in their `commands.allow` (`"*"`: any); a command naming another
//!   path is refused as a dead letter. See `AllowedPaths` in `rule.rs`.
//! - `grants` may not reach the service's secrets: an environment variable the config
//!   references, `/`, `/proc`, `/sys`, `/dev`, `/etc`, or a directory holding the config
//!   file, the store, a CA, replay or offset file, or holding or inside the plugin cache. Such
//!   a grant refuses the file at load ([`crate::plugin::GrantPolicy`]).
//! - The loader reads `*.toml` directly in the directory, skipping `*.test.toml` files and
//!   subdirectories, which belong to `iotrules test`.
//!
//! Pieces: [`RuleSet`] loads and checks a directory; [`RuleRuntime`] is a rule with its plugin
//! instances, one per worker; [`Rules`] serves the current set and swaps in a reloaded one
//! only when every file is good; [`RulesWatcher`] reloads on change.

pub mod condition;
mod error;
mod format;
mod reload;
mod rule;
mod run;
mod set;
mod when;

pub use condition::EventScope;
pub use error::{Position, RuleError};
pub use format::OnError;
pub(crate) use format::to_json;
pub(crate) use reload::RulesWatcher;
pub use reload::{DEFAULT_DEBOUNCE, Rules};
pub use rule::Rule;
pub use run::{RefusedCommand, RuleResult, StepError};
pub use run::{RuleOutcome, RuleRuntime};
pub use set::{RuleSet, TEST_SUFFIX};

#[cfg(test)]
mod tests;
