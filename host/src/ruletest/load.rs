//! Finding the test files of a rules directory and checking them against its rules: every
//! problem is reported with file, line and column, as the rule loader does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use toml::Spanned;

use super::check::{
    ATTRIBUTES, COMMANDS, DEVICE, ERRORS, EVENT, FIRED, MATCHED, PAYLOAD, PROPERTIES, SERVICES,
    STEP, VERDICT,
};
use super::format::{
    CommandDoc, DeviceDoc, ErrorDoc, EventDoc, ExpectDoc, FileDoc, InputDoc, RawDoc, TestDoc,
    VerdictDoc,
};
use crate::dialect::{Dialect, RawMessage, json, tuya};
use crate::event::{Device, Event, Json as EventJson, Kind, Property, Value};
use crate::rules::{Position, RuleError, RuleSet, TEST_SUFFIX, to_json};

/// The subdirectory of the rules directory whose `*.toml` files are all test files.
pub const TESTS_DIR: &str = "tests";
/// Where a Tuya raw input's access key comes from unless it names another variable: the
/// variable `iotrules decode` reads.
const ACCESS_KEY_ENV: &str = "IOTRULES_ACCESS_KEY";

/// The tests of one file.
#[derive(Debug)]
pub struct TestFile {
    /// The file.
    pub path: PathBuf,
    /// Its tests, in file order.
    pub tests: Vec<RuleTest>,
}

/// One `[[test]]`, checked: its rules exist, its inputs are events, its expectations name
/// inputs and rules it has.
#[derive(Debug)]
pub struct RuleTest {
    pub(crate) name: String,
    pub(crate) file: PathBuf,
    pub(crate) position: Position,
    /// The rules that run (`None`: all of them).
    pub(crate) rules: Option<Vec<Arc<str>>>,
    pub(crate) inputs: Vec<Input>,
}

impl RuleTest {
    /// The test's name, unique across the test files.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file the test is in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where the test's `[[test]]` table starts.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Whether the test runs `rule`.
    pub(crate) fn runs(&self, rule: &str) -> bool {
        self.rules
            .as_ref()
            .is_none_or(|rules| rules.iter().any(|r| &**r == rule))
    }
}

/// One input of a test and the expectations about it.
#[derive(Debug)]
pub(crate) struct Input {
    /// Where its table starts.
    pub(crate) position: Position,
    /// How far the test clock moves before it.
    pub(crate) after_ms: u64,
    /// Its event; `None` for a wait, which only moves the clock and fires what is due.
    pub(crate) source: Option<Source>,
    pub(crate) expectations: Vec<Expectation>,
}

/// Where an input's event comes from.
#[derive(Debug)]
pub(crate) enum Source {
    /// Written in the test; `time_ms` is the test clock's unless `timed`.
    Event { event: Box<Event>, timed: bool },
    /// A captured vendor message, decoded when the input runs.
    Raw(Box<Raw>),
}

/// A captured vendor message and its decoder.
pub(crate) struct Raw {
    pub(crate) dialect: Dialect,
    pub(crate) file: PathBuf,
    pub(crate) payload: Vec<u8>,
    pub(crate) properties: Vec<(String, String)>,
    pub(crate) source: String,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the dialect: it holds the access key.
        f.debug_struct("Raw")
            .field("file", &self.file)
            .field("properties", &self.properties)
            .finish_non_exhaustive()
    }
}

impl Raw {
    /// Decodes the message as `iotrules decode` would.
    pub fn decode(&self) -> Result<Event, String> {
        let message =
            RawMessage::new(&self.source, &self.payload).with_properties(&self.properties);
        self.dialect.decode(&message).map_err(|e| {
            format!(
                "{}: the message was refused ({} error): {e}",
                self.file.display(),
                e.kind()
            )
        })
    }
}

/// One expectation: the rule it is about and the expected document (see `check`).
#[derive(Debug)]
pub(crate) struct Expectation {
    pub(crate) position: Position,
    pub(crate) rule: Option<Arc<str>>,
    /// Set when it is about a timer's firing: the timer's name, and its device if given.
    pub(crate) timer: Option<(String, Option<String>)>,
    pub(crate) expected: Json,
}

/// The test files of `dir`: its `*.test.toml` files, then the `*.toml` files of its `tests/`
/// subdirectory, each group in name order; hidden files are skipped.
pub(crate) fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = toml_files(dir, |name| name.ends_with(TEST_SUFFIX))?;
    let tests = dir.join(TESTS_DIR);
    if tests.is_dir() {
        files.extend(toml_files(&tests, |_| true)?);
    }
    Ok(files)
}

fn toml_files(dir: &Path, wanted: impl Fn(&str) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".toml") && !name.starts_with('.') && wanted(name) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads and checks every test file of the rules directory `dir` against `set`. Every problem
/// of every file is returned, not just the first.
pub fn load_dir(dir: &Path, set: &RuleSet) -> Result<Vec<TestFile>, Vec<RuleError>> {
    let files = test_files(dir).map_err(|e| {
        vec![RuleError::new(
            dir,
            None,
            None,
            format!("cannot list the test files: {e}"),
        )]
    })?;
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    let mut names: HashMap<String, (PathBuf, Position)> = HashMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(RuleError::new(
                    &file,
                    None,
                    None,
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        match parse(&file, &text, set) {
            Ok(tests) => {
                for test in &tests.tests {
                    if let Some((other, at)) = names.get(&test.name) {
                        errors.push(RuleError::new(
                            &file,
                            Some(test.position),
                            None,
                            format!(
                                "duplicate test name \"{}\" (also in {}:{})",
                                test.name,
                                other.display(),
                                at.line
                            ),
                        ));
                    } else {
                        names.insert(test.name.clone(), (file.clone(), test.position));
                    }
                }
                loaded.push(tests);
            }
            Err(more) => errors.extend(more),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// Parses and checks one test file against `set`, without running anything. Raw inputs'
/// message files are read now, relative to `file`'s directory.
pub fn parse(file: &Path, text: &str, set: &RuleSet) -> Result<TestFile, Vec<RuleError>> {
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let position = e.span().map(|span| Position::of_offset(text, span.start));
        vec![RuleError::new(file, position, None, e.message().trim_end())]
    })?;
    let mut builder = Builder {
        file,
        text,
        set,
        errors: Vec::new(),
    };
    let tests = doc
        .test
        .into_iter()
        .filter_map(|test| builder.test(test))
        .collect();
    if builder.errors.is_empty() {
        Ok(TestFile {
            path: file.to_owned(),
            tests,
        })
    } else {
        Err(builder.errors)
    }
}

/// Builds the tests of one file, collecting every problem.
struct Builder<'a> {
    file: &'a Path,
    text: &'a str,
    set: &'a RuleSet,
    errors: Vec<RuleError>,
}

impl Builder<'_> {
    fn at(&self, offset: usize) -> Position {
        Position::of_offset(self.text, offset)
    }

    fn error(&mut self, offset: usize, test: &str, reason: impl std::fmt::Display) {
        let position = Some(self.at(offset));
        let reason = if test.is_empty() {
            reason.to_string()
        } else {
            format!("test \"{test}\": {reason}")
        };
        self.errors
            .push(RuleError::new(self.file, position, None, reason));
    }

    /// A rule name the set has, or an error at its span.
    fn rule(&mut self, test: &str, name: &Spanned<String>) -> Option<Arc<str>> {
        match self.set.rule(name.get_ref()) {
            Some(rule) => Some(rule.name().into()),
            None => {
                let known: Vec<&str> = self.set.rules().iter().map(|r| r.name()).collect();
                let known = if known.is_empty() {
                    "the rules directory has none".to_owned()
                } else {
                    format!("rules: {}", known.join(", "))
                };
                self.error(
                    name.span().start,
                    test,
                    format!("unknown rule \"{}\" ({known})", name.get_ref()),
                );
                None
            }
        }
    }

    fn test(&mut self, doc: Spanned<TestDoc>) -> Option<RuleTest> {
        let start = doc.span().start;
        let doc = doc.into_inner();
        let name = doc.name.get_ref().trim().to_owned();
        let errors_before = self.errors.len();
        if name.is_empty() {
            self.error(doc.name.span().start, "", "a test needs a name");
        }
        // The names as written: an unknown one is reported once, here, and not again by
        // every expectation that takes it as its default.
        let rules = doc.rules.as_ref().map(|names| {
            if names.is_empty() {
                self.error(
                    start,
                    &name,
                    "`rules = []` runs nothing; list rules or leave it out",
                );
            }
            names
                .iter()
                .map(|n| {
                    self.rule(&name, n);
                    Arc::<str>::from(n.get_ref().as_str())
                })
                .collect::<Vec<_>>()
        });
        if doc.input.is_empty() {
            self.error(start, &name, "a test needs at least one [[test.input]]");
        }
        let expectations = doc.expect.len()
            + doc
                .input
                .iter()
                .map(|i| i.get_ref().expect.len())
                .sum::<usize>();
        if expectations == 0 {
            self.error(
                start,
                &name,
                "a test needs at least one expectation ([[test.expect]] or [[test.input.expect]])",
            );
        }
        let context = TestContext {
            name: &name,
            rules: rules.as_deref(),
        };
        let count = doc.input.len();
        let mut inputs = Vec::new();
        for (index, input) in doc.input.into_iter().enumerate() {
            if let Some(input) = self.input(&context, index + 1, input) {
                inputs.push(input);
            }
        }
        for expect in doc.expect {
            let number = match &expect.get_ref().input {
                None => count,
                Some(n) if (1..=count).contains(n.get_ref()) => *n.get_ref(),
                Some(n) => {
                    self.error(
                        n.span().start,
                        &name,
                        format!(
                            "input {}: the test has {count} input(s), counted from 1",
                            n.get_ref()
                        ),
                    );
                    continue;
                }
            };
            if let Some(expectation) = self.expectation(&context, expect)
                && let Some(input) = inputs.get_mut(number.wrapping_sub(1))
            {
                input.expectations.push(expectation);
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        for input in &mut inputs {
            input.expectations.sort_by_key(|e| e.position);
        }
        Some(RuleTest {
            name,
            file: self.file.to_owned(),
            position: self.at(start),
            rules,
            inputs,
        })
    }

    fn input(
        &mut self,
        context: &TestContext<'_>,
        number: usize,
        doc: Spanned<InputDoc>,
    ) -> Option<Input> {
        let start = doc.span().start;
        let position = self.at(start);
        let name = context.name;
        let mut doc = doc.into_inner();
        let errors_before = self.errors.len();
        let after_ms = match &doc.after_s {
            None => 0,
            Some(s) if s.get_ref().is_finite() && *s.get_ref() >= 0.0 => {
                (s.get_ref() * 1000.0).round() as u64
            }
            Some(s) => {
                self.error(
                    s.span().start,
                    name,
                    "after_s: seconds the clock moves, a number of at least 0",
                );
                0
            }
        };
        let expects = std::mem::take(&mut doc.expect);
        let source = match doc.raw.take() {
            Some(raw) => {
                let given = doc.event_fields();
                if !given.is_empty() {
                    self.error(
                        raw.span().start,
                        name,
                        format!(
                            "input {number}: a raw input's event is the decoded message; \
                             remove {}",
                            given.join(", ")
                        ),
                    );
                }
                self.raw(name, raw)
                    .map(|raw| Some(Source::Raw(Box::new(raw))))
            }
            // Nothing but the clock: a wait.
            None if doc.event_fields().is_empty() => Some(None),
            None => self.event(name, number, start, doc).map(Some),
        };
        let mut expectations = Vec::new();
        for expect in expects {
            if let Some(n) = &expect.get_ref().input {
                self.error(
                    n.span().start,
                    name,
                    "`input` is for [[test.expect]]; an expectation under [[test.input]] is \
                     about that input",
                );
                continue;
            }
            if let Some(expectation) = self.expectation(context, expect) {
                expectations.push(expectation);
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Input {
            position,
            after_ms,
            source: source?,
            expectations,
        })
    }

    fn event(&mut self, test: &str, number: usize, start: usize, doc: InputDoc) -> Option<Source> {
        let Some(vendor) = doc.vendor else {
            self.error(
                start,
                test,
                format!(
                    "input {number}: needs `vendor` (tuya, alibaba, huawei, mqtt), or `raw` for \
                     a captured message"
                ),
            );
            return None;
        };
        let Some(device) = doc.device else {
            self.error(start, test, format!("input {number}: needs `device`"));
            return None;
        };
        let device_start = device.span().start;
        let mut device = match device.into_inner() {
            DeviceDoc::Id(id) => Device::new(id),
            DeviceDoc::Table(table) => {
                let Some(id) = table.id else {
                    self.error(device_start, test, "device: needs an `id`");
                    return None;
                };
                Device {
                    id,
                    product: table.product,
                    name: table.name,
                }
            }
        };
        if let Some(product) = doc.product {
            if device.product.is_some() {
                self.error(
                    device_start,
                    test,
                    "the product is given twice: in `device` and in `product`",
                );
                return None;
            }
            device.product = Some(product);
        }
        let mut properties = doc
            .properties
            .as_ref()
            .map(|table| typed_properties(table, None))
            .unwrap_or_default();
        for (service, table) in doc.services.iter().flatten() {
            properties.extend(typed_properties(table, Some(service)));
        }
        let payload = doc
            .payload
            .as_ref()
            .map_or_else(|| Json::Object(Map::new()), to_json);
        let event = Event {
            id: doc.id.unwrap_or_else(|| format!("input-{number}")),
            source: doc.source.unwrap_or_else(|| "test".to_owned()),
            vendor,
            kind: doc.kind.unwrap_or(Kind::Properties),
            action: doc.action.unwrap_or_default(),
            device,
            time_ms: doc.time_ms.unwrap_or(super::START_MS),
            properties,
            payload: EventJson::from(payload),
            attributes: doc.attributes.unwrap_or_default(),
        };
        Some(Source::Event {
            event: Box::new(event),
            timed: doc.time_ms.is_some(),
        })
    }

    fn raw(&mut self, test: &str, doc: Spanned<RawDoc>) -> Option<Raw> {
        let start = doc.span().start;
        let doc = doc.into_inner();
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let path = dir.join(doc.file.get_ref());
        let payload = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.error(
                    doc.file.span().start,
                    test,
                    format!(
                        "raw.file: cannot read {} (paths are relative to the test file): {e}",
                        path.display()
                    ),
                );
                return None;
            }
        };
        let keys = || {
            let variable = doc.access_key_env.as_deref().unwrap_or(ACCESS_KEY_ENV);
            let key = std::env::var(variable).map_err(|_| {
                format!(
                    "raw: a Tuya message needs the project's access key: set ${variable} (or \
                     name another variable in `access_key_env`)"
                )
            })?;
            tuya::Keys::new(doc.access_id.clone(), key)
                .map_err(|e| format!("raw: ${variable}: {e}"))
        };
        let template = || {
            let template = doc.device_topic.as_deref().ok_or_else(|| {
                "raw: a json message needs `device_topic`, where the device is in its `topic`"
                    .to_owned()
            })?;
            json::TopicTemplate::parse(template).map_err(|e| format!("raw.device_topic: {e}"))
        };
        let dialect = match doc.vendor.build(doc.sign, doc.body_base64, keys, template) {
            Ok(dialect) => dialect,
            Err(message) => {
                self.error(start, test, message);
                return None;
            }
        };
        Some(Raw {
            dialect,
            file: path,
            payload,
            properties: doc.properties.into_iter().collect(),
            source: doc.source.unwrap_or_else(|| "test".to_owned()),
        })
    }

    fn expectation(
        &mut self,
        context: &TestContext<'_>,
        doc: Spanned<ExpectDoc>,
    ) -> Option<Expectation> {
        let start = doc.span().start;
        let doc = doc.into_inner();
        let name = context.name;
        let errors_before = self.errors.len();
        let about_a_rule = doc.verdict.is_some()
            || doc.step.is_some()
            || doc.commands.is_some()
            || doc.errors.is_some()
            || doc.event.is_some()
            || doc.timer.is_some();
        if !about_a_rule && doc.matched.is_none() && doc.fired.is_none() {
            self.error(
                start,
                name,
                "an expectation needs something to check: verdict, commands, errors, event, \
                 matched, timer or fired",
            );
        }
        if let Some(device) = &doc.device
            && doc.timer.is_none()
        {
            self.error(
                device.span().start,
                name,
                "`device` goes with `timer`: the device the timer was set for",
            );
        }
        if let (Some(timer), Some(_)) = (&doc.timer, &doc.matched) {
            self.error(
                timer.span().start,
                name,
                "`matched` is about the input's event, not a timer: put it in another \
                 expectation",
            );
        }
        let rule = match &doc.rule {
            Some(rule) => {
                let known = self.rule(name, rule);
                if let Some(known) = &known
                    && !context.runs(known)
                {
                    self.error(
                        rule.span().start,
                        name,
                        format!(
                            "rule \"{known}\" is not among the test's `rules`, so it never runs"
                        ),
                    );
                }
                known
            }
            None => match context.rules {
                Some([only]) => Some(only.clone()),
                // A timer's firing names its rule; `rule` only narrows it.
                _ if about_a_rule && doc.timer.is_none() => {
                    self.error(
                        start,
                        name,
                        "name the `rule` this expectation is about (it may be left out when \
                         the test's `rules` lists exactly one)",
                    );
                    None
                }
                _ => None,
            },
        };
        let mut expected = Map::new();
        if let Some(verdict) = doc.verdict {
            expected.insert(VERDICT.into(), verdict.as_str().into());
        }
        if let Some(step) = &doc.step {
            if doc.verdict == Some(VerdictDoc::Drop) {
                expected.insert(STEP.into(), (*step.get_ref()).into());
            } else {
                self.error(
                    step.span().start,
                    name,
                    "`step` is the step that dropped the event: it goes with verdict = \"drop\"",
                );
            }
        }
        if let Some(matched) = &doc.matched {
            let names: Vec<Json> = matched
                .iter()
                .filter_map(|n| self.rule(name, n))
                .map(|n| Json::from(&*n))
                .collect();
            expected.insert(MATCHED.into(), Json::Array(names));
        }
        if let Some(commands) = &doc.commands {
            expected.insert(
                COMMANDS.into(),
                commands.iter().map(command_expectation).collect(),
            );
        }
        if let Some(errors) = &doc.errors {
            expected.insert(
                ERRORS.into(),
                errors.iter().map(error_expectation).collect(),
            );
        }
        if let Some(event) = &doc.event {
            expected.insert(EVENT.into(), event_expectation(event));
        }
        if let Some(fired) = &doc.fired {
            expected.insert(
                FIRED.into(),
                fired.iter().map(|n| Json::from(n.as_str())).collect(),
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Expectation {
            position: self.at(start),
            rule,
            timer: doc
                .timer
                .map(|timer| (timer.into_inner(), doc.device.map(Spanned::into_inner))),
            expected: Json::Object(expected),
        })
    }
}

/// What an expectation needs to know of its test.
struct TestContext<'a> {
    name: &'a str,
    rules: Option<&'a [Arc<str>]>,
}

impl TestContext<'_> {
    fn runs(&self, rule: &str) -> bool {
        self.rules
            .is_none_or(|rules| rules.iter().any(|r| &**r == rule))
    }
}

/// `code = value` pairs as properties (of `service`, if given), values typed.
fn typed_properties(table: &toml::Table, service: Option<&str>) -> Vec<Property> {
    table
        .iter()
        .map(|(code, value)| Property {
            code: code.clone(),
            value: Value::from(to_json(value)),
            time_ms: None,
            service: service.map(str::to_owned),
        })
        .collect()
}

/// A device expectation: the fields given.
fn device_expectation(device: &DeviceDoc) -> Json {
    let mut doc = Map::new();
    match device {
        DeviceDoc::Id(id) => {
            doc.insert("id".into(), id.clone().into());
        }
        DeviceDoc::Table(table) => {
            for (key, value) in [
                ("id", &table.id),
                ("product", &table.product),
                ("name", &table.name),
            ] {
                if let Some(value) = value {
                    doc.insert(key.into(), value.clone().into());
                }
            }
        }
    }
    Json::Object(doc)
}

fn command_expectation(command: &CommandDoc) -> Json {
    let mut doc = Map::new();
    if let Some(device) = &command.device {
        doc.insert(DEVICE.into(), device_expectation(device));
    }
    if let Some(name) = &command.name {
        doc.insert("name".into(), name.clone().into());
    }
    if let Some(params) = &command.params {
        doc.insert("params".into(), to_json(params));
    }
    if let Some(via) = &command.via {
        doc.insert("via".into(), via.clone().into());
    }
    if let Some(reply_to) = &command.reply_to {
        doc.insert("reply_to".into(), reply_to.clone().into());
    }
    Json::Object(doc)
}

fn error_expectation(error: &ErrorDoc) -> Json {
    let mut doc = Map::new();
    if let Some(step) = error.step {
        doc.insert(STEP.into(), step.into());
    }
    for (key, value) in [
        ("plugin", &error.plugin),
        ("kind", &error.kind),
        ("message", &error.message),
    ] {
        if let Some(value) = value {
            doc.insert(key.into(), value.clone().into());
        }
    }
    Json::Object(doc)
}

fn event_expectation(event: &EventDoc) -> Json {
    let mut doc = Map::new();
    for (key, value) in [
        ("id", &event.id),
        ("source", &event.source),
        ("action", &event.action),
    ] {
        if let Some(value) = value {
            doc.insert(key.into(), value.clone().into());
        }
    }
    if let Some(vendor) = event.vendor {
        doc.insert("vendor".into(), vendor.as_str().into());
    }
    if let Some(kind) = event.kind {
        doc.insert("kind".into(), kind.as_str().into());
    }
    if let Some(device) = &event.device {
        doc.insert(DEVICE.into(), device_expectation(device));
    }
    if let Some(time_ms) = event.time_ms {
        doc.insert("time_ms".into(), time_ms.into());
    }
    if let Some(properties) = &event.properties {
        doc.insert(PROPERTIES.into(), property_map(properties));
    }
    if let Some(services) = &event.services {
        doc.insert(
            SERVICES.into(),
            services
                .iter()
                .map(|(service, table)| (service.clone(), property_map(table)))
                .collect::<Map<_, _>>()
                .into(),
        );
    }
    if let Some(payload) = &event.payload {
        doc.insert(PAYLOAD.into(), to_json(payload));
    }
    if let Some(attributes) = &event.attributes {
        doc.insert(ATTRIBUTES.into(), string_map(attributes));
    }
    Json::Object(doc)
}

/// `code = value` as the JSON the actual event's properties are rendered in: typed as the
/// input's are.
fn property_map(table: &toml::Table) -> Json {
    table
        .iter()
        .map(|(code, value)| (code.clone(), to_json(value)))
        .collect::<Map<_, _>>()
        .into()
}

fn string_map(map: &BTreeMap<String, String>) -> Json {
    map.iter()
        .map(|(k, v)| (k.clone(), Json::from(v.clone())))
        .collect::<Map<_, _>>()
        .into()
}
