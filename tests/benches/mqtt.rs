//! Events per second through a device MQTT link, against mosquitto's own pub→sub rate on
//! the same machine in the same run: the ratio of the two is the figure that matters.
//!
//! `scripts/build-plugins && cargo bench -p iotrules-tests --bench mqtt`
//!
//! One private mosquitto (tests/src/mosquitto.rs) and one service with a generic `mqtt` link
//! whose rule echoes each event back to its device through the `echo` plugin. Each iteration
//! publishes [`BATCH`] messages with QoS 1 from a rumqttc client and times until a second
//! client has received [`BATCH`] of them:
//! - `mosquitto-pub-sub`: straight from the publisher to the subscriber (the baseline);
//! - `link-in-plugin-out`: the publisher's messages go to the link, each becomes an event,
//!   the plugin turns it into a command, the command is published on the link with QoS 1 and
//!   confirmed by its PUBACK, and only then is the inbound message PUBACKed; the subscriber
//!   counts the commands. Events/s and commands/s over the link are the same number here.
//!
//! The same again at QoS 0 (`mqtt-qos0`, a second link with `qos = 0`), in rounds of
//! [`BATCH_QOS0`] unpaced messages: nothing is acknowledged, so the link's rate is its
//! pipeline's and its socket's.
//!
//! The service runs on an async runtime of its own, of as many threads as `iotrules run`
//! gives it (`BENCH_IO_THREADS=N`: `N`), apart from the clients' runtime, as it would in a
//! deployment; mosquitto and the clients are the same for both rows.
//!
//! Criterion reports elements/s = messages/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use iotrules::plan::Plan;
use iotrules_tests::mosquitto::{Mosquitto, Peer};
use iotrules_tests::service::{CONFIG_HEAD, Spawned, lay_out, spawn, wait_started};
use iotrules_tests::service_config::{echo_back, mqtt_table};
use iotrules_tests::wait_for;
use tokio::sync::watch;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 2_000;
const BATCH_QOS0: u64 = 100_000;
const LOGIN: (&str, &str) = ("bench", "bench-password");

/// Starts the service with the links `z` (QoS 1) and `q` (QoS 0) on `url`; returns its stop
/// switch (the service runs on `runtime` until the bench ends).
fn start_service(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    url: &str,
) -> watch::Sender<bool> {
    let rules = echo_back("echo", "z") + &echo_back("echo-qos0", "q");
    lay_out(dir, &[("echo", "testing/echo")], &rules);
    let text = [
        CONFIG_HEAD,
        &mqtt_table(
            "z",
            url,
            LOGIN,
            "zigbee2mqtt/+",
            "zigbee2mqtt/{device}",
            "zigbee2mqtt/{device}/set",
        ),
        &mqtt_table(
            "q",
            url,
            LOGIN,
            "qos0/+",
            "qos0/{device}",
            "qos0/{device}/set",
        ),
        "qos = 0\n",
    ]
    .concat();
    let file = dir.join("iotrules.toml");
    std::fs::write(&file, &text).unwrap();
    let mut plan = Plan::parse(&file, &text).expect("config");
    plan.config.pipeline.scheduling = iotrules_tests::bench_scheduling();
    let store = Arc::new(iotrules::store::Store::open(&plan.config.store).expect("store"));
    let state = Arc::new(iotrules::store::SqliteStateStore::new(store.clone()));
    let Spawned { stop, started, .. } = spawn(runtime.handle(), plan, store, state);
    let observed = wait_started(runtime, started, Duration::from_secs(30));
    wait_for("the link connects", || {
        observed
            .connectors
            .all()
            .iter()
            .all(|c| c.state == iotrules::status::ConnectorState::Running)
    });
    stop
}

/// Publishes [`BATCH`] messages with QoS 1 on `topic(n)` and returns the time until
/// `subscriber` has [`BATCH`] more than `before`.
fn round(
    runtime: &tokio::runtime::Runtime,
    publisher: &Peer,
    subscriber: &Peer,
    topic: impl Fn(u64) -> String,
) -> Duration {
    round_of(runtime, publisher, subscriber, topic, BATCH, true)
}

/// Publishes `batch` messages (QoS 1 if `acknowledged`, else 0) on `topic(n)` and returns
/// the time until `subscriber` has `batch` more than `before`.
fn round_of(
    runtime: &tokio::runtime::Runtime,
    publisher: &Peer,
    subscriber: &Peer,
    topic: impl Fn(u64) -> String,
    batch: u64,
    acknowledged: bool,
) -> Duration {
    let before = subscriber.count();
    let start = Instant::now();
    runtime.block_on(async {
        for n in 0..batch {
            let payload = format!(r#"{{"seq":{n},"state":"ON"}}"#);
            if acknowledged {
                publisher.publish(&topic(n), payload).await;
            } else {
                publisher.publish_at_most_once(&topic(n), payload).await;
            }
        }
    });
    while subscriber.count() < before + batch as usize {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} of {batch} arrived",
            subscriber.count() - before
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    start.elapsed()
}

/// Adds the bench `name` to `group`: each iteration a round that `round` runs and times.
fn bench(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut round: impl FnMut() -> Duration,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| (0..iters).map(|_| round()).sum())
    });
}

fn throughput(c: &mut Criterion) {
    // As the binary runs (see the function).
    iotrules::service::disable_transparent_huge_pages();
    // Batches of 2 000 unpaced publishes measure throughput, not flow control: a stock
    // mosquitto would drop what passes its queue of 1 000 for a slow subscriber.
    let broker = Mosquitto::start_with(
        &[(LOGIN.0.to_owned(), LOGIN.1.to_owned())],
        false,
        "max_inflight_messages 0\nmax_queued_messages 0",
    );
    // The clients run on one runtime, the service on its own, sized as `iotrules run` sizes it.
    let runtime = iotrules_tests::runtime();
    let service_runtime = iotrules_tests::measured_runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = start_service(&service_runtime, dir.path(), &broker.url());
    let (publisher, raw, commands, commands_qos0) = runtime.block_on(async {
        (
            Peer::connect(&broker, "bench-publisher", &[]).await,
            Peer::connect(&broker, "bench-raw", &["bench/raw/+"]).await,
            Peer::connect(&broker, "bench-commands", &["zigbee2mqtt/+/set"]).await,
            Peer::connect(&broker, "bench-commands-qos0", &["qos0/+/set"]).await,
        )
    });

    let mut group = c.benchmark_group("mqtt");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    bench(&mut group, "mosquitto-pub-sub", || {
        round(&runtime, &publisher, &raw, |n| {
            format!("bench/raw/{}", n % 16)
        })
    });
    bench(&mut group, "link-in-plugin-out", || {
        round(&runtime, &publisher, &commands, |n| {
            format!("zigbee2mqtt/lamp-{}", n % 16)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("mqtt-qos0");
    group.throughput(Throughput::Elements(BATCH_QOS0));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    bench(&mut group, "mosquitto-pub-sub", || {
        round_of(
            &runtime,
            &publisher,
            &raw,
            |n| format!("bench/raw/{}", n % 16),
            BATCH_QOS0,
            false,
        )
    });
    bench(&mut group, "link-in-plugin-out", || {
        round_of(
            &runtime,
            &publisher,
            &commands_qos0,
            |n| format!("qos0/lamp-{}", n % 16),
            BATCH_QOS0,
            false,
        )
    });
    group.finish();
    let _ = stop.send(true);
    drop(service_runtime);
}

criterion_group!(benches, throughput);
criterion_main!(benches);
