//! The service configuration, `iotrules.toml`.
//!
//! ```toml
//! rules = "rules"                  # rule files; relative paths are relative to this file
//! plugins = "plugins/dist"         # plugin components, NAME.wasm
//! store = "iotrules.db"            # SQLite: dead letters and plugin state
//! cache = "plugin-cache"           # compiled plugins (default: beside the store)
//!
//! [admin]
//! listen = "127.0.0.1:9464"        # /metrics, /healthz, /status; omit the table to disable
//!
//! [pipeline]
//! workers = 2                      # threads running rules; events of a device stay on one
//! queue = 256                      # events waiting per worker
//! max_in_flight = 4096             # events received and not yet acknowledged, in all
//! dedup_window_s = 600             # an event id seen within this long is a duplicate
//! dedup_capacity = 100000          # ids remembered at most
//! shutdown_timeout_s = 30          # how long SIGINT/SIGTERM waits for events in flight
//! order = "device"                 # or "connector": what keeps arrival order (see Order)
//! scheduling = "throughput"        # or "latency", beside busy processes (see Scheduling)
//!
//! [dead_letters]                   # the oldest go first past any limit (see DeadLettersConfig)
//! max_rows = 1000000               # letters kept at most
//! max_mb = 1024                    # MiB of payloads, messages and properties kept at most
//! max_age_days = 7                 # days a letter is kept
//!
//! [twin]                           # the device twin the host keeps (see TwinConfig)
//! max_devices = 100000             # devices kept at most; 0 turns the twin off
//!
//! [[connector]]
//! name = "tuya-eu"
//! kind = "replay"                  # its other keys are its kind's (see crate::connector)
//! dialect = "tuya"
//! access_id = "…"
//! access_key = "${TUYA_ACCESS_KEY}"
//! file = "recorded/tuya.jsonl"
//!
//! [[command_path]]
//! name = "tuya-openapi"
//! kind = "log"                     # its other keys are its kind's (see crate::command)
//! ```
//!
//! This module reads the file and the parts every kind shares: the paths, `${ENV}`
//! expansion, secrets, the `name` and `kind` of each `[[connector]]` and `[[command_path]]`.
//! The rest of such a table belongs to its kind, which reads it as a [`Table`] into a struct
//! of its own: a key the kind does not take is an error naming the kind and the key. Which
//! kinds there are is not known here (see `crate::plan`).
//!
//! Any string value may reference the environment: `${NAME}` is the variable's value (an
//! error if it is unset), `${NAME:-default}` falls back to `default`, `$$` is a literal `$`.
//! Secrets (`access_key`, …) are held as [`Secret`], whose `Debug` prints `***`, so a
//! logged config never shows them.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};
/// A configuration file, read and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The rules directory.
    pub rules: PathBuf,
    /// The plugins directory.
    pub plugins: PathBuf,
    /// The SQLite store.
    pub store: PathBuf,
    /// Where compiled plugins are cached between runs.
    pub cache: PathBuf,
    /// The admin HTTP server, if enabled.
    pub admin: Option<AdminConfig>,
    /// Pipeline sizing.
    pub pipeline: PipelineConfig,
    /// How much the dead-letter store keeps.
    pub dead_letters: DeadLettersConfig,
    /// The device twin.
    pub twin: TwinConfig,
    /// Where events come from: each `[[connector]]` table, for its kind to read.
    pub connectors: Vec<Table>,
    /// Where commands go: each `[[command_path]]` table, for its kind to read.
    pub command_paths: Vec<Table>,
    /// The clock connectors stamp credentials with: the system's, unless a test pins it
    /// (brokers under test know the passwords a fixed time derives).
    pub clock: crate::time::Clock,
    /// The environment variables the file references (`${NAME}`), sorted: that is where
    /// its secrets come from, so no rule may grant them to a plugin.
    pub env_references: Vec<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on (port 0: any free port, logged at start).
    #[serde(deserialize_with = "expanded_address")]
    pub listen: SocketAddr,
}

fn expanded_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = Expanded::deserialize(deserializer)?;
    text.as_str().parse().map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{}\" is not an address and port: {e}",
            text.as_str()
        ))
    })
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Worker threads running rules.
    pub workers: usize,
    /// Events waiting per worker.
    pub queue: usize,
    /// Events received and not yet acknowledged, across all connectors.
    pub max_in_flight: usize,
    /// How long an event id is remembered for de-duplication, in seconds (0 disables it).
    pub dedup_window_s: u64,
    /// How many event ids are remembered at most.
    pub dedup_capacity: usize,
    /// How long a shutdown waits for events in flight, in seconds.
    pub shutdown_timeout_s: u64,
    /// Which events keep their order relative to each other.
    pub order: Order,
    /// How the threads that carry events (the rule workers and the async runtime's) are
    /// scheduled.
    pub scheduling: Scheduling,
    /// How many times a message whose processing cannot be finished (its dead letter cannot
    /// be stored) goes back to its transport for another delivery before the pipeline holds
    /// it instead, trying the store again until it works.
    pub redelivery_attempts: u32,
    /// The pause before the first such redelivery, in ms; each further one doubles it, up to
    /// a minute.
    pub redelivery_delay_ms: u64,
}

/// Which events are handled one after another, in arrival order (the rest run in parallel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// The events of one device (the default): devices spread over the workers.
    #[default]
    Device,
    /// Every event of one connector: for rules whose plugins correlate several devices
    /// (a motion sensor and the lights it switches), whose state must see the devices'
    /// events in arrival order. Connectors spread over the workers.
    Connector,
}

/// How the threads that carry events, the rule workers and the async runtime's, are
/// scheduled on Linux: a trade between the most events per second and the shortest wait for
/// each one when another process keeps the cores busy. Elsewhere both keep the platform's
/// default policy.
///
/// Measured on two cores (`bench mqtt`, `bench amqp` and `bench pulsar` from `tests/`, `bench
/// pipeline` with `BENCH_LATENCY` and `BENCH_RATE=10000` from `host/`; `BENCH_SCHEDULING`
/// picks the mode), two alternating runs of each, every transport's figure ÷ its peer or bare
/// client in the same run:
///
/// | | `throughput` | `latency` |
/// | --- | --- | --- |
/// | `bench mqtt` ÷ mosquitto, QoS 1 | 0.481, 0.500 | 0.410, 0.502 |
/// | same, QoS 0 | 0.515, 0.500 | 0.413, 0.407 |
/// | `bench pulsar` ÷ transport alone | 0.930, 1.020 | 0.873, 0.887 |
/// | `bench amqp`, 4 connections ÷ bare receivers | 1.15, 0.74 | 1.06, 0.78 |
/// | receipt → ack, 10 000 events/s, twin on, idle: p50, p99 | 0.32, 1.06 ms | 0.36, 1.13 ms |
/// | same, beside two busy loops (one per core) | 3.85, 7.90 ms | 0.52, 5.93 ms |
///
/// Beside the busy loops, the same work done with the fewest hand-offs (the bench's bare path,
/// whose threads keep the normal policy) had a p99 of 4.8–5.0 ms: under `latency` the
/// pipeline's tail is near that floor, under `throughput` each hand-off adds a time slice.
///
/// `bench amqp` is the noisiest; in an earlier pair with only the runtime's thread at the
/// normal policy it took 19 200 and 14 300 events/s against 23 600 and 23 400.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduling {
    /// `SCHED_BATCH` (the default): a thread woken with events does not preempt the one that
    /// handed them over in the middle of its burst, so bursts stay large and the switches
    /// few (see `crate::sync::schedule_thread`). The cost: a woken thread does not preempt
    /// anyone else either, so beside a process that keeps the cores busy each hand-off waits
    /// for that process's time slice to end, a few milliseconds.
    #[default]
    Throughput,
    /// The normal policy: a thread woken with events may preempt a busy neighbour without
    /// waiting for its slice to end, and the service's own threads preempt each other too,
    /// which costs a share of the most events per second (a fifth at MQTT QoS 0 and a tenth
    /// on Pulsar, above). For a machine shared with CPU-bound work, where the time each event
    /// waits matters more than the peak rate.
    Latency,
}

impl std::str::FromStr for Scheduling {
    type Err = String;

    /// Reads the mode as the configuration writes it (`throughput`, `latency`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "throughput" => Ok(Scheduling::Throughput),
            "latency" => Ok(Scheduling::Latency),
            other => Err(format!(
                "the scheduling is `throughput` or `latency`, not `{other}`"
            )),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue: 256,
            max_in_flight: 4096,
            dedup_window_s: 600,
            dedup_capacity: 100_000,
            shutdown_timeout_s: 30,
            order: Order::Device,
            scheduling: Scheduling::Throughput,
            redelivery_attempts: 3,
            redelivery_delay_ms: 1_000,
        }
    }
}

/// `[dead_letters]`: the limits of the dead-letter store; past any of them the oldest
/// letters are evicted. Each must be at least 1. The defaults are the store's
/// (`crate::store::Retention`, which says why they are what they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLettersConfig {
    /// Letters kept at most.
    pub max_rows: u64,
    /// MiB of letters kept at most: payloads, error messages and transport properties.
    pub max_mb: u64,
    /// Days a letter is kept, counted from when it was stored.
    pub max_age_days: u64,
}

impl Default for DeadLettersConfig {
    fn default() -> Self {
        DeadLettersConfig {
            max_rows: 1_000_000,
            max_mb: 1024,
            max_age_days: 7,
        }
    }
}

/// The devices the twin keeps unless `[twin] max_devices` says otherwise.
pub const DEFAULT_TWIN_DEVICES: usize = 100_000;

/// `[twin]`: the device twin the host keeps from every event (`crate::twin`), which rule
/// conditions, plugins and `/devices` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwinConfig {
    /// Devices kept at most; past it the device updated longest ago is evicted (from memory
    /// and the store). 0 turns the twin off: nothing is kept or stored, and conditions and
    /// plugins see no twin. A twin of six properties takes about 0.9 KiB in memory.
    pub max_devices: usize,
}

impl Default for TwinConfig {
    fn default() -> Self {
        TwinConfig {
            max_devices: DEFAULT_TWIN_DEVICES,
        }
    }
}

/// A `[[connector]]` or `[[command_path]]` table: its `name` and `kind`, and the rest of its
/// keys, which its kind reads ([`Table::read`]).
///
/// It keeps the file's text, so that an error in a key points at the key's line; its `Debug`
/// shows only the name and kind (the text may hold secrets).
#[derive(Clone)]
pub struct Table {
    /// `connector` or `command_path`.
    pub section: &'static str,
    /// Its `name`.
    pub name: String,
    /// Its `kind`.
    pub kind: String,
    kind_span: Range<usize>,
    /// Its place in the section's array.
    index: usize,
    source: Arc<Source>,
}

/// The file a [`Table`] came from.
struct Source {
    file: PathBuf,
    text: String,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("section", &self.section)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// `connector "NAME"` or `command_path "NAME"`, as errors name it.
    pub fn place(&self) -> String {
        format!("{} \"{}\"", self.section, self.name)
    }

    /// What the kind is called in errors: `a tuya-pulsar connector`, `an alibaba-openapi path`.
    pub(crate) fn a_kind(&self) -> String {
        // By the sound: "an mqtt connector" (em-queue-tee).
        let vowel_sound =
            self.kind.starts_with(['a', 'e', 'i', 'o', 'u']) || self.kind.starts_with("mqtt");
        let article = if vowel_sound { "an" } else { "a" };
        let noun = match self.section {
            CONNECTOR => "connector",
            _ => "path",
        };
        format!("{article} {} {noun}", self.kind)
    }

    /// An error in this table's settings.
    pub fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            place: self.place(),
            reason: reason.into(),
        }
    }

    /// A required string setting, or an error naming it.
    pub fn required<'a>(
        &self,
        value: &'a Option<Expanded>,
        key: &str,
    ) -> Result<&'a str, ConfigError> {
        match value {
            Some(value) if !value.as_str().is_empty() => Ok(value.as_str()),
            _ => Err(self.invalid(format!("{} needs `{key}`", self.a_kind()))),
        }
    }

    /// A required secret, or an error naming it.
    pub(crate) fn required_secret<'a>(
        &self,
        value: &'a Option<Secret>,
        key: &str,
    ) -> Result<&'a str, ConfigError> {
        match value {
            Some(value) if !value.expose().is_empty() => Ok(value.expose()),
            _ => Err(self.invalid(format!("{} needs `{key}`", self.a_kind()))),
        }
    }

    /// A path from this table: relative paths are taken from the config file's directory.
    pub fn path(&self, value: &Expanded) -> PathBuf {
        self.source
            .file
            .parent()
            .unwrap_or(Path::new(""))
            .join(value.as_str())
    }

    /// The error for a `kind` no registry knows, listing the `known` ones, at the kind's line.
    pub(crate) fn unknown_kind(&self, known: &[&str]) -> ConfigError {
        let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        self.error_at(
            self.kind_span.start,
            format!(
                "unknown {} kind `{}`, expected one of {}",
                self.section,
                self.kind,
                known.join(", ")
            ),
        )
    }

    /// The table's keys other than `name` and `kind`, as `T`: a key that is not one of
    /// `T`'s fields is an error naming the kind and the key, at the key's line, as is a value
    /// of the wrong type or an unset `${VARIABLE}`.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let (span, keys) = self.keys()?;
        self.check_keys(&keys, &[field_names::<T>()])?;
        self.deserialize(span, keys)
    }

    /// The table's keys as two structs, each taking its fields: a kind's own keys beside the
    /// keys it shares with other kinds (every MQTT link's, every command path's). A key that
    /// is a field of neither is an error, as with [`read`](Self::read).
    pub(crate) fn read_both<A: DeserializeOwned, B: DeserializeOwned>(
        &self,
    ) -> Result<(A, B), ConfigError> {
        let (span, keys) = self.keys()?;
        self.check_keys(&keys, &[field_names::<A>(), field_names::<B>()])?;
        let a = self.deserialize(span.clone(), keys.clone())?;
        let b = self.deserialize(span, keys)?;
        Ok((a, b))
    }

    /// This table as it is in the file, without `name` and `kind`, and its span.
    fn keys(&self) -> Result<(Range<usize>, DeTable<'_>), ConfigError> {
        let text = self.source.text.as_str();
        let document = DeTable::parse(text).map_err(|e| self.parse_error(e))?;
        let table = document
            .into_inner()
            .remove(self.section)
            .map(Spanned::into_inner)
            .and_then(|section| match section {
                DeValue::Array(tables) => tables.into_iter().nth(self.index),
                _ => None,
            })
            .and_then(|table| {
                let span = table.span();
                match table.into_inner() {
                    DeValue::Table(keys) => Some((span, keys)),
                    _ => None,
                }
            });
        let Some((span, mut keys)) = table else {
            return Err(self.invalid("the table is no longer in the file's text"));
        };
        keys.remove("name");
        keys.remove("kind");
        Ok((span, keys))
    }

    fn check_keys(&self, keys: &DeTable<'_>, fields: &[&[&str]]) -> Result<(), ConfigError> {
        for key in keys.keys() {
            if !fields.iter().any(|f| f.contains(&key.as_ref().as_ref())) {
                let mut known: Vec<String> = fields
                    .iter()
                    .flat_map(|f| f.iter())
                    .map(|f| format!("`{f}`"))
                    .collect();
                known.sort();
                let takes = if known.is_empty() {
                    "it takes only `name` and `kind`".to_owned()
                } else {
                    format!("it takes {}", known.join(", "))
                };
                return Err(self.error_at(
                    key.span().start,
                    format!("{} has no key `{}` ({takes})", self.a_kind(), key.as_ref()),
                ));
            }
        }
        Ok(())
    }

    fn deserialize<T: DeserializeOwned>(
        &self,
        span: Range<usize>,
        keys: DeTable<'_>,
    ) -> Result<T, ConfigError> {
        let value = Spanned::new(span, DeValue::Table(keys));
        T::deserialize(toml::de::ValueDeserializer::from(value)).map_err(|e| self.parse_error(e))
    }

    /// A toml error in this table, at its place in the file.
    fn parse_error(&self, mut error: toml::de::Error) -> ConfigError {
        error.set_input(Some(&self.source.text));
        let (at, message) = located(&error);
        ConfigError::Parse {
            file: self.source.file.clone(),
            message: match at {
                Some(at) => format!("{at}: {}: {message}", self.place()),
                None => format!("{}: {message}", self.place()),
            },
        }
    }

    /// An error at byte `offset` of the file.
    fn error_at(&self, offset: usize, message: String) -> ConfigError {
        let before = &self.source.text[..offset.min(self.source.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Parse {
            file: self.source.file.clone(),
            message: format!("line {line}, column {column}: {}: {message}", self.place()),
        }
    }
}

/// The `section` of `[[connector]]` tables.
pub const CONNECTOR: &str = "connector";
/// The `section` of `[[command_path]]` tables.
pub(crate) const COMMAND_PATH: &str = "command_path";

/// The fields a derived `Deserialize` of `T` takes, as it names them to the deserializer
/// (renamed ones by their new name); empty for a type that is not a struct.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records the field names a struct asks it for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("only the field names were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A string from the config with its environment references expanded.
#[derive(Clone, PartialEq, Eq)]
pub struct Expanded(String);

impl Expanded {
    /// The value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Expanded {
    /// A value as it is, for a default (nothing is expanded).
    fn from(value: &str) -> Self {
        Expanded(value.to_owned())
    }
}

impl fmt::Debug for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Expanded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        expand_env(&text, |name| std::env::var(name).ok())
            .map(Expanded)
            .map_err(serde::de::Error::custom)
    }
}

/// A secret from the config (after `${ENV}` expansion). It prints as `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the code that needs it (a key derivation, a header).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Expanded::deserialize(deserializer).map(|e| Secret(e.0))
    }
}

/// Expands `${NAME}`, `${NAME:-default}` and `$$` in `text`, looking names up with `lookup`.
/// The error names the variable; it never contains a value.
pub(crate) fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!(
                    "`${{` without a closing `}}` in \"{}\"",
                    clip(text)
                ));
            };
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!(
                    "`${{{}}}` is not an environment reference (`${{NAME}}` or `${{NAME:-default}}`)",
                    clip(reference)
                ));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The names of the `${NAME}` and `${NAME:-default}` references in `text` (comments
/// included: a name there is at worst refused to rules needlessly), sorted, each once.
/// `$${…}` is a literal and names nothing.
pub(crate) fn env_references(text: &str) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        rest = after;
        let Some(body) = after.strip_prefix('{') else {
            continue;
        };
        let end = body.find(['}', ':']).unwrap_or(body.len());
        let name = &body[..end];
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if valid {
            names.insert(name.to_owned());
        }
    }
    names.into_iter().collect()
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(60) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// `url` fit for an error message: a `user:password@` before the host becomes `***@`.
///
/// The URL parsers refuse credentials in a URL (they are derived, or configured apart as
/// secrets), and say so; echoing the refused URL whole would print the password they were
/// refusing into the log and `/status`.
pub(crate) fn redacted_url(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |at| at + 3);
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| start + at);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (message with line and column).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// toml's message, with the place.
        message: String,
    },
    /// A value is wrong given the others.
    #[error("{place}: {reason}")]
    Invalid {
        /// Which table or value.
        place: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_rules")]
    rules: Expanded,
    #[serde(default = "default_plugins")]
    plugins: Expanded,
    #[serde(default = "default_store")]
    store: Expanded,
    #[serde(default)]
    cache: Option<Expanded>,
    #[serde(default)]
    admin: Option<AdminConfig>,
    #[serde(default)]
    pipeline: PipelineConfig,
    #[serde(default)]
    dead_letters: DeadLettersConfig,
    #[serde(default)]
    twin: TwinConfig,
    #[serde(default, rename = "connector")]
    connectors: Vec<Head>,
    #[serde(default, rename = "command_path")]
    command_paths: Vec<Head>,
}

/// What every `[[connector]]` and `[[command_path]]` has; the other keys are its kind's.
#[derive(Deserialize)]
struct Head {
    name: String,
    kind: Spanned<String>,
}

fn default_rules() -> Expanded {
    Expanded("rules".into())
}
fn default_plugins() -> Expanded {
    Expanded("plugins".into())
}
fn default_store() -> Expanded {
    Expanded("iotrules.db".into())
}

impl Config {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// Parses and checks `text`, read from `file` (relative paths in it are taken from the
    /// file's directory). The `[[connector]]` and `[[command_path]]` tables are checked for
    /// their names only: their kinds read the rest (`crate::plan::Plan`).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: one_line(&e),
        })?;
        let base = file.parent().unwrap_or(Path::new(""));
        let resolve = |path: &Expanded| base.join(path.as_str());
        let source = Arc::new(Source {
            file: file.to_owned(),
            text: text.to_owned(),
        });
        let tables = |section: &'static str, heads: Vec<Head>| -> Vec<Table> {
            heads
                .into_iter()
                .enumerate()
                .map(|(index, head)| Table {
                    section,
                    name: head.name,
                    kind_span: head.kind.span(),
                    kind: head.kind.into_inner(),
                    index,
                    source: source.clone(),
                })
                .collect()
        };
        let config = Config {
            file: file.to_owned(),
            rules: resolve(&raw.rules),
            plugins: resolve(&raw.plugins),
            cache: match &raw.cache {
                Some(cache) => resolve(cache),
                None => resolve(&raw.store).with_file_name("plugin-cache"),
            },
            store: resolve(&raw.store),
            admin: raw.admin,
            pipeline: raw.pipeline,
            dead_letters: raw.dead_letters,
            twin: raw.twin,
            connectors: tables(CONNECTOR, raw.connectors),
            command_paths: tables(COMMAND_PATH, raw.command_paths),
            clock: crate::time::Clock::System,
            env_references: env_references(text),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |place: String, reason: String| Err(ConfigError::Invalid { place, reason });
        let p = &self.pipeline;
        for (name, value) in [
            ("workers", p.workers),
            ("queue", p.queue),
            ("max_in_flight", p.max_in_flight),
        ] {
            if value == 0 {
                return invalid(format!("[pipeline] {name}"), "must be at least 1".into());
            }
        }
        let d = &self.dead_letters;
        for (name, value) in [
            ("max_rows", d.max_rows),
            ("max_mb", d.max_mb),
            ("max_age_days", d.max_age_days),
        ] {
            if value == 0 {
                return invalid(
                    format!("[dead_letters] {name}"),
                    "must be at least 1 (set it high to keep more)".into(),
                );
            }
        }
        for (tables, what) in [
            (&self.connectors, "another connector has this name"),
            (&self.command_paths, "another command path has this name"),
        ] {
            let mut names = HashSet::new();
            for table in tables {
                check_name(&table.name, table.section)?;
                if !names.insert(table.name.as_str()) {
                    return Err(table.invalid(what));
                }
            }
        }
        Ok(())
    }

    /// A config for running rules without connectors (tests, `iotrules test`): the rules and
    /// plugins directories given, defaults for the rest.
    pub fn for_dirs(rules: PathBuf, plugins: PathBuf) -> Config {
        Config {
            file: PathBuf::new(),
            rules,
            plugins,
            store: PathBuf::from("iotrules.db"),
            cache: PathBuf::from("plugin-cache"),
            admin: None,
            pipeline: PipelineConfig::default(),
            dead_letters: DeadLettersConfig::default(),
            twin: TwinConfig::default(),
            connectors: Vec::new(),
            command_paths: Vec::new(),
            clock: crate::time::Clock::System,
            env_references: Vec::new(),
        }
    }
}

fn check_name(name: &str, what: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            place: format!("{what} \"{name}\""),
            reason: "a name is letters, digits, `-`, `_` and `.`".into(),
        })
    }
}

/// toml's multi-line message (with a source excerpt) as one line: `line L, column C: reason`.
fn one_line(error: &toml::de::Error) -> String {
    match located(error) {
        (Some(at), message) => format!("{at}: {message}"),
        (None, message) => message.to_owned(),
    }
}

/// Where toml's error is (`line L, column C`, when it knows) and what it says.
fn located(error: &toml::de::Error) -> (Option<String>, &str) {
    let message = error.message().trim();
    if error.span().is_none() {
        return (None, message);
    }
    // The Display form starts with "TOML parse error at line L, column C".
    let text = error.to_string();
    let place = text
        .lines()
        .next()
        .and_then(|first| first.strip_prefix("TOML parse error at "))
        .filter(|place| !place.is_empty())
        .map(str::to_owned);
    (place, message)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_expand_with_defaults_and_escapes() {
        assert_eq!(expand_env("a${KEY}b", env).unwrap(), "as3cretb");
        assert_eq!(expand_env("${MISSING:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_env("${EMPTY:-dflt}", env).unwrap(), "");
        assert_eq!(expand_env("$$HOME $x", env).unwrap(), "$HOME $x");
        assert_eq!(expand_env("plain", env).unwrap(), "plain");
    }

    #[test]
    fn the_referenced_variables_are_listed_once_and_escapes_skipped() {
        let text = "a = \"${TUYA_KEY}\"\nb = \"x${HOOK_AUTH:-none}y${TUYA_KEY}\"\n\
                    c = \"$${NOT_ONE} ${1BAD} $PLAIN\"\n";
        assert_eq!(env_references(text), ["HOOK_AUTH", "TUYA_KEY"]);
    }

    #[test]
    fn bad_references_name_the_variable_not_a_value() {
        let error = expand_env("${MISSING}", env).unwrap_err();
        assert_eq!(error, "environment variable MISSING is not set");
        assert!(expand_env("${KEY", env).unwrap_err().contains("closing"));
        assert!(
            expand_env("${1A}", env)
                .unwrap_err()
                .contains("not an environment reference")
        );
    }

    #[test]
    fn a_url_s_user_and_password_are_left_out_of_what_errors_show() {
        assert_eq!(
            redacted_url("amqps://user:s3cret@host:5671/x@y"),
            "amqps://***@host:5671/x@y"
        );
        assert_eq!(redacted_url("u:s3cret@host"), "***@host");
        assert_eq!(
            redacted_url("https://host/path?a=b@c"),
            "https://host/path?a=b@c"
        );
    }

    #[test]
    fn the_scheduling_is_throughput_unless_the_pipeline_asks_for_latency() {
        let read = |text: &str| Config::parse(Path::new("iotrules.toml"), text);
        let scheduling = |text: &str| read(text).expect("valid").pipeline.scheduling;
        assert_eq!(scheduling(""), Scheduling::Throughput);
        assert_eq!(
            scheduling("[pipeline]\nscheduling = \"throughput\"\n"),
            Scheduling::Throughput
        );
        assert_eq!(
            scheduling("[pipeline]\nscheduling = \"latency\"\n"),
            Scheduling::Latency
        );
        let error = read("[pipeline]\nscheduling = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("fast") && error.contains("latency") && error.contains("line 2"),
            "{error}"
        );
        assert_eq!("latency".parse(), Ok(Scheduling::Latency));
        assert!("fast".parse::<Scheduling>().unwrap_err().contains("`fast`"));
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret("s3cret".into());
        assert_eq!(format!("{secret:?}"), "***");
    }

    /// A config with one replay connector and one command path, in `/etc/iot` for the tests
    /// that resolve its paths.
    pub(crate) const MINIMAL: &str = r#"
        rules = "r"
        plugins = "p"
        [[connector]]
        name = "a"
        kind = "replay"
        dialect = "huawei"
        file = "a.jsonl"
        [[command_path]]
        name = "out"
        kind = "log"
    "#;

    #[test]
    fn paths_resolve_from_the_config_file() {
        let config = Config::parse(Path::new("/etc/iot/iotrules.toml"), MINIMAL).unwrap();
        assert_eq!(config.rules, Path::new("/etc/iot/r"));
        assert_eq!(config.plugins, Path::new("/etc/iot/p"));
        assert_eq!(config.store, Path::new("/etc/iot/iotrules.db"));
        let file = Expanded("a.jsonl".into());
        assert_eq!(
            config.connectors[0].path(&file),
            Path::new("/etc/iot/a.jsonl")
        );
    }

    #[test]
    fn dead_letter_limits_default_to_a_week_a_gib_and_a_million_and_refuse_zero() {
        let file = Path::new("c.toml");
        let config = Config::parse(file, MINIMAL).unwrap();
        assert_eq!(
            config.dead_letters,
            DeadLettersConfig {
                max_rows: 1_000_000,
                max_mb: 1024,
                max_age_days: 7,
            }
        );

        let text = format!("{MINIMAL}\n[dead_letters]\nmax_mb = 64\nmax_age_days = 2\n");
        let limits = Config::parse(file, &text).unwrap().dead_letters;
        assert_eq!((limits.max_mb, limits.max_age_days), (64, 2));
        assert_eq!(limits.max_rows, 1_000_000, "unset keys keep their default");

        let zero = format!("{MINIMAL}\n[dead_letters]\nmax_rows = 0\n");
        let error = Config::parse(file, &zero).unwrap_err().to_string();
        assert!(
            error.starts_with("[dead_letters] max_rows: must be at least 1"),
            "{error}"
        );
    }

    #[test]
    fn the_twin_keeps_a_hundred_thousand_devices_by_default_zero_turns_it_off() {
        let file = Path::new("c.toml");
        let config = Config::parse(file, MINIMAL).unwrap();
        assert_eq!(config.twin.max_devices, 100_000);

        let off = format!("{MINIMAL}\n[twin]\nmax_devices = 0\n");
        assert_eq!(Config::parse(file, &off).unwrap().twin.max_devices, 0);

        let unknown = format!("{MINIMAL}\n[twin]\nmax_device = 10\n");
        let error = Config::parse(file, &unknown).unwrap_err().to_string();
        assert!(error.contains("unknown field `max_device`"), "{error}");
        assert!(error.contains("max_devices"), "{error}");
    }

    #[test]
    fn errors_name_the_place() {
        let file = Path::new("c.toml");
        let unknown = Config::parse(file, "rulez = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.starts_with("c.toml: line 1, column 1"), "{unknown}");
        assert!(unknown.contains("rulez"), "{unknown}");

        let twice = format!("{MINIMAL}\n[[command_path]]\nname = \"out\"\nkind = \"log\"\n");
        let error = Config::parse(file, &twice).unwrap_err().to_string();
        assert_eq!(
            error,
            "command_path \"out\": another command path has this name"
        );

        let unnamed = MINIMAL.replace("name = \"a\"", "name = \"a b\"");
        let error = Config::parse(file, &unnamed).unwrap_err().to_string();
        assert!(error.starts_with("connector \"a b\": a name is"), "{error}");
    }

    /// What a kind of the test reads: one key of its own.
    #[derive(Debug, Deserialize)]
    struct Own {
        file: Expanded,
    }

    /// What a kind of the test shares with others.
    #[derive(Debug, Deserialize)]
    struct Shared {
        #[serde(default)]
        rate: f64,
    }

    #[test]
    fn a_kind_reads_its_keys_and_a_key_it_does_not_take_is_named_with_the_kind() {
        let file = Path::new("c.toml");
        let config = Config::parse(file, MINIMAL).unwrap();
        let table = &config.connectors[0];
        assert_eq!((table.name.as_str(), table.kind.as_str()), ("a", "replay"));
        let (own, shared): (Own, Shared) = {
            let text = MINIMAL.replace("dialect = \"huawei\"", "rate = 2.5");
            let config = Config::parse(file, &text).unwrap();
            config.connectors[0].read_both().unwrap()
        };
        assert_eq!((own.file.as_str(), shared.rate), ("a.jsonl", 2.5));

        let error = table.read::<Own>().unwrap_err().to_string();
        assert_eq!(
            error,
            "c.toml: line 7, column 9: connector \"a\": a replay connector has no key \
             `dialect` (it takes `file`)"
        );
        let error = table.unknown_kind(&["mqtt", "replay2"]).to_string();
        assert!(
            error.starts_with(
                "c.toml: line 6, column 16: connector \"a\": unknown connector \
                               kind `replay`, expected one of `mqtt`, `replay2`"
            ),
            "{error}"
        );
        let paths = &config.command_paths[0];
        assert_eq!(paths.a_kind(), "a log path");
        let link = MINIMAL.replace("kind = \"replay\"", "kind = \"mqtt\"");
        let link = Config::parse(file, &link).unwrap();
        assert_eq!(link.connectors[0].a_kind(), "an mqtt connector");
        let error = paths.read::<Shared>();
        assert!(
            error.is_ok(),
            "a table with only name and kind reads as defaults"
        );
    }

    /// The other key of the minimal connector.
    #[derive(Debug, Deserialize)]
    struct DialectKey {
        #[allow(dead_code)]
        dialect: String,
    }

    #[test]
    fn an_unset_variable_in_a_kind_s_key_is_reported_at_its_line() {
        let file = Path::new("c.toml");
        let missing = MINIMAL.replace("file = \"a.jsonl\"", "file = \"${NO_SUCH_VAR_X}\"");
        let config = Config::parse(file, &missing).unwrap();
        let error = config.connectors[0]
            .read_both::<Own, DialectKey>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 8") && error.contains("NO_SUCH_VAR_X is not set"),
            "{error}"
        );
    }
}
