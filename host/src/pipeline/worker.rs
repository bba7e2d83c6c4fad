//! The workers: each runs the rules on the events of its devices, in order, and queues
//! their commands.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::job::{Connector, Fire, Job, Origin};
use super::queue::Jobs;
use super::report::{CommandRefused, ConditionFailed, StepFailed, TwinEvicted};
use super::settle::{self, Queued, Route, Settler, Unsettled, letter};
use crate::event::{Command, Event};
use crate::metrics::{Counter, CounterTally, HistogramTally, Metrics};
use crate::plugin::Durable;
use crate::rules::{
    EventScope, OnError, RefusedCommand, RuleOutcome, RuleResult, RuleRuntime, RuleSet,
};
use crate::store::DeadLetterRecord;
use crate::twin;

/// The most events a worker takes from its queue at once: a bound on how long an event can
/// wait for the others of its batch (that many events' rules). Measured with `bench pipeline`
/// (durable state), the p99 receipt → ack at 22 000 events/s is the same at 4 and at 32
/// (2.91/2.53 ms against 2.54/3.13 ms, alternately), while 32 saves more CPU per event.
const BATCH: usize = 32;

/// A queue this long is a backlog: its worker's batches then share commits (see
/// [`Worker::handle`]). Four batches: a burst of a busy connector is not one, a worker that
/// has fallen behind is.
const BACKLOG: usize = 4 * BATCH;

/// What the rules made of one event of a batch, gathered rule by rule.
#[derive(Default)]
struct Run {
    /// Its commands, each with the rule that emitted it, in the order of the rules.
    commands: Vec<(Arc<str>, Command)>,
    /// The commands its plugins were not allowed to send.
    refused: Vec<(Arc<str>, RefusedCommand)>,
    letters: Vec<DeadLetterRecord>,
    /// How many rules took it.
    matched: usize,
    /// Whether any rule passed it on.
    passed: bool,
    /// The rules' outcomes, for the event trace (only with the trace on).
    trace: String,
}

/// Resolved per-rule counters, gathered over a batch (see [`Worker::flush_tallies`]).
struct RuleCounters {
    matches: CounterTally,
    passed: CounterTally,
    dropped: CounterTally,
    dead_letter: CounterTally,
    dropped_on_error: CounterTally,
    /// `iotrules_plugin_call_seconds` of each step's plugin, step for step: found by the
    /// step's number rather than by hashing its plugin's name on every call.
    calls: Vec<HistogramTally>,
}

impl RuleCounters {
    fn flush(&mut self) {
        for tally in [
            &mut self.matches,
            &mut self.passed,
            &mut self.dropped,
            &mut self.dead_letter,
            &mut self.dropped_on_error,
        ] {
            tally.flush();
        }
        for calls in &mut self.calls {
            calls.flush();
        }
    }
}

/// Where a rule's commands go: one per rule and command path that a worker has sent on,
/// shared by every command it queues there (see [`Route`]).
type Routes = HashMap<Arc<str>, Vec<Arc<Route>>>;

pub(super) struct Worker {
    shared: Arc<Shared>,
    /// Waits for the events that have commands or dead letters.
    settler: Settler,
    set: Option<Arc<RuleSet>>,
    runtimes: Vec<RuleRuntime>,
    retry_instantiate_at: Option<Instant>,
    /// The counters of `runtimes`' rules, index for index.
    rule_counters: Vec<RuleCounters>,
    /// The routes this worker has sent on, by rule.
    routes: Routes,
    /// `iotrules_rule_commands_total` by rule: sent, failed.
    rule_commands: HashMap<Arc<str>, (Arc<Counter>, Arc<Counter>)>,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>, settler: Settler) -> Self {
        Worker {
            shared,
            settler,
            set: None,
            runtimes: Vec::new(),
            retry_instantiate_at: None,
            rule_counters: Vec::new(),
            routes: HashMap::new(),
            rule_commands: HashMap::new(),
        }
    }

    pub(super) fn run(mut self, mut jobs: Jobs) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Each batch's events went to the settle task when it ended (`handle`): nothing
            // waits for the worker while it sleeps.
            match jobs.recv() {
                Some(job) => batch.push(job),
                None => break,
            }
            // Whatever else is already queued joins the batch; nothing is waited for.
            while batch.len() < BATCH
                && let Ok(job) = jobs.try_recv()
            {
                batch.push(job);
            }
            self.refresh();
            let backlogged = jobs.len() >= BACKLOG;
            self.handle(&mut batch, backlogged);
        }
        self.settler.flush(&self.shared);
    }

    /// Starts the rules' plugin instances for the set in service when it changed. If that
    /// fails (a plugin refusing now what it accepted at load), the worker keeps running the
    /// set it has and tries again a second later.
    fn refresh(&mut self) {
        let rules = &self.shared.rules;
        if let Some(set) = &self.set
            && rules.is_current(set)
        {
            return;
        }
        if let Some(at) = self.retry_instantiate_at
            && Instant::now() < at
        {
            return;
        }
        let set = rules.current();
        match set.instantiate(&self.shared.registry) {
            Ok(runtimes) => {
                let metrics = &self.shared.metrics;
                self.rule_counters = runtimes
                    .iter()
                    .map(|runtime| rule_counters(metrics, runtime))
                    .collect();
                self.runtimes = runtimes;
                self.set = Some(set);
                self.retry_instantiate_at = None;
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!(
                        "Cannot start the new rules on a worker, keeping the previous ones: {error}"
                    );
                    self.shared.errors.push("rules".into(), &error.to_string());
                }
                self.retry_instantiate_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Runs the rules on a batch of events and hands each on to be settled.
    ///
    /// Rule by rule, then event by event: one rule's plugins run on every event of the batch
    /// before the next rule's do, so each plugin's code and memory stay in the caches for the
    /// whole batch instead of being evicted by the other rules' plugins after every event.
    /// Nothing observable changes with that order: rules are independent of each other, each
    /// rule (and so each plugin step and its state) still sees the events in arrival order,
    /// and an event's commands are still queued in the order of its rules.
    ///
    /// The batch's events wait for the commit of its state writes, which the worker asks for
    /// at the end of the batch; but while `backlogged` (the worker is [`BACKLOG`] jobs behind)
    /// it hands them over without asking, up to a [`Settler::GROUP`], and the commit asked for
    /// at the end of a later batch covers them too (their commands go out at once). A commit
    /// costs about the same whether it holds one batch or four, and a worker that keeps up
    /// commits at every batch anyway: the events put off wait for at most three more batches'
    /// work, less than the jobs queued behind them wait. Measured with `bench pipeline` (`BENCH_PROFILE=5`, twin on, eight
    /// runs of each build, alternately), a saturated pipeline made 0.024 commits per event
    /// instead of 0.037 and spent 21.6 µs of CPU per event instead of 23.6 (medians). At
    /// 30 760 events/s the latencies were the same through the noise. At 46 000/s, where a
    /// stall of the machine can let a queue reach [`BACKLOG`], the p99 was higher in three of
    /// four alternating runs: a threshold nearer a full queue is the next thing to measure.
    fn handle(&mut self, batch: &mut Vec<Job>, backlogged: bool) {
        let trace_on = tracing::enabled!(target: "iotrules::event", tracing::Level::DEBUG);
        let mut runs: Vec<Run> = batch.iter().map(|_| Run::default()).collect();
        self.update_twins(batch);
        {
            let twins = Arc::clone(self.shared.registry.twins());
            let twins = twins.enabled().then_some(&twins);
            let scopes: Vec<EventScope<'_>> = batch
                .iter()
                .map(|job| EventScope::new(&job.event).with_twins(twins))
                .collect();
            for rule in 0..self.runtimes.len() {
                for ((job, scope), run) in batch.iter().zip(&scopes).zip(&mut runs) {
                    match &job.timer {
                        None => self.run_rule(rule, job, scope, run, trace_on),
                        Some(fire) => self.fire(rule, fire, job, run, trace_on),
                    }
                }
            }
        }
        // Before any event of the batch is settled: whoever sees one settled sees it counted.
        count_outcomes(batch, &runs);
        self.flush_tallies();
        for (job, run) in batch.iter_mut().zip(&mut runs) {
            self.conclude(job, run, trace_on);
        }
        // Put off while another batch fits in the group, if there is anything to commit: the
        // events handed over wait for the commit that ends it. (With nothing written, most
        // events are settled at once, as they always are.)
        let put_off = backlogged
            && self.settler.kept() + batch.len() + BATCH <= Settler::GROUP
            && self.shared.registry.state().backlog() > 0;
        // Every state write of the batch is queued now: one wait covers all its events.
        let (durable, relaxed) = self.durable(batch, put_off);
        let waits_for_commit = put_off || durable.is_some();
        for (job, run) in batch.drain(..).zip(runs) {
            let waits = waits_for_commit && !(relaxed && job.pending.acker.settles_nothing());
            self.finish(job, run, waits);
        }
        if put_off {
            self.settler.send_commands();
            return;
        }
        self.settler.end_batch(durable);
        // Its events go to be settled now, not once the next batch is done too: with its
        // commit already in (see `durable`), most of them are acknowledged at once.
        self.settler.flush(&self.shared);
    }

    /// Adds what the batch gathered to the rules' counters and the plugins' call histograms.
    ///
    /// Both workers count every event on the same counters: each rule's matches and outcome,
    /// and three plugin calls' times. Added one by one, that was some fifteen writes per event
    /// to cache lines that the other core writes too, each one moving the line over.
    fn flush_tallies(&mut self) {
        for counters in &mut self.rule_counters {
            counters.flush();
        }
    }

    /// Updates the twin from the batch's events (its timers are the host's own, not news of
    /// a device) before any rule runs, so conditions and plugins see each event in its
    /// device's twin; then tells the store the twins changed. The store writes every twin
    /// changed (and removes every one evicted) with its next commit, each as it is then; the
    /// events ask what to wait for after that (`finish`), so no event is acknowledged before
    /// the twin it changed is in the store.
    fn update_twins(&mut self, batch: &[Job]) {
        let twins = self.shared.registry.twins();
        if !twins.enabled() {
            return;
        }
        let mut updated = false;
        let mut evicted = 0;
        for job in batch.iter().filter(|job| job.timer.is_none()) {
            if !twin::updates_twin(&job.event) {
                continue;
            }
            evicted += twins.update(&job.event).evicted.len();
            updated = true;
        }
        if !updated {
            return;
        }
        let metrics = &self.shared.metrics;
        if evicted > 0 {
            TwinEvicted {
                evicted,
                max_devices: twins.max_devices(),
                counter: &metrics.twin_evictions,
            }
            .emit(&self.shared.reports);
        }
        metrics.twin_devices.set(twins.len() as u64);
        self.shared.registry.state().changed(twin::NAMESPACE);
    }

    /// Runs rule number `index` on one event, adding what it made of it to `run`.
    fn run_rule(
        &mut self,
        index: usize,
        job: &Job,
        scope: &EventScope<'_>,
        run: &mut Run,
        trace_on: bool,
    ) {
        let Job { event, origin, .. } = job;
        // Borrowed, not cloned: the rule is shared by every worker's runtime, and a clone
        // would write its count, on a line the other core reads, for every event.
        let rule = self.runtimes[index].rule();
        let counters = &mut self.rule_counters[index];
        let takes = match rule.matches(scope) {
            Ok(takes) => takes,
            Err(error) => {
                let message = error.to_string();
                ConditionFailed {
                    rule: &rule.name,
                    error: &message,
                    counter: &self
                        .shared
                        .metrics
                        .rule_errors
                        .with(&[&rule.name, "condition"]),
                }
                .emit(&self.shared.reports);
                if rule.on_error() == OnError::DeadLetter {
                    let mut letter = letter(origin, "condition", message, Some(&event.id));
                    letter.rule = Some(rule.name.to_string());
                    run.letters.push(letter);
                    counters.dead_letter.inc();
                }
                return;
            }
        };
        if !takes {
            return;
        }
        run.matched += 1;
        counters.matches.inc();
        let result = self.runtimes[index].run(event);
        self.record(index, job, run, result, trace_on);
    }

    /// Hands rule number `index` the timer of `job` if the timer is one of its steps'. A
    /// timer whose step is gone from the rules this worker runs is deleted (the timer task
    /// drops those it sees first).
    fn fire(&mut self, index: usize, fire: &Fire, job: &Job, run: &mut Run, trace_on: bool) {
        let runtime = &mut self.runtimes[index];
        if runtime.rule().name != fire.rule {
            return;
        }
        if runtime.step_plugin(fire.step) != Some(&*fire.plugin) {
            return;
        }
        let Some(result) = runtime.fire(fire.step, &job.event, &fire.key) else {
            return;
        };
        run.matched += 1;
        self.rule_counters[index].matches.inc();
        self.record(index, job, run, result, trace_on);
    }

    /// Adds what rule number `index` made of an event to its `run`.
    fn record(
        &mut self,
        index: usize,
        job: &Job,
        run: &mut Run,
        result: RuleResult<'_>,
        trace_on: bool,
    ) {
        let Job { event, origin, .. } = job;
        let counters = &mut self.rule_counters[index];
        for version in &result.versions {
            if let Some(calls) = counters.calls.get_mut(version.step - 1) {
                calls.observe(version.elapsed);
            }
        }
        let runtime = &self.runtimes[index];
        let rule = runtime.rule();
        for error in &result.errors {
            StepFailed {
                rule: &rule.name,
                device: &event.device.id,
                error: &error.to_string(),
                counter: &self
                    .shared
                    .metrics
                    .rule_errors
                    .with(&[&rule.name, error.kind()]),
            }
            .emit(&self.shared.reports);
        }
        let outcome = match &result.outcome {
            RuleOutcome::Passed(output) => {
                run.passed = true;
                counters.passed.inc();
                if matches!(output, Cow::Owned(_)) {
                    "passed (replaced)"
                } else {
                    "passed"
                }
            }
            RuleOutcome::Dropped { .. } => {
                counters.dropped.inc();
                "dropped"
            }
            RuleOutcome::DeadLetter => {
                counters.dead_letter.inc();
                if let Some(error) = result.errors.last() {
                    let mut letter = letter(
                        origin,
                        &format!("plugin:{}", error.kind()),
                        format!("rule \"{}\" {error}", rule.name),
                        Some(&event.id),
                    );
                    letter.rule = Some(rule.name.to_string());
                    letter.step = u32::try_from(error.step).ok();
                    run.letters.push(letter);
                }
                "dead-letter"
            }
            RuleOutcome::DroppedOnError => {
                counters.dropped_on_error.inc();
                "dropped on error"
            }
        };
        if trace_on {
            let _ = write!(run.trace, "; rule {}: {outcome}", rule.name);
            if !result.commands.is_empty() {
                let _ = write!(run.trace, ", {} command(s)", result.commands.len());
            }
        }
        run.commands.extend(
            result
                .commands
                .into_iter()
                .map(|command| (runtime.name().clone(), command)),
        );
        run.refused.extend(
            result
                .refused
                .into_iter()
                .map(|command| (runtime.name().clone(), command)),
        );
    }

    /// An event every rule has run on, before the batch's wait is taken: its refused
    /// commands become dead letters, it is traced, and a timer no step took is removed.
    fn conclude(&mut self, job: &mut Job, run: &mut Run, trace_on: bool) {
        let Job {
            event,
            origin,
            timer,
            ..
        } = job;
        for (rule, refused) in run.refused.drain(..) {
            let command = &refused.command;
            let message = format!(
                "command {} for device {} not sent: {}",
                command.name, command.device.id, refused.reason
            );
            let step = u32::try_from(refused.step).ok();
            let letter = self.refuse_command(&rule, message, step, origin, &event.id);
            run.letters.push(letter);
        }
        if trace_on {
            tracing::debug!(
                target: "iotrules::event",
                "{} {} {}{}{}{}",
                origin.connector.name,
                event.kind.as_str(),
                event.device.id,
                properties_text(event),
                if run.matched == 0 { "; no rule" } else { "" },
                run.trace
            );
        }
        if run.matched == 0
            && let Some(fire) = timer.take()
        {
            // No step of the rules this worker runs took it: its step is gone.
            self.shared
                .registry
                .state()
                .apply(&fire.namespace, vec![(fire.key, None)]);
        }
    }

    /// An event every rule has run on: its commands are queued, and it is settled at once
    /// when nothing is left to wait for, or handed to the settle task. `waits`: it waits for
    /// the batch's commit.
    fn finish(&mut self, job: Job, run: Run, waits: bool) {
        let Job {
            event,
            origin,
            pending,
            timer: _,
        } = job;
        let Run {
            commands,
            mut letters,
            ..
        } = run;
        if commands.is_empty() && letters.is_empty() && !waits {
            settle::finish(&self.shared, pending, Ok(()));
            return;
        }
        let queued = self.enqueue(commands, &origin, &event, &mut letters);
        self.settler.hand_over(
            &self.shared,
            Unsettled {
                pending,
                origin,
                event_id: event.id,
                queued,
                letters,
                waits,
            },
        );
    }

    /// What the batch's events are to wait for before they are settled: the commit of the
    /// state written so far, which their acknowledgements must not come before; and whether
    /// those whose transport takes no acknowledgement (MQTT QoS 0) are spared it. They have
    /// nothing that could come too early, so they wait only when the store is more than
    /// `max_in_flight` calls behind: that keeps the writes nobody waits for within the same
    /// bound as those the events in flight wait for. `put_off`: the commit is left to a later
    /// batch (see [`Worker::handle`]), and only whether they are spared is asked.
    fn durable(&self, batch: &[Job], put_off: bool) -> (Option<Durable>, bool) {
        let state = self.shared.registry.state();
        let settles_nothing = |job: &Job| job.pending.acker.settles_nothing();
        let relaxed = batch.iter().any(settles_nothing)
            && state.backlog() < u64::from(self.shared.max_in_flight);
        if put_off {
            return (None, relaxed);
        }
        if relaxed && batch.iter().all(settles_nothing) {
            return (None, true);
        }
        (state.durable(), relaxed)
    }

    /// Queues each command on its path, in order. A command without a known path fails at
    /// once, as a dead letter.
    fn enqueue(
        &mut self,
        commands: Vec<(Arc<str>, Command)>,
        origin: &Origin,
        event: &Event,
        letters: &mut Vec<DeadLetterRecord>,
    ) -> Vec<Queued> {
        let mut confirmations = Vec::with_capacity(commands.len());
        for (rule, command) in commands {
            let route = match command.via.as_deref() {
                None => Err(format!(
                    "command {} for device {} names no command path: set `commands.via` on the \
                     rule or step",
                    command.name, command.device.id
                )),
                Some(via) => self.route(&rule, via).ok_or_else(|| {
                    format!(
                        "command {} for device {}: no command path named \"{via}\" \
                         (configured: {})",
                        command.name,
                        command.device.id,
                        self.shared.paths.names().join(", ")
                    )
                }),
            };
            let route = match route {
                Ok(route) => route,
                Err(message) => {
                    letters.push(self.refuse_command(&rule, message, None, origin, &event.id));
                    continue;
                }
            };
            confirmations.push(Queued {
                device: command.device.id.clone(),
                name: command.name.clone(),
                confirmation: self.settler.send(&route.target, command),
                route,
            });
        }
        confirmations
    }

    /// The route of `rule`'s commands to the path named `via`, made once per worker; `None`
    /// when there is no such path.
    fn route(&mut self, rule: &Arc<str>, via: &str) -> Option<Arc<Route>> {
        if let Some(route) = self
            .routes
            .get(rule)
            .and_then(|routes| routes.iter().find(|route| &*route.path == via))
        {
            return Some(route.clone());
        }
        let target = self.shared.paths.get(via)?.clone();
        let (rule_sent, rule_failed) = self.rule_counter(rule);
        let commands = &self.shared.metrics.commands;
        let route = Arc::new(Route {
            target,
            path: Arc::from(via),
            rule: rule.clone(),
            sent: commands.with(&[via, "sent"]),
            failed: commands.with(&[via, "failed"]),
            rule_sent,
            rule_failed,
        });
        self.routes
            .entry(rule.clone())
            .or_default()
            .push(route.clone());
        Some(route)
    }

    /// A command of `rule` that is not sent, for `message`: reported, counted as failed for
    /// its rule, and its dead letter.
    fn refuse_command(
        &mut self,
        rule: &Arc<str>,
        message: String,
        step: Option<u32>,
        origin: &Origin,
        event_id: &str,
    ) -> DeadLetterRecord {
        CommandRefused {
            rule,
            error: &message,
            counter: &self.rule_counter(rule).1,
        }
        .emit(&self.shared.reports);
        let mut letter = letter(origin, "command", message, Some(event_id));
        letter.rule = Some(rule.to_string());
        letter.step = step;
        letter
    }

    /// `iotrules_rule_commands_total{rule}`: sent, failed.
    fn rule_counter(&mut self, rule: &Arc<str>) -> (Arc<Counter>, Arc<Counter>) {
        self.rule_commands
            .entry(rule.clone())
            .or_insert_with(|| {
                let metrics = &self.shared.metrics;
                (
                    metrics.rule_commands.with(&[rule, "sent"]),
                    metrics.rule_commands.with(&[rule, "failed"]),
                )
            })
            .clone()
    }
}

/// Counts what became of each event of a batch on its connector's counters: passed on, taken
/// by no rule, or dropped by the rules. The events of one connector in a row are added at
/// once, usually the whole batch: both workers and the intake count on these counters, and
/// an add per event was a write per event to a line that moves between the cores.
fn count_outcomes(batch: &[Job], runs: &[Run]) {
    fn add(connector: &Connector, [passed, no_rule, dropped]: [u64; 3]) {
        for (counter, n) in [
            (&connector.events_out, passed),
            (&connector.no_rule, no_rule),
            (&connector.dropped_by_rules, dropped),
        ] {
            if n > 0 {
                counter.add(n);
            }
        }
    }
    let mut counting: Option<(&Connector, [u64; 3])> = None;
    for (job, run) in batch.iter().zip(runs) {
        let connector = &*job.origin.connector;
        let outcome = if run.passed {
            0
        } else if run.matched == 0 {
            1
        } else {
            2
        };
        match &mut counting {
            Some((current, counts)) if std::ptr::eq(*current, connector) => counts[outcome] += 1,
            _ => {
                if let Some((current, counts)) = counting.take() {
                    add(current, counts);
                }
                let mut counts = [0; 3];
                counts[outcome] = 1;
                counting = Some((connector, counts));
            }
        }
    }
    if let Some((current, counts)) = counting {
        add(current, counts);
    }
}

fn rule_counters(metrics: &Metrics, runtime: &RuleRuntime) -> RuleCounters {
    let rule = &*runtime.rule().name;
    let outcome = |outcome| CounterTally::new(metrics.rule_outcomes.with(&[rule, outcome]));
    let calls = (0..)
        .map_while(|step| runtime.step_plugin(step))
        .map(|plugin| HistogramTally::new(metrics.plugin_calls.with(&[plugin])))
        .collect();
    RuleCounters {
        matches: CounterTally::new(metrics.rule_matches.with(&[rule])),
        passed: outcome("passed"),
        dropped: outcome("dropped"),
        dead_letter: outcome("dead-letter"),
        dropped_on_error: outcome("dropped-on-error"),
        calls,
    }
}

/// `code=value …` of an event, for the event trace.
fn properties_text(event: &Event) -> String {
    let mut text = String::new();
    for property in event.properties.iter().take(8) {
        let value = serde_json::to_string(&property.value).unwrap_or_default();
        let _ = write!(text, " {}={value}", property.code);
    }
    if event.properties.len() > 8 {
        let _ = write!(text, " …(+{})", event.properties.len() - 8);
    }
    text
}
