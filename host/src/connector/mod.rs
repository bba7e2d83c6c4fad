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
//! [`Delivery`]: crate::pipeline::Delivery
//! [`Acker`]: crate::pipeline::Acker

pub mod amqp;
pub mod endpoint;
pub mod mqtt;
pub mod pulsar;
pub mod replay;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{ConfigError, ConnectorConfig, ConnectorKind};
use crate::metrics::Metrics;
use crate::pipeline::Ingest;
use crate::status::{ConnectorHandle, LastErrors};
use crate::time::Clock;

/// What a connector is doing, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorState {
    /// Starting or connecting.
    Starting,
    /// Receiving.
    Running,
    /// Lost its connection (or never got one) and trying again after a pause; the error
    /// says why.
    Reconnecting,
    /// Done: a replay that reached the end of its file.
    Finished,
    /// Stopped by an error it cannot recover from.
    Failed,
    /// Stopped for shutdown.
    Stopped,
}

/// A connector's name, shared by everything that reports on it.
pub type ConnectorName = Arc<str>;

/// What identifies a connector to its peer at `now_ms`, without secrets: the file of a
/// replay; the URL, topic, subscription or username of a cloud connector. `/status`, `check`
/// and `decode --connector` show it, so that a login the broker refuses can be compared with
/// what the vendor's console expects.
pub fn identity(
    config: &ConnectorConfig,
    now_ms: u64,
) -> Result<Vec<(String, String)>, ConfigError> {
    Ok(match config.kind {
        ConnectorKind::Replay => vec![(
            "file".into(),
            config
                .file
                .as_ref()
                .map(|f| f.as_str())
                .unwrap_or_default()
                .to_owned(),
        )],
        ConnectorKind::TuyaPulsar | ConnectorKind::TuyaBusiness => {
            pulsar::PulsarSettings::from_config(config)?.identity()
        }
        ConnectorKind::AlibabaAmqp | ConnectorKind::HuaweiAmqp => {
            amqp::AmqpSettings::from_config(config)?.identity(now_ms)
        }
        ConnectorKind::AlibabaMqtt | ConnectorKind::HuaweiMqtt | ConnectorKind::Mqtt => {
            mqtt::MqttSettings::from_config(config)?.identity(now_ms)
        }
    })
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
    pub fn disconnected(&self, error: &str, pause: Duration) {
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

/// Exponential backoff with jitter, for reconnecting.
///
/// Each pause doubles from `initial` up to `max`; the pause actually taken is drawn between
/// half and all of it ("equal jitter"), so replicas that lost the same broker at the same
/// moment do not come back in lockstep. [`reset`](Backoff::reset) after a connection that
/// worked.
#[derive(Debug, Clone)]
pub struct Backoff {
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
    pub fn next_pause(&mut self) -> Duration {
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
