//! Test files and checks without plugins: the format, its errors, and how an expectation is
//! compared and a mismatch shown. Running tests against the real plugins is in
//! `host/tests/rule_tests.rs`, through the binary.

use std::path::Path;

use serde_json::json;

use super::check::{self, RuleRun};
use super::load::{RuleTest, Source, test_files};
use super::*;
use crate::event::{Device, Kind, Value, Vendor};
use crate::rules::RuleSet;

const RULES: &str = r#"
[[rule]]
name = "lamp"
when = { vendor = "tuya" }
[[rule.step]]
plugin = "motion-light"

[[rule]]
name = "meter"
when = { vendor = "huawei" }
[[rule.step]]
plugin = "deadband"
"#;

fn rules() -> RuleSet {
    RuleSet::parse([(Path::new("rules/r.toml"), RULES)]).unwrap_or_else(|e| panic!("{e:?}"))
}

fn tests(text: &str) -> Vec<RuleTest> {
    match parse(Path::new("rules/t.test.toml"), text, &rules()) {
        Ok(file) => file.tests,
        Err(errors) => panic!("{errors:#?}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse(Path::new("rules/t.test.toml"), text, &rules()) {
        Ok(_) => panic!("the file was accepted:\n{text}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

/// A test of rule `lamp` with one input, `input_lines` in its table, and one expectation.
fn one_input(input_lines: &str, expect_lines: &str) -> String {
    format!(
        "[[test]]\nname = \"t\"\nrules = [\"lamp\"]\n[[test.input]]\n{input_lines}\n\
         [[test.input.expect]]\n{expect_lines}\n"
    )
}

#[test]
fn a_compact_input_becomes_a_typed_event() {
    let text = one_input(
        r#"vendor = "huawei"
device = { id = "m-1", name = "meter" }
product = "demo"
kind = "properties"
properties = { on = true, count = 3, level = 2.5, mode = "eco", schedule = [7, 30] }
services = { Energy = { power_w = 1210.5 } }
attributes = { topic = "t/1" }
payload = { raw = { n = 1 } }
time_ms = 1700000000000"#,
        "verdict = \"keep\"",
    );
    let tests = tests(&text);
    let Some(Source::Event { event, timed }) = &tests[0].inputs[0].source else {
        panic!("not an event");
    };
    assert!(timed);
    assert_eq!(event.vendor, Vendor::Huawei);
    assert_eq!(event.kind, Kind::Properties);
    assert_eq!(
        event.device,
        Device {
            id: "m-1".into(),
            product: Some("demo".into()),
            name: Some("meter".into())
        }
    );
    let value = |code: &str| event.property(code).map(|p| p.value.clone());
    assert_eq!(value("on"), Some(Value::Boolean(true)));
    assert_eq!(value("count"), Some(Value::Integer(3)));
    assert_eq!(value("level"), Some(Value::Float(2.5)));
    assert_eq!(value("mode"), Some(Value::Text("eco".into())));
    assert!(matches!(value("schedule"), Some(Value::Json(j)) if j.as_str() == "[7,30]"));
    let power = event.property("power_w").expect("a service property");
    assert_eq!(power.service.as_deref(), Some("Energy"));
    assert_eq!(event.attribute("topic"), Some("t/1"));
    assert_eq!(event.payload.to_value(), json!({ "raw": { "n": 1 } }));
    assert_eq!(event.time_ms, 1_700_000_000_000);
}

#[test]
fn an_input_without_optional_fields_gets_the_documented_defaults() {
    let tests = tests(&one_input(
        "vendor = \"tuya\"\ndevice = \"pir\"\nafter_s = 1.5",
        "verdict = \"keep\"",
    ));
    let input = &tests[0].inputs[0];
    assert_eq!(input.after_ms, 1500);
    let Some(Source::Event { event, timed }) = &input.source else {
        panic!("not an event");
    };
    assert!(!timed, "the test clock sets the time");
    assert_eq!(event.id, "input-1");
    assert_eq!(event.source, "test");
    assert_eq!(event.kind, Kind::Properties);
    assert_eq!(event.action, "");
    assert_eq!(event.payload.as_str(), "{}");
    assert!(event.properties.is_empty());
}

#[test]
fn expectations_go_to_their_input_in_file_order() {
    let tests = tests(
        r#"[[test]]
name = "t"
rules = ["lamp"]
[[test.input]]
vendor = "tuya"
device = "a"
[[test.input]]
vendor = "tuya"
device = "b"
[[test.input.expect]]
verdict = "keep"
[[test.expect]]
input = 1
commands = []
[[test.expect]]
verdict = "drop"
step = 1
"#,
    );
    let inputs = &tests[0].inputs;
    assert_eq!(inputs[0].expectations.len(), 1);
    assert_eq!(
        inputs[0].expectations[0].expected,
        json!({ "commands": [] })
    );
    let second: Vec<_> = inputs[1].expectations.iter().map(|e| &e.expected).collect();
    assert_eq!(
        second,
        [
            &json!({ "verdict": "keep" }),
            &json!({ "verdict": "drop", "step": 1 })
        ]
    );
    assert_eq!(inputs[1].expectations[1].rule.as_deref(), Some("lamp"));
}

#[test]
fn unknown_keys_are_errors_at_their_line_and_column() {
    let error = one_error(&one_input(
        "vendor = \"tuya\"\ndevice = \"pir\"",
        "verdikt = \"keep\"",
    ));
    assert!(
        error.starts_with("rules/t.test.toml:8:1: unknown field `verdikt`"),
        "{error}"
    );
}

#[test]
fn bad_values_name_what_is_allowed() {
    let error = one_error(&one_input(
        "vendor = \"acme\"\ndevice = \"pir\"",
        "verdict = \"keep\"",
    ));
    assert!(error.starts_with("rules/t.test.toml:5:10:"), "{error}");
    assert!(
        error.contains("`tuya`, `alibaba`, `huawei`, `mqtt`"),
        "{error}"
    );

    let error = one_error(&one_input(
        "vendor = \"tuya\"\ndevice = \"pir\"",
        "verdict = \"kept\"",
    ));
    assert!(error.contains("unknown variant `kept`"), "{error}");
}

#[test]
fn unknown_rule_names_are_errors_listing_the_rules() {
    let error = one_error(
        "[[test]]\nname = \"t\"\nrules = [\"lamb\"]\n[[test.input]]\nvendor = \"tuya\"\n\
         device = \"a\"\n[[test.input.expect]]\nverdict = \"keep\"\n",
    );
    assert_eq!(
        error,
        "rules/t.test.toml:3:10: test \"t\": unknown rule \"lamb\" (rules: lamp, meter)"
    );
}

#[test]
fn an_expectation_names_its_rule_unless_the_test_runs_only_one() {
    let error = one_error(
        "[[test]]\nname = \"t\"\n[[test.input]]\nvendor = \"tuya\"\ndevice = \"a\"\n\
         [[test.input.expect]]\nverdict = \"keep\"\n",
    );
    assert!(
        error.starts_with("rules/t.test.toml:6:1: test \"t\": name the `rule`"),
        "{error}"
    );
    // `matched` is about all rules and needs none.
    tests(
        "[[test]]\nname = \"t\"\n[[test.input]]\nvendor = \"tuya\"\ndevice = \"a\"\n\
         [[test.input.expect]]\nmatched = [\"lamp\"]\n",
    );
}

#[test]
fn an_expectation_about_a_rule_the_test_leaves_out_is_an_error() {
    let error = one_error(&one_input(
        "vendor = \"tuya\"\ndevice = \"a\"",
        "rule = \"meter\"\nverdict = \"keep\"",
    ));
    assert!(
        error.contains("rule \"meter\" is not among the test's `rules`"),
        "{error}"
    );
}

#[test]
fn expectations_refer_to_inputs_the_test_has() {
    let error = one_error(
        "[[test]]\nname = \"t\"\nrules = [\"lamp\"]\n[[test.input]]\nvendor = \"tuya\"\n\
         device = \"a\"\n[[test.expect]]\ninput = 2\nverdict = \"keep\"\n",
    );
    assert_eq!(
        error,
        "rules/t.test.toml:8:9: test \"t\": input 2: the test has 1 input(s), counted from 1"
    );
    let error = one_error(&one_input(
        "vendor = \"tuya\"\ndevice = \"a\"",
        "input = 1\nverdict = \"keep\"",
    ));
    assert!(error.contains("`input` is for [[test.expect]]"), "{error}");
}

#[test]
fn step_goes_with_a_drop_verdict_only() {
    let error = one_error(&one_input(
        "vendor = \"tuya\"\ndevice = \"a\"",
        "verdict = \"keep\"\nstep = 1",
    ));
    assert!(
        error.contains("`step` is the step that dropped the event"),
        "{error}"
    );
}

#[test]
fn a_test_needs_inputs_expectations_and_checks() {
    let errors = errors("[[test]]\nname = \"t\"\n");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("at least one [[test.input]]"));
    assert!(errors[1].contains("at least one expectation"));
    let error = one_error(&one_input("vendor = \"tuya\"\ndevice = \"a\"", ""));
    assert!(error.contains("needs something to check"), "{error}");
    let error = one_error(&one_input("device = \"a\"", "verdict = \"keep\""));
    assert!(error.contains("input 1: needs `vendor`"), "{error}");
}

#[test]
fn a_raw_input_takes_no_event_fields_and_needs_its_file() {
    let errors = errors(&one_input(
        "raw = { vendor = \"huawei\", file = \"m.json\" }\ndevice = \"a\"",
        "verdict = \"keep\"",
    ));
    assert!(errors[0].contains("remove device"), "{errors:#?}");
    let error = one_error(&one_input(
        "raw = { vendor = \"huawei\", file = \"does-not-exist.json\" }",
        "verdict = \"keep\"",
    ));
    assert!(
        error.starts_with(
            "rules/t.test.toml:5:35: test \"t\": raw.file: cannot read rules/does-not-exist.json"
        ),
        "{error}"
    );
}

#[test]
fn a_raw_tuya_input_needs_its_access_key_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("m.json"), "{}").expect("write");
    let text = one_input(
        "raw = { vendor = \"tuya\", file = \"m.json\", access_key_env = \"IOTRULES_TEST_UNSET_KEY\" }",
        "verdict = \"keep\"",
    );
    let errors = match parse(&dir.path().join("t.test.toml"), &text, &rules()) {
        Ok(_) => panic!("accepted"),
        Err(errors) => errors,
    };
    assert!(
        errors[0].reason.contains("set $IOTRULES_TEST_UNSET_KEY"),
        "{errors:?}"
    );
}

#[test]
fn a_raw_json_input_needs_its_device_topic() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("m.json"), r#"{"t":1}"#).expect("write");
    let path = dir.path().join("t.test.toml");
    let without = one_input(
        "raw = { vendor = \"json\", file = \"m.json\", properties = { topic = \"d/a\" } }",
        "verdict = \"keep\"",
    );
    let errors = match parse(&path, &without, &rules()) {
        Ok(_) => panic!("accepted"),
        Err(errors) => errors,
    };
    assert!(
        errors[0]
            .reason
            .contains("a json message needs `device_topic`"),
        "{errors:?}"
    );
    let with = one_input(
        "raw = { vendor = \"json\", file = \"m.json\", properties = { topic = \"d/a\" }, \
         device_topic = \"d/{device}\" }",
        "verdict = \"keep\"",
    );
    if let Err(errors) = parse(&path, &with, &rules()) {
        panic!("refused: {errors:?}");
    }
}

#[test]
fn test_files_are_test_toml_files_and_the_tests_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tests = dir.path().join(TESTS_DIR);
    std::fs::create_dir(&tests).expect("mkdir");
    for name in [
        "b.test.toml",
        "a.test.toml",
        "rules.toml",
        ".hidden.test.toml",
    ] {
        std::fs::write(dir.path().join(name), "").expect("write");
    }
    for name in ["x.toml", "notes.md"] {
        std::fs::write(tests.join(name), "").expect("write");
    }
    let files = test_files(dir.path()).expect("list");
    let names: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(dir.path()).unwrap_or(f).to_owned())
        .collect();
    assert_eq!(
        names,
        [
            Path::new("a.test.toml"),
            Path::new("b.test.toml"),
            Path::new("tests/x.toml")
        ]
    );
}

#[test]
fn test_names_are_unique_across_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let test = one_input("vendor = \"tuya\"\ndevice = \"a\"", "verdict = \"keep\"");
    std::fs::write(dir.path().join("a.test.toml"), &test).expect("write");
    std::fs::create_dir(dir.path().join(TESTS_DIR)).expect("mkdir");
    std::fs::write(dir.path().join("tests/b.toml"), &test).expect("write");
    let errors = load_dir(dir.path(), &rules()).expect_err("a duplicate");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains("duplicate test name \"t\" (also in"),
        "{}",
        errors[0]
    );
}

// --- checks ---------------------------------------------------------------------------------

/// An actual document as a rule run with these commands and verdict would make it.
fn ran(verdict: &str, commands: serde_json::Value) -> serde_json::Value {
    json!({
        "matched": ["lamp"],
        "verdict": verdict,
        "commands": commands,
        "errors": [],
    })
}

#[test]
fn fields_the_expectation_leaves_out_are_not_compared() {
    let actual = ran(
        "keep",
        json!([{ "device": { "id": "lamp", "product": "p" }, "name": "switch_led", "params": true, "via": "tuya-openapi" }]),
    );
    let expected = json!({ "commands": [{ "device": { "id": "lamp" }, "params": true }] });
    assert_eq!(check::compare(&expected, &actual), None);
}

#[test]
fn pass_accepts_keep_and_replace_but_not_drop() {
    let expected = json!({ "verdict": "pass" });
    assert_eq!(check::compare(&expected, &ran("keep", json!([]))), None);
    assert_eq!(check::compare(&expected, &ran("replace", json!([]))), None);
    assert!(check::compare(&expected, &ran("drop", json!([]))).is_some());
}

#[test]
fn a_missing_or_extra_command_shows_in_the_diff() {
    let actual = ran(
        "keep",
        json!([
            { "device": { "id": "lamp-1" }, "name": "switch_led", "params": true },
            { "device": { "id": "lamp-2" }, "name": "switch_led", "params": true },
        ]),
    );
    let expected = json!({ "commands": [{ "device": { "id": "lamp-1" } }] });
    let mismatch = check::compare(&expected, &actual).expect("a mismatch");
    assert_eq!(
        mismatch.diff(),
        "  commands[0] = {\"device\":{\"id\":\"lamp-1\"}}\n\
         + commands[1] = {\"device\":{\"id\":\"lamp-2\"},\"name\":\"switch_led\",\"params\":true}\n"
    );
}

#[test]
fn params_are_compared_whole() {
    let actual = ran(
        "keep",
        json!([{ "device": { "id": "l" }, "name": "set", "params": { "a": 1, "b": 2 } }]),
    );
    let expected = json!({ "commands": [{ "params": { "a": 1 } }] });
    let mismatch = check::compare(&expected, &actual).expect("a mismatch");
    assert!(mismatch.actual.contains("\"b\":2"), "{}", mismatch.actual);
}

#[test]
fn integers_and_floats_differ() {
    let expected = json!({ "commands": [{ "params": 1 }] });
    let actual = ran("keep", json!([{ "params": 1.0 }]));
    assert!(check::compare(&expected, &actual).is_some());
}

#[test]
fn event_properties_are_compared_whole_and_payload_by_the_keys_given() {
    let event = json!({
        "id": "e", "vendor": "alibaba",
        "device": { "id": "d", "product": "p" },
        "properties": { "temperature": 23.5, "PowerSwitch": 1 },
        "services": {},
        "payload": { "items": { "t": { "value": 23.5, "time": 1 } }, "other": true },
        "attributes": { "topic": "x", "envelope": "alibaba-amqp" },
    });
    let actual = json!({ "verdict": "replace", "event": event });
    let fits = json!({ "event": {
        "device": { "id": "d" },
        "properties": { "temperature": 23.5, "PowerSwitch": 1 },
        "payload": { "items": { "t": { "value": 23.5 } } },
        "attributes": { "topic": "x" },
    }});
    assert_eq!(check::compare(&fits, &actual), None);

    let too_few = json!({ "event": { "properties": { "temperature": 23.5 } } });
    let mismatch = check::compare(&too_few, &actual).expect("a mismatch");
    assert_eq!(
        mismatch.diff(),
        "+ event.properties.PowerSwitch = 1\n  event.properties.temperature = 23.5\n"
    );
}

#[test]
fn a_wrong_verdict_diff_names_the_field() {
    let expected = json!({ "verdict": "keep", "commands": [] });
    let actual = json!({ "verdict": "drop", "step": 2, "commands": [], "errors": [] });
    let mismatch = check::compare(&expected, &actual).expect("a mismatch");
    assert_eq!(
        mismatch.diff(),
        "- verdict = \"keep\"\n+ verdict = \"drop\"\n  commands = []\n"
    );
}

#[test]
fn rendering_puts_one_field_per_line_and_quotes_odd_keys() {
    let doc = json!({
        "verdict": "keep",
        "event": { "payload": { "a b": [1, { "c": null }], "e": {} } },
    });
    assert_eq!(
        check::render(&doc),
        "verdict = \"keep\"\nevent.payload.\"a b\"[0] = 1\nevent.payload.\"a b\"[1].c = null\n\
         event.payload.e = {}\n"
    );
}

#[test]
fn rules_that_do_not_take_an_input_report_no_match_and_no_commands() {
    let actual = check::actual(&RuleRun::NoMatch, &[]);
    assert_eq!(
        actual,
        json!({ "matched": [], "verdict": "no-match", "commands": [], "errors": [] })
    );
    let actual = check::actual(&RuleRun::IfError("no such key: x"), &["lamp"]);
    assert_eq!(actual["verdict"], "if-error");
    assert_eq!(actual["errors"][0]["message"], "no such key: x");
}

#[test]
fn the_actual_event_splits_properties_by_service() {
    let tests = tests(&one_input(
        "vendor = \"huawei\"\ndevice = \"m\"\nproperties = { a = 1 }\nservices = { Energy = { p = 2.5 } }",
        "verdict = \"keep\"",
    ));
    let Some(Source::Event { event, .. }) = &tests[0].inputs[0].source else {
        panic!("not an event");
    };
    let doc = check::event_doc(event);
    assert_eq!(doc["properties"], json!({ "a": 1 }));
    assert_eq!(doc["services"], json!({ "Energy": { "p": 2.5 } }));
    assert_eq!(doc["device"], json!({ "id": "m" }));
}

#[test]
fn an_input_with_nothing_but_the_clock_is_a_wait() {
    let tests = tests(&one_input("after_s = 30", "fired = []"));
    let input = &tests[0].inputs[0];
    assert!(input.source.is_none(), "a wait has no event");
    assert_eq!(input.after_ms, 30_000);
    assert_eq!(
        input.expectations[0].expected,
        serde_json::json!({ "fired": [] })
    );
}

#[test]
fn a_timer_expectation_names_the_timer_and_maybe_its_device() {
    let tests = tests(&one_input(
        "after_s = 30",
        "timer = \"quiet\"\ndevice = \"pir\"\ncommands = []",
    ));
    let expectation = &tests[0].inputs[0].expectations[0];
    assert_eq!(
        expectation.timer,
        Some(("quiet".to_owned(), Some("pir".to_owned())))
    );
    assert_eq!(expectation.rule.as_deref(), Some("lamp"));
    let error = one_error(&one_input("after_s = 1", "device = \"pir\"\nfired = []"));
    assert!(error.contains("`device` goes with `timer`"), "{error}");
    let error = one_error(&one_input(
        "after_s = 1",
        "timer = \"quiet\"\nmatched = [\"lamp\"]",
    ));
    assert!(
        error.contains("`matched` is about the input's event"),
        "{error}"
    );
}
