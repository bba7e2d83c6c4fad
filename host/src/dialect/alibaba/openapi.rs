//! The cloud side of commands: Alibaba's RPC-style OpenAPI (product `Iot`, version
//! `2018-01-20`), signed with HMAC-SHA1 (SignatureVersion 1.0).
//!
//! `StringToSign = METHOD&%2F&pe(canonical)`, where `canonical` is every parameter sorted by
//! key, written `pe(k)=pe(v)` and joined by `&`; `Signature = base64(HMAC-SHA1(secret + "&",
//! StringToSign))`; `pe` is RFC 3986 percent-encoding. The nonce and the time are arguments,
//! so a request signs the same way every time in tests.

use std::collections::BTreeMap;
use std::fmt;

use crate::dialect::base64_encode;
use crate::dialect::crypto::hmac_sha1;
use crate::event::Json;
use crate::time;

/// The IoT Platform API version these actions belong to.
pub(crate) const API_VERSION: &str = "2018-01-20";
/// The only signature method of SignatureVersion 1.0.
pub(crate) const SIGNATURE_METHOD: &str = "HMAC-SHA1";
/// The signature version.
pub(crate) const SIGNATURE_VERSION: &str = "1.0";
/// The RRpc `Timeout` range the API accepts, in ms.
pub(crate) const RRPC_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 1000..=8000;

/// The API host of a region: `iot.${region}.aliyuncs.com`.
pub(crate) fn endpoint(region: &str) -> String {
    format!("iot.{region}.aliyuncs.com")
}

/// RFC 3986 percent-encoding of the UTF-8 bytes: `A-Za-z0-9-_.~` stay, every other byte
/// becomes `%XX` in upper case (so space is `%20`, `*` is `%2A`, `/` is `%2F`).
pub fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// The canonical query: parameters sorted by key (byte order), `pe(k)=pe(v)` joined by `&`.
/// It is also the query string to send, before `Signature` is appended.
fn canonical_query<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut params: Vec<(&str, &str)> = params.into_iter().collect();
    params.sort_unstable();
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `METHOD&%2F&pe(canonical query)`.
pub fn string_to_sign<'a>(
    method: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// `base64(HMAC-SHA1(key = secret + "&", string_to_sign))`.
pub fn signature(access_key_secret: &str, string_to_sign: &str) -> String {
    let key = format!("{access_key_secret}&");
    base64_encode(&hmac_sha1(key.as_bytes(), string_to_sign.as_bytes()))
}

/// An AccessKey pair. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiCredentials {
    pub access_key_id: String,
    pub access_key_secret: String,
}

impl fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .finish()
    }
}

/// The per-call common parameters that are not fixed: where, when, and a nonce.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// `RegionId`, e.g. `cn-shanghai`.
    pub region_id: &'a str,
    /// `SignatureNonce`: unique per call (the server refuses a nonce seen in the last 15
    /// minutes), so callers pass a fresh random one.
    pub nonce: &'a str,
    /// `Timestamp`, Unix ms; sent as `YYYY-MM-DDThh:mm:ssZ`.
    pub timestamp_ms: u64,
}

/// Why a request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("RRpc timeout {0} ms is outside the 1000–8000 ms the API accepts")]
    RrpcTimeout(u32),
    #[error("Pub QoS {0} is not supported: the API accepts 0 or 1")]
    Qos(u8),
}

/// One API call: its `Action` and action parameters; the common parameters are added when it
/// is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcRequest {
    action: String,
    params: BTreeMap<String, String>,
}

impl RpcRequest {
    /// A call of `action` with no parameters yet.
    pub fn new(action: impl Into<String>) -> Self {
        RpcRequest {
            action: action.into(),
            params: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) an action parameter. A common parameter of the same name is
    /// overwritten when signing.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.insert(key.into(), value.into());
        self
    }

    /// `Pub`: publishes `message` (sent base64) on a device's custom topic.
    pub fn publish(
        product_key: &str,
        topic_full_name: &str,
        message: &[u8],
        qos: u8,
    ) -> Result<Self, RequestError> {
        if qos > 1 {
            return Err(RequestError::Qos(qos));
        }
        Ok(Self::new("Pub")
            .param("ProductKey", product_key)
            .param("TopicFullName", topic_full_name)
            .param("MessageContent", base64_encode(message))
            .param("Qos", qos.to_string()))
    }

    /// `SetDeviceProperty`: sets properties; `items` is the property map, e.g.
    /// `{"PowerSwitch":1}`.
    pub(crate) fn set_device_property(product_key: &str, device_name: &str, items: &Json) -> Self {
        Self::new("SetDeviceProperty")
            .param("ProductKey", product_key)
            .param("DeviceName", device_name)
            .param("Items", items.as_str())
    }

    /// `InvokeThingService`: calls the thing-model service `identifier` with `args`.
    pub(crate) fn invoke_thing_service(
        product_key: &str,
        device_name: &str,
        identifier: &str,
        args: &Json,
    ) -> Self {
        Self::new("InvokeThingService")
            .param("ProductKey", product_key)
            .param("DeviceName", device_name)
            .param("Identifier", identifier)
            .param("Args", args.as_str())
    }

    /// `RRpc`: sends `request` (base64) and waits up to `timeout_ms` (1000–8000) for the
    /// device's answer.
    pub fn rrpc(
        product_key: &str,
        device_name: &str,
        request: &[u8],
        timeout_ms: u32,
    ) -> Result<Self, RequestError> {
        if !RRPC_TIMEOUT_MS.contains(&timeout_ms) {
            return Err(RequestError::RrpcTimeout(timeout_ms));
        }
        Ok(Self::new("RRpc")
            .param("ProductKey", product_key)
            .param("DeviceName", device_name)
            .param("RequestBase64Byte", base64_encode(request))
            .param("Timeout", timeout_ms.to_string()))
    }

    /// The `Action`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// An action parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Adds the common parameters and signs the call for HTTP `method` (`GET` or `POST`).
    pub fn sign(
        &self,
        method: &str,
        credentials: &ApiCredentials,
        context: &CallContext<'_>,
    ) -> SignedRequest {
        let timestamp = time::format_iso_seconds(context.timestamp_ms);
        let mut params: BTreeMap<&str, &str> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        params.extend([
            ("Format", "JSON"),
            ("Version", API_VERSION),
            ("AccessKeyId", credentials.access_key_id.as_str()),
            ("SignatureMethod", SIGNATURE_METHOD),
            ("SignatureVersion", SIGNATURE_VERSION),
            ("SignatureNonce", context.nonce),
            ("Timestamp", timestamp.as_str()),
            ("RegionId", context.region_id),
            ("Action", self.action.as_str()),
        ]);
        let string_to_sign = string_to_sign(method, params.iter().map(|(k, v)| (*k, *v)));
        let signature = signature(&credentials.access_key_secret, &string_to_sign);
        let query = format!(
            "{}&Signature={}",
            canonical_query(params),
            percent_encode(&signature)
        );
        SignedRequest {
            query,
            string_to_sign,
            signature,
        }
    }
}

/// A signed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The complete query string, `Signature` last, every key and value percent-encoded.
    pub query: String,
    /// What was signed (for debugging a `SignatureDoesNotMatch`; contains no secret).
    pub string_to_sign: String,
    /// The signature, before percent-encoding.
    pub signature: String,
}

impl SignedRequest {
    /// The HTTPS URL of the call in `region` (the query in the URL suits `GET`).
    pub fn url(&self, region: &str) -> String {
        format!("https://{}/?{}", endpoint(region), self.query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn credentials() -> ApiCredentials {
        ApiCredentials {
            access_key_id: "testid".into(),
            access_key_secret: "testsecret".into(),
        }
    }

    const CONTEXT: CallContext<'static> = CallContext {
        region_id: "cn-shanghai",
        nonce: "nonce-1",
        timestamp_ms: 1_707_532_200_000,
    };

    #[test]
    fn percent_encoding_follows_rfc_3986_not_form_encoding() {
        assert_eq!(percent_encode("a b*c~/+="), "a%20b%2Ac~%2F%2B%3D");
        assert_eq!(percent_encode("Az09-_.~"), "Az09-_.~");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn signed_query_carries_common_params_and_the_signature_last() {
        let request = RpcRequest::publish("a1Pk", "/a1Pk/lamp/user/get", b"{\"on\":1}", 1)
            .unwrap()
            .param("IotInstanceId", "iot-x");
        let signed = request.sign("GET", &credentials(), &CONTEXT);
        assert_eq!(
            signed.query,
            format!(
                "AccessKeyId=testid&Action=Pub&Format=JSON&IotInstanceId=iot-x&MessageContent=eyJvbiI6MX0%3D&ProductKey=a1Pk&Qos=1&RegionId=cn-shanghai&SignatureMethod=HMAC-SHA1&SignatureNonce=nonce-1&SignatureVersion=1.0&Timestamp=2024-02-10T02%3A30%3A00Z&TopicFullName=%2Fa1Pk%2Flamp%2Fuser%2Fget&Version=2018-01-20&Signature={}",
                percent_encode(&signed.signature)
            )
        );
        let canonical = signed.query.rsplit_once("&Signature=").unwrap().0;
        assert_eq!(
            signed.string_to_sign,
            format!("GET&%2F&{}", percent_encode(canonical))
        );
        assert_eq!(
            signed.signature,
            signature("testsecret", &signed.string_to_sign)
        );
        assert!(
            signed
                .url("cn-shanghai")
                .starts_with("https://iot.cn-shanghai.aliyuncs.com/?AccessKeyId=")
        );
    }

    #[test]
    fn common_params_win_over_caller_params_of_the_same_name() {
        let signed = RpcRequest::new("Pub").param("Version", "1999-01-01").sign(
            "GET",
            &credentials(),
            &CONTEXT,
        );
        assert!(signed.query.contains("Version=2018-01-20"));
        assert!(!signed.query.contains("1999"));
    }

    #[test]
    fn action_constructors_set_the_documented_parameters() {
        let items = Json::from_text(r#"{"PowerSwitch":1}"#.into()).unwrap();
        let set = RpcRequest::set_device_property("pk", "dn", &items);
        assert_eq!(set.action(), "SetDeviceProperty");
        assert_eq!(set.get("Items"), Some(r#"{"PowerSwitch":1}"#));
        assert_eq!(set.get("DeviceName"), Some("dn"));
        let call = RpcRequest::invoke_thing_service("pk", "dn", "Reboot", &Json::null());
        assert_eq!(
            (call.get("Identifier"), call.get("Args")),
            (Some("Reboot"), Some("null"))
        );
        let rrpc = RpcRequest::rrpc("pk", "dn", b"ping", 8000).unwrap();
        assert_eq!(rrpc.get("RequestBase64Byte"), Some("cGluZw=="));
        assert_eq!(rrpc.get("Timeout"), Some("8000"));
    }

    #[test]
    fn rrpc_timeouts_outside_1000_to_8000_ms_are_refused() {
        assert_eq!(
            RpcRequest::rrpc("pk", "dn", b"", 999),
            Err(RequestError::RrpcTimeout(999))
        );
        assert_eq!(
            RpcRequest::rrpc("pk", "dn", b"", 8001),
            Err(RequestError::RrpcTimeout(8001))
        );
        assert!(RpcRequest::rrpc("pk", "dn", b"", 1000).is_ok());
    }

    #[test]
    fn pub_refuses_qos_2() {
        assert_eq!(
            RpcRequest::publish("pk", "/t", b"", 2),
            Err(RequestError::Qos(2))
        );
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        assert!(!format!("{:?}", credentials()).contains("testsecret"));
    }

    /// Undoes [`percent_encode`]; `None` on a malformed escape or non-UTF-8 result.
    fn percent_decode(text: &str) -> Option<String> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    proptest! {
        #[test]
        fn percent_encoding_round_trips(text in "\\PC{0,40}") {
            let encoded = percent_encode(&text);
            prop_assert_eq!(percent_decode(&encoded), Some(text));
            prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
        }

        #[test]
        fn unreserved_text_is_left_alone(text in "[A-Za-z0-9._~-]{0,40}") {
            prop_assert_eq!(percent_encode(&text), text);
        }
    }
}
