//! Checks of `huawei_mqtt.json`: device MQTT credentials from a device id, secret, hour stamp
//! and sign type.

use iotrules::dialect::huawei::{DeviceCredentials, SignType};
use iotrules::time::Utc;
use serde_json::Value;

use crate::common::{check_cases, expect_eq, str_of};

/// The Unix milliseconds at the start of a `YYYYMMDDHH` stamp, to check the clock-based
/// builders against the same expectations.
fn stamp_ms(stamp: &str) -> Result<u64, String> {
    let field = |range: std::ops::Range<usize>| -> Result<u32, String> {
        stamp
            .get(range)
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| format!("timestamp `{stamp}` is not YYYYMMDDHH"))
    };
    Utc {
        year: i64::from(field(0..4)?),
        month: field(4..6)?,
        day: field(6..8)?,
        hour: field(8..10)?,
        minute: 0,
        second: 0,
        millis: 0,
    }
    .to_ms()
    .ok_or_else(|| format!("timestamp `{stamp}` is not a valid UTC hour"))
}

fn credentials(input: &Value) -> Result<DeviceCredentials, String> {
    let sign_type: SignType = str_of(input, "sign_type")?.parse()?;
    Ok(DeviceCredentials::new(
        str_of(input, "device_id")?,
        str_of(input, "secret")?,
        sign_type,
    ))
}

#[test]
fn huawei_mqtt_credentials_derive_from_device_secret_and_hour_stamp() {
    check_cases("huawei_mqtt.json", |_, case| {
        let input = &case["input"];
        let expect = &case["expect"];
        if expect.get("error").is_some() {
            // A bad stamp or sign type must be refused before anything is sent.
            let outcome = credentials(input).and_then(|creds| {
                let stamp = str_of(input, "timestamp")?;
                creds.client_id(stamp).map_err(|e| e.to_string())?;
                creds.password(stamp).map_err(|e| e.to_string())
            });
            return match outcome {
                Err(_) => Ok(()),
                Ok(_) => Err("accepted, expected an error".to_owned()),
            };
        }
        let stamp = str_of(input, "timestamp")?;
        let creds = credentials(input)?;
        let client_id = creds.client_id(stamp).map_err(|e| e.to_string())?;
        expect_eq(
            "client_id",
            client_id.as_str(),
            str_of(expect, "client_id")?,
        )?;
        expect_eq("username", creds.username(), str_of(expect, "username")?)?;
        let password = creds.password(stamp).map_err(|e| e.to_string())?;
        expect_eq("password", password.as_str(), str_of(expect, "password")?)?;

        // The clock-based builders agree for any instant within that hour. A stamp that is 10
        // digits but no real UTC hour (hour 24) has no such instant, so there is nothing more
        // to compare.
        let Ok(start) = stamp_ms(stamp) else {
            return Ok(());
        };
        let ms = start + 59 * 60_000;
        expect_eq(
            "client_id_at",
            creds.client_id_at(ms).as_str(),
            str_of(expect, "client_id")?,
        )?;
        expect_eq(
            "password_at",
            creds.password_at(ms).as_str(),
            str_of(expect, "password")?,
        )
    });
}
