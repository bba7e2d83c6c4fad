//! Writes the recorded demo streams in `examples/recorded/`: one JSON-lines file per vendor
//! for the `replay` connector, together a ten-minute evening in which every rule of
//! `rules/demo.toml` acts, plus the deliveries a pipeline must refuse or de-duplicate.
//! `examples/recorded/README.md` tells the story line by line with the expected outcomes.
//!
//! Run from the repository root: `cargo run -p iotrules --example record_demo_streams`.
//! The output is deterministic (fixed nonces, ids and times), so re-running it changes nothing.
//!
//! Each line is `{"properties": {...}, "payload": "..."}` or, for a body recorded as bytes,
//! `{"properties": {...}, "payload_base64": "..."}`; `#` lines say what the next message is
//! and what should become of it. The Tuya messages are really encrypted and signed with the
//! published demo key below; Alibaba and Huawei AMQP bodies are neither, as those clouds send
//! them. The Alibaba bodies are recorded as base64 bytes, as an AMQP transfer carries them,
//! so the recordings use both payload forms.

use std::path::Path;

use iotrules::dialect::base64_encode;
use iotrules::dialect::tuya::{Keys, Mode};
use iotrules::time::Utc;
use serde::Serialize;
use serde::ser::Serializer;

/// The demo project's credentials. Not a real Tuya project: safe to publish.
const DEMO_ACCESS_ID: &str = "demoaccessid0000iotr";
const DEMO_ACCESS_KEY: &str = "DEMOkey-iotrules-0000-not-a-real-secret";

/// 2025-11-23T18:00:00Z, when the story starts, in Unix ms.
const START_MS: u64 = 1_763_920_800_000;

/// Beijing time, which Alibaba's status messages use for their non-UTC `time` fields.
const BEIJING_OFFSET_MS: u64 = 8 * 3_600_000;

/// The story's time `seconds` after it starts, in Unix ms.
fn at(seconds: u64) -> u64 {
    START_MS + seconds * 1000
}

/// `18:01:30`: how the comments name a moment of the story.
fn clock(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    format!("{:02}:{:02}:{:02}", t.hour, t.minute, t.second)
}

/// One line of a recording.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(skip_serializing_if = "Properties::is_empty")]
    properties: Properties<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

/// Transport properties, written as a JSON object in the order given (as a transport lists
/// them), not sorted.
struct Properties<'a>(&'a [(&'a str, String)]);

impl Properties<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A JSON-lines recording being written.
struct Recording {
    text: String,
}

impl Recording {
    /// A recording that starts with `header` as comment lines.
    fn new(header: &str) -> Self {
        let mut recording = Recording {
            text: String::new(),
        };
        recording.comment(header);
        recording
    }

    /// Comment lines: `# ` before each line of `text`.
    fn comment(&mut self, text: &str) {
        for line in text.lines() {
            self.text.push_str("# ");
            self.text.push_str(line);
            self.text.push('\n');
        }
    }

    /// A message received as UTF-8 text, preceded by a comment saying what it is.
    fn text(&mut self, comment: &str, properties: &[(&str, String)], payload: &str) {
        self.line(
            comment,
            &Line {
                properties: Properties(properties),
                payload: Some(payload),
                payload_base64: None,
            },
        );
    }

    /// A message received as bytes, preceded by a comment saying what it is.
    fn bytes(&mut self, comment: &str, properties: &[(&str, String)], payload: &[u8]) {
        self.line(
            comment,
            &Line {
                properties: Properties(properties),
                payload: None,
                payload_base64: Some(base64_encode(payload)),
            },
        );
    }

    fn line(&mut self, comment: &str, line: &Line<'_>) {
        self.comment(comment);
        // Serializing strings and a map of strings cannot fail.
        let json = serde_json::to_string(line).expect("a recorded line serializes");
        self.text.push_str(&json);
        self.text.push('\n');
    }

    fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.text)
    }
}

fn main() -> std::io::Result<()> {
    let dir = Path::new("examples/recorded");
    std::fs::create_dir_all(dir)?;
    let keys = Keys::new(DEMO_ACCESS_ID, DEMO_ACCESS_KEY).expect("the demo key is 24+ characters");
    tuya(&keys).write(&dir.join("tuya.jsonl"))?;
    alibaba().write(&dir.join("alibaba.jsonl"))?;
    huawei().write(&dir.join("huawei.jsonl"))?;
    println!("wrote the recorded demo streams to {}", dir.display());
    Ok(())
}

// --- Tuya: the hallway PIR and lamp (rule `hallway-motion-light`) -----------------------

const LAMP: &str = "vdevo-hallway-lamp";
const LAMP_PRODUCT: &str = "keyLamp01";
const PIR: &str = "vdevo-hallway-pir";
const PIR_PRODUCT: &str = "keyPir001";
const SOCKET: &str = "vdevo-kitchen-socket";
const SOCKET_PRODUCT: &str = "keySocket1";

/// How long after the device's datapoint time the cloud stamps the envelope.
const TUYA_CLOUD_DELAY_MS: u64 = 150;

/// A protocol 4 status body. Each datapoint is `(dp id, code, value as JSON)`; Tuya repeats
/// the value as text under the dp id.
fn tuya_status(
    data_id: &str,
    dev_id: &str,
    product: &str,
    t: u64,
    dps: &[(&str, &str, &str)],
) -> String {
    let status: Vec<String> = dps
        .iter()
        .map(|(dp, code, value)| {
            let as_text = value.trim_matches('"');
            format!(r#"{{"code":"{code}","value":{value},"t":{t},"{dp}":"{as_text}"}}"#)
        })
        .collect();
    format!(
        r#"{{"dataId":"{data_id}","devId":"{dev_id}","productKey":"{product}","status":[{}]}}"#,
        status.join(",")
    )
}

/// Seals a body sent at device time `t`: ECB with no properties (no `em` means ECB), or GCM
/// with `em=aes_gcm` and the given nonce.
fn seal(
    keys: &Keys,
    protocol: u64,
    t: u64,
    body: &str,
    gcm_nonce: Option<&[u8; 12]>,
) -> (String, Vec<(&'static str, String)>) {
    let envelope_t = t + TUYA_CLOUD_DELAY_MS;
    match gcm_nonce {
        None => {
            let (payload, _) =
                keys.seal_iot_core(protocol, envelope_t, body.as_bytes(), Mode::Ecb, [0; 12]);
            (payload, Vec::new())
        }
        Some(nonce) => {
            let (payload, em) =
                keys.seal_iot_core(protocol, envelope_t, body.as_bytes(), Mode::Gcm, *nonce);
            (payload, vec![("em", em.to_owned())])
        }
    }
}

fn tuya(keys: &Keys) -> Recording {
    let mut r = Recording::new(
        "Tuya message service (Pulsar), protocol 4 status reports and a protocol 20 event,\n\
         sealed with the demo key. Lines without `em` are AES-ECB, `em=aes_gcm` AES-GCM.\n\
         Dialect `tuya`, access id demoaccessid0000iotr, key DEMOkey-iotrules-0000-not-a-real-secret.\n\
         Written by `cargo run -p iotrules --example record_demo_streams`; see README.md.",
    );
    let lamp = |data_id: &str, t: u64, on: bool| {
        tuya_status(
            data_id,
            LAMP,
            LAMP_PRODUCT,
            t,
            &[
                ("1", "switch_led", if on { "true" } else { "false" }),
                ("3", "bright_value_v2", "764"),
            ],
        )
    };
    let pir = |data_id: &str, t: u64, state: &str, battery: u32| {
        tuya_status(
            data_id,
            PIR,
            PIR_PRODUCT,
            t,
            &[
                ("1", "pir", &format!("\"{state}\"")),
                ("4", "battery_percentage", &battery.to_string()),
            ],
        )
    };

    let t = at(0);
    let (payload, props) = seal(keys, 4, t, &lamp("rec-tuya-01", t, false), None);
    r.text(
        &format!(
            "{} lamp reports off (ECB) → motion-light notes it, no command",
            clock(t)
        ),
        &props,
        &payload,
    );

    let t = at(5);
    let online = format!(
        r#"{{"bizCode":"online","bizData":{{"time":{t},"uid":"demo-user"}},"devId":"{PIR}","productKey":"{PIR_PRODUCT}","ts":{t},"uuid":"demo-uuid-pir"}}"#
    );
    let (payload, props) = seal(keys, 20, t, &online, Some(b"rec-nonce-02"));
    r.text(
        &format!(
            "{} PIR comes online (protocol 20, GCM) → kind online: no rule takes it",
            clock(t)
        ),
        &props,
        &payload,
    );

    let t = at(60);
    let (presence, presence_props) = seal(
        keys,
        4,
        t,
        &pir("rec-tuya-03", t, "pir", 86),
        Some(b"rec-nonce-03"),
    );
    r.text(
        &format!(
            "{} PIR sees someone (GCM) → motion-light: switch_led=true to the lamp",
            clock(t)
        ),
        &presence_props,
        &presence,
    );

    let t = at(61);
    let (payload, props) = seal(keys, 4, t, &lamp("rec-tuya-04", t, true), None);
    r.text(
        &format!(
            "{} lamp reports on, the command's echo (ECB) → no command",
            clock(t)
        ),
        &props,
        &payload,
    );

    let t = at(180);
    let (payload, props) = seal(
        keys,
        4,
        t,
        &pir("rec-tuya-05", t, "none", 86),
        Some(b"rec-nonce-05"),
    );
    r.text(
        &format!(
            "{} PIR sees no one (GCM) → motion-light: switch_led=false to the lamp",
            clock(t)
        ),
        &props,
        &payload,
    );

    let t = at(181);
    let (payload, props) = seal(keys, 4, t, &lamp("rec-tuya-06", t, false), None);
    r.text(
        &format!(
            "{} lamp reports off, the command's echo (ECB) → no command",
            clock(t)
        ),
        &props,
        &payload,
    );

    r.text(
        "18:03:10 the 18:01:00 presence report again, byte for byte (a redelivery after a lost ack)\n\
         → duplicate event id rec-tuya-03: de-duplication drops it (were it run, the lamp would go on again)",
        &presence_props,
        &presence,
    );

    let t = at(240);
    let (sealed, props) = seal(
        keys,
        4,
        t,
        &pir("rec-tuya-08", t, "pir", 85),
        Some(b"rec-nonce-08"),
    );
    let signed_t = format!(r#""t":{}"#, t + TUYA_CLOUD_DELAY_MS);
    let forged_t = format!(r#""t":{}"#, t + TUYA_CLOUD_DELAY_MS + 60_000);
    assert!(sealed.contains(&signed_t), "the envelope carries its `t`");
    let tampered = sealed.replace(&signed_t, &forged_t);
    r.text(
        &format!(
            "{} a PIR presence report whose envelope `t` was altered after signing\n\
             → signature error: dead letter (accepted, it would switch the lamp on)",
            clock(t)
        ),
        &props,
        &tampered,
    );

    let t = at(270);
    let socket = tuya_status(
        "rec-tuya-09",
        SOCKET,
        SOCKET_PRODUCT,
        t,
        &[("1", "switch_1", "true"), ("19", "cur_power", "1530")],
    );
    let (payload, props) = seal(keys, 4, t, &socket, None);
    r.text(
        &format!(
            "{} kitchen socket reports on (ECB) → not a hallway device: no rule takes it",
            clock(t)
        ),
        &props,
        &payload,
    );

    let t = at(300);
    let (payload, props) = seal(keys, 4, t, &lamp("rec-tuya-10", t, true), None);
    r.text(
        &format!(
            "{} lamp reports on: switched on by hand (ECB) → no command",
            clock(t)
        ),
        &props,
        &payload,
    );

    let t = at(360);
    let (payload, props) = seal(
        keys,
        4,
        t,
        &pir("rec-tuya-11", t, "pir", 85),
        Some(b"rec-nonce-11"),
    );
    r.text(
        &format!(
            "{} PIR sees someone (GCM) → no command: the lamp is already on by hand",
            clock(t)
        ),
        &props,
        &payload,
    );

    let t = at(480);
    let (payload, props) = seal(
        keys,
        4,
        t,
        &pir("rec-tuya-12", t, "none", 85),
        Some(b"rec-nonce-12"),
    );
    r.text(
        &format!(
            "{} PIR sees no one (GCM) → no command: motion-light leaves the hand-switched lamp on",
            clock(t)
        ),
        &props,
        &payload,
    );
    r
}

// --- Alibaba: the thermostat (rule `thermostat-temperature`) ----------------------------

const ALI_PRODUCT: &str = "a1DemoPk";
const THERMOSTAT: &str = "thermostat-1";
const THERMOSTAT_IOT_ID: &str = "demoIotId0001";

/// How long after the device's time Alibaba generates the AMQP message.
const ALI_CLOUD_DELAY_MS: u64 = 40;

/// The AMQP application properties of a message on `topic` generated for device time `t`.
fn ali_properties(topic: String, message_id: &str, t: u64) -> Vec<(&'static str, String)> {
    vec![
        ("topic", topic),
        ("messageId", message_id.to_owned()),
        ("generateTime", (t + ALI_CLOUD_DELAY_MS).to_string()),
    ]
}

/// A property post body; `items` are `(identifier, value as JSON)`.
fn ali_post(
    request_id: &str,
    iot_id: &str,
    product: &str,
    device: &str,
    device_type: &str,
    t: u64,
    items: &[(&str, &str)],
) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(code, value)| format!(r#""{code}":{{"value":{value},"time":{t}}}"#))
        .collect();
    format!(
        r#"{{"iotId":"{iot_id}","requestId":"{request_id}","productKey":"{product}","deviceName":"{device}","gmtCreate":{t},"deviceType":"{device_type}","items":{{{}}},"checkFailedData":{{}}}}"#,
        items.join(",")
    )
}

/// Alibaba's `2025-11-24 02:00:00.000` (Beijing) and `2025-11-23T18:00:00.000Z` (UTC) forms.
fn ali_times(ms: u64) -> (String, String) {
    let local = Utc::from_ms(ms + BEIJING_OFFSET_MS);
    let utc = Utc::from_ms(ms);
    (
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            local.year,
            local.month,
            local.day,
            local.hour,
            local.minute,
            local.second,
            local.millis
        ),
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.millis
        ),
    )
}

/// A device status body (`/as/mqtt/status/...`).
fn ali_status(status: &str, t: u64, last: u64) -> String {
    let (time, utc_time) = ali_times(t);
    let (last_time, utc_last_time) = ali_times(last);
    format!(
        r#"{{"status":"{status}","iotId":"{THERMOSTAT_IOT_ID}","productKey":"{ALI_PRODUCT}","deviceName":"{THERMOSTAT}","time":"{time}","utcTime":"{utc_time}","lastTime":"{last_time}","utcLastTime":"{utc_last_time}","clientIp":"192.0.2.10"}}"#
    )
}

fn alibaba() -> Recording {
    let mut r = Recording::new(
        "Alibaba Cloud IoT AMQP subscription: bodies as base64 bytes, with the `topic`,\n\
         `messageId` and `generateTime` application properties. Dialect `alibaba` (no encode=base64).\n\
         Written by `cargo run -p iotrules --example record_demo_streams`; see README.md.",
    );
    let post_topic = || format!("/{ALI_PRODUCT}/{THERMOSTAT}/thing/event/property/post");
    let status_topic = || format!("/as/mqtt/status/{ALI_PRODUCT}/{THERMOSTAT}");
    let thermostat = |request_id: &str, t: u64, items: &[(&str, &str)]| {
        ali_post(
            request_id,
            THERMOSTAT_IOT_ID,
            ALI_PRODUCT,
            THERMOSTAT,
            "Thermostat",
            t,
            items,
        )
    };

    let t = at(0);
    r.bytes(
        &format!(
            "{} thermostat comes online → kind online: no rule takes it",
            clock(t)
        ),
        &ali_properties(status_topic(), "1992400000000000001", t),
        ali_status("online", t, t - 3_600_000).as_bytes(),
    );

    // (seconds, message id, Alink request id, temperature, what becomes of it)
    let readings: [(u64, &str, &str, &str, &str); 3] = [
        (
            30,
            "1992400000000000002",
            "002",
            "21.0",
            "kept: the first report (passed on as temperature=21.0)",
        ),
        (
            90,
            "1992400000000000003",
            "003",
            "21.3",
            "dropped: 0.3 from the last kept 21.0",
        ),
        (
            150,
            "1992400000000000004",
            "004",
            "21.5",
            "dropped: 0.5 from 21.0 is not more than the threshold",
        ),
    ];
    for (seconds, message_id, request_id, temperature, outcome) in readings {
        let t = at(seconds);
        r.bytes(
            &format!(
                "{} thermostat CurrentTemperature {temperature} → {outcome}",
                clock(t)
            ),
            &ali_properties(post_topic(), message_id, t),
            thermostat(
                request_id,
                t,
                &[("CurrentTemperature", temperature), ("PowerSwitch", "1")],
            )
            .as_bytes(),
        );
    }

    let t = at(210);
    let kept_again = ali_properties(post_topic(), "1992400000000000005", t);
    let kept_again_body = thermostat(
        "005",
        t,
        &[("CurrentTemperature", "21.8"), ("PowerSwitch", "1")],
    );
    r.bytes(
        &format!(
            "{} thermostat CurrentTemperature 21.8 → kept: 0.8 from 21.0",
            clock(t)
        ),
        &kept_again,
        kept_again_body.as_bytes(),
    );

    let t = at(240);
    r.bytes(
        &format!(
            "{} thermostat PowerSwitch 0, no temperature → the rule's `if` does not match: not run",
            clock(t)
        ),
        &ali_properties(post_topic(), "1992400000000000006", t),
        thermostat("006", t, &[("PowerSwitch", "0")]).as_bytes(),
    );

    let t = at(300);
    r.bytes(
        &format!(
            "{} thermostat CurrentTemperature 21.4 → dropped: 0.4 from the last kept 21.8",
            clock(t)
        ),
        &ali_properties(post_topic(), "1992400000000000007", t),
        thermostat(
            "007",
            t,
            &[("CurrentTemperature", "21.4"), ("PowerSwitch", "0")],
        )
        .as_bytes(),
    );

    let t = at(360);
    r.bytes(
        &format!(
            "{} thermostat CurrentTemperature 21.2 → kept: 0.6 from 21.8",
            clock(t)
        ),
        &ali_properties(post_topic(), "1992400000000000008", t),
        thermostat(
            "008",
            t,
            &[("CurrentTemperature", "21.2"), ("PowerSwitch", "0")],
        )
        .as_bytes(),
    );

    r.bytes(
        "18:06:30 the 18:03:30 message again, same messageId and bytes (redelivered, unacked for 30 s)\n\
         → duplicate event id 1992400000000000005: de-duplication drops it (were it run, the stale 21.8 would be kept)",
        &kept_again,
        kept_again_body.as_bytes(),
    );

    let t = at(400);
    r.bytes(
        &format!(
            "{} humidifier of product a1OtherPk reports CurrentTemperature 22.0 → other product: no rule takes it",
            clock(t)
        ),
        &ali_properties(
            "/a1OtherPk/humidifier-1/thing/event/property/post".to_owned(),
            "1992400000000000009",
            t,
        ),
        ali_post(
            "009",
            "demoIotId0002",
            "a1OtherPk",
            "humidifier-1",
            "Humidifier",
            t,
            &[("CurrentTemperature", "22.0"), ("Humidity", "45")],
        )
        .as_bytes(),
    );

    let t = at(420);
    r.bytes(
        &format!(
            "{} thermostat goes offline → kind offline: no rule takes it",
            clock(t)
        ),
        &ali_properties(status_topic(), "1992400000000000010", t),
        ali_status("offline", t, at(360)).as_bytes(),
    );
    r
}

// --- Huawei: the energy meter (rule `meter-power`) --------------------------------------

const METER: &str = "demo_product_meter-1";

/// Huawei's compact UTC time, `20251123T180000Z`.
fn compact(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// An IoTDA push body for `resource`/`event` about a device, with `body` as `notify_data.body`.
fn huawei_push(
    resource: &str,
    event: &str,
    request_id: &str,
    t: u64,
    device_id: &str,
    product: &str,
    body: &str,
) -> String {
    let node = device_id
        .strip_prefix(&format!("{product}_"))
        .unwrap_or(device_id);
    format!(
        r#"{{"resource":"{resource}","event":"{event}","event_time":"{}","request_id":"{request_id}","notify_data":{{"header":{{"app_id":"demoApp","device_id":"{device_id}","node_id":"{node}","product_id":"{product}","gateway_id":"{device_id}"}},"body":{body}}}}}"#,
        compact(t)
    )
}

/// A meter property report of `power_w` (written as given, always with a decimal point so
/// it is a float) at 229 V.
fn meter_report(request_id: &str, t: u64, power_w: &str) -> String {
    let body = format!(
        r#"{{"services":[{{"service_id":"Energy","properties":{{"power_w":{power_w},"voltage_v":229}},"event_time":"{}"}}]}}"#,
        compact(t)
    );
    huawei_push(
        "device.property",
        "report",
        request_id,
        t,
        METER,
        "demo_product",
        &body,
    )
}

fn huawei() -> Recording {
    let mut r = Recording::new(
        "Huawei Cloud IoTDA AMQP push bodies as text, no properties. Dialect `huawei`.\n\
         meter-power keeps a report when power_w > 1000 W moved by more than 50 W, at most one\n\
         per 10 s of the plugin clock (min_interval_s): see README.md on replay speed.\n\
         Written by `cargo run -p iotrules --example record_demo_streams`.",
    );
    let t = at(0);
    r.text(
        &format!(
            "{} meter comes online → kind online: no rule takes it",
            clock(t)
        ),
        &[],
        &huawei_push(
            "device.status",
            "update",
            "rec-hw-01",
            t,
            METER,
            "demo_product",
            &format!(
                r#"{{"status":"ONLINE","last_online_time":"{}"}}"#,
                compact(t)
            ),
        ),
    );

    // (seconds, request id, power_w, what becomes of it)
    let readings: [(u64, &str, &str, &str); 8] = [
        (
            60,
            "rec-hw-02",
            "640.5",
            "below 1 kW: the rule's `if` does not match",
        ),
        (
            120,
            "rec-hw-03",
            "980.0",
            "below 1 kW: the rule's `if` does not match",
        ),
        (
            180,
            "rec-hw-04",
            "1210.5",
            "kept: the meter's first report over 1 kW",
        ),
        (
            240,
            "rec-hw-05",
            "1235.0",
            "dropped: 24.5 W from the last kept 1210.5",
        ),
        (
            300,
            "rec-hw-06",
            "1320.0",
            "moved 109.5 W: kept at recorded pace; dropped by min_interval_s in a fast replay",
        ),
        (
            360,
            "rec-hw-07",
            "1340.5",
            "dropped: 20.5 W from 1320.0 at recorded pace (min_interval_s in a fast replay)",
        ),
        (
            420,
            "rec-hw-08",
            "1295.0",
            "dropped: 25 W from 1320.0 at recorded pace (min_interval_s in a fast replay)",
        ),
        (
            480,
            "rec-hw-09",
            "905.0",
            "below 1 kW: the rule's `if` does not match",
        ),
    ];
    for (seconds, id, power_w, outcome) in readings {
        let t = at(seconds);
        r.text(
            &format!("{} meter power_w {power_w} → {outcome}", clock(t)),
            &[],
            &meter_report(id, t, power_w),
        );
    }

    let t = at(540);
    let sensor = format!(
        r#"{{"services":[{{"service_id":"Climate","properties":{{"temperature":19.5,"humidity":52}},"event_time":"{}"}}]}}"#,
        compact(t)
    );
    r.text(
        &format!(
            "{} climate sensor of product other_product reports → not demo_product_*: no rule takes it",
            clock(t)
        ),
        &[],
        &huawei_push(
            "device.property",
            "report",
            "rec-hw-10",
            t,
            "other_product_climate-1",
            "other_product",
            &sensor,
        ),
    );
    r
}
