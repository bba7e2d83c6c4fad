//! The service under soak: its configuration, its rules (valid and invalid), and the
//! service itself on its own runtime.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use iotrules::admin::Observed;
use iotrules::config::Config;
use iotrules::connector::amqp::AmqpSettings;
use iotrules::plan::Plan;
use iotrules::plugin::MemoryStateStore;
use iotrules::status::ConnectorState;
use iotrules::time::Clock;
use iotrules_tests::plugins::{built, install, retagged};
use iotrules_tests::service::{CONFIG_HEAD, Spawned, lay_out, spawn, wait_started};
use iotrules_tests::service_config::{mqtt_link, tuya_connector};
use tokio::sync::watch;

use crate::ledger::{LINKS, StampedLetters};
use crate::{ALIBABA_SECRET, NOW, QUEUE};

/// The service's configuration.
pub(crate) fn service_config(
    pulsar_url: &str,
    relay_port: u16,
    mosquitto_url: &str,
    webhook: std::net::SocketAddr,
) -> String {
    format!(
        r#"{CONFIG_HEAD}
[pipeline]
workers = 2
shutdown_timeout_s = 5

{tuya}stall_timeout_s = 30
{ali}{mqtt}
[[command_path]]
name = "out"
kind = "webhook"
url = "http://{webhook}/commands"
"#,
        tuya = tuya_connector(pulsar_url),
        ali = alibaba_connector(&format!("amqp://127.0.0.1:{relay_port}")),
        mqtt = mqtt_link(mosquitto_url),
    )
}

pub(crate) fn alibaba_connector(url: &str) -> String {
    format!(
        r#"
[[connector]]
name = "ali"
kind = "alibaba-amqp"
url = "{url}"
access_key_id = "LTAIsoak"
access_key_secret = "{ALIBABA_SECRET}"
consumer_group = "soak-group"
client_id = "iotrules-soak"
source = "{QUEUE}"
credit = 50
"#
    )
}

/// The logins the `ali` connector derives at [`NOW`].
pub(crate) fn amqp_users() -> Vec<(String, String)> {
    let text = alibaba_connector("amqp://x:1");
    let config = Config::parse(std::path::Path::new("users.toml"), &text).expect("config");
    let settings = AmqpSettings::from_config(&config.connectors[0]).expect("settings");
    settings
        .logins
        .iter()
        .map(|login| (login.username(NOW), login.password(NOW)))
        .collect()
}

/// The rules: per connector, stable devices through `echo`, flaky ones through `flaky`
/// (dead letter on error). `version` only changes the descriptions: a valid rewrite.
pub(crate) fn rules_text(version: u64) -> String {
    let mut text = format!("# The soak's rules, version {version}.\n");
    for link in LINKS {
        let source = link.connector();
        let via = link.path();
        let stable = link.device_id(0, false).replace("00", "*");
        let flaky = link.device_id(0, true).replace("00", "*");
        text += &format!(
            r#"
[[rule]]
name = "stable-{source}"
description = "Echo every event of {source}'s stable devices (version {version})"
when = {{ source = "{source}", device = "{stable}" }}
commands.via = "{via}"

[[rule.step]]
plugin = "echo"

[[rule]]
name = "flaky-{source}"
description = "The swapped plugin on {source}'s flaky devices (version {version})"
when = {{ source = "{source}", device = "{flaky}" }}
on_error = "dead-letter"
commands.via = "{via}"

[[rule.step]]
plugin = "flaky"
"#
        );
    }
    text
}

/// A rule file the service must refuse, keeping the rules it serves: `kind` chooses how it
/// is broken.
pub(crate) fn invalid_rules(version: u64, kind: u64) -> String {
    let valid = rules_text(version);
    match kind % 3 {
        0 => format!("{valid}\n[[rule]\nname = \"broken-toml\"\n"),
        1 => format!(
            "{valid}\n[[rule]]\nname = \"broken-cel\"\nif = 'event.device.id ==== \"x\"'\n\n[[rule.step]]\nplugin = \"echo\"\n"
        ),
        _ => format!(
            "{valid}\n[[rule]]\nname = \"broken-key\"\ncolour = \"red\"\n\n[[rule.step]]\nplugin = \"echo\"\n"
        ),
    }
}

/// Writes a file through a temporary name and a rename, as a deploy tool would.
pub(crate) fn replace_file(path: &std::path::Path, text: &str) {
    let temp = path.with_extension("toml.tmp");
    std::fs::write(&temp, text).expect("write the rules");
    std::fs::rename(&temp, path).expect("rename the rules into place");
}

/// The service on its own runtime.
pub(crate) struct Service {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: Option<tokio::task::JoinHandle<Result<(), String>>>,
    pub(crate) observed: Arc<Observed>,
}

impl Service {
    pub(crate) fn start(config_text: &str, letters: Arc<StampedLetters>) -> Service {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("service")
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::Builder::new()
            .prefix("iotrules-soak-")
            .tempdir()
            .expect("temp dir");
        lay_out(dir.path(), &[("echo", "testing/echo")], &rules_text(0));
        install(
            &dir.path().join("plugins"),
            "flaky",
            &retagged(&built("testing/echo"), "flaky-0"),
        );
        let file = dir.path().join("iotrules.toml");
        std::fs::write(&file, config_text).expect("config");
        let mut config = Config::parse(&file, config_text).expect("config");
        config.clock = Clock::Manual(Arc::new(AtomicU64::new(NOW)));
        let plan = Plan::new(config).expect("plan");
        let Spawned {
            stop,
            started,
            task,
        } = spawn(
            runtime.handle(),
            plan,
            letters,
            Arc::new(MemoryStateStore::default()),
        );
        let observed = wait_started(&runtime, started, Duration::from_secs(60));
        Service {
            runtime,
            dir,
            stop,
            task: Some(task),
            observed,
        }
    }

    pub(crate) fn plugins(&self) -> std::path::PathBuf {
        self.dir.path().join("plugins")
    }

    pub(crate) fn rules_file(&self) -> std::path::PathBuf {
        self.dir.path().join("rules/rules.toml")
    }

    pub(crate) fn running(&self, name: &str) -> bool {
        self.observed
            .connectors
            .all()
            .iter()
            .any(|c| c.name == name && c.state == ConnectorState::Running)
    }

    /// The sum of a counter family's members whose labels start with `prefix`.
    pub(crate) fn sum(
        family: &iotrules::metrics::Family<iotrules::metrics::Counter>,
        prefix: &[&str],
    ) -> u64 {
        family
            .members()
            .iter()
            .filter(|(labels, _)| labels.iter().zip(prefix).all(|(a, b)| a == b))
            .map(|(_, c)| c.get())
            .sum()
    }

    pub(crate) fn reloads(&self, what: &str, result: &str) -> u64 {
        Self::sum(&self.observed.metrics.reloads, &[what, result])
    }

    pub(crate) fn stop(mut self) -> Result<(), String> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => self
                .runtime
                .block_on(task)
                .map_err(|e| format!("the service task: {e}"))?,
            None => Ok(()),
        }
    }
}

/// What the fault task needs of the service, without owning its runtime.
pub(crate) struct ServiceHandle {
    pub(crate) observed: Arc<Observed>,
    pub(crate) plugins: std::path::PathBuf,
    pub(crate) rules_file: std::path::PathBuf,
}

impl ServiceHandle {
    pub(crate) fn reloads(&self, what: &str, result: &str) -> u64 {
        Service::sum(&self.observed.metrics.reloads, &[what, result])
    }
}
