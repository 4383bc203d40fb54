//! The fuzz targets' properties in the ordinary test suite, in seconds and on the
//! stable toolchain: every committed corpus and regression input of `fuzz/` goes
//! through the same checks as under `cargo fuzz` (`fuzz/src/checks.rs`), then a few
//! thousand inputs mutated from them with a fixed seed (so a failure reproduces).
//! The long runs are `cargo fuzz` (see the README's "Fuzzing" section).

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Mutated inputs per target.
const MUTATIONS: usize = 3000;
/// Fragments a mutation may insert: JSON syntax, edge values, tricky text.
const FRAGMENTS: [&str; 24] = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "-0",
    "1e999",
    "9223372036854775808",
    "-9223372036854775809",
    "0.1e-400",
    "\\u0000",
    "\\ud800",
    "\u{feff}",
    "\"event_type\":\"x\"",
    "\"data\":{}",
    "\"timestamp\":\"9999-12-31T23:59:59-23:59\"",
    "\"timestamp\":\"0000-01-01T00:00:00+23:59\"",
    "\"player_id\":\"p\"",
    "\u{7f}",
];

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=bytes.len());
        match rng.random_range(0..5) {
            0 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] = rng.random();
            }
            1 => {
                let fragment = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                bytes.splice(at..at, fragment.bytes());
            }
            2 if at < bytes.len() => {
                let end = rng.random_range(at..=bytes.len());
                bytes.drain(at..end);
            }
            3 if !bytes.is_empty() => {
                // Repeat a slice: duplicate keys, deeper nesting, longer strings.
                let start = rng.random_range(0..bytes.len());
                let end = rng.random_range(start..=bytes.len().min(start + 64));
                let copy = bytes[start..end].to_vec();
                bytes.splice(at..at, copy);
            }
            _ => bytes.insert(at, rng.random()),
        }
    }
    bytes
}

fn run(target: &str, check: fn(&[u8])) {
    let seeds = inputs(target);
    assert!(!seeds.is_empty(), "no corpus for {target} under fuzz/");
    for (path, bytes) in &seeds {
        if std::panic::catch_unwind(|| check(bytes)).is_err() {
            panic!("{target}: {} fails", path.display());
        }
    }
    let mut rng = StdRng::seed_from_u64(0x6761_6d65);
    for i in 0..MUTATIONS {
        let seed = &seeds[i % seeds.len()].1;
        let input = mutate(&mut rng, seed);
        if std::panic::catch_unwind(|| check(&input)).is_err() {
            panic!(
                "{target}: mutation {i} fails; save it under fuzz/regressions/{target}/: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

#[test]
fn parse_submission_corpus_and_mutations() {
    run("parse_submission", checks::submission);
}

#[test]
fn parse_record_corpus_and_mutations() {
    run("parse_record", checks::record);
}

#[test]
fn batch_body_corpus_and_mutations() {
    run("batch_body", checks::batch);
}
