//! Running a test: fresh plugin state and instances, the test clock, every input through
//! the rules that take it, and every expectation checked.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value as Json;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::START_MS;
use super::check::{self, FIRED, RuleRun};
use super::load::{RuleTest, Source};
use crate::event::Event;
use crate::plugin::{MemoryStateStore, Registry, Runtime};
use crate::rules::{EventScope, Position, RuleOutcome, RuleResult, RuleRuntime, RuleSet};
use crate::time::Clock;

/// Runs tests against the plugins of one directory. Its registry keeps state and the device
/// twin in memory (each test starts with neither), reads the test clock, and never
/// quarantines a plugin (a test that makes a plugin fail
/// must not change what the next test sees).
pub struct Runner {
    registry: Registry,
    state: Arc<MemoryStateStore>,
    clock: Arc<AtomicU64>,
}

impl Runner {
    /// A runner over the plugins of `plugins`; nothing is loaded yet: call
    /// `runner.registry().load_all()`, then load the rules against the registry.
    pub fn new(runtime: Arc<Runtime>, plugins: impl Into<PathBuf>) -> Self {
        let state = Arc::new(MemoryStateStore::new());
        let clock = Arc::new(AtomicU64::new(START_MS));
        let registry = Registry::new(runtime, plugins, state.clone())
            .with_quarantine_after(u32::MAX)
            .with_clock(Clock::Manual(clock.clone()));
        Runner {
            registry,
            state,
            clock,
        }
    }

    /// The plugins the tests run.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs `test` against `set` (loaded through [`Runner::registry`]): empty state, fresh
    /// instances, the clock at [`START_MS`]; then each input in order, through every rule
    /// the test runs that takes it.
    pub fn run(&self, set: &RuleSet, test: &RuleTest) -> TestReport {
        let mut report = TestReport {
            name: test.name.clone(),
            file: test.file.clone(),
            position: test.position,
            failures: Vec::new(),
        };
        self.state.clear();
        self.registry.timers().clear();
        self.registry.twins().clear();
        let mut now = START_MS;
        self.clock.store(now, Ordering::Relaxed);
        let mut runtimes = match set.instantiate(&self.registry) {
            Ok(runtimes) => runtimes,
            Err(errors) => {
                let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                report.failures.push(Failure {
                    position: test.position,
                    context: "the rules' plugins would not start".to_owned(),
                    detail: reasons.join("\n"),
                });
                return report;
            }
        };
        runtimes.retain(|runtime| test.runs(runtime.rule().name()));

        let steps = set.steps_by_namespace();
        for (index, input) in test.inputs.iter().enumerate() {
            let number = index + 1;
            now = now.saturating_add(input.after_ms);
            self.clock.store(now, Ordering::Relaxed);
            // What came due while the clock moved fires first; then the event; then what the
            // event's rules set for now or earlier, as the service fires it right after.
            let mut firings = Vec::new();
            self.fire_due(&steps, &mut runtimes, now, &mut firings);
            let event = match &input.source {
                None => None,
                Some(Source::Event { event, timed }) => {
                    let mut event = Event::clone(event);
                    if !timed {
                        event.time_ms = now;
                    }
                    Some(event)
                }
                Some(Source::Raw(raw)) => match raw.decode() {
                    Ok(event) => Some(event),
                    Err(reason) => {
                        report.failures.push(Failure {
                            position: input.position,
                            context: format!("input {number}"),
                            detail: reason,
                        });
                        continue;
                    }
                },
            };

            // Which rules take the event, as the service decides it: with the event in its
            // device's twin first.
            let mut matched = Vec::new();
            let mut if_errors = Vec::new();
            let mut results: Vec<RuleResult<'_>> = Vec::new();
            if let Some(event) = &event {
                let twins = self.registry.twins();
                twins.update(event);
                let twins = twins.enabled().then_some(twins);
                for outcome in set.evaluate_in(EventScope::new(event).with_twins(twins)) {
                    match outcome {
                        Ok(rule) if test.runs(rule.name()) => matched.push(rule.name()),
                        Err(error) if test.runs(&error.rule) => if_errors.push(error),
                        _ => {}
                    }
                }
                results = runtimes
                    .iter_mut()
                    .filter(|runtime| matched.contains(&runtime.rule().name()))
                    .map(|runtime| runtime.run(event))
                    .collect();
            }
            self.fire_due(&steps, &mut runtimes, now, &mut firings);
            let fired: Vec<Json> = firings
                .iter()
                .map(|firing| Json::from(firing.name.as_str()))
                .collect();

            for expectation in &input.expectations {
                if let Some((name, device)) = &expectation.timer {
                    let firing = firings.iter().find(|firing| {
                        firing.name == *name
                            && device.as_ref().is_none_or(|d| *d == firing.device)
                            && expectation
                                .rule
                                .as_ref()
                                .is_none_or(|rule| *rule == firing.result.rule)
                    });
                    let Some(firing) = firing else {
                        report.failures.push(Failure {
                            position: expectation.position,
                            context: format!("input {number}"),
                            detail: format!(
                                "timer \"{name}\"{} did not fire during this input (fired: {})",
                                device
                                    .as_ref()
                                    .map(|d| format!(" of device {d}"))
                                    .unwrap_or_default(),
                                if fired.is_empty() {
                                    "none".to_owned()
                                } else {
                                    Json::Array(fired.clone()).to_string()
                                }
                            ),
                        });
                        continue;
                    };
                    let run = RuleRun::Fired {
                        result: &firing.result,
                        kept: firing.kept,
                    };
                    let mut actual = check::actual(&run, &[]);
                    if let Json::Object(doc) = &mut actual {
                        doc.insert(FIRED.into(), Json::Array(fired.clone()));
                    }
                    if let Some(mismatch) = check::compare(&expectation.expected, &actual) {
                        report.failures.push(Failure {
                            position: expectation.position,
                            context: format!(
                                "input {number}, timer \"{name}\" of device {} in rule \"{}\": it {}",
                                firing.device,
                                firing.result.rule,
                                run.summary()
                            ),
                            detail: mismatch.diff(),
                        });
                    }
                    continue;
                }
                let run = match &expectation.rule {
                    None => RuleRun::NoMatch,
                    Some(rule) => {
                        if let Some(result) = results.iter().find(|r| r.rule == *rule) {
                            RuleRun::Ran(result)
                        } else if let Some(error) = if_errors.iter().find(|e| e.rule == *rule) {
                            RuleRun::IfError(&error.reason)
                        } else {
                            RuleRun::NoMatch
                        }
                    }
                };
                let mut actual = check::actual(&run, &matched);
                if let Json::Object(doc) = &mut actual {
                    doc.insert(FIRED.into(), Json::Array(fired.clone()));
                }
                let Some(mismatch) = check::compare(&expectation.expected, &actual) else {
                    continue;
                };
                let context = match &expectation.rule {
                    Some(rule) => format!("input {number}, rule \"{rule}\": it {}", run.summary()),
                    None => format!("input {number}"),
                };
                report.failures.push(Failure {
                    position: expectation.position,
                    context,
                    detail: mismatch.diff(),
                });
            }
        }
        report
    }

    /// Fires every timer due at `now`, earliest first, through the step that set it (of the
    /// rules the test runs), until none is due; a firing may set another. Stops, reporting
    /// nothing more, after [`MAX_FIRINGS`] in one go: a plugin that keeps setting a timer in
    /// the past would otherwise never let the test end.
    fn fire_due(
        &self,
        steps: &HashMap<String, (Arc<str>, usize, Arc<str>)>,
        runtimes: &mut [RuleRuntime],
        now: u64,
        firings: &mut Vec<Firing>,
    ) {
        let schedule = self.registry.timers();
        for _ in 0..MAX_FIRINGS {
            let Some(timer) = schedule.take_due(now, 1).pop() else {
                return;
            };
            let Some((rule, step, plugin)) = steps.get(&*timer.namespace) else {
                continue;
            };
            if **plugin != *timer.record.plugin {
                continue;
            }
            let Some(runtime) = runtimes.iter_mut().find(|r| r.rule().name() == &**rule) else {
                continue;
            };
            let event = timer.record.event();
            let Some(result) = runtime.fire(*step, &event, &timer.key) else {
                continue;
            };
            let kept = matches!(result.outcome, RuleOutcome::Passed(Cow::Borrowed(_)));
            firings.push(Firing {
                name: timer.record.name.clone(),
                device: timer.record.device.id.clone(),
                result: result.into_owned(),
                kept,
            });
        }
    }
}

/// The most timers one input may fire.
const MAX_FIRINGS: usize = 10_000;

/// A timer that fired during an input, and what its rule made of it.
struct Firing {
    name: String,
    device: String,
    result: RuleResult<'static>,
    /// Whether its rule passed the timer's event on as it came.
    kept: bool,
}

/// How one test went.
#[derive(Debug, Clone)]
pub struct TestReport {
    /// The test's name.
    pub name: String,
    /// Its file.
    pub file: PathBuf,
    /// Where its `[[test]]` starts.
    pub position: Position,
    /// Every expectation that did not hold, in input order.
    pub failures: Vec<Failure>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// An expectation that did not hold, or an input that could not run.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The expectation (or input) in the test file.
    pub position: Position,
    /// Which input and rule, and what the rule really did.
    pub context: String,
    /// The diff of expected (`-`) and actual (`+`), one field per line; or why the input
    /// could not run.
    pub detail: String,
}

impl Failure {
    /// Displays the failure with the test file's path.
    pub fn display<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        DisplayFailure(self, file)
    }
}

struct DisplayFailure<'a>(&'a Failure, &'a Path);

impl fmt::Display for DisplayFailure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DisplayFailure(failure, file) = self;
        let Position { line, column } = failure.position;
        writeln!(f, "{}:{line}:{column}: {}", file.display(), failure.context)?;
        for line in failure.detail.lines() {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}
