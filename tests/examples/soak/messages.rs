//! The messages offered: sealed Tuya envelopes (and tampered ones), Alibaba property
//! reports, plain JSON for the generic link.

use iotrules::dialect::tuya::{self, Mode};

use crate::{NOW, TUYA_ID, TUYA_KEY};

/// The Tuya keys of the soak's project.
pub(crate) fn tuya_keys() -> tuya::Keys {
    tuya::Keys::new(TUYA_ID, TUYA_KEY).expect("keys")
}

/// A sealed protocol 4 status report of `device` with property `seq`; its `dataId` (the
/// event id) is unique per device and seq.
pub(crate) fn tuya_message(
    keys: &tuya::Keys,
    device: &str,
    seq: u64,
) -> (String, Vec<(&'static str, String)>) {
    let body = format!(
        r#"{{"dataId":"{device}-{seq}","devId":"{device}","productKey":"pk1","status":[{{"code":"seq","value":{seq},"t":1700000000000,"1":"{seq}"}}]}}"#
    );
    let mode = if seq.is_multiple_of(2) {
        Mode::Gcm
    } else {
        Mode::Ecb
    };
    let (payload, em) = keys.seal_iot_core(4, NOW + seq, body.as_bytes(), mode, [7; 12]);
    (payload, vec![("em", em.to_owned())])
}

/// The envelope with the first hex digit of its `sign` changed.
pub(crate) fn tamper_sign(payload: &str) -> String {
    let at = payload.find("\"sign\":\"").expect("sign") + 8;
    let mut tampered = payload.to_owned();
    let flipped = if &payload[at..at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(at..at + 1, flipped);
    tampered
}

/// An Alibaba property report of `a1Pk/{name}` with property `seq`.
pub(crate) fn alibaba_message(name: &str, seq: u64) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let body = format!(
        r#"{{"iotId":"iot-{name}","requestId":"{seq}","productKey":"a1Pk","deviceName":"{name}","gmtCreate":1700000000000,"deviceType":"Light","items":{{"seq":{{"value":{seq},"time":1700000000000}}}},"checkFailedData":{{}}}}"#
    );
    (
        body.into_bytes(),
        alibaba_properties(&format!("m-{name}-{seq}"), name),
    )
}

pub(crate) fn alibaba_properties(message_id: &str, name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("topic", format!("/a1Pk/{name}/thing/event/property/post")),
        ("messageId", message_id.to_owned()),
        ("generateTime", "1700000000999".to_owned()),
    ]
}

/// A device status for the generic link, about 200 bytes, carrying `seq`.
pub(crate) fn mqtt_message(device: &str, seq: u64) -> String {
    format!(
        r#"{{"seq":{seq},"device":"{device}","temperature":21.5,"humidity":48,"battery":97,"state":"ON","note":"{}"}}"#,
        "x".repeat(80)
    )
}
