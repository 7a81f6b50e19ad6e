//! The repository's shape, checked: no import cycle between the files of `engine/src` or of
//! `src/`, and no source file over 800 lines (the one exception is the hand-tuned GEMM kernel).
//!
//! `cargo test --release --test architecture` prints every cycle it finds with the names that
//! tie it, file by file. An import is a `use crate::…` / `use super::…` item or a `crate::…`
//! path in code; it ties the importing file to the file that defines the module the path names
//! (a folder's `mod.rs` when the path stops there). `mod x;` declarations are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;
const LONG_FILES_ALLOWED: &[&str] = &["kernels/src/cpu/gemm.rs"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under a crate's `src` (`["nn", "shared"]` for
/// `nn/shared/mod.rs`; empty for `lib.rs`/`main.rs`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Source without comments and string literals (so paths in docs and messages do not count).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'r' && b[i..].starts_with(b"r#\"") {
            let end = text[i + 3..].find("\"#").map_or(b.len(), |e| i + 3 + e + 2);
            i = end;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); lifetimes ('a) pass through.
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = end;
        } else {
            let c = text[i..].chars().next().expect("char");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Drop `#[cfg(test)] mod … { … }` blocks (a file's own tests may import anything).
fn without_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(brace) = after.find('{') else {
            rest = "";
            break;
        };
        let semi = after.find(';').unwrap_or(usize::MAX);
        if semi < brace {
            // `#[cfg(test)] mod tests;` or a test-only item: skip to the semicolon.
            rest = &after[semi + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, ch) in after[brace..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = brace + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Expand a `use` tree (`a::{b, c::{d, e}}`) into whole paths.
fn expand_use(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let p = tree.split(" as ").next().unwrap_or("").trim();
        return vec![p.to_string()];
    };
    let prefix = tree[..open].trim().trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand_use)
        .map(|p| {
            if p == "self" {
                prefix.to_string()
            } else {
                format!("{prefix}::{p}")
            }
        })
        .collect()
}

/// Every path a file's code imports: `use` trees and inline `crate::…`/`super::…` paths.
fn imported_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    // `use` items.
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let item = &rest[at + 4..];
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(end) = item.find(';') {
            paths.extend(expand_use(&item[..end]));
        }
    }
    // Inline paths.
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            let before = code[..at].chars().last();
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                paths.push(code[at..end].trim_end_matches(':').to_string());
            }
            from = end.max(at + start.len());
        }
    }
    paths
}

/// The module a path names, resolved against `here` (the importing file's module) and the
/// crate's modules: the longest prefix that is a module of this crate.
fn resolve(path: &str, here: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some(&"super") => {
            // `super` of module a::b (file `a/b.rs` or `a/b/mod.rs`) is module a.
            let mut b = here.to_vec();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        Some(&"self") => {
            segs.remove(0);
            here.to_vec()
        }
        _ => return None,
    };
    let mut best = if modules.contains(&base) {
        Some(base.clone())
    } else {
        None
    };
    for s in segs {
        base.push(s.to_string());
        if modules.contains(&base) {
            best = Some(base.clone());
        }
    }
    best
}

struct Crate {
    src: PathBuf,
    files: BTreeMap<Vec<String>, PathBuf>,
}

fn crate_at(src: PathBuf) -> Crate {
    let mut all = Vec::new();
    rust_files(&src, &mut all);
    let files = all
        .into_iter()
        .filter(|f| {
            // Binaries beside the library (src/bin) are crates of their own.
            !f.strip_prefix(&src).is_ok_and(|r| r.starts_with("bin"))
        })
        .map(|f| (module_of(&src, &f), f))
        .collect();
    Crate { src, files }
}

/// The import arrows between a crate's files, with the names of each.
fn arrows(c: &Crate) -> BTreeMap<(PathBuf, PathBuf), BTreeSet<String>> {
    let modules: BTreeSet<Vec<String>> = c.files.keys().cloned().collect();
    let mut out: BTreeMap<(PathBuf, PathBuf), BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &c.files {
        let text = std::fs::read_to_string(file).expect("readable");
        let code = without_test_modules(&code_only(&text));
        let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
        for p in imported_paths(&code) {
            let Some(target) = resolve(&p, module, &modules) else {
                continue;
            };
            if &target == module {
                continue;
            }
            // A file's own submodules (declared inside it) are below it, not imports.
            if target.starts_with(module) && !module.is_empty() && !is_mod_rs {
                continue;
            }
            let to = c.files[&target].clone();
            out.entry((file.clone(), to))
                .or_default()
                .insert(p.rsplit("::").next().unwrap_or("").to_string());
        }
    }
    out
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(nodes: &[PathBuf], edges: &BTreeMap<PathBuf, Vec<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'a> {
        edges: &'a BTreeMap<PathBuf, Vec<PathBuf>>,
        index: BTreeMap<PathBuf, usize>,
        low: BTreeMap<PathBuf, usize>,
        stack: Vec<PathBuf>,
        on: BTreeSet<PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit(t: &mut T<'_>, v: &PathBuf) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.edges.get(v).cloned().unwrap_or_default() {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let l = t.low[v].min(t.low[&w]);
                t.low.insert(v.clone(), l);
            } else if t.on.contains(&w) {
                let l = t.low[v].min(t.index[&w]);
                t.low.insert(v.clone(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for n in nodes {
        if !t.index.contains_key(n) {
            visit(&mut t, n);
        }
    }
    t.out
}

fn report_cycles(c: &Crate) -> Vec<String> {
    let arrows = arrows(c);
    let mut edges: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for (from, to) in arrows.keys() {
        edges.entry(from.clone()).or_default().push(to.clone());
    }
    let nodes: Vec<PathBuf> = c.files.values().cloned().collect();
    let rel = |p: &Path| p.strip_prefix(root()).unwrap_or(p).display().to_string();
    cycles(&nodes, &edges)
        .into_iter()
        .map(|comp| {
            let set: BTreeSet<&PathBuf> = comp.iter().collect();
            let mut s = format!("cycle of {} files in {}:\n", comp.len(), rel(&c.src));
            for ((from, to), names) in &arrows {
                if set.contains(from) && set.contains(to) {
                    s.push_str(&format!(
                        "  {} -> {}: {}\n",
                        rel(from),
                        rel(to),
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            s
        })
        .collect()
}

#[test]
fn no_import_cycles_between_files() {
    let mut found = Vec::new();
    for src in ["engine/src", "src", "kernels/src"] {
        let c = crate_at(root().join(src));
        assert!(c.files.len() > 3, "{src}: no files found");
        found.extend(report_cycles(&c));
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut all = Vec::new();
    for dir in [
        "engine", "kernels", "src", "tests", "examples", "benches", "python",
    ] {
        rust_files(&root().join(dir), &mut all);
    }
    let long: Vec<String> = all
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(root()).ok()?.display().to_string();
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > MAX_LINES && !LONG_FILES_ALLOWED.contains(&rel.as_str()))
                .then(|| format!("{rel}: {lines} lines"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by responsibility):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_finds_a_cycle_it_is_shown() {
    // Self-check on a made-up crate: a -> b -> a is a cycle, c -> a is not part of it.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "use crate::b::{x::Y, Z};\n// use crate::c;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "pub mod x; pub fn z() { crate::a::f(\"crate::c\") }",
    )
    .unwrap();
    std::fs::write(src.join("b/x.rs"), "pub struct Y;").unwrap();
    std::fs::write(src.join("c.rs"), "use super::a;").unwrap();
    let c = crate_at(src);
    let found = report_cycles(&c);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("a.rs -> ") && found[0].contains("b/mod.rs -> "),
        "{}",
        found[0]
    );
    assert!(!found[0].contains("c.rs"), "{}", found[0]);
}
