//! The approval gate against real NATS and a local webhook receiver: held tasks are published
//! straight onto `whale.pipe.approval` (as throttle does); the approval message reaches the
//! channel through the feedback stage's notifier, and only approved tasks reach
//! `whale.pipe.admitted.*`, once.

use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::subjects::STREAM_PIPE;

use crate::feedback::{write_config, Receiver};
use crate::harness::*;

/// A link-signing secret strong enough for `whale run` (as `openssl rand -hex 32` makes).
pub(crate) const SECRET: &str = "3f8a1c9e5b7d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a";

/// A link's confirmation form as a browser sends it: its `exp` and `sig` POSTed form-encoded to
/// the link's path.
pub(crate) async fn post_link(url: &str, origin: Option<&str>) -> reqwest::Response {
    let (path, token) = url.split_once('?').unwrap_or((url, ""));
    let mut r = reqwest::Client::new()
        .post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(token.to_owned());
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    r.send().await.unwrap()
}

pub(crate) async fn gate_env(extra: &str) -> (Env, Receiver, tempfile::TempDir) {
    let mut env = Env::new();
    let recv = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &recv,
        &format!(
            "\n[channels.oncall]\ntype = \"webhook\"\nurl = \"{}\"\n{extra}",
            recv.url("/oncall")
        ),
    );
    env.set("WHALE_CONFIG", &cfg);
    env.set("TEST_WECOM_KEY", "k");
    env.set("TEST_SLACK_URL", &recv.url("/slack"));
    env.set("TEST_HOOK_TOKEN", "h");
    env.set("WHALE_APPROVAL_SECRET", SECRET);
    env.prepare();
    (env, recv, dir)
}

/// Publishes a held task as throttle does: `whale.pipe.approval`, msg id `apv:<task id>`.
pub(crate) async fn hold_task(nats: &whale_kernel::Nats, t: &Value) {
    let id = t["task_id"].as_str().expect("a task with a task_id");
    let out = whale_kernel::Output::new(
        "whale.pipe.approval".into(),
        format!("apv:{id}"),
        t.to_string(),
    );
    nats.publish(out).await.unwrap();
}

/// Publishes a held task (on channel `oncall`) as throttle does.
pub(crate) async fn hold(nats: &whale_kernel::Nats, id: &str, timeout_ms: u64) {
    let mut t = crate::feedback::task(id, "disk-full-cleanup", "ops.clean_disk", &[], false);
    t["approval"] = json!({"timeout_ms": timeout_ms, "channel": "oncall"});
    hold_task(nats, &t).await;
}

/// The approval message the channel got for `id`.
pub(crate) async fn message(recv: &Receiver, id: &str) -> Value {
    let found = eventually(Duration::from_secs(30), || async {
        recv.requests("/oncall")
            .iter()
            .any(|r| r.body["task"]["task_id"] == id)
    })
    .await;
    assert!(found, "no approval message for {id}");
    recv.requests("/oncall")
        .into_iter()
        .find(|r| r.body["task"]["task_id"] == id)
        .unwrap()
        .body
}

pub(crate) async fn admitted(nats: &whale_kernel::Nats) -> Vec<String> {
    read_all(nats, STREAM_PIPE, "whale.pipe.admitted.>")
        .await
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) async fn decision(nats: &whale_kernel::Nats, id: &str) -> Option<Value> {
    read_all(nats, STREAM_PIPE, "whale.pipe.decision")
        .await
        .into_iter()
        .find(|d| d["task"]["task_id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_deny_timeout_and_bad_links() {
    let (env, recv, _dir) = gate_env("").await;
    let nats = env.connect().await;
    let mut w = env.run("approve,feedback");
    let http = reqwest::Client::new();
    for id in ["t-link", "t-cli", "t-deny", "t-api"] {
        hold(&nats, id, 600_000).await;
    }

    // The channel's message carries both links and the task.
    let m = message(&recv, "t-link").await;
    assert_eq!(m["kind"], "approval");
    assert!(
        m["text"].as_str().unwrap().contains("Approval needed"),
        "{m}"
    );
    let approve = m["approve_url"].as_str().unwrap().to_owned();
    let deny = m["deny_url"].as_str().unwrap().to_owned();
    assert!(
        approve.starts_with(&env.http("/v1/approvals/t-link/approve?exp="))
            && approve.contains("&sig="),
        "{approve}"
    );

    // Tampered links are refused: another signature, another expiry, another task.
    let mut bad_sig = approve.clone();
    let last = bad_sig.pop().unwrap();
    bad_sig.push(if last == '0' { '1' } else { '0' });
    assert_eq!(http.get(&bad_sig).send().await.unwrap().status(), 403);
    let later = approve.replace("exp=", "exp=9");
    assert_eq!(http.get(&later).send().await.unwrap().status(), 403);
    let other = approve.replace("/t-link/", "/t-cli/");
    assert_eq!(http.get(&other).send().await.unwrap().status(), 403);
    let unsigned = approve.split('?').next().unwrap().to_owned();
    assert_eq!(http.get(&unsigned).send().await.unwrap().status(), 403);

    // Opening the link only shows the confirmation form; its POST approves. The link then is
    // spent, and so is its deny twin.
    let r = http.get(&approve).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<form method=post"));
    let r = post_link(&approve, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Approved"));
    let again = post_link(&approve, None).await;
    assert_eq!(again.status(), 410);
    assert!(again.text().await.unwrap().contains("already approved"));
    assert_eq!(http.get(&approve).send().await.unwrap().status(), 410);
    assert_eq!(post_link(&deny, None).await.status(), 410);
    let d = decision(&nats, "t-link").await.unwrap();
    assert_eq!(
        (d["decision"].as_str(), d["by"].as_str(), d["via"].as_str()),
        (Some("approved"), Some("link:oncall"), Some("link"))
    );

    // Approve via the CLI, with who and why.
    let list: Vec<Value> =
        String::from_utf8_lossy(&env.ok(&["approvals", "list", "--json"]).stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert!(
        list.iter()
            .any(|a| a["task"]["task_id"] == "t-cli" && a["state"] == "pending"),
        "{list:?}"
    );
    let out = env.ok(&[
        "approvals",
        "approve",
        "t-cli",
        "--by",
        "alice",
        "--reason",
        "disk at 97%",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("approved t-cli"));
    let twice = env.whale(&["approvals", "deny", "t-cli"]).output().unwrap();
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already approved by alice"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );

    // Deny via the link, and via the HTTP API.
    let dm = message(&recv, "t-deny").await;
    assert_eq!(
        post_link(dm["deny_url"].as_str().unwrap(), None)
            .await
            .status(),
        200
    );
    let r = http
        .post(env.http("/v1/approvals"))
        .json(&json!({"id": "t-api", "decision": "deny", "reason": "not now", "by": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        http.post(env.http("/v1/approvals/t-api/approve"))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap()
            .status(),
        409
    );

    // A pending approval survives a restart, and its timeout fires in the new worker.
    hold(&nats, "t-timeout", 3_000).await;
    message(&recv, "t-timeout").await;
    w.kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _w = env.run("approve,feedback");
    assert!(
        eventually(Duration::from_secs(30), || async {
            decision(&nats, "t-timeout").await.is_some()
        })
        .await,
        "the timeout fired"
    );
    let d = decision(&nats, "t-timeout").await.unwrap();
    assert_eq!(
        (d["decision"].as_str(), d["by"].as_str(), d["via"].as_str()),
        (Some("expired"), Some("whale"), Some("timeout"))
    );
    let late = env
        .whale(&["approvals", "approve", "t-timeout"])
        .output()
        .unwrap();
    assert!(
        !late.status.success() && String::from_utf8_lossy(&late.stderr).contains("already expired")
    );

    // Every decision is recorded with who made it; only the approved tasks were admitted, once.
    for (id, dec, by) in [
        ("t-cli", "approved", "alice"),
        ("t-deny", "denied", "link:oncall"),
        // The API records the principal (no auth configured: anonymous), not the body's `by`.
        ("t-api", "denied", "anonymous"),
    ] {
        let d = decision(&nats, id)
            .await
            .unwrap_or_else(|| panic!("no decision for {id}"));
        assert_eq!(
            (d["decision"].as_str(), d["by"].as_str()),
            (Some(dec), Some(by)),
            "{d}"
        );
    }
    assert_eq!(
        decision(&nats, "t-cli").await.unwrap()["reason"],
        "disk at 97%"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            admitted(&nats).await.len() >= 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut adm = admitted(&nats).await;
    adm.sort();
    assert_eq!(adm, ["t-cli", "t-link"]);
    assert_eq!(
        count(&nats, STREAM_PIPE, "whale.pipe.admitted.default").await,
        2
    );
    // One approval message per task.
    assert_eq!(recv.requests("/oncall").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_is_refused_but_the_approval_still_waits() {
    let (env, recv, _dir) = gate_env("\n[approvals]\nlink_ttl = \"1s\"\n").await;
    let nats = env.connect().await;
    let _w = env.run("approve,feedback");
    hold(&nats, "t-old-link", 600_000).await;
    let m = message(&recv, "t-old-link").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = reqwest::get(m["approve_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert!(r.text().await.unwrap().contains("expired"));
    let a: Value =
        serde_json::from_slice(&env.ok(&["approvals", "list", "--json"]).stdout).unwrap();
    assert_eq!(a["state"], "pending");
    env.ok(&["approvals", "approve", "t-old-link"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            admitted(&nats).await == ["t-old-link"]
        })
        .await
    );
}
