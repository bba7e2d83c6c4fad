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
//! Criterion times all of the connector's iterations and then all of the bare ones, and on
//! this 2-core machine, with RabbitMQ on the same cores, either can land in a busier minute:
//! their ratio moved from 0.74 to 1.15 between runs. `BENCH_PAIRED=N` measures the share
//! instead in `N` rounds of one connector iteration and one bare iteration back to back, and
//! prints each round's ratio and their median (see [`paired`]).
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

/// The broker, the pipeline and the runtimes that every round of the bench shares. The
/// fields drop in order: the pipeline before the runtimes.
struct Rig {
    test: TestPipeline,
    broker: &'static Broker,
    measured: tokio::runtime::Runtime,
    runtime: tokio::runtime::Runtime,
    dialect: iotrules::dialect::Dialect,
    connectors: Arc<Connectors>,
    /// Numbers the rounds, so each fills a queue of its own.
    iteration: u64,
}

impl Rig {
    fn start() -> Rig {
        // As the binary runs (see the function).
        iotrules::service::disable_transparent_huge_pages();
        let users: Vec<(String, String)> = [1, 4]
            .into_iter()
            .flat_map(|n| settings("amqp://x:1", "q", n).logins)
            .map(|login| (login.username(NOW), login.password(NOW)))
            .collect();
        // The publisher runs on one runtime; the connector and its pipeline, and the bare
        // receivers in their turn, on their own, sized as `iotrules run` sizes it.
        let measured = iotrules_tests::measured_runtime();
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
        Rig {
            test,
            broker: Broker::start(&users),
            measured,
            runtime: iotrules_tests::runtime(),
            dialect: iotrules::dialect::Dialect::Alibaba(iotrules::dialect::alibaba::Decoder::new(
                false,
            )),
            connectors: Arc::new(Connectors::default()),
            iteration: 0,
        }
    }

    /// Fills a fresh queue with [`BATCH`] messages (not timed), then times the connector with
    /// `connections` from connecting to the last acknowledgement.
    fn connector(&mut self, connections: usize) -> Duration {
        self.iteration += 1;
        let queue = format!("bench-{connections}-{}", self.iteration);
        self.runtime
            .block_on(self.broker.publish(&queue, messages(self.iteration)));
        let before = self.test.metrics.event_latency.count();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let context = Context {
            ingest: self.test.pipeline().ingest("bench", self.dialect.clone()),
            status: self.connectors.add(ConnectorStatus::starting(
                "bench",
                "alibaba-amqp",
                "alibaba",
            )),
            errors: Arc::new(LastErrors::default()),
            metrics: self.test.metrics.clone(),
            shutdown,
            clock: Clock::Manual(Arc::new(AtomicU64::new(NOW))),
        };
        let start = Instant::now();
        let task = self.measured.spawn(amqp::run(
            settings(&self.broker.url(), &queue, connections),
            context,
        ));
        while self.test.metrics.event_latency.count() - before < BATCH {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the batch did not finish: {:?}",
                self.connectors.all().last()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let took = start.elapsed();
        let _ = stop.send(true);
        let _ = self.measured.block_on(task);
        took
    }

    /// Fills a fresh queue with [`BATCH`] messages (not timed), then times `connections` bare
    /// receivers from connecting to the last acceptance.
    fn bare(&mut self, connections: usize) -> Duration {
        let bare_settings = settings("amqp://x:1", "q", connections);
        self.iteration += 1;
        let queue = format!("bare-{connections}-{}", self.iteration);
        self.runtime
            .block_on(self.broker.publish(&queue, messages(self.iteration)));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let bare = Bare {
            url: self.broker.url(),
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
                self.measured.spawn(
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
        let took = start.elapsed();
        let _ = stop.send(true);
        for task in tasks {
            let _ = self.measured.block_on(task);
        }
        took
    }

    /// What the pipeline counted over the whole run.
    fn summary(&self) {
        let metrics = &self.test.metrics;
        let duplicates: u64 = metrics
            .events_dropped
            .members()
            .iter()
            .map(|(_, c)| c.get())
            .sum();
        eprintln!(
            "events acknowledged {}, dropped {duplicates}; latency receipt→ack p50 {:?} s, p99 {:?} s",
            metrics.event_latency.count(),
            metrics.event_latency.quantile(0.5),
            metrics.event_latency.quantile(0.99),
        );
    }
}

/// `BENCH_PAIRED=N`: instead of criterion, `N` rounds that each time the connector with four
/// connections and then the bare receivers, back to back, and print each round's rates and
/// their ratio, then the median ratio. Criterion times all of one and then all of the other,
/// so a change in the machine's load between the two moves their ratio; a round's two halves
/// are seconds apart.
fn paired(rig: &mut Rig, rounds: usize) {
    const CONNECTIONS: usize = 4;
    let rate = |took: Duration| BATCH as f64 / took.as_secs_f64();
    let mut ratios = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let connector = rate(rig.connector(CONNECTIONS));
        let bare = rate(rig.bare(CONNECTIONS));
        ratios.push(connector / bare);
        eprintln!(
            "amqp/paired round {round}: connector {connector:.0}/s, bare {bare:.0}/s, ratio {:.3}",
            connector / bare
        );
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "amqp/paired: connector ÷ bare over {rounds} rounds, connections={CONNECTIONS}: median {:.3}, lowest {:.3}, highest {:.3}",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
    );
}

fn throughput(c: &mut Criterion) {
    let mut rig = Rig::start();
    if let Ok(rounds) = std::env::var("BENCH_PAIRED") {
        let rounds = rounds.parse().expect("BENCH_PAIRED: a number of rounds");
        paired(&mut rig, std::cmp::max(rounds, 1));
        rig.summary();
        return;
    }
    let mut group = c.benchmark_group("amqp");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for connections in [1usize, 4] {
        group.bench_function(format!("alibaba/connections={connections}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rig.connector(connections)).sum());
        });
    }
    let bare_connections = 4usize;
    group.bench_function(format!("bare-fe2o3/connections={bare_connections}"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.bare(bare_connections)).sum());
    });
    group.finish();
    rig.summary();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
