//! The bodies of the fuzz targets: one function per decoder of untrusted input, each taking
//! arbitrary bytes and feeding them to the public API the service uses on them.
//!
//! One copy for two users: the libFuzzer binaries (`fuzz/fuzz_targets/*.rs`, nightly) and
//! the stable smoke test `host/tests/fuzz_smoke.rs`, which includes this file by path and
//! runs every target over the committed seeds (`fuzz/seeds/<target>/`) and their mutations.
//! So this file uses only crates both have: `iotrules` and the host's own dependencies.
//!
//! A target passes when nothing panics. Where a text format needs more than one part (a
//! topic and a body, a template, an encryption property), the input's first lines are the
//! parts and the rest is the body, so that seeds stay readable and the fuzzer can change
//! either.
//!
//! Beyond "no panic", each target checks what the service relies on downstream: a decoded
//! event's payload is JSON (plugins and the dead-letter store parse it) and the event and
//! any error can be written out (logs, `/status`, dead letters).

use std::path::Path;
use std::sync::LazyLock;

use bytes::BytesMut;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp::types::primitives::Value;
use iotrules::dialect::json::TopicTemplate;
use iotrules::dialect::tuya::{self, Mode};
use iotrules::dialect::{DecodeError, Dialect, RawMessage, SignMode, alibaba, huawei};
use iotrules::event::{Event, Json};
use iotrules::plan::Plan;
use iotrules::rules::RuleSet;
use rumqttc::mqttbytes::v4::Packet;

/// A target: arbitrary bytes in, a panic when it finds a bug.
pub type Target = fn(&[u8]);

/// Every target by name, as the smoke test runs them.
pub const TARGETS: &[(&str, Target)] = &[
    ("tuya_envelope", tuya_envelope),
    ("tuya_body", tuya_body),
    ("alibaba", alibaba),
    ("huawei", huawei),
    ("json", json),
    ("rules", rules),
    ("config", config),
    ("amqp_message", amqp_message),
    ("mqtt_publish", mqtt_publish),
];

/// The access key of the IoT Core test vectors (`/work/shared/vectors/tuya_pulsar.json`), so
/// that their messages verify and decrypt as seeds.
const TUYA_ACCESS_KEY: &str = "1yBMWXaSCrUZoL8g5ubbbPIa84yRnBUb";
/// The access key of the Smart Business test vectors (`tuya_business.json`).
const TUYA_BUSINESS_KEY: &str = "hbtyvAYmqgq5UGn9MB0bobzjcU9kCTGR";

fn tuya_keys(key: &str) -> tuya::Keys {
    tuya::Keys::new("fuzzAccessId", key).expect("a 32-character key is long enough")
}

/// Decoders are built once: their keys are fixed, and building is not what is tested.
static TUYA: LazyLock<tuya::Decoder> =
    LazyLock::new(|| tuya::Decoder::new(tuya_keys(TUYA_ACCESS_KEY), SignMode::Warn));
static TUYA_ENFORCE: LazyLock<tuya::Decoder> =
    LazyLock::new(|| tuya::Decoder::new(tuya_keys(TUYA_ACCESS_KEY), SignMode::Enforce));
static TUYA_BUSINESS: LazyLock<tuya::BusinessDecoder> =
    LazyLock::new(|| tuya::BusinessDecoder::new(tuya_keys(TUYA_BUSINESS_KEY), SignMode::Warn));

/// Splits off the first line (without its `\n`); all of `data` when there is none.
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn property(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}

/// What the pipeline relies on in a decode result: an event's payload is one well-formed
/// JSON value (what [`Json`] promises; checked as `Json::from_text` checks it), and the
/// event and the error serialize and print.
///
/// Well-formed, not representable: a JSON number beyond `f64` (`1e400`) is valid JSON and is
/// kept verbatim, though `serde_json::Value` cannot hold it.
fn check(result: Result<Event, DecodeError>) {
    match result {
        Ok(event) => {
            if let Err(e) = Json::from_text(event.payload.as_str().to_owned()) {
                panic!("the event payload is not JSON ({e}): {event:?}");
            }
            serde_json::to_string(&event).expect("an event serializes");
        }
        Err(error) => {
            let _ = (error.kind(), error.to_string());
        }
    }
}

/// Tuya message service envelopes, as received: the first line is the Pulsar property `em`
/// (empty: absent), the rest the payload. Decoded as IoT Core (sign warn, so that a payload
/// the fuzzer altered still reaches decryption; and enforce) and as Smart Business.
pub fn tuya_envelope(data: &[u8]) {
    let (em, payload) = line(data);
    let mut properties = vec![property("tid", "fuzz-trace")];
    if !em.is_empty() {
        properties.push(property("em", &text(em)));
    }
    let message = RawMessage::new("fuzz", payload).with_properties(&properties);
    check(TUYA.decode(&message));
    check(TUYA_ENFORCE.decode(&message));
    check(TUYA_BUSINESS.decode(&message));
}

/// Tuya bodies after decryption, where the fuzzer cannot get by itself: the first line is the
/// IoT Core `protocol` (a number; anything else means 4), the rest the body, sealed with the
/// test key exactly as Tuya seals it (ECB and GCM), then decoded; and sealed as a Smart
/// Business envelope.
pub fn tuya_body(data: &[u8]) {
    let (protocol, body) = line(data);
    let protocol = std::str::from_utf8(protocol)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(4);
    let keys = tuya_keys(TUYA_ACCESS_KEY);
    for mode in [Mode::Ecb, Mode::Gcm] {
        let (payload, em) = keys.seal_iot_core(protocol, 1_700_000_000_000, body, mode, [7; 12]);
        let properties = [property("em", em)];
        let message = RawMessage::new("fuzz", payload.as_bytes()).with_properties(&properties);
        check(TUYA_ENFORCE.decode(&message));
    }
    let keys = tuya_keys(TUYA_BUSINESS_KEY);
    let payload = keys.seal_business(1_700_000_000_000, body);
    check(TUYA_BUSINESS.decode(&RawMessage::new("fuzz", payload.as_bytes())));
}

/// Alibaba bodies: the first line is the topic, the rest the body. Decoded as an AMQP
/// subscription delivers them (with `messageId` and `generateTime`), as a device MQTT link
/// delivers them (the topic only), and as a subscription with `encode=base64`.
pub fn alibaba(data: &[u8]) {
    let (topic, body) = line(data);
    let topic = text(topic);
    let amqp = [
        property("topic", &topic),
        property("messageId", "1234567890123456789"),
        property("generateTime", "1700000000000"),
    ];
    let mqtt = [property("topic", &topic)];
    let plain = alibaba::Decoder::new(false);
    check(plain.decode(&RawMessage::new("fuzz", body).with_properties(&amqp)));
    check(plain.decode(&RawMessage::new("fuzz", body).with_properties(&mqtt)));
    let base64 = alibaba::Decoder::new(true);
    check(base64.decode(&RawMessage::new("fuzz", body).with_properties(&amqp)));
}

/// Huawei bodies: the first line is the topic (empty: none, an AMQP push), the rest the body.
pub fn huawei(data: &[u8]) {
    let (topic, body) = line(data);
    let properties = if topic.is_empty() {
        Vec::new()
    } else {
        vec![property("topic", &text(topic))]
    };
    check(
        huawei::Decoder::new().decode(&RawMessage::new("fuzz", body).with_properties(&properties)),
    );
}

/// The generic JSON dialect: the first line is the connector's `device_topic` template, the
/// second the topic, the rest the payload.
pub fn json(data: &[u8]) {
    let (template, rest) = line(data);
    let (topic, payload) = line(rest);
    let Ok(template) = TopicTemplate::parse(&text(template)) else {
        return;
    };
    let properties = [property("topic", &text(topic))];
    let decoder = iotrules::dialect::json::Decoder::new(template);
    check(decoder.decode(&RawMessage::new("fuzz", payload).with_properties(&properties)));
}

/// An event for rule conditions to evaluate: properties of every type, a nested payload.
static EVENT: LazyLock<Event> = LazyLock::new(|| {
    let template = TopicTemplate::parse("home/{device}/#").expect("a valid template");
    let properties = [property("topic", "home/lamp-1/state")];
    let payload = br#"{"temp":21.5,"on":true,"level":3,"name":"lamp","color":{"x":0.3,"y":[1,2]},"none":null}"#;
    iotrules::dialect::json::Decoder::new(template)
        .decode(&RawMessage::new("fuzz", payload).with_properties(&properties))
        .expect("the fixed event decodes")
});

/// A rule file: parsed and checked as the loader does (format, names, globs, `if`
/// expressions), without plugins; a file that loads is then evaluated on an event, as
/// every worker does with every event.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RuleSet::parse([(Path::new("/fuzz/rules/fuzz.toml"), text)]) {
        Ok(set) => {
            for result in set.evaluate(&EVENT) {
                if let Err(error) = result {
                    let _ = error.to_string();
                }
            }
        }
        Err(errors) => {
            for error in errors {
                let _ = error.to_string();
            }
        }
    }
}

/// The service configuration: parsed, checked and planned (every connector and command path
/// read by its kind); a plan then gives what the service derives at start-up (each
/// connector's dialect and identity, the files no grant may reach).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Plan::parse(Path::new("/fuzz/iotrules.toml"), text) {
        Ok(plan) => {
            let _ = plan.command_path_names();
            let _ = plan.grant_policy();
            for connector in &plan.connectors {
                let _ = connector.dialect.name();
                let _ = connector.connector.identity(1_700_000_000_000);
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

/// An AMQP 1.0 message as it arrives in a transfer: decoded by fe2o3-amqp as the receiver
/// does, turned into the connector's delivery (body bytes and text properties), then decoded
/// by the two AMQP dialects.
pub fn amqp_message(data: &[u8]) {
    let reader = serde_amqp::read::SliceReader::new(data);
    let Ok(message) = Body::<Value>::decode_message_from_reader(reader) else {
        return;
    };
    let (payload, properties) = iotrules::connector::amqp::message_parts(message);
    let message = RawMessage::new("fuzz", &payload).with_properties(&properties);
    check(Dialect::Alibaba(alibaba::Decoder::new(false)).decode(&message));
    check(Dialect::Huawei(huawei::Decoder::new()).decode(&message));
}

/// MQTT 3.1.1 packets as a device link reads them from the broker: a publish becomes the
/// connector's delivery (payload and topic), then is decoded by the dialects an MQTT link
/// can have.
pub fn mqtt_publish(data: &[u8]) {
    let mut buffer = BytesMut::from(data);
    // The link reads packet after packet from one buffer.
    while let Ok(packet) = Packet::read(&mut buffer, iotrules::connector::mqtt::MAX_PACKET) {
        if buffer.len() == data.len() {
            break;
        }
        let Packet::Publish(publish) = packet else {
            continue;
        };
        let (payload, properties) = iotrules::connector::mqtt::publish_parts(publish);
        let message = RawMessage::new("fuzz", &payload).with_properties(&properties);
        check(alibaba::Decoder::new(false).decode(&message));
        check(huawei::Decoder::new().decode(&message));
        static JSON: LazyLock<iotrules::dialect::json::Decoder> = LazyLock::new(|| {
            let template = TopicTemplate::parse("+/{device}/#").expect("a valid template");
            iotrules::dialect::json::Decoder::new(template)
        });
        check(JSON.decode(&message));
    }
}
