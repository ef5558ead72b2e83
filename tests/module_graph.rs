//! The module graph has no cycles: at every level of the tree (the crate's top-level modules,
//! the files of one module), the modules a file names form a DAG.
//!
//! Each `.rs` file under `src/` is read as text: comments and string literals are removed, then
//! every `crate::…` and `super::…` path (including `use crate::{a, b::c}` groups) is resolved to
//! the deepest module file it names. A reference from module `a/x/…` to module `a/y/…` is an edge
//! `x → y` in the graph of `a`'s children (references to an ancestor, such as `super::Item` from
//! a child of `mod.rs`, are containment, not layering). The binary crate (`main.rs`, `cli/`) is
//! checked the same way on its own tree; its `bootcast::…` paths point into the library, which
//! cannot point back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// The crate a file belongs to, and its module path inside it.
fn module_of(src: &Path, file: &Path) -> (bool, ModPath) {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: ModPath = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    let bin = matches!(
        parts.first().map(String::as_str),
        Some("main") | Some("cli")
    );
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    (bin, parts)
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text with comments, string and char literals blanked out (paths in doc links and
/// messages are not dependencies).
fn code_only(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == b'r'
            && matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
            && !ident_before(b, i)
        {
            // raw string r"…" / r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // a char literal ('x', '\n', '\u{..}') or a lifetime ('a): only literals are skipped
            let close = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// Every module path named in `code`, relative to module `here` (`crate::…`, `super::…`).
fn referenced_paths(code: &str, here: &ModPath, is_mod_file: bool) -> Vec<ModPath> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if ident_before(b, i)
            || !(code[i..].starts_with("crate::") || code[i..].starts_with("super::"))
        {
            i += 1;
            continue;
        }
        let base: ModPath;
        let mut j;
        if code[i..].starts_with("crate::") {
            base = Vec::new();
            j = i + "crate::".len();
        } else {
            // `super` of a file `a/b.rs` or `a/b/mod.rs` (module a::b) is module a.
            let mut m = here.clone();
            let _ = is_mod_file;
            m.pop();
            j = i + "super::".len();
            while code[j..].starts_with("super::") {
                m.pop();
                j += "super::".len();
            }
            base = m;
        }
        let (paths, end) = parse_tree(code, j);
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            found.push(full);
        }
        i = end.max(i + 1);
    }
    found
}

/// Parses a path tail at `at`: `a::b::C`, or a `{…}` group of such tails; returns each path's
/// segments and the end offset.
fn parse_tree(code: &str, at: usize) -> (Vec<ModPath>, usize) {
    let b = code.as_bytes();
    let mut i = at;
    let mut prefix: ModPath = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            let mut out = Vec::new();
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let (inner, end) = parse_tree(code, i);
                for p in inner {
                    let mut full = prefix.clone();
                    full.extend(p);
                    out.push(full);
                }
                if end <= i {
                    i += 1;
                } else {
                    i = end;
                }
            }
            return (out, i);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == start {
            return (vec![prefix], i);
        }
        let seg = &code[start..i];
        if seg != "self" {
            prefix.push(seg.to_string());
        }
        if code[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Strongly connected components with more than one node (Tarjan).
fn cycles(
    nodes: &BTreeSet<String>,
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit(t: &mut T, v: &str) {
        t.index.insert(v.into(), t.next);
        t.low.insert(v.into(), t.next);
        t.next += 1;
        t.stack.push(v.into());
        t.on.insert(v.into());
        let succ: Vec<String> = t.edges.get(v).into_iter().flatten().cloned().collect();
        for w in succ {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let l = t.low[v].min(t.low[&w]);
                t.low.insert(v.into(), l);
            } else if t.on.contains(&w) {
                let l = t.low[v].min(t.index[&w]);
                t.low.insert(v.into(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = w == v;
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

/// For each level (a parent module, `""` for the crate root): its child modules' edges, with
/// one example file per edge.
type Levels = BTreeMap<String, BTreeMap<(String, String), String>>;

fn graph(src: &Path) -> (Levels, BTreeSet<(bool, ModPath)>) {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let modules: BTreeSet<(bool, ModPath)> = files.iter().map(|f| module_of(src, f)).collect();
    let mut levels: Levels = BTreeMap::new();
    for f in &files {
        let (bin, here) = module_of(src, f);
        let is_mod = f.file_name().is_some_and(|n| n == "mod.rs");
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        for path in referenced_paths(&code, &here, is_mod) {
            // the deepest module file that the path names
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(&(bin, p.clone())))
                .unwrap_or_default();
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == here.len() || common == target.len() {
                continue; // the same module, an ancestor or a descendant
            }
            let level = format!(
                "{}{}",
                if bin { "bin:" } else { "" },
                here[..common].join("/")
            );
            levels
                .entry(level)
                .or_default()
                .entry((here[common].clone(), target[common].clone()))
                .or_insert_with(|| f.strip_prefix(src).unwrap().display().to_string());
        }
    }
    (levels, modules)
}

#[test]
fn no_module_cycle_at_any_level() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (levels, _) = graph(&src);
    let mut problems = Vec::new();
    for (level, edges) in &levels {
        let mut adj: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut nodes = BTreeSet::new();
        for (a, b) in edges.keys() {
            adj.entry(a.clone()).or_default().insert(b.clone());
            nodes.insert(a.clone());
            nodes.insert(b.clone());
        }
        for comp in cycles(&nodes, &adj) {
            let detail: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| comp.contains(a) && comp.contains(b))
                .map(|((a, b), file)| format!("    {a} -> {b}   (e.g. in src/{file})"))
                .collect();
            problems.push(format!(
                "cycle among the modules of `{}`: {}\n{}",
                if level.is_empty() { "crate" } else { level },
                comp.join(", "),
                detail.join("\n")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the module graph must be a DAG; move what both sides need into a lower module:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_sees_the_edges_it_must() {
    // The check is only as good as its parser: a cycle written in each supported form is found.
    let here: ModPath = vec!["a".into(), "x".into()];
    let code = code_only(
        "use crate::{b::{C, d::E}, c};\nuse super::y::Z;\n// crate::ignored\nlet s = \"crate::no\";\nfn f<'a>() -> crate::e::F { super::super::g::H }",
    );
    let mut got: Vec<String> = referenced_paths(&code, &here, false)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    got.sort();
    assert_eq!(got, ["a::y::Z", "b::C", "b::d::E", "c", "e::F", "g::H"]);

    let nodes: BTreeSet<String> = ["p", "q", "r", "s"].iter().map(|s| s.to_string()).collect();
    let mut adj: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("p", "q"), ("q", "r"), ("r", "p"), ("r", "s")] {
        adj.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(cycles(&nodes, &adj), vec![vec!["p", "q", "r"]]);
    adj.get_mut("r").unwrap().remove("p");
    assert!(cycles(&nodes, &adj).is_empty());
}
