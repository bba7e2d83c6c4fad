//! Checks of `alibaba_amqp.json` (subscription login), `alibaba_mqtt.json` (device login and
//! topics) and `alibaba_openapi.json` (RPC signature).
//!
//! A case whose `expect` has an `error` must be refused; every other expected field present in
//! a case is compared, and a missing one is skipped, so smaller vector sets work too.

use iotrules::dialect::alibaba::{AmqpCredentials, DeviceCredentials, openapi};
use iotrules::dialect::crypto::SignMethod;
use serde_json::Value;

use crate::common::{check_cases, expect_eq, str_of};

/// A millisecond timestamp written as a number or a string of digits.
fn timestamp_of(input: &Value) -> Result<Option<u64>, String> {
    match input.get("timestamp_ms") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("timestamp_ms {n} is not a whole number of ms")),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("timestamp_ms `{s}` is not a whole number of ms")),
        Some(other) => Err(format!("timestamp_ms {other} is neither number nor string")),
    }
}

fn sign_method_of(input: &Value) -> Result<SignMethod, String> {
    str_of(input, "sign_method")?.parse()
}

/// Compares `expect[key]` with `actual` when the case has that key.
fn expect_field(expect: &Value, key: &str, actual: &str) -> Result<(), String> {
    match expect.get(key).and_then(Value::as_str) {
        Some(expected) => expect_eq(key, actual, expected),
        None => Ok(()),
    }
}

/// Runs `derive`; an `error` case passes only if it fails, any other only if it succeeds.
fn outcome<T>(
    expect: &Value,
    derive: impl FnOnce() -> Result<T, String>,
) -> Result<Option<T>, String> {
    let result = derive();
    match (expect.get("error").is_some(), result) {
        (true, Err(_)) => Ok(None),
        (true, Ok(_)) => Err("accepted, expected an error".to_owned()),
        (false, Err(e)) => Err(e),
        (false, Ok(value)) => Ok(Some(value)),
    }
}

#[test]
fn alibaba_amqp_username_and_password_match() {
    check_cases("alibaba_amqp.json", |_, case| {
        let input = &case["input"];
        let expect = &case["expect"];
        let derived = outcome(expect, || {
            let creds = AmqpCredentials {
                client_id: str_of(input, "client_id")?.to_owned(),
                access_key_id: str_of(input, "access_key_id")?.to_owned(),
                access_key_secret: str_of(input, "access_key_secret")?.to_owned(),
                iot_instance_id: str_of(input, "iot_instance_id")
                    .unwrap_or_default()
                    .to_owned(),
                consumer_group_id: str_of(input, "consumer_group_id")?.to_owned(),
                sign_method: sign_method_of(input)?,
                encode_base64: input
                    .get("encode_base64")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            };
            let ms = timestamp_of(input)?.ok_or("vector has no `timestamp_ms`")?;
            Ok((creds.username(ms), creds.password(ms)))
        })?;
        let Some((username, password)) = derived else {
            return Ok(());
        };
        expect_field(expect, "username", &username)?;
        expect_field(expect, "password", &password)
    });
}

#[test]
fn alibaba_mqtt_login_and_topics_match() {
    check_cases("alibaba_mqtt.json", |_, case| {
        let input = &case["input"];
        let expect = &case["expect"];
        let derived = outcome(expect, || {
            let mut creds = DeviceCredentials::new(
                str_of(input, "product_key")?,
                str_of(input, "device_name")?,
                str_of(input, "device_secret")?,
            );
            if let Ok(client_id) = str_of(input, "client_id") {
                client_id.clone_into(&mut creds.client_id);
            }
            creds.sign_method = sign_method_of(input)?;
            if let Some(tls) = input.get("tls").and_then(Value::as_bool) {
                creds.tls = tls;
            }
            Ok((creds, timestamp_of(input)?))
        })?;
        let Some((creds, ms)) = derived else {
            return Ok(());
        };
        expect_field(expect, "mqtt_client_id", &creds.mqtt_client_id(ms))?;
        expect_field(expect, "username", &creds.username())?;
        expect_field(expect, "password", &creds.password(ms))?;
        let topics = creds.topics();
        expect_field(
            expect,
            "full_topic_user_test",
            &topics.full_topic("user/test"),
        )?;
        expect_field(expect, "property_post_topic", &topics.property_post())?;
        expect_field(expect, "property_set_topic", &topics.property_set())
    });
}

#[test]
fn alibaba_openapi_string_to_sign_and_signature_match() {
    check_cases("alibaba_openapi.json", |_, case| {
        let input = &case["input"];
        let expect = &case["expect"];
        let derived = outcome(expect, || {
            let method = str_of(input, "method")?;
            let params = input
                .get("params")
                .and_then(Value::as_object)
                .ok_or("vector has no `params` object")?;
            let params: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|v| (k.as_str(), v))
                        .ok_or_else(|| format!("param `{k}` is not a string"))
                })
                .collect::<Result<_, _>>()?;
            let string_to_sign = openapi::string_to_sign(method, params.iter().copied());
            let signature =
                openapi::signature(str_of(input, "access_key_secret")?, &string_to_sign);
            Ok((string_to_sign, signature))
        })?;
        let Some((string_to_sign, signature)) = derived else {
            return Ok(());
        };
        expect_field(expect, "string_to_sign", &string_to_sign)?;
        expect_field(expect, "signature", &signature)
    });
}
