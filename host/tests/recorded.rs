//! The recorded demo streams in `examples/recorded/` decode as their story says: every line
//! parses in the replay format, every message decodes with its vendor's dialect except the
//! tampered Tuya one, the duplicate deliveries share an event id, and the devices and values
//! are the ones the demo rules act on. What the rules then do is `tests/tests/recorded_rules.rs`.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use iotrules::dialect::tuya::{self, Keys};
use iotrules::dialect::{DecodeError, Dialect, ErrorKind, RawMessage, SignMode, alibaba, huawei};
use iotrules::event::{Event, Kind, Value};

/// The published demo project the Tuya recordings are sealed with (not from the environment:
/// these are fixed test data).
const DEMO_ACCESS_ID: &str = "demoaccessid0000iotr";
const DEMO_ACCESS_KEY: &str = "DEMOkey-iotrules-0000-not-a-real-secret";

fn recorded_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/recorded")
}

/// One recorded delivery: where it is, its transport properties and its body.
struct Recorded {
    line: usize,
    properties: Vec<(String, String)>,
    payload: Vec<u8>,
}

/// Reads a recording in the replay format: one JSON object per line with optional
/// `properties` (strings) and exactly one of `payload` (text) or `payload_base64`; blank
/// lines and `#` lines skipped. Anything else fails the test, naming the line.
fn read(file: &str) -> Vec<Recorded> {
    let path = recorded_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = format!("{file}:{line_no}");
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(trimmed)
            .unwrap_or_else(|e| panic!("{at}: not a JSON object: {e}"));
        for key in object.keys() {
            assert!(
                ["properties", "payload", "payload_base64"].contains(&key.as_str()),
                "{at}: unknown key `{key}`"
            );
        }
        let properties = match object.get("properties") {
            None => Vec::new(),
            Some(serde_json::Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k.clone(), s.clone()),
                    other => panic!("{at}: property `{k}` is {other}, not a string"),
                })
                .collect(),
            Some(other) => panic!("{at}: `properties` is {other}, not an object"),
        };
        let payload = match (object.get("payload"), object.get("payload_base64")) {
            (Some(serde_json::Value::String(text)), None) => text.as_bytes().to_vec(),
            (None, Some(serde_json::Value::String(encoded))) => BASE64
                .decode(encoded)
                .unwrap_or_else(|e| panic!("{at}: `payload_base64` is not base64: {e}")),
            _ => panic!("{at}: needs exactly one of `payload` or `payload_base64`, as a string"),
        };
        out.push(Recorded {
            line: line_no,
            properties,
            payload,
        });
    }
    out
}

fn decode_all(file: &str, dialect: &Dialect) -> Vec<(Recorded, Result<Event, DecodeError>)> {
    read(file)
        .into_iter()
        .map(|recorded| {
            let message =
                RawMessage::new("replay", &recorded.payload).with_properties(&recorded.properties);
            let result = dialect.decode(&message);
            (recorded, result)
        })
        .collect()
}

fn tuya_dialect() -> Dialect {
    let keys = Keys::new(DEMO_ACCESS_ID, DEMO_ACCESS_KEY).expect("the demo key is long enough");
    Dialect::Tuya(tuya::Decoder::new(keys, SignMode::Enforce))
}

/// What a recorded message must decode to.
enum Expect {
    /// An event about `device` of `kind`, carrying at least these property values.
    Event(&'static str, Kind, Vec<(&'static str, Value)>),
    /// A refusal of this kind.
    Refused(ErrorKind),
}

fn event(device: &'static str, kind: Kind, values: &[(&'static str, Value)]) -> Expect {
    Expect::Event(device, kind, values.to_vec())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// Checks each decoded message against its expectation, and returns the events' ids in order
/// (`None` for a refusal).
fn check(
    file: &str,
    decoded: &[(Recorded, Result<Event, DecodeError>)],
    expected: &[Expect],
) -> Vec<Option<String>> {
    assert_eq!(decoded.len(), expected.len(), "{file}: number of messages");
    decoded
        .iter()
        .zip(expected)
        .map(|((recorded, result), expect)| {
            let at = format!("{file}:{}", recorded.line);
            match (result, expect) {
                (Ok(event), Expect::Event(device, kind, values)) => {
                    assert_eq!(event.device.id, *device, "{at}: device");
                    assert_eq!(event.kind, *kind, "{at}: kind");
                    for (code, value) in values {
                        assert_eq!(
                            event.property(code).map(|p| &p.value),
                            Some(value),
                            "{at}: property `{code}`"
                        );
                    }
                    Some(event.id.clone())
                }
                (Err(error), Expect::Refused(kind)) => {
                    assert_eq!(error.kind(), *kind, "{at}: {error}");
                    None
                }
                (Ok(event), Expect::Refused(kind)) => {
                    panic!("{at}: decoded to {event:?}, expected a {kind} error")
                }
                (Err(error), Expect::Event(..)) => panic!("{at}: refused: {error}"),
            }
        })
        .collect()
}

/// The positions of ids that repeat an earlier one.
fn repeats(ids: &[Option<String>]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .enumerate()
        .filter(|(_, id)| id.as_ref().is_some_and(|id| !seen.insert(id.clone())))
        .map(|(i, _)| i)
        .collect()
}

const PIR: &str = "vdevo-hallway-pir";
const LAMP: &str = "vdevo-hallway-lamp";
const THERMOSTAT: &str = "a1DemoPk.thermostat-1";
const METER: &str = "demo_product_meter-1";

#[test]
fn tuya_stream_decodes_except_the_tampered_message_and_repeats_one_event_id() {
    let decoded = decode_all("tuya.jsonl", &tuya_dialect());
    let p = Kind::Properties;
    let expected = [
        event(LAMP, p, &[("switch_led", Value::Boolean(false))]),
        event(PIR, Kind::Online, &[]),
        event(PIR, p, &[("pir", text("pir"))]),
        event(LAMP, p, &[("switch_led", Value::Boolean(true))]),
        event(PIR, p, &[("pir", text("none"))]),
        event(LAMP, p, &[("switch_led", Value::Boolean(false))]),
        event(PIR, p, &[("pir", text("pir"))]),
        Expect::Refused(ErrorKind::Signature),
        event(
            "vdevo-kitchen-socket",
            p,
            &[("switch_1", Value::Boolean(true))],
        ),
        event(LAMP, p, &[("switch_led", Value::Boolean(true))]),
        event(PIR, p, &[("pir", text("pir"))]),
        event(PIR, p, &[("pir", text("none"))]),
    ];
    let ids = check("tuya.jsonl", &decoded, &expected);

    // The redelivery is the 18:01:00 presence report byte for byte, properties included.
    assert_eq!(repeats(&ids), [6]);
    assert_eq!(ids[6].as_deref(), Some("rec-tuya-03"));
    assert_eq!(ids[2], ids[6]);
    assert_eq!(decoded[2].0.payload, decoded[6].0.payload);
    assert_eq!(decoded[2].0.properties, decoded[6].0.properties);

    // Both ciphers are in the stream, and what decodes was verified, not waved through.
    let em = |i: usize| decoded[i].0.properties.clone();
    assert_eq!(em(0), []);
    assert_eq!(em(2), [("em".to_owned(), "aes_gcm".to_owned())]);
    for (recorded, result) in &decoded {
        if let Ok(event) = result {
            assert_eq!(
                event.attribute("signature"),
                Some("verified"),
                "tuya.jsonl:{}",
                recorded.line
            );
        }
    }
}

#[test]
fn tampered_tuya_message_decodes_once_its_signature_is_not_checked() {
    // Only the signature is wrong: the content is an intact presence report, which is what
    // makes the refusal (not a decryption failure) the thing under test.
    let keys = Keys::new(DEMO_ACCESS_ID, DEMO_ACCESS_KEY).expect("demo key");
    let lenient = Dialect::Tuya(tuya::Decoder::new(keys, SignMode::Warn));
    let decoded = decode_all("tuya.jsonl", &lenient);
    let event = decoded[7].1.as_ref().expect("decodes in warn mode");
    assert_eq!(event.id, "rec-tuya-08");
    assert_eq!(event.attribute("signature"), Some("mismatch"));
    assert_eq!(event.property("pir").map(|p| &p.value), Some(&text("pir")));
}

#[test]
fn alibaba_stream_decodes_and_repeats_one_message_id() {
    let decoded = decode_all(
        "alibaba.jsonl",
        &Dialect::Alibaba(alibaba::Decoder::new(false)),
    );
    let p = Kind::Properties;
    let temperature = |t: f64| ("CurrentTemperature", Value::Float(t));
    let expected = [
        event(THERMOSTAT, Kind::Online, &[]),
        event(THERMOSTAT, p, &[temperature(21.0)]),
        event(THERMOSTAT, p, &[temperature(21.3)]),
        event(THERMOSTAT, p, &[temperature(21.5)]),
        event(THERMOSTAT, p, &[temperature(21.8)]),
        event(THERMOSTAT, p, &[("PowerSwitch", Value::Integer(0))]),
        event(THERMOSTAT, p, &[temperature(21.4)]),
        event(THERMOSTAT, p, &[temperature(21.2)]),
        event(THERMOSTAT, p, &[temperature(21.8)]),
        event("a1OtherPk.humidifier-1", p, &[temperature(22.0)]),
        event(THERMOSTAT, Kind::Offline, &[]),
    ];
    let ids = check("alibaba.jsonl", &decoded, &expected);
    assert_eq!(repeats(&ids), [8]);
    assert_eq!(ids[8].as_deref(), Some("1992400000000000005"));
    assert_eq!(ids[4], ids[8]);

    // The reading without a temperature is what the thermostat rule's `if` leaves out.
    let Ok(switch_only) = &decoded[5].1 else {
        panic!("decoded above")
    };
    assert!(switch_only.property("CurrentTemperature").is_none());
    // The thermostat is addressed by product and name, which the rule's `product` matches.
    let Ok(first) = &decoded[1].1 else {
        panic!("decoded above")
    };
    assert_eq!(first.device.product.as_deref(), Some("a1DemoPk"));
    assert_eq!(first.device.name.as_deref(), Some("thermostat-1"));
}

#[test]
fn huawei_stream_decodes_with_unique_request_ids() {
    let decoded = decode_all("huawei.jsonl", &Dialect::Huawei(huawei::Decoder::new()));
    let power = |w: f64| ("power_w", Value::Float(w));
    let p = Kind::Properties;
    let expected = [
        event(METER, Kind::Online, &[]),
        event(METER, p, &[power(640.5)]),
        event(METER, p, &[power(980.0)]),
        event(METER, p, &[power(1210.5)]),
        event(METER, p, &[power(1235.0)]),
        event(METER, p, &[power(1320.0)]),
        event(METER, p, &[power(1340.5)]),
        event(METER, p, &[power(1295.0)]),
        event(METER, p, &[power(905.0)]),
        event(
            "other_product_climate-1",
            p,
            &[("temperature", Value::Float(19.5))],
        ),
    ];
    let ids = check("huawei.jsonl", &decoded, &expected);
    assert_eq!(repeats(&ids), Vec::<usize>::new());

    // The meter rule's `if` looks for `power_w` in the `Energy` service.
    for (recorded, result) in &decoded[1..9] {
        let Ok(event) = result else {
            panic!("decoded above")
        };
        let power = event.property("power_w").expect("a power reading");
        assert_eq!(
            power.service.as_deref(),
            Some("Energy"),
            "huawei.jsonl:{}",
            recorded.line
        );
    }
}
