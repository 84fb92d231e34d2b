//! The feedback stage and task management against real NATS, the StackStorm emulator and a
//! local webhook receiver that checks each channel's real payload format. Dispatched records
//! are published straight onto `whale.pipe.dispatched` (dispatch is another stage's job).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{json, Value};
use whale_kernel::subjects::{STREAM_INGEST, STREAM_PIPE};

use crate::harness::*;

/// The harness's [`Emulator`] with an API key and the actions below (their outcomes and
/// durations).
pub struct Emu {
    emu: Emulator,
    pub url: String,
    _dir: tempfile::TempDir,
}

pub const EMU_KEY: &str = "emu-test-key";

const ACTIONS: &str = r#"
actions:
  - ref: ops.quick
    parameters: { host: { type: string } }
    outcome: { status: succeeded, duration_ms: 100, output: "cleaned\n", result: { freed_mb: 512 } }
  - ref: ops.slow
    parameters: { host: { type: string } }
    outcome: { status: succeeded, duration_ms: 1500, output: "slow\n" }
  - ref: ops.fail
    parameters: { host: { type: string } }
    outcome: { status: failed, duration_ms: 600 }
  - ref: ops.long
    parameters: { host: { type: string } }
    outcome: { status: succeeded, duration_ms: 120000 }
  - ref: ops.flow
    runner_type: orquesta
    parameters: { host: { type: string } }
    outcome: { status: succeeded, duration_ms: 120000 }
"#;

impl Emu {
    pub fn start() -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("actions.yaml");
        std::fs::write(&file, ACTIONS).unwrap();
        let emu = Emulator::start(&["--api-key", EMU_KEY, "--actions", file.to_str().unwrap()]);
        Emu {
            url: emu.url.clone(),
            emu,
            _dir: dir,
        }
    }

    /// Creates an execution as dispatch would (whale context, trace tag = task id).
    pub async fn create(&self, action: &str, task_id: &str) -> Value {
        let body = json!({
            "action": action,
            "parameters": {"host": format!("web-{task_id}")},
            "context": {"whale": {"event_id": format!("ev-{task_id}"), "rule": "r", "task_id": task_id}, "trace_context": {"trace_tag": task_id}},
        });
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/executions", self.url))
            .header("St2-Api-Key", EMU_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }

    pub async fn admin(&self, path: &str, body: Value) -> Value {
        reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn stats(&self) -> Value {
        self.emu.stats().await
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Req {
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// A local HTTP receiver standing in for WeCom, Slack and webhooks: records every request;
/// `/fail` answers 500; `/wecom` answers like WeCom. `hold(path, n)` keeps requests to `path`
/// after the n-th unanswered until `release()`.
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    reqs: Arc<Mutex<Vec<Req>>>,
    hold: Arc<Mutex<Option<(String, usize)>>>,
    released: Arc<AtomicBool>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let r = Receiver {
            port: 0,
            reqs: Arc::default(),
            hold: Arc::default(),
            released: Arc::new(AtomicBool::new(false)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver { port, ..r };
        let state = r.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let st = state.clone();
            async move { st.handle(uri, headers, body).await }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    async fn handle(&self, uri: Uri, headers: HeaderMap, body: Bytes) -> axum::response::Response {
        let path = uri.path().to_owned();
        let req = Req {
            path: path.clone(),
            query: uri.query().unwrap_or("").to_owned(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let n = {
            let mut reqs = self.reqs.lock().unwrap();
            reqs.push(req);
            reqs.iter().filter(|r| r.path == path).count()
        };
        let held =
            matches!(&*self.hold.lock().unwrap(), Some((p, after)) if *p == path && n > *after);
        if held {
            while !self.released.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        match path.as_str() {
            "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            "/wecom" => axum::Json(json!({"errcode": 0, "errmsg": "ok"})).into_response(),
            "/slack" => "ok".into_response(),
            _ => axum::Json(json!({})).into_response(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self, path: &str) -> Vec<Req> {
        self.reqs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn hold(&self, path: &str, after: usize) {
        *self.hold.lock().unwrap() = Some((path.to_owned(), after));
    }

    pub fn release(&self) {
        *self.hold.lock().unwrap() = None;
        self.released.store(true, Ordering::SeqCst);
    }
}

/// whale.toml with the four test channels and quick polling; returns its path.
pub fn write_config(dir: &std::path::Path, recv: &Receiver, extra: &str) -> String {
    let text = format!(
        r#"
[feedback]
poll_min = "200ms"
poll_max = "1s"
notify_timeout = "2s"
notify_attempts = 2
notify_backoff = "200ms"

[channels.wecom]
type = "wecom"
url = "{wecom}"
key_env = "TEST_WECOM_KEY"

[channels.slack]
type = "slack"
url_env = "TEST_SLACK_URL"

[channels.hook]
type = "webhook"
url = "{hook}"
key_env = "TEST_HOOK_TOKEN"
template = "{{{{ .task.rule }}}} finished {{{{ .result.status }}}} for {{{{ .task.parameters.host }}}}"

[channels.broken]
type = "webhook"
url = "{fail}"
{extra}
"#,
        wecom = recv.url("/wecom"),
        hook = recv.url("/hook"),
        fail = recv.url("/fail"),
    );
    let p = dir.join("whale.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// An environment with NATS, the emulator and the receiver, set up for feedback.
pub async fn feedback_env(extra: &str) -> (Env, Emu, Receiver, tempfile::TempDir) {
    let mut env = Env::new();
    let emu = Emu::start();
    let recv = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &recv, extra);
    env.set("WHALE_CONFIG", &cfg);
    env.set("WHALE_ST2_URL", &emu.url);
    env.set("WHALE_ST2_API_KEY", EMU_KEY);
    env.set("TEST_WECOM_KEY", "wk-secret-1");
    env.set("TEST_SLACK_URL", &recv.url("/slack"));
    env.set("TEST_HOOK_TOKEN", "hook-secret-2");
    env.prepare();
    (env, emu, recv, dir)
}

/// A task record as render would make it.
pub fn task(id: &str, rule: &str, action: &str, notify: &[&str], result_event: bool) -> Value {
    json!({
        "task_id": id, "event_id": format!("ev-{id}"), "event_type": "vm.disk_usage",
        "rule": rule, "rule_version": "v1", "action": action,
        "parameters": {"host": format!("web-{id}")}, "cluster": "default",
        "notify": notify, "result_event": result_event, "created": "2026-01-01T00:00:00Z",
    })
}

/// Publishes what dispatch publishes once an execution exists.
pub async fn publish_dispatched(nats: &whale_kernel::Nats, task: &Value, exec: &Value) {
    let rec = json!({
        "task": task, "cluster": "default", "execution_id": exec["id"], "web_url": exec["web_url"],
        "created": exec["start_timestamp"].as_str().unwrap_or("2026-01-01T00:00:00Z"),
    });
    let id = task["task_id"].as_str().unwrap();
    let out = whale_kernel::Output::new(
        "whale.pipe.dispatched".into(),
        format!("dsp:{id}"),
        rec.to_string(),
    )
    .header("Whale-Task-Id", id);
    nats.publish(out).await.unwrap();
}

/// Creates `n` executions cycling over `actions` and publishes their Dispatched records.
async fn start_tasks(
    emu: &Emu,
    nats: &whale_kernel::Nats,
    prefix: &str,
    n: usize,
    actions: &[&str],
    notify: &[&str],
) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let id = format!("t-{prefix}{i:03}");
        let action = actions[i % actions.len()];
        let exec = emu.create(action, &id).await;
        publish_dispatched(
            nats,
            &task(&id, "disk-full-cleanup", action, notify, true),
            &exec,
        )
        .await;
        expected.insert(
            id,
            if action == "ops.fail" {
                "failed".into()
            } else {
                "succeeded".into()
            },
        );
    }
    expected
}

async fn wait_results(nats: &whale_kernel::Nats, n: usize, secs: u64) -> Vec<Value> {
    let ok = eventually(Duration::from_secs(secs), || async {
        count(nats, STREAM_PIPE, "whale.pipe.result").await as usize >= n
    })
    .await;
    let results = read_all(nats, STREAM_PIPE, "whale.pipe.result").await;
    assert!(ok, "expected {n} results, got {}", results.len());
    results
}

/// Messages on `subject` in the ingest stream (a work queue: read by sequence, not consumed).
async fn read_ingest(nats: &whale_kernel::Nats, subject: &str) -> Vec<Value> {
    let info = nats.stream_info(STREAM_INGEST).await.unwrap().state;
    let mut out = Vec::new();
    for seq in info.first_sequence..=info.last_sequence {
        if let Ok(m) = nats.stored_message(STREAM_INGEST, seq).await {
            if m.subject.as_str() == subject {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
    }
    out
}

fn by_task(reqs: &[Req], field: impl Fn(&Req) -> String) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in reqs {
        *m.entry(field(r)).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_events_and_one_notification_per_channel() {
    let (env, emu, recv, _dir) = feedback_env("").await;
    let nats = env.connect().await;
    let notify = ["wecom", "slack", "hook", "broken"];
    let expected = start_tasks(
        &emu,
        &nats,
        "a",
        6,
        &["ops.quick", "ops.fail", "ops.slow"],
        &notify,
    )
    .await;
    let _w = env.run("feedback");
    let results = wait_results(&nats, expected.len(), 60).await;

    // One result per task, with StackStorm's status, elapsed time, summary and URL.
    let got: BTreeMap<String, String> = results
        .iter()
        .map(|r| {
            (
                r["task"]["task_id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(results.len(), expected.len());
    let quick = results
        .iter()
        .find(|r| r["task"]["action"] == "ops.quick")
        .unwrap();
    assert_eq!(quick["summary"], json!({"freed_mb": 512}), "{quick}");
    assert!(quick["elapsed_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        quick["web_url"].as_str().unwrap().contains("/#/history/"),
        "{quick}"
    );

    // The result events, for chaining rules, one per task with a deterministic id.
    let events = read_ingest(&nats, "whale.in.whale.execution_finished").await;
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected.keys().map(|t| format!("fin-{t}")).collect());
    let ev = events
        .iter()
        .find(|e| e["detail"]["status"] == "failed")
        .unwrap();
    assert_eq!(ev["event_type"], "whale.execution_finished");
    assert_eq!(ev["detail"]["rule"], "disk-full-cleanup");
    assert!(ev["detail"]["execution_id"].is_string());

    // Every channel got exactly one message per result, in its own format.
    let ok = eventually(Duration::from_secs(30), || async {
        count(&nats, STREAM_PIPE, "whale.pipe.notified").await as usize
            >= expected.len() * notify.len()
    })
    .await;
    assert!(ok, "not every notification was recorded");
    let wecom = recv.requests("/wecom");
    assert_eq!(wecom.len(), expected.len());
    for r in &wecom {
        assert_eq!(r.query, "key=wk-secret-1");
        assert_eq!(r.body["msgtype"], "markdown", "{}", r.body);
        let content = r.body["markdown"]["content"].as_str().unwrap();
        assert!(
            content.contains("disk-full-cleanup") && content.contains("open in StackStorm"),
            "{content}"
        );
    }
    let per_task = by_task(&wecom, |r| {
        let c = r.body["markdown"]["content"].as_str().unwrap();
        expected
            .keys()
            .find(|t| c.contains(t.as_str()))
            .cloned()
            .unwrap_or_default()
    });
    assert_eq!(per_task.len(), expected.len(), "{per_task:?}");
    assert!(per_task.values().all(|n| *n == 1), "{per_task:?}");
    let slack = recv.requests("/slack");
    assert_eq!(slack.len(), expected.len());
    for r in &slack {
        let text = r.body["text"].as_str().unwrap();
        assert!(
            text.contains("disk-full-cleanup") && text.contains("|open in StackStorm>"),
            "{text}"
        );
        assert_eq!(
            r.body.as_object().unwrap().len(),
            1,
            "slack gets only text: {}",
            r.body
        );
    }
    let hook = recv.requests("/hook");
    assert_eq!(hook.len(), expected.len());
    let hook_ids = by_task(&hook, |r| {
        r.body["task"]["task_id"].as_str().unwrap().to_owned()
    });
    assert_eq!(
        hook_ids.keys().cloned().collect::<BTreeSet<_>>(),
        expected.keys().cloned().collect()
    );
    for r in &hook {
        assert_eq!(r.headers["authorization"], "Bearer hook-secret-2");
        assert_eq!(r.body["kind"], "result");
        let t = r.body["task"]["task_id"].as_str().unwrap();
        assert_eq!(
            r.headers["idempotency-key"],
            format!("res:{t}:hook").as_str()
        );
        assert_eq!(
            r.body["text"],
            format!("disk-full-cleanup finished {} for web-{t}", expected[t])
        );
        assert_eq!(r.body["result"]["status"], expected[t].as_str());
    }
    // The failing channel was retried, recorded as failed, and blocked nothing.
    assert_eq!(
        recv.requests("/fail").len(),
        expected.len() * 2,
        "two attempts each"
    );
    let notified = read_all(&nats, STREAM_PIPE, "whale.pipe.notified").await;
    let status = |ch: &str| {
        notified
            .iter()
            .filter(|n| n["channel"] == ch)
            .map(|n| n["status"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        status("broken").iter().all(|s| s == "failed") && status("broken").len() == expected.len()
    );
    let failed = notified.iter().find(|n| n["channel"] == "broken").unwrap();
    assert!(
        failed["error"].as_str().unwrap().contains("http 500"),
        "{failed}"
    );
    for ch in ["wecom", "slack", "hook"] {
        assert_eq!(status(ch), vec!["sent"; expected.len()], "{ch}");
    }

    // whale's execution index serves `whale exec list`.
    let out = env.ok(&["exec", "list", "--json", "--status", "failed"]);
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        listed.len(),
        expected.values().filter(|s| *s == "failed").count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_way_loses_and_doubles_nothing() {
    let (env, emu, recv, _dir) = feedback_env("").await;
    let nats = env.connect().await;
    let notify = ["wecom", "slack", "hook"];
    let expected = start_tasks(
        &emu,
        &nats,
        "k",
        12,
        &["ops.quick", "ops.slow", "ops.fail", "ops.quick"],
        &notify,
    )
    .await;
    // WeCom answers three messages, then holds every further one: the worker is killed while
    // posts are in flight, the results of slower executions still unrecorded.
    recv.hold("/wecom", 3);
    let mut w = env.run("feedback");
    assert!(
        eventually(Duration::from_secs(30), || async {
            recv.requests("/wecom").len() > 3
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.kill9();
    let held = recv.requests("/wecom").len() - 3;
    recv.release();
    let _w = env.run("feedback");

    let results = wait_results(&nats, expected.len(), 60).await;
    assert_eq!(
        results.len(),
        expected.len(),
        "one result record per execution"
    );
    let ok = eventually(Duration::from_secs(40), || async {
        count(&nats, STREAM_PIPE, "whale.pipe.notified").await as usize
            >= expected.len() * notify.len()
    })
    .await;
    assert!(ok, "every notification ends recorded");
    for (path, field) in [("/wecom", "content"), ("/slack", "text"), ("/hook", "hook")] {
        let reqs = recv.requests(path);
        let per_task = by_task(&reqs, |r| {
            let text = match field {
                "content" => r.body["markdown"]["content"].as_str().unwrap().to_owned(),
                "text" => r.body["text"].as_str().unwrap().to_owned(),
                _ => r.body["task"]["task_id"].as_str().unwrap().to_owned(),
            };
            expected
                .keys()
                .find(|t| text.contains(t.as_str()))
                .cloned()
                .unwrap_or_default()
        });
        assert_eq!(
            per_task.keys().cloned().collect::<BTreeSet<_>>(),
            expected.keys().cloned().collect(),
            "{path}: none lost"
        );
        assert!(
            per_task.values().all(|n| *n == 1),
            "{path}: none doubled: {per_task:?}"
        );
    }
    // The posts that were in flight when the worker died are recorded as such, not resent.
    let notified = read_all(&nats, STREAM_PIPE, "whale.pipe.notified").await;
    let unknown = notified.iter().filter(|n| n["status"] == "unknown").count();
    assert!(
        held > 0 && unknown <= held,
        "held {held}, unknown {unknown}"
    );
    assert_eq!(notified.len(), expected.len() * notify.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_disconnects_while_executions_finish_lose_no_result() {
    let (env, emu, _recv, _dir) = feedback_env("").await;
    let nats = env.connect().await;
    let mut expected = BTreeMap::new();
    let mut execs = Vec::new();
    for i in 0..16 {
        let id = format!("t-d{i:03}");
        let exec = emu.create("ops.long", &id).await;
        publish_dispatched(
            &nats,
            &task(&id, "disk-full-cleanup", "ops.long", &[], false),
            &exec,
        )
        .await;
        let status = ["succeeded", "failed", "timeout", "canceled", "abandoned"][i % 5];
        expected.insert(id, status.to_owned());
        execs.push((exec["id"].as_str().unwrap().to_owned(), status));
    }
    let _w = env.run("feedback");
    // Let the worker see every execution running, then finish them in groups with the stream
    // cut between (and during) the groups: the events of those moments are lost for good.
    assert!(
        eventually(Duration::from_secs(30), || async {
            env.ok(&["exec", "list", "--json"])
                .stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
                == 16
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (n, chunk) in execs.chunks(4).enumerate() {
        let d = emu.admin("/_emulator/stream/disconnect", json!({})).await;
        if n == 0 {
            assert!(
                d["disconnected"].as_u64().unwrap() >= 1,
                "the worker follows the stream: {d}"
            );
        }
        for (id, status) in chunk {
            emu.admin(
                &format!("/_emulator/executions/{id}/finish"),
                json!({"status": status}),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let results = wait_results(&nats, expected.len(), 60).await;
    let got: BTreeMap<String, String> = results
        .iter()
        .map(|r| {
            (
                r["task"]["task_id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(results.len(), expected.len());
    let metrics = reqwest::get(env.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let connects: f64 = metrics
        .lines()
        .find(|l| l.starts_with("whale_feedback_stream_connects_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        connects >= 4.0,
        "reconnected after the disconnects: {connects}"
    );
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exec_action_and_stackstorms_refusals() {
    let (env, emu, _recv, _dir) = feedback_env("").await;
    let nats = env.connect().await;
    let flow = emu.create("ops.flow", "t-flow").await;
    let long = emu.create("ops.long", "t-long").await;
    let quick = emu.create("ops.quick", "t-quick").await;
    for (t, e, a) in [
        ("t-flow", &flow, "ops.flow"),
        ("t-long", &long, "ops.long"),
        ("t-quick", &quick, "ops.quick"),
    ] {
        publish_dispatched(
            &nats,
            &task(
                t,
                if t == "t-flow" {
                    "wf-rule"
                } else {
                    "disk-full-cleanup"
                },
                a,
                &[],
                false,
            ),
            e,
        )
        .await;
    }
    let _w = env.run("feedback");
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.result").await == 1
        })
        .await
    );
    let json_lines = |o: std::process::Output| -> Vec<Value> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    // list, with filters
    assert_eq!(json_lines(env.ok(&["exec", "list", "--json"])).len(), 3);
    let wf = json_lines(env.ok(&["exec", "list", "--json", "--rule", "wf-rule"]));
    assert_eq!((wf.len(), wf[0]["task_id"].as_str()), (1, Some("t-flow")));
    let done = json_lines(env.ok(&["exec", "list", "--json", "--status", "succeeded"]));
    assert_eq!(done[0]["task_id"], "t-quick");

    // get, by task id or StackStorm id
    let g: Value =
        serde_json::from_slice(&env.ok(&["exec", "get", "t-long", "--json"]).stdout).unwrap();
    assert_eq!(
        (
            g["record"]["cluster"].as_str(),
            g["execution"]["status"].as_str()
        ),
        (Some("default"), Some("running"))
    );
    let by_id: Value = serde_json::from_slice(
        &env.ok(&["exec", "get", long["id"].as_str().unwrap(), "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(by_id["record"]["task_id"], "t-long");
    assert!(
        String::from_utf8_lossy(&env.ok(&["exec", "get", "t-quick"]).stdout).contains("succeeded")
    );

    // logs
    assert_eq!(
        String::from_utf8_lossy(&env.ok(&["exec", "logs", "t-quick"]).stdout),
        "cleaned\n"
    );

    // pause / resume a workflow; StackStorm refuses to pause a plain action
    let p: Value =
        serde_json::from_slice(&env.ok(&["exec", "pause", "t-flow", "--json"]).stdout).unwrap();
    assert!(
        matches!(
            p["execution"]["status"].as_str(),
            Some("pausing" | "paused")
        ),
        "{p}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            emu.stats().await["by_status"]["paused"] == 1
        })
        .await
    );
    let r: Value =
        serde_json::from_slice(&env.ok(&["exec", "resume", "t-flow", "--json"]).stdout).unwrap();
    assert!(
        matches!(
            r["execution"]["status"].as_str(),
            Some("resuming" | "running")
        ),
        "{r}"
    );
    let refused = env.whale(&["exec", "pause", "t-long"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("StackStorm (cluster default) refused to pause"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("Failed updating execution"),
        "StackStorm's own message: {}",
        stderr(&refused)
    );

    // retry re-runs on the same cluster
    let before = emu.stats().await["executions_created"].as_u64().unwrap();
    let out = String::from_utf8_lossy(&env.ok(&["exec", "retry", "t-quick"]).stdout).into_owned();
    assert!(out.starts_with("re-ran execution"), "{out}");
    assert_eq!(
        emu.stats().await["executions_created"].as_u64().unwrap(),
        before + 1
    );

    // cancel a running one; cancelling a finished one is refused with StackStorm's message
    env.ok(&["exec", "cancel", "t-long"]);
    let refused = env.whale(&["exec", "cancel", "t-quick"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Action cannot be canceled"),
        "{}",
        stderr(&refused)
    );
    let unknown = env.whale(&["exec", "get", "t-nope"]).output().unwrap();
    assert!(
        !unknown.status.success() && stderr(&unknown).contains("no execution"),
        "{}",
        stderr(&unknown)
    );

    // the same over HTTP
    let http = reqwest::Client::new();
    let list: Vec<Value> = http
        .get(env.http("/v1/executions?rule=wf-rule"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let r = http
        .post(env.http("/v1/executions/t-quick/pause"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["faultstring"]
            .as_str()
            .unwrap()
            .contains("already in completed state"),
        "{body}"
    );
    let logs = http
        .get(env.http("/v1/executions/t-quick/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(logs, "cleaned\n");
    let r = http
        .post(env.http("/v1/executions/t-flow/cancel"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        http.get(env.http("/v1/executions/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
