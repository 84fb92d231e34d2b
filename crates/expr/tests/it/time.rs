//! The time budget (issue 12, finding 6): a legitimate but slow expression over a large event
//! stops at its per-evaluation deadline with `EvalError::Time`, naming the limit, whatever its
//! step budget; the next run on the same thread is unaffected.

use super::still_works;
use serde_json::{json, Value};
use std::time::Duration;
use whale_expr::{Compiler, EvalError, Filter, Input, Limits};

/// About 1 MB of event: 20,000 small objects under `.detail.a`.
pub fn big_event() -> Value {
    let items: Vec<Value> = (0..20_000)
        .map(|i| json!({"host": format!("web-{i}"), "v": i, "tags": ["a", "b"]}))
        .collect();
    json!({"id": "x", "event_type": "t", "detail": {"a": items}})
}

/// The slow predicate, as a rule would write it.
pub const SLOW: &str = "[.detail.a, .detail.a, .detail.a, .detail.a] | flatten | length > 0";

#[test]
fn slow_predicate_stops_at_its_deadline_not_its_steps() {
    let limits = Limits {
        fuel: u64::MAX / 4,
        max_eval_time: Some(Duration::from_millis(5)),
        ..Limits::default()
    };
    let f = Filter::compile_with(SLOW, &limits).unwrap();
    let input = Input::new(big_event());
    // Repeated: the same thread runs each time with a fresh deadline.
    for _ in 0..3 {
        let r = f.test(&input);
        assert_eq!(r, Err(EvalError::Time(Duration::from_millis(5))));
    }
    let msg = EvalError::Time(Duration::from_millis(5)).to_string();
    assert!(
        msg.contains("time limit of 5 ms") && msg.contains("rules.eval_time_limit"),
        "{msg}"
    );
    still_works();
}

#[test]
fn template_fails_at_its_deadline() {
    let limits = Limits {
        fuel: u64::MAX / 4,
        max_eval_time: Some(Duration::from_millis(5)),
        ..Limits::default()
    };
    let mut c = Compiler::with_limits(limits);
    let t = c
        .template("n={{ [.detail.a, .detail.a, .detail.a, .detail.a] | flatten | length }}")
        .unwrap();
    let e = t.render(&Input::new(big_event())).unwrap_err();
    assert!(e.reason.contains("time limit of 5 ms"), "{e}");
    still_works();
}

#[test]
fn default_limit_is_100ms_and_settable() {
    assert_eq!(
        whale_expr::default_eval_time(),
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        Limits::default().max_eval_time,
        Some(Duration::from_millis(100))
    );
}

#[test]
fn cheap_expressions_are_not_affected() {
    let limits = Limits {
        max_eval_time: Some(Duration::from_millis(50)),
        ..Limits::default()
    };
    let f = Filter::compile_with(".detail.a | map(.v) | add", &limits).unwrap();
    let input = Input::new(json!({"detail": {"a": [{"v": 1}, {"v": 2}]}}));
    assert_eq!(f.run(&input).unwrap(), vec![json!(3)]);
}
