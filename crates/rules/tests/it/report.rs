//! Offline testing: `test_events` and its terminal format.

use super::{compile, envelope, DESIGN_EXAMPLE};
use serde_json::json;
use whale_rules::{format_human, test_events, EventReport};

#[test]
fn reports_matches_non_matches_and_render_errors() {
    let extra = "name: disk-warn\non: vm.*\naction: ops.warn\nwhen:\n  - {path: .detail.usage_pct, gt: 95}\n\
                 ---\nname: bad-param\non: vm.disk_usage\naction: ops.x\nparams: {first: '{{ .detail.msg[] }}'}\n";
    let set = compile(&[
        ("pipelines/disk.yaml", DESIGN_EXAMPLE),
        ("pipelines/extra.yaml", extra),
    ])
    .unwrap();
    let detail = json!({"host": "web-12", "usage_pct": 93, "env": "prod", "app": "shop", "mounts": [{"path": "/data"}], "msg": ["a", "b"]});
    let events = vec![
        envelope("vm.disk_usage", detail),
        envelope("vm.other", json!({"usage_pct": "97"})),
        envelope("net.down", json!({})),
        json!({"detail": {}}),
    ];
    let reports = test_events(&set, &events);
    assert_eq!(reports.len(), 4);
    let r = &reports[0].rules;
    assert_eq!(
        r.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>(),
        ["disk-full-cleanup", "disk-warn", "bad-param"]
    );
    assert!(r[0].matched && r[0].task.is_some());
    assert!(!r[1].matched);
    assert_eq!(r[1].failed.as_ref().unwrap().saw, Some(json!(93)));
    assert!(r[2].matched && r[2].render_error.is_some());
    assert_eq!(reports[1].rules[0].type_mismatches, 1);
    assert!(reports[2].rules.is_empty());
    assert!(reports[3].error.is_some());

    // --json round-trips
    let text = serde_json::to_string(&reports).unwrap();
    let back: Vec<EventReport> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, reports);

    let human = format_human(&reports);
    // (key order of the parameters depends on serde_json's features, so it is not spelled here)
    let params = r[0].task.as_ref().unwrap().parameters.to_string();
    let expected = format!("\
event #1 01JDX3Q5M7 vm.disk_usage
  ✔ disk-full-cleanup → ops.clean_disk {params} throttle key=shop_web-12 (1 per 10m) route=trade approval=oncall notify=oncall
  ✘ disk-warn: step 1 .detail.usage_pct gt 95: saw 93 (the comparison is false)
  ! bad-param: matched, but params.first: {{{{ .detail.msg[] }}}} yields 2 values; wrap it in [ ] to get an array
event #2 01JDX3Q5M7 vm.other
  ✘ disk-warn: step 1 .detail.usage_pct gt 95: saw \"97\" (type mismatch: `gt` does not apply to a string)
      (1 type mismatches, 0 jq errors)
event #3 01JDX3Q5M7 net.down: no rule listens to this event type
event #4: not an event envelope: no string \"event_type\"
");
    assert_eq!(human, expected, "\n{human}");
}
