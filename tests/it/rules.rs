//! Rules end to end: `whale rules check|apply|test`, and events flowing validate → match →
//! render against a real nats-server, with a rule set swapped while events flow.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::subjects::{STREAM_EVENTS, STREAM_PIPE};

use crate::harness::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn check_accepts_the_examples_and_the_design_example_verbatim() {
    let env = Env::new();
    let out = env.ok(&["rules", "check", "pipelines", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["rules"], 3);
    env.ok(&["rules", "check", "tests/fixtures"]);
}

#[test]
fn a_broken_rule_file_is_refused_with_file_line_and_rule() {
    let env = Env::new();
    env.prepare();
    env.ok(&["rules", "apply", "pipelines"]);
    let before: Value =
        serde_json::from_slice(&env.ok(&["rules", "show", "--json"]).stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: broken\non: [vm.disk_usage]\nwhen:\n  - { path: .detail.env, eqq: prod }\naction: ops.x\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hostile.yaml"),
        "name: hostile\non: [vm.disk_usage]\nwhen:\n  - jq: 'last(repeat(1))'\naction: ops.x\n",
    )
    .unwrap();
    let out = env
        .whale(&["rules", "apply", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:4") && err.contains("\"broken\"") && err.contains("eqq"),
        "{err}"
    );
    assert!(
        err.contains("hostile.yaml") && err.contains("repeat"),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
    let after: Value =
        serde_json::from_slice(&env.ok(&["rules", "show", "--json"]).stdout).unwrap();
    assert_eq!(
        before["version"], after["version"],
        "the active set is untouched"
    );
}

#[test]
fn rules_test_explains_matches_and_non_matches_offline() {
    // No servers: WHALE_NATS_URL points nowhere and the command must not need it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whale"))
        .args([
            "rules",
            "test",
            "pipelines",
            "--events",
            "schemas/examples/vm.disk_usage.ndjson",
            "--json",
        ])
        .env("WHALE_NATS_URL", "nats://127.0.0.1:1")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 4);
    let text = serde_json::to_string(&reports).unwrap();
    // web-12 (prod, 93%, /data) matches; web-3 is staging and must say why not.
    assert!(text.contains("web-12"), "{text}");
    let human = std::process::Command::new(env!("CARGO_BIN_EXE_whale"))
        .args([
            "rules",
            "test",
            "pipelines",
            "--events",
            "schemas/examples/vm.disk_usage.ndjson",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    let human = stdout(&human);
    assert!(human.contains("disk-full-cleanup"), "{human}");
    assert!(
        human.contains("staging"),
        "the why-not names the value it saw: {human}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_tasks_and_a_new_rule_set_is_picked_up_while_events_flow() {
    let env = Env::new();
    env.prepare();
    env.ok(&["rules", "apply", "tests/fixtures"]);
    let _w = env.run("validate,match,render");
    let nats = env.connect().await;
    let n = 3_000usize;
    let ev = |i: usize| {
        json!({"id": format!("flow-{i}"), "event_type": "vm.disk_usage",
               "detail": {"host": format!("web-{}", i % 50), "usage_pct": 95, "env": "prod", "app": "shop",
                          "mounts": [{"path": "/data"}], "msg": ["a", "b"]},
               "labels": {"biz": "trade"}})
    };
    let mut w = whale_kernel::Window::on(&nats, 512);
    for i in 0..n / 2 {
        w.send(
            (),
            whale_kernel::Output::new(
                "whale.in.vm.disk_usage".into(),
                format!("flow-{i}"),
                ev(i).to_string(),
            ),
        )
        .await;
    }
    w.drain().await;
    // Swap in a set with a second rule while the first half is being processed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/design-example.yaml"),
        dir.path().join("a.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "name: second-rule\non: [vm.*]\nwhen:\n  - { path: .detail.usage_pct, numeric: ['>=', 95] }\naction: ops.notify\nparams:\n  who: '{{ .labels.biz }}'\n",
    )
    .unwrap();
    env.ok(&["rules", "apply", dir.path().to_str().unwrap()]);
    for i in n / 2..n {
        w.send(
            (),
            whale_kernel::Output::new(
                "whale.in.vm.disk_usage".into(),
                format!("flow-{i}"),
                ev(i).to_string(),
            ),
        )
        .await;
    }
    w.drain().await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&nats, STREAM_EVENTS, "whale.events.>").await >= n as u64
        })
        .await
    );
    // Every event matches disk-full-cleanup in both sets: exactly n tasks for it.
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.task").await >= n as u64
        })
        .await,
        "tasks: {}",
        count(&nats, STREAM_PIPE, "whale.pipe.task").await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tasks = read_all(&nats, STREAM_PIPE, "whale.pipe.task").await;
    let mut per_rule: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in &tasks {
        let fresh = per_rule
            .entry(t["rule"].as_str().unwrap().to_owned())
            .or_default()
            .insert(t["event_id"].as_str().unwrap().to_owned());
        assert!(fresh, "one task per (event, rule): {t}");
    }
    assert_eq!(
        per_rule["disk-full-cleanup"].len(),
        n,
        "no task lost or doubled across the switch"
    );
    // Workers switch asynchronously after `apply` returns (they read and compile the new set),
    // so the first events sent after it may still meet the old set: the new rule must fire for
    // all the later ones, and never for more events than there are.
    let second_ids = per_rule.get("second-rule").cloned().unwrap_or_default();
    let second = second_ids.len();
    assert!(
        second >= n / 4 && second <= n,
        "the new rule fired for the events after the switch: {second}"
    );
    let late: Vec<String> = (n - n / 4..n)
        .map(|i| format!("flow-{i}"))
        .filter(|id| !second_ids.contains(id))
        .collect();
    assert!(
        late.is_empty(),
        "the last quarter of the events all met the new set; these did not: {late:?}"
    );
    let t = tasks
        .iter()
        .find(|t| t["rule"] == "disk-full-cleanup")
        .unwrap();
    assert_eq!(t["action"], "ops.clean_disk");
    assert_eq!(
        t["parameters"]["messages"],
        json!(["a", "b"]),
        "a lone template keeps the array"
    );
    assert!(
        t["parameters"]["note"]
            .as_str()
            .unwrap()
            .starts_with("95% on web-"),
        "{t}"
    );
    assert_eq!(t["parameters"]["default2"], json!([1, 2, 3]));
    assert_eq!(t["cluster"], "trade");
    assert!(t["throttle"]["key"]
        .as_str()
        .unwrap()
        .starts_with("shop_web-"));
    assert_eq!(t["approval"]["timeout_ms"], 30 * 60 * 1000);
    let second = tasks.iter().find(|t| t["rule"] == "second-rule").unwrap();
    assert_eq!(second["parameters"]["who"], "trade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_failures_are_recorded_and_hostile_runtime_jq_does_not_stop_the_worker() {
    let env = Env::new();
    env.prepare();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "- name: needs-app\n  on: [generic]\n  action: ops.x\n  params:\n    app: '{{ .detail.app | ascii_downcase }}'\n\
         - name: heavy\n  on: [generic]\n  when:\n    - jq: '[range(100000)] | map(tostring) | join(\",\") | length > 0'\n  action: ops.y\n\
         - name: plain\n  on: [generic]\n  action: ops.z\n  params:\n    m: '{{ .detail.message }}'\n",
    )
    .unwrap();
    env.ok(&["rules", "apply", dir.path().to_str().unwrap()]);
    let _w = env.run("ingest,validate,match,render");
    let http = reqwest::Client::new();
    for i in 0..20 {
        let body = json!({"id": format!("g-{i}"), "event_type": "generic", "detail": {"message": format!("m{i}")}});
        assert_eq!(
            http.post(env.http("/v1/events"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
    }
    let nats = env.connect().await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.task").await >= 20
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.render_failed").await >= 20
        })
        .await
    );
    let failed = read_all(&nats, STREAM_PIPE, "whale.pipe.render_failed").await;
    assert!(
        failed
            .iter()
            .all(|f| f["rule"] == "needs-app" && f["field"] == "params.app"),
        "{failed:?}"
    );
    let tasks = read_all(&nats, STREAM_PIPE, "whale.pipe.task").await;
    assert_eq!(
        tasks.iter().filter(|t| t["rule"] == "plain").count(),
        20,
        "other rules keep serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_says_which_rule_matched_and_why_the_others_did_not() {
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    env.set("WHALE_INDEX_DIR", dir.path().to_str().unwrap());
    env.prepare();
    env.ok(&["rules", "apply", "pipelines"]);
    let _w = env.run("ingest,validate,index,match,render");
    let http = reqwest::Client::new();
    let staging = json!({"id": "tr-staging", "event_type": "vm.disk_usage",
                         "detail": {"host": "web-3", "usage_pct": 97, "env": "staging", "mounts": [{"path": "/data"}]}});
    let prod = json!({"id": "tr-prod", "event_type": "vm.disk_usage",
                      "detail": {"host": "web-4", "usage_pct": 97, "env": "prod", "mounts": [{"path": "/data"}]}});
    for body in [&staging, &prod] {
        assert_eq!(
            http.post(env.http("/v1/events"))
                .json(body)
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
    }
    let traced = |id: &str, want: &str| {
        let out = env.whale(&["trace", id]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains(want)
    };
    let mut ok = false;
    for _ in 0..100 {
        if traced("tr-prod", "ops.clean_disk") && traced("tr-staging", "did not match") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let human = stdout(&env.whale(&["trace", "tr-staging"]).output().unwrap());
    assert!(ok, "{human}");
    assert!(
        human.contains("disk-full-cleanup") && human.contains("\"staging\""),
        "why not names the rule and the value: {human}"
    );
    let json: Value =
        serde_json::from_slice(&env.ok(&["trace", "tr-staging", "--json"]).stdout).unwrap();
    assert_eq!(
        json["not_matched"][0]["rule"], "disk-full-cleanup",
        "{json}"
    );
}
