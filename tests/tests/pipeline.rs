//! The pipeline against real plugin components: per-device order over parallel workers,
//! backpressure and acknowledgement after command confirmation, de-duplication, dead
//! letters, rule reloads that refuse bad files; and the `iotrules` binary: a crash before
//! the acknowledgement, the webhook path against a local HTTP server, `check`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iotrules::command::{Failure, Lanes, PathSettings, Transport};
use iotrules::config::{PipelineConfig, Scheduling};
use iotrules::pipeline::{Acker, Delivery, Settle};
use iotrules::store::{SqliteStateStore, Store};
use iotrules_tests::http::Webhook;
use iotrules_tests::pipeline::{Acks, Capture, TestPipeline, binary, huawei_body};
use iotrules_tests::plugins::Harness;
use iotrules_tests::service::ReplayDir;
use iotrules_tests::{ECHO_RULE, runtime, wait_for, wait_within};

fn settings(workers: usize, queue: usize, max_in_flight: usize) -> PipelineConfig {
    PipelineConfig {
        workers,
        queue,
        max_in_flight,
        ..PipelineConfig::default()
    }
}

fn ingest(test: &TestPipeline) -> iotrules::pipeline::Ingest {
    let dialect = iotrules::dialect::Dialect::Huawei(iotrules::dialect::huawei::Decoder::new());
    test.pipeline().ingest("test", dialect)
}

/// A pipeline with `settings` over the `echo` plugin and [`ECHO_RULE`], its commands going to
/// `capture`.
fn echo_pipeline(
    runtime: &tokio::runtime::Runtime,
    capture: &Arc<Capture>,
    settings: PipelineConfig,
) -> TestPipeline {
    TestPipeline::start(
        &["testing/echo"],
        ECHO_RULE,
        settings,
        capture.clone(),
        runtime.handle(),
    )
}

/// Submits `bodies` to `test`'s pipeline in turn, each waiting for room, then drains the
/// pipeline; returns how their deliveries were settled.
fn run_through(
    runtime: &tokio::runtime::Runtime,
    test: &mut TestPipeline,
    bodies: impl IntoIterator<Item = String>,
) -> Arc<Acks> {
    let ingest = ingest(test);
    let acks = Arc::new(Acks::default());
    runtime.block_on(async {
        for body in bodies {
            ingest.submit(acks.delivery(body)).await.expect("submit");
        }
    });
    drop(ingest);
    test.drain(runtime);
    acks
}

#[test]
fn events_of_a_device_stay_in_order_across_workers() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let mut test = echo_pipeline(&runtime, &capture, settings(4, 8, 64));
    const DEVICES: u64 = 8;
    const EACH: u64 = 200;
    let bodies = (0..EACH)
        .flat_map(|seq| (0..DEVICES).map(move |device| huawei_body(&format!("dev-{device}"), seq)));
    let acks = run_through(&runtime, &mut test, bodies);

    assert_eq!(acks.acked(), (DEVICES * EACH) as usize);
    let mut per_device: HashMap<String, Vec<u64>> = HashMap::new();
    for command in capture.received() {
        per_device
            .entry(command.device)
            .or_default()
            .push(command.seq.expect("seq"));
    }
    assert_eq!(per_device.len(), DEVICES as usize);
    for (device, seqs) in per_device {
        assert_eq!(seqs, (0..EACH).collect::<Vec<_>>(), "{device}");
    }
}

/// A worker that fell behind takes what is queued as one batch and runs it rule by rule; what
/// each event's rules send must still come out in the order of the rules, and the events of a
/// device in their order. A first rule holds the only worker on a gate event (the `spin`
/// plugin, stopped at its deadline) while the producer fills the queue behind it, so the
/// batches that follow are full and hold many events of each device.
#[test]
fn a_batch_run_rule_by_rule_sends_each_events_commands_in_rule_order() {
    const GATE: &str = r#"
[[rule]]
name = "gate"
on_error = "drop"
when = { device = "gate" }

[[rule.step]]
plugin = "spin"
deadline_ms = 300
"#;
    const RULE_ORDER: [&str; 3] = ["first", "second", "third"];
    // Each rule sends one `echo` command named after itself.
    let rules: String = RULE_ORDER.iter().fold(GATE.to_owned(), |rules, name| {
        rules
            + &format!(
                "[[rule]]\nname = \"{name}\"\ncommands.via = \"out\"\n[[rule.step]]\n\
                 plugin = \"echo\"\nconfig = {{ command = \"{name}\" }}\n"
            )
    });
    let runtime = runtime();
    let capture = Capture::open("out");
    const QUEUE: usize = 96;
    let mut test = TestPipeline::start(
        &["testing/spin", "testing/echo"],
        &rules,
        settings(1, QUEUE, 1024),
        capture.clone(),
        runtime.handle(),
    );
    let ingest = ingest(&test);
    let acks = Arc::new(Acks::default());
    const DEVICES: u64 = 3;
    const EACH: u64 = 100;
    let queued_behind_the_gate = runtime.block_on(async {
        ingest
            .submit(acks.delivery(huawei_body("gate", 0)))
            .await
            .expect("submit");
        let gate_passed = || capture.received().iter().any(|c| c.device == "gate");
        let mut queued_behind_the_gate = 0;
        for seq in 0..EACH {
            for device in 0..DEVICES {
                if !gate_passed() {
                    queued_behind_the_gate += 1;
                }
                let body = huawei_body(&format!("dev-{device}"), seq);
                ingest.submit(acks.delivery(body)).await.expect("submit");
            }
        }
        queued_behind_the_gate
    });
    drop(ingest);
    test.drain(&runtime);

    // Without a full queue behind the gate this test would prove nothing.
    assert!(
        queued_behind_the_gate >= QUEUE,
        "only {queued_behind_the_gate} events queued while the gate held the worker"
    );
    assert_eq!(acks.acked(), (DEVICES * EACH + 1) as usize);
    let mut per_device: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for command in capture.received() {
        if command.device != "gate" {
            per_device
                .entry(command.device)
                .or_default()
                .push((command.seq.expect("seq"), command.name));
        }
    }
    assert_eq!(per_device.len(), DEVICES as usize);
    let expected: Vec<(u64, String)> = (0..EACH)
        .flat_map(|seq| RULE_ORDER.iter().map(move |rule| (seq, rule.to_string())))
        .collect();
    for (device, commands) in per_device {
        assert_eq!(commands, expected, "{device}");
    }
}

/// Submits `events` events of five devices to `test` on `runtime`, one after another as
/// intake takes them: their acknowledgements, how many were submitted so far, and the task.
fn produce(
    runtime: &tokio::runtime::Runtime,
    test: &TestPipeline,
    events: u64,
) -> (Arc<Acks>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let ingest = ingest(test);
    let acks = Arc::new(Acks::default());
    let submitted = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (acks, submitted) = (acks.clone(), submitted.clone());
        runtime.spawn(async move {
            for seq in 0..events {
                let body = huawei_body(&format!("dev-{}", seq % 5), seq);
                ingest.submit(acks.delivery(body)).await.expect("submit");
                submitted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    (acks, submitted, producer)
}

#[test]
fn no_event_is_acked_before_its_commands_are_confirmed_and_intake_waits_when_full() {
    let runtime = runtime();
    let capture = Capture::closed("out");
    const MAX_IN_FLIGHT: usize = 32;
    let mut test = echo_pipeline(&runtime, &capture, settings(2, 4, MAX_IN_FLIGHT));
    const EVENTS: u64 = 500;
    let (acks, submitted, producer) = produce(&runtime, &test, EVENTS);
    // The path holds every confirmation: intake stops at the in-flight limit.
    wait_for("the in-flight limit", || {
        capture.received().len() == MAX_IN_FLIGHT
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(submitted.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    assert_eq!(test.pipeline().in_flight(), MAX_IN_FLIGHT);
    assert_eq!(test.metrics.in_flight.get(), MAX_IN_FLIGHT as u64);
    assert_eq!(capture.received().len(), MAX_IN_FLIGHT);
    assert_eq!(acks.acked(), 0, "acked before the commands were confirmed");

    capture.release();
    runtime.block_on(producer).expect("producer");
    test.drain(&runtime);
    assert_eq!(acks.acked(), EVENTS as usize);
    assert_eq!(capture.received().len(), EVENTS as usize);
    assert_eq!(test.metrics.in_flight.get(), 0);
}

#[test]
fn a_command_still_unconfirmed_holds_up_only_its_own_event() {
    let runtime = runtime();
    let capture = Capture::holding("out", "dev-slow");
    let mut test = echo_pipeline(&runtime, &capture, settings(1, 64, 64));
    let ingest = ingest(&test);
    let acks = Arc::new(Acks::default());
    // Submitted without waking the one worker, then woken once: they run as one batch, the
    // held one first.
    const OTHERS: usize = 20;
    let deferring = ingest.deferring();
    runtime.block_on(async {
        let slow = huawei_body("dev-slow", 0);
        deferring.submit(acks.delivery(slow)).await.expect("submit");
        for seq in 1..=OTHERS {
            let body = huawei_body(&format!("dev-{}", seq % 4), seq as u64);
            deferring.submit(acks.delivery(body)).await.expect("submit");
        }
    });
    deferring.wake_workers();
    wait_for("the events after the held one acked", || {
        acks.acked() == OTHERS
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        acks.acked(),
        OTHERS,
        "acked before its command was confirmed"
    );
    assert_eq!(test.pipeline().in_flight(), 1);

    capture.release();
    drop(deferring);
    drop(ingest);
    test.drain(&runtime);
    assert_eq!(acks.acked(), OTHERS + 1);
    assert_eq!(acks.retried(), 0);
    assert_eq!(capture.received().len(), OTHERS + 1);
}

/// A transport whose every attempt waits until the gate opens, then succeeds.
struct Gated {
    open: tokio::sync::watch::Receiver<bool>,
}

impl Transport for Gated {
    async fn deliver(&self, _command: &iotrules::event::Command) -> Result<(), Failure> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        Ok(())
    }
}

#[test]
fn a_full_command_path_holds_the_workers_rather_than_filling_the_in_flight_budget() {
    let runtime = runtime();
    let (gate, open) = tokio::sync::watch::channel(false);
    // One lane with room for one command behind the one it is sending: full at once.
    let path = Lanes::start(
        "out",
        Gated { open },
        PathSettings {
            lanes: 1,
            queue: 1,
            timeout: Duration::from_secs(120),
            retries: 0,
            rate_per_s: 0.0,
            window: 1,
        },
        runtime.handle(),
    );
    const MAX_IN_FLIGHT: usize = 4096;
    const EVENTS: u64 = 3000;
    let mut test = TestPipeline::start(
        &["testing/echo"],
        ECHO_RULE,
        settings(2, 8, MAX_IN_FLIGHT),
        path,
        runtime.handle(),
    );
    let (acks, submitted, producer) = produce(&runtime, &test, EVENTS);
    // Intake stops long before the in-flight budget (which would take every event) is
    // spent: the workers wait on the full path with their next events still in their
    // queues. What is held is the workers' queues (8 each), their batches and the groups
    // waiting for the path (a few times 32 events each), and the lane's two commands.
    let last = AtomicUsize::new(usize::MAX);
    wait_for("intake to stop", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = submitted.load(Ordering::SeqCst);
        last.swap(now, Ordering::SeqCst) == now
    });
    let held = submitted.load(Ordering::SeqCst);
    assert!(
        held < 1000,
        "{held} of {EVENTS} events taken in while the command path was full"
    );
    // The one submission still waiting for room in a worker's queue holds its slot too.
    let in_flight = test.pipeline().in_flight();
    assert!(
        (held..=held + 1).contains(&in_flight),
        "{in_flight} in flight, {held} submitted"
    );
    assert_eq!(acks.acked(), 0, "acked before the commands were confirmed");

    gate.send_replace(true);
    runtime.block_on(producer).expect("producer");
    test.drain(&runtime);
    assert_eq!(acks.acked(), EVENTS as usize);
    assert_eq!(test.metrics.in_flight.get(), 0);
}

#[test]
fn a_duplicate_is_acked_without_running_rules_and_garbage_becomes_a_dead_letter() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let mut test = echo_pipeline(&runtime, &capture, settings(2, 8, 64));
    let bodies = [
        huawei_body("dev-a", 1),
        huawei_body("dev-a", 1),
        "{\"resource\": 7".to_owned(),
    ];
    let acks = run_through(&runtime, &mut test, bodies);

    assert_eq!(acks.acked(), 3);
    assert_eq!(capture.received().len(), 1);
    let dropped = test
        .metrics
        .events_dropped
        .with(&["test", "duplicate"])
        .get();
    assert_eq!(dropped, 1);
    let letters = test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].kind, "json");
    assert_eq!(letters[0].connector.as_ref(), "test");
    assert_eq!(letters[0].payload, b"{\"resource\": 7");
    assert!(
        letters[0].message.contains("line 1"),
        "{}",
        letters[0].message
    );
}

/// Replays three messages whose commands all fail with no dead letter stored, so the pipeline
/// sends each back for a retry; `rewrite` replaces the recording's text before that. Returns
/// the replay's summary and the (device, seq) of every command the path saw, in order.
fn replay_with_retries(
    rewrite: Option<&str>,
) -> (
    iotrules::connector::replay::ReplaySummary,
    Vec<(String, Option<u64>)>,
) {
    use iotrules::connector::replay::{self, ReplaySettings};
    use iotrules::status::{ConnectorStatus, Connectors, LastErrors};

    let runtime = runtime();
    let capture = Capture::closed("out");
    let test = echo_pipeline(&runtime, &capture, settings(2, 8, 64));
    // Comment and blank lines between the messages, so a line's place in the file is not a
    // multiple of anything.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("recording.jsonl");
    let mut text = String::from("# recorded for the retry test\n");
    for seq in 1..=3 {
        let line = serde_json::json!({ "payload": huawei_body(&format!("dev-{seq}"), seq) });
        text.push_str(&format!("{line}\n\n# after message {seq}\n"));
    }
    std::fs::write(&file, text).expect("write the recording");

    let status =
        Arc::new(Connectors::default()).add(ConnectorStatus::starting("test", "replay", "huawei"));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let settings = ReplaySettings {
        file: file.clone(),
        rate: 0.0,
        repeat: false,
        offset_file: None,
    };
    let replaying = runtime.spawn(replay::run(
        settings,
        ingest(&test),
        status,
        Arc::new(LastErrors::default()),
        shutdown,
    ));
    wait_for("the three commands", || capture.received().len() == 3);
    if let Some(text) = rewrite {
        std::fs::write(&file, text).expect("rewrite the recording");
    }
    // Every command fails and no dead letter can be stored: the pipeline sends all three
    // back, and the path lets their second attempt through.
    test.dead_letters.refuse(true);
    capture.fail();
    let summary = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), replaying).await })
        .expect("the replay finishes once every message is settled")
        .expect("the replay task")
        .expect("the replay");
    let commands = capture
        .received()
        .iter()
        .map(|c| (c.device.clone(), c.seq))
        .collect();
    (summary, commands)
}

#[test]
fn a_replayed_message_sent_back_for_a_retry_is_read_again_from_its_own_line() {
    let (summary, mut commands) = replay_with_retries(None);
    assert_eq!((summary.delivered, summary.retried), (3, 3), "{summary:?}");
    commands[..3].sort();
    commands[3..].sort();
    let once: Vec<_> = (1..=3).map(|n| (format!("dev-{n}"), Some(n))).collect();
    assert_eq!(
        commands,
        [once.clone(), once].concat(),
        "each retry is its own line again"
    );
}

#[test]
fn a_retry_whose_line_is_gone_is_reported_and_the_replay_still_finishes() {
    let (summary, commands) = replay_with_retries(Some("# emptied\n"));
    assert_eq!(
        (summary.delivered, summary.retried, summary.bad_lines),
        (3, 0, 3),
        "{summary:?}"
    );
    assert_eq!(commands.len(), 3, "nothing was sent again: {commands:?}");
}

#[test]
fn a_copy_arriving_while_the_first_is_in_flight_settles_as_the_first_does() {
    let runtime = runtime();
    for (outcome, store_works) in [("acked", true), ("retried", false)] {
        let capture = Capture::closed("out");
        let mut test = echo_pipeline(&runtime, &capture, settings(2, 8, 64));
        let ingest = ingest(&test);
        let first = Arc::new(Acks::default());
        let copy = Arc::new(Acks::default());
        runtime.block_on(async {
            ingest
                .submit(first.delivery(huawei_body("dev-a", 1)))
                .await
                .expect("submit");
            wait_for("the first copy's command", || capture.received().len() == 1);
            // The transport delivers it again while the first copy waits for its command.
            ingest
                .submit(copy.delivery(huawei_body("dev-a", 1)))
                .await
                .expect("submit");
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            (copy.acked(), copy.retried()),
            (0, 0),
            "the copy was settled while the first was in flight"
        );
        assert_eq!(capture.received().len(), 1, "the copy ran the rules");
        // The command fails; its dead letter is stored (the first is done: acked) or the
        // store refuses it (the first goes back for a retry).
        test.dead_letters.refuse(!store_works);
        capture.fail();
        wait_for("the first copy settled", || {
            first.acked() + first.retried() == 1
        });
        wait_for("the copy settled", || copy.acked() + copy.retried() == 1);
        let settled = |acks: &Acks| {
            if acks.acked() == 1 {
                "acked"
            } else {
                "retried"
            }
        };
        assert_eq!(settled(&first), outcome);
        assert_eq!(settled(&copy), outcome, "the copy settled unlike the first");
        drop(ingest);
        test.drain(&runtime);
        assert_eq!(test.metrics.in_flight.get(), 0);
    }
}

#[test]
fn a_message_whose_dead_letter_cannot_be_stored_goes_back_with_pauses_then_is_held_not_dropped() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let mut config = settings(2, 8, 64);
    config.redelivery_attempts = 3;
    config.redelivery_delay_ms = 20;
    let mut test = echo_pipeline(&runtime, &capture, config);
    test.dead_letters.refuse(true);
    let ingest = ingest(&test);
    // A transport that delivers the message again at once each time it is sent back, as
    // Pulsar's nack and AMQP's `modified` do, noting when it delivers.
    let acks = Arc::new(Acks::default());
    let redelivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let garbage = "{\"resource\": 7".to_owned();
    let transport = {
        let (acks, redelivered, ingest, garbage) = (
            acks.clone(),
            redelivered.clone(),
            ingest.clone(),
            garbage.clone(),
        );
        runtime.spawn(async move {
            let mut sent_back = 0;
            redelivered.lock().unwrap().push(Instant::now());
            ingest
                .submit(acks.delivery(garbage.clone()))
                .await
                .expect("submit");
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let retried = acks.retried();
                if retried > sent_back {
                    sent_back = retried;
                    redelivered.lock().unwrap().push(Instant::now());
                    ingest
                        .submit(acks.delivery(garbage.clone()))
                        .await
                        .expect("submit");
                }
                if acks.acked() > 0 {
                    break;
                }
            }
        })
    };
    wait_for("the message held", || test.metrics.events_held.get() == 1);
    // Held: neither acknowledged nor sent back any more, however long the store refuses.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        acks.retried(),
        3,
        "sent back redelivery_attempts times, then held"
    );
    assert_eq!(acks.acked(), 0);
    // Each time after a pause doubling from redelivery_delay_ms (a lower bound: never hot).
    let times = redelivered.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "the first delivery and three more");
    for (n, pair) in times.windows(2).enumerate() {
        let pause = Duration::from_millis(20 << n);
        assert!(
            pair[1] - pair[0] >= pause,
            "redelivery {} after {:?}",
            n + 1,
            pair[1] - pair[0]
        );
    }
    // The store takes dead letters again: the held message is stored and acknowledged.
    test.dead_letters.refuse(false);
    wait_for("the held message acknowledged", || acks.acked() == 1);
    runtime.block_on(transport).expect("transport");
    assert_eq!(test.metrics.events_held.get(), 0);
    let letters = test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].payload, garbage.as_bytes());
    drop(ingest);
    test.drain(&runtime);
}

/// A pipeline with `settings` whose one rule writes a state key per event (`hoard`: the
/// event's id and `/0`), its state in `iotrules.db` in `dir`.
fn hoarding(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    settings: PipelineConfig,
) -> (TestPipeline, Arc<SqliteStateStore>) {
    let store = Arc::new(Store::open(dir.join("iotrules.db")).expect("store"));
    let state = Arc::new(SqliteStateStore::new(store));
    let test = TestPipeline::start_in(
        Harness::over(state.clone()),
        &["testing/hoard"],
        r#"
[[rule]]
name = "hoard"

[[rule.step]]
plugin = "hoard"
config = { keys = 1, bytes = 8 }
"#,
        settings,
        Capture::open("out"),
        runtime.handle(),
    );
    (test, state)
}

/// A pipeline of 2 workers as [`hoarding`], and a second connection to that file holding its write lock, as
/// another process (`iotrules dead-letters purge`, a backup) may: no commit gets through
/// until the test commits that connection.
fn hoarding_while_locked(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    max_in_flight: usize,
) -> (TestPipeline, Arc<SqliteStateStore>, rusqlite::Connection) {
    let (test, state) = hoarding(runtime, dir, settings(2, 16, max_in_flight));
    let other = rusqlite::Connection::open(dir.join("iotrules.db")).expect("second connection");
    other
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    (test, state, other)
}

#[test]
fn no_event_is_acked_before_the_state_its_plugins_wrote_is_in_the_store() {
    // Plugin state is committed in groups, after the calls that wrote it: the events that
    // wrote wait for that commit. Another process (`iotrules dead-letters purge`, a backup)
    // holds the file's write lock for a while: nothing may be acknowledged meanwhile.
    const EVENTS: u64 = 20;
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut test, _state, other) = hoarding_while_locked(&runtime, dir.path(), 64);

    let acks = Arc::new(Acks::default());
    let ingest = ingest(&test);
    for seq in 0..EVENTS {
        let delivery = acks.delivery(huawei_body(&format!("dev-{}", seq % 4), seq));
        runtime.block_on(ingest.submit(delivery)).expect("submit");
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        acks.acked(),
        0,
        "acknowledged before its state was committed"
    );

    other.execute_batch("COMMIT").expect("release the lock");
    wait_for("every event acked", || acks.acked() == EVENTS as usize);
    let written: i64 = other
        .query_row(
            "SELECT count(*) FROM plugin_state WHERE key LIKE '%/0'",
            [],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(written, EVENTS as i64, "every event's write is in the file");
    assert_eq!(acks.retried(), 0);
    drop(ingest);
    test.drain(&runtime);
}

#[test]
fn a_delivery_without_an_ack_waits_for_no_commit_until_the_store_is_a_budget_behind() {
    // A transport that takes no acknowledgement (MQTT QoS 0): there is nothing to send too
    // early, so its event is settled without waiting for its state's commit, unless the
    // store is max_in_flight calls behind. Then it waits too, so the writes nobody waits
    // for stay bounded.
    const MAX_IN_FLIGHT: usize = 64;
    const ACKED: u64 = 10;
    const FREE: u64 = 200;
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut test, state, other) = hoarding_while_locked(&runtime, dir.path(), MAX_IN_FLIGHT);

    let acks = Arc::new(Acks::default());
    let ingest = ingest(&test);
    for seq in 0..ACKED {
        let delivery = acks.delivery(huawei_body(&format!("acked-{}", seq % 4), seq));
        runtime.block_on(ingest.submit(delivery)).expect("submit");
    }
    let free = |seq: u64| Delivery {
        payload: huawei_body(&format!("free-{}", seq % 4), seq).into_bytes(),
        properties: Vec::new(),
        acker: Acker::none(),
    };
    for seq in 0..20 {
        runtime.block_on(ingest.submit(free(seq))).expect("submit");
    }
    wait_for("the free events settled, the acked ones held", || {
        test.pipeline().in_flight() == ACKED as usize
    });
    assert_eq!(
        acks.acked(),
        0,
        "acknowledged before its state was committed"
    );

    // More of them than the budget: once the store is that far behind, they wait, the
    // in-flight budget fills and the source is held up.
    let submitted = Arc::new(AtomicUsize::new(20));
    let source = {
        let ingest = ingest.clone();
        let submitted = submitted.clone();
        let handle = runtime.handle().clone();
        std::thread::spawn(move || {
            for seq in 20..FREE {
                handle.block_on(ingest.submit(free(seq))).expect("submit");
                submitted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_for("the in-flight budget full", || {
        test.pipeline().in_flight() == MAX_IN_FLIGHT
    });
    assert!(
        submitted.load(Ordering::SeqCst) < FREE as usize,
        "the source was never held up"
    );

    other.execute_batch("COMMIT").expect("release the lock");
    source.join().expect("source");
    wait_for("every acked event acked", || acks.acked() == ACKED as usize);
    wait_for("nothing in flight", || test.pipeline().in_flight() == 0);
    state.flush();
    let written: i64 = other
        .query_row(
            "SELECT count(*) FROM plugin_state WHERE key LIKE '%/0'",
            [],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(
        written,
        (ACKED + FREE) as i64,
        "every event's write is in the file"
    );
    drop(ingest);
    test.drain(&runtime);
}

#[test]
fn a_worker_behind_lets_its_batches_share_a_commit_and_acks_none_before_it() {
    // One worker, woken once for 400 events: it takes them 32 at a time, and at the end of a
    // batch it has run it asks for their commit. While 128 or more events wait behind it, up
    // to four batches share one: 7 commits here (batches 1-4, 5-8, then the last five one
    // each, under 128 behind) where a commit per batch makes 13. Every acknowledgement is
    // checked against the file as it comes: with n events acknowledged, the writes of at
    // least n events are committed (each event writes a key of its own).
    const EVENTS: u64 = 400;
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut test, state) = hoarding(&runtime, dir.path(), settings(1, 512, 1024));
    let reader = rusqlite::Connection::open(dir.path().join("iotrules.db")).expect("reader");
    let reader = Arc::new(std::sync::Mutex::new(reader));
    let acked = Arc::new(AtomicUsize::new(0));
    let early = Arc::new(AtomicUsize::new(0));
    let delivery = |seq: u64| {
        let (reader, acked, early) = (reader.clone(), acked.clone(), early.clone());
        Delivery {
            payload: huawei_body(&format!("dev-{}", seq % 8), seq).into_bytes(),
            properties: Vec::new(),
            acker: Acker::new(move |how| {
                if matches!(how, Settle::Retry) {
                    // Counted as early: nothing here is to be sent back.
                    early.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let reader = reader.lock().expect("reader");
                let acked = acked.fetch_add(1, Ordering::SeqCst) + 1;
                let written: i64 = reader
                    .query_row(
                        "SELECT count(*) FROM plugin_state WHERE key LIKE '%/0'",
                        [],
                        |row| row.get(0),
                    )
                    .expect("count");
                if written < acked as i64 {
                    early.fetch_add(1, Ordering::SeqCst);
                }
            }),
        }
    };
    let ingest = ingest(&test);
    // The worker has run one event and gone to sleep.
    runtime
        .block_on(ingest.submit(delivery(0)))
        .expect("submit");
    wait_for("the first event", || acked.load(Ordering::SeqCst) == 1);
    std::thread::sleep(Duration::from_millis(200));
    let commits_before = state.commits();

    let deferring = ingest.deferring();
    runtime.block_on(async {
        for seq in 1..=EVENTS {
            deferring.submit(delivery(seq)).await.expect("submit");
        }
    });
    deferring.wake_workers();
    wait_for("every event acked", || {
        acked.load(Ordering::SeqCst) == EVENTS as usize + 1
    });
    let commits = state.commits() - commits_before;
    assert_eq!(
        early.load(Ordering::SeqCst),
        0,
        "acknowledged before its commit, or sent back"
    );
    // One more than the 7 for a commit of the store's own thread, should the machine stall
    // the worker past the 50 ms it lets writes nobody waits for gather.
    assert!(
        (1..=8).contains(&commits),
        "{commits} commits for {} batches",
        EVENTS.div_ceil(32)
    );
    drop(deferring);
    drop(ingest);
    test.drain(&runtime);
}

#[test]
fn a_plugin_failure_dead_letters_the_raw_message_under_the_rules_policy() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let rules = format!(
        r#"
[[rule]]
name = "panics"
on_error = "dead-letter"

[[rule.step]]
plugin = "panic"
{ECHO_RULE}"#
    );
    let mut test = TestPipeline::start(
        &["testing/echo", "testing/panic"],
        &rules,
        settings(2, 8, 64),
        capture.clone(),
        runtime.handle(),
    );
    let body = huawei_body("dev-a", 1);
    let acks = run_through(&runtime, &mut test, [body.clone()]);

    assert_eq!(acks.acked(), 1);
    // The other rule ran independently.
    assert_eq!(capture.received().len(), 1);
    let letters = test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].kind, "plugin:panic");
    assert_eq!(letters[0].rule.as_deref(), Some("panics"));
    assert_eq!(letters[0].step, Some(1));
    assert_eq!(letters[0].payload, body.as_bytes());
    assert_eq!(letters[0].event_id.as_deref(), Some("dev-a-1"));
}

#[test]
fn a_command_through_a_path_the_rule_does_not_allow_is_dead_lettered_not_sent() {
    let runtime = runtime();
    let capture = Capture::open("out");
    // The plugin's config names a path of its own; the rule allows only its `via`.
    let rules = r#"
[[rule]]
name = "motion"
commands.via = "out"

[[rule.step]]
plugin = "motion-light"
config = { sensors = ["pir-1"], lights = ["lamp-1"], via = "operator-hook" }
"#;
    let mut test = TestPipeline::start(
        &["motion-light"],
        rules,
        settings(1, 8, 64),
        capture.clone(),
        runtime.handle(),
    );
    let body = huawei_body("pir-1", 1).replace("\"seq\":1", "\"pir\":\"pir\"");
    let acks = run_through(&runtime, &mut test, [body]);

    assert_eq!(acks.acked(), 1);
    assert!(capture.received().is_empty(), "nothing is sent");
    let letters = test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].kind, "command");
    assert_eq!(letters[0].rule.as_deref(), Some("motion"));
    assert_eq!(letters[0].step, Some(1));
    assert!(
        letters[0].message.starts_with(
            "command switch_led for device lamp-1 not sent: step 1 (plugin \"motion-light\") \
             may not send through command path \"operator-hook\" (it may use: \"out\")"
        ),
        "{}",
        letters[0].message
    );
    let metrics = &test.metrics;
    assert_eq!(metrics.rule_commands.with(&["motion", "failed"]).get(), 1);
}

#[test]
fn bad_rule_files_are_refused_with_their_reason_while_the_old_rules_keep_serving() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let mut test = echo_pipeline(&runtime, &capture, settings(2, 8, 64));
    let ingest = ingest(&test);
    let acks = Arc::new(Acks::default());
    let file = test.rules_dir.path().join("rules.toml");
    let renamed = ECHO_RULE.replace(
        "plugin = \"echo\"",
        "plugin = \"echo\"\nconfig = { command = \"echo-v2\" }",
    );
    let bad: [(&str, String, &str); 6] = [
        (
            "TOML syntax",
            "[[rule]\nname = \"x\"".into(),
            "rules.toml:1:",
        ),
        (
            "missing plugin",
            ECHO_RULE.replace("\"echo\"", "\"no-such-plugin\""),
            "unknown plugin \"no-such-plugin\"",
        ),
        (
            "config refused by init",
            ECHO_RULE.replace(
                "plugin = \"echo\"",
                "plugin = \"echo\"\nconfig = { colour = 1 }",
            ),
            "init refused the config",
        ),
        (
            "bad expression",
            ECHO_RULE.replace("commands.via", "if = 'event.'\ncommands.via"),
            "rule \"echo-all\": if: ",
        ),
        (
            "unknown key",
            ECHO_RULE.replace("commands.via", "priority = 1\ncommands.via"),
            "priority",
        ),
        (
            "duplicate rule name",
            format!("{ECHO_RULE}\n{ECHO_RULE}"),
            "echo-all",
        ),
    ];
    let mut seq = 0;
    let mut send_one = |expected_command: &str| {
        seq += 1;
        let before = capture.received().len();
        runtime
            .block_on(ingest.submit(acks.delivery(huawei_body("dev-a", seq))))
            .expect("submit");
        wait_for("the command", || capture.received().len() == before + 1);
        let last = capture.received().pop().unwrap();
        assert_eq!(last.name, expected_command);
        assert_eq!(last.seq, Some(seq));
    };
    send_one("echo");
    for (what, text, reason) in &bad {
        std::fs::write(&file, text).unwrap();
        let errors = test.rules.reload().expect_err(what);
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            all.iter()
                .any(|e| e.contains("rules.toml") && e.contains(reason)),
            "{what}: {all:#?}"
        );
        send_one("echo");
    }
    std::fs::write(&file, &renamed).unwrap();
    test.rules.reload().expect("a good file loads");
    send_one("echo-v2");
    drop(ingest);
    test.drain(&runtime);
    assert_eq!(acks.acked(), bad.len() + 2);
}

/// A service directory: the echo plugin, one rule sending to path `out`, `lines` Huawei
/// messages to replay with an offset file, and a config whose `out` path is `path`.
/// The echo rule over a recording of `lines` numbered Huawei reports (devices `dev-0`…`dev-2`).
fn service_dir(lines: u64) -> ReplayDir {
    let bodies: Vec<String> = (1..=lines)
        .map(|seq| huawei_body(&format!("dev-{}", seq % 3), seq))
        .collect();
    ReplayDir::new(&[("echo", "testing/echo")], ECHO_RULE, &bodies)
}

/// The values of the JSON lines `output` holds (a command per line of the log path, a dead
/// letter per line of `dead-letters list --json`).
fn json_lines(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .map(|line| serde_json::from_str(line).expect(line))
        .collect()
}

/// The `seq` params of the commands the log path printed in `stdout`, sorted.
fn seqs_in(stdout: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = json_lines(stdout)
        .iter()
        .map(|command| command["params"]["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Runs `iotrules` with the words of `command` and `--config config` to its end.
fn iotrules(command: &[&str], config: &Path) -> Output {
    Command::new(binary())
        .args(command)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("run iotrules {}: {e}", command.join(" ")))
}

/// Runs `iotrules check` on `config`, which must fail with exit code 1; returns what it
/// printed.
fn check_fails(config: &Path) -> String {
    let bad = iotrules(&["check"], config);
    let stdout = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    stdout
}

/// An address of 127.0.0.1 nothing listens on (a port that was just free).
fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_crash_before_the_ack_redelivers_on_the_next_start_and_nothing_after_it() {
    let runtime = runtime();
    let service = service_dir(20);
    // First run: the webhook never answers, so nothing is confirmed, so nothing is acked.
    let silent = Webhook::start(runtime.handle(), false);
    let config = service.config(&format!(
        "kind = \"webhook\"\nurl = \"http://{}/commands\"\ntimeout_ms = 60000\nretries = 0",
        silent.address
    ));
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iotrules");
    wait_for("the first webhook request", || silent.count() > 0);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(silent.seen()[0].name, "echo");
    assert!(
        service
            .offset()
            .is_none_or(|o| o.contains("\"next_line\": 1}")),
        "acked without confirmation: {:?}",
        service.offset()
    );

    // Second run: the webhook answers; every message is delivered (again) and acked.
    let answering = Webhook::start(runtime.handle(), true);
    let config = service.config(&format!(
        "kind = \"webhook\"\nurl = \"http://{}/commands\"",
        answering.address
    ));
    let status = Command::new(binary())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run iotrules");
    assert!(status.success());
    let mut seqs: Vec<u64> = answering
        .seen()
        .iter()
        .map(|command| command.seq.unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(service.offset().as_deref(), Some("{\"next_line\": 21}\n"));

    // Third run: nothing left to deliver.
    let config = service.config("kind = \"log\"");
    let output = iotrules(&["run"], &config);
    assert!(output.status.success());
    assert_eq!(
        seqs_in(&String::from_utf8_lossy(&output.stdout)),
        Vec::<u64>::new()
    );
}

#[test]
fn the_log_path_prints_every_command_and_the_summary_counts_them() {
    let service = service_dir(12);
    let config = service.config("kind = \"log\"");
    let output = iotrules(&["run"], &config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        seqs_in(&String::from_utf8_lossy(&output.stdout)),
        (1..=12).collect::<Vec<_>>()
    );
    assert!(
        stderr.contains("connector replayed: 12 received"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rule echo-all: 12 matched, 12 passed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("command path out: 12 sent, 0 failed"),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_problem_with_its_place_and_fails() {
    let service = service_dir(1);
    let config = service.config("kind = \"log\"");
    let ok = iotrules(&["check"], &config);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let rules = service.dir.path().join("rules");
    std::fs::write(
        rules.join("more.toml"),
        "[[rule]]\nname = \"other\"\ncommands.via = \"nowhere\"\n\n[[rule.step]]\nplugin = \"echo\"\n",
    )
    .unwrap();
    std::fs::write(rules.join("broken.toml"), "[[rule]]\nname = 3\n").unwrap();
    let stdout = check_fails(&config);
    assert!(stdout.contains("broken.toml:2:"), "{stdout}");

    std::fs::remove_file(rules.join("broken.toml")).unwrap();
    let stdout = check_fails(&config);
    assert!(
        stdout.contains("more.toml:1:1: rule \"other\": commands.via names \"nowhere\""),
        "{stdout}"
    );

    // A grant that reaches the store refuses the rules, at the grant.
    let state = service.dir.path().join("state");
    let granting = |allow: &str, dir: &std::path::Path| {
        format!(
            "[[rule]]\nname = \"other\"\ncommands.via = \"out\"\ncommands.allow = [\"{allow}\"]\n\n\
             [[rule.step]]\nplugin = \"echo\"\ngrants.read_dirs = [\"{}\"]\n",
            dir.display()
        )
    };
    std::fs::write(rules.join("more.toml"), granting("out", &state)).unwrap();
    let stdout = check_fails(&config);
    assert!(
        stdout.contains(&format!(
            "more.toml:8:21: rule \"other\": step 1 (plugin \"echo\"): grants.read_dirs: \"{}\" \
             holds the store",
            state.display()
        )),
        "{stdout}"
    );

    // A path allowed but not configured is reported like an unknown `via`.
    let tables = service.dir.path().join("tables");
    std::fs::create_dir_all(&tables).unwrap();
    std::fs::write(rules.join("more.toml"), granting("elsewhere", &tables)).unwrap();
    let stdout = check_fails(&config);
    assert!(
        stdout.contains("more.toml:1:1: rule \"other\": commands.allow names \"elsewhere\""),
        "{stdout}"
    );
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_demo_runs_end_to_end_with_the_counts_its_recording_promises() {
    let state = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = repo().join("examples/demo.toml");
    let output = Command::new(binary())
        .args(["run", "--config"])
        .arg(&config)
        .env("IOTRULES_DEMO_DIR", state.path())
        .env("IOTRULES_DEMO_CACHE", cache.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    // The hallway lamp: on when the PIR sees someone, off when it no longer does; nothing
    // for the lamp switched on by hand. Then, after the replays ended, the thermostat
    // watchdog's timer: offline for two seconds.
    let commands = json_lines(&stdout);
    assert_eq!(commands.len(), 3, "{stdout}");
    let alert = &commands[2];
    assert_eq!(alert["path"], "on-call");
    assert_eq!(alert["command"], "alert");
    assert_eq!(alert["params"]["alert"], "watchdog.offline");
    assert_eq!(alert["params"]["device"], "a1DemoPk.thermostat-1");
    for (command, on) in commands.iter().zip([true, false]) {
        assert_eq!(command["path"], "tuya-openapi");
        assert_eq!(command["device"], "vdevo-hallway-lamp");
        assert_eq!(command["command"], "switch_led");
        assert_eq!(command["params"], on);
    }

    // The totals of examples/recorded/README.md (fast replay).
    for expected in [
        "connector tuya-demo: 12 received, 1 refused, 1 duplicates, 2 taken by no rule, 0 dropped by rules, 8 passed on",
        "connector alibaba-demo: 11 received, 0 refused, 1 duplicates, 2 taken by no rule, 3 dropped by rules, 5 passed on",
        "connector timer: 1 received, 0 refused, 0 duplicates, 0 taken by no rule, 0 dropped by rules, 1 passed on",
        "connector huawei-demo: 10 received, 0 refused, 0 duplicates, 5 taken by no rule, 4 dropped by rules, 1 passed on",
        "rule hallway-motion-light: 8 matched, 8 passed, 0 dropped",
        "rule thermostat-temperature: 6 matched, 3 passed, 3 dropped",
        "rule meter-power: 5 matched, 1 passed, 4 dropped",
        "rule thermostat-offline: 3 matched, 3 passed, 0 dropped",
        "command path on-call: 1 sent, 0 failed",
        "command path tuya-openapi: 2 sent, 0 failed",
        "dead letters stored: 1",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    // The tampered message is in the store, with its reason and raw bytes.
    let listed = Command::new(binary())
        .args(["dead-letters", "list", "--json", "--config"])
        .arg(&config)
        .env("IOTRULES_DEMO_DIR", state.path())
        .output()
        .expect("list dead letters");
    assert!(listed.status.success());
    let letters = json_lines(&String::from_utf8_lossy(&listed.stdout));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["connector"], "tuya-demo");
    assert_eq!(letters[0]["kind"], "signature");
}

fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the admin API");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[test]
fn the_admin_api_reports_metrics_health_and_status_and_sigterm_stops_cleanly() {
    let service = service_dir(10);
    let address = free_address();
    let config = service.config(&format!(
        "kind = \"log\"\n\n[admin]\nlisten = \"{address}\""
    ));
    // Replay forever, 200 messages a second, until stopped.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "offset_file = \"state/offset.json\"",
        "loop = true\nrate = 200.0",
    );
    std::fs::write(&config, text).unwrap();
    let child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iotrules");
    wait_for("the admin API", || {
        std::net::TcpStream::connect(address).is_ok()
    });
    let names = [
        "iotrules_events_in_total{connector=\"replayed\"}",
        "iotrules_events_out_total{connector=\"replayed\"}",
        "iotrules_commands_total{path=\"out\",result=\"sent\"}",
        "iotrules_plugin_call_seconds_bucket{plugin=\"echo\",le=\"+Inf\"}",
        "# TYPE iotrules_event_seconds histogram",
        "iotrules_in_flight ",
    ];
    // The rule's match is counted before its command is sent, and a series appears with its
    // first count: wait for the last of them, not the first.
    let missing = || {
        let (status, metrics) = http_get(address, "/metrics");
        assert_eq!(status, 200);
        let absent: Vec<&str> = names
            .into_iter()
            .filter(|name| !metrics.contains(name))
            .collect();
        (absent, metrics)
    };
    wait_within(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || missing().0.is_empty(),
        || {
            let (absent, metrics) = missing();
            format!("missing {absent:?} in:\n{metrics}")
        },
    );
    let (status, health) = http_get(address, "/healthz");
    assert_eq!((status, health.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, body) = http_get(address, "/status");
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(status["connectors"][0]["name"], "replayed");
    assert_eq!(status["connectors"][0]["state"], "running");
    assert_eq!(status["rules"]["rules"][0]["name"], "echo-all");
    assert_eq!(status["plugins"][0]["name"], "echo");
    assert_eq!(status["plugins"][0]["version"], 1);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let output = child.wait_with_output().expect("iotrules stops");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("Stopping: finishing the events in flight"),
        "{stderr}"
    );
    assert!(stderr.contains("rule echo-all:"), "no summary:\n{stderr}");
}

#[test]
fn commands_a_path_gives_up_on_become_dead_letters_and_replay_once_it_works() {
    let service = service_dir(5);
    // Nothing listens on this port: every command fails, every event becomes a dead letter
    // (kind `command`), and the deliveries are acknowledged.
    let closed = free_address();
    let config = service.config(&format!(
        "kind = \"webhook\"\nurl = \"http://{closed}/\"\nretries = 1\ntimeout_ms = 2000"
    ));
    let output = iotrules(&["run"], &config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("command path out: 0 sent, 5 failed"),
        "{stderr}"
    );
    assert!(stderr.contains("dead letters stored: 5"), "{stderr}");
    assert_eq!(service.offset().as_deref(), Some("{\"next_line\": 6}\n"));

    let list = |config: &Path| {
        let output = iotrules(&["dead-letters", "list", "--json"], config);
        json_lines(&String::from_utf8_lossy(&output.stdout))
    };
    let letters = list(&config);
    assert_eq!(letters.len(), 5);
    assert!(
        letters.iter().all(|l| l["kind"] == "command"),
        "{letters:#?}"
    );
    assert!(
        letters[0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{letters:#?}"
    );

    // The path works now: replaying sends every command and empties the store.
    let config = service.config("kind = \"log\"");
    let output = iotrules(&["dead-letters", "replay"], &config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Replayed 5 dead letter(s): 5 processed and removed"),
        "{stdout}"
    );
    let commands: Vec<u64> = seqs_in(
        &stdout
            .lines()
            .filter(|line| line.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(commands, (1..=5).collect::<Vec<_>>());
    assert!(list(&config).is_empty());
}

/// A connector drops its submission when its session ends (a Pulsar consumer rebuilt under
/// load); one dropped while it waited for room on a full worker queue must leave nothing
/// behind: its redelivery goes through, instead of being held for ever behind an id marked in
/// flight that no worker would finish (with its slot of the in-flight budget).
#[test]
fn a_submission_dropped_while_the_worker_queue_is_full_leaves_nothing_behind() {
    const SPIN_RULE: &str = r#"
[[rule]]
name = "slow"
on_error = "drop"

[[rule.step]]
plugin = "spin"
deadline_ms = 300
"#;
    let runtime = runtime();
    let mut test = TestPipeline::start(
        &["testing/spin"],
        SPIN_RULE,
        settings(1, 1, 64),
        Capture::open("out"),
        runtime.handle(),
    );
    let ingest = ingest(&test);
    let acks = Arc::new(Acks::default());
    runtime.block_on(async {
        // The worker spins on the first, the second fills its queue of one. The second is
        // submitted once the worker has surely taken the first alone: a worker takes what is
        // queued with the event it wakes for, and a second submitted at once could be pushed
        // in the moment between (it was, on a loaded machine), leaving the queue empty.
        ingest
            .submit(acks.delivery(huawei_body("dev", 1)))
            .await
            .expect("submit");
        tokio::time::sleep(Duration::from_millis(100)).await;
        ingest
            .submit(acks.delivery(huawei_body("dev", 2)))
            .await
            .expect("submit");
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            ingest.submit(acks.delivery(huawei_body("dev", 3))),
        )
        .await;
        assert!(waited.is_err(), "the third waits for the full queue");
        // Its transport delivers it again.
        ingest
            .submit(acks.delivery(huawei_body("dev", 3)))
            .await
            .expect("submit");
    });
    drop(ingest);
    test.drain(&runtime);
    assert_eq!(acks.acked(), 3);
    assert_eq!(test.metrics.in_flight.get(), 0, "the in-flight gauge");
}

#[test]
fn deferred_events_wait_for_their_connectors_wake_and_dropping_its_handle_wakes() {
    let runtime = runtime();
    let capture = Capture::open("out");
    let mut test = echo_pipeline(&runtime, &capture, settings(2, 64, 1000));
    let ingest = ingest(&test);
    let acks = Arc::new(Acks::default());
    // Each worker has run an event and gone to sleep.
    runtime.block_on(async {
        for seq in 0..10 {
            let body = huawei_body(&format!("dev-{seq}"), seq);
            ingest.submit(acks.delivery(body)).await.expect("submit");
        }
    });
    wait_for("the first events", || acks.acked() == 10);
    std::thread::sleep(Duration::from_millis(200));

    let deferring = ingest.deferring();
    // Submits `seqs` through `deferring`, then checks that none ran while they wait.
    let submit_unwoken = |seqs: std::ops::Range<u64>, deferring: &iotrules::pipeline::Deferring| {
        let acked = acks.acked();
        runtime.block_on(async {
            for seq in seqs {
                let body = huawei_body(&format!("dev-{}", seq % 10), seq);
                deferring.submit(acks.delivery(body)).await.expect("submit");
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(acks.acked(), acked, "a deferred event ran before the wake");
        assert!(deferring.owes_wake());
    };
    submit_unwoken(10..30, &deferring);
    deferring.wake_workers();
    assert!(!deferring.owes_wake());
    wait_for("the woken events", || acks.acked() == 30);

    submit_unwoken(30..40, &deferring);
    drop(deferring);
    wait_for("the events of the dropped handle", || acks.acked() == 40);
    drop(ingest);
    test.drain(&runtime);
    assert_eq!(capture.received().len(), 40);
}

#[test]
fn a_deferred_submission_that_has_to_wait_wakes_the_workers_it_waits_for() {
    // A worker queue of 2, then an in-flight budget of 8: the submissions fill one, then
    // the other, and each would wait forever on a worker never woken.
    for (queue, max_in_flight) in [(2, 1000), (1000, 8)] {
        let runtime = runtime();
        let capture = Capture::open("out");
        let mut test = echo_pipeline(&runtime, &capture, settings(2, queue, max_in_flight));
        let ingest = ingest(&test);
        let acks = Arc::new(Acks::default());
        let submitted = Arc::new(AtomicUsize::new(0));
        const EVENTS: u64 = 500;
        let deferring = ingest.deferring();
        let producer = {
            let (acks, submitted) = (acks.clone(), submitted.clone());
            runtime.spawn(async move {
                for seq in 0..EVENTS {
                    let body = huawei_body(&format!("dev-{}", seq % 5), seq);
                    deferring.submit(acks.delivery(body)).await.expect("submit");
                    submitted.fetch_add(1, Ordering::SeqCst);
                }
                // Held, never woken by hand: the last burst waits for the drop below.
                deferring
            })
        };
        wait_for(
            &format!("every submission (queue {queue}, in flight {max_in_flight})"),
            || submitted.load(Ordering::SeqCst) == EVENTS as usize,
        );
        let deferring = runtime.block_on(producer).expect("producer");
        drop(deferring);
        wait_for("every ack", || acks.acked() == EVENTS as usize);
        drop(ingest);
        test.drain(&runtime);
        assert_eq!(capture.received().len(), EVENTS as usize);
    }
}

/// The threads that hand events to each other run as throughput threads (`SCHED_BATCH`) by
/// default, so that a woken one does not preempt the one that woke it in the middle of a
/// burst; under `scheduling = "latency"` they keep the normal policy.
#[cfg(target_os = "linux")]
#[test]
fn the_rule_workers_and_the_runtime_threads_are_scheduled_as_configured() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    /// The scheduling policy in a `/proc/.../stat` line (its 41st field).
    fn policy(stat: &str) -> Option<u32> {
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split(' ').nth(38)?.parse().ok()
    }
    /// The policy of a thread of an async runtime scheduled as `scheduling`.
    fn on_runtime(scheduling: Scheduling) -> Option<u32> {
        let io = iotrules::service::io_runtime(1, scheduling).expect("runtime");
        let stat = io.block_on(async {
            tokio::spawn(async { std::fs::read_to_string("/proc/thread-self/stat") })
                .await
                .expect("task")
                .expect("stat")
        });
        policy(&stat)
    }
    /// The policies of every rule worker of this process (other tests' too).
    fn workers() -> Vec<Option<u32>> {
        let mut policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
        {
            let read = |file| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
            if read("comm").trim() == "iotrules-worker" {
                policies.push(policy(&read("stat")));
            }
        }
        policies
    }
    assert_eq!(on_runtime(Scheduling::Throughput), Some(SCHED_BATCH));
    assert_eq!(on_runtime(Scheduling::Latency), Some(SCHED_OTHER));

    let runtime = runtime();
    let capture = Capture::open("out");
    // The other tests' workers run under the default, so every worker is a batch thread
    // while this test's latency workers are not yet started.
    let mut test = echo_pipeline(&runtime, &capture, settings(2, 8, 64));
    wait_for("two rule workers running as throughput threads", || {
        let policies = workers();
        policies.len() >= 2 && policies.iter().all(|p| *p == Some(SCHED_BATCH))
    });
    test.drain(&runtime);
    drop(test);

    let latency = PipelineConfig {
        scheduling: Scheduling::Latency,
        ..settings(2, 8, 64)
    };
    let mut test = echo_pipeline(&runtime, &capture, latency);
    wait_for("two rule workers at the normal policy", || {
        workers()
            .iter()
            .filter(|p| **p == Some(SCHED_OTHER))
            .count()
            >= 2
    });
    // And they carry events as the batch threads do.
    let before = capture.received().len();
    const EVENTS: u64 = 200;
    let (acks, _, producer) = produce(&runtime, &test, EVENTS);
    runtime.block_on(producer).expect("producer");
    test.drain(&runtime);
    assert_eq!(acks.acked(), EVENTS as usize);
    assert_eq!(capture.received().len() - before, EVENTS as usize);
}
