//! The core's layering, checked from its sources: no module uses one above it, and no two
//! modules use each other.
//!
//! Layers, lowest first (`lib.rs`'s map): the loom seam (`sync`), the error enums (`error`),
//! the one waiting primitive (`wait`), the OS wrappers (`sys`), then `shm`, then `ipc`, then
//! the process engine (`output`, then `pool`). A module may use only modules of a lower layer,
//! or its own top-level module (every `crate::`, `super::` and relative path is resolved to
//! the module it names, through `pub use` re-exports). Inside one top-level module, the
//! second-level modules (`ipc::arena`, `pool::process`, ...) must not form a cycle. Test code
//! counts: a `#[cfg(test)]` module that reaches upward is an upward arrow too.
//!
//! The parser is deliberately small: it strips comments and literals, tracks inline `mod`
//! blocks, and reads paths made of `ident::` segments and `{...}` use groups.
#![cfg(not(loom))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest layer first.
const LAYERS: &[&str] = &[
    "sync", "error", "wait", "sys", "shm", "ipc", "output", "pool",
];

type ModPath = Vec<String>;

/// One source file: its module path and its code with comments and literals blanked.
struct Source {
    module: ModPath,
    code: String,
    file: PathBuf,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `src/lib.rs` is the root.
fn module_of(root: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code with comments, string and char literals replaced by spaces (newlines kept).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'/' && next == Some(b'/') {
            while i < b.len() && b[i] != b'\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'/' && next == Some(b'*') {
            let mut depth = 0;
            loop {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == b'r'
            && (next == Some(b'#') || next == Some(b'"'))
            && (i == 0 || !is_ident(b[i - 1]))
        {
            // Raw string: r#*"..."#*
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let end = find(b, j + 1, &close).expect("unterminated raw string") + close.len();
            while i < end {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'"' {
            blank(&mut out, c);
            i += 1;
            while b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
            blank(&mut out, b[i]);
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), which is kept.
            let end = if next == Some(b'\\') {
                find(b, i + 2, b"'").map(|e| e + 1)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 3)
            } else {
                // Multi-byte UTF-8 char literal, or a lifetime.
                let ch_len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch_len) == Some(&b'\'')).then_some(i + 2 + ch_len)
            };
            match end {
                Some(end) => {
                    while i < end {
                        blank(&mut out, b[i]);
                        i += 1;
                    }
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// A token: an identifier, `::`, or one punctuation byte.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Punct(u8),
}

fn tokens(code: &str) -> Vec<Tok> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push(Tok::Ident(code[start..i].to_owned()));
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Tok::Colons);
            i += 2;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// A path as written, relative to the module it appears in.
#[derive(Clone, Debug)]
struct RawPath {
    /// The module of the code the path appears in (inline `mod` blocks included).
    scope: ModPath,
    segments: Vec<String>,
}

/// A `pub use` re-export: `name` in `module` stands for `target` (a raw path).
struct ReExport {
    module: ModPath,
    name: String,
    target: RawPath,
}

/// Reads the paths of a file: every `a::b::c` run (with `{...}` groups expanded) and
/// every `pub use`.
fn paths(src: &Source, reexports: &mut Vec<ReExport>) -> Vec<RawPath> {
    let toks = tokens(&src.code);
    let mut out = Vec::new();
    // Inline modules: (brace depth at which it closes, name).
    let mut scope = src.module.clone();
    let mut open: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct(b'{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct(b'}') => {
                if open.last() == Some(&depth) {
                    open.pop();
                    scope.pop();
                }
                depth -= 1;
                i += 1;
            }
            Tok::Ident(m) if m == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct(b'{'))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    scope.push(name.clone());
                    depth += 1;
                    open.push(depth);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Tok::Ident(u) if u == "use" => {
                let public = i > 0 && toks[i - 1] == Tok::Ident("pub".into());
                let mut j = i + 1;
                let mut found = Vec::new();
                use_tree(&toks, &mut j, Vec::new(), &mut found);
                for (segments, alias) in found {
                    let path = RawPath {
                        scope: scope.clone(),
                        segments,
                    };
                    if public && alias != "*" && alias != "self" {
                        reexports.push(ReExport {
                            module: scope.clone(),
                            name: alias,
                            target: path.clone(),
                        });
                    }
                    out.push(path);
                }
                i = j;
            }
            Tok::Ident(first)
                if toks.get(i + 1) == Some(&Tok::Colons)
                    && (i == 0 || toks[i - 1] != Tok::Colons) =>
            {
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::Colons) {
                    match toks.get(j + 1) {
                        Some(Tok::Ident(s)) => {
                            segments.push(s.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                out.push(RawPath {
                    scope: scope.clone(),
                    segments,
                });
                i = j;
            }
            _ => i += 1,
        }
    }
    out
}

/// Parses one use tree at `toks[*j]` with `prefix` before it; pushes (full path, name bound).
fn use_tree(
    toks: &[Tok],
    j: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    let mut path = prefix;
    loop {
        match toks.get(*j) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *j += 1;
                if toks.get(*j) == Some(&Tok::Colons) {
                    *j += 1;
                    continue;
                }
                let mut name = path.last().unwrap().clone();
                if toks.get(*j) == Some(&Tok::Ident("as".into())) {
                    if let Some(Tok::Ident(alias)) = toks.get(*j + 1) {
                        name = alias.clone();
                    }
                    *j += 2;
                }
                if name == "self" {
                    path.pop();
                    name = path.last().cloned().unwrap_or_default();
                }
                out.push((path, name));
                return;
            }
            Some(Tok::Punct(b'*')) => {
                *j += 1;
                out.push((path, "*".into()));
                return;
            }
            Some(Tok::Punct(b'{')) => {
                *j += 1;
                loop {
                    match toks.get(*j) {
                        Some(Tok::Punct(b'}')) => {
                            *j += 1;
                            return;
                        }
                        Some(Tok::Punct(b',')) => *j += 1,
                        None => return,
                        _ => use_tree(toks, j, path.clone(), out),
                    }
                }
            }
            _ => return,
        }
    }
}

/// The crate's modules, and where each `pub use` points.
struct Crate {
    modules: BTreeSet<ModPath>,
    reexports: BTreeMap<(ModPath, String), RawPath>,
}

impl Crate {
    /// Resolves a raw path to the deepest crate module it names (`None`: not a crate path,
    /// e.g. `std::`, a local variable's method, or a type's associated item).
    fn resolve(&self, path: &RawPath, hops: usize) -> Option<ModPath> {
        let mut segs = path.segments.iter();
        let first = segs.next()?;
        let mut at: ModPath = match first.as_str() {
            "crate" => Vec::new(),
            "self" => path.scope.clone(),
            "super" => {
                let mut p = path.scope.clone();
                p.pop()?;
                p
            }
            name => {
                // A relative path: a child module of the scope, or a name the scope re-exports.
                let mut child = path.scope.clone();
                child.push(name.to_owned());
                if self.modules.contains(&child) {
                    child
                } else {
                    return None;
                }
            }
        };
        let rest: Vec<&String> = segs.collect();
        let mut k = 0;
        while k < rest.len() {
            let seg = rest[k];
            if seg == "super" {
                at.pop()?;
                k += 1;
                continue;
            }
            let mut child = at.clone();
            child.push(seg.clone());
            if self.modules.contains(&child) {
                at = child;
            } else if let Some(target) = self.reexports.get(&(at.clone(), seg.clone())) {
                if hops > 8 {
                    return Some(at);
                }
                // Follow the re-export, then the remaining segments from where it lands.
                let mut followed = target.clone();
                followed
                    .segments
                    .extend(rest[k + 1..].iter().map(|s| (*s).clone()));
                return self.resolve(&followed, hops + 1).or(Some(at));
            } else {
                break;
            }
            k += 1;
        }
        Some(at)
    }
}

fn load() -> (Vec<Source>, Crate) {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let sources: Vec<Source> = files
        .iter()
        .map(|f| Source {
            module: module_of(&root, f),
            code: strip(&std::fs::read_to_string(f).unwrap()),
            file: f.strip_prefix(&root).unwrap().to_owned(),
        })
        .collect();
    let krate = krate_of(&sources);
    (sources, krate)
}

/// The crate's modules (files and inline `mod x { ... }` alike) and its re-exports, as read
/// from `sources`.
fn krate_of(sources: &[Source]) -> Crate {
    let mut modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    // Inline modules too (`mod tests { ... }`).
    let mut reexports = Vec::new();
    for s in sources {
        for p in paths(s, &mut reexports) {
            modules.insert(p.scope.clone());
        }
    }
    Crate {
        modules,
        reexports: reexports
            .into_iter()
            .map(|r| ((r.module, r.name), r.target))
            .collect(),
    }
}

/// Every arrow `from -> to` between modules, with the file it was read in.
fn arrows(sources: &[Source], krate: &Crate) -> Vec<(ModPath, ModPath, PathBuf)> {
    let mut out = Vec::new();
    for s in sources {
        for p in paths(s, &mut Vec::new()) {
            if let Some(to) = krate.resolve(&p, 0) {
                out.push((p.scope.clone(), to, s.file.clone()));
            }
        }
    }
    out
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Upward arrows between top-level modules, as messages.
fn upward(arrows: &[(ModPath, ModPath, PathBuf)]) -> Vec<String> {
    let rank = |m: &ModPath| m.first().map(|t| LAYERS.iter().position(|l| l == t));
    let mut bad = BTreeSet::new();
    for (from, to, file) in arrows {
        let (Some(rf), Some(rt)) = (rank(from), rank(to)) else {
            continue; // the crate root declares everything
        };
        let (Some(rf), Some(rt)) = (rf, rt) else {
            bad.insert(format!(
                "{} or {} is in no layer: add it to LAYERS",
                show(from),
                show(to)
            ));
            continue;
        };
        if from[0] != to[0] && rt > rf {
            bad.insert(format!(
                "{} uses {} ({}), a higher layer",
                show(from),
                show(to),
                file.display()
            ));
        }
    }
    bad.into_iter().collect()
}

/// Cycles between second-level modules (`a::b`, or `a` itself for a leaf file), as messages.
fn cycles(arrows: &[(ModPath, ModPath, PathBuf)]) -> Vec<String> {
    let node = |m: &ModPath| -> ModPath { m.iter().take(2).cloned().collect() };
    let mut graph: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, to, _) in arrows {
        let (a, b) = (node(from), node(to));
        // A module and its own parent (`pool` and `pool::process`): `mod.rs` declares and
        // re-exports its children, which is structure, not use.
        if a.is_empty() || b.is_empty() || a.starts_with(&b) || b.starts_with(&a) {
            continue;
        }
        graph.entry(a).or_default().insert(b);
    }
    // Pairs that reach each other (the graph has a few dozen nodes).
    let reach = |from: &ModPath| -> BTreeSet<ModPath> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let mut bad = BTreeSet::new();
    for (a, outs) in &graph {
        for b in outs {
            if reach(b).contains(a) {
                bad.insert(format!(
                    "{} uses {}, which reaches back to it",
                    show(a),
                    show(b)
                ));
            }
        }
    }
    bad.into_iter().collect()
}

#[test]
fn no_module_uses_a_higher_layer() {
    let (sources, krate) = load();
    let bad = upward(&arrows(&sources, &krate));
    assert!(bad.is_empty(), "upward arrows:\n{}", bad.join("\n"));
}

#[test]
fn no_two_modules_use_each_other() {
    let (sources, krate) = load();
    let bad = cycles(&arrows(&sources, &krate));
    assert!(bad.is_empty(), "cycles:\n{}", bad.join("\n"));
}

#[test]
fn every_top_level_module_has_a_layer() {
    let (sources, _) = load();
    let tops: BTreeSet<&str> = sources
        .iter()
        .filter_map(|s| s.module.first().map(String::as_str))
        .collect();
    let missing: Vec<&&str> = tops.iter().filter(|t| !LAYERS.contains(t)).collect();
    assert!(missing.is_empty(), "modules in no layer: {missing:?}");
}

// The checker checks itself on small sources, so a parser bug cannot pass the tree silently.

fn fake(files: &[(&str, &str)]) -> Vec<(ModPath, ModPath, PathBuf)> {
    let sources: Vec<Source> = files
        .iter()
        .map(|(path, text)| Source {
            module: module_of(Path::new("src"), &Path::new("src").join(path)),
            code: strip(text),
            file: PathBuf::from(path),
        })
        .collect();
    arrows(&sources, &krate_of(&sources))
}

#[test]
fn the_checker_sees_upward_arrows_in_every_spelling() {
    let base = [
        (
            "lib.rs",
            "pub mod ipc; pub mod pool; pub mod sys; pub use sys::Thing;",
        ),
        ("ipc/mod.rs", "pub mod lock; pub use crate::sys::notify;"),
        ("sys/mod.rs", "pub mod notify;"),
        ("sys/notify.rs", ""),
        ("pool/mod.rs", "pub mod process; pub use process::Death;"),
        ("pool/process.rs", "pub struct Death;"),
    ];
    let spellings = [
        "use crate::pool::process::Death;",
        "use crate::{sys::notify, pool::Death};",
        "fn f() { let _ = crate::pool::Death; }",
        "use super::super::pool::Death;",
        "#[cfg(test)] mod tests { use crate::pool::Death; }",
    ];
    for s in spellings {
        let mut files = base.to_vec();
        files.push(("ipc/lock.rs", s));
        assert!(!upward(&fake(&files)).is_empty(), "missed: {s}");
    }
    let fine = [
        "use crate::sys::notify::Waker;",
        "use super::notify::Waker;", // ipc::notify is sys::notify re-exported
        "// use crate::pool::Death;",
        r#"const S: &str = "crate::pool::Death";"#,
        "fn f<'a>(x: &'a u8) -> char { let _ = 'p'; std::pool::x() }",
    ];
    for s in fine {
        let mut files = base.to_vec();
        files.push(("ipc/lock.rs", s));
        assert!(upward(&fake(&files)).is_empty(), "false alarm: {s}");
    }
}

#[test]
fn the_checker_sees_cycles() {
    let files = [
        ("lib.rs", "pub mod ipc;"),
        ("ipc/mod.rs", "pub mod arena; pub mod semaphore;"),
        ("ipc/arena.rs", "use super::semaphore::SemWord;"),
        ("ipc/semaphore.rs", "use crate::ipc::arena::SlotBody;"),
    ];
    assert_eq!(cycles(&fake(&files)).len(), 2);
    let one_way = [
        ("lib.rs", "pub mod ipc;"),
        (
            "ipc/mod.rs",
            "pub mod arena; pub mod semaphore; pub use arena::Arena;",
        ),
        ("ipc/arena.rs", ""),
        ("ipc/semaphore.rs", "use crate::ipc::Arena;"),
    ];
    assert!(cycles(&fake(&one_way)).is_empty());
}
