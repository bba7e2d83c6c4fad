//! The host crate's top-level modules must import each other without a cycle, so that each
//! can be read, tested and changed on top of the ones below it.

use std::path::Path;

use iotrules_modules::{analyze, render_cycles};

#[test]
fn host_top_level_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../host/src");
    let graph = analyze(&src).unwrap_or_else(|error| panic!("cannot analyze host/src: {error}"));
    assert!(
        graph.modules().count() > 1,
        "found no top-level modules in {}",
        src.display()
    );
    assert!(
        graph.cycles().is_empty(),
        "\nhost/src has import cycles between its top-level modules; each edge below is a file \
         naming another module. Break each cycle (move the named items down a layer, or pass \
         them in), then see the whole graph with\n    \
         cargo run -q -p iotrules-modules -- host/src\n\n{}",
        render_cycles(&graph, "host/src")
    );
}
