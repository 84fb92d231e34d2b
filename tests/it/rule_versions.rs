//! Issue 16 "rule sets of any practical size" and issue 17 "CLI parity" against a real
//! nats-server: a set well over NATS's default 1 MiB message limit applied to a server with
//! default settings and used by a match; a set stored in the old single-value form still
//! loaded; history (principal, git commit and author), diff and rollback (CLI and HTTP, admin
//! only, audited) of versions applied from a git checkout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::auth::{hash_token, Role};
use whale_kernel::subjects::{KV_RULES, STREAM_PIPE};

use crate::harness::*;

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// One rule per host, padded to a realistic size (~300 bytes).
fn host_rule(i: usize) -> String {
    format!(
        "- name: host-{i}\n  description: clean the temp files of host-{i} when its disk passes 90% (generated from the inventory)\n  on: vm.disk_usage\n  when:\n    - {{ path: .detail.host, eq: host-{i} }}\n    - {{ path: .detail.usage_pct, gt: 90 }}\n  action: ops.clean_disk\n  params:\n    host: \"{{{{ .detail.host }}}}\"\n"
    )
}

async fn publish(nats: &whale_kernel::Nats, id: &str, detail: Value) {
    let ev = json!({"id": id, "event_type": "vm.disk_usage", "detail": detail});
    nats.publish_raw("whale.in.vm.disk_usage", &[], ev.to_string())
        .await
        .unwrap();
}

/// Publishes `{prefix}-1`, `{prefix}-2`, ... (one a second, fresh ids: a running worker may
/// still hold the previous set for a moment) until one is matched; returns its match records.
async fn match_eventually(nats: &whale_kernel::Nats, prefix: &str, detail: Value) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for n in 1.. {
        publish(nats, &format!("{prefix}-{n}"), detail.clone()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let found: Vec<Value> = read_all(nats, STREAM_PIPE, "whale.pipe.matched")
            .await
            .into_iter()
            .filter(|m| {
                m["event_id"]
                    .as_str()
                    .is_some_and(|e| e.starts_with(&format!("{prefix}-")))
            })
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event {prefix}-* was matched in 60 s"
        );
    }
    unreachable!()
}

/// Issue 16: 12,000 rules (~3.6 MB: one file of 6,000 rules and 300 files of 20) applied to a
/// nats-server with its default 1 MiB `max_payload`; no stored value is over the limit, the
/// running match stage switches to the set, and an event matches the rule made for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_over_one_mib_applies_to_a_default_server_and_matches() {
    let env = Env::on(NatsServer::start_with_default_max_payload());
    env.prepare();
    env.ok(&["rules", "apply", "tests/fixtures"]);
    let w = env.run("validate,match,render");
    let dir = tempfile::tempdir().unwrap();
    let big: String = (0..6_000).map(host_rule).collect();
    std::fs::write(dir.path().join("000-big.yaml"), &big).unwrap();
    for f in 0..300 {
        let text: String = (0..20).map(|k| host_rule(6_000 + f * 20 + k)).collect();
        std::fs::write(dir.path().join(format!("f{f:03}.yaml")), text).unwrap();
    }
    let total: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total > 3 << 20, "the set is {total} bytes");
    assert!(big.len() > 1 << 20, "one file alone is over 1 MiB");
    let applied = json_of(&env.ok(&["rules", "apply", dir.path().to_str().unwrap(), "--json"]));
    assert_eq!(applied["rules"], 12_000, "{applied}");
    let version = applied["version"].as_str().unwrap().to_owned();

    // Nothing stored is near the limit: the manifest is small, chunks ≤ 512 KiB.
    let nats = env.connect().await;
    let kv = whale_kernel::kv::Bucket::open(&nats, KV_RULES)
        .await
        .unwrap();
    let active = kv.get("active").await.unwrap().unwrap();
    assert!(
        active.len() < 16 << 10,
        "manifest of {} bytes",
        active.len()
    );
    let manifest: Value = serde_json::from_slice(&active).unwrap();
    assert_eq!(manifest["version"], version.as_str());
    assert_eq!(manifest["rules"], 12_000);
    let chunks = manifest["chunks"].as_array().unwrap();
    assert!(chunks.len() >= 7, "{} chunks", chunks.len());
    let mut content = Vec::new();
    for c in chunks {
        let part = kv
            .get(&format!("chunk.{}", c.as_str().unwrap()))
            .await
            .unwrap()
            .unwrap();
        assert!(part.len() <= 512 << 10, "chunk of {} bytes", part.len());
        content.extend_from_slice(&part);
    }
    // Every file is stored with its text and its rules as parsed (what workers compile from,
    // without reading the YAML again), each rule with the line of its name.
    let files: Vec<Value> = serde_json::from_slice(&content).unwrap();
    assert_eq!(files.len(), 301);
    assert_eq!(files[0]["text"], big.as_str());
    let parsed = files[0]["parsed"].as_array().unwrap();
    assert_eq!(parsed.len(), 6_000);
    assert_eq!(
        parsed[1][0], 10,
        "line of the second rule's name: {}",
        parsed[1]
    );
    assert_eq!(parsed[1][1]["name"], "host-1");
    assert_eq!(
        parsed[1][1]["when"][1],
        json!({"path": ".detail.usage_pct", "gt": 90})
    );
    let rules: usize = files
        .iter()
        .map(|f| f["parsed"].as_array().unwrap().len())
        .sum();
    assert_eq!(rules, 12_000);

    // The running match stage switched: events match rules of the big file and of a small one.
    for (prefix, rule) in [("big", "host-4321"), ("small", "host-11999")] {
        let m = match_eventually(&nats, prefix, json!({"host": rule, "usage_pct": 97})).await;
        assert!(m.iter().all(|m| m["rule"] == rule), "{m:#?}");
        assert_eq!(m[0]["rule_version"], version.as_str());
    }
    // Memory of the worker holding the set (printed, not asserted).
    let pid = w.pid().unwrap();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        if let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS")) {
            eprintln!("whale run --stages validate,match,render with 12,000 rules: {rss}");
        }
    }
    let shown = json_of(&env.ok(&["rules", "show", "--json"]));
    assert_eq!(shown["version"], version.as_str());
    assert_eq!(shown["files"].as_array().unwrap().len(), 301);
}

/// Issue 16 "sets stored in the old single-value form must still load": a set written by an
/// older whale (`{version, applied_at, sources}` in `active` and `v.<version>`) is what a new
/// match stage loads, and `whale rules show`, `history` and `diff` read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_in_the_old_single_value_form_still_loads() {
    let env = Env::new();
    env.prepare();
    let sources = vec![whale_rules::RuleSource {
        path: "pipelines/old.yaml".into(),
        text: "name: old-form\non: [vm.disk_usage]\nwhen:\n  - { path: .detail.usage_pct, gt: 50 }\naction: ops.old\n".into(),
    }];
    let version = whale_rules::RuleSet::compile(&sources)
        .unwrap()
        .version()
        .to_owned();
    let old = json!({"version": version, "applied_at": "2026-01-02T03:04:05Z", "sources": sources});
    let nats = env.connect().await;
    let kv = whale_kernel::kv::Bucket::open(&nats, KV_RULES)
        .await
        .unwrap();
    let ttl = whale_kernel::kv::Ttl::Bucket;
    kv.put(&format!("v.{version}"), old.to_string().into(), ttl)
        .await
        .unwrap();
    kv.put("active", old.to_string().into(), ttl).await.unwrap();

    let _w = env.run("validate,match,render");
    let m = match_eventually(&nats, "old", json!({"host": "web-1", "usage_pct": 60})).await;
    assert_eq!(m[0]["rule"], "old-form");
    assert_eq!(m[0]["rule_version"], version.as_str());

    let shown = json_of(&env.ok(&["rules", "show", "--json"]));
    assert_eq!(shown["version"], version.as_str());
    assert_eq!(shown["files"], json!(["pipelines/old.yaml"]));
    let history = json_of(&env.ok(&["rules", "history", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 1, "{history:#}");
    assert_eq!(history[0]["version"], version.as_str());
    assert_eq!(history[0]["applied_at"], "2026-01-02T03:04:05Z");

    // The chunked form of the previous whale (files as text, no parsed rules) loads too.
    let text_only = vec![whale_rules::RuleSource {
        path: "pipelines/text-only.yaml".into(),
        text: "name: text-only\non: [vm.disk_usage]\nwhen:\n  - { path: .detail.host, eq: text-host }\naction: ops.text\n".into(),
    }];
    let v2 = whale_rules::RuleSet::compile(&text_only)
        .unwrap()
        .version()
        .to_owned();
    let content = serde_json::to_vec(&text_only).unwrap();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&content));
    kv.put(&format!("chunk.{hash}"), content.into(), ttl)
        .await
        .unwrap();
    let manifest = json!({"version": v2, "applied_at": "2026-01-03T03:04:05Z", "chunks": [hash]});
    kv.put("active", manifest.to_string().into(), ttl)
        .await
        .unwrap();
    // (usage under the old rule's 50: only the new set matches it)
    let m = match_eventually(&nats, "text", json!({"host": "text-host", "usage_pct": 10})).await;
    assert!(m.iter().all(|m| m["rule"] == "text-only"), "{m:#?}");
    assert_eq!(m[0]["rule_version"], v2.as_str());

    // A new apply in the new form; the old version is still readable next to it.
    env.ok(&["rules", "apply", "tests/fixtures"]);
    let diff = json_of(&env.ok(&["rules", "diff", &version, "active", "--json"]));
    let files = diff["files"].as_array().unwrap();
    let removed = files
        .iter()
        .find(|f| f["path"] == "pipelines/old.yaml")
        .unwrap();
    assert_eq!(removed["status"], "removed");
    assert!(
        removed["diff"]
            .as_str()
            .unwrap()
            .contains("-name: old-form"),
        "{removed}"
    );
    let history = json_of(&env.ok(&["rules", "history", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 2, "{history:#}");
    assert_eq!(history[1]["version"], version.as_str());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git is needed by this test: apt-get install git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit(dir: &Path, author: &str, email: &str, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            &format!("user.name={author}"),
            "-c",
            &format!("user.email={email}"),
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
    git(dir, &["rev-parse", "HEAD"])
}

const RULE: &str = "name: disk-high\non: [vm.disk_usage]\nwhen:\n  - { path: .detail.usage_pct, gt: 90 }\naction: ops.clean_disk\nparams:\n  host: \"{{ .detail.host }}\"\n";

/// Issue 17 "CLI parity": v1 and v2 applied from a git checkout; `history` shows both with the
/// principal, commit and author; `diff` shows the changed line; a viewer and an operator get
/// 403 on `POST /v1/rules/rollback`, an admin rolls back to v1 (matches use v1 again, an audit
/// record names the admin); `GET /v1/rules*` answer the same; the CLI rolls forward again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_diff_and_rollback_of_versions_applied_from_git() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let tokens = [
        ("dashboard", Role::Viewer, "viewer-token-0123456789"),
        ("oncall-op", Role::Operator, "operator-token-0123456789"),
        ("platform-admin", Role::Admin, "admin-token-0123456789"),
    ];
    let mut toml = String::new();
    for (name, role, t) in tokens {
        let sha: String = hash_token(t).iter().map(|b| format!("{b:02x}")).collect();
        toml.push_str(&format!(
            "[[auth.tokens]]\nname = \"{name}\"\nrole = \"{}\"\nsha256 = \"{sha}\"\n",
            role.as_str()
        ));
    }
    std::fs::write(cfg_dir.path().join("whale.toml"), toml).unwrap();
    let mut env = Env::new();
    env.set(
        "WHALE_CONFIG",
        cfg_dir.path().join("whale.toml").to_str().unwrap(),
    );
    env.set("USER", "alice");
    env.prepare();

    let repo_dir = tempfile::tempdir().unwrap();
    let checkout = repo_dir.path();
    git(checkout, &["init", "-q"]);
    std::fs::create_dir(checkout.join("rules")).unwrap();
    let rules = checkout.join("rules");
    std::fs::write(rules.join("disk.yaml"), RULE).unwrap();
    let c1 = commit(
        checkout,
        "Ada Lovelace",
        "ada@example.com",
        "rules: disk over 90%",
    );
    let v1 = json_of(&env.ok(&["rules", "apply", rules.to_str().unwrap(), "--json"]))["version"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(rules.join("disk.yaml"), RULE.replace("gt: 90", "gt: 95")).unwrap();
    let c2 = commit(
        checkout,
        "Bob Builder",
        "bob@example.com",
        "rules: disk over 95%",
    );
    let v2 = json_of(&env.ok(&["rules", "apply", rules.to_str().unwrap(), "--json"]))["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(v1, v2);

    let history = json_of(&env.ok(&["rules", "history", "--json"]));
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 2, "{history:#}");
    for (e, v, c, author) in [
        (&h[0], &v2, &c2, "Bob Builder <bob@example.com>"),
        (&h[1], &v1, &c1, "Ada Lovelace <ada@example.com>"),
    ] {
        assert_eq!(e["version"], v.as_str(), "{e}");
        assert_eq!(e["action"], "apply");
        assert_eq!(e["by"], "alice");
        assert_eq!(e["via"], "cli");
        assert_eq!(e["git"]["commit"], c.as_str(), "{e}");
        assert_eq!(e["git"]["author"], author);
        assert_eq!(e["git"]["dirty"], false);
    }
    let human = String::from_utf8_lossy(&env.ok(&["rules", "history"]).stdout).into_owned();
    assert!(
        human.contains(&v1) && human.contains(&c2[..12]) && human.contains("Bob Builder"),
        "{human}"
    );

    let diff = json_of(&env.ok(&["rules", "diff", &v1, &v2, "--json"]));
    let files = diff["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{diff:#}");
    assert_eq!(files[0]["status"], "changed");
    let text = files[0]["diff"].as_str().unwrap();
    assert!(
        text.contains("-  - { path: .detail.usage_pct, gt: 90 }")
            && text.contains("+  - { path: .detail.usage_pct, gt: 95 }"),
        "{text}"
    );
    let human =
        String::from_utf8_lossy(&env.ok(&["rules", "diff", &v1, "active"]).stdout).into_owned();
    assert!(
        human.contains("+  - { path: .detail.usage_pct, gt: 95 }"),
        "{human}"
    );

    // Over HTTP: reads for a viewer, rollback for an admin only.
    let _w = env.run("validate,match,render");
    let http = reqwest::Client::new();
    // GET as the viewer: (status, JSON body)
    let view = |path: String| {
        let req = http
            .get(env.http(&path))
            .header("authorization", format!("Bearer {}", tokens[0].2));
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let rollback = |token: &'static str, version: String| {
        let http = http.clone();
        let url = env.http("/v1/rules/rollback");
        async move {
            let r = http
                .post(url)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(json!({"version": version}).to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for token in [tokens[0].2, tokens[1].2] {
        let (code, body) = rollback(token, v1.clone()).await;
        assert_eq!(code, 403, "{body}");
        assert_eq!(body["needs_role"], "admin");
    }
    let (code, got) = view("/v1/rules".into()).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["version"], v2.as_str(), "still v2 after the refusals");
    assert_eq!(got["files"].as_array().unwrap().len(), 1);

    let nats = env.connect().await;
    let (code, body) = rollback(tokens[2].2, v1.clone()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["active"]["version"], v1.as_str());
    assert_eq!(body["active"]["action"], "rollback");
    assert_eq!(body["active"]["by"], "platform-admin");
    assert_eq!(body["active"]["previous"], v2.as_str());

    // The running match stage uses v1 again: 93% matches (v2 wants over 95%), v1 recorded.
    let matched = match_eventually(
        &nats,
        "after-rollback",
        json!({"host": "web-1", "usage_pct": 93}),
    )
    .await;
    assert!(
        matched.iter().all(|m| m["rule_version"] == v1.as_str()),
        "{matched:#?}"
    );

    let audit = String::from_utf8_lossy(
        &env.ok(&["audit", "--action", "rules.rollback", "--json"])
            .stdout,
    )
    .into_owned();
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["who"], "platform-admin");
    assert_eq!(records[0]["via"], "http");
    assert_eq!(records[0]["target"], json!({"kind": "rules", "id": v1}));
    assert_eq!(records[0]["before"]["version"], v2.as_str());

    let (code, hist) = view("/v1/rules/history?limit=10".into()).await;
    assert_eq!(code, 200, "{hist}");
    let h = hist.as_array().unwrap();
    assert_eq!(h.len(), 3, "{hist:#}");
    assert_eq!(h[0]["action"], "rollback");
    assert_eq!(h[0]["by"], "platform-admin");
    assert_eq!(
        h[0]["git"]["commit"],
        c1.as_str(),
        "the rolled-back version's commit"
    );
    let (code, d) = view(format!("/v1/rules/diff?a={v2}&b=active")).await;
    assert_eq!(code, 200, "{d}");
    assert!(
        d["files"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+  - { path: .detail.usage_pct, gt: 90 }"),
        "{d}"
    );
    let (code, body) = view("/v1/rules/diff?a=nope&b=active".into()).await;
    assert_eq!(code, 404, "{body}");

    // The CLI rolls forward to v2, audited with the OS user.
    let out = json_of(&env.ok(&["rules", "rollback", &v2, "--json"]));
    assert_eq!(out["changed"], true);
    assert_eq!(out["active"]["by"], "alice");
    let again = json_of(&env.ok(&["rules", "rollback", &v2, "--json"]));
    assert_eq!(again["changed"], false);
    let records = String::from_utf8_lossy(
        &env.ok(&["audit", "--action", "rules.rollback", "--json"])
            .stdout,
    )
    .lines()
    .count();
    assert_eq!(records, 2);
    let unknown = env
        .whale(&["rules", "rollback", "000000000000"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown rule-set version"));
}
