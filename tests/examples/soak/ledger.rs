//! What was offered, and what the receivers and the dead-letter store saw of it.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Mutex;

use iotrules::store::{DeadLetterRecord, DeadLetterSink};
use iotrules_tests::pulsar_broker::{MessageId, sequence};

/// The three connectors of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Link {
    Tuya,
    Ali,
    Mqtt,
}

pub(crate) const LINKS: [Link; 3] = [Link::Tuya, Link::Ali, Link::Mqtt];

impl Link {
    /// The connector's name in the service.
    pub(crate) fn connector(self) -> &'static str {
        match self {
            Link::Tuya => "tuya",
            Link::Ali => "ali",
            Link::Mqtt => "m",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Link::Tuya => "tuya-pulsar",
            Link::Ali => "alibaba-amqp",
            Link::Mqtt => "mqtt",
        }
    }

    /// The command path its rules send through.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Link::Tuya | Link::Ali => "out",
            Link::Mqtt => "m",
        }
    }

    pub(crate) fn letter(self) -> char {
        match self {
            Link::Tuya => 't',
            Link::Ali => 'a',
            Link::Mqtt => 'm',
        }
    }

    /// The device's name at the vendor: `ts-07` (stable) or `tf-47` (flaky).
    pub(crate) fn device_name(self, index: usize, flaky: bool) -> String {
        let group = if flaky { 'f' } else { 's' };
        format!("{}{group}-{index:02}", self.letter())
    }

    /// The device id in events and commands (Alibaba's is `{product}.{name}`).
    pub(crate) fn device_id(self, index: usize, flaky: bool) -> String {
        match self {
            Link::Ali => format!("a1Pk.{}", self.device_name(index, flaky)),
            _ => self.device_name(index, flaky),
        }
    }

    /// The link and device index of a device id, as [`Link::device_id`] makes them.
    pub(crate) fn parse_device(id: &str) -> Option<(Link, usize)> {
        let name = id.strip_prefix("a1Pk.").unwrap_or(id);
        let link = match name.chars().next()? {
            't' => Link::Tuya,
            'a' => Link::Ali,
            'm' => Link::Mqtt,
            _ => return None,
        };
        let index = name.split_once('-')?.1.parse().ok()?;
        Some((link, index))
    }
}

/// What a message is meant to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A stable device's numbered event: must reach its command.
    Stable,
    /// A flaky device's numbered event: its command, or a plugin dead letter.
    Flaky,
    /// Tampered or garbage: must be a dead letter.
    Bad,
}

/// One message offered to a broker.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    pub(crate) link: Link,
    pub(crate) device: usize,
    pub(crate) seq: u64,
    pub(crate) class: Class,
    /// Where the Pulsar broker keeps it (its ACKs are recorded by id).
    pub(crate) pulsar: Option<MessageId>,
}

/// Every message offered, findable by its payload (dead letters carry it verbatim) and by
/// its device and seq (commands echo them).
#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) offers: Vec<Offer>,
    pub(crate) by_payload: HashMap<u64, usize>,
    pub(crate) by_seq: HashMap<(Link, usize, u64), usize>,
}

impl Ledger {
    pub(crate) fn record(&mut self, payload: &[u8], offer: Offer) {
        let index = self.offers.len();
        if offer.class != Class::Bad {
            self.by_seq
                .insert((offer.link, offer.device, offer.seq), index);
        }
        self.by_payload.insert(digest(payload), index);
        self.offers.push(offer);
    }
}

pub(crate) fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// A command as a receiver saw it, with [`sequence`] at its arrival (0 when not stamped).
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) device: String,
    pub(crate) seq: Option<u64>,
    pub(crate) at: u64,
}

/// A dead letter as stored, with [`sequence`] at the store.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    pub(crate) connector: String,
    pub(crate) kind: String,
    pub(crate) payload: u64,
    pub(crate) at: u64,
}

/// The service's dead-letter store: keeps what the soak needs of each letter and stamps it,
/// so that a letter can be compared with the broker's ACK of its message.
#[derive(Default)]
pub(crate) struct StampedLetters(Mutex<Vec<Letter>>);

impl DeadLetterSink for StampedLetters {
    fn store(&self, letters: &[DeadLetterRecord]) -> Result<(), String> {
        let mut stored = self.0.lock().unwrap();
        for letter in letters {
            stored.push(Letter {
                connector: letter.connector.to_string(),
                kind: letter.kind.clone(),
                payload: digest(&letter.payload),
                at: sequence(),
            });
        }
        Ok(())
    }
}

impl StampedLetters {
    pub(crate) fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub(crate) fn all(&self) -> Vec<Letter> {
        self.0.lock().unwrap().clone()
    }
}
