//! iotrules: takes device events from IoT clouds (Tuya, Alibaba, Huawei) and MQTT, verifies
//! and decrypts them, normalizes each into one [`event::Event`], and runs it through rules.
//!
//! Today the crate holds the normalized model ([`event`]) and the vendor dialects
//! ([`vendor`]): pure, tested code for every credential, signature, envelope and payload the
//! clouds use. On top of them: the WebAssembly plugin host ([`plugin`]) and the rule files
//! that select events and run them through plugin chains ([`rules`]). Connectors and the
//! pipeline build on these.

pub mod admin;
pub mod command;
pub mod config;
pub mod connector;
pub mod event;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod rules;
pub mod ruletest;
pub mod service;
pub mod status;
pub mod time;
pub mod vendor;
