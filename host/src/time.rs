//! UTC calendar arithmetic for the few timestamp formats the vendors use.
//!
//! Vendors put time into credentials (Huawei's `YYYYMMDDHH` password key, Alibaba's ISO 8601
//! request timestamp) and into payloads (`20151212T121212Z`, `2018-08-31T07:32:28.205Z`).
//! The conversions are pure and take the time as an argument; the service reads the time
//! through a [`Clock`], which rule tests and other tests pin. The conversion is Howard
//! Hinnant's proleptic-Gregorian day algorithm.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const MS_PER_DAY: i64 = 86_400_000;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where the service reads the time: plugins' `now-ms`, signed requests, the dead letters'
/// retention.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The host's system clock, as the service runs.
    #[default]
    System,
    /// The time its owner last stored, in Unix ms: rule tests (`iotrules test`) pin the
    /// clock so a plugin that reads the time behaves the same on every run.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The time now, in Unix ms.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => now_ms(),
            Clock::Manual(time) => time.load(Ordering::Relaxed),
        }
    }
}

/// A UTC date and time broken into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Utc {
    /// Breaks Unix milliseconds into calendar fields.
    pub fn from_ms(ms: u64) -> Utc {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let days = ms.div_euclid(MS_PER_DAY);
        let rem = ms.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Utc {
            year,
            month,
            day,
            hour: (rem / 3_600_000) as u32,
            minute: (rem / 60_000 % 60) as u32,
            second: (rem / 1000 % 60) as u32,
            millis: (rem % 1000) as u32,
        }
    }

    /// Unix milliseconds, or `None` if a field is out of range or the time is before 1970.
    pub fn to_ms(self) -> Option<u64> {
        if !(1..=12).contains(&self.month)
            || self.day < 1
            || self.day > days_in_month(self.year, self.month)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
            || self.millis > 999
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let ms = days.checked_mul(MS_PER_DAY)?
            + i64::from(self.hour) * 3_600_000
            + i64::from(self.minute) * 60_000
            + i64::from(self.second) * 1000
            + i64::from(self.millis);
        u64::try_from(ms).ok()
    }
}

/// `YYYYMMDDHH` in UTC: the hour stamp in Huawei's MQTT client id and password key.
pub(crate) fn format_hour_stamp(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    format!("{:04}{:02}{:02}{:02}", t.year, t.month, t.day, t.hour)
}

/// `YYYY-MM-DDThh:mm:ssZ` in UTC: Alibaba's OpenAPI `Timestamp` parameter.
pub(crate) fn format_iso_seconds(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// Parses Huawei's compact UTC form `yyyyMMddTHHmmssZ` (e.g. `20151212T121212Z`).
pub(crate) fn parse_compact(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    Utc {
        year: i64::from(digits(&b[0..4])?),
        month: digits(&b[4..6])?,
        day: digits(&b[6..8])?,
        hour: digits(&b[9..11])?,
        minute: digits(&b[11..13])?,
        second: digits(&b[13..15])?,
        millis: 0,
    }
    .to_ms()
}

/// Parses ISO 8601 UTC `YYYY-MM-DDThh:mm:ss[.fff]Z` (Alibaba's `utcTime`), also accepting a
/// space for the `T`. Fractions are cut to milliseconds. Other offsets are refused, not guessed.
pub fn parse_iso(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let rest = &b[19..b.len() - 1];
    let millis = match rest {
        [] => 0,
        [b'.', frac @ ..] if !frac.is_empty() && frac.len() <= 9 => {
            let mut padded = [b'0'; 3];
            for (slot, d) in padded.iter_mut().zip(frac) {
                *slot = *d;
            }
            digits(frac)?;
            digits(&padded)?
        }
        _ => return None,
    };
    Utc {
        year: i64::from(digits(&b[0..4])?),
        month: digits(&b[5..7])?,
        day: digits(&b[8..10])?,
        hour: digits(&b[11..13])?,
        minute: digits(&b[14..16])?,
        second: digits(&b[17..19])?,
        millis,
    }
    .to_ms()
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(u32::from(c - b'0')))
            .flatten()
    })
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants_format_as_the_vendors_expect() {
        // 2024-02-10T02:30:00Z, a leap year, and the epoch.
        assert_eq!(
            format_iso_seconds(1_707_532_200_000),
            "2024-02-10T02:30:00Z"
        );
        assert_eq!(format_iso_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_hour_stamp(1_707_532_200_000), "2024021002");
        assert_eq!(format_iso_seconds(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn parses_compact_and_iso_forms() {
        assert_eq!(parse_compact("20151212T121212Z"), Some(1_449_922_332_000));
        assert_eq!(
            parse_iso("2018-08-31T07:32:28.205Z"),
            Some(1_535_700_748_205)
        );
        assert_eq!(parse_iso("2018-08-31 07:32:28Z"), Some(1_535_700_748_000));
        assert_eq!(parse_iso("2018-08-31T07:32:28.2Z"), Some(1_535_700_748_200));
    }

    #[test]
    fn refuses_malformed_times() {
        for bad in [
            "",
            "20151312T121212Z",
            "20150230T000000Z",
            "2015121T121212Z",
            "2015121xT121212Z",
        ] {
            assert_eq!(parse_compact(bad), None, "{bad}");
        }
        for bad in [
            "2018-08-31T07:32:28+08:00",
            "2018-08-31T07:32:28.Z",
            "2018-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn calendar_round_trips(ms in 0u64..=253_402_300_799_999) {
            let t = Utc::from_ms(ms);
            prop_assert_eq!(t.to_ms(), Some(ms));
            let iso = format!("{}.{:03}Z", &format_iso_seconds(ms)[..19], t.millis);
            prop_assert_eq!(parse_iso(&iso), Some(ms));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,24}") {
            let _ = parse_iso(&text);
            let _ = parse_compact(&text);
        }
    }
}
