//! The reference rule of docs/contract.md "Rule files": accepted exactly as written, matched,
//! rendered.

use super::{compile, envelope, DESIGN_EXAMPLE};
use serde_json::json;
use std::time::Duration;
use whale_rules::{Input, RenderedTask, ThrottleMode};

fn disk_event(usage: i64) -> serde_json::Value {
    envelope(
        "vm.disk_usage",
        json!({
            "host": "web-12", "usage_pct": usage, "env": "prod", "app": "shop",
            "mounts": [{"path": "/data"}, {"path": "/"}],
            "msg": ["disk almost full", "cleanup advised"]
        }),
    )
}

#[test]
fn design_example_matches_and_renders() {
    let set = compile(&[("pipelines/disk.yaml", DESIGN_EXAMPLE)]).unwrap();
    assert_eq!(set.len(), 1);
    let rule = &set.rules_for("vm.disk_usage")[0];
    assert_eq!(rule.name(), "disk-full-cleanup");
    assert_eq!(rule.line(), Some(1));
    let input = Input::new(disk_event(93));
    let ev = rule.evaluate(&input);
    assert!(ev.matched, "{ev:?}");
    let task = rule.render(&input).unwrap();
    assert_eq!(task.action, "ops.clean_disk");
    assert_eq!(
        task.parameters,
        json!({
            "host": "web-12",
            "messages": ["disk almost full", "cleanup advised"],
            "note": "93% on web-12",
            "default1": "ok",
            "default2": [1, 2, 3]
        })
    );
    let throttle = task.throttle.as_ref().unwrap();
    assert_eq!(throttle.key, "shop_web-12");
    assert_eq!(
        (throttle.limit, throttle.per, throttle.burst),
        (1, Duration::from_secs(600), 0)
    );
    assert_eq!(
        (throttle.mode, throttle.fail_open),
        (ThrottleMode::Rate, false)
    );
    assert_eq!(task.route.as_deref(), Some("trade"));
    let approval = task.approval.as_ref().unwrap();
    assert_eq!(
        (
            approval.required,
            approval.timeout,
            approval.channel.as_deref()
        ),
        (true, Some(Duration::from_secs(1800)), Some("oncall"))
    );
    assert_eq!(task.notify, vec!["oncall"]);
    assert!(!task.result_event);

    // the task round-trips through JSON, with durations as text
    let json = serde_json::to_value(&task).unwrap();
    assert_eq!(json["throttle"]["per"], "10m");
    assert_eq!(json["approval"]["timeout"], "30m");
    let back: RenderedTask = serde_json::from_value(json).unwrap();
    assert_eq!(back, task);
}

#[test]
fn design_example_why_not() {
    let set = compile(&[("pipelines/disk.yaml", DESIGN_EXAMPLE)]).unwrap();
    let rule = &set.rules()[0];
    let ev = rule.evaluate(&Input::new(disk_event(85)));
    assert!(!ev.matched);
    let f = ev.failed.unwrap();
    assert_eq!(f.step, ".detail.usage_pct gt 90");
    assert_eq!(f.index, vec![1]);
    assert_eq!(f.saw, Some(json!(85)));
    assert_eq!(f.reason, "the comparison is false");
    // route falls back to "default" when the label is missing
    let mut event = disk_event(95);
    event["labels"] = json!({});
    assert_eq!(
        rule.render(&Input::new(event)).unwrap().route.as_deref(),
        Some("default")
    );
}

#[test]
fn render_errors_name_the_field() {
    let text = "name: r\non: e\naction: a.b\nparams:\n  list: '{{ .detail.items[] }}'\n";
    let set = compile(&[("r.yaml", text)]).unwrap();
    let e = set.rules()[0]
        .render(&Input::new(envelope("e", json!({"items": [1, 2]}))))
        .unwrap_err();
    assert_eq!(e.field, "params.list");
    assert_eq!(
        e.reason,
        "{{ .detail.items[] }} yields 2 values; wrap it in [ ] to get an array"
    );
    assert_eq!(e.to_string(), "rule \"r\": params.list: {{ .detail.items[] }} yields 2 values; wrap it in [ ] to get an array");

    let text = "name: r\non: e\naction: a.b\nroute: '{{ .detail.n }}'\nthrottle: {key: '{{ .detail.n }}', limit: 2, per: 1h}\n";
    let set = compile(&[("r.yaml", text)]).unwrap();
    let e = set.rules()[0]
        .render(&Input::new(envelope("e", json!({"n": 3}))))
        .unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("route", "must render to a string, got 3")
    );
    let text = "name: r\non: e\naction: a.b\nthrottle: {key: '{{ .detail.n }}', limit: 2, per: 1h, burst: 3, mode: once_within, fail_open: true}\n";
    let set = compile(&[("r.yaml", text)]).unwrap();
    let task = set.rules()[0]
        .render(&Input::new(envelope("e", json!({"n": [1, "a"]}))))
        .unwrap();
    let t = task.throttle.unwrap();
    assert_eq!(t.key, "[1,\"a\"]", "non-string keys are compact JSON");
    assert_eq!(
        (t.burst, t.mode, t.fail_open),
        (3, ThrottleMode::OnceWithin, true)
    );
    assert_eq!(task.parameters, json!({}));
}
