//! The `log` path: each command as one line of JSON on standard output (or any writer).

use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{Configured, Failure, Kind, PathConfig, PathSettings, SharedConfig, Transport};
use crate::config::{ConfigError, Table};
use crate::event::{Command, Json};
use crate::time::Clock;

/// The `log` kind: it takes only the keys every path shares.
pub const KIND: Kind = Kind { name: "log", read };

fn read(table: &Table) -> Result<Box<dyn Configured>, ConfigError> {
    let settings = table.read::<SharedConfig>()?.settings(table)?;
    Ok(Box::new(LogPath(settings)))
}

/// A `log` path as configured.
struct LogPath(PathSettings);

impl PathConfig for LogPath {
    type Transport = LogTransport;

    fn lanes(&self) -> PathSettings {
        self.0
    }

    fn transport(&self, name: &str, _clock: &Clock) -> Result<LogTransport, String> {
        Ok(LogTransport::stdout(name))
    }
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Writes commands as JSON lines; a command is confirmed once its line is written and
/// flushed. Lines are written whole, one at a time, whatever the number of lanes.
pub struct LogTransport {
    path: String,
    out: Arc<Mutex<Writer>>,
}

/// The line written per command.
#[derive(Serialize)]
struct Line<'a> {
    path: &'a str,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<&'a str>,
    command: &'a str,
    params: &'a Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
}

impl LogTransport {
    /// Prints to standard output.
    pub fn stdout(path: &str) -> Self {
        Self::to_writer(path, Box::new(tokio::io::stdout()))
    }

    /// Writes to `out`.
    pub fn to_writer(path: &str, out: Writer) -> Self {
        LogTransport {
            path: path.to_owned(),
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// The line for `command`, with its newline.
    pub fn line(&self, command: &Command) -> String {
        let line = Line {
            path: &self.path,
            device: &command.device.id,
            product: command.device.product.as_deref(),
            command: &command.name,
            params: &command.params,
            reply_to: command.reply_to.as_deref(),
        };
        let mut text = serde_json::to_string(&line).unwrap_or_else(|e| {
            // Every field is a string or verbatim JSON: serializing cannot fail.
            format!("{{\"path\":\"{}\",\"error\":\"{e}\"}}", self.path)
        });
        text.push('\n');
        text
    }
}

impl Transport for LogTransport {
    async fn deliver(&self, command: &Command) -> Result<(), Failure> {
        let line = self.line(command);
        let mut out = self.out.lock().await;
        out.write_all(line.as_bytes())
            .await
            .map_err(|e| Failure::retry(format!("cannot write the command: {e}")))?;
        out.flush()
            .await
            .map_err(|e| Failure::retry(format!("cannot flush the command: {e}")))
    }
}
