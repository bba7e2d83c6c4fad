//! The rules of a directory, loaded and checked as one set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::condition::EventScope;
use super::error::{Position, RuleError};
use super::format::FileDoc;
use super::rule::{self, ConditionError, Rule};
use super::run::RuleRuntime;
use crate::event::Event;
use crate::plugin::{GrantPolicy, PluginError, Registry};

/// The suffix of rule test files (`iotrules test`), which the loader skips.
pub const TEST_SUFFIX: &str = ".test.toml";

/// Every rule of a directory, checked as a whole: names unique across files, expressions
/// compiled, each step's plugin loaded and accepting its config. Immutable once loaded; a
/// reload builds a new set and swaps it in ([`Rules`](super::Rules)).
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    files: Vec<PathBuf>,
}

impl RuleSet {
    /// Loads every `*.toml` file directly in `dir`, in name order. Files ending in
    /// [`TEST_SUFFIX`], hidden files (editors' temporary copies) and subdirectories (a
    /// `tests/` folder of fixtures) are skipped.
    ///
    /// Each enabled rule's steps are instantiated once through `registry`, so a missing
    /// plugin or a config its `init` refuses is reported now. Every problem of every file is
    /// returned, not just the first; with any problem, no set is made.
    pub fn load_dir(dir: &Path, registry: &Registry) -> Result<RuleSet, Vec<RuleError>> {
        let set = Self::parse_dir(dir)?;
        set.check_grants(registry.grant_policy())?;
        set.instantiate(registry)?;
        Ok(set)
    }

    /// Refuses every grant that reaches the config's secrets ([`GrantPolicy`]), of every rule
    /// (a disabled rule's too: enabling it must not be what lets a secret out).
    pub(crate) fn check_grants(&self, policy: &GrantPolicy) -> Result<(), Vec<RuleError>> {
        let mut errors = Vec::new();
        for rule in &self.rules {
            for (index, spec) in rule.steps.iter().enumerate() {
                let label = format!("step {} (plugin \"{}\")", index + 1, spec.plugin);
                let env = spec.grants.env.iter().zip(&spec.env_positions);
                for (name, position) in env {
                    if let Err(reason) = policy.check_env(name) {
                        errors.push(RuleError::new(
                            &rule.file,
                            Some(*position),
                            Some(&rule.name),
                            format!("{label}: {reason}"),
                        ));
                    }
                }
                let dirs = spec.grants.read_dirs.iter().zip(&spec.read_dir_positions);
                for (dir, position) in dirs {
                    if let Err(reason) = policy.check_read_dir(dir) {
                        errors.push(RuleError::new(
                            &rule.file,
                            Some(*position),
                            Some(&rule.name),
                            format!("{label}: {reason}"),
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// [`RuleSet::load_dir`] without the plugins: the format, names, patterns and expressions.
    pub(crate) fn parse_dir(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
        let files = rule_files(dir).map_err(|e| {
            vec![RuleError::new(
                dir,
                None,
                None,
                format!("cannot list the rules directory: {e}"),
            )]
        })?;
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for file in &files {
            match std::fs::read_to_string(file) {
                Ok(text) => sources.push((file.clone(), text)),
                Err(e) => errors.push(RuleError::new(
                    file,
                    None,
                    None,
                    format!("cannot read: {e}"),
                )),
            }
        }
        match Self::parse(sources.iter().map(|(f, t)| (f.as_path(), t.as_str()))) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }

    /// Parses and checks rule files given as `(path, text)`, without touching the disk or
    /// the plugins.
    pub fn parse<'a>(
        files: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<RuleSet, Vec<RuleError>> {
        let mut set = RuleSet::default();
        let mut errors = Vec::new();
        let mut names: HashMap<Arc<str>, (PathBuf, Position)> = HashMap::new();
        for (file, text) in files {
            set.files.push(file.to_owned());
            let doc: FileDoc = match toml::from_str(text) {
                Ok(doc) => doc,
                Err(e) => {
                    let position = e.span().map(|span| Position::of_offset(text, span.start));
                    errors.push(RuleError::new(file, position, None, e.message().trim_end()));
                    continue;
                }
            };
            for rule_doc in doc.rule {
                let name_span = rule_doc.get_ref().name.span();
                match rule::build(file, text, rule_doc) {
                    Ok(rule) => {
                        let position = Position::of_offset(text, name_span.start);
                        if let Some((other, at)) = names.get(&rule.name) {
                            errors.push(RuleError::new(
                                file,
                                Some(position),
                                None,
                                format!(
                                    "duplicate rule name \"{}\" (also in {}:{})",
                                    rule.name,
                                    other.display(),
                                    at.line
                                ),
                            ));
                            continue;
                        }
                        names.insert(rule.name.clone(), (file.to_owned(), position));
                        set.rules.push(Arc::new(rule));
                    }
                    Err(problems) => errors.extend(problems),
                }
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Fresh plugin instances for every enabled rule, in rule order: one worker's runtimes.
    /// Each step's state namespace is `{rule}/{step}` (step counted from 1), so every worker
    /// and every reload of an unchanged rule shares the same state.
    pub fn instantiate(&self, registry: &Registry) -> Result<Vec<RuleRuntime>, Vec<RuleError>> {
        let mut runtimes = Vec::new();
        let mut errors = Vec::new();
        for rule in self.rules.iter().filter(|rule| rule.enabled) {
            let mut steps = Vec::new();
            for (index, spec) in rule.steps.iter().enumerate() {
                let number = index + 1;
                let namespace = format!("{}/{number}", rule.name);
                match registry.step(
                    &spec.plugin,
                    &spec.config,
                    spec.limits,
                    spec.grants.clone(),
                    &namespace,
                ) {
                    Ok(step) => steps.push(step),
                    Err(error) => errors.push(RuleError::new(
                        &rule.file,
                        Some(spec.position),
                        Some(&rule.name),
                        step_error(number, &spec.plugin, &error, registry),
                    )),
                }
            }
            if steps.len() == rule.steps.len() {
                runtimes.push(RuleRuntime::new(rule.clone(), steps));
            }
        }
        if errors.is_empty() {
            Ok(runtimes)
        } else {
            Err(errors)
        }
    }

    /// Every rule, enabled or not, in file and then file order.
    /// The steps of the enabled rules by state namespace (`{rule}/{step}`): the rule, the
    /// step's index from 0, and its plugin. A timer belongs to the step of its namespace if
    /// that step runs the plugin that set it.
    pub fn steps_by_namespace(&self) -> HashMap<String, (Arc<str>, usize, Arc<str>)> {
        let mut steps = HashMap::new();
        for rule in self.rules.iter().filter(|rule| rule.enabled) {
            for (index, spec) in rule.steps.iter().enumerate() {
                steps.insert(
                    format!("{}/{}", rule.name, index + 1),
                    (rule.name.clone(), index, spec.plugin.clone()),
                );
            }
        }
        steps
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// A rule by name.
    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|rule| &*rule.name == name)
    }

    /// The files the set was loaded from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The enabled rules that take `event`, each with its condition's result; the expression
    /// variables are built at most once for all of them. A rule whose `if` fails on the event
    /// yields the error (and does not run).
    pub fn evaluate<'s, 'e>(
        &'s self,
        event: &'e Event,
    ) -> impl Iterator<Item = Result<&'s Arc<Rule>, ConditionError>> + use<'s, 'e> {
        self.evaluate_in(EventScope::new(event))
    }

    /// [`RuleSet::evaluate`] in a scope of the caller's (one that reads the twins).
    pub fn evaluate_in<'s, 'e>(
        &'s self,
        scope: EventScope<'e>,
    ) -> impl Iterator<Item = Result<&'s Arc<Rule>, ConditionError>> + use<'s, 'e> {
        self.rules
            .iter()
            .filter_map(move |rule| match rule.matches(&scope) {
                Ok(true) => Some(Ok(rule)),
                Ok(false) => None,
                Err(error) => Some(Err(error)),
            })
    }

    /// The enabled rules that take `event`. Rules whose `if` fails on it are left out and
    /// logged at debug level; [`RuleSet::evaluate`] returns those errors instead.
    pub fn matching<'s, 'e>(
        &'s self,
        event: &'e Event,
    ) -> impl Iterator<Item = &'s Arc<Rule>> + use<'s, 'e> {
        self.evaluate(event).filter_map(|result| {
            result
                .inspect_err(|error| tracing::debug!(rule = &*error.rule, "{error}"))
                .ok()
        })
    }
}

/// A step's instantiation error, worded for the rule's author.
fn step_error(number: usize, plugin: &str, error: &PluginError, registry: &Registry) -> String {
    match error {
        PluginError::Missing { .. } => {
            let loaded = registry.names();
            if loaded.is_empty() {
                format!(
                    "step {number}: unknown plugin \"{plugin}\" (no plugins are loaded from {})",
                    registry.dir().display()
                )
            } else {
                format!(
                    "step {number}: unknown plugin \"{plugin}\" (loaded: {})",
                    loaded.join(", ")
                )
            }
        }
        PluginError::Init { reason, .. } => {
            format!("step {number} (plugin \"{plugin}\"): init refused the config: {reason}")
        }
        other => format!("step {number} (plugin \"{plugin}\"): {other}"),
    }
}

/// The rule files of `dir`, sorted.
fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_rule_file(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Whether `path` names a rule file: `NAME.toml`, not hidden, not a test file.
pub(crate) fn is_rule_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.ends_with(".toml") && !name.starts_with('.') && !name.ends_with(TEST_SUFFIX)
}
