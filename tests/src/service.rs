//! The service as the connector tests run it: on a runtime of its own, in a directory of its
//! own with the test plugins and rules, the clock pinned, and what it observes (`/status`,
//! the metrics) at hand.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use iotrules::admin::Observed;
use iotrules::config::Config;
use iotrules::plan::Plan;
use iotrules::plugin::StateStore;
use iotrules::service;
use iotrules::status::ConnectorState;
use iotrules::status::ConnectorStatus;
use iotrules::store::DeadLetterSink;
use iotrules::time::Clock;
use tokio::sync::{oneshot, watch};

use crate::wait_for;

/// The head of a service's config over a directory [`lay_out`] made: where its rules,
/// plugins and store are. Its own tables follow.
pub const CONFIG_HEAD: &str = r#"
rules = "rules"
plugins = "plugins"
store = "state/iotrules.db"
"#;

/// Lays out a service directory in `dir`: `plugins/` with the built `plugins` installed (the
/// name to install as, the built plugin), the rule file `rules/rules.toml`, and an empty
/// `state/`.
pub fn lay_out(dir: &Path, plugins: &[(&str, &str)], rules: &str) {
    for sub in ["plugins", "rules", "state"] {
        std::fs::create_dir_all(dir.join(sub)).expect("directory");
    }
    for (name, built) in plugins {
        crate::plugins::install(&dir.join("plugins"), name, &crate::plugins::built(built));
    }
    std::fs::write(dir.join("rules/rules.toml"), rules).expect("write the rules");
}

/// A service spawned by [`spawn`].
pub struct Spawned {
    /// Stops the service when it says `true`.
    pub stop: watch::Sender<bool>,
    /// What the service observes, once it is up.
    pub started: oneshot::Receiver<Arc<Observed>>,
    /// The service: how it ended.
    pub task: tokio::task::JoinHandle<Result<(), String>>,
}

/// Runs the service of `plan` on `runtime`, its dead letters going to `dead_letters` and
/// its plugins' state to `state`: loads the plugins and rules and serves until stopped.
pub fn spawn(
    runtime: &tokio::runtime::Handle,
    plan: Plan,
    dead_letters: Arc<dyn DeadLetterSink>,
    state: Arc<dyn StateStore>,
) -> Spawned {
    let (stop, stop_rx) = watch::channel(false);
    let (started_tx, started) = oneshot::channel();
    let task = runtime.spawn(async move {
        let core = service::load_core(&plan, dead_letters, state).map_err(|e| format!("{e:#}"))?;
        service::run(&plan, core, stop_rx, move |observed| {
            let _ = started_tx.send(observed.clone());
        })
        .await
        .map_err(|e| format!("{e:#}"))?;
        Ok(())
    });
    Spawned {
        stop,
        started,
        task,
    }
}

/// Waits on `runtime` up to `limit` for the service [`spawn`] started to be up; returns what
/// it observes.
pub fn wait_started(
    runtime: &tokio::runtime::Runtime,
    started: oneshot::Receiver<Arc<Observed>>,
    limit: Duration,
) -> Arc<Observed> {
    runtime
        .block_on(async { tokio::time::timeout(limit, started).await })
        .expect("the service starts")
        .expect("the service starts")
}

/// A running service; [`TestService::stop`] stops it and checks it ended well.
pub struct TestService {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
    /// What the service observes, as `/status` and `/metrics` show it.
    pub observed: Arc<Observed>,
}

impl TestService {
    /// Starts the service on `runtime` in a fresh directory, with the built `plugins` (the
    /// name to install as, the built plugin), the rule file `rules`, two workers, and
    /// `settings` (its `[[connector]]` and `[[command_path]]` tables), the clock at `now_ms`.
    /// Returns once the service is up.
    pub fn start(
        runtime: tokio::runtime::Runtime,
        plugins: &[(&str, &str)],
        rules: &str,
        settings: &str,
        now_ms: u64,
    ) -> TestService {
        let dir = tempfile::tempdir().expect("temp dir");
        lay_out(dir.path(), plugins, rules);
        let text = format!(
            r#"{CONFIG_HEAD}
[pipeline]
workers = 2
shutdown_timeout_s = 1
{settings}"#
        );
        let file = dir.path().join("iotrules.toml");
        std::fs::write(&file, &text).unwrap();
        let mut config = Config::parse(&file, &text).expect("config");
        config.clock = Clock::Manual(Arc::new(AtomicU64::new(now_ms)));
        let plan = Plan::new(config).expect("plan");
        let store = Arc::new(iotrules::store::Store::open(&plan.config.store).expect("store"));
        let state = Arc::new(iotrules::store::SqliteStateStore::new(store.clone()));
        let Spawned {
            stop,
            started,
            task,
        } = spawn(runtime.handle(), plan, store, state);
        let observed = wait_started(&runtime, started, Duration::from_secs(30));
        TestService {
            runtime,
            _dir: dir,
            stop,
            task: Some(task),
            observed,
        }
    }

    /// Connector `name` as `/status` shows it.
    pub fn connector(&self, name: &str) -> ConnectorStatus {
        self.observed
            .connectors
            .all()
            .into_iter()
            .find(|c| c.name == name)
            .expect("connector in /status")
    }

    /// Waits until connector `name` is running.
    pub fn wait_running(&self, name: &str) {
        wait_for(&format!("connector {name} running"), || {
            self.connector(name).state == ConnectorState::Running
        });
    }

    /// Dead letters stored so far.
    pub fn dead_letters(&self) -> u64 {
        self.observed
            .metrics
            .dead_letters
            .members()
            .iter()
            .map(|(_, c)| c.get())
            .sum()
    }

    /// Stops the service and checks that it ended without an error.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            self.runtime
                .block_on(task)
                .expect("service task")
                .expect("service ran");
        }
    }
}

/// A service directory for the `iotrules` binary: the built `plugins` and the rule file
/// `rules` laid out as [`lay_out`] does, a recording of Huawei push bodies that connector
/// `replayed` replays (remembering how far it got in `state/offset.json`), and a config whose
/// command path `out` takes the table lines [`ReplayDir::config`] is given.
pub struct ReplayDir {
    pub dir: tempfile::TempDir,
}

impl ReplayDir {
    pub fn new(plugins: &[(&str, &str)], rules: &str, bodies: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        lay_out(dir.path(), plugins, rules);
        let recorded: Vec<String> = bodies
            .iter()
            .map(|body| serde_json::json!({ "payload": body }).to_string())
            .collect();
        std::fs::write(dir.path().join("huawei.jsonl"), recorded.join("\n") + "\n")
            .expect("recording");
        ReplayDir { dir }
    }

    /// Writes the config, command path `out` taking `path` (its `kind` and settings), and
    /// returns its file.
    pub fn config(&self, path: &str) -> std::path::PathBuf {
        let config = self.dir.path().join("iotrules.toml");
        let text = format!(
            r#"{CONFIG_HEAD}
[pipeline]
workers = 2

[[connector]]
name = "replayed"
kind = "replay"
dialect = "huawei"
file = "huawei.jsonl"
offset_file = "state/offset.json"

[[command_path]]
name = "out"
{path}
"#
        );
        std::fs::write(&config, text).expect("config");
        config
    }

    /// The replay's offset file, once written.
    pub fn offset(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("state/offset.json")).ok()
    }
}
