//! What connectors hand the pipeline: a [`Delivery`] with the [`Acker`] that settles it with
//! its transport once the pipeline is done with it.

use std::fmt;

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

    /// Whether settling it tells the transport nothing (a delivery it does not redeliver).
    pub fn settles_nothing(&self) -> bool {
        self.0.is_none()
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
