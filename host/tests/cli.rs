//! `iotrules decode` through the real binary: what a user sees on stdout, stderr and in the
//! exit status.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use iotrules::dialect::tuya::{Keys, Mode};
use serde_json::Value;

const ACCESS_KEY: &str = "cliTestKey-0123456789abcdefXYZ";
/// The published demo key the bundled messages in `examples/messages/` are sealed with.
const DEMO_KEY: &str = "DEMOkey-iotrules-0000-not-a-real-secret";

fn decode(args: &[&str], stdin: &[u8], key: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iotrules"));
    cmd.arg("decode")
        .args(args)
        .env_remove("IOTRULES_ACCESS_KEY");
    if let Some(key) = key {
        cmd.env("IOTRULES_ACCESS_KEY", key);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the iotrules binary starts");
    // A command refused before it reads its input (a missing key) closes the pipe: the
    // write may then fail with a broken pipe, which is not what these tests check.
    if let Err(error) = child.stdin.take().expect("stdin").write_all(stdin) {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write stdin: {error}"
        );
    }
    child.wait_with_output().expect("iotrules finishes")
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON document")
}

fn sealed_status(mode: Mode) -> (String, &'static str) {
    let keys = Keys::new("cliAccessId", ACCESS_KEY).expect("test key");
    let body = r#"{"dataId":"cli-1","devId":"lamp","productKey":"pk","status":[{"code":"switch_led","value":true,"t":1700000000000}]}"#;
    keys.seal_iot_core(4, 1700000000001, body.as_bytes(), mode, [5; 12])
}

#[test]
fn gcm_message_from_stdin_prints_the_normalized_event() {
    let (payload, em) = sealed_status(Mode::Gcm);
    let output = decode(
        &["--vendor", "tuya", "--property", &format!("em={em}")],
        payload.as_bytes(),
        Some(ACCESS_KEY),
    );
    let event = stdout_json(&output);
    assert_eq!(event["kind"], "properties");
    assert_eq!(event["device"]["id"], "lamp");
    assert_eq!(event["properties"][0]["value"], true);
    assert_eq!(
        event["payload"]["dataId"], "cli-1",
        "the payload is inline JSON, not a string"
    );
    assert_eq!(event["attributes"]["signature"], "verified");
    assert_eq!(event["source"], "decode");
}

#[test]
fn raw_prints_the_decrypted_body_only() {
    let (payload, _) = sealed_status(Mode::Ecb);
    let output = decode(
        &["--vendor", "tuya", "--raw", "-"],
        payload.as_bytes(),
        Some(ACCESS_KEY),
    );
    let body = stdout_json(&output);
    assert_eq!(body["devId"], "lamp");
    assert!(body.get("kind").is_none());
}

#[test]
fn tampered_message_exits_non_zero_with_one_line_naming_the_kind() {
    let (payload, _) = sealed_status(Mode::Ecb);
    let tampered = payload.replace("\"t\":1700000000001", "\"t\":1700000000002");
    let output = decode(&["--vendor", "tuya"], tampered.as_bytes(), Some(ACCESS_KEY));
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("standard input: signature error"),
        "{stderr}"
    );
    assert!(!stderr.contains(ACCESS_KEY), "the key never reaches output");
}

#[test]
fn warn_mode_prints_the_event_and_a_warning() {
    let (payload, _) = sealed_status(Mode::Ecb);
    let tampered = payload.replace("\"t\":1700000000001", "\"t\":1700000000002");
    let output = decode(
        &["--vendor", "tuya", "--sign", "warn"],
        tampered.as_bytes(),
        Some(ACCESS_KEY),
    );
    let event = stdout_json(&output);
    assert_eq!(event["attributes"]["signature"], "mismatch");
    assert!(String::from_utf8_lossy(&output.stderr).contains("warning"));
}

#[test]
fn wrong_key_unknown_mode_and_garbage_each_name_their_kind() {
    let (payload, _) = sealed_status(Mode::Ecb);
    let cases: [(&[&str], &[u8], &str); 3] = [
        (
            &["--vendor", "tuya", "--sign", "off"],
            payload.as_bytes(),
            "decrypt error",
        ),
        (
            &["--vendor", "tuya", "--property", "em=aes_cbc"],
            payload.as_bytes(),
            "unsupported error",
        ),
        (&["--vendor", "tuya"], b"\x00garbage{", "json error"),
    ];
    for (args, input, expected) in cases {
        let key = if args.contains(&"off") {
            "another-key-0123456789abcdef"
        } else {
            ACCESS_KEY
        };
        let output = decode(args, input, Some(key));
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn missing_key_and_bad_property_are_explained() {
    let output = decode(&["--vendor", "tuya"], b"{}", None);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("IOTRULES_ACCESS_KEY"));

    let output = decode(
        &["--vendor", "tuya", "--property", "no-equals-sign"],
        b"{}",
        Some(ACCESS_KEY),
    );
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not KEY=VALUE"));

    let output = decode(
        &["--vendor", "tuya", "/nonexistent/message.json"],
        b"",
        Some(ACCESS_KEY),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/message.json")
    );
}

#[test]
fn a_json_message_decodes_with_the_device_from_its_topic() {
    let body = br#"{"temperature":21.5}"#;
    let topic = "devices/pump-7/telemetry";
    let output = decode(
        &[
            "--vendor",
            "json",
            "--device-topic",
            "devices/{device}/telemetry",
            "--property",
            &format!("topic={topic}"),
        ],
        body,
        None,
    );
    let event = stdout_json(&output);
    assert_eq!(event["device"]["id"], "pump-7");
    assert_eq!(event["payload"]["temperature"], 21.5);

    let output = decode(
        &["--vendor", "json", "--property", &format!("topic={topic}")],
        body,
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--device-topic is required"), "{stderr}");

    let output = decode(&["--vendor", "tuya-cloud"], body, None);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown dialect `tuya-cloud`: expected tuya, tuya-business"),
        "{stderr}"
    );
}

fn demo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/messages")
        .join(name)
}

#[test]
fn bundled_demo_messages_decode_with_the_demo_key() {
    let cases: [(&str, &[&str], &str); 8] = [
        ("tuya-status-ecb.json", &["--vendor", "tuya"], "properties"),
        (
            "tuya-status-gcm.json",
            &["--vendor", "tuya", "--property", "em=aes_gcm"],
            "properties",
        ),
        (
            "tuya-online-gcm.json",
            &["--vendor", "tuya", "--property", "em=aes_gcm"],
            "online",
        ),
        (
            "tuya-business-dp-report.json",
            &["--vendor", "tuya-business"],
            "properties",
        ),
        (
            "alibaba-property-post.json",
            &[
                "--vendor",
                "alibaba",
                "--property",
                "topic=/a1DemoPk/thermostat-1/thing/event/property/post",
            ],
            "properties",
        ),
        (
            "alibaba-status.json",
            &[
                "--vendor",
                "alibaba",
                "--property",
                "topic=/as/mqtt/status/a1DemoPk/thermostat-1",
            ],
            "offline",
        ),
        (
            "huawei-property-report.json",
            &["--vendor", "huawei"],
            "properties",
        ),
        (
            "huawei-legacy-command.json",
            &[
                "--vendor",
                "huawei",
                "--property",
                "topic=/huawei/v1/devices/demo_product_meter-1/command/json",
            ],
            "command",
        ),
    ];
    for (file, args, kind) in cases {
        let path = demo(file);
        let mut all: Vec<&str> = args.to_vec();
        let path_text = path.to_string_lossy();
        all.push(&path_text);
        let event = stdout_json(&decode(&all, b"", Some(DEMO_KEY)));
        assert_eq!(event["kind"], kind, "{file}");
    }
}

#[test]
fn decode_as_a_configured_connector_shows_its_identity_without_the_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("iotrules.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [[connector]]
            name = "tuya-eu"
            kind = "tuya-pulsar"
            access_id = "cliAccessId"
            access_key = "{ACCESS_KEY}"
            region = "eu"
            env = "test"
            "#
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path");
    let (payload, em) = sealed_status(Mode::Gcm);
    let output = decode(
        &[
            "--config",
            config,
            "--connector",
            "tuya-eu",
            "--property",
            &format!("em={em}"),
        ],
        payload.as_bytes(),
        None,
    );
    let event = stdout_json(&output);
    assert_eq!(event["source"], "tuya-eu");
    assert_eq!(event["device"]["id"], "lamp");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("topic=persistent://cliAccessId/out/event-test")
            && stderr.contains("subscription=cliAccessId-sub")
            && stderr.contains("url=pulsar+ssl://mqe.tuyaeu.com:7285/"),
        "{stderr}"
    );
    assert!(!stderr.contains(ACCESS_KEY), "{stderr}");

    let output = decode(&["--config", config, "--connector", "nope"], b"", None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no connector \"nope\" (it has: tuya-eu)"),
        "{stderr}"
    );
}

/// The binary turns transparent huge pages off for itself (`main.rs` says why): the kernel
/// shows it in the process's status. `decode` waits for its message on stdin meanwhile.
#[cfg(target_os = "linux")]
#[test]
fn the_binary_runs_without_transparent_huge_pages() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotrules"))
        .args(["decode", "--vendor", "huawei"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the iotrules binary starts");
    let status = format!("/proc/{}/status", child.id());
    let thp = || {
        std::fs::read_to_string(&status)
            .expect("the process's status")
            .lines()
            .find_map(|line| {
                line.strip_prefix("THP_enabled:")
                    .map(|v| v.trim().to_owned())
            })
            .expect("the kernel reports THP_enabled")
    };
    // It starts with this process's setting and turns it off first thing in `main`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = thp();
    while seen != "0" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = thp();
    }
    drop(child.stdin.take());
    child.wait().expect("iotrules finishes");
    assert_eq!(seen, "0", "THP_enabled of the running binary");
}
