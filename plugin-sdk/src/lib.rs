//! Placeholder: the plugin SDK arrives with the WebAssembly plugin issue.
