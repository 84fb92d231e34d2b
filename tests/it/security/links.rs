//! Security regressions (approval links): issue 13's findings "approval links decide on GET and
//! HEAD" (so chat unfurlers and mail scanners approved tasks by previewing them) and
//! "`WHALE_APPROVAL_SECRET` has no minimum strength", against a real `whale run` with the approve
//! stage, NATS and a webhook channel.
//!
//! - GET and HEAD of a valid link answer a confirmation page and decide nothing;
//! - only a POST of the signed token decides, once; a used, tampered or expired link, or a POST
//!   from another site's page, decides nothing and says why (410, 403, 410, 403);
//! - `whale run` refuses a short or placeholder secret at start.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use whale_kernel::subjects::STREAM_PIPE;

use crate::approvals::{decision, gate_env, message, post_link, SECRET};
use crate::harness::*;

/// Holds a task whose parameters hold markup, as throttle does.
async fn hold_markup(nats: &whale_kernel::Nats, id: &str) {
    let mut t = crate::feedback::task(id, "disk-full-cleanup", "ops.clean_disk", &[], false);
    t["parameters"] = json!({"host": "web-1", "cmd": "<script>alert('x')</script> & rm"});
    t["approval"] = json!({"timeout_ms": 600_000, "channel": "oncall"});
    crate::approvals::hold_task(nats, &t).await;
}

/// The approval's state as `whale approvals list --all --json` shows it.
fn state(env: &Env, id: &str) -> String {
    String::from_utf8_lossy(&env.ok(&["approvals", "list", "--all", "--json"]).stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|a| a["task"]["task_id"] == id)
        .map(|a| a["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

async fn decisions(nats: &whale_kernel::Nats, id: &str) -> usize {
    read_all(nats, STREAM_PIPE, "whale.pipe.decision")
        .await
        .iter()
        .filter(|d| d["task"]["task_id"] == id)
        .count()
}

/// Finding "approval links decide on GET and HEAD": previews (GET, HEAD, repeated, of both links)
/// leave the approval pending and get a hardened confirmation page; the POST of the signed token
/// decides once and records the link's channel as who; a second POST is refused with 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_decide_nothing_and_the_post_decides_once() {
    let (env, recv, _dir) = gate_env("").await;
    let nats = env.connect().await;
    let _w = env.run("approve,feedback");
    let http = reqwest::Client::new();
    hold_markup(&nats, "t-preview").await;
    let m = message(&recv, "t-preview").await;
    let approve = m["approve_url"].as_str().unwrap().to_owned();
    let deny = m["deny_url"].as_str().unwrap().to_owned();

    for url in [&approve, &deny, &approve] {
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["referrer-policy"], "no-referrer");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none';") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        let page = r.text().await.unwrap();
        let action = if url == &approve { "approve" } else { "deny" };
        let sig = url.split("sig=").nth(1).unwrap();
        assert!(
            page.contains(&format!("<form method=post action=\"{action}\">"))
                && page.contains(&format!("name=sig value=\"{sig}\""))
                && page.contains("name=exp value=")
                && page.contains("t-preview")
                && page.contains("disk-full-cleanup")
                && page.contains("ops.clean_disk"),
            "{page}"
        );
        // The parameters are shown, escaped: no markup of the event reaches the page.
        assert!(
            page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; rm")
                && !page.contains("<script"),
            "{page}"
        );
        let head = http.head(url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["x-frame-options"], "DENY");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(state(&env, "t-preview"), "pending");
    assert_eq!(decisions(&nats, "t-preview").await, 0);
    eprintln!("links: 3 GET + 3 HEAD of a valid link: still pending, 0 decisions");

    // The form's POST, from the page itself (the browser sends `Origin: null` under
    // no-referrer), decides; the public URL's own origin is accepted as well.
    let r = post_link(&approve, Some("null")).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Approved"));
    assert_eq!(state(&env, "t-preview"), "approved");
    let again = post_link(&approve, Some(&env.http(""))).await;
    assert_eq!(again.status(), 410);
    let text = again.text().await.unwrap();
    assert!(
        text.contains("this link is used") && text.contains("already approved by link:oncall"),
        "{text}"
    );
    assert_eq!(post_link(&deny, None).await.status(), 410);
    let g = http.get(&approve).send().await.unwrap();
    assert_eq!(g.status(), 410);
    assert!(g.text().await.unwrap().contains("Nothing was decided"));
    let d = decision(&nats, "t-preview").await.unwrap();
    assert_eq!(
        (d["decision"].as_str(), d["by"].as_str(), d["via"].as_str()),
        (Some("approved"), Some("link:oncall"), Some("link"))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(decisions(&nats, "t-preview").await, 1);
}

/// Finding "approval links decide on GET and HEAD" (refusals): a tampered signature is 403, a
/// POST from another site's page is 403 even with a valid token, a name sent with the form is
/// not trusted; none of them decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_links_and_foreign_origins_decide_nothing() {
    let (env, recv, _dir) = gate_env("").await;
    let nats = env.connect().await;
    let _w = env.run("approve,feedback");
    let http = reqwest::Client::new();
    hold_markup(&nats, "t-csrf").await;
    let approve = message(&recv, "t-csrf").await["approve_url"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut bad = approve.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    assert_eq!(http.get(&bad).send().await.unwrap().status(), 403);
    let r = post_link(&bad, None).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("bad signature"));
    let unsigned = approve.split('?').next().unwrap();
    assert_eq!(post_link(unsigned, None).await.status(), 403);

    for origin in ["https://evil.example", "http://127.0.0.1:1"] {
        let r = post_link(&approve, Some(origin)).await;
        assert_eq!(r.status(), 403, "{origin}");
        assert!(r.text().await.unwrap().contains("another site"));
    }
    assert_eq!(state(&env, "t-csrf"), "pending");

    // A `by` in the form is not who decided.
    let (path, token) = approve.split_once('?').unwrap();
    let r = http
        .post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-user", "security-team@corp")
        .body(format!("{token}&by=security-team%40corp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d = decision(&nats, "t-csrf").await.unwrap();
    assert_eq!(d["by"], "link:oncall", "{d}");
    assert_eq!(decisions(&nats, "t-csrf").await, 1);
}

/// Finding "approval links decide on GET and HEAD" (expiry): an expired link is 410 on GET and
/// POST and decides nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_decides_nothing() {
    let (env, recv, _dir) = gate_env("\n[approvals]\nlink_ttl = \"1s\"\n").await;
    let nats = env.connect().await;
    let _w = env.run("approve,feedback");
    hold_markup(&nats, "t-expired").await;
    let approve = message(&recv, "t-expired").await["approve_url"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let g = reqwest::get(&approve).await.unwrap();
    assert_eq!(g.status(), 410);
    assert!(g.text().await.unwrap().contains("expired"));
    let p = post_link(&approve, None).await;
    assert_eq!(p.status(), 410);
    assert!(p.text().await.unwrap().contains("expired"));
    assert_eq!(state(&env, "t-expired"), "pending");
    assert_eq!(decisions(&nats, "t-expired").await, 0);
}

/// `whale run --stages approve` with `secret`: its exit status and stderr (killed after 60 s).
fn run_with_secret(env: &Env, secret: &str) -> (Option<i32>, String) {
    let mut child = env
        .whale(&["run", "--stages", "approve"])
        .env("WHALE_APPROVAL_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (status.code(), String::from_utf8_lossy(&out.stderr).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (None, String::from_utf8_lossy(&out.stderr).into())
}

/// Finding "`WHALE_APPROVAL_SECRET` has no minimum strength": `whale run` refuses a short secret,
/// a placeholder and the value shipped in deploy/k8s, with how to make a good one; a generated
/// one starts.
#[test]
fn a_weak_or_placeholder_secret_refuses_to_start() {
    let mut env = Env::new();
    env.prepare();
    let shipped = std::fs::read_to_string(repo().join("deploy/k8s/base/secret.yaml")).unwrap();
    let shipped = shipped
        .lines()
        .find_map(|l| l.trim().strip_prefix("WHALE_APPROVAL_SECRET:"))
        .and_then(|v| v.split('"').nth(1))
        .expect("deploy/k8s/base/secret.yaml sets WHALE_APPROVAL_SECRET")
        .to_owned();
    for secret in [
        "approval-test-secret",
        "changeme-changeme-changeme-changeme-1",
        "my-approval-link-signing-secret-2026",
        shipped.as_str(),
    ] {
        let (code, stderr) = run_with_secret(&env, secret);
        assert_eq!(code, Some(1), "{secret}: {stderr}");
        assert!(
            stderr.contains("$WHALE_APPROVAL_SECRET")
                && stderr.contains("openssl rand -hex 32")
                && !stderr.contains(secret),
            "{secret}: {stderr}"
        );
        eprintln!(
            "links: secret of {} bytes refused: {}",
            secret.len(),
            stderr.trim()
        );
    }
    env.set("WHALE_APPROVAL_SECRET", SECRET);
    let mut w = env.run("approve");
    assert!(w.exited().is_none());
    assert!(w.terminate());
}
