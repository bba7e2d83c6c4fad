//! The `replay` connector: recorded vendor messages from a JSON-lines file, fed to the
//! pipeline at a given rate or as fast as it takes them, then stopping or starting over.
//!
//! Each line is one message as its transport delivered it:
//!
//! ```text
//! # Blank lines and lines starting with # are skipped.
//! {"properties": {"em": "aes_gcm"}, "payload": "{\"protocol\":4,…}"}
//! {"properties": {"topic": "/a1B2/lamp/thing/event/property/post"}, "payload_base64": "eyJ…"}
//! ```
//!
//! `properties` (optional) are the transport properties the dialect reads (Tuya's `em`, an
//! AMQP `topic`, …); the message is `payload` (text) or `payload_base64` (bytes), exactly one.
//!
//! With an offset file the connector remembers the first line not yet acknowledged (written
//! at most every 100 ms and when it stops), so a restart resumes there: what was in flight
//! when the service died is delivered again, what was acknowledged is not. A message the
//! pipeline sends back for another try is read again from its place in the file and delivered
//! a second later.
//!
//! The file is read as it is replayed, a line at a time, so a recording of any size costs the
//! memory of one line; a line over [`MAX_LINE_BYTES`] is reported and skipped unread.
//!
//! This folder is the whole kind, as every connector kind's module is: its keys, their
//! checks, its identity and its start here, the reading of the recording in [`recording`].
//! The rest of the service knows it by one line, `&replay::KIND` in [`super::KINDS`].

mod recording;

use std::path::PathBuf;

use serde::Deserialize;

pub use self::recording::{Recorded, run};

use super::{Connector, Context, Kind, Start, TuyaKeys};
use crate::config::{ConfigError, Expanded, Table};
use crate::dialect::{Dialect, DialectName};

/// The `replay` kind.
pub const KIND: Kind = Kind {
    names: &["replay"],
    read: |table| super::configured(ReplaySettings::read(table)),
};

/// A `replay` connector's own keys (besides the Tuya dialects' [`TuyaKeys`]).
#[derive(Default, Deserialize)]
#[serde(default)]
struct ReplayConfig {
    /// The vendor dialect the recorded messages are in (any; required).
    dialect: Option<DialectName>,
    /// The Alibaba dialect: bodies are base64-encoded (a console option).
    body_base64: bool,
    /// The `json` dialect: where the device id is in a message's topic.
    device_topic: Option<Expanded>,
    /// The recorded messages, JSON lines.
    file: Option<Expanded>,
    /// Messages per second; 0 (the default) is as fast as the pipeline takes them.
    rate: f64,
    /// Start again at the first line after the last; otherwise stop.
    #[serde(rename = "loop")]
    repeat: bool,
    /// Where to keep the position of the first unacknowledged line, so that a restart
    /// resumes there (and redelivers what was not acknowledged).
    offset_file: Option<Expanded>,
}

impl ReplaySettings {
    /// Checks a `replay` connector's table and derives its settings.
    pub fn from_config(table: &Table) -> Result<Self, ConfigError> {
        Self::read(table).map(|(_, settings)| settings)
    }

    /// The dialect and the settings of a `replay` connector's table.
    fn read(table: &Table) -> Result<(Dialect, Self), ConfigError> {
        let (config, tuya) = table.read_both::<ReplayConfig, TuyaKeys>()?;
        let dialect = super::dialect_name(table, &[], config.dialect)?.build(
            tuya.sign,
            config.body_base64,
            || tuya.keys(table),
            || super::topic_template(table, &config.device_topic),
        )?;
        let Some(file) = &config.file else {
            return Err(table.invalid("a replay connector needs `file`"));
        };
        if !(config.rate.is_finite() && config.rate >= 0.0) {
            return Err(table.invalid("rate must be 0 (unlimited) or more"));
        }
        if config.repeat && config.offset_file.is_some() {
            return Err(table.invalid(
                "`loop` and `offset_file` do not go together: a looping replay has no position to \
             resume",
            ));
        }
        let settings = ReplaySettings {
            file: table.path(file),
            rate: config.rate,
            repeat: config.repeat,
            offset_file: config.offset_file.as_ref().map(|f| table.path(f)),
        };
        Ok((dialect, settings))
    }
}

impl Connector for ReplaySettings {
    fn files(&self) -> Vec<(PathBuf, &'static str)> {
        let offset = self
            .offset_file
            .iter()
            .map(|f| (f.clone(), "a replay offset file"));
        std::iter::once((self.file.clone(), "a replay file"))
            .chain(offset)
            .collect()
    }

    fn identity(&self, _now_ms: u64) -> Vec<(String, String)> {
        vec![("file".into(), self.file.display().to_string())]
    }

    fn start(&self, _name: &str, _runtime: &tokio::runtime::Handle) -> Start {
        let settings = self.clone();
        Start::receiving(move |context: Context| async move {
            let Context {
                ingest,
                status,
                errors,
                shutdown,
                ..
            } = context;
            let summary = run(settings, ingest, status, errors, shutdown).await;
            summary.map(|_| ()).map_err(anyhow::Error::msg)
        })
    }
}

/// A replay connector's settings.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// The recorded messages.
    pub file: PathBuf,
    /// Messages per second; 0 is unlimited.
    pub rate: f64,
    /// Start over at the end.
    pub repeat: bool,
    /// Where the position is kept.
    pub offset_file: Option<PathBuf>,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Messages handed to the pipeline (redeliveries included).
    pub delivered: u64,
    /// Lines that are not recorded messages (reported and skipped).
    pub bad_lines: u64,
    /// Messages sent again after the pipeline asked for a retry.
    pub retried: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(keys: &str) -> Result<ReplaySettings, ConfigError> {
        let text = format!(
            "[[connector]]\nname = \"r\"\nkind = \"replay\"\ndialect = \"huawei\"\n{keys}\n"
        );
        let config = Config::parse(std::path::Path::new("/srv/iot/iotrules.toml"), &text)?;
        ReplaySettings::from_config(&config.connectors[0])
    }

    #[test]
    fn a_replay_reads_its_renamed_loop_key_its_rate_and_its_files() {
        let looping = settings("file = \"a.jsonl\"\nloop = true\nrate = 2.5").unwrap();
        assert!(looping.repeat);
        assert_eq!(looping.rate, 2.5);
        assert_eq!(looping.file, std::path::Path::new("/srv/iot/a.jsonl"));
        let resuming = settings("file = \"a.jsonl\"\noffset_file = \"a.offset\"").unwrap();
        assert!(!resuming.repeat);
        assert_eq!(
            resuming.files(),
            [
                (PathBuf::from("/srv/iot/a.jsonl"), "a replay file"),
                (PathBuf::from("/srv/iot/a.offset"), "a replay offset file"),
            ]
        );
        let both = settings("file = \"a\"\nloop = true\noffset_file = \"o\"").unwrap_err();
        assert!(both.to_string().contains("do not go together"), "{both}");
        let negative = settings("file = \"a\"\nrate = -1").unwrap_err();
        assert!(
            negative.to_string().contains("rate must be 0"),
            "{negative}"
        );
        let missing = settings("rate = 1").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "connector \"r\": a replay connector needs `file`"
        );
    }
}
