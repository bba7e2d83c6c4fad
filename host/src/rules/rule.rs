//! One rule as loaded from its file: the checked, compiled form of a `[[rule]]` table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::condition::{Condition, EventScope};
use super::error::{Position, RuleError};
use super::format::{self, OnError, OneOrMany, RuleDoc, StepDoc};
use super::when::{self, Patterns, When};
use crate::event::Event;
use crate::plugin::{Grants, Limits, StateQuota};

/// A step's deadline unless the rule says otherwise.
pub(crate) const DEFAULT_DEADLINE_MS: u64 = 50;
/// A step's memory cap unless the rule says otherwise.
pub(crate) const DEFAULT_MEMORY_MB: u64 = 32;
/// The longest deadline a step may ask for: a step holds up its device's events while it runs.
pub(crate) const MAX_DEADLINE_MS: u64 = 10_000;

/// A loaded rule: which events it takes (`when`, then `if`) and the plugin steps it runs them
/// through. Immutable; the per-worker state (plugin instances) lives in
/// [`RuleRuntime`](super::RuleRuntime)s made from it.
#[derive(Debug)]
pub struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) description: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) file: PathBuf,
    pub(crate) position: Position,
    pub(crate) when: When,
    pub(crate) condition: Option<Condition>,
    pub(crate) on_error: OnError,
    pub(crate) via: Option<String>,
    /// `commands.allow` of the rule, as written.
    pub(crate) allow: Vec<String>,
    pub(crate) steps: Vec<StepSpec>,
    /// The rule's definition in a canonical form, to tell a changed rule from an unchanged one
    /// on reload.
    pub(crate) fingerprint: String,
}

/// One step of a rule, before it is instantiated.
#[derive(Debug, Clone)]
pub(crate) struct StepSpec {
    pub(crate) plugin: Arc<str>,
    /// The `config` table as JSON text, for the plugin's `init`.
    pub(crate) config: String,
    pub(crate) limits: Limits,
    pub(crate) grants: Grants,
    /// The step's own default command path, over the rule's.
    pub(crate) via: Option<String>,
    /// `commands.allow` of the step, as written.
    pub(crate) allow: Vec<String>,
    /// The command paths the step's commands may take (its rule's and its own `via` and
    /// `allow`).
    pub(crate) allowed: AllowedPaths,
    /// Where the step's `plugin` is written.
    pub(crate) position: Position,
    /// Where each of `grants.env` and `grants.read_dirs` is written, in their order.
    pub(crate) env_positions: Vec<Position>,
    pub(crate) read_dir_positions: Vec<Position>,
}

/// `commands.allow = ["*"]`: any configured path.
pub(crate) const ANY_PATH: &str = "*";

/// The command paths a step's plugin may send through.
///
/// A plugin names the path of each command it emits (or leaves it to the step's or rule's
/// `commands.via`). Without a limit, a plugin could send through any configured path,
/// including a webhook that carries the operator's `authorization` header, or a vendor API
/// path with the project's rights over every device. So a step may use its rule's and its own
/// `commands.via`, and the paths its rule and it list in `commands.allow`; `"*"` there lifts
/// the limit. A command for another path is refused (a dead letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllowedPaths {
    /// `"*"`: any path.
    Any,
    /// These paths, sorted.
    Only(Vec<String>),
}

impl AllowedPaths {
    fn new<'a>(names: impl IntoIterator<Item = &'a String>) -> Self {
        let mut only: Vec<String> = Vec::new();
        for name in names {
            if name == ANY_PATH {
                return AllowedPaths::Any;
            }
            only.push(name.clone());
        }
        only.sort();
        only.dedup();
        AllowedPaths::Only(only)
    }

    /// Whether a command may go through `path`.
    pub(crate) fn permits(&self, path: &str) -> bool {
        match self {
            AllowedPaths::Any => true,
            AllowedPaths::Only(only) => only.iter().any(|name| name == path),
        }
    }

    /// The paths, for an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            AllowedPaths::Any => "any".into(),
            AllowedPaths::Only(only) if only.is_empty() => "none".into(),
            AllowedPaths::Only(only) => only
                .iter()
                .map(|name| format!("\"{name}\""))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl Rule {
    /// The rule's name, unique across the rule files.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the rule is for, as its author wrote it.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// A disabled rule matches no event. Its format, patterns and expression are checked like
    /// the others', its plugins are not: a rule can wait, disabled, for its plugin to be
    /// deployed.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The file the rule is in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where the rule's `[[rule]]` table starts.
    pub fn position(&self) -> Position {
        self.position
    }

    /// What a failing step does to the event.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// The default command path for commands whose plugin names none.
    pub fn via(&self) -> Option<&str> {
        self.via.as_deref()
    }

    /// Every command path the rule names, in `commands.via` or `commands.allow`, of the rule
    /// or a step (`"*"` left out), with where and as what: for checking them against the
    /// configured paths.
    pub(crate) fn named_paths<'r>(&'r self) -> Vec<(&'r str, Position, String)> {
        let mut named = Vec::new();
        let mut add = |name: &'r str, position: Position, what: String| {
            if name != ANY_PATH {
                named.push((name, position, what));
            }
        };
        if let Some(via) = &self.via {
            add(via, self.position, "commands.via".into());
        }
        for allowed in &self.allow {
            add(allowed, self.position, "commands.allow".into());
        }
        for (index, step) in self.steps.iter().enumerate() {
            let number = index + 1;
            if let Some(via) = &step.via {
                add(via, step.position, format!("step {number}: commands.via"));
            }
            for allowed in &step.allow {
                add(
                    allowed,
                    step.position,
                    format!("step {number}: commands.allow"),
                );
            }
        }
        named
    }

    /// The `if` expression as written, if the rule has one.
    pub fn condition(&self) -> Option<&str> {
        self.condition.as_ref().map(Condition::source)
    }

    /// The plugins of the steps, in order.
    pub fn plugins(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().map(|step| &*step.plugin)
    }

    /// Whether the rule takes `event`: enabled, the structural `when` (cheap), then `if`
    /// against `scope`, which builds the expression variables once per event for all rules.
    ///
    /// An `if` that fails to evaluate (a missing key, a type mismatch, a non-boolean result)
    /// is an error for this event; the caller counts it and treats the rule as not matching.
    pub fn matches(&self, scope: &EventScope<'_>) -> Result<bool, ConditionError> {
        if !self.enabled || !self.when.matches(scope.event()) {
            return Ok(false);
        }
        match &self.condition {
            None => Ok(true),
            Some(condition) => condition.evaluate(scope).map_err(|reason| ConditionError {
                rule: self.name.clone(),
                reason,
            }),
        }
    }

    /// [`Rule::matches`] for a single rule and event.
    pub fn matches_event(&self, event: &Event) -> Result<bool, ConditionError> {
        self.matches(&EventScope::new(event))
    }
}

/// A rule's `if` could not be evaluated on an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule \"{rule}\": if: {reason}")]
pub struct ConditionError {
    /// The rule whose `if` failed.
    pub rule: Arc<str>,
    /// The evaluation error, on one line.
    pub reason: String,
}

/// Turns one parsed `[[rule]]` into a [`Rule`], collecting every problem it has.
pub fn build(file: &Path, text: &str, doc: Spanned<RuleDoc>) -> Result<Rule, Vec<RuleError>> {
    let at = |offset: usize| Some(Position::of_offset(text, offset));
    let rule_span = doc.span();
    let doc = doc.into_inner();
    let fingerprint = serde_json::to_string(&doc).unwrap_or_default();
    let name = doc.name.get_ref().clone();
    let mut errors = Vec::new();
    let mut error = |offset: usize, reason: String| {
        errors.push(RuleError::new(file, at(offset), Some(&name), reason));
    };

    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        error(
            doc.name.span().start,
            "a rule name is letters, digits, `-`, `_` and `.` (it names the rule in metrics \
             and its plugins' state)"
                .into(),
        );
    }

    let mut when = When::default();
    let w = &doc.when;
    let patterns = |field: &Option<Spanned<OneOrMany>>,
                    label: &str|
     -> Result<Option<Patterns>, (usize, String)> {
        field
            .as_ref()
            .map(|f| {
                Patterns::new(&f.get_ref().to_vec())
                    .map_err(|e| (f.span().start, format!("when.{label}: {e}")))
            })
            .transpose()
    };
    for (slot, field, label) in [
        (&mut when.source, &w.source, "source"),
        (&mut when.device, &w.device, "device"),
        (&mut when.product, &w.product, "product"),
        (&mut when.action, &w.action, "action"),
    ] {
        match patterns(field, label) {
            Ok(p) => *slot = p,
            Err((offset, reason)) => error(offset, reason),
        }
    }
    if let Some(vendors) = &w.vendor {
        match vendors
            .get_ref()
            .to_vec()
            .iter()
            .map(|v| when::vendor(v))
            .collect()
        {
            Ok(list) => when.vendor = Some(list),
            Err(reason) => error(vendors.span().start, format!("when.vendor: {reason}")),
        }
    }
    if let Some(kinds) = &w.kind {
        match kinds
            .get_ref()
            .to_vec()
            .iter()
            .map(|k| when::kind(k))
            .collect()
        {
            Ok(list) => when.kind = Some(list),
            Err(reason) => error(kinds.span().start, format!("when.kind: {reason}")),
        }
    }

    let condition = match &doc.condition {
        None => None,
        Some(source) => match Condition::compile(source.get_ref()) {
            Ok(condition) => Some(condition),
            Err(e) => {
                let offset = e
                    .offset
                    .and_then(|chars| {
                        expression_offset(text, source.span(), source.get_ref(), chars)
                    })
                    .unwrap_or(source.span().start);
                error(offset, format!("if: {}", e.reason));
                None
            }
        },
    };

    if doc.step.is_empty() {
        error(
            doc.name.span().start,
            "a rule needs at least one [[rule.step]] (set `enabled = false` to keep a rule \
             that does nothing)"
                .into(),
        );
    }
    let mut steps = Vec::new();
    for (index, step) in doc.step.into_iter().enumerate() {
        match step_spec(index + 1, step, text) {
            Ok(spec) => steps.push(spec),
            Err(problems) => {
                for (offset, reason) in problems {
                    error(offset, reason);
                }
            }
        }
    }

    let rule_allow = allow_list(&doc.commands.allow, "commands.allow", &mut error);
    for step in &mut steps {
        step.allowed = AllowedPaths::new(
            doc.commands
                .via
                .iter()
                .chain(&step.via)
                .chain(&rule_allow)
                .chain(&step.allow),
        );
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Rule {
        name: Arc::from(name.as_str()),
        description: doc.description,
        enabled: doc.enabled,
        file: file.to_owned(),
        position: Position::of_offset(text, rule_span.start),
        when,
        condition,
        on_error: doc.on_error,
        via: doc.commands.via,
        allow: rule_allow,
        steps,
        fingerprint,
    })
}

/// The names of a `commands.allow`, each a command path name or `"*"`; a bad one is reported
/// through `error` (at its place) and left out.
fn allow_list(
    allow: &[Spanned<String>],
    label: &str,
    error: &mut impl FnMut(usize, String),
) -> Vec<String> {
    let mut names = Vec::new();
    for name in allow {
        let text = name.get_ref();
        let valid = text == ANY_PATH
            || (!text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
        if valid {
            names.push(text.clone());
        } else {
            error(
                name.span().start,
                format!(
                    "{label}: \"{text}\" is not a command path name (letters, digits, `-`, \
                     `_`, `.`) or \"{ANY_PATH}\""
                ),
            );
        }
    }
    names
}

/// Checks one step's limits and grants; `number` counts from 1.
fn step_spec(
    number: usize,
    step: Spanned<StepDoc>,
    text: &str,
) -> Result<StepSpec, Vec<(usize, String)>> {
    let step = step.into_inner();
    let plugin = step.plugin.get_ref().clone();
    let label = format!("step {number} (plugin \"{plugin}\")");
    let mut problems = Vec::new();
    let deadline_ms = match step.deadline_ms {
        None => DEFAULT_DEADLINE_MS,
        Some(d) if (1..=MAX_DEADLINE_MS).contains(d.get_ref()) => *d.get_ref(),
        Some(d) => {
            problems.push((
                d.span().start,
                format!("{label}: deadline_ms must be 1 to {MAX_DEADLINE_MS}"),
            ));
            DEFAULT_DEADLINE_MS
        }
    };
    let memory_mb = match step.memory_mb {
        None => DEFAULT_MEMORY_MB,
        Some(m) if *m.get_ref() >= 1 && *m.get_ref() <= (usize::MAX >> 20) as u64 => *m.get_ref(),
        Some(m) => {
            problems.push((
                m.span().start,
                format!("{label}: memory_mb must be at least 1"),
            ));
            DEFAULT_MEMORY_MB
        }
    };
    let default_quota = StateQuota::default();
    let mut state_limit = |value: Option<Spanned<u64>>, name: &str, unit: u32, default: usize| {
        let Some(value) = value else {
            return default;
        };
        let limit = usize::try_from(*value.get_ref())
            .ok()
            .and_then(|v| v.checked_mul(1 << unit));
        match limit {
            Some(limit) if limit >= 1 => limit,
            Some(_) => {
                problems.push((
                    value.span().start,
                    format!("{label}: {name} must be at least 1"),
                ));
                default
            }
            None => {
                problems.push((
                    value.span().start,
                    format!("{label}: {name} is too large for this machine"),
                ));
                default
            }
        }
    };
    let state = StateQuota {
        keys: state_limit(step.state_keys, "state_keys", 0, default_quota.keys),
        bytes: state_limit(step.state_mb, "state_mb", 20, default_quota.bytes),
    };
    let mut read_dirs = Vec::new();
    let mut read_dir_positions = Vec::new();
    for dir in step.grants.read_dirs {
        let path = Path::new(dir.get_ref());
        if !path.is_absolute() {
            problems.push((
                dir.span().start,
                format!(
                    "{label}: grants.read_dirs: \"{}\" is not an absolute path",
                    dir.get_ref()
                ),
            ));
        } else if let Some(why) = crate::plugin::system_dir(path) {
            problems.push((
                dir.span().start,
                format!(
                    "{label}: grants.read_dirs: \"{}\" cannot be granted: {why}",
                    dir.get_ref()
                ),
            ));
        } else {
            read_dirs.push(PathBuf::from(dir.get_ref()));
            read_dir_positions.push(Position::of_offset(text, dir.span().start));
        }
    }
    let (env, env_positions) = step
        .grants
        .env
        .into_iter()
        .map(|name| {
            let position = Position::of_offset(text, name.span().start);
            (name.into_inner(), position)
        })
        .unzip();
    let mut allow_problems = Vec::new();
    let allow = allow_list(
        &step.commands.allow,
        &format!("{label}: commands.allow"),
        &mut |offset, reason| allow_problems.push((offset, reason)),
    );
    problems.extend(allow_problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let config = step
        .config
        .as_ref()
        .map_or_else(|| serde_json::json!({}), format::table_to_json)
        .to_string();
    Ok(StepSpec {
        plugin: Arc::from(plugin.as_str()),
        config,
        limits: Limits {
            deadline: Duration::from_millis(deadline_ms),
            memory_bytes: (memory_mb as usize) << 20,
            state,
        },
        grants: Grants { env, read_dirs },
        via: step.commands.via,
        allow,
        // Filled in by `build`, which knows the rule's paths too.
        allowed: AllowedPaths::Only(Vec::new()),
        position: Position::of_offset(text, step.plugin.span().start),
        env_positions,
        read_dir_positions,
    })
}

/// The byte offset in the file of character `chars` of the expression whose TOML string spans
/// `span`, when the string is written so that its characters are the expression's (a literal
/// `'…'` string, or a basic `"…"` one without escapes); `None` otherwise.
fn expression_offset(
    text: &str,
    span: std::ops::Range<usize>,
    expression: &str,
    chars: usize,
) -> Option<usize> {
    let start = span.start;
    let raw = text.get(span)?;
    let quote = raw.chars().next()?;
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    let verbatim = (quote == '\'' || quote == '"')
        && inner == expression
        && !raw.starts_with("'''")
        && !raw.starts_with("\"\"\"");
    if !verbatim {
        return None;
    }
    let within: usize = expression.chars().take(chars).map(char::len_utf8).sum();
    Some(start + 1 + within)
}
