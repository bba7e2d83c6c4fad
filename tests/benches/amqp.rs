//! Messages per second from a real RabbitMQ (3.10, AMQP 1.0 plugin, local) through the
//! `alibaba-amqp` connector into the pipeline: decode, de-duplication, one pass-through rule
//! (the `pass` plugin), acknowledgement (`accepted`) back to the broker.
//!
//! `scripts/build-plugins && cargo bench -p iotrules-tests --bench amqp`
//!
//! Each iteration fills a fresh queue with [`BATCH`] Alibaba property reports (not timed),
//! then times the connector from connecting to the last acknowledgement, with 1 and with 4
//! connections (credit 20 each, the official demos' value). Criterion reports elements/s =
//! messages/s. Plugin state is in memory and there are no commands, so this is the
//! transport's cost on top of the pipeline's (see `cargo bench -p iotrules --bench pipeline`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotrules::config::{Config, PipelineConfig};
use iotrules::connector::amqp::{self, AmqpSettings};
use iotrules::connector::{ConnectorState, Context};
use iotrules::plugin::Clock;
use iotrules::status::{ConnectorStatus, Connectors, LastErrors};
use iotrules_tests::pipeline::{Capture, TestPipeline};
use iotrules_tests::rabbitmq::{Broker, Outgoing};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 5_000;
const NOW: u64 = 1_700_000_000_000;

const PASS_RULE: &str = r#"
[[rule]]
name = "pass"
when = { vendor = "alibaba" }
[[rule.step]]
plugin = "pass"
"#;

fn connector_config(url: &str, queue: &str, connections: usize) -> Config {
    let text = format!(
        r#"
[[connector]]
name = "bench"
kind = "alibaba-amqp"
url = "{url}"
access_key_id = "LTAIbench"
access_key_secret = "bench-secret"
consumer_group = "bench-group"
client_id = "iotrules-bench"
source = "{queue}"
connections = {connections}
"#
    );
    Config::parse(std::path::Path::new("bench.toml"), &text).expect("bench config")
}

fn settings(url: &str, queue: &str, connections: usize) -> AmqpSettings {
    AmqpSettings::from_config(&connector_config(url, queue, connections).connectors[0])
        .expect("settings")
}

fn messages(iteration: u64) -> Vec<Outgoing> {
    (0..BATCH)
        .map(|n| {
            let device = n % 64;
            let body = format!(
                r#"{{"iotId":"iot-{device}","requestId":"{n}","productKey":"a1Bench","deviceName":"dev-{device}","gmtCreate":1700000000000,"deviceType":"Meter","items":{{"Power":{{"value":{n},"time":1700000000000}}}},"checkFailedData":{{}}}}"#
            );
            let properties = vec![
                (
                    "topic".to_owned(),
                    format!("/a1Bench/dev-{device}/thing/event/property/post"),
                ),
                ("messageId".to_owned(), format!("b{iteration}-{n}")),
                ("generateTime".to_owned(), "1700000000000".to_owned()),
            ];
            (body.into_bytes(), properties)
        })
        .collect()
}

fn throughput(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let users: Vec<(String, String)> = [1, 4]
        .into_iter()
        .flat_map(|n| settings("amqp://x:1", "q", n).logins)
        .map(|login| (login.username(NOW), login.password(NOW)))
        .collect();
    let broker = Broker::start(&users);
    let test = TestPipeline::start(
        &["testing/pass"],
        PASS_RULE,
        PipelineConfig {
            workers: 2,
            ..PipelineConfig::default()
        },
        Capture::open("out"),
        runtime.handle(),
    );
    let dialect =
        iotrules::vendor::Dialect::Alibaba(iotrules::vendor::alibaba::Decoder::new(false));
    let connectors = Arc::new(Connectors::default());
    let mut iteration = 0u64;

    let mut group = c.benchmark_group("amqp");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for connections in [1usize, 4] {
        group.bench_function(format!("alibaba/connections={connections}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    iteration += 1;
                    let queue = format!("bench-{connections}-{iteration}");
                    runtime.block_on(broker.publish(&queue, messages(iteration)));
                    let before = test.metrics.event_latency.count();
                    let (stop, shutdown) = tokio::sync::watch::channel(false);
                    let context = Context {
                        ingest: test.pipeline().ingest("bench", dialect.clone()),
                        status: connectors.add(ConnectorStatus {
                            name: "bench".into(),
                            kind: "alibaba-amqp",
                            dialect: "alibaba",
                            identity: Vec::new(),
                            state: ConnectorState::Starting,
                            error: None,
                            signature: None,
                        }),
                        errors: Arc::new(LastErrors::default()),
                        metrics: test.metrics.clone(),
                        shutdown,
                        clock: Clock::Manual(Arc::new(AtomicU64::new(NOW))),
                    };
                    let start = Instant::now();
                    let task = runtime.spawn(amqp::run(
                        settings(&broker.url(), &queue, connections),
                        context,
                    ));
                    while test.metrics.event_latency.count() - before < BATCH {
                        assert!(
                            start.elapsed() < Duration::from_secs(120),
                            "the batch did not finish: {:?}",
                            connectors.all().last()
                        );
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    total += start.elapsed();
                    let _ = stop.send(true);
                    let _ = runtime.block_on(task);
                }
                total
            });
        });
    }
    group.finish();
    let duplicates: u64 = test
        .metrics
        .events_dropped
        .members()
        .iter()
        .map(|(_, c)| c.get())
        .sum();
    eprintln!(
        "events acknowledged {}, dropped {duplicates}; latency receipt→ack p50 {:?} s, p99 {:?} s",
        test.metrics.event_latency.count(),
        test.metrics.event_latency.quantile(0.5),
        test.metrics.event_latency.quantile(0.99),
    );
}

criterion_group!(benches, throughput);
criterion_main!(benches);
