//! Rule tests (`iotrules test`): events in, the verdicts and commands the rules should make
//! of them out, checked against the real plugins — in the spirit of `vector test`.
//!
//! Tests live beside the rules they test, in the rules directory: every `*.test.toml` file
//! directly in it, and every `*.toml` file in its `tests/` subdirectory. The rule loader skips
//! both ([`TEST_SUFFIX`](crate::rules::TEST_SUFFIX)). A file holds `[[test]]` tables:
//!
//! ```toml
//! [[test]]
//! name = "motion switches the hallway lamp on"       # unique across the test files
//! rules = ["hallway-motion-light"]   # optional: only these rules run (default: every rule)
//!
//! [[test.input]]                      # events, run in order through every rule that takes them
//! vendor = "tuya"
//! device = "vdevo-hallway-pir"        # or { id = "…", product = "…", name = "…" }
//! properties = { pir = "pir" }        # code = typed value
//!
//! [[test.input.expect]]               # what the rule made of this input
//! rule = "hallway-motion-light"
//! verdict = "keep"
//! commands = [{ device = "vdevo-hallway-lamp", name = "switch_led", params = true, via = "tuya-openapi" }]
//! ```
//!
//! An input is a normalized event written compactly: `vendor` (required), `kind` (default
//! `properties`), `device`, `product` (shorthand for `device.product`), `properties` (code =
//! value; booleans, integers, floats and strings keep their type, arrays and tables become
//! JSON values), `services` (`{ Energy = { power_w = 1210.5 } }`: Huawei properties by
//! service), `action` (default empty), `source` (default `test`), `id` (default `input-N`),
//! `payload` (any TOML value, as JSON; default `{}`), `attributes` (strings), `time_ms`
//! (default: the test clock). Properties come in code order (TOML tables are read sorted).
//! Or a captured vendor message, decoded as `iotrules decode` does:
//! `raw = { vendor = "alibaba", file = "../examples/messages/alibaba-property-post.json",
//! properties = { topic = "…" } }` (with `access_key_env`, default `IOTRULES_ACCESS_KEY`,
//! `access_id`, `sign`, `body_base64`, `device_topic` and `source` as the decode command's
//! options).
//!
//! Time: each test has a clock that starts at [`START_MS`] and moves only when an input says
//! `after_s = N` (seconds, before that input). Timers fire on it: when an input moves the
//! clock, every timer due by then fires (earliest first, through the step that set it) before
//! the input's event, and what the event's rules set for that moment or earlier fires right
//! after it. An input with nothing but `after_s` is a wait: it moves the clock and fires what
//! is due. Plugins read it through `now-ms`, as in the
//! service they read the host's clock; an event's `time_ms` is the clock's reading unless the
//! input gives its own. State: each test starts with empty plugin state and freshly started
//! plugins; state carries from one input to the next within the test. Plugins are never
//! quarantined, so a test that makes one fail changes nothing for the next.
//!
//! An expectation (`[[test.input.expect]]`, or `[[test.expect]]` with `input = N`, counted
//! from 1, default the last) names a `rule` (optional when the test's `rules` names exactly
//! one) and checks only the fields it gives:
//!
//! - `verdict`: `keep` (passed on as it came), `replace` (passed on as a step replaced it),
//!   `pass` (either), `drop` (a step dropped it; `step = N` checks which), `dead-letter`,
//!   `drop-on-error` (a step failed, per the rule's `on_error`), `no-match` (the rule did not
//!   take the event), `if-error` (its `if` could not be evaluated).
//! - `commands`: every command the rule sent, in order; each checks the fields it gives
//!   (`device`, `name`, `params` compared whole, `via`, `reply_to`). `[]` means none.
//! - `errors`: the failed steps, in order: `{ step, plugin, kind, message }`, fields as given.
//! - `event`: the event the rule passed on, in the input's compact form. Fields given are
//!   compared; `properties` and `services` must hold exactly the properties listed, `payload`
//!   and `attributes` at least the keys given.
//! - `matched`: the names of all the rules that took the input, in rule order (no `rule`
//!   needed).
//! - `fired`: the names of every timer fired during the input, in order (no `rule` needed).
//!
//! An expectation with `timer = "name"` is about that timer's firing during the input, not
//! the input's event: the fields above (but `matched`) check what its rule made of the timer's
//! event; `device` picks the device, `rule` the rule (neither needed). A timer that did not
//! fire is a failure naming those that did.
//!
//! Pieces: [`load_dir`] finds and checks the test files against the loaded [`RuleSet`];
//! [`Runner`] runs one test with its own state and clock; the checks and the diff of a
//! failure are in `check`.

mod check;
mod format;
mod load;
mod run;

pub use load::{TESTS_DIR, load_dir, parse};

pub use run::{Runner, TestReport};

/// Where every test's clock starts: 2025-11-23T08:00:00Z, the time of the bundled demo
/// messages.
pub const START_MS: u64 = 1_763_884_800_000;

#[cfg(test)]
mod tests;

#[cfg(doc)]
use crate::rules::RuleSet;
