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
