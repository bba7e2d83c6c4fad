//! The recorded demo streams (`examples/recorded/`) through the demo rules (`rules/`) and the
//! built example plugins, as the pipeline will run them: each file in order, refused messages
//! and repeated event ids taken out before the rules, every matching rule run on each event.
//! The outcomes are the story table and totals of `examples/recorded/README.md`; if this test
//! changes, so must that table, since the pipeline's end-to-end test asserts the same numbers.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use iotrules::dialect::tuya::{self, Keys};
use iotrules::dialect::{Dialect, RawMessage, SignMode, alibaba, huawei};
use iotrules::event::Event;
use iotrules::plugin::ReloadReport;
use iotrules::rules::{RuleOutcome, RuleRuntime, RuleSet};
use iotrules_tests::plugins::Harness;

/// The published demo project the Tuya recordings are sealed with.
const DEMO_ACCESS_ID: &str = "demoaccessid0000iotr";
const DEMO_ACCESS_KEY: &str = "DEMOkey-iotrules-0000-not-a-real-secret";

/// The meter rule's deadband holds back any report within `min_interval_s = 10` s of the
/// plugin clock (the host's wall clock) after a kept one. This test replays fast, so its
/// expectations hold only if the meter's reports all run well within that.
const FAST_REPLAY: Duration = Duration::from_secs(5);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One recorded delivery: its line number, transport properties and body.
struct Recorded {
    line: usize,
    properties: Vec<(String, String)>,
    payload: Vec<u8>,
}

/// The deliveries of a recording in the replay format (`properties`, and `payload` or
/// `payload_base64`; `#` and blank lines skipped).
fn read(file: &str) -> Vec<Recorded> {
    let path = repo().join("examples/recorded").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(index, line)| {
            let at = format!("{file}:{}", index + 1);
            let object: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{at}: {e}"));
            let properties = object
                .get("properties")
                .and_then(serde_json::Value::as_object)
                .map(|map| {
                    map.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let payload = match (
                object.get("payload").and_then(serde_json::Value::as_str),
                object
                    .get("payload_base64")
                    .and_then(serde_json::Value::as_str),
            ) {
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(encoded)) => BASE64
                    .decode(encoded)
                    .unwrap_or_else(|e| panic!("{at}: {e}")),
                _ => panic!("{at}: needs exactly one of `payload` or `payload_base64`"),
            };
            Recorded {
                line: index + 1,
                properties,
                payload,
            }
        })
        .collect()
}

/// What the pipeline makes of the recordings, message by message and in total.
#[derive(Default)]
struct Replay {
    /// Whether a repeated event id is dropped before the rules.
    dedup: bool,
    /// One line per message: `file:line: what happened`.
    transcript: Vec<String>,
    /// Per rule: (events it passed on, events it dropped).
    per_rule: BTreeMap<String, (usize, usize)>,
    /// Every command, as `name=params to device via path`.
    commands: Vec<String>,
}

impl Replay {
    /// Decodes, de-duplicates and runs one recording through the rules.
    fn feed(
        &mut self,
        file: &str,
        dialect: &Dialect,
        set: &RuleSet,
        runtimes: &mut BTreeMap<String, RuleRuntime>,
    ) {
        let mut seen = HashSet::new();
        for recorded in read(file) {
            let message =
                RawMessage::new("replay", &recorded.payload).with_properties(&recorded.properties);
            let what = match dialect.decode(&message) {
                Err(error) => format!("refused: {}", error.kind()),
                Ok(event) if self.dedup && !seen.insert(event.id.clone()) => {
                    format!("duplicate of {}", event.id)
                }
                Ok(event) => self.run(&event, set, runtimes),
            };
            self.transcript
                .push(format!("{file}:{}: {what}", recorded.line));
        }
    }

    fn run(
        &mut self,
        event: &Event,
        set: &RuleSet,
        runtimes: &mut BTreeMap<String, RuleRuntime>,
    ) -> String {
        let mut said = Vec::new();
        for rule in set.evaluate(event) {
            let rule = rule.unwrap_or_else(|e| panic!("{}: condition failed: {e}", event.id));
            let runtime = runtimes.get_mut(rule.name()).expect("instantiated");
            let result = runtime.run(event);
            assert!(
                result.errors.is_empty(),
                "{}: {:?}",
                event.id,
                result.errors
            );
            let counts = self.per_rule.entry(rule.name().to_owned()).or_default();
            let mut what = match &result.outcome {
                RuleOutcome::Passed(passed) => {
                    counts.0 += 1;
                    if *passed.as_ref() == *event {
                        format!("{}: passed", rule.name())
                    } else {
                        let properties: Vec<String> = passed
                            .properties
                            .iter()
                            .map(|p| {
                                let value = serde_json::to_string(&p.value).expect("a value");
                                format!("{}={value}", p.code)
                            })
                            .collect();
                        format!("{}: passed as {}", rule.name(), properties.join(" "))
                    }
                }
                RuleOutcome::Dropped { step } => {
                    counts.1 += 1;
                    format!("{}: dropped at step {step}", rule.name())
                }
                other => panic!("{}: {}: {other:?}", event.id, rule.name()),
            };
            for command in &result.commands {
                let command = format!(
                    "{}={} to {} via {}",
                    command.name,
                    command.params,
                    command.device.id,
                    command.via.as_deref().unwrap_or("-")
                );
                what.push_str(&format!(", command {command}"));
                self.commands.push(command);
            }
            said.push(what);
        }
        if said.is_empty() {
            "no rule".to_owned()
        } else {
            said.join("; ")
        }
    }
}

/// Replays the three recordings, in order, through the demo rules with fresh plugin state.
/// `sign_mode` is the Tuya dialect's; `dedup` whether repeated event ids are dropped before
/// the rules, as the pipeline does.
fn replay(sign_mode: SignMode, dedup: bool) -> Replay {
    let harness = Harness::new();
    for name in ["deadband", "normalize-units", "motion-light", "watchdog"] {
        let report = harness.load(name, name);
        assert!(
            matches!(report, ReloadReport::Loaded { .. }),
            "{name}: {report:?}"
        );
    }
    let set = RuleSet::load_dir(&repo().join("rules"), &harness.registry)
        .unwrap_or_else(|errors| panic!("{errors:?}"));
    let mut runtimes: BTreeMap<String, RuleRuntime> = set
        .instantiate(&harness.registry)
        .expect("instantiate")
        .into_iter()
        .map(|runtime| (runtime.rule().name().to_owned(), runtime))
        .collect();

    let keys = Keys::new(DEMO_ACCESS_ID, DEMO_ACCESS_KEY).expect("demo key");
    let mut replay = Replay {
        dedup,
        ..Replay::default()
    };
    let started = Instant::now();
    for (file, dialect) in [
        (
            "tuya.jsonl",
            Dialect::Tuya(tuya::Decoder::new(keys, sign_mode)),
        ),
        (
            "alibaba.jsonl",
            Dialect::Alibaba(alibaba::Decoder::new(false)),
        ),
        ("huawei.jsonl", Dialect::Huawei(huawei::Decoder::new())),
    ] {
        replay.feed(file, &dialect, &set, &mut runtimes);
    }
    let took = started.elapsed();
    assert!(
        took < FAST_REPLAY,
        "the replay took {took:?}: too slow for the meter's min_interval_s expectations"
    );
    replay
}

#[test]
fn recorded_streams_make_every_demo_rule_act_as_the_readme_says() {
    let replay = replay(SignMode::Enforce, true);

    let light = "hallway-motion-light: passed";
    let on = "hallway-motion-light: passed, command switch_led=true to vdevo-hallway-lamp via tuya-openapi";
    let off = "hallway-motion-light: passed, command switch_led=false to vdevo-hallway-lamp via tuya-openapi";
    let thermostat_dropped = "thermostat-temperature: dropped at step 2";
    let meter_dropped = "meter-power: dropped at step 1";
    let expected = [
        ("tuya.jsonl:6", light),
        ("tuya.jsonl:8", "no rule"),
        ("tuya.jsonl:10", on),
        ("tuya.jsonl:12", light),
        ("tuya.jsonl:14", off),
        ("tuya.jsonl:16", light),
        ("tuya.jsonl:19", "duplicate of rec-tuya-03"),
        ("tuya.jsonl:22", "refused: signature"),
        ("tuya.jsonl:24", "no rule"),
        ("tuya.jsonl:26", light),
        ("tuya.jsonl:28", light),
        ("tuya.jsonl:30", light),
        ("alibaba.jsonl:5", "thermostat-offline: passed"),
        (
            "alibaba.jsonl:7",
            "thermostat-temperature: passed as temperature=21.0 PowerSwitch=1",
        ),
        ("alibaba.jsonl:9", thermostat_dropped),
        ("alibaba.jsonl:11", thermostat_dropped),
        (
            "alibaba.jsonl:13",
            "thermostat-temperature: passed as temperature=21.8 PowerSwitch=1",
        ),
        ("alibaba.jsonl:15", "no rule"),
        ("alibaba.jsonl:17", thermostat_dropped),
        (
            "alibaba.jsonl:19",
            "thermostat-temperature: passed as temperature=21.2 PowerSwitch=0",
        ),
        ("alibaba.jsonl:22", "duplicate of 1992400000000000005"),
        ("alibaba.jsonl:24", "no rule"),
        // Arms the watchdog's timer, which fires in the service two seconds later.
        ("alibaba.jsonl:26", "thermostat-offline: passed"),
        ("huawei.jsonl:6", "no rule"),
        ("huawei.jsonl:8", "no rule"),
        ("huawei.jsonl:10", "no rule"),
        ("huawei.jsonl:12", "meter-power: passed"),
        ("huawei.jsonl:14", meter_dropped),
        ("huawei.jsonl:16", meter_dropped),
        ("huawei.jsonl:18", meter_dropped),
        ("huawei.jsonl:20", meter_dropped),
        ("huawei.jsonl:22", "no rule"),
        ("huawei.jsonl:24", "no rule"),
    ]
    .map(|(at, what)| format!("{at}: {what}"));
    assert_eq!(replay.transcript, expected);

    // The totals the README states, which the pipeline's end-to-end test asserts.
    let per_rule: Vec<(&str, usize, usize)> = replay
        .per_rule
        .iter()
        .map(|(rule, &(passed, dropped))| (rule.as_str(), passed, dropped))
        .collect();
    assert_eq!(
        per_rule,
        [
            ("hallway-motion-light", 8, 0),
            ("meter-power", 1, 4),
            ("thermostat-offline", 2, 0),
            ("thermostat-temperature", 3, 3),
        ]
    );
    assert_eq!(
        replay.commands,
        [
            "switch_led=true to vdevo-hallway-lamp via tuya-openapi",
            "switch_led=false to vdevo-hallway-lamp via tuya-openapi",
        ]
    );
    let count = |prefix: &str| {
        replay
            .transcript
            .iter()
            .filter(|line| {
                line.split_once(": ")
                    .is_some_and(|(_, w)| w.starts_with(prefix))
            })
            .count()
    };
    assert_eq!(replay.transcript.len(), 33, "messages");
    assert_eq!(count("refused"), 1);
    assert_eq!(count("duplicate"), 2);
    assert_eq!(count("no rule"), 9);
}

#[test]
fn without_deduplication_the_redeliveries_replay_stale_readings() {
    let replay = replay(SignMode::Enforce, false);
    // The 18:01:00 presence, redelivered at 18:03:10, switches the empty hallway's lamp on;
    // motion-light then counts it as its own and switches it off at 18:08:00, although by
    // then someone had switched it on by hand.
    assert_eq!(
        replay.commands,
        [
            "switch_led=true to vdevo-hallway-lamp via tuya-openapi",
            "switch_led=false to vdevo-hallway-lamp via tuya-openapi",
            "switch_led=true to vdevo-hallway-lamp via tuya-openapi",
            "switch_led=false to vdevo-hallway-lamp via tuya-openapi",
        ]
    );
    // The redelivered 21.8 °C is 0.6 from the last kept 21.2: passed on as if current.
    let stale =
        "alibaba.jsonl:22: thermostat-temperature: passed as temperature=21.8 PowerSwitch=1";
    assert!(
        replay.transcript.iter().any(|line| line == stale),
        "{:#?}",
        replay.transcript
    );
    assert_eq!(replay.per_rule["thermostat-temperature"], (4, 3));
    assert_eq!(replay.per_rule["hallway-motion-light"], (9, 0));
}

#[test]
fn with_signatures_only_warned_the_tampered_presence_switches_the_lamp() {
    let replay = replay(SignMode::Warn, true);
    assert_eq!(
        replay.transcript[7],
        "tuya.jsonl:22: hallway-motion-light: passed, \
         command switch_led=true to vdevo-hallway-lamp via tuya-openapi"
    );
    // And, believing it switched the lamp on, motion-light switches it off at 18:08:00,
    // although someone had switched it on by hand at 18:05:00.
    assert_eq!(
        replay.transcript[11],
        "tuya.jsonl:30: hallway-motion-light: passed, \
         command switch_led=false to vdevo-hallway-lamp via tuya-openapi"
    );
    assert_eq!(replay.commands.len(), 4, "{:#?}", replay.commands);
    assert_eq!(replay.per_rule["hallway-motion-light"], (9, 0));
}
