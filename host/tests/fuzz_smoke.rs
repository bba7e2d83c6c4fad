//! The fuzz targets on stable, in seconds: every target of `fuzz/` (the same functions, from
//! `fuzz/src/targets.rs`) over its committed seeds (`fuzz/seeds/<target>/`) and a fixed
//! number of deterministic mutations of them, asserting that none panics.
//!
//! Not a substitute for the coverage-guided runs (`fuzz/README.md`): a cheap guard in every
//! test run that the targets still build and that the seeds, the inputs fuzzing once
//! crashed on among them, still decode without panicking.

#[path = "../../fuzz/src/targets.rs"]
#[allow(dead_code)]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Mutations per target: with the seeds, a few thousand inputs in all, a few seconds in debug.
const MUTATIONS: usize = 1000;

/// Tokens that tend to reach new branches of JSON, TOML and topic parsers.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\n",
    b"{}",
    b"[]",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"-0.0",
    b"18446744073709551616",
    b"9223372036854775807",
    b"/",
    b"+",
    b"#",
    b"{device}",
    b"=",
    b"[[rule]]",
    b"\xff",
    b"\xc3\xa9",
];

/// A xorshift generator: the same mutations on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One to four stacked edits of `input`, some taking bytes from `other` (another seed).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            3 if at < data.len() => {
                let end = at + rng.below(data.len() - at).min(32) + 1;
                data.drain(at..end);
            }
            4 if at < data.len() => {
                let end = at + rng.below(data.len() - at).min(64) + 1;
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = from + rng.below(other.len() - from) + 1;
                data.splice(at.., other[from..end].iter().copied());
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| std::fs::read(file).expect("a readable seed"))
        .collect()
}

/// Runs `target` on `input`; a panic fails the test with the input, also saved to a file
/// to reproduce it with `cargo +nightly fuzz run <target> <file>`.
fn run(name: &str, target: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-smoke-{name}"));
        let _ = std::fs::write(&file, input);
        panic!(
            "fuzz target {name} panicked on {:?} (saved to {})",
            String::from_utf8_lossy(input),
            file.display()
        );
    }
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &(name, target) in targets::TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} has no seeds");
        for seed in &seeds {
            run(name, target, seed);
        }
        for _ in 0..MUTATIONS {
            let input = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            run(name, target, &mutate(&mut rng, input, other));
        }
    }
}
