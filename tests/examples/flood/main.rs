//! The flood: does the service's memory stay flat when it is given all it can take?
//!
//! ```sh
//! scripts/flood                  # or, with the release binary built:
//! cargo run --release -p iotrules-tests --example flood -- --service target/release/iotrules
//! ```
//!
//! It starts the release `iotrules` binary (`iotrules run --config`) in its own process with
//! two connectors: `tuya` (`tuya-pulsar`, `sign = "enforce"`) on the Pulsar test broker and
//! `m` (generic `mqtt`) on a private mosquitto, which is also the command path of both.
//! Every event goes through a rule of two plugin steps: `deadband`, which writes the device's
//! state, and `echo`, which sends the device a command on the link. The configuration keeps
//! the service's defaults (`[pipeline]`, `buffer_bytes`): what a user runs.
//!
//! Then, reading `/proc/PID/status` of the service:
//! 1. start-up: the connectors run;
//! 2. idle: one message per device per connector went through (so the plugin instances
//!    exist and every device's state is loaded: sizes that depend on the rules and the fleet,
//!    not on the rate), then a few seconds of quiet;
//! 3. the flood, `--seconds` (60): numbered messages on both connectors as fast as the
//!    service takes them: the load keeps `--window` messages offered and not yet answered,
//!    more than the pipeline's in-flight budget, so the service is always the bottleneck and
//!    its queues full; RSS sampled every second, and the peak (VmHWM, reset after idle);
//! 4. quiet, `--quiet` (60): nothing offered, RSS sampled every second.
//!
//! It prints a table (idle, peak, end of flood, after the quiet, and the queues' bound
//! computed from the configuration: see `bound.rs`), the rate achieved, the load of the
//! machine, and whether every message was answered, and exits non-zero unless the memory is
//! flat: peak ≤ 1.2 × idle + bound, and no growth over the quiet minute (after it, no more
//! than the flood's highest reading; over its second half, no rise); or if a message was
//! lost. The mosquitto keeps no in-flight window and no queue limit, as in the soak: with
//! them the broker, not the service, would set the pace (and drop what it cannot queue).

mod bound;
// The soak's messages: the Alibaba ones and the tampering are not offered here.
#[allow(dead_code)]
#[path = "../soak/messages.rs"]
mod messages;
mod service;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotrules::dialect::tuya::{self, Env};
use iotrules_tests::mosquitto::{Mosquitto, Peer};
use iotrules_tests::pulsar_broker::{BrokerConfig, PulsarBroker};
use iotrules_tests::service_config::{LOCAL, TUYA_ID, TUYA_KEY};

use crate::messages::{mqtt_message, tuya_keys, tuya_message};
use crate::service::{Service, service_config, tail};

/// The messages' timestamp (the Tuya envelopes' `t`); the service does not check it.
const NOW: u64 = 1_700_000_000_000;
const PARTITIONS: usize = 2;
/// The target: the peak may be this much over idle, besides the queues' bound.
const IDLE_FACTOR: f64 = 1.2;
/// RSS moves by pages and allocator purges: a rise smaller than this over the quiet minute
/// is not growth.
const GROWTH_SLACK_KIB: u64 = 2048;
/// How long the warm-up and the drain may take before the run is called failed.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// The flood's settings, from the command line.
#[derive(Debug, Clone)]
struct Settings {
    service: PathBuf,
    seconds: u64,
    quiet: u64,
    /// Devices per connector.
    devices: usize,
    /// Messages offered and not yet answered, at most, over both connectors.
    window: u64,
}

impl Settings {
    fn from_args() -> Result<Settings, String> {
        let usage = "usage: flood --service PATH [--seconds S] [--quiet S] \
                     [--devices PER_CONNECTOR] [--window MESSAGES]";
        let mut settings = Settings {
            service: PathBuf::new(),
            seconds: 60,
            quiet: 60,
            devices: 1000,
            window: 16_384,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            let number = |text: String| -> Result<u64, String> {
                text.parse()
                    .map_err(|_| format!("{arg}: not a whole number: {text}"))
            };
            match arg.as_str() {
                "--service" => settings.service = PathBuf::from(value()?),
                "--seconds" => settings.seconds = number(value()?)?,
                "--quiet" => settings.quiet = number(value()?)?,
                "--devices" => settings.devices = number(value()?)? as usize,
                "--window" => settings.window = number(value()?)?,
                "-h" | "--help" => return Err(usage.into()),
                other => return Err(format!("unknown argument {other}; {usage}")),
            }
        }
        if settings.service.as_os_str().is_empty() {
            return Err(format!("--service is required; {usage}"));
        }
        if settings.devices == 0 || settings.window < 2 {
            return Err("--devices must be at least 1 and --window at least 2".into());
        }
        Ok(settings)
    }
}

fn main() {
    let settings = match Settings::from_args() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("flood: {message}");
            std::process::exit(2);
        }
    };
    match run(settings) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(message) => {
            eprintln!("flood: FAILED: {message}");
            std::process::exit(1);
        }
    }
}

/// The numbered load: message `n` of each connector goes to device `n % devices` with
/// seq `n / devices + 1`, one Tuya message and one MQTT message at a time.
struct Load {
    keys: tuya::Keys,
    pulsar: Arc<PulsarBroker>,
    devices_peer: Peer,
    devices: usize,
    /// Messages offered per connector.
    offered: u64,
    largest_message: u64,
    longest_id: u64,
}

impl Load {
    async fn offer_pair(&mut self) {
        let device = (self.offered % self.devices as u64) as usize;
        let seq = self.offered / self.devices as u64 + 1;
        self.offered += 1;

        let name = format!("t-{device:04}");
        let (payload, properties) = tuya_message(&self.keys, &name, seq);
        let properties: Vec<(&str, &str)> =
            properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.pulsar
            .publish(Some(device % PARTITIONS), payload.as_bytes(), &properties);
        // The Tuya event id is the `dataId`, `{device}-{seq}`.
        self.longest_id = self
            .longest_id
            .max((name.len() + 1 + seq.to_string().len()) as u64);
        self.largest_message = self.largest_message.max(payload.len() as u64);

        let name = format!("m-{device:04}");
        let topic = format!("in/{name}");
        let payload = mqtt_message(&name, seq);
        self.largest_message = self
            .largest_message
            .max((topic.len() + payload.len()) as u64);
        // A generic MQTT event's id is a receipt id, 32 hex digits.
        self.longest_id = self.longest_id.max(32);
        self.devices_peer.publish(&topic, payload).await;
    }

    /// Offers `count` messages per connector.
    async fn offer(&mut self, count: u64) {
        for _ in 0..count {
            self.offer_pair().await;
        }
    }

    /// Offers as fast as the service answers until `until`: at most `window` messages (both
    /// connectors together) offered and not answered yet.
    async fn flood(&mut self, commands: &Peer, window: u64, until: Instant) {
        while Instant::now() < until {
            let backlog = (2 * self.offered).saturating_sub(commands.count() as u64);
            let room = window.saturating_sub(backlog) / 2;
            if room == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            self.offer(room.min(256)).await;
        }
    }
}

/// One reading, every second of the flood and the quiet.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    commands: u64,
    in_flight: Option<u64>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".into())
}

/// Waits until `done` or `limit`; true when done.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

fn run(settings: Settings) -> Result<bool, String> {
    let peers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("peers")
        .enable_all()
        .build()
        .expect("runtime");
    let keys = tuya_keys();
    let pulsar = Arc::new(peers.block_on(PulsarBroker::start(BrokerConfig {
        username: keys.access_id().to_owned(),
        password: keys.pulsar_password(),
        topic: keys.topic(Env::Prod),
        partitions: PARTITIONS,
        tls: None,
    })));
    let mosquitto = Mosquitto::start_with(
        &[(LOCAL.0.to_owned(), LOCAL.1.to_owned())],
        true,
        "max_inflight_messages 0\nmax_queued_messages 0",
    );
    let commands =
        Arc::new(peers.block_on(Peer::connect(&mosquitto, "flood-commands", &["out/#"])));
    let devices_peer = peers.block_on(Peer::connect(&mosquitto, "flood-devices", &[]));
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();

    // Start-up.
    let config_text = service_config(&pulsar.url(), &mosquitto.url(), admin_port);
    let mut service = Service::start(&settings.service, &config_text, admin_port);
    service.wait_running(2, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));
    let startup = service.memory();

    // Idle: every device's first message through, then quiet.
    let mut load = Load {
        keys,
        pulsar: pulsar.clone(),
        devices_peer,
        devices: settings.devices,
        offered: 0,
        largest_message: 0,
        longest_id: 0,
    };
    eprintln!(
        "flood: warming up with {} messages per connector",
        settings.devices
    );
    peers.block_on(load.offer(settings.devices as u64));
    let expected = 2 * load.offered as usize;
    let outcomes =
        || commands.count() + (service.dead_letters("tuya") + service.dead_letters("m")) as usize;
    if !wait_until(SETTLE_LIMIT, || outcomes() >= expected) {
        return Err(format!(
            "the warm-up's {expected} messages got {} commands or dead letters within \
             {SETTLE_LIMIT:?}: {}",
            outcomes(),
            tail(&service.log())
        ));
    }
    std::thread::sleep(Duration::from_secs(5));
    let mut idle_readings: Vec<u64> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(1));
            service.memory().rss_kib
        })
        .collect();
    idle_readings.sort_unstable();
    let idle = idle_readings[idle_readings.len() / 2];
    let peak_reset = service.reset_peak();

    // The flood.
    let load_before = load_average();
    let offered_before = load.offered;
    let commands_before = commands.count() as u64;
    eprintln!(
        "flood: idle {:.1} MiB; flooding for {} s (load average {load_before})",
        mib(idle),
        settings.seconds
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(settings.seconds);
    let generator = {
        let commands = commands.clone();
        let window = settings.window;
        peers.spawn(async move {
            load.flood(&commands, window, until).await;
            load
        })
    };
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<Sample>| {
        let reading = Sample {
            at_s: started.elapsed().as_secs_f64().round() as u64,
            rss_kib: service.memory().rss_kib,
            commands: commands.count() as u64,
            in_flight: service.in_flight(),
        };
        if reading.at_s.is_multiple_of(10) {
            eprintln!(
                "flood: {:>4} s  RSS {:>7.1} MiB  commands {:>8}  in flight {}",
                reading.at_s,
                mib(reading.rss_kib),
                reading.commands,
                reading.in_flight.map_or("?".into(), |n| n.to_string())
            );
        }
        samples.push(reading);
    };
    for second in 1..=settings.seconds {
        let next = started + Duration::from_secs(second);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        sample(&mut samples);
    }
    let load = peers
        .block_on(generator)
        .map_err(|e| format!("the load task failed: {e}"))?;
    let flood_elapsed = started.elapsed();
    let load_after = load_average();
    let end_of_flood = service.memory().rss_kib;
    // What the flood took the memory to. The reading at its end is one moment of a size that
    // moves by megabytes from second to second (a run read 123.3 MiB at 50 s and 120.1 at the
    // end, and the drain of what was still queued took it back to 123.3, where it stayed):
    // growth after the flood is a rise above what it reached, not above one of its dips.
    let flood_high = samples
        .iter()
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0)
        .max(end_of_flood);
    let commands_at_end = commands.count() as u64;
    let offered_in_flood = load.offered - offered_before;

    // The quiet.
    let quiet_from = Instant::now();
    let mut drained_after: Option<Duration> = None;
    let expected = 2 * load.offered;
    for second in 1..=settings.quiet {
        let next = quiet_from + Duration::from_secs(second);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        sample(&mut samples);
        if drained_after.is_none() && commands.count() as u64 >= expected {
            drained_after = Some(quiet_from.elapsed());
        }
    }
    let after_quiet = service.memory();
    let halfway = samples
        .iter()
        .rev()
        .nth((settings.quiet / 2) as usize)
        .map_or(end_of_flood, |s| s.rss_kib);
    let sampled_peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak = if peak_reset {
        after_quiet.hwm_kib.max(sampled_peak)
    } else {
        sampled_peak
    };
    let max_in_flight_seen = samples.iter().filter_map(|s| s.in_flight).max();

    // What became of the messages: each must have its command (repeats are allowed, at least
    // once), and the Pulsar broker its ACK.
    let received = commands.received();
    let distinct: HashSet<&(String, Vec<u8>)> = received.iter().collect();
    let answered = |prefix: &str| {
        distinct
            .iter()
            .filter(|(topic, _)| topic.starts_with(prefix))
            .count() as u64
    };
    let (tuya_answered, mqtt_answered) = (answered("out/t-"), answered("out/m-"));
    let repeats = received.len() - distinct.len();
    let pulsar_acked = pulsar.acked_count() as u64;
    // A plugin past its deadline on a starved machine dead-letters its event: an outcome too.
    let (tuya_letters, mqtt_letters) = (service.dead_letters("tuya"), service.dead_letters("m"));
    let kept_log = std::env::temp_dir().join("iotrules-flood-service.log");
    let stopped = service.stop(&kept_log);

    // The bound.
    let plan = iotrules::plan::Plan::parse(std::path::Path::new("iotrules.toml"), &config_text)
        .map_err(|e| format!("the flood's own config: {e}"))?;
    let items = bound::items(
        &plan,
        &bound::Offered {
            message_bytes: load.largest_message,
            id_bytes: load.longest_id,
            partitions: PARTITIONS as u64,
        },
    )?;
    let bound_kib = items.iter().map(|i| i.bytes).sum::<u64>() / 1024;
    let limit = (IDLE_FACTOR * idle as f64) as u64 + bound_kib;

    // The table.
    let rate = (commands_at_end - commands_before) as f64 / flood_elapsed.as_secs_f64();
    println!();
    println!(
        "iotrules flood: {} s at the rate the service takes, then {} s quiet; {} devices per \
         connector (tuya-pulsar, mqtt), {} messages offered and unanswered at most; \
         workers {}, max_in_flight {}",
        settings.seconds,
        settings.quiet,
        settings.devices,
        settings.window,
        plan.config.pipeline.workers,
        plan.config.pipeline.max_in_flight
    );
    println!(
        "rate: {:.0} messages/s answered during the flood ({} offered in it, both \
         connectors); in flight at most {} (sampled); load average {load_before} before, \
         {load_after} after",
        rate,
        2 * offered_in_flood,
        max_in_flight_seen.map_or("?".into(), |n| n.to_string())
    );
    println!();
    println!("RSS over time (every 5 s):  s    MiB   commands  in-flight");
    for s in samples.iter().filter(|s| s.at_s.is_multiple_of(5)) {
        println!(
            "                        {:>5} {:>6.1} {:>10} {:>10}",
            s.at_s,
            mib(s.rss_kib),
            s.commands,
            s.in_flight.map_or("?".into(), |n| n.to_string())
        );
    }
    println!();
    println!("{:<34} {:>9}", "memory", "MiB");
    let line = |what: &str, kib: u64| println!("{what:<34} {:>9.1}", mib(kib));
    line("start-up (RSS)", startup.rss_kib);
    line("idle, after the warm-up (RSS)", idle);
    line(
        if peak_reset {
            "peak, flood and quiet (VmHWM)"
        } else {
            "peak, flood and quiet (sampled)"
        },
        peak,
    );
    line("end of the flood (RSS)", end_of_flood);
    line(
        &format!("{} s after it (RSS)", settings.quiet),
        after_quiet.rss_kib,
    );
    line("queues' bound", bound_kib);
    for item in &items {
        println!(
            "  {:<32} {:>9.1}  {}",
            item.what,
            item.bytes as f64 / (1 << 20) as f64,
            item.how
        );
    }
    line(&format!("limit: {IDLE_FACTOR} x idle + bound"), limit);
    println!();
    println!(
        "messages: {} offered per connector; answered tuya {tuya_answered}, mqtt \
         {mqtt_answered}; dead letters tuya {tuya_letters}, mqtt {mqtt_letters}; {repeats} \
         repeated commands; Pulsar acked {pulsar_acked}; {}",
        load.offered,
        match drained_after {
            Some(after) => format!("all answered {:.1} s after the flood", after.as_secs_f64()),
            None => "not all answered by the end".into(),
        }
    );

    println!(
        "the service's log (warnings and errors): {}",
        kept_log.display()
    );

    // The verdict.
    let mut failures = Vec::new();
    if peak > limit {
        failures.push(format!(
            "peak {:.1} MiB over the limit {:.1} MiB",
            mib(peak),
            mib(limit)
        ));
    }
    if after_quiet.rss_kib > flood_high + GROWTH_SLACK_KIB {
        failures.push(format!(
            "RSS grew after the flood: {:.1} MiB at most during it, {:.1} MiB {} s later",
            mib(flood_high),
            mib(after_quiet.rss_kib),
            settings.quiet
        ));
    }
    if after_quiet.rss_kib > halfway + GROWTH_SLACK_KIB {
        failures.push(format!(
            "RSS grew over the quiet's second half: {:.1} MiB, then {:.1} MiB",
            mib(halfway),
            mib(after_quiet.rss_kib)
        ));
    }
    for (connector, done) in [
        ("tuya", tuya_answered + tuya_letters),
        ("mqtt", mqtt_answered + mqtt_letters),
    ] {
        if done < load.offered {
            failures.push(format!(
                "{connector}: {} of {} messages without their command or a dead letter",
                load.offered - done,
                load.offered
            ));
        }
    }
    if pulsar_acked < load.offered {
        failures.push(format!(
            "tuya: {} of {} messages not acknowledged to Pulsar",
            load.offered - pulsar_acked,
            load.offered
        ));
    }
    if let Err(e) = stopped {
        failures.push(e);
    }
    println!();
    if failures.is_empty() {
        println!(
            "verdict: PASS: RSS flat (peak {:.1} ≤ {:.1} MiB, no growth after the flood), \
             every message answered",
            mib(peak),
            mib(limit)
        );
        Ok(true)
    } else {
        println!("verdict: FAIL: {}", failures.join("; "));
        Ok(false)
    }
}
