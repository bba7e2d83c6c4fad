//! iotrules: takes device events from IoT clouds (Tuya, Alibaba, Huawei) and MQTT, verifies
//! and decrypts them, normalizes each into one [`event::Event`], and runs it through rules.
//!
//! Today the crate holds the normalized model ([`event`]) and the vendor dialects
//! ([`vendor`]): pure, tested code for every credential, signature, envelope and payload the
//! clouds use. On top of them: the WebAssembly plugin host ([`plugin`]) and the rule files
//! that select events and run them through plugin chains ([`rules`]), and the local SQLite
//! file for dead letters and plugin state ([`store`]). Connectors and the pipeline build on
//! these.

pub mod event;
pub mod plugin;
pub mod rules;
pub mod store;
pub mod time;
pub mod vendor;
