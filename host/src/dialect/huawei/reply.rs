//! Wire messages a device (or a gateway speaking for one) publishes: answers to commands and
//! property reports, each with the topic it must go to.
//!
//! Every builder checks what the broker would otherwise silently misroute: ids that would
//! change the topic's shape, a legacy `mid` outside 1–65535, properties without a service.
//! Payload fields are written in the order Huawei documents them, and property values and
//! `paras` are embedded verbatim.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::mqtt;
use crate::dialect::clip;
use crate::event::{Json, Property, Value};
use crate::time::Utc;

/// The largest legacy `mid` (it is a 16-bit counter that skips 0).
pub(crate) const MAX_MID: u64 = 65_535;

/// One MQTT publication: the topic and the exact payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Why a reply or report cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("legacy mid `{0}` is not a number in 1..=65535")]
    Mid(String),
    #[error(
        "{what} `{value}` cannot go into a topic: it must be non-empty and contain no `/`, `+`, `#` or NUL"
    )]
    TopicSegment { what: &'static str, value: String },
    #[error("property `{code}` has no service id: Huawei groups reported properties by service")]
    NoService { code: String },
    #[error("a report needs at least one property")]
    NoProperties,
}

/// Legacy `deviceRsp`, the answer to `cloudReq` number `mid`. It goes to the **data** topic,
/// not a response topic: the legacy protocol has only the one uplink.
/// `errcode` 0 means success; `body` (an object, by Huawei's docs) is omitted when `None`.
pub(crate) fn device_rsp(
    device_id: &str,
    mid: u64,
    errcode: i64,
    body: Option<&Json>,
) -> Result<Publish, ReplyError> {
    check_segment("device id", device_id)?;
    check_mid(mid)?;
    #[derive(Serialize)]
    struct DeviceRsp<'a> {
        #[serde(rename = "msgType")]
        msg_type: &'static str,
        mid: u64,
        errcode: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a Json>,
    }
    Ok(Publish {
        topic: mqtt::legacy_data_topic(device_id),
        payload: to_vec(&DeviceRsp {
            msg_type: "deviceRsp",
            mid,
            errcode,
            body,
        }),
    })
}

/// Legacy `deviceReq`: a property report, one `data` item per service (in the order the
/// services first appear). See [`property_report`] for how the event time is chosen.
pub(crate) fn device_req(
    device_id: &str,
    properties: &[Property],
    default_time_ms: Option<u64>,
) -> Result<Publish, ReplyError> {
    check_segment("device id", device_id)?;
    let groups = group_by_service(properties, default_time_ms)?;
    #[derive(Serialize)]
    struct Item<'a> {
        #[serde(rename = "serviceId")]
        service_id: &'a str,
        #[serde(rename = "serviceData")]
        service_data: PropertyMap<'a>,
        #[serde(rename = "eventTime", skip_serializing_if = "Option::is_none")]
        event_time: Option<String>,
    }
    #[derive(Serialize)]
    struct DeviceReq<'a> {
        #[serde(rename = "msgType")]
        msg_type: &'static str,
        data: Vec<Item<'a>>,
    }
    let data = groups
        .into_iter()
        .map(|g| Item {
            service_id: g.service_id,
            service_data: PropertyMap(g.properties),
            event_time: g.time_ms.map(format_compact),
        })
        .collect();
    Ok(Publish {
        topic: mqtt::legacy_data_topic(device_id),
        payload: to_vec(&DeviceReq {
            msg_type: "deviceReq",
            data,
        }),
    })
}

/// IoTDA command response `{"result_code","response_name","paras"}` for command `request_id`.
/// `result_code` 0 means success; `response_name` and `paras` are omitted when `None`.
pub(crate) fn command_response(
    device_id: &str,
    request_id: &str,
    result_code: i64,
    response_name: Option<&str>,
    paras: Option<&Json>,
) -> Result<Publish, ReplyError> {
    check_segment("device id", device_id)?;
    check_segment("request id", request_id)?;
    #[derive(Serialize)]
    struct CommandResponse<'a> {
        result_code: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        response_name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        paras: Option<&'a Json>,
    }
    Ok(Publish {
        topic: mqtt::command_response_topic(device_id, request_id),
        payload: to_vec(&CommandResponse {
            result_code,
            response_name,
            paras,
        }),
    })
}

/// IoTDA property-set response `{"result_code","result_desc"}` (`0`, `"success"` when the
/// values were applied).
pub(crate) fn properties_set_response(
    device_id: &str,
    request_id: &str,
    result_code: i64,
    result_desc: &str,
) -> Result<Publish, ReplyError> {
    check_segment("device id", device_id)?;
    check_segment("request id", request_id)?;
    #[derive(Serialize)]
    struct SetResponse<'a> {
        result_code: i64,
        result_desc: &'a str,
    }
    Ok(Publish {
        topic: mqtt::properties_set_response_topic(device_id, request_id),
        payload: to_vec(&SetResponse {
            result_code,
            result_desc,
        }),
    })
}

/// IoTDA property-get response: the current values, as `{"services":[...]}` like a report.
pub fn properties_get_response(
    device_id: &str,
    request_id: &str,
    properties: &[Property],
    default_time_ms: Option<u64>,
) -> Result<Publish, ReplyError> {
    check_segment("request id", request_id)?;
    let report = property_report(device_id, properties, default_time_ms)?;
    Ok(Publish {
        topic: mqtt::properties_get_response_topic(device_id, request_id),
        payload: report.payload,
    })
}

/// IoTDA property report `{"services":[{"service_id","properties":{...},"event_time"}]}`,
/// one service per distinct [`Property::service`], in order of first appearance.
///
/// A service's `event_time` is the latest `time_ms` of its properties, else `default_time_ms`;
/// with neither it is left out and the platform stamps the arrival time. When a code repeats
/// within a service, the last value wins (a JSON object cannot hold it twice).
pub(crate) fn property_report(
    device_id: &str,
    properties: &[Property],
    default_time_ms: Option<u64>,
) -> Result<Publish, ReplyError> {
    check_segment("device id", device_id)?;
    let groups = group_by_service(properties, default_time_ms)?;
    #[derive(Serialize)]
    struct Service<'a> {
        service_id: &'a str,
        properties: PropertyMap<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        event_time: Option<String>,
    }
    #[derive(Serialize)]
    struct Report<'a> {
        services: Vec<Service<'a>>,
    }
    let services = groups
        .into_iter()
        .map(|g| Service {
            service_id: g.service_id,
            properties: PropertyMap(g.properties),
            event_time: g.time_ms.map(format_compact),
        })
        .collect();
    Ok(Publish {
        topic: mqtt::properties_report_topic(device_id),
        payload: to_vec(&Report { services }),
    })
}

/// Checks a legacy `mid` and reads one from an event attribute ([`crate::event::ATTR_MID`]).
pub fn parse_mid(text: &str) -> Result<u64, ReplyError> {
    match text.trim().parse::<u64>() {
        Ok(mid) if (1..=MAX_MID).contains(&mid) => Ok(mid),
        _ => Err(ReplyError::Mid(clip(text))),
    }
}

fn check_mid(mid: u64) -> Result<(), ReplyError> {
    if (1..=MAX_MID).contains(&mid) {
        Ok(())
    } else {
        Err(ReplyError::Mid(mid.to_string()))
    }
}

/// A topic level must be non-empty and hold no separator or wildcard, or the publication
/// would land on another topic (or be refused by the broker).
fn check_segment(what: &'static str, value: &str) -> Result<(), ReplyError> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
        Err(ReplyError::TopicSegment {
            what,
            value: clip(value),
        })
    } else {
        Ok(())
    }
}

/// The properties of one service, deduplicated by code (last value wins, first position kept).
struct Group<'a> {
    service_id: &'a str,
    properties: Vec<(&'a str, &'a Value)>,
    time_ms: Option<u64>,
}

fn group_by_service(
    properties: &[Property],
    default_time_ms: Option<u64>,
) -> Result<Vec<Group<'_>>, ReplyError> {
    if properties.is_empty() {
        return Err(ReplyError::NoProperties);
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    for property in properties {
        let service_id = property
            .service
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ReplyError::NoService {
                code: clip(&property.code),
            })?;
        let index = match groups.iter().position(|g| g.service_id == service_id) {
            Some(index) => index,
            None => {
                groups.push(Group {
                    service_id,
                    properties: Vec::new(),
                    time_ms: None,
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        match group
            .properties
            .iter_mut()
            .find(|(code, _)| *code == property.code)
        {
            Some(slot) => slot.1 = &property.value,
            None => group.properties.push((&property.code, &property.value)),
        }
        group.time_ms = group.time_ms.max(property.time_ms);
    }
    for group in &mut groups {
        group.time_ms = group.time_ms.or(default_time_ms);
    }
    Ok(groups)
}

/// Writes `(code, value)` pairs as one JSON object, in order.
struct PropertyMap<'a>(Vec<(&'a str, &'a Value)>);

impl Serialize for PropertyMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (code, value) in &self.0 {
            map.serialize_entry(code, value)?;
        }
        map.end()
    }
}

/// Huawei's compact UTC form `yyyyMMddTHHmmssZ`.
pub(crate) fn format_compact(ms: u64) -> String {
    /// 9999-12-31T23:59:59Z: later times would need a fifth year digit.
    const LAST: u64 = 253_402_300_799_999;
    let t = Utc::from_ms(ms.min(LAST));
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// Serializing these plain structs cannot fail; an empty payload would stand out if it did.
fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The topic and payload of `command` on the device link of `device` (`legacy`: the v1
/// topics), or why it cannot be sent (a refusal: sending it again would not help):
///
/// | `reply_to` | `name` | publish |
/// |---|---|---|
/// | legacy `mid` | any | `deviceRsp` on `…/data/json` |
/// | – (legacy) | service id | `deviceReq` report on `…/data/json` |
/// | `request_id` | `properties.set` | `…/properties/set/response/request_id=…` |
/// | `request_id` | any other | `…/commands/response/request_id=…` |
/// | – | service id | `…/sys/properties/report`, the params as its properties |
///
/// Replies take `result_code` (or `errcode`, default 0), `response_name`, `paras` (or
/// `body`) and `result_desc` from the params.
pub(crate) fn command_message(
    device: &str,
    legacy: bool,
    command: &crate::event::Command,
) -> Result<(String, Vec<u8>), String> {
    use serde_json::Value as JsonValue;

    use crate::dialect::{command_params, json_field};
    let params = command_params(command)?;
    let code = params
        .get("result_code")
        .or_else(|| params.get("errcode"))
        .and_then(JsonValue::as_i64)
        .unwrap_or(0);
    let publish = match (&command.reply_to, legacy) {
        (Some(mid), true) => {
            let mid = mid
                .parse()
                .map_err(|_| format!("reply_to \"{mid}\" is not a legacy mid"))?;
            let body = json_field(&params, "body");
            device_rsp(device, mid, code, body.as_ref())
        }
        (Some(request_id), false) if command.name == "properties.set" => {
            let desc = params
                .get("result_desc")
                .and_then(JsonValue::as_str)
                .unwrap_or(if code == 0 { "success" } else { "failure" });
            properties_set_response(device, request_id, code, desc)
        }
        (Some(request_id), false) => {
            let paras = json_field(&params, "paras");
            let name = params.get("response_name").and_then(JsonValue::as_str);
            command_response(device, request_id, code, name, paras.as_ref())
        }
        (None, legacy) => {
            let properties = service_properties(&command.name, params)?;
            if legacy {
                device_req(device, &properties, None)
            } else {
                property_report(device, &properties, None)
            }
        }
    };
    let publish = publish.map_err(|e| e.to_string())?;
    Ok((publish.topic, publish.payload))
}

/// The params object as the properties of service `service` (a report groups properties by
/// service).
fn service_properties(service: &str, params: serde_json::Value) -> Result<Vec<Property>, String> {
    let serde_json::Value::Object(map) = params else {
        return Err(format!(
            "a property report needs an object of properties as params (service \"{service}\")"
        ));
    };
    Ok(map
        .into_iter()
        .map(|(code, value)| {
            let mut property = Property::new(code, Value::from(value));
            property.service = Some(service.to_owned());
            property
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_compact;
    use serde_json::json;

    fn parsed(publish: &Publish) -> serde_json::Value {
        serde_json::from_slice(&publish.payload).unwrap()
    }

    fn property(service: &str, code: &str, value: Value, time_ms: Option<u64>) -> Property {
        Property {
            code: code.into(),
            value,
            time_ms,
            service: Some(service.into()),
        }
    }

    #[test]
    fn device_rsp_echoes_the_request_mid_on_the_data_topic() {
        let body = Json::from_text(r#"{"state":"ok"}"#.into()).unwrap();
        let publish = device_rsp("dev1", 42, 0, Some(&body)).unwrap();
        assert_eq!(publish.topic, "/huawei/v1/devices/dev1/data/json");
        assert_eq!(
            std::str::from_utf8(&publish.payload).unwrap(),
            r#"{"msgType":"deviceRsp","mid":42,"errcode":0,"body":{"state":"ok"}}"#
        );
    }

    #[test]
    fn device_rsp_refuses_a_mid_outside_sixteen_bits() {
        assert_eq!(
            device_rsp("d", 0, 0, None),
            Err(ReplyError::Mid("0".into()))
        );
        assert_eq!(
            device_rsp("d", 65_536, 0, None),
            Err(ReplyError::Mid("65536".into()))
        );
        assert!(device_rsp("d", 65_535, 1, None).is_ok());
        assert_eq!(parse_mid("7"), Ok(7));
        assert_eq!(parse_mid("seven"), Err(ReplyError::Mid("seven".into())));
        assert!(parse_mid("0").is_err());
    }

    #[test]
    fn device_req_groups_properties_by_service_with_compact_times() {
        let props = [
            property(
                "Battery",
                "level",
                Value::Integer(57),
                Some(1_449_922_332_000),
            ),
            property("Switch", "on", Value::Boolean(true), None),
            property("Battery", "voltage", Value::Float(3.7), None),
        ];
        let publish = device_req("d", &props, Some(0)).unwrap();
        assert_eq!(publish.topic, "/huawei/v1/devices/d/data/json");
        assert_eq!(
            parsed(&publish),
            json!({"msgType":"deviceReq","data":[
                {"serviceId":"Battery","serviceData":{"level":57,"voltage":3.7},"eventTime":"20151212T121212Z"},
                {"serviceId":"Switch","serviceData":{"on":true},"eventTime":"19700101T000000Z"}
            ]})
        );
    }

    #[test]
    fn command_response_goes_to_the_response_topic_of_its_request() {
        let paras = Json::from_text(r#"{"result":"done"}"#.into()).unwrap();
        let publish = command_response("d", "rq-1", 0, Some("SET_OK"), Some(&paras)).unwrap();
        assert_eq!(
            publish.topic,
            "$oc/devices/d/sys/commands/response/request_id=rq-1"
        );
        assert_eq!(
            std::str::from_utf8(&publish.payload).unwrap(),
            r#"{"result_code":0,"response_name":"SET_OK","paras":{"result":"done"}}"#
        );
        let bare = command_response("d", "rq-1", 1, None, None).unwrap();
        assert_eq!(bare.payload, br#"{"result_code":1}"#);
    }

    #[test]
    fn properties_set_response_reports_code_and_description() {
        let publish = properties_set_response("d", "r9", 0, "success").unwrap();
        assert_eq!(
            publish.topic,
            "$oc/devices/d/sys/properties/set/response/request_id=r9"
        );
        assert_eq!(
            publish.payload,
            br#"{"result_code":0,"result_desc":"success"}"#
        );
    }

    #[test]
    fn properties_get_response_carries_services_on_the_get_response_topic() {
        let props = [property("S", "a", Value::Text("x".into()), None)];
        let publish = properties_get_response("d", "r2", &props, None).unwrap();
        assert_eq!(
            publish.topic,
            "$oc/devices/d/sys/properties/get/response/request_id=r2"
        );
        assert_eq!(
            parsed(&publish),
            json!({"services":[{"service_id":"S","properties":{"a":"x"}}]})
        );
    }

    #[test]
    fn property_report_uses_the_latest_time_of_each_service_and_last_value_of_a_code() {
        let props = [
            property("S", "a", Value::Integer(1), Some(1_000)),
            property("S", "b", Value::Null, Some(1_449_922_332_000)),
            property("S", "a", Value::Integer(2), None),
        ];
        let publish = property_report("d", &props, None).unwrap();
        assert_eq!(publish.topic, "$oc/devices/d/sys/properties/report");
        assert_eq!(
            std::str::from_utf8(&publish.payload).unwrap(),
            r#"{"services":[{"service_id":"S","properties":{"a":2,"b":null},"event_time":"20151212T121212Z"}]}"#
        );
    }

    #[test]
    fn property_report_without_any_time_leaves_event_time_out() {
        let props = [property("S", "a", Value::Integer(1), None)];
        let value = parsed(&property_report("d", &props, None).unwrap());
        assert!(value["services"][0].get("event_time").is_none());
    }

    #[test]
    fn reports_refuse_properties_without_a_service_and_empty_lists() {
        let orphan = [Property::new("a", Value::Integer(1))];
        assert_eq!(
            property_report("d", &orphan, None),
            Err(ReplyError::NoService { code: "a".into() })
        );
        assert_eq!(
            device_req("d", &orphan, None),
            Err(ReplyError::NoService { code: "a".into() })
        );
        assert_eq!(
            property_report("d", &[], None),
            Err(ReplyError::NoProperties)
        );
    }

    #[test]
    fn ids_that_would_change_the_topic_are_refused() {
        for bad in ["", "a/b", "a+", "#", "x\0"] {
            assert!(
                matches!(
                    command_response("d", bad, 0, None, None),
                    Err(ReplyError::TopicSegment { .. })
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    device_rsp(bad, 1, 0, None),
                    Err(ReplyError::TopicSegment { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn compact_times_round_trip_through_the_parser() {
        assert_eq!(format_compact(1_449_922_332_000), "20151212T121212Z");
        assert_eq!(
            parse_compact(&format_compact(1_707_532_200_999)),
            Some(1_707_532_200_000)
        );
        assert_eq!(format_compact(u64::MAX), "99991231T235959Z");
    }
}
