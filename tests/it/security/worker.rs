//! Security regressions (worker): issue 12, finding 6 (slow rules caused redelivery storms, a
//! crashed worker's messages waited the whole 30 s ack wait), the panic containment of the
//! worker loop and the HTTP server, and bounded rule files. Real nats-server and `whale`
//! processes; figures are printed, never asserted against the clock.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::watch;
use whale_kernel::subjects::{self, STREAM_EVENTS, STREAM_PIPE};
use whale_kernel::{metrics, Delivery, Nats, Outcome, Stage};

use crate::harness::*;

/// A predicate that is slow on any event: it stops at the step budget or the time limit
/// (100 ms by default), whichever comes first; the step then counts as not matching.
const SLOW_RULE: &str = r#"
- name: slow
  on: [generic]
  when:
    - jq: '[range(100000) | tostring] | [., ., ., .] | flatten | length > 0'
  action: ops.slow
- name: every
  on: [generic]
  action: ops.every
"#;

fn rules_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), text).unwrap();
    dir
}

async fn publish_generic(nats: &Nats, n: usize) {
    let publishes = (0..n).map(|i| {
        let ev = json!({"event_type": "generic", "source": "test/worker", "detail": {"message": format!("m{i}")}});
        nats.publish_raw("whale.in.generic", &[], serde_json::to_vec(&ev).unwrap())
    });
    futures::future::try_join_all(publishes).await.unwrap();
}

async fn match_consumer(nats: &Nats) -> whale_kernel::nats::ConsumerInfo {
    let input = &subjects::stage_inputs("match")[0];
    nats.consumer_info(input.stream, input.consumer)
        .await
        .unwrap()
}

/// Finding 6: every stage consumer gets the short ack wait, and `whale setup` updates consumers
/// created with the old 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding6_setup_sets_a_short_ack_wait_and_updates_old_consumers() {
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.toml");
    std::fs::write(&old, "[nats]\nack_wait = \"30s\"\n").unwrap();
    env.set("WHALE_CONFIG", old.to_str().unwrap());
    env.ok(&["setup"]);
    let nats = env.connect().await;
    assert_eq!(
        match_consumer(&nats).await.config.ack_wait,
        Duration::from_secs(30)
    );
    env.extra.clear();
    let out = env.ok(&["setup", "--json"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("updated"), "{report}");
    for stage in subjects::STAGES {
        for input in subjects::stage_inputs(stage) {
            let info = nats
                .consumer_info(input.stream, input.consumer)
                .await
                .unwrap();
            assert_eq!(
                info.config.ack_wait,
                Duration::from_secs(5),
                "{}",
                input.consumer
            );
        }
    }
}

/// Finding 6: a slow rule makes a batch take longer than the ack wait; the worker keeps it
/// alive with in-progress acks, so nothing is delivered twice (no redelivery storm) and every
/// event is matched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding6_slow_rule_makes_no_redelivery_storm() {
    let env = Env::new();
    env.prepare();
    let rules = rules_dir(SLOW_RULE);
    env.ok(&["rules", "apply", rules.path().to_str().unwrap()]);
    let nats = env.connect().await;
    let _w = env.run("validate,match");
    let n = 80;
    let started = Instant::now();
    publish_generic(&nats, n).await;
    let done = eventually(Duration::from_secs(120), || async {
        count(&nats, STREAM_PIPE, "whale.pipe.matched").await >= n as u64
    })
    .await;
    let took = started.elapsed();
    assert!(done, "every event is matched by the fast rule");
    let info = match_consumer(&nats).await;
    eprintln!(
        "slow rule: {n} events matched in {took:.1?} (ack wait {:?}); delivered {} times, \
         {} redelivered pending",
        info.config.ack_wait, info.delivered.consumer_sequence, info.num_redelivered
    );
    // The run must have outlasted the ack wait for the test to mean anything.
    assert!(
        took > info.config.ack_wait,
        "precondition: the slow rule did not make the run outlast the ack wait ({took:?})"
    );
    assert_eq!(
        info.delivered.consumer_sequence, n as u64,
        "each event delivered exactly once to match"
    );
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(
        count(&nats, STREAM_PIPE, "whale.pipe.matched").await,
        n as u64
    );
    let metrics = reqwest::get(env.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("whale_stage_events_total") && l.contains("jq_error"))
        .unwrap_or("");
    assert!(
        line.ends_with(&format!(" {n}")),
        "the slow step failed (and counted) once per event: {line:?}"
    );
}

/// Finding 6: a worker killed with SIGKILL while it holds unacked messages; a new worker gets
/// them after the (short) ack wait. Prints the measured time; asserts that nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding6_killed_worker_messages_reach_a_new_worker_quickly() {
    let env = Env::new();
    env.prepare();
    let rules = rules_dir(SLOW_RULE);
    env.ok(&["rules", "apply", rules.path().to_str().unwrap()]);
    let nats = env.connect().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("worker.log");
    let n = 60u64;
    let port_a = free_port();
    let mut a = env.spawn_on("validate,match", port_a, &log, &[]);
    assert!(ready(port_a, Duration::from_secs(30)).await);
    publish_generic(&nats, n as usize).await;
    // Wait until A holds messages (delivered, not acked) and has acked none yet.
    let holding = eventually(Duration::from_secs(30), || async {
        let i = match_consumer(&nats).await;
        i.num_ack_pending > 0 && i.ack_floor.consumer_sequence == 0
    })
    .await;
    assert!(holding, "worker A never held unacked messages");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = match_consumer(&nats).await;
    let held = before.num_ack_pending;
    a.kill9();
    let killed = Instant::now();
    let port_b = free_port();
    let _b = env.spawn_on("validate,match", port_b, &log, &[]);
    // Redelivery: the consumer delivers again (its delivered sequence passes what A got).
    let redelivered = eventually(Duration::from_secs(60), || async {
        match_consumer(&nats).await.delivered.consumer_sequence > before.delivered.consumer_sequence
    })
    .await;
    let to_redelivery = killed.elapsed();
    assert!(redelivered, "the held messages were never redelivered");
    let done = eventually(Duration::from_secs(120), || async {
        count(&nats, STREAM_PIPE, "whale.pipe.matched").await >= n
    })
    .await;
    let to_done = killed.elapsed();
    assert!(done, "not every event was matched after the crash");
    let after = match_consumer(&nats).await;
    eprintln!(
        "crash -> redelivery: worker A held {held} unacked messages when killed; a new worker \
         got them {to_redelivery:.2?} after the SIGKILL (ack wait {:?}, old default 30s); all {n} \
         matched {to_done:.2?} after it",
        after.config.ack_wait
    );
    assert_eq!(after.config.ack_wait, Duration::from_secs(5));
    assert_eq!(
        count(&nats, STREAM_PIPE, "whale.pipe.matched").await,
        n,
        "nothing lost, nothing doubled (dedup by msg id)"
    );
    assert_eq!(count(&nats, STREAM_EVENTS, "whale.events.generic").await, n);
    assert!(after.num_ack_pending == 0 && after.num_pending == 0);
}

/// A stage that panics on the payload `boom` and records what it handled.
struct Panicky {
    handled: Mutex<Vec<(String, i64)>>,
    boom_attempts: AtomicUsize,
}

#[async_trait]
impl Stage for Panicky {
    fn name(&self) -> &'static str {
        "panicky_test_stage"
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        let body = String::from_utf8_lossy(&d.payload).into_owned();
        if body == "boom" {
            self.boom_attempts.fetch_add(1, Ordering::SeqCst);
            panic!("test stage panics on purpose");
        }
        self.handled.lock().unwrap().push((body, d.attempt));
        Outcome::Ack(vec![])
    }
}

/// A panic in one message never takes the worker loop down: the other messages of the batch
/// and the next ones are handled, the panicking one is nak'ed with a delay and comes back, and
/// `whale_panics_total{where="stage"}` counts each panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_does_not_stop_the_worker_and_is_counted() {
    let server = NatsServer::start();
    let (nats, input) = raw_input(&server, "PANIC_TEST", "panic-test", "panic").await;
    let stage = Arc::new(Panicky {
        handled: Mutex::new(Vec::new()),
        boom_attempts: AtomicUsize::new(0),
    });
    let panics = || {
        metrics::PANICS
            .with_label_values(&["stage", "panicky_test_stage"])
            .get()
    };
    assert_eq!(panics(), 0);
    let (stop, loop_task) = spawn_loop(&nats, stage.clone(), input);
    for body in ["one", "boom", "two"] {
        nats.publish_raw(format!("panic.{body}"), &[], body)
            .await
            .unwrap();
    }
    let handled = |s: Arc<Panicky>| async move {
        let h = s.handled.lock().unwrap();
        h.iter().any(|(b, _)| b == "one") && h.iter().any(|(b, _)| b == "two")
    };
    assert!(eventually(Duration::from_secs(20), || handled(stage.clone())).await);
    // Nak'ed with a delay (1 s, then 2 s): the panicking message comes back and panics again.
    assert!(
        eventually(Duration::from_secs(20), || async {
            stage.boom_attempts.load(Ordering::SeqCst) >= 3
        })
        .await,
        "the panicking message is redelivered"
    );
    assert!(!loop_task.is_finished(), "the worker loop is still running");
    // One count per contained panic (the batch, then the message on its own, then redeliveries).
    assert!(panics() >= 3, "panics counted: {}", panics());
    // Still handles new messages.
    nats.publish_raw("panic.three", &[], "three").await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            stage
                .handled
                .lock()
                .unwrap()
                .iter()
                .any(|(b, _)| b == "three")
        })
        .await
    );
    // The good messages were not redelivered with the bad one: every handling is their first
    // delivery (a message handled before the panic in the same batch is handled again when the
    // batch is retried one message at a time, as it would be on a redelivery).
    let h = stage.handled.lock().unwrap().clone();
    assert!(h.iter().all(|(_, attempt)| *attempt == 1), "{h:?}");
    assert_eq!(h.iter().filter(|(b, _)| b == "two").count(), 1, "{h:?}");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), loop_task).await;
}

/// A stage that records the subjects it handled.
struct Recorder(Mutex<Vec<String>>);

#[async_trait]
impl Stage for Recorder {
    fn name(&self) -> &'static str {
        "recorder_test_stage"
    }

    async fn handle(&self, d: &Delivery) -> Outcome {
        self.0.lock().unwrap().push(d.subject.clone());
        Outcome::Ack(vec![])
    }
}

/// An input read with its whole stream (as `match` reads WHALE_EVENTS, rejections included) has
/// a consumer without filters; the stage gets only the subjects of its filters, and the rest is
/// acked without reaching it (nothing left pending, nothing redelivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_stream_input_hands_the_stage_only_its_subjects_and_acks_the_rest() {
    let server = NatsServer::start();
    let (nats, input) = raw_input(&server, "WHOLE_TEST", "whole-test", "whole").await;
    let input = subjects::Input {
        filters: vec!["whole.want.>".into()],
        whole_stream: true,
        ..input
    };
    whale_kernel::setup::ensure_consumer(&nats, &input, &whale_kernel::Config::default())
        .await
        .unwrap();
    let info = nats
        .consumer_info(input.stream, input.consumer)
        .await
        .unwrap();
    assert!(info.config.filter_subjects.is_empty() && info.config.filter_subject.is_empty());
    let match_input = &subjects::stage_inputs("match")[0];
    assert!(match_input.whole_stream && match_input.wants("whale.events.disk"));
    assert!(!match_input.wants("whale.rejected.disk"));

    let stage = Arc::new(Recorder(Mutex::new(Vec::new())));
    let (stop, loop_task) = spawn_loop(&nats, stage.clone(), input.clone());
    for s in [
        "whole.want.a",
        "whole.other.b",
        "whole.want.c.d",
        "whole.other",
        "whole.want",
    ] {
        nats.publish_raw(s.to_string(), &[], "x").await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            let i = nats
                .consumer_info(input.stream, input.consumer)
                .await
                .unwrap();
            i.num_pending == 0 && i.num_ack_pending == 0 && i.delivered.stream_sequence == 5
        })
        .await,
        "every message acked, the ones outside the filters too"
    );
    let mut seen = stage.0.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["whole.want.a", "whole.want.c.d"]);
    let info = nats
        .consumer_info(input.stream, input.consumer)
        .await
        .unwrap();
    assert_eq!(info.num_redelivered, 0);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), loop_task).await;
}

/// A panic in one HTTP request answers a JSON 500, is counted, and the server keeps serving; a
/// request over `http.request_timeout` answers a JSON 503 naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_panics_become_json_500_and_slow_requests_json_503() {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/boom",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("test handler panics on purpose");
                }
                "unreachable"
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route("/ok", get(|| async { "fine" }));
    let router = whale_kernel::http::harden(router, Duration::from_secs(1));
    let (_stop, stop_rx) = watch::channel(false);
    let (addr, _task) = whale_kernel::http::serve("127.0.0.1:0", router, stop_rx)
        .await
        .unwrap();
    let before = metrics::PANICS.with_label_values(&["http", ""]).get();
    let r = reqwest::get(format!("http://{addr}/boom")).await.unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("internal error"),
        "{body}"
    );
    assert!(metrics::PANICS.with_label_values(&["http", ""]).get() > before);
    let r = reqwest::get(format!("http://{addr}/ok")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fine");
    let r = reqwest::get(format!("http://{addr}/slow")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["limit"], "http.request_timeout", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("took longer than 1s"),
        "{body}"
    );
}

/// The real `whale run` process: /metrics and requests keep working; the time limit applies to
/// its routes (a request answered in time is untouched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whale_run_serves_through_the_hardened_router() {
    let env = Env::new();
    env.prepare();
    let _w = env.run("ingest,validate");
    let r = reqwest::Client::new()
        .post(env.http("/v1/events"))
        .json(&json!({"event_type": "generic", "source": "t", "detail": {"message": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let r = reqwest::get(env.http("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
}

fn apply_refused(env: &Env, dir: &Path) -> String {
    let out = env
        .whale(&["rules", "apply", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "refused with exit code 3");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Bounded rule files: a 10,000-deep YAML and an alias bomb are refused by `whale rules apply`
/// with the file and line, without a crash; nothing is applied.
#[test]
fn deep_yaml_and_alias_bombs_are_refused_by_rules_apply() {
    let env = Env::new();
    env.prepare();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deep.yaml"),
        format!(
            "name: deep\non: [generic]\naction: a.b\nparams:\n  x: {}1{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
    )
    .unwrap();
    let err = apply_refused(&env, dir.path());
    assert!(
        err.contains("deep.yaml:5") && err.contains("recursion limit exceeded"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bomb = String::from("name: bomb\non: [generic]\naction: a.b\nparams:\n  a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let mut prev = 'a';
    for n in "bcdefghi".chars() {
        bomb.push_str(&format!(
            "  {n}: &{n} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
        prev = n;
    }
    std::fs::write(dir.path().join("bomb.yaml"), bomb).unwrap();
    let err = apply_refused(&env, dir.path());
    assert!(
        err.contains("bomb.yaml") && err.contains("repetition limit exceeded"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let steps: String = (0..300)
        .map(|i| format!("  - {{ path: .detail.x{i}, exists: true }}\n"))
        .collect();
    std::fs::write(
        dir.path().join("steps.yaml"),
        format!("name: many\non: [generic]\naction: a.b\nwhen:\n{steps}"),
    )
    .unwrap();
    let err = apply_refused(&env, dir.path());
    assert!(
        err.contains("steps.yaml:1") && err.contains("limit of 256 steps per rule"),
        "{err}"
    );
}
