//! The load: per connector, numbered messages at a paced rate with unpaced bursts, and
//! tampered or garbage ones, each recorded in the ledger before it is sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotrules_tests::mosquitto::Peer;
use iotrules_tests::pulsar_broker::{MessageId, PulsarBroker};
use iotrules_tests::rabbitmq::Publisher;

use crate::Settings;
use crate::ledger::{Class, Ledger, Link, Offer};
use crate::messages::{
    alibaba_message, alibaba_properties, mqtt_message, tamper_sign, tuya_keys, tuya_message,
};

/// What the load tasks share.
pub(crate) struct Load {
    pub(crate) settings: Settings,
    pub(crate) ledger: Mutex<Ledger>,
    /// Set when the load is to stop.
    pub(crate) done: AtomicBool,
    pub(crate) started: Instant,
}

impl Load {
    pub(crate) fn is_flaky(&self, device: usize) -> bool {
        device >= self.settings.devices - self.settings.flaky
    }

    pub(crate) fn record(&self, payload: &[u8], offer: Offer) {
        self.ledger.lock().unwrap().record(payload, offer);
    }

    pub(crate) fn offered(&self, link: Link) -> usize {
        self.ledger
            .lock()
            .unwrap()
            .offers
            .iter()
            .filter(|o| o.link == link)
            .count()
    }
}

/// The pacing of one connector's load: how many messages are due by now (paced, plus any
/// burst that came due), and whether a bad message is due.
pub(crate) struct Pace {
    pub(crate) sent: u64,
    pub(crate) bad: u64,
    /// Bursts of the connectors are staggered by this.
    pub(crate) offset: Duration,
}

impl Pace {
    pub(crate) fn new(link: Link) -> Pace {
        let offset = Duration::from_secs(match link {
            Link::Tuya => 10,
            Link::Ali => 25,
            Link::Mqtt => 15,
        });
        Pace {
            sent: 0,
            bad: 0,
            offset,
        }
    }

    /// (numbered messages to send now, bad messages to send now).
    pub(crate) fn due(&mut self, load: &Load) -> (u64, u64) {
        let elapsed = load.started.elapsed();
        let settings = &load.settings;
        let paced = (elapsed.as_secs_f64() * settings.rate as f64) as u64;
        let bursts = elapsed
            .checked_sub(self.offset)
            .map(|e| e.as_secs() / settings.burst_every.as_secs() + 1)
            .unwrap_or(0);
        let due = paced + bursts * settings.burst;
        let numbered = due.saturating_sub(self.sent);
        self.sent = due;
        let bad_due = elapsed.as_secs() / settings.bad_every.as_secs();
        let bad = bad_due.saturating_sub(self.bad);
        self.bad = bad_due;
        (numbered, bad)
    }
}

/// Round-robin over the devices, numbering each device's messages from 1.
pub(crate) struct Numbering {
    pub(crate) next_device: usize,
    pub(crate) seqs: Vec<u64>,
}

impl Numbering {
    pub(crate) fn new(devices: usize) -> Numbering {
        Numbering {
            next_device: 0,
            seqs: vec![0; devices],
        }
    }

    pub(crate) fn next(&mut self) -> (usize, u64) {
        let device = self.next_device;
        self.next_device = (self.next_device + 1) % self.seqs.len();
        self.seqs[device] += 1;
        (device, self.seqs[device])
    }
}

pub(crate) const TICK: Duration = Duration::from_millis(20);

/// What one tick of a connector's load sends: its numbered messages (device, seq, whether the
/// device is flaky) and the numbers of its bad ones (counted from 1).
pub(crate) struct Due {
    pub(crate) numbered: Vec<(usize, u64, bool)>,
    pub(crate) bad: std::ops::Range<u64>,
}

/// One connector's load over time: its [`Pace`] and [`Numbering`] on a [`TICK`].
pub(crate) struct Schedule {
    pace: Pace,
    numbering: Numbering,
    bad_count: u64,
    tick: tokio::time::Interval,
}

impl Schedule {
    pub(crate) fn new(link: Link, load: &Load) -> Schedule {
        Schedule {
            pace: Pace::new(link),
            numbering: Numbering::new(load.settings.devices),
            bad_count: 0,
            tick: tokio::time::interval(TICK),
        }
    }

    /// Waits for the next tick and says what is due then; `None` once the load is to stop.
    pub(crate) async fn next(&mut self, load: &Load) -> Option<Due> {
        if load.done.load(Ordering::SeqCst) {
            return None;
        }
        self.tick.tick().await;
        let (numbered, bad) = self.pace.due(load);
        let numbered = (0..numbered)
            .map(|_| {
                let (device, seq) = self.numbering.next();
                (device, seq, load.is_flaky(device))
            })
            .collect();
        let first_bad = self.bad_count + 1;
        self.bad_count += bad;
        Some(Due {
            numbered,
            bad: first_bad..self.bad_count + 1,
        })
    }
}

impl Offer {
    /// The numbered message `seq` of `device` on `link`.
    fn numbered(link: Link, device: usize, seq: u64, flaky: bool) -> Offer {
        Offer {
            link,
            device,
            seq,
            class: if flaky { Class::Flaky } else { Class::Stable },
            pulsar: None,
        }
    }

    /// The same offer, kept by the Pulsar broker as `id`.
    fn in_pulsar(self, id: MessageId) -> Offer {
        Offer {
            pulsar: Some(id),
            ..self
        }
    }

    /// The bad message number `n` on `link`.
    fn bad(link: Link, n: u64) -> Offer {
        Offer {
            link,
            device: 0,
            seq: n,
            class: Class::Bad,
            pulsar: None,
        }
    }
}

pub(crate) async fn tuya_load(load: Arc<Load>, broker: Arc<PulsarBroker>) {
    let keys = tuya_keys();
    let mut schedule = Schedule::new(Link::Tuya, &load);
    while let Some(due) = schedule.next(&load).await {
        for (device, seq, flaky) in due.numbered {
            let name = Link::Tuya.device_id(device, flaky);
            let (payload, properties) = tuya_message(&keys, &name, seq);
            let properties: Vec<(&str, &str)> =
                properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
            // One partition per device, as Tuya keeps a device's messages in order.
            let partition = device % 2;
            // Recorded first: the ledger must know a message before anything can happen to it.
            let mut ledger = load.ledger.lock().unwrap();
            let id = broker.publish(Some(partition), payload.as_bytes(), &properties);
            ledger.record(
                payload.as_bytes(),
                Offer::numbered(Link::Tuya, device, seq, flaky).in_pulsar(id),
            );
        }
        for bad_count in due.bad {
            let (payload, properties) = if bad_count.is_multiple_of(2) {
                let (sealed, properties) = tuya_message(&keys, "tampered", bad_count);
                (tamper_sign(&sealed).into_bytes(), properties)
            } else {
                (
                    format!("\u{0}\u{1} garbage {bad_count} not json").into_bytes(),
                    vec![("em", "aes_gcm".to_owned())],
                )
            };
            let properties: Vec<(&str, &str)> =
                properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut ledger = load.ledger.lock().unwrap();
            let id = broker.publish(None, payload.clone(), &properties);
            ledger.record(&payload, Offer::bad(Link::Tuya, bad_count).in_pulsar(id));
        }
    }
}

pub(crate) async fn alibaba_load(load: Arc<Load>, mut publisher: Publisher) {
    let mut schedule = Schedule::new(Link::Ali, &load);
    while let Some(due) = schedule.next(&load).await {
        let mut batch = Vec::new();
        for (device, seq, flaky) in due.numbered {
            let (body, properties) = alibaba_message(&Link::Ali.device_name(device, flaky), seq);
            load.record(&body, Offer::numbered(Link::Ali, device, seq, flaky));
            batch.push((body, properties));
        }
        for bad_count in due.bad {
            let body = format!("{{\"items\": {bad_count}").into_bytes();
            load.record(&body, Offer::bad(Link::Ali, bad_count));
            batch.push((
                body,
                alibaba_properties(&format!("garbage-{bad_count}"), "as-00"),
            ));
        }
        if !batch.is_empty() {
            publisher.send(batch).await;
        }
    }
}

/// Returns the publisher: dropped, it would lose what its client has not sent yet.
pub(crate) async fn mqtt_load(load: Arc<Load>, devices: Peer) -> Peer {
    let mut schedule = Schedule::new(Link::Mqtt, &load);
    while let Some(due) = schedule.next(&load).await {
        for (device, seq, flaky) in due.numbered {
            let name = Link::Mqtt.device_id(device, flaky);
            let payload = mqtt_message(&name, seq);
            load.record(
                payload.as_bytes(),
                Offer::numbered(Link::Mqtt, device, seq, flaky),
            );
            devices.publish(&format!("in/{name}"), payload).await;
        }
        for bad_count in due.bad {
            // A topic the link subscribes to (`in/#`) that does not fit `in/{device}`.
            let payload = format!("garbage {bad_count}");
            load.record(payload.as_bytes(), Offer::bad(Link::Mqtt, bad_count));
            devices.publish("in/not/a-device", payload).await;
        }
    }
    devices
}
