//! Connectors: transports that receive vendor messages and acknowledge them once the pipeline
//! is done with them.
//!
//! A connector turns each message it receives into a [`Delivery`]: the raw bytes, the
//! transport properties the dialect needs (Tuya's `em`, an AMQP `topic`, …) and an
//! [`Acker`] that settles it with the transport. It hands deliveries to the pipeline's
//! [`Ingest`](crate::pipeline::Ingest), which waits while the pipeline is full: that wait is
//! the backpressure a connector passes on to its broker (by not granting more credit, not
//! reading further, …). Those types are the pipeline's: it defines what it takes.
//!
//! Each kind of connector lives in its own module and owns its settings: the struct its
//! `[[connector]]` table is read into, their checks, the identity it presents to its peer,
//! and its run ([`Connector`]). [`KINDS`] lists the kinds, one line each; nothing else in
//! the crate names them.
//!
//! [`Delivery`]: crate::pipeline::Delivery
//! [`Acker`]: crate::pipeline::Acker

pub mod amqp;
pub mod mqtt;
pub mod pulsar;
pub mod replay;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::command::CommandPath;
use crate::config::{ConfigError, Expanded, Secret, Table};
use crate::dialect::{Dialect, DialectName, SignMode, json, tuya};
use crate::metrics::Metrics;
use crate::pipeline::Ingest;
use crate::status::{ConnectorHandle, ConnectorState, LastErrors};
use crate::time::Clock;

/// Every kind of connector, one line each.
pub(crate) const KINDS: &[&Kind] = &[&replay::KIND, &pulsar::KIND, &amqp::KIND, &mqtt::KIND];

/// A kind of connector (or a family of kinds sharing one transport): the names `kind = "…"`
/// takes for it, and how it reads its table.
pub struct Kind {
    /// Its names in the config.
    pub names: &'static [&'static str],
    /// Reads a table whose `kind` is one of [`names`](Self::names): the dialect of the
    /// messages it receives, and the connector ready to start.
    pub read: fn(&Table) -> Result<Configured, ConfigError>,
}

/// What a kind makes of its table: the dialect of the messages the connector receives, and
/// the connector.
pub type Configured = (Dialect, Box<dyn Connector>);

/// A kind's [`Kind::read`] from what its settings' own reading gives.
pub fn configured<S: Connector + 'static>(
    read: Result<(Dialect, S), ConfigError>,
) -> Result<Configured, ConfigError> {
    read.map(|(dialect, settings)| (dialect, Box::new(settings) as Box<dyn Connector>))
}

/// A connector as its kind read it from the config, ready to start (as often as a test
/// likes: starting does not consume it).
pub trait Connector: Send + Sync {
    /// What identifies the connector to its peer at `now_ms`, without secrets: the file of a
    /// replay; the URL, topic, subscription or username of a cloud connector. `/status`,
    /// `check` and `decode --connector` show it, so that a login the broker refuses can be
    /// compared with what the vendor's console expects.
    fn identity(&self, now_ms: u64) -> Vec<(String, String)>;

    /// The files it reads, each with what it is (`a replay file`): no rule may grant a
    /// plugin a directory that holds one.
    fn files(&self) -> Vec<(PathBuf, &'static str)> {
        Vec::new()
    }

    /// True for a connector that is also the command path of its name (a device MQTT link:
    /// what it publishes goes out on the connection it receives on).
    fn is_command_path(&self) -> bool {
        false
    }

    /// Starts the connector named `name` on `runtime`: the command path it also is, if it
    /// is one, and the task that receives, to run once the pipeline takes its deliveries.
    fn start(&self, name: &str, runtime: &tokio::runtime::Handle) -> Start;
}

/// A started connector ([`Connector::start`]).
pub struct Start {
    /// The command path of the connector's name, for a connector that is one: it must be in
    /// service before the pipeline that sends on it.
    pub command_path: Option<Arc<dyn CommandPath>>,
    /// Receives until the connector finishes or the service stops.
    pub run: Box<dyn FnOnce(Context) -> BoxFuture<'static, anyhow::Result<()>> + Send>,
}

impl Start {
    /// A connector that only receives, by `run`.
    pub fn receiving<F>(run: impl FnOnce(Context) -> F + Send + 'static) -> Start
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Start {
            command_path: None,
            run: Box::new(move |context| Box::pin(run(context))),
        }
    }
}

/// A `[[connector]]` read by its kind: what `run`, `check`, `decode` and `dead-letters
/// replay` start from.
pub struct Planned {
    /// Its name.
    pub name: String,
    /// Its kind, as the config names it.
    pub kind: &'static str,
    /// The decoder of its messages.
    pub dialect: Dialect,
    /// The connector.
    pub connector: Box<dyn Connector>,
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("dialect", &self.dialect.name())
            .finish_non_exhaustive()
    }
}

/// Reads a `[[connector]]` table by the kind it names.
pub fn plan(table: &Table) -> Result<Planned, ConfigError> {
    let Some((kind, name)) = KINDS.iter().find_map(|kind| {
        let name = kind.names.iter().find(|name| **name == table.kind)?;
        Some((kind, *name))
    }) else {
        let names: Vec<&str> = KINDS.iter().flat_map(|k| k.names.iter().copied()).collect();
        return Err(table.unknown_kind(&names));
    };
    let (dialect, connector) = (kind.read)(table)?;
    Ok(Planned {
        name: table.name.clone(),
        kind: name,
        dialect,
        connector,
    })
}

/// The dialect a connector's messages are in: `chosen` if it is one of `carried`, or the
/// first of `carried` when none is chosen. An empty `carried` takes any dialect, and one
/// must be chosen (a replay).
pub(crate) fn dialect_name(
    table: &Table,
    carried: &[DialectName],
    chosen: Option<DialectName>,
) -> Result<DialectName, ConfigError> {
    match (chosen, carried.first()) {
        (None, Some(implied)) => Ok(*implied),
        (None, None) => Err(table.invalid(format!("`dialect` is required for {}", table.a_kind()))),
        (Some(name), _) if carried.is_empty() || carried.contains(&name) => Ok(name),
        (Some(name), _) => Err(table.invalid(format!(
            "{} does not carry dialect \"{}\" (it carries {})",
            table.a_kind(),
            name.as_str(),
            carried
                .iter()
                .map(|d| format!("\"{}\"", d.as_str()))
                .collect::<Vec<_>>()
                .join(" or ")
        ))),
    }
}

/// The keys of the Tuya dialects, which the Tuya connectors take, and a replay of Tuya
/// messages.
#[derive(serde::Deserialize)]
pub(crate) struct TuyaKeys {
    /// The project's access id (shown, not needed to decrypt).
    #[serde(default)]
    pub access_id: Option<Expanded>,
    /// The project's access key (the decryption key).
    #[serde(default)]
    pub access_key: Option<Secret>,
    /// What to do with a message whose signature does not match (default `warn`, see
    /// [`default_sign`]).
    #[serde(default = "default_sign")]
    pub sign: SignMode,
}

impl TuyaKeys {
    /// The keys, checked.
    pub fn keys(&self, table: &Table) -> Result<tuya::Keys, ConfigError> {
        let key = self.access_key.as_ref().ok_or_else(|| {
            table.invalid("access_key is required for the Tuya dialects (the decryption key)")
        })?;
        let id = self.access_id.as_ref().map_or("", |id| id.as_str());
        tuya::Keys::new(id.to_owned(), key.expose())
            .map_err(|e| table.invalid(format!("access_key: {e}")))
    }
}

/// The dialect of a kind that carries one dialect needing no keys (`alibaba`, `huawei`,
/// `json`): the one it implies, or the same one named. `device_topic` is for `json`.
pub(crate) fn only_dialect(
    table: &Table,
    carried: DialectName,
    chosen: Option<DialectName>,
    body_base64: bool,
    device_topic: &Option<Expanded>,
) -> Result<Dialect, ConfigError> {
    dialect_name(table, &[carried], chosen)?.build(
        SignMode::Warn,
        body_base64,
        || Err(table.invalid(format!("{} carries no Tuya dialect", table.a_kind()))),
        || topic_template(table, device_topic),
    )
}

/// Where the `json` dialect finds the device in a topic (`device_topic`).
pub(crate) fn topic_template(
    table: &Table,
    device_topic: &Option<Expanded>,
) -> Result<json::TopicTemplate, ConfigError> {
    json::TopicTemplate::parse(table.required(device_topic, "device_topic")?)
        .map_err(|e| table.invalid(format!("device_topic: {e}")))
}

/// A connector's Tuya signature policy when the config names none: `warn`.
///
/// No official Tuya SDK checks the envelope's `sign` and the rule has not been confirmed on
/// live traffic, so a first deployment whose messages were signed differently would
/// otherwise send every real message to the dead letters. Mismatches are counted
/// (`iotrules_signature_mismatches_total`), logged once and shown in `/status`; `enforce` is
/// the setting once they stay at zero.
pub(crate) fn default_sign() -> SignMode {
    SignMode::Warn
}

/// A connector's CA file, as [`Connector::files`] names it.
pub fn ca_file(file: &Option<PathBuf>) -> Vec<(PathBuf, &'static str)> {
    file.iter()
        .map(|file| (file.clone(), "a connector's CA file"))
        .collect()
}

/// The default `buffer_bytes`: inbound messages read from the transport and not yet taken
/// by the pipeline, in bytes at most (MQTT links: what does not fit is dropped at QoS 0 or
/// left for the broker to send again at QoS 1; AMQP: credit times the largest message
/// accepted; Pulsar: the read-ahead times the largest message).
pub(crate) fn default_buffer_bytes() -> usize {
    16 * 1024 * 1024
}

/// What every connector runs with: where deliveries go and where it reports.
#[derive(Clone)]
pub struct Context {
    /// The pipeline's intake for this connector (it knows the connector's name and dialect).
    pub ingest: Ingest,
    /// Its line in `/status`.
    pub status: ConnectorHandle,
    /// Recent errors, for `/status`.
    pub errors: Arc<LastErrors>,
    /// Connection counters and the up gauge.
    pub metrics: Arc<Metrics>,
    /// Turns true when the service stops: the connector stops receiving and returns.
    pub shutdown: watch::Receiver<bool>,
    /// The clock credentials are stamped with (tests pin it to log in with fixed passwords).
    pub clock: Clock,
}

impl Context {
    /// The connector's name.
    pub fn name(&self) -> &str {
        self.ingest.connector()
    }

    /// `connector "NAME"`, as errors name it.
    pub fn place(&self) -> String {
        format!("connector \"{}\"", self.name())
    }

    /// Reports a working connection.
    pub fn connected(&self) {
        self.status.set(ConnectorState::Running, None);
        self.metrics.connects.with(&[self.name(), "ok"]).inc();
        self.metrics.connector_up.with(&[self.name()]).set(1);
    }

    /// Reports a failed or lost connection that will be tried again in `pause`.
    pub(crate) fn disconnected(&self, error: &str, pause: Duration) {
        let message = format!("{error} (trying again in {:.1} s)", pause.as_secs_f64());
        tracing::warn!(connector = %self.name(), "{message}");
        self.errors.push(self.place(), error);
        self.status.set(ConnectorState::Reconnecting, Some(message));
        self.metrics.connects.with(&[self.name(), "failed"]).inc();
        self.metrics.connector_up.with(&[self.name()]).set(0);
    }

    /// Reports an error the connector cannot recover from; it stops.
    pub fn failed(&self, error: &str) {
        tracing::error!(connector = %self.name(), "{error}");
        self.errors.push(self.place(), error);
        self.status
            .set(ConnectorState::Failed, Some(error.to_owned()));
        self.metrics.connector_up.with(&[self.name()]).set(0);
    }

    /// Reports a stop for shutdown.
    pub fn stopped(&self) {
        self.status.set(ConnectorState::Stopped, None);
        self.metrics.connector_up.with(&[self.name()]).set(0);
    }

    /// True once the service is stopping.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Waits `pause`, or less if the service stops meanwhile; true if it is stopping.
    pub async fn pause(&mut self, pause: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => self.stopping(),
            _ = self.shutdown.changed() => true,
        }
    }
}

/// How one session of a connector (a connection, or a client and its consumer) ended.
pub(crate) enum Ended {
    /// The service is stopping (or the pipeline closed): the connector returns.
    Stopping,
    /// The connection failed, was refused or went quiet: reconnect after a pause.
    Lost {
        /// Why.
        error: String,
        /// The session had been receiving (or lasted long enough): the backoff starts over.
        worked: bool,
    },
    /// A setting that no retry can fix (an unreadable `ca_file`): the connector fails.
    Fatal(String),
}

impl Ended {
    /// A session lost after it had been receiving.
    pub fn lost(error: impl Into<String>) -> Ended {
        Ended::Lost {
            error: error.into(),
            worked: true,
        }
    }

    /// A session that failed before it received anything.
    pub fn failed(error: impl Into<String>) -> Ended {
        Ended::Lost {
            error: error.into(),
            worked: false,
        }
    }
}

/// A transport's sessions, as [`reconnecting`] runs them.
pub(crate) trait Sessions: Send {
    /// One session, from connecting to its end.
    fn session(&mut self, context: &mut Context) -> impl Future<Output = Ended> + Send;
}

/// The supervisor every transport runs its sessions under: it runs one session after another
/// until the service stops. After a lost session it reports the error (`/status`, the log,
/// the metrics), waits `backoff`'s next pause (from the start again after a session that
/// worked; a shutdown cuts it short) and runs another; a fatal end fails the connector with
/// its error.
pub(crate) async fn reconnecting(
    context: &mut Context,
    mut backoff: Backoff,
    sessions: &mut impl Sessions,
) -> anyhow::Result<()> {
    loop {
        if context.stopping() {
            return Ok(());
        }
        match sessions.session(context).await {
            Ended::Stopping => return Ok(()),
            Ended::Fatal(error) => {
                context.failed(&error);
                anyhow::bail!(error);
            }
            Ended::Lost { error, worked } => {
                if worked {
                    backoff.reset();
                }
                let pause = backoff.next_pause();
                context.disconnected(&error, pause);
                if context.pause(pause).await {
                    return Ok(());
                }
            }
        }
    }
}

/// The TLS connector of a connection to `endpoint` when it wants TLS (the system's roots and
/// `ca_file`); an unreadable CA file fails the connector, as no retry can fix it.
pub(crate) fn tls_connector(
    context: &Context,
    endpoint: &crate::endpoint::Endpoint,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<Option<tokio_rustls::TlsConnector>> {
    if !endpoint.tls {
        return Ok(None);
    }
    match crate::tls::client_config(ca_file) {
        Ok(config) => Ok(Some(tokio_rustls::TlsConnector::from(config))),
        Err(e) => {
            let error = e.to_string();
            context.failed(&error);
            anyhow::bail!(error)
        }
    }
}

/// Exponential backoff with jitter, for reconnecting.
///
/// Each pause doubles from `initial` up to `max`; the pause actually taken is drawn between
/// half and all of it ("equal jitter"), so replicas that lost the same broker at the same
/// moment do not come back in lockstep. [`reset`](Backoff::reset) after a connection that
/// worked.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and doubling to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The pause before the next attempt.
    pub(crate) fn next_pause(&mut self) -> Duration {
        use rand::Rng as _;
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + ceiling
            .saturating_sub(half)
            .mul_f64(rand::rng().random::<f64>())
    }

    /// Starts again from `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let ceilings = [10, 20, 40, 80, 80, 80];
        for ceiling in ceilings {
            let pause = backoff.next_pause();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                pause >= ceiling / 2 && pause <= ceiling,
                "{pause:?} vs {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(10));
    }
}
