//! The part of a link the command path holds: the way into the current connection, which
//! the session opens and closes ([`super::session`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// One publish the command path asks for, answered when the broker acknowledged it (QoS 1)
/// or it was written (QoS 0).
pub struct Outgoing {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The answer: an error says why it was not acknowledged.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// The part of a link the command path holds: the way into the current connection.
pub struct LinkHandle {
    current: tokio::sync::watch::Sender<Option<Live>>,
    /// How long a command waits for a connection.
    reconnect_wait: Duration,
    /// The number of the latest connection (they count from 1).
    connections: std::sync::atomic::AtomicU64,
}

/// A connection taking commands, and its number.
#[derive(Clone)]
struct Live {
    number: u64,
    requests: mpsc::Sender<Outgoing>,
}

impl LinkHandle {
    /// A handle with no connection yet, whose commands wait up to `reconnect_wait` for one.
    pub fn new(reconnect_wait: Duration) -> Arc<Self> {
        Arc::new(LinkHandle {
            current: tokio::sync::watch::Sender::new(None),
            reconnect_wait,
            connections: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Waits until the link has a live connection, up to its `reconnect_wait`: a command
    /// whose link is reconnecting waits for it rather than failing its attempts while the
    /// broker is away.
    pub async fn connected(&self) -> Result<(), String> {
        let is_live = |live: &Option<Live>| live.as_ref().is_some_and(|l| !l.requests.is_closed());
        if is_live(&self.current.borrow()) {
            return Ok(());
        }
        let mut current = self.current.subscribe();
        let live = current.wait_for(is_live);
        match tokio::time::timeout(self.reconnect_wait, live).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "the link has had no connection for {} s (command_reconnect_wait_s)",
                self.reconnect_wait.as_secs()
            )),
        }
    }

    /// Hands `outgoing` to the current connection, whose publishes go out in the order they
    /// are handed over; returns the connection's number. An error when there is none (call
    /// [`connected`](Self::connected) first), it was lost meanwhile, or it is not connection
    /// `on` (the one a lane's earlier publishes went out on, which must not be overtaken).
    pub async fn publish(&self, outgoing: Outgoing, on: Option<u64>) -> Result<u64, String> {
        let live = self.current.borrow().clone();
        let Some(live) = live.filter(|live| on.is_none_or(|on| on == live.number)) else {
            return Err("the link's connection was lost".into());
        };
        live.requests
            .send(outgoing)
            .await
            .map_err(|_| "the link's connection was lost".to_owned())?;
        Ok(live.number)
    }

    /// Makes `requests` the current connection's way in (`None`: there is none).
    pub(super) fn set(&self, requests: Option<mpsc::Sender<Outgoing>>) {
        let live = requests.map(|requests| Live {
            number: self
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            requests,
        });
        self.current.send_replace(live);
    }
}
