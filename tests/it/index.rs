//! The index stage end to end: events through NATS and HTTP, `whale run --stages
//! ingest,validate,index`, then `whale events search`, `GET /v1/events` and `whale trace` — on the
//! embedded index and on a real OpenSearch node (deploy/opensearch). And OpenSearch stopped
//! mid-run: the stage waits and catches up, nothing lost or doubled (documents counted by id).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use whale_index::testkit::OpenSearchNode;

use crate::harness::*;

enum Backend {
    Embedded(tempfile::TempDir),
    OpenSearch(OpenSearchNode),
}

impl Backend {
    async fn opensearch() -> Backend {
        Backend::OpenSearch(
            tokio::task::spawn_blocking(OpenSearchNode::start)
                .await
                .unwrap(),
        )
    }
    fn embedded() -> Backend {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }
    fn configure(&self, env: &mut Env) {
        match self {
            Backend::Embedded(dir) => env.set("WHALE_INDEX_DIR", dir.path().to_str().unwrap()),
            Backend::OpenSearch(node) => env.set("WHALE_OPENSEARCH_URL", &node.url()),
        }
    }
}

/// The mixed events of the end-to-end test and which are accepted.
fn events(n: usize) -> Vec<(Value, bool)> {
    (0..n)
        .map(|i| {
            let id = format!("ix-{i:05}");
            let time = format!("2026-11-28T{:02}:{:02}:{:02}Z", i / 3600, (i / 60) % 60, i % 60);
            match i % 5 {
                0 | 1 => (
                    json!({"id": id, "event_type": "vm.disk_usage", "source": "prom", "time": time,
                           "detail": {"host": format!("web-{}", i % 7), "usage_pct": i % 101, "env": "prod"}}),
                    true,
                ),
                2 => (
                    json!({"id": id, "event_type": "generic", "source": "script", "time": time,
                           "detail": {"message": format!("backup {i} finished"), "code": i}}),
                    true,
                ),
                3 => (
                    json!({"id": id, "event_type": "generic", "source": "script", "time": time,
                           "detail": {"message": format!("kernel oops on node {i}"), "code": {"x": i % 3, "name": "oops"}}}),
                    true,
                ),
                _ => (
                    json!({"id": id, "event_type": "vm.disk_usage", "source": "prom", "time": time,
                           "detail": {"host": "web-x", "usage_pct": "high"}}),
                    false,
                ),
            }
        })
        .collect()
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn total(env: &Env, q: &str, kind: &str) -> u64 {
    let url = env.http(&format!(
        "/v1/events?q={}&kind={kind}&limit=1",
        urlencode(q)
    ));
    get_json(&url).await.1["total"].as_u64().unwrap_or(0)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn search_ids(env: &Env, args: &[&str]) -> BTreeSet<String> {
    let mut all = vec!["events", "search", "--json", "--limit", "10000"];
    all.extend_from_slice(args);
    let out = env.ok(&all);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: BTreeSet<String> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.len() as u64,
        v["total"].as_u64().unwrap(),
        "{args:?}: every hit once"
    );
    ids
}

async fn end_to_end(backend: Backend) {
    let mut env = Env::new();
    backend.configure(&mut env);
    env.prepare();
    let _w = env.run("ingest,validate,index");
    let nats = env.connect().await;
    let evs = events(2_000);
    let http = reqwest::Client::new();
    for (i, chunk) in evs.chunks(250).enumerate() {
        if i % 2 == 0 {
            let body: Vec<&Value> = chunk.iter().map(|(e, _)| e).collect();
            let r = http
                .post(env.http("/v1/events"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        } else {
            for (e, _) in chunk {
                let t = e["event_type"].as_str().unwrap();
                nats.publish_raw(format!("whale.in.{t}"), &[], Bytes::from(e.to_string()))
                    .await
                    .unwrap();
            }
        }
    }
    let accepted = evs.iter().filter(|(_, ok)| *ok).count() as u64;
    let rejected = evs.len() as u64 - accepted;
    assert!(
        eventually(Duration::from_secs(120), || async {
            total(&env, "*", "event").await == accepted
                && total(&env, "*", "rejected").await == rejected
        })
        .await,
        "indexed {} events and {} rejections, want {accepted} and {rejected}",
        total(&env, "*", "event").await,
        total(&env, "*", "rejected").await
    );

    let want = |f: &dyn Fn(usize, &Value) -> bool| -> BTreeSet<String> {
        evs.iter()
            .enumerate()
            .filter(|(i, (e, ok))| *ok && f(*i, e))
            .map(|(_, (e, _))| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // By type and detail field, range, text, time; the CLI reads while `whale run` writes.
    assert_eq!(
        search_ids(&env, &["event_type:vm.disk_usage AND detail.host:web-3"]),
        want(&|i, _| i % 5 < 2 && i % 7 == 3)
    );
    assert_eq!(
        search_ids(
            &env,
            &["event_type:vm.disk_usage AND detail.usage_pct:[90 TO 100]"]
        ),
        want(&|i, _| i % 5 < 2 && i % 101 >= 90)
    );
    assert_eq!(search_ids(&env, &["oops"]), want(&|i, _| i % 5 == 3));
    assert_eq!(
        search_ids(&env, &["detail.code:[100 TO 199]"]),
        want(&|i, _| i % 5 == 2 && (100..200).contains(&i))
    );
    assert_eq!(
        search_ids(&env, &["detail.code.x:1"]),
        want(&|i, _| i % 5 == 3 && i % 3 == 1)
    );
    assert_eq!(
        search_ids(
            &env,
            &[
                "*",
                "--from",
                "2026-11-28T00:10:00Z",
                "--to",
                "2026-11-28T00:19:59Z"
            ]
        ),
        want(&|i, _| (600..1200).contains(&i))
    );
    let rejected_ids = search_ids(&env, &["detail.usage_pct:high", "--kind", "rejected"]);
    assert_eq!(rejected_ids.len() as u64, rejected);

    // The same search over HTTP.
    let (code, v) = get_json(&env.http("/v1/events?q=detail.code.x%3A1&limit=10000")).await;
    assert_eq!(code, 200, "{v}");
    let http_ids: BTreeSet<String> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(http_ids, want(&|i, _| i % 5 == 3 && i % 3 == 1));
    let (code, v) = get_json(&env.http("/v1/events?q=nofield%3Ax")).await;
    assert_eq!(code, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field \"nofield\""),
        "{v}"
    );
    let out = env
        .whale(&["events", "search", "detail.usage_pct:[1 100]"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TO"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Human output.
    let out = env.ok(&["events", "search", "event_id:ix-00003"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ix-00003") && text.contains("1 of 1 matching events"),
        "{text}"
    );

    // Trace: a rejected event and an accepted one.
    let out = env.ok(&["trace", "ix-00004"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("event ix-00004 — rejected"), "{text}");
    assert!(
        text.contains("/detail/usage_pct"),
        "the reason is shown: {text}"
    );
    let out = env.ok(&["trace", "ix-00001", "--json"]);
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["outcome"], "accepted");
    assert_eq!(t["steps"][0]["kind"], "event");
    assert_eq!(t["event"]["detail"]["host"], "web-1");
    let out = env.whale(&["trace", "no-such-event"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_embedded() {
    end_to_end(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_opensearch() {
    end_to_end(Backend::opensearch().await).await;
}

/// OpenSearch killed mid-run and started again: the stage naks and retries with backoff, then
/// catches up; every event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_outage_loses_and_doubles_nothing() {
    let backend = Backend::opensearch().await;
    let mut env = Env::new();
    backend.configure(&mut env);
    let Backend::OpenSearch(mut node) = backend else {
        unreachable!()
    };
    env.prepare();
    let _w = env.run("validate,index");
    let nats = env.connect().await;
    let publish = |from: usize, to: usize| {
        let nats = nats.clone();
        async move {
            for i in from..to {
                let ev = json!({"id": format!("out-{i:05}"), "event_type": "generic", "source": "t",
                                "detail": {"message": format!("event {i}"), "seq": i}});
                nats.publish_raw("whale.in.generic", &[], Bytes::from(ev.to_string()))
                    .await
                    .unwrap();
            }
        }
    };
    publish(0, 1_000).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            total(&env, "*", "event").await >= 500
        })
        .await
    );
    // Published while the cluster is down: validated, then waiting in the index consumer.
    let mut node = tokio::task::spawn_blocking(move || {
        node.stop();
        node
    })
    .await
    .unwrap();
    publish(1_000, 3_000).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let node = tokio::task::spawn_blocking(move || {
        node.start_again();
        node
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(120), || async {
            total(&env, "*", "event").await >= 3_000
        })
        .await,
        "caught up to {} of 3000",
        total(&env, "*", "event").await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = search_ids(&env, &["event_type:generic", "--kind", "event"]);
    let want: BTreeSet<String> = (0..3_000).map(|i| format!("out-{i:05}")).collect();
    assert_eq!(ids, want, "every event indexed once");
    // Counted on the OpenSearch side too: one document per event id.
    let (code, body) =
        tokio::task::spawn_blocking(move || node.get("/whale-*/_count?q=kind:event"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 3_000, "{v}");
}

/// Accepted events the index worker on `port` has stored (its own `GET /v1/events`).
async fn stored_on(port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{port}/v1/events?q=*&kind=event&limit=1");
    match reqwest::get(&url).await {
        Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null)["total"]
            .as_u64()
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// The embedded index commits on time or size and acks only what a commit holds: its worker
/// killed with -9 twice while events stream in, then started again, ends with every event stored
/// exactly once (counted, and every id listed once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_killed_mid_stream_loses_and_doubles_nothing() {
    const N: usize = 9_000;
    let backend = Backend::embedded();
    let mut env = Env::new();
    backend.configure(&mut env);
    env.prepare();
    let _validate = env.run("validate");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("index.log");
    let port = whale_kernel::testkit::free_port();
    let mut index = env.spawn_on("index", port, &log, &[]);
    let log_tail = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready(port, Duration::from_secs(60)).await, "{}", log_tail());
    let nats = env.connect().await;
    let producer = nats.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            let ev = json!({"id": format!("k9-{i:05}"), "event_type": "generic", "source": "t",
                            "detail": {"message": format!("event {i}"), "seq": i}});
            producer
                .publish_raw("whale.in.generic", &[], Bytes::from(ev.to_string()))
                .await
                .unwrap();
        }
    });
    for at in [1_500, 5_000] {
        assert!(
            eventually(Duration::from_secs(120), || async {
                stored_on(port).await >= at
            })
            .await,
            "never reached {at} stored; log:\n{}",
            log_tail()
        );
        index.kill9();
        index = env.spawn_on("index", port, &log, &[]);
        assert!(ready(port, Duration::from_secs(60)).await, "{}", log_tail());
    }
    publisher.await.unwrap();
    assert!(
        eventually(Duration::from_secs(180), || async {
            stored_on(port).await >= N as u64
        })
        .await,
        "caught up to {} of {N}; log:\n{}",
        stored_on(port).await,
        log_tail()
    );
    // Anything redelivered late would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored_on(port).await, N as u64, "nothing doubled");
    let ids = search_ids(&env, &["event_type:generic", "--kind", "event"]);
    let want: BTreeSet<String> = (0..N).map(|i| format!("k9-{i:05}")).collect();
    assert_eq!(ids, want, "every event indexed once");
    // `whale status` shows the index's own reading of each input, caught up; the durable
    // consumer `whale setup` made was never read.
    let status: Value = serde_json::from_slice(&env.ok(&["status", "--json"]).stdout).unwrap();
    let rows: Vec<&Value> = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["stage"] == "index")
        .collect();
    assert_eq!(rows.len(), 3, "{status}");
    for row in rows {
        assert_eq!(row["own_position"], true, "{row}");
        assert!(row["error"].is_null(), "{row}");
        assert_eq!(row["pending"], 0, "{row}");
    }
    let durable = nats
        .consumer_info("WHALE_EVENTS", "index-events")
        .await
        .unwrap();
    assert_eq!(
        durable.delivered.stream_sequence, 0,
        "index-events was read"
    );
    // Caught up, nothing waits: the writer and every tantivy thread are in the idle class
    // (policy 5) at nice 10, the event path in the normal class (0) at nice 0. A process that
    // may not leave the idle class again (the floor needs that) keeps them in the normal class
    // at nice 10; whale runs with this test's credentials and limits.
    let want_index = match whale_kernel::testkit::may_leave_idle_class() {
        true => (5, 10),
        false => (0, 10),
    };
    let threads = class_by_thread(index.pid().unwrap());
    let class_of = |prefix: &str| -> Vec<(u32, i64)> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, c)| *c)
            .collect()
    };
    for prefix in [
        "whale-index-wri",
        "thrd-tantivy",
        "merge_thread",
        "segment_update",
    ] {
        let c = class_of(prefix);
        assert!(
            !c.is_empty() && c.iter().all(|&v| v == want_index),
            "{prefix}: {threads:?}"
        );
    }
    let workers = class_of("tokio-r"); // tokio-rt-worker or tokio-runtime-w(orker)
    assert!(
        !workers.is_empty() && workers.iter().all(|&v| v == (0, 0)),
        "{threads:?}"
    );
    drop(index);
}

/// (thread name, (scheduling policy, nice)) of every thread of process `pid`, from /proc.
fn class_by_thread(pid: u32) -> Vec<(String, (u32, i64))> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)` one: state is field 3, nice field 19, policy field 41.
        let fields: Vec<&str> = match stat.rfind(')') {
            Some(i) => stat[i + 2..].split_whitespace().collect(),
            None => continue,
        };
        let nice = fields.get(19 - 3).and_then(|v| v.parse().ok());
        let policy = fields.get(41 - 3).and_then(|v| v.parse().ok());
        if let (Some(p), Some(n)) = (policy, nice) {
            out.push((comm.trim().to_owned(), (p, n)));
        }
    }
    out
}

/// One request as the SigV4 capture listener received it.
#[derive(Clone, serde::Serialize)]
struct Captured {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// The body's bytes (bulk bodies are NDJSON, search bodies JSON).
    body: Vec<u8>,
}

/// A stand-in for Amazon OpenSearch Service on a free port: records every request and answers
/// the few whale sends as a cluster would (templates acknowledged, every bulk item stored, no
/// search hits). It checks nothing itself: the signatures are verified afterwards by botocore.
async fn sigv4_capture() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Captured>>>) {
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, Uri};
    type Log = std::sync::Arc<std::sync::Mutex<Vec<Captured>>>;
    async fn answer(
        State(log): State<Log>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::Json<Value> {
        let path = uri.path().to_owned();
        log.lock().unwrap().push(Captured {
            method: method.to_string(),
            target: uri.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            body: body.to_vec(),
        });
        axum::Json(if path.ends_with("/_bulk") {
            let items: Vec<Value> = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .step_by(2)
                .map(|_| json!({"index": {"status": 201, "result": "created"}}))
                .collect();
            json!({"took": 1, "errors": false, "items": items})
        } else if path.ends_with("/_search") {
            json!({"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}})
        } else if path.starts_with("/_cat/") {
            json!([])
        } else {
            json!({"acknowledged": true})
        })
    }
    let log: Log = Default::default();
    let app = axum::Router::new().fallback(answer).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, log)
}

/// The Python with botocore that verifies SigV4 signatures: `WHALE_BOTOCORE_PYTHON`, else
/// `.whale/tools/aws-venv/bin/python` (deploy/install.sh).
fn botocore_python() -> std::path::PathBuf {
    let p = std::env::var_os("WHALE_BOTOCORE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".whale/tools/aws-venv/bin/python"));
    assert!(
        p.is_file(),
        "{} is missing: run deploy/install.sh (it installs botocore from PyPI into .whale/tools/aws-venv) or set WHALE_BOTOCORE_PYTHON to a python that has botocore",
        p.display()
    );
    p
}

/// Issue 16: `index.opensearch_auth = "aws_sigv4"`. Amazon OpenSearch Service cannot be reached
/// here, so the index stage and `whale events search` talk to a local listener that records the
/// requests; botocore (AWS's own Python implementation) then re-signs each captured request with
/// the same credentials and `x-amz-date` and must produce the same `Authorization` header, and
/// checks `x-amz-content-sha256` against the body. Credentials come from the standard chain
/// (here its environment variables); the secret key appears in no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_aws_sigv4_signatures_verify_with_botocore() {
    const KEY_ID: &str = "AKIAWHALETEST7EXAMPLE";
    const SECRET: &str = "wHaLe/SigV4+TestSecret0123456789abcdEXAMPLE";
    const TOKEN: &str = "FwoGZXIvYXdzEWhaleSessionToken//test+token==";
    let python = botocore_python();
    let (port, captured) = sigv4_capture().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let mut env = Env::new();
    env.set("WHALE_OPENSEARCH_URL", &format!("http://127.0.0.1:{port}"));
    env.set("WHALE_OPENSEARCH_AUTH", "aws_sigv4");
    env.set("WHALE_OPENSEARCH_AWS_REGION", "eu-west-1");
    env.set("AWS_ACCESS_KEY_ID", KEY_ID);
    env.set("AWS_SECRET_ACCESS_KEY", SECRET);
    env.set("AWS_SESSION_TOKEN", TOKEN);
    // Only the environment: no profile files or instance metadata of this machine.
    let none = dir.path().join("none");
    env.set("AWS_CONFIG_FILE", none.to_str().unwrap());
    env.set("AWS_SHARED_CREDENTIALS_FILE", none.to_str().unwrap());
    env.set("AWS_EC2_METADATA_DISABLED", "true");
    env.set(
        "WHALE_LOG",
        "debug,async_nats=info,aws_sigv4=trace,aws_config=trace,aws_smithy_runtime=trace,opensearch=trace,reqwest=trace,hyper_util=trace",
    );
    env.prepare();
    let _w = env.run_logged("ingest,validate,index", &log).await;
    let evs: Vec<Value> = events(50).into_iter().map(|(e, _)| e).collect();
    let r = reqwest::Client::new()
        .post(env.http("/v1/events"))
        .json(&evs)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let accepted = events(50).iter().filter(|(_, ok)| *ok).count();
    let bulk_items = || {
        captured
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.target.starts_with("/_bulk"))
            .map(|c| {
                c.body
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count()
                    / 2
            })
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            bulk_items() >= accepted
        })
        .await,
        "{} of {accepted} events sent to _bulk; log:\n{}",
        bulk_items(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut search = env.whale(&["events", "search", "--json", "event_type:generic"]);
    search.env("WHALE_LOG", "trace,async_nats=info");
    let out = search.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "search: {stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["total"], 0);

    let reqs = captured.lock().unwrap().clone();
    let file = dir.path().join("requests.json");
    std::fs::write(&file, serde_json::to_vec(&reqs).unwrap()).unwrap();
    let verify = std::process::Command::new(&python)
        .arg(repo().join("tests/it/sigv4_verify.py"))
        .arg(&file)
        .args(["eu-west-1", "es"])
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", TOKEN)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success(), "botocore verification failed");
    assert!(
        report.contains(&format!("{} verified, 0 failed", reqs.len())),
        "{report}"
    );
    // What was signed: the template installs, the bulk writes and the search.
    for (method, path) in [
        ("PUT", "/_component_template/whale-mappings"),
        ("PUT", "/_index_template/whale"),
        ("POST", "/_bulk"),
        ("POST", "/whale-*/_search"),
    ] {
        assert!(
            reqs.iter()
                .any(|c| c.method == method && c.target.split('?').next() == Some(path)),
            "no signed {method} {path} among {:?}",
            reqs.iter().map(|c| &c.target).collect::<Vec<_>>()
        );
    }
    let run_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        run_log.contains("aws") || run_log.contains("AWS"),
        "the trace log shows the signing at work"
    );
    for (what, text) in [
        ("the index stage's log", run_log.as_str()),
        ("search's stderr", stderr.as_str()),
        ("search's stdout", stdout.as_str()),
    ] {
        assert!(!text.contains(SECRET), "{what} holds the secret key");
        assert!(!text.contains(TOKEN), "{what} holds the session token");
    }
}

/// The index stage's loop on a trickle: each batch waits up to the stage's `linger` to fill, so
/// 40 messages published 10 ms apart make a few batches, not one per message (which used up the
/// batches in flight before each commit and then burst; docs/operations.md, session 13). The
/// stage is the real index stage on an embedded index, which keeps its own place: every
/// message is committed and the position is after the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_reaches_the_index_in_few_batches() {
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};
    use whale_kernel::worker::{self, Options};
    use whale_kernel::{Delivery, Outcome, Stage};

    struct Recording {
        inner: whale_index::stage::Index,
        sizes: Mutex<Vec<usize>>,
    }
    #[async_trait]
    impl Stage for Recording {
        fn name(&self) -> &'static str {
            "index"
        }
        fn options(&self) -> Options {
            self.inner.options()
        }
        async fn handle(&self, d: &Delivery) -> Outcome {
            self.inner.handle(d).await
        }
        async fn handle_batch(&self, batch: &[Delivery]) -> Vec<Outcome> {
            self.sizes.lock().unwrap().push(batch.len());
            self.inner.handle_batch(batch).await
        }
        async fn position(
            &self,
            input: &whale_kernel::subjects::Input,
        ) -> anyhow::Result<worker::Position> {
            self.inner.position(input).await
        }
    }

    let server = NatsServer::start();
    let (nats, input) = raw_input(&server, "LINGER_TEST", "linger-test", "linger").await;
    let dir = tempfile::tempdir().unwrap();
    let backend = whale_index::embedded::Embedded::open(dir.path()).unwrap();
    let stage = Arc::new(Recording {
        inner: whale_index::stage::Index::new(Arc::new(backend)),
        sizes: Mutex::new(Vec::new()),
    });
    let linger = stage.options().linger;
    assert!(!linger.is_zero(), "the index stage lingers");
    let input_again = input.clone();
    let (stop, loop_task) = spawn_loop(&nats, stage.clone(), input);
    let n = 40;
    let started = std::time::Instant::now();
    for i in 0..n {
        nats.publish_raw(format!("linger.m{i}"), &[], format!("{{\"n\":{i}}}"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let span = started.elapsed();
    assert!(
        eventually(Duration::from_secs(20), || async {
            stage.sizes.lock().unwrap().iter().sum::<usize>() >= n
        })
        .await,
        "every message reached the stage: {:?}",
        stage.sizes.lock().unwrap()
    );
    // Each batch but the last waited `linger` for more (none fills: 512 per batch).
    let sizes = stage.sizes.lock().unwrap().clone();
    let most = (span.as_secs_f64() / linger.as_secs_f64()).ceil() as usize + 2;
    println!("{n} messages over {span:?}, linger {linger:?}: batches {sizes:?} (at most {most})");
    assert_eq!(sizes.iter().sum::<usize>(), n, "each message handled once");
    assert!(sizes.len() <= most, "batches {sizes:?}: more than {most}");
    // Committed, and the index's own position is after the last message; it read in order
    // without the durable consumer, which is untouched (nothing delivered, nothing acked).
    assert!(
        eventually(Duration::from_secs(20), || async {
            matches!(stage.position(&input_again).await, Ok(worker::Position::At(p)) if p == n as u64 + 1)
        })
        .await,
        "the position never passed the last message: {:?}",
        stage.position(&input_again).await
    );
    let info = nats
        .consumer_info("LINGER_TEST", "linger-test")
        .await
        .unwrap();
    assert_eq!(
        (info.delivered.stream_sequence, info.num_ack_pending),
        (0, 0),
        "the durable consumer was not read"
    );
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), loop_task).await;
}

/// The worker loop's reading for a stage that keeps its own place (the embedded index): it
/// starts just after what an earlier whale's durable consumer acked, reads in stream order
/// without acks (the durable consumer is never read), and after a message it could not store it
/// asks the stage again and reads on from there; a message the stage panics on is passed over,
/// counted, and the reading goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_with_its_own_place_reads_in_order_and_again_after_a_failure() {
    use async_trait::async_trait;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use whale_kernel::subjects::Input;
    use whale_kernel::worker::{Options, Position};
    use whale_kernel::{metrics, Delivery, Outcome, Stage};

    #[derive(Default)]
    struct Own {
        seen: Mutex<Vec<u64>>,
        asked: Mutex<Vec<Position>>,
        failed: AtomicBool,
        panicked: AtomicBool,
    }
    #[async_trait]
    impl Stage for Own {
        fn name(&self) -> &'static str {
            "own-place"
        }
        fn options(&self) -> Options {
            Options {
                batch: 1,
                own_position: true,
                ..Default::default()
            }
        }
        async fn handle(&self, d: &Delivery) -> Outcome {
            self.seen.lock().unwrap().push(d.stream_seq);
            if d.stream_seq == 80 && !self.failed.swap(true, Ordering::SeqCst) {
                return Outcome::Retry {
                    delay: Duration::from_millis(200),
                    reason: "not stored".into(),
                };
            }
            if d.stream_seq == 90 && !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("a bug on message 90");
            }
            Outcome::Ack(vec![])
        }
        async fn position(&self, _input: &Input) -> anyhow::Result<Position> {
            let mut asked = self.asked.lock().unwrap();
            let p = match asked.is_empty() {
                // An index of an earlier whale: its consumer's acks say where it is.
                true => Position::AfterAcked { otherwise: 1 },
                // Everything before 80 is durable.
                false => Position::At(80),
            };
            asked.push(p);
            Ok(p)
        }
    }

    let server = NatsServer::start();
    let (nats, input) = raw_input(&server, "OWN_TEST", "own-test", "own").await;
    for i in 1..=100 {
        nats.publish_raw(format!("own.m{i}"), &[], format!("{{\"n\":{i}}}"))
            .await
            .unwrap();
    }
    // The earlier whale acked the first 60 through the durable consumer.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let durable: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("OWN_TEST")
        .await
        .unwrap()
        .get_consumer("own-test")
        .await
        .unwrap();
    let mut first = durable.fetch().max_messages(60).messages().await.unwrap();
    while let Some(m) = first.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let panics = || {
        metrics::PANICS
            .with_label_values(&["stage", "own-place"])
            .get()
    };
    let panics_before = panics();

    let stage = Arc::new(Own::default());
    let (stop, loop_task) = spawn_loop(&nats, stage.clone(), input);
    assert!(
        eventually(Duration::from_secs(30), || async {
            stage
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| **s == 100)
                .count()
                == 1
                && stage.asked.lock().unwrap().len() == 2
        })
        .await,
        "seen {:?}, asked {:?}",
        stage.seen.lock().unwrap(),
        stage.asked.lock().unwrap()
    );
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), loop_task).await;

    let seen = stage.seen.lock().unwrap().clone();
    println!("own-place reading: {seen:?}");
    assert_eq!(
        *stage.asked.lock().unwrap(),
        vec![Position::AfterAcked { otherwise: 1 }, Position::At(80)]
    );
    // First pass: in order from just after the acked 60, past the failure at 80 (the batches
    // already in hand), then from 80 again to the end, 90's panic passed over.
    let again = seen
        .iter()
        .enumerate()
        .skip(1)
        .find(|(i, s)| **s == 80 && seen[..*i].contains(&80))
        .map(|(i, _)| i)
        .expect("read again from 80");
    assert!(
        seen[..again].iter().copied().eq(61..61 + again as u64),
        "first pass in order from 61: {seen:?}"
    );
    assert!(
        seen[again..].iter().copied().eq(80..=100),
        "second pass 80..=100 in order: {seen:?}"
    );
    assert_eq!(panics() - panics_before, 1, "the panic is counted");
    let info = nats.consumer_info("OWN_TEST", "own-test").await.unwrap();
    assert_eq!(
        (
            info.delivered.stream_sequence,
            info.ack_floor.stream_sequence
        ),
        (60, 60),
        "the durable consumer was not read"
    );
}
