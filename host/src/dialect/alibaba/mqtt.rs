//! The device side (MQTT, as Alibaba's Link SDK speaks it): login credentials, the topics of
//! one device, and Alink JSON requests and replies.
//!
//! iotrules uses this side when it acts as a device (or a gateway), and to read device-side
//! topics forwarded to it verbatim.

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::dialect::crypto::SignMethod;
use crate::dialect::{DecodeError, parse_json};
use crate::event::{Json, Property, Value};

/// The MQTT-over-TLS port. New accounts cannot use plain MQTT on 1883.
pub const TLS_PORT: u16 = 8883;
/// The plain TCP port (`securemode=3`), for old accounts only.
pub const TCP_PORT: u16 = 1883;

/// Alink method of a property report.
pub const METHOD_PROPERTY_POST: &str = "thing.event.property.post";
/// Alink method of a property-set request from the cloud.
pub(crate) const METHOD_PROPERTY_SET: &str = "thing.service.property.set";
/// The only Alink protocol version.
pub(crate) const ALINK_VERSION: &str = "1.0";

/// The public instance's MQTT host for a product: `${pk}.iot-as-mqtt.${region}.aliyuncs.com`.
pub(crate) fn public_instance_host(product_key: &str, region: &str) -> String {
    format!("{product_key}.iot-as-mqtt.{region}.aliyuncs.com")
}

/// An enterprise instance's MQTT host: `${iotInstanceId}.mqtt.iothub.aliyuncs.com`.
pub(crate) fn instance_host(iot_instance_id: &str) -> String {
    format!("{iot_instance_id}.mqtt.iothub.aliyuncs.com")
}

/// A device's identity triple plus how it signs its login.
///
/// `Debug` never shows `device_secret`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    pub product_key: String,
    pub device_name: String,
    /// The HMAC key of the password.
    pub device_secret: String,
    /// The client id inside the MQTT client id; the Link SDK uses `{pk}.{dn}`.
    pub client_id: String,
    pub sign_method: SignMethod,
    /// TLS (`securemode=2`) or plain TCP (`securemode=3`).
    pub tls: bool,
}

impl DeviceCredentials {
    /// The triple with the Link SDK's defaults: client id `{pk}.{dn}`, HMAC-SHA256, TLS.
    pub fn new(
        product_key: impl Into<String>,
        device_name: impl Into<String>,
        device_secret: impl Into<String>,
    ) -> Self {
        let (product_key, device_name) = (product_key.into(), device_name.into());
        DeviceCredentials {
            client_id: format!("{product_key}.{device_name}"),
            product_key,
            device_name,
            device_secret: device_secret.into(),
            sign_method: SignMethod::default(),
            tls: true,
        }
    }

    /// `${clientId}|securemode=2,signmethod=${m}[,timestamp=${ms}]|`. Without a timestamp
    /// the password must also be computed without one.
    pub fn mqtt_client_id(&self, timestamp_ms: Option<u64>) -> String {
        let securemode = if self.tls { 2 } else { 3 };
        let timestamp = timestamp_ms.map_or_else(String::new, |ms| format!(",timestamp={ms}"));
        format!(
            "{}|securemode={securemode},signmethod={}{timestamp}|",
            self.client_id,
            self.sign_method.as_str()
        )
    }

    /// `${deviceName}&${productKey}`.
    pub fn username(&self) -> String {
        format!("{}&{}", self.device_name, self.product_key)
    }

    /// Lower-case hex HMAC of `"clientId"+cid+"deviceName"+dn+"productKey"+pk["timestamp"+ts]`
    /// under the device secret; the timestamp must be the client id's.
    pub fn password(&self, timestamp_ms: Option<u64>) -> String {
        let mut content = format!(
            "clientId{}deviceName{}productKey{}",
            self.client_id, self.device_name, self.product_key
        );
        if let Some(ms) = timestamp_ms {
            content.push_str(&format!("timestamp{ms}"));
        }
        hex::encode(
            self.sign_method
                .mac(self.device_secret.as_bytes(), content.as_bytes()),
        )
    }

    /// The topics of this device.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.product_key, &self.device_name)
    }
}

impl fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("product_key", &self.product_key)
            .field("device_name", &self.device_name)
            .field("device_secret", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("sign_method", &self.sign_method)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The topics of one device, so connector code never assembles topic strings by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    product_key: String,
    device_name: String,
}

impl Topics {
    pub fn new(product_key: impl Into<String>, device_name: impl Into<String>) -> Self {
        Topics {
            product_key: product_key.into(),
            device_name: device_name.into(),
        }
    }

    /// A custom topic: `/${pk}/${dn}/${suffix}`, e.g. `full_topic("user/test")` (the SDK's
    /// `to_full_topic`). A leading `/` on `suffix` is ignored.
    pub fn full_topic(&self, suffix: &str) -> String {
        format!(
            "/{}/{}/{}",
            self.product_key,
            self.device_name,
            suffix.trim_start_matches('/')
        )
    }

    /// A thing-model topic: `/sys/${pk}/${dn}/${suffix}`.
    fn sys(&self, suffix: &str) -> String {
        format!("/sys/{}/{}/{suffix}", self.product_key, self.device_name)
    }

    /// Where the device reports properties.
    pub fn property_post(&self) -> String {
        self.sys("thing/event/property/post")
    }

    /// Where the cloud answers a property report.
    pub fn property_post_reply(&self) -> String {
        self.sys("thing/event/property/post_reply")
    }

    /// Where the cloud asks the device to set properties.
    pub fn property_set(&self) -> String {
        self.sys("thing/service/property/set")
    }

    /// Where the device answers a property-set request.
    pub(crate) fn property_set_reply(&self) -> String {
        self.sys("thing/service/property/set_reply")
    }

    /// Where the cloud calls the thing-model service `identifier`.
    pub fn service(&self, identifier: &str) -> String {
        self.sys(&format!("thing/service/{identifier}"))
    }

    /// Where the device answers a call of service `identifier`.
    pub(crate) fn service_reply(&self, identifier: &str) -> String {
        self.sys(&format!("thing/service/{identifier}_reply"))
    }

    /// Where the device raises the thing-model event `identifier`.
    pub(crate) fn event_post(&self, identifier: &str) -> String {
        self.sys(&format!("thing/event/{identifier}/post"))
    }

    /// Where the cloud answers an event post.
    pub fn event_post_reply(&self, identifier: &str) -> String {
        self.sys(&format!("thing/event/{identifier}/post_reply"))
    }

    /// The filter to subscribe to for synchronous calls (RRPC) from the cloud.
    pub(crate) fn rrpc_request_filter(&self) -> String {
        self.sys("rrpc/request/+")
    }

    /// Where to answer the RRPC request that came on `.../rrpc/request/${message_id}`.
    pub(crate) fn rrpc_response(&self, message_id: &str) -> String {
        self.sys(&format!("rrpc/response/{message_id}"))
    }
}

/// An Alink request: `{"id","version","params","method"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlinkRequest {
    /// The request id, echoed by the reply. Alink writes it as a string of digits; decoding
    /// also accepts a JSON number.
    pub id: String,
    pub version: String,
    /// The Alink method, e.g. `thing.event.property.post`.
    pub method: String,
    /// The method's parameters, kept as their exact JSON text.
    pub params: Json,
}

impl AlinkRequest {
    /// A version 1.0 request.
    pub fn new(id: impl Into<String>, method: impl Into<String>, params: Json) -> Self {
        AlinkRequest {
            id: id.into(),
            version: ALINK_VERSION.to_owned(),
            method: method.into(),
            params,
        }
    }

    /// A property report. Each property is written in the documented long form
    /// `{"Power":{"value":"on","time":1524448722000}}`, which carries the measuring time;
    /// `time` is left out when the property has none, and the cloud then stamps its own.
    /// Properties are written in the given order; codes are not de-duplicated.
    pub fn property_post(id: impl Into<String>, properties: &[Property]) -> Self {
        Self::new(
            id,
            METHOD_PROPERTY_POST,
            Json::from_serializable(&PropertyParams(properties)),
        )
    }

    /// The JSON bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a str,
            version: &'a str,
            params: &'a Json,
            method: &'a str,
        }
        serde_json::to_vec(&Wire {
            id: &self.id,
            version: &self.version,
            params: &self.params,
            method: &self.method,
        })
        .unwrap_or_default()
    }

    /// Reads a request. `id` and `method` are required; `version` defaults to `1.0` and
    /// `params` to `null`. Unknown keys (such as `sys`) are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            id: AlinkId,
            #[serde(default)]
            version: Option<String>,
            method: String,
            #[serde(borrow, default)]
            params: Option<&'a RawValue>,
        }
        let wire: Wire<'_> = parse_json("Alink request", bytes)?;
        Ok(AlinkRequest {
            id: wire.id.0,
            version: wire.version.unwrap_or_else(|| ALINK_VERSION.to_owned()),
            method: wire.method,
            params: raw_json(wire.params),
        })
    }
}

/// An Alink reply: `{"id","code","data","message"}`; `code` 200 is success.
#[derive(Debug, Clone, PartialEq)]
pub struct AlinkReply {
    /// The id of the request this answers.
    pub id: String,
    pub code: i64,
    pub data: Json,
    pub message: String,
}

impl AlinkReply {
    /// A success (code 200) with `data`.
    pub fn success(id: impl Into<String>, data: Json) -> Self {
        AlinkReply {
            id: id.into(),
            code: 200,
            data,
            message: "success".to_owned(),
        }
    }

    /// The JSON bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a str,
            code: i64,
            data: &'a Json,
            message: &'a str,
        }
        serde_json::to_vec(&Wire {
            id: &self.id,
            code: self.code,
            data: &self.data,
            message: &self.message,
        })
        .unwrap_or_default()
    }

    /// Reads a reply. `id` and `code` are required; `data` defaults to `null` and `message`
    /// to empty.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            id: AlinkId,
            code: i64,
            #[serde(borrow, default)]
            data: Option<&'a RawValue>,
            #[serde(default)]
            message: Option<String>,
        }
        let wire: Wire<'_> = parse_json("Alink reply", bytes)?;
        Ok(AlinkReply {
            id: wire.id.0,
            code: wire.code,
            data: raw_json(wire.data),
            message: wire.message.unwrap_or_default(),
        })
    }
}

/// Keeps a parsed JSON part as its exact text.
fn raw_json(raw: Option<&RawValue>) -> Json {
    raw.map_or_else(Json::null, |raw| Json::from_parsed(raw.get().to_owned()))
}

/// Properties serialized as Alink's long form, in order.
struct PropertyParams<'a>(&'a [Property]);

impl Serialize for PropertyParams<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            value: &'a Value,
            #[serde(skip_serializing_if = "Option::is_none")]
            time: Option<u64>,
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for property in self.0 {
            map.serialize_entry(
                &property.code,
                &Entry {
                    value: &property.value,
                    time: property.time_ms,
                },
            )?;
        }
        map.end()
    }
}

/// An Alink id: a string, or a JSON integer that some devices send instead.
#[derive(Debug, Default)]
pub(crate) struct AlinkId(pub String);

impl<'de> Deserialize<'de> for AlinkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = AlinkId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer id")
            }
            fn visit_str<E>(self, s: &str) -> Result<AlinkId, E> {
                Ok(AlinkId(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<AlinkId, E> {
                Ok(AlinkId(s))
            }
            fn visit_u64<E>(self, n: u64) -> Result<AlinkId, E> {
                Ok(AlinkId(n.to_string()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<AlinkId, E> {
                Ok(AlinkId(n.to_string()))
            }
        }

        d.deserialize_any(IdVisitor)
    }
}

/// The topic and payload of `command` on a device link of `topics` (the link speaks as that
/// device), or why it cannot be sent (a refusal: sending it again would not help):
///
/// | `reply_to` | `name` | publish |
/// |---|---|---|
/// | Alink `id` | `thing.service.property.set` | `…/property/set_reply`, Alink reply |
/// | RRPC message id | `rrpc` | `…/rrpc/response/{id}`, `params` as the body |
/// | Alink `id` | service identifier | `…/thing/service/{name}_reply`, Alink reply |
/// | – | `thing.event.property.post` | `…/thing/event/property/post`, Alink request |
/// | – | `thing.event.{id}.post` | `…/thing/event/{id}/post`, Alink request |
/// | – | `user/…` | `/{pk}/{dn}/user/…`, `params` as the body |
///
/// Replies take `code` (default 200), `data` (default `{}`) and `message` from the params;
/// a request is numbered by `next_id`.
pub(crate) fn command_message(
    topics: &Topics,
    command: &crate::event::Command,
    next_id: impl FnOnce() -> String,
) -> Result<(String, Vec<u8>), String> {
    use serde_json::Value as JsonValue;

    use crate::dialect::{command_params, json_field, topic_segment};
    let name = command.name.as_str();
    if let Some(request) = &command.reply_to {
        if name == "rrpc" {
            return Ok((
                topics.rrpc_response(request),
                command.params.as_str().into(),
            ));
        }
        let topic = if name == METHOD_PROPERTY_SET {
            topics.property_set_reply()
        } else if topic_segment(name) {
            topics.service_reply(name)
        } else {
            return Err(format!(
                "cannot answer with \"{name}\": name a service identifier, \
                 `thing.service.property.set` or `rrpc`"
            ));
        };
        let params = command_params(command)?;
        let reply = AlinkReply {
            id: request.clone(),
            code: params
                .get("code")
                .and_then(JsonValue::as_i64)
                .unwrap_or(200),
            data: json_field(&params, "data")
                .unwrap_or_else(|| Json::from_serializable(&serde_json::Map::new())),
            message: params
                .get("message")
                .and_then(JsonValue::as_str)
                .unwrap_or("success")
                .to_owned(),
        };
        return Ok((topic, reply.encode()));
    }
    if let Some(suffix) = name.strip_prefix("user/") {
        if suffix.is_empty() || suffix.contains(['+', '#']) {
            return Err(format!("\"{name}\" is not a custom topic"));
        }
        return Ok((topics.full_topic(name), command.params.as_str().into()));
    }
    let topic = match name.split('.').collect::<Vec<_>>().as_slice() {
        ["thing", "event", "property", "post"] => topics.property_post(),
        ["thing", "event", identifier, "post"] if topic_segment(identifier) => {
            topics.event_post(identifier)
        }
        _ => {
            return Err(format!(
                "\"{name}\" is not something a device sends: use \
                 `thing.event.property.post`, `thing.event.{{id}}.post` or a \
                 `user/...` topic (or set reply_to to answer a request)"
            ));
        }
    };
    let request = AlinkRequest::new(next_id(), name, command.params.clone());
    Ok((topic, request.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::ErrorKind;
    use proptest::prelude::*;

    const SECRET: &str = "not-a-real-device-secret";

    fn device() -> DeviceCredentials {
        DeviceCredentials::new("a1Pk", "lamp", SECRET)
    }

    #[test]
    fn link_sdk_defaults_are_pk_dot_dn_sha256_and_tls() {
        let creds = device();
        assert_eq!(creds.client_id, "a1Pk.lamp");
        assert_eq!(
            creds.mqtt_client_id(Some(1700000000000)),
            "a1Pk.lamp|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|"
        );
        assert_eq!(creds.username(), "lamp&a1Pk");
    }

    #[test]
    fn plain_tcp_is_securemode_3_and_no_timestamp_drops_it_everywhere() {
        let creds = DeviceCredentials {
            tls: false,
            sign_method: SignMethod::HmacSha1,
            ..device()
        };
        assert_eq!(
            creds.mqtt_client_id(None),
            "a1Pk.lamp|securemode=3,signmethod=hmacsha1|"
        );
        let without = hex::encode(SignMethod::HmacSha1.mac(
            SECRET.as_bytes(),
            b"clientIda1Pk.lampdeviceNamelampproductKeya1Pk",
        ));
        assert_eq!(creds.password(None), without);
        let with = hex::encode(SignMethod::HmacSha1.mac(
            SECRET.as_bytes(),
            b"clientIda1Pk.lampdeviceNamelampproductKeya1Pktimestamp5",
        ));
        assert_eq!(creds.password(Some(5)), with);
    }

    #[test]
    fn debug_output_redacts_the_device_secret() {
        assert!(!format!("{:?}", device()).contains(SECRET));
    }

    #[test]
    fn topics_match_the_link_sdk_layout() {
        let t = device().topics();
        assert_eq!(t.full_topic("user/test"), "/a1Pk/lamp/user/test");
        assert_eq!(t.full_topic("/user/test"), "/a1Pk/lamp/user/test");
        assert_eq!(
            t.property_post_reply(),
            "/sys/a1Pk/lamp/thing/event/property/post_reply"
        );
        assert_eq!(
            t.property_set_reply(),
            "/sys/a1Pk/lamp/thing/service/property/set_reply"
        );
        assert_eq!(t.service("Reboot"), "/sys/a1Pk/lamp/thing/service/Reboot");
        assert_eq!(
            t.service_reply("Reboot"),
            "/sys/a1Pk/lamp/thing/service/Reboot_reply"
        );
        assert_eq!(
            t.event_post("Error"),
            "/sys/a1Pk/lamp/thing/event/Error/post"
        );
        assert_eq!(
            t.event_post_reply("Error"),
            "/sys/a1Pk/lamp/thing/event/Error/post_reply"
        );
        assert_eq!(t.rrpc_request_filter(), "/sys/a1Pk/lamp/rrpc/request/+");
        assert_eq!(t.rrpc_response("1234"), "/sys/a1Pk/lamp/rrpc/response/1234");
        assert_eq!(
            public_instance_host("a1Pk", "cn-shanghai"),
            "a1Pk.iot-as-mqtt.cn-shanghai.aliyuncs.com"
        );
        assert_eq!(instance_host("iot-x"), "iot-x.mqtt.iothub.aliyuncs.com");
    }

    #[test]
    fn property_post_uses_the_long_form_in_order_with_optional_time() {
        let mut power = Property::new("Power", Value::Text("on".into()));
        power.time_ms = Some(1524448722000);
        let props = [power, Property::new("WF", Value::Float(23.6))];
        let request = AlinkRequest::property_post("7", &props);
        assert_eq!(
            String::from_utf8(request.encode()).unwrap(),
            r#"{"id":"7","version":"1.0","params":{"Power":{"value":"on","time":1524448722000},"WF":{"value":23.6}},"method":"thing.event.property.post"}"#
        );
    }

    #[test]
    fn decoding_accepts_numeric_ids_and_keeps_params_text_verbatim() {
        let body = br#"{"id":123,"sys":{"ack":0},"params":{"b":1.50, "a":2},"method":"thing.event.property.post"}"#;
        let request = AlinkRequest::decode(body).unwrap();
        assert_eq!(request.id, "123");
        assert_eq!(request.version, "1.0");
        assert_eq!(request.params.as_str(), r#"{"b":1.50, "a":2}"#);
    }

    #[test]
    fn replies_round_trip_and_default_their_optional_fields() {
        let reply = AlinkReply::success("9", Json::from_text("{\"x\":1}".into()).unwrap());
        assert_eq!(AlinkReply::decode(&reply.encode()).unwrap(), reply);
        let bare = AlinkReply::decode(br#"{"id":"1","code":460}"#).unwrap();
        assert_eq!((bare.code, bare.message.as_str()), (460, ""));
        assert_eq!(bare.data, Json::null());
    }

    #[test]
    fn malformed_alink_bodies_are_json_errors() {
        for bad in [
            &b"not json"[..],
            br#"{"id":"1"}"#,
            br#"{"id":true,"method":"m"}"#,
        ] {
            let err = AlinkRequest::decode(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Json, "{err}");
        }
        for bad in [&b"\xff"[..], br#"{"id":"1"}"#, br#"{"id":"1","code":"x"}"#] {
            let err = AlinkReply::decode(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Json, "{err}");
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn alink_requests_round_trip(id in "\\PC{0,12}", method in "[a-zA-Z.]{1,30}", params in json_value()) {
            let request = AlinkRequest::new(id, method, Json::from(params));
            prop_assert_eq!(AlinkRequest::decode(&request.encode()).unwrap(), request);
        }
    }
}
