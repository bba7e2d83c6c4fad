//! The service as the connector tests run it: on a runtime of its own, in a directory of its
//! own with the test plugins and rules, the clock pinned, and what it observes (`/status`,
//! the metrics) at hand.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use iotrules::admin::Observed;
use iotrules::config::Config;
use iotrules::plan::Plan;
use iotrules::service;
use iotrules::status::ConnectorState;
use iotrules::status::ConnectorStatus;
use iotrules::time::Clock;
use tokio::sync::watch;

use crate::wait_for;

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
        let plugins_dir = dir.path().join("plugins");
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        std::fs::create_dir_all(&rules_dir).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        for (name, built) in plugins {
            crate::plugins::install(&plugins_dir, name, &crate::plugins::built(built));
        }
        std::fs::write(rules_dir.join("rules.toml"), rules).unwrap();
        let text = format!(
            r#"
rules = "rules"
plugins = "plugins"
store = "state/iotrules.db"

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
        let (stop, stop_rx) = watch::channel(false);
        let (observed_tx, observed_rx) = std::sync::mpsc::channel();
        let task = runtime.spawn(async move {
            let store = Arc::new(
                iotrules::store::Store::open(&plan.config.store).map_err(|e| e.to_string())?,
            );
            let state = Arc::new(iotrules::store::SqliteStateStore::new(store.clone()));
            let core = service::load_core(&plan, store, state).map_err(|e| e.to_string())?;
            service::run(&plan, core, stop_rx, |observed| {
                let _ = observed_tx.send(observed.clone());
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        });
        let observed = observed_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the service starts");
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
