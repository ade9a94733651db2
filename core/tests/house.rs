//! The shape of the code, checked: `mlep-core`'s top-level modules import each other without a
//! cycle, and no production file of core, the operator or the cli grows past 800 lines nor any
//! of their functions past 80 (a file may say why it stays longer on its first line, starting
//! `// long:`).
//!
//! Read from the sources: an edge `a -> b` is any `crate::b` path (or `use crate::{b, ..}`) in
//! the production code of module `a` (`src/a.rs` or `src/a/**`); test modules (`tests.rs`, and
//! a `#[cfg(test)] mod ... {` block, which runs to the end of its file) and comments are not
//! read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 80;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The production lines of a source file: none for a `tests.rs`, else everything before a
/// `#[cfg(test)]` followed by an inline `mod ... {`.
fn production_lines(path: &Path) -> Vec<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map_or("", |l| l.trim());
        if line.trim() == "#[cfg(test)]" && next.starts_with("mod ") && next.ends_with('{') {
            break;
        }
        out.push((*line).to_owned());
    }
    out
}

/// Code without comments (whole-line comments, and a trailing `// ...`).
fn code_of(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") {
        return "";
    }
    match line.find(" // ") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `code` names through `crate::`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first name of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident_at(&group[j..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

fn core_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `module -> modules it imports`, for every top-level module declared in `lib.rs`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        let Some(edges) = graph.get_mut(&module) else {
            continue; // lib.rs
        };
        for line in production_lines(&file) {
            for target in crate_paths(code_of(&line)) {
                if target != module && modules.contains(&target) {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle of `graph` as `a -> b -> ... -> a`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
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
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_edge_reader_sees_plain_grouped_and_nested_crate_paths() {
    let got = crate_paths("use crate::{plan::Plan, crd::{A, B}, meta}; x(crate::envoy::f())");
    let want: BTreeSet<String> = ["plan", "crd", "meta", "envoy"].map(String::from).into();
    assert_eq!(got, want);
    assert!(crate_paths(code_of("/// see [`crate::render`]")).is_empty());
}

#[test]
fn a_cycle_is_found_and_named() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn core_modules_import_each_other_without_a_cycle() {
    let graph = module_graph(&core_src());
    // The reader works: modules and known edges are found.
    assert!(graph.len() >= 10, "{graph:?}");
    for (from, to) in [("render", "plan"), ("crd", "api_enum"), ("rollout", "crd")] {
        assert!(
            graph[from].contains(to),
            "no edge {from} -> {to}: {graph:?}"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle in core: {}\n{graph:#?}", cycle.join(" -> "));
    }
}

/// Functions of `lines` longer than `MAX_FN_LINES`, as `name (n lines)`: a `fn` line runs to
/// the first line after it that closes at its own indentation (rustfmt's layout).
fn long_functions(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = code_of(line);
        let t = code.trim_start();
        let indent = code.len() - t.len();
        let words: Vec<&str> = t.split_whitespace().take(5).collect();
        let Some(at) = words.iter().position(|w| *w == "fn") else {
            continue;
        };
        if !words[..at]
            .iter()
            .all(|w| w.starts_with("pub") || matches!(*w, "async" | "const" | "unsafe" | "extern"))
        {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        let end = lines[i..]
            .iter()
            .position(|l| l.trim_end() == close || l.trim_end() == format!("{close};"));
        // A declaration without a body (trait method) ends on its own line.
        if t.ends_with(';') {
            continue;
        }
        if let Some(n) = end.map(|e| e + 1).filter(|n| *n > MAX_FN_LINES) {
            out.push(format!("{} ({n} lines)", ident_at(words[at + 1])));
        }
    }
    out
}

#[test]
fn core_operator_and_cli_files_and_functions_stay_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["core/src", "operator/src", "cli/src"] {
        let before = files.len();
        rust_files(&root.join(dir), &mut files);
        assert!(
            files.len() > before + 5,
            "too few files read under {dir}: {files:?}"
        );
    }
    let mut problems = Vec::new();
    for file in &files {
        let lines = production_lines(file);
        let excused = lines.first().is_some_and(|l| l.starts_with("// long:"));
        if lines.len() > MAX_FILE_LINES && !excused {
            problems.push(format!("{}: {} lines", file.display(), lines.len()));
        }
        for f in long_functions(&lines) {
            problems.push(format!("{}: fn {f}", file.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_long_function_is_reported() {
    let mut f = vec!["    pub(crate) async fn big() {".to_owned()];
    f.extend((0..MAX_FN_LINES).map(|i| format!("        x{i}();")));
    f.push("    }".to_owned());
    assert_eq!(long_functions(&f), ["big (82 lines)"]);
    f.drain(1..3);
    assert!(long_functions(&f).is_empty());
}
