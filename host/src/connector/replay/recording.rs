//! The recorded messages: reading them a line at a time, the positions acknowledged, the
//! offset file, and the run that feeds them to the pipeline.

use std::collections::BTreeSet;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::{ReplaySettings, ReplaySummary};
use crate::pipeline::Ingest;
use crate::pipeline::{Acker, Delivery, Settle};
use crate::status::{ConnectorHandle, ConnectorState, LastErrors};
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
pub(crate) fn parse_line(line: &str) -> Result<Option<Recorded>, String> {
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
pub(crate) fn read_offset(file: &Path) -> Result<usize, String> {
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
    let place_name = format!("connector \"{}\"", ingest.connector());
    let fail = |reason: String| {
        status.set(ConnectorState::Failed, Some(reason.clone()));
        errors.push(place_name.clone(), &reason);
        reason
    };
    let cannot_read =
        |e: std::io::Error| fail(format!("cannot read {}: {e}", settings.file.display()));
    let mut reader = Reader::open(&settings.file).await.map_err(cannot_read)?;
    let mut retries = Reader::open(&settings.file).await.map_err(cannot_read)?;
    let start = match &settings.offset_file {
        Some(file) => read_offset(file).map_err(fail)?,
        None => 0,
    };
    reader.skip_to(start).await.map_err(cannot_read)?;
    // A line that is not a recorded message: counted, logged and reported, then passed over.
    let report_bad = |index: usize, reason: &str| {
        let message = format!("{}:{}: {reason}", settings.file.display(), index + 1);
        tracing::error!(connector = ingest.connector(), "Line skipped: {message}");
        errors.push(place_name.clone(), &message);
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
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Place>();
    let (settled_tx, mut settled_rx) = watch::channel(());
    let mut summary = ReplaySummary::default();
    let period = (settings.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / settings.rate));
    let mut next_at = tokio::time::Instant::now();
    status.set(ConnectorState::Running, None);

    let deliver = |place: Place, recorded: Recorded| {
        let positions = positions.clone();
        let retry_tx = retry_tx.clone();
        let settled_tx = settled_tx.clone();
        let acker = Acker::new(move |how| {
            let mut positions = lock(&positions);
            match how {
                Settle::Ack => {
                    positions.outstanding.remove(&place.index);
                    positions.write(false);
                }
                Settle::Retry => {
                    let _ = retry_tx.send(place);
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

    let mut at_end = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Redeliveries first, after a pause so a failing path is not hammered.
        while let Ok(place) = retry_rx.try_recv() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let line = retries.read_at(place).await.map_err(cannot_read)?;
            match line.map(|line| line.text.and_then(|t| parse_line(&t))) {
                Some(Ok(Some(recorded))) => {
                    summary.retried += 1;
                    if ingest.submit(deliver(place, recorded)).await.is_err() {
                        return Ok(summary);
                    }
                }
                // The file changed under the replay: the line is gone, not waited for.
                _ => {
                    summary.bad_lines += 1;
                    report_bad(
                        place.index,
                        "the message sent back for a retry is no longer on its line (the file \
                         changed); it is not delivered again",
                    );
                    lock(&positions).outstanding.remove(&place.index);
                }
            }
        }
        if at_end {
            if settings.repeat && summary.delivered > 0 {
                reader.rewind().await.map_err(cannot_read)?;
                at_end = false;
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
        let Some(line) = reader.next().await.map_err(cannot_read)? else {
            at_end = true;
            continue;
        };
        let place = line.place;
        let recorded = match line.text.and_then(|text| parse_line(&text)) {
            Ok(Some(recorded)) => recorded,
            Ok(None) => {
                mark_skipped(&positions, place.index);
                continue;
            }
            Err(reason) => {
                summary.bad_lines += 1;
                report_bad(place.index, &reason);
                mark_skipped(&positions, place.index);
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
            positions.outstanding.insert(place.index);
            positions.next = positions.next.max(place.index + 1);
        }
        summary.delivered += 1;
        let submitted = tokio::select! {
            submitted = ingest.submit(deliver(place, recorded)) => submitted,
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

/// The longest line a recording may hold, its line ending included. A longer line is
/// reported and skipped, and never held in memory whole.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Where a line is: its 0-based index, and the byte offset it starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    index: usize,
    offset: u64,
}

impl Place {
    /// The first line.
    const START: Place = Place {
        index: 0,
        offset: 0,
    };
}

/// A line as read: its text without the line ending, or why it cannot be used.
struct ReadLine {
    place: Place,
    text: Result<String, String>,
}

/// Reads a recording a line at a time, holding at most one line of it.
struct Reader {
    file: BufReader<File>,
    next: Place,
}

impl Reader {
    async fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Reader {
            file: BufReader::with_capacity(64 * 1024, File::open(path).await?),
            next: Place::START,
        })
    }

    /// Back to the first line.
    async fn rewind(&mut self) -> std::io::Result<()> {
        self.seek(Place::START).await
    }

    async fn seek(&mut self, place: Place) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(place.offset)).await?;
        self.next = place;
        Ok(())
    }

    /// Reads the line at `place` again (for a redelivery).
    async fn read_at(&mut self, place: Place) -> std::io::Result<Option<ReadLine>> {
        self.seek(place).await?;
        self.next().await
    }

    /// Passes over lines until the next one is line `index` (or the file ends).
    async fn skip_to(&mut self, index: usize) -> std::io::Result<()> {
        while self.next.index < index {
            if self.next().await?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The next line, or `None` at the end of the file.
    async fn next(&mut self) -> std::io::Result<Option<ReadLine>> {
        let place = self.next;
        let mut bytes = Vec::new();
        let mut length = 0usize;
        loop {
            let buffer = self.file.fill_buf().await?;
            if buffer.is_empty() {
                if length == 0 {
                    return Ok(None);
                }
                break;
            }
            let (take, ends) = match memchr::memchr(b'\n', buffer) {
                Some(at) => (at + 1, true),
                None => (buffer.len(), false),
            };
            length += take;
            if length <= MAX_LINE_BYTES {
                bytes.extend_from_slice(&buffer[..take]);
            } else {
                bytes = Vec::new();
            }
            self.file.consume(take);
            if ends {
                break;
            }
        }
        self.next = Place {
            index: place.index + 1,
            offset: place.offset + length as u64,
        };
        let text = if length > MAX_LINE_BYTES {
            Err(format!(
                "the line is {length} bytes long, over the limit of {MAX_LINE_BYTES}"
            ))
        } else {
            while bytes.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                bytes.pop();
            }
            String::from_utf8(bytes).map_err(|e| format!("the line is not UTF-8: {e}"))
        };
        Ok(Some(ReadLine { place, text }))
    }
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

    fn recording(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recording.jsonl");
        std::fs::write(&file, bytes).unwrap();
        (dir, file)
    }

    async fn read_all(reader: &mut Reader) -> Vec<(Place, Result<String, String>)> {
        let mut lines = Vec::new();
        while let Some(line) = reader.next().await.unwrap() {
            lines.push((line.place, line.text));
        }
        lines
    }

    fn at(index: usize, offset: u64) -> Place {
        Place { index, offset }
    }

    #[tokio::test]
    async fn a_recording_is_read_a_line_at_a_time_and_any_line_can_be_read_again() {
        let (_dir, file) = recording(b"a\r\nbb\n\nlast");
        let mut reader = Reader::open(&file).await.unwrap();
        assert_eq!(
            read_all(&mut reader).await,
            [
                (at(0, 0), Ok("a".to_owned())),
                (at(1, 3), Ok("bb".to_owned())),
                (at(2, 6), Ok(String::new())),
                (at(3, 7), Ok("last".to_owned())),
            ]
        );
        let again = reader.read_at(at(1, 3)).await.unwrap().unwrap();
        assert_eq!((again.place, again.text), (at(1, 3), Ok("bb".to_owned())));
        reader.rewind().await.unwrap();
        reader.skip_to(3).await.unwrap();
        let last = reader.next().await.unwrap().unwrap();
        assert_eq!((last.place, last.text), (at(3, 7), Ok("last".to_owned())));
        assert!(reader.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_over_long_or_non_utf8_line_is_refused_and_the_lines_after_it_are_read() {
        let mut bytes = vec![b'x'; MAX_LINE_BYTES + 10];
        bytes.extend_from_slice(b"\n\xff\xfe\nnext\n");
        let (_dir, file) = recording(&bytes);
        let mut reader = Reader::open(&file).await.unwrap();
        let lines = read_all(&mut reader).await;
        assert_eq!(
            lines.len(),
            3,
            "{:?}",
            lines.iter().map(|l| l.0).collect::<Vec<_>>()
        );
        let long = lines[0].1.as_ref().unwrap_err();
        assert!(
            long.contains(&format!(
                "{} bytes long, over the limit",
                MAX_LINE_BYTES + 11
            )),
            "{long}"
        );
        let binary = lines[1].1.as_ref().unwrap_err();
        assert!(binary.contains("not UTF-8"), "{binary}");
        let offset = MAX_LINE_BYTES as u64 + 11 + 3;
        assert_eq!(lines[2], (at(2, offset), Ok("next".to_owned())));
    }
}
