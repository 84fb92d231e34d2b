//! Security regressions (state): issue 12's findings 8, 10 and part of 12 against a real
//! nats-server, Redis, the StackStorm emulator and the real `whale` binary.
//!
//! - Finding 10: KV state expires (bucket max age, per-message TTL), `whale setup` gives
//!   existing buckets their lifetimes, and exactly-once holds after a claim expired.
//! - Finding 8: no password of a NATS or StackStorm URL in any output or log.
//! - Finding 12: `/readyz` follows Redis, the approvals and executions APIs answer 503 while
//!   NATS is down, `whale rules apply` refuses an empty directory; bodies and schema files are
//!   bounded.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::kv::{Bucket, Ttl};
use whale_kernel::records::{self, Task};
use whale_kernel::subjects::{Pipe, KV_CLAIMS, KV_STATE, STREAM_PIPE};
use whale_kernel::testkit::RedisServer;
use whale_kernel::{Nats, Output};

use crate::dispatch::admit;
use crate::harness::*;

/// Messages stored in a KV bucket's stream (every revision and delete marker counts).
async fn bucket_messages(nats: &Nats, bucket: &str) -> u64 {
    nats.stream_info(&format!("KV_{bucket}"))
        .await
        .expect("bucket stream")
        .state
        .messages
}

/// A task for the `default` cluster that notifies channel `hook`.
fn task(i: usize, run: &str) -> Task {
    let event_id = format!("ev-{run}-{i:04}");
    Task {
        task_id: records::task_id(&event_id, "state-test"),
        event_id,
        event_type: "vm.disk_usage".into(),
        rule: "state-test".into(),
        rule_version: "v1".into(),
        action: "ops.clean_disk".into(),
        parameters: json!({"host": format!("web-{i}")}),
        throttle: None,
        cluster: "default".into(),
        approval: None,
        notify: vec!["hook".into()],
        result_event: false,
        replay: None,
        created: time::OffsetDateTime::now_utc(),
        item: None,
        labels: Default::default(),
    }
}

/// A whale.toml with short lifetimes: the pipe keeps records `lifetime`, claims and the state
/// bucket expire with it. Two clusters on the emulator (`spare` only to be drained), and a
/// webhook channel `hook` (the emulator answers 404: a `failed` marker, still a marker).
fn short_lived_config(dir: &Path, emulator: &str, lifetime: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[nats]
pipe_retention = "{lifetime}"
duplicate_window = "1s"

[state]
executions = "{lifetime}"

[dispatch]
backoff_base = "100ms"
backoff_max = "1s"
request_timeout = "2s"
wait_retry = "300ms"

[feedback]
poll_min = "100ms"
poll_max = "300ms"
notify_attempts = 1

[clusters.default]
url = "{emulator}"
api_key_env = "TEST_ST2_KEY"

[clusters.spare]
url = "{emulator}"
api_key_env = "TEST_ST2_KEY"

[channels.hook]
type = "webhook"
url = "{emulator}/_hook"
"#
    );
    let path = dir.join("whale.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Finding 10: every task used to leave its claim, execution index and markers in KV forever.
/// Now they expire with their lifetimes (here 6 s), the buckets come back to what must stay (a
/// drain), and a task published again after its claim expired creates no second execution:
/// dispatch sees it is older than a claim lives and asks StackStorm by trace tag first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding10_state_expires_and_exactly_once_still_holds() {
    let emu = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = short_lived_config(dir.path(), &emu.url, "6s");
    let mut env = Env::new();
    env.set("TEST_ST2_KEY", "k");
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.ok(&["setup"]);
    let nats = env.connect().await;
    let _w = env.run("dispatch,feedback,approve");

    const N: usize = 20;
    const A: usize = 5;
    let tasks: Vec<Task> = (0..N).map(|i| task(i, "a")).collect();
    admit(&nats, &tasks).await;
    // Approvals that time out after 1 s: kept until then plus the pipe's retention.
    let held: Vec<Task> = (0..A)
        .map(|i| {
            let mut t = task(i, "held");
            t.approval = Some(records::Approval {
                timeout_ms: 1000,
                channel: None,
            });
            t
        })
        .collect();
    for t in &held {
        let out = Output::json(Pipe::Approval.subject(), format!("apr:{}", t.task_id), t);
        nats.publish(out).await.unwrap();
    }
    let approvals = |env: &Env| {
        let out = env.ok(&["approvals", "list", "--all", "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(r#""state":"expired""#))
            .count()
    };
    let timed_out = eventually(Duration::from_secs(20), || async { approvals(&env) == A }).await;
    assert!(
        timed_out,
        "the approvals did not time out: {}",
        approvals(&env)
    );
    let done = eventually(Duration::from_secs(60), || async {
        count(&nats, STREAM_PIPE, &Pipe::Notified.subject()).await >= N as u64
    })
    .await;
    assert!(done, "not every task reached its notification");
    assert_eq!(emu.created().await, N as u64, "one execution per task");
    env.ok(&["clusters", "drain", "spare"]);

    let claims_before = bucket_messages(&nats, KV_CLAIMS).await;
    let state_before = bucket_messages(&nats, KV_STATE).await;
    eprintln!(
        "finding 10: {N} tasks + {A} approvals → whale_claims {claims_before} messages, whale_state {state_before} messages (exec, exec-id, notified per task, approvals, 1 drain)"
    );
    // History 1: one message per key — a claim; exec + exec-id + notified; the approvals (if
    // not yet expired, which takes 1 s + 6 s); plus the drain.
    assert_eq!(claims_before, N as u64, "one claim per task");
    assert!(
        (3 * N as u64 + 2..=3 * N as u64 + 2 + A as u64).contains(&state_before),
        "three keys per task, the approvals, the drain and the console's session key: {state_before}"
    );

    // Past every lifetime: only the drain and the console's session key (kept: removing it signs
    // everyone out) remain, and the pipe no longer holds the tasks.
    let expired = eventually(Duration::from_secs(30), || async {
        bucket_messages(&nats, KV_CLAIMS).await == 0 && bucket_messages(&nats, KV_STATE).await == 2
    })
    .await;
    let claims_after = bucket_messages(&nats, KV_CLAIMS).await;
    let state_after = bucket_messages(&nats, KV_STATE).await;
    eprintln!(
        "finding 10: after the lifetimes → whale_claims {claims_after}, whale_state {state_after}"
    );
    assert!(
        expired,
        "state did not expire: whale_claims {claims_after}, whale_state {state_after}"
    );
    assert_eq!(
        count(&nats, STREAM_PIPE, &Pipe::Admitted.filter()).await,
        0,
        "the task messages are gone from the pipe: nothing can redeliver them"
    );
    let list = env.ok(&["clusters", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let spare = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "spare")
        .unwrap();
    assert_eq!(spare["drained"], true, "a drain never expires: {spare}");
    assert_eq!(approvals(&env), 0, "timed-out approvals are gone");

    // The same task again (by hand, or re-rendered after an outage): its claim is gone, but it
    // is older than a claim lives, so dispatch finds the execution by trace tag.
    admit(&nats, &tasks[..3]).await;
    let seen = eventually(Duration::from_secs(30), || async {
        count(&nats, STREAM_PIPE, &Pipe::Dispatched.subject()).await >= 3
    })
    .await;
    assert!(seen, "the re-published tasks were not handled");
    let recs = read_all(&nats, STREAM_PIPE, &Pipe::Dispatched.subject()).await;
    assert_eq!(
        emu.created().await,
        N as u64,
        "a task published again after its claim expired created a second execution"
    );
    let stats = emu.stats().await;
    eprintln!("finding 10: re-published 3 expired tasks → {} Dispatched records, emulator created {} (reconciled by trace tag)", recs.len(), stats["executions_created"]);
}

/// Finding 10: buckets made by an older `whale setup` (history 5, no max age) get their
/// lifetimes from `whale setup`, reported as updated; an existing drain is pinned (never
/// expires) before the state bucket gets its max age; a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding10_setup_applies_lifetimes_to_existing_buckets() {
    let env = Env::new();
    let nats = env.connect().await;
    for bucket in [KV_CLAIMS, KV_STATE] {
        nats.create_bucket_raw(bucket, 5).await.unwrap();
    }
    let state = Bucket::open(&nats, KV_STATE).await.unwrap();
    state
        .put("drain.east", r#"{"drained":true}"#.into(), Ttl::Bucket)
        .await
        .unwrap();
    state
        .put("exec.t-old", "{}".into(), Ttl::Bucket)
        .await
        .unwrap();

    let out = env.ok(&["setup", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let change = |name: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "kv" && i["name"] == name)
            .map(|i| i["change"].as_str().unwrap().to_owned())
    };
    assert_eq!(change(KV_CLAIMS).as_deref(), Some("updated"), "{report}");
    assert_eq!(change(KV_STATE).as_deref(), Some("updated"), "{report}");

    let c = nats
        .stream_info(&format!("KV_{KV_CLAIMS}"))
        .await
        .unwrap()
        .config;
    assert_eq!(
        c.max_age,
        Duration::from_secs(24 * 3600),
        "claims live as long as the pipe"
    );
    assert_eq!(c.max_messages_per_subject, 1);
    let c = nats
        .stream_info(&format!("KV_{KV_STATE}"))
        .await
        .unwrap()
        .config;
    assert_eq!(c.max_age, Duration::from_secs(7 * 24 * 3600));
    assert!(c.allow_message_ttl, "per-message TTL allowed");
    assert_eq!(c.max_messages_per_subject, 1);
    let drain = nats
        .last_stored_message(
            &format!("KV_{KV_STATE}"),
            &format!("$KV.{KV_STATE}.drain.east"),
        )
        .await
        .unwrap();
    assert_eq!(
        drain.headers.get("Nats-TTL").map(|v| v.as_str()),
        Some("never"),
        "the existing drain was pinned"
    );

    let out = env.ok(&["setup", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["change"] == "unchanged"),
        "a second setup changes nothing: {report}"
    );
}

/// Finding 8: `whale status` against a dead NATS URL with user:password, and `whale clusters
/// list` with a StackStorm URL holding a password, never print the password — not on stdout,
/// not with --json, not in the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding8_urls_are_printed_without_passwords() {
    const PW: &str = "hunter2-s3cret";
    let env = Env::new();
    let dead = free_port();
    for args in [vec!["status"], vec!["status", "--json"]] {
        let out = env
            .whale(&args)
            .env(
                "WHALE_NATS_URL",
                format!("nats://whale:{PW}@127.0.0.1:{dead}"),
            )
            .env("WHALE_LOG", "debug")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "status against a dead server must fail"
        );
        assert!(
            !all.contains(PW),
            "password printed by whale {args:?}:\n{all}"
        );
        assert!(
            all.contains("whale:***@127.0.0.1"),
            "the URL is still named, redacted: {all}"
        );
    }

    env.ok(&["setup"]);
    let dead_st2 = free_port();
    let st2 = format!("http://admin:{PW}@127.0.0.1:{dead_st2}");
    for args in [vec!["clusters", "list"], vec!["clusters", "list", "--json"]] {
        let out = env
            .whale(&args)
            .env("WHALE_ST2_URL", &st2)
            .env("WHALE_ST2_API_KEY", "k")
            .env("WHALE_LOG", "debug")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "clusters list: {all}");
        assert!(
            !all.contains(PW),
            "password printed by whale {args:?}:\n{all}"
        );
        assert!(all.contains("admin:***@127.0.0.1"), "{all}");
        assert!(
            all.contains("down: ") || all.contains(r#""ok": false"#),
            "the dead cluster is reported down: {all}"
        );
    }
}

/// Finding 12: `/readyz` said ready while Redis was down under a throttle stage. Now it names
/// Redis and answers 503 while Redis is down, 200 when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding12_readyz_follows_redis() {
    let mut redis = RedisServer::start();
    let mut env = Env::new();
    env.set("WHALE_REDIS_URL", &redis.url());
    env.ok(&["setup"]);
    let _w = env.run("throttle");
    let get = || async {
        let r = reqwest::get(env.http("/readyz")).await.unwrap();
        let code = r.status().as_u16();
        (code, r.json::<Value>().await.unwrap())
    };
    let (code, body) = get().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["dependencies"]["redis"], "up", "{body}");
    redis.stop();
    let (code, body) = get().await;
    assert_eq!(code, 503, "ready while Redis is down: {body}");
    assert_eq!(body["ready"], false);
    assert!(
        body["dependencies"]["redis"]
            .as_str()
            .unwrap_or("")
            .starts_with("down"),
        "{body}"
    );
    redis.start_again();
    let back = eventually(Duration::from_secs(15), || async { get().await.0 == 200 }).await;
    assert!(back, "not ready again after Redis came back");
}

/// Finding 12: with NATS down the approvals API answered 500. Now approvals and executions
/// answer 503 with a JSON body and `Retry-After` (nothing was decided or changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding12_operator_apis_answer_503_while_nats_is_down() {
    let emu = Emulator::start(&["--any-action"]);
    let mut env = Env::new();
    env.set("WHALE_ST2_URL", &emu.url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.ok(&["setup"]);
    let _w = env.run("approve,feedback");
    let c = reqwest::Client::new();
    let ok = c.get(env.http("/v1/approvals")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    env.nats.stop();
    for (method, path, body) in [
        ("GET", "/v1/approvals", None),
        ("GET", "/v1/approvals/t-x", None),
        (
            "POST",
            "/v1/approvals/t-x/approve",
            Some(json!({"reason": "ok"})),
        ),
        ("GET", "/v1/executions", None),
        ("GET", "/v1/executions/t-x", None),
    ] {
        let req = match method {
            "GET" => c.get(env.http(path)),
            _ => c.post(env.http(path)).json(&body),
        };
        let r = req.timeout(Duration::from_secs(30)).send().await.unwrap();
        let code = r.status().as_u16();
        let retry = r.headers().get("retry-after").is_some();
        let text = r.text().await.unwrap();
        assert_eq!(code, 503, "{method} {path} while NATS is down: {text}");
        assert!(retry, "{method} {path}: Retry-After");
        let v: Value = serde_json::from_str(&text).expect("a JSON body");
        assert!(v["error"].as_str().unwrap().contains("NATS"), "{text}");
    }
}

/// Finding 12: `whale rules apply` on an empty directory replaced every rule. Now it is refused
/// (exit 3) with how many rules would go, unless `--allow-empty`.
#[test]
fn finding12_rules_apply_refuses_an_empty_directory() {
    let env = Env::new();
    env.ok(&["setup"]);
    let applied = env.ok(&["rules", "apply", "pipelines", "--json"]);
    let applied: Value = serde_json::from_slice(&applied.stdout).unwrap();
    let rules = applied["rules"].as_u64().unwrap();
    assert!(rules > 0, "pipelines holds rules");
    let version = |env: &Env| {
        let out = env.ok(&["rules", "show", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["version"].as_str().unwrap().to_owned()
    };
    let before = version(&env);
    let empty = tempfile::tempdir().unwrap();
    let out = env
        .whale(&["rules", "apply", empty.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("remove all {rules} active rule(s)"))
            && err.contains("--allow-empty"),
        "{err}"
    );
    assert_eq!(version(&env), before, "nothing was applied");
    let out = env.ok(&[
        "rules",
        "apply",
        empty.path().to_str().unwrap(),
        "--allow-empty",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rules"], 0, "applied on purpose: {v}");
    assert_ne!(version(&env), before);
}

/// Bodies of the approvals and executions APIs, and schema files, are bounded in size and depth
/// with an answer naming the limit (they were parsed whole, up to axum's 2 MB, at any depth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_bodies_and_schema_files_are_bounded() {
    let emu = Emulator::start(&["--any-action"]);
    let mut env = Env::new();
    env.set("WHALE_ST2_URL", &emu.url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.ok(&["setup"]);
    let _w = env.run("approve,feedback");
    let c = reqwest::Client::new();
    let big = json!({"id": "t-x", "decision": "approve", "reason": "x".repeat(100 * 1024)});
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    for (path, body, code, limit) in [
        ("/v1/approvals", big.to_string(), 413, "api.max_body_bytes"),
        (
            "/v1/approvals/t-x/approve",
            big.to_string(),
            413,
            "api.max_body_bytes",
        ),
        (
            "/v1/approvals",
            format!(r#"{{"id":"t-x","x":{deep}}}"#),
            400,
            "api.max_depth",
        ),
        (
            "/v1/executions/t-x/retry",
            format!(r#"{{"parameters":{deep}}}"#),
            400,
            "api.max_depth",
        ),
        (
            "/v1/executions/t-x/retry",
            format!(r#"{{"parameters":{}}}"#, "[".repeat(500)),
            400,
            "api.max_depth",
        ),
    ] {
        let r = c
            .post(env.http(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, code, "{path}: {text}");
        let v: Value = serde_json::from_str(&text).expect("a JSON body");
        assert!(
            v["error"].as_str().unwrap().contains(limit),
            "{path}: {text}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let huge = json!({"type": "object", "description": "x".repeat(600 * 1024)});
    std::fs::write(dir.path().join("vm.big.json"), huge.to_string()).unwrap();
    let out = env
        .whale(&["schemas", "apply", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("api.max_schema_bytes"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("vm.big.json")).unwrap();
    let mut schema = json!({"type": "object"});
    for _ in 0..40 {
        schema = json!({"type": "object", "properties": {"a": schema}});
    }
    std::fs::write(dir.path().join("vm.deep.json"), schema.to_string()).unwrap();
    let out = env
        .whale(&["schemas", "apply", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("api.max_schema_depth"),
        "{err}"
    );
}
