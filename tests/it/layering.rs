//! The architecture, checked: every module of `src/` belongs to a layer, and imports
//! only from its own layer or below; the files of `src/actors/` import each other
//! without a cycle. Data flows one way (http → kafka → readers → sinks → stores), and
//! this test keeps it so.
//!
//! It reads the code as text: every `crate::…` path outside comments (in `use` lines
//! and inline), and for the actors every `super::…` path too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module imports only from its own layer or below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "config",
            "event",
            "aggregate",
            "dead_letter",
            "dedupe",
            "retry",
            "shutdown",
            "leases",
            "catalogue",
            "exit",
            "trace_context",
        ],
    ),
    ("stores", &["sinks", "kafka"]),
    ("telemetry", &["telemetry"]),
    ("actors", &["actors"]),
    ("http", &["http"]),
    ("daemon", &["daemon"]),
    ("tools", &["commands", "ops", "bench", "loadgen"]),
    ("cli", &["cli", "main"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`actors` for
/// `src/actors/sink.rs`, `daemon` for `src/daemon.rs`).
fn top_module(relative: &Path) -> String {
    let first = relative.components().next().expect("a path under src");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (_, modules))| modules.contains(&module))
        .map(|(i, (name, _))| (i, *name))
}

/// The code of a file without its comments (line comments, doc comments, and
/// `/* … */` blocks), so a doc link is not an import.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    for line in text.lines() {
        let mut rest = line;
        let mut kept = String::new();
        loop {
            if in_block {
                match rest.find("*/") {
                    Some(end) => {
                        rest = &rest[end + 2..];
                        in_block = false;
                    }
                    None => break,
                }
            } else {
                let line_comment = rest.find("//");
                let block = rest.find("/*");
                match (line_comment, block) {
                    (Some(l), Some(b)) if b < l => {
                        kept.push_str(&rest[..b]);
                        rest = &rest[b + 2..];
                        in_block = true;
                    }
                    (Some(l), _) => {
                        kept.push_str(&rest[..l]);
                        break;
                    }
                    (None, Some(b)) => {
                        kept.push_str(&rest[..b]);
                        rest = &rest[b + 2..];
                        in_block = true;
                    }
                    (None, None) => {
                        kept.push_str(rest);
                        break;
                    }
                }
            }
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// The first path segments after each `prefix` (`crate::` or `super::`), including
/// every top-level name of a `prefix{a, b::c}` group.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut at = 0;
    while let Some(found) = code[at..].find(prefix) {
        let start = at + found;
        at = start + prefix.len();
        // `crate::` inside a longer path (`gamestream::crate::`) cannot happen; a
        // `super::` that is part of `super::super::` names the grandparent: skip it.
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '}' if depth == 0 => break,
                    ',' if depth == 0 => {
                        names.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                item.push(c);
            }
            names.insert(ident(item.trim()));
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self" && n != "super");
    names
}

struct Source {
    relative: PathBuf,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| Source {
            relative: path.strip_prefix(src()).expect("under src").to_path_buf(),
            code: code_of(&std::fs::read_to_string(&path).expect("read source")),
        })
        .collect()
}

#[test]
fn every_module_has_a_layer() {
    let mut missing = BTreeSet::new();
    for source in sources() {
        let module = top_module(&source.relative);
        if module != "lib" && layer_of(&module).is_none() {
            missing.insert(module);
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a layer (add them to LAYERS in tests/it/layering.rs): {missing:?}"
    );
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let mut upward = Vec::new();
    for source in sources() {
        let module = top_module(&source.relative);
        let Some((layer, layer_name)) = layer_of(&module) else {
            continue; // lib.rs declares the modules; every_module_has_a_layer checks the rest
        };
        for name in names_after(&source.code, "crate::") {
            if let Some((other, other_name)) = layer_of(&name)
                && other > layer
            {
                upward.push(format!(
                    "src/{} ({layer_name}) imports crate::{name} ({other_name})",
                    source.relative.display()
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_actors_import_each_other_without_a_cycle() {
    let actors: Vec<Source> = sources()
        .into_iter()
        .filter(|s| s.relative.starts_with("actors"))
        .collect();
    let file_of = |module: &str| format!("{module}.rs");
    let files: BTreeSet<String> = actors
        .iter()
        .map(|s| {
            s.relative
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &actors {
        let me = source
            .relative
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if me == "mod.rs" {
            continue; // declares the modules and re-exports
        }
        let crate_actors: BTreeSet<String> = source
            .code
            .match_indices("crate::actors::")
            .map(|(i, _)| {
                source.code[i + "crate::actors::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect();
        let targets = names_after(&source.code, "super::")
            .into_iter()
            .chain(crate_actors)
            .map(|m| file_of(&m))
            .filter(|f| files.contains(f) && *f != me)
            .collect::<Vec<_>>();
        edges.entry(me).or_default().extend(targets);
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!(
                "import cycle between files of src/actors/: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_checker_sees_imports_and_ignores_comments() {
    let code = code_of(
        "use crate::{actors::sink, kafka::{a, b}};\n\
         // use crate::http;\n\
         /// [`crate::daemon`]\n\
         let x = crate::bench::run(); /* crate::cli */ let y = super::supervisor::X;\n",
    );
    let names = names_after(&code, "crate::");
    assert_eq!(
        names,
        ["actors", "bench", "kafka"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(
        names_after(&code, "super::"),
        ["supervisor"].into_iter().map(String::from).collect()
    );
}
