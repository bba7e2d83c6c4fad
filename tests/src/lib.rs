//! Shared harness for integration tests against real peers (brokers, HTTP servers) and real
//! plugin components.

pub mod cloud_api;
pub mod http;
pub mod mosquitto;
pub mod mqtt_proxy;
pub mod pipeline;
pub mod plugins;
pub mod pulsar_broker;
pub mod rabbitmq;
pub mod service;
pub mod service_config;
pub mod tls;

use std::time::{Duration, Instant};

use iotrules::config::Scheduling;

/// The rule `echo-all`: every event through the `echo` plugin, its command sent through the
/// command path `out`.
pub const ECHO_RULE: &str = r#"
[[rule]]
name = "echo-all"
commands.via = "out"

[[rule.step]]
plugin = "echo"
"#;

/// A runtime of two worker threads, as the tests and benches run their peers and services
/// on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The runtime a bench runs the side it measures on (the service, a connector, or the bare
/// client it is compared with), apart from [`runtime`] where its peers run, as in a
/// deployment: the service's default number of threads, or `BENCH_IO_THREADS`, as
/// `iotrules run --io-threads` would give it, scheduled as [`bench_scheduling`] says.
pub fn measured_runtime() -> tokio::runtime::Runtime {
    let threads = std::env::var("BENCH_IO_THREADS")
        .map_or(iotrules::service::default_io_threads(), |n| {
            n.parse().expect("BENCH_IO_THREADS is a number of threads")
        });
    iotrules::service::io_runtime(threads, bench_scheduling()).expect("runtime")
}

/// The `[pipeline] scheduling` a bench measures: the default, or `BENCH_SCHEDULING`
/// (`throughput` or `latency`).
pub fn bench_scheduling() -> Scheduling {
    std::env::var("BENCH_SCHEDULING").map_or(Scheduling::default(), |mode| {
        mode.parse()
            .unwrap_or_else(|e| panic!("BENCH_SCHEDULING: {e}"))
    })
}

/// Waits up to 30 s for `done`, checking every 10 ms; fails the test naming `what` if it
/// never is.
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    wait_within(
        Duration::from_secs(30),
        Duration::from_millis(10),
        done,
        || format!("timed out waiting for {what}"),
    );
}

/// Waits up to `limit` for `done`, checking every `every`; fails the test with what `why`
/// says then (a count of what is missing, the state of the peers).
pub fn wait_within(
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
    why: impl Fn() -> String,
) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{}", why());
        std::thread::sleep(every);
    }
}

/// [`wait_for`] for async tests: waits up to 60 s, checking every 20 ms, without blocking
/// the runtime's thread meanwhile.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
