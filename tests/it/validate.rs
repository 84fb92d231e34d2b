//! Ingest and the validate stage against a real nats-server and the real `whale` binary.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use whale_kernel::subjects::STREAM_EVENTS;

use crate::harness::*;

/// The kinds of event the mixed test sends; `valid()` says which must be accepted.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Valid,
    ValidNoId,
    DetailAsString,
    WrongType,
    MissingRequired,
    UnknownType,
    DetailNotJson,
}

impl Kind {
    fn of(i: usize) -> Kind {
        match i % 10 {
            0..=3 => Kind::Valid,
            4 => Kind::ValidNoId,
            5 => Kind::DetailAsString,
            6 => Kind::WrongType,
            7 => Kind::MissingRequired,
            8 => Kind::UnknownType,
            _ => Kind::DetailNotJson,
        }
    }
    fn valid(self) -> bool {
        matches!(self, Kind::Valid | Kind::ValidNoId | Kind::DetailAsString)
    }
}

fn event(i: usize) -> (String, Value) {
    let id = format!("mixed-{i:06}");
    let ev = match Kind::of(i) {
        Kind::Valid => {
            json!({"id": id, "event_type": "vm.disk_usage", "detail": {"host": format!("web-{i}"), "usage_pct": 91}})
        }
        Kind::ValidNoId => {
            json!({"event_type": "vm.disk_usage", "detail": {"host": format!("web-{i}"), "usage_pct": 50}})
        }
        Kind::DetailAsString => {
            json!({"id": id, "event_type": "dmesg.error", "detail": format!("{{\"host\": \"h{i}\", \"msg\": [\"a\"], \"code\": \"1\"}}")})
        }
        Kind::WrongType => {
            json!({"id": id, "event_type": "vm.disk_usage", "detail": {"host": "web-1", "usage_pct": "high"}})
        }
        Kind::MissingRequired => {
            json!({"id": id, "event_type": "vm.disk_usage", "detail": {"usage_pct": 99}})
        }
        Kind::UnknownType => json!({"id": id, "event_type": "nope.unknown", "detail": {}}),
        Kind::DetailNotJson => {
            json!({"id": id, "event_type": "dmesg.error", "detail": "kernel: oops {not json"})
        }
    };
    (id, ev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_events_over_nats_and_http() {
    let env = Env::new();
    env.prepare();
    let _w = env.run("ingest,validate");
    let nats = env.connect().await;
    let n = 10_000;
    let http = reqwest::Client::new();
    let mut batch = Vec::new();
    let mut expected_valid_ids = BTreeSet::new();
    let mut expected_valid = 0;
    let mut expected_rejected = 0;
    for i in 0..n {
        let (id, ev) = event(i);
        let kind = Kind::of(i);
        if kind.valid() {
            expected_valid += 1;
            if !matches!(kind, Kind::ValidNoId) {
                expected_valid_ids.insert(id.clone());
            }
        }
        if i % 2 == 0 {
            // Over NATS, as any client would: no whale headers, no msg id.
            let t = ev["event_type"].as_str().unwrap().to_owned();
            nats.publish_raw(format!("whale.in.{t}"), &[], Bytes::from(ev.to_string()))
                .await
                .unwrap();
            if !kind.valid() {
                expected_rejected += 1;
            }
        } else {
            // Over HTTP: envelope-level problems are refused at the door (400) instead.
            match kind {
                Kind::DetailNotJson => {
                    let r = http
                        .post(env.http("/v1/events"))
                        .json(&ev)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 400);
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(
                        body["refused"][0]["reasons"][0]["pointer"], "/detail",
                        "{body}"
                    );
                }
                _ => {
                    if !kind.valid() {
                        expected_rejected += 1;
                    }
                    batch.push(ev);
                }
            }
            if batch.len() == 250 {
                let r = http
                    .post(env.http("/v1/events"))
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        let r = http
            .post(env.http("/v1/events"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // The same ids again, over both paths: accepted once.
    for i in (0..200).filter(|i| matches!(Kind::of(*i), Kind::Valid)) {
        let (_, ev) = event(i);
        nats.publish_raw("whale.in.vm.disk_usage", &[], Bytes::from(ev.to_string()))
            .await
            .unwrap();
        let r = http
            .post(env.http("/v1/events"))
            .json(&ev)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let total = (expected_valid + expected_rejected) as u64;
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&nats, STREAM_EVENTS, ">").await >= total
        })
        .await,
        "expected {total} records, got {}",
        count(&nats, STREAM_EVENTS, ">").await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = read_all(&nats, STREAM_EVENTS, "whale.events.>").await;
    let rejected = read_all(&nats, STREAM_EVENTS, "whale.rejected.>").await;
    assert_eq!(accepted.len(), expected_valid, "accepted");
    assert_eq!(rejected.len(), expected_rejected, "rejected");
    let ids: BTreeSet<String> = accepted
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), accepted.len(), "no event accepted twice");
    assert!(
        expected_valid_ids.is_subset(&ids),
        "every valid event with an id is accepted"
    );
    for e in &accepted {
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(e["detail"].is_object(), "detail decoded to an object: {e}");
    }
    for r in &rejected {
        let reasons = r["reasons"].as_array().unwrap();
        assert!(!reasons.is_empty(), "{r}");
        let text = reasons
            .iter()
            .map(|x| format!("{} {}", x["pointer"], x["message"]))
            .collect::<String>();
        match r["id"]
            .as_str()
            .map(|id| Kind::of(id[6..].parse().unwrap()))
        {
            Some(Kind::WrongType) => assert!(text.contains("/detail/usage_pct"), "{text}"),
            Some(Kind::MissingRequired) => assert!(text.contains("host"), "{text}"),
            Some(Kind::UnknownType) => assert!(text.contains("no schema"), "{text}"),
            Some(Kind::DetailNotJson) => assert!(text.contains("not JSON"), "{text}"),
            other => panic!("unexpected rejection {other:?}: {r}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_accepts_every_event_exactly_once() {
    let env = Env::new();
    env.prepare();
    let nats = env.connect().await;
    let n = 20_000u64;
    let mut w = whale_kernel::Window::on(&nats, 1024);
    for i in 0..n {
        let ev = json!({"id": format!("k-{i}"), "event_type": "vm.disk_usage", "detail": {"host": "h", "usage_pct": 95}});
        w.send(
            (),
            whale_kernel::Output::new(
                "whale.in.vm.disk_usage".into(),
                format!("k-{i}"),
                ev.to_string(),
            ),
        )
        .await;
    }
    w.drain().await;
    let mut worker = env.run("validate");
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_EVENTS, "whale.events.>").await >= 2_000
        })
        .await
    );
    worker.kill9();
    let mid = count(&nats, STREAM_EVENTS, "whale.events.>").await;
    assert!(mid < n, "killed mid-run ({mid} of {n} done)");
    let _again = env.run("validate");
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&nats, STREAM_EVENTS, "whale.events.>").await >= n
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = read_all(&nats, STREAM_EVENTS, "whale.events.>").await;
    assert_eq!(accepted.len() as u64, n, "every event exactly once");
    let ids: BTreeSet<&str> = accepted.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len() as u64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_applied_while_running_takes_effect() {
    let env = Env::new();
    env.prepare();
    let _w = env.run("ingest,validate");
    let nats = env.connect().await;
    let http = reqwest::Client::new();
    let post = |id: &str| {
        let body = json!({"id": id, "event_type": "vm.disk_usage", "detail": {"host": "h", "usage_pct": 150}});
        http.post(env.http("/v1/events")).json(&body).send()
    };
    assert_eq!(post("before").await.unwrap().status(), 202);
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&nats, STREAM_EVENTS, "whale.rejected.>").await == 1
        })
        .await
    );
    // A new version of the schema allows usage up to 200.
    let dir = tempfile::tempdir().unwrap();
    let mut schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/vm.disk_usage.json")).unwrap(),
    )
    .unwrap();
    schema["properties"]["usage_pct"]["maximum"] = json!(200);
    std::fs::write(dir.path().join("vm.disk_usage.json"), schema.to_string()).unwrap();
    let out = env.ok(&["schemas", "apply", dir.path().to_str().unwrap(), "--json"]);
    let applied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(applied[0]["change"], "updated");
    assert_eq!(applied[0]["version"], 2);
    let mut i = 0;
    let took = eventually(Duration::from_secs(10), || {
        i += 1;
        let id = format!("after-{i}");
        let fut = post(&id);
        let nats = nats.clone();
        async move {
            fut.await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            count(&nats, STREAM_EVENTS, "whale.events.>").await >= 1
        }
    })
    .await;
    assert!(
        took,
        "the running worker accepted usage_pct 150 under schema v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_clear_reasons_and_the_worker_goes_on() {
    let env = Env::new();
    env.prepare();
    let _w = env.run("ingest,validate");
    let nats = env.connect().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let big = json!({"event_type": "generic", "detail": {"message": "x".repeat(2 * 1024 * 1024)}})
        .to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed",
            br#"{"event_type": "generic", "detail": {"#.to_vec(),
            "malformed JSON",
        ),
        (
            "invalid utf-8",
            b"{\"event_type\": \"generic\", \"detail\": {\"message\": \"\xff\xfe\"}}".to_vec(),
            "not valid UTF-8",
        ),
        (
            "2 MiB",
            big.clone().into_bytes(),
            "the limit is 1048576 bytes",
        ),
        (
            "deep",
            format!("{{\"event_type\":\"generic\",\"detail\":{deep}}}").into_bytes(),
            "nests deeper",
        ),
        (
            "wrong types",
            br#"{"event_type": "generic", "detail": {"message": 5, "severity": "x"}}"#.to_vec(),
            "/detail/message",
        ),
        (
            "type not a string",
            br#"{"event_type": 7, "detail": {}}"#.to_vec(),
            "must be a string",
        ),
        (
            "detail not json",
            br#"{"event_type": "generic", "detail": "oops {"}"#.to_vec(),
            "is a string but not JSON",
        ),
        (
            "not an object",
            b"[1, 2, 3]".to_vec(),
            "must be a JSON object",
        ),
        (
            "unknown field",
            br#"{"event_type": "generic", "detail": {"message": "m"}, "host": "x"}"#.to_vec(),
            "unknown top-level field",
        ),
    ];
    for (_, body, _) in &cases {
        nats.publish_raw("whale.in.generic", &[], Bytes::from(body.clone()))
            .await
            .unwrap();
    }
    nats.publish_raw(
        "whale.in.generic",
        &[],
        Bytes::from(json!({"id": "good-after", "detail": {"message": "still here"}}).to_string()),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            count(&nats, STREAM_EVENTS, ">").await > cases.len() as u64
        })
        .await
    );
    let rejected = read_all(&nats, STREAM_EVENTS, "whale.rejected.>").await;
    assert_eq!(rejected.len(), cases.len(), "{rejected:#?}");
    for ((name, _, want), r) in cases.iter().zip(&rejected) {
        let text = r["reasons"].to_string();
        assert!(text.contains(want), "{name}: expected {want:?} in {text}");
    }
    assert!(
        rejected[2]["raw_truncated"].as_bool().unwrap(),
        "a 2 MiB event is kept truncated"
    );
    let accepted = read_all(&nats, STREAM_EVENTS, "whale.events.>").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["id"], "good-after");
    assert_eq!(
        accepted[0]["event_type"], "generic",
        "type taken from the subject"
    );

    // Over HTTP the same input is refused at the door with the status that says why.
    let http = reqwest::Client::new();
    let r = http
        .post(env.http("/v1/events"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = http
        .post(env.http("/v1/events"))
        .header("content-type", "application/json")
        .body(cases[0].1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("malformed JSON"));
    let r = http
        .post(env.http("/v1/events"))
        .header("content-type", "application/json")
        .body(cases[1].1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(env.http("/v1/events"))
        .json(&json!({"detail": {"message": "m"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("every event needs an event_type"));
    let r = http.get(env.http("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_takes_ndjson_and_cloudevents_and_requires_the_token() {
    let mut env = Env::new();
    env.set("WHALE_HTTP_TOKEN", "t0ken");
    env.prepare();
    let _w = env.run("ingest,validate");
    let nats = env.connect().await;
    let http = reqwest::Client::new();
    let url = env.http("/v1/events");
    let r = http
        .post(&url)
        .json(&json!({"event_type": "generic", "detail": {"message": "m"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let auth = "Bearer t0ken";
    let ndjson = "{\"id\":\"nd-1\",\"event_type\":\"generic\",\"detail\":{\"message\":\"a\"}}\n{\"id\":\"nd-2\",\"event_type\":\"generic\",\"detail\":{\"message\":\"b\"}}\n";
    let r = http
        .post(&url)
        .header("authorization", auth)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ids"], json!(["nd-1", "nd-2"]));
    let structured = json!({"specversion": "1.0", "type": "generic", "source": "/ci", "id": "ce-s", "data": {"message": "s"}, "biz": "trade"});
    let r = http
        .post(&url)
        .header("authorization", auth)
        .header("content-type", "application/cloudevents+json")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .post(&url)
        .header("authorization", auth)
        .header("ce-specversion", "1.0")
        .header("ce-type", "vm.disk_usage")
        .header("ce-source", "/agent")
        .header("ce-id", "ce-b")
        .header("ce-biz", "pay")
        .header("content-type", "application/json")
        .body(r#"{"host": "web-1", "usage_pct": 97}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&nats, STREAM_EVENTS, "whale.events.>").await >= 4
        })
        .await
    );
    let accepted = read_all(&nats, STREAM_EVENTS, "whale.events.>").await;
    let by_id = |id: &str| {
        accepted
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} accepted"))
    };
    assert_eq!(by_id("ce-s")["source"], "/ci");
    assert_eq!(by_id("ce-s")["labels"]["biz"], "trade");
    assert_eq!(by_id("ce-b")["event_type"], "vm.disk_usage");
    assert_eq!(by_id("ce-b")["detail"]["usage_pct"], 97);
    assert_eq!(by_id("ce-b")["labels"]["biz"], "pay");
}

#[test]
fn publish_cli_reports_refused_lines_and_counts() {
    let env = Env::new();
    env.prepare();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("events.ndjson");
    std::fs::write(
        &f,
        "{\"id\":\"c-1\",\"event_type\":\"generic\",\"detail\":{\"message\":\"a\"}}\nnot json\n{\"id\":\"c-1\",\"event_type\":\"generic\",\"detail\":{\"message\":\"a\"}}\n",
    )
    .unwrap();
    let out = env
        .whale(&["publish", "--file", f.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "refused lines make exit code 3");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["published"], 1);
    assert_eq!(s["duplicates"], 1);
    assert_eq!(s["refused"], 1);
    assert_eq!(s["refused_lines"][0]["line"], 2);
    let out = env.ok(&[
        "publish",
        "--type",
        "generic",
        "--data",
        "{\"message\":\"hi\"}",
        "--label",
        "biz=trade",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim().len(),
        26,
        "prints the new ULID"
    );
}
