//! Timers: how fast due timers fire through the pipeline, and what pending ones cost.
//!
//! `scripts/build-plugins && cargo bench -p iotrules --bench timers`
//!
//! A rule whose one step runs `testing/pass` (keeps every event, nothing else: the floor of a
//! plugin call). Each sample stores `BATCH` timers of that step, one per device, all due when
//! the (pinned) clock next moves, then moves it and waits until every one has fired, been
//! handed to the step on its device's worker, deleted in the call's commit and settled:
//! firings/s. Side by side, in the same run and pipeline, the same number of events submitted
//! to the same rule through the intake (decode included): what a firing costs against an
//! event. Plugin state in memory, then in SQLite as the service keeps it.
//!
//! Before the runs it prints the memory of 100 000 pending timers (the state entries and the
//! schedule): the process's resident set before and after storing them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotrules::command::CommandPaths;
use iotrules::config::PipelineConfig;
use iotrules::dialect::Dialect;
use iotrules::event::{Device, Vendor};
use iotrules::metrics::Metrics;
use iotrules::pipeline::{Acker, Delivery, Parts, Pipeline};
use iotrules::plugin::timers::{TimerRecord, timer_key};
use iotrules::plugin::{MemoryStateStore, Registry, Runtime, RuntimeConfig, StateStore};
use iotrules::rules::Rules;
use iotrules::status::LastErrors;
use iotrules::store::{MemoryDeadLetters, SqliteStateStore, Store};
use iotrules::time::Clock;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 20_000;
const PENDING: u64 = 100_000;
const NAMESPACE: &str = "fire/1";

const RULES: &str = r#"
[[rule]]
name = "fire"

[[rule.step]]
plugin = "pass"
state_keys = 1000000
state_mb = 1024
"#;

fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

struct Bench {
    runtime: tokio::runtime::Runtime,
    pipeline: Pipeline,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<AtomicU64>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Bench {
    fn new(sqlite: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let plugins = tempfile::tempdir().expect("temp dir");
        let from = dist().join("testing/pass.wasm");
        std::fs::copy(&from, plugins.path().join("pass.wasm"))
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-plugins first", from.display()));
        let cache = tempfile::tempdir().expect("temp dir");
        let plugin_runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.path().to_owned()),
            ..RuntimeConfig::default()
        })
        .expect("plugin runtime");
        let state: Arc<dyn StateStore> = if sqlite {
            let store = Arc::new(Store::open(cache.path().join("iotrules.db")).expect("store"));
            Arc::new(SqliteStateStore::new(store))
        } else {
            Arc::new(MemoryStateStore::new())
        };
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let registry = Arc::new(
            Registry::new(plugin_runtime, plugins.path(), state)
                .with_clock(Clock::Manual(clock.clone())),
        );
        registry.load_all().expect("plugins");
        let rules_dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(rules_dir.path().join("bench.toml"), RULES).expect("rules");
        let rules = Arc::new(
            Rules::load(rules_dir.path(), registry.clone())
                .unwrap_or_else(|e| panic!("rules: {e:#?}")),
        );
        let metrics = Arc::new(Metrics::default());
        let pipeline = Pipeline::start(
            &PipelineConfig {
                workers: 2,
                ..PipelineConfig::default()
            },
            Parts {
                rules,
                registry: registry.clone(),
                paths: CommandPaths::default(),
                dead_letters: Arc::new(MemoryDeadLetters::default()),
                metrics: metrics.clone(),
                errors: Arc::new(LastErrors::default()),
            },
            runtime.handle().clone(),
        )
        .expect("pipeline");
        Bench {
            runtime,
            pipeline,
            registry,
            metrics,
            clock,
            _dirs: vec![plugins, cache, rules_dir],
        }
    }

    /// Stores `count` timers of the bench's step, devices `first..`, due at `at_ms`.
    fn store_timers(&self, first: u64, count: u64, at_ms: u64) {
        let namespace: Arc<str> = Arc::from(NAMESPACE);
        for i in first..first + count {
            let device = format!("device-{i:06}");
            let record = TimerRecord {
                name: "t".into(),
                at_ms,
                device: Device::new(&device),
                source: "bench".into(),
                vendor: Vendor::Mqtt,
                plugin: "pass".into(),
            };
            let key = timer_key(&device, "t");
            let value = serde_json::to_vec(&record).expect("record");
            self.registry
                .state()
                .apply(NAMESPACE, vec![(key.clone(), Some(value))]);
            self.registry.timers().set(namespace.clone(), key, record);
        }
    }

    fn fired(&self) -> u64 {
        self.metrics
            .events_in
            .members()
            .into_iter()
            .filter(|(labels, _)| labels[0] == "timer")
            .map(|(_, counter)| counter.get())
            .sum()
    }

    /// Stores `BATCH` timers due at the clock's next ms, moves the clock there, and times
    /// until all have fired and settled.
    fn fire_batch(&self, round: u64) -> Duration {
        let now = self.clock.load(Ordering::SeqCst);
        let before = self.fired();
        self.store_timers(round * BATCH, BATCH, now + 1);
        let started = Instant::now();
        self.clock.store(now + 1, Ordering::SeqCst);
        while self.fired() < before + BATCH || self.pipeline.in_flight() > 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let took = started.elapsed();
        assert!(self.registry.timers().is_empty(), "every timer fired");
        took
    }

    /// Submits `BATCH` plain JSON events to the same rule and times until all are acked.
    fn event_batch(&self, round: u64) -> Duration {
        let dialect = Dialect::Huawei(iotrules::dialect::huawei::Decoder::new());
        let ingest = self.pipeline.ingest("bench", dialect);
        let acked = Arc::new(AtomicU64::new(0));
        let bodies: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| huawei_body(&format!("device-{:06}", round * BATCH + i), i).into_bytes())
            .collect();
        let started = Instant::now();
        self.runtime.block_on(async {
            for body in bodies {
                let acked = acked.clone();
                let delivery = Delivery {
                    payload: body,
                    properties: Vec::new(),
                    acker: Acker::new(move |_| {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }),
                };
                ingest.submit(delivery).await.expect("submit");
            }
        });
        while acked.load(Ordering::SeqCst) < BATCH {
            std::thread::sleep(Duration::from_micros(200));
        }
        started.elapsed()
    }
}

/// A Huawei IoTDA property report of `device`, numbered `seq`.
fn huawei_body(device: &str, seq: u64) -> String {
    format!(
        r#"{{"resource":"device.property","event":"report","event_time":"20251123T080000Z","request_id":"{device}-{seq}","notify_data":{{"header":{{"app_id":"app","device_id":"{device}","node_id":"n","product_id":"p","gateway_id":"{device}"}},"body":{{"services":[{{"service_id":"S","properties":{{"seq":{seq}}},"event_time":"20251123T080000Z"}}]}}}}}}"#
    )
}

/// The process's resident set, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn pending_memory() {
    for sqlite in [false, true] {
        let bench = Bench::new(sqlite);
        let before = rss_kib();
        let now = bench.clock.load(Ordering::SeqCst);
        bench.store_timers(10_000_000, PENDING, now + 3_600_000);
        if let Some(durable) = bench.registry.state().durable() {
            bench.runtime.block_on(durable.wait());
        }
        let after = rss_kib();
        println!(
            "timers/pending ({}): {PENDING} timers, resident set {:.1} → {:.1} MiB (+{:.1} MiB, {} bytes per timer)",
            if sqlite { "sqlite" } else { "memory" },
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after as f64 - before as f64) / 1024.0,
            after.saturating_sub(before) * 1024 / PENDING
        );
    }
}

fn firings(c: &mut Criterion) {
    pending_memory();
    for sqlite in [false, true] {
        let bench = Bench::new(sqlite);
        let state = if sqlite { "sqlite" } else { "memory" };
        let mut group = c.benchmark_group(format!("timers-{state}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(BATCH));
        let mut round = 0;
        group.bench_function("fire-pass-2-workers", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        round += 1;
                        bench.fire_batch(round)
                    })
                    .sum()
            })
        });
        group.bench_function("events-pass-2-workers", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        round += 1;
                        bench.event_batch(round)
                    })
                    .sum()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, firings);
criterion_main!(benches);
