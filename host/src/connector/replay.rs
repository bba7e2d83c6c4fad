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
//! pipeline sends back for another try is delivered again a second later.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::ConnectorState;
use crate::pipeline::Ingest;
use crate::pipeline::{Acker, Delivery, Settle};
use crate::status::{ConnectorHandle, LastErrors};
use crate::sync::lock;

/// A recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Transport properties, by name (dialects look them up by name; order carries nothing).
    pub properties: Vec<(String, String)>,
    /// The message bytes.
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    properties: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// Parses one line: `Ok(None)` for a blank or comment line.
pub fn parse_line(line: &str) -> Result<Option<Recorded>, String> {
    let text = line.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let line: Line =
        serde_json::from_str(text).map_err(|e| format!("not a recorded message: {e}"))?;
    let payload = match (line.payload, line.payload_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| format!("payload_base64 is not base64: {e}"))?
        }
        (Some(_), Some(_)) => return Err("both payload and payload_base64 are given".into()),
        (None, None) => return Err("no payload or payload_base64".into()),
    };
    let mut properties = Vec::with_capacity(line.properties.len());
    for (key, value) in line.properties {
        match value {
            serde_json::Value::String(text) => properties.push((key, text)),
            other => {
                return Err(format!(
                    "property \"{key}\" is {other}, not a string (transport properties are text)"
                ));
            }
        }
    }
    Ok(Some(Recorded {
        properties,
        payload,
    }))
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

/// Which lines are acknowledged, and the offset file that remembers it.
struct Positions {
    /// Message lines handed out and not yet acknowledged (0-based line indexes).
    outstanding: BTreeSet<usize>,
    /// The next line to hand out.
    next: usize,
    offset_file: Option<PathBuf>,
    written: Option<usize>,
    written_at: Instant,
}

impl Positions {
    /// The first line not yet acknowledged.
    fn offset(&self) -> usize {
        self.outstanding.first().copied().unwrap_or(self.next)
    }

    fn write(&mut self, force: bool) {
        let Some(file) = &self.offset_file else {
            return;
        };
        let offset = self.offset();
        if self.written == Some(offset)
            || (!force && self.written_at.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        match write_offset(file, offset) {
            Ok(()) => {
                self.written = Some(offset);
                self.written_at = Instant::now();
            }
            Err(e) => tracing::error!("Cannot write the replay offset to {}: {e}", file.display()),
        }
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        self.write(true);
    }
}

/// Reads an offset file: the 0-based index of the first line to deliver. No file is line 0.
pub fn read_offset(file: &Path) -> Result<usize, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(format!(
                "cannot read the offset file {}: {e}",
                file.display()
            ));
        }
    };
    #[derive(Deserialize)]
    struct Offset {
        next_line: usize,
    }
    let offset: Offset = serde_json::from_str(&text).map_err(|e| {
        format!(
            "the offset file {} is not {{\"next_line\": N}} ({e}); remove it to replay from the start",
            file.display()
        )
    })?;
    Ok(offset.next_line.saturating_sub(1))
}

fn write_offset(file: &Path, offset: usize) -> std::io::Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let mut temp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
    std::io::Write::write_all(
        &mut temp,
        format!("{{\"next_line\": {}}}\n", offset + 1).as_bytes(),
    )?;
    temp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// Replays `settings.file` into `ingest` until the end (or forever with `repeat`), or until
/// `shutdown` turns true. Returns when every delivered message is acknowledged (or at
/// shutdown, leaving the rest to the offset file).
pub async fn run(
    settings: ReplaySettings,
    ingest: Ingest,
    status: ConnectorHandle,
    errors: Arc<LastErrors>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReplaySummary, String> {
    let place = format!("connector \"{}\"", ingest.connector());
    let fail = |reason: String| {
        status.set(ConnectorState::Failed, Some(reason.clone()));
        errors.push(place.clone(), &reason);
        reason
    };
    let text = tokio::fs::read_to_string(&settings.file)
        .await
        .map_err(|e| fail(format!("cannot read {}: {e}", settings.file.display())))?;
    let lines: Arc<Vec<String>> = Arc::new(text.lines().map(str::to_owned).collect());
    drop(text);
    let start = match &settings.offset_file {
        Some(file) => read_offset(file).map_err(fail)?,
        None => 0,
    };
    if start > 0 {
        tracing::info!(
            connector = ingest.connector(),
            "Resuming {} at line {}",
            settings.file.display(),
            start + 1
        );
    }
    let positions = Arc::new(Mutex::new(Positions {
        outstanding: BTreeSet::new(),
        next: start,
        offset_file: settings.offset_file.clone(),
        written: None,
        written_at: Instant::now(),
    }));
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<usize>();
    let (settled_tx, mut settled_rx) = watch::channel(());
    let mut summary = ReplaySummary::default();
    let period = (settings.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / settings.rate));
    let mut next_at = tokio::time::Instant::now();
    status.set(ConnectorState::Running, None);

    let deliver = |index: usize, recorded: Recorded| {
        let positions = positions.clone();
        let retry_tx = retry_tx.clone();
        let settled_tx = settled_tx.clone();
        let acker = Acker::new(move |how| {
            let mut positions = lock(&positions);
            match how {
                Settle::Ack => {
                    positions.outstanding.remove(&index);
                    positions.write(false);
                }
                Settle::Retry => {
                    let _ = retry_tx.send(index);
                }
            }
            drop(positions);
            let _ = settled_tx.send(());
        });
        Delivery {
            payload: recorded.payload,
            properties: recorded.properties,
            acker,
        }
    };

    let mut index = start;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Redeliveries first, after a pause so a failing path is not hammered.
        while let Ok(line) = retry_rx.try_recv() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(Some(recorded)) = parse_line(&lines[line]) {
                summary.retried += 1;
                if ingest.submit(deliver(line, recorded)).await.is_err() {
                    return Ok(summary);
                }
            }
        }
        if index >= lines.len() {
            if settings.repeat && summary.delivered > 0 {
                index = 0;
                continue;
            }
            if lock(&positions).outstanding.is_empty() {
                break;
            }
            // Wait for the last acknowledgements (or retries, or shutdown).
            tokio::select! {
                _ = settled_rx.changed() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let current = index;
        index += 1;
        let recorded = match parse_line(&lines[current]) {
            Ok(Some(recorded)) => recorded,
            Ok(None) => {
                mark_skipped(&positions, current);
                continue;
            }
            Err(reason) => {
                summary.bad_lines += 1;
                let message = format!("{}:{}: {reason}", settings.file.display(), current + 1);
                tracing::error!(connector = ingest.connector(), "Line skipped: {message}");
                errors.push(place.clone(), &message);
                mark_skipped(&positions, current);
                continue;
            }
        };
        if let Some(period) = period {
            tokio::select! {
                _ = tokio::time::sleep_until(next_at) => {}
                _ = shutdown.changed() => break,
            }
            next_at = (next_at + period).max(tokio::time::Instant::now() - period);
        }
        {
            let mut positions = lock(&positions);
            positions.outstanding.insert(current);
            positions.next = positions.next.max(current + 1);
        }
        summary.delivered += 1;
        let submitted = tokio::select! {
            submitted = ingest.submit(deliver(current, recorded)) => submitted,
            _ = shutdown.changed() => {
                // The delivery was dropped unsettled: it stays outstanding for the offset.
                break;
            }
        };
        if submitted.is_err() {
            break;
        }
    }
    lock(&positions).write(true);
    let stopping = *shutdown.borrow();
    status.set(
        if stopping {
            ConnectorState::Stopped
        } else {
            ConnectorState::Finished
        },
        None,
    );
    Ok(summary)
}

/// A comment or bad line counts as acknowledged once every line before it is.
fn mark_skipped(positions: &Mutex<Positions>, index: usize) {
    let mut positions = lock(positions);
    positions.next = positions.next.max(index + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_text_and_base64_payloads_with_properties() {
        let text =
            parse_line(r#"{"properties": {"em": "aes_gcm", "a": "b"}, "payload": "{\"x\":1}"}"#)
                .unwrap()
                .unwrap();
        assert_eq!(
            text.properties,
            [("a".into(), "b".into()), ("em".into(), "aes_gcm".into())]
        );
        assert_eq!(text.payload, br#"{"x":1}"#);
        let bytes = parse_line(r#"{"payload_base64": "AAEC/w=="}"#)
            .unwrap()
            .unwrap();
        assert_eq!(bytes.payload, [0, 1, 2, 255]);
        assert!(bytes.properties.is_empty());
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        assert_eq!(parse_line("   "), Ok(None));
        assert_eq!(parse_line("# a comment"), Ok(None));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("{", "not a recorded message"),
            (r#"{"payload": "a", "payload_base64": "YQ=="}"#, "both"),
            (r#"{"properties": {}}"#, "no payload"),
            (r#"{"payload_base64": "!!"}"#, "not base64"),
            (
                r#"{"payload": "a", "properties": {"em": 1}}"#,
                "property \"em\" is 1",
            ),
            (r#"{"payload": "a", "extra": 1}"#, "unknown field `extra`"),
        ];
        for (line, expected) in cases {
            let error = parse_line(line).unwrap_err();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn offsets_round_trip_and_a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offset.json");
        assert_eq!(read_offset(&file), Ok(0));
        write_offset(&file, 41).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\"next_line\": 42}\n"
        );
        assert_eq!(read_offset(&file), Ok(41));
        std::fs::write(&file, "garbage").unwrap();
        assert!(
            read_offset(&file)
                .unwrap_err()
                .contains("remove it to replay from the start")
        );
    }
}
