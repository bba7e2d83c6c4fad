//! For load tests: a valid WebAssembly component exporting a different world
//! (`hello: func() -> string`), which the host must refuse by name at load time.

wit_bindgen::generate!({ path: "wit", world: "greeter" });

struct Greeter;

impl Guest for Greeter {
    fn hello() -> String {
        "hello from the wrong world".to_owned()
    }
}

export!(Greeter);
