//! `whale replay`: a dry run (backtest) of the active or a candidate rule set over recorded
//! events agrees with evaluating the same events live/offline; a live replay re-injects events
//! with fresh ids and a replay marker, once.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::subjects::{STREAM_EVENTS, STREAM_PIPE};

use crate::harness::*;

fn events(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": format!("rp-{i}"), "event_type": "vm.disk_usage",
                   "detail": {"host": format!("web-{i}"), "usage_pct": 80 + (i % 20), "env": if i % 3 == 0 { "staging" } else { "prod" },
                              "mounts": [{"path": "/data"}]}})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_matches_live_and_offline_and_live_replay_fires_once() {
    let env = Env::new();
    env.prepare();
    env.ok(&["rules", "apply", "pipelines"]);
    let _w = env.run("validate,match,render");
    let nats = env.connect().await;
    let evs = events(300);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(
        &file,
        evs.iter().map(|e| e.to_string() + "\n").collect::<String>(),
    )
    .unwrap();
    env.ok(&["publish", "--file", file.to_str().unwrap()]);
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_EVENTS, "whale.events.>").await >= 300
        })
        .await
    );

    // What the live pipeline fired for the active set.
    let offline = |rules: &str| -> usize {
        let out = env.ok(&[
            "rules",
            "test",
            rules,
            "--events",
            file.to_str().unwrap(),
            "--json",
        ]);
        let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
        reports
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["rules"].as_array().unwrap().clone())
            .filter(|r| r["matched"] == true)
            .count()
    };
    let live_expected = offline("pipelines");
    assert!(live_expected > 0 && live_expected < 300, "{live_expected}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.matched").await >= live_expected as u64
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = env.ok(&["replay", "--from", "1d", "--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events"], 300);
    let line = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rule"] == "disk-full-cleanup")
        .unwrap()
        .clone();
    assert_eq!(line["would_match"], live_expected as u64, "{report}");
    assert_eq!(line["actually_matched"], live_expected as u64, "{report}");
    assert_eq!(
        (line["added"].as_u64(), line["removed"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );

    // A candidate: threshold 85 instead of 90. The backtest equals evaluating the events offline.
    let cand = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("pipelines/vm-disk.yaml"))
        .unwrap()
        .replace("gt: 90", "gt: 85");
    std::fs::write(cand.path().join("vm-disk.yaml"), text).unwrap();
    let cand_expected = offline(cand.path().to_str().unwrap());
    assert!(cand_expected > live_expected);
    let out = env.ok(&[
        "replay",
        "--from",
        "1d",
        "--type",
        "vm.disk_usage",
        "--rules",
        cand.path().to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = &report["rules"][0];
    assert_eq!(line["would_match"], cand_expected as u64, "{report}");
    assert_eq!(
        line["added"],
        (cand_expected - live_expected) as u64,
        "{report}"
    );
    assert_eq!(report["candidate"], true);

    // Live replay of one rule: fresh ids, replay marker, one task each.
    let before = count(&nats, STREAM_PIPE, "whale.pipe.task").await;
    let out = env.ok(&[
        "replay",
        "--from",
        "1d",
        "--rule",
        "disk-full-cleanup",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reinjected"], live_expected as u64);
    let run = report["replay"].as_str().unwrap().to_owned();
    let want = before + live_expected as u64;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.task").await >= want
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tasks = read_all(&nats, STREAM_PIPE, "whale.pipe.task").await;
    let replayed: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["replay"] == run.as_str())
        .collect();
    assert_eq!(replayed.len(), live_expected);
    let ids: BTreeSet<&str> = replayed
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), live_expected, "each replayed event fires once");
    assert!(replayed.iter().all(|t| t["event_id"]
        .as_str()
        .unwrap()
        .starts_with(&format!("replay-{run}-"))));
}

#[test]
fn replay_refuses_bad_ranges_and_unknown_rules() {
    let env = Env::new();
    env.prepare();
    env.ok(&["rules", "apply", "pipelines"]);
    let out = env
        .whale(&["replay", "--from", "yesterday-ish", "--dry-run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a time"));
    let out = env
        .whale(&["replay", "--from", "1h", "--rule", "nope", "--dry-run"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("rule \"nope\""));
}

/// Matches of `rules` over `evs`, offline (`whale rules test`).
fn offline_matches(env: &Env, rules: &str, file: &std::path::Path) -> u64 {
    let out = env.ok(&[
        "rules",
        "test",
        rules,
        "--events",
        file.to_str().unwrap(),
        "--json",
    ]);
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    reports
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["rules"].as_array().unwrap().clone())
        .filter(|r| r["matched"] == true)
        .count() as u64
}

fn publish_file(env: &Env, dir: &std::path::Path, name: &str, evs: &[Value]) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::write(
        &file,
        evs.iter().map(|e| e.to_string() + "\n").collect::<String>(),
    )
    .unwrap();
    env.ok(&["publish", "--file", file.to_str().unwrap()]);
    file
}

fn rule_line(report: &Value, rule: &str) -> Value {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rule"] == rule)
        .unwrap_or_else(|| panic!("no line for {rule}: {report}"))
        .clone()
}

/// Events older than what the pipe stream still holds: compared through the index when it has
/// their match records, reported as "not comparable" (never "+new") when nothing has them; a
/// source that cannot be read fails the backtest with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_compares_old_events_through_the_index_or_says_it_cannot() {
    let mut env = Env::new();
    let index = tempfile::tempdir().unwrap();
    env.set("WHALE_INDEX_DIR", index.path().to_str().unwrap());
    env.prepare();
    env.ok(&["rules", "apply", "pipelines"]);
    let _w = env.run("validate,match,render,index");
    let nats = env.connect().await;
    let dir = tempfile::tempdir().unwrap();

    // Old events: matched, then indexed, then gone from the pipe stream (as after 24 h).
    let old: Vec<Value> = events(100)
        .into_iter()
        .map(|mut e| {
            e["id"] = json!(format!("old-{}", e["id"].as_str().unwrap()));
            e
        })
        .collect();
    let old_file = publish_file(&env, dir.path(), "old.ndjson", &old);
    let old_expected = offline_matches(&env, "pipelines", &old_file);
    assert!(old_expected > 0);
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.matched").await >= old_expected
        })
        .await
    );
    let indexed = || {
        let out = env
            .whale(&[
                "events", "search", "--kind", "matched", "--limit", "1", "--json",
            ])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["total"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            indexed() >= old_expected
        })
        .await,
        "the index never held the old match records"
    );
    nats.purge(STREAM_PIPE, None).await.unwrap();
    assert_eq!(count(&nats, STREAM_PIPE, "whale.pipe.matched").await, 0);

    // New events: their match records are in the pipe stream.
    let new_file = publish_file(&env, dir.path(), "new.ndjson", &events(100));
    let new_expected = offline_matches(&env, "pipelines", &new_file);
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.matched").await >= new_expected
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            indexed() >= old_expected + new_expected
        })
        .await
    );

    // With the index: every event compared, nothing new, nothing gone.
    let out = env.ok(&["replay", "--from", "1d", "--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("with the index: {report}");
    assert_eq!(report["events"], 200);
    assert_eq!(report["not_comparable"], json!([]), "{report}");
    assert_eq!(
        report["compared_with"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    let line = rule_line(&report, "disk-full-cleanup");
    assert_eq!(line["would_match"], old_expected + new_expected, "{report}");
    assert_eq!(
        line["actually_matched"],
        old_expected + new_expected,
        "{report}"
    );
    assert_eq!(
        (&line["added"], &line["removed"], &line["not_comparable"]),
        (&json!(0), &json!(0), &json!(0)),
        "{report}"
    );

    // Without an index: the old events are "not comparable", never "+new".
    let empty = tempfile::tempdir().unwrap();
    let out = env
        .whale(&["replay", "--from", "1d", "--dry-run", "--json"])
        .env("WHALE_INDEX_DIR", empty.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("without the index: {report}");
    let gaps = report["not_comparable"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{report}");
    let reason = gaps[0]["reason"].as_str().unwrap();
    assert!(reason.contains("no record of what fired"), "{reason}");
    assert!(reason.contains("there is no index"), "{reason}");
    let line = rule_line(&report, "disk-full-cleanup");
    assert_eq!(line["added"], 0, "{report}");
    assert_eq!(line["removed"], 0, "{report}");
    assert_eq!(line["not_comparable"], old_expected, "{report}");
    assert_eq!(line["actually_matched"], new_expected, "{report}");
    assert_eq!(gaps[0]["matches"], old_expected, "{report}");
    assert_eq!(report["not_comparable_events"], old_expected, "{report}");
    // The table says it too.
    let out = env
        .whale(&["replay", "--from", "1d", "--dry-run"])
        .env("WHALE_INDEX_DIR", empty.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("not comparable") && text.contains("N/C"),
        "{text}"
    );

    // A source that cannot be read fails the backtest (it used to be ignored).
    nats.delete_stream(STREAM_PIPE).await.unwrap();
    let out = env
        .whale(&["replay", "--from", "1d", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("WHALE_PIPE"), "{err}");
}
