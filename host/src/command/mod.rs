//! Command paths: where the commands rules and plugins emit go, and how each is confirmed.
//!
//! A path is named in the config (`[[command_path]]`) and chosen by a command's `via` (or
//! its rule's or step's default). The pipeline queues commands on their path
//! ([`CommandPath::enqueue_all`]) in the order the rules emitted them, a group of events' at
//! a time; a path sends the commands for one device in that order (each device keeps to one
//! lane), retries a failed attempt with backoff, and reports through the returned
//! [`Confirmation`] whether the command was delivered (printed, a 2xx answer, a PUBACK). The
//! pipeline acknowledges an event only when every one of its commands is confirmed. A full
//! lane makes `enqueue_all` wait, which holds the worker's settle task and, once the task is
//! a few groups behind, the worker, and through the pipeline's bounded queues the connector:
//! a slow path slows intake rather than growing memory.
//!
//! A lane sends one command at a time and waits for its confirmation, unless its transport
//! keeps order on one connection and confirms each command by its own answer (an MQTT link,
//! `crate::connector::mqtt`):
//! then up to a window of commands are in flight together, confirmed in order, and sent again
//! in order after a failure ([`lanes`](self::lanes)). The HTTP paths do not pipeline (see
//! [`Transport::send`]).

pub mod alibaba;
pub mod http;
mod lanes;
mod log;
pub mod tuya;
mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

pub use self::lanes::Lanes;
pub use self::log::LogTransport;
use crate::config::{ConfigError, Table};
use crate::event::Command;
use crate::time::Clock;

/// Why a command was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command path \"{path}\": {reason}")]
pub struct CommandError {
    /// The path.
    pub path: String,
    /// What went wrong (the last attempt's error).
    pub reason: String,
}

/// Resolves when the path has delivered the command, or given up on it.
pub(crate) type Confirmation = oneshot::Receiver<Result<(), CommandError>>;

/// The path's side of a [`Confirmation`]: how it answers for one command.
pub type Confirmer = oneshot::Sender<Result<(), CommandError>>;

/// A configured destination for commands.
pub trait CommandPath: Send + Sync {
    /// Its name.
    fn name(&self) -> &str;

    /// Queues `commands` in order, each behind the earlier commands for its device, and
    /// answers each through its [`Confirmer`]; waits while a lane is full.
    ///
    /// The pipeline hands over the commands of a group of events at once, from its settle
    /// task: a lane is woken once per group rather than once per command, and by a task of
    /// the runtime its own task runs on rather than by a worker thread, which would have to
    /// wake one of the runtime's threads for it.
    fn enqueue_all(&self, commands: Vec<(Command, Confirmer)>) -> BoxFuture<'_, ()>;

    /// Queues one command, as [`enqueue_all`](Self::enqueue_all), from outside async code.
    fn enqueue(&self, command: Command) -> Confirmation {
        let (confirmer, confirmation) = oneshot::channel();
        futures::executor::block_on(self.enqueue_all(vec![(command, confirmer)]));
        confirmation
    }
}

/// Why one attempt at delivering a command failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, naming the peer's answer where there is one.
    pub reason: String,
    /// `false` when the peer refused the command itself (a 4xx answer, a vendor error code
    /// that says the request is wrong): retrying would only be refused again, so the command
    /// fails at once.
    pub retryable: bool,
}

impl Failure {
    /// A failure another attempt may get past: a lost connection, a timeout, a 5xx answer.
    pub fn retry(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// A refusal that retrying would only repeat.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            retryable: false,
        }
    }
}

/// One way of delivering a command: the protocol part of a path.
pub trait Transport: Send + Sync + 'static {
    /// Waits until an attempt can start: a transport with a connection of its own (an MQTT
    /// link) waits here for it, within a bound of its own, so that an outage delays commands
    /// instead of failing them at once; the attempt's time-out starts after. An error fails
    /// the attempt.
    fn ready(&self) -> impl Future<Output = Result<(), Failure>> + Send {
        std::future::ready(Ok(()))
    }

    /// One attempt at delivering `command`.
    fn deliver(&self, command: &Command) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Starts one attempt at delivering `command` and returns its confirmation still to come,
    /// so that a lane may send the next before this one is confirmed (up to its
    /// [`PathSettings::window`]).
    ///
    /// A transport that overrides this promises what pipelining needs: the attempts go out
    /// on one connection in the order of the calls; each is confirmed by the peer's answer to
    /// that attempt alone (an MQTT PUBACK of its packet id); and when the connection ends,
    /// every attempt on it still unconfirmed fails. `on` is the connection the lane's
    /// earlier unconfirmed attempts went out on ([`Sent::connection`]): when that one is
    /// gone, the attempt must fail (retryable) rather than go out on the next connection
    /// ahead of them, since they will be sent again, in order, before it.
    ///
    /// The default delivers the whole attempt ([`deliver`](Self::deliver)) before it
    /// returns, so a lane over it sends one command at a time whatever its window. The HTTP
    /// paths keep it: hyper's HTTP/1.1 connection takes a request only once the previous
    /// answer is read (no HTTP/1.1 pipelining), requests on parallel connections may be
    /// carried out in any order, and a command is a POST, which a client must not send again
    /// on its own once a later one may have been carried out (RFC 9112, 9.3.2).
    fn send(
        &self,
        command: &Command,
        on: Option<u64>,
    ) -> impl Future<Output = Result<Sent, Failure>> + Send {
        let _ = on;
        async move {
            self.deliver(command).await?;
            Ok(Sent::confirmed())
        }
    }
}

/// The confirmation of an attempt still to come.
pub(crate) type Confirming = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// An attempt handed to the peer: what [`Transport::send`] returns.
pub struct Sent {
    /// The connection it went out on, as the transport numbers them (0 for a transport that
    /// delivers each attempt whole).
    pub connection: u64,
    /// Resolves when the peer has confirmed the attempt, or with why it failed.
    pub confirmed: Confirming,
}

impl Sent {
    /// An attempt delivered and confirmed already.
    pub fn confirmed() -> Self {
        Sent {
            connection: 0,
            confirmed: Box::pin(std::future::ready(Ok(()))),
        }
    }
}

/// Settings shared by every path.
#[derive(Debug, Clone, Copy)]
pub struct PathSettings {
    /// Lanes sending in parallel.
    pub lanes: usize,
    /// Commands waiting per lane.
    pub queue: usize,
    /// Limit of one attempt.
    pub timeout: Duration,
    /// Further attempts after a failure.
    pub retries: u32,
    /// Attempts started per second at most, over all lanes; 0 is no limit.
    pub rate_per_s: f64,
    /// Commands of one lane sent and not yet confirmed, at most (see [`Transport::send`]):
    /// 1 for the HTTP paths, an MQTT link's `command_window`.
    pub window: usize,
}

/// Every kind of command path, one line each. (A device MQTT link is a connector that is
/// also a command path: see `crate::connector::Connector::start`.)
pub(crate) const KINDS: &[&Kind] = &[&log::KIND, &webhook::KIND, &tuya::KIND, &alibaba::KIND];

/// A kind of command path: its name in the config and how it reads its table.
pub struct Kind {
    /// `kind = "…"`.
    pub name: &'static str,
    /// Reads a table of this kind: its own keys and the ones every path shares
    /// ([`SharedConfig`]).
    pub read: fn(&Table) -> Result<Box<dyn Configured>, ConfigError>,
}

/// A command path as its kind read it from the config, ready to start. Every kind is one
/// through [`PathConfig`].
pub trait Configured: Send + Sync {
    /// Its lanes, queues, time-out and retries.
    fn settings(&self) -> PathSettings;

    /// The files it reads (a CA file), each with what it is: no rule may grant a plugin a
    /// directory that holds one.
    fn files(&self) -> Vec<(std::path::PathBuf, &'static str)>;

    /// Starts the path named `name` on `runtime`; the vendor APIs sign requests and time
    /// their tokens with `clock` (the service's, pinned in tests).
    fn start(
        &self,
        name: &str,
        clock: &Clock,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Arc<dyn CommandPath>>;
}

/// What a kind's settings tell the path's [`Lanes`]: how many, and the transport they send
/// with.
pub(crate) trait PathConfig: Send + Sync {
    /// The transport of the kind.
    type Transport: Transport;

    /// Its lanes, queues, time-out and retries.
    fn lanes(&self) -> PathSettings;

    /// A PEM file of CA certificates it trusts besides the system's.
    fn ca_file(&self) -> Option<&std::path::Path> {
        None
    }

    /// The transport of the path named `name`, on `clock`; an error says why it cannot be
    /// made (an unreadable CA file).
    fn transport(&self, name: &str, clock: &Clock) -> Result<Self::Transport, String>;
}

impl<T: PathConfig> Configured for T {
    fn settings(&self) -> PathSettings {
        self.lanes()
    }

    fn files(&self) -> Vec<(std::path::PathBuf, &'static str)> {
        self.ca_file()
            .map(|file| (file.to_owned(), "a command path's CA file"))
            .into_iter()
            .collect()
    }

    fn start(
        &self,
        name: &str,
        clock: &Clock,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Arc<dyn CommandPath>> {
        let transport = self
            .transport(name, clock)
            .map_err(|reason| anyhow::anyhow!("command_path \"{name}\": {reason}"))?;
        Ok(Lanes::start(name, transport, self.lanes(), runtime))
    }
}

/// A `[[command_path]]` read by its kind.
pub struct Planned {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// The path, to start.
    pub path: Box<dyn Configured>,
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Reads a `[[command_path]]` table by the kind it names.
pub fn plan(table: &Table) -> Result<Planned, ConfigError> {
    let Some(kind) = KINDS.iter().find(|kind| kind.name == table.kind) else {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        return Err(table.unknown_kind(&names));
    };
    Ok(Planned {
        name: table.name.clone(),
        kind: kind.name,
        path: (kind.read)(table)?,
    })
}

/// The keys every command path takes.
#[derive(serde::Deserialize)]
#[serde(default)]
pub(crate) struct SharedConfig {
    /// Attempts started per second at most, over all lanes (0, the default: no limit). The
    /// vendors' APIs throttle per account; this keeps a burst of commands under their limit.
    pub rate_per_s: f64,
    /// How long one delivery attempt may take, in milliseconds.
    pub timeout_ms: u64,
    /// Further attempts after a failed one (with backoff), before the command fails.
    pub retries: u32,
    /// Commands waiting to be sent, per lane, before the workers wait.
    pub queue: usize,
    /// Lanes sending in parallel; commands for one device always take the same lane, in order.
    pub lanes: usize,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            rate_per_s: 0.0,
            timeout_ms: 5_000,
            retries: 2,
            queue: 256,
            lanes: 4,
        }
    }
}

impl SharedConfig {
    /// The settings, checked.
    pub fn settings(&self, table: &Table) -> Result<PathSettings, ConfigError> {
        if self.lanes == 0 || self.queue == 0 {
            return Err(table.invalid("lanes and queue must be at least 1"));
        }
        if !(self.rate_per_s.is_finite() && self.rate_per_s >= 0.0) {
            return Err(table.invalid("rate_per_s must be 0 (no limit) or more"));
        }
        Ok(PathSettings {
            lanes: self.lanes,
            queue: self.queue,
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries,
            rate_per_s: self.rate_per_s,
            window: 1,
        })
    }
}

/// A path's rate limit, shared by its lanes: a token bucket holding one second's worth of
/// attempts (at least one), refilled at `rate_per_s`. An attempt waits for its slot, so a
/// burst of commands goes out at the vendor's pace instead of being throttled and retried.
#[derive(Debug)]
pub(crate) struct RateLimit {
    /// Time between two attempts at the sustained rate.
    interval: Duration,
    /// How far ahead of the sustained pace a burst may run (the bucket size less one).
    burst: Duration,
    /// When the bucket will be full again at the sustained pace (the "theoretical arrival
    /// time" of the generic cell rate algorithm); `None` before the first attempt.
    full_at: std::sync::Mutex<Option<Instant>>,
}

impl RateLimit {
    /// A limit of `rate_per_s` attempts per second; `None` for 0 (no limit).
    pub fn new(rate_per_s: f64) -> Option<Self> {
        if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate_per_s);
        let bucket = rate_per_s.floor().max(1.0);
        Some(RateLimit {
            interval,
            burst: interval.mul_f64(bucket - 1.0),
            full_at: std::sync::Mutex::new(None),
        })
    }

    /// Takes the next slot for an attempt wanting to start at `now`: when it may start.
    pub fn slot(&self, now: Instant) -> Instant {
        let mut full_at = crate::sync::lock(&self.full_at);
        let pace = full_at.map_or(now, |at| at.max(now));
        *full_at = Some(pace + self.interval);
        pace.checked_sub(self.burst)
            .map_or(now, |start| start.max(now))
    }

    /// Waits for the next slot.
    pub async fn wait(&self) {
        let at = self.slot(Instant::now());
        tokio::time::sleep_until(at.into()).await;
    }
}

/// The configured paths by name.
#[derive(Clone, Default)]
pub struct CommandPaths {
    paths: HashMap<String, Arc<dyn CommandPath>>,
}

impl CommandPaths {
    /// Starts every planned path on `runtime`, with `clock`.
    pub fn start(
        planned: &[Planned],
        clock: &Clock,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let mut paths = CommandPaths::default();
        for path in planned {
            paths.insert(path.path.start(&path.name, clock, runtime)?);
        }
        Ok(paths)
    }

    /// Adds a path (replacing one of the same name).
    pub fn insert(&mut self, path: Arc<dyn CommandPath>) {
        self.paths.insert(path.name().to_owned(), path);
    }

    /// A path by name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn CommandPath>> {
        self.paths.get(name)
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.paths.keys().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_s_defaults_are_four_lanes_of_256_five_seconds_and_two_retries() {
        let text = "[[command_path]]\nname = \"out\"\nkind = \"log\"\n";
        let config = crate::config::Config::parse(std::path::Path::new("x.toml"), text).unwrap();
        let path = plan(&config.command_paths[0]).unwrap();
        let settings = path.path.settings();
        assert_eq!(
            (settings.lanes, settings.queue, settings.window),
            (4, 256, 1)
        );
        assert_eq!(settings.timeout, Duration::from_secs(5));
        assert_eq!((settings.retries, settings.rate_per_s), (2, 0.0));
    }

    #[test]
    fn the_rate_limit_lets_a_bucket_through_then_spaces_attempts_at_the_rate() {
        let limit = RateLimit::new(2.0).expect("a limit");
        let start = Instant::now();
        let offsets: Vec<Duration> = (0..5).map(|_| limit.slot(start) - start).collect();
        let ms = Duration::from_millis;
        assert_eq!(offsets, [ms(0), ms(0), ms(500), ms(1000), ms(1500)]);
        // After a quiet second and a half the bucket is full again.
        let later = start + ms(3500);
        let offsets: Vec<Duration> = (0..3).map(|_| limit.slot(later) - later).collect();
        assert_eq!(offsets, [ms(0), ms(0), ms(500)]);
        assert!(RateLimit::new(0.0).is_none());
    }
}
