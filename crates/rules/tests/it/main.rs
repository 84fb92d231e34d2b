//! Integration tests of whale-rules: operators, rule files, rendering, offline testing.

mod example;
mod fanout;
mod files;
mod fuzz;
mod index;
mod limits;
mod ops;
mod report;

use serde_json::{json, Value};
use whale_rules::{Input, RuleSet, RuleSource};

/// The reference rule of docs/contract.md "Rule files", exactly as written there.
pub const DESIGN_EXAMPLE: &str = r#"name: disk-full-cleanup
description: Clean temp files when a production VM disk passes 90%
on: [vm.disk_usage]                       # event types (exact or glob)
when:                                     # the feature pipeline: every step must pass
  - { path: .detail.env, eq: prod }
  - { path: .detail.usage_pct, gt: 90 }
  - { path: .detail.host, regex: '^web-\d+$' }
  - jq: '.detail.mounts | any(.path == "/data")'
action: ops.clean_disk                    # StackStorm action ref
params:
  host: "{{ .detail.host }}"              # a lone {{ expr }} keeps the JSON type of the result
  messages: "{{ .detail.msg }}"           # → the array itself, not its text
  note: "{{ .detail.usage_pct }}% on {{ .detail.host }}"   # mixed text → string
  default1: ok                            # literals pass through
  default2: [1, 2, 3]
throttle:
  key: "{{ .detail.app }}_{{ .detail.host }}"
  limit: 1                                # tasks allowed ...
  per: 10m                                # ... per period, per rendered key
route: "{{ .labels.biz // \"default\" }}" # StackStorm cluster (see routing)
approval: { required: true, timeout: 30m, channel: oncall }
notify: [oncall]
"#;

/// An event envelope with the given detail.
pub fn envelope(event_type: &str, detail: Value) -> Value {
    json!({
        "id": "01JDX3Q5M7", "event_type": event_type, "source": "test",
        "time": "2026-11-28T01:00:00Z", "detail": detail, "labels": {"biz": "trade"}
    })
}

pub fn compile(files: &[(&str, &str)]) -> Result<RuleSet, String> {
    let sources: Vec<RuleSource> = files
        .iter()
        .map(|(p, t)| RuleSource {
            path: p.to_string(),
            text: t.to_string(),
        })
        .collect();
    RuleSet::compile(&sources).map_err(|e| e.to_string())
}

/// `set` compiled again from its parsed form (what a worker compiles from the store), the
/// parsed form read back from the JSON the set wrote.
pub fn from_parsed(set: &RuleSet) -> RuleSet {
    let parsed = set
        .parsed_json()
        .expect("a set compiled from YAML has its parsed form")
        .iter()
        .map(|j| serde_json::from_str(j).expect("the parsed form reads back"))
        .collect();
    RuleSet::compile_parsed(set.sources(), parsed).expect("the parsed form compiles")
}

/// Evaluate one step against `detail`: (matched, type mismatches).
pub fn step(step: &str, detail: Value) -> (bool, u32) {
    let text = format!("name: t\non: e\naction: a.b\nwhen:\n  - {step}\n");
    let set = compile(&[("t.yaml", &text)]).unwrap_or_else(|e| panic!("{step}: {e}"));
    let ev = set.rules()[0].evaluate(&Input::new(envelope("e", detail)));
    (ev.matched, ev.type_mismatches)
}
