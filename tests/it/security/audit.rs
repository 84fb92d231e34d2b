//! Issue 13 "audit trail", against the real `whale run --stages all`, nats-server, Redis and the
//! StackStorm emulator: an approval through the API as a named operator token, an execution
//! retry with changed parameters, a rules apply and a drain each become exactly one audit record
//! (who, action, target, from, before/after) that `whale audit` lists newest first and filters by
//! who and action, `GET /v1/audit` serves to a viewer, the index stores and `whale trace` shows;
//! the stream keeps records 400 days. And the failing path: with no audit stream an action is
//! refused (503 / exit 1) and nothing is done.

use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::auth::Role;
use whale_kernel::subjects::STREAM_AUDIT;
use whale_kernel::testkit::RedisServer;

use crate::harness::*;

const TOKENS: [(&str, Role, &str); 4] = [
    ("alertmanager", Role::Producer, "producer-token-0123456789"),
    ("auditor", Role::Viewer, "viewer-token-0123456789"),
    ("oncall-op", Role::Operator, "operator-token-0123456789"),
    ("platform-admin", Role::Admin, "admin-token-0123456789"),
];

fn bearer(role: Role) -> String {
    let t = TOKENS.iter().find(|t| t.1 == role).unwrap().2;
    format!("Bearer {t}")
}

/// A rule that holds every critical `generic` event's task for approval.
const RULE: &str = r#"name: audited-echo
on: [generic]
when:
  - { path: .detail.severity, eq: critical }
action: core.local
params:
  cmd: "echo {{ .detail.message }}"
approval: { required: true, timeout: 30m }
"#;

/// `whale audit --json` (plus `args`), one record per line.
fn audit_lines(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let out = env.ok(&all);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect()
}

fn actions(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_and_change_is_one_audit_record() {
    let redis = RedisServer::start();
    let st2 = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("audited.yaml"), RULE).unwrap();
    let mut env = Env::new();
    env.set("USER", "alice");
    // `whale setup` + `whale schemas apply schemas`: a schemas.apply record; the rules are
    // applied below, where their record is checked.
    env.prepare_pipeline(
        dir.path(),
        &tokens_toml(&TOKENS),
        &redis.url(),
        &st2.url,
        &[],
    );
    let nats = env.connect().await;

    // The stream: 400 days, discard new (a full trail refuses, never drops), a size cap.
    let info = nats.stream_info(STREAM_AUDIT).await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(400 * 24 * 3600));
    assert_eq!(
        info.config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
    assert!(info.config.max_bytes > 0, "the trail has a size cap");
    assert!(info.config.deny_delete && info.config.deny_purge);

    let applied = env.ok(&["rules", "apply", rules.to_str().unwrap(), "--json"]);
    let applied: Value = serde_json::from_slice(&applied.stdout).unwrap();
    let version = applied["version"].as_str().unwrap().to_owned();
    let _w = env.run("all");
    let http = reqwest::Client::new();

    // An event whose task waits for approval.
    let r = http
        .post(env.http("/v1/events"))
        .header("authorization", bearer(Role::Producer))
        .json(&json!({"event_type": "generic", "detail": {"message": "disk", "severity": "critical"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let event_id = body["ids"][0].as_str().unwrap().to_owned();
    let found = std::sync::Mutex::new(String::new());
    let held = eventually(Duration::from_secs(60), || async {
        let list: Value = http
            .get(env.http("/v1/approvals?state=pending"))
            .header("authorization", bearer(Role::Viewer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        match list.as_array().and_then(|l| {
            l.iter()
                .find(|a| a["task"]["event_id"] == event_id.as_str())
        }) {
            Some(a) => {
                *found.lock().unwrap() = a["task"]["task_id"].as_str().unwrap().to_owned();
                true
            }
            None => false,
        }
    })
    .await;
    assert!(held, "the task is held for approval");
    let task_id = found.lock().unwrap().clone();

    // 1. Approve through the API as the operator token.
    let r = http
        .post(env.http(&format!("/v1/approvals/{task_id}/approve")))
        .header("authorization", bearer(Role::Operator))
        .json(&json!({"reason": "disk is full"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // 2. Retry its execution with a changed parameter.
    let ran = eventually(Duration::from_secs(60), || async {
        let r = http
            .get(env.http(&format!("/v1/executions/{task_id}")))
            .header("authorization", bearer(Role::Viewer))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            return false;
        }
        let f: Value = r.json().await.unwrap();
        let id = f["record"]["execution_id"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        *found.lock().unwrap() = id.clone();
        !id.is_empty()
    })
    .await;
    assert!(ran, "the approved task was dispatched");
    let execution_id = found.lock().unwrap().clone();
    // GET finds the execution through StackStorm at once; acting on it needs whale's own
    // execution index, which the feedback stage fills a moment later (until then a retry is
    // refused 403 "not in whale's execution index", and audited as refused).
    let indexed = eventually(Duration::from_secs(60), || async {
        let r = http
            .get(env.http("/v1/executions"))
            .header("authorization", bearer(Role::Viewer))
            .send()
            .await
            .unwrap();
        let list: Value = r.json().await.unwrap_or(Value::Null);
        list.as_array()
            .is_some_and(|l| l.iter().any(|x| x["task_id"] == task_id.as_str()))
    })
    .await;
    assert!(indexed, "the execution reached whale's execution index");
    let r = http
        .post(env.http(&format!("/v1/executions/{task_id}/retry")))
        .header("authorization", bearer(Role::Operator))
        .json(&json!({"parameters": {"cmd": "echo retried"}}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retried: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "retry: {retried}");
    let new_execution = retried["execution"]["id"].as_str().unwrap().to_owned();
    assert_ne!(new_execution, execution_id);

    // 3. Drain the cluster from the CLI.
    env.ok(&["clusters", "drain", "default"]);

    // `whale audit --json`: exactly these records, newest first.
    let all = audit_lines(&env, &[]);
    assert_eq!(
        actions(&all),
        [
            "cluster.drain",
            "exec.retry",
            "approval.approve",
            "rules.apply",
            "schemas.apply"
        ],
        "{all:#?}"
    );
    let (drain, retry, approve, apply, schemas) = (&all[0], &all[1], &all[2], &all[3], &all[4]);
    assert!(all.iter().all(|r| r["outcome"] == "ok"), "{all:#?}");

    assert_eq!(approve["who"], "oncall-op");
    assert_eq!(approve["role"], "operator");
    assert_eq!(approve["via"], "http");
    assert!(
        approve["from"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{approve}"
    );
    assert_eq!(approve["target"], json!({"kind": "task", "id": task_id}));
    assert_eq!(approve["event_id"], event_id.as_str());
    assert_eq!(approve["reason"], "disk is full");
    assert_eq!(approve["id"], format!("approval.approve:{task_id}"));

    assert_eq!(retry["who"], "oncall-op");
    assert_eq!(
        retry["target"],
        json!({"kind": "execution", "id": execution_id})
    );
    assert_eq!(retry["task_id"], task_id.as_str());
    assert_eq!(retry["before"], json!({"cmd": "echo disk"}), "{retry}");
    assert_eq!(retry["after"], json!({"cmd": "echo retried"}), "{retry}");
    assert_eq!(retry["details"]["new_execution_id"], new_execution.as_str());

    assert_eq!(apply["who"], "alice");
    assert_eq!(apply["via"], "cli");
    assert!(
        apply["from"].as_str().unwrap().starts_with("alice@"),
        "{apply}"
    );
    assert_eq!(apply["target"], json!({"kind": "rules", "id": version}));
    assert_eq!(apply["before"], json!({"version": null}));
    assert_eq!(apply["after"], json!({"version": version, "rules": 1}));

    assert_eq!(drain["who"], "alice");
    assert_eq!(drain["target"], json!({"kind": "cluster", "id": "default"}));
    assert_eq!(schemas["target"]["kind"], "schemas");
    assert_eq!(schemas["before"]["generic"], Value::Null);
    assert_eq!(schemas["after"]["generic"], 1);

    // Filters.
    assert_eq!(
        actions(&audit_lines(&env, &["--who", "oncall-op"])),
        ["exec.retry", "approval.approve"]
    );
    assert_eq!(
        actions(&audit_lines(&env, &["--action", "approval"])),
        ["approval.approve"]
    );
    assert_eq!(
        actions(&audit_lines(&env, &["--limit", "2"])),
        ["cluster.drain", "exec.retry"]
    );
    let human = String::from_utf8(env.ok(&["audit"]).stdout).unwrap();
    eprintln!("whale audit:\n{human}");
    assert!(human.contains("oncall-op") && human.contains("approval.approve"));

    // The same over HTTP, for a viewer (and not for a producer).
    let r = http
        .get(env.http("/v1/audit?who=oncall-op"))
        .header("authorization", bearer(Role::Viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed: Vec<Value> = r.json().await.unwrap();
    assert_eq!(actions(&listed), ["exec.retry", "approval.approve"]);
    let r = http
        .get(env.http("/v1/audit"))
        .header("authorization", bearer(Role::Producer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A repeated write of the same record (its natural id) is stored once.
    let before = count(&nats, STREAM_AUDIT, "whale.audit.>").await;
    let rec: whale_kernel::audit::Record = serde_json::from_value(approve.clone()).unwrap();
    whale_kernel::audit::record(&nats, &rec).await.unwrap();
    assert_eq!(count(&nats, STREAM_AUDIT, "whale.audit.>").await, before);
    assert_eq!(before, 5);

    // `whale trace` of the approved event shows who approved and the retry.
    let traced = eventually(Duration::from_secs(30), || async {
        let out = env.whale(&["trace", &event_id]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        *found.lock().unwrap() = text.clone();
        text.contains("audit: oncall-op approval.approve") && text.contains("exec.retry")
    })
    .await;
    let text = found.lock().unwrap().clone();
    // Searchable in the index as documents of kind `audit`.
    let out = env.ok(&["events", "search", "oncall-op", "--kind", "audit", "--json"]);
    let hits: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits["total"], 2, "{hits}");
    assert!(
        hits["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["kind"] == "audit" && d["status"] == "ok"),
        "{hits}"
    );
    eprintln!("whale trace:\n{text}");
    assert!(traced, "the trace shows the audit records: {text}");
    assert!(text.contains("reason: disk is full"), "{text}");
}

/// The failing path: with no audit stream (setup not re-run after an upgrade, or it was
/// deleted), an approval is refused with 503 and stays pending, the CLI refuses to apply rules,
/// and after `whale setup` the same approval goes through with its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_audit_stream_nothing_is_done() {
    let mut env = Env::new();
    env.set("WHALE_APPROVAL_SECRET", crate::approvals::SECRET);
    env.prepare();
    let nats = env.connect().await;
    let _w = env.run("approve");
    let mut t = crate::feedback::task("t-audit", "disk-full-cleanup", "ops.clean_disk", &[], false);
    t["approval"] = json!({"timeout_ms": 600_000});
    crate::approvals::hold_task(&nats, &t).await;
    let http = reqwest::Client::new();
    let state = || async {
        let r = http
            .get(env.http("/v1/approvals/t-audit"))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            return String::new();
        }
        let a: Value = r.json().await.unwrap();
        a["state"].as_str().unwrap_or("").to_owned()
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            state().await == "pending"
        })
        .await
    );

    nats.delete_stream(STREAM_AUDIT).await.unwrap();
    let r = http
        .post(env.http("/v1/approvals"))
        .json(&json!({"id": "t-audit", "decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["audit"], "unavailable", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("whale setup"),
        "{body}"
    );
    assert_eq!(state().await, "pending", "nothing was decided");

    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("r.yaml"), RULE).unwrap();
    let out = env
        .whale(&["rules", "apply", rules.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("audit trail is unavailable"), "{err}");
    let shown = String::from_utf8(env.ok(&["rules", "show"]).stdout).unwrap();
    assert!(shown.contains("no rule set applied"), "{shown}");

    env.ok(&["setup"]);
    let r = http
        .post(env.http("/v1/approvals"))
        .json(&json!({"id": "t-audit", "decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let all = audit_lines(&env, &[]);
    assert_eq!(actions(&all), ["approval.approve"], "{all:#?}");
    assert_eq!(all[0]["who"], "anonymous");

    // A signed link's form POST is audited too: the link's holder, via link, from its address.
    let mut t = crate::feedback::task("t-link", "disk-full-cleanup", "ops.clean_disk", &[], false);
    t["approval"] = json!({"timeout_ms": 600_000});
    crate::approvals::hold_task(&nats, &t).await;
    let pending = eventually(Duration::from_secs(30), || async {
        http.get(env.http("/v1/approvals/t-link"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(pending);
    let a: Value = http
        .get(env.http("/v1/approvals/t-link"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = whale_approve::link::url(
        &env.http(""),
        &whale_kernel::Secret::new(crate::approvals::SECRET),
        "t-link",
        "deny",
        a["link_expires_unix"].as_i64().unwrap(),
        a["nonce"].as_str().unwrap(),
    );
    let r = crate::approvals::post_link(&url, None).await;
    assert_eq!(r.status(), 200);
    let all = audit_lines(&env, &[]);
    assert_eq!(
        actions(&all),
        ["approval.deny", "approval.approve"],
        "{all:#?}"
    );
    assert_eq!(all[0]["who"], "link:chat");
    assert_eq!(all[0]["via"], "link");
    assert!(all[0]["from"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(all[0]["target"], json!({"kind": "task", "id": "t-link"}));
}

/// `[audit] retention` and `max_bytes` are what `whale setup` gives the stream, on creation and
/// on a later change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("whale.toml");
    std::fs::write(
        &cfg,
        "[audit]\nretention = \"30d\"\nmax_bytes = 104857600\n",
    )
    .unwrap();
    let mut env = Env::new();
    env.ok(&["setup"]);
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    let out: Value = serde_json::from_slice(&env.ok(&["setup", "--json"]).stdout).unwrap();
    let item = out
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == STREAM_AUDIT)
        .unwrap()
        .clone();
    assert_eq!(item["change"], "updated");
    let nats = env.connect().await;
    let info = nats.stream_info(STREAM_AUDIT).await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(info.config.max_bytes, 104_857_600);
}
