//! A real Prometheus Alertmanager (v0.35.0, built by deploy/install.sh; `WHALE_ALERTMANAGER`
//! names another binary) as the client of `POST /v1/hooks/alertmanager`, through the whole
//! pipeline (`whale run`: all stages, Redis, the StackStorm emulator). Alerts are pushed through
//! Alertmanager's API v2; Alertmanager groups them and posts its webhook (bearer token via
//! `http_config.authorization`) through a recording proxy to whale. Asserted on the StackStorm
//! side: one task per firing alert, none for resolved ones, throttled per alert key (instance),
//! and group re-notifications deduplicated instead of creating tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{json, Value};
use whale_kernel::auth::{token_line, Role};
use whale_kernel::subjects::STREAM_PIPE;
use whale_kernel::testkit::RedisServer;

use crate::harness::*;

const AM_TOKEN: &str = "alertmanager-token-0123456789";
const OTHER_TOKEN: &str = "other-producer-token-0123456789";

fn alertmanager_bin() -> PathBuf {
    let bin = std::env::var_os("WHALE_ALERTMANAGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".whale/tools/bin/alertmanager"));
    assert!(
        bin.is_file(),
        "{} is missing: run deploy/install.sh (it builds Alertmanager v0.35.0 into .whale/tools/bin) or set WHALE_ALERTMANAGER to an alertmanager binary",
        bin.display()
    );
    bin
}

/// A running Alertmanager; killed on drop.
struct Alertmanager {
    child: Child,
    url: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    async fn start(dir: &std::path::Path, webhook: &str) -> Alertmanager {
        let cfg = dir.join("alertmanager.yml");
        std::fs::write(
            &cfg,
            format!(
                r#"route:
  receiver: whale
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 3s
receivers:
  - name: whale
    webhook_configs:
      - url: {webhook}
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: {AM_TOKEN}
"#
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
        let child = Command::new(alertmanager_bin())
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn alertmanager");
        let am = Alertmanager {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}/-/ready", am.url);
        assert!(
            eventually(Duration::from_secs(30), || async {
                reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200)
            })
            .await,
            "alertmanager not ready; log:\n{}",
            std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default()
        );
        am
    }

    async fn push(&self, alerts: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&alerts)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
}

/// One webhook as whale received it: the body Alertmanager sent and whale's answer.
#[derive(Debug, Clone)]
struct Delivery {
    body: Value,
    status: u16,
    answer: Value,
}

#[derive(Clone)]
struct Proxy {
    target: String,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

/// Forwards each POST to whale unchanged (body, content type, authorization) and records both
/// sides.
async fn forward(State(p): State<Proxy>, headers: HeaderMap, body: String) -> (StatusCode, String) {
    let mut req = reqwest::Client::new().post(&p.target).body(body.clone());
    for h in ["content-type", "authorization"] {
        if let Some(v) = headers.get(h) {
            req = req.header(h, v.to_str().unwrap_or_default());
        }
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    p.seen.lock().unwrap().push(Delivery {
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        status,
        answer: serde_json::from_str(&text).unwrap_or(Value::Null),
    });
    (StatusCode::from_u16(status).unwrap(), text)
}

async fn start_proxy(target: String) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", post(forward))
        .with_state(Proxy {
            target,
            seen: seen.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

fn alert(instance: &str, mount: &str, starts: &str, ends: Option<&str>) -> Value {
    let mut a = json!({
        "labels": {"alertname": "HostDiskFull", "severity": "critical",
                   "instance": format!("{instance}:9100"), "mountpoint": mount},
        "annotations": {"summary": format!("{mount} almost full on {instance}")},
        "startsAt": starts,
        "generatorURL": "http://prometheus:9090/graph",
    });
    if let Some(e) = ends {
        a["endsAt"] = json!(e);
    }
    a
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

const RULE: &str = r#"name: am-disk-full
on: [prometheus.alert]
when:
  - { path: .detail.status, eq: firing }
  - { path: .detail.labels.alertname, eq: HostDiskFull }
action: ops.clean_disk
params:
  host: '{{ .detail.labels.instance | split(":") | .[0] }}'
  note: 'alert {{ .detail.labels.instance }} {{ .detail.labels.mountpoint }}'
throttle:
  key: '{{ .detail.labels.instance }}'
  limit: 1
  per: 1h
  mode: once_within
"#;

/// Alert key (instance + mountpoint) → status → webhooks that carried it so.
fn carried(seen: &[Delivery]) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut m: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for d in seen {
        for a in d.body["alerts"].as_array().into_iter().flatten() {
            let key = format!(
                "{} {}",
                a["labels"]["instance"].as_str().unwrap_or("?"),
                a["labels"]["mountpoint"].as_str().unwrap_or("?")
            );
            *m.entry(key)
                .or_default()
                .entry(a["status"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_gives_one_task_per_firing_alert() {
    let dir = tempfile::Builder::new()
        .prefix("whale-am")
        .tempdir()
        .unwrap();
    let emu = Emulator::start(&["--any-action"]);
    let redis = RedisServer::start();
    let mut env = Env::new();
    let config = format!(
        "{}\n{}\n\n[[hooks]]\nname = \"alertmanager\"\ntokens = [\"alertmanager\"]\n",
        token_line("alertmanager", Role::Producer, AM_TOKEN),
        token_line("other", Role::Producer, OTHER_TOKEN)
    );
    env.prepare_pipeline(
        dir.path(),
        &config,
        &redis.url(),
        &emu.url,
        &[("am.yaml", RULE)],
    );
    let _whale = env.run("all");
    let nats = env.connect().await;

    // The hook's own token list: another producer is refused, naming the hook.
    let r = reqwest::Client::new()
        .post(env.http("/v1/hooks/alertmanager"))
        .bearer_auth(OTHER_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"version":"4","alerts":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("hook \"alertmanager\""),
        "{body}"
    );

    let (proxy, seen) = start_proxy(env.http("/v1/hooks/alertmanager")).await;
    let am = Alertmanager::start(dir.path(), &proxy).await;

    let now = time::OffsetDateTime::now_utc();
    let t0 = rfc3339(now - time::Duration::minutes(10));
    let past_start = rfc3339(now - time::Duration::hours(2));
    let past_end = rfc3339(now - time::Duration::minutes(30));
    // One group (alertname=HostDiskFull): web-1, web-2 and web-3 (two mounts: same throttle
    // key) firing, web-4 already resolved.
    let group = json!([
        alert("web-1", "/", &t0, None),
        alert("web-2", "/", &t0, None),
        alert("web-3", "/", &t0, None),
        alert("web-3", "/var", &t0, None),
        alert("web-4", "/", &past_start, Some(&past_end)),
    ]);
    am.push(group).await;
    let got_tasks = eventually(Duration::from_secs(60), || async {
        emu.executions().await.len() >= 3
    })
    .await;
    assert!(
        got_tasks,
        "no 3 tasks; webhooks: {:?}",
        seen.lock().unwrap()
    );

    // Re-notifications (repeat_interval 3s) of the unchanged group: wait for two more.
    let first = seen.lock().unwrap().len();
    assert!(
        eventually(Duration::from_secs(30), || async {
            seen.lock().unwrap().len() >= first + 2
        })
        .await,
        "Alertmanager did not re-notify"
    );

    // Resolve web-1, then fire it again (a new occurrence: new startsAt): the resolution is not
    // a task, the new occurrence is throttled (once per instance per hour).
    let resolved_at = rfc3339(time::OffsetDateTime::now_utc());
    am.push(json!([alert("web-1", "/", &t0, Some(&resolved_at))]))
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            carried(&seen.lock().unwrap())
                .get("web-1:9100 /")
                .is_some_and(|s| s.contains_key("resolved"))
        })
        .await,
        "the resolution of web-1 was not sent"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = rfc3339(time::OffsetDateTime::now_utc());
    am.push(json!([alert("web-1", "/", &t1, None)])).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&nats, STREAM_PIPE, "whale.pipe.throttled").await >= 2
        })
        .await,
        "the second web-3 alert and web-1's new occurrence were not throttled"
    );
    // Let a few more re-notifications pass through the whole pipeline.
    let n = seen.lock().unwrap().len();
    assert!(
        eventually(Duration::from_secs(30), || async {
            seen.lock().unwrap().len() >= n + 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let seen = seen.lock().unwrap().clone();
    let execs = emu.executions().await;
    let mut tasks: BTreeMap<String, usize> = BTreeMap::new();
    for e in &execs {
        assert_eq!(e["action"]["ref"], "ops.clean_disk", "{e}");
        let note = e["parameters"]["note"].as_str().unwrap_or_default();
        let key = note.strip_prefix("alert ").unwrap_or(note).to_owned();
        *tasks.entry(key).or_default() += 1;
    }
    let webhooks = carried(&seen);
    eprintln!("alerts pushed: 5 in one group (+ web-1 resolved, then fired again)");
    eprintln!("webhooks received by whale: {}", seen.len());
    eprintln!(
        "{:<18} {:<28} {:>5}",
        "alert", "webhooks (by alert status)", "tasks"
    );
    for (k, by) in &webhooks {
        let w: Vec<String> = by.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        eprintln!(
            "{k:<18} {:<28} {:>5}",
            w.join(", "),
            tasks.get(k).copied().unwrap_or(0)
        );
    }
    let throttled = count(&nats, STREAM_PIPE, "whale.pipe.throttled").await;
    let events = count(&nats, "WHALE_EVENTS", "whale.events.prometheus.alert").await;
    let rejected = count(&nats, "WHALE_EVENTS", "whale.rejected.>").await;
    let duplicates: u64 = seen
        .iter()
        .map(|d| d.answer["duplicates"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "events accepted: {events}; duplicates dropped at ingest: {duplicates}; throttled: {throttled}; rejected: {rejected}; tasks: {}",
        execs.len()
    );

    // Every webhook was accepted (202) by whale.
    for d in &seen {
        assert_eq!(d.status, 202, "{:?}", d);
    }
    // Exactly one task per firing alert key (instance): web-1, web-2, web-3 once each; none for
    // web-4 (resolved), none for the second web-3 alert or web-1's second occurrence (throttled),
    // none for re-notifications (deduplicated).
    let hosts: BTreeSet<&str> = execs
        .iter()
        .map(|e| e["parameters"]["host"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(execs.len(), 3, "tasks: {tasks:?}");
    assert_eq!(hosts, BTreeSet::from(["web-1", "web-2", "web-3"]));
    assert_eq!(tasks.get("web-4:9100 /"), None);
    assert_eq!(throttled, 2, "second web-3 alert + web-1 fired again");
    assert_eq!(rejected, 0);
    // Re-notifications re-sent alerts; whale stored each (alert, status, start) once.
    assert!(seen.len() >= 5, "webhooks: {}", seen.len());
    assert!(duplicates > 0, "re-notifications were not deduplicated");
    // Distinct (alert, status, startsAt) occurrences: web-1 firing, resolved, firing again;
    // web-2, web-3 /, web-3 /var firing; web-4 resolved (if Alertmanager sent it).
    let web4 = webhooks.contains_key("web-4:9100 /") as u64;
    assert_eq!(events, 6 + web4, "accepted prometheus.alert events");
    assert!(webhooks["web-1:9100 /"]["firing"] >= 2);
    assert!(webhooks["web-2:9100 /"]["firing"] >= 2);
}

/// The hook route and its NATS form on a real `whale run`: hostile bodies get a clear 4xx
/// naming the problem and store nothing, good ones are stored exactly once, a generic jq hook
/// from whale.toml works, and a raw payload on `whale.in.hook.<name>` becomes the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_refusals_are_clear_and_lose_nothing_else() {
    let dir = tempfile::Builder::new()
        .prefix("whale-hooks")
        .tempdir()
        .unwrap();
    let mut env = Env::new();
    let cfg = dir.path().join("whale.toml");
    std::fs::write(
        &cfg,
        r#"[events]
allow_unknown_types = true

[[hooks]]
name = "alertmanager"
max_body_bytes = 20000
max_items = 5

[[hooks]]
name = "zabbix"
jq = '{event_type: "zabbix.problem", id: ("zbx-" + .event_id), detail: {host, trigger}}'
"#,
    )
    .unwrap();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.prepare();
    let _w = env.run("ingest,validate");
    let nats = env.connect().await;
    let http = reqwest::Client::new();
    let post = |path: &str, ct: &str, body: Vec<u8>| {
        http.post(env.http(path))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let am = std::fs::read(repo().join("tests/fixtures/hooks/alertmanager-v4.json")).unwrap();
    let mut cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("too large", vec![b' '; 20_001], 413, "takes at most 20000"),
        (
            "too deep",
            format!("{}{}", "[".repeat(100), "]".repeat(100)).into_bytes(),
            400,
            "deep",
        ),
        ("not JSON", b"{\"alerts\": [".to_vec(), 400, "not acceptable JSON"),
        ("wrong type", br#"{"version":"4","alerts":{"a":1}}"#.to_vec(), 400, "/alerts"),
        (
            "bad alert",
            br#"{"version":"4","alerts":[{"status":"firing","labels":{"i":1},"startsAt":"2026-12-02T04:00:00Z"}]}"#.to_vec(),
            400,
            "/alerts/0/labels/i",
        ),
    ];
    let six: Vec<Value> = (0..6)
        .map(|i| json!({"status":"firing","labels":{"i":format!("{i}")},"startsAt":"2026-12-02T04:00:00Z"}))
        .collect();
    cases.push((
        "too many alerts",
        json!({"version":"4","alerts":six}).to_string().into_bytes(),
        413,
        "at most 5",
    ));
    for (what, body, code, needle) in cases {
        let r = post("/v1/hooks/alertmanager", "application/json", body)
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        eprintln!("{what:<16} {status} {text}");
        assert_eq!(status, code, "{what}: {text}");
        assert!(text.contains(needle), "{what}: {text}");
    }
    let r = post("/v1/hooks/nagios", "application/json", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("alertmanager, cloudevents, grafana, zabbix"));
    let r = post("/v1/hooks/alertmanager", "text/plain", am.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Good bodies: stored once each, whatever was refused before them.
    let r = post("/v1/hooks/alertmanager", "application/json", am.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let a: Value = r.json().await.unwrap();
    assert_eq!(
        (a["accepted"].as_u64(), a["duplicates"].as_u64()),
        (Some(3), Some(0))
    );
    let r = post("/v1/hooks/alertmanager", "application/json", am.clone())
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        b["duplicates"], 3,
        "a re-sent notification is deduplicated: {b}"
    );
    assert_eq!(a["ids"], b["ids"]);
    let zbx = std::fs::read(repo().join("tests/fixtures/hooks/zabbix.json")).unwrap();
    let r = post("/v1/hooks/zabbix", "application/json", zbx)
        .await
        .unwrap();
    let z: Value = r.json().await.unwrap();
    assert_eq!(z["ids"], json!(["zbx-48211"]), "{z}");

    // The NATS form: the same payload on whale.in.hook.alertmanager is the same three events;
    // a bad one is one rejection of type hook.alertmanager.
    nats.publish_raw("whale.in.hook.alertmanager", &[], am)
        .await
        .unwrap();
    nats.publish_raw(
        "whale.in.hook.alertmanager",
        &[],
        br#"{"version":"4"}"#.to_vec(),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&nats, "WHALE_EVENTS", "whale.rejected.hook.alertmanager").await == 1
        })
        .await
    );
    let rej = read_all(&nats, "WHALE_EVENTS", "whale.rejected.hook.alertmanager").await;
    assert!(
        rej[0]["reasons"].to_string().contains("/alerts"),
        "{}",
        rej[0]
    );
    let events = read_all(&nats, "WHALE_EVENTS", "whale.events.>").await;
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        4,
        "3 alerts once (HTTP twice + NATS once) and 1 zabbix: {ids:?}"
    );
    for id in a["ids"].as_array().unwrap() {
        assert!(ids.contains(&id.as_str().unwrap()));
    }
    assert_eq!(count(&nats, "WHALE_EVENTS", "whale.rejected.>").await, 1);
}

/// `whale hooks test` offline: the envelopes a body becomes (exit 0), or the refusal with its
/// pointers (exit 1); `whale hooks list` shows configured generic hooks beside the built-in ones.
#[test]
fn hooks_test_prints_the_events_or_the_error() {
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("whale.toml");
    std::fs::write(
        &cfg,
        "[[hooks]]\nname = \"k8s\"\njq = '[.items[] | {event_type: \"k8s.event\", detail: {reason}}]'\n",
    )
    .unwrap();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    let out = env.ok(&[
        "hooks",
        "test",
        "alertmanager",
        "--body",
        "tests/fixtures/hooks/alertmanager-v4.json",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[1]["detail"]["labels"]["instance"], "web-13:9100");
    assert_eq!(evs[2]["detail"]["status"], "resolved");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"version":"4","alerts":[{"status":"pending"}]}"#).unwrap();
    let out = env
        .whale(&[
            "hooks",
            "test",
            "alertmanager",
            "--body",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/alerts/0/status: must be \"firing\" or \"resolved\", got \"pending\"")
            && err.contains("/alerts/0/labels: missing")
            && err.contains("(400 Bad Request)"),
        "{err}"
    );

    let body = dir.path().join("k8s.json");
    std::fs::write(
        &body,
        r#"{"items":[{"reason":"BackOff"},{"reason":"OOMKilled"}]}"#,
    )
    .unwrap();
    let out = env.ok(&["hooks", "test", "k8s", "--body", body.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("hook k8s (generic): 2 event(s)"), "{text}");
    assert!(
        text.contains(r#""detail":{"reason":"OOMKilled"}"#),
        "{text}"
    );

    let out = env.ok(&["hooks", "list", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alertmanager", "cloudevents", "grafana", "k8s"]);
    let out = env
        .whale(&["hooks", "test", "nope", "--body", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hook named \"nope\""));
}
