//! The `alibaba-amqp` and `huawei-amqp` connectors against a real RabbitMQ (3.10, AMQP 1.0
//! plugin), inside the real service: vendor bodies arrive as their events, a TLS connection
//! through a generated CA, a refused login reported while the other connectors keep working,
//! no loss and nothing acknowledged before processing across dropped connections, garbage
//! dead-lettered and accepted.
//!
//! The broker knows the exact usernames and passwords the connectors derive at the pinned
//! clock [`NOW`]; every test has queues of its own on the one node of this binary.

use iotrules::config::Config;
use iotrules::connector::amqp::AmqpSettings;
use iotrules::status::ConnectorState;
use iotrules_tests::http::Webhook;
use iotrules_tests::pipeline::huawei_body;
use iotrules_tests::rabbitmq::{Broker, Outgoing, Proxy};
use iotrules_tests::service::TestService;
use iotrules_tests::{ECHO_RULE, runtime, wait_for};

/// The pinned clock: the timestamp in every username and Alibaba password.
const NOW: u64 = 1_700_000_000_000;

const ALIBABA_SECRET: &str = "alibaba-test-secret";
const HUAWEI_CODE: &str = "huawei-test-access-code";

/// An `alibaba-amqp` connector reading `queue` (Alibaba ignores the source; RabbitMQ needs
/// it) at `url`, with `extra` settings.
fn alibaba(name: &str, url: &str, queue: &str, secret: &str, extra: &str) -> String {
    format!(
        r#"
[[connector]]
name = "{name}"
kind = "alibaba-amqp"
url = "{url}"
access_key_id = "LTAItest"
access_key_secret = "{secret}"
consumer_group = "test-group"
client_id = "iotrules-test"
source = "{queue}"
{extra}
"#
    )
}

fn huawei(name: &str, url: &str) -> String {
    format!(
        r#"
[[connector]]
name = "{name}"
kind = "huawei-amqp"
url = "{url}"
access_key = "hw-access-key"
access_code = "{HUAWEI_CODE}"
instance_id = "hw-instance"
"#
    )
}

/// The usernames and passwords every connector of these tests derives at [`NOW`]: one and
/// four Alibaba connections, and Huawei.
fn users() -> Vec<(String, String)> {
    let text = [
        alibaba("one", "amqp://x:1", "q", ALIBABA_SECRET, ""),
        alibaba("four", "amqp://x:1", "q", ALIBABA_SECRET, "connections = 4"),
        huawei("hw", "amqp://x:1"),
    ]
    .concat();
    let config = Config::parse(std::path::Path::new("users.toml"), &text).expect("config");
    let mut users = Vec::new();
    for connector in &config.connectors {
        let settings = AmqpSettings::from_config(connector).expect("settings");
        for login in &settings.logins {
            users.push((login.username(NOW), login.password(NOW)));
        }
    }
    users.dedup();
    users
}

fn broker() -> &'static Broker {
    Broker::start(&users())
}

/// An Alibaba property report of device `a1Pk/lamp` with property `seq`.
fn alibaba_property(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"iotId":"iot-lamp","requestId":"{seq}","productKey":"a1Pk","deviceName":"lamp","gmtCreate":1700000000000,"deviceType":"Light","items":{{"seq":{{"value":{seq},"time":1700000000000}}}},"checkFailedData":{{}}}}"#
    )
    .into_bytes()
}

/// Alibaba's application properties: topic, message id, generate time.
fn alibaba_properties(topic: &str, message_id: &str) -> Vec<(String, String)> {
    vec![
        ("topic".into(), topic.into()),
        ("messageId".into(), message_id.into()),
        ("generateTime".into(), "1700000000999".into()),
    ]
}

const PROPERTY_TOPIC: &str = "/a1Pk/lamp/thing/event/property/post";

/// An Alibaba property report with property `seq`, as message `message_id`.
fn property_message(seq: u64, message_id: &str) -> Outgoing {
    (
        alibaba_property(seq),
        alibaba_properties(PROPERTY_TOPIC, message_id),
    )
}

/// Property reports `1..=count`, message ids `{prefix}{seq}`.
fn numbered(count: u64, prefix: &str) -> Vec<Outgoing> {
    (1..=count)
        .map(|seq| property_message(seq, &format!("{prefix}{seq}")))
        .collect()
}

/// A command as the webhook got it: device id, name, `seq` param.
type Sent = (String, String, Option<u64>);

/// The service, running on its own runtime with the pinned clock, its commands going to a
/// webhook.
struct Service {
    running: TestService,
    webhook: Webhook,
}

impl std::ops::Deref for Service {
    type Target = TestService;

    fn deref(&self) -> &TestService {
        &self.running
    }
}

impl Service {
    /// Starts the service with `connectors` (TOML), the rules `rules` over the `echo`
    /// plugin, and the command path `out` to a webhook that is `open` or holds every answer.
    fn start(connectors: &str, rules: &str, open: bool) -> Service {
        let runtime = runtime();
        let webhook = Webhook::start(runtime.handle(), open);
        let settings = format!(
            r#"{connectors}
[[command_path]]
name = "out"
kind = "webhook"
url = "http://{}/"
timeout_ms = 60000
"#,
            webhook.address
        );
        let running =
            TestService::start(runtime, &[("echo", "testing/echo")], rules, &settings, NOW);
        Service { running, webhook }
    }

    /// Waits for the command of the one good message, and the dead letter of the bad one.
    fn wait_command_and_dead_letter(&self) {
        wait_for("the good message's command", || self.commands().len() == 1);
        wait_for("the dead letter", || self.dead_letters() == 1);
    }

    /// The commands the webhook got so far.
    fn commands(&self) -> Vec<Sent> {
        self.webhook
            .seen()
            .into_iter()
            .map(|c| (c.device, c.name, c.seq))
            .collect()
    }

    fn stop(self) {
        self.running.stop();
    }
}

/// The service with one `alibaba-amqp` connector `ali` reading `queue` at `url`, and the echo
/// rule.
fn echo_alibaba(url: &str, queue: &str) -> Service {
    Service::start(
        &alibaba("ali", url, queue, ALIBABA_SECRET, ""),
        ECHO_RULE,
        true,
    )
}

fn publish(broker: &Broker, queue: &str, messages: Vec<Outgoing>) {
    runtime().block_on(broker.publish(queue, messages));
}

#[test]
fn alibaba_property_status_and_lifecycle_bodies_arrive_as_their_events() {
    let broker = broker();
    let queue = "alibaba-bodies";
    // One rule per kind, each also checking what the transport carried: the topic and
    // message id as attributes.
    let rules = r#"
[[rule]]
name = "properties"
when = { source = "ali", vendor = "alibaba", kind = "properties" }
if = 'event.attributes["message-id"] == "m-property" && event.attributes.topic == "/a1Pk/lamp/thing/event/property/post"'
commands.via = "out"
[[rule.step]]
plugin = "echo"
config = { command = "properties" }

[[rule]]
name = "online"
when = { source = "ali", kind = "online" }
if = 'event.attributes["message-id"] == "m-status"'
commands.via = "out"
[[rule.step]]
plugin = "echo"
config = { command = "online" }

[[rule]]
name = "lifecycle"
when = { source = "ali", kind = "lifecycle", action = "create" }
if = 'event.attributes["message-id"] == "m-lifecycle"'
commands.via = "out"
[[rule.step]]
plugin = "echo"
config = { command = "lifecycle" }
"#;
    let status = r#"{"status":"online","iotId":"iot-lamp","productKey":"a1Pk","deviceName":"lamp","time":"2023-11-14 22:13:20.000","utcTime":"2023-11-14T22:13:20.000Z","lastTime":"2023-11-14 22:13:19.000","utcLastTime":"2023-11-14T22:13:19.000Z","clientIp":"10.0.0.7"}"#;
    let lifecycle = r#"{"action":"create","iotId":"iot-lamp","productKey":"a1Pk","deviceName":"lamp","deviceSecret":"","messageCreateTime":1700000000000}"#;
    publish(
        broker,
        queue,
        vec![
            property_message(7, "m-property"),
            (
                status.as_bytes().to_vec(),
                alibaba_properties("/as/mqtt/status/a1Pk/lamp", "m-status"),
            ),
            (
                lifecycle.as_bytes().to_vec(),
                alibaba_properties("/a1Pk/lamp/thing/lifecycle", "m-lifecycle"),
            ),
        ],
    );
    let service = Service::start(
        &alibaba("ali", &broker.url(), queue, ALIBABA_SECRET, ""),
        rules,
        true,
    );
    wait_for("three commands", || service.commands().len() == 3);
    let mut commands = service.commands();
    commands.sort();
    let device = "a1Pk.lamp".to_owned();
    assert_eq!(
        commands,
        vec![
            (device.clone(), "lifecycle".into(), None),
            (device.clone(), "online".into(), None),
            (device, "properties".into(), Some(7)),
        ]
    );
    broker.wait_for_counts(queue, 0, 0);
    // /status shows the username the connector logged in with, and no secret.
    let status = service.connector("ali");
    assert_eq!(status.state, ConnectorState::Running);
    let username = status
        .identity
        .iter()
        .find(|(k, _)| k == "username")
        .map(|(_, v)| v.clone());
    assert_eq!(
        username.as_deref(),
        Some(
            "iotrules-test|authMode=aksign,signMethod=hmacsha256,timestamp=1700000000000,\
             authId=LTAItest,iotInstanceId=,consumerGroupId=test-group|"
        )
    );
    assert!(!format!("{:?}", status.identity).contains(ALIBABA_SECRET));
    service.stop();
}

#[test]
fn huawei_push_bodies_arrive_as_property_events_from_the_default_queue() {
    let broker = broker();
    // The connector's source is Huawei's `DefaultQueue`, in the vhost its open frame names.
    let queue = "DefaultQueue";
    let bodies = (1..=10)
        .map(|seq| (huawei_body("hw-dev", seq).into_bytes(), Vec::new()))
        .collect();
    publish(broker, queue, bodies);
    let rules = r#"
[[rule]]
name = "huawei"
when = { source = "hw", vendor = "huawei", kind = "properties" }
commands.via = "out"
[[rule.step]]
plugin = "echo"
"#;
    let service = Service::start(&huawei("hw", &broker.url()), rules, true);
    wait_for("ten commands", || service.commands().len() == 10);
    let mut seqs: Vec<u64> = service
        .commands()
        .into_iter()
        .map(|(device, _, seq)| {
            assert_eq!(device, "hw-dev");
            seq.expect("seq")
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    broker.wait_for_counts(queue, 0, 0);
    service.stop();
}

#[test]
fn a_tls_connection_through_the_configured_ca_file_receives() {
    let broker = broker();
    let queue = "alibaba-tls";
    publish(broker, queue, vec![property_message(1, "m-tls")]);
    let ca = format!("ca_file = \"{}\"", broker.ca_file.display());
    let service = Service::start(
        &alibaba("ali-tls", &broker.tls_url(), queue, ALIBABA_SECRET, &ca),
        ECHO_RULE,
        true,
    );
    wait_for("the command", || service.commands().len() == 1);
    assert_eq!(service.commands()[0].2, Some(1));
    broker.wait_for_counts(queue, 0, 0);
    service.stop();
}

#[test]
fn a_refused_login_is_reported_with_its_username_while_the_other_connector_runs() {
    let broker = broker();
    let queue = "alibaba-good";
    publish(broker, queue, vec![property_message(5, "m-good")]);
    let connectors = [
        alibaba("ali-bad", &broker.url(), "alibaba-bad", "wrong-secret", ""),
        alibaba("ali-good", &broker.url(), queue, ALIBABA_SECRET, ""),
    ]
    .concat();
    let service = Service::start(&connectors, ECHO_RULE, true);
    wait_for("the good connector's command", || {
        service.commands().len() == 1
    });
    wait_for("the bad connector's error", || {
        service.connector("ali-bad").error.is_some()
    });
    let bad = service.connector("ali-bad");
    assert_eq!(bad.state, ConnectorState::Reconnecting);
    let error = bad.error.unwrap_or_default();
    assert!(
        error.contains("refused the login of username \"iotrules-test|authMode=aksign,"),
        "{error}"
    );
    assert!(!error.contains("wrong-secret"), "{error}");
    let recent = service.observed.errors.recent();
    assert!(
        recent
            .iter()
            .any(|e| e.place == "connector \"ali-bad\"" && e.message.contains("refused")),
        "{recent:#?}"
    );
    assert_eq!(service.connector("ali-good").state, ConnectorState::Running);
    service.stop();
}

#[test]
fn a_dropped_connection_loses_nothing_and_nothing_is_acked_before_processing() {
    let broker = broker();
    let queue = "alibaba-numbered";
    const MESSAGES: u64 = 1_000;
    const CREDIT: u64 = 20;
    publish(broker, queue, numbered(MESSAGES, "m-"));
    // The command path holds every confirmation: the connector takes no more than its
    // credit, and the broker still holds every message, none settled.
    let proxy_runtime = runtime();
    let proxy = Proxy::start(proxy_runtime.handle(), broker.amqp_port);
    let service = Service::start(
        &alibaba(
            "ali",
            &proxy.url(),
            queue,
            ALIBABA_SECRET,
            &format!("credit = {CREDIT}"),
        ),
        ECHO_RULE,
        false,
    );
    wait_for("commands waiting at the gate", || {
        !service.commands().is_empty()
    });
    broker.wait_for_counts(queue, MESSAGES - CREDIT, CREDIT);

    // Drop the connection with those messages in flight; the connector reconnects.
    proxy.cut();
    wait_for("the reconnect", || {
        service.observed.metrics.connects.with(&["ali", "ok"]).get() >= 2
    });
    service.wait_running("ali");
    service.webhook.open(true);
    broker.wait_for_counts(queue, 0, 0);
    wait_for("every message processed", || {
        service.commands().len() >= MESSAGES as usize
    });
    let mut seqs: Vec<u64> = service
        .commands()
        .into_iter()
        .filter_map(|(_, _, seq)| seq)
        .collect();
    seqs.sort_unstable();
    // At least once, and the redeliveries of what was in flight were taken for the
    // duplicates they are (their message id was seen).
    assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>());
    let duplicates = service
        .observed
        .metrics
        .events_dropped
        .with(&["ali", "duplicate"])
        .get();
    assert!(duplicates >= 1, "no redelivery was suppressed");
    service.stop();
}

#[test]
fn garbage_is_dead_lettered_and_accepted() {
    let broker = broker();
    let queue = "alibaba-garbage";
    publish(
        broker,
        queue,
        vec![
            (
                b"{\"items\": 7".to_vec(),
                alibaba_properties(PROPERTY_TOPIC, "m-garbage"),
            ),
            property_message(2, "m-2"),
        ],
    );
    let service = echo_alibaba(&broker.url(), queue);
    service.wait_command_and_dead_letter();
    broker.wait_for_counts(queue, 0, 0);
    service.stop();
}

#[test]
fn a_message_the_client_cannot_decode_is_rejected_and_dead_lettered_without_a_reconnect() {
    let broker = broker();
    let queue = "alibaba-undecodable";
    const MARKER: &str = "undecodable-application-property";
    let mut damaged = alibaba_properties(PROPERTY_TOPIC, "m-damaged");
    damaged.push(("note".into(), MARKER.into()));
    publish(
        broker,
        queue,
        vec![(alibaba_property(1), damaged), property_message(2, "m-2")],
    );
    let proxy_runtime = runtime();
    let proxy = Proxy::start_corrupting(proxy_runtime.handle(), broker.amqp_port, MARKER);
    let service = echo_alibaba(&proxy.url(), queue);
    service.wait_command_and_dead_letter();
    // Settled (rejected) and gone from the queue, not redelivered after a reconnect.
    broker.wait_for_counts(queue, 0, 0);
    let letters = service
        .observed
        .metrics
        .dead_letters
        .with(&["ali", "amqp"])
        .get();
    assert_eq!(letters, 1, "a dead letter of kind amqp");
    assert_eq!(
        service.observed.metrics.connects.with(&["ali", "ok"]).get(),
        1,
        "the connector reconnected"
    );
    assert_eq!(service.connector("ali").state, ConnectorState::Running);
    service.stop();
}

#[test]
fn four_connections_share_a_queue_and_process_every_message() {
    let broker = broker();
    let queue = "alibaba-four";
    const MESSAGES: u64 = 200;
    publish(broker, queue, numbered(MESSAGES, "m4-"));
    let service = Service::start(
        &alibaba(
            "four",
            &broker.url(),
            queue,
            ALIBABA_SECRET,
            "connections = 4\ncredit = 5",
        ),
        ECHO_RULE,
        true,
    );
    wait_for("every command", || {
        service.commands().len() == MESSAGES as usize
    });
    broker.wait_for_counts(queue, 0, 0);
    assert_eq!(
        service
            .observed
            .metrics
            .connects
            .with(&["four", "ok"])
            .get(),
        4,
        "{:#?}",
        service.observed.errors.recent()
    );
    service.stop();
}
