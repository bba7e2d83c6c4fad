//! Checks of `tuya_pulsar.json`, `tuya_business.json` and `tuya_openapi.json`.

use iotrules::dialect::tuya::openapi::{self, ApiCredentials, Request};
use iotrules::dialect::tuya::{BusinessDecoder, Decoder, Env, Keys};
use iotrules::dialect::{DecodeError, Dialect, RawMessage, SignMode};
use serde_json::Value;

use crate::common::{check_cases, expect_eq, load, str_of};

/// Decrypts and decodes one case's message, then compares with `expect`: either the
/// decrypted body (as JSON) or the error kind.
fn check_message(dialect: &Dialect, case: &Value) -> Result<(), String> {
    let properties: Vec<(String, String)> = case
        .get("message_properties")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let payload = str_of(case, "payload")?;
    let message = RawMessage::new("vectors", payload.as_bytes()).with_properties(&properties);
    let expect = &case["expect"];
    if let Some(kind) = expect.get("error").and_then(Value::as_str) {
        let check = |what: &str, result: Result<(), DecodeError>| match result {
            Ok(()) => Err(format!("{what}: accepted, expected a {kind} error")),
            Err(e) if e.kind().as_str() == kind => Ok(()),
            Err(e) => Err(format!(
                "{what}: got a {} error ({e}), expected {kind}",
                e.kind()
            )),
        };
        check("decrypt", dialect.decrypt(&message).map(drop))?;
        return check("decode", dialect.decode(&message).map(drop));
    }
    let expected = expect
        .get("decrypted")
        .ok_or("case expects neither `decrypted` nor `error`")?;
    let body = dialect
        .decrypt(&message)
        .map_err(|e| format!("decrypt failed: {e}"))?;
    let body: Value =
        serde_json::from_slice(&body).map_err(|e| format!("decrypted body is not JSON: {e}"))?;
    expect_eq("decrypted body", &body, expected)?;
    let event = dialect
        .decode(&message)
        .map_err(|e| format!("decode failed: {e}"))?;
    expect_eq("event payload", &event.payload.to_value(), expected)?;
    expect_eq(
        "signature attribute",
        event.attribute("signature"),
        Some("verified"),
    )
}

fn keys(doc: &Value) -> Keys {
    let id = doc
        .get("access_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = doc["access_key"]
        .as_str()
        .expect("vector file has an `access_key`");
    Keys::new(id, key).expect("vector access key is usable")
}

#[test]
fn tuya_pulsar_envelopes_decrypt_or_fail_with_their_error_kind() {
    check_cases("tuya_pulsar.json", |doc, case| {
        check_message(
            &Dialect::Tuya(Decoder::new(keys(doc), SignMode::Enforce)),
            case,
        )
    });
}

#[test]
fn tuya_pulsar_credentials_topic_and_subscription_derive_from_the_keys() {
    let Some(doc) = load("tuya_pulsar.json") else {
        return;
    };
    let keys = keys(&doc);
    let auth = &doc["auth"];
    assert_eq!(
        Some(iotrules::dialect::tuya::AUTH_METHOD),
        auth["method"].as_str()
    );
    assert_eq!(Some(keys.access_id()), auth["username"].as_str());
    assert_eq!(
        Some(keys.pulsar_password().as_str()),
        auth["password"].as_str()
    );
    assert_eq!(
        Some(keys.pulsar_auth_data().as_str()),
        auth["auth_data"].as_str()
    );
    assert_eq!(
        Some(keys.topic(Env::Prod).as_str()),
        doc["topic"]["prod"].as_str()
    );
    assert_eq!(
        Some(keys.topic(Env::Test).as_str()),
        doc["topic"]["test"].as_str()
    );
    assert_eq!(
        Some(keys.subscription("sub").as_str()),
        doc["subscription"].as_str()
    );
}

#[test]
fn tuya_business_envelopes_decrypt_or_fail_with_their_error_kind() {
    check_cases("tuya_business.json", |doc, case| {
        check_message(
            &Dialect::TuyaBusiness(BusinessDecoder::new(keys(doc), SignMode::Enforce)),
            case,
        )
    });
}

#[test]
fn tuya_openapi_requests_sign_as_documented() {
    check_cases("tuya_openapi.json", |_, case| {
        let input = &case["input"];
        let query: Vec<(&str, &str)> = input["query"]
            .as_object()
            .map(|q| {
                q.iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let request = Request {
            method: str_of(input, "method")?,
            path: str_of(input, "path")?,
            query: &query,
            body: str_of(input, "body")?.as_bytes(),
            signed_headers: &[],
        };
        let credentials = ApiCredentials {
            client_id: str_of(input, "client_id")?.to_owned(),
            secret: str_of(input, "secret")?.to_owned(),
        };
        let t: u64 = str_of(input, "t")?.parse().map_err(|e| format!("t: {e}"))?;
        let signed = openapi::sign(
            &credentials,
            str_of(input, "access_token")?,
            t,
            str_of(input, "nonce")?,
            &request,
        );
        expect_eq(
            "string_to_sign",
            signed.string_to_sign.as_str(),
            str_of(&case["expect"], "string_to_sign")?,
        )?;
        expect_eq(
            "sign",
            signed.sign.as_str(),
            str_of(&case["expect"], "sign")?,
        )
    });
}
