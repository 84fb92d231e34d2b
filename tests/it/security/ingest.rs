//! Security regressions (ingest): issue 12's findings 2, 3, 4, 5, 9, 11 and 12 (ingest share)
//! against a real `whale run --stages ingest,validate`, a real nats-server and the real
//! `whale publish`. Each test names the finding it covers.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use whale_kernel::subjects::{STREAM_EVENTS, STREAM_INGEST, STREAM_PIPE};

use crate::harness::*;

/// A `whale run` we started ourselves, to read its memory from /proc; killed on drop.
struct Proc(Child);

impl Proc {
    fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc status")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(env: &Env, stages: &str) -> Proc {
    let child = env
        .whale(&["run", "--stages", stages])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn whale run");
    let p = Proc(child);
    assert!(
        ready(env.http_port, Duration::from_secs(30)).await,
        "whale run not ready"
    );
    p
}

async fn post(env: &Env, body: impl Into<reqwest::Body>, ct: &str) -> (u16, Value, String) {
    let r = reqwest::Client::new()
        .post(env.http("/v1/events"))
        .header("content-type", ct)
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("POST /v1/events");
    let code = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.expect("body");
    let v =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({code}): {text:.300}"));
    (code, v, retry)
}

/// POSTs a body of `len` spaces over a plain socket, reading the answer while still writing: the
/// server answers a body over its limit at once and closes without reading it (an HTTP client
/// library would fail on the broken pipe before reading the answer).
fn raw_post(port: u16, len: usize) -> (u16, Value) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..len / chunk.len() {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&got).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON ({code}): {text:.300}"));
    (code, v)
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success());
}

/// Waits until every thread of `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`): `kill
/// -STOP` returns before a busy multi-threaded server has stopped, and a request sent in that
/// window is answered by a server that is still running.
fn wait_stopped(pid: u32) {
    let all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
            })
        })
    };
    for _ in 0..500 {
        if all_stopped() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} did not stop after SIGSTOP");
}

fn config(env: &mut Env, dir: &tempfile::TempDir, toml: &str) {
    let p = dir.path().join("whale.toml");
    std::fs::write(&p, toml).expect("write whale.toml");
    env.set("WHALE_CONFIG", p.to_str().expect("utf-8 path"));
}

/// Findings 2 and 12: a 4 MiB `[{},{},…]` body is refused by its event count (413, a small
/// JSON answer) instead of growing the process to gigabytes; a body over the limit gets the
/// JSON error shape; 10,000 refused events are answered with the first 20 and the total; the
/// largest allowed body is accepted. Peak memory of the whale process is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_and_12_bounded_cost_per_request() {
    let env = Env::new();
    env.prepare();
    let p = start(&env, "ingest,validate").await;
    let base = p.vm_hwm_kib();

    let n = 4 * 1024 * 1024 / 3;
    let body = "[".to_owned() + &"{},".repeat(n) + "{}]";
    let (code, v, _) = post(&env, body, "application/json").await;
    assert_eq!(code, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("http.max_items"),
        "{v}"
    );
    assert_eq!(v["refused_total"], 1);
    assert!(v.to_string().len() < 2048);
    let after_4mib = p.vm_hwm_kib();

    let (code, v) = raw_post(env.http_port, 64 * 1024 * 1024);
    assert_eq!(code, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("http.max_body_bytes"),
        "{v}"
    );
    assert_eq!(v["refused"][0]["reasons"][0]["pointer"], "");
    let after_64mib = p.vm_hwm_kib();

    // The largest body allowed, all `{}`: refused by count as well.
    let n = 16 * 1024 * 1024 / 3 - 1;
    let body = "[".to_owned() + &"{},".repeat(n) + "{}]";
    let (code, v, _) = post(&env, body, "application/json").await;
    assert_eq!(code, 413, "{v}");
    let after_16mib_empty = p.vm_hwm_kib();

    let body = "[".to_owned() + &"{},".repeat(9_999) + "{}]";
    let (code, v, _) = post(&env, body, "application/json").await;
    assert_eq!(code, 400);
    assert_eq!(v["refused_total"], 10_000);
    assert_eq!(v["refused"].as_array().unwrap().len(), 20);
    assert_eq!(v["refused"][19]["index"], 19);

    // The largest body allowed by default: 16 MiB of 10,000 events of ~1.6 KB.
    let pad = "x".repeat(16 * 1024 * 1024 / 10_000 - 120);
    let ev = json!({"event_type": "generic", "detail": {"message": pad}}).to_string();
    let body = format!("[{}]", vec![ev; 10_000].join(","));
    assert!(body.len() <= 16 * 1024 * 1024, "{}", body.len());
    let (code, v, _) = post(&env, body, "application/json").await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["accepted"], 10_000);
    let after_max = p.vm_hwm_kib();
    eprintln!(
        "finding 2 peak RSS (VmHWM) of whale run --stages ingest,validate: start {} MiB; after 4 MiB [{{}},…] body {} MiB; after 64 MiB body {} MiB; after 16 MiB [{{}},…] body {} MiB; after 16 MiB body of 10,000 accepted events {} MiB",
        base / 1024,
        after_4mib / 1024,
        after_64mib / 1024,
        after_16mib_empty / 1024,
        after_max / 1024
    );
    assert!(
        after_4mib < base + 64 * 1024,
        "4 MiB body grew the process to {after_4mib} KiB"
    );
    assert!(
        after_max < 512 * 1024,
        "16 MiB body grew the process to {after_max} KiB"
    );
}

/// Finding 3: when NATS does not confirm (server frozen), ingest says "storage unknown" with the
/// ids it assigned; the publishes land once the server is back, and resending with those ids
/// stores nothing twice. With NATS gone, the answer says nothing was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_storage_unknown_and_resend_with_ids_is_exactly_once() {
    let mut env = Env::new();
    env.prepare();
    let _p = start(&env, "ingest,validate").await;
    let nats = env.connect().await;
    let pid = env.nats.pid().expect("nats pid");
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"event_type": "generic", "detail": {"message": format!("f3-{i}")}}))
        .collect();
    signal(pid, "STOP");
    wait_stopped(pid);
    let (code, v, retry) = post(
        &env,
        Value::from(events.clone()).to_string(),
        "application/json",
    )
    .await;
    signal(pid, "CONT");
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["status"], "storage unknown", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("storage unknown"),
        "{v}"
    );
    assert_eq!(retry, "5");
    let ids: Vec<String> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(v["unknown_ids"].as_array().unwrap().len(), 3);
    // The buffered publishes land after all: the old "could not be stored" was wrong.
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&nats, STREAM_EVENTS, "whale.events.generic").await == 3
        })
        .await
    );
    // Resending with the returned ids creates nothing new.
    let again: Vec<Value> = events
        .iter()
        .zip(&ids)
        .map(|(e, id)| {
            let mut e = e.clone();
            e["id"] = json!(id);
            e
        })
        .collect();
    let (code, v, _) = post(&env, Value::from(again).to_string(), "application/json").await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["duplicates"], 3, "{v}");

    // NATS gone: once whale has noticed (readyz 503), nothing is sent and the answer says so.
    env.nats.stop();
    let readyz = env.http("/readyz");
    assert!(
        eventually(Duration::from_secs(15), || async {
            reqwest::get(&readyz).await.is_ok_and(|r| r.status() == 503)
        })
        .await
    );
    // 503 "not stored" comes only from the check before any publish (no wait on an ack that
    // cannot come), so the status proves the answer did not wait; no clock in this test.
    let one = json!({"event_type": "generic", "detail": {"message": "x"}}).to_string();
    let (code, v, retry) = post(&env, one, "application/json").await;
    assert_eq!(
        (code, v["status"].as_str()),
        (503, Some("not stored")),
        "{v}"
    );
    assert_eq!(retry, "5");
    env.nats.restart();
    let nats = env.connect().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&nats, STREAM_EVENTS, "whale.events.generic").await, 3);
}

/// Finding 3 (`whale publish`): unconfirmed publishes are retried with the same ids; when they
/// stay unconfirmed, the error lists them and the exit code is non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_whale_publish_retries_with_the_same_ids() {
    let mut env = Env::new();
    env.prepare();
    let _p = start(&env, "ingest,validate").await;
    let nats = env.connect().await;
    let pid = env.nats.pid().expect("nats pid");
    let line =
        |i: usize| format!("{{\"event_type\":\"generic\",\"detail\":{{\"message\":\"p{i}\"}}}}\n");

    // Frozen server for ~12 s: the first tries time out, a retry succeeds, nothing twice.
    let mut child = env
        .whale(&["publish", "--file", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn whale publish");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(line(0).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&nats, STREAM_EVENTS, "whale.events.generic").await == 1
        })
        .await
    );
    signal(pid, "STOP");
    wait_stopped(pid);
    for i in 1..4 {
        stdin.write_all(line(i).as_bytes()).unwrap();
    }
    drop(stdin);
    tokio::time::sleep(Duration::from_secs(12)).await;
    signal(pid, "CONT");
    let out = child.wait_with_output().expect("whale publish");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retry 1/5"), "{err}");
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&nats, STREAM_EVENTS, "whale.events.generic").await == 4
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&nats, STREAM_EVENTS, "whale.events.generic").await, 4);

    // NATS gone for good: one retry, then a clear error naming the ids, exit 4.
    let mut child = env
        .whale(&["publish", "--file", "-", "--retries", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn whale publish");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(line(10).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&nats, STREAM_EVENTS, "whale.events.generic").await == 5
        })
        .await
    );
    env.nats.stop();
    stdin.write_all(line(11).as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().expect("whale publish");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    // Line 2 was never confirmed. Line 1 was stored, but its ack may not have been read before
    // the server went away; then it is listed too: "unknown" never claims "not stored".
    assert!(err.contains("event(s) storage unknown"), "{err}");
    assert!(err.contains("line 2 id "), "{err}");
    assert!(!err.contains("line 3 id "), "{err}");
}

/// Finding 4: a string detail holding 120-deep JSON is refused at ingest with a /detail pointer;
/// every rejection in validate keeps an id (the producer's, or the one validate assigned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_string_detail_limits_and_rejections_keep_their_id() {
    let env = Env::new();
    env.prepare();
    let _p = start(&env, "ingest,validate").await;
    let nats = env.connect().await;
    let deep = "[".repeat(120) + &"]".repeat(120);
    let ev = json!({"event_type": "generic", "detail": deep});
    let (code, v, _) = post(&env, ev.to_string(), "application/json").await;
    assert_eq!(code, 400, "{v}");
    let ptr = v["refused"][0]["reasons"][0]["pointer"].as_str().unwrap();
    assert!(ptr.starts_with("/detail/0/0"), "{v}");

    // Straight over NATS: with an id, without one, and unparseable with an id.
    let raw = [
        json!({"id": "f4-with-id", "event_type": "generic", "detail": deep}).to_string(),
        json!({"event_type": "generic", "detail": deep}).to_string(),
        r#"{"id":"f4-dup","event_type":"generic","detail":{"message":"a","message":"b"}}"#
            .to_owned(),
    ];
    for r in raw {
        nats.publish_raw("whale.in.generic", &[], Bytes::from(r))
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&nats, STREAM_EVENTS, "whale.rejected.>").await == 3
        })
        .await
    );
    let rej = read_all(&nats, STREAM_EVENTS, "whale.rejected.>").await;
    let by_id = |id: &str| rej.iter().find(|r| r["id"] == id).cloned();
    let with_id = by_id("f4-with-id").expect("rejection keeps the producer's id");
    assert!(
        with_id["reasons"][0]["pointer"]
            .as_str()
            .unwrap()
            .starts_with("/detail/0"),
        "{with_id}"
    );
    let dup = by_id("f4-dup").expect("rejection of an unparseable event keeps its id");
    assert_eq!(dup["reasons"][0]["pointer"], "/detail/message", "{dup}");
    let assigned: Vec<&Value> = rej
        .iter()
        .filter(|r| !r["id"].as_str().unwrap_or("f4").starts_with("f4"))
        .collect();
    assert_eq!(assigned.len(), 1, "{rej:?}");
    assert_eq!(
        assigned[0]["id"].as_str().map(str::len),
        Some(26),
        "{}",
        assigned[0]
    );
}

/// Finding 5: CloudEvents binary mode with text data is accepted and stays text through
/// validate (not decoded a second time, even when the text looks like JSON); JSON data is
/// decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_binary_mode_text_stays_text() {
    let mut env = Env::new();
    env.set("WHALE_ALLOW_UNKNOWN_TYPES", "1");
    env.prepare();
    let _p = start(&env, "ingest,validate").await;
    let nats = env.connect().await;
    let http = reqwest::Client::new();
    for (id, ct, body) in [
        ("f5-text", "text/plain", "kernel: oops {not json"),
        ("f5-text-json", "text/plain", "{\"a\":1}"),
        ("f5-json", "application/json", "{\"a\":1}"),
    ] {
        let r = http
            .post(env.http("/v1/events"))
            .header("ce-specversion", "1.0")
            .header("ce-type", "test.binary")
            .header("ce-id", id)
            .header("ce-source", "/f5")
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&nats, STREAM_EVENTS, "whale.events.test.binary").await == 3
        })
        .await
    );
    assert_eq!(count(&nats, STREAM_EVENTS, "whale.rejected.>").await, 0);
    let evs = read_all(&nats, STREAM_EVENTS, "whale.events.test.binary").await;
    let by_id = |id: &str| evs.iter().find(|e| e["id"] == id).cloned().unwrap();
    assert_eq!(by_id("f5-text")["detail"], "kernel: oops {not json");
    assert_eq!(by_id("f5-text-json")["detail"], "{\"a\":1}");
    assert_eq!(by_id("f5-json")["detail"], json!({"a": 1}));
}

/// Finding 9: `whale publish` reads pipes, fifos and /dev/stdin to the end; an input it cannot
/// read is an error, never "published 0" with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_publish_reads_every_kind_of_file() {
    let env = Env::new();
    env.prepare();
    let nats = env.connect().await;
    let lines: String = (0..3)
        .map(|i| format!("{{\"event_type\":\"generic\",\"detail\":{{\"message\":\"m{i}\"}}}}\n"))
        .collect();
    // /dev/stdin as a pipe.
    let mut c = env
        .whale(&["publish", "--file", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("published 3,"), "{err}");
    // A fifo, as `<(…)` gives.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let writer = {
        let (fifo, lines) = (fifo.clone(), lines.clone());
        std::thread::spawn(move || std::fs::write(fifo, lines).unwrap())
    };
    let out = env
        .whale(&["publish", "--file", fifo.to_str().unwrap()])
        .output()
        .unwrap();
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("published 3,"), "{err}");
    assert_eq!(count(&nats, STREAM_INGEST, "whale.in.>").await, 6);
    // Not readable to the end (a directory): an error, exit non-zero.
    let out = env
        .whale(&["publish", "--file", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not read to its end"), "{err}");
    // A line that is not UTF-8 is refused by its number, exit 3.
    let file = dir.path().join("bad.ndjson");
    std::fs::write(
        &file,
        b"{\"event_type\":\"generic\",\"detail\":{\"message\":\"\xff\"}}\n",
    )
    .unwrap();
    let out = env
        .whale(&["publish", "--file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("line 1: refused"), "{err}");
}

/// Finding 11: streams have size caps with the right discard policy; a full ingest queue gets
/// 429 with Retry-After (and a clear error from `whale publish`); a source over its rate gets
/// 429 for itself only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_11_full_stream_and_per_source_rate() {
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    config(
        &mut env,
        &dir,
        "[nats]\ningest_max_bytes = 4096\n[http]\nrate_per_source = 1.0\nburst_per_source = 5\n",
    );
    env.prepare();
    let nats = env.connect().await;
    for (name, discard) in [
        (STREAM_INGEST, "new"),
        (STREAM_EVENTS, "old"),
        (STREAM_PIPE, "new"),
    ] {
        let info = nats.stream_info(name).await.unwrap().config;
        assert!(info.max_bytes > 0, "{name} has no size cap");
        assert_eq!(
            format!("{:?}", info.discard).to_lowercase(),
            discard,
            "{name}"
        );
    }
    // Only ingest runs: nothing drains the work queue, so it fills.
    let _p = start(&env, "ingest").await;
    let msg = "y".repeat(600);
    let mut full = None;
    for i in 0..40 {
        let ev =
            json!({"event_type": "generic", "source": format!("s{i}"), "detail": {"message": msg}});
        let (code, v, retry) = post(&env, ev.to_string(), "application/json").await;
        if code == 429 {
            full = Some((v, retry));
            break;
        }
        assert_eq!(code, 202, "{v}");
    }
    let (v, retry) = full.expect("the capped stream never refused");
    assert_eq!(retry, "30");
    assert!(v["error"].as_str().unwrap().contains("is full"), "{v}");
    assert_eq!(v["not_stored_ids"].as_array().unwrap().len(), 1, "{v}");
    let out = env
        .whale(&[
            "publish",
            "--retries",
            "0",
            "--type",
            "generic",
            "--data",
            &json!({"message": msg}).to_string(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("stream WHALE_INGEST is full"), "{err}");

    // Per-source rate, in a fresh environment: 5 pass, the 6th is 429 for "noisy" only.
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    config(
        &mut env,
        &dir,
        "[http]\nrate_per_source = 0.1\nburst_per_source = 5\n",
    );
    env.prepare();
    let _p = start(&env, "ingest").await;
    let ev = |src: &str| {
        json!({"event_type": "generic", "source": src, "detail": {"message": "m"}}).to_string()
    };
    let batch = format!("[{}]", vec![ev("noisy"); 5].join(","));
    assert_eq!(post(&env, batch, "application/json").await.0, 202);
    let (code, v, retry) = post(&env, ev("noisy"), "application/json").await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(v["source"], "noisy");
    assert_eq!(retry, "10");
    assert_eq!(post(&env, ev("quiet"), "application/json").await.0, 202);
}

/// Finding 12: duplicate keys are refused with their pointer over HTTP and by `whale publish`;
/// a body nested too deep gets the refused/pointer shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_12_duplicate_keys_and_depth_shape() {
    let env = Env::new();
    env.prepare();
    let _p = start(&env, "ingest,validate").await;
    let dup = r#"{"event_type":"generic","detail":{"message":"a"},"detail":{"message":"b"}}"#;
    let (code, v, _) = post(&env, dup, "application/json").await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["refused"][0]["reasons"][0]["pointer"], "/detail", "{v}");
    assert!(v["refused"][0]["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .contains("duplicate key"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dup.ndjson");
    std::fs::write(&file, format!("{dup}\n")).unwrap();
    let out = env
        .whale(&["publish", "--file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("/detail: duplicate key"), "{err}");
    let deep = "[".repeat(200) + &"]".repeat(200);
    for body in [
        deep.clone(),
        format!("[{deep}]"),
        format!("{{\"event_type\":\"generic\",\"detail\":{deep}}}"),
    ] {
        let (code, v, _) = post(&env, body, "application/json").await;
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["refused_total"], 1, "{v}");
        let r = &v["refused"][0]["reasons"][0];
        assert!(
            r["message"].as_str().unwrap().contains("deeper than 64"),
            "{v}"
        );
        assert!(r["pointer"].as_str().unwrap().ends_with("/0/0/0"), "{v}");
    }
}
