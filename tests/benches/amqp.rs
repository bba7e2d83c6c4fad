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
//!
//! `amqp/bare-fe2o3/connections=4` is the yardstick, run beside them on the same node with
//! the same queue contents: four fe2o3-amqp receivers that log in as the connector's four
//! connections do and take the messages with the connector's link settings (credit 20,
//! granted again only when it is used up, receiver settle mode `first`, each message
//! `accepted`), and do nothing else. The connector's share of the bare rate is
//! `alibaba/connections=4 ÷ bare-fe2o3/connections=4`.
//!
//! The connector with its pipeline, and the bare receivers in their turn, run on an async
//! runtime of as many threads as `iotrules run` gives it (`BENCH_IO_THREADS=N`: `N`); the
//! publisher that fills the queues runs on another.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use iotrules::config::{Config, PipelineConfig};
use iotrules::connector::Context;
use iotrules::connector::amqp::{self, AmqpSettings};
use iotrules::status::{ConnectorStatus, Connectors, LastErrors};
use iotrules::time::Clock;
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

/// What the bare receivers of one iteration share.
#[derive(Clone)]
struct Bare {
    url: String,
    queue: String,
    credit: u32,
    /// Accepted by all receivers together; they stop at [`BATCH`].
    accepted: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Bare {
    /// One bare receiver: logs in as `username`, attaches to the queue as the connector's
    /// links do (manual credit, no auto-accept, the default receiver settle mode `first`), and
    /// accepts each message as it arrives, granting the credit again when it is used up (the
    /// connector's rule, which RabbitMQ 3.x needs: see `Link::top_up` in the connector), until
    /// the receivers together accepted [`BATCH`] or `stop` turns true.
    async fn receive(mut self, index: usize, (username, password): (String, String)) {
        let tcp = tokio::net::TcpStream::connect(self.url.trim_start_matches("amqp://"))
            .await
            .expect("connect");
        let _ = tcp.set_nodelay(true);
        let name = format!("bare-{index}");
        let mut connection = fe2o3_amqp::Connection::builder()
            .container_id(name.clone())
            .hostname("127.0.0.1")
            .idle_time_out(60_000u32)
            .sasl_profile(SaslProfile::Plain { username, password })
            .scheme("amqp")
            .open_with_stream(tcp)
            .await
            .expect("open");
        let mut session = fe2o3_amqp::Session::begin(&mut connection)
            .await
            .expect("session");
        let mut receiver = fe2o3_amqp::Receiver::builder()
            .name(name)
            .source(self.queue.as_str())
            .credit_mode(CreditMode::Manual)
            .auto_accept(false)
            .attach(&mut session)
            .await
            .expect("attach");
        receiver.set_credit(self.credit).await.expect("credit");
        while self.accepted.load(Ordering::Relaxed) < BATCH {
            tokio::select! {
                _ = self.stop.changed() => break,
                delivery = receiver.recv::<Body<Value>>() => {
                    let delivery = delivery.expect("a message");
                    receiver.accept(&delivery).await.expect("accept");
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    if receiver.credit() == 0 {
                        receiver.set_credit(self.credit).await.expect("credit");
                    }
                }
            }
        }
        let goodbyes = async {
            let _ = receiver.close().await;
            let _ = session.end().await;
            let _ = connection.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), goodbyes).await;
    }
}

fn throughput(c: &mut Criterion) {
    // As the binary runs (see the function).
    iotrules::service::disable_transparent_huge_pages();
    // The publisher runs on one runtime; the connector and its pipeline, and the bare
    // receivers in their turn, on their own, sized as `iotrules run` sizes it.
    let runtime = iotrules_tests::runtime();
    let measured = iotrules_tests::measured_runtime();
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
            scheduling: iotrules_tests::bench_scheduling(),
            ..PipelineConfig::default()
        },
        Capture::open("out"),
        measured.handle(),
    );
    let dialect =
        iotrules::dialect::Dialect::Alibaba(iotrules::dialect::alibaba::Decoder::new(false));
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
                        status: connectors.add(ConnectorStatus::starting(
                            "bench",
                            "alibaba-amqp",
                            "alibaba",
                        )),
                        errors: Arc::new(LastErrors::default()),
                        metrics: test.metrics.clone(),
                        shutdown,
                        clock: Clock::Manual(Arc::new(AtomicU64::new(NOW))),
                    };
                    let start = Instant::now();
                    let task = measured.spawn(amqp::run(
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
                    let _ = measured.block_on(task);
                }
                total
            });
        });
    }
    let bare_connections = 4usize;
    let bare_settings = settings("amqp://x:1", "q", bare_connections);
    group.bench_function(format!("bare-fe2o3/connections={bare_connections}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                iteration += 1;
                let queue = format!("bare-{bare_connections}-{iteration}");
                runtime.block_on(broker.publish(&queue, messages(iteration)));
                let (stop, stopping) = tokio::sync::watch::channel(false);
                let bare = Bare {
                    url: broker.url(),
                    queue,
                    credit: bare_settings.credit,
                    accepted: Arc::new(AtomicU64::new(0)),
                    stop: stopping,
                };
                let accepted = bare.accepted.clone();
                let start = Instant::now();
                let tasks: Vec<_> = bare_settings
                    .logins
                    .iter()
                    .enumerate()
                    .map(|(index, login)| {
                        measured.spawn(
                            bare.clone()
                                .receive(index, (login.username(NOW), login.password(NOW))),
                        )
                    })
                    .collect();
                while accepted.load(Ordering::Relaxed) < BATCH {
                    assert!(
                        start.elapsed() < Duration::from_secs(120),
                        "the bare receivers did not finish: {} accepted",
                        accepted.load(Ordering::Relaxed)
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += start.elapsed();
                let _ = stop.send(true);
                for task in tasks {
                    let _ = measured.block_on(task);
                }
            }
            total
        });
    });
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
