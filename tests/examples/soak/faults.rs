//! The fault schedule: broker outages in turn, plugin swaps, rule rewrites.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use iotrules_tests::mosquitto::Mosquitto;
use iotrules_tests::plugins::{built, install, retagged};
use iotrules_tests::pulsar_broker::PulsarBroker;

use crate::OUTAGE;
use crate::load::Load;
use crate::peers::Relay;
use crate::service::{ServiceHandle, invalid_rules, replace_file, rules_text};

/// The versions of `flaky.wasm`, in the order they are installed (over and over).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Flaky {
    Echo,
    Panic,
    Spin,
    Membomb,
    /// Refused at load: `init` refuses the config.
    BadInit,
    /// Refused at load: half a component.
    Truncated,
    /// Refused at load: another world.
    WrongWorld,
}

pub(crate) const FLAKY_ORDER: [Flaky; 10] = [
    Flaky::Echo,
    Flaky::Panic,
    Flaky::BadInit,
    Flaky::Echo,
    Flaky::Spin,
    Flaky::Truncated,
    Flaky::Echo,
    Flaky::Membomb,
    Flaky::WrongWorld,
    Flaky::Echo,
];

/// What the fault schedule did, for the report.
#[derive(Default, Debug)]
pub(crate) struct Faults {
    pub(crate) pulsar_restarts: u64,
    pub(crate) amqp_outages: u64,
    pub(crate) mosquitto_restarts: u64,
    pub(crate) plugin_swaps: BTreeMap<String, u64>,
    pub(crate) rules_valid: u64,
    pub(crate) rules_invalid: u64,
    /// Rule rewrites whose outcome was not the expected one (refused valid, loaded invalid).
    pub(crate) rules_wrong: Vec<String>,
}

/// The peers the faults act on.
pub(crate) struct Peers {
    pub(crate) pulsar: Arc<PulsarBroker>,
    pub(crate) relay: Arc<Relay>,
    pub(crate) mosquitto: Arc<Mosquitto>,
}

/// Runs the fault schedule until the load is done: broker faults in turn, plugin swaps, rule
/// rewrites (each waited for until the service reports its outcome).
pub(crate) async fn faults(load: Arc<Load>, peers: Peers, service: Arc<ServiceHandle>) -> Faults {
    let settings = load.settings.clone();
    let mut report = Faults::default();
    let mut next_fault = settings.fault_every;
    let mut next_plugin = settings.plugin_every;
    let mut next_rules = settings.rules_every;
    let (mut fault_n, mut plugin_n, mut rules_n) = (0u64, 0u64, 0u64);
    let echo = built("testing/echo");
    let variants: HashMap<&str, Vec<u8>> = [
        ("panic", built("testing/panic")),
        ("spin", built("testing/spin")),
        ("membomb", built("testing/membomb")),
        ("bad-init", built("testing/bad-init")),
        ("wrong-world", built("testing/wrong-world")),
    ]
    .into_iter()
    .collect();
    while !load.done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = load.started.elapsed();
        if now >= next_fault {
            next_fault += settings.fault_every;
            match fault_n % 3 {
                0 => {
                    eprintln!("soak: {:>4}s pulsar broker stopped", now.as_secs());
                    peers.pulsar.stop();
                    tokio::time::sleep(OUTAGE).await;
                    peers.pulsar.restart().await;
                    report.pulsar_restarts += 1;
                }
                1 => {
                    eprintln!("soak: {:>4}s RabbitMQ relay down", now.as_secs());
                    peers.relay.take_down();
                    tokio::time::sleep(OUTAGE).await;
                    peers.relay.bring_up();
                    report.amqp_outages += 1;
                }
                _ => {
                    eprintln!("soak: {:>4}s mosquitto stopped", now.as_secs());
                    let mosquitto = peers.mosquitto.clone();
                    tokio::task::spawn_blocking(move || mosquitto.restart_after(OUTAGE))
                        .await
                        .expect("mosquitto restart");
                    report.mosquitto_restarts += 1;
                }
            }
            fault_n += 1;
        }
        if now >= next_plugin {
            next_plugin += settings.plugin_every;
            let tag = format!("soak-{plugin_n}");
            // Turns: a fresh copy of echo for the stable rules, then the next version of
            // flaky.
            if plugin_n.is_multiple_of(2) {
                install(&service.plugins, "echo", &retagged(&echo, &tag));
                *report.plugin_swaps.entry("echo".into()).or_default() += 1;
            } else {
                let version = FLAKY_ORDER[(plugin_n as usize / 2) % FLAKY_ORDER.len()];
                let bytes = match version {
                    Flaky::Echo => retagged(&echo, &tag),
                    Flaky::Panic => retagged(&variants["panic"], &tag),
                    Flaky::Spin => retagged(&variants["spin"], &tag),
                    Flaky::Membomb => retagged(&variants["membomb"], &tag),
                    Flaky::BadInit => retagged(&variants["bad-init"], &tag),
                    Flaky::WrongWorld => retagged(&variants["wrong-world"], &tag),
                    Flaky::Truncated => echo[..echo.len() / 2].to_vec(),
                };
                install(&service.plugins, "flaky", &bytes);
                *report
                    .plugin_swaps
                    .entry(format!("flaky:{version:?}").to_lowercase())
                    .or_default() += 1;
            }
            plugin_n += 1;
        }
        if now >= next_rules {
            next_rules += settings.rules_every;
            rules_n += 1;
            let valid = !rules_n.is_multiple_of(2);
            let text = if valid {
                rules_text(rules_n)
            } else {
                invalid_rules(rules_n, rules_n / 2)
            };
            let (ok, refused) = (
                service.reloads("rules", "ok"),
                service.reloads("rules", "refused"),
            );
            replace_file(&service.rules_file, &text);
            let deadline = Instant::now() + Duration::from_secs(10);
            let outcome = loop {
                let (now_ok, now_refused) = (
                    service.reloads("rules", "ok"),
                    service.reloads("rules", "refused"),
                );
                if now_ok > ok {
                    break Some(true);
                }
                if now_refused > refused {
                    break Some(false);
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if valid {
                report.rules_valid += 1;
            } else {
                report.rules_invalid += 1;
            }
            if outcome != Some(valid) {
                let what = match outcome {
                    Some(true) => "loaded",
                    Some(false) => "refused",
                    None => "not reported within 10 s",
                };
                let message = format!(
                    "rules version {rules_n} ({}) was {what}",
                    if valid { "valid" } else { "invalid" }
                );
                eprintln!("soak: {message}");
                report.rules_wrong.push(message);
            }
        }
    }
    report
}
