//! Connectors: transports that receive vendor messages and acknowledge them once the pipeline
//! is done with them.
//!
//! A connector turns each message it receives into a [`Delivery`]: the raw bytes, the
//! transport properties the dialect needs (Tuya's `em`, an AMQP `topic`, …) and an
//! [`Acker`] that settles it with the transport. It hands deliveries to the pipeline's
//! [`Ingest`](crate::pipeline::Ingest), which waits while the pipeline is full: that wait is
//! the backpressure a connector passes on to its broker (by not granting more credit, not
//! reading further, …).

pub mod replay;

use std::fmt;
use std::sync::Arc;

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with (processed, or stored as a dead letter): the transport may forget it.
    Ack,
    /// Not done, and worth another try: the transport should deliver it again later.
    Retry,
}

/// Settles one delivery with its transport. Dropping it unsettled settles nothing: the
/// transport delivers the message again (after a reconnect or restart), which is the safe
/// side when the service stops with the event still in flight.
pub struct Acker(Option<Box<dyn FnOnce(Settle) + Send>>);

impl Acker {
    /// An acker calling `settle` once.
    pub fn new(settle: impl FnOnce(Settle) + Send + 'static) -> Self {
        Acker(Some(Box::new(settle)))
    }

    /// An acker for a transport that has nothing to acknowledge.
    pub fn none() -> Self {
        Acker(None)
    }

    /// Settles the delivery.
    pub fn settle(mut self, how: Settle) {
        if let Some(settle) = self.0.take() {
            settle(how);
        }
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Acker(pending)"
        } else {
            "Acker(settled)"
        })
    }
}

/// One message as a connector received it.
#[derive(Debug)]
pub struct Delivery {
    /// The message exactly as received.
    pub payload: Vec<u8>,
    /// Transport properties, in the order the transport gave them.
    pub properties: Vec<(String, String)>,
    /// Settles it with the transport.
    pub acker: Acker,
}

/// What a connector is doing, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorState {
    /// Starting or connecting.
    Starting,
    /// Receiving.
    Running,
    /// Done: a replay that reached the end of its file.
    Finished,
    /// Stopped by an error it cannot recover from.
    Failed,
    /// Stopped for shutdown.
    Stopped,
}

/// A connector's name, shared by everything that reports on it.
pub type ConnectorName = Arc<str>;
