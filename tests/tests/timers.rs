//! Timers through the pipeline against a real plugin (`testing/alarm`) and, where restarts
//! matter, the SQLite store: a timer fires once, on its device's worker in order with its
//! events; it survives a restart before it is due and fires at start when it came due while
//! the service was down, and only once; a plugin reload keeps it, a removed rule drops it, a
//! failed call sets none, and a failed firing does not fire again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iotrules::config::PipelineConfig;
use iotrules::plugin::StateStore;
use iotrules::store::{SqliteStateStore, Store};
use iotrules_tests::pipeline::{Acks, Capture, Captured, TestPipeline, huawei_body};
use iotrules_tests::plugins::{Harness, built, install, retagged};
use iotrules_tests::{runtime, wait_for};

fn settings(workers: usize) -> PipelineConfig {
    PipelineConfig {
        workers,
        queue: 16,
        max_in_flight: 256,
        ..PipelineConfig::default()
    }
}

/// One rule `alarm` whose only step is the alarm plugin with `config`.
fn alarm_rule(config: &str) -> String {
    format!(
        r#"
[[rule]]
name = "alarm"
commands.via = "out"

[[rule.step]]
plugin = "alarm"
config = {config}
"#
    )
}

fn start(
    runtime: &tokio::runtime::Runtime,
    harness: Harness,
    rules: &str,
    capture: &Arc<Capture>,
    workers: usize,
) -> TestPipeline {
    TestPipeline::start_in(
        harness,
        &["testing/alarm"],
        rules,
        settings(workers),
        capture.clone(),
        runtime.handle(),
    )
}

/// Submits the numbered events of `device` and waits until each is acknowledged.
fn send(runtime: &tokio::runtime::Runtime, test: &TestPipeline, device: &str, seqs: &[u64]) {
    let dialect = iotrules::dialect::Dialect::Huawei(iotrules::dialect::huawei::Decoder::new());
    let ingest = test.pipeline().ingest("test", dialect);
    let acks = Arc::new(Acks::default());
    for seq in seqs {
        runtime
            .block_on(ingest.submit(acks.delivery(huawei_body(device, *seq))))
            .expect("submit");
    }
    wait_for("every event acked", || acks.acked() == seqs.len());
}

fn fired(capture: &Capture) -> Vec<Captured> {
    capture
        .received()
        .into_iter()
        .filter(|command| command.name == "fired")
        .collect()
}

/// The SQLite state of a store file, as the service opens it.
fn sqlite(file: &Path) -> Arc<SqliteStateStore> {
    Arc::new(SqliteStateStore::new(Arc::new(
        Store::open(file).expect("store"),
    )))
}

/// The timer entries left in a store file.
fn stored_timers(file: &Path) -> Vec<(String, String)> {
    let state = sqlite(file);
    state
        .timers()
        .into_iter()
        .map(|(namespace, key, _)| (namespace, key))
        .collect()
}

#[test]
fn a_timer_fires_once_on_its_device_with_its_commands_and_is_then_gone() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let mut test = start(
        &runtime,
        Harness::new(),
        &alarm_rule("{ set_on_seq = 1, delay_ms = 300 }"),
        &capture,
        2,
    );
    send(&runtime, &test, "dev-a", &[1]);
    assert!(fired(&capture).is_empty(), "not due yet");
    assert_eq!(test.harness.registry.timers().len(), 1);
    wait_for("the timer fired", || !fired(&capture).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let fired = fired(&capture);
    assert_eq!(fired.len(), 1, "fired once: {fired:?}");
    assert_eq!(fired[0].device, "dev-a");
    assert_eq!(fired[0].params["timer"], "alarm");
    assert_eq!(fired[0].params["count"], 1);
    assert!(test.harness.registry.timers().is_empty());
    assert!(
        test.harness.registry.state().timers().is_empty(),
        "its entry is deleted"
    );
    let timer_events = test
        .metrics
        .events_in
        .members()
        .into_iter()
        .find(|(labels, _)| labels[0] == "timer")
        .map(|(_, counter)| counter.get());
    assert_eq!(timer_events, Some(1), "counted under connector \"timer\"");
    test.drain(&runtime);
}

#[test]
fn a_timer_is_handled_in_order_with_the_events_of_its_device() {
    // Each device's fifth event sets a timer due at once, while the rest of its events are
    // queued behind: the firing must come between two of them, on the device's worker, and
    // see exactly the events before it.
    let runtime = runtime();
    let capture = Capture::open("out");
    let mut test = start(
        &runtime,
        Harness::new(),
        &alarm_rule("{ set_on_seq = 5 }"),
        &capture,
        2,
    );
    const DEVICES: usize = 4;
    const EACH: u64 = 60;
    let dialect = iotrules::dialect::Dialect::Huawei(iotrules::dialect::huawei::Decoder::new());
    let ingest = test.pipeline().ingest("test", dialect);
    let acks = Arc::new(Acks::default());
    runtime.block_on(async {
        for seq in 0..EACH {
            for device in 0..DEVICES {
                let body = huawei_body(&format!("dev-{device}"), seq);
                ingest.submit(acks.delivery(body)).await.expect("submit");
            }
        }
    });
    wait_for("every event acked", || {
        acks.acked() == DEVICES * EACH as usize
    });
    wait_for("every device's timer fired", || {
        fired(&capture).len() == DEVICES
    });
    drop(ingest);
    test.drain(&runtime);
    for device in 0..DEVICES {
        let device = format!("dev-{device}");
        let commands: Vec<Captured> = capture
            .received()
            .into_iter()
            .filter(|command| command.device == device)
            .collect();
        let seen: Vec<u64> = commands
            .iter()
            .filter(|c| c.name == "seen")
            .map(|c| c.seq.unwrap())
            .collect();
        assert_eq!(
            seen,
            (0..EACH).collect::<Vec<_>>(),
            "{device}: events in order"
        );
        let at = commands
            .iter()
            .position(|c| c.name == "fired")
            .expect("fired");
        let last_seen = commands[at].seq.expect("seq");
        assert!(
            last_seen >= 5,
            "{device}: fired before the event that set it"
        );
        assert_eq!(
            commands[at - 1].seq,
            Some(last_seen),
            "{device}: the firing saw exactly the events handled before it"
        );
    }
}

#[test]
fn a_timer_survives_a_restart_before_it_is_due_and_fires_once() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("iotrules.db");
    let rules = alarm_rule("{ set_on_seq = 1, delay_ms = 1500 }");
    let capture = Capture::open("out");
    let mut first = start(&runtime, Harness::over(sqlite(&file)), &rules, &capture, 2);
    send(&runtime, &first, "dev-a", &[1]);
    first.drain(&runtime);
    drop(first);
    assert!(fired(&capture).is_empty(), "stopped before it was due");
    assert_eq!(stored_timers(&file).len(), 1, "the timer is in the file");

    let mut second = start(&runtime, Harness::over(sqlite(&file)), &rules, &capture, 2);
    wait_for("the timer fired after the restart", || {
        !fired(&capture).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fired(&capture).len(), 1);
    second.drain(&runtime);
    drop(second);
    assert!(stored_timers(&file).is_empty(), "deleted when it fired");
}

#[test]
fn a_timer_due_while_the_service_was_down_fires_at_start_and_only_once() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("iotrules.db");
    let rules = alarm_rule("{ set_on_seq = 1, delay_ms = 1000 }");
    let capture = Capture::open("out");
    let mut first = start(&runtime, Harness::over(sqlite(&file)), &rules, &capture, 2);
    send(&runtime, &first, "dev-a", &[1]);
    first.drain(&runtime);
    drop(first);
    std::thread::sleep(Duration::from_millis(1300));
    assert!(
        fired(&capture).is_empty(),
        "the service was down when it came due"
    );

    let mut second = start(&runtime, Harness::over(sqlite(&file)), &rules, &capture, 2);
    wait_for("the timer fired at start", || !fired(&capture).is_empty());
    second.drain(&runtime);
    drop(second);
    assert_eq!(fired(&capture).len(), 1);

    let mut third = start(&runtime, Harness::over(sqlite(&file)), &rules, &capture, 2);
    std::thread::sleep(Duration::from_millis(1200));
    third.drain(&runtime);
    assert_eq!(fired(&capture).len(), 1, "not again on the next start");
}

#[test]
fn a_plugin_reload_keeps_the_pending_timers() {
    let runtime = runtime();
    let capture = Capture::open("out");
    // Long enough for the reload below, which compiles the new build, to finish first on a
    // loaded machine: under three busy loops on the 2 cores it took longer than 800 ms.
    let mut test = start(
        &runtime,
        Harness::new(),
        &alarm_rule("{ set_on_seq = 1, delay_ms = 3000 }"),
        &capture,
        2,
    );
    send(&runtime, &test, "dev-a", &[1]);
    let path = install(
        test.harness.dir.path(),
        "alarm",
        &retagged(&built("testing/alarm"), "second build"),
    );
    let report = test.harness.registry.load_file(&path);
    assert!(
        matches!(
            report,
            iotrules::plugin::ReloadReport::Loaded { version: 2, .. }
        ),
        "{report:?}"
    );
    assert_eq!(
        test.harness.registry.timers().len(),
        1,
        "kept by the reload"
    );
    wait_for("the timer fired on the new version", || {
        !fired(&capture).is_empty()
    });
    assert_eq!(fired(&capture).len(), 1);
    test.drain(&runtime);
}

#[test]
fn a_removed_rule_drops_its_timers_from_the_schedule_and_the_store() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("iotrules.db");
    let both = r#"
[[rule]]
name = "stays"
commands.via = "out"

[[rule.step]]
plugin = "alarm"
config = { name = "stays", set_on_seq = 1, delay_ms = 2000 }

[[rule]]
name = "goes"
commands.via = "out"

[[rule.step]]
plugin = "alarm"
config = { name = "goes", set_on_seq = 1, delay_ms = 2000 }
"#;
    let capture = Capture::open("out");
    let mut test = start(&runtime, Harness::over(sqlite(&file)), both, &capture, 2);
    send(&runtime, &test, "dev-a", &[1]);
    assert_eq!(test.harness.registry.timers().len(), 2);
    let stays = &both[..both.find("[[rule]]\nname = \"goes\"").expect("second rule")];
    std::fs::write(test.rules_dir.path().join("rules.toml"), stays).expect("rewrite");
    let reload = test.rules.reload();
    assert!(reload.is_ok(), "{reload:?}");
    wait_for("the removed rule's timer dropped", || {
        test.harness.registry.timers().len() == 1
    });
    wait_for("the other timer fired", || !fired(&capture).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let fired = fired(&capture);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].params["timer"], "stays");
    test.drain(&runtime);
    drop(test);
    assert!(stored_timers(&file).is_empty(), "both entries are gone");
}

#[test]
fn a_failed_call_sets_no_timer_and_a_cancelled_timer_does_not_fire() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let rules = r#"
[[rule]]
name = "fails"
on_error = "drop"
commands.via = "out"

[[rule.step]]
plugin = "alarm"
config = { name = "fails", fail_after_set_on_seq = 1, set_on_seq = 99, delay_ms = 100 }

[[rule]]
name = "cancels"
commands.via = "out"

[[rule.step]]
plugin = "alarm"
config = { name = "cancels", set_on_seq = 1, cancel_on_seq = 2, delay_ms = 400 }
"#;
    let mut test = start(&runtime, Harness::new(), rules, &capture, 1);
    send(&runtime, &test, "dev-a", &[1]);
    assert_eq!(
        test.harness.registry.timers().len(),
        1,
        "only the call that succeeded"
    );
    send(&runtime, &test, "dev-a", &[2]);
    assert!(test.harness.registry.timers().is_empty(), "cancelled");
    std::thread::sleep(Duration::from_millis(800));
    assert!(fired(&capture).is_empty());
    test.drain(&runtime);
}

#[test]
fn a_failed_firing_is_dead_lettered_and_does_not_fire_again() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let rules = r#"
[[rule]]
name = "alarm"
on_error = "dead-letter"
commands.via = "out"

[[rule.step]]
plugin = "alarm"
config = { set_on_seq = 1, delay_ms = 100, fail_on_timer = true }
"#;
    let mut test = start(&runtime, Harness::new(), rules, &capture, 1);
    send(&runtime, &test, "dev-a", &[1]);
    wait_for("the firing failed into a dead letter", || {
        test.dead_letters.letters().len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let letters = test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "once");
    assert_eq!(letters[0].connector.as_ref(), "timer");
    assert_eq!(letters[0].rule.as_deref(), Some("alarm"));
    assert!(letters[0].message.contains("asked to fail on timer alarm"));
    assert!(test.harness.registry.timers().is_empty());
    assert!(test.harness.registry.state().timers().is_empty());
    assert!(fired(&capture).is_empty());
    test.drain(&runtime);
}

/// A service directory for the `iotrules` binary: the alarm rule with `config`, its commands
/// printed by a `log` path, and a replay of one event (device `dev-a`, `seq` 1) that
/// remembers how far it got.
struct KilledService {
    replay: iotrules_tests::service::ReplayDir,
}

impl KilledService {
    fn new(config: &str) -> Self {
        let replay = iotrules_tests::service::ReplayDir::new(
            &[("alarm", "testing/alarm")],
            &alarm_rule(config),
            &[huawei_body("dev-a", 1)],
        );
        replay.config("kind = \"log\"");
        KilledService { replay }
    }

    fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(iotrules_tests::pipeline::binary());
        command
            .args(["run", "--config"])
            .arg(self.replay.dir.path().join("iotrules.toml"))
            .stderr(std::process::Stdio::null());
        command
    }

    /// Starts the service, waits until the replayed event is acknowledged (so the timer its
    /// call set is in the store), and kills it (SIGKILL) at once; returns what it printed.
    fn run_and_kill(&self) -> String {
        let out = self.replay.dir.path().join("first.out");
        let mut child = self
            .command()
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .spawn()
            .expect("start iotrules");
        wait_for("the event acknowledged", || {
            self.replay
                .offset()
                .is_some_and(|o| o.contains("\"next_line\": 2"))
        });
        child.kill().expect("kill -9");
        let _ = child.wait();
        std::fs::read_to_string(out).expect("stdout")
    }

    /// Runs the service to its end (the replay has nothing left; it lingers for the timers
    /// due within 10 s); returns what it printed.
    fn run(&self) -> String {
        let output = self.command().output().expect("run iotrules");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn timers_in_store(&self) -> Vec<(String, String)> {
        stored_timers(&self.replay.dir.path().join("state/iotrules.db"))
    }
}

/// The `fired` commands the log path printed.
fn fired_lines(stdout: &str) -> usize {
    stdout
        .lines()
        .filter(|line| line.contains("\"command\":\"fired\""))
        .count()
}

#[test]
fn a_timer_fires_once_after_the_service_is_killed_before_it_is_due() {
    let service = KilledService::new("{ set_on_seq = 1, delay_ms = 4000 }");
    let first = service.run_and_kill();
    assert_eq!(fired_lines(&first), 0, "killed before it was due: {first}");
    assert_eq!(
        service.timers_in_store().len(),
        1,
        "the timer is in the file"
    );
    let second = service.run();
    assert_eq!(
        fired_lines(&second),
        1,
        "fired once after the restart: {second}"
    );
    assert!(service.timers_in_store().is_empty());
    assert_eq!(fired_lines(&service.run()), 0, "and never again");
}

#[test]
fn a_timer_due_while_the_service_was_killed_fires_once_at_the_next_start() {
    let service = KilledService::new("{ set_on_seq = 1, delay_ms = 1500 }");
    let first = service.run_and_kill();
    assert_eq!(fired_lines(&first), 0, "{first}");
    std::thread::sleep(Duration::from_millis(1800));
    let second = service.run();
    assert_eq!(fired_lines(&second), 1, "fired once at start: {second}");
    assert!(service.timers_in_store().is_empty());
    assert_eq!(fired_lines(&service.run()), 0, "and never again");
}
