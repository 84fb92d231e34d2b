//! Security regressions (NATS permissions): issue 13's finding "the shipped nats.conf has one
//! all-powerful user" against a real nats-server running the `authorization` block of
//! deploy/nats/nats.conf itself, the real `whale` binary and the StackStorm emulator.
//!
//! - `whale` runs setup, ingest → validate and dispatch with its own user.
//! - `producer` can publish events, and nothing else: no task record on `whale.pipe.>`, no KV
//!   write, no JetStream API, no reading events.
//! - `tap` can read accepted events, not the pipe, and publish nothing.
//!
//! Each refusal is observed twice: the message never lands (stream counts, KV, the emulator)
//! and the server reports a `Permissions Violation` (the client's error callback and the
//! server's log). `--nocapture` prints the (user, action, expected, got) table.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use whale_kernel::config::{NatsConfig, Secret};
use whale_kernel::records::{self, Task};
use whale_kernel::subjects::{Pipe, KV_STATE, STREAM_EVENTS, STREAM_INGEST, STREAM_PIPE};
use whale_kernel::Nats;

use crate::dispatch::admit;
use crate::harness::*;

const PASSWORDS: [(&str, &str); 3] = [
    ("NATS_WHALE_PASSWORD", "pw-whale-test"),
    ("NATS_PRODUCER_PASSWORD", "pw-producer-test"),
    ("NATS_TAP_PASSWORD", "pw-tap-test"),
];

/// The `authorization { ... }` block of the shipped deploy/nats/nats.conf (to its closing brace).
fn shipped_authorization() -> String {
    let text = std::fs::read_to_string(repo().join("deploy/nats/nats.conf")).expect("nats.conf");
    let start = text
        .find("\nauthorization {")
        .expect("deploy/nats/nats.conf has an authorization block")
        + 1;
    let mut depth = 0usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return text[start..start + i + 1].to_owned();
                }
            }
            _ => {}
        }
    }
    panic!("the authorization block of deploy/nats/nats.conf is not closed");
}

/// A plain async-nats client as `user`, recording the server's errors (permission violations).
async fn client(
    url: &str,
    user: &str,
    password: &str,
    inbox: Option<&str>,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), password.into())
        .event_callback(move |ev| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = ev {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        });
    if let Some(prefix) = inbox {
        opts = opts.custom_inbox_prefix(prefix);
    }
    let c = opts.connect(url).await.expect("connect");
    (c, errors)
}

/// Waits up to 5 s for a permission violation naming `what` among a client's errors.
async fn violation(errors: &Arc<Mutex<Vec<String>>>, what: &str) -> bool {
    let what = what.to_lowercase();
    eventually(Duration::from_secs(5), || async {
        errors.lock().unwrap().iter().any(|e| {
            let e = e.to_lowercase();
            e.contains("permissions violation") && e.contains(&what)
        })
    })
    .await
}

fn server_log(nats: &NatsServer) -> String {
    std::fs::read_to_string(nats.log_path()).unwrap_or_default()
}

/// The server's log has a permission violation of `user` for `what`; nats-server 2.11+ writes
/// `"$G/user:producer" - Publish Violation - Subject "whale.pipe.admitted.default"`.
fn logged(nats: &NatsServer, user: &str, what: &str) -> bool {
    let user = format!("/user:{user}\"");
    server_log(nats)
        .lines()
        .any(|l| l.contains("Violation") && l.contains(what) && l.contains(&user))
}

/// The next message of `sub` within `wait`, if any.
async fn next(sub: &mut async_nats::Subscriber, wait: Duration) -> Option<async_nats::Message> {
    tokio::time::timeout(wait, sub.next()).await.ok().flatten()
}

fn event(id: &str) -> Bytes {
    Bytes::from(
        json!({"id": id, "event_type": "generic", "source": "test/natsperm",
               "detail": {"message": "permissions", "severity": "info"}})
        .to_string(),
    )
}

fn task(event_id: &str) -> Task {
    Task {
        task_id: records::task_id(event_id, "natsperm"),
        event_id: event_id.into(),
        event_type: "generic".into(),
        rule: "natsperm".into(),
        rule_version: "v1".into(),
        action: "ops.clean_disk".into(),
        parameters: json!({"host": "web-1"}),
        throttle: None,
        cluster: "default".into(),
        approval: None,
        notify: Vec::new(),
        result_event: false,
        replay: None,
        created: time::OffsetDateTime::now_utc(),
        item: None,
        labels: Default::default(),
    }
}

/// The (user, action, expected, got) rows for the lead's report.
struct Table(Vec<[String; 4]>);

impl Table {
    fn row(&mut self, user: &str, action: &str, expected: &str, ok: bool, got: String) {
        let got = if ok { got } else { format!("{got}  <-- WRONG") };
        self.0
            .push([user.into(), action.into(), expected.into(), got]);
    }
}

/// Printed when the test ends, passed or failed (`--nocapture` shows it).
impl Drop for Table {
    fn drop(&mut self) {
        let w: Vec<usize> = (0..4)
            .map(|i| self.0.iter().map(|r| r[i].len()).max().unwrap_or(0).max(8))
            .collect();
        eprintln!(
            "\n{:<w0$}  {:<w1$}  {:<w2$}  got",
            "user",
            "action",
            "expected",
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
        for r in &self.0 {
            eprintln!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2]
            );
        }
    }
}

/// Issue 13, NATS permissions: the shipped users on a real server; whale works with its user,
/// a producer can only publish events, a tap can only read events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_nats_users_have_only_their_permissions() {
    let server = NatsServer::start_with_config(&shipped_authorization(), &PASSWORDS);
    let url = server.url();
    let st2 = Emulator::start(&["--any-action"]);
    let mut env = Env::on(server);
    env.set("WHALE_NATS_USER", "whale");
    env.set("WHALE_NATS_PASSWORD", PASSWORDS[0].1);
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", "k");
    let mut t = Table(Vec::new());

    // whale: setup, schemas, then validate and dispatch running as `whale`.
    env.prepare();
    t.row(
        "whale",
        "whale setup + schemas apply",
        "ok",
        true,
        "ok".into(),
    );
    let _worker = env.run("validate,dispatch");
    let whale = Nats::connect(
        &NatsConfig {
            urls: vec![url.clone()],
            user: Some("whale".into()),
            password: Some(Secret::new(PASSWORDS[0].1.to_owned())),
            ..Default::default()
        },
        "natsperm-test",
    )
    .await
    .expect("whale connects with user/password");

    // tap: subscriptions first, so they see what follows.
    let (tap, tap_errors) = client(&url, "tap", PASSWORDS[2].1, None).await;
    let mut tap_events = tap.subscribe("whale.events.>").await.unwrap();
    let mut tap_pipe = tap.subscribe("whale.pipe.>").await.unwrap();
    // producer: acks on its own inbox prefix.
    let (producer, producer_errors) =
        client(&url, "producer", PASSWORDS[1].1, Some("_INBOX_producer")).await;
    let mut producer_events = producer.subscribe("whale.events.>").await.unwrap();
    tap.flush().await.unwrap();
    producer.flush().await.unwrap();

    // producer publishes an event with a JetStream ack; validate accepts it.
    let pjs = jetstream::new(producer.clone());
    let ack = pjs
        .publish("whale.in.generic", event("natsperm-1"))
        .await
        .expect("publish")
        .await;
    t.row(
        "producer",
        "JetStream publish whale.in.generic (acked)",
        "ok",
        ack.is_ok(),
        match &ack {
            Ok(a) => format!("ok, {} seq {}", a.stream, a.sequence),
            Err(e) => format!("error: {e}"),
        },
    );
    assert!(ack.is_ok(), "producer publish to whale.in.generic: {ack:?}");
    let accepted = eventually(Duration::from_secs(20), || async {
        count(&whale, STREAM_EVENTS, "whale.events.generic").await >= 1
    })
    .await;
    t.row(
        "producer",
        "event accepted by validate",
        "ok",
        accepted,
        format!(
            "{} in WHALE_EVENTS",
            count(&whale, STREAM_EVENTS, "whale.events.generic").await
        ),
    );
    assert!(accepted, "the producer's event never reached WHALE_EVENTS");

    // tap receives it with a core subscription.
    let got = next(&mut tap_events, Duration::from_secs(5)).await;
    t.row(
        "tap",
        "subscribe whale.events.>",
        "receives",
        got.is_some(),
        match &got {
            Some(m) => format!("received {}", m.subject),
            None => "nothing".into(),
        },
    );
    assert!(got.is_some(), "tap did not receive the accepted event");

    // producer publishes a task record straight to dispatch: refused.
    let forged = serde_json::to_vec(&task("natsperm-forged")).unwrap();
    producer
        .publish("whale.pipe.admitted.default", forged.clone().into())
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let refused = violation(&producer_errors, "whale.pipe.admitted.default").await;
    let admitted = count(&whale, STREAM_PIPE, "whale.pipe.admitted.>").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let created = st2.created().await;
    let ok = refused && admitted == 0 && created == 0;
    t.row(
        "producer",
        "publish task to whale.pipe.admitted.default",
        "refused",
        ok,
        format!("violation={refused}, {admitted} in WHALE_PIPE, {created} st2 executions"),
    );
    assert!(ok, "a producer's forged task was not refused");

    // producer writes KV: refused, the key does not exist.
    producer
        .publish(format!("$KV.{KV_STATE}.natsperm"), "x".into())
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let refused = violation(&producer_errors, &format!("$KV.{KV_STATE}.natsperm")).await;
    let kv = whale_kernel::kv::Bucket::open(&whale, KV_STATE)
        .await
        .unwrap();
    let stored = kv.get("natsperm").await.unwrap();
    let ok = refused && stored.is_none();
    t.row(
        "producer",
        "publish $KV.whale_state.natsperm",
        "refused",
        ok,
        format!("violation={refused}, key stored={}", stored.is_some()),
    );
    assert!(ok, "a producer wrote KV");

    // producer uses the JetStream API (purge the events): refused, no answer, nothing purged.
    let before = count(&whale, STREAM_EVENTS, "whale.events.>").await;
    let api = tokio::time::timeout(
        Duration::from_secs(3),
        producer.request(format!("$JS.API.STREAM.PURGE.{STREAM_EVENTS}"), "".into()),
    )
    .await;
    let answered = matches!(api, Ok(Ok(_)));
    let refused = violation(&producer_errors, "$JS.API.STREAM.PURGE").await;
    let after = count(&whale, STREAM_EVENTS, "whale.events.>").await;
    let ok = refused && !answered && after == before && before >= 1;
    t.row(
        "producer",
        "request $JS.API.STREAM.PURGE.WHALE_EVENTS",
        "refused",
        ok,
        format!("violation={refused}, answered={answered}, WHALE_EVENTS {before} -> {after}"),
    );
    assert!(ok, "a producer used the JetStream API");

    // producer subscribed to whale.events.>: refused, nothing delivered.
    let got = next(&mut producer_events, Duration::from_millis(500)).await;
    let refused = violation(&producer_errors, "whale.events.>").await;
    let ok = refused && got.is_none();
    t.row(
        "producer",
        "subscribe whale.events.>",
        "refused",
        ok,
        format!("violation={refused}, received={}", got.is_some()),
    );
    assert!(ok, "a producer read events");

    // tap subscribed to whale.pipe.>: refused; it publishes nothing.
    let refused = violation(&tap_errors, "whale.pipe.>").await;
    tap.publish("whale.in.generic", event("natsperm-tap"))
        .await
        .unwrap();
    tap.publish("whale.pipe.admitted.default", forged.into())
        .await
        .unwrap();
    tap.flush().await.unwrap();
    let pub_refused = violation(&tap_errors, "whale.in.generic").await
        && violation(&tap_errors, "whale.pipe.admitted.default").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Had the tap's event landed, validate would have accepted it by now.
    let ingest = count(&whale, STREAM_INGEST, "whale.in.>").await
        + count(&whale, STREAM_EVENTS, "whale.events.>").await;
    let admitted = count(&whale, STREAM_PIPE, "whale.pipe.admitted.>").await;
    let got = next(&mut tap_pipe, Duration::from_millis(200)).await;
    let ok = refused && got.is_none();
    t.row(
        "tap",
        "subscribe whale.pipe.>",
        "refused",
        ok,
        format!("violation={refused}, received={}", got.is_some()),
    );
    let ok2 = pub_refused && ingest == 1 && admitted == 0;
    t.row(
        "tap",
        "publish whale.in.generic, whale.pipe.admitted.default",
        "refused",
        ok2,
        format!("violation={pub_refused}, events {ingest} (the producer's), admitted {admitted}"),
    );
    assert!(ok && ok2, "a tap read the pipe or published");

    // A producer on the default inbox prefix may not listen to whale's replies (every pull
    // consumer's deliveries arrive on `_INBOX.>`).
    let (snoop, snoop_errors) = client(&url, "producer", PASSWORDS[1].1, None).await;
    let _inbox = snoop.subscribe("_INBOX.>").await.unwrap();
    snoop.flush().await.unwrap();
    let refused = violation(&snoop_errors, "_INBOX.>").await;
    t.row(
        "producer",
        "subscribe _INBOX.> (whale's replies)",
        "refused",
        refused,
        format!("violation={refused}"),
    );
    assert!(refused, "a producer could listen to whale's inbox");

    // `whale publish` as the producer, with its inbox prefix: acked and accepted.
    let out = env
        .whale(&[
            "publish",
            "--type",
            "generic",
            "--data",
            r#"{"message":"from whale publish","severity":"info"}"#,
        ])
        .env("WHALE_NATS_USER", "producer")
        .env("WHALE_NATS_PASSWORD", PASSWORDS[1].1)
        .env("WHALE_NATS_INBOX_PREFIX", "_INBOX_producer")
        .output()
        .expect("run whale publish");
    let accepted = out.status.success()
        && eventually(Duration::from_secs(20), || async {
            count(&whale, STREAM_EVENTS, "whale.events.generic").await >= 2
        })
        .await;
    t.row(
        "producer",
        "whale publish (WHALE_NATS_INBOX_PREFIX=_INBOX_producer)",
        "ok",
        accepted,
        format!("{}, accepted={accepted}", out.status),
    );
    assert!(
        accepted,
        "whale publish as producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // whale itself admits a task (as throttle does): dispatched on the emulator.
    admit(&whale, &[task("natsperm-whale")]).await;
    let done = eventually(Duration::from_secs(30), || async {
        count(&whale, STREAM_PIPE, &Pipe::Dispatched.subject()).await >= 1
    })
    .await;
    let created = st2.created().await;
    t.row(
        "whale",
        "admit task -> dispatch -> StackStorm",
        "ok",
        done && created == 1,
        format!("dispatched={done}, {created} st2 execution"),
    );
    assert!(done && created == 1, "whale could not dispatch a task");

    // The server logged every refusal, and none for whale.
    let log = server_log(&env.nats);
    let whale_violations: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Violation") && l.contains("/user:whale\""))
        .collect();
    t.row(
        "whale",
        "permission violations in the server log",
        "none",
        whale_violations.is_empty(),
        format!("{}", whale_violations.len()),
    );
    let logged_all = logged(&env.nats, "producer", "whale.pipe.admitted.default")
        && logged(&env.nats, "tap", "whale.pipe.>");
    t.row(
        "server",
        "log names the refused producer and tap",
        "yes",
        logged_all,
        format!("{logged_all}"),
    );
    assert!(
        whale_violations.is_empty(),
        "whale's own user needs more permissions: {whale_violations:#?}"
    );
    assert!(logged_all, "server log:\n{log}");
}

/// Issue 13, NATS permissions: whale connects with an NKey (`WHALE_NATS_NKEY_SEED_FILE`) to a
/// server whose `whale` user is that NKey; a seed of another key is refused, and a file that
/// is no user seed is named in the error without its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whale_connects_with_an_nkey_seed() {
    let key = nkeys::KeyPair::new_user();
    let block = shipped_authorization().replace(
        "{ user: whale, password: $NATS_WHALE_PASSWORD,",
        &format!("{{ nkey: {},", key.public_key()),
    );
    assert!(block.contains(&key.public_key()), "{block}");
    let mut env = Env::on(NatsServer::start_with_config(&block, &PASSWORDS));
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("whale.nk");
    std::fs::write(&seed, key.seed().unwrap()).unwrap();
    env.set("WHALE_NATS_NKEY_SEED_FILE", seed.to_str().unwrap());
    env.ok(&["setup"]);

    let other = dir.path().join("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let out = env
        .whale(&["setup"])
        .env("WHALE_NATS_NKEY_SEED_FILE", &other)
        .output()
        .unwrap();
    assert!(!out.status.success(), "another NKey was accepted");

    let bad = dir.path().join("bad.nk");
    std::fs::write(&bad, "not-a-seed-secret").unwrap();
    let out = env
        .whale(&["setup"])
        .env("WHALE_NATS_NKEY_SEED_FILE", &bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.nk")
            && err.contains("NKey user seed")
            && !err.contains("not-a-seed-secret"),
        "{err}"
    );
    eprintln!("nkey: setup with the seed ok; another key refused; a non-seed file named: ok");
}

/// `(user, "publish" | "subscribe", ["deny:" +] subjects)` of nats.conf's permission blocks.
fn conf_permissions() -> Vec<(String, String, Vec<String>)> {
    let block = shipped_authorization();
    let quoted = |line: &str| -> Vec<String> {
        let deny = line.contains("deny");
        line.split('"')
            .skip(1)
            .step_by(2)
            .map(|s| {
                if deny {
                    format!("deny:{s}")
                } else {
                    s.to_owned()
                }
            })
            .collect()
    };
    let mut out = Vec::new();
    for (user, var) in [
        ("whale", "WHALE_PERMISSIONS = {"),
        ("producer", "PRODUCER_PERMISSIONS = {"),
        ("tap", "TAP_PERMISSIONS = {"),
    ] {
        let at = block
            .find(var)
            .unwrap_or_else(|| panic!("nats.conf: no {var}"));
        let body = &block[at..at + block[at..].find("\n  }").expect("block end")];
        for dir in ["publish", "subscribe"] {
            let line = body
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{dir}:")))
                .unwrap_or_else(|| panic!("nats.conf: {var} has no {dir}"));
            out.push((user.to_owned(), dir.to_owned(), quoted(line)));
        }
    }
    out
}

/// The same from the Helm values.
fn helm_permissions() -> Vec<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("deploy/nats/helm-values.yaml")).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("helm-values.yaml");
    let users = v["config"]["merge"]["authorization"]["users"]
        .as_sequence()
        .expect("config.merge.authorization.users");
    let strings = |v: &serde_yaml_ng::Value, prefix: &str| -> Vec<String> {
        v.as_sequence()
            .map(|s| {
                s.iter()
                    .map(|x| format!("{prefix}{}", x.as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for u in users {
        let name = u["user"].as_str().expect("user").to_owned();
        for dir in ["publish", "subscribe"] {
            let p = &u["permissions"][dir];
            let subjects = if p.is_sequence() {
                strings(p, "")
            } else {
                strings(&p["deny"], "deny:")
            };
            out.push((name.clone(), dir.to_owned(), subjects));
        }
    }
    out
}

/// Issue 13, NATS permissions: the Helm values ship the users and permissions nats.conf ships
/// (the file the test above runs), and no literal password.
#[test]
fn helm_values_grant_what_nats_conf_grants() {
    let conf = conf_permissions();
    assert_eq!(conf.len(), 6);
    let has = |user: &str, dir: &str, subjects: &[&str]| {
        conf.iter().any(|(u, d, s)| {
            u == user && d == dir && s.iter().map(String::as_str).eq(subjects.iter().copied())
        })
    };
    assert!(has("producer", "publish", &["whale.in.>"]), "{conf:?}");
    assert!(has("tap", "publish", &["deny:>"]), "{conf:?}");
    assert_eq!(helm_permissions(), conf);
    let text = std::fs::read_to_string(repo().join("deploy/nats/helm-values.yaml")).unwrap();
    for user in ["WHALE", "PRODUCER", "TAP"] {
        assert!(
            text.contains(&format!("password: << $NATS_{user}_PASSWORD >>")),
            "{user}'s password must come from the environment (a Secret)"
        );
    }
}
