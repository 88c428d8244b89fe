//! Architecture rules as a test, in the manner of rust-analyzer's `tidy`:
//! what ARCHITECTURE.md states as an invariant fails here when broken.
//!
//! - The crate graph is one way: each of our crates depends only on the
//!   crates of ours it is allowed to (read from `cargo metadata`), `shared`
//!   links nothing that does I/O, the control plane links no inference or
//!   mail crate, `models` no HTTP client for model APIs.
//! - Every module file with a `# Layout` section lists every module it
//!   declares, and every crate root has one.
//! - Real time is read only in `daemon/src/clock.rs` (the daemons' code;
//!   tests, benches and `models`' kernel timing are outside the rule).
//! - No source file passes 800 lines.
//! - No ignored test and no unfinished code marker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_owned()
}

/// Every `.rs` file of the workspace (not build output, not the fuzz crate's target).
fn rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "artifacts" && name != "aios-data" {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Which of our crates each of our crates may depend on (normal and dev).
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("aios-shared", &[]),
    ("aios-daemon", &["aios-shared"]),
    ("aios-models", &[]),
    ("aios-control-plane", &["aios-shared", "aios-daemon"]),
    ("aios-edge-agent", &["aios-shared", "aios-daemon", "aios-models"]),
    ("aios-up", &["aios-shared", "aios-daemon", "aios-control-plane", "aios-edge-agent"]),
    ("aios-tests", &["aios-shared", "aios-daemon", "aios-control-plane", "aios-edge-agent", "aios-up"]),
];

/// Crates a crate of ours must never link, directly or through others.
const FORBIDDEN_LINKS: &[(&str, &[&str])] = &[
    ("aios-shared", &["tokio", "quinn", "rusqlite", "candle-core", "reqwest", "hyper", "mio"]),
    ("aios-daemon", &["candle-core", "tokenizers", "lettre", "hf-hub"]),
    ("aios-control-plane", &["candle-core", "tokenizers", "lettre", "hf-hub", "aios-models", "aios-edge-agent"]),
    ("aios-models", &["reqwest", "quinn", "rusqlite", "axum"]),
];

#[test]
fn the_crate_graph_is_one_way() {
    let meta = metadata();
    let packages = meta["packages"].as_array().expect("packages");
    let ours: BTreeMap<&str, &Value> =
        packages.iter().filter(|p| p["source"].is_null()).filter_map(|p| Some((p["name"].as_str()?, p))).collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_EDGES.iter().copied().collect();
    let mut problems = Vec::new();
    for (name, package) in &ours {
        let Some(allowed) = allowed.get(name) else {
            problems.push(format!("{name} is a new crate: say in ALLOWED_EDGES what it may depend on"));
            continue;
        };
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            if ours.contains_key(dep_name) && !allowed.contains(&dep_name) {
                problems.push(format!(
                    "{name} depends on {dep_name} ({} dependency)",
                    dep["kind"].as_str().unwrap_or("normal")
                ));
            }
        }
    }

    // What each crate links: the closure of its normal dependencies.
    let nodes = meta["resolve"]["nodes"].as_array().expect("resolve graph");
    let name_of: BTreeMap<&str, &str> =
        packages.iter().filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?))).collect();
    let normal_deps: BTreeMap<&str, Vec<&str>> = nodes
        .iter()
        .filter_map(|node| {
            let deps = node["deps"]
                .as_array()?
                .iter()
                .filter(|d| d["dep_kinds"].as_array().is_some_and(|k| k.iter().any(|k| k["kind"].is_null())))
                .filter_map(|d| d["pkg"].as_str())
                .collect();
            Some((node["id"].as_str()?, deps))
        })
        .collect();
    for (crate_name, forbidden) in FORBIDDEN_LINKS {
        let id = ours[crate_name]["id"].as_str().expect("package id");
        let mut seen = BTreeSet::new();
        let mut stack = vec![id];
        while let Some(next) = stack.pop() {
            if seen.insert(next) {
                stack.extend(normal_deps.get(next).into_iter().flatten().copied());
            }
        }
        let linked: BTreeSet<&str> = seen.iter().filter_map(|id| name_of.get(id).copied()).collect();
        for bad in forbidden.iter().filter(|bad| linked.contains(*bad)) {
            problems.push(format!("{crate_name} links {bad}"));
        }
    }
    assert!(problems.is_empty(), "crate graph:\n{}", problems.join("\n"));
}

/// The `//!` lines of a file's `# Layout` section, if it has one.
fn layout_section(text: &str) -> Option<String> {
    let docs: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!") || l.trim().is_empty()).collect();
    let start = docs.iter().position(|l| l.trim_start_matches("//!").trim() == "# Layout")?;
    let section = docs[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start_matches("//!").trim().starts_with('#'))
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    Some(section)
}

/// The modules a file declares (`mod x;`), tests excepted.
fn declared_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("pub ").or_else(|| line.strip_prefix("pub(crate) ")).unwrap_or(line);
            let name = rest.strip_prefix("mod ")?.strip_suffix(';')?;
            (name != "tests").then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn layout_lists_name_every_module() {
    let mut problems = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).expect("readable source");
        let rel = relative(&path);
        let is_crate_root = rel.ends_with("src/lib.rs") && !rel.starts_with("shared/fuzz");
        let Some(section) = layout_section(&text) else {
            if is_crate_root {
                problems.push(format!("{rel}: a crate root without a `# Layout` section"));
            }
            continue;
        };
        for module in declared_modules(&text) {
            if !section.contains(&format!("`{module}`")) {
                problems.push(format!("{rel}: `# Layout` does not list `{module}`"));
            }
        }
    }
    assert!(problems.is_empty(), "layout lists:\n{}", problems.join("\n"));
}

#[test]
fn real_time_is_read_only_in_the_clock_module() {
    let reads = [concat!("Instant", "::now("), concat!("SystemTime", "::now("), concat!(".elapsed", "()")];
    let daemons = ["shared/src/", "daemon/src/", "control-plane/src/", "edge-agent/src/", "up/src/"];
    let mut problems = Vec::new();
    for path in rust_files() {
        let rel = relative(&path);
        if !daemons.iter().any(|dir| rel.starts_with(dir)) || rel == "daemon/src/clock.rs" {
            continue;
        }
        if rel.ends_with("/tests.rs") || rel.contains("/tests/") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (idx, line) in code.lines().enumerate() {
            if reads.iter().any(|read| line.contains(read)) && !line.trim_start().starts_with("//") {
                problems.push(format!("{rel}:{}: {}", idx + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "real time read outside daemon/src/clock.rs:\n{}", problems.join("\n"));
}

#[test]
fn no_source_file_passes_800_lines() {
    let long: Vec<String> = rust_files()
        .into_iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(&path).ok()?.lines().count();
            (lines > 800).then(|| format!("{}: {lines} lines", relative(&path)))
        })
        .collect();
    assert!(long.is_empty(), "split these by concept:\n{}", long.join("\n"));
}

#[test]
fn no_ignored_tests_and_no_unfinished_code() {
    let markers = [concat!("#[", "ignore"), concat!("todo", "!("), concat!("unimplemented", "!(")];
    let mut problems = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (idx, line) in text.lines().enumerate() {
            if markers.iter().any(|marker| line.contains(marker)) {
                problems.push(format!("{}:{}: {}", relative(&path), idx + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "found:\n{}", problems.join("\n"));
}

/// The rules above must be able to fail: each finds what it looks for in a
/// sample that breaks it.
#[test]
fn the_rules_catch_what_they_are_for() {
    let sample =
        "//! Sample.\n//!\n//! # Layout\n//! - [`listed`]: yes.\n\npub mod listed;\nmod missing;\nmod tests;\n";
    let section = layout_section(sample).expect("a layout section");
    let unlisted: Vec<String> =
        declared_modules(sample).into_iter().filter(|m| !section.contains(&format!("`{m}`"))).collect();
    assert_eq!(unlisted, ["missing"]);
    assert!(layout_section("//! No layout here.\n\nmod a;\n").is_none());
}
