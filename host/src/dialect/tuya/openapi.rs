//! Tuya OpenAPI request signing (HMAC-SHA256), tokens and device commands.
//!
//! `sign = UPPER_HEX(HMAC-SHA256(secret, client_id + access_token + t + nonce + stringToSign))`
//! with `stringToSign = METHOD \n sha256_hex(body) \n signed-headers \n path[?sorted query]`.
//! Token calls carry no access token. The body hash is over the exact bytes sent, so callers
//! sign the body they then transmit, never a re-serialization of it.

use std::fmt;

use serde::Serialize;

use crate::dialect::crypto::{hmac_sha256, sha256_hex};

/// Path of the token call (`grant_type=1` is the simple mode for cloud projects).
pub(crate) const TOKEN_PATH: &str = "/v1.0/token";
/// The error code Tuya returns for an invalid or expired token: get a new one and retry.
pub(crate) const TOKEN_INVALID_CODE: i64 = 1010;

/// The project's OpenAPI credentials. `Debug` never shows the secret.
#[derive(Clone)]
pub struct ApiCredentials {
    pub client_id: String,
    pub secret: String,
}

impl fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiCredentials")
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// One request to sign.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: &'a str,
    /// The path, without query.
    pub path: &'a str,
    /// Query parameters; they are signed sorted by key, values as given (not percent-encoded).
    pub query: &'a [(&'a str, &'a str)],
    /// The exact body bytes to send (empty for GET).
    pub body: &'a [u8],
    /// Headers named in `Signature-Headers`, in that order; usually none.
    pub signed_headers: &'a [(&'a str, &'a str)],
}

impl Request<'_> {
    /// The path with the query sorted by key: what is signed, and what to request.
    pub fn url(&self) -> String {
        if self.query.is_empty() {
            return self.path.to_owned();
        }
        let mut query = self.query.to_vec();
        query.sort_by(|a, b| a.0.cmp(b.0));
        let joined: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}?{}", self.path, joined.join("&"))
    }

    /// `METHOD \n sha256_hex(body) \n headers \n url`.
    pub fn string_to_sign(&self) -> String {
        let headers: String = self
            .signed_headers
            .iter()
            .map(|(k, v)| format!("{k}:{v}\n"))
            .collect();
        format!(
            "{}\n{}\n{}\n{}",
            self.method,
            sha256_hex(self.body),
            headers,
            self.url()
        )
    }
}

/// A computed signature with the values that must be sent alongside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The `sign` header: upper-case hex.
    pub sign: String,
    /// The `t` header: 13-digit milliseconds, as signed.
    pub t: String,
    /// The `nonce` header, as signed (omitted when empty).
    pub nonce: String,
    /// What was signed (for debugging signature mismatches; contains no secret).
    pub string_to_sign: String,
}

/// Signs `request`. `access_token` is empty for token calls.
pub fn sign(
    credentials: &ApiCredentials,
    access_token: &str,
    t_ms: u64,
    nonce: &str,
    request: &Request<'_>,
) -> Signed {
    let t = t_ms.to_string();
    let string_to_sign = request.string_to_sign();
    let message = format!(
        "{}{access_token}{t}{nonce}{string_to_sign}",
        credentials.client_id
    );
    Signed {
        sign: hex::encode_upper(hmac_sha256(
            credentials.secret.as_bytes(),
            message.as_bytes(),
        )),
        t,
        nonce: nonce.to_owned(),
        string_to_sign,
    }
}

/// The headers to send with a signed request.
pub fn headers(
    credentials: &ApiCredentials,
    access_token: &str,
    signed: &Signed,
    request: &Request<'_>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("client_id", credentials.client_id.clone()),
        ("sign", signed.sign.clone()),
        ("t", signed.t.clone()),
        ("sign_method", "HMAC-SHA256".to_owned()),
        ("Content-Type", "application/json".to_owned()),
    ];
    if !signed.nonce.is_empty() {
        headers.push(("nonce", signed.nonce.clone()));
    }
    if !access_token.is_empty() {
        headers.push(("access_token", access_token.to_owned()));
    }
    if !request.signed_headers.is_empty() {
        let names: Vec<&str> = request.signed_headers.iter().map(|(k, _)| *k).collect();
        headers.push(("Signature-Headers", names.join(":")));
    }
    headers
}

/// The token refresh path for a refresh token.
pub(crate) fn refresh_path(refresh_token: &str) -> String {
    format!("{TOKEN_PATH}/{refresh_token}")
}

/// The device command path, or why `device_id` cannot be put in it.
///
/// The id comes from a plugin, and the request goes out signed with the project's token: an
/// id such as `../../v1.0/token` or `x?y=` would reach another endpoint of the API with the
/// project's rights. Tuya's device ids are letters and digits, so an id that is not a plain
/// path segment (letters, digits, `-`, `_`, `.`; not `.` or `..`) is refused rather than
/// percent-encoded: no real device has one, and an encoded id would only be refused by the API
/// after a token call.
pub fn command_path(device_id: &str) -> Result<String, String> {
    if !is_plain_segment(device_id) {
        return Err(format!(
            "device id {device_id:?} cannot go into the command URL: a Tuya device id is \
             letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(format!("/v1.0/iot-03/devices/{device_id}/commands"))
}

/// True if `text` is one URL path segment that needs no escaping and means no directory
/// move: unreserved characters only (RFC 3986 less `~`), and neither `.` nor `..`.
pub(crate) fn is_plain_segment(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// One datapoint to set.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DpCommand<'a> {
    pub code: &'a str,
    pub value: &'a serde_json::value::RawValue,
}

/// The command body `{"commands":[{"code":…,"value":…}]}`.
pub(crate) fn command_body(commands: &[DpCommand<'_>]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        commands: &'a [DpCommand<'a>],
    }
    serde_json::to_vec(&Body { commands }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> ApiCredentials {
        ApiCredentials {
            client_id: "cid".into(),
            secret: "topsecret".into(),
        }
    }

    #[test]
    fn query_is_signed_sorted_and_unencoded() {
        let req = Request {
            method: "GET",
            path: "/v1.0/x",
            query: &[("b", "2,3"), ("a", "1")],
            body: b"",
            signed_headers: &[],
        };
        assert_eq!(req.url(), "/v1.0/x?a=1&b=2,3");
        assert!(req.string_to_sign().ends_with("\n\n/v1.0/x?a=1&b=2,3"));
    }

    #[test]
    fn signed_headers_sit_between_hash_and_url() {
        let req = Request {
            method: "GET",
            path: "/p",
            query: &[],
            body: b"",
            signed_headers: &[("area_id", "29"), ("call_id", "8a")],
        };
        assert_eq!(
            req.string_to_sign(),
            format!("GET\n{}\narea_id:29\ncall_id:8a\n\n/p", sha256_hex(b""))
        );
        let signed = sign(&creds(), "tok", 1, "", &req);
        let headers = headers(&creds(), "tok", &signed, &req);
        assert!(headers.contains(&("Signature-Headers", "area_id:call_id".to_owned())));
    }

    #[test]
    fn token_and_nonce_change_the_signature() {
        let req = Request {
            method: "POST",
            path: "/p",
            query: &[],
            body: b"{}",
            signed_headers: &[],
        };
        let plain = sign(&creds(), "", 1589462286040, "", &req);
        assert_eq!(plain.sign.len(), 64);
        assert!(
            plain
                .sign
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert_ne!(
            plain.sign,
            sign(&creds(), "tok", 1589462286040, "", &req).sign
        );
        assert_ne!(
            plain.sign,
            sign(&creds(), "", 1589462286040, "n", &req).sign
        );
        let hs = headers(&creds(), "", &plain, &req);
        assert!(
            !hs.iter()
                .any(|(k, _)| *k == "access_token" || *k == "nonce")
        );
        assert!(!format!("{:?}", creds()).contains("topsecret"));
    }

    #[test]
    fn command_body_matches_the_documented_shape() {
        let value = serde_json::value::RawValue::from_string("true".into()).unwrap();
        let body = command_body(&[DpCommand {
            code: "switch_led",
            value: &value,
        }]);
        assert_eq!(
            body,
            br#"{"commands":[{"code":"switch_led","value":true}]}"#
        );
        assert_eq!(
            command_path("vdev1").as_deref(),
            Ok("/v1.0/iot-03/devices/vdev1/commands")
        );
        assert_eq!(refresh_path("r1"), "/v1.0/token/r1");
    }

    #[test]
    fn a_device_id_that_is_not_a_plain_path_segment_is_refused_by_name() {
        for id in [
            "../../v1.0/token",
            "..",
            ".",
            "",
            "a/b",
            "vdev1?grant_type=1",
            "vdev1#x",
            "vdev%2F1",
            "vdev 1",
            "vdév",
        ] {
            let error = command_path(id).expect_err(id);
            assert!(error.contains(&format!("{id:?}")), "{error}");
        }
        for id in ["vdevo1732000000", "6c1a2b3c4d5e6f7g8h9i", "bf-1_2.x"] {
            assert!(command_path(id).is_ok(), "{id}");
        }
    }
}
