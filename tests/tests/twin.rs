//! The device twin in a real pipeline: fed by parallel workers in each device's order,
//! committed before the events that changed it are acknowledged, back after a restart,
//! bounded (evicted devices leave memory and the store), served by `/devices`, and read by a
//! plugin through the `device-twin` import.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotrules::config::PipelineConfig;
use iotrules::event::Value;
use iotrules::plugin::{Grants, Limits, StateStore, Verdict};
use iotrules::store::{SqliteStateStore, Store};
use iotrules::twin::{NAMESPACE, Twin, Twins};
use iotrules_tests::pipeline::{Acks, Capture, TestPipeline};
use iotrules_tests::plugins::{Harness, six_properties};
use iotrules_tests::{ECHO_RULE, runtime, wait_for};

/// A Huawei IoTDA property report of `device`, numbered `seq`, with properties `seq` and
/// `temp` (`seq` tenths of a degree) at second `seq` of the day.
fn report(device: &str, seq: u64) -> String {
    let time = format!("20251123T08{:02}{:02}Z", seq / 60 % 60, seq % 60);
    format!(
        r#"{{"resource":"device.property","event":"report","event_time":"{time}","request_id":"{device}-{seq}","notify_data":{{"header":{{"app_id":"app","device_id":"{device}","node_id":"n","product_id":"thermo","gateway_id":"{device}"}},"body":{{"services":[{{"service_id":"S","properties":{{"seq":{seq},"temp":{}}},"event_time":"{time}"}}]}}}}}}"#,
        seq as f64 / 10.0
    )
}

fn settings(workers: usize) -> PipelineConfig {
    PipelineConfig {
        workers,
        queue: 16,
        max_in_flight: 256,
        ..PipelineConfig::default()
    }
}

/// An echo pipeline over `harness`, its commands confirmed at once.
fn pipeline(runtime: &tokio::runtime::Runtime, harness: Harness, workers: usize) -> TestPipeline {
    TestPipeline::start_in(
        harness,
        &["testing/echo"],
        ECHO_RULE,
        settings(workers),
        Capture::open("out"),
        runtime.handle(),
    )
}

fn ingest(test: &TestPipeline) -> iotrules::pipeline::Ingest {
    let dialect = iotrules::dialect::Dialect::Huawei(iotrules::dialect::huawei::Decoder::new());
    test.pipeline().ingest("test", dialect)
}

/// Submits `bodies` in turn (each waiting for room), then waits until every one is acked.
fn submit_all(runtime: &tokio::runtime::Runtime, test: &TestPipeline, bodies: Vec<String>) {
    let ingest = ingest(test);
    let acks = Arc::new(Acks::default());
    let count = bodies.len();
    runtime.block_on(async {
        for body in bodies {
            ingest.submit(acks.delivery(body)).await.expect("submit");
        }
    });
    wait_for("every event acked", || acks.acked() == count);
    assert_eq!(acks.retried(), 0);
}

/// `devices` × `each` reports, interleaved across devices.
fn reports(devices: u64, each: u64) -> Vec<String> {
    (0..each)
        .flat_map(|seq| (0..devices).map(move |d| report(&format!("dev-{d:03}"), seq)))
        .collect()
}

fn property(twin: &Twin, code: &str) -> Value {
    twin.property(code)
        .unwrap_or_else(|| panic!("{} has no {code}", twin.device.id))
        .value
        .clone()
}

/// The twins stored in `file`, read past any cache, as a start of the service reads them.
fn stored(file: &Path) -> HashMap<String, Twin> {
    let state = SqliteStateStore::new(Arc::new(Store::open(file).expect("open")));
    let twins = Twins::new(usize::MAX);
    let (loaded, _) = twins.load(|each| state.read_uncached(NAMESPACE, each));
    assert_eq!(loaded.unreadable, 0, "every stored twin reads back");
    twins
        .all()
        .into_iter()
        .map(|twin| (twin.device.id.clone(), twin))
        .collect()
}

#[test]
fn parallel_workers_leave_every_device_s_twin_at_its_last_report() {
    const DEVICES: u64 = 60;
    const EACH: u64 = 50;
    let runtime = runtime();
    let mut test = pipeline(&runtime, Harness::new(), 4);
    submit_all(&runtime, &test, reports(DEVICES, EACH));

    let twins = test.harness.registry.twins();
    assert_eq!(twins.len(), DEVICES as usize);
    let last_ms = 1_763_884_800_000 + (EACH - 1) * 1000;
    for d in 0..DEVICES {
        let twin = twins.get(&format!("dev-{d:03}")).expect("twin");
        assert_eq!(property(&twin, "seq"), Value::Integer(EACH as i64 - 1));
        assert_eq!(
            property(&twin, "temp"),
            Value::Float((EACH - 1) as f64 / 10.0)
        );
        assert_eq!(twin.last_seen_ms, last_ms);
        assert_eq!(twin.device.product.as_deref(), Some("thermo"));
    }
    assert_eq!(test.metrics.twin_devices.get(), DEVICES);
    assert_eq!(test.metrics.twin_evictions.get(), 0);
    test.drain(&runtime);
}

#[test]
fn no_event_is_acked_before_its_twin_is_in_the_store_and_a_restart_restores_the_twins() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("iotrules.db");
    let twins_before = {
        let state = Arc::new(SqliteStateStore::new(Arc::new(
            Store::open(&file).expect("store"),
        )));
        let mut test = pipeline(&runtime, Harness::over(state), 2);
        // Another process holds the file's write lock: the twins cannot be committed, so
        // nothing may be acknowledged (echo writes no plugin state: only the twin waits).
        let other = rusqlite::Connection::open(&file).expect("second connection");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        let ingest = ingest(&test);
        let acks = Arc::new(Acks::default());
        let bodies = reports(5, 4);
        let count = bodies.len();
        for body in bodies {
            runtime
                .block_on(ingest.submit(acks.delivery(body)))
                .expect("submit");
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            acks.acked(),
            0,
            "acknowledged before its twin was committed"
        );
        other.execute_batch("COMMIT").expect("release the lock");
        wait_for("every event acked", || acks.acked() == count);
        let on_disk: i64 = other
            .query_row(
                "SELECT count(*) FROM plugin_state WHERE namespace = '@twin'",
                [],
                |row| row.get(0),
            )
            .expect("count");
        assert_eq!(on_disk, 5, "one entry per device");
        drop(ingest);
        test.drain(&runtime);
        test.harness.registry.twins().all()
    };
    assert_eq!(twins_before.len(), 5);

    // A new process on the same file: the pipeline loads the twins before any event.
    let state = Arc::new(SqliteStateStore::new(Arc::new(
        Store::open(&file).expect("reopen"),
    )));
    let mut test = pipeline(&runtime, Harness::over(state), 2);
    assert_eq!(test.harness.registry.twins().all(), twins_before);
    assert_eq!(test.metrics.twin_devices.get(), 5);
    // And an event carries on from the restored twin.
    submit_all(&runtime, &test, vec![report("dev-000", 9)]);
    let twin = test.harness.registry.twins().get("dev-000").expect("twin");
    assert_eq!(property(&twin, "seq"), Value::Integer(9));
    test.drain(&runtime);
}

#[test]
fn past_the_bound_evicted_devices_leave_memory_and_the_store_and_are_counted() {
    const DEVICES: u64 = 200;
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("iotrules.db");
    let state = Arc::new(SqliteStateStore::new(Arc::new(
        Store::open(&file).expect("store"),
    )));
    // 32 devices (give or take one per shard of 16: see `iotrules::twin`).
    let twins = Arc::new(Twins::new(32));
    let mut test = pipeline(&runtime, Harness::over_with_twins(state, twins.clone()), 2);
    // The last device after all the others are done: two workers may take reports out of
    // their order of submission, and the device updated last is the one never evicted.
    let mut bodies = reports(DEVICES, 1);
    let last = bodies.pop().expect("a report");
    submit_all(&runtime, &test, bodies);
    submit_all(&runtime, &test, vec![last]);

    let kept = twins.len();
    assert!(kept <= 32 + 16, "{kept}");
    let evictions = test.metrics.twin_evictions.get();
    assert_eq!(evictions, DEVICES - kept as u64);
    assert_eq!(test.metrics.twin_devices.get(), kept as u64);
    // The last device updated is the newest of its shard: never the one evicted.
    assert!(twins.get(&format!("dev-{:03}", DEVICES - 1)).is_some());
    test.drain(&runtime);
    drop(test);

    let stored = stored(&file);
    let in_memory: HashMap<String, Twin> = twins
        .all()
        .into_iter()
        .map(|twin| (twin.device.id.clone(), twin))
        .collect();
    assert_eq!(stored, in_memory, "the store holds exactly the twins kept");
}

/// `GET path` on `address`: the status and the body.
fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the admin API");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response[9..12].parse().expect("status code");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

#[test]
fn devices_lists_summaries_in_pages_and_serves_one_twin_by_its_url_encoded_id() {
    let runtime = runtime();
    let mut test = pipeline(&runtime, Harness::new(), 2);
    let mut bodies = reports(5, 2);
    bodies.push(report("room 1/lamp", 3));
    submit_all(&runtime, &test, bodies);
    let observed = Arc::new(iotrules::admin::Observed {
        metrics: test.metrics.clone(),
        errors: Arc::default(),
        connectors: Arc::default(),
        rules: test.rules.clone(),
        registry: test.harness.registry.clone(),
        started: Instant::now(),
    });
    let address = "127.0.0.1:0".parse().expect("address");
    let admin = runtime
        .block_on(iotrules::admin::serve(address, observed))
        .expect("admin server");
    let address = admin.address();

    let (status, first) = http_get(address, "/devices?limit=4");
    assert_eq!(status, 200);
    assert_eq!(first["total"], 6);
    assert_eq!(first["limit"], 4);
    let ids: Vec<&str> = first["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["dev-000", "dev-001", "dev-002", "dev-003"]);
    assert_eq!(first["devices"][0]["product"], "thermo");
    assert_eq!(first["devices"][0]["properties"], 2);
    assert_eq!(first["devices"][0]["last_seen_ms"], 1_763_884_801_000u64);
    assert_eq!(first["next_after"], "dev-003");

    let (_, second) = http_get(address, "/devices?limit=4&after=dev-003");
    let ids: Vec<&str> = second["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["dev-004", "room 1/lamp"]);
    assert_eq!(second.get("next_after"), None, "the last page");

    let (status, twin) = http_get(address, "/devices/room%201%2Flamp");
    assert_eq!(status, 200, "{twin}");
    assert_eq!(twin["device"]["id"], "room 1/lamp");
    assert_eq!(twin["last_seen_ms"], 1_763_884_803_000u64);
    let seq = twin["properties"]
        .as_array()
        .expect("properties")
        .iter()
        .find(|p| p["code"] == "seq")
        .expect("seq");
    assert_eq!(seq["value"], 3);
    assert_eq!(seq["service"], "S");

    let (status, error) = http_get(address, "/devices/nobody");
    assert_eq!(status, 404);
    assert_eq!(error["error"], "no twin of device \"nobody\"");

    let (status, error) = http_get(address, "/devices?limit=many");
    assert_eq!(status, 400);
    assert!(
        error["error"].as_str().expect("error").contains("limit"),
        "{error}"
    );

    runtime.block_on(admin.stop());
    test.drain(&runtime);
}

#[test]
fn a_plugin_reads_another_device_s_twin_through_the_import() {
    let harness = Harness::new();
    harness.load("twin-peek", "testing/twin-peek");
    let mut step = harness
        .registry
        .step(
            "twin-peek",
            r#"{"device": "thermostat", "code": "temp_current"}"#,
            Limits::default(),
            Grants::default(),
            "peek",
        )
        .expect("step");
    let attributes = |step: &mut iotrules::plugin::Step| {
        let handled = step.handle(&six_properties("lamp", 1)).expect("handled");
        let Verdict::Replace(event) = handled.outcome.verdict else {
            panic!("twin-peek updates every event");
        };
        (
            event.attribute("twin-temp_current").map(str::to_owned),
            event.attribute("twin-seen").map(str::to_owned),
        )
    };
    assert_eq!(attributes(&mut step), (Some("no-twin".into()), None));

    let thermostat = six_properties("thermostat", 7);
    harness.registry.twins().update(&thermostat);
    assert_eq!(
        attributes(&mut step),
        (Some("215".into()), Some(thermostat.time_ms.to_string()))
    );

    let mut absent = harness
        .registry
        .step(
            "twin-peek",
            r#"{"device": "thermostat", "code": "nope"}"#,
            Limits::default(),
            Grants::default(),
            "peek-2",
        )
        .expect("step");
    let handled = absent.handle(&six_properties("lamp", 2)).expect("handled");
    let Verdict::Replace(event) = handled.outcome.verdict else {
        panic!("twin-peek updates every event");
    };
    assert_eq!(event.attribute("twin-nope"), Some("absent"));
}
