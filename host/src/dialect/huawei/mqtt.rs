//! Device-side MQTT: the credentials a device connects with and the topics it uses.
//!
//! A device connects with client id `${device_id}_0_${sign_type}_${YYYYMMDDHH}`, username
//! `device_id` and password `hex(HMAC-SHA256(key = YYYYMMDDHH, message = secret))`: the UTC hour
//! stamp is the HMAC *key*, the secret is the message. Two topic families exist side by side:
//! the legacy v1 topics (`/huawei/v1/devices/${id}/data/json` up, `/command/json` down) and the
//! IoTDA `$oc/devices/${id}/sys/...` topics.
//!
//! The builders here take ids from configuration or from a decoded topic; they do not check
//! them. The reply builders ([`super::reply`]) do, because they also take ids from messages.

use std::fmt;

use crate::dialect::clip;
use crate::dialect::crypto::hmac_sha256;
use crate::time;

/// MQTT over TLS 1.2, the port to use.
pub const TLS_PORT: u16 = 8883;
/// Plain MQTT, for test setups only: the credentials then cross the network in clear.
pub const PLAIN_PORT: u16 = 1883;

/// The prefix of every legacy v1 device topic.
pub(crate) const LEGACY_PREFIX: &str = "/huawei/v1/devices/";
/// The prefix of every IoTDA device topic.
pub(crate) const OC_PREFIX: &str = "$oc/devices/";

/// The last instant whose hour stamp still has four year digits (9999-12-31T23:59:59.999Z).
/// Later clocks are clamped to it so a stamp is always the 10 digits the broker expects.
const LAST_STAMPABLE_MS: u64 = 253_402_300_799_999;

/// Whether the broker checks the hour stamp in the client id against its clock.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum SignType {
    /// `0`: the stamp is not checked, so a device with a wrong clock can still connect.
    #[default]
    #[serde(rename = "0")]
    NoCheck = 0,
    /// `1`: the stamp must be close to the broker's time, so a captured password expires.
    #[serde(rename = "1")]
    Check = 1,
}

impl SignType {
    /// The digit written into the client id.
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::NoCheck => "0",
            SignType::Check => "1",
        }
    }
}

impl std::str::FromStr for SignType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "0" => Ok(SignType::NoCheck),
            "1" => Ok(SignType::Check),
            _ => Err(format!(
                "unknown Huawei sign type `{}`: expected 0 (timestamp not checked) or 1 (checked)",
                clip(s)
            )),
        }
    }
}

impl fmt::Display for SignType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An hour stamp that is not `YYYYMMDDHH`. Huawei's broker refuses such a client id with "bad
/// credentials", after which its SDKs stop retrying, so it is caught before connecting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Huawei hour stamp `{stamp}` is not 10 digits (YYYYMMDDHH, UTC)")]
pub struct HourStampError {
    /// The offending stamp, clipped.
    pub stamp: String,
}

/// A device's MQTT credentials. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    /// The device id IoTDA assigned (usually `${product_id}_${node_id}`).
    pub device_id: String,
    /// The device secret set at registration.
    pub secret: String,
    /// Whether the broker checks the client id's hour stamp.
    pub sign_type: SignType,
}

impl DeviceCredentials {
    pub fn new(
        device_id: impl Into<String>,
        secret: impl Into<String>,
        sign_type: SignType,
    ) -> Self {
        DeviceCredentials {
            device_id: device_id.into(),
            secret: secret.into(),
            sign_type,
        }
    }

    /// `${device_id}_0_${sign_type}_${hour_stamp}`; the `0` says the device id is used as is.
    pub fn client_id(&self, hour_stamp: &str) -> Result<String, HourStampError> {
        check_hour_stamp(hour_stamp)?;
        Ok(self.client_id_unchecked(hour_stamp))
    }

    /// The client id for the UTC hour containing `ms` (Unix milliseconds).
    pub fn client_id_at(&self, ms: u64) -> String {
        self.client_id_unchecked(&hour_stamp_at(ms))
    }

    /// The MQTT username: the device id.
    pub fn username(&self) -> &str {
        &self.device_id
    }

    /// Lower-hex HMAC-SHA256 with the hour stamp's bytes as the key and the secret as the
    /// message. The stamp must be the one in the client id.
    pub fn password(&self, hour_stamp: &str) -> Result<String, HourStampError> {
        check_hour_stamp(hour_stamp)?;
        Ok(self.password_unchecked(hour_stamp))
    }

    /// The password for the UTC hour containing `ms`.
    pub fn password_at(&self, ms: u64) -> String {
        self.password_unchecked(&hour_stamp_at(ms))
    }

    fn client_id_unchecked(&self, hour_stamp: &str) -> String {
        format!(
            "{}_0_{}_{hour_stamp}",
            self.device_id,
            self.sign_type.as_str()
        )
    }

    fn password_unchecked(&self, hour_stamp: &str) -> String {
        hex::encode(hmac_sha256(hour_stamp.as_bytes(), self.secret.as_bytes()))
    }
}

impl fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("device_id", &self.device_id)
            .field("secret", &"<redacted>")
            .field("sign_type", &self.sign_type)
            .finish()
    }
}

/// `YYYYMMDDHH` for `ms`, clamped so that it always has exactly 10 digits.
fn hour_stamp_at(ms: u64) -> String {
    time::format_hour_stamp(ms.min(LAST_STAMPABLE_MS))
}

fn check_hour_stamp(stamp: &str) -> Result<(), HourStampError> {
    if stamp.len() == 10 && stamp.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(HourStampError { stamp: clip(stamp) })
    }
}

/// Legacy v1: where a device publishes reports (`deviceReq`) and command answers (`deviceRsp`).
pub(crate) fn legacy_data_topic(device_id: &str) -> String {
    format!("{LEGACY_PREFIX}{device_id}/data/json")
}

/// Legacy v1: where commands (`cloudReq`) arrive; the device subscribes to it.
pub(crate) fn legacy_command_topic(device_id: &str) -> String {
    format!("{LEGACY_PREFIX}{device_id}/command/json")
}

/// IoTDA: where a device reports property values.
pub(crate) fn properties_report_topic(device_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/properties/report")
}

/// IoTDA: the filter a device subscribes to for commands (each arrives on
/// `.../sys/commands/request_id=${rid}`).
pub(crate) fn commands_filter(device_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/commands/#")
}

/// IoTDA: a command as the platform sends it (for tests and recordings).
pub fn command_topic(device_id: &str, request_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/commands/request_id={request_id}")
}

/// IoTDA: where the answer to command `request_id` goes (within 20 s).
pub(crate) fn command_response_topic(device_id: &str, request_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/commands/response/request_id={request_id}")
}

/// IoTDA: the filter a device subscribes to for property-set requests.
pub(crate) fn properties_set_filter(device_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/properties/set/#")
}

/// IoTDA: a property-set request as the platform sends it.
pub fn properties_set_topic(device_id: &str, request_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/properties/set/request_id={request_id}")
}

/// IoTDA: where the answer to property-set request `request_id` goes.
pub(crate) fn properties_set_response_topic(device_id: &str, request_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/properties/set/response/request_id={request_id}")
}

/// IoTDA: the filter a device subscribes to for property-get requests.
pub(crate) fn properties_get_filter(device_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/properties/get/#")
}

/// IoTDA: a property-get request as the platform sends it.
pub fn properties_get_topic(device_id: &str, request_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/properties/get/request_id={request_id}")
}

/// IoTDA: where the answer to property-get request `request_id` goes.
pub fn properties_get_response_topic(device_id: &str, request_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/properties/get/response/request_id={request_id}")
}

/// IoTDA: free-form messages from the platform to the device.
pub(crate) fn messages_down_topic(device_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/messages/down")
}

/// IoTDA: free-form messages from the device to the platform.
pub fn messages_up_topic(device_id: &str) -> String {
    format!("{OC_PREFIX}{device_id}/sys/messages/up")
}

/// What a device topic carries, as far as normalization cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Legacy `.../data/json`: `deviceReq` reports and `deviceRsp` answers.
    LegacyData,
    /// Legacy `.../command/json`: `cloudReq` commands.
    LegacyCommand,
    Commands,
    CommandResponse,
    PropertiesReport,
    PropertiesSet,
    PropertiesSetResponse,
    PropertiesGet,
    PropertiesGetResponse,
    MessagesUp,
    MessagesDown,
    EventsUp,
    EventsDown,
    /// A custom topic `$oc/devices/${id}/user/...`.
    User,
    /// Any other topic under a device prefix (gateway batch reports, shadow, ...).
    Other,
}

/// A device MQTT topic taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceTopic<'a> {
    /// The device id in the topic: the device itself or, for a sub-device, its gateway.
    pub(crate) device_id: &'a str,
    pub(crate) route: Route,
    /// The topic's own name for what it carries, with `/` as `.` and without the request id:
    /// `properties.set`, `commands.response`, `user.my.topic`, `data` (legacy).
    pub(crate) action: String,
    /// The `request_id=` segment, or the `?request_id=` query an uplink may carry.
    pub(crate) request_id: Option<&'a str>,
}

impl<'a> DeviceTopic<'a> {
    /// Recognizes a legacy or IoTDA device topic; `None` for anything else (an AMQP push).
    pub fn parse(topic: &'a str) -> Option<Self> {
        let (path, query) = match topic.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (topic, None),
        };
        let query_request_id = query.and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("request_id="))
        });

        if let Some(rest) = path.strip_prefix(LEGACY_PREFIX) {
            let (device_id, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let (route, action) = match tail {
                "data/json" => (Route::LegacyData, "data".to_owned()),
                "command/json" => (Route::LegacyCommand, "command".to_owned()),
                other => (Route::Other, other.replace('/', ".")),
            };
            return Some(DeviceTopic {
                device_id,
                route,
                action,
                request_id: non_empty(query_request_id),
            });
        }

        let rest = path.strip_prefix(OC_PREFIX)?;
        let (device_id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(sys) = tail.strip_prefix("sys/") else {
            let route = if tail == "user" || tail.starts_with("user/") {
                Route::User
            } else {
                Route::Other
            };
            return Some(DeviceTopic {
                device_id,
                route,
                action: tail.replace('/', "."),
                request_id: non_empty(query_request_id),
            });
        };
        let (sys_path, segment_request_id) = match sys.rsplit_once('/') {
            Some((head, last)) => match last.strip_prefix("request_id=") {
                Some(rid) => (head, Some(rid)),
                None => (sys, None),
            },
            None => (sys, None),
        };
        let route = match sys_path {
            "commands" => Route::Commands,
            "commands/response" => Route::CommandResponse,
            "properties/report" => Route::PropertiesReport,
            "properties/set" => Route::PropertiesSet,
            "properties/set/response" => Route::PropertiesSetResponse,
            "properties/get" => Route::PropertiesGet,
            "properties/get/response" => Route::PropertiesGetResponse,
            "messages/up" => Route::MessagesUp,
            "messages/down" => Route::MessagesDown,
            "events/up" => Route::EventsUp,
            "events/down" => Route::EventsDown,
            _ => Route::Other,
        };
        Some(DeviceTopic {
            device_id,
            route,
            action: sys_path.replace('/', "."),
            request_id: non_empty(segment_request_id.or(query_request_id)),
        })
    }
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(sign_type: SignType) -> DeviceCredentials {
        DeviceCredentials::new("prod_node-1", "s3cret-value", sign_type)
    }

    #[test]
    fn client_id_carries_the_sign_type_and_hour_stamp() {
        assert_eq!(
            credentials(SignType::Check)
                .client_id("2024021002")
                .unwrap(),
            "prod_node-1_0_1_2024021002"
        );
        assert_eq!(
            credentials(SignType::NoCheck)
                .client_id("2024021002")
                .unwrap(),
            "prod_node-1_0_0_2024021002"
        );
        assert_eq!(credentials(SignType::NoCheck).username(), "prod_node-1");
    }

    #[test]
    fn password_keys_the_hmac_with_the_hour_stamp_not_the_secret() {
        let creds = credentials(SignType::NoCheck);
        let expected = hex::encode(hmac_sha256(b"2024021002", b"s3cret-value"));
        assert_eq!(creds.password("2024021002").unwrap(), expected);
        assert_ne!(
            creds.password("2024021002").unwrap(),
            hex::encode(hmac_sha256(b"s3cret-value", b"2024021002"))
        );
    }

    #[test]
    fn clock_based_credentials_use_the_utc_hour() {
        // 2024-02-10T02:30:00Z.
        let creds = credentials(SignType::Check);
        assert_eq!(
            creds.client_id_at(1_707_532_200_000),
            creds.client_id("2024021002").unwrap()
        );
        assert_eq!(
            creds.password_at(1_707_532_200_000),
            creds.password("2024021002").unwrap()
        );
    }

    #[test]
    fn far_future_clock_still_gives_a_ten_digit_stamp() {
        let id = credentials(SignType::Check).client_id_at(u64::MAX);
        assert!(id.ends_with("_9999123123"), "{id}");
    }

    #[test]
    fn hour_stamps_that_are_not_ten_digits_are_refused() {
        let creds = credentials(SignType::Check);
        for bad in [
            "",
            "202402100",
            "20240210020",
            "2024-02-10",
            "２０２４０２１００２",
        ] {
            assert!(creds.client_id(bad).is_err(), "{bad}");
            assert!(creds.password(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let text = format!("{:?}", credentials(SignType::Check));
        assert!(!text.contains("s3cret-value"), "{text}");
        assert!(text.contains("prod_node-1"));
    }

    #[test]
    fn sign_type_parses_only_zero_and_one() {
        assert_eq!("0".parse::<SignType>(), Ok(SignType::NoCheck));
        assert_eq!("1".parse::<SignType>(), Ok(SignType::Check));
        assert!("2".parse::<SignType>().unwrap_err().contains("expected 0"));
        assert_eq!(SignType::Check as u8, 1);
    }

    #[test]
    fn topic_builders_follow_the_documented_layout() {
        assert_eq!(legacy_data_topic("d"), "/huawei/v1/devices/d/data/json");
        assert_eq!(
            legacy_command_topic("d"),
            "/huawei/v1/devices/d/command/json"
        );
        assert_eq!(
            properties_report_topic("d"),
            "$oc/devices/d/sys/properties/report"
        );
        assert_eq!(commands_filter("d"), "$oc/devices/d/sys/commands/#");
        assert_eq!(
            command_response_topic("d", "r1"),
            "$oc/devices/d/sys/commands/response/request_id=r1"
        );
        assert_eq!(
            properties_set_topic("d", "r1"),
            "$oc/devices/d/sys/properties/set/request_id=r1"
        );
        assert_eq!(
            properties_set_response_topic("d", "r1"),
            "$oc/devices/d/sys/properties/set/response/request_id=r1"
        );
        assert_eq!(
            properties_get_topic("d", "r1"),
            "$oc/devices/d/sys/properties/get/request_id=r1"
        );
        assert_eq!(
            properties_get_response_topic("d", "r1"),
            "$oc/devices/d/sys/properties/get/response/request_id=r1"
        );
        assert_eq!(messages_down_topic("d"), "$oc/devices/d/sys/messages/down");
        assert_eq!(messages_up_topic("d"), "$oc/devices/d/sys/messages/up");
    }

    #[test]
    fn every_built_topic_parses_back_to_its_route_and_request_id() {
        let cases = [
            (legacy_data_topic("d"), Route::LegacyData, None),
            (legacy_command_topic("d"), Route::LegacyCommand, None),
            (properties_report_topic("d"), Route::PropertiesReport, None),
            (command_topic("d", "r"), Route::Commands, Some("r")),
            (
                command_response_topic("d", "r"),
                Route::CommandResponse,
                Some("r"),
            ),
            (
                properties_set_topic("d", "r"),
                Route::PropertiesSet,
                Some("r"),
            ),
            (
                properties_set_response_topic("d", "r"),
                Route::PropertiesSetResponse,
                Some("r"),
            ),
            (
                properties_get_topic("d", "r"),
                Route::PropertiesGet,
                Some("r"),
            ),
            (
                properties_get_response_topic("d", "r"),
                Route::PropertiesGetResponse,
                Some("r"),
            ),
            (messages_down_topic("d"), Route::MessagesDown, None),
            (messages_up_topic("d"), Route::MessagesUp, None),
        ];
        for (topic, route, request_id) in cases {
            let parsed = DeviceTopic::parse(&topic).unwrap();
            assert_eq!(parsed.device_id, "d", "{topic}");
            assert_eq!(parsed.route, route, "{topic}");
            assert_eq!(parsed.request_id, request_id, "{topic}");
        }
    }

    #[test]
    fn topic_actions_drop_the_request_id_and_use_dots() {
        let parsed =
            DeviceTopic::parse("$oc/devices/d/sys/properties/set/response/request_id=9").unwrap();
        assert_eq!(parsed.action, "properties.set.response");
        let custom = DeviceTopic::parse("$oc/devices/d/user/a/b").unwrap();
        assert_eq!(
            (custom.route, custom.action.as_str()),
            (Route::User, "user.a.b")
        );
        let batch =
            DeviceTopic::parse("$oc/devices/gw/sys/gateway/sub_devices/properties/report").unwrap();
        assert_eq!(batch.route, Route::Other);
        assert_eq!(batch.action, "gateway.sub_devices.properties.report");
    }

    #[test]
    fn uplink_request_id_may_come_as_a_query() {
        let parsed = DeviceTopic::parse("$oc/devices/d/sys/messages/up?request_id=abc").unwrap();
        assert_eq!(parsed.route, Route::MessagesUp);
        assert_eq!(parsed.request_id, Some("abc"));
    }

    #[test]
    fn non_device_topics_are_not_recognized() {
        for topic in [
            "",
            "/pk/dn/thing/event/property/post",
            "$oc/device/d/sys/properties/report",
            "huawei/v1/devices/d/data/json",
        ] {
            assert_eq!(DeviceTopic::parse(topic), None, "{topic}");
        }
    }
}
