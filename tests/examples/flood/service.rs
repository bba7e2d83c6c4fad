//! The service under flood: the release `iotrules` binary in its own process, its
//! configuration, rules and plugins in a temporary directory, and what `/proc` and `/status`
//! say about it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iotrules_tests::service::{CONFIG_HEAD, lay_out};
use iotrules_tests::service_config::{mqtt_link, tuya_connector};

/// The service's configuration: the Tuya connector on the Pulsar test broker and a generic
/// MQTT link on mosquitto, which is also the command path of both connectors' rules. The
/// `[pipeline]` and buffers keep their defaults: those are what a user runs.
pub(crate) fn service_config(pulsar_url: &str, mosquitto_url: &str, admin_port: u16) -> String {
    format!(
        r#"{CONFIG_HEAD}cache = "cache"

[admin]
listen = "127.0.0.1:{admin_port}"
{tuya}{mqtt}"#,
        tuya = tuya_connector(pulsar_url),
        mqtt = mqtt_link(mosquitto_url),
    )
}

/// Per connector, one rule of two steps: `deadband` on `seq` (which always moves, so every
/// event is kept, and each writes the device's last kept value to the plugin state), then
/// `echo`, which answers with a command to the device on the MQTT link.
pub(crate) fn rules_text() -> String {
    let mut text =
        String::from("# The flood's rules: state written and a command sent per event.\n");
    for source in ["tuya", "m"] {
        text += &format!(
            r#"
[[rule]]
name = "flood-{source}"
description = "Remember each {source} device's seq and answer it"
when = {{ source = "{source}" }}
commands.via = "m"

[[rule.step]]
plugin = "deadband"
config = {{ datapoints = ["seq"], threshold = 0 }}

[[rule.step]]
plugin = "echo"
"#
        );
    }
    text
}

/// The running service.
pub(crate) struct Service {
    dir: tempfile::TempDir,
    admin_port: u16,
    child: Child,
}

impl Service {
    /// Writes the configuration, rules and plugins into a fresh directory and starts
    /// `binary run --config` on them, its output going to `service.log` there.
    pub(crate) fn start(binary: &Path, config_text: &str, admin_port: u16) -> Service {
        let dir = tempfile::Builder::new()
            .prefix("iotrules-flood-")
            .tempdir()
            .expect("temp dir");
        lay_out(
            dir.path(),
            &[("deadband", "deadband"), ("echo", "testing/echo")],
            &rules_text(),
        );
        std::fs::create_dir_all(dir.path().join("cache")).expect("directory");
        let config_file = dir.path().join("iotrules.toml");
        std::fs::write(&config_file, config_text).expect("config");
        let log = std::fs::File::create(dir.path().join("service.log")).expect("service.log");
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config_file)
            .args(["--log", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Service {
            dir,
            admin_port,
            child,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The service's own output so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Waits until `/status` shows every connector running; Err with the reason otherwise.
    pub(crate) fn wait_running(
        &mut self,
        connectors: usize,
        limit: Duration,
    ) -> Result<(), String> {
        let started = Instant::now();
        let mut last = String::from("no answer from /status");
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the service exited with {status}: {}", self.log()));
            }
            if let Some(status) = self.status() {
                let running = status["connectors"].as_array().map_or(0, |all| {
                    all.iter().filter(|c| c["state"] == "running").count()
                });
                if running == connectors {
                    return Ok(());
                }
                last = status["connectors"].to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the connectors did not all run within {limit:?}: {last}"
        ))
    }

    /// The body of an admin API page, if it answers.
    fn get(&self, path: &str) -> Option<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let at = response.windows(4).position(|w| w == b"\r\n\r\n")?;
        Some(response.split_off(at + 4))
    }

    /// `/status` as JSON, if the admin API answers.
    pub(crate) fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.get("/status")?).ok()
    }

    /// Dead letters stored for `connector`'s messages (`iotrules_dead_letters_total`).
    pub(crate) fn dead_letters(&self, connector: &str) -> u64 {
        let text = String::from_utf8(self.get("/metrics").unwrap_or_default()).unwrap_or_default();
        let label = format!("connector=\"{connector}\"");
        text.lines()
            .filter(|line| {
                line.starts_with("iotrules_dead_letters_total{") && line.contains(&label)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Events received and not yet acknowledged, as `/status` says.
    pub(crate) fn in_flight(&self) -> Option<u64> {
        self.status()?["in_flight"].as_u64()
    }

    /// The process's memory now, from `/proc/PID/status`.
    pub(crate) fn memory(&self) -> Memory {
        Memory::of(self.pid())
    }

    /// Forgets the peak resident size so far (VmHWM), so that the next reading of it is the
    /// peak since now (`/proc/PID/clear_refs`, value 5).
    pub(crate) fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// Stops the service as an operator does (SIGTERM) and waits for it; Err when it did not
    /// exit cleanly. Its log is kept as `keep_log`.
    pub(crate) fn stop(mut self, keep_log: &Path) -> Result<(), String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let status = self
            .child
            .wait()
            .map_err(|e| format!("waiting for the service: {e}"))?;
        let _ = std::fs::copy(self.dir.path().join("service.log"), keep_log);
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "the service exited with {status}: {}",
                tail(&self.log())
            ))
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log, for an error message.
pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A process's resident memory, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Memory {
    /// VmRSS: resident now.
    pub(crate) rss_kib: u64,
    /// VmHWM: the peak resident size (since start or the last reset).
    pub(crate) hwm_kib: u64,
}

impl Memory {
    pub(crate) fn of(pid: u32) -> Memory {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }
}
