//! The `tuya-openapi` and `alibaba-openapi` command paths against local HTTPS servers that
//! check the vendors' signatures themselves (`iotrules_tests::cloud_api`), driven through
//! the pipeline: events in, rules over the `echo` plugin emitting commands, the path built
//! from its config with a pinned clock shared with the servers. Each test checks what the
//! server recorded, what was acknowledged, dead-lettered and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iotrules::command::{CommandPath, CommandPaths};
use iotrules::config::PipelineConfig;
use iotrules::pipeline::Delivery;
use iotrules::plan::Plan;
use iotrules::time::Clock;
use iotrules_tests::cloud_api::{AlibabaServer, Tls, TuyaProject, TuyaServer};
use iotrules_tests::pipeline::{Acks, TestPipeline, huawei_body};
use iotrules_tests::{runtime, wait_for};

/// The pinned clock's start.
const NOW: u64 = 1_700_000_000_000;
const TUYA_SECRET: &str = "tuya-test-secret";
const ALIBABA_SECRET: &str = "alibaba-test-secret";

/// A rule sending every event's device the command `command` through `path`.
fn echo_rule(rule: &str, command: &str, path: &str) -> String {
    format!(
        r#"
[[rule]]
name = "{rule}"
commands.via = "{path}"

[[rule.step]]
plugin = "echo"
config = {{ command = "{command}" }}
"#
    )
}

/// The command path `[[command_path]]` text builds, on the pinned `clock`.
fn path(
    text: &str,
    clock: &Arc<AtomicU64>,
    runtime: &tokio::runtime::Runtime,
) -> Arc<dyn CommandPath> {
    let plan = Plan::parse(std::path::Path::new("iotrules.toml"), text).expect("config");
    let paths = CommandPaths::start(
        &plan.command_paths,
        &Clock::Manual(clock.clone()),
        runtime.handle(),
    )
    .expect("path starts");
    let name = &plan.command_paths[0].name;
    paths.get(name).expect("the path").clone()
}

/// A Tuya project, its server over TLS and a pipeline whose rule `lights` sends
/// `switch_led` through the path `tuya` (with `extra` settings).
struct TuyaSetup {
    runtime: tokio::runtime::Runtime,
    _tls: Tls,
    clock: Arc<AtomicU64>,
    server: TuyaServer,
    test: TestPipeline,
    acks: Arc<Acks>,
    ingest: iotrules::pipeline::Ingest,
}

impl TuyaSetup {
    fn start(token_ttl_s: u64, extra: &str) -> TuyaSetup {
        Self::signing_with(TUYA_SECRET, token_ttl_s, extra)
    }

    /// As [`TuyaSetup::start`], the path signing with `key`.
    fn signing_with(key: &str, token_ttl_s: u64, extra: &str) -> TuyaSetup {
        let runtime = runtime();
        let tls = Tls::generate();
        let clock = Arc::new(AtomicU64::new(NOW));
        let project = TuyaProject {
            client_id: "tuya-client".into(),
            secret: TUYA_SECRET.into(),
            token_ttl_s,
        };
        let server = TuyaServer::start(runtime.handle(), &tls, project, clock.clone());
        let text = format!(
            "[[command_path]]\nname = \"tuya\"\nkind = \"tuya-openapi\"\nurl = \"{}\"\n\
             ca_file = \"{}\"\naccess_id = \"tuya-client\"\naccess_key = \"{key}\"\n{extra}\n",
            server.url,
            tls.ca_file.display()
        );
        let path = path(&text, &clock, &runtime);
        let test = TestPipeline::start(
            &["testing/echo"],
            &echo_rule("lights", "switch_led", "tuya"),
            PipelineConfig {
                workers: 2,
                ..PipelineConfig::default()
            },
            path,
            runtime.handle(),
        );
        let dialect = iotrules::dialect::Dialect::Huawei(iotrules::dialect::huawei::Decoder::new());
        let ingest = test.pipeline().ingest("test", dialect);
        TuyaSetup {
            runtime,
            _tls: tls,
            clock,
            server,
            test,
            acks: Arc::new(Acks::default()),
            ingest,
        }
    }

    /// Sends an event of `device` numbered `seq` and waits until it is acknowledged.
    fn event(&self, device: &str, seq: u64) {
        let before = self.acks.acked();
        self.runtime
            .block_on(
                self.ingest
                    .submit(self.acks.delivery(huawei_body(device, seq))),
            )
            .expect("submit");
        wait_for("the acknowledgement", || self.acks.acked() > before);
    }

    fn commands(&self, result: &str) -> u64 {
        self.test.metrics.commands.with(&["tuya", result]).get()
    }

    /// Asserts that the server's calls so far, each (path, answer), were `expected`.
    fn assert_calls(&self, expected: &[(&str, &str)]) {
        let calls = self.server.calls();
        let calls: Vec<(&str, &str)> = calls
            .iter()
            .map(|(path, answer)| (path.as_str(), answer.as_str()))
            .collect();
        assert_eq!(calls, expected);
    }

    fn stop(mut self) {
        drop(self.ingest);
        self.test.drain(&self.runtime);
    }
}

#[test]
fn tuya_commands_go_out_signed_over_tls_and_concurrent_lanes_share_one_token() {
    let setup = TuyaSetup::start(7200, "lanes = 4");
    let devices: Vec<String> = (0..8).map(|n| format!("vdev{n}")).collect();
    let before = setup.acks.acked();
    for (seq, device) in devices.iter().enumerate() {
        setup
            .runtime
            .block_on(
                setup
                    .ingest
                    .submit(setup.acks.delivery(huawei_body(device, seq as u64))),
            )
            .expect("submit");
    }
    wait_for("every acknowledgement", || setup.acks.acked() == before + 8);

    let calls = setup.server.calls();
    let grants = calls.iter().filter(|(p, _)| p == "/v1.0/token").count();
    assert_eq!(grants, 1, "{calls:#?}");
    let mut commanded: Vec<String> = setup
        .server
        .requests()
        .iter()
        .filter(|r| r.target.ends_with("/commands") && r.answer == "ok")
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["commands"][0]["code"], "switch_led");
            assert_eq!(r.headers["access_token"], "access-1");
            assert_eq!(r.headers["t"], NOW.to_string());
            r.target.clone()
        })
        .collect();
    commanded.sort();
    let mut expected: Vec<String> = devices
        .iter()
        .map(|d| format!("/v1.0/iot-03/devices/{d}/commands"))
        .collect();
    expected.sort();
    assert_eq!(commanded, expected);
    assert!(calls.iter().all(|(_, answer)| answer == "ok"), "{calls:#?}");
    assert_eq!(setup.commands("sent"), 8);
    assert!(setup.test.dead_letters.letters().is_empty());
    setup.stop();
}

#[test]
fn a_tuya_token_is_refreshed_before_it_expires() {
    let setup = TuyaSetup::start(600, "");
    setup.event("vdev1", 1);
    // 30 s before expiry: within the refresh margin, so the next command refreshes first.
    setup.clock.store(NOW + 570_000, Ordering::SeqCst);
    setup.event("vdev1", 2);
    setup.assert_calls(&[
        ("/v1.0/token", "ok"),
        ("/v1.0/iot-03/devices/vdev1/commands", "ok"),
        ("/v1.0/token/REFRESH", "ok"),
        ("/v1.0/iot-03/devices/vdev1/commands", "ok"),
    ]);
    let requests = setup.server.requests();
    assert_eq!(requests[2].target, "/v1.0/token/refresh-1");
    assert_eq!(requests[3].headers["access_token"], "access-2");
    assert_eq!(setup.commands("sent"), 2);
    setup.stop();
}

#[test]
fn tuya_code_1010_renews_the_token_and_sends_the_command_again() {
    let setup = TuyaSetup::start(7200, "retries = 0");
    setup.event("vdev1", 1);
    setup.server.revoke_next(1);
    setup.event("vdev1", 2);
    setup.assert_calls(&[
        ("/v1.0/token", "ok"),
        ("/v1.0/iot-03/devices/vdev1/commands", "ok"),
        ("/v1.0/iot-03/devices/vdev1/commands", "1010"),
        ("/v1.0/token/REFRESH", "ok"),
        ("/v1.0/iot-03/devices/vdev1/commands", "ok"),
    ]);
    // No retry was configured: the second send is the token renewal's, not the lane's.
    assert_eq!(setup.commands("sent"), 2);
    assert!(setup.test.dead_letters.letters().is_empty());
    setup.stop();
}

#[test]
fn an_expired_tuya_token_that_cannot_be_refreshed_is_replaced_by_a_new_grant() {
    let setup = TuyaSetup::start(120, "");
    setup.event("vdev1", 1);
    // Long past the expiry, and the refresh token revoked: only a fresh grant helps.
    setup.clock.store(NOW + 3_600_000, Ordering::SeqCst);
    setup.server.forget_refresh_tokens();
    setup.event("vdev1", 2);
    setup.assert_calls(&[
        ("/v1.0/token", "ok"),
        ("/v1.0/iot-03/devices/vdev1/commands", "ok"),
        ("/v1.0/token/REFRESH", "1011"),
        ("/v1.0/token", "ok"),
        ("/v1.0/iot-03/devices/vdev1/commands", "ok"),
    ]);
    setup.stop();
}

#[test]
fn a_tuya_call_signed_with_the_wrong_key_is_refused_with_1004_and_not_retried() {
    let setup = TuyaSetup::signing_with("not-the-key", 7200, "retries = 3");
    setup.event("vdev1", 1);
    setup.assert_calls(&[("/v1.0/token", "1004")]);
    let letters = setup.test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert!(
        letters[0]
            .message
            .contains("getting a token: Tuya code 1004 (sign invalid)"),
        "{}",
        letters[0].message
    );
    assert!(!letters[0].message.contains("not-the-key"));
    setup.stop();
}

#[test]
fn a_tuya_device_id_that_would_leave_the_command_path_is_dead_lettered_before_any_call() {
    let setup = TuyaSetup::start(7200, "retries = 3");
    // Unescaped, this id would make the signed request `POST /v1.0/token?...`.
    let device = "../../token?grant_type=1&x=";
    setup.event(device, 1);
    let calls = setup.server.calls();
    assert!(
        calls.is_empty(),
        "no request leaves, not even for a token: {calls:?}"
    );
    assert_eq!(setup.commands("failed"), 1);
    let letters = setup.test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let message = &letters[0].message;
    assert!(
        message.contains(&format!(
            "device id {device:?} cannot go into the command URL"
        )),
        "{message}"
    );
    assert!(message.contains("not retried"), "{message}");
    setup.stop();
}

#[test]
fn a_tuya_5xx_is_retried_until_the_command_goes_through() {
    let setup = TuyaSetup::start(7200, "retries = 2");
    setup.server.unavailable_next(2);
    setup.event("vdev1", 1);
    let answers: Vec<String> = setup
        .server
        .calls()
        .into_iter()
        .filter(|(p, _)| p.ends_with("/commands"))
        .map(|(_, a)| a)
        .collect();
    assert_eq!(answers, ["503", "503", "ok"]);
    assert_eq!(setup.commands("sent"), 1);
    assert_eq!(setup.commands("failed"), 0);
    assert!(setup.test.dead_letters.letters().is_empty());
    setup.stop();
}

#[test]
fn a_refused_tuya_command_is_dead_lettered_at_once_with_the_vendor_code_and_counted_for_its_rule() {
    let setup = TuyaSetup::start(7200, "retries = 3");
    setup
        .server
        .refuse_device("vdev-gone", 1106, "permission deny");
    setup.event("vdev-gone", 1);
    let attempts = setup
        .server
        .calls()
        .into_iter()
        .filter(|(p, _)| p.ends_with("/commands"))
        .count();
    assert_eq!(attempts, 1, "a refusal is not retried");
    let letters = setup.test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    assert_eq!(letter.kind, "command");
    assert_eq!(letter.rule.as_deref(), Some("lights"));
    for part in [
        "command switch_led",
        "device vdev-gone",
        "command path \"tuya\"",
        "Tuya code 1106 (permission deny)",
        "not retried",
    ] {
        assert!(letter.message.contains(part), "{part}: {}", letter.message);
    }
    assert!(!letter.message.contains(TUYA_SECRET));
    assert_eq!(setup.commands("failed"), 1);
    let metrics = &setup.test.metrics;
    assert_eq!(metrics.rule_commands.with(&["lights", "failed"]).get(), 1);
    assert_eq!(metrics.rule_commands.with(&["lights", "sent"]).get(), 0);
    assert!(
        metrics
            .render()
            .contains("iotrules_rule_commands_total{rule=\"lights\",result=\"failed\"} 1"),
        "{}",
        metrics.render()
    );
    setup.stop();
}

// ---------------------------------------------------------------------------------------
// Alibaba

/// An Alibaba property report of `product`/`device` numbered `seq`.
fn alibaba_delivery(acks: &Arc<Acks>, product: &str, device: &str, seq: u64) -> Delivery {
    let body = format!(
        r#"{{"iotId":"iot-{device}","requestId":"{seq}","productKey":"{product}","deviceName":"{device}","gmtCreate":1700000000000,"items":{{"seq":{{"value":{seq},"time":1700000000000}}}}}}"#
    );
    let mut delivery = acks.delivery(body);
    delivery.properties = vec![
        (
            "topic".into(),
            format!("/{product}/{device}/thing/event/property/post"),
        ),
        ("messageId".into(), format!("m{seq}")),
        ("generateTime".into(), "1700000000999".into()),
    ];
    delivery
}

struct AlibabaSetup {
    runtime: tokio::runtime::Runtime,
    _tls: Tls,
    server: AlibabaServer,
    test: TestPipeline,
    acks: Arc<Acks>,
    ingest: iotrules::pipeline::Ingest,
}

impl AlibabaSetup {
    /// A server for the AccessKey `LTAItest` / [`ALIBABA_SECRET`], a path `ali` signing with
    /// `secret`, and `rules`.
    fn start(secret: &str, rules: &str, extra: &str) -> AlibabaSetup {
        let runtime = runtime();
        let tls = Tls::generate();
        let clock = Arc::new(AtomicU64::new(NOW));
        let server = AlibabaServer::start(runtime.handle(), &tls, "LTAItest", ALIBABA_SECRET);
        let text = format!(
            "[[command_path]]\nname = \"ali\"\nkind = \"alibaba-openapi\"\nurl = \"{}\"\n\
             ca_file = \"{}\"\nregion = \"cn-shanghai\"\naccess_key_id = \"LTAItest\"\n\
             access_key_secret = \"{secret}\"\n{extra}\n",
            server.url,
            tls.ca_file.display()
        );
        let path = path(&text, &clock, &runtime);
        let test = TestPipeline::start(
            &["testing/echo"],
            rules,
            PipelineConfig::default(),
            path,
            runtime.handle(),
        );
        let dialect =
            iotrules::dialect::Dialect::Alibaba(iotrules::dialect::alibaba::Decoder::new(false));
        let ingest = test.pipeline().ingest("test", dialect);
        AlibabaSetup {
            runtime,
            _tls: tls,
            server,
            test,
            acks: Arc::new(Acks::default()),
            ingest,
        }
    }

    fn event(&self, product: &str, device: &str, seq: u64) {
        let before = self.acks.acked();
        self.runtime
            .block_on(
                self.ingest
                    .submit(alibaba_delivery(&self.acks, product, device, seq)),
            )
            .expect("submit");
        wait_for("the acknowledgement", || self.acks.acked() > before);
    }

    fn stop(mut self) {
        drop(self.ingest);
        self.test.drain(&self.runtime);
    }
}

fn decode(text: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn alibaba_commands_become_the_mapped_calls_and_the_server_verifies_their_signature() {
    let rules = [
        echo_rule("set", "property/set", "ali"),
        echo_rule("service", "reboot", "ali"),
        echo_rule("rrpc", "rrpc", "ali"),
        echo_rule("publish", "/a1Pk/lamp/user/set", "ali"),
    ]
    .concat();
    let setup = AlibabaSetup::start(ALIBABA_SECRET, &rules, "iot_instance_id = \"iot-inst\"");
    setup.event("a1Pk", "lamp", 7);
    let mut calls = setup.server.accepted();
    calls.sort_by(|a, b| a["Action"].cmp(&b["Action"]));
    let actions: Vec<&str> = calls.iter().map(|c| c["Action"].as_str()).collect();
    assert_eq!(
        actions,
        ["InvokeThingService", "Pub", "RRpc", "SetDeviceProperty"]
    );
    for call in &calls {
        assert_eq!(call["ProductKey"], "a1Pk");
        assert_eq!(call["RegionId"], "cn-shanghai");
        assert_eq!(call["IotInstanceId"], "iot-inst");
        assert_eq!(call["Timestamp"], "2023-11-14T22:13:20Z");
    }
    assert_eq!(calls[0]["DeviceName"], "lamp");
    assert_eq!(calls[0]["Identifier"], "reboot");
    assert_eq!(calls[0]["Args"], r#"{"seq":7}"#);
    assert_eq!(calls[1]["TopicFullName"], "/a1Pk/lamp/user/set");
    assert_eq!(decode(&calls[1]["MessageContent"]), r#"{"seq":7}"#);
    assert_eq!(decode(&calls[2]["RequestBase64Byte"]), r#"{"seq":7}"#);
    assert_eq!(calls[2]["Timeout"], "4000");
    assert_eq!(calls[3]["Items"], r#"{"seq":7}"#);
    assert_eq!(setup.test.metrics.commands.with(&["ali", "sent"]).get(), 4);
    assert!(setup.test.dead_letters.letters().is_empty());
    setup.stop();
}

#[test]
fn an_alibaba_call_with_a_bad_signature_is_refused_with_400_and_dead_lettered_without_retry() {
    let setup = AlibabaSetup::start(
        "not-the-secret",
        &echo_rule("service", "reboot", "ali"),
        "retries = 3",
    );
    setup.event("a1Pk", "lamp", 1);
    let answers: Vec<String> = setup
        .server
        .requests()
        .into_iter()
        .map(|r| r.answer)
        .collect();
    assert_eq!(answers, ["SignatureDoesNotMatch"]);
    let letters = setup.test.dead_letters.letters();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let message = &letters[0].message;
    for part in [
        "command reboot for device a1Pk.lamp",
        "command path \"ali\"",
        "InvokeThingService answered 400 Bad Request: Alibaba code SignatureDoesNotMatch",
        "not retried",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(!message.contains("not-the-secret"));
    assert_eq!(letters[0].rule.as_deref(), Some("service"));
    let metrics = &setup.test.metrics;
    assert_eq!(metrics.commands.with(&["ali", "failed"]).get(), 1);
    assert_eq!(metrics.rule_commands.with(&["service", "failed"]).get(), 1);
    setup.stop();
}

#[test]
fn alibaba_throttling_and_an_rrpc_timeout_are_retried_and_a_missing_device_is_not() {
    let rules = [
        echo_rule("service", "reboot", "ali"),
        echo_rule("rrpc", "rrpc", "ali"),
    ]
    .concat();
    let setup = AlibabaSetup::start(ALIBABA_SECRET, &rules, "retries = 2\nlanes = 1");
    setup.server.throttle_next(1);
    setup.server.rrpc_codes(&["TIMEOUT"]);
    setup.event("a1Pk", "lamp", 1);
    let answers: Vec<String> = setup
        .server
        .requests()
        .into_iter()
        .map(|r| r.answer)
        .collect();
    // One lane: the service call (throttled, then ok), then RRpc (timeout, then ok).
    assert_eq!(answers, ["Throttling.User", "ok", "TIMEOUT", "ok"]);
    assert_eq!(setup.test.metrics.commands.with(&["ali", "sent"]).get(), 2);
    assert!(setup.test.dead_letters.letters().is_empty());

    setup.server.remove_device("a1Pk", "gone");
    setup.event("a1Pk", "gone", 2);
    let letters = setup.test.dead_letters.letters();
    assert_eq!(letters.len(), 2, "{letters:#?}");
    assert!(
        letters
            .iter()
            .all(|l| l.message.contains("iot.device.NotExistedDevice")
                && l.message.contains("not retried")),
        "{letters:#?}"
    );
    let answers: Vec<String> = setup
        .server
        .requests()
        .into_iter()
        .map(|r| r.answer)
        .collect();
    assert_eq!(answers.len(), 6, "one attempt each: {answers:?}");
    setup.stop();
}
