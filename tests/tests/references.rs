//! Every repository path that a doc or a code comment cites exists.
//!
//! Scanned: every `*.md`, `*.rs`, `*.sh`, `*.toml` and `*.mjs` file of the checkout (hidden
//! directories, `target/` and symlinks skipped). Checked:
//! - markdown links `[text](path)` in `*.md` that are not URLs or anchors, relative to the file;
//! - paths that start with a top-level directory of the repository (`docs/filter.md`,
//!   `scripts/test.sh`, `core/src/crd.rs`, `filter/floor/`), found relative to the repository,
//!   the citing file's crate or its directory; a `*`, `{` or `$` ends what is checked
//!   (`tests/tests/filter_*.rs` needs an entry of `tests/tests/` starting with `filter_`);
//!   build and output directories (`target/`, the root `.gitignore`'s `/dir/` entries) are
//!   not checked;
//! - bare markdown file names (`rollouts.md`, `filter.md`), which must name a file of the
//!   repository.
//!
//! Run by `scripts/test.sh checks`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

const SCANNED: [&str; 5] = ["md", "rs", "sh", "toml", "mjs"];

/// One citation: the file and line it is on, and the text cited.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Citation {
    line: usize,
    kind: Kind,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `[..](text)` in markdown: relative to the file.
    Link,
    /// Starts with a top-level directory of the repository.
    RepoPath,
    /// `name.md` with no directory.
    MdName,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | '*' | '{' | '}' | '$')
}

/// Maximal runs of path characters (and commas inside braces), trailing dots trimmed.
fn tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut depth = 0usize;
    for (i, c) in line.char_indices() {
        let inside = is_path_char(c) || (c == ',' && depth > 0);
        if inside {
            if c == '{' {
                depth += 1;
            } else if c == '}' {
                depth = depth.saturating_sub(1);
            }
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push(&line[s..i]);
            depth = 0;
        }
    }
    if let Some(s) = start {
        out.push(&line[s..]);
    }
    out.into_iter()
        .map(|t| t.trim_end_matches('.'))
        .filter(|t| !t.is_empty())
        .collect()
}

/// `name.md`, no directory.
fn is_md_name(token: &str) -> bool {
    token.strip_suffix(".md").is_some_and(|stem| {
        !stem.is_empty()
            && stem
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// Targets of markdown links on a line: `](target)`, without `#anchor` and title.
fn links(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &line[i + 2..];
            let end = rest.find(')')?;
            let target = rest[..end].split_whitespace().next()?;
            let target = target.split('#').next()?;
            let external = target.contains("://") || target.starts_with("mailto:");
            (!target.is_empty() && !external).then_some(target)
        })
        .collect()
}

fn citations(text: &str, is_markdown: bool, top_dirs: &[String]) -> Vec<Citation> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut cite = |kind, text: &str| {
            out.push(Citation {
                line: n + 1,
                kind,
                text: text.into(),
            })
        };
        if is_markdown {
            links(line).into_iter().for_each(|t| cite(Kind::Link, t));
        }
        for token in tokens(line) {
            let first = token.split('/').next().unwrap_or_default();
            if token.contains('/') && top_dirs.iter().any(|d| d == first) {
                cite(Kind::RepoPath, token);
            } else if is_md_name(token) {
                cite(Kind::MdName, token);
            }
        }
    }
    // A link's target is also a token of its line: keep one citation per line and text.
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert((c.line, c.text.clone())));
    out
}

/// Does `path` (possibly ending in a `*`/`{`/`$` pattern) exist under `base`?
fn exists_under(base: &Path, path: &str) -> bool {
    let Some(cut) = path.find(['*', '{', '$']) else {
        return base.join(path).exists();
    };
    let prefix = &path[..cut];
    let (dir, stem) = match prefix.rfind('/') {
        Some(i) => (&prefix[..i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let Ok(entries) = fs::read_dir(base.join(dir)) else {
        return false;
    };
    entries
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(stem))
}

fn crate_dir(root: &Path, file: &Path) -> PathBuf {
    let mut dir = file.parent().unwrap_or(root);
    while dir.starts_with(root) && dir != root {
        if dir.join("Cargo.toml").exists() {
            return dir.to_path_buf();
        }
        dir = dir.parent().unwrap_or(root);
    }
    root.to_path_buf()
}

/// Directories the root `.gitignore` anchors (`/fuzz/corpus/`): generated, never committed.
fn ignored_dirs(root: &Path) -> Vec<String> {
    let text = fs::read_to_string(root.join(".gitignore")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix('/'))
        .map(|l| l.trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains('*'))
        .collect()
}

fn resolves(
    root: &Path,
    file: &Path,
    c: &Citation,
    md_names: &[String],
    ignored: &[String],
) -> bool {
    let dir = file.parent().unwrap_or(root);
    match c.kind {
        Kind::Link => {
            let target = c.text.trim_start_matches("./");
            exists_under(dir, target)
                || (c.text.starts_with('/') && root.join(&c.text[1..]).exists())
        }
        Kind::RepoPath => {
            // Never committed: build directories.
            if c.text.split('/').any(|part| part == "target")
                || ignored.iter().any(|d| Path::new(&c.text).starts_with(d))
            {
                return true;
            }
            [root.to_path_buf(), crate_dir(root, file), dir.to_path_buf()]
                .iter()
                .any(|base| exists_under(base, &c.text))
        }
        Kind::MdName => md_names.contains(&c.text),
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if name.starts_with('.') || kind.is_symlink() || name == "target" {
            continue;
        }
        let path = entry.path();
        if kind.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Missing citations as `file:line: text`, and how many citations were checked.
fn check(root: &Path) -> (Vec<String>, usize) {
    let mut files = Vec::new();
    walk(root, &mut files);
    let top_dirs: Vec<String> = fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect();
    let md_names: Vec<String> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let ignored = ignored_dirs(root);
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in &files {
        let ext = file
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !SCANNED.contains(&ext.as_str()) || file.ends_with("tests/tests/references.rs") {
            continue;
        }
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for c in citations(&text, ext == "md", &top_dirs) {
            checked += 1;
            if !resolves(root, file, &c, &md_names, &ignored) {
                let rel = file.strip_prefix(root).unwrap_or(file).display();
                missing.push(format!("{rel}:{}: {}", c.line, c.text));
            }
        }
    }
    (missing, checked)
}

#[test]
fn every_path_a_doc_or_comment_cites_exists() {
    let (missing, checked) = check(&repo_root());
    assert!(
        checked > 200,
        "only {checked} citations found: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "{} of {checked} cited paths do not exist:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn links_paths_and_markdown_names_are_found_and_urls_are_not() {
    let top = vec!["docs".to_string(), "core".to_string()];
    let text =
        "See [the filter](docs/filter.md#flow), docs/operator.md, `core/src/crd.rs::Spec`,\n\
                https://github.com/x/docs/y.md, DESIGN.md and the{a,b} `containers/{x,y}.rs`.";
    let got: Vec<(usize, Kind, String)> = citations(text, true, &top)
        .into_iter()
        .map(|c| (c.line, c.kind, c.text))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Kind::Link, "docs/filter.md".into()),
            (1, Kind::RepoPath, "docs/operator.md".into()),
            (1, Kind::RepoPath, "core/src/crd.rs".into()),
            (2, Kind::MdName, "DESIGN.md".into()),
        ]
    );
}

#[test]
fn a_citation_of_a_missing_file_is_reported_with_its_line() {
    let dir = std::env::temp_dir().join(format!("mlep-references-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("docs")).unwrap();
    fs::create_dir_all(dir.join("scripts")).unwrap();
    fs::write(dir.join("scripts/run.sh"), "").unwrap();
    let doc = "# Doc\nRun scripts/run.sh or scripts/gone.sh; see [x](other.md), NOTES.md.\n";
    fs::write(dir.join("docs/a.md"), doc).unwrap();
    let (mut missing, checked) = check(&dir);
    fs::remove_dir_all(&dir).unwrap();
    missing.sort();
    assert_eq!(checked, 4);
    assert_eq!(
        missing,
        vec![
            "docs/a.md:2: NOTES.md",
            "docs/a.md:2: other.md",
            "docs/a.md:2: scripts/gone.sh"
        ]
    );
}
