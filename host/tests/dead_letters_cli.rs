//! `iotrules dead-letters` through the real binary, on a store filled through the library
//! as the service would: what a user sees on stdout, stderr and in the exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use iotrules::store::{DeadLetterRecord, Filter, Store};
use serde_json::Value;

/// Not UTF-8, with a NUL and bytes that a text conversion would mangle.
const BINARY_PAYLOAD: &[u8] = &[0x00, 0xff, 0xfe, b'\n', 0x80, b'x', 0xc3];

/// A store holding three letters; returns it with the ids (decrypt, plugin, binary).
struct Filled {
    _dir: tempfile::TempDir,
    path: PathBuf,
    decrypt: i64,
    plugin: i64,
    binary: i64,
}

fn filled() -> Filled {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("iotrules.db");
    let store = Store::open(&path).expect("store");
    let properties = vec![
        ("em".to_owned(), "aes_gcm".to_owned()),
        ("topic".to_owned(), "tuya/pk/lamp".to_owned()),
    ];
    let base = DeadLetterRecord {
        connector: "tuya-eu".into(),
        vendor: Some("tuya"),
        properties,
        payload: br#"{"data":"c2VhbGVk","protocol":4}"#.to_vec(),
        kind: "decrypt".into(),
        message: "tuya-eu: decrypt error: GCM tag does not match\nis the access key right?".into(),
        rule: None,
        step: None,
        event_id: None,
        time_ms: 1_707_532_200_000, // 2024-02-10T02:30:00Z
    };
    let decrypt = store.add(&base).expect("add");
    let plugin = store
        .add(&DeadLetterRecord {
            connector: "ali-cn".into(),
            vendor: Some("alibaba"),
            kind: "plugin:deadline".into(),
            message: "rule `lamp` step 1: plugin `deadband` ran out of time".into(),
            rule: Some("lamp".into()),
            step: Some(1),
            event_id: Some("ev-7".into()),
            time_ms: 1_707_532_260_000,
            ..base.clone()
        })
        .expect("add");
    let binary = store
        .add(&DeadLetterRecord {
            connector: "mqtt-lab".into(),
            vendor: None,
            properties: Vec::new(),
            payload: BINARY_PAYLOAD.to_vec(),
            kind: "json".into(),
            message: "expected value at line 1 column 1".into(),
            time_ms: 1_707_532_320_000,
            ..base.clone()
        })
        .expect("add");
    Filled {
        _dir: dir,
        path,
        decrypt,
        plugin,
        binary,
    }
}

fn run(args: &[&str], store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iotrules"))
        .arg("dead-letters")
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .expect("iotrules runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

fn remaining(path: &Path) -> usize {
    Store::open_existing(path)
        .and_then(|store| store.count(&Filter::default()))
        .expect("count")
}

#[test]
fn list_prints_a_table_newest_first_with_the_first_line_of_each_message() {
    let store = filled();
    let table = stdout(&run(&["list"], &store.path));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].contains("ID") && lines[0].contains("TIME (UTC)"),
        "{table}"
    );
    assert!(lines[1].trim_start().starts_with(&store.binary.to_string()));
    assert!(lines[2].contains("lamp/1") && lines[2].contains("plugin:deadline"));
    assert!(lines[3].contains("2024-02-10 02:30:00"), "{table}");
    assert!(lines[3].contains("GCM tag does not match"), "{table}");
    assert!(!table.contains("access key right"), "only the first line");
}

#[test]
fn list_json_prints_one_object_per_line_and_filters_by_kind_family() {
    let store = filled();
    let out = stdout(&run(&["list", "--json", "--kind", "plugin"], &store.path));
    let objects: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(objects.len(), 1, "{out}");
    assert_eq!(objects[0]["id"], store.plugin);
    assert_eq!(objects[0]["rule"], "lamp");
    assert_eq!(objects[0]["step"], 1);
    assert_eq!(objects[0]["time"], "2024-02-10T02:31:00.000Z");

    let since = stdout(&run(
        &["list", "--json", "--since", "2024-02-10T02:31:00Z"],
        &store.path,
    ));
    assert_eq!(since.lines().count(), 2, "{since}");
}

#[test]
fn list_with_a_limit_says_how_many_more_matched() {
    let store = filled();
    let output = run(&["list", "--limit", "1"], &store.path);
    assert_eq!(stdout(&output).lines().count(), 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("newest 1 of 3"), "{stderr}");
}

#[test]
fn show_prints_every_field_and_a_text_payload() {
    let store = filled();
    let out = stdout(&run(&["show", &store.decrypt.to_string()], &store.path));
    for expected in [
        "connector: tuya-eu",
        "vendor:    tuya",
        "kind:      decrypt",
        "2024-02-10T02:30:00.000Z (1707532200000 ms)",
        "  em=aes_gcm",
        "  topic=tuya/pk/lamp",
        "  is the access key right?",
        "payload (32 bytes, UTF-8 text):\n{\"data\":\"c2VhbGVk\",\"protocol\":4}\n",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn show_prints_a_binary_payload_as_base64_and_raw_writes_the_exact_bytes() {
    let store = filled();
    let id = store.binary.to_string();
    let out = stdout(&run(&["show", &id], &store.path));
    assert!(out.contains("not UTF-8, shown as base64"), "{out}");
    assert!(out.contains("AP/+CoB4ww=="), "{out}");

    let raw = run(&["show", &id, "--raw"], &store.path);
    assert!(raw.status.success());
    assert_eq!(raw.stdout, BINARY_PAYLOAD);
}

#[test]
fn show_of_an_unknown_id_fails_naming_it() {
    let store = filled();
    let output = run(&["show", "999"], &store.path);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no dead letter 999 in"), "{stderr}");
}

#[test]
fn purge_refuses_to_empty_the_store_without_all() {
    let store = filled();
    let output = run(&["purge"], &store.path);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("without --all"));
    assert_eq!(remaining(&store.path), 3);

    let all = stdout(&run(&["purge", "--all"], &store.path));
    assert!(all.starts_with("purged 3 dead letters from"), "{all}");
    assert_eq!(remaining(&store.path), 0);
}

#[test]
fn purge_by_filter_and_by_id_prints_how_many() {
    let store = filled();
    let by_kind = stdout(&run(&["purge", "--connector", "mqtt-lab"], &store.path));
    assert!(
        by_kind.starts_with("purged 1 dead letter from"),
        "{by_kind}"
    );

    let decrypt = store.decrypt.to_string();
    let output = run(&["purge", "--id", &decrypt, "--id", "999"], &store.path);
    assert_eq!(output.status.code(), Some(1), "an unknown id fails the run");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("purged 1 dead letter"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no dead letter with id 999"));

    let left = Store::open_existing(&store.path).expect("store");
    assert!(left.get(store.plugin).expect("get").is_some());
    assert_eq!(remaining(&store.path), 1);
}

#[test]
fn a_missing_store_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nowhere.db");
    for args in [&["list"][..], &["show", "1"], &["purge", "--all"]] {
        let output = run(args, &path);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.trim_end(),
            format!("iotrules: no dead-letter store at {}", path.display())
        );
        assert!(!path.exists(), "{args:?} created the file");
    }
}
