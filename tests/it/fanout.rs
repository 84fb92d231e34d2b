//! Rule fan-out (`for_each`), chained result events and `whale trace` with the rule-set version
//! of the match, end to end: every stage, real NATS and Redis, the StackStorm emulator counting
//! executions.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::subjects::{STREAM_EVENTS, STREAM_PIPE};
use whale_kernel::testkit::RedisServer;

use crate::harness::*;

/// A small `whale.toml`: small streams (JetStream reserves their caps on disk), unknown event
/// types allowed (the test types have no schema), a low fan-out bound and chain depth, quick
/// result polling.
const CONFIG: &str = r#"
[nats]
ingest_max_bytes = 268435456
events_max_bytes = 268435456
pipe_max_bytes = 268435456

[events]
allow_unknown_types = true

[rules]
max_for_each_items = 3
max_chain_depth = 2

[feedback]
poll_min = "100ms"
poll_max = "500ms"
"#;

/// Everything a test needs running: NATS, Redis, the emulator, and `whale run` (all stages).
struct Pipeline {
    env: Env,
    emu: Emulator,
    _redis: RedisServer,
    _worker: Worker,
    dir: tempfile::TempDir,
}

impl Pipeline {
    /// Applies the rules in `rules` (file name → text) and starts every stage.
    fn start(rules: &[(&str, &str)]) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(&["--any-action"]);
        let redis = RedisServer::start();
        let mut env = Env::new();
        env.prepare_pipeline(dir.path(), CONFIG, &redis.url(), &emu.url, rules);
        let worker = env.run("all");
        Pipeline {
            _worker: worker,
            env,
            emu,
            _redis: redis,
            dir,
        }
    }

    /// `whale publish --file` of these events.
    fn publish(&self, events: &[Value]) {
        let f = self.dir.path().join(format!("ev-{}.ndjson", rand_suffix()));
        let text: Vec<String> = events.iter().map(Value::to_string).collect();
        std::fs::write(&f, text.join("\n")).unwrap();
        self.env.ok(&["publish", "--file", f.to_str().unwrap()]);
    }

    /// Every execution the emulator holds.
    async fn executions(&self) -> Vec<Value> {
        self.emu.executions().await
    }

    /// Waits until the emulator holds `n` executions (or the time is up) and returns them.
    async fn wait_executions(&self, n: usize, timeout: Duration) -> Vec<Value> {
        eventually(timeout, || async { self.executions().await.len() >= n }).await;
        self.executions().await
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// An Alertmanager-shaped group: `instances` firing HostDiskFull alerts and one resolved one.
fn group(id: &str, instances: &[&str]) -> Value {
    let mut alerts: Vec<Value> = instances
        .iter()
        .map(|i| {
            json!({"status": "firing",
                   "labels": {"alertname": "HostDiskFull", "instance": format!("{i}:9100")},
                   "annotations": {"summary": format!("disk full on {i}")}})
        })
        .collect();
    alerts.push(json!({"status": "resolved",
        "labels": {"alertname": "HostDiskFull", "instance": "web-9:9100"}}));
    json!({
        "id": id, "event_type": "alertmanager.group", "source": "test/alertmanager",
        "labels": {"biz": "trade"},
        "detail": {"status": "firing", "groupKey": "{}:{alertname=\"HostDiskFull\"}",
                   "commonLabels": {"alertname": "HostDiskFull"}, "alerts": alerts}
    })
}

fn by_action(execs: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in execs {
        *m.entry(e["action"]["ref"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    m
}

fn example_rule() -> String {
    std::fs::read_to_string(repo().join("pipelines/examples/alert-group-fanout.yaml")).unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `whale rules test` on a group spanning two instances: the rule keyed on
/// `commonLabels.instance` (as a rule without fan-out must be) fails to render and the command
/// exits 1; the fan-out rule shows one line per element, and exits 0 on its own.
#[test]
fn rules_test_shows_each_element_and_fails_on_render_errors() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("group.ndjson");
    std::fs::write(&events, group("g-test", &["web-1", "web-2"]).to_string()).unwrap();
    let run = |rules: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_whale"))
            .args(["rules", "test"])
            .arg(rules)
            .arg("--events")
            .arg(&events)
            .env("WHALE_NATS_URL", "nats://127.0.0.1:1")
            .env_remove("WHALE_CONFIG")
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let fan = run(&repo().join("pipelines/examples"));
    let text = stdout(&fan);
    println!("{text}");
    assert_eq!(fan.status.code(), Some(0), "{text}");
    assert!(
        text.contains("✔ alert-group-per-instance: for_each .detail.alerts[] → 3 elements"),
        "{text}"
    );
    assert!(
        text.contains("[0] ✔ ") && text.contains("\"host\":\"web-1\""),
        "{text}"
    );
    assert!(
        text.contains("[1] ✔ ") && text.contains("\"host\":\"web-2\""),
        "{text}"
    );
    assert!(
        text.contains("[2] ✘ ")
            && text.contains("step 1 $item.status eq \"firing\": saw \"resolved\""),
        "{text}"
    );
    assert!(text.contains("throttle key=web-2:9100"), "{text}");

    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(
        old.join("group.yaml"),
        "name: per-group\non: alertmanager.group\naction: ops.clean_disk\nparams:\n  host: '{{ .detail.commonLabels.instance | split(\":\") | .[0] }}'\n",
    )
    .unwrap();
    let broken = run(&old);
    let (text, err) = (stdout(&broken), String::from_utf8_lossy(&broken.stderr));
    println!("{text}{err}");
    assert_eq!(broken.status.code(), Some(1), "{text}{err}");
    assert!(
        text.contains("! per-group: matched, but params.host:"),
        "{text}"
    );
    assert!(
        err.contains("1 matching rule could not be rendered"),
        "{err}"
    );
}

/// A group of two firing alerts (and a resolved one) makes exactly two executions with the
/// right parameters; publishing the same event again makes none; a group over the element
/// bound makes none and a `render_failed` record naming the rule and the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_event_fans_out_to_one_task_per_alert_exactly_once() {
    let p = Pipeline::start(&[("group.yaml", &example_rule())]);
    let first = group("g-1", &["web-1", "web-2"]);
    p.publish(std::slice::from_ref(&first));
    let execs = p.wait_executions(2, Duration::from_secs(60)).await;
    let mut got: Vec<(String, Value)> = execs
        .iter()
        .map(|e| {
            (
                e["action"]["ref"].as_str().unwrap().to_owned(),
                e["parameters"].clone(),
            )
        })
        .collect();
    got.sort_by_key(|(_, p)| p["host"].to_string());
    assert_eq!(
        got,
        vec![
            (
                "ops.clean_disk".into(),
                json!({"host": "web-1", "note": "disk full on web-1 (group {}:{alertname=\"HostDiskFull\"})"})
            ),
            (
                "ops.clean_disk".into(),
                json!({"host": "web-2", "note": "disk full on web-2 (group {}:{alertname=\"HostDiskFull\"})"})
            ),
        ]
    );
    let task_ids: Vec<&str> = execs
        .iter()
        .map(|e| e["context"]["whale"]["task_id"].as_str().unwrap())
        .collect();
    // Task ids derive from (event id, rule, content hash of the element): the same element of
    // the same event always gets the same id, so no redelivery can make a second execution.
    let mut want: Vec<String> = first["detail"]["alerts"].as_array().unwrap()[..2]
        .iter()
        .map(|a| {
            whale_kernel::records::item_task_id(
                "g-1",
                "alert-group-per-instance",
                &whale_rules::item_key(a),
            )
        })
        .collect();
    let mut task_ids: Vec<String> = task_ids.into_iter().map(str::to_owned).collect();
    want.sort();
    task_ids.sort();
    assert_eq!(task_ids, want);

    // The same event again, then a marker event behind it: once the marker's task is there,
    // the repeat has gone through every stage and made nothing.
    p.publish(std::slice::from_ref(&first));
    p.publish(&[group("g-2", &["web-3"])]);
    let execs = p.wait_executions(3, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let execs_after = p.executions().await;
    assert_eq!(execs.len(), 3);
    assert_eq!(execs_after.len(), 3, "the repeated event created no task");

    // Over the bound (3 per event here): no task at all, one record saying why.
    p.publish(&[group("g-big", &["a", "b", "c"])]);
    let nats = p.env.connect().await;
    eventually(Duration::from_secs(30), || async {
        count(&nats, STREAM_PIPE, "whale.pipe.render_failed").await > 0
    })
    .await;
    let failed = read_all(&nats, STREAM_PIPE, "whale.pipe.render_failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let f = &failed[0];
    assert_eq!(f["event_id"], "g-big");
    assert_eq!(f["rule"], "alert-group-per-instance");
    assert_eq!(f["field"], "for_each");
    let reason = f["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "yields 4 elements, over the limit of 3 per event (rules.max_for_each_items)"
        ),
        "{reason}"
    );
    let tasks = read_all(&nats, STREAM_PIPE, "whale.pipe.task").await;
    assert_eq!(tasks.len(), 3, "two for g-1, one for g-2, none for g-big");
    assert_eq!(p.executions().await.len(), 3);
    let mut idx: Vec<(String, u64)> = tasks
        .iter()
        .map(|t| {
            (
                t["event_id"].as_str().unwrap().to_owned(),
                t["item"]["index"].as_u64().unwrap(),
            )
        })
        .collect();
    idx.sort();
    assert_eq!(
        idx,
        vec![("g-1".into(), 0), ("g-1".into(), 1), ("g-2".into(), 0)]
    );

    // The trace shows each element: the two matches and why the third did not match.
    let trace = || stdout(&p.env.whale(&["trace", "g-1"]).output().unwrap());
    eventually(Duration::from_secs(30), || async {
        trace().contains("for element 1 of its for_each")
    })
    .await;
    let human = trace();
    println!("{human}");
    assert!(
        human.contains("matched rule alert-group-per-instance for element 0 of its for_each"),
        "{human}"
    );
    assert!(
        human.contains("matched rule alert-group-per-instance for element 1 of its for_each"),
        "{human}"
    );
    assert!(
        human.contains("alert-group-per-instance [element 2]: $item.status eq \"firing\" was false: saw \"resolved\""),
        "{human}"
    );

    // The backtest counts events, tasks (one per matching element) and refusals.
    let out = p.env.ok(&["replay", "--from", "1h", "--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = &report["rules"][0];
    assert_eq!(line["rule"], "alert-group-per-instance", "{report}");
    assert_eq!(line["would_match"], 2, "{report}");
    assert_eq!(line["tasks"], 3, "{report}");
    assert_eq!(line["refused"], 1, "{report}");
    let human = stdout(&p.env.ok(&["replay", "--from", "1h", "--dry-run"]));
    println!("{human}");
    assert!(human.contains("g-1[0], g-1[1]"), "{human}");
    assert!(
        human
            .contains("alert-group-per-instance: for_each yielded more than 3 elements on 1 event"),
        "{human}"
    );
}

const CHAIN_A: &str = r#"name: chain-a
on: [chain.start]
action: ops.first
params: { host: "{{ .detail.host }}" }
result_event: true
"#;

const CHAIN_B: &str = r#"name: chain-b
on: [whale.execution_finished]
when:
  - { path: .detail.rule, eq: chain-a }
  - { path: .detail.status, eq: succeeded }
action: ops.second
params:
  origin: "{{ .detail.event_id }}"
  biz: "{{ .labels.biz }}"
  depth: "{{ .detail.chain_depth }}"
"#;

const LOOP: &str = r#"name: loop
on: [loop.start, whale.execution_finished]
when:
  - any:
      - { path: .event_type, eq: loop.start }
      - { path: .detail.rule, eq: loop }
action: ops.again
result_event: true
"#;

/// Rule A's execution result fires rule B (carrying the origin's labels and the chain depth);
/// a rule firing on its own results stops at `rules.max_chain_depth` (2 here): executions for
/// the events at depth 0, 1 and 2, then the depth-3 result is a rejection, not an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_event_fires_a_chained_rule_and_a_loop_stops_at_the_depth_limit() {
    let p = Pipeline::start(&[
        ("a.yaml", CHAIN_A),
        ("b.yaml", CHAIN_B),
        ("loop.yaml", LOOP),
    ]);
    p.publish(&[
        json!({"id": "c-1", "event_type": "chain.start", "source": "test",
                       "labels": {"biz": "trade"}, "detail": {"host": "web-1"}}),
    ]);
    let execs = p.wait_executions(2, Duration::from_secs(60)).await;
    let second = execs
        .iter()
        .find(|e| e["action"]["ref"] == "ops.second")
        .unwrap_or_else(|| panic!("rule B did not fire: {execs:?}"));
    assert_eq!(
        second["parameters"],
        json!({"origin": "c-1", "biz": "trade", "depth": 1})
    );

    p.publish(&[json!({"id": "l-1", "event_type": "loop.start", "source": "test", "detail": {}})]);
    let nats = p.env.connect().await;
    eventually(Duration::from_secs(90), || async {
        count(
            &nats,
            STREAM_EVENTS,
            "whale.rejected.whale.execution_finished",
        )
        .await
            > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let execs = p.executions().await;
    let counts = by_action(&execs);
    println!("executions per action: {counts:?}");
    assert_eq!(counts.get("ops.again"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("ops.first"), Some(&1));
    assert_eq!(counts.get("ops.second"), Some(&1));
    assert_eq!(execs.len(), 5);

    let rejected = read_all(
        &nats,
        STREAM_EVENTS,
        "whale.rejected.whale.execution_finished",
    )
    .await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let r = &rejected[0];
    assert_eq!(r["event"]["labels"]["whale_chain_depth"], "3");
    assert_eq!(r["event"]["detail"]["rule"], "loop");
    let msg = r["reasons"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("chain depth 3 is over the limit of 2 (rules.max_chain_depth)"),
        "{msg}"
    );
    let finished = read_all(
        &nats,
        STREAM_EVENTS,
        "whale.events.whale.execution_finished",
    )
    .await;
    let mut depths: Vec<(String, String)> = finished
        .iter()
        .map(|e| {
            (
                e["detail"]["rule"].as_str().unwrap().to_owned(),
                e["labels"]["whale_chain_depth"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    depths.sort();
    assert_eq!(
        depths,
        vec![
            ("chain-a".into(), "1".into()),
            ("loop".into(), "1".into()),
            ("loop".into(), "2".into())
        ]
    );
    let a = finished
        .iter()
        .find(|e| e["detail"]["rule"] == "chain-a")
        .unwrap();
    assert_eq!(a["labels"]["biz"], "trade", "the origin's labels are kept");
}

const TRACE_V1: &str = r#"- name: hit
  on: [trace.t]
  action: ops.any
- name: miss
  on: [trace.t]
  when: [{ path: .detail.n, gt: 10 }]
  action: ops.any
- name: quiet
  on: [trace.q]
  when: [{ path: .detail.n, gt: 10 }]
  action: ops.any
"#;

/// `whale trace` explains "why not" with the rule set in force when the event was matched, and
/// names it: the version recorded on the event's match records, or, for an event that matched
/// nothing, the version active when it was accepted; a later rule set that would match does not
/// change the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_explains_why_not_with_the_rule_set_of_the_match() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = Env::new();
    let cfg = dir.path().join("whale.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.set(
        "WHALE_INDEX_DIR",
        dir.path().join("index").to_str().unwrap(),
    );
    env.prepare();
    env.apply_rules(dir.path(), &[("v1.yaml", TRACE_V1)]);
    let v1: Value = serde_json::from_slice(&env.ok(&["rules", "show", "--json"]).stdout).unwrap();
    let v1 = v1["version"].as_str().unwrap().to_owned();
    let _w = env.run("ingest,validate,index,match,render");
    let f = dir.path().join("ev.ndjson");
    std::fs::write(
        &f,
        "{\"id\": \"tv-1\", \"event_type\": \"trace.t\", \"source\": \"t\", \"detail\": {\"n\": 5}}\n\
         {\"id\": \"tv-2\", \"event_type\": \"trace.q\", \"source\": \"t\", \"detail\": {\"n\": 5}}\n",
    )
    .unwrap();
    env.ok(&["publish", "--file", f.to_str().unwrap()]);
    let traced = |id: &str| -> Value {
        let out = env.whale(&["trace", id, "--json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let steps = |t: &Value| t["steps"].as_array().map_or(0, Vec::len);
    assert!(
        eventually(Duration::from_secs(30), || async {
            steps(&traced("tv-1")) >= 3 && steps(&traced("tv-2")) >= 1
        })
        .await,
        "{}",
        traced("tv-1")
    );
    // v2 would match both events
    tokio::time::sleep(Duration::from_millis(50)).await;
    env.apply_rules(
        dir.path(),
        &[("v2.yaml", &TRACE_V1.replace("gt: 10", "gt: 1"))],
    );
    let v2: Value = serde_json::from_slice(&env.ok(&["rules", "show", "--json"]).stdout).unwrap();
    assert_ne!(v2["version"].as_str().unwrap(), v1);

    let t1 = traced("tv-1");
    assert_eq!(t1["rule_version"], v1.as_str(), "{t1}");
    assert_eq!(t1["rule_version_from"], "recorded on the match", "{t1}");
    assert_eq!(t1["not_matched"].as_array().unwrap().len(), 1, "{t1}");
    assert_eq!(t1["not_matched"][0]["rule"], "miss");
    let reason = t1["not_matched"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(".detail.n gt 10 was false: saw 5"),
        "{reason}"
    );

    let t2 = traced("tv-2");
    assert_eq!(t2["rule_version"], v1.as_str(), "{t2}");
    let from = t2["rule_version_from"].as_str().unwrap();
    assert!(
        from.starts_with("in force when the event was accepted"),
        "{from}"
    );
    assert_eq!(t2["not_matched"][0]["rule"], "quiet", "{t2}");

    let human = stdout(&env.ok(&["trace", "tv-1"]));
    println!("{human}");
    assert!(
        human.contains(&format!(
            "why not, evaluated with rule set {v1} (recorded on the match)"
        )),
        "{human}"
    );
    assert!(
        human.contains("miss: .detail.n gt 10 was false: saw 5"),
        "{human}"
    );
}
