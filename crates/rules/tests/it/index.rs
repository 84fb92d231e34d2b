//! The equality index of a type's rules (issue 16): matching with it returns exactly what the
//! linear evaluation returns — the same rules in the same order, the same `for_each` elements,
//! the same refusals — on random rule sets (indexed and unindexed step shapes, several types,
//! globs, shared paths, values of every JSON type) and random events.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use whale_rules::{Input, Matches, RuleSet, RuleSource};

const PATHS: &[&str] = &[
    ".detail.a",
    ".detail.b",
    ".detail.c",
    ".labels.x",
    ".detail.n",
];

/// Values of every type, with the traps of equality: `1` and `1.0`, `"1"` and `1`, `null` and
/// missing, `"X"` and `"x"`.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec!["x", "y", "z", "X", "", "1", "xy", "xyz", "é", "é1"]).prop_map(|s| json!(s)),
        1 => Just(json!(true)),
        1 => Just(json!(false)),
        1 => Just(Value::Null),
        1 => prop::sample::select(vec![json!(1), json!(1.0), json!(2), json!(-1)]),
        1 => Just(json!(["x"])),
        1 => Just(json!({"k": "x"})),
    ]
}

fn path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(PATHS)
}

fn cmp() -> impl Strategy<Value = Value> {
    (path(), value()).prop_map(|(p, v)| json!({"path": p, "eq": v}))
}

/// One `when` step: indexable shapes (eq/in of strings, booleans, null; starts_with) and the
/// rest.
fn step() -> impl Strategy<Value = Value> {
    let in_ = (path(), prop::collection::vec(value(), 0..4))
        .prop_map(|(p, vs)| json!({"path": p, "in": vs}));
    let other = (
        path(),
        prop::sample::select(vec![
            "ne",
            "gt",
            "exists",
            "starts_with",
            "equals_ignore_case",
            "not_in",
        ]),
        value(),
    )
        .prop_map(|(p, op, v)| match op {
            "gt" => json!({"path": p, "gt": 0}),
            "exists" => json!({"path": p, "exists": true}),
            "starts_with" | "equals_ignore_case" => json!({"path": p, op: "x"}),
            "not_in" => json!({"path": p, "not_in": [v]}),
            _ => json!({"path": p, op: v}),
        });
    let prefix = (
        path(),
        prop::sample::select(vec!["x", "xy", "X", "é", "", "xyz1"]),
    )
        .prop_map(|(p, v)| json!({"path": p, "starts_with": v}));
    let jq = path().prop_map(|p| json!({"jq": format!("{p} == \"x\" or {p} == 1")}));
    prop_oneof![
        4 => cmp(),
        2 => in_,
        2 => prefix,
        2 => other,
        1 => jq,
        1 => (cmp(), cmp()).prop_map(|(a, b)| json!({"any": [a, b]})),
        1 => cmp().prop_map(|a| json!({"not": a})),
        1 => (cmp(), cmp()).prop_map(|(a, b)| json!({"all": [a, b]})),
    ]
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["t0", "t0", "t0", "t1", "t1", "t2", "t*"]),
        prop::collection::vec(step(), 0..4),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.95),
        value(),
    )
        .prop_map(|(on, mut when, fan, enabled, item_v)| {
            let mut r = json!({"on": [on], "action": "p.a", "enabled": enabled});
            if fan {
                r["for_each"] = json!(".detail.items[]");
                when.push(json!({"path": "$item.k", "eq": item_v}));
            }
            r["when"] = Value::Array(when);
            r
        })
}

fn event() -> impl Strategy<Value = Value> {
    let field = prop::option::weighted(0.8, value());
    (
        prop::sample::select(vec!["t0", "t0", "t1", "t2", "t9", "u"]),
        prop::collection::vec(field, PATHS.len()),
        prop::collection::vec(value(), 0..4),
    )
        .prop_map(|(t, fields, items)| {
            let mut ev = json!({"id": "e", "event_type": t, "source": "s",
                "time": "2026-11-28T01:00:00Z", "detail": {}, "labels": {}});
            for (p, v) in PATHS.iter().zip(fields) {
                if let Some(v) = v {
                    let (obj, key) = p[1..].split_once('.').expect("two segments");
                    ev[obj][key] = v;
                }
            }
            ev["detail"]["items"] =
                Value::Array(items.into_iter().map(|v| json!({"k": v})).collect());
            ev
        })
}

/// What a match returns, comparable: rule names, fanned elements, refusals, listening rules.
type Shown = (
    Vec<String>,
    Vec<(String, Vec<(usize, Value)>)>,
    Vec<String>,
    usize,
);

fn shown(m: &Matches) -> Shown {
    (
        m.matched.iter().map(|r| r.name().to_owned()).collect(),
        m.fanned
            .iter()
            .map(|(r, items)| (r.name().to_owned(), items.clone()))
            .collect(),
        m.refused.iter().map(|e| e.to_string()).collect(),
        m.evaluated,
    )
}

#[test]
fn indexed_matching_equals_linear_matching() {
    let (events, skipped, matches) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(rule(), 0..48),
        prop::collection::vec(event(), 1..120),
    );
    let result = runner.run(&strategy, |(rules, evs)| {
        let rules: Vec<Value> = rules
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r["name"] = json!(format!("r{i}"));
                r
            })
            .collect();
        let sources = [RuleSource {
            path: "gen.yaml".into(),
            text: Value::Array(rules).to_string(),
        }];
        let set = RuleSet::compile(&sources).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // what a worker compiles from the store's parsed form matches the same
        let stored = super::from_parsed(&set);
        for ev in evs {
            let input = Input::new(ev);
            let (fast, slow) = (
                set.match_event_with(&input, 2),
                set.match_event_linear_with(&input, 2),
            );
            prop_assert_eq!(shown(&fast), shown(&slow), "event {}", input.value());
            prop_assert_eq!(
                shown(&stored.match_event_with(&input, 2)),
                shown(&fast),
                "parsed form, event {}",
                input.value()
            );
            for (a, b) in set.rules().iter().zip(stored.rules()) {
                prop_assert_eq!(a.evaluate(&input), b.evaluate(&input));
            }
            prop_assert!(fast.candidates <= slow.candidates);
            events.fetch_add(1, Ordering::Relaxed);
            skipped.fetch_add(slow.candidates - fast.candidates, Ordering::Relaxed);
            matches.fetch_add(fast.matched.len() + fast.fanned.len(), Ordering::Relaxed);
        }
        Ok(())
    });
    let (events, skipped, matches) = (
        events.into_inner(),
        skipped.into_inner(),
        matches.into_inner(),
    );
    eprintln!(
        "index vs linear: {events} events, {skipped} rule evaluations skipped, {matches} matches"
    );
    if let Err(e) = result {
        panic!("indexed and linear matching differ: {e}");
    }
    // the corpus exercised both sides: the index skipped rules, and rules matched
    assert!(
        skipped > 1000,
        "the index skipped only {skipped} evaluations"
    );
    assert!(matches > 100, "only {matches} matches in the corpus");
}

/// 1,000 rules on one type that differ by `app == appK`: an event meets its app's rule and
/// the unindexed ones and the prefix rules its app starts with, in load order, and "why not"
/// still explains a skipped rule.
#[test]
fn one_type_many_rules_meets_only_its_candidates() {
    let mut text = String::new();
    for k in 0..1000 {
        text.push_str(&format!(
            "- {{name: r{k}, on: vm.disk, action: p.a, when: [{{path: .detail.env, eq: prod}}, \
             {{path: .detail.usage, gt: 90}}, {{path: .detail.app, eq: app{k}}}]}}\n"
        ));
    }
    let last =
        "- {name: any-app, on: vm.disk, action: p.a, when: [{path: .detail.usage, gt: 95}]}\n\
         - {name: app7x, on: vm.disk, action: p.a, when: [{path: .detail.app, starts_with: app7}]}\n";
    let set = super::compile(&[("gen.yaml", &text), ("last.yaml", last)]).unwrap();
    let ev = |app: &str, usage: u32| {
        Input::new(super::envelope(
            "vm.disk",
            json!({"env": "prod", "usage": usage, "app": app}),
        ))
    };
    let m = set.match_event(&ev("app7", 99));
    let names: Vec<_> = m.matched.iter().map(|r| r.name()).collect();
    assert_eq!(
        (names, m.evaluated, m.candidates),
        (vec!["r7", "any-app", "app7x"], 1002, 3)
    );
    let m = set.match_event(&ev("app7", 91));
    let names: Vec<_> = m.matched.iter().map(|r| r.name()).collect();
    assert_eq!((names, m.candidates), (vec!["r7", "app7x"], 3));
    // prefix: app70 has the prefix app7, app8 not
    let m = set.match_event(&ev("app70", 91));
    let names: Vec<_> = m.matched.iter().map(|r| r.name()).collect();
    assert_eq!((names, m.candidates), (vec!["r70", "app7x"], 3));
    let m = set.match_event(&ev("app8", 91));
    let names: Vec<_> = m.matched.iter().map(|r| r.name()).collect();
    assert_eq!((names, m.candidates), (vec!["r8"], 2));
    // a number where the rules expect a string: no candidate but the unindexed rule
    let m = set.match_event(&Input::new(super::envelope(
        "vm.disk",
        json!({"env": "prod", "usage": 99, "app": 7}),
    )));
    assert_eq!((m.matched.len(), m.candidates), (1, 1));
    let linear = set.match_event_linear(&ev("app7", 99));
    assert_eq!((linear.matched.len(), linear.candidates), (3, 1002));
    // why not, for a rule the index skipped
    let why = set.get("r8").unwrap().evaluate(&ev("app7", 99));
    let failed = why.failed.unwrap();
    assert_eq!(
        (why.matched, failed.step.as_str(), failed.saw, failed.index),
        (
            false,
            ".detail.app eq \"app8\"",
            Some(json!("app7")),
            vec![2]
        )
    );
}
