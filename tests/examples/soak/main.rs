//! The soak: one service with three connectors at once, each on its local peer, under a
//! steady numbered load with bursts, while the brokers go away and come back, plugins are
//! swapped for good and broken versions, rule files are rewritten (valid and invalid), and
//! tampered and garbage messages are fed in. At the end it waits for the service to go quiet
//! and prints one table: what was offered and what became of each message.
//!
//! ```sh
//! scripts/soak 10        # or: cargo run --release -p iotrules-tests --example soak -- --minutes 10
//! ```
//!
//! The connectors:
//! - `tuya` (`tuya-pulsar`, `sign = "enforce"`) on the Pulsar test broker, which records
//!   every ACK: a message acknowledged before its command (or dead letter) was seen is an
//!   early ack; the broker is stopped and restarted on the same port;
//! - `ali` (`alibaba-amqp`) on the private RabbitMQ node, through a relay whose connections
//!   are cut and refused for a while (the node itself is not restarted);
//! - `m` (generic `mqtt`) on a persistent mosquitto, answering every event with a command on
//!   the link itself; the broker is restarted. This mosquitto keeps no in-flight window and
//!   no queue limit: with its stock window of 20, mosquitto 2.0 sends a busy client a
//!   device's messages out of order (its own log shows the message ids going backwards,
//!   and its documentation promises order only with a window of 1), which would hide the
//!   service's own order behind the broker's. Exactly-once through the stock window under
//!   load is what `tests/tests/mqtt.rs` asserts.
//!
//! The commands of `tuya` and `ali` go to a local webhook that records them; those of `m`
//! to a subscriber of `out/#`. Each connector's devices are split: most run the `echo`
//! plugin (swapped for new copies of itself), a few (`*f-*`) run `flaky`, which is swapped
//! between `echo` and the broken plugins (`panic`, `spin`, `membomb`; and `bad-init`,
//! truncated and wrong-world files that must be refused), with `on_error = "dead-letter"`.
//!
//! Every message is accounted for: a good message of a stable device must reach its command;
//! one of a flaky device its command or a plugin dead letter; a tampered or garbage message a
//! dead letter. Per device, a command for a seq already seen is a repeat (at-least-once
//! allows it after a fault), and one for a seq lower than the highest seen, never seen
//! before, is an order violation.

mod faults;
mod ledger;
mod load;
mod messages;
mod outcome;
mod peers;
mod service;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotrules::dialect::tuya::Env;
use iotrules_tests::http::Webhook;
use iotrules_tests::mosquitto::{Mosquitto, Peer};
use iotrules_tests::pulsar_broker::{BrokerConfig, PulsarBroker};
use iotrules_tests::rabbitmq;
use iotrules_tests::service_config::{LOCAL, TUYA_ID, TUYA_KEY};

use crate::faults::{Peers, faults};
use crate::ledger::{Class, LINKS, Ledger, Link, Seen, StampedLetters, digest};
use crate::load::{Load, alibaba_load, mqtt_load, tuya_load};
use crate::messages::{mqtt_message, tuya_keys};
use crate::outcome::{analyse, order, pulsar_acked, total_pulsar};
use crate::peers::{Relay, session_leftovers};
use crate::service::{Service, ServiceHandle, amqp_users, service_config};

/// The pinned clock: the AMQP login's timestamp (RabbitMQ knows the exact password).
const NOW: u64 = 1_700_000_000_000;
const ALIBABA_SECRET: &str = "alibaba-soak-secret";
const QUEUE: &str = "soak";

/// How long a broker stays away when it is "killed".
const OUTAGE: Duration = Duration::from_secs(3);
/// How long the service gets, after the load stops, to settle everything.
const QUIESCENCE_LIMIT: Duration = Duration::from_secs(120);

/// The soak's settings, from the command line.
#[derive(Debug, Clone)]
struct Settings {
    minutes: f64,
    /// Paced messages per second, per connector.
    rate: u64,
    /// Devices per connector, of which `flaky` run the swapped plugin.
    devices: usize,
    flaky: usize,
    /// An unpaced burst of this many messages per connector every `burst_every`.
    burst: u64,
    burst_every: Duration,
    /// One broker fault (in turn) every `fault_every`.
    fault_every: Duration,
    plugin_every: Duration,
    rules_every: Duration,
    /// One tampered or garbage message per connector every `bad_every`.
    bad_every: Duration,
}

impl Settings {
    fn from_args() -> Result<Settings, String> {
        let mut settings = Settings {
            minutes: 10.0,
            rate: 150,
            devices: 50,
            flaky: 5,
            burst: 400,
            burst_every: Duration::from_secs(50),
            fault_every: Duration::from_secs(30),
            plugin_every: Duration::from_secs(7),
            rules_every: Duration::from_secs(11),
            bad_every: Duration::from_secs(2),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Result<String, String> {
                args.next().ok_or(format!("{name} needs a value"))
            };
            let number = |text: String, name: &str| -> Result<f64, String> {
                text.parse::<f64>()
                    .map_err(|_| format!("{name}: not a number: {text}"))
            };
            match arg.as_str() {
                "--minutes" => settings.minutes = number(value(&arg)?, &arg)?,
                "--rate" => settings.rate = number(value(&arg)?, &arg)? as u64,
                "--devices" => settings.devices = number(value(&arg)?, &arg)? as usize,
                "--burst" => settings.burst = number(value(&arg)?, &arg)? as u64,
                "-h" | "--help" => {
                    return Err(
                        "usage: soak [--minutes M] [--rate MSG_PER_S_PER_CONNECTOR] \
                                [--devices PER_CONNECTOR] [--burst MESSAGES]"
                            .into(),
                    );
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if settings.devices <= settings.flaky {
            return Err(format!("--devices must be over {}", settings.flaky));
        }
        Ok(settings)
    }
}

fn main() {
    let settings = match Settings::from_args() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("soak: {message}");
            std::process::exit(2);
        }
    };
    match run(settings) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(message) => {
            eprintln!("soak: FAILED: {message}");
            std::process::exit(1);
        }
    }
}

fn run(settings: Settings) -> Result<bool, String> {
    let peers_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("peers")
        .enable_all()
        .build()
        .expect("runtime");
    eprintln!(
        "soak: {} min, {} msg/s per connector paced, bursts of {} every {} s, {} devices per \
         connector ({} flaky)",
        settings.minutes,
        settings.rate,
        settings.burst,
        settings.burst_every.as_secs(),
        settings.devices,
        settings.flaky
    );

    // The peers.
    let keys = tuya_keys();
    let pulsar = Arc::new(peers_runtime.block_on(PulsarBroker::start(BrokerConfig {
        username: keys.access_id().to_owned(),
        password: keys.pulsar_password(),
        topic: keys.topic(Env::Prod),
        partitions: 2,
        tls: None,
    })));
    eprintln!("soak: starting RabbitMQ");
    let rabbit = rabbitmq::Broker::start(&amqp_users());
    let relay = Arc::new(peers_runtime.block_on(Relay::start(rabbit.amqp_port)));
    let amqp_publisher = peers_runtime.block_on(rabbitmq::Publisher::open(
        rabbit,
        "iotrules-soak-publisher",
        "soak-publisher",
        QUEUE,
    ));
    let mosquitto = Arc::new(Mosquitto::start_with(
        &[(LOCAL.0.to_owned(), LOCAL.1.to_owned())],
        true,
        "max_inflight_messages 0\nmax_queued_messages 0",
    ));
    let webhook = Webhook::start(peers_runtime.handle(), true);
    let commands_peer =
        peers_runtime.block_on(Peer::connect(&mosquitto, "soak-commands", &["out/#"]));
    let devices_peer = peers_runtime.block_on(Peer::connect(&mosquitto, "soak-devices", &[]));
    // Sees what mosquitto delivers of the devices' messages: a message the link never
    // processed that the witness got was lost after the broker, not on the way to it.
    let witness = peers_runtime.block_on(Peer::connect(&mosquitto, "soak-witness", &["in/#"]));

    // The service.
    let letters = Arc::new(StampedLetters::default());
    let config = service_config(&pulsar.url(), relay.port, &mosquitto.url(), webhook.address);
    let service = Service::start(&config, letters.clone());
    let ready = Instant::now();
    while !LINKS.iter().all(|l| service.running(l.connector())) {
        if ready.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the connectors did not all run within 60 s: {:?}",
                service.observed.connectors.all()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let handle = Arc::new(ServiceHandle {
        observed: service.observed.clone(),
        plugins: service.plugins(),
        rules_file: service.rules_file(),
    });

    // The load and the faults.
    let load = Arc::new(Load {
        settings: settings.clone(),
        ledger: Mutex::new(Ledger::default()),
        done: AtomicBool::new(false),
        started: Instant::now(),
    });
    let tasks = [
        peers_runtime.spawn(tuya_load(load.clone(), pulsar.clone())),
        peers_runtime.spawn(alibaba_load(load.clone(), amqp_publisher)),
    ];
    let mqtt_task = peers_runtime.spawn(mqtt_load(load.clone(), devices_peer));
    let fault_task = peers_runtime.spawn(faults(
        load.clone(),
        Peers {
            pulsar: pulsar.clone(),
            relay: relay.clone(),
            mosquitto: mosquitto.clone(),
        },
        handle.clone(),
    ));
    let duration = Duration::from_secs_f64(settings.minutes * 60.0);
    let mut next_progress = Duration::from_secs(30);
    while load.started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(250));
        if load.started.elapsed() >= next_progress {
            next_progress += Duration::from_secs(30);
            eprintln!(
                "soak: {:>4}s offered {}/{}/{}, commands {} + {}, dead letters {}, in flight {}",
                load.started.elapsed().as_secs(),
                load.offered(Link::Tuya),
                load.offered(Link::Ali),
                load.offered(Link::Mqtt),
                webhook.count(),
                commands_peer.count(),
                letters.count(),
                service.observed.metrics.in_flight.get(),
            );
        }
    }
    load.done.store(true, Ordering::SeqCst);
    for task in tasks {
        peers_runtime
            .block_on(task)
            .map_err(|e| format!("a load task failed: {e}"))?;
    }
    // Kept until the end: its client still sends what it queued.
    let _devices_peer = peers_runtime
        .block_on(mqtt_task)
        .map_err(|e| format!("the MQTT load task failed: {e}"))?;
    let fault_report = peers_runtime
        .block_on(fault_task)
        .map_err(|e| format!("the fault task failed: {e}"))?;
    eprintln!(
        "soak: load stopped at {} s; waiting for the service to settle",
        load.started.elapsed().as_secs()
    );

    // Quiescence: every message has its outcome, the Pulsar broker has every ACK, RabbitMQ's
    // queue is empty, nothing is in flight; then a little longer for stragglers.
    let quiet_from = Instant::now();
    let ledger = std::mem::take(&mut *load.ledger.lock().unwrap());
    let mut quiet = false;
    let mut last = String::new();
    while quiet_from.elapsed() < QUIESCENCE_LIMIT {
        std::thread::sleep(Duration::from_secs(1));
        let outcome = analyse(
            &ledger,
            &received_by_webhook(&webhook),
            &commands_peer.received(),
            &letters.all(),
            &pulsar,
        );
        let unsettled: u64 = outcome.values().map(|f| f.missing + f.bad_missing).sum();
        let unacked = total_pulsar(&ledger) - pulsar_acked(&ledger, &pulsar);
        let in_flight = service.observed.metrics.in_flight.get();
        if quiet_from.elapsed().as_secs() % 15 == 14 {
            eprintln!("soak: settling: {last}");
        }
        last = format!(
            "{unsettled} messages without an outcome, {unacked} Pulsar messages unacked, \
             {in_flight} in flight"
        );
        if unsettled == 0 && unacked == 0 && in_flight == 0 {
            let (ready, unacked) = rabbit.queue_counts(QUEUE);
            if ready == 0 && unacked == 0 {
                quiet = true;
                break;
            }
            last += &format!(", RabbitMQ holds {ready} ready and {unacked} unacked");
        }
    }
    let settle = quiet_from.elapsed();
    if quiet {
        // Repeats and late duplicates would arrive right behind the last command.
        std::thread::sleep(Duration::from_secs(3));
    } else {
        eprintln!(
            "soak: not quiet after {} s: {last}",
            QUIESCENCE_LIMIT.as_secs()
        );
    }
    let (rabbit_ready, rabbit_unacked) = rabbit.queue_counts(QUEUE);
    let mqtt_dropped = mosquitto.dropped();
    let webhook_seen = received_by_webhook(&webhook);
    let mqtt_seen = commands_peer.received();
    let all_letters = letters.all();
    let mut figures = analyse(&ledger, &webhook_seen, &mqtt_seen, &all_letters, &pulsar);
    let metrics = service.observed.metrics.clone();
    let path_commands = |path: &str, result: &str| Service::sum(&metrics.commands, &[path, result]);
    let commands_line = format!(
        "commands by path: out sent {} failed {}, m sent {} failed {}",
        path_commands("out", "sent"),
        path_commands("out", "failed"),
        path_commands("m", "sent"),
        path_commands("m", "failed"),
    );
    let reloads_line = format!(
        "reloads: plugins ok {} refused/quarantined {}, rules ok {} refused {}",
        service.reloads("plugin", "ok"),
        service.reloads("plugin", "refused"),
        service.reloads("rules", "ok"),
        service.reloads("rules", "refused"),
    );
    let held = metrics.events_held.get();
    for link in LINKS {
        let f = figures.entry(link).or_default();
        f.duplicates_dropped =
            Service::sum(&metrics.events_dropped, &[link.connector(), "duplicate"]);
    }
    if let Some(f) = figures.get_mut(&Link::Ali) {
        f.acked = Some(f.offered.saturating_sub(rabbit_ready + rabbit_unacked));
    }
    drop(metrics);

    // The MQTT link's session: what mosquitto still holds for it once the service is gone
    // was never acknowledged.
    let stopped = service.stop();
    let left_in_session = peers_runtime.block_on(session_leftovers(&mosquitto));
    if let Some(f) = figures.get_mut(&Link::Mqtt) {
        f.acked = Some(f.offered.saturating_sub(left_in_session));
    }

    // The table and the verdict.
    let mut failures = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    println!();
    println!(
        "iotrules soak: {:.1} min of load, {} msg/s paced per connector, bursts of {} every {} s, \
         {} devices per connector ({} flaky); settled in {:.1} s",
        settings.minutes,
        settings.rate,
        settings.burst,
        settings.burst_every.as_secs(),
        settings.devices,
        settings.flaky,
        settle.as_secs_f64()
    );
    println!(
        "faults: pulsar restarts {}, RabbitMQ outages {}, mosquitto restarts {}, \
         plugin swaps {:?}, rule rewrites {} valid + {} invalid",
        fault_report.pulsar_restarts,
        fault_report.amqp_outages,
        fault_report.mosquitto_restarts,
        fault_report.plugin_swaps,
        fault_report.rules_valid,
        fault_report.rules_invalid,
    );
    println!();
    println!(
        "{:<13} {:>8} {:>6} {:>9} {:>8} {:>9} {:>8} {:>6} {:>9} {:>8} {:>6} {:>7} {:>6}",
        "connector",
        "offered",
        "bad",
        "processed",
        "acked",
        "dead-lett",
        "missing",
        "dups",
        "commands",
        "repeats",
        "order",
        "early",
        "odd-DL"
    );
    for link in LINKS {
        let mut f = figures.get(&link).cloned().unwrap_or_default();
        let opt = |v: Option<u64>, mark: &str| match v {
            Some(v) => v.to_string(),
            None => mark.to_owned(),
        };
        println!(
            "{:<13} {:>8} {:>6} {:>9} {:>8} {:>9} {:>8} {:>6} {:>9} {:>8} {:>6} {:>7} {:>6}",
            link.label(),
            f.offered,
            f.bad_offered,
            f.processed,
            opt(f.acked, "-"),
            f.dead_lettered,
            f.missing + f.bad_missing,
            f.duplicates_dropped,
            f.commands_received,
            f.repeats,
            f.order_violations,
            opt(f.early_acks, "n/a"),
            f.unexpected_letters,
        );
        if f.missing > 0 {
            let witnessed = if link == Link::Mqtt {
                let delivered: HashSet<u64> = witness
                    .received()
                    .iter()
                    .map(|(_, payload)| digest(payload))
                    .collect();
                let count = f
                    .missing_offers
                    .iter()
                    .filter(|&&i| {
                        let offer = &ledger.offers[i];
                        let name = link.device_id(offer.device, offer.class == Class::Flaky);
                        delivered.contains(&digest(mqtt_message(&name, offer.seq).as_bytes()))
                    })
                    .count();
                format!(" ({count} of them delivered by mosquitto to a witness subscriber)")
            } else {
                String::new()
            };
            let examples: Vec<String> = f
                .missing_offers
                .iter()
                .take(10)
                .map(|&i| {
                    let offer = &ledger.offers[i];
                    format!(
                        "{} seq {}",
                        link.device_id(offer.device, offer.class == Class::Flaky),
                        offer.seq
                    )
                })
                .collect();
            failures.push(format!(
                "{}: {} numbered messages neither processed nor dead-lettered{witnessed}: {}",
                link.label(),
                f.missing,
                examples.join(", ")
            ));
        }
        if f.bad_missing > 0 {
            failures.push(format!(
                "{}: {} tampered/garbage messages not dead-lettered",
                link.label(),
                f.bad_missing
            ));
        }
        if link == Link::Mqtt {
            // The order mosquitto delivered the devices' messages in: a device already out
            // of order there was reordered by the publisher or the broker, not the service.
            let delivered: Vec<(Link, usize, u64)> = witness
                .received()
                .iter()
                .filter_map(|(topic, payload)| {
                    let (link, device) = Link::parse_device(topic.strip_prefix("in/")?)?;
                    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
                    Some((link, device, value["seq"].as_u64()?))
                })
                .collect();
            let upstream: Vec<String> = order(&delivered)
                .into_iter()
                .filter(|(_, (_, violations))| *violations > 0)
                .map(|((link, device), (_, violations))| {
                    format!("{}-{device:02} ({violations})", link.letter())
                })
                .collect();
            if !upstream.is_empty() {
                notes.push(format!(
                    "mqtt: mosquitto itself delivered devices {} out of order (seen by a \
                     witness subscriber): those violations are the publisher's or the broker's",
                    upstream.join(", ")
                ));
                let excused: HashSet<String> = upstream
                    .iter()
                    .filter_map(|d| d.split_once(' ').map(|(d, _)| d.to_owned()))
                    .collect();
                f.devices_out_of_order.retain(|d| {
                    !excused.contains(d.split_once(' ').map_or(d.as_str(), |(d, _)| d))
                });
            }
        }
        if !f.devices_out_of_order.is_empty() {
            failures.push(format!(
                "{}: {} order violations (devices {})",
                link.label(),
                f.order_violations,
                f.devices_out_of_order.join(", ")
            ));
        }
        if f.early_acks.unwrap_or(0) > 0 {
            failures.push(format!(
                "{}: {} messages acknowledged before they were processed",
                link.label(),
                f.early_acks.unwrap_or(0)
            ));
        }
        if f.acked != Some(f.offered) && f.acked.is_some() {
            failures.push(format!(
                "{}: {} of {} messages acknowledged at the end",
                link.label(),
                f.acked.unwrap_or(0),
                f.offered
            ));
        }
        if f.unexpected_letters > 0 {
            failures.push(format!(
                "{}: {} dead letters for stable devices' messages or for nothing offered",
                link.label(),
                f.unexpected_letters
            ));
        }
    }
    println!();
    println!("{commands_line}; {reloads_line}; events held {held}");
    println!(
        "columns: processed = numbered messages whose command arrived (or, on a flaky device, \
         whose plugin failure was dead-lettered); acked = by the broker: Pulsar's ACK records; \
         RabbitMQ: offered less what its queue holds at the end; mosquitto: offered less what \
         the link's session still held after the service stopped; dead-lett = messages with a \
         dead letter (flaky plugin failures, tampered, garbage); missing = no outcome; \
         dups = redeliveries the service dropped as duplicates; repeats = commands for a seq \
         already seen (at-least-once after a fault); order = commands for a seq below one \
         already seen, never seen before; early = acked before the command or dead letter \
         was seen, which only the Pulsar broker can tell (n/a: RabbitMQ and mosquitto do not \
         say when they were acknowledged; a loss would show as missing); odd-DL = dead \
         letters of stable devices or of nothing offered"
    );
    for note in &notes {
        println!("note: {note}");
    }
    if !mqtt_dropped.is_empty() {
        failures.push(format!(
            "mosquitto dropped messages (its queue limit): {}",
            mqtt_dropped.join(" | ")
        ));
    }
    if !quiet {
        failures.push(format!(
            "not settled within {} s: {last}",
            QUIESCENCE_LIMIT.as_secs()
        ));
    }
    if held > 0 {
        failures.push(format!("{held} events held (dead letters not stored)"));
    }
    failures.extend(fault_report.rules_wrong.iter().cloned());
    if let Err(e) = stopped {
        failures.push(format!("the service: {e}"));
    }
    println!();
    if failures.is_empty() {
        println!(
            "verdict: PASS: {} messages, nothing lost, nothing acked early, no order violation",
            ledger.offers.len()
        );
        Ok(true)
    } else {
        println!("verdict: FAIL: {}", failures.join("; "));
        Ok(false)
    }
}

fn received_by_webhook(webhook: &Webhook) -> Vec<Seen> {
    webhook
        .seen()
        .into_iter()
        .map(|seen| Seen {
            device: seen.device,
            seq: seen.seq,
            at: seen.at,
        })
        .collect()
}
