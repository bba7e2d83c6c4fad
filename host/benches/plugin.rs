//! Plugin runtime costs: one `handle` call on a typical six-property event (through the WIT
//! boundary and back, state reads and writes included), starting an instance (instantiate +
//! `init`), and the time from writing a new plugin file to the new version serving, through
//! the directory watcher (debounce included).
//!
//! Needs the built plugins: `scripts/build-plugins`.
//!
//! `BENCH_BASELINE_DIST=DIR` also runs the same plugins as built in `DIR` (a `plugins/dist`
//! kept from an older build: plugins of the 0.1.0 world, say) under `NAME-baseline`, side by
//! side with today's in the same run.

/// The service's allocator (`main.rs`), so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod shared;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotrules::event::{Device, Event};
use iotrules::plugin::{
    DEFAULT_DEBOUNCE, Grants, Limits, MemoryStateStore, Registry, Runtime, RuntimeConfig, Watcher,
};

fn dist(name: &str) -> Vec<u8> {
    built_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist"),
        name,
    )
}

fn built_in(dist: &Path, name: &str) -> Vec<u8> {
    let path = dist.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run scripts/build-plugins first",
            path.display()
        )
    })
}

fn event(seq: u64) -> Event {
    shared::thermostat(seq, Device::new("vdevo123456789"))
}

/// `bytes` with a custom section appended: same behaviour, new file hash, so a new version.
fn retagged(bytes: &[u8], tag: u64) -> Vec<u8> {
    let mut section = vec![4u8];
    section.extend_from_slice(b"tag!");
    section.extend_from_slice(&tag.to_le_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

fn install(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, bytes).expect("write");
    std::fs::rename(&temp, &path).expect("rename");
    path
}

fn setup(cache: &Path, dir: &Path) -> Arc<Registry> {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.to_owned()),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    Arc::new(Registry::new(
        runtime,
        dir,
        Arc::new(MemoryStateStore::new()),
    ))
}

const DEADBAND: &str = r#"{"datapoints":["temp_current"],"threshold":5}"#;
const NORMALIZE: &str = r#"{"mappings":[{"from":"bright_value_v2","to":"brightness","range":{"from":[10,1000],"to":[0,100]},"round":0},{"from":"temp_current","to":"temperature","scale":0.1,"round":1}]}"#;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = tempfile::tempdir().expect("temp dir");
    let baseline = std::env::var_os("BENCH_BASELINE_DIST").map(PathBuf::from);
    for name in [
        "deadband",
        "normalize-units",
        "testing/sequence",
        "testing/pass",
        "testing/echo",
    ] {
        let file = name.rsplit('/').next().expect("name");
        install(dir.path(), file, &dist(name));
        if let Some(baseline) = &baseline {
            let file = format!("{file}-baseline");
            install(dir.path(), &file, &built_in(baseline, name));
        }
    }
    let registry = setup(cache.path(), dir.path());
    for report in registry.load_all().expect("load plugins") {
        assert!(
            matches!(report, iotrules::plugin::ReloadReport::Loaded { .. }),
            "{report:?}"
        );
    }

    let mut group = c.benchmark_group("plugin-handle");
    group.throughput(Throughput::Elements(1));
    let plugins = [
        ("pass", "{}"),
        ("deadband", DEADBAND),
        ("normalize-units", NORMALIZE),
        ("sequence", "{}"),
        ("echo", "{}"),
    ];
    let baselines = plugins.map(|(plugin, config)| (format!("{plugin}-baseline"), config));
    let baselines = baselines
        .iter()
        .filter(|_| baseline.is_some())
        .map(|(plugin, config)| (plugin.as_str(), *config));
    for (plugin, config) in plugins.into_iter().chain(baselines) {
        let mut step = registry
            .step(plugin, config, Limits::default(), Grants::default(), plugin)
            .expect("step");
        // Built beforehand: the figure is the call, not making the event.
        let events: Vec<Event> = (0..100).map(event).collect();
        let mut seq = 0;
        group.bench_function(plugin, |b| {
            b.iter(|| {
                seq = (seq + 1) % events.len();
                black_box(step.handle(&events[seq]).expect("handled"))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("plugin-start");
    group.bench_function("instantiate-and-init/normalize-units", |b| {
        b.iter(|| {
            black_box(
                registry
                    .step(
                        "normalize-units",
                        NORMALIZE,
                        Limits::default(),
                        Grants::default(),
                        "s",
                    )
                    .expect("step"),
            )
        })
    });
    group.finish();

    // File write → new version serving, through the watcher; each round is a new file hash,
    // so a real compile (not a cache hit).
    let _watcher = Watcher::start(registry.clone(), DEFAULT_DEBOUNCE).expect("watch");
    let slot = registry.slot("sequence").expect("loaded");
    let original = dist("testing/sequence");
    let mut tag = 0;
    let mut group = c.benchmark_group("plugin-reload");
    group.sample_size(10);
    group.bench_function("write-to-serving/sequence", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                tag += 1;
                let before = slot.current().number;
                let written = Instant::now();
                install(dir.path(), "sequence", &retagged(&original, tag));
                while slot.current().number == before {
                    assert!(
                        written.elapsed() < Duration::from_secs(30),
                        "reload never happened"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += written.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
