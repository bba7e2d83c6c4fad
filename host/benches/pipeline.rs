//! The whole in-process path: the replay connector reads recorded Tuya messages (AES-ECB,
//! signed) → decode → de-duplication → 2 workers → 3 rules with one plugin each
//! (`deadband`, `normalize-units`, `echo` which sends a command per event) → the `log`
//! command path (into a sink) → acknowledgement.
//!
//! `scripts/build-plugins && cargo bench -p iotrules --bench pipeline`
//!
//! Criterion reports events/s for batches replayed as fast as the pipeline takes them
//! (every event acknowledged before the batch counts as done). Plugin state and dead letters
//! are in SQLite, as in the service; `BENCH_STATE=memory` keeps plugin state in memory
//! instead, to see what the SQLite commits cost. After it, the bench submits for 5 s at half
//! that rate (or at `BENCH_RATE` events/s) and prints the latency percentiles per event,
//! receipt to acknowledgement, and the lowest and highest p99 of its seconds, with the twin on
//! and then off at the same rate, and then the same for the bare paths ([`Bare`]: the same
//! work with the fewest hand-offs, the floor of the tail on this machine at that rate, and the
//! simplest way to keep the pipeline's guarantees with it);
//! beside them the process's CPU per event over the round and the cores that kept busy, since
//! on two cores a tail grows with the load it is taken under, the bytes the process wrote per
//! event (the store's log and its checkpoints; the checkpoint of one round's last writes can
//! land in the next round), and the plugin state's commits per event.
//! The events of a latency round come in a burst at each millisecond, or every `BENCH_TICK_US`
//! microseconds (see [`tick`]).
//! `BENCH_LATENCY=N` (with `BENCH_RATE`) measures only that, `N` rounds of the six, each of
//! them first in turn so that the order is not read as the cost, then the percentiles of all
//! the rounds' events together.
//! The messages come from 64 devices, or `BENCH_DEVICES=N`: the twin writes the row of each
//! device that changed in a commit, and a fleet's rows are spread over the file's pages.
//! `BENCH_PLUGINS=DIR` reads the plugins from `DIR`
//! instead of `plugins/dist`; `BENCH_IO_THREADS=N` gives the async runtime `N` threads instead
//! of the service's default (`iotrules run --io-threads`); `BENCH_SCHEDULING=latency` runs the
//! pipeline's threads under that `[pipeline] scheduling` instead of the default.
//!
//! `BENCH_PROFILE=N` prints CPU time per event instead (see [`profile`]) and the plugin
//! state's commits per event, and beside them the CPU time of the work itself on the same
//! messages in the same run, batch by batch after the pipeline's: decode and the three plugin
//! calls, one after another in one thread, with the same kind of state store. With
//! `BENCH_ALONE_THREADS=1` it also runs that work in two threads at once and prints what that
//! costs per event against one thread: the part of the pipeline's figure that using both
//! cores costs on this machine by itself. Under `valgrind --tool=callgrind`, which runs one
//! thread at a time and whose CPU time follows the instructions run, the same ratio is one of
//! instructions: what the pipeline adds in code, apart from what the machine's caches, cores
//! and scheduler make that code cost (`BENCH_PROFILE=1`: a few minutes).
//!
//! The device twin is on, as in the service (every event updates its device's twin and the
//! batch's twins are committed with the plugin state); the same run measures a pipeline with
//! the twin off beside it (`…-twin-off`, and a second line of `BENCH_PROFILE`), so its cost
//! is the difference of two figures taken under the same load of the machine. With the twin
//! on, `BENCH_PROFILE` also gives the ratio to the work with the twin's part in it (each
//! event's twin updated, the twins committed with the plugin state, in the same thread): the
//! rest is what the pipeline itself costs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotrules::command::{CommandPath, CommandPaths, Lanes, LogTransport, PathSettings};
use iotrules::config::{PipelineConfig, Scheduling};
use iotrules::connector::replay::{self, ReplaySettings};
use iotrules::dialect::tuya::{Decoder, Keys, Mode};
use iotrules::dialect::{Dialect, RawMessage, SignMode};
use iotrules::metrics::Metrics;
use iotrules::pipeline::{Acker, Delivery, Settle};
use iotrules::pipeline::{Ingest, Parts, Pipeline};
use iotrules::plugin::{Grants, Limits, Registry, Runtime, RuntimeConfig, Step};
use iotrules::rules::Rules;
use iotrules::status::{ConnectorStatus, Connectors, LastErrors};
use iotrules::store::{SqliteStateStore, Store};
use iotrules::twin::{DEFAULT_MAX_DEVICES, Twins};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ACCESS_KEY: &str = "benchKEY0123456789abcdefghijklmn";
const BATCH: u64 = 20_000;

/// How many devices the messages come from: 64, or `BENCH_DEVICES`.
fn devices() -> u64 {
    static DEVICES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *DEVICES.get_or_init(|| {
        std::env::var("BENCH_DEVICES").map_or(64, |n| n.parse().expect("BENCH_DEVICES"))
    })
}

const RULES: &str = r#"
[[rule]]
name = "temperature"
when = { vendor = "tuya", kind = "properties" }
[[rule.step]]
plugin = "deadband"
config = { datapoints = ["temp_current"], threshold = 0.5 }

[[rule]]
name = "brightness"
when = { vendor = "tuya", kind = "properties" }
[[rule.step]]
plugin = "normalize-units"
config.mappings = [{ from = "bright_value_v2", to = "brightness", range = { from = [10, 1000], to = [0, 100] }, round = 0 }]

[[rule]]
name = "echo"
when = { vendor = "tuya" }
commands.via = "log"
[[rule.step]]
plugin = "echo"
"#;

/// The built plugins: `plugins/dist`, or `BENCH_PLUGINS=DIR` (a `plugins/dist` kept from
/// another build, to compare two builds of the plugins in one binary).
fn dist() -> PathBuf {
    match std::env::var_os("BENCH_PLUGINS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist"),
    }
}

/// A status report of `device`, numbered `seq` (a unique `dataId`, so no duplicates).
fn message(keys: &Keys, batch: u64, seq: u64) -> String {
    let device = seq % devices();
    let body = format!(
        r#"{{"dataId":"b{batch}-{seq}","devId":"vdev-bench-{device}","productKey":"benchpk","status":[{{"code":"temp_current","t":1631545543536,"value":{}}},{{"code":"bright_value_v2","t":1631545543536,"value":{}}},{{"code":"seq","t":1631545543536,"value":{seq}}}]}}"#,
        200 + seq % 7,
        10 + seq % 990
    );
    let (payload, _) = keys.seal_iot_core(4, 1631545543537, body.as_bytes(), Mode::Ecb, [0; 12]);
    serde_json::json!({ "payload": payload }).to_string()
}

struct Bench {
    runtime: tokio::runtime::Runtime,
    pipeline: Pipeline,
    keys: Keys,
    dir: tempfile::TempDir,
    /// The plugin state's store, unless it is in memory.
    durable: Option<Arc<SqliteStateStore>>,
    _cache: tempfile::TempDir,
    _rules: tempfile::TempDir,
}

/// The `[pipeline] scheduling` measured: the default, or `BENCH_SCHEDULING`.
fn scheduling() -> Scheduling {
    std::env::var("BENCH_SCHEDULING").map_or(Scheduling::default(), |mode| {
        mode.parse()
            .unwrap_or_else(|e| panic!("BENCH_SCHEDULING: {e}"))
    })
}

impl Bench {
    /// A pipeline with the device twin on (the service's default bound) or off.
    fn new(twin: bool) -> Self {
        let scheduling = scheduling();
        let runtime = iotrules::service::io_runtime(
            std::env::var("BENCH_IO_THREADS")
                .map_or(iotrules::service::default_io_threads(), |n| {
                    n.parse().expect("BENCH_IO_THREADS")
                }),
            scheduling,
        )
        .expect("runtime");
        let plugins = tempfile::tempdir().expect("temp dir");
        for (name, built) in [
            ("deadband", "deadband"),
            ("normalize-units", "normalize-units"),
            ("echo", "testing/echo"),
        ] {
            let from = dist().join(format!("{built}.wasm"));
            std::fs::copy(&from, plugins.path().join(format!("{name}.wasm"))).unwrap_or_else(|e| {
                panic!("{}: {e}; run scripts/build-plugins first", from.display())
            });
        }
        let cache = tempfile::tempdir().expect("temp dir");
        // Plugin state in SQLite, as the service keeps it (deadband writes on every kept event).
        let (plugin_runtime, store) = runtime_and_store(cache.path());
        // BENCH_STATE=memory: state in memory instead, to see what SQLite costs.
        let (durable, state) = state_store(store.clone());
        let max_devices = if twin { DEFAULT_MAX_DEVICES } else { 0 };
        let registry = Arc::new(
            Registry::new(plugin_runtime, plugins.path(), state)
                .with_twins(Arc::new(Twins::new(max_devices))),
        );
        registry.load_all().expect("plugins");
        let rules_dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(rules_dir.path().join("bench.toml"), RULES).expect("rules");
        let rules = Arc::new(
            Rules::load(rules_dir.path(), registry.clone())
                .unwrap_or_else(|e| panic!("rules: {e:#?}")),
        );
        let mut paths = CommandPaths::default();
        paths.insert(log_path(runtime.handle()));
        let pipeline = Pipeline::start(
            &PipelineConfig {
                workers: 2,
                scheduling,
                ..PipelineConfig::default()
            },
            Parts {
                rules,
                registry,
                paths,
                dead_letters: store,
                metrics: Arc::new(Metrics::default()),
                errors: Arc::new(LastErrors::default()),
            },
            runtime.handle().clone(),
        )
        .expect("pipeline");
        Bench {
            runtime,
            pipeline,
            keys: Keys::new("benchAccessId", ACCESS_KEY).expect("key"),
            dir: plugins,
            durable,
            _cache: cache,
            _rules: rules_dir,
        }
    }

    /// How many times the plugin state was committed so far (0 with state in memory).
    fn commits(&self) -> u64 {
        self.durable.as_ref().map_or(0, |durable| durable.commits())
    }

    fn ingest(&self) -> Ingest {
        self.pipeline.ingest(
            "bench",
            Dialect::Tuya(Decoder::new(self.keys.clone(), SignMode::Enforce)),
        )
    }

    /// Writes a recording of `BATCH` messages numbered for `batch`.
    fn record(&self, batch: u64) -> PathBuf {
        let lines: Vec<String> = (0..BATCH)
            .map(|seq| message(&self.keys, batch, seq))
            .collect();
        let file = self.dir.path().join("recorded.jsonl");
        std::fs::write(&file, lines.join("\n")).expect("recording");
        file
    }

    /// Replays `file` at `rate` (0: unlimited) until every message is acknowledged.
    fn replay(&self, file: &Path, rate: f64) -> Duration {
        let connectors = Arc::new(Connectors::default());
        let status = connectors.add(ConnectorStatus::starting("bench", "replay", "tuya"));
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let settings = ReplaySettings {
            file: file.to_owned(),
            rate,
            repeat: false,
            offset_file: None,
        };
        let ingest = self.ingest();
        let start = Instant::now();
        let summary = self
            .runtime
            .block_on(replay::run(
                settings,
                ingest,
                status,
                Arc::new(LastErrors::default()),
                shutdown,
            ))
            .expect("replay");
        assert_eq!(summary.delivered, BATCH);
        start.elapsed()
    }
}

/// The `log` command path the rules' commands go out on, writing into a sink, on `runtime`.
fn log_path(runtime: &tokio::runtime::Handle) -> Arc<Lanes> {
    Lanes::start(
        "log",
        LogTransport::to_writer("log", Box::new(tokio::io::sink())),
        PathSettings {
            lanes: 4,
            queue: 256,
            timeout: Duration::from_secs(5),
            retries: 0,
            rate_per_s: 0.0,
            window: 1,
        },
        runtime,
    )
}

/// A plugin runtime compiling into `dir`, and a store file in it.
fn runtime_and_store(dir: &Path) -> (Arc<Runtime>, Arc<Store>) {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.to_owned()),
        ..RuntimeConfig::default()
    })
    .expect("plugin runtime");
    let store = Arc::new(Store::open(dir.join("iotrules.db")).expect("store"));
    (runtime, store)
}

/// `BENCH_STATE=memory`: plugin state in memory instead of SQLite.
fn memory_state() -> bool {
    std::env::var("BENCH_STATE").is_ok_and(|v| v == "memory")
}

/// Plugin state in `store`, or in memory with `BENCH_STATE=memory`: the SQLite store, if it
/// is one, and the store as the registry takes it.
fn state_store(
    store: Arc<Store>,
) -> (
    Option<Arc<SqliteStateStore>>,
    Arc<dyn iotrules::plugin::StateStore>,
) {
    let durable = (!memory_state()).then(|| Arc::new(SqliteStateStore::new(store)));
    let state: Arc<dyn iotrules::plugin::StateStore> = match &durable {
        Some(durable) => durable.clone(),
        None => Arc::new(iotrules::plugin::MemoryStateStore::new()),
    };
    (durable, state)
}

/// CPU time of the whole process (every thread), user and system.
fn cpu_time() -> (Duration, Duration) {
    // SAFETY: getrusage writes the struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// The bytes the process has handed to `write` and its kind so far (`wchar` of
/// `/proc/self/io`): the store's log and its checkpoints, nearly all of it. `None` where that
/// file is not there to read.
fn written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))?
        .trim()
        .parse()
        .ok()
}

/// `BENCH_PROFILE=N`: instead of criterion, replays `N` batches after one to warm up and
/// prints the CPU time the process spent per event (all threads, user + system), which a
/// busy machine disturbs far less than throughput. Also the run to profile with `perf record`
/// or `valgrind --tool=callgrind`.
fn profile(batches: u64) {
    for twin in [true, false] {
        profile_one(batches, twin);
    }
}

/// [`profile`] of one pipeline, with the twin on or off.
///
/// The work alone runs on each batch right after the pipeline replayed it, batch by batch,
/// so that the two figures of the ratio are taken under the same load of the machine. Taken
/// one after the other, all the pipeline's batches and then all the work's, the work alone
/// moved by up to a fifth between two runs of one build, and the ratio with it.
fn profile_one(batches: u64, twin: bool) {
    let bench = Bench::new(twin);
    bench.replay(&bench.record(0), 0.0);
    let files: Vec<PathBuf> = (1..=batches)
        .map(|batch| {
            let file = bench.record(batch);
            let kept = bench.dir.path().join(format!("recorded-{batch}.jsonl"));
            std::fs::rename(&file, &kept).expect("keep recording");
            kept
        })
        .collect();
    let mut alone = Alone::new(&bench, &files, false);
    // With the twin on, also the work with the twin's own part in it: what is left over is
    // the pipeline's.
    let mut alone_twin = twin.then(|| Alone::new(&bench, &files, true));
    let (mut user, mut system) = (Duration::ZERO, Duration::ZERO);
    let mut work = Duration::ZERO;
    let mut work_twin = Duration::ZERO;
    let mut wall = Duration::ZERO;
    let mut ratios = Vec::with_capacity(files.len());
    let mut ratios_twin = Vec::with_capacity(files.len());
    let mut commits = 0;
    for (index, file) in files.iter().enumerate() {
        let (user_before, system_before) = cpu_time();
        let commits_before = bench.commits();
        wall += bench.replay(file, 0.0);
        commits += bench.commits() - commits_before;
        let (user_after, system_after) = cpu_time();
        user += user_after - user_before;
        system += system_after - system_before;
        let batch_work = alone.run(index);
        work += batch_work;
        let batch = (user_after - user_before) + (system_after - system_before);
        ratios.push(batch.as_secs_f64() / batch_work.as_secs_f64());
        if let Some(alone_twin) = &mut alone_twin {
            let batch_work = alone_twin.run(index);
            work_twin += batch_work;
            ratios_twin.push(batch.as_secs_f64() / batch_work.as_secs_f64());
        }
    }
    let events = (BATCH * batches) as f64;
    let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events;
    println!(
        "pipeline/profile (twin {}): {events} events, CPU {:.1} µs/event (user {:.1}, system \
         {:.1}), {:.0} events/s wall, {:.3} commits/event",
        if twin { "on" } else { "off" },
        per_event(user + system),
        per_event(user),
        per_event(system),
        events / wall.as_secs_f64(),
        commits as f64 / events
    );
    // The batches' ratios, each of a pipeline's batch and the work on it a moment later: a
    // burst of another tenant's load spoils the pair it falls in, not the median.
    let quartiles = |ratios: &mut Vec<f64>| {
        ratios.sort_by(f64::total_cmp);
        let quantile = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
        format!(
            "median {:.2}, quartiles {:.2}–{:.2}",
            quantile(0.5),
            quantile(0.25),
            quantile(0.75)
        )
    };
    println!(
        "pipeline/profile: the work alone (decode + the 3 plugin calls, one thread, same \
         messages, each batch right after the pipeline's) {:.1} µs/event; pipeline ÷ work {:.2} \
         (batch by batch: {})",
        per_event(work),
        (user + system).as_secs_f64() / work.as_secs_f64(),
        quartiles(&mut ratios),
    );
    if twin {
        println!(
            "pipeline/profile: the work alone with the twin's part (each event's twin updated, \
             the twins committed with the plugin state) {:.1} µs/event; pipeline ÷ that work \
             {:.2} (batch by batch: {})",
            per_event(work_twin),
            (user + system).as_secs_f64() / work_twin.as_secs_f64(),
            quartiles(&mut ratios_twin),
        );
    }
    if std::env::var_os("BENCH_ALONE_THREADS").is_some() {
        alone.in_two_threads(work);
    }
}

/// The bench's plugins loaded anew, beside the pipeline's, for the work done without it:
/// their own compiled cache, and their state in a store of their own, kept as the pipeline's
/// is (SQLite unless `BENCH_STATE=memory`), with the twins in it when the twin is on.
struct Plugins {
    /// Holds the compiled plugins' cache and the store.
    dir: tempfile::TempDir,
    registry: Registry,
    durable: Option<Arc<SqliteStateStore>>,
    twins: Option<Arc<Twins>>,
}

impl Plugins {
    fn load(bench: &Bench, twin: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (plugin_runtime, store) = runtime_and_store(dir.path());
        let (durable, state) = state_store(store);
        let twins = twin.then(|| {
            let twins = Arc::new(Twins::new(DEFAULT_MAX_DEVICES));
            state.keep(iotrules::twin::NAMESPACE, twins.clone());
            twins
        });
        let registry = Registry::new(plugin_runtime, bench.dir.path(), state);
        registry.load_all().expect("plugins");
        Plugins {
            dir,
            registry,
            durable,
            twins,
        }
    }
}

/// The work itself on the messages of a bench's recordings, without the pipeline: each
/// decoded, then handed to the three rules' plugins in turn, in this thread, with plugin state
/// kept as the pipeline's is (in SQLite, or in memory with `BENCH_STATE=memory`). Reading the
/// recordings is left out, as the connector's part.
struct Alone {
    /// Holds the compiled plugins' cache and the store.
    _dir: tempfile::TempDir,
    registry: Registry,
    durable: Option<Arc<SqliteStateStore>>,
    steps: [Step; 3],
    dialect: Dialect,
    /// The messages of each recording.
    payloads: Vec<Vec<String>>,
    /// With the twin: the twins the work updates, kept in its store as the pipeline keeps
    /// them.
    twins: Option<Arc<Twins>>,
}

impl Alone {
    /// Ready to run on `files`, warmed up as the pipeline was, on the first of them; with
    /// `twin`, the work updates each event's device twin too, and commits the twins with the
    /// plugin state, as the pipeline's workers and store do.
    fn new(bench: &Bench, files: &[PathBuf], twin: bool) -> Self {
        // The state kept as the pipeline keeps it: committing what the plugins write is part
        // of their work.
        let Plugins {
            dir,
            registry,
            durable,
            twins,
        } = Plugins::load(bench, twin);
        let payloads: Vec<Vec<String>> = files
            .iter()
            .map(|file| {
                std::fs::read_to_string(file)
                    .expect("recording")
                    .lines()
                    .map(|line| {
                        let line: serde_json::Value = serde_json::from_str(line).expect("line");
                        line["payload"].as_str().expect("payload").to_owned()
                    })
                    .collect()
            })
            .collect();
        let steps = Self::steps(&registry, "");
        let dialect = Dialect::Tuya(Decoder::new(bench.keys.clone(), SignMode::Enforce));
        let mut alone = Alone {
            _dir: dir,
            registry,
            durable,
            steps,
            dialect,
            payloads,
            twins,
        };
        alone.each(0);
        alone
    }

    /// The three rules' steps; `suffix` names their state apart from another set's.
    fn steps(registry: &Registry, suffix: &str) -> [Step; 3] {
        [
            (
                "deadband",
                r#"{"datapoints":["temp_current"],"threshold":0.5}"#,
                "temperature",
            ),
            (
                "normalize-units",
                r#"{"mappings":[{"from":"bright_value_v2","to":"brightness","range":{"from":[10,1000],"to":[0,100]},"round":0}]}"#,
                "brightness",
            ),
            ("echo", "{}", "echo"),
        ]
        .map(|(plugin, config, rule)| {
            let rule = format!("{rule}{suffix}");
            registry
                .step(plugin, config, Limits::default(), Grants::default(), &rule)
                .expect("step")
        })
    }

    /// The CPU time of the work on recording `index`, its state committed.
    fn run(&mut self, index: usize) -> Duration {
        let (user, system) = cpu_time();
        self.each(index);
        self.flush();
        let (user_after, system_after) = cpu_time();
        (user_after - user) + (system_after - system)
    }

    /// The work on recording `index`: see [`each`]; with the twin, each event updates its
    /// device's twin first, and the store is told of the changes every [`TWIN_BATCH`] events,
    /// as a worker tells it once per batch.
    fn each(&mut self, index: usize) {
        let Some(twins) = &self.twins else {
            each(&self.dialect, &self.payloads[index], &mut self.steps);
            return;
        };
        let state = self.registry.state();
        for payloads in self.payloads[index].chunks(TWIN_BATCH) {
            for payload in payloads {
                let event = decode(&self.dialect, payload);
                twins.update(&event);
                handle(&event, &mut self.steps);
            }
            state.changed(iotrules::twin::NAMESPACE);
        }
    }

    fn flush(&self) {
        if let Some(durable) = &self.durable {
            durable.flush();
        }
    }

    /// Runs the work on every recording in two threads at once, each with steps of its own,
    /// and prints what that costs per event against `one`, the CPU time of one thread on
    /// them: what running on both cores costs by itself on this machine.
    fn in_two_threads(&mut self, one: Duration) {
        let mut second = Self::steps(&self.registry, "-2");
        each(&self.dialect, &self.payloads[0], &mut second);
        let (user, system) = cpu_time();
        std::thread::scope(|scope| {
            for steps in [&mut self.steps, &mut second] {
                let (dialect, payloads) = (&self.dialect, &self.payloads);
                scope.spawn(move || {
                    for batch in payloads {
                        each(dialect, batch, steps);
                    }
                });
            }
        });
        self.flush();
        let (user_after, system_after) = cpu_time();
        let two = (user_after - user) + (system_after - system);
        println!(
            "pipeline/profile: the work alone in two threads at once takes {:.2}x the CPU per \
             event of one thread",
            two.as_secs_f64() / 2.0 / one.as_secs_f64()
        );
    }
}

/// How many events the work alone updates twins for between two notices to the store: a
/// worker's batch at most.
const TWIN_BATCH: usize = 32;

/// The floor under the pipeline's tail, taken side by side with it: the same work on the
/// same events with the fewest hand-offs. The submitting thread
/// decodes each message (as the pipeline's intake does, in the connector's task) and sends
/// it down a bounded channel to one of two threads by its device; each thread takes what is
/// queued (a batch at most), updates the twins (with the twin on) and runs the three plugin
/// steps on each event, commits the batch's state, and then calls each event's
/// acknowledgement itself. No de-duplication, no settle task, and the commands dropped: the
/// tail of the work itself at that rate, with one hand-off.
///
/// With `commands`, the thread instead hands the batch's commands to a `log` path of its own
/// (on the bench's runtime, as the pipeline's), commits, and waits for every command's
/// confirmation before it acknowledges the batch: the simplest way to keep the pipeline's
/// guarantees (but de-duplication), with no work done while the commands go out.
struct Bare {
    /// `None` once dropped, to close the channels.
    senders: Option<Vec<std::sync::mpsc::SyncSender<Bared>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    dialect: Dialect,
    hasher: std::collections::hash_map::RandomState,
    durable: Option<Arc<SqliteStateStore>>,
    /// Holds the compiled plugins' cache and the store.
    _dir: tempfile::TempDir,
}

/// An event and its acknowledgement.
type Bared = (iotrules::event::Event, Box<dyn FnOnce() + Send>);

impl Bare {
    /// Two threads with the plugins of `bench` and state in a store of their own (as the
    /// pipeline's, SQLite unless `BENCH_STATE=memory`), with the twin on or off, sending the
    /// commands or not.
    fn new(bench: &Bench, twin: bool, commands: bool) -> Self {
        let Plugins {
            dir,
            registry,
            durable,
            twins,
        } = Plugins::load(bench, twin);
        let registry = Arc::new(registry);
        let path = commands.then(|| log_path(bench.runtime.handle()));
        let (senders, threads) = (0..2)
            .map(|worker| {
                let (sender, receiver) = std::sync::mpsc::sync_channel::<Bared>(QUEUE);
                let mut steps = Alone::steps(&registry, &format!("-{worker}"));
                let (registry, twins, path) = (registry.clone(), twins.clone(), path.clone());
                let thread = std::thread::Builder::new()
                    .name(format!("bare-{worker}"))
                    .spawn(move || bare_thread(&receiver, &mut steps, &registry, twins, path))
                    .expect("bare thread");
                (sender, thread)
            })
            .unzip();
        Bare {
            senders: Some(senders),
            threads,
            dialect: Dialect::Tuya(Decoder::new(bench.keys.clone(), SignMode::Enforce)),
            hasher: std::collections::hash_map::RandomState::new(),
            durable,
            _dir: dir,
        }
    }

    /// The four bare paths on `bench`'s plugins: twin on and off, then the same sending their
    /// commands.
    fn all(bench: &Bench) -> [Bare; 4] {
        [(true, false), (false, false), (true, true), (false, true)]
            .map(|(twin, commands)| Bare::new(bench, twin, commands))
    }

    /// Decodes `payload` and queues it on the thread of its device, waiting for room.
    fn submit(&self, payload: &[u8], acknowledge: Box<dyn FnOnce() + Send>) {
        use std::hash::BuildHasher;
        let event = self
            .dialect
            .decode(&RawMessage::new("bench", payload))
            .expect("decode");
        let senders = self.senders.as_ref().expect("open");
        let worker = (self.hasher.hash_one(&*event.device.id) % senders.len() as u64) as usize;
        senders[worker]
            .send((event, acknowledge))
            .expect("bare thread");
    }

    /// How many times its state was committed so far (0 with state in memory).
    fn commits(&self) -> u64 {
        self.durable.as_ref().map_or(0, |durable| durable.commits())
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        drop(self.senders.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A thread of a [`Bare`] path: takes what is queued on `receiver` (a batch at most), runs the
/// work on it, and acknowledges it once its state is committed and, with a `path`, its
/// commands are confirmed.
fn bare_thread(
    receiver: &std::sync::mpsc::Receiver<Bared>,
    steps: &mut [Step; 3],
    registry: &Registry,
    twins: Option<Arc<Twins>>,
    path: Option<Arc<Lanes>>,
) {
    let mut batch = Vec::with_capacity(TWIN_BATCH);
    while let Ok(job) = receiver.recv() {
        batch.push(job);
        while batch.len() < TWIN_BATCH
            && let Ok(job) = receiver.try_recv()
        {
            batch.push(job);
        }
        let mut commands = Vec::new();
        let mut confirmations = Vec::new();
        for (event, _) in &batch {
            if let Some(twins) = &twins {
                twins.update(event);
            }
            for step in steps.iter_mut() {
                let handled = step.handle(event).expect("handled");
                if path.is_none() {
                    continue;
                }
                for command in handled.outcome.commands {
                    let (confirmer, confirmation) = tokio::sync::oneshot::channel();
                    commands.push((command, confirmer));
                    confirmations.push(confirmation);
                }
            }
        }
        let state = registry.state();
        if twins.is_some() {
            state.changed(iotrules::twin::NAMESPACE);
        }
        futures::executor::block_on(async {
            if let Some(path) = &path {
                path.enqueue_all(commands).await;
            }
            if let Some(durable) = state.durable() {
                durable.wait().await;
            }
            for confirmation in confirmations {
                confirmation.await.expect("answered").expect("confirmed");
            }
        });
        for (_, acknowledge) in batch.drain(..) {
            acknowledge();
        }
    }
}

/// The events a bare thread's channel holds: a pipeline worker's queue (`pipeline.queue`).
const QUEUE: usize = 256;

/// Decodes each of `payloads` and runs `steps` on it, one after the other.
fn each(dialect: &Dialect, payloads: &[String], steps: &mut [Step]) {
    for payload in payloads {
        handle(&decode(dialect, payload), steps);
    }
}

fn decode(dialect: &Dialect, payload: &str) -> iotrules::event::Event {
    dialect
        .decode(&RawMessage::new("bench", payload.as_bytes()))
        .expect("decode")
}

/// Runs `steps` on `event`, one after the other.
fn handle(event: &iotrules::event::Event, steps: &mut [Step]) {
    for step in steps.iter_mut() {
        std::hint::black_box(step.handle(event).expect("handled"));
    }
}

fn throughput(c: &mut Criterion) {
    // As the binary runs (see the function).
    iotrules::service::disable_transparent_huge_pages();
    if let Ok(batches) = std::env::var("BENCH_PROFILE") {
        profile(batches.parse().expect("BENCH_PROFILE: a number of batches"));
        return;
    }
    let bench = Bench::new(true);
    if let Ok(rounds) = std::env::var("BENCH_LATENCY") {
        let rate = std::env::var("BENCH_RATE")
            .expect("BENCH_LATENCY needs BENCH_RATE")
            .parse()
            .expect("BENCH_RATE: events per second");
        let twin_off = Bench::new(false);
        let bare = Bare::all(&bench);
        let rounds: u64 = rounds.parse().expect("BENCH_LATENCY: a number of rounds");
        let mut targets = latency_targets(&bench, &twin_off, &bare);
        let labels = targets.map(|(label, ..)| label);
        // Every round's events, by target, for the percentiles of all of them at the end.
        let mut pooled: [Round; 6] = Default::default();
        let mut batch = 0;
        for round in 0..rounds {
            for (label, bench, target) in targets {
                batch += 1;
                let timed = latencies(bench, target, batch, (rate * LATENCY_SECONDS) as u64, rate);
                print_latency(&format!("round {}{label}", round + 1), &timed, rate, None);
                let which = labels.iter().position(|other| *other == label);
                pooled[which.expect("a target")].pool(timed);
            }
            // Each target first in turn: the order is not read as the cost.
            targets.rotate_left(1);
        }
        for (label, timed) in labels.into_iter().zip(pooled) {
            print_latency(&format!("all {rounds} rounds{label}"), &timed, rate, None);
        }
        return;
    }
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH));
    let mut batch = 0;
    // The twin's cost: the same pipeline without it, measured in the same run.
    let twin_off = Bench::new(false);
    // Every replay's time, of the twin on and off; the twin on's give the maximum rate that
    // the half load is half of.
    let mut replays: [Vec<Duration>; 2] = Default::default();
    for ((name, bench), replays) in [
        ("replay-decode-3-rules-log-2-workers", &bench),
        ("replay-decode-3-rules-log-2-workers-twin-off", &twin_off),
    ]
    .into_iter()
    .zip(&mut replays)
    {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    batch += 1;
                    let file = bench.record(batch);
                    let took = bench.replay(&file, 0.0);
                    replays.push(took);
                    total += took;
                }
                total
            })
        });
    }
    group.finish();

    // Latency at half load: submit at half the rate measured above for several seconds, time
    // each event from submission to its acknowledgement; the pipeline without the twin at the
    // same rate, so that the twin's part of the tail is read in one run. The maximum is the
    // median replay of the twin on, warm-up included: one replay taken for it alone measured
    // from 57 000 to 94 000 events/s in one afternoon, where criterion's medians went from
    // 80 000 to 95 000.
    let replays = &mut replays[0];
    replays.sort_unstable();
    let full = BATCH as f64 / replays[replays.len() / 2].as_secs_f64();
    // BENCH_RATE=N: at N events/s instead, so that two builds compare at the same load.
    let rate = match std::env::var("BENCH_RATE") {
        Ok(rate) => rate.parse().expect("BENCH_RATE: events per second"),
        Err(_) => full / 2.0,
    };
    let events = (rate * LATENCY_SECONDS) as u64;
    let bare = Bare::all(&bench);
    for (label, of, target) in latency_targets(&bench, &twin_off, &bare) {
        batch += 1;
        let timed = latencies(of, target, batch, events, rate);
        print_latency(&format!("at half load{label}"), &timed, rate, Some(full));
    }
}

/// What the latency rounds submit to, each with its label and the bench whose messages and
/// runtime it uses: the pipeline with the twin on and off, then the [`Bare`] paths of
/// `bare` ([`Bare::all`]).
fn latency_targets<'a>(
    on: &'a Bench,
    off: &'a Bench,
    bare: &'a [Bare; 4],
) -> [(&'static str, &'a Bench, Target<'a>); 6] {
    [
        (" (twin on)", on, Target::Pipeline(on)),
        (" (twin off)", off, Target::Pipeline(off)),
        (" (bare, twin on)", on, Target::Bare(&bare[0])),
        (" (bare, twin off)", on, Target::Bare(&bare[1])),
        (" (bare + commands, twin on)", on, Target::Bare(&bare[2])),
        (" (bare + commands, twin off)", on, Target::Bare(&bare[3])),
    ]
}

/// How long the half-load phase submits, in seconds. A p99 is the slowest hundredth of the
/// events: over a fraction of a second that is a handful of moments (one stalled sync of
/// the store's log, one descheduled thread), so the tail is read over a sustained run, and
/// the spread of its seconds printed beside it.
const LATENCY_SECONDS: f64 = 5.0;

/// Prints the percentiles of the time from submission to acknowledgement of `round`'s events,
/// submitted at `rate` events/s (`full`: the maximum rate it is a part of), the lowest and
/// highest p99 of its whole seconds, and the CPU it took per event and the cores it kept busy.
fn print_latency(label: &str, round: &Round, rate: f64, full: Option<f64>) {
    let timed = &round.timed;
    let p99_by_second: Vec<Duration> = timed
        .chunk_by(|(a, _), (b, _)| a.as_secs() == b.as_secs())
        .filter(|second| second.len() as f64 >= rate * 0.9)
        .map(|second| percentiles(second.iter().map(|(_, latency)| *latency))[1])
        .collect();
    let [p50, p99, p999, max] = percentiles(timed.iter().map(|(_, latency)| *latency));
    let of = full.map_or(String::new(), |full| format!(" of {full:.0}"));
    let by_second = match (p99_by_second.iter().min(), p99_by_second.iter().max()) {
        (Some(low), Some(high)) if p99_by_second.len() > 1 => {
            format!(
                " (p99 of its {} seconds {low:?} to {high:?})",
                p99_by_second.len()
            )
        }
        _ => String::new(),
    };
    let written = round.written.map_or(String::new(), |bytes| {
        format!(
            ", {:.2} KB written/event",
            bytes as f64 / 1024.0 / timed.len() as f64
        )
    });
    println!(
        "pipeline/latency {label} ({rate:.0} events/s{of}, {} events): p50 {p50:?}, p99 \
         {p99:?}, p99.9 {p999:?}, max {max:?}{by_second}; CPU {:.1} µs/event, {:.2} cores \
         busy{written}, {:.3} commits/event",
        timed.len(),
        round.cpu.as_secs_f64() * 1e6 / timed.len() as f64,
        round.cpu.as_secs_f64() / round.wall.as_secs_f64(),
        round.commits as f64 / timed.len() as f64,
    );
}

/// p50, p99, p99.9 and the maximum of `latencies`.
fn percentiles(latencies: impl Iterator<Item = Duration>) -> [Duration; 4] {
    let mut sorted: Vec<Duration> = latencies.collect();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    [at(0.5), at(0.99), at(0.999), sorted[sorted.len() - 1]]
}

/// Where a latency round submits its events.
#[derive(Clone, Copy)]
enum Target<'a> {
    Pipeline(&'a Bench),
    /// The bare path ([`Bare`]), with the messages and runtime of a bench's.
    Bare(&'a Bare),
}

/// Submits `events` messages numbered for `batch` (sealed with `bench`'s keys) to `target`
/// at `rate` events/s; for each, in order of submission, when it was submitted (from the
/// first) and the time from its submission to its acknowledgement.
fn latencies(bench: &Bench, target: Target<'_>, batch: u64, events: u64, rate: f64) -> Round {
    let timed = Arc::new(Mutex::new(Vec::with_capacity(events as usize)));
    let ingest = bench.ingest();
    let messages: Vec<Vec<u8>> = (0..events)
        .map(|seq| {
            let line: serde_json::Value =
                serde_json::from_str(&message(&bench.keys, batch, seq)).expect("line");
            line["payload"]
                .as_str()
                .expect("payload")
                .as_bytes()
                .to_vec()
        })
        .collect();
    let commits = || match target {
        Target::Pipeline(bench) => bench.commits(),
        Target::Bare(bare) => bare.commits(),
    };
    let period = Duration::from_secs_f64(1.0 / rate);
    let (user, system) = cpu_time();
    let written_before = written();
    let commits_before = commits();
    let started = Instant::now();
    let tick = tick();
    bench.runtime.block_on(async {
        let start = Instant::now();
        for (seq, payload) in messages.into_iter().enumerate() {
            let due = period.mul_f64(seq as f64);
            match tick {
                None => tokio::time::sleep_until((start + due).into()).await,
                Some(tick) => sleep_to_tick(start, due, tick),
            }
            let timed = timed.clone();
            let submitted = Instant::now();
            let acknowledged = move || {
                let latency = submitted.elapsed();
                timed.lock().unwrap().push((submitted - start, latency));
            };
            match target {
                Target::Pipeline(_) => {
                    let delivery = Delivery {
                        payload,
                        properties: Vec::new(),
                        acker: Acker::new(move |how| {
                            assert_eq!(how, Settle::Ack);
                            acknowledged();
                        }),
                    };
                    ingest.submit(delivery).await.expect("submit");
                }
                Target::Bare(bare) => bare.submit(&payload, Box::new(acknowledged)),
            }
        }
        while timed.lock().unwrap().len() < events as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let wall = started.elapsed();
    let (user_after, system_after) = cpu_time();
    let written = written()
        .zip(written_before)
        .map(|(after, before)| after - before);
    let mut timed = std::mem::take(&mut *timed.lock().unwrap());
    timed.sort_unstable_by_key(|(submitted, _)| *submitted);
    Round {
        timed,
        cpu: (user_after - user) + (system_after - system),
        wall,
        written,
        commits: commits() - commits_before,
    }
}

/// `BENCH_TICK_US=N`: the latency rounds submit every `N` µs the events due by then, instead
/// of at each tick of the async runtime's timer, whose resolution is a millisecond: at
/// 27 000 events/s that is a burst of 27 events each millisecond. Events that come closer to
/// one by one, as over a socket, are batched less on their way through the workers and the
/// commits, and cost more CPU each; this shows how much.
fn tick() -> Option<Duration> {
    let micros = std::env::var("BENCH_TICK_US").ok()?;
    let micros = micros.parse().expect("BENCH_TICK_US: microseconds");
    Some(Duration::from_micros(micros).max(Duration::from_micros(1)))
}

/// Blocks the submitting thread until the first multiple of `tick` after `start` that is not
/// before `due` after it (later by the thread's timer slack, 50 µs unless changed).
fn sleep_to_tick(start: Instant, due: Duration, tick: Duration) {
    let ticks = due.as_nanos().div_ceil(tick.as_nanos());
    let wake = start + tick.mul_f64(ticks as f64);
    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
}

/// One latency round: each event's submission time and latency ([`latencies`]), and the
/// process's CPU time and the wall time it took, to read the load the tail was taken under.
#[derive(Default)]
struct Round {
    timed: Vec<(Duration, Duration)>,
    cpu: Duration,
    wall: Duration,
    /// The bytes written meanwhile ([`written`]), if known.
    written: Option<u64>,
    /// The plugin state's commits meanwhile.
    commits: u64,
}

impl Round {
    /// Adds `other`'s events and times to these.
    fn pool(&mut self, other: Round) {
        self.written = if self.timed.is_empty() {
            other.written
        } else {
            self.written
                .zip(other.written)
                .map(|(these, its)| these + its)
        };
        self.timed.extend(other.timed);
        self.cpu += other.cpu;
        self.wall += other.wall;
        self.commits += other.commits;
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
