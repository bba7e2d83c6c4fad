//! Running one rule's plugin chain on one event: no I/O, only the plugins.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::OnError;
use super::rule::Rule;
use crate::event::{Command, Event};
use crate::plugin::{PluginError, Step, StepOutcome, Verdict};

/// A rule with its steps instantiated: one per worker, since a plugin instance handles one
/// event at a time.
pub struct RuleRuntime {
    rule: Arc<Rule>,
    steps: Vec<Step>,
    /// The rule's name and each step's plugin name, copied for this runtime alone: every
    /// result carries them, and a clone of the rule's own `Arc`s, which every worker's
    /// runtime shares, would write their counts on lines that move between the cores with
    /// each event.
    name: Arc<str>,
    plugins: Vec<Arc<str>>,
}

/// How a rule's run on an event ended.
#[allow(
    clippy::large_enum_variant,
    reason = "one per rule run, moved and not stored; boxing would allocate on every run"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum RuleOutcome<'e> {
    /// Every step passed the event on: this is the event as the last step left it (borrowed
    /// when no step replaced it).
    Passed(Cow<'e, Event>),
    /// A step's plugin dropped the event. The commands of the steps that ran, the dropping
    /// one's included, are kept: a filter may act on what it filters out.
    Dropped {
        /// The step that dropped it, from 1.
        step: usize,
    },
    /// A step failed and the rule's policy is `dead-letter`: the event goes to the
    /// dead-letter store with the error (the last of [`RuleResult::errors`]).
    DeadLetter,
    /// A step failed and the rule's policy is `drop`.
    DroppedOnError,
}

/// A failed step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepError {
    /// The step, from 1.
    pub step: usize,
    /// The step's plugin.
    pub plugin: Arc<str>,
    /// What went wrong, as the plugin host reports it.
    pub error: PluginError,
}

impl StepError {
    /// The error's kind, for metrics and dead letters (`deadline`, `panic`, …).
    pub fn kind(&self) -> &'static str {
        self.error.kind()
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}", self.step, self.error)
    }
}

/// Which version of its plugin a step ran.
#[derive(Debug, Clone, PartialEq)]
pub struct StepVersion {
    /// The step, from 1.
    pub step: usize,
    /// The step's plugin.
    pub plugin: Arc<str>,
    /// `None` when the step failed before an instance of any version was running.
    pub version: Option<u64>,
    /// How long the plugin call took (instantiation included when it had to start one).
    pub elapsed: Duration,
}

/// What a rule made of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleResult<'e> {
    /// The rule's name.
    pub rule: Arc<str>,
    /// How the run ended, with the event to pass on if it did not stop.
    pub outcome: RuleOutcome<'e>,
    /// The commands to send, every one with its command path set where the plugin, the step
    /// or the rule names one. Empty when the outcome is an error (dead letter or drop).
    pub commands: Vec<Command>,
    /// The steps that failed, in order (with `skip-step`, possibly several).
    pub errors: Vec<StepError>,
    /// The steps that ran and the plugin version each ran on.
    pub versions: Vec<StepVersion>,
    /// Commands a plugin sent through a path its step may not use (`commands.allow`): not
    /// sent, each a dead letter. Kept whatever the outcome.
    pub refused: Vec<RefusedCommand>,
}

/// A command refused because its step may not use the path it names.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedCommand {
    /// The step, from 1.
    pub step: usize,
    /// The command as the plugin emitted it (its `via` set).
    pub command: Command,
    /// Why, naming the path, the step and the paths it may use.
    pub reason: String,
}

impl RuleResult<'_> {
    /// The same result, owning its event.
    pub fn into_owned(self) -> RuleResult<'static> {
        let outcome = match self.outcome {
            RuleOutcome::Passed(event) => RuleOutcome::Passed(Cow::Owned(event.into_owned())),
            RuleOutcome::Dropped { step } => RuleOutcome::Dropped { step },
            RuleOutcome::DeadLetter => RuleOutcome::DeadLetter,
            RuleOutcome::DroppedOnError => RuleOutcome::DroppedOnError,
        };
        RuleResult {
            rule: self.rule,
            outcome,
            commands: self.commands,
            errors: self.errors,
            versions: self.versions,
            refused: self.refused,
        }
    }

    /// The event to pass on, unless the rule stopped it.
    pub fn event(&self) -> Option<&Event> {
        match &self.outcome {
            RuleOutcome::Passed(event) => Some(event),
            _ => None,
        }
    }
}

impl RuleRuntime {
    pub fn new(rule: Arc<Rule>, steps: Vec<Step>) -> Self {
        let name = Arc::from(&*rule.name);
        let plugins = rule
            .steps
            .iter()
            .map(|spec| Arc::from(&*spec.plugin))
            .collect();
        RuleRuntime {
            rule,
            steps,
            name,
            plugins,
        }
    }

    /// The rule's name, as its results carry it.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The rule this runs.
    pub fn rule(&self) -> &Arc<Rule> {
        &self.rule
    }

    /// Runs the steps on `event` in order. Each step sees the event as the previous one left
    /// it; a `drop` verdict ends the run; commands accumulate. A failing step is handled by
    /// the rule's [`OnError`] policy.
    pub fn run<'e>(&mut self, event: &'e Event) -> RuleResult<'e> {
        self.run_from(0, event, None)
    }

    /// Hands step `index` (from 0) the event of its timer stored under `key` that came due,
    /// then runs the steps after it on what it passes on, as [`RuleRuntime::run`] does. The
    /// rule's `when` and `if` are not asked: the timer is addressed to the step. `None` when
    /// the rule has no such step.
    pub fn fire<'e>(
        &mut self,
        index: usize,
        event: &'e Event,
        key: &str,
    ) -> Option<RuleResult<'e>> {
        (index < self.steps.len()).then(|| self.run_from(index, event, Some(key)))
    }

    /// The plugin of step `index` (from 0).
    pub fn step_plugin(&self, index: usize) -> Option<&str> {
        self.steps.get(index).map(Step::plugin)
    }

    fn run_from<'e>(
        &mut self,
        start: usize,
        event: &'e Event,
        timer: Option<&str>,
    ) -> RuleResult<'e> {
        let rule = &self.rule;
        let mut current = Cow::Borrowed(event);
        let mut commands = Vec::new();
        let mut errors = Vec::new();
        let mut versions = Vec::with_capacity(self.steps.len());
        let mut refused = Vec::new();
        let finish = |outcome, commands, errors, versions, refused| RuleResult {
            rule: self.name.clone(),
            outcome,
            commands,
            errors,
            versions,
            refused,
        };
        let steps = self.steps.iter_mut().zip(&rule.steps).zip(&self.plugins);
        for (index, ((step, spec), plugin)) in steps.enumerate().skip(start) {
            let number = index + 1;
            let started = Instant::now();
            let handled = match timer {
                Some(key) if index == start => step.fire(&current, key),
                _ => step.handle(&current),
            };
            let elapsed = started.elapsed();
            match handled {
                Ok(StepOutcome { outcome, version }) => {
                    versions.push(StepVersion {
                        step: number,
                        plugin: plugin.clone(),
                        version: Some(version),
                        elapsed,
                    });
                    let via = spec.via.as_ref().or(rule.via.as_ref());
                    for mut command in outcome.commands {
                        if command.via.is_none() {
                            command.via = via.cloned();
                        }
                        match &command.via {
                            Some(path) if !spec.allowed.permits(path) => {
                                let reason = format!(
                                    "step {number} (plugin \"{}\") may not send through \
                                     command path \"{path}\" (it may use: {}); list the path \
                                     in the rule's or step's commands.allow",
                                    spec.plugin,
                                    spec.allowed.describe()
                                );
                                refused.push(RefusedCommand {
                                    step: number,
                                    command,
                                    reason,
                                });
                            }
                            _ => commands.push(command),
                        }
                    }
                    match outcome.verdict {
                        Verdict::Keep => {}
                        Verdict::Replace(replacement) => current = Cow::Owned(*replacement),
                        Verdict::Drop => {
                            return finish(
                                RuleOutcome::Dropped { step: number },
                                commands,
                                errors,
                                versions,
                                refused,
                            );
                        }
                    }
                }
                Err(error) => {
                    versions.push(StepVersion {
                        step: number,
                        plugin: plugin.clone(),
                        version: step.version(),
                        elapsed,
                    });
                    errors.push(StepError {
                        step: number,
                        plugin: plugin.clone(),
                        error,
                    });
                    let outcome = match rule.on_error {
                        OnError::SkipStep => continue,
                        OnError::DeadLetter => RuleOutcome::DeadLetter,
                        OnError::Drop => RuleOutcome::DroppedOnError,
                    };
                    return finish(outcome, Vec::new(), errors, versions, refused);
                }
            }
        }
        finish(
            RuleOutcome::Passed(current),
            commands,
            errors,
            versions,
            refused,
        )
    }
}
