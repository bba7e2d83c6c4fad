//! Shows the import graph between the top-level modules of a Rust crate's `src` directory and
//! finds the import cycles in it. From the workspace root:
//!
//! ```text
//! cargo run -q -p iotrules-modules -- host/src         # layers, imports, cycles
//! cargo run -q -p iotrules-modules -- --dot host/src   # a Graphviz graph instead
//! ```
//!
//! The exit code is 0 without a cycle, 1 with one, 2 on a usage or I/O error.
//!
//! **Modules.** `src/X.rs` and everything under `src/X/` are the top-level module `X`.
//! `lib.rs` and `main.rs` are the crate root, left out of the graph: the root declares every
//! module (and may re-export some), so its edges say nothing about layering. `src/bin/` holds
//! other crates (Cargo's binaries) and is left out too.
//!
//! **Imports.** A module imports another when one of its files names it by a `crate::` path —
//! in a `use` (nested `{..}` groups, `pub use`, `pub(crate) use`) or inline in code, types and
//! attributes — or by a `super::` path that climbs out of its own top-level module (`super`
//! resolved from the file's module: `a/b/c.rs` is `a::b::c`, `a/mod.rs` is `a`, inline
//! `mod m { .. }` blocks go one deeper). Only `crate::` counts: a binary naming its library
//! (`iotrules::`) names another crate.
//!
//! **Left out.** Comments (doc links included), string and char literals (so strings in
//! attributes such as `#[serde(default = "crate::x::f")]`), and test-only code: whatever a
//! `#[cfg(test)]` attribute (or `cfg(any(test, ..))`, `cfg(all(test, ..))`) applies to —
//! a `mod tests { .. }` block, another item, a field — and the file, with its directory, of a
//! test-only `mod tests;` declaration.
//!
//! The source is read by a small tokenizer, not a Rust parser (std only): macros are not
//! expanded and `#[path = ".."]` attributes are not followed.

mod graph;
mod lex;
mod render;
mod scan;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use graph::{Edge, ModuleGraph};
pub use render::{render_cycles, render_dot, render_edges, render_layers, render_text};

use scan::FileScan;

/// Why a crate's source could not be analyzed: the file or directory, and what went wrong.
#[derive(Debug)]
pub struct Error {
    path: PathBuf,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Read(io::Error),
    NotADirectory,
    NonUtf8Name,
}

impl Error {
    fn read(path: PathBuf, error: io::Error) -> Self {
        Error {
            path,
            problem: Problem::Read(error),
        }
    }

    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.problem {
            Problem::Read(error) => write!(f, "cannot read {path}: {error}"),
            Problem::NotADirectory => write!(f, "{path} is not a directory"),
            Problem::NonUtf8Name => write!(f, "{path}: the file name is not UTF-8"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Read(error) => Some(error),
            _ => None,
        }
    }
}

/// One `.rs` file under the src directory.
#[derive(Debug)]
struct SourceFile {
    /// Relative to the src directory.
    relative: PathBuf,
    /// `relative` with `/` separators, for output.
    display: String,
    /// `a/b/c.rs` is `[a, b, c]`, `a/mod.rs` is `[a]`, the crate root is `[]`.
    module_path: Vec<String>,
}

impl SourceFile {
    fn top_module(&self) -> Option<&str> {
        self.module_path.first().map(String::as_str)
    }

    /// The directory its child module files live in: beside `lib.rs`, `main.rs` and `mod.rs`,
    /// and in `a/b/` for `a/b.rs`.
    fn child_directory(&self) -> PathBuf {
        let parent = self
            .relative
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let owns_directory = self.module_path.is_empty()
            || self
                .relative
                .file_name()
                .is_some_and(|name| name == "mod.rs");
        match self.module_path.last() {
            Some(name) if !owns_directory => parent.join(name),
            _ => parent,
        }
    }
}

/// Reads every `.rs` file under `src_dir` (a crate's `src`) and builds the import graph
/// between its top-level modules.
pub fn analyze(src_dir: &Path) -> Result<ModuleGraph, Error> {
    let mut scanned = Vec::new();
    for file in find_source_files(src_dir)? {
        let path = src_dir.join(&file.relative);
        let source = fs::read_to_string(&path).map_err(|error| Error::read(path, error))?;
        let found = scan::scan(&source, &file.module_path);
        scanned.push((file, found));
    }
    let test_only = test_only_paths(&scanned);
    let counted: Vec<&(SourceFile, FileScan)> = scanned
        .iter()
        .filter(|(file, _)| !test_only.iter().any(|path| file.relative.starts_with(path)))
        .collect();
    Ok(build_graph(&counted))
}

/// Nodes: the top-level modules of the counted files (not the root); edges: their references
/// to other top-level modules. A reference to the root (`crate::Item`) makes no edge.
fn build_graph(files: &[&(SourceFile, FileScan)]) -> ModuleGraph {
    let mut graph = ModuleGraph::default();
    for (file, _) in files {
        if let Some(module) = file.top_module() {
            graph.add_module(module);
        }
    }
    for (file, found) in files {
        let Some(from) = file.top_module() else {
            continue;
        };
        for reference in &found.references {
            let Some(to) = reference.first().filter(|to| graph.has_module(to)) else {
                continue;
            };
            let name = reference.get(1).unwrap_or(to);
            graph.add_reference(from, to, &file.display, name);
        }
    }
    graph
}

/// The files and directories of test-only modules (`#[cfg(test)] mod tests;`), relative to
/// the src directory: `tests.rs` and `tests/` in the declaring file's child directory.
fn test_only_paths(scanned: &[(SourceFile, FileScan)]) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    for (file, found) in scanned {
        for module in &found.test_modules {
            let Some((name, inline)) = module.split_last() else {
                continue;
            };
            let directory = inline
                .iter()
                .fold(file.child_directory(), |path, segment| path.join(segment));
            paths.insert(directory.join(format!("{name}.rs")));
            paths.insert(directory.join(name));
        }
    }
    paths
}

/// Every `.rs` file under `src_dir`, sorted, except under `src_dir/bin`.
fn find_source_files(src_dir: &Path) -> Result<Vec<SourceFile>, Error> {
    let metadata = fs::metadata(src_dir).map_err(|error| Error::read(src_dir.into(), error))?;
    if !metadata.is_dir() {
        return Err(Error {
            path: src_dir.into(),
            problem: Problem::NotADirectory,
        });
    }
    let mut relative_paths = Vec::new();
    walk(src_dir, Path::new(""), &mut relative_paths)?;
    relative_paths.sort();
    relative_paths
        .into_iter()
        .map(|relative| source_file(src_dir, relative))
        .collect()
}

/// Collects the `.rs` files under `src_dir/relative` (not following directory symlinks).
fn walk(src_dir: &Path, relative: &Path, found: &mut Vec<PathBuf>) -> Result<(), Error> {
    let directory = src_dir.join(relative);
    let read_error = |error| Error::read(directory.clone(), error);
    for entry in fs::read_dir(&directory).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let file_type = entry.file_type().map_err(read_error)?;
        let path = relative.join(entry.file_name());
        if file_type.is_dir() {
            if path != Path::new("bin") {
                walk(src_dir, &path, found)?;
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
    Ok(())
}

fn source_file(src_dir: &Path, relative: PathBuf) -> Result<SourceFile, Error> {
    let non_utf8 = || Error {
        path: src_dir.join(&relative),
        problem: Problem::NonUtf8Name,
    };
    let mut segments = Vec::new();
    for component in relative.components() {
        let name = component.as_os_str().to_str().ok_or_else(non_utf8)?;
        segments.push(name.to_owned());
    }
    let display = segments.join("/");
    let module_path = module_path(segments);
    Ok(SourceFile {
        relative,
        display,
        module_path,
    })
}

/// The module path of a file from its path segments: `a/b/c.rs` is `a::b::c`, `a/mod.rs` is
/// `a`, the top-level `lib.rs` and `main.rs` are the root (empty).
fn module_path(mut segments: Vec<String>) -> Vec<String> {
    let Some(file_name) = segments.pop() else {
        return segments;
    };
    let stem = file_name.strip_suffix(".rs").unwrap_or(&file_name);
    let is_root = segments.is_empty() && (stem == "lib" || stem == "main");
    if !is_root && stem != "mod" {
        segments.push(stem.to_owned());
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A directory of source files under the system temp dir, removed when dropped.
    struct Fixture {
        root: PathBuf,
    }

    impl Fixture {
        fn new(files: &[(&str, &str)]) -> Fixture {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            let unique = format!(
                "iotrules-modules-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let root = std::env::temp_dir().join(unique);
            for (path, contents) in files {
                let path = root.join(path);
                fs::create_dir_all(path.parent().expect("fixture files are in the root"))
                    .expect("create fixture directory");
                fs::write(&path, contents).expect("write fixture file");
            }
            fs::create_dir_all(&root).expect("create fixture root");
            Fixture { root }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn analyzed(files: &[(&str, &str)]) -> ModuleGraph {
        let fixture = Fixture::new(files);
        analyze(&fixture.root).expect("fixture analyzed")
    }

    fn edge_list(graph: &ModuleGraph) -> Vec<String> {
        graph
            .edges()
            .map(|(from, to, edge)| {
                let names: Vec<&str> = edge.names().into_iter().collect();
                format!("{from} -> {to} ({})", names.join(", "))
            })
            .collect()
    }

    #[test]
    fn modules_are_files_and_directories_and_the_root_is_left_out() {
        let graph = analyzed(&[
            ("lib.rs", "pub mod a; pub mod b; pub use crate::a::A;"),
            ("main.rs", "mod cli; fn main() { iotrules::b::run(); }"),
            (
                "a.rs",
                "pub struct A; pub fn f() -> crate::Root { todo!() }",
            ),
            ("b/mod.rs", "mod inner; use crate::a::A;"),
            ("b/inner.rs", "use super::super::a::f; use super::Sibling;"),
            ("cli/mod.rs", "use crate::cli::run; use iotrules::a::A;"),
            ("bin/tool.rs", "use crate::a::A;"),
            ("notes.txt", "crate::b::B"),
        ]);
        assert_eq!(graph.modules().collect::<Vec<_>>(), ["a", "b", "cli"]);
        assert_eq!(edge_list(&graph), ["b -> a (A, f)"]);
        let causes = graph.edge("b", "a").expect("b imports a").causes();
        assert_eq!(
            causes.keys().collect::<Vec<_>>(),
            ["b/inner.rs", "b/mod.rs"]
        );
    }

    #[test]
    fn test_only_module_files_are_skipped() {
        let graph = analyzed(&[
            (
                "lib.rs",
                "mod a; mod b; mod c; mod d; #[cfg(test)] mod test_support;",
            ),
            ("test_support.rs", "use crate::a::A;"),
            ("a.rs", "pub struct A;\n#[cfg(test)]\nmod tests;"),
            // `a.rs` declares `tests`: its file is `a/tests.rs`.
            ("a/tests.rs", "use crate::b::B;"),
            (
                "b/mod.rs",
                "pub struct B;\n#[cfg(any(test, feature = \"x\"))]\nmod tests;\nmod real;",
            ),
            // `b/mod.rs` declares `tests`: its file is beside it, with its own submodules.
            ("b/tests/mod.rs", "use crate::c::C; mod more;"),
            ("b/tests/more.rs", "use crate::c::C;"),
            ("b/real.rs", "use crate::d::D;"),
            ("c.rs", "pub struct C;"),
            ("d.rs", "pub struct D;"),
        ]);
        assert_eq!(graph.modules().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(edge_list(&graph), ["b -> d (D)"]);
    }

    #[test]
    fn cycle_is_found_and_reported_with_its_edges() {
        let fixture = Fixture::new(&[
            ("config.rs", "use crate::connector::ConnectorState;"),
            ("connector/mod.rs", "mod mqtt;"),
            ("connector/mqtt.rs", "fn f(c: &crate::config::Config) {}"),
            ("event.rs", ""),
            (
                "service.rs",
                "use crate::{config::Config, event::{self, Event}};",
            ),
        ]);
        let graph = analyze(&fixture.root).expect("fixture analyzed");
        assert_eq!(
            graph.cycles(),
            [vec!["config".to_owned(), "connector".to_owned()]]
        );
        let report = render_cycles(&graph, "src");
        assert!(report.starts_with("1 import cycle between the top-level modules of src:"));
        assert!(report.contains("  config -> connector\n    config.rs: ConnectorState\n"));
        assert!(report.contains("  connector -> config\n    connector/mqtt.rs: Config\n"));
        assert!(!report.contains("service"));
    }

    #[test]
    fn acyclic_crate_reports_no_cycle_and_layers_bottom_up() {
        let graph = analyzed(&[
            ("event.rs", "/// See [`crate::service`].\npub struct Event;"),
            ("config.rs", "use crate::event::Event;"),
            ("service.rs", "use crate::{config::Config, event::Event};"),
        ]);
        assert!(graph.cycles().is_empty());
        let text = render_text(&graph, "src");
        assert!(text.contains("layer 0: event\nlayer 1: config\nlayer 2: service\n"));
        assert!(text.ends_with("no import cycle between the top-level modules of src\n"));
    }

    #[test]
    fn unreadable_files_are_errors_naming_the_file() {
        let fixture = Fixture::new(&[("a.rs", "")]);
        fs::write(fixture.root.join("bad.rs"), [0xff, 0xfe, 0x00]).expect("write fixture");
        let error = analyze(&fixture.root).expect_err("non-UTF-8 source");
        assert_eq!(error.path(), fixture.root.join("bad.rs"));
        assert!(error.to_string().contains("bad.rs"), "{error}");
    }

    #[test]
    fn missing_or_non_directory_src_is_an_error() {
        let fixture = Fixture::new(&[("a.rs", "")]);
        let missing = fixture.root.join("missing");
        assert!(
            analyze(&missing)
                .expect_err("missing")
                .to_string()
                .contains("missing")
        );
        let file = fixture.root.join("a.rs");
        assert!(
            analyze(&file)
                .expect_err("a file")
                .to_string()
                .ends_with("is not a directory")
        );
    }

    #[test]
    fn module_paths() {
        let path = |p: &str| module_path(p.split('/').map(str::to_owned).collect());
        assert_eq!(path("lib.rs"), Vec::<String>::new());
        assert_eq!(path("main.rs"), Vec::<String>::new());
        assert_eq!(path("a/mod.rs"), ["a"]);
        assert_eq!(path("a/lib.rs"), ["a", "lib"]);
        assert_eq!(
            path("connector/mqtt/link.rs"),
            ["connector", "mqtt", "link"]
        );
    }
}
