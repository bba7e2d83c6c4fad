//! What the host's benches share: the event they measure with.

use iotrules::event::{Device, Event, Json, Kind, Property, Value, Vendor};

/// A typical six-property event, a Tuya thermostat's status report, number `seq` (its id and
/// time follow it), from device `device`.
pub fn thermostat(seq: u64, device: Device) -> Event {
    Event {
        id: format!("bench-{seq}"),
        source: "tuya-eu".into(),
        vendor: Vendor::Tuya,
        kind: Kind::Properties,
        action: "devicePropertyMessage".into(),
        device,
        time_ms: 1_763_884_800_000 + seq,
        properties: vec![
            Property::new("switch", Value::Boolean(true)),
            Property::new("temp_current", Value::Integer(215 + (seq % 100) as i64)),
            Property::new("temp_set", Value::Integer(220)),
            Property::new("mode", Value::Text("auto".into())),
            Property::new("humidity", Value::Float(41.5)),
            Property::new("bright_value_v2", Value::Integer(500)),
        ],
        payload: Json::from_text(
            r#"{"devId":"vdevo123456789","productKey":"p","status":[{"code":"switch","value":true}]}"#
                .into(),
        )
        .expect("JSON"),
        attributes: [("topic".to_owned(), "persistent://x/out/event".to_owned())]
            .into_iter()
            .collect(),
    }
}
