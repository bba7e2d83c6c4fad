//! Messages/s through the `tuya-pulsar` connector: the test broker (local TCP, 2 partitions)
//! → the pulsar client → the connector → decode (AES-ECB, signed) → a pass-through rule (the
//! `pass` plugin) → acknowledgement back to the broker. Each iteration publishes 10 000
//! messages and ends when the broker has received all their ACKs.
//!
//! `scripts/build-plugins && cargo bench -p iotrules-tests --bench pulsar`
//!
//! For where the time goes, `pulsar/transport-only` runs the same messages through a bare
//! pulsar consumer that acknowledges each on receipt (no decoding, no pipeline).
//!
//! The connector with its pipeline, and the bare consumer in its turn, run on an async
//! runtime of as many threads as `iotrules run` gives it (`BENCH_IO_THREADS=N`: `N`); the
//! broker runs on another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt as _;
use iotrules::config::PipelineConfig;
use iotrules::connector::Context;
use iotrules::connector::pulsar::{self, PulsarSettings};
use iotrules::dialect::tuya::{Decoder, Env, Keys, Mode};
use iotrules::dialect::{Dialect, SignMode};
use iotrules::status::{ConnectorStatus, Connectors, LastErrors};
use iotrules_tests::pipeline::{Capture, TestPipeline};
use iotrules_tests::pulsar_broker::{BrokerConfig, PulsarBroker};

/// The service's allocator (`main.rs`), as in the other benches, so the figures are the
/// binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ACCESS_ID: &str = "benchAccessId";
const ACCESS_KEY: &str = "benchKEY0123456789abcdefghijklmn";
const BATCH: u64 = 10_000;

const RULES: &str = r#"
[[rule]]
name = "pass-through"
[[rule.step]]
plugin = "pass"
"#;

/// A sealed status report numbered `seq` of batch `batch` (unique `dataId`s: no duplicates).
fn messages(keys: &Keys, batch: u64) -> Vec<String> {
    (0..BATCH)
        .map(|seq| {
            let body = format!(
                r#"{{"dataId":"b{batch}-{seq}","devId":"vdev-bench-{}","productKey":"benchpk","status":[{{"code":"temp_current","t":1631545543536,"value":{}}},{{"code":"seq","t":1631545543536,"value":{seq}}}]}}"#,
                seq % 64,
                200 + seq % 7
            );
            keys.seal_iot_core(4, 1631545543537, body.as_bytes(), Mode::Ecb, [0; 12])
                .0
        })
        .collect()
}

fn broker(runtime: &tokio::runtime::Runtime, keys: &Keys) -> PulsarBroker {
    runtime.block_on(PulsarBroker::start(BrokerConfig {
        username: ACCESS_ID.into(),
        password: keys.pulsar_password(),
        topic: keys.topic(Env::Prod),
        partitions: 2,
        tls: None,
    }))
}

/// Publishes a batch and waits until the broker has every ACK.
fn run_batch(
    runtime: &tokio::runtime::Runtime,
    broker: &PulsarBroker,
    payloads: &[String],
) -> Duration {
    let target = broker.acked_count() + payloads.len();
    let start = Instant::now();
    for payload in payloads {
        broker.publish(None, payload.as_bytes(), &[("em", "aes_ecb")]);
    }
    runtime.block_on(async {
        while broker.acked_count() < target {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    start.elapsed()
}

/// The bench's runtimes (the broker's, and the measured consumer's, sized as `iotrules run`
/// sizes it), as the binary runs (see the function), the keys and the broker.
fn set_up() -> (
    tokio::runtime::Runtime,
    tokio::runtime::Runtime,
    Keys,
    PulsarBroker,
) {
    iotrules::service::disable_transparent_huge_pages();
    let runtime = iotrules_tests::runtime();
    let measured = iotrules_tests::measured_runtime();
    let keys = Keys::new(ACCESS_ID, ACCESS_KEY).expect("keys");
    let broker = broker(&runtime, &keys);
    (runtime, measured, keys, broker)
}

/// The bench `pulsar/{name}`: batches of [`BATCH`] messages published to `broker`, each
/// timed until the broker has every ACK.
fn bench_batches(
    c: &mut Criterion,
    name: &str,
    runtime: &tokio::runtime::Runtime,
    broker: &PulsarBroker,
    keys: &Keys,
) {
    let mut batch = 0;
    let mut group = c.benchmark_group("pulsar");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                batch += 1;
                let payloads = messages(keys, batch);
                total += run_batch(runtime, broker, &payloads);
            }
            total
        })
    });
    group.finish();
}

fn connector(c: &mut Criterion) {
    let (runtime, measured, keys, broker) = set_up();
    let test = TestPipeline::start(
        &["testing/pass"],
        RULES,
        PipelineConfig {
            workers: 2,
            scheduling: iotrules_tests::bench_scheduling(),
            ..PipelineConfig::default()
        },
        Capture::open("unused"),
        measured.handle(),
    );
    let connectors = Arc::new(Connectors::default());
    let status = connectors.add(ConnectorStatus::starting("bench", "tuya-pulsar", "tuya"));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let context = Context {
        ingest: test.pipeline().ingest(
            "bench",
            Dialect::Tuya(Decoder::new(keys.clone(), SignMode::Enforce)),
        ),
        status,
        errors: Arc::new(LastErrors::default()),
        metrics: test.metrics.clone(),
        shutdown,
        clock: iotrules::time::Clock::System,
    };
    let settings = PulsarSettings {
        url: broker.url(),
        keys: keys.clone(),
        topic: keys.topic(Env::Prod),
        subscription: keys.subscription("sub"),
        ca_file: None,
        stall_timeout: None,
        receiver_queue: 1000,
        buffer_bytes: 64 * 1024 * 1024,
    };
    let running = measured.spawn(pulsar::run(settings, context));

    bench_batches(c, "connector-pass-through", &runtime, &broker, &keys);
    let _ = stop.send(true);
    let _ = measured.block_on(running);
}

fn transport(c: &mut Criterion) {
    let (runtime, measured, keys, broker) = set_up();
    let url = broker.url();
    let topic = keys.topic(Env::Prod);
    let auth = keys.pulsar_auth_data().into_bytes();
    let consuming = measured.spawn(async move {
        iotrules::tls::install_provider();
        let client = ::pulsar::Pulsar::builder(url, ::pulsar::TokioExecutor)
            .with_auth(::pulsar::Authentication {
                name: "auth1".into(),
                data: auth,
            })
            .build()
            .await
            .expect("client");
        let mut consumer: ::pulsar::Consumer<Vec<u8>, _> = client
            .consumer()
            .with_topic(topic)
            .with_subscription("bench-sub")
            .with_subscription_type(::pulsar::SubType::Failover)
            .build()
            .await
            .expect("consumer");
        while let Some(Ok(message)) = consumer.next().await {
            let _ = consumer
                .ack_with_id(&message.topic, message.message_id.id.clone())
                .await;
        }
    });
    bench_batches(c, "transport-only", &runtime, &broker, &keys);
    consuming.abort();
}

criterion_group!(benches, connector, transport);
criterion_main!(benches);
