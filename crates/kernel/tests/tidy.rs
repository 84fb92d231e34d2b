//! Tidy checks on the workspace's source (in the style of rust-analyzer's `tidy` tests): rules
//! of the architecture that the compiler cannot enforce, checked by reading the files.

use std::path::{Path, PathBuf};

/// The workspace root (this crate is `crates/kernel`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir` (build output and hidden directories left out), sorted.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
    out.sort();
}

/// The kernel owns NATS (ARCHITECTURE.md, "Stages never talk to NATS"): no stage crate depends
/// on `async-nats` or names `async_nats` in its sources, tests or benches, nor reaches into the
/// kernel's connection (`nats.js`, `nats.client`). A stage that needs
/// something from NATS gets it from the kernel (`whale_kernel::kv::Bucket`, `Nats::publish`,
/// `Window`, `kv::watch_bucket`, `history`).
#[test]
fn stages_never_name_async_nats() {
    let stages = root().join("stages");
    let mut all = Vec::new();
    files(&stages, &mut all);
    assert!(
        all.iter().any(|p| p.ends_with("Cargo.toml")),
        "no stage crates found under {}",
        stages.display()
    );
    let mut found = Vec::new();
    for path in all {
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("rs" | "toml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for (n, line) in text.lines().enumerate() {
            let names = ["async_nats", "async-nats", "nats.js", "nats.client"];
            if names.iter().any(|n| line.contains(n)) {
                let rel = path.strip_prefix(root()).unwrap_or(&path);
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "stages must not talk to NATS themselves (ARCHITECTURE.md, \"Stages never talk to NATS\"): \
         use the kernel (whale_kernel::kv::Bucket, Nats::publish, Window, kv::watch_bucket) \
         and add what is missing there. Found:\n{}",
        found.join("\n")
    );
}

/// The product binary ships no test helpers: the root package (`whale`) turns on the kernel's
/// `testkit` (private servers for tests and benchmarks) only in its dev-dependencies; the
/// benchmarks are the `whale-bench` package (crates/bench).
#[test]
fn the_whale_binary_has_no_testkit_in_its_dependencies() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("root Cargo.toml");
    let mut section = String::new();
    let mut found = Vec::new();
    for (n, line) in manifest.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_owned();
        } else if section != "[dev-dependencies]" && t.contains("testkit") && !t.starts_with('#') {
            found.push(format!("Cargo.toml:{}: {section} {t}", n + 1));
        }
    }
    assert!(
        found.is_empty(),
        "`testkit` belongs in [dev-dependencies] of the whale package (benchmarks live in \
         crates/bench): {}",
        found.join("\n")
    );
    assert!(
        !root().join("src/cli/bench.rs").exists(),
        "benchmarks live in crates/bench (`whale-bench`), not in the whale binary"
    );
}
