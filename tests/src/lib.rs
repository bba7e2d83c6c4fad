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
pub mod service_config;
