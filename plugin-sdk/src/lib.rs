//! Write iotrules plugins in Rust: one struct, one `impl Plugin`, one macro.
//!
//! A plugin is a WebAssembly component implementing the `plugin` world of `wit/plugin.wit`
//! (shipped with this crate; the WIT is the contract and documents every type): one step of
//! a rule's chain that sees each event the rule passes it and answers keep, drop, replace or
//! update, plus commands to send. This crate generates the guest bindings for that world and adds
//! what a plugin needs around them:
//!
//! - [`Plugin`], the trait a plugin implements, and [`export_plugin!`], which exports it. The
//!   instance made by `init` lives between calls, so a plugin can keep caches in `self`.
//! - [`EventView`], the event `handle` is given, which reads each field from the host only
//!   when the plugin asks for it: [`EventView::property_f64`] and friends, `device()`, …
//! - The WIT types ([`Event`], [`Property`], [`Value`], [`Command`], [`Outcome`],
//!   [`Changes`], …) with helpers: [`Event::property_f64`] and friends,
//!   [`Command::new`]`(…).param(…).via(…)`, [`Outcome::keep`]/[`drop`](Outcome::drop)/
//!   [`update`](Outcome::update)/[`replace`](Outcome::replace)`(…).with_command(…)`.
//! - [`Ctx`]: the host's log, clock and per-step state (typed as JSON through `serde`).
//! - [`Config`]: the rule step's configuration, parsed with `serde`, with errors that name
//!   the field.
//! - [`select`]: the devices a step watches, by id pattern (`*`, `?`) or product, as the
//!   `devices` and `products` config keys name them.
//! - [`command`]: the `command` config table, a command to send with each event a step
//!   emits.
//! - [`testing`]: a [`TestHost`](testing::TestHost) and an event builder, so plugin unit
//!   tests run natively with `cargo test`.
//!
//! # A complete plugin
//!
//! Drop Tuya temperature reports below a configured value, and turn a fan on above another:
//!
//! ```
//! use iotrules_plugin_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings { ignore_below: f64, fan_above: f64, fan: String }
//!
//! struct Thermostat { settings: Settings }
//!
//! impl Plugin for Thermostat {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         Ok(Thermostat { settings: config.parse()? })
//!     }
//!
//!     fn handle(&mut self, event: &EventView, ctx: &mut Ctx) -> Result<Outcome, String> {
//!         let Some(t) = event.property_f64("temperature") else { return Ok(Outcome::keep()) };
//!         if t < self.settings.ignore_below {
//!             ctx.debug(format_args!("{}: {t} °C is below the floor", event.device().id));
//!             return Ok(Outcome::drop());
//!         }
//!         let mut outcome = Outcome::keep();
//!         if t > self.settings.fan_above {
//!             outcome = outcome.with_command(
//!                 Command::new(self.settings.fan.as_str(), "switch").params(true).via("tuya-api"),
//!             );
//!         }
//!         Ok(outcome)
//!     }
//! }
//!
//! iotrules_plugin_sdk::export_plugin!(Thermostat);
//!
//! // A unit test, run natively:
//! use iotrules_plugin_sdk::testing::{TestHost, event};
//!
//! let mut host = TestHost::new();
//! let mut plugin: Thermostat =
//!     host.init(r#"{"ignore_below": -40, "fan_above": 28, "fan": "fan-1"}"#).unwrap();
//! let hot = event("sensor-1").property("temperature", 30.5).build();
//! let out = host.handle(&mut plugin, &hot).unwrap();
//! assert!(out.is_keep());
//! assert_eq!(out.commands[0].device.id, "fan-1");
//! assert_eq!(out.commands[0].params, "true");
//! assert!(host.handle(&mut plugin, &event("s").property("temperature", -50).build()).unwrap().is_drop());
//! assert_eq!(
//!     host.init::<Thermostat>(r#"{"ignore_below": 0}"#).err().unwrap(),
//!     "config: missing field `fan_above`",
//! );
//! ```
//!
//! The crate is built as a `cdylib` for `wasm32-wasip2`, which makes the component directly:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # rlib: so `cargo test` can run the unit tests natively
//! ```
//!
//! ```sh
//! cargo build --target wasm32-wasip2 --release   # target/wasm32-wasip2/release/<name>.wasm
//! ```
//!
//! # What the host promises
//!
//! `init` runs once per instance with the step's config (`{}` if none); `handle` runs for each
//! event, in order for any one device. State is per rule step, held by the host (it survives
//! restarts and reloads), and the writes of a call that returns `Err` or traps are discarded.
//! A panic traps the call: its message goes to the host log at error level, and the rule's
//! `on_error` policy decides what happens to the event. Plugins get no files, network or
//! environment.

// Lets the generated bindings name this crate the way plugin crates do.
extern crate self as iotrules_plugin_sdk;

pub mod bindings;
pub mod command;
mod config;
#[cfg(target_arch = "wasm32")]
mod guest;
mod host;
mod model;
pub mod select;
pub mod testing;
mod view;

pub use bindings::iotrules::plugin::host::Level;
pub use bindings::iotrules::plugin::types::{
    Changes, Command, Device, Event, Kind, Outcome, Property, Twin, TwinProperty, Value, Verdict,
};
pub use config::Config;
pub use host::{Ctx, Host};
pub use view::EventView;

/// The guest's allocator. Every field a plugin reads arrives as freshly allocated strings and
/// lists (the component model's lowering asks the guest's `cabi_realloc` for each), which
/// are freed when the call returns, so the allocator is on every event's path. Measured when
/// the whole event was lowered into every call (the 0.1.0 interface), against the
/// toolchain's dlmalloc, `valgrind --tool=callgrind` counted 26 009 → 25 390 instructions per
/// call of the `pass` plugin and 35 640 → 34 354 of `echo` (`cargo bench -p iotrules --bench
/// plugin`), and 154 480 → 148 469 per event for the three plugins of `bench pipeline`.
/// Plugins are single-threaded, which `WasmDynamicTalc` requires; it grows the memory a page
/// at a time, within the host's memory cap. Turn the `talc` feature off to bring your own.
#[cfg(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// The usual imports for writing a plugin.
pub mod prelude {
    pub use crate::{
        Changes, Command, Config, Ctx, Device, Event, EventView, Kind, Level, Outcome, Plugin,
        Property, Twin, TwinProperty, Value, Verdict,
    };
}

/// One step of a rule: made from the step's configuration, then given every event the rule
/// passes it.
///
/// Export an implementation with [`export_plugin!`].
pub trait Plugin: Sized + 'static {
    /// Makes the plugin from the rule step's configuration. Return an error that names the
    /// offending field (as [`Config::parse`] does); the rule is then refused.
    fn init(config: &Config) -> Result<Self, String>;

    /// Decides what becomes of one event, and which commands to send. An error fails the
    /// event's step (the rule's `on_error` policy decides what then happens to it) and
    /// discards the call's state writes; the instance stays in use.
    ///
    /// `event` reads the event from the host one field at a time, as the plugin asks for
    /// them (see [`EventView`]).
    fn handle(&mut self, event: &EventView<'_>, ctx: &mut Ctx<'_>) -> Result<Outcome, String>;
}

/// Exports a [`Plugin`] implementation as the component's `init` and `handle`.
///
/// `init` makes the instance and keeps it in a thread-local for the component's life; `handle`
/// borrows it for each event. Use it once per crate, at the top level. On targets other than
/// wasm32 it only checks that the type implements [`Plugin`], so the crate still builds and
/// tests natively.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static INSTANCE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct IotrulesPluginExport;

            impl $crate::__private::bindings::Guest for IotrulesPluginExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    INSTANCE.with(|slot| $crate::__private::init::<$plugin>(slot, config))
                }

                fn handle(
                    event: &$crate::__private::bindings::iotrules::plugin::types::EventView,
                ) -> ::core::result::Result<$crate::Outcome, ::std::string::String> {
                    INSTANCE.with(|slot| $crate::__private::handle::<$plugin>(slot, event))
                }
            }

            $crate::__private::bindings::__export_plugin_world!(
                IotrulesPluginExport with_types_in $crate::__private::bindings
            );
        };

        #[cfg(not(target_arch = "wasm32"))]
        const _: () = $crate::__private::assert_plugin::<$plugin>();
    };
}

/// Compiles and runs the README's example as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

/// Used by [`export_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings;
    #[cfg(target_arch = "wasm32")]
    pub use crate::guest::{handle, init};
    pub use wit_bindgen;

    /// Fails to compile unless `P` is a [`Plugin`](crate::Plugin).
    pub const fn assert_plugin<P: crate::Plugin>() {}
}
