//! Property tests over rule files (issue 12, fuzzing): arbitrary YAML-ish text and structured
//! rules with arbitrary steps and templates never make parsing or compiling panic, and a
//! compiled set matches and renders an event within the expression budgets. Prints the cases
//! tried per target for the CI log.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use whale_rules::{Input, RuleSet, RuleSource};

fn fuzz<S: Strategy>(
    target: &str,
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, check);
    eprintln!("fuzz {target}: {cases} cases tried");
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
}

fn event() -> Input {
    Input::new(json!({
        "id": "01JDX3Q5M7", "event_type": "e", "source": "s", "time": "2026-11-28T01:00:00Z",
        "detail": {"host": "web-1", "n": 5, "a": [1, 2, {"b": "c"}]}, "labels": {"biz": "x"}
    }))
}

/// Compile, then match and render whatever compiled.
fn exercise(text: &str) {
    let sources = [RuleSource {
        path: "f.yaml".into(),
        text: text.to_owned(),
    }];
    if let Ok(set) = RuleSet::compile(&sources) {
        let input = event();
        let m = set.match_event(&input);
        for rule in m.matched.iter() {
            let _ = rule.render(&input);
        }
        for rule in set.rules() {
            let _ = rule.evaluate(&input);
        }
    }
}

const YAML_BITS: &[&str] = &[
    "name: r",
    "on: e",
    "action: a.b",
    "when:",
    "params:",
    "  - ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    ", ",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "---",
    "...",
    "'",
    "\"",
    "\n",
    "  ",
    "#",
    "? ",
    "|",
    ">",
    "jq: ",
    "path: .detail.host",
    "eq: 1",
    "any:",
    "all:",
    "not:",
    "throttle:",
    "limit: 1",
    "per: 10s",
    "key: \"{{ .detail.host }}\"",
    "{{ . }}",
    "route: x",
    "%YAML 1.2",
    "<<: *a",
    "~",
    "null",
    "1e999",
    "-0",
    "0x1F",
    ".inf",
];

#[test]
fn fuzz_rule_text() {
    let strategy = prop_oneof![
        3 => prop::collection::vec(prop::sample::select(YAML_BITS), 0..60).prop_map(|v| v.concat()),
        1 => "\\PC{0,200}",
    ];
    fuzz("rule-text", 2000, strategy, |text| {
        exercise(&text);
        Ok(())
    });
}

const JQ_BITS: &[&str] = &[
    ".",
    ".detail",
    ".detail.a",
    ".[]",
    "..",
    "[",
    "]",
    "(",
    ")",
    "|",
    ",",
    "+",
    "*",
    "==",
    "and",
    "or",
    "not",
    "//",
    "?",
    "map(",
    "select(",
    "flatten",
    "length",
    "tostring",
    "keys",
    "add",
    "range(",
    "1",
    "1e9",
    "\"x\"",
    "test(\"a.*\")",
    "paths",
    "if",
    "then",
    "else",
    "end",
    "try",
    "error",
    "{",
    "}",
    ":",
    "$x",
    "as $x",
    "}}",
    "{{",
];

#[test]
fn fuzz_structured_rules() {
    let jq = prop::collection::vec(prop::sample::select(JQ_BITS), 1..16).prop_map(|v| v.join(" "));
    let strategy = (jq.clone(), jq, 0usize..4);
    fuzz("rule-structured", 1000, strategy, |(pred, tpl, shape)| {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let when = match shape {
            0 => format!("  - jq: {}\n", q(&pred)),
            1 => format!(
                "  - any: [{{ jq: {} }}, {{ path: .detail.n, gt: 1 }}]\n",
                q(&pred)
            ),
            2 => format!("  - not: {{ jq: {} }}\n", q(&pred)),
            _ => "  - { path: .detail.host, eq: web-1 }\n".to_owned(),
        };
        let text = format!(
            "name: r\non: e\naction: a.b\nwhen:\n{when}params:\n  x: {}\n  y: {}\nthrottle:\n  key: {}\n  limit: 1\n  per: 10s\n",
            q(&format!("{{{{ {tpl} }}}}")),
            q(&format!("n={{{{ {pred} }}}}")),
            q(&format!("{{{{ {tpl} }}}}")),
        );
        exercise(&text);
        Ok(())
    });
}

/// The issue's inputs kept as regression cases.
#[test]
fn regression_corpus() {
    let corpus = [
        format!("x: {}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("{}1{}", "{a: ".repeat(10_000), "}".repeat(10_000)),
        "- ".repeat(10_000),
        "a: &a [1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n".to_owned(),
        "name: r\non: e\naction: a.b\nwhen:\n  - jq: '[.detail.a, .detail.a, .detail.a, .detail.a] | flatten | length > 0'\n".to_owned(),
    ];
    for text in &corpus {
        exercise(text);
    }
    eprintln!("fuzz rule corpus: {} cases", corpus.len());
}
