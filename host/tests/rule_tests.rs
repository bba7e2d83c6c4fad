//! `iotrules test` through the real binary and the real plugins (built by
//! scripts/build-plugins into plugins/dist/): what a user sees on stdout and stderr, and the
//! exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn plugins() -> PathBuf {
    let dir = repo().join("plugins/dist");
    assert!(
        dir.join("motion-light.wasm").is_file(),
        "{} has no built plugins; build them first with scripts/build-plugins (scripts/test does)",
        dir.display()
    );
    dir
}

/// `iotrules test --rules RULES --plugins plugins/dist ARGS…`, run from a scratch directory.
fn iotrules_test(rules: &Path, args: &[&str]) -> Output {
    iotrules_test_with(rules, &plugins(), args)
}

/// `iotrules test --rules RULES --plugins PLUGINS ARGS…`, run from a scratch directory.
fn iotrules_test_with(rules: &Path, plugins: &Path, args: &[&str]) -> Output {
    let cwd = tempfile::tempdir().expect("temp dir");
    Command::new(env!("CARGO_BIN_EXE_iotrules"))
        .current_dir(cwd.path())
        .arg("test")
        .arg("--rules")
        .arg(rules)
        .arg("--plugins")
        .arg(plugins)
        .args(args)
        .output()
        .expect("iotrules runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A rules directory with the demo rules and `files` (name, text) beside them.
fn rules_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(repo().join("rules/demo.toml"), dir.path().join("demo.toml"))
        .expect("copy the demo rules");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write a test file");
    }
    dir
}

/// Passes only with fresh state per test (both tests expect the first motion's command) and
/// a pinned clock (with the system clock, ten seconds never pass between two inputs).
const PASSING: &str = r#"
[[test]]
name = "first motion switches the lamp on"
rules = ["hallway-motion-light"]
[[test.input]]
vendor = "tuya"
device = "vdevo-hallway-pir"
properties = { pir = "pir" }
[[test.input.expect]]
verdict = "keep"
commands = [{ device = "vdevo-hallway-lamp", name = "switch_led", params = true, via = "tuya-openapi" }]

[[test]]
name = "first motion again, in a test of its own"
rules = ["hallway-motion-light"]
[[test.input]]
vendor = "tuya"
device = "vdevo-hallway-pir"
properties = { pir = "pir" }
[[test.input.expect]]
commands = [{ device = "vdevo-hallway-lamp", name = "switch_led", params = true }]

[[test]]
name = "a meter change waits out the 10 s minimum interval"
rules = ["meter-power"]
[[test.input]]
vendor = "huawei"
device = "demo_product_meter-1"
services = { Energy = { power_w = 1210.5 } }
[[test.input]]
after_s = 10
vendor = "huawei"
device = "demo_product_meter-1"
services = { Energy = { power_w = 1400.0 } }
[[test.input.expect]]
verdict = "keep"
"#;

const FAILING: &str = r#"
[[test]]
name = "motion switches the wrong lamp"
rules = ["hallway-motion-light"]
[[test.input]]
vendor = "tuya"
device = "vdevo-hallway-pir"
properties = { pir = "pir" }
[[test.input.expect]]
verdict = "keep"
commands = [{ device = "vdevo-porch-lamp", name = "switch_led", params = true }]
"#;

#[test]
fn the_demo_rule_tests_pass_with_the_real_plugins() {
    let output = iotrules_test(&repo().join("rules"), &[]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        text(&output.stderr)
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(
        stdout.contains(" passed; 0 failed; 0 filtered out"),
        "{stdout}"
    );
}

#[test]
fn fresh_state_and_the_test_clock_make_a_passing_fixture_pass() {
    let dir = rules_dir(&[("passing.test.toml", PASSING)]);
    let output = iotrules_test(dir.path(), &[]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains("test first motion again, in a test of its own ... ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("test result: ok. 3 passed; 0 failed"),
        "{stdout}"
    );
}

#[test]
fn a_failing_fixture_shows_the_mismatched_command_and_exits_non_zero() {
    let dir = rules_dir(&[
        ("passing.test.toml", PASSING),
        ("tests/failing.toml", FAILING),
    ]);
    let output = iotrules_test(dir.path(), &[]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("test motion switches the wrong lamp ... FAILED"),
        "{stdout}"
    );
    let failing = dir.path().join("tests/failing.toml");
    assert!(
        stdout.contains(&format!(
            "{}:9:1: input 1, rule \"hallway-motion-light\": it ran: keep, 1 command(s)",
            failing.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("      verdict = \"keep\"\n"), "{stdout}");
    assert!(
        stdout.contains(
            "    - commands[0] = {\"device\":{\"id\":\"vdevo-porch-lamp\"},\"name\":\"switch_led\",\"params\":true}\n\
             \x20   + commands[0] = {\"device\":{\"id\":\"vdevo-hallway-lamp\"},\"name\":\"switch_led\",\"params\":true}\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("test result: FAILED. 3 passed; 1 failed"),
        "{stdout}"
    );
}

#[test]
fn the_filter_runs_only_the_tests_whose_name_contains_it() {
    let dir = rules_dir(&[
        ("passing.test.toml", PASSING),
        ("tests/failing.toml", FAILING),
    ]);
    let output = iotrules_test(dir.path(), &["first motion"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("test result: ok. 2 passed; 0 failed; 2 filtered out"),
        "{stdout}"
    );
}

#[test]
fn a_test_naming_an_unknown_rule_is_refused_with_its_position() {
    let dir = rules_dir(&[(
        "typo.test.toml",
        "[[test]]\nname = \"t\"\nrules = [\"hallway-motion-lite\"]\n[[test.input]]\n\
         vendor = \"tuya\"\ndevice = \"x\"\n[[test.input.expect]]\nverdict = \"keep\"\n",
    )]);
    let output = iotrules_test(dir.path(), &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "no test runs");
    assert!(
        stderr.contains(&format!(
            "{}:3:10: test \"t\": unknown rule \"hallway-motion-lite\" (rules: \
             hallway-motion-light, thermostat-temperature, meter-power, thermostat-offline)",
            dir.path().join("typo.test.toml").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("iotrules: 1 problem(s) in the tests in"),
        "{stderr}"
    );
}

#[test]
fn the_timer_examples_rule_tests_pass_with_the_real_plugins() {
    let output = iotrules_test(&repo().join("examples/rules"), &[]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        text(&output.stderr)
    );
    assert!(
        stdout.contains(" passed; 0 failed; 0 filtered out"),
        "{stdout}"
    );
}

/// The timer of `testing/alarm` (set by every event, due `delay_ms` later), in rule tests.
const ALARM_RULES: &str = r#"
[[rule]]
name = "alarm"
commands.via = "out"

[[rule.step]]
plugin = "alarm"
config = { delay_ms = 60000, cancel_on_seq = 9 }
"#;

/// A rules directory of [`ALARM_RULES`] and `tests`, over the plugins with `testing/alarm`
/// installed as `alarm`.
fn alarm_dir(tests: &str) -> (tempfile::TempDir, tempfile::TempDir) {
    let rules = tempfile::tempdir().expect("temp dir");
    std::fs::write(rules.path().join("alarm.toml"), ALARM_RULES).expect("rules");
    std::fs::write(rules.path().join("alarm.test.toml"), tests).expect("tests");
    let installed = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        plugins().join("testing/alarm.wasm"),
        installed.path().join("alarm.wasm"),
    )
    .expect("install alarm");
    (rules, installed)
}

fn run_alarm(tests: &str) -> (bool, String) {
    let (rules, plugins) = alarm_dir(tests);
    let output = iotrules_test_with(rules.path(), plugins.path(), &[]);
    (output.status.success(), text(&output.stdout))
}

#[test]
fn a_wait_moves_the_clock_and_a_timer_expectation_checks_the_firing() {
    let (passed, stdout) = run_alarm(
        r#"
[[test]]
name = "the alarm fires a minute after the last event, once"
[[test.input]]
vendor = "huawei"
device = "d1"
properties = { seq = 1 }
[[test.input]]
after_s = 59.999
[[test.input.expect]]
fired = []
[[test.input]]
after_s = 0.001
[[test.input.expect]]
fired = ["alarm"]
[[test.input.expect]]
timer = "alarm"
device = "d1"
verdict = "replace"
commands = [{ device = "d1", name = "fired", params = { seq = 1, timer = "alarm", due = 1763884860000, count = 1 }, via = "out" }]
event = { kind = "timer", attributes = { alarm-count = "1" } }
[[test.input]]
after_s = 3600
[[test.input.expect]]
fired = []

[[test]]
name = "an event re-arms it and a cancel stops it"
[[test.input]]
vendor = "huawei"
device = "d1"
properties = { seq = 1 }
[[test.input]]
after_s = 50
vendor = "huawei"
device = "d1"
properties = { seq = 2 }
[[test.input.expect]]
fired = []
[[test.input]]
after_s = 50
vendor = "huawei"
device = "d1"
properties = { seq = 9 }
[[test.input.expect]]
fired = []
[[test.input]]
after_s = 600
[[test.input.expect]]
fired = []
"#,
    );
    assert!(passed, "{stdout}");
    assert!(stdout.contains("2 passed; 0 failed"), "{stdout}");
}

#[test]
fn a_timer_that_does_not_fire_fails_the_test_naming_what_did() {
    let (passed, stdout) = run_alarm(
        r#"
[[test]]
name = "expects the alarm too early"
[[test.input]]
vendor = "huawei"
device = "d1"
properties = { seq = 1 }
[[test.input]]
after_s = 30
[[test.input.expect]]
timer = "alarm"
[[test.input]]
after_s = 30
[[test.input.expect]]
fired = []
"#,
    );
    assert!(!passed, "{stdout}");
    assert!(
        stdout.contains("input 2")
            && stdout.contains("timer \"alarm\" did not fire during this input (fired: none)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("input 3") && stdout.contains("+ fired = [\"alarm\"]"),
        "{stdout}"
    );
}
