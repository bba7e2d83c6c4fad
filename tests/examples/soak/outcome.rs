//! The figures of each connector, worked out from the ledger and what was seen.

use std::collections::{BTreeMap, HashMap, HashSet};

use iotrules_tests::pulsar_broker::{MessageId, PulsarBroker};

use crate::ledger::{Class, LINKS, Ledger, Letter, Link, Seen};

/// One connector's figures for the table.
#[derive(Default, Debug, Clone)]
pub(crate) struct Figures {
    pub(crate) offered: u64,
    pub(crate) bad_offered: u64,
    /// Numbered messages whose command arrived, or (flaky devices) a plugin dead letter.
    pub(crate) processed: u64,
    pub(crate) acked: Option<u64>,
    pub(crate) dead_lettered: u64,
    /// Numbered messages that were neither processed nor dead-lettered.
    pub(crate) missing: u64,
    /// Their places in the ledger.
    pub(crate) missing_offers: Vec<usize>,
    /// Bad messages without a dead letter.
    pub(crate) bad_missing: u64,
    /// Dead letters for messages that should have gone through (stable devices), or that
    /// match nothing offered.
    pub(crate) unexpected_letters: u64,
    pub(crate) duplicates_dropped: u64,
    pub(crate) commands_received: u64,
    pub(crate) repeats: u64,
    pub(crate) order_violations: u64,
    pub(crate) early_acks: Option<u64>,
    pub(crate) devices_out_of_order: Vec<String>,
}

/// Per device: repeats and order violations of the commands seen, in arrival order.
pub(crate) fn order(commands: &[(Link, usize, u64)]) -> HashMap<(Link, usize), (u64, u64)> {
    let mut seen: HashMap<(Link, usize), (HashSet<u64>, u64)> = HashMap::new();
    let mut result: HashMap<(Link, usize), (u64, u64)> = HashMap::new();
    for &(link, device, seq) in commands {
        let (set, highest) = seen.entry((link, device)).or_default();
        let counts = result.entry((link, device)).or_default();
        if !set.insert(seq) {
            counts.0 += 1;
        } else if seq < *highest {
            counts.1 += 1;
        } else {
            *highest = seq;
        }
    }
    result
}

pub(crate) fn total_pulsar(ledger: &Ledger) -> u64 {
    ledger.offers.iter().filter(|o| o.pulsar.is_some()).count() as u64
}

pub(crate) fn pulsar_acked(ledger: &Ledger, pulsar: &PulsarBroker) -> u64 {
    ledger
        .offers
        .iter()
        .filter_map(|o| o.pulsar)
        .filter(|id| pulsar.is_acked(*id))
        .count() as u64
}

/// Works out each connector's figures from the ledger and what the receivers, the dead
/// letters and the Pulsar broker saw.
pub(crate) fn analyse(
    ledger: &Ledger,
    webhook: &[Seen],
    mqtt: &[(String, Vec<u8>)],
    letters: &[Letter],
    pulsar: &PulsarBroker,
) -> BTreeMap<Link, Figures> {
    let mut figures: BTreeMap<Link, Figures> =
        LINKS.iter().map(|l| (*l, Figures::default())).collect();
    // Commands, in arrival order per receiver, with when they arrived.
    let mut commands: Vec<(Link, usize, u64)> = Vec::new();
    let mut first_command: HashMap<(Link, usize, u64), u64> = HashMap::new();
    let mqtt_seen = mqtt.iter().map(|(topic, payload)| Seen {
        device: topic.strip_prefix("out/").unwrap_or(topic).to_owned(),
        seq: serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["seq"].as_u64()),
        at: 0,
    });
    for seen in webhook.iter().cloned().chain(mqtt_seen) {
        let (Some((link, device)), Some(seq)) = (Link::parse_device(&seen.device), seen.seq) else {
            continue;
        };
        figures.entry(link).or_default().commands_received += 1;
        commands.push((link, device, seq));
        first_command.entry((link, device, seq)).or_insert(seen.at);
    }
    for ((link, device), (repeats, violations)) in order(&commands) {
        let f = figures.entry(link).or_default();
        f.repeats += repeats;
        f.order_violations += violations;
        if violations > 0 {
            f.devices_out_of_order
                .push(format!("{}-{device:02}", link.letter()));
        }
    }
    // Dead letters by offer.
    let mut lettered: HashMap<usize, (u64, bool)> = HashMap::new();
    for letter in letters {
        let link = LINKS
            .iter()
            .copied()
            .find(|l| l.connector() == letter.connector);
        match ledger.by_payload.get(&letter.payload) {
            Some(&index) if ledger.offers[index].class != Class::Stable => {
                let plugin = letter.kind.starts_with("plugin");
                let entry = lettered.entry(index).or_insert((letter.at, plugin));
                entry.0 = entry.0.min(letter.at);
                entry.1 |= plugin;
            }
            _ => {
                if let Some(link) = link {
                    figures.entry(link).or_default().unexpected_letters += 1;
                }
            }
        }
    }
    // Acks, by message.
    let mut first_ack: HashMap<MessageId, u64> = HashMap::new();
    for ack in pulsar.acks() {
        first_ack.entry(ack.id).or_insert(ack.at);
    }
    let mut tuya_acked = 0;
    let mut early = 0;
    for (index, offer) in ledger.offers.iter().enumerate() {
        let f = figures.entry(offer.link).or_default();
        f.offered += 1;
        let command = first_command
            .get(&(offer.link, offer.device, offer.seq))
            .copied();
        let letter = lettered.get(&index).copied();
        let processed_at = match offer.class {
            Class::Stable => command,
            Class::Flaky => command
                .into_iter()
                .chain(letter.filter(|l| l.1).map(|l| l.0))
                .min(),
            Class::Bad => letter.map(|l| l.0),
        };
        if letter.is_some() {
            f.dead_lettered += 1;
        }
        match offer.class {
            Class::Bad => {
                f.bad_offered += 1;
                if letter.is_none() {
                    f.bad_missing += 1;
                }
            }
            _ if processed_at.is_some() => f.processed += 1,
            _ => {
                f.missing += 1;
                f.missing_offers.push(index);
            }
        }
        if let Some(id) = offer.pulsar
            && let Some(&acked) = first_ack.get(&id)
        {
            tuya_acked += 1;
            if processed_at.is_none_or(|p| p > acked) {
                early += 1;
            }
        }
    }
    let tuya = figures.entry(Link::Tuya).or_default();
    tuya.acked = Some(tuya_acked);
    tuya.early_acks = Some(early);
    figures
}
