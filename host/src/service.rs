//! The running service: everything `iotrules run` starts, from a [`Plan`].
//!
//! Start-up order: the store, the plugin runtime and registry (every `NAME.wasm`), the rules
//! (refused as a whole if any file has an error: there is no previous set to fall back on
//! at start), the watchers that reload both, the command paths, the pipeline, the admin
//! server, and last the connectors. The service stops when every connector has finished
//! (a replay at the end of its file) or on SIGINT/SIGTERM; either way the pipeline drains
//! what is in flight before it returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::admin::Observed;
use crate::command::CommandPaths;
use crate::config::Scheduling;
use crate::connector::Context;
use crate::metrics::Metrics;
use crate::pipeline::{Parts, Pipeline};
use crate::plan::Plan;
use crate::plugin::{Registry, ReloadReport, Runtime, RuntimeConfig, StateStore, Watcher};
use crate::rules::{Rules, RulesWatcher};
use crate::status::{ConnectorStatus, Connectors, LastErrors};
use crate::store::DeadLetterSink;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every connector finished.
    Finished,
    /// A signal (or the caller) asked it to stop.
    Stopped,
}

/// The storage and plugin parts, shared by `run`, `check` and `dead-letters replay`.
pub struct Core {
    /// The plugins.
    pub registry: Arc<Registry>,
    /// The rules.
    pub rules: Arc<Rules>,
    /// Dead letters.
    pub dead_letters: Arc<dyn DeadLetterSink>,
    /// Problems found loading plugins (each file refused with its reason).
    pub plugin_errors: Vec<String>,
}

/// Every problem of a rule set refused at start, one per line when displayed.
#[derive(Debug)]
pub struct RulesRefused(pub Vec<crate::rules::RuleError>);

impl std::fmt::Display for RulesRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the rules were refused:")?;
        for error in &self.0 {
            write!(f, "\n{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RulesRefused {}

/// Loads plugins and rules. A refused rule set is a [`RulesRefused`] error with every
/// problem.
pub fn load_core(
    plan: &Plan,
    dead_letters: Arc<dyn DeadLetterSink>,
    state: Arc<dyn StateStore>,
) -> anyhow::Result<Core> {
    let config = &plan.config;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.cache.clone()),
        ..RuntimeConfig::default()
    })
    .context("cannot start the plugin runtime")?;
    let twins = Arc::new(crate::twin::Twins::new(config.twin.max_devices));
    let registry = Arc::new(
        Registry::new(runtime, &config.plugins, state)
            .with_grant_policy(plan.grant_policy())
            .with_twins(twins),
    );
    let reports = registry.load_all().with_context(|| {
        format!(
            "cannot read the plugins directory {}",
            config.plugins.display()
        )
    })?;
    let mut plugin_errors = Vec::new();
    for report in reports {
        if let ReloadReport::Rejected { error, .. } = report {
            plugin_errors.push(error.to_string());
        }
    }
    let rules = Rules::load(&config.rules, registry.clone()).map_err(RulesRefused)?;
    Ok(Core {
        registry,
        rules: Arc::new(rules),
        dead_letters,
        plugin_errors,
    })
}

/// Runs the service of `plan` until its connectors finish or `stop` turns true.
pub async fn run(
    plan: &Plan,
    core: Core,
    stop: watch::Receiver<bool>,
    on_start: impl FnOnce(&Arc<Observed>),
) -> anyhow::Result<(Ending, Arc<Observed>)> {
    let config = &plan.config;
    let Core {
        registry,
        rules,
        dead_letters,
        plugin_errors,
    } = core;
    let metrics = Arc::new(Metrics::default());
    dead_letters.register_metrics(&metrics);
    registry.state().register_metrics(&metrics);
    let errors = Arc::new(LastErrors::default());
    for error in &plugin_errors {
        tracing::error!("Plugin refused: {error}");
        errors.push("plugins".into(), error);
    }
    let observed = Arc::new(Observed {
        metrics: metrics.clone(),
        errors: errors.clone(),
        connectors: Arc::new(Connectors::default()),
        rules: rules.clone(),
        registry: registry.clone(),
        started: Instant::now(),
    });
    let _plugin_watcher = Watcher::start(registry.clone(), crate::plugin::DEFAULT_DEBOUNCE)
        .context("cannot watch the plugins directory")?;
    let _rules_watcher = RulesWatcher::start(rules.clone(), crate::rules::DEFAULT_DEBOUNCE)
        .context("cannot watch the rules directory")?;
    count_reloads(&observed);

    let runtime = tokio::runtime::Handle::current();
    let mut paths = CommandPaths::start(&plan.command_paths, &config.clock, &runtime)?;
    // A connector that is also a command path (an MQTT link) starts it here, before the
    // pipeline that sends on it; its receiving task starts with the other connectors'.
    let mut started = Vec::with_capacity(plan.connectors.len());
    for planned in &plan.connectors {
        let start = planned.connector.start(&planned.name, &runtime);
        if let Some(path) = start.command_path {
            paths.insert(path);
        }
        started.push((planned, start.run));
    }
    let pipeline = Pipeline::start(
        &config.pipeline,
        Parts {
            rules: rules.clone(),
            registry: registry.clone(),
            paths,
            dead_letters,
            metrics: metrics.clone(),
            errors: errors.clone(),
        },
        runtime.clone(),
    )
    .context("cannot start the pipeline workers")?;

    let admin = match &config.admin {
        Some(admin) => Some(
            crate::admin::serve(admin.listen, observed.clone())
                .await
                .with_context(|| format!("cannot serve the admin API on {}", admin.listen))?,
        ),
        None => None,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut connectors = tokio::task::JoinSet::new();
    for (planned, run) in started {
        let dialect = planned.dialect.clone();
        let sign_mode = dialect.sign_mode();
        let status = observed.connectors.add(ConnectorStatus {
            identity: planned.connector.identity(config.clock.now_ms()),
            signature: sign_mode.map(|mode| crate::status::SignatureStatus::new(mode, 0)),
            ..ConnectorStatus::starting(&planned.name, planned.kind, dialect.name())
        });
        let context = Context {
            ingest: pipeline.ingest(&planned.name, dialect),
            status,
            errors: errors.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown_rx.clone(),
            clock: config.clock.clone(),
        };
        let name = planned.name.clone();
        connectors.spawn(async move { (name, run(context).await) });
    }
    on_start(&observed);

    let mut stop = stop;
    let ending = loop {
        tokio::select! {
            joined = connectors.join_next() => match joined {
                None => break Ending::Finished,
                Some(Ok((name, Ok(())))) => tracing::info!(connector = %name, "Connector finished"),
                Some(Ok((name, Err(error)))) => {
                    tracing::error!(connector = %name, "Connector failed: {error}");
                }
                Some(Err(panic)) => tracing::error!("A connector task failed: {panic}"),
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    tracing::info!("Stopping: finishing the events in flight");
                    break Ending::Stopped;
                }
            }
        }
    };
    if ending == Ending::Finished {
        linger(&observed, &pipeline, &config.clock, &mut stop).await;
    }
    let _ = shutdown_tx.send(true);
    while connectors.join_next().await.is_some() {}
    let timeout = Duration::from_secs(config.pipeline.shutdown_timeout_s);
    if !pipeline.drain(timeout).await {
        tracing::warn!(
            "Stopped after {} s with events still in flight; their connectors deliver them again",
            timeout.as_secs()
        );
    }
    if let Some(admin) = admin {
        admin.stop().await;
    }
    Ok((ending, observed))
}

/// How long a run whose connectors all finished still serves the timers coming due.
pub const LINGER: Duration = Duration::from_secs(10);

/// Once every connector has finished (a replay at the end of its file), the service still
/// fires the timers due within [`LINGER`], so that a replay shows what its rules' timers do;
/// later ones stay in the store and fire in a later run. Ends at once on a stop request, and
/// after `LINGER` of wall time whatever the clock says (a pinned clock never reaches them).
async fn linger(
    observed: &Observed,
    pipeline: &Pipeline,
    clock: &crate::time::Clock,
    stop: &mut watch::Receiver<bool>,
) {
    let until = clock.now_ms().saturating_add(LINGER.as_millis() as u64);
    let deadline = tokio::time::Instant::now() + LINGER;
    let timers = observed.registry.timers();
    let mut said = false;
    loop {
        let soon = timers.next_due().is_some_and(|at| at <= until);
        if !soon && pipeline.in_flight() == 0 {
            return;
        }
        if soon && !said {
            tracing::info!(
                "Every connector finished; firing the timers due in the next {} s",
                LINGER.as_secs()
            );
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = tokio::time::sleep_until(deadline) => return,
            _ = stop.changed() => return,
        }
    }
}

/// Counts plugin and rule reloads into the metrics and records refusals as errors.
fn count_reloads(observed: &Arc<Observed>) {
    // The threads hold the counters, not the registry or the rules: they end when those are
    // dropped and their subscriptions close.
    let plugins = observed.registry.subscribe();
    let seen = (observed.metrics.clone(), observed.errors.clone());
    let _ = std::thread::Builder::new()
        .name("iotrules-plugin-reloads".into())
        .spawn(move || {
            for report in plugins {
                let result = match &report {
                    ReloadReport::Loaded { .. } => "ok",
                    ReloadReport::Rejected { error, .. }
                    | ReloadReport::Quarantined { error, .. } => {
                        seen.1.push("plugins".into(), &error.to_string());
                        "refused"
                    }
                    ReloadReport::Unchanged { .. } | ReloadReport::Removed { .. } => continue,
                };
                seen.0.reloads.with(&["plugin", result]).inc();
            }
        });
    let rules = observed.rules.subscribe();
    let seen = (observed.metrics.clone(), observed.errors.clone());
    let _ = std::thread::Builder::new()
        .name("iotrules-rule-reloads".into())
        .spawn(move || {
            for result in rules {
                let result = match result {
                    Ok(_) => "ok",
                    Err(errors) => {
                        for error in errors {
                            seen.1.push("rules".into(), &error.to_string());
                        }
                        "refused"
                    }
                };
                seen.0.reloads.with(&["rules", result]).inc();
            }
        });
}

/// The end-of-run summary: per connector, per rule, per command path.
pub fn summary(observed: &Observed) -> String {
    use std::fmt::Write as _;
    let metrics = &observed.metrics;
    let mut out = String::new();
    let elapsed = observed.started.elapsed().as_secs_f64();
    let _ = writeln!(out, "Summary after {elapsed:.1} s");
    let dropped = metrics.events_dropped.members();
    let out_counts = metrics.events_out.members();
    for (labels, counter) in metrics.events_in.members() {
        let connector = &labels[0];
        let reason = |reason: &str| {
            dropped
                .iter()
                .find(|(l, _)| &l[0] == connector && l[1] == reason)
                .map_or(0, |(_, c)| c.get())
        };
        let passed = out_counts
            .iter()
            .find(|(l, _)| &l[0] == connector)
            .map_or(0, |(_, c)| c.get());
        let _ = writeln!(
            out,
            "  connector {connector}: {} received, {} refused, {} duplicates, {} taken by no rule, \
             {} dropped by rules, {} passed on",
            counter.get(),
            reason("refused"),
            reason("duplicate"),
            reason("no-rule"),
            reason("rules"),
            passed
        );
    }
    let outcomes = metrics.rule_outcomes.members();
    let errors = metrics.rule_errors.members();
    for rule in observed.rules.current().rules() {
        let name = rule.name();
        let matches = metrics.rule_matches.with(&[name]).get();
        let count = |outcome: &str| {
            outcomes
                .iter()
                .find(|(l, _)| l[0] == name && l[1] == outcome)
                .map_or(0, |(_, c)| c.get())
        };
        let failed: u64 = errors
            .iter()
            .filter(|(l, _)| l[0] == name)
            .map(|(_, c)| c.get())
            .sum();
        let _ = writeln!(
            out,
            "  rule {name}: {matches} matched, {} passed, {} dropped, {} dead-lettered, {} \
             dropped on error, {failed} errors",
            count("passed"),
            count("dropped"),
            count("dead-letter"),
            count("dropped-on-error"),
        );
    }
    let commands = metrics.commands.members();
    let mut paths: Vec<&str> = commands.iter().map(|(l, _)| l[0].as_str()).collect();
    paths.dedup();
    for path in paths {
        let count = |result: &str| {
            commands
                .iter()
                .find(|(l, _)| l[0] == path && l[1] == result)
                .map_or(0, |(_, c)| c.get())
        };
        let _ = writeln!(
            out,
            "  command path {path}: {} sent, {} failed",
            count("sent"),
            count("failed")
        );
    }
    let letters: u64 = metrics
        .dead_letters
        .members()
        .iter()
        .map(|(_, c)| c.get())
        .sum();
    let _ = writeln!(out, "  dead letters stored: {letters}");
    out
}

/// Rules whose `commands.via` or `commands.allow` (on the rule or a step) names no
/// configured command path, each as `file:line:col: rule "name": …`.
pub fn unknown_paths(set: &crate::rules::RuleSet, known: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let configured = if known.is_empty() {
        "none are configured".to_owned()
    } else {
        format!("configured: {}", known.join(", "))
    };
    for rule in set.rules() {
        for (via, position, what) in rule.named_paths() {
            if !known.iter().any(|name| name == via) {
                problems.push(
                    crate::rules::RuleError::new(
                        &rule.file,
                        Some(position),
                        Some(&rule.name),
                        format!(
                            "{what} names \"{via}\", which is not a command path ({configured})"
                        ),
                    )
                    .to_string(),
                );
            }
        }
    }
    problems
}

/// Turns transparent huge pages off for this process. mimalloc marks its memory as wanting
/// them, and where the system leaves huge pages to `madvise` (Debian's default) the kernel's
/// `khugepaged` then refills every 2 MiB range the allocator has partly given back, so after
/// a burst the service's memory grew again on its own, without any work. `scripts/flood 30
/// --quiet 120`: with huge pages, 119 MiB idle, a 170–179 MiB peak and RSS growing for a
/// minute and a half after the flood; without, 58 MiB idle, a 116 MiB peak, and flat after it,
/// at the same rate. The binary calls it first thing, and the benches that run the service
/// do too, so that they measure it as it runs.
#[cfg(target_os = "linux")]
pub fn disable_transparent_huge_pages() {
    // SAFETY: `PR_SET_THP_DISABLE` takes no pointers; it only sets a flag of this process.
    // On a kernel without it the call fails and nothing changes, which is harmless.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Elsewhere there is nothing to turn off.
#[cfg(not(target_os = "linux"))]
pub fn disable_transparent_huge_pages() {}

/// The async runtime the service's connectors, command paths and admin API run on:
/// `threads` threads (at least one) named `iotrules-io`, scheduled as `scheduling` says
/// (`[pipeline] scheduling`), as are the rule workers they hand events to.
pub fn io_runtime(
    threads: usize,
    scheduling: Scheduling,
) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("iotrules-io")
        .on_thread_start(move || crate::sync::schedule_thread(scheduling))
        .enable_all()
        .build()
}

/// Worker threads of the async runtime (connectors, command paths, admin API) when
/// `--io-threads` is not given: one fewer than the cores, at least one and at most two.
///
/// The rule workers take the cores (`[pipeline] workers` defaults to one per core), and what
/// the runtime does per event (reading sockets, settling, acknowledging) is short. On two
/// cores one runtime thread beside the two workers did better than two in every bench, side
/// by side in one sitting: `bench mqtt` ÷ mosquitto 0.496 and 0.506 against 0.475 and 0.445 at
/// QoS 1, 0.430 and 0.436 against 0.363 and 0.387 at QoS 0; `bench amqp` (4 connections) ÷
/// bare receivers 0.846 and 0.873 against 0.829 and 0.868; `bench pulsar` 0.984 and 0.945
/// against 0.975 and 0.906; p99 receipt → ack at 35 000 events/s a median of 1.9 ms against
/// 2.2 ms. A second thread is one more to wake and one more to share two cores with.
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() - 1).clamp(1, 2))
}
