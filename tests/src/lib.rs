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

/// Waits up to 30 s for `done`, checking every 10 ms; fails the test naming `what` if it
/// never is.
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
