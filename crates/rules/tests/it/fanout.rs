//! `for_each`: one evaluation and one task per element, `$item` in steps and templates, the
//! element bound, stable element keys, and `whale rules test`'s per-element report.

use super::compile;
use serde_json::{json, Value};
use whale_rules::{format_human, item_key, test_events_with, Input};

/// An Alertmanager-shaped group: two firing alerts on two instances, one resolved.
fn group() -> Value {
    json!({
        "id": "g1", "event_type": "alertmanager.group", "source": "am",
        "time": "2026-11-28T01:00:00Z", "labels": {"biz": "trade"},
        "detail": {
            "status": "firing",
            "commonLabels": {"alertname": "HostDiskFull"},
            "alerts": [
                {"status": "firing", "labels": {"instance": "web-1:9100", "severity": "page"}},
                {"status": "firing", "labels": {"instance": "web-2:9100", "severity": "page"}},
                {"status": "resolved", "labels": {"instance": "web-3:9100", "severity": "page"}}
            ]
        }
    })
}

const RULE: &str = r#"name: per-alert
on: alertmanager.group
for_each: .detail.alerts[]
when:
  - { path: $item.status, eq: firing }
  - jq: '$item.labels.severity == "page"'
action: ops.clean_disk
params:
  host: '{{ $item.labels.instance | split(":") | .[0] }}'
  group: '{{ .detail.commonLabels.alertname }}'
throttle:
  key: '{{ $item.labels.instance }}'
  limit: 1
  per: 1h
route: '{{ .labels.biz }}'
"#;

#[test]
fn one_match_per_passing_element_with_item_bound() {
    let set = compile(&[("r.yaml", RULE)]).unwrap();
    let input = Input::new(group());
    let m = set.match_event(&input);
    assert!(
        m.matched.is_empty(),
        "fan-out rules are reported per element"
    );
    assert_eq!(m.fanned.len(), 1);
    let (rule, items) = &m.fanned[0];
    assert_eq!(rule.name(), "per-alert");
    let idx: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        idx,
        vec![0, 1],
        "the resolved alert (index 2) does not pass"
    );
    let hosts: Vec<Value> = items
        .iter()
        .map(|(_, item)| {
            rule.render(&whale_rules::bind(&input, item))
                .unwrap()
                .parameters["host"]
                .clone()
        })
        .collect();
    assert_eq!(hosts, vec![json!("web-1"), json!("web-2")]);
    let t = rule
        .render(&whale_rules::bind(&input, &items[1].1))
        .unwrap();
    assert_eq!(t.parameters["group"], json!("HostDiskFull"));
    assert_eq!(t.throttle.unwrap().key, "web-2:9100");
    assert_eq!(t.route.as_deref(), Some("trade"));
}

#[test]
fn over_the_element_limit_refuses_the_rule_with_the_count() {
    let set = compile(&[("r.yaml", RULE)]).unwrap();
    let m = set.match_event_with(&Input::new(group()), 2);
    assert!(m.fanned.is_empty(), "no partial fan-out");
    assert_eq!(m.refused.len(), 1);
    let e = &m.refused[0];
    assert_eq!(e.rule, "per-alert");
    assert_eq!(e.count, Some(3));
    assert!(
        e.reason.contains("yields 3 elements, over the limit of 2"),
        "{}",
        e.reason
    );
    assert!(
        e.reason.contains("rules.max_for_each_items"),
        "{}",
        e.reason
    );
}

#[test]
fn a_failing_for_each_is_a_jq_error_not_a_match() {
    let set = compile(&[("r.yaml", RULE)]).unwrap();
    let mut ev = group();
    ev["detail"]["alerts"] = json!(7);
    let m = set.match_event(&Input::new(ev));
    assert!(m.fanned.is_empty() && m.refused.is_empty());
    assert_eq!(m.counts.jq_errors, 1);
}

#[test]
fn item_outside_for_each_is_refused_at_load() {
    let text = "name: x\non: e\naction: a.b\nparams:\n  h: '{{ $item.host }}'\n";
    let e = compile(&[("x.yaml", text)]).unwrap_err();
    assert!(
        e.contains("x.yaml:5: rule \"x\": params: `$item` is only bound in a rule with `for_each`"),
        "{e}"
    );
    // `$items` is another variable (and undefined: refused by jq, not by this check)
    let ok = "name: x\non: e\nfor_each: .detail.a[]\naction: a.b\nparams:\n  h: '{{ $item }}'\n";
    compile(&[("x.yaml", ok)]).unwrap();
    let bad = "name: x\non: e\nfor_each: '.detail.a[] |'\naction: a.b\n";
    let e = compile(&[("x.yaml", bad)]).unwrap_err();
    assert!(e.contains("x.yaml:3: rule \"x\": for_each:"), "{e}");
}

#[test]
fn item_keys_ignore_key_order_and_position() {
    let a: Value = serde_json::from_str(r#"{"b": 1, "a": [1, {"y": 2, "x": "s"}]}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a": [1, {"x": "s", "y": 2}], "b": 1}"#).unwrap();
    assert_eq!(item_key(&a), item_key(&b));
    assert_eq!(item_key(&a).len(), 32);
    assert_ne!(
        item_key(&a),
        item_key(&json!({"b": 2, "a": [1, {"y": 2, "x": "s"}]}))
    );
    assert_ne!(item_key(&json!(["a", "b"])), item_key(&json!(["ab"])));
    assert_ne!(item_key(&json!("1")), item_key(&json!(1)));
}

#[test]
fn rules_test_reports_each_element_and_counts_render_failures() {
    let broken = RULE.replace("name: per-alert", "name: broken").replace(
        "group: '{{ .detail.commonLabels.alertname }}'",
        "group: '{{ .detail.nothing[] }}'",
    );
    let set = compile(&[("r.yaml", RULE), ("s.yaml", &broken)]).unwrap();
    let reports = test_events_with(&set, &[group()], 100);
    let r = &reports[0].rules[0];
    assert_eq!(r.for_each.as_deref(), Some(".detail.alerts[]"));
    assert!(r.matched);
    let outcome: Vec<(usize, bool, bool)> = r
        .elements
        .iter()
        .map(|e| (e.index, e.matched, e.task.is_some()))
        .collect();
    assert_eq!(
        outcome,
        vec![(0, true, true), (1, true, true), (2, false, false)]
    );
    assert_eq!(
        r.elements[2].failed.as_ref().unwrap().step,
        "$item.status eq \"firing\""
    );
    assert_eq!(
        reports[0].failures(),
        2,
        "two elements of `broken` fail to render"
    );
    let text = format_human(&reports);
    assert!(
        text.contains("✔ per-alert: for_each .detail.alerts[] → 3 elements"),
        "{text}"
    );
    assert!(text.contains("[1] ✔ {\"labels\""), "{text}");
    assert!(
        text.contains("ops.clean_disk {\"group\":\"HostDiskFull\",\"host\":\"web-2\"}"),
        "{text}"
    );
    assert!(text.contains("[2] ✘ {\"labels\""), "{text}");
    assert!(text.contains("[0] ! {\"labels\""), "{text}");
    assert!(text.contains("matched, but params.group:"), "{text}");
    let over = test_events_with(&set, &[group()], 2);
    assert_eq!(over[0].failures(), 2, "both rules over the limit");
    assert!(
        format_human(&over).contains("! per-alert: for_each `.detail.alerts[]` yields 3 elements")
    );
}
