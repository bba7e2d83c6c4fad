//! A private RabbitMQ node with the AMQP 1.0 plugin, the real peer of the `alibaba-amqp` and
//! `huawei-amqp` connectors.
//!
//! One node per test binary, started by the first test that asks ([`Broker::start`]) in a
//! temporary directory, on free ports, with its own `epmd` (on a free port too, so nothing
//! else on the machine is touched). A reaper process stops the node and that `epmd` when the
//! test binary exits, however it exits (a failed assertion, Ctrl-C).
//!
//! The node:
//! - has the vhost `default`, which is also the AMQP 1.0 plugin's default vhost: the plugin
//!   maps an open frame hostname `vhost:NAME` to `NAME` and any other hostname (Huawei's
//!   `default`, or Alibaba's host name) to its `default_vhost`, so every connection lands
//!   there, as it does at Huawei;
//! - knows the users given at start, with their exact vendor usernames (`|`, `=`, `,` and
//!   all), loaded from a definitions file at boot (each `rabbitmqctl` call costs seconds);
//! - listens for AMQP on a plain port and a TLS port whose server certificate is signed by a
//!   CA generated here ([`Broker::ca_file`]);
//! - takes test messages from [`Broker::publish`], an AMQP 1.0 sender to `/queue/NAME`
//!   (which declares the queue as the receivers' plain source `NAME` does).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{ApplicationProperties, Message};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue};
use fe2o3_amqp::{Connection, Sender, Session};

use crate::tls::TestCa;
use crate::wait_within;

/// The user the tests publish as.
pub const PUBLISHER: (&str, &str) = ("iotrules-publisher", "publisher-password");

/// A message to publish: its body and its application properties (as strings; the names
/// may be anything that makes one).
pub type Outgoing<K = String> = (Vec<u8>, Vec<(K, String)>);

/// The vhost every connection lands in.
pub const VHOST: &str = "default";

/// A running private node.
pub struct Broker {
    /// The plain AMQP port.
    pub amqp_port: u16,
    /// The TLS AMQP port.
    pub amqps_port: u16,
    /// The CA that signed the TLS listener's certificate (for `ca_file`).
    pub ca_file: PathBuf,
    env: Vec<(String, String)>,
    /// Kept for the node's lifetime (the reaper removes nothing: the OS temp dir does).
    _dir: PathBuf,
}

static BROKER: OnceLock<Broker> = OnceLock::new();

/// Where Debian keeps the real scripts: the `/usr/sbin` wrappers switch to the `rabbitmq`
/// user when run as root, dropping the environment that makes this node private.
fn script(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Broker {
    /// The node of this test binary, started on first use with `users` (username, password)
    /// besides [`PUBLISHER`]. Later calls return the same node (their `users` must be a
    /// subset: pass the same list everywhere).
    pub fn start(users: &[(String, String)]) -> &'static Broker {
        BROKER.get_or_init(|| Broker::launch(users))
    }

    fn launch(users: &[(String, String)]) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("iotrules-rabbitmq-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let (amqp_port, amqps_port) = (free_port(), free_port());
        let ca_file = TestCa::generate().write(&dir);
        let mut all_users = vec![(PUBLISHER.0.to_owned(), PUBLISHER.1.to_owned())];
        all_users.extend(users.iter().cloned());
        std::fs::write(dir.join("definitions.json"), definitions(&all_users)).expect("write");
        let config = format!(
            "listeners.tcp.default = {amqp_port}\n\
             listeners.ssl.default = {amqps_port}\n\
             ssl_options.cacertfile = {dir}/ca.pem\n\
             ssl_options.certfile = {dir}/server.pem\n\
             ssl_options.keyfile = {dir}/server.key\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             loopback_users = none\n\
             default_vhost = {VHOST}\n\
             amqp1_0.default_vhost = {VHOST}\n\
             definitions.import_backend = local_filesystem\n\
             definitions.local.path = {dir}/definitions.json\n\
             log.console = false\n\
             log.file.level = warning\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("rabbitmq.conf"), config).expect("write config");
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_amqp1_0].\n").expect("write");
        let node = format!("iotrules-{}@localhost", std::process::id());
        let epmd_port = free_port();
        let path = |name: &str| dir.join(name).display().to_string();
        let env: Vec<(String, String)> = [
            ("HOME", dir.display().to_string()),
            ("RABBITMQ_NODENAME", node),
            ("RABBITMQ_DIST_PORT", free_port().to_string()),
            ("ERL_EPMD_PORT", epmd_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_PID_FILE", path("rabbitmq.pid")),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let broker = Broker {
            amqp_port,
            amqps_port,
            ca_file,
            env,
            _dir: dir.clone(),
        };
        broker.start_reaper();
        let started = broker
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("run rabbitmq-server (scripts/test installs it)");
        assert!(started.success(), "rabbitmq-server -detached failed");
        broker.ctl(&["wait", &path("rabbitmq.pid")]);
        broker
    }

    fn command(&self, script_name: &str) -> Command {
        let mut command = Command::new(script(script_name));
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self._dir)
            .stdin(Stdio::null());
        command
    }

    fn env(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// Stops the node and its epmd once this process is gone: `tail --pid` waits for it,
    /// `rabbitmqctl stop PIDFILE` for the node to be gone (epmd refuses to die while a node is
    /// registered), in a session of its own so that a Ctrl-C to the tests does not take the reaper along.
    fn start_reaper(&self) {
        let script = format!(
            "tail --pid={pid} -f /dev/null; \"{ctl}\" -q stop \"{pidfile}\" >/dev/null 2>&1; \
             epmd -port {epmd} -kill >/dev/null 2>&1",
            pid = std::process::id(),
            ctl = script("rabbitmqctl").display(),
            pidfile = self.env("RABBITMQ_PID_FILE"),
            epmd = self.env("ERL_EPMD_PORT"),
        );
        // `setsid -f` forks the reaper off and returns at once.
        let started = self
            .command("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the reaper (setsid, tail)");
        assert!(started.success(), "cannot start the reaper");
    }

    /// Runs `rabbitmqctl ARGS` on this node and returns its output; panics when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = self
            .command("rabbitmqctl")
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// `amqp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.amqp_port)
    }

    /// `amqps://localhost:PORT` (the server certificate names `localhost`).
    pub fn tls_url(&self) -> String {
        format!("amqps://localhost:{}", self.amqps_port)
    }

    /// A queue's ready and unacknowledged message counts; (0, 0) for a queue that does not
    /// exist.
    pub fn queue_counts(&self, queue: &str) -> (u64, u64) {
        let listed = self.ctl(&[
            "-q",
            "list_queues",
            "-p",
            VHOST,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        for line in listed.lines() {
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if let [name, ready, unacked] = fields[..]
                && name == queue
            {
                return (ready.parse().unwrap_or(0), unacked.parse().unwrap_or(0));
            }
        }
        (0, 0)
    }

    /// Sends `messages` (body, application properties) to queue `queue` as [`PUBLISHER`],
    /// and returns once the broker accepted each.
    pub async fn publish(&self, queue: &str, messages: Vec<Outgoing>) {
        let container = format!("iotrules-test-publisher-{queue}");
        let mut publisher = Publisher::open(self, &container, "publisher", queue).await;
        publisher.send(messages).await;
        publisher.close().await;
    }

    /// Waits up to 30 s until `queue` holds `ready` ready and `unacked` unacknowledged
    /// messages.
    pub fn wait_for_counts(&self, queue: &str, ready: u64, unacked: u64) {
        wait_within(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || self.queue_counts(queue) == (ready, unacked),
            || {
                format!(
                    "queue {queue}: (ready, unacked) = {:?}, expected ({ready}, {unacked})",
                    self.queue_counts(queue)
                )
            },
        );
    }
}

/// Users (with their permissions on [`VHOST`]) and the vhost, in RabbitMQ's definitions
/// format; passwords as `rabbit_password_hashing_sha256` hashes (salt, then
/// SHA-256(salt + password), base64).
fn definitions(users: &[(String, String)]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let users_json: Vec<serde_json::Value> = users
        .iter()
        .enumerate()
        .map(|(n, (name, password))| {
            let salt = (n as u32).wrapping_mul(2_654_435_761).to_be_bytes();
            let mut hasher = sha2::Sha256::new();
            hasher.update(salt);
            hasher.update(password.as_bytes());
            let mut hash = salt.to_vec();
            hash.extend_from_slice(&hasher.finalize());
            serde_json::json!({
                "name": name,
                "password_hash": base64::engine::general_purpose::STANDARD.encode(hash),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            })
        })
        .collect();
    let permissions: Vec<serde_json::Value> = users
        .iter()
        .map(|(name, _)| {
            serde_json::json!({
                "user": name, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*",
            })
        })
        .collect();
    serde_json::json!({
        "users": users_json,
        "vhosts": [{ "name": VHOST }],
        "permissions": permissions,
    })
    .to_string()
}

/// An AMQP 1.0 sender to one queue, logged in as [`PUBLISHER`], open until closed.
pub struct Publisher {
    connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    session: fe2o3_amqp::session::SessionHandle<()>,
    sender: Sender,
}

impl Publisher {
    /// Connects to `broker` as container `container` and attaches the sender `name` to
    /// `queue` (which declares the queue).
    pub async fn open(broker: &Broker, container: &str, name: &str, queue: &str) -> Publisher {
        let url = format!(
            "amqp://{}:{}@127.0.0.1:{}",
            PUBLISHER.0, PUBLISHER.1, broker.amqp_port
        );
        let mut connection = Connection::builder()
            .container_id(container)
            .hostname(format!("vhost:{VHOST}").as_str())
            .open(url.as_str())
            .await
            .expect("the publisher connects");
        let mut session = Session::begin(&mut connection).await.expect("session");
        let sender = Sender::attach(&mut session, name, format!("/queue/{queue}"))
            .await
            .expect("attach the publisher");
        Publisher {
            connection,
            session,
            sender,
        }
    }

    /// Sends `messages` (body, application properties) and returns once the broker accepted
    /// each. They go back to back, the outcomes awaited after (thousands of messages take
    /// milliseconds, not a round trip each).
    pub async fn send<K: Into<String>>(&mut self, messages: Vec<Outgoing<K>>) {
        let mut outcomes = Vec::with_capacity(messages.len());
        for (body, properties) in messages {
            let mut application = ApplicationProperties::builder();
            for (key, value) in properties {
                application = application.insert(key, SimpleValue::String(value));
            }
            let message = Message::builder()
                .application_properties(application.build())
                .data(Binary::from(body))
                .build();
            outcomes.push(self.sender.send_batchable(message).await.expect("send"));
        }
        for outcome in outcomes {
            let outcome = outcome.await.expect("outcome");
            outcome.accepted_or("not accepted").expect("accepted");
        }
    }

    /// Says goodbye: the link, the session, the connection. How the broker takes the
    /// goodbyes does not matter once every message is accepted, and they must not hang the
    /// caller, so this gives up after 5 s. (fe2o3-amqp 0.18's session engine can wait for a
    /// remote `end` that never comes once its links are gone: a bench hung here.)
    pub async fn close(mut self) {
        let goodbyes = async {
            let _ = self.sender.close().await;
            let _ = self.session.end().await;
            let _ = self.connection.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), goodbyes).await;
    }
}

/// A TCP relay in front of the broker whose connections a test can cut, as a network (or a
/// broker restart) would: the broker sees the client go and puts back what was unsettled;
/// the client sees its connection lost. Only the connections through it are affected, so
/// tests sharing the node do not disturb each other.
pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    /// Relays 127.0.0.1:`port` (any free port) to the broker's 127.0.0.1:`target`, from
    /// `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle, target: u16) -> Proxy {
        Self::start_with(runtime, target, None)
    }

    /// Like [`Proxy::start`], and on the way from the broker to the client it damages every
    /// AMQP string whose text is `marker` (str8 or str32) into a list of the same size:
    /// the frames stay whole, the message in them no longer decodes. A message the client
    /// cannot read, as a buggy producer or a broker conversion would make it.
    pub fn start_corrupting(
        runtime: &tokio::runtime::Handle,
        target: u16,
        marker: &'static str,
    ) -> Proxy {
        Self::start_with(runtime, target, Some(marker))
    }

    fn start_with(
        runtime: &tokio::runtime::Handle,
        target: u16,
        marker: Option<&'static str>,
    ) -> Proxy {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        runtime.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let relayed = async {
                        match marker {
                            None => {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                            }
                            Some(marker) => {
                                let (mut from_client, mut to_client) = client.split();
                                let (mut from_broker, mut to_broker) = broker.split();
                                tokio::select! {
                                    _ = tokio::io::copy(&mut from_client, &mut to_broker) => {}
                                    _ = corrupt(&mut from_broker, &mut to_client, marker) => {}
                                }
                            }
                        }
                    };
                    tokio::select! {
                        () = relayed => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { port, cut }
    }

    /// `amqp://127.0.0.1:PORT` through the proxy.
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    /// Closes every connection relayed so far; new ones are relayed as before.
    pub fn cut(&self) {
        self.cut.send_modify(|cuts| *cuts += 1);
    }
}

/// Copies `from` to `to` frame by frame, turning each AMQP str8/str32 encoding of `marker`
/// into a list8 / list32 constructor (same length, so the frames stay whole).
async fn corrupt(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    marker: &str,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let text = marker.as_bytes();
    let length = u8::try_from(text.len()).expect("a short marker");
    let str8: Vec<u8> = [&[0xa1, length][..], text].concat();
    let str32: Vec<u8> = [&[0xb1, 0, 0, 0, length][..], text].concat();
    loop {
        let mut head = [0u8; 4];
        from.read_exact(&mut head).await?;
        let mut frame = head.to_vec();
        if &head == b"AMQP" {
            // A protocol header: 4 more bytes, no frame.
            let mut rest = [0u8; 4];
            from.read_exact(&mut rest).await?;
            frame.extend_from_slice(&rest);
        } else {
            let size = u32::from_be_bytes(head) as usize;
            frame.resize(size.max(4), 0);
            from.read_exact(&mut frame[4..]).await?;
            for (pattern, list) in [(&str8, 0xc0u8), (&str32, 0xd0u8)] {
                let mut at = 0;
                while let Some(found) = frame[at..]
                    .windows(pattern.len())
                    .position(|w| w == pattern.as_slice())
                {
                    frame[at + found] = list;
                    at += found + 1;
                }
            }
        }
        to.write_all(&frame).await?;
    }
}
