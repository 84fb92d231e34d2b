//! Issue 13 "a proxy identity header is trusted only from configured proxy addresses", against
//! the real `whale run`: requests from 127.0.0.1 (listed in `auth.trusted_proxies`) are
//! authenticated by `X-Forwarded-User` and their client address comes from `X-Forwarded-For`;
//! the same headers from 127.0.0.2 (not listed) are ignored.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// Trusted peer (127.0.0.1) vs untrusted peer (127.0.0.2): the identity header and
/// X-Forwarded-For are believed only from the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_identity_is_believed_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("whale.toml");
    std::fs::write(
        &cfg,
        "[auth]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.20.0.0/16\"]\n\
         proxy_user_header = \"X-Forwarded-User\"\nproxy_role = \"viewer\"\n\
         proxy_roles = { \"alice\" = \"operator\" }\n",
    )
    .unwrap();
    let mut env = Env::new();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.prepare();
    let log = dir.path().join("whale.log");
    let _w = env.run_logged("approve", &log).await;
    let trusted = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))
        .build()
        .unwrap();
    let untrusted = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();

    // Reading as a proxy-authenticated viewer.
    let r = trusted
        .get(env.http("/v1/approvals"))
        .header("x-forwarded-user", "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "bob via the trusted proxy reads");
    let r = untrusted
        .get(env.http("/v1/approvals"))
        .header("x-forwarded-user", "bob")
        .header("x-forwarded-for", "198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the header from an unlisted peer is ignored"
    );
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("trusted_proxies"),
        "{body}"
    );
    let r = untrusted
        .get(env.http("/v1/approvals"))
        .header("x-forwarded-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "alice from an unlisted peer: nobody");

    // A held task: bob (viewer) may not decide it; alice (operator) does, recorded by name.
    let nats = env.connect().await;
    let mut t = crate::feedback::task("t-proxy", "disk-full-cleanup", "ops.clean_disk", &[], false);
    t["approval"] = json!({"timeout_ms": 600_000});
    crate::approvals::hold_task(&nats, &t).await;
    let pending = eventually(Duration::from_secs(30), || async {
        trusted
            .get(env.http("/v1/approvals/t-proxy"))
            .header("x-forwarded-user", "bob")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(pending, "the approval was stored");
    let decide = |c: &reqwest::Client, user: &str, xff: &str| {
        c.post(env.http("/v1/approvals"))
            .header("x-forwarded-user", user)
            .header("x-forwarded-for", xff)
            .json(&json!({"id": "t-proxy", "decision": "approve"}))
            .send()
    };
    let r = decide(&trusted, "bob", "203.0.113.7, 10.20.1.1")
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "bob is a viewer");
    let r = decide(&untrusted, "alice", "198.51.100.9").await.unwrap();
    assert_eq!(r.status(), 401, "alice's name from an unlisted peer");
    let r = decide(&trusted, "alice", "203.0.113.8").await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let a: Value = trusted
        .get(env.http("/v1/approvals/t-proxy"))
        .header("x-forwarded-user", "bob")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["decided_by"], "proxy:alice", "{a}");

    // "From where": through the trusted proxy, the nearest untrusted X-Forwarded-For hop
    // (10.20.1.1 is itself a listed proxy); from the unlisted peer, the peer itself.
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_owned);
    let bob = line("principal=proxy:bob").expect("bob's refusal is logged");
    assert!(bob.contains("from=203.0.113.7"), "{bob}");
    let refused = text
        .lines()
        .filter(|l| l.contains("refused (401)"))
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 3, "{text}");
    for l in refused {
        assert!(l.contains("from=127.0.0.2"), "{l}");
        assert!(!l.contains("198.51.100.9"), "{l}");
    }
}
