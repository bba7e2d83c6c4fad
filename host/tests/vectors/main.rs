//! Runs every case of every vector file in `$IOTRULES_VECTORS` (default `../shared/vectors`
//! beside the repository) against the vendor code, bad inputs included.
//!
//! Nothing read from the files is repeated in the code: the same tests pass on any vector
//! set of the same format.

mod alibaba;
mod common;
mod huawei;
mod tuya;

use common::{KNOWN_FILES, vectors_dir};

#[test]
fn every_vector_file_has_a_checker() {
    let dir = vectors_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read vectors directory {}: {e}", dir.display()));
    let mut seen = 0;
    for entry in entries {
        let name = entry.expect("directory entry").file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".json") {
            continue;
        }
        seen += 1;
        assert!(
            KNOWN_FILES.contains(&name.as_ref()),
            "{name} in {} has no checker in host/tests/vectors",
            dir.display()
        );
    }
    assert!(seen > 0, "no vector files in {}", dir.display());
}
