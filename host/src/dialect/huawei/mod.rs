//! Huawei Cloud IoTDA: server-side AMQP push and device-side MQTT.
//!
//! - [`mqtt`]: a device's connection credentials (client id, username, hour-stamped password)
//!   and its topics, legacy v1 (`/huawei/v1/devices/...`) and IoTDA (`$oc/devices/...`).
//! - [`reply`]: what a device publishes back: `deviceRsp`, IoTDA command and property
//!   responses, property reports.
//! - [`amqp`]: an application's credentials for the AMQP push endpoint.
//! - [`Decoder`]: AMQP push bodies and device MQTT payloads → [`Event`]s (see `normalize` for
//!   the mapping). Huawei neither signs nor encrypts these bodies, so there is nothing to
//!   verify: the body is what was sent.

pub mod amqp;
pub mod mqtt;
mod normalize;
pub mod reply;

use crate::dialect::{DecodeError, RawMessage};
use crate::event::Event;

pub use amqp::AmqpCredentials;
pub use mqtt::{DeviceCredentials, SignType};
pub use reply::Publish;

/// Attribute: the Huawei `service_id` (`serviceId`) a command or property request is for.
pub(crate) const ATTR_SERVICE_ID: &str = "service-id";

/// The [`crate::event::ATTR_ENVELOPE`] value of an AMQP push.
pub(crate) const ENVELOPE_AMQP: &str = "huawei-amqp";
/// The [`crate::event::ATTR_ENVELOPE`] value of a device MQTT message.
pub(crate) const ENVELOPE_MQTT: &str = "huawei-mqtt";

/// The transport property holding the MQTT topic (or the AMQP `topic` property).
const TOPIC_PROPERTY: &str = "topic";

/// Decodes Huawei messages: by topic when the `topic` property is a device MQTT topic,
/// otherwise as an AMQP push body. Holds no keys, as Huawei's bodies are plain JSON.
#[derive(Debug, Clone, Default)]
pub struct Decoder;

impl Decoder {
    /// A decoder; there is nothing to configure, since Huawei neither signs nor encrypts.
    pub fn new() -> Self {
        Decoder
    }

    /// Normalizes one message. Unknown resources and topics become [`crate::event::Kind::Other`];
    /// a body that is not JSON, or not the shape its resource or topic documents, is an
    /// error of kind json.
    pub fn decode(&self, message: &RawMessage<'_>) -> Result<Event, DecodeError> {
        let topic = message.property(TOPIC_PROPERTY);
        match topic.and_then(|text| mqtt::DeviceTopic::parse(text).map(|parsed| (text, parsed))) {
            Some((text, parsed)) => normalize::mqtt(message, text, parsed),
            None => normalize::amqp(message, topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Json, Kind, Property, Value};
    use proptest::prelude::*;

    fn decode_on(topic: &str, payload: &[u8]) -> Result<Event, DecodeError> {
        let properties = [(TOPIC_PROPERTY.to_owned(), topic.to_owned())];
        Decoder::new().decode(&RawMessage::new("p", payload).with_properties(&properties))
    }

    #[test]
    fn a_reply_decodes_as_the_reply_it_answers() {
        let paras = Json::from_text(r#"{"level":3}"#.into()).unwrap();
        let publish = reply::command_response("d", "r7", 0, Some("DONE"), Some(&paras)).unwrap();
        let event = decode_on(&publish.topic, &publish.payload).unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
        assert_eq!(event.attribute("request-id"), Some("r7"));
        assert_eq!(event.property("level").unwrap().value, Value::Integer(3));

        let publish = reply::device_rsp("d", 9, 0, Some(&paras)).unwrap();
        let event = decode_on(&publish.topic, &publish.payload).unwrap();
        assert_eq!(event.kind, Kind::CommandReply);
        assert_eq!(event.attribute("mid"), Some("9"));
    }

    /// Topics that reach every branch of the decoder, plus arbitrary text.
    fn topic_strategy() -> impl Strategy<Value = String> {
        let id = "[a-z0-9_]{0,6}";
        prop_oneof![
            Just(String::new()),
            "\\PC{0,30}",
            id.prop_map(|d| format!("/huawei/v1/devices/{d}/data/json")),
            id.prop_map(|d| format!("/huawei/v1/devices/{d}/command/json")),
            (id, "[a-z/_=?&]{0,30}").prop_map(|(d, rest)| format!("$oc/devices/{d}/sys/{rest}")),
            (id, id).prop_map(|(d, r)| format!("$oc/devices/{d}/sys/commands/request_id={r}")),
            id.prop_map(|d| format!("$oc/devices/{d}/sys/properties/report")),
            id.prop_map(|d| format!("$oc/devices/{d}/sys/events/up")),
            id.prop_map(|d| format!("$oc/devices/{d}/sys/messages/down")),
            id.prop_map(|d| format!("$oc/devices/{d}/user/x")),
        ]
    }

    /// JSON shaped like Huawei bodies, with the right keys holding wrong kinds of values.
    fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
        crate::dialect::test_strategies::json_like(KEYS, WORDS)
    }

    const KEYS: &[&str] = &[
        "resource",
        "event",
        "event_time",
        "event_time_ms",
        "request_id",
        "notify_data",
        "header",
        "body",
        "device_id",
        "gateway_id",
        "services",
        "service_id",
        "properties",
        "paras",
        "status",
        "object_device_id",
        "msgType",
        "mid",
        "data",
        "serviceData",
        "eventTime",
    ];

    const WORDS: &[&str] = &[
        "device.property",
        "device.status",
        "device.event",
        "device",
        "report",
        "ONLINE",
        "$ota",
        "deviceReq",
        "deviceRsp",
        "cloudReq",
        "20151212T121212Z",
        "x",
    ];

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::Integer),
            // Readings with a few decimals: serde_json (without `float_roundtrip`) may read
            // a long mantissa back one ulp off, which is not this dialect's doing.
            (-1_000_000i64..1_000_000)
                .prop_filter("not whole", |n| n % 8 != 0)
                .prop_map(|n| Value::Float(n as f64 / 8.0)),
            "\\PC{0,12}".prop_map(Value::Text),
        ]
    }

    /// Properties with distinct (service, code) pairs, so a report holds each exactly once.
    fn properties_strategy() -> impl Strategy<Value = Vec<Property>> {
        proptest::collection::btree_map(
            ("[A-Z][a-z]{0,3}", "[a-z_]{1,6}"),
            (
                value_strategy(),
                proptest::option::of(0u64..4_000_000_000_000),
            ),
            1..8,
        )
        .prop_map(|map| {
            map.into_iter()
                .map(|((service, code), (value, time_ms))| Property {
                    code,
                    value,
                    // The wire carries seconds.
                    time_ms: time_ms.map(|t| t / 1000 * 1000),
                    service: Some(service),
                })
                .collect()
        })
    }

    fn sorted(mut properties: Vec<(String, String, Value)>) -> Vec<(String, String, Value)> {
        properties.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        properties
    }

    fn keyed(properties: &[Property]) -> Vec<(String, String, Value)> {
        sorted(
            properties
                .iter()
                .map(|p| {
                    (
                        p.service.clone().unwrap_or_default(),
                        p.code.clone(),
                        p.value.clone(),
                    )
                })
                .collect(),
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_on_arbitrary_topics_never_panic(
            topic in proptest::option::of(topic_strategy()),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let properties: Vec<(String, String)> =
                topic.into_iter().map(|t| (TOPIC_PROPERTY.to_owned(), t)).collect();
            let _ = Decoder::new().decode(&RawMessage::new("p", &bytes).with_properties(&properties));
        }

        #[test]
        fn huawei_shaped_json_on_arbitrary_topics_never_panics(
            topic in proptest::option::of(topic_strategy()),
            body in json_strategy(),
        ) {
            let text = body.to_string();
            let properties: Vec<(String, String)> =
                topic.into_iter().map(|t| (TOPIC_PROPERTY.to_owned(), t)).collect();
            let _ = Decoder::new()
                .decode(&RawMessage::new("p", text.as_bytes()).with_properties(&properties));
        }

        #[test]
        fn property_report_decodes_back_to_the_same_properties(
            device in "[a-z0-9_]{1,12}",
            properties in properties_strategy(),
        ) {
            let publish = reply::property_report(&device, &properties, None).unwrap();
            let event = decode_on(&publish.topic, &publish.payload).unwrap();
            prop_assert_eq!(event.kind, Kind::Properties);
            prop_assert_eq!(&event.device.id, &device);
            prop_assert_eq!(keyed(&event.properties), keyed(&properties));
            let latest = properties.iter().filter_map(|p| p.time_ms).max().unwrap_or(0);
            prop_assert_eq!(event.time_ms, latest);
        }

        #[test]
        fn device_req_decodes_back_to_the_same_properties(
            device in "[a-z0-9_]{1,12}",
            properties in properties_strategy(),
        ) {
            let publish = reply::device_req(&device, &properties, Some(0)).unwrap();
            let event = decode_on(&publish.topic, &publish.payload).unwrap();
            prop_assert_eq!(event.kind, Kind::Properties);
            prop_assert_eq!(keyed(&event.properties), keyed(&properties));
        }

        #[test]
        fn device_rsp_parses_back_to_its_fields(
            device in "[A-Za-z0-9_-]{1,16}",
            mid in 1u64..=65_535,
            errcode in any::<i64>(),
            body in json_strategy(),
        ) {
            let body = Json::from(body);
            let publish = reply::device_rsp(&device, mid, errcode, Some(&body)).unwrap();
            prop_assert_eq!(&publish.topic, &mqtt::legacy_data_topic(&device));
            let back: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
            prop_assert_eq!(&back["msgType"], "deviceRsp");
            prop_assert_eq!(back["mid"].as_u64(), Some(mid));
            prop_assert_eq!(back["errcode"].as_i64(), Some(errcode));
            prop_assert_eq!(&back["body"], &body.to_value());
        }

        #[test]
        fn command_and_set_responses_parse_back_to_their_fields(
            device in "[A-Za-z0-9_-]{1,16}",
            request_id in "[A-Za-z0-9-]{1,36}",
            code in any::<i64>(),
            name in proptest::option::of("\\PC{0,16}"),
            desc in "\\PC{0,16}",
            paras in proptest::option::of(json_strategy()),
        ) {
            let paras = paras.map(Json::from);
            let publish = reply::command_response(&device, &request_id, code, name.as_deref(), paras.as_ref()).unwrap();
            prop_assert_eq!(&publish.topic, &mqtt::command_response_topic(&device, &request_id));
            let back: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
            prop_assert_eq!(back["result_code"].as_i64(), Some(code));
            prop_assert_eq!(back.get("response_name").and_then(|v| v.as_str()), name.as_deref());
            prop_assert_eq!(back.get("paras").cloned(), paras.map(|p| p.to_value()));

            let publish = reply::properties_set_response(&device, &request_id, code, &desc).unwrap();
            let back: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
            prop_assert_eq!(back["result_code"].as_i64(), Some(code));
            prop_assert_eq!(back["result_desc"].as_str(), Some(desc.as_str()));
        }
    }
}
