//! The plugin runtime against real components: the example plugins doing their jobs, and
//! purpose-built bad plugins failing in every way a plugin can, each time followed by an event
//! that must still be processed.

use std::time::{Duration, Instant};

use iotrules::event::{Property, Value};
use iotrules::plugin::{
    Grants, Limits, MAX_SETS_PER_CALL, PluginError, ReloadReport, StateQuota, StateStore, Step,
    Verdict,
};
use iotrules_tests::plugins::{Harness, built, event, install, retagged, six_properties};
use iotrules_tests::wait_for;

fn loaded(report: &ReloadReport) {
    assert!(
        matches!(report, ReloadReport::Loaded { .. }),
        "expected the plugin to load, got {report:?}"
    );
}

fn step(harness: &Harness, plugin: &str, config: &str, limits: Limits) -> Step {
    harness
        .registry
        .step(plugin, config, limits, Grants::default(), plugin)
        .unwrap_or_else(|e| panic!("step {plugin}: {e}"))
}

/// The healthy plugin that runs after every failure, to prove the service goes on.
fn healthy(harness: &Harness) -> Step {
    healthy_within(harness, Limits::default())
}

/// [`healthy`] with `limits`.
fn healthy_within(harness: &Harness, limits: Limits) -> Step {
    loaded(&harness.load("sequence", "testing/sequence"));
    step(harness, "sequence", "{}", limits)
}

fn assert_still_serving(step: &mut Step, seq: u64) {
    let handled = step
        .handle(&six_properties("after-failure", seq))
        .expect("the next event is processed after a failure");
    let Verdict::Replace(event) = handled.outcome.verdict else {
        panic!("sequence replaces every event");
    };
    assert_eq!(event.attribute("seq"), Some(seq.to_string().as_str()));
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline() {
    let harness = Harness::new();
    loaded(&harness.load("spin", "testing/spin"));
    let mut next = healthy(&harness);
    let limits = Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    };
    let mut spin = step(&harness, "spin", "{}", limits);
    for seq in 0..2 {
        let started = Instant::now();
        let error = spin.handle(&six_properties("d", seq)).unwrap_err();
        assert!(
            matches!(&error, PluginError::Deadline { plugin, deadline } if plugin == "spin" && *deadline == limits.deadline),
            "{error:?}"
        );
        assert!(error.to_string().contains("20-ms deadline"), "{error}");
        // Stopped near the deadline, not left running: a generous bound against a loaded CI
        // machine, far below "never".
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_still_serving(&mut next, seq);
    }
}

/// The deadline counts what the call runs, not the time its thread is kept off the CPU: a
/// guest that is asleep (as one is whose core the kernel gives to another thread on a busy
/// machine) past its deadline, then runs a few microseconds of its own code, checking the
/// epoch as it goes, is not stopped for it. One that stays off the CPU for more than four
/// deadlines is.
#[test]
fn a_call_kept_off_the_cpu_past_its_deadline_is_stopped_only_after_four_deadlines() {
    let harness = Harness::new();
    loaded(&harness.load("nap", "testing/nap"));
    let mut next = healthy(&harness);
    // The default deadline, 50 ms: the naps below are late by it with room to spare either
    // way, so that a test thread woken a few tens of milliseconds late on a loaded machine
    // still tells the two cases apart.
    let limits = Limits::default();
    let runtime = harness.registry.runtime().clone();
    let mut napper = step(&harness, "nap", r#"{"ms": 120}"#, limits);
    for seq in 0..2 {
        let before = runtime.ticks();
        let started = Instant::now();
        let handled = napper.handle(&six_properties("d", seq));
        let ran = started.elapsed();
        assert!(handled.is_ok(), "stopped after {ran:?}: {handled:?}");
        assert!(ran >= Duration::from_millis(120), "{ran:?}");
        // The ticker found the call late and advanced the epoch under it: the guest's own code
        // after its sleep was asked whether to stop, and went on.
        assert!(runtime.ticks() > before, "the epoch never advanced");
    }
    let mut sleeper = step(&harness, "nap", r#"{"ms": 300}"#, limits);
    let started = Instant::now();
    let error = sleeper.handle(&six_properties("d", 2)).unwrap_err();
    assert!(
        matches!(&error, PluginError::Deadline { plugin, deadline } if plugin == "nap" && *deadline == limits.deadline),
        "{error:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_still_serving(&mut next, 0);
}

/// The epoch ticker sleeps while no call runs (an idle service does not wake a thousand times
/// a second for nothing), and a call that starts wakes it: a runaway guest is still stopped
/// at its deadline, not before.
#[test]
fn the_ticker_sleeps_while_idle_and_a_runaway_call_wakes_it_for_its_deadline() {
    let harness = Harness::new();
    loaded(&harness.load("spin", "testing/spin"));
    let limits = Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    };
    let mut spin = step(&harness, "spin", "{}", limits);
    let runtime = harness.registry.runtime().clone();
    wait_for("the idle ticker to sleep", || runtime.ticker_asleep());
    let asleep_at = runtime.ticks();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(runtime.ticks(), asleep_at, "the ticker ticked while asleep");

    for seq in 0..2 {
        if seq == 1 {
            // Asleep again after the first runaway, before the second.
            wait_for("the ticker to sleep again", || runtime.ticker_asleep());
        }
        let before = runtime.ticks();
        // On a thread of its own, so that a ticker that never wakes fails the test instead of
        // hanging it.
        let (sender, receiver) = std::sync::mpsc::channel();
        let call = std::thread::spawn(move || {
            let started = Instant::now();
            let result = spin.handle(&six_properties("d", seq));
            let _ = sender.send((result.map(|_| ()), started.elapsed()));
            spin
        });
        let (result, ran) = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("the runaway call is stopped: the ticker woke for it");
        assert!(
            matches!(&result, Err(PluginError::Deadline { plugin, .. }) if plugin == "spin"),
            "{result:?}"
        );
        assert!(
            ran >= limits.deadline,
            "stopped after {ran:?}, before its deadline"
        );
        assert!(
            runtime.ticks() > before,
            "stopped without the epoch advancing"
        );
        spin = call.join().expect("the call's thread");
    }
}

/// Calls that finish within their deadline never have the epoch advanced under them: the
/// ticker wakes for a deadline only, and a busy plugin is not interrupted to look at the time.
#[test]
fn calls_that_finish_in_time_leave_the_epoch_where_it_was() {
    let harness = Harness::new();
    // A deadline no call here comes near, even with its thread kept off a loaded CI machine's
    // cores for a while: the default 50 ms is one such pause away, and a call late by the
    // clock rightly has the epoch advanced for it (then runs on; see the test above).
    let limits = Limits {
        deadline: Duration::from_secs(30),
        ..Limits::default()
    };
    let mut next = healthy_within(&harness, limits);
    let runtime = harness.registry.runtime().clone();
    let before = runtime.ticks();
    let started = Instant::now();
    let mut seq = 0;
    // Long enough for a ticker advancing every millisecond to have advanced hundreds of times.
    while started.elapsed() < Duration::from_millis(500) {
        assert_still_serving(&mut next, seq);
        seq += 1;
    }
    assert_eq!(
        runtime.ticks(),
        before,
        "the epoch advanced over {seq} calls in time"
    );
}

/// A call whose deadline comes before the one the ticker sleeps for wakes it: a runaway with
/// a short deadline is stopped at its own, while one with a long deadline still runs.
#[test]
fn a_shorter_deadline_than_the_one_the_ticker_waits_for_is_kept() {
    let harness = Harness::new();
    loaded(&harness.load("spin", "testing/spin"));
    let long = Limits {
        deadline: Duration::from_secs(3),
        ..Limits::default()
    };
    let short = Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    };
    let mut slow = harness
        .registry
        .step("spin", "{}", long, Grants::default(), "slow")
        .expect("step");
    let mut fast = step(&harness, "spin", "{}", short);
    let (slow_done, slow_result) = std::sync::mpsc::channel();
    let slow_call = std::thread::spawn(move || {
        let _ = slow_done.send(slow.handle(&six_properties("slow", 0)).map(|_| ()));
    });
    // The slow call runs, and the ticker sleeps until its deadline.
    std::thread::sleep(Duration::from_millis(100));
    let (fast_done, fast_result) = std::sync::mpsc::channel();
    let fast_call = std::thread::spawn(move || {
        let _ = fast_done.send(fast.handle(&six_properties("fast", 0)).map(|_| ()));
    });
    let fast = fast_result
        .recv_timeout(Duration::from_secs(10))
        .expect("the fast call is stopped");
    assert!(
        matches!(&fast, Err(PluginError::Deadline { deadline, .. }) if *deadline == short.deadline),
        "{fast:?}"
    );
    assert!(
        slow_result.try_recv().is_err(),
        "the short deadline was kept only when the long one passed"
    );
    let slow = slow_result
        .recv_timeout(Duration::from_secs(20))
        .expect("the slow call is stopped");
    assert!(
        matches!(&slow, Err(PluginError::Deadline { deadline, .. }) if *deadline == long.deadline),
        "{slow:?}"
    );
    fast_call.join().expect("the fast call's thread");
    slow_call.join().expect("the slow call's thread");
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let harness = Harness::new();
    loaded(&harness.load("membomb", "testing/membomb"));
    let mut next = healthy(&harness);
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let mut bomb = step(&harness, "membomb", "{}", limits);
    let error = bomb.handle(&six_properties("d", 1)).unwrap_err();
    match &error {
        PluginError::Memory { plugin, cap, asked } => {
            assert_eq!(plugin, "membomb");
            assert_eq!(*cap, 8 << 20);
            assert!(*asked > *cap);
        }
        other => panic!("expected a memory error, got {other:?}"),
    }
    assert!(
        error.to_string().contains("memory cap of 8388608 bytes"),
        "{error}"
    );
    assert_still_serving(&mut next, 1);
}

#[test]
fn a_guest_panic_is_reported_with_its_message() {
    let harness = Harness::new();
    loaded(&harness.load("panic", "testing/panic"));
    let mut next = healthy(&harness);
    let mut panicking = step(&harness, "panic", "{}", Limits::default());
    for seq in 0..2 {
        let error = panicking.handle(&six_properties("d", seq)).unwrap_err();
        let PluginError::Panic { plugin, message } = &error else {
            panic!("expected a panic error, got {error:?}");
        };
        assert_eq!(plugin, "panic");
        assert!(
            message.contains(&format!("testing-panic: refusing event d-{seq}")),
            "{message}"
        );
        assert_still_serving(&mut next, seq);
    }
}

#[test]
fn a_config_refused_by_init_fails_the_step_with_the_plugins_reason() {
    let harness = Harness::new();
    loaded(&harness.load("bad-init", "testing/bad-init"));
    let error = harness
        .registry
        .step(
            "bad-init",
            "{}",
            Limits::default(),
            Grants::default(),
            "r/0",
        )
        .err()
        .expect("init refuses");
    assert!(
        matches!(&error, PluginError::Init { plugin, .. } if plugin == "bad-init"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("init refused the config"),
        "{error}"
    );

    // A real plugin refusing a real mistake names the field.
    loaded(&harness.load("deadband", "deadband"));
    let error = harness
        .registry
        .step(
            "deadband",
            r#"{"datapoints":["t"]}"#,
            Limits::default(),
            Grants::default(),
            "r/1",
        )
        .err()
        .expect("threshold is required");
    assert!(error.to_string().contains("threshold"), "{error}");
    let mut next = healthy(&harness);
    assert_still_serving(&mut next, 1);
}

#[test]
fn a_component_of_another_world_or_no_component_at_all_is_refused_at_load() {
    let harness = Harness::new();
    let report = harness.load("wrong-world", "testing/wrong-world");
    let ReloadReport::Rejected { error, .. } = &report else {
        panic!("expected a rejection, got {report:?}");
    };
    assert!(
        matches!(error, PluginError::WrongWorld { plugin, .. } if plugin == "wrong-world"),
        "{error:?}"
    );
    assert!(harness.registry.slot("wrong-world").is_none());

    for (name, bytes) in [
        ("garbage", b"definitely not wasm".to_vec()),
        ("truncated", built("testing/sequence")[..4096].to_vec()),
        ("empty", Vec::new()),
    ] {
        let path = install(harness.dir.path(), name, &bytes);
        let report = harness.registry.load_file(&path);
        let ReloadReport::Rejected { error, .. } = &report else {
            panic!("{name}: expected a rejection, got {report:?}");
        };
        assert!(
            matches!(error, PluginError::Compile { .. }),
            "{name}: {error:?}"
        );
        assert!(error.to_string().contains(name), "{name}: {error}");
    }
    let error = harness
        .registry
        .step("garbage", "{}", Limits::default(), Grants::default(), "r")
        .err()
        .expect("never loaded");
    assert!(matches!(error, PluginError::Missing { .. }), "{error:?}");
    let mut next = healthy(&harness);
    assert_still_serving(&mut next, 1);
}

#[test]
fn a_plugin_failing_in_a_row_is_quarantined_until_its_file_changes() {
    let harness = Harness::with_quarantine_after(3);
    loaded(&harness.load("panic", "testing/panic"));
    let mut next = healthy(&harness);
    let updates = harness.registry.subscribe();
    let mut failing = step(&harness, "panic", "{}", Limits::default());
    for seq in 0..3 {
        let error = failing.handle(&six_properties("d", seq)).unwrap_err();
        assert!(matches!(error, PluginError::Panic { .. }), "{error:?}");
    }
    let error = failing.handle(&six_properties("d", 3)).unwrap_err();
    let PluginError::Quarantined { failures, last, .. } = &error else {
        panic!("expected quarantine, got {error:?}");
    };
    assert_eq!(*failures, 3);
    assert!(last.contains("testing-panic"), "{last}");
    let report = updates
        .recv_timeout(Duration::from_secs(5))
        .expect("quarantine is reported");
    assert!(
        matches!(report, ReloadReport::Quarantined { ref plugin, .. } if plugin == "panic"),
        "{report:?}"
    );
    assert_still_serving(&mut next, 3);

    // The same bytes again do not lift it; a changed file does (and then fails afresh).
    let path = install(harness.dir.path(), "panic", &built("testing/panic"));
    assert!(matches!(
        harness.registry.load_file(&path),
        ReloadReport::Unchanged { .. }
    ));
    assert!(matches!(
        failing.handle(&six_properties("d", 4)),
        Err(PluginError::Quarantined { .. })
    ));
    let path = install(
        harness.dir.path(),
        "panic",
        &retagged(&built("testing/panic"), "2"),
    );
    loaded(&harness.registry.load_file(&path));
    assert!(matches!(
        failing.handle(&six_properties("d", 5)),
        Err(PluginError::Panic { .. })
    ));
}

#[test]
fn state_is_held_by_the_host_across_instances_and_versions() {
    let harness = Harness::new();
    let mut sequence = healthy(&harness);
    let attribute = |step: &mut Step, seq: u64, name: &str| -> String {
        let handled = step
            .handle(&six_properties("d", seq))
            .expect("sequence handles");
        let Verdict::Replace(event) = handled.outcome.verdict else {
            panic!("sequence replaces");
        };
        event.attribute(name).expect("attribute set").to_owned()
    };
    for seq in 1..=3 {
        assert_eq!(
            attribute(&mut sequence, seq, "plugin-total"),
            seq.to_string()
        );
    }
    // A new version means a new instance (its own count restarts) but the same state.
    let path = install(
        harness.dir.path(),
        "sequence",
        &retagged(&built("testing/sequence"), "v2"),
    );
    loaded(&harness.registry.load_file(&path));
    assert_eq!(attribute(&mut sequence, 4, "plugin-sequence"), "1");
    assert_eq!(attribute(&mut sequence, 5, "plugin-total"), "5");
}

#[test]
fn example_plugins_do_their_jobs_inside_the_host() {
    let harness = Harness::new();
    loaded(&harness.load("deadband", "deadband"));
    loaded(&harness.load("normalize-units", "normalize-units"));
    loaded(&harness.load("motion-light", "motion-light"));

    // deadband: the first report is kept, a small move dropped, a big move kept.
    let mut deadband = step(
        &harness,
        "deadband",
        r#"{"datapoints":["temp_current"],"threshold":5}"#,
        Limits::default(),
    );
    let temp = |seq, value| {
        event(
            "t1",
            seq,
            vec![Property::new("temp_current", Value::Integer(value))],
        )
    };
    let verdicts: Vec<Verdict> = [(1, 200), (2, 203), (3, 210)]
        .into_iter()
        .map(|(seq, value)| {
            deadband
                .handle(&temp(seq, value))
                .expect("deadband")
                .outcome
                .verdict
        })
        .collect();
    assert_eq!(verdicts, [Verdict::Keep, Verdict::Drop, Verdict::Keep]);

    // normalize-units: Tuya's 10–1000 brightness becomes a percentage under a new name.
    let mut normalize = step(
        &harness,
        "normalize-units",
        r#"{"mappings":[{"from":"bright_value_v2","to":"brightness","range":{"from":[10,1000],"to":[0,100]},"round":0}]}"#,
        Limits::default(),
    );
    let handled = normalize
        .handle(&six_properties("lamp", 1))
        .expect("normalize");
    let Verdict::Replace(normalized) = handled.outcome.verdict else {
        panic!("normalize-units replaces a converted event");
    };
    assert_eq!(
        normalized.property("brightness").map(|p| &p.value),
        Some(&Value::Integer(49))
    );
    assert!(normalized.property("bright_value_v2").is_none());

    // motion-light: presence switches the light on, absence off again.
    let mut motion = step(
        &harness,
        "motion-light",
        r#"{"sensors":["pir-1"],"lights":["light-1"],"via":"log"}"#,
        Limits::default(),
    );
    let pir = |seq, value: &str| {
        event(
            "pir-1",
            seq,
            vec![Property::new("pir", Value::Text(value.into()))],
        )
    };
    let on = motion
        .handle(&pir(1, "pir"))
        .expect("motion")
        .outcome
        .commands;
    assert_eq!(on.len(), 1, "{on:?}");
    assert_eq!(on[0].device.id, "light-1");
    assert_eq!(on[0].name, "switch_led");
    assert_eq!(on[0].params.as_str(), "true");
    assert_eq!(on[0].via.as_deref(), Some("log"));
    let off = motion
        .handle(&pir(2, "none"))
        .expect("motion")
        .outcome
        .commands;
    assert_eq!(off.len(), 1, "{off:?}");
    assert_eq!(off[0].params.as_str(), "false");
}

#[test]
fn compiled_components_are_cached_for_the_next_start() {
    let harness = Harness::new();
    loaded(&harness.load("deadband", "deadband"));
    let cached: Vec<_> = std::fs::read_dir(harness.cache.path())
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(cached.len(), 1, "one compiled component in the cache");
    let name = cached[0].file_name().to_string_lossy().into_owned();
    assert!(name.ends_with(".cwasm"), "{name}");

    // A second runtime over the same cache loads it instead of compiling, and it runs.
    let runtime = iotrules::plugin::Runtime::new(iotrules::plugin::RuntimeConfig {
        cache_dir: Some(harness.cache.path().to_owned()),
        ..Default::default()
    })
    .expect("runtime");
    let registry = iotrules::plugin::Registry::new(
        runtime,
        harness.dir.path(),
        std::sync::Arc::new(iotrules::plugin::MemoryStateStore::new()),
    );
    let started = Instant::now();
    for report in registry.load_all().expect("load dir") {
        loaded(&report);
    }
    let from_cache = started.elapsed();
    let mut step = registry
        .step(
            "deadband",
            r#"{"datapoints":["temp_current"],"threshold":5}"#,
            Limits::default(),
            Grants::default(),
            "r",
        )
        .expect("step");
    assert!(step.handle(&six_properties("d", 1)).is_ok());
    eprintln!("load from cache took {from_cache:?}");
}

#[test]
fn plugins_get_no_environment_files_or_network_unless_granted() {
    let harness = Harness::new();
    loaded(&harness.load("snoop", "testing/snoop"));
    let secrets = tempfile::tempdir().expect("temp dir");
    let file = secrets.path().join("secret.txt");
    std::fs::write(&file, "s3cret").expect("write");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    // A variable every process has, so the test sets none (setting one races other threads).
    let path = std::env::var("PATH").expect("PATH is set");
    let config = format!(
        r#"{{"env":"PATH","file":"{}","connect":"{}"}}"#,
        file.display(),
        listener.local_addr().expect("address")
    );
    let snoop = |grants: Grants| -> iotrules::event::Event {
        let mut step = harness
            .registry
            .step("snoop", &config, Limits::default(), grants, "snoop")
            .expect("step");
        let handled = step.handle(&six_properties("d", 1)).expect("snoop handles");
        let Verdict::Replace(event) = handled.outcome.verdict else {
            panic!("snoop replaces");
        };
        *event
    };

    let denied = snoop(Grants::default());
    assert_eq!(denied.attribute("snoop-env"), Some("denied"));
    let file_result = denied.attribute("snoop-file").expect("reported");
    assert!(file_result.starts_with("error"), "{file_result}");
    let net_result = denied.attribute("snoop-net").expect("reported");
    assert!(net_result.starts_with("error"), "{net_result}");

    let granted = snoop(Grants {
        env: vec!["PATH".into()],
        read_dirs: vec![secrets.path().to_owned()],
    });
    assert_eq!(granted.attribute("snoop-env"), Some(path.as_str()));
    assert_eq!(granted.attribute("snoop-file"), Some("read 6 bytes"));
    let net_result = granted.attribute("snoop-net").expect("reported");
    assert!(
        net_result.starts_with("error"),
        "the network is never granted: {net_result}"
    );
}

/// A `hoard` step with its own state namespace, and a generous deadline: these tests are
/// about state bounds, not time, and a debug build makes a thousand host calls slow.
fn hoard(harness: &Harness, namespace: &str, config: &str, state: StateQuota) -> Step {
    let limits = Limits {
        deadline: Duration::from_secs(2),
        state,
        ..Limits::default()
    };
    harness
        .registry
        .step("hoard", config, limits, Grants::default(), namespace)
        .unwrap_or_else(|e| panic!("step hoard: {e}"))
}

/// The reason a failed `hoard` call gave, which is the host's `state-set` error.
fn refusal(error: PluginError) -> String {
    match error {
        PluginError::Failed { plugin, reason } if plugin == "hoard" => reason,
        other => panic!("expected hoard to fail with a refused write, got {other:?}"),
    }
}

#[test]
fn one_call_setting_more_keys_than_the_per_call_bound_is_refused_and_keeps_none() {
    let harness = Harness::new();
    loaded(&harness.load("hoard", "testing/hoard"));
    // `last` and 999 more: exactly the bound.
    let mut within = hoard(
        &harness,
        "within",
        r#"{"keys":999,"bytes":1}"#,
        StateQuota::default(),
    );
    within
        .handle(&six_properties("d", 1))
        .expect("at the bound");
    assert_eq!(harness.state.len("within"), MAX_SETS_PER_CALL);

    let mut over = hoard(
        &harness,
        "over",
        r#"{"keys":1000,"bytes":1}"#,
        StateQuota::default(),
    );
    let reason = refusal(over.handle(&six_properties("d", 1)).unwrap_err());
    assert_eq!(
        reason,
        "hoard: state `d-1/999`: the host refused the write: this call has already set 1000 \
         keys, the most one call may set"
    );
    assert_eq!(harness.state.len("over"), 0, "the failed call kept none");
}

#[test]
fn a_step_over_its_key_quota_is_refused_the_new_key_and_keeps_what_it_had() {
    let harness = Harness::new();
    loaded(&harness.load("hoard", "testing/hoard"));
    let quota = StateQuota {
        keys: 25,
        ..StateQuota::default()
    };
    let mut step = hoard(&harness, "keys", r#"{"keys":10,"bytes":1}"#, quota);
    for seq in 1..=2 {
        step.handle(&six_properties("d", seq)).expect("within");
    }
    assert_eq!(harness.state.len("keys"), 21, "`last` and 2 × 10");
    let reason = refusal(step.handle(&six_properties("d", 3)).unwrap_err());
    assert_eq!(
        reason,
        "hoard: state `d-3/4`: the host refused the write: a new key would pass the step's \
         limit of 25 keys (`state_keys` of the rule step); delete keys or raise the limit"
    );
    assert_eq!(harness.state.len("keys"), 21);
    assert_eq!(
        harness.state.get("keys", "last").as_deref(),
        Some(&b"d-2"[..]),
        "the failed call's writes were discarded"
    );
}

#[test]
fn a_step_over_its_byte_quota_is_refused_the_write_that_grows_it() {
    let harness = Harness::new();
    loaded(&harness.load("hoard", "testing/hoard"));
    let quota = StateQuota {
        bytes: 10_000,
        ..StateQuota::default()
    };
    let mut step = hoard(&harness, "bytes", r#"{"keys":3,"bytes":3000}"#, quota);
    // `last`=`d-1` (7 bytes) and three keys of 5 + 3000 bytes: 9 022 bytes.
    step.handle(&six_properties("d", 1)).expect("within");
    let reason = refusal(step.handle(&six_properties("d", 2)).unwrap_err());
    assert_eq!(
        reason,
        "hoard: state `d-2/0`: the host refused the write: a write of 3005 bytes would bring \
         the step's state to 12027 bytes, over its limit of 10000 (`state_mb` of the rule step)"
    );
    assert_eq!(harness.state.len("bytes"), 4);
}

/// Events unlike each other in every field the view serves: an Alibaba device with a product
/// and a name, Huawei properties in services with their own times, JSON and null values, text
/// with quotes and non-ASCII, no attributes and several.
fn varied_events() -> Vec<iotrules::event::Event> {
    use iotrules::event::{Device, Json, Kind, Vendor};
    let mut alibaba = event("lamp-1", 7, Vec::new());
    alibaba.vendor = Vendor::Alibaba;
    alibaba.kind = Kind::DeviceEvent;
    alibaba.action = "thing.event.alarm.post".into();
    alibaba.device = Device {
        id: "a1B2.lamp-1".into(),
        product: Some("a1B2".into()),
        name: Some("lamp-1".into()),
    };
    alibaba.properties = vec![
        Property::new("pos", Value::Json(Json::from_text("[1,2]".into()).unwrap())),
        Property::new("note", Value::Text("say \"hi\" — 你好".into())),
        Property::new("gone", Value::Null),
    ];
    alibaba
        .attributes
        .insert("topic".into(), "/sys/a1B2/lamp-1/event".into());
    alibaba.attributes.insert("request-id".into(), "42".into());

    let mut huawei = event("meter-9", 8, Vec::new());
    huawei.vendor = Vendor::Huawei;
    huawei.properties = vec![
        Property::new("power", Value::Float(3.25)),
        Property::new("power", Value::Integer(4)),
    ];
    huawei.properties[0].service = Some("Meter".into());
    huawei.properties[0].time_ms = Some(1_700_000_000_123);
    huawei.properties[1].service = Some("Backup".into());
    huawei.attributes.clear();

    vec![six_properties("t-1", 1), alibaba, huawei]
}

#[test]
fn the_event_view_serves_every_field_as_the_event_holds_it() {
    let harness = Harness::new();
    loaded(&harness.load("mirror", "testing/mirror"));
    let mut mirror = step(
        &harness,
        "mirror",
        r#"{"codes": ["power", "pos", "absent"], "attributes": ["topic", "absent"]}"#,
        Limits::default(),
    );
    for original in varied_events() {
        let handled = mirror
            .handle(&original)
            .unwrap_or_else(|e| panic!("{}: {e}", original.id));
        let Verdict::Replace(rebuilt) = handled.outcome.verdict else {
            panic!("mirror replaces every event");
        };
        let mut rebuilt = *rebuilt;
        let looked_up: Vec<(String, String)> = rebuilt
            .attributes
            .iter()
            .filter(|(name, _)| name.starts_with("looked-up-"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        rebuilt
            .attributes
            .retain(|name, _| !name.starts_with("looked-up-"));
        assert_eq!(
            rebuilt, original,
            "the event rebuilt from the view's fields"
        );

        // One lookup by name each, answered with the first property of that code.
        let property = |code: &str| {
            original.property(code).map_or("none".to_owned(), |p| {
                serde_json::to_string(&p.value).unwrap()
            })
        };
        let attribute = |name: &str| original.attribute(name).unwrap_or("none").to_owned();
        let mut expected = vec![
            ("looked-up-attribute-absent".to_owned(), "none".to_owned()),
            ("looked-up-attribute-topic".to_owned(), attribute("topic")),
            ("looked-up-property-absent".to_owned(), "none".to_owned()),
            ("looked-up-property-pos".to_owned(), property("pos")),
            ("looked-up-property-power".to_owned(), property("power")),
        ];
        expected.sort();
        assert_eq!(looked_up, expected, "{}", original.id);
    }
}

#[test]
fn plugins_built_for_the_0_1_0_and_0_2_0_worlds_run_beside_current_ones() {
    let harness = Harness::new();
    loaded(&harness.load("legacy", "testing/legacy"));
    loaded(&harness.load("legacy-v2", "testing/legacy-v2"));
    loaded(&harness.load("echo", "testing/echo"));
    let world = |plugin: &str| harness.registry.slot(plugin).unwrap().current().world();
    assert_eq!(
        (world("legacy"), world("legacy-v2"), world("echo")),
        ("0.1.0", "0.2.0", "0.3.0")
    );
    let mut legacy = step(&harness, "legacy", "{}", Limits::default());
    let mut legacy_v2 = step(&harness, "legacy-v2", "{}", Limits::default());
    let mut current = step(&harness, "echo", "{}", Limits::default());
    for original in varied_events() {
        let new = current
            .handle(&original)
            .expect("the 0.3.0 plugin handles the event");
        for (step, world) in [(&mut legacy, "0.1.0"), (&mut legacy_v2, "0.2.0")] {
            let old = step
                .handle(&original)
                .unwrap_or_else(|e| panic!("the {world} plugin handles the event: {e}"));
            assert_eq!(
                old.outcome.commands, new.outcome.commands,
                "{world}: both send the same echo command"
            );
            let Verdict::Replace(passed_on) = old.outcome.verdict else {
                panic!("{world}: legacy replaces every event");
            };
            let mut expected = original.clone();
            expected
                .attributes
                .insert("legacy-world".into(), world.into());
            assert_eq!(
                *passed_on, expected,
                "{world}: the whole event went in and came back"
            );
        }
    }
}
