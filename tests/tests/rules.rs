//! Rules against the real plugin components: the example rules load, a plugin refusing its
//! config refuses the rule file, step chains pass events on as the plugins decide, failures
//! follow the rule's `on_error`, and commands get their default paths.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotrules::event::{Device, Event, Json, Kind, Property, Value, Vendor};
use iotrules::plugin::ReloadReport;
use iotrules::rules::{OnError, RuleOutcome, RuleRuntime, RuleSet, Rules};
use iotrules_tests::plugins::{Harness, event};

/// `rules/` of this repository.
fn example_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")
}

fn harness(plugins: &[(&str, &str)]) -> Harness {
    let harness = Harness::new();
    for (name, built) in plugins {
        let report = harness.load(name, built);
        assert!(
            matches!(report, ReloadReport::Loaded { .. }),
            "{name}: {report:?}"
        );
    }
    harness
}

/// A rules directory holding `text` as `r.toml`.
fn rules_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("r.toml"), text).expect("write rules");
    dir
}

/// The rules of `dir`, over the plugins of `harness`; fails the test with every error the
/// files have.
fn load(dir: &Path, harness: &Harness) -> RuleSet {
    RuleSet::load_dir(dir, &harness.registry).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// The one rule of `text`, instantiated.
fn runtime(harness: &Harness, text: &str) -> RuleRuntime {
    let dir = rules_dir(text);
    let set = load(dir.path(), harness);
    let mut runtimes = set.instantiate(&harness.registry).expect("instantiate");
    assert_eq!(runtimes.len(), 1);
    runtimes.remove(0)
}

fn pir(seq: u64, value: &str) -> Event {
    let mut event = event(
        "vdevo-hallway-pir",
        seq,
        vec![Property::new("pir", Value::Text(value.into()))],
    );
    event.device.product = Some("keyPir001".into());
    event
}

#[test]
fn the_example_rules_load_against_the_example_plugins() {
    let harness = harness(&[
        ("deadband", "deadband"),
        ("normalize-units", "normalize-units"),
        ("motion-light", "motion-light"),
        ("watchdog", "watchdog"),
    ]);
    let set = load(&example_rules(), &harness);
    let names: Vec<&str> = set.rules().iter().map(|r| r.name()).collect();
    assert_eq!(
        names,
        [
            "hallway-motion-light",
            "thermostat-temperature",
            "meter-power",
            "thermostat-offline"
        ]
    );
    let runtimes = set.instantiate(&harness.registry).expect("instantiate");
    assert_eq!(runtimes.len(), 4);

    // The Alibaba thermostat, as its decoder normalizes it.
    let thermostat = Event {
        id: "101".into(),
        source: "alibaba-amqp".into(),
        vendor: Vendor::Alibaba,
        kind: Kind::Properties,
        action: "thing.event.property.post".into(),
        device: Device {
            id: "a1DemoPk.thermostat-1".into(),
            product: Some("a1DemoPk".into()),
            name: Some("thermostat-1".into()),
        },
        time_ms: 1_763_884_800_400,
        properties: vec![
            Property::new("CurrentTemperature", Value::Float(23.5)),
            Property::new("PowerSwitch", Value::Integer(1)),
        ],
        payload: Json::from_text("{}".into()).expect("JSON"),
        attributes: Default::default(),
    };
    let matching: Vec<&str> = set.matching(&thermostat).map(|r| r.name()).collect();
    assert_eq!(matching, ["thermostat-temperature"]);
    let matching: Vec<&str> = set.matching(&pir(1, "pir")).map(|r| r.name()).collect();
    assert_eq!(matching, ["hallway-motion-light"]);

    let mut thermostat_rule = runtimes
        .into_iter()
        .find(|r| r.rule().name() == "thermostat-temperature")
        .expect("rule");
    let result = thermostat_rule.run(&thermostat);
    let passed = result
        .event()
        .expect("the first report passes the deadband");
    assert_eq!(
        passed.property("temperature").map(|p| &p.value),
        Some(&Value::Float(23.5))
    );
    assert!(passed.property("CurrentTemperature").is_none());
    assert_eq!(result.versions.len(), 2);
    // The same temperature again: the deadband drops it.
    let again = thermostat_rule.run(&thermostat);
    assert_eq!(again.outcome, RuleOutcome::Dropped { step: 2 });
}

#[test]
fn a_config_the_plugin_refuses_refuses_the_file_with_the_plugins_reason() {
    let harness = harness(&[("deadband", "deadband"), ("bad-init", "testing/bad-init")]);
    let dir = rules_dir(
        "[[rule]]\nname = \"temp\"\n\n[[rule.step]]\nplugin = \"deadband\"\nconfig = { datapoints = [\"t\"] }\n\n\
         [[rule]]\nname = \"bad\"\n[[rule.step]]\nplugin = \"deadband\"\nconfig = { datapoints = [\"t\"], threshold = 1 }\n\
         [[rule.step]]\nplugin = \"bad-init\"\n",
    );
    let errors: Vec<String> = RuleSet::load_dir(dir.path(), &harness.registry)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].ends_with(
            "r.toml:5:10: rule \"temp\": step 1 (plugin \"deadband\"): init refused the config: \
             config: missing field `threshold`"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[1].ends_with(
            "r.toml:14:10: rule \"bad\": step 2 (plugin \"bad-init\"): init refused the config: \
             config: `mode`: testing-bad-init refuses every configuration"
        ),
        "{errors:#?}"
    );
}

#[test]
fn an_unknown_plugin_is_named_with_the_loaded_ones() {
    let harness = harness(&[("deadband", "deadband"), ("pass", "testing/pass")]);
    let dir = rules_dir("[[rule]]\nname = \"hallway\"\n[[rule.step]]\nplugin = \"auto-of\"\n");
    let errors = RuleSet::load_dir(dir.path(), &harness.registry).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .ends_with("r.toml:4:10: rule \"hallway\": step 1: unknown plugin \"auto-of\" (loaded: deadband, pass)"),
        "{}",
        errors[0]
    );
}

#[test]
fn each_step_sees_the_event_as_the_previous_step_left_it() {
    let harness = harness(&[("pass", "testing/pass"), ("sequence", "testing/sequence")]);
    let mut rule = runtime(
        &harness,
        "[[rule]]\nname = \"chain\"\n\
         [[rule.step]]\nplugin = \"pass\"\n\
         [[rule.step]]\nplugin = \"sequence\"\n\
         [[rule.step]]\nplugin = \"sequence\"\nconfig = { version = \"second\" }\n",
    );
    let input = event("d", 1, vec![]);
    let result = rule.run(&input);
    let RuleOutcome::Passed(output) = &result.outcome else {
        panic!("{result:?}");
    };
    // The third step saw the second step's replacement, and replaced it in turn.
    assert_eq!(output.attribute("plugin-version"), Some("second"));
    assert_eq!(output.attribute("plugin-sequence"), Some("1"));
    assert_eq!(
        output.attribute("seq"),
        Some("1"),
        "the original attributes pass through"
    );
    assert!(result.errors.is_empty());
    let steps: Vec<(usize, &str, bool)> = result
        .versions
        .iter()
        .map(|v| (v.step, &*v.plugin, v.version.is_some()))
        .collect();
    assert_eq!(
        steps,
        [
            (1, "pass", true),
            (2, "sequence", true),
            (3, "sequence", true)
        ]
    );

    // A rule of `pass` alone hands back the caller's event, not a copy.
    let mut pass = runtime(
        &harness,
        "[[rule]]\nname = \"p\"\n[[rule.step]]\nplugin = \"pass\"\n",
    );
    let result = pass.run(&input);
    assert!(
        matches!(result.outcome, RuleOutcome::Passed(std::borrow::Cow::Borrowed(e)) if std::ptr::eq(e, &input))
    );
}

/// A rule of `motion-light`, `panic` then `sequence`, with `on_error`; and the harness its
/// plugins are loaded in, to keep while the rule runs.
fn failing(on_error: OnError) -> (Harness, RuleRuntime) {
    let harness = harness(&[
        ("motion-light", "motion-light"),
        ("panic", "testing/panic"),
        ("sequence", "testing/sequence"),
    ]);
    let rule = runtime(
        &harness,
        &format!(
            "[[rule]]\nname = \"failing\"\non_error = \"{}\"\ncommands.via = \"tuya-openapi\"\n\
             [[rule.step]]\nplugin = \"motion-light\"\n\
             config = {{ sensors = [\"vdevo-hallway-pir\"], lights = [\"vdevo-hallway-lamp\"] }}\n\
             [[rule.step]]\nplugin = \"panic\"\n\
             [[rule.step]]\nplugin = \"sequence\"\n",
            on_error.as_str()
        ),
    );
    (harness, rule)
}

#[test]
fn a_failing_step_dead_letters_the_event_by_default_without_its_commands() {
    let (_harness, mut rule) = failing(OnError::DeadLetter);
    let input = pir(1, "pir");
    let result = rule.run(&input);
    assert_eq!(result.outcome, RuleOutcome::DeadLetter);
    assert!(
        result.commands.is_empty(),
        "a replayed dead letter would send them again"
    );
    assert_eq!(result.errors.len(), 1);
    let error = &result.errors[0];
    assert_eq!(
        (error.step, &*error.plugin, error.kind()),
        (2, "panic", "panic")
    );
    assert!(
        error.to_string().contains("testing-panic: refusing event"),
        "{error}"
    );
    assert_eq!(result.versions.len(), 2, "the third step never ran");
}

#[test]
fn skip_step_records_the_error_and_goes_on_with_the_event_unchanged() {
    let (_harness, mut rule) = failing(OnError::SkipStep);
    let input = pir(1, "pir");
    let result = rule.run(&input);
    let RuleOutcome::Passed(output) = &result.outcome else {
        panic!("{result:?}");
    };
    assert_eq!(
        output.attribute("plugin-sequence"),
        Some("1"),
        "the third step ran"
    );
    assert_eq!(result.errors.len(), 1);
    assert_eq!(result.errors[0].kind(), "panic");
    assert_eq!(result.commands.len(), 1, "the first step's command is kept");
    assert_eq!(result.versions.len(), 3);
}

#[test]
fn drop_on_error_stops_the_rule_and_reports_the_error() {
    let (_harness, mut rule) = failing(OnError::Drop);
    let input = pir(1, "pir");
    let result = rule.run(&input);
    assert_eq!(result.outcome, RuleOutcome::DroppedOnError);
    assert!(result.event().is_none());
    assert!(result.commands.is_empty());
    assert_eq!(result.errors.len(), 1);
}

#[test]
fn a_step_past_its_deadline_fails_with_the_rule_policy() {
    let harness = harness(&[("spin", "testing/spin")]);
    let mut rule = runtime(
        &harness,
        "[[rule]]\nname = \"slow\"\non_error = \"drop\"\n[[rule.step]]\nplugin = \"spin\"\ndeadline_ms = 20\n",
    );
    let input = event("d", 1, vec![]);
    let result = rule.run(&input);
    assert_eq!(result.outcome, RuleOutcome::DroppedOnError);
    assert_eq!(result.errors[0].kind(), "deadline");
    assert!(
        result.errors[0].to_string().contains("20-ms deadline"),
        "{}",
        result.errors[0]
    );
}

#[test]
fn commands_take_the_step_or_rule_path_unless_the_plugin_names_one() {
    let harness = harness(&[("motion-light", "motion-light")]);
    let config = "config = { sensors = [\"vdevo-hallway-pir\"], lights = [\"vdevo-hallway-lamp\"]";
    let via_of = |text: String| {
        let mut rule = runtime(&harness, &text);
        let input = pir(1, "pir");
        let result = rule.run(&input);
        assert!(result.errors.is_empty(), "{result:?}");
        assert_eq!(result.commands.len(), 1, "{result:?}");
        let command = &result.commands[0];
        assert_eq!(
            (command.device.id.as_str(), command.name.as_str()),
            ("vdevo-hallway-lamp", "switch_led")
        );
        command.via.clone()
    };
    let head = "[[rule]]\nname = \"NAME\"\ncommands.via = \"tuya-openapi\"\n[[rule.step]]\nplugin = \"motion-light\"\n";
    // Each rule gets its own name, so its state namespace (the lights it switched on) is fresh.
    assert_eq!(
        via_of(format!(
            "{}{config} }}\n",
            head.replace("NAME", "rule-path")
        ))
        .as_deref(),
        Some("tuya-openapi")
    );
    assert_eq!(
        via_of(format!(
            "{}{config} }}\ncommands.via = \"tuya-mqtt\"\n",
            head.replace("NAME", "step-path")
        ))
        .as_deref(),
        Some("tuya-mqtt")
    );
    // A path the plugin names itself must be one the rule allows.
    assert_eq!(
        via_of(format!(
            "{}{config}, via = \"plugin-path\" }}\ncommands.allow = [\"plugin-path\"]\n",
            head.replace("NAME", "plugin-path")
        ))
        .as_deref(),
        Some("plugin-path")
    );
    assert_eq!(
        via_of(format!(
            "[[rule]]\nname = \"no-path\"\n[[rule.step]]\nplugin = \"motion-light\"\n{config} }}\n"
        )),
        None
    );
}

#[test]
fn a_command_through_a_path_the_rule_does_not_allow_is_refused_not_returned() {
    let harness = harness(&[("motion-light", "motion-light")]);
    let config = "config = { sensors = [\"vdevo-hallway-pir\"], lights = [\"vdevo-hallway-lamp\"], via = \"operator-webhook\" }";
    let run = |name: &str, extra: &str| {
        let text = format!(
            "[[rule]]\nname = \"{name}\"\ncommands.via = \"tuya-openapi\"\n{extra}\
             [[rule.step]]\nplugin = \"motion-light\"\n{config}\n"
        );
        let mut rule = runtime(&harness, &text);
        let input = pir(1, "pir");
        let result = rule.run(&input);
        assert!(result.errors.is_empty(), "{result:?}");
        (result.commands.clone(), result.refused.clone())
    };
    let (sent, refused) = run("limited", "");
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].step, 1);
    assert_eq!(refused[0].command.via.as_deref(), Some("operator-webhook"));
    assert!(
        refused[0].reason.contains(
            "step 1 (plugin \"motion-light\") may not send through command path \
             \"operator-webhook\" (it may use: \"tuya-openapi\")"
        ),
        "{}",
        refused[0].reason
    );
    let (sent, refused) = run("any-path", "commands.allow = [\"*\"]\n");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(refused.is_empty(), "{refused:?}");
}

#[test]
fn a_reload_refused_by_a_plugin_keeps_the_serving_rules() {
    let harness = harness(&[("deadband", "deadband")]);
    let good = "[[rule]]\nname = \"temp\"\n[[rule.step]]\nplugin = \"deadband\"\nconfig = { datapoints = [\"t\"], threshold = 1 }\n";
    let dir = rules_dir(good);
    let rules = Rules::load(dir.path(), harness.registry.clone()).expect("load");
    let serving = rules.current();
    std::fs::write(
        dir.path().join("r.toml"),
        good.replace("threshold = 1", "threshold = -1"),
    )
    .expect("write");
    let errors = rules.reload().unwrap_err();
    assert!(
        errors[0].to_string().contains("init refused the config"),
        "{errors:?}"
    );
    assert!(Arc::ptr_eq(&serving, &rules.current()));
    std::fs::write(
        dir.path().join("r.toml"),
        good.replace("threshold = 1", "threshold = 2"),
    )
    .expect("write");
    let summary = rules.reload().expect("reload");
    assert_eq!(summary.changed, ["temp"]);
    assert!(!Arc::ptr_eq(&serving, &rules.current()));
}
