//! Loading vector files and reporting every failing case at once.

use std::path::PathBuf;

use serde_json::Value;

/// The vector files this suite knows how to check.
pub const KNOWN_FILES: &[&str] = &[
    "alibaba_amqp.json",
    "alibaba_mqtt.json",
    "alibaba_openapi.json",
    "huawei_mqtt.json",
    "tuya_business.json",
    "tuya_openapi.json",
    "tuya_pulsar.json",
];

/// `$IOTRULES_VECTORS`, or `../shared/vectors`; relative paths are taken from the repository root.
pub fn vectors_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::var_os("IOTRULES_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/vectors"));
    if dir.is_absolute() {
        dir
    } else {
        root.join(dir)
    }
}

/// The parsed file, or `None` when this vector set does not have it.
pub fn load(name: &str) -> Option<Value> {
    let path = vectors_dir().join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{} not present: skipped", path.display());
            return None;
        }
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    Some(
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display())),
    )
}

/// A string field of a vector object, failing the case if it is missing.
pub fn str_of<'a>(value: &'a Value, key: &str) -> Result<&'a str, String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("vector has no string `{key}`"))
}

/// Runs `check` on every case of `file`, then fails once listing every failing case.
pub fn check_cases(file: &str, check: impl Fn(&Value, &Value) -> Result<(), String>) {
    let Some(doc) = load(file) else { return };
    let cases = doc["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{file} has no `cases` array"));
    assert!(!cases.is_empty(), "{file} has no cases");
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, case)| {
            let name = case
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{i}"), str::to_owned);
            check(&doc, case)
                .err()
                .map(|e| format!("{file} case {name}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Compares an actual value with the expected one, naming the field.
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    actual: T,
    expected: T,
) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("{what}: got {actual:?}, expected {expected:?}"))
    }
}
