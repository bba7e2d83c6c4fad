//! Hot reload under load: a stream of numbered events runs through a step while the plugin
//! file is replaced 50 times through the directory watcher, broken versions in between.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use iotrules::plugin::{Grants, Limits, ReloadReport, Verdict, Watcher};
use iotrules_tests::plugins::{Harness, built, install, retagged, six_properties};

/// What the worker saw for one event.
struct Served {
    device: String,
    seq: u64,
    /// The host's version number.
    version: u64,
    /// The instance's own count, from the plugin: 1 on the first event of a new instance.
    instance_seq: u64,
}

/// How a replacement file is broken, or not.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Replacement {
    Good,
    Truncated,
    WrongWorld,
    RefusesConfig,
}

#[test]
fn fifty_replacements_under_load_serve_every_event_once_in_order_by_good_versions() {
    let harness = Harness::new();
    let name = "sequence";
    let original = built("testing/sequence");
    let first = install(harness.dir.path(), name, &original);
    let ReloadReport::Loaded { sha256, .. } = harness.registry.load_file(&first) else {
        panic!("the first version loads");
    };
    let mut good_shas = BTreeSet::from([sha256]);

    let reports = harness.registry.subscribe();
    let _watcher = Watcher::start(harness.registry.clone(), Duration::from_millis(50))
        .expect("watch the plugins directory");

    // The worker: one step, events of four devices interleaved, numbered per device.
    let stop = Arc::new(AtomicBool::new(false));
    let (served_tx, served_rx) = mpsc::channel::<Served>();
    let worker = {
        let registry = harness.registry.clone();
        let stop = stop.clone();
        thread::spawn(move || -> u64 {
            let mut step = registry
                .step(name, "{}", Limits::default(), Grants::default(), "reload/0")
                .expect("step");
            let mut sent = 0u64;
            let mut next: HashMap<String, u64> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let device = format!("dev-{}", sent % 4);
                let seq = next.entry(device.clone()).or_insert(0);
                *seq += 1;
                let event = six_properties(&device, *seq);
                sent += 1;
                let handled = step.handle(&event).expect("a good version always serves");
                let Verdict::Replace(out) = handled.outcome.verdict else {
                    panic!("sequence replaces every event");
                };
                served_tx
                    .send(Served {
                        device,
                        seq: out
                            .attribute("seq")
                            .expect("seq kept")
                            .parse()
                            .expect("number"),
                        version: handled.version,
                        instance_seq: out
                            .attribute("plugin-sequence")
                            .expect("stamped")
                            .parse()
                            .expect("number"),
                    })
                    .expect("collector alive");
                // A steady stream, not a spin: leaves the reload thread its share of the CPU.
                if sent.is_multiple_of(64) {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        })
    };

    let kinds = [
        Replacement::Good,
        Replacement::Truncated,
        Replacement::Good,
        Replacement::WrongWorld,
        Replacement::Good,
        Replacement::RefusesConfig,
        Replacement::Good,
    ];
    let wrong_world = built("testing/wrong-world");
    let refuses = built("testing/bad-init");
    let mut loaded_versions: BTreeMap<u64, String> = BTreeMap::new();
    let mut reload_times = Vec::new();
    for round in 0..50 {
        let kind = kinds[round % kinds.len()];
        let bytes = match kind {
            Replacement::Good => retagged(&original, &round.to_string()),
            Replacement::Truncated => original[..original.len() / 2].to_vec(),
            Replacement::WrongWorld => retagged(&wrong_world, &round.to_string()),
            Replacement::RefusesConfig => retagged(&refuses, &round.to_string()),
        };
        let written = Instant::now();
        install(harness.dir.path(), name, &bytes);
        let deadline = written + Duration::from_secs(30);
        // Wait for this file's verdict; stray duplicates of earlier writes are skipped.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let report = reports
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("round {round} ({kind:?}): no reload report"));
            match (kind, report) {
                (
                    Replacement::Good,
                    ReloadReport::Loaded {
                        version, sha256, ..
                    },
                ) => {
                    good_shas.insert(sha256.clone());
                    loaded_versions.insert(version, sha256);
                    reload_times.push(written.elapsed());
                    break;
                }
                (Replacement::Good, ReloadReport::Rejected { error, .. }) => {
                    // Only a stray report of an earlier broken write may say this.
                    eprintln!("round {round}: skipping earlier rejection: {error}");
                }
                (_, ReloadReport::Rejected { .. }) => break,
                (_, ReloadReport::Loaded { sha256, .. }) => {
                    panic!("round {round}: broken file ({kind:?}) was loaded as {sha256}")
                }
                (_, ReloadReport::Unchanged { .. } | ReloadReport::Removed { .. }) => {}
                (_, ReloadReport::Quarantined { error, .. }) => {
                    panic!("round {round}: quarantined: {error}")
                }
            }
        }
        // Let some events flow on this version.
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = worker.join().expect("worker");
    let served: Vec<Served> = served_rx.try_iter().collect();

    // Every event handled exactly once, in order per device.
    assert_eq!(served.len() as u64, sent, "one outcome per event sent");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for s in &served {
        let previous = last.insert(&s.device, s.seq).unwrap_or(0);
        assert_eq!(
            s.seq,
            previous + 1,
            "{}: event {} after {previous}",
            s.device,
            s.seq
        );
    }
    // By versions that were loaded from good files only, each a fresh instance from its first
    // event, and moving forward only.
    let versions_used: BTreeSet<u64> = served.iter().map(|s| s.version).collect();
    let first_version = *versions_used.iter().next().expect("some version served");
    for version in &versions_used {
        assert!(
            *version == first_version || loaded_versions.contains_key(version),
            "version {version} served but was never loaded from a good file"
        );
    }
    for pair in served.windows(2) {
        assert!(
            pair[1].version >= pair[0].version,
            "versions only move forward"
        );
        if pair[1].version != pair[0].version {
            assert_eq!(
                pair[1].instance_seq, 1,
                "a new version runs in a new instance"
            );
        } else {
            assert_eq!(pair[1].instance_seq, pair[0].instance_seq + 1);
        }
    }
    let good_rounds = (0..50)
        .filter(|round| kinds[round % kinds.len()] == Replacement::Good)
        .count();
    assert_eq!(
        loaded_versions.len(),
        good_rounds,
        "every good replacement loaded"
    );
    assert!(
        versions_used.len() > good_rounds / 2,
        "most good versions served events: {versions_used:?}"
    );
    reload_times.sort();
    eprintln!(
        "{sent} events; write → serving: median {:?}, max {:?}",
        reload_times[reload_times.len() / 2],
        reload_times.last().expect("some")
    );
}
