//! Rule loading, matching and conditions, without plugins: the tests that run real plugin
//! chains are in the tests crate (`tests/tests/rules.rs`), which builds the plugins.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::event::{Device, Event, Json, Kind, Property, Value, Vendor};
use crate::plugin::{MemoryStateStore, Registry, Runtime, RuntimeConfig};
use crate::rules::reload::ReloadSummary;
use crate::rules::rule::ConditionError;
use crate::twin::Twins;

/// Parses one file named `rules/t.toml`.
fn parse(text: &str) -> Result<RuleSet, Vec<RuleError>> {
    RuleSet::parse([(Path::new("rules/t.toml"), text)])
}

/// The errors of one file, displayed.
fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("the file was accepted:\n{text}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

fn event() -> Event {
    Event {
        id: "demo-0002".into(),
        source: "tuya-eu".into(),
        vendor: Vendor::Tuya,
        kind: Kind::Properties,
        action: "devicePropertyMessage".into(),
        device: Device {
            id: "vdevo-hallway-pir".into(),
            product: Some("keyPir001".into()),
            name: None,
        },
        time_ms: 1_763_884_800_100,
        properties: vec![
            Property::new("pir", Value::Text("pir".into())),
            Property::new("battery_percentage", Value::Integer(87)),
            Property::new("temperature", Value::Float(31.5)),
            Property {
                code: "power_w".into(),
                value: Value::Float(1210.5),
                time_ms: Some(1_763_884_800_000),
                service: Some("Energy".into()),
            },
            Property::new(
                "schedule",
                Value::Json(
                    Json::from_text(r#"{"on":[7,30],"days":["mon","tue"]}"#.into()).unwrap(),
                ),
            ),
            Property::new("switch", Value::Boolean(false)),
            Property::new("note", Value::Null),
        ],
        payload: Json::from_text(
            r#"{"devId":"vdevo-hallway-pir","status":[{"code":"pir"}],"nested":{"n":3}}"#.into(),
        )
        .unwrap(),
        attributes: [("topic".to_owned(), "tuya/eu".to_owned())]
            .into_iter()
            .collect(),
    }
}

const STEP: &str = "\n[[rule.step]]\nplugin = \"deadband\"\n";

/// A one-rule file with `lines` in the rule table and one step.
fn rule(lines: &str) -> String {
    format!("[[rule]]\nname = \"r\"\n{lines}\n{STEP}")
}

fn condition(expr: &str) -> Result<bool, ConditionError> {
    let set = parse(&rule(&format!("if = '{expr}'"))).unwrap_or_else(|e| panic!("{e:?}"));
    set.rules()[0].matches_event(&event())
}

#[test]
fn a_full_rule_file_loads_with_its_defaults_and_settings() {
    let text = r#"
# Two rules.
[[rule]]
name = "hallway-light"
description = "Lights on while someone is in the hallway"
when = { source = "tuya-*", vendor = ["tuya", "alibaba"], kind = "properties", device = ["vdevo-*"] }
if = 'props.pir == "pir"'
on_error = "skip-step"
commands.via = "tuya-api"

[[rule.step]]
plugin = "normalize-units"
config.mappings = [{ from = "va_temperature", to = "temperature", scale = 0.1 }]

[[rule.step]]
plugin = "motion-light"
config = { sensors = ["vdevo-pir"], lights = ["vdevo-lamp"], when = 1979-05-27T07:32:00Z }
deadline_ms = 20
memory_mb = 8
state_keys = 50
state_mb = 2
grants = { env = ["TZ"], read_dirs = ["/srv/iotrules"] }
commands.via = "tuya-mqtt"

[[rule]]
name = "off"
enabled = false
[[rule.step]]
plugin = "pass"
"#;
    let set = parse(text).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(set.rules().len(), 2);
    let rule = &set.rules()[0];
    assert_eq!(rule.name(), "hallway-light");
    assert_eq!(rule.position(), Position { line: 3, column: 1 });
    assert_eq!(rule.on_error(), OnError::SkipStep);
    assert_eq!(rule.via(), Some("tuya-api"));
    assert_eq!(rule.condition(), Some(r#"props.pir == "pir""#));
    assert_eq!(
        rule.plugins().collect::<Vec<_>>(),
        ["normalize-units", "motion-light"]
    );
    let [first, second] = &rule.steps[..] else {
        panic!("two steps")
    };
    assert_eq!(
        first.config,
        r#"{"mappings":[{"from":"va_temperature","scale":0.1,"to":"temperature"}]}"#
    );
    assert_eq!(first.limits, crate::plugin::Limits::default());
    assert_eq!(first.via, None);
    assert_eq!(
        first.position,
        Position {
            line: 12,
            column: 10
        }
    );
    assert_eq!(
        second.config,
        r#"{"lights":["vdevo-lamp"],"sensors":["vdevo-pir"],"when":"1979-05-27T07:32:00Z"}"#
    );
    assert_eq!(second.limits.deadline.as_millis(), 20);
    assert_eq!(second.limits.memory_bytes, 8 << 20);
    assert_eq!(
        second.limits.state,
        crate::plugin::StateQuota {
            keys: 50,
            bytes: 2 << 20
        }
    );
    assert_eq!(second.grants.env, ["TZ"]);
    assert_eq!(second.grants.read_dirs, [Path::new("/srv/iotrules")]);
    assert_eq!(second.via.as_deref(), Some("tuya-mqtt"));
    assert!(rule.matches_event(&event()).unwrap());
    assert!(!set.rules()[1].enabled());
    assert!(
        !set.rules()[1].matches_event(&event()).unwrap(),
        "a disabled rule matches nothing"
    );
    assert_eq!(set.rules()[1].on_error(), OnError::DeadLetter);
}

#[test]
fn a_step_without_config_gets_an_empty_object() {
    let set = parse(&rule("")).unwrap();
    assert_eq!(set.rules()[0].steps[0].config, "{}");
}

#[test]
fn toml_syntax_errors_name_line_and_column() {
    let error = one_error("[[rule]]\nname = \"a\"\nwhen = { source = }\n");
    assert_eq!(
        error,
        "rules/t.toml:3:19: invalid literal string, expected `'`"
    );
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let error = one_error(&rule("condition = 'true'"));
    assert!(
        error.starts_with("rules/t.toml:3:1: unknown field `condition`"),
        "{error}"
    );
    let error = one_error(&rule("when = { sorce = \"x\" }"));
    assert!(
        error.starts_with("rules/t.toml:3:10: unknown field `sorce`"),
        "{error}"
    );
    let error = one_error("[[rule]]\nname = \"r\"\n[[rule.step]]\nplugin = \"p\"\ndeadline = 5\n");
    assert!(
        error.starts_with("rules/t.toml:5:1: unknown field `deadline`"),
        "{error}"
    );
    let error = one_error("[[rules]]\nname = \"r\"\n");
    assert!(error.contains("unknown field `rules`"), "{error}");
}

#[test]
fn a_rule_without_a_name_is_refused() {
    let error =
        one_error("[[rule]]\nwhen = { kind = \"online\" }\n[[rule.step]]\nplugin = \"p\"\n");
    assert!(
        error.starts_with("rules/t.toml:1:1: missing field `name`"),
        "{error}"
    );
}

#[test]
fn a_rule_without_steps_is_refused() {
    let error = one_error("[[rule]]\nname = \"idle\"\n");
    assert!(
        error.starts_with(
            "rules/t.toml:2:8: rule \"idle\": a rule needs at least one [[rule.step]]"
        ),
        "{error}"
    );
}

#[test]
fn bad_names_values_and_limits_are_refused_with_their_place() {
    let error = one_error(&rule("").replace("\"r\"", "\"hall way\""));
    assert!(
        error.starts_with("rules/t.toml:2:8: rule \"hall way\": a rule name is"),
        "{error}"
    );
    let error = one_error(&rule("on_error = \"retry\""));
    assert!(
        error.starts_with("rules/t.toml:3:12: unknown variant `retry`"),
        "{error}"
    );
    let error = one_error(&rule("when = { kind = [\"properties\", \"property\"] }"));
    assert!(
        error.starts_with("rules/t.toml:3:17: rule \"r\": when.kind: unknown kind \"property\""),
        "{error}"
    );
    let error = one_error(&rule("when = { vendor = \"aws\" }"));
    assert!(
        error.starts_with("rules/t.toml:3:19: rule \"r\": when.vendor: unknown vendor"),
        "{error}"
    );
    let error = one_error(&rule("when = { device = 5 }"));
    assert_eq!(
        error,
        "rules/t.toml:3:19: expected a string or a list of strings"
    );
    let error = one_error(&format!("{}deadline_ms = 0\n", rule("")));
    assert!(
        error.starts_with("rules/t.toml:7:15: rule \"r\": step 1 (plugin \"deadband\"): deadline_ms must be 1 to 10000"),
        "{error}"
    );
    let error = one_error(&format!("{}state_mb = 0\n", rule("")));
    assert!(
        error.starts_with("rules/t.toml:7:12: rule \"r\": step 1 (plugin \"deadband\"): state_mb must be at least 1"),
        "{error}"
    );
    let error = one_error(&format!("{}grants.read_dirs = [\"tables\"]\n", rule("")));
    assert!(
        error.contains("grants.read_dirs: \"tables\" is not an absolute path"),
        "{error}"
    );
}

#[test]
fn a_grant_of_the_root_or_a_system_directory_is_refused_at_its_place() {
    let text = format!(
        "{}grants.read_dirs = [\"/srv/iotrules/tables\", \"/\", \"/proc/self\", \"/etc/iotrules\"]\n",
        rule("")
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_eq!(
        errors[0],
        "rules/t.toml:7:45: rule \"r\": step 1 (plugin \"deadband\"): grants.read_dirs: \"/\" \
         cannot be granted: it is the whole file system"
    );
    assert!(
        errors[1].contains("\"/proc/self\" cannot be granted: it is under /proc"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("\"/etc/iotrules\" cannot be granted: it is under /etc"),
        "{}",
        errors[2]
    );
}

#[test]
fn grants_that_reach_the_config_s_secrets_are_refused_with_file_line_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = crate::config::Config::parse(
        &root.join("iotrules.toml"),
        "[[command_path]]\nname = \"hook\"\nkind = \"webhook\"\n\
         url = \"https://hooks.example.com/\"\nauthorization = \"${HOOK_AUTH:-x}\"\n",
    )
    .unwrap();
    let policy = crate::plugin::GrantPolicy::from_config(&config);
    let tables = root.join("tables");
    let text = format!(
        "{}grants = {{ env = [\"TZ\", \"HOOK_AUTH\"], read_dirs = [\"{}\", \"{}\"] }}\n",
        rule(""),
        tables.display(),
        root.display()
    );
    let set = parse(&text).unwrap_or_else(|e| panic!("{e:#?}"));
    let errors: Vec<String> = set
        .check_grants(&policy)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "rules/t.toml:7:25: rule \"r\": step 1 (plugin \"deadband\"): grants.env: \
             \"HOOK_AUTH\" is referenced by the config"
        ),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with("rules/t.toml:7:")
            && errors[1].contains(&format!(
                "grants.read_dirs: \"{}\" holds the config file",
                root.display()
            )),
        "{}",
        errors[1]
    );
    // Without a config's secrets, only the system directories are refused.
    assert!(
        set.check_grants(&crate::plugin::GrantPolicy::default())
            .is_ok()
    );
}

#[test]
fn a_step_may_use_its_rule_s_and_its_own_paths_and_those_allowed() {
    let text = r#"
[[rule]]
name = "r"
commands.via = "tuya-api"
commands.allow = ["lamp-mqtt"]

[[rule.step]]
plugin = "deadband"
commands.allow = ["hook"]

[[rule.step]]
plugin = "deadband"
commands.via = "tuya-mqtt"

[[rule]]
name = "open"
commands.allow = ["*"]
[[rule.step]]
plugin = "deadband"

[[rule]]
name = "none"
[[rule.step]]
plugin = "deadband"
"#;
    let set = parse(text).unwrap_or_else(|e| panic!("{e:#?}"));
    let [first, second] = &set.rules()[0].steps[..] else {
        panic!("two steps")
    };
    for path in ["tuya-api", "lamp-mqtt", "hook"] {
        assert!(first.allowed.permits(path), "{path}");
    }
    assert!(!first.allowed.permits("tuya-mqtt"));
    for path in ["tuya-api", "lamp-mqtt", "tuya-mqtt"] {
        assert!(second.allowed.permits(path), "{path}");
    }
    assert!(!second.allowed.permits("hook"));
    assert!(set.rules()[1].steps[0].allowed.permits("anything"));
    assert!(!set.rules()[2].steps[0].allowed.permits("anything"));
    assert_eq!(set.rules()[2].steps[0].allowed.describe(), "none");
    let named: Vec<&str> = set.rules()[0]
        .named_paths()
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(named, ["tuya-api", "lamp-mqtt", "hook", "tuya-mqtt"]);
    assert!(set.rules()[1].named_paths().is_empty());
}

#[test]
fn a_commands_allow_entry_that_is_not_a_path_name_is_refused_at_its_place() {
    let error = one_error(&rule("commands.allow = [\"ok\", \"no good\"]"));
    assert!(
        error.starts_with(
            "rules/t.toml:3:25: rule \"r\": commands.allow: \"no good\" is not a command path name"
        ),
        "{error}"
    );
}

#[test]
fn a_malformed_glob_is_refused_at_its_place() {
    let error = one_error(&rule("when = { device = [\"ok-*\", \"vdevo-[ab\"] }"));
    assert!(
        error.starts_with("rules/t.toml:3:19: rule \"r\": when.device: bad pattern \"vdevo-[ab\""),
        "{error}"
    );
}

#[test]
fn every_error_of_every_file_is_reported() {
    let a = "[[rule]]\nname = \"dup\"\n[[rule.step]]\nplugin = \"p\"\n\n[[rule]]\nname = \"bad\"\nif = 'evnt.kind'\nwhen = { kind = \"nope\" }\n[[rule.step]]\nplugin = \"p\"\n";
    let b = "[[rule]]\nname = \"dup\"\n[[rule.step]]\nplugin = \"p\"\n";
    let c = "[[rule]\n";
    let errors: Vec<String> = RuleSet::parse([
        (Path::new("rules/a.toml"), a),
        (Path::new("rules/b.toml"), b),
        (Path::new("rules/c.toml"), c),
    ])
    .unwrap_err()
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].starts_with("rules/a.toml:9:17: rule \"bad\": when.kind: unknown kind"),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with("rules/a.toml:8:7: rule \"bad\": if: undeclared reference to 'evnt'"),
        "{errors:#?}"
    );
    assert_eq!(
        errors[2],
        "rules/b.toml:2:8: duplicate rule name \"dup\" (also in rules/a.toml:2)"
    );
    assert!(errors[3].starts_with("rules/c.toml:1:"), "{errors:#?}");
}

#[test]
fn expression_syntax_errors_point_into_the_expression() {
    let error = one_error(&rule("if = 'props.pir == '"));
    assert!(
        error.starts_with(
            "rules/t.toml:3:20: rule \"r\": if: Syntax error: mismatched input '<EOF>'"
        ),
        "{error}"
    );
    // An escaped string cannot be mapped character by character: the string's start is used.
    let error = one_error(&rule("if = \"props.pir == \\\"a\\\" &&\""));
    assert!(
        error.starts_with("rules/t.toml:3:6: rule \"r\": if: "),
        "{error}"
    );
}

#[test]
fn unknown_functions_are_refused_at_load_where_they_are_called() {
    let error = one_error(&rule("if = 'event.kind == \"a\" && foo(1)'"));
    assert_eq!(
        error,
        "rules/t.toml:3:31: rule \"r\": if: unknown function 'foo'"
    );
    let error = one_error(&rule("if = 'event.id.startsWth(\"a\")'"));
    assert_eq!(
        error,
        "rules/t.toml:3:25: rule \"r\": if: unknown function 'startsWth'"
    );
}

#[test]
fn standard_functions_operators_and_type_names_are_available() {
    assert!(
        condition(
            r#"int(props.temperature) == 31 && string(props.battery_percentage) == "87"
               && type(props.pir) == string && size(props) > 1 && props.pir in ["pir"]
               && !(props.switch) && -1 < 0 && (true ? 1 : 2) == 1
               && event.properties[0].code.contains("p") && event.id.endsWith("2")
               && double(1) == 1.0 && 3 % 2 == 1 && 2 * 3 / 1 - 1 == 5"#
                .replace('\n', " ")
                .as_str()
        )
        .unwrap()
    );
}

#[test]
fn comprehension_variables_are_not_undeclared_references() {
    assert!(
        condition(r#"event.properties.exists(p, p.code == "pir" && p.value == "pir")"#).unwrap()
    );
    assert!(condition(r#"event.properties.all(p, p.code != "")"#).unwrap());
    assert!(condition(r#"event.properties.map(p, p.code).exists(c, c == "switch")"#).unwrap());
    let error = one_error(&rule(
        "if = 'event.properties.exists(p, q.code == \"pir\")'",
    ));
    assert!(error.contains("undeclared reference to 'q'"), "{error}");
    assert!(error.starts_with("rules/t.toml:3:34: "), "{error}");
}

#[test]
fn conditions_see_typed_event_fields() {
    assert!(condition(r#"event.kind == "properties" && event.vendor == "tuya""#).unwrap());
    assert!(
        condition(r#"event.device.id.startsWith("vdevo-") && event.device.product == "keyPir001""#)
            .unwrap()
    );
    assert!(condition("event.device.name == null").unwrap());
    assert!(condition("event.time_ms > 1763884800000").unwrap());
    assert!(condition(r#"event.attributes.topic == "tuya/eu""#).unwrap());
    assert!(condition(r#"event.id.matches("^demo-[0-9]+$")"#).unwrap());
    assert!(condition("size(event.properties) == 7").unwrap());
}

#[test]
fn conditions_see_properties_by_code_with_their_types() {
    assert!(condition("props.temperature > 30.0").unwrap());
    assert!(condition("props.battery_percentage >= 87").unwrap());
    assert!(condition("props.switch == false").unwrap());
    assert!(condition("props.note == null").unwrap());
    assert!(condition(r#"props.schedule.on[0] == 7 && "tue" in props.schedule.days"#).unwrap());
    assert!(condition(r#"has(props.pir) && !has(props.humidity)"#).unwrap());
    assert!(condition(r#"event.properties.exists(p, p.service == "Energy" && p.value > 1000.0 && p.time_ms == 1763884800000)"#).unwrap());
}

#[test]
fn conditions_see_the_parsed_payload() {
    assert!(condition(r#"payload.devId == event.device.id && payload.nested.n == 3"#).unwrap());
    assert!(condition(r#"payload.status[0].code == "pir""#).unwrap());
}

#[test]
fn a_failing_or_non_boolean_condition_is_an_error_for_the_event_not_a_match() {
    let error = condition("props.humidity > 40").unwrap_err();
    assert_eq!(&*error.rule, "r");
    assert!(error.to_string().starts_with("rule \"r\": if: "), "{error}");
    assert!(error.reason.contains("humidity"), "{error}");
    let error = condition("props.battery_percentage + 1").unwrap_err();
    assert!(error.reason.contains("not a boolean"), "{error}");
    let error = condition(r#"props.pir > 3"#).unwrap_err();
    assert_eq!(
        error.reason,
        "found no matching overload for '_>_' applied to '(string, int)'"
    );
    let error = condition(r#"event.device.id.matches("[")"#).unwrap_err();
    assert!(
        !error.reason.contains('\n'),
        "one line for the logs: {error}"
    );
    assert!(error.reason.contains("unclosed character class"), "{error}");
}

#[test]
fn the_expression_context_is_built_only_for_variables_asked_and_once_per_event() {
    let text = format!(
        "{}\n{}\n{}",
        rule("if = 'props.pir == \"pir\"'"),
        rule("if = 'has(props.pir) && event.kind == \"properties\"'").replace("\"r\"", "\"r2\""),
        rule("when = { kind = \"online\" }\nif = 'payload.x == 1'").replace("\"r\"", "\"r3\""),
    );
    let set = parse(&text).unwrap();
    let event = event();
    let scope = EventScope::new(&event);
    assert_eq!(scope.built(), 0);
    assert!(set.rules()[0].matches(&scope).unwrap());
    assert_eq!(scope.built(), 1, "props only");
    assert!(set.rules()[1].matches(&scope).unwrap());
    assert_eq!(scope.built(), 2, "props reused, event added");
    // Ruled out by `when`: the payload is never parsed.
    assert!(!set.rules()[2].matches(&scope).unwrap());
    assert_eq!(scope.built(), 2);
    let matching: Vec<&str> = set.matching(&event).map(|r| r.name()).collect();
    assert_eq!(matching, ["r", "r2"]);
}

#[test]
fn matching_applies_when_then_if_and_reports_condition_errors() {
    let text = format!(
        "{}\n{}\n{}\n{}",
        rule("when = { source = \"tuya-*\", device = [\"vdevo-kitchen-*\", \"vdevo-hall*\"] }"),
        rule("when = { kind = [\"online\", \"offline\"] }").replace("\"r\"", "\"offline\""),
        rule("when = { product = \"keyPir00?\", action = \"device*\" }\nif = 'props.missing'")
            .replace("\"r\"", "\"broken\""),
        rule("when = { vendor = \"tuya\" }\nif = 'props.battery_percentage < 20'")
            .replace("\"r\"", "\"low-battery\""),
    );
    let set = parse(&text).unwrap();
    let event = event();
    let results: Vec<Result<&str, String>> = set
        .evaluate(&event)
        .map(|r| r.map(|rule| rule.name()).map_err(|e| e.rule.to_string()))
        .collect();
    assert_eq!(results, [Ok("r"), Err("broken".to_owned())]);
    let mut online = event.clone();
    online.kind = Kind::Online;
    assert_eq!(
        set.matching(&online).map(|r| r.name()).collect::<Vec<_>>(),
        ["r", "offline"]
    );
}

/// `expr` on [`event`] with `twins` (fed the event first, as the workers do).
fn twin_condition(expr: &str, twins: &Arc<Twins>) -> Result<bool, ConditionError> {
    let set = parse(&rule(&format!("if = '{expr}'"))).unwrap_or_else(|e| panic!("{e:?}"));
    let event = event();
    twins.update(&event);
    let scope = EventScope::new(&event).with_twins(Some(twins));
    set.rules()[0].matches(&scope)
}

#[test]
fn conditions_see_the_event_s_device_twin_with_the_event_in_it() {
    let twins = Arc::new(Twins::new(100));
    let mut earlier = event();
    earlier.kind = Kind::Online;
    earlier.time_ms -= 50;
    earlier.properties = vec![Property::new("humidity", Value::Integer(40))];
    twins.update(&earlier);
    for expr in [
        "twin.online == true",
        "twin.online_changed_ms == 1763884800050",
        "twin.last_seen_ms == event.time_ms",
        "twin.device.id == \"vdevo-hallway-pir\" && twin.device.product == \"keyPir001\"",
        "twin.device.name == null",
        "twin.props.humidity == 40",
        "twin.props.temperature == 31.5 && twin.props.pir == \"pir\"",
        "twin.props.schedule.on[1] == 30",
        "twin.props.power_w > 1000.0",
        "!has(twin.props.missing)",
    ] {
        assert_eq!(twin_condition(expr, &twins), Ok(true), "{expr}");
    }
}

#[test]
fn twin_of_reads_another_device_s_twin_or_null() {
    let twins = Arc::new(Twins::new(100));
    let mut hall = event();
    hall.device = Device::new("hall-motion");
    hall.properties = vec![Property::new("occupied", Value::Boolean(true))];
    twins.update(&hall);
    for expr in [
        "twin_of(\"hall-motion\").props.occupied",
        "twin_of(\"hall-motion\").device.id == \"hall-motion\"",
        "twin_of(\"hall-motion\").online == null",
        "twin_of(\"nobody\") == null",
        "twin_of(event.device.id).props.battery_percentage == 87",
    ] {
        assert_eq!(twin_condition(expr, &twins), Ok(true), "{expr}");
    }
    let error = twin_condition("twin_of(1) == null", &twins).unwrap_err();
    assert!(error.reason.contains("want 'Arc<String>'"), "{error}");
}

#[test]
fn without_twins_twin_and_twin_of_are_null() {
    let set = parse(&rule("if = 'twin == null && twin_of(\"x\") == null'")).unwrap();
    assert_eq!(set.rules()[0].matches_event(&event()), Ok(true));
    let off = Arc::new(Twins::new(0));
    assert_eq!(
        twin_condition("twin == null && twin_of(event.device.id) == null", &off),
        Ok(true)
    );
}

#[test]
fn the_twin_is_built_once_per_event_and_only_when_asked() {
    let twins = Arc::new(Twins::new(100));
    let event = event();
    twins.update(&event);
    let set = parse(&format!(
        "{}\n{}",
        rule("if = 'twin.props.pir == \"pir\"'"),
        rule("if = 'twin.online == null'").replace("\"r\"", "\"r2\""),
    ))
    .unwrap();
    let scope = EventScope::new(&event).with_twins(Some(&twins));
    assert_eq!(scope.built(), 0);
    assert!(set.rules()[0].matches(&scope).unwrap());
    assert!(set.rules()[1].matches(&scope).unwrap());
    assert_eq!(scope.built(), 1, "the twin only, once");
}

fn empty_registry(dir: &Path) -> Registry {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        max_memory_bytes: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    Registry::new(runtime, dir, Arc::new(MemoryStateStore::new()))
}

#[test]
fn load_dir_reads_sorted_toml_files_and_skips_tests_hidden_and_subdirectories() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    let disabled = "[[rule]]\nname = \"NAME\"\nenabled = false\n[[rule.step]]\nplugin = \"p\"\n";
    std::fs::write(dir.path().join("b.toml"), disabled.replace("NAME", "b")).unwrap();
    std::fs::write(dir.path().join("a.toml"), disabled.replace("NAME", "a")).unwrap();
    std::fs::write(dir.path().join("a.test.toml"), "not = [toml").unwrap();
    std::fs::write(dir.path().join(".#a.toml"), "not = [toml").unwrap();
    std::fs::write(dir.path().join("README.md"), "# rules").unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("tests/x.toml"), "not = [toml").unwrap();
    let set = RuleSet::load_dir(dir.path(), &empty_registry(plugins.path())).unwrap();
    let names: Vec<&str> = set.rules().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(set.files().len(), 2);
}

#[test]
fn an_unknown_plugin_is_refused_at_load_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hall.toml"),
        "[[rule]]\nname = \"hallway\"\n\n[[rule.step]]\nplugin = \"auto-of\"\n",
    )
    .unwrap();
    let errors = RuleSet::load_dir(dir.path(), &empty_registry(plugins.path())).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, dir.path().join("hall.toml"));
    assert_eq!(
        errors[0].position,
        Some(Position {
            line: 5,
            column: 10
        })
    );
    let expected = format!(
        ":5:10: rule \"hallway\": step 1: unknown plugin \"auto-of\" (no plugins are loaded from {})",
        plugins.path().display()
    );
    assert!(errors[0].to_string().ends_with(&expected), "{}", errors[0]);
}

#[test]
fn a_missing_rules_directory_is_an_error_not_a_panic() {
    let plugins = tempfile::tempdir().unwrap();
    let errors = RuleSet::load_dir(
        Path::new("/nonexistent/rules"),
        &empty_registry(plugins.path()),
    )
    .unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .starts_with("/nonexistent/rules: cannot list the rules directory")
    );
}

#[test]
fn a_reload_with_an_error_keeps_the_previous_set() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    let registry = Arc::new(empty_registry(plugins.path()));
    let disabled = "[[rule]]\nname = \"NAME\"\nenabled = false\n[[rule.step]]\nplugin = \"p\"\n";
    std::fs::write(dir.path().join("a.toml"), disabled.replace("NAME", "a")).unwrap();
    let rules = Rules::load(dir.path(), registry).unwrap();
    let updates = rules.subscribe();
    let first = rules.current();
    assert_eq!(rules.generation(), 1);

    std::fs::write(dir.path().join("b.toml"), "[[rule]]\nname = \"b\"\n").unwrap();
    let errors = rules.reload().unwrap_err();
    assert!(
        errors[0].to_string().contains("at least one [[rule.step]]"),
        "{errors:?}"
    );
    assert!(
        Arc::ptr_eq(&first, &rules.current()),
        "the old set keeps serving"
    );
    assert_eq!(rules.generation(), 1);
    assert!(updates.recv().unwrap().is_err());

    std::fs::write(dir.path().join("b.toml"), disabled.replace("NAME", "b")).unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        disabled
            .replace("NAME", "a")
            .replace("false", "false\ndescription = \"x\""),
    )
    .unwrap();
    let summary = rules.reload().unwrap();
    assert_eq!(
        summary,
        ReloadSummary {
            generation: 2,
            added: vec!["b".into()],
            removed: vec![],
            changed: vec!["a".into()],
            unchanged: 0,
        }
    );
    assert_eq!(updates.recv().unwrap(), Ok(summary));
    assert_eq!(rules.current().rules().len(), 2);
    std::fs::remove_file(dir.path().join("a.toml")).unwrap();
    let summary = rules.reload().unwrap();
    assert_eq!(
        (summary.removed, summary.unchanged),
        (vec!["a".to_owned()], 1)
    );
}

#[test]
fn the_watcher_reloads_when_a_rule_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    let registry = Arc::new(empty_registry(plugins.path()));
    let rules = Arc::new(Rules::load(dir.path(), registry).unwrap());
    let updates = rules.subscribe();
    let _watcher =
        RulesWatcher::start(rules.clone(), std::time::Duration::from_millis(20)).unwrap();
    std::fs::write(
        dir.path().join("new.toml"),
        "[[rule]]\nname = \"new\"\nenabled = false\n[[rule.step]]\nplugin = \"p\"\n",
    )
    .unwrap();
    // The file may be seen half-written first; wait for the reload that has the rule.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let summary = updates.recv_timeout(left).expect("a reload within 10 s");
        if summary.is_ok_and(|s| s.added == ["new"]) {
            break;
        }
    }
    assert!(rules.current().rule("new").is_some());
}

#[test]
fn odd_expressions_are_refused_with_a_reason_not_a_panic() {
    let parens = format!("{}true{}", "(".repeat(2000), ")".repeat(2000));
    let calls = format!("{}true{}", "!(".repeat(200), ")".repeat(200));
    for expr in [
        "",
        " ",
        "((((",
        "\u{0}",
        "event.",
        "event[",
        "1 +",
        "\"unterminated",
        &parens,
        &calls,
    ] {
        let text = format!(
            "[[rule]]\nname = \"r\"\nif = {}\n{STEP}",
            toml::Value::String(expr.to_owned())
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{expr:?}: {errors:#?}");
        assert!(
            errors[0].starts_with("rules/t.toml:3:"),
            "{expr:?}: {errors:#?}"
        );
        assert!(
            errors[0].contains("rule \"r\": if: "),
            "{expr:?}: {errors:#?}"
        );
    }
}

#[test]
fn a_long_flat_chain_of_conditions_is_not_deep() {
    // The parser balances `&&` chains, so 300 terms nest about nine levels.
    let chain = vec![r#"props.pir == "pir""#; 300].join(" && ");
    assert!(condition(&chain).unwrap());
}
