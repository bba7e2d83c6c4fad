//! Pieces for pipeline tests: numbered vendor messages, a pipeline over real plugins and rule
//! files, a command path that records (and can hold) what it is given, and the `iotrules`
//! binary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use iotrules::command::{CommandError, CommandPath, CommandPaths, Confirmer};
use iotrules::config::PipelineConfig;
use iotrules::event::Command;
use iotrules::metrics::Metrics;
use iotrules::pipeline::{Acker, Delivery, Settle};
use iotrules::pipeline::{Parts, Pipeline};
use iotrules::rules::Rules;
use iotrules::status::LastErrors;
use iotrules::store::{DeadLetterRecord, DeadLetterSink, MemoryDeadLetters};

use crate::plugins::{Harness, built, install};

/// A Huawei IoTDA push body (property report) for `device`, numbered `seq` (property `seq`,
/// request id `{device}-{seq}`).
pub fn huawei_body(device: &str, seq: u64) -> String {
    format!(
        r#"{{"resource":"device.property","event":"report","event_time":"20251123T080000Z","request_id":"{device}-{seq}","notify_data":{{"header":{{"app_id":"app","device_id":"{device}","node_id":"n","product_id":"p","gateway_id":"{device}"}},"body":{{"services":[{{"service_id":"S","properties":{{"seq":{seq}}},"event_time":"20251123T080000Z"}}]}}}}}}"#
    )
}

/// The `iotrules` binary `cargo test` built beside this test.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let binary = dir.join(format!("iotrules{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test), which builds it",
        binary.display()
    );
    binary
}

/// What a [`Capture`] path received: the device and the `seq` param of each command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub device: String,
    pub name: String,
    pub seq: Option<u64>,
    /// The whole params.
    pub params: serde_json::Value,
}

/// A command path that records every command and confirms it, or holds the confirmations
/// while closed (of one device's commands only, for [`Capture::holding`]).
#[derive(Default)]
pub struct Capture {
    name: String,
    received: Mutex<Vec<Captured>>,
    held: Mutex<Option<Vec<Confirmer>>>,
    /// Only this device's commands are held, when set.
    device: Option<String>,
}

impl Capture {
    /// A path that confirms at once.
    pub fn open(name: &str) -> Arc<Self> {
        Arc::new(Capture {
            name: name.to_owned(),
            ..Capture::default()
        })
    }

    /// A path that holds every confirmation until [`Capture::release`].
    pub fn closed(name: &str) -> Arc<Self> {
        Arc::new(Capture {
            name: name.to_owned(),
            held: Mutex::new(Some(Vec::new())),
            ..Capture::default()
        })
    }

    /// A path that holds the confirmations of `device`'s commands until
    /// [`Capture::release`], and confirms the others at once.
    pub fn holding(name: &str, device: &str) -> Arc<Self> {
        Arc::new(Capture {
            name: name.to_owned(),
            held: Mutex::new(Some(Vec::new())),
            device: Some(device.to_owned()),
            ..Capture::default()
        })
    }

    /// Fails what was held (the path gave up on those commands); confirms everything after.
    pub fn fail(&self) {
        if let Some(held) = self.held.lock().unwrap().take() {
            for done in held {
                let _ = done.send(Err(CommandError {
                    path: self.name.clone(),
                    reason: "failed by the test".into(),
                }));
            }
        }
    }

    /// Confirms what was held and everything after.
    pub fn release(&self) {
        if let Some(held) = self.held.lock().unwrap().take() {
            for done in held {
                let _ = done.send(Ok(()));
            }
        }
    }

    /// The commands so far.
    pub fn received(&self) -> Vec<Captured> {
        self.received.lock().unwrap().clone()
    }
}

impl CommandPath for Capture {
    fn name(&self) -> &str {
        &self.name
    }

    fn enqueue_all(&self, commands: Vec<(Command, Confirmer)>) -> BoxFuture<'_, ()> {
        for (command, done) in commands {
            let params: serde_json::Value =
                serde_json::from_str(command.params.as_str()).expect("params are JSON");
            self.received.lock().unwrap().push(Captured {
                device: command.device.id.clone(),
                name: command.name.clone(),
                seq: params.get("seq").and_then(serde_json::Value::as_u64),
                params,
            });
            let holds = self
                .device
                .as_ref()
                .is_none_or(|device| *device == command.device.id);
            match self.held.lock().unwrap().as_mut() {
                Some(held) if holds => held.push(done),
                _ => {
                    let _ = done.send(Ok(()));
                }
            }
        }
        Box::pin(std::future::ready(()))
    }
}

/// Dead letters kept in memory, or refused while [`TestDeadLetters::refuse`] says so (a
/// store that cannot write: the delivery goes back for another try).
#[derive(Debug, Default)]
pub struct TestDeadLetters {
    memory: MemoryDeadLetters,
    refusing: std::sync::atomic::AtomicBool,
}

impl TestDeadLetters {
    /// What was stored so far.
    pub fn letters(&self) -> Vec<DeadLetterRecord> {
        self.memory.letters()
    }

    /// Refuses (or takes again) every dead letter from now on.
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }
}

impl DeadLetterSink for TestDeadLetters {
    fn store(&self, letters: &[DeadLetterRecord]) -> Result<(), String> {
        if self.refusing.load(Ordering::SeqCst) {
            return Err("the test's store refuses".into());
        }
        self.memory.store(letters)
    }
}

/// A pipeline over real plugins and a rules directory, with one capturing command path.
pub struct TestPipeline {
    pub harness: Harness,
    pub rules_dir: tempfile::TempDir,
    pub rules: Arc<Rules>,
    pub metrics: Arc<Metrics>,
    pub dead_letters: Arc<TestDeadLetters>,
    pub pipeline: Option<Pipeline>,
}

impl TestPipeline {
    /// Loads `plugins` (names in `plugins/dist`, e.g. `testing/echo`, installed under their
    /// last path part) and the rule file `rules`, and starts a pipeline on `runtime`.
    pub fn start(
        plugins: &[&str],
        rules: &str,
        settings: PipelineConfig,
        path: Arc<dyn CommandPath>,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        Self::start_in(Harness::new(), plugins, rules, settings, path, runtime)
    }

    /// Like [`TestPipeline::start`], with the plugins of `harness` (and its state store).
    pub fn start_in(
        harness: Harness,
        plugins: &[&str],
        rules: &str,
        settings: PipelineConfig,
        path: Arc<dyn CommandPath>,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        for plugin in plugins {
            let name = plugin.rsplit('/').next().unwrap_or(plugin);
            let path = install(harness.dir.path(), name, &built(plugin));
            harness.registry.load_file(&path);
        }
        let rules_dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(rules_dir.path().join("rules.toml"), rules).expect("write rules");
        let rules = Arc::new(
            Rules::load(rules_dir.path(), harness.registry.clone())
                .unwrap_or_else(|errors| panic!("rules refused: {errors:#?}")),
        );
        let metrics = Arc::new(Metrics::default());
        let dead_letters = Arc::new(TestDeadLetters::default());
        let mut paths = CommandPaths::default();
        paths.insert(path);
        let pipeline = Pipeline::start(
            &settings,
            Parts {
                rules: rules.clone(),
                registry: harness.registry.clone(),
                paths,
                dead_letters: dead_letters.clone(),
                metrics: metrics.clone(),
                errors: Arc::new(LastErrors::default()),
            },
            runtime.clone(),
        )
        .expect("pipeline");
        TestPipeline {
            harness,
            rules_dir,
            rules,
            metrics,
            dead_letters,
            pipeline: Some(pipeline),
        }
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        self.pipeline.as_ref().expect("not drained")
    }

    /// Drains the pipeline (its ingests must be dropped) and asserts everything in flight
    /// was settled within 20 s.
    pub fn drain(&mut self, runtime: &tokio::runtime::Runtime) {
        let pipeline = self.pipeline.take().expect("not drained");
        assert!(
            runtime.block_on(pipeline.drain(std::time::Duration::from_secs(20))),
            "events still in flight after 20 s"
        );
    }
}

/// Counts acknowledgements (and retries) of deliveries.
#[derive(Debug, Default)]
pub struct Acks {
    pub acked: AtomicUsize,
    pub retried: AtomicUsize,
}

impl Acks {
    /// A delivery of `payload` whose settlement is counted here.
    pub fn delivery(self: &Arc<Self>, payload: String) -> Delivery {
        let acks = self.clone();
        Delivery {
            payload: payload.into_bytes(),
            properties: Vec::new(),
            acker: Acker::new(move |how| {
                let counter = match how {
                    Settle::Ack => &acks.acked,
                    Settle::Retry => &acks.retried,
                };
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    pub fn retried(&self) -> usize {
        self.retried.load(Ordering::SeqCst)
    }
}
