//! Comparing what a rule made of an input with what a test expects.
//!
//! Both sides are JSON documents of one shape (`verdict`, `step`, `matched`, `commands`,
//! `errors`, `event`). The expected document holds only what the test wrote; the actual one
//! is cut down to those fields ([`project`]) so that fields the test leaves out never make a
//! difference. The two are then rendered one field per line ([`render`]) and diffed line by
//! line, so a failure shows exactly the fields that differ.

use std::fmt::Write as _;

use serde_json::{Map, Value as Json};
use similar::{ChangeTag, TextDiff};

use crate::event::{Command, Device, Event, Property, Value};
use crate::rules::{RuleOutcome, RuleResult, StepError};

pub(crate) const VERDICT: &str = "verdict";
pub(crate) const STEP: &str = "step";
pub(crate) const MATCHED: &str = "matched";
pub(crate) const COMMANDS: &str = "commands";
pub(crate) const ERRORS: &str = "errors";
pub(crate) const EVENT: &str = "event";
pub(crate) const FIRED: &str = "fired";
pub(crate) const DEVICE: &str = "device";
pub(crate) const PROPERTIES: &str = "properties";
pub(crate) const SERVICES: &str = "services";
pub(crate) const PAYLOAD: &str = "payload";
pub(crate) const ATTRIBUTES: &str = "attributes";
pub(crate) const PASS: &str = "pass";

/// The order the fields of a document are rendered in.
const ORDER: [&str; 7] = [VERDICT, STEP, MATCHED, FIRED, COMMANDS, ERRORS, EVENT];

/// How a rule treated one input.
pub(crate) enum RuleRun<'r, 'e> {
    /// The rule did not take the event (`when` or `if` said no), or was left out.
    NoMatch,
    /// The rule's `if` failed to evaluate on the event.
    IfError(&'r str),
    /// The rule ran its steps.
    Ran(&'r RuleResult<'e>),
    /// A timer of the rule fired: its steps ran on the timer's event, which the result owns;
    /// `kept` says whether it passed on as it came (the result cannot borrow it to say so).
    Fired {
        result: &'r RuleResult<'e>,
        kept: bool,
    },
}

impl RuleRun<'_, '_> {
    /// What the rule really did, for a failure's header: "it {summary}".
    pub(crate) fn summary(&self) -> String {
        match self {
            RuleRun::NoMatch => "did not take the input".to_owned(),
            RuleRun::IfError(reason) => format!("could not evaluate its `if`: {reason}"),
            RuleRun::Ran(result) | RuleRun::Fired { result, .. } => {
                let mut line = match &result.outcome {
                    RuleOutcome::Dropped { step } => format!("drop at step {step}"),
                    _ => self.verdict().unwrap_or_default().to_owned(),
                };
                let commands = result.commands.len();
                if commands > 0 {
                    let _ = write!(line, ", {commands} command(s)");
                }
                for error in &result.errors {
                    let _ = write!(line, "; {error}");
                }
                format!("ran: {line}")
            }
        }
    }
}

impl RuleRun<'_, '_> {
    /// The verdict's name, when the rule ran.
    fn verdict(&self) -> Option<&'static str> {
        match self {
            RuleRun::Ran(result) => Some(verdict(&result.outcome)),
            RuleRun::Fired { result, kept } => Some(match &result.outcome {
                RuleOutcome::Passed(_) if *kept => "keep",
                outcome => verdict(outcome),
            }),
            RuleRun::NoMatch | RuleRun::IfError(_) => None,
        }
    }
}

/// The verdict's name in test files.
fn verdict(outcome: &RuleOutcome<'_>) -> &'static str {
    match outcome {
        RuleOutcome::Passed(std::borrow::Cow::Borrowed(_)) => "keep",
        RuleOutcome::Passed(std::borrow::Cow::Owned(_)) => "replace",
        RuleOutcome::Dropped { .. } => "drop",
        RuleOutcome::DeadLetter => "dead-letter",
        RuleOutcome::DroppedOnError => "drop-on-error",
    }
}

/// The actual document of one rule on one input; `matched` names every rule that took it.
pub(crate) fn actual(run: &RuleRun<'_, '_>, matched: &[&str]) -> Json {
    let mut doc = Map::new();
    doc.insert(
        MATCHED.into(),
        matched.iter().map(|&name| Json::from(name)).collect(),
    );
    match run {
        RuleRun::NoMatch => {
            doc.insert(VERDICT.into(), "no-match".into());
            doc.insert(COMMANDS.into(), Json::Array(Vec::new()));
            doc.insert(ERRORS.into(), Json::Array(Vec::new()));
        }
        RuleRun::IfError(reason) => {
            doc.insert(VERDICT.into(), "if-error".into());
            doc.insert(COMMANDS.into(), Json::Array(Vec::new()));
            let mut error = Map::new();
            error.insert("kind".into(), "if".into());
            error.insert("message".into(), (*reason).into());
            doc.insert(ERRORS.into(), Json::Array(vec![Json::Object(error)]));
        }
        RuleRun::Ran(result) | RuleRun::Fired { result, .. } => {
            doc.insert(VERDICT.into(), run.verdict().unwrap_or_default().into());
            if let RuleOutcome::Dropped { step } = result.outcome {
                doc.insert(STEP.into(), step.into());
            }
            doc.insert(
                COMMANDS.into(),
                result.commands.iter().map(command_doc).collect(),
            );
            doc.insert(ERRORS.into(), result.errors.iter().map(error_doc).collect());
            if let Some(event) = result.event() {
                doc.insert(EVENT.into(), event_doc(event));
            }
        }
    }
    Json::Object(doc)
}

/// A device as JSON: `id`, and `product` and `name` when it has them.
pub(crate) fn device_doc(device: &Device) -> Json {
    let mut doc = Map::new();
    doc.insert("id".into(), device.id.clone().into());
    if let Some(product) = &device.product {
        doc.insert("product".into(), product.clone().into());
    }
    if let Some(name) = &device.name {
        doc.insert("name".into(), name.clone().into());
    }
    Json::Object(doc)
}

fn command_doc(command: &Command) -> Json {
    let mut doc = Map::new();
    doc.insert(DEVICE.into(), device_doc(&command.device));
    doc.insert("name".into(), command.name.clone().into());
    doc.insert("params".into(), command.params.to_value());
    if let Some(via) = &command.via {
        doc.insert("via".into(), via.clone().into());
    }
    if let Some(reply_to) = &command.reply_to {
        doc.insert("reply_to".into(), reply_to.clone().into());
    }
    Json::Object(doc)
}

fn error_doc(error: &StepError) -> Json {
    let mut doc = Map::new();
    doc.insert(STEP.into(), error.step.into());
    doc.insert("plugin".into(), error.plugin.to_string().into());
    doc.insert("kind".into(), error.kind().into());
    doc.insert("message".into(), error.error.to_string().into());
    Json::Object(doc)
}

/// An event in the compact form of test files: properties as `code = value`, those of a
/// service under `services`.
pub(crate) fn event_doc(event: &Event) -> Json {
    let mut properties = Map::new();
    let mut services: Map<String, Json> = Map::new();
    for property in &event.properties {
        let target = match &property.service {
            None => &mut properties,
            Some(service) => match services
                .entry(service.clone())
                .or_insert_with(|| Json::Object(Map::new()))
            {
                Json::Object(map) => map,
                _ => continue,
            },
        };
        // The first property of a code is the one rules and plugins see.
        if !target.contains_key(&property.code) {
            target.insert(property.code.clone(), property_value(property));
        }
    }
    let mut doc = Map::new();
    doc.insert("id".into(), event.id.clone().into());
    doc.insert("source".into(), event.source.clone().into());
    doc.insert("vendor".into(), event.vendor.as_str().into());
    doc.insert("kind".into(), event.kind.as_str().into());
    doc.insert("action".into(), event.action.clone().into());
    doc.insert(DEVICE.into(), device_doc(&event.device));
    doc.insert("time_ms".into(), event.time_ms.into());
    doc.insert(PROPERTIES.into(), Json::Object(properties));
    doc.insert(SERVICES.into(), Json::Object(services));
    doc.insert(PAYLOAD.into(), event.payload.to_value());
    doc.insert(
        ATTRIBUTES.into(),
        event
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Json::from(v.clone())))
            .collect::<Map<_, _>>()
            .into(),
    );
    Json::Object(doc)
}

/// A property's value as JSON, keeping integers and floats apart (`1` is not `1.0`).
fn property_value(property: &Property) -> Json {
    match &property.value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::from(s.clone()),
        Value::Json(json) => json.to_value(),
    }
}

/// Two renderings that differ: what the test expects and what the rule did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    pub(crate) expected: String,
    pub(crate) actual: String,
}

impl Mismatch {
    /// The two renderings diffed line by line: `-` expected, `+` actual, ` ` both.
    pub(crate) fn diff(&self) -> String {
        let mut out = String::new();
        for change in TextDiff::from_lines(&self.expected, &self.actual).iter_all_changes() {
            let sign = match change.tag() {
                ChangeTag::Delete => '-',
                ChangeTag::Insert => '+',
                ChangeTag::Equal => ' ',
            };
            let _ = writeln!(out, "{sign} {}", change.value().trim_end_matches('\n'));
        }
        out
    }
}

/// Whether `actual` fits `expected`; the renderings of both when it does not.
pub(crate) fn compare(expected: &Json, actual: &Json) -> Option<Mismatch> {
    let projected = project(expected, actual);
    (projected != *expected).then(|| Mismatch {
        expected: render(expected),
        actual: render(&projected),
    })
}

/// The actual document cut down to the fields the expected one has, field by field as
/// each is compared: lists element by element (extra elements kept, so they show),
/// `params`, `properties` and `services` whole, `payload` by the keys given at every depth,
/// other records by the keys given.
pub fn project(expected: &Json, actual: &Json) -> Json {
    let (Json::Object(want), Json::Object(got)) = (expected, actual) else {
        return actual.clone();
    };
    let mut out = Map::new();
    for (key, want) in want {
        let Some(got) = got.get(key) else { continue };
        let value = match key.as_str() {
            VERDICT if want == PASS && (got == "keep" || got == "replace") => Json::from(PASS),
            COMMANDS => each(want, got, project_command),
            ERRORS => each(want, got, pick),
            EVENT => project_event(want, got),
            _ => got.clone(),
        };
        out.insert(key.clone(), value);
    }
    Json::Object(out)
}

fn project_command(want: &Json, got: &Json) -> Json {
    project_fields(want, got, |key, want, got| match key {
        DEVICE => pick(want, got),
        _ => got.clone(),
    })
}

fn project_event(want: &Json, got: &Json) -> Json {
    project_fields(want, got, |key, want, got| match key {
        DEVICE | ATTRIBUTES => pick(want, got),
        PAYLOAD => subset(want, got),
        _ => got.clone(),
    })
}

/// `got`'s entries for the keys of `want`, each through `field`.
fn project_fields(want: &Json, got: &Json, field: impl Fn(&str, &Json, &Json) -> Json) -> Json {
    let (Json::Object(want), Json::Object(got)) = (want, got) else {
        return got.clone();
    };
    Json::Object(
        want.iter()
            .filter_map(|(key, want)| Some((key.clone(), field(key, want, got.get(key)?))))
            .collect(),
    )
}

/// `got`'s entries for the keys of `want`, values whole.
fn pick(want: &Json, got: &Json) -> Json {
    project_fields(want, got, |_, _, got| got.clone())
}

/// `got` cut to the keys of `want` at every depth of objects.
fn subset(want: &Json, got: &Json) -> Json {
    match (want, got) {
        (Json::Object(_), Json::Object(_)) => project_fields(want, got, |_, w, g| subset(w, g)),
        (Json::Array(_), Json::Array(_)) => each(want, got, subset),
        _ => got.clone(),
    }
}

/// Element `i` of `got` through `f` with element `i` of `want`; elements past `want`'s end
/// whole.
fn each(want: &Json, got: &Json, f: impl Fn(&Json, &Json) -> Json) -> Json {
    let (Json::Array(want), Json::Array(got)) = (want, got) else {
        return got.clone();
    };
    got.iter()
        .enumerate()
        .map(|(i, got)| want.get(i).map_or_else(|| got.clone(), |want| f(want, got)))
        .collect()
}

/// One line per field: `path = value` for nested fields, one line per command or error.
pub(crate) fn render(doc: &Json) -> String {
    let mut out = String::new();
    for key in ORDER {
        let Some(value) = doc.get(key) else { continue };
        match (key, value) {
            (COMMANDS | ERRORS, Json::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let _ = writeln!(out, "{key}[{i}] = {item}");
                }
            }
            // The names of the timers fired, on one line: `fired = ["quiet"]`.
            (FIRED, value) => {
                let _ = writeln!(out, "{key} = {value}");
            }
            _ => flatten(key, value, &mut out),
        }
    }
    out
}

fn flatten(path: &str, value: &Json, out: &mut String) {
    match value {
        Json::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                flatten(&format!("{path}.{}", path_key(key)), value, out);
            }
        }
        Json::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), item, out);
            }
        }
        _ => {
            let _ = writeln!(out, "{path} = {value}");
        }
    }
}

/// A key as written in a path: bare when it is letters, digits, `_` and `-`, else quoted.
fn path_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        Json::from(key).to_string()
    }
}
