//! iotrules: takes device events from IoT clouds (Tuya, Alibaba, Huawei) and MQTT, verifies
//! and decrypts them, normalizes each into one [`event::Event`], and runs it through rules.
//!
//! The normalized model ([`event`]) and the vendor dialects ([`dialect`]) are pure, tested
//! code for every credential, signature, envelope and payload the clouds use. On top of
//! them: the WebAssembly plugin host ([`plugin`]), the rule files that select events and run
//! them through plugin chains ([`rules`], tested with [`ruletest`]), the local SQLite file
//! for dead letters and plugin state ([`store`]), and the running service: [`config`],
//! [`connector`]s, the [`pipeline`], [`command`] paths, [`metrics`] and the [`admin`] API,
//! planned from the config by [`plan`] and put together by [`service`].

pub mod admin;
pub mod command;
pub mod config;
pub mod connector;
pub mod dialect;
pub(crate) mod endpoint;
pub mod event;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod plugin;
pub mod rules;
pub mod ruletest;
pub mod service;
pub mod status;
pub mod store;
mod sync;
pub mod time;
pub mod tls;
pub mod twin;
pub mod watch;
