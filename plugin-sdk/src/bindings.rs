//! Guest bindings generated from `wit/plugin.wit`.
//!
//! Everything here is produced by `wit-bindgen`; the SDK adds its helpers to these types in
//! `model.rs` rather than wrapping them, so a plugin's `Event` is exactly the WIT `event`.

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
    // Plugins depend on this crate only, not on wit-bindgen: generated code and the export
    // macro reach the runtime through our re-export.
    runtime_path: "iotrules_plugin_sdk::__private::wit_bindgen::rt",
    pub_export_macro: true,
    export_macro_name: "__export_plugin_world",
    default_bindings_module: "iotrules_plugin_sdk::__private::bindings",
    additional_derives: [PartialEq],
});
