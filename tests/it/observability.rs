//! What operators watch, checked against the real binary: a whole pipeline (`whale run --stages
//! all`, NATS, Redis, the StackStorm emulator) handles a few events, then every metric named by
//! the Grafana dashboard (`deploy/grafana/whale.json`) and the alerting rules
//! (`deploy/prometheus/whale-alerts.yaml`) must be in what `/metrics` exports, the rules must pass
//! `promtool check rules` and their unit tests (`promtool test rules`), each alert's runbook must
//! be a section of docs/operations.md, the W3C trace context sent at ingest must reach the
//! StackStorm execution's context, and the JSON logs must carry trace and event ids and never a
//! configured secret.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::testkit::RedisServer;

use crate::harness::*;

const API_KEY: &str = "st2-key-7f3c9a1e5b";
const APPROVAL_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// promtool: `WHALE_PROMTOOL`, else `.whale/tools/bin/promtool` (built by deploy/install.sh).
fn promtool() -> PathBuf {
    let bin = std::env::var_os("WHALE_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".whale/tools/bin/promtool"));
    assert!(
        bin.is_file(),
        "{} is missing: run deploy/install.sh (it builds promtool from the Go module proxy into .whale/tools/bin) or set WHALE_PROMTOOL to a promtool binary",
        bin.display()
    );
    bin
}

fn event(host: &str) -> Value {
    json!({
        "event_type": "vm.disk_usage",
        "source": "prometheus/node",
        "detail": {
            "host": host, "usage_pct": 95, "env": "prod",
            "mounts": [{"path": "/data", "usage_pct": 95}]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_exported_metrics_and_traces_reach_stackstorm() {
    let redis = RedisServer::start();
    let st2 = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("whale.log");
    let mut env = Env::new();
    env.set("WHALE_REDIS_URL", &redis.url());
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", API_KEY);
    env.set("WHALE_APPROVAL_SECRET", APPROVAL_SECRET);
    env.set("WHALE_LOG_FORMAT", "json");
    env.prepare();
    env.ok(&["rules", "apply", "pipelines"]);
    let port = env.http_port;
    let _w = env.spawn_on(
        "all",
        port,
        &log,
        &[("WHALE_LOG", "info,async_nats=warn,whale_validate=debug")],
    );
    assert!(
        ready(port, Duration::from_secs(60)).await,
        "whale run did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let http = reqwest::Client::new();
    // Three hosts (three executions, the first with the caller's trace context), the first host
    // again (throttled: 1 per 10 minutes), and one event its schema refuses.
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let mut first = event("web-1");
    first["id"] = json!("obs-traced-1");
    let mut bad = event("web-9");
    bad["id"] = json!("obs-bad-1");
    bad["detail"]["usage_pct"] = json!("lots");
    let r = http
        .post(env.http("/v1/events"))
        .header("traceparent", &traceparent)
        .json(&json!([first, bad]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let rest = vec![event("web-2"), event("web-3"), event("web-1")];
    let r = http
        .post(env.http("/v1/events"))
        .json(&rest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());

    assert!(
        eventually(Duration::from_secs(90), || async {
            st2.created().await >= 3
        })
        .await,
        "3 executions expected, the emulator created {}",
        st2.created().await
    );
    // The latency of all three is observed and the throttle decided the fourth.
    let mut text = String::new();
    let mut seen = false;
    for _ in 0..60 {
        text = http
            .get(env.http("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("whale_ingest_to_dispatch_seconds_count{cluster=\"default\"} 3")
            && text.contains("decision=\"throttled\"")
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        seen,
        "metrics never showed 3 dispatches and a throttled task:\n{text}"
    );
    let out = repo().join("target/observability");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.txt"), &text).unwrap();
    assert_eq!(st2.created().await, 3, "the repeated host is throttled");

    // Every metric the dashboard and the rules use is exported.
    let exported = exported(&text);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/whale.json")).unwrap(),
    )
    .unwrap();
    let mut dash_exprs = Vec::new();
    expressions(&dashboard, &mut dash_exprs);
    let rules: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/whale-alerts.yaml")).unwrap(),
    )
    .unwrap();
    let mut rule_exprs = Vec::new();
    let mut runbooks = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            rule_exprs.push(rule["expr"].as_str().unwrap().to_owned());
            runbooks.push((
                rule["alert"].as_str().unwrap().to_owned(),
                rule["annotations"]["runbook"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            ));
        }
    }
    assert!(
        dash_exprs.len() >= 20,
        "dashboard expressions: {dash_exprs:?}"
    );
    assert!(rule_exprs.len() >= 8, "rule expressions: {rule_exprs:?}");
    let mut report = Vec::new();
    let mut missing = Vec::new();
    for (file, exprs) in [("dashboard", &dash_exprs), ("rules", &rule_exprs)] {
        let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(
            names.len() >= 8,
            "{file}: too few metric names found: {names:?}"
        );
        for n in names {
            let ok = exports(&exported, &n);
            report.push(format!(
                "{file:9} {n:50} {}",
                if ok { "exported" } else { "MISSING" }
            ));
            if !ok {
                missing.push(format!("{file}: {n}"));
            }
        }
    }
    println!("metric-name check:\n{}", report.join("\n"));
    assert!(
        missing.is_empty(),
        "metrics named but not exported by whale run: {missing:?}\nexported: {exported:?}"
    );

    // Each alert's runbook is a section of docs/operations.md.
    let ops = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#').trim()))
        .collect();
    for (alert, runbook) in &runbooks {
        let a = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| {
                panic!("{alert}: runbook {runbook:?} is not docs/operations.md#...")
            });
        assert!(
            anchors.contains(a),
            "{alert}: no section #{a} in docs/operations.md"
        );
    }

    // The caller's trace id reached StackStorm in the execution context; the others got one
    // started at ingest.
    let execs: Vec<Value> = http
        .get(format!("{}/api/v1/executions", st2.url))
        .header("St2-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(execs.len(), 3, "{execs:?}");
    let mut traces = BTreeSet::new();
    for e in &execs {
        let w = &e["context"]["whale"];
        let tp = w["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("no traceparent: {e}"));
        assert!(whale_kernel::tracectx::valid(tp), "{tp}");
        let id = whale_kernel::tracectx::trace_id(tp).unwrap().to_owned();
        if w["event_id"] == "obs-traced-1" {
            assert_eq!(id, TRACE_ID, "the caller's trace goes on into StackStorm");
        } else {
            assert_ne!(id, TRACE_ID);
        }
        traces.insert(id);
    }
    assert_eq!(traces.len(), 3, "one trace per event: {traces:?}");

    // Logs are JSON lines, carry the event and trace ids, and no configured secret.
    let logged = std::fs::read_to_string(&log).unwrap();
    for secret in [API_KEY, APPROVAL_SECRET] {
        assert!(!logged.contains(secret), "a secret reached the log");
    }
    let lines: Vec<Value> = logged
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON log lines: {logged}");
    let rejected = lines
        .iter()
        .find(|l| l["message"] == "rejected")
        .unwrap_or_else(|| panic!("no 'rejected' log line: {logged}"));
    assert_eq!(rejected["span"]["event_id"], "obs-bad-1", "{rejected}");
    assert_eq!(rejected["span"]["trace_id"], TRACE_ID, "{rejected}");
    // promtool checks the rules and runs their unit tests.
    let said = promtool_says(&["check", "rules", "whale-alerts.yaml"]);
    assert!(said.contains("SUCCESS: 10 rules found"), "{said}");
    let said = promtool_says(&["test", "rules", "whale-alerts.test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

/// Runs promtool in deploy/prometheus, prints and returns what it said; fails if it fails.
fn promtool_says(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool {}:\n{said}", args[..2].join(" "));
    assert!(out.status.success(), "promtool {args:?}: {said}");
    said
}

/// Every metric family in a text exposition, and each histogram's series names.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            out.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

fn exports(exported: &BTreeSet<String>, name: &str) -> bool {
    exported.contains(name)
}

/// Every PromQL expression in a Grafana dashboard: panel targets' `expr` and template
/// variables' `label_values(metric, label)` queries.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query" | "definition", Value::String(s))
                        if s.starts_with("label_values(") =>
                    {
                        out.push(s.clone())
                    }
                    _ => expressions(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| expressions(x, out)),
        _ => {}
    }
}

/// PromQL keywords that look like names.
const KEYWORDS: [&str; 13] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
];

/// The metric names a PromQL expression (with Grafana variables) selects: identifiers that are
/// not functions or aggregations (followed by `(`), keywords, label names (inside `{}` or
/// `by/without/on/ignoring (...)`), durations (inside `[]` or after `offset`), numbers or strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // label_values(metric, label): the metric is the first argument.
    if let Some(args) = expr
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let metric = args.split(',').next().unwrap_or("").trim();
        return metric_names(metric);
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Depth of parentheses holding a label list (by (...)), so their names are skipped.
    let mut label_list: Option<usize> = None;
    let mut depth = 0usize;
    let mut after_offset = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                // Skip to the matching close (strings inside braces are skipped too).
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' || chars[i] == '\'' {
                        let q = chars[i];
                        i += 1;
                        while i < chars.len() && chars[i] != q {
                            if chars[i] == '\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' => {
                depth += 1;
                i += 1;
            }
            ')' => {
                if label_list == Some(depth) {
                    label_list = None;
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            '$' => {
                // A Grafana variable: $name or ${name}.
                i += 1;
                if i < chars.len() && chars[i] == '{' {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number or a duration (5m, 1h30m, 1e3).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                after_offset = false;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                // A function or aggregation: `name(`, or `sum by (...) (` / `sum without (...)`.
                let rest: String = chars[j..].iter().take(8).collect();
                let modifier = ["by", "without"].iter().any(|m| {
                    rest.to_ascii_lowercase().starts_with(m)
                        && !rest[m.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                });
                let called = chars.get(j) == Some(&'(') || modifier;
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) && called
                {
                    label_list = Some(depth + 1);
                } else if lower == "offset" {
                    after_offset = true;
                } else if after_offset {
                    after_offset = false;
                } else if !called && label_list.is_none() && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// GitHub's anchor of a Markdown heading: lowercase, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn metric_names_are_read_from_promql_as_prometheus_reads_them() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, cluster) (rate(whale_x_seconds_bucket{cluster=~"$cluster", a="b}c"}[$__rate_interval]))) > 30"#
        ),
        ["whale_x_seconds_bucket"]
    );
    assert_eq!(
        names("sum by (reason) (rate(a_total[5m])) > 3 * sum by (reason) (rate(a_total[1h] offset 5m)) and on (reason) b_total unless ignoring(x) c"),
        ["a_total", "b_total", "c"]
    );
    assert_eq!(names("max(up) == bool 1 or vector(0)"), ["up"]);
    assert_eq!(
        names("count by (version) (whale_rules_info)"),
        ["whale_rules_info"]
    );
    assert_eq!(
        names("label_values(whale_dispatch_executions_total, cluster)"),
        ["whale_dispatch_executions_total"]
    );
    assert_eq!(
        names("rate(x:recorded:rate5m[1m]) / 1e3 + .5"),
        ["x:recorded:rate5m"]
    );
    assert_eq!(anchor("Alert: WhaleDeadLetters"), "alert-whaledeadletters");
}

/// Jaeger v2: `WHALE_JAEGER`, else `.whale/tools/bin/jaeger` (built by deploy/install.sh).
fn jaeger_bin() -> PathBuf {
    let bin = std::env::var_os("WHALE_JAEGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".whale/tools/bin/jaeger"));
    assert!(
        bin.is_file(),
        "{} is missing: run deploy/install.sh (it builds Jaeger v2 from the Go module proxy into .whale/tools/bin) or set WHALE_JAEGER to a jaeger binary",
        bin.display()
    );
    bin
}

/// A real Jaeger v2 (OTLP/HTTP receiver, in-memory storage, query API) on free ports.
struct Jaeger {
    child: std::process::Child,
    otlp: u16,
    query: u16,
    _dir: tempfile::TempDir,
}

impl Jaeger {
    async fn start() -> Jaeger {
        let bin = jaeger_bin();
        let dir = tempfile::tempdir().unwrap();
        let (otlp, query, grpc) = (free_port(), free_port(), free_port());
        let cfg = format!(
            r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"#
        );
        let file = dir.path().join("jaeger.yaml");
        std::fs::write(&file, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("jaeger.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn jaeger");
        let j = Jaeger {
            child,
            otlp,
            query,
            _dir: dir,
        };
        let url = format!("http://127.0.0.1:{query}/api/services");
        let up = eventually(Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        assert!(
            up,
            "jaeger did not start: {}",
            std::fs::read_to_string(j._dir.path().join("jaeger.log")).unwrap_or_default()
        );
        j
    }

    /// The spans of one trace: (span id, parent span id, operation name).
    async fn spans(&self, trace: &str) -> Vec<(String, String, String)> {
        let url = format!("http://127.0.0.1:{}/api/traces/{trace}", self.query);
        let Ok(r) = reqwest::get(url).await else {
            return Vec::new();
        };
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let mut out = Vec::new();
        for t in v["data"].as_array().into_iter().flatten() {
            for s in t["spans"].as_array().into_iter().flatten() {
                let parent = s["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .unwrap_or("")
                    .to_owned();
                out.push((
                    s["spanID"].as_str().unwrap_or("").to_owned(),
                    parent,
                    s["operationName"].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
        out
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The span tree, one span a line, children indented under their parent.
fn tree(spans: &[(String, String, String)]) -> String {
    fn walk(spans: &[(String, String, String)], parent: &str, depth: usize, out: &mut String) {
        let mut kids: Vec<&(String, String, String)> =
            spans.iter().filter(|s| s.1 == parent).collect();
        kids.sort_by(|a, b| a.2.cmp(&b.2));
        for s in kids {
            out.push_str(&format!("{}{} [{}]\n", "  ".repeat(depth), s.2, s.0));
            walk(spans, &s.0, depth + 1, out);
        }
    }
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.0.as_str()).collect();
    let mut out = String::new();
    let roots: BTreeSet<&str> = spans
        .iter()
        .filter(|s| !ids.contains(s.1.as_str()))
        .map(|s| s.1.as_str())
        .collect();
    for r in roots {
        out.push_str(&format!("(caller {r})\n"));
        walk(spans, r, 1, &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_events_trace_in_jaeger_holds_every_stage_with_the_right_parents() {
    let jaeger = Jaeger::start().await;
    let redis = RedisServer::start();
    let st2 = Emulator::start(&["--any-action"]);
    let recv = crate::feedback::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("whale.toml");
    std::fs::write(
        &cfg,
        format!(
            "[feedback]\npoll_min = \"200ms\"\npoll_max = \"1s\"\n\n[channels.oncall]\ntype = \"webhook\"\nurl = \"{}\"\nkey_env = \"TEST_HOOK_TOKEN\"\n",
            recv.url("/hook")
        ),
    )
    .unwrap();
    let log = dir.path().join("whale.log");
    let mut env = Env::new();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.set("WHALE_REDIS_URL", &redis.url());
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", API_KEY);
    env.set("TEST_HOOK_TOKEN", "hook-token-5e7a9c2b4d6f");
    env.set("WHALE_LOG_FORMAT", "json");
    env.set(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        &format!("http://127.0.0.1:{}", jaeger.otlp),
    );
    env.set("OTEL_BSP_SCHEDULE_DELAY", "100");
    env.prepare();
    env.ok(&["rules", "apply", "pipelines"]);
    let port = env.http_port;
    let _w = env.spawn_on("all", port, &log, &[]);
    assert!(
        ready(port, Duration::from_secs(60)).await,
        "whale run did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut ev = event("db-3");
    ev["id"] = json!("obs-jaeger-1");
    let r = reqwest::Client::new()
        .post(env.http("/v1/events"))
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&ev)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    assert!(
        eventually(Duration::from_secs(60), || async {
            !recv.requests("/hook").is_empty()
        })
        .await,
        "no notification arrived: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let wanted = [
        "ingest POST /v1/events",
        "validate handle",
        "match handle",
        "render handle",
        "throttle handle",
        "throttle redis decision",
        "dispatch handle",
        "dispatch stackstorm POST",
        "feedback handle",
        "feedback notification",
    ];
    let mut spans = Vec::new();
    for _ in 0..60 {
        spans = jaeger.spans(trace).await;
        if wanted.iter().all(|w| spans.iter().any(|s| s.2 == *w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let shown = tree(&spans);
    println!("span tree of event obs-jaeger-1 (trace {trace}) from Jaeger:\n{shown}");
    for w in wanted {
        assert!(spans.iter().any(|s| s.2 == w), "no span {w:?} in:\n{shown}");
    }
    // Parents: the chain of stages, each span under the one that published its input.
    let parent_of = |name: &str| -> String {
        let s = spans.iter().find(|s| s.2 == name).unwrap();
        spans
            .iter()
            .find(|p| p.0 == s.1)
            .map(|p| p.2.clone())
            .unwrap_or_else(|| format!("(caller {})", s.1))
    };
    assert_eq!(
        parent_of("ingest POST /v1/events"),
        "(caller b7ad6b7169203331)"
    );
    assert_eq!(parent_of("validate handle"), "ingest POST /v1/events");
    assert_eq!(parent_of("match handle"), "validate handle");
    assert_eq!(parent_of("render handle"), "match handle");
    assert_eq!(parent_of("throttle handle"), "render handle");
    assert_eq!(parent_of("throttle redis decision"), "throttle handle");
    assert_eq!(parent_of("dispatch handle"), "throttle handle");
    assert_eq!(parent_of("dispatch stackstorm POST"), "dispatch handle");
    assert_eq!(parent_of("feedback notification"), "feedback handle");
    // Every span but the ingest one has its parent in the trace.
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.0.as_str()).collect();
    let orphans: Vec<_> = spans
        .iter()
        .filter(|s| !ids.contains(s.1.as_str()) && s.2 != "ingest POST /v1/events")
        .collect();
    assert!(
        orphans.is_empty(),
        "spans without their parent: {orphans:?}\n{shown}"
    );
    // StackStorm got the trace in the execution's context.
    let execs: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/api/v1/executions", st2.url))
        .header("St2-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tp = execs[0]["context"]["whale"]["traceparent"]
        .as_str()
        .unwrap();
    assert_eq!(whale_kernel::tracectx::trace_id(tp), Some(trace));
    // The webhook token never reached the log.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("hook-token-5e7a9c2b4d6f"));
    assert!(!logged.contains(API_KEY));
}
