//! The `tuya-pulsar` and `tuya-business` connectors against the test broker
//! (`iotrules_tests::pulsar_broker`), inside the real service: Tuya-sealed messages in, the
//! echo rule's commands out through a webhook that records them, acknowledgements observed
//! at the broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use iotrules::admin::Observed;
use iotrules::dialect::tuya::{self, Env, Mode};
use iotrules::plan::Plan;
use iotrules::plugin::MemoryStateStore;
use iotrules::status::ConnectorState;
use iotrules::store::MemoryDeadLetters;
use iotrules_tests::http::Webhook;
use iotrules_tests::pulsar_broker::{BrokerConfig, MessageId, PulsarBroker, TestCa};
use iotrules_tests::service::{CONFIG_HEAD, Spawned, lay_out, spawn};
use iotrules_tests::{ECHO_RULE, wait_until};
use tokio::sync::watch;

const ACCESS_ID: &str = "p7test4accessid";
const ACCESS_KEY: &str = "kx3mq9ta0123456789abcdefzz77";
const BUSINESS_ID: &str = "b2business4id";
const BUSINESS_KEY: &str = "bizkey00fedcba9876543210yy88";

fn keys(id: &str, key: &str) -> tuya::Keys {
    tuya::Keys::new(id, key).expect("keys")
}

fn broker_config(keys: &tuya::Keys, tls: Option<Arc<TestCa>>) -> BrokerConfig {
    BrokerConfig {
        username: keys.access_id().to_owned(),
        password: keys.pulsar_password(),
        topic: keys.topic(Env::Prod),
        partitions: 2,
        tls,
    }
}

/// A protocol 4 status report of `device` with the integer property `seq`.
fn status_body(device: &str, seq: u64) -> String {
    format!(
        r#"{{"dataId":"data-{seq}","devId":"{device}","productKey":"pk1","status":[{{"code":"seq","value":{seq},"t":1700000000000,"1":"{seq}"}}]}}"#
    )
}

/// A Smart Business `dp_report` of `device` with the property `seq`.
fn business_body(device: &str, seq: u64) -> String {
    format!(
        r#"{{"bizCode":"device","eventType":"dp_report","data":{{"devId":"{device}","productId":"pk2","dataId":"biz-{seq}","namespace":"ns","status":[{{"code":"seq","value":{seq},"time":1700000000000}}]}}}}"#
    )
}

/// Seals a status report of `device`/`seq` as Tuya's IoT Core would, with its properties.
fn sealed(
    keys: &tuya::Keys,
    device: &str,
    seq: u64,
    mode: Mode,
) -> (String, Vec<(&'static str, String)>) {
    let (payload, em) = keys.seal_iot_core(
        4,
        1_700_000_000_000 + seq,
        status_body(device, seq).as_bytes(),
        mode,
        [7; 12],
    );
    (
        payload,
        vec![("em", em.to_owned()), ("tid", format!("trace-{seq}"))],
    )
}

/// Publishes a status report of `device`/`seq` sealed with `keys` in `mode` (see [`sealed`]).
fn publish_sealed(
    broker: &PulsarBroker,
    keys: &tuya::Keys,
    device: &str,
    seq: u64,
    mode: Mode,
) -> MessageId {
    let (payload, properties) = sealed(keys, device, seq, mode);
    publish(broker, &payload, &properties)
}

fn publish(
    broker: &PulsarBroker,
    payload: &str,
    properties: &[(&'static str, String)],
) -> MessageId {
    let properties: Vec<(&str, &str)> = properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
    broker.publish(None, payload.as_bytes(), &properties)
}

/// The webhook the `out` command path posts to, on this test's runtime: records each
/// command and answers 200 while `open`.
fn webhook(open: bool) -> Webhook {
    Webhook::start(&tokio::runtime::Handle::current(), open)
}

/// The service, running in this test's runtime.
struct Service {
    _dir: tempfile::TempDir,
    observed: Arc<Observed>,
    dead_letters: Arc<MemoryDeadLetters>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Service {
    /// Starts the service with `connectors` (TOML `[[connector]]` tables) and the echo rule
    /// sending to `webhook`.
    async fn start(connectors: &str, webhook: &Webhook) -> Self {
        let dir = tempfile::tempdir().unwrap();
        lay_out(dir.path(), &[("echo", "testing/echo")], ECHO_RULE);
        let file = dir.path().join("iotrules.toml");
        let text = format!(
            r#"{CONFIG_HEAD}
[pipeline]
workers = 2
shutdown_timeout_s = 5

{connectors}

[[command_path]]
name = "out"
kind = "webhook"
url = "http://{}/commands"
"#,
            webhook.address
        );
        std::fs::write(&file, &text).unwrap();
        let plan = Plan::parse(&file, &text).expect("config");
        let dead_letters = Arc::new(MemoryDeadLetters::default());
        let Spawned {
            stop,
            started,
            task,
        } = spawn(
            &tokio::runtime::Handle::current(),
            plan,
            dead_letters.clone(),
            Arc::new(MemoryStateStore::default()),
        );
        let observed = started.await.expect("the service started");
        Service {
            _dir: dir,
            observed,
            dead_letters,
            stop,
            task,
        }
    }

    fn connector(&self, name: &str) -> iotrules::status::ConnectorStatus {
        self.observed
            .connectors
            .all()
            .into_iter()
            .find(|c| c.name == name)
            .expect("connector listed")
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the service stops")
            .expect("the service task")
        {
            panic!("the service failed: {e}");
        }
    }
}

fn connector_toml(name: &str, kind: &str, id: &str, key: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[connector]]
name = "{name}"
kind = "{kind}"
access_id = "{id}"
access_key = "{key}"
url = "{url}"
stall_timeout_s = 2
{extra}
"#
    )
}

/// The Tuya keys, the test broker for them, the webhook (`open` or holding every answer),
/// and the service reading the broker through one `tuya-pulsar` connector named `tuya` with
/// `extra` settings.
async fn one_connector(extra: &str, open: bool) -> (tuya::Keys, PulsarBroker, Webhook, Service) {
    let keys = keys(ACCESS_ID, ACCESS_KEY);
    let broker = PulsarBroker::start(broker_config(&keys, None)).await;
    let webhook = webhook(open);
    let connectors = connector_toml(
        "tuya",
        "tuya-pulsar",
        ACCESS_ID,
        ACCESS_KEY,
        &broker.url(),
        extra,
    );
    let service = Service::start(&connectors, &webhook).await;
    (keys, broker, webhook, service)
}

/// The envelope of `payload` with the first hex digit of its `sign` changed.
fn tamper_sign(payload: &str) -> String {
    let sign_at = payload.find("\"sign\":\"").expect("sign") + 8;
    let mut tampered = payload.to_owned();
    let flipped = if &payload[sign_at..sign_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(sign_at..sign_at + 1, flipped);
    tampered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecb_gcm_and_business_messages_arrive_as_their_events_over_tls_and_plain_tcp() {
    let tuya_keys = keys(ACCESS_ID, ACCESS_KEY);
    let business_keys = keys(BUSINESS_ID, BUSINESS_KEY);
    let ca = Arc::new(TestCa::generate());
    let tuya_broker = PulsarBroker::start(broker_config(&tuya_keys, Some(ca.clone()))).await;
    let business_broker = PulsarBroker::start(broker_config(&business_keys, None)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let webhook = webhook(true);
    let connectors = connector_toml(
        "tuya",
        "tuya-pulsar",
        ACCESS_ID,
        ACCESS_KEY,
        &tuya_broker.url(),
        &format!("ca_file = \"{}\"", ca_file.display()),
    ) + &connector_toml(
        "business",
        "tuya-business",
        BUSINESS_ID,
        BUSINESS_KEY,
        &business_broker.url(),
        "",
    );
    let service = Service::start(&connectors, &webhook).await;

    let ids = [
        publish_sealed(&tuya_broker, &tuya_keys, "lamp-ecb", 1, Mode::Ecb),
        publish_sealed(&tuya_broker, &tuya_keys, "lamp-gcm", 2, Mode::Gcm),
    ];
    let business =
        business_keys.seal_business(1_700_000_000_003, business_body("desk-biz", 3).as_bytes());
    let business_id = publish(&business_broker, &business, &[]);

    wait_until("three commands and their acks", || {
        webhook.seen().len() == 3
            && ids.iter().all(|id| tuya_broker.is_acked(*id))
            && business_broker.is_acked(business_id)
    })
    .await;
    let mut seen: Vec<(String, Option<u64>)> = webhook
        .seen()
        .into_iter()
        .map(|s| (s.device, s.seq))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("desk-biz".to_owned(), Some(3)),
            ("lamp-ecb".to_owned(), Some(1)),
            ("lamp-gcm".to_owned(), Some(2)),
        ]
    );
    assert!(service.dead_letters.letters().is_empty());
    assert_eq!(service.connector("tuya").state, ConnectorState::Running);
    assert_eq!(service.connector("business").state, ConnectorState::Running);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_with_a_clear_error_while_another_connector_delivers() {
    let tuya_keys = keys(ACCESS_ID, ACCESS_KEY);
    let broker = PulsarBroker::start(broker_config(&tuya_keys, None)).await;
    let webhook = webhook(true);
    let wrong_key = "wrongkey0123456789abcdef0000";
    let connectors = connector_toml(
        "bad",
        "tuya-pulsar",
        ACCESS_ID,
        wrong_key,
        &broker.url(),
        "",
    ) + &connector_toml(
        "good",
        "tuya-pulsar",
        ACCESS_ID,
        ACCESS_KEY,
        &broker.url(),
        "",
    );
    let service = Service::start(&connectors, &webhook).await;

    let id = publish_sealed(&broker, &tuya_keys, "lamp", 1, Mode::Gcm);
    wait_until("the good connector's delivery", || broker.is_acked(id)).await;
    assert_eq!(webhook.seen().len(), 1);

    let expected = format!(
        "authentication refused by the broker: check access_id/access_key; username {ACCESS_ID}"
    );
    wait_until("the bad connector to report the refusal", || {
        let bad = service.connector("bad");
        bad.state == ConnectorState::Reconnecting
            && bad.error.as_deref().is_some_and(|e| e.contains(&expected))
    })
    .await;
    assert!(broker.refused() >= 1);
    assert!(
        service
            .observed
            .errors
            .recent()
            .iter()
            .any(|e| e.place == "connector \"bad\"" && e.message.contains(&expected)),
        "{:?}",
        service.observed.errors.recent()
    );
    // The key never shows in what the service reports.
    let status = format!("{:?}", service.observed.connectors.all());
    assert!(!status.contains(wrong_key) && !status.contains(ACCESS_KEY));
    assert_eq!(service.connector("good").state, ConnectorState::Running);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_is_lost_or_acked_before_processing_when_the_broker_restarts_mid_stream() {
    const COUNT: u64 = 1000;
    let (tuya_keys, broker, webhook, service) = one_connector("", true).await;

    let mut ids: HashMap<MessageId, u64> = HashMap::new();
    for seq in 1..=COUNT {
        let mode = if seq % 2 == 0 { Mode::Gcm } else { Mode::Ecb };
        let id = publish_sealed(&broker, &tuya_keys, &format!("dev-{}", seq % 5), seq, mode);
        ids.insert(id, seq);
    }
    wait_until("a third of the messages acked", || {
        broker.acked_count() >= COUNT as usize / 3
    })
    .await;
    broker.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart().await;
    wait_until("every message acked", || {
        broker.acked_count() == COUNT as usize
    })
    .await;
    assert!(
        broker.subscribes() > 2,
        "the consumer was rebuilt and subscribed again"
    );

    // Every message was processed (its command sent) before its first ack.
    let seen = webhook.seen();
    let mut first_seen: HashMap<u64, u64> = HashMap::new();
    let mut times: HashMap<u64, usize> = HashMap::new();
    for s in &seen {
        let seq = s.seq.expect("seq echoed");
        first_seen.entry(seq).or_insert(s.at);
        *times.entry(seq).or_default() += 1;
    }
    assert_eq!(first_seen.len(), COUNT as usize, "every message processed");
    let mut first_ack: HashMap<MessageId, u64> = HashMap::new();
    for ack in broker.acks() {
        first_ack.entry(ack.id).or_insert(ack.at);
    }
    for (id, seq) in &ids {
        let acked = first_ack[id];
        let processed = first_seen[seq];
        assert!(
            processed < acked,
            "message {seq} acked before its command was sent"
        );
    }
    // Redeliveries of processed messages are recognised by their event id and not run again.
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    assert_eq!(service.connector("tuya").state, ConnectorState::Running);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_signature_and_a_garbage_payload_become_dead_letters_and_are_acked() {
    let (tuya_keys, broker, webhook, service) = one_connector("sign = \"enforce\"", true).await;

    let (payload, properties) = sealed(&tuya_keys, "lamp", 1, Mode::Ecb);
    let bad_sign = publish(&broker, &tamper_sign(&payload), &properties);
    let garbage = broker.publish(None, b"\x00\x01 not json".to_vec(), &[("em", "aes_gcm")]);
    let good = publish_sealed(&broker, &tuya_keys, "lamp", 2, Mode::Gcm);

    wait_until("all three acked", || {
        [bad_sign, garbage, good]
            .iter()
            .all(|id| broker.is_acked(*id))
    })
    .await;
    let letters = service.dead_letters.letters();
    let mut kinds: Vec<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds.len(), 2, "{letters:?}");
    assert!(kinds.contains(&"signature"), "{kinds:?}");
    let garbage_letter = letters.iter().find(|l| l.kind != "signature").unwrap();
    assert_eq!(garbage_letter.payload, b"\x00\x01 not json");
    assert!(
        garbage_letter
            .properties
            .contains(&("em".to_owned(), "aes_gcm".to_owned())),
        "the letter keeps the transport properties"
    );
    let seen: Vec<Option<u64>> = webhook.seen().iter().map(|s| s.seq).collect();
    assert_eq!(seen, [Some(2)]);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_signature_mismatch_is_processed_marked_counted_and_shown_in_status() {
    let (tuya_keys, broker, webhook, service) = one_connector("", true).await;
    let status = || iotrules::admin::status_json(&service.observed)["connectors"][0].clone();
    assert_eq!(status()["signature"]["mode"], "warn");
    assert_eq!(status()["signature"]["mismatches"], 0);
    assert!(status()["signature"].get("warning").is_none());

    let (payload, properties) = sealed(&tuya_keys, "lamp", 1, Mode::Ecb);
    let bad_sign = publish(&broker, &tamper_sign(&payload), &properties);
    let good = publish_sealed(&broker, &tuya_keys, "lamp", 2, Mode::Gcm);
    wait_until("both acked", || {
        broker.is_acked(bad_sign) && broker.is_acked(good)
    })
    .await;

    assert!(service.dead_letters.letters().is_empty());
    let mut seen: Vec<Option<u64>> = webhook.seen().iter().map(|s| s.seq).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [Some(1), Some(2)],
        "the mismatching message was processed"
    );
    let metrics = &service.observed.metrics;
    assert_eq!(metrics.signature_mismatches.with(&["tuya"]).get(), 1);
    assert!(
        metrics
            .render()
            .contains("iotrules_signature_mismatches_total{connector=\"tuya\"} 1"),
        "{}",
        metrics.render()
    );
    let signature = status()["signature"].clone();
    assert_eq!(signature["mismatches"], 1, "{signature}");
    let warning = signature["warning"].as_str().expect("a warning");
    assert!(warning.contains("sign = \"enforce\""), "{warning}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_connection_goes_silent_is_rebuilt_and_gets_what_was_pending() {
    let (tuya_keys, broker, webhook, service) = one_connector("", true).await;

    let first = publish_sealed(&broker, &tuya_keys, "lamp", 1, Mode::Gcm);
    wait_until("the first message acked", || broker.is_acked(first)).await;
    let subscribed = broker.subscribes();

    // The connection stays open and says nothing more: no messages, no PONGs.
    broker.mute_connections();
    let second = publish_sealed(&broker, &tuya_keys, "lamp", 2, Mode::Gcm);
    wait_until("the second message acked on a rebuilt consumer", || {
        broker.is_acked(second)
    })
    .await;
    assert!(broker.subscribes() > subscribed);
    let seen: Vec<Option<u64>> = webhook.seen().iter().map(|s| s.seq).collect();
    assert_eq!(seen, [Some(1), Some(2)]);
    let errors = service.observed.errors.recent();
    assert!(
        errors.iter().any(|e| e.place == "connector \"tuya\""
            && (e.message.contains("no answer") || e.message.contains("no message for"))),
        "{errors:?}"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_holds_no_more_of_a_connector_s_messages_than_its_byte_budget() {
    const COUNT: u64 = 300;
    const BUDGET: usize = 8 * 1024;
    let HeldBack {
        broker,
        webhook,
        service,
        smallest,
    } = held_back(COUNT, BUDGET).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight = service.observed.metrics.in_flight.get() as usize;
    assert!(
        in_flight <= BUDGET / smallest + 1,
        "{in_flight} messages of at least {smallest} bytes in flight with a budget of {BUDGET}"
    );
    assert_eq!(broker.acked_count(), 0);
    webhook.open(true);
    wait_until("every message acked", || {
        broker.acked_count() == COUNT as usize
    })
    .await;
    let seqs: std::collections::BTreeSet<u64> =
        webhook.seen().iter().filter_map(|s| s.seq).collect();
    assert_eq!(seqs.len(), COUNT as usize, "every message processed");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_held_back_by_a_full_pipeline_keeps_its_session() {
    const COUNT: u64 = 300;
    // `stall_timeout_s = 2` (connector_toml): a check every 0.5 s, a ping answered within 1 s.
    let HeldBack {
        broker,
        webhook,
        service,
        ..
    } = held_back(COUNT, 8 * 1024).await;
    let subscribed = broker.subscribes();
    // Four stall timeouts and eight checks with the connector holding back: the consumer
    // engine is blocked on its full queue meanwhile, and cannot answer a ping.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        broker.subscribes(),
        subscribed,
        "the session was rebuilt while the pipeline held the connector back: {:?}",
        service.observed.errors.recent()
    );
    webhook.open(true);
    wait_until("every message acked", || {
        broker.acked_count() == COUNT as usize
    })
    .await;
    assert_eq!(
        broker.subscribes(),
        subscribed,
        "no rebuild once released either"
    );
    service.stop().await;
}

/// A Tuya connector with a byte budget on a broker holding `count` messages for five
/// devices, while the webhook holds every command: events stay in flight until the budget is
/// full and the connector holds the rest back. Returned once the budget is full.
struct HeldBack {
    broker: PulsarBroker,
    webhook: Webhook,
    service: Service,
    /// The smallest message's size.
    smallest: usize,
}

async fn held_back(count: u64, budget: usize) -> HeldBack {
    let (tuya_keys, broker, webhook, service) =
        one_connector(&format!("buffer_bytes = {budget}"), false).await;
    let mut smallest = usize::MAX;
    for seq in 1..=count {
        let (payload, properties) = sealed(&tuya_keys, &format!("dev-{}", seq % 5), seq, Mode::Ecb);
        smallest = smallest.min(payload.len());
        publish(&broker, &payload, &properties);
    }
    let full = service.observed.metrics.buffer_full.with(&["tuya"]);
    wait_until("the budget full", || full.get() > 0).await;
    HeldBack {
        broker,
        webhook,
        service,
        smallest,
    }
}
