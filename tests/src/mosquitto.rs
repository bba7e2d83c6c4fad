//! A private mosquitto broker (Debian `mosquitto` 2.0), the real peer of the device MQTT
//! links.
//!
//! Each [`Mosquitto`] runs in its own temporary directory on free ports, with:
//! - `allow_anonymous false` and a password file holding the exact usernames and passwords
//!   given (the ones the vendor logins derive at the tests' pinned clock), converted with
//!   `mosquitto_passwd -U`;
//! - a plain listener and a TLS listener whose server certificate is signed by a CA generated
//!   here ([`Mosquitto::ca_file`]; rustls refuses a self-signed certificate used directly);
//! - optionally persistence, so that a [`restart`](Mosquitto::restart) keeps the persistent
//!   sessions, their subscriptions and their queued QoS 1 messages, as a production broker
//!   does;
//! - otherwise mosquitto's stock settings, as a user's broker has them: at most 20 QoS 1
//!   publishes in flight to a client (`max_inflight_messages`) and 1 000 queued behind them
//!   (`max_queued_messages`; beyond that the broker drops, and says so in its log, which
//!   [`Mosquitto::dropped`] reads). Settings that lift these limits hide flow-control bugs.
//!
//! The broker is killed when the value is dropped.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::tls::TestCa;

/// A running mosquitto.
pub struct Mosquitto {
    /// The plain MQTT port on 127.0.0.1.
    pub port: u16,
    /// The TLS port on 127.0.0.1 (certificate for `localhost` and 127.0.0.1).
    pub tls_port: u16,
    /// The CA that signed the TLS listener's certificate (for `ca_file`).
    pub ca_file: PathBuf,
    config: PathBuf,
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

/// The user the tests' cloud-side peers log in as.
pub const CLOUD: (&str, &str) = ("cloud", "cloud-password");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Mosquitto {
    /// Starts a broker knowing `users` (username, password) besides [`CLOUD`]; with
    /// `persistent`, sessions survive a restart.
    pub fn start(users: &[(String, String)], persistent: bool) -> Mosquitto {
        Self::start_with(users, persistent, "")
    }

    /// Like [`Mosquitto::start`], with `settings` (lines of mosquitto.conf) added to the
    /// stock ones.
    pub fn start_with(users: &[(String, String)], persistent: bool, settings: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path();
        let (port, tls_port) = (free_port(), free_port());

        let passwords = path.join("passwd");
        let mut file = std::fs::File::create(&passwords).expect("password file");
        for (user, password) in users
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .chain([CLOUD])
        {
            assert!(!user.contains(':'), "mosquitto usernames cannot hold `:`");
            writeln!(file, "{user}:{password}").expect("write password");
        }
        drop(file);
        let converted = Command::new("mosquitto_passwd")
            .arg("-U")
            .arg(&passwords)
            .status()
            .expect("run mosquitto_passwd (is mosquitto installed? scripts/test installs it)");
        assert!(converted.success(), "mosquitto_passwd -U failed");

        let ca_file = TestCa::generate().write(path);
        let config = path.join("mosquitto.conf");
        let text = format!(
            "per_listener_settings false\n\
             allow_anonymous false\n\
             password_file {passwords}\n\
             persistence {persistent}\n\
             persistence_location {dir}/\n\
             autosave_interval 0\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             {settings}\n\
             {user}\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {dir}/server.pem\n\
             keyfile {dir}/server.key\n",
            passwords = passwords.display(),
            dir = path.display(),
            ca = ca_file.display(),
            user = if running_as_root() { "user root\n" } else { "" },
        );
        std::fs::write(&config, text).expect("mosquitto.conf");
        let broker = Mosquitto {
            port,
            tls_port,
            ca_file,
            config,
            child: Mutex::new(None),
            dir,
        };
        broker.launch();
        broker
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mqtts://localhost:TLS_PORT`.
    pub fn tls_url(&self) -> String {
        format!("mqtts://localhost:{}", self.tls_port)
    }

    /// The broker's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The broker's own lines saying it dropped messages for a client whose queue was full
    /// (`max_queued_messages`): a message lost by the broker, not by the client under test.
    pub fn dropped(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("dropped"))
            .map(str::to_owned)
            .collect()
    }

    /// Stops the broker the way an operator does (SIGTERM: it saves its persistent sessions)
    /// and waits for it to exit.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        if let Some(mut running) = child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(running.id().to_string())
                .status();
            let _ = running.wait();
        }
    }

    /// Stops the broker and starts it again on the same ports.
    pub fn restart(&self) {
        self.restart_after(Duration::ZERO);
    }

    /// Stops the broker, waits `outage`, and starts it again on the same ports.
    pub fn restart_after(&self, outage: Duration) {
        self.stop();
        std::thread::sleep(outage);
        self.launch();
    }

    fn launch(&self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        *self.child.lock().unwrap() = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || TcpStream::connect(("127.0.0.1", self.tls_port)).is_err()
        {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mosquitto did not listen within 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().map(|mut c| c.take()).unwrap_or(None) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// What a peer received: (topic, payload) in arrival order.
type Received = std::sync::Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A cloud-side peer: a plain MQTT client (rumqttc) logged in as [`CLOUD`], that records
/// every publish it receives and publishes with QoS 1.
pub struct Peer {
    client: rumqttc::AsyncClient,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Connects to `broker` as `client_id` (a persistent session) and subscribes to
    /// `filters` (QoS 1); returns once the subscription is acknowledged. Reconnects by
    /// itself after a broker restart.
    pub async fn connect(broker: &Mosquitto, client_id: &str, filters: &[&str]) -> Peer {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", broker.port);
        options.set_credentials(CLOUD.0, CLOUD.1);
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1024);
        for filter in filters {
            client
                .subscribe(*filter, rumqttc::QoS::AtLeastOnce)
                .await
                .expect("queue subscribe");
        }
        let received: Received = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let mut subacks = 0;
        let expected = filters.len();
        let recorder = received.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        recorder
                            .lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks >= expected
                            && let Some(tx) = subscribed_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    // The broker is restarting: rumqttc reconnects at the next poll.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        if expected == 0 {
            drop(subscribed_rx);
        } else {
            tokio::time::timeout(Duration::from_secs(20), subscribed_rx)
                .await
                .expect("the peer's subscriptions are acknowledged within 20 s")
                .expect("peer task");
        }
        Peer {
            client,
            received,
            task,
        }
    }

    /// Publishes with QoS 1 (rumqttc resends it until acknowledged, across reconnects).
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue publish");
    }

    /// Publishes with QoS 0: written once, never acknowledged.
    pub async fn publish_at_most_once(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtMostOnce, false, payload.into())
            .await
            .expect("queue publish");
    }

    /// How many publishes arrived so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Everything received so far: (topic, payload).
    pub fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
