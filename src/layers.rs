//! The layer table of the crate, and the test that holds every module to
//! it: imports point down. A module may name modules of its own layer and
//! of the layers below, never one above (see the project's ARCHITECTURE.md:
//! the store never names a codec, a consumer or a subscription; the typed
//! API never reaches into stream jobs or the bridge).
//!
//! The test reads every `crate::` path in the sources under `src/` (comments
//! skipped), including names the crate root re-exports (`crate::Error` is
//! `error`'s), and fails naming each import that points up.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module and its layer, bottom (0) to top.
const LAYERS: &[(&str, u8)] = &[
    // L0: the vocabulary.
    ("error", 0),
    ("record", 0),
    ("codec", 0),
    ("name", 0),
    // L1: every byte layout, as pure functions.
    ("format", 1),
    // L2: every byte read or written; the primitives loom checks.
    ("storage", 2),
    ("sync", 2),
    // L3: configuration.
    ("options", 3),
    // L4: the untyped log.
    ("store", 4),
    // L5: the read-only, codec-agnostic view.
    ("inspect", 5),
    // L6: the typed API, consumers and the fan-out.
    ("log", 6),
    // L7: stream processing, built on the public API.
    ("stream", 7),
    // L7: the bridge to NATS JetStream, beside stream processing.
    ("bridge", 7),
    // The command-line tool: the library part and its binary.
    ("cli", 8),
    ("bin", 8),
    // This file: a test of the others.
    ("layers", 9),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// The modules named by `crate::...` paths in `source`, comments skipped.
/// Root re-exports (`crate::Error`) are resolved through `reexports`.
fn named_modules(source: &str, reexports: &BTreeMap<String, String>) -> Vec<String> {
    // Comments out, lines joined: a `use crate::{..}` group may span lines.
    let code: Vec<&str> = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect();
    let code = code.join(" ");
    let mut named = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, D}`: the first segment of each item.
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                named.extend(resolve(first, reexports));
            }
            continue;
        }
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        named.extend(resolve(&ident, reexports));
    }
    named
}

fn resolve(ident: &str, reexports: &BTreeMap<String, String>) -> Option<String> {
    if ident.is_empty() || ident == "self" {
        return None;
    }
    reexports
        .get(ident)
        .cloned()
        .or_else(|| Some(ident.to_owned()))
}

/// What the crate root re-exports, by name: `pub use error::{Error, ..}`.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let code: String = lib
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    for statement in code.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap_or(item).trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                map.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    map
}

/// Every import of `files` (paths relative to `src/`, and their sources)
/// that points up the table: `(file, importer, imported)`.
fn upward_imports(
    files: &[(String, String)],
    reexports: &BTreeMap<String, String>,
) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for (file, source) in files {
        let top = file
            .split('/')
            .next()
            .unwrap_or(file)
            .trim_end_matches(".rs");
        let Some(own) = layer(top) else {
            continue;
        };
        for named in named_modules(source, reexports) {
            if let Some(theirs) = layer(&named) {
                if theirs > own {
                    found.push((file.clone(), top.to_owned(), named));
                }
            }
        }
    }
    found
}

fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn imports_point_down_the_layer_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let reexports = root_reexports(&lib);
    // Every top-level module has a layer, so none escapes the check.
    for (file, _) in &files {
        let top = file.split('/').next().unwrap().trim_end_matches(".rs");
        assert!(
            top == "lib" || layer(top).is_some(),
            "{file}: module {top} is not in the layer table"
        );
    }
    let up = upward_imports(&files, &reexports);
    assert!(up.is_empty(), "imports pointing up the layers: {up:#?}");
}

#[test]
fn the_check_sees_upward_imports_in_every_form() {
    let reexports = root_reexports("pub use log::{EventLog, Subscription};\npub use error::Error;");
    assert_eq!(reexports.get("EventLog").map(String::as_str), Some("log"));
    let files = [
        ("store/writer.rs", "use crate::log::EventLog;"),
        (
            "store/mod.rs",
            "use crate::{\n    error::Error,\n    log,\n};",
        ),
        ("format/frame.rs", "type Log = crate::EventLog<u8>;"),
        (
            "options.rs",
            "// crate::log in a comment is no import\nuse crate::Error;",
        ),
        ("log/mod.rs", "use crate::store::Store;"),
    ]
    .map(|(f, s)| (f.to_owned(), s.to_owned()));
    let up = upward_imports(&files, &reexports);
    let up: Vec<(&str, &str)> = up
        .iter()
        .map(|(f, _, m)| (f.as_str(), m.as_str()))
        .collect();
    assert_eq!(
        up,
        [
            ("store/writer.rs", "log"),
            ("store/mod.rs", "log"),
            ("format/frame.rs", "log"),
        ]
    );
}
