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

/// The test-only raw NATS operations of `whale_kernel::testkit` (`Nats::publish_raw`,
/// `request_raw`, `subscribe_raw`, `create_stream_raw`, `create_bucket_raw`): feature `testkit`
/// is on in the root package, so only this test keeps them out of product code.
const TESTKIT_RAW: [&str; 5] = [
    ".publish_raw(",
    ".request_raw(",
    ".subscribe_raw(",
    ".create_stream_raw(",
    ".create_bucket_raw(",
];

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
    let mut names = vec!["async_nats", "async-nats", "nats.js", "nats.client"];
    names.extend(TESTKIT_RAW);
    let found = lines_naming(&all, &names);
    assert!(
        found.is_empty(),
        "stages must not talk to NATS themselves (ARCHITECTURE.md, \"Stages never talk to NATS\"): \
         use the kernel (whale_kernel::kv::Bucket, Nats::publish, Window, kv::watch_bucket) \
         and add what is missing there. Found:\n{}",
        found.join("\n")
    );
}

/// The `whale` binary (`src/`) reaches NATS only through the kernel too: `Nats`'s connection is
/// private to the kernel (the compiler enforces that), and `async-nats` is only a
/// dev-dependency of the root package (its tests act as other NATS clients). Log filter
/// directives (`async_nats=warn`) are not uses.
#[test]
fn the_binary_never_names_async_nats() {
    let mut all = Vec::new();
    files(&root().join("src"), &mut all);
    assert!(!all.is_empty(), "no sources under src/");
    let found: Vec<String> = lines_naming(&all, &[&["async_nats"][..], &TESTKIT_RAW[..]].concat())
        .into_iter()
        .filter(|l| !l.contains("async_nats=warn"))
        .collect();
    assert!(
        found.is_empty(),
        "the whale binary must reach NATS through whale_kernel (Nats's operations, kv::Bucket, \
         history, Window); add what is missing to the kernel. Found:\n{}",
        found.join("\n")
    );
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("root Cargo.toml");
    let deps = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] table in the root Cargo.toml");
    assert!(
        !deps.lines().any(|l| l.trim_start().starts_with("async-nats")),
        "async-nats is back in the root package's [dependencies]: only [dev-dependencies] may name it"
    );
}

/// `path:line: text` of every line of the `.rs` and `.toml` files in `paths` containing one of
/// `names`.
fn lines_naming(paths: &[PathBuf], names: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for path in paths {
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("rs" | "toml")) {
            continue;
        }
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for (n, line) in text.lines().enumerate() {
            if names.iter().any(|name| line.contains(name)) {
                let rel = path.strip_prefix(root()).unwrap_or(path);
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

/// Every file under the given workspace directories.
fn files_under(dirs: &[&str]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for d in dirs {
        files(&root().join(d), &mut all);
    }
    assert!(!all.is_empty(), "no sources under {dirs:?}");
    all
}

/// Causes are kept (ARCHITECTURE.md, "Errors keep their causes"): no error is flattened into a
/// new `anyhow!` of its text, which drops its source chain (and with it what
/// `kv::is_unavailable` looks for). Use `?`, `.context(..)` or a typed error with a source.
#[test]
fn no_error_is_flattened_into_its_text() {
    let all = files_under(&["crates", "stages", "src/cli"]);
    let found = lines_naming(
        &all,
        &[
            "map_err(|e| anyhow::anyhow!(\"{e}\"))",
            "map_err(|e| anyhow!(\"{e}\"))",
            "map_err(|e| anyhow::anyhow!(\"{e:#}\"))",
        ],
    );
    // This test's own patterns are not uses.
    let found: Vec<String> = found
        .into_iter()
        .filter(|l| !l.starts_with("crates/kernel/tests/tidy.rs"))
        .collect();
    assert!(
        found.is_empty(),
        "an error flattened into its text loses its cause chain: use `?` or `.context(..)`. Found:\n{}",
        found.join("\n")
    );
}

/// Records build their own messages (ARCHITECTURE.md, "Every output has a deterministic
/// `Nats-Msg-Id`"): the msg-id prefixes of task records are spelled only in
/// `whale_kernel::records::msg_id`, never in a stage's sources.
#[test]
fn stages_never_spell_msg_ids() {
    let all: Vec<PathBuf> = files_under(&["stages"])
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "src"))
        .collect();
    let prefixes = [
        "format!(\"task:",
        "format!(\"rf:{",
        "format!(\"adm:",
        "format!(\"adm-retry:",
        "format!(\"apv:",
        "format!(\"wait:",
        "format!(\"thr:",
        "format!(\"dec:",
        "format!(\"dsp:",
        "format!(\"dl:",
        "format!(\"res:",
        "format!(\"ntd:",
    ];
    let found = lines_naming(&all, &prefixes);
    assert!(
        found.is_empty(),
        "build pipe records' messages with their `.output()` (whale_kernel::records), whose \
         msg ids come from records::msg_id. Found:\n{}",
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

/// The kill-self failpoint (`whale_kernel::failpoint`, feature `failpoints`) is in test builds
/// only: no `[dependencies]` section of any package turns it on, and the root package's
/// dev-dependencies do (the integration tests also assert `failpoint::ENABLED` at compile time).
#[test]
fn failpoints_are_on_in_tests_and_off_in_the_product() {
    let mut manifests = vec![root().join("Cargo.toml")];
    let mut all = Vec::new();
    for dir in ["crates", "stages"] {
        files(&root().join(dir), &mut all);
    }
    manifests.extend(all.into_iter().filter(|p| p.ends_with("Cargo.toml")));
    let mut in_product = Vec::new();
    let mut in_tests = false;
    for m in &manifests {
        let text = std::fs::read_to_string(m).expect("manifest");
        let mut section = String::new();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                section = t.to_owned();
            } else if t.contains("\"failpoints\"") && !t.starts_with('#') {
                if section == "[dev-dependencies]" {
                    in_tests |= m == &root().join("Cargo.toml");
                } else if section != "[features]" {
                    in_product.push(format!("{}:{}: {section} {t}", m.display(), n + 1));
                }
            }
        }
    }
    assert!(
        in_product.is_empty(),
        "`failpoints` must not be on in a product build: {}",
        in_product.join("\n")
    );
    assert!(
        in_tests,
        "the root package's [dev-dependencies] must turn on whale-kernel's `failpoints` (the chaos tests need it)"
    );
}
