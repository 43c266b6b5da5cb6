//! The agent's layout rules, checked on its source: dependencies between the top-level
//! modules run one way (no import circle), and no module's code (its tests aside) is
//! over 800 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_CODE_LINES: usize = 800;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code: its lines up to its test module (a `#[cfg(test)]` at column 0
/// followed by `mod`), comments left out. Files that hold only tests (`tests.rs`) have
/// none.
fn code_lines(path: &Path) -> Vec<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|pair| pair[0] == "#[cfg(test)]" && pair[1].starts_with("mod "))
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| (*line).to_owned())
        .collect()
}

/// The first path segment of each name a `crate::` path starts in `code` names:
/// `crate::store::Key` → `store`, `crate::{net::Cidr, store}` → `net`, `store`.
fn crate_names(code: &str) -> Vec<String> {
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items at depth 0 of the group, up to its closing brace.
            let mut depth = 0;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(ident(group[item_start..i].trim_start()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(ident(group[item_start..i].trim_start()));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|name| !name.is_empty());
    names
}

/// Top-level module of a file under `src` (`store/key.rs` → `store`, `net.rs` → `net`).
fn top_module(src: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// Which top-level modules each one names through `crate::`.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let from = top_module(src, &path);
        if from == "main" || from == "lib" {
            continue;
        }
        for to in crate_names(&code_lines(&path).join("\n")) {
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// A path from `from` back to itself, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in edges.get(last).into_iter().flatten() {
            if next == from {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_top_level_modules_import_each_other_one_way() {
    let edges = dependencies(&src());
    // The check sees the edges it should: the store is below the sources, the export
    // below the app.
    assert!(edges["sources"].contains("store"), "{edges:?}");
    assert!(edges["app"].contains("export"), "{edges:?}");
    for module in edges.keys() {
        if let Some(circle) = circle(&edges, module) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn no_module_has_more_than_800_lines_of_code() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    assert!(files.len() > 50, "{} files", files.len());
    let long: Vec<String> = files
        .iter()
        .map(|path| (path, code_lines(path).len()))
        .filter(|(_, lines)| *lines > MAX_CODE_LINES)
        .map(|(path, lines)| format!("{}: {lines}", path.display()))
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_CODE_LINES} lines of code: {long:?}"
    );
}

#[test]
fn crate_paths_are_read_plain_and_grouped() {
    assert_eq!(
        crate_names("use crate::store::Key;\nlet x = crate::net::to_mapped(a);"),
        ["store", "net"]
    );
    assert_eq!(
        crate_names("use crate::{\n    net::{Cidr, CidrSet},\n    store,\n};"),
        ["net", "store"]
    );
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.entry(from.into()).or_default().insert(to.into());
    }
    assert_eq!(circle(&edges, "a").unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(circle(&edges, "d"), None);
}
