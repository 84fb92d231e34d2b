//! Property tests (issue 12, fuzzing): arbitrary jq text and `{{ }}` templates never make
//! compilation panic, and every accepted program runs to an answer within its step and time
//! budget (an error is fine; a panic, a hang or a contained interpreter panic is not).
//! The number of cases tried is printed for the CI log.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use std::time::Duration;
use whale_expr::{Compiler, EvalError, Filter, Input, Limits, Template};

/// Pieces of jq that combine into programs worth trying: paths, generators, builtins that
/// walk or build values, operators, literals, brackets (often unbalanced).
const TOKENS: &[&str] = &[
    ".",
    ".detail",
    ".detail.a",
    ".[]",
    "..",
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    "|",
    ",",
    ";",
    ":",
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "<",
    "and",
    "or",
    "not",
    "//",
    "?",
    "if",
    "then",
    "else",
    "end",
    "try",
    "catch",
    "as $x",
    "$x",
    "map(",
    "select(",
    "flatten",
    "length",
    "tostring",
    "tojson",
    "fromjson",
    "keys",
    "add",
    "range(",
    "0",
    "1",
    "1e9",
    "-1",
    "\"x\"",
    "\"\\(.)\"",
    "test(\"a.*\")",
    "split(\",\")",
    "join(\"-\")",
    "ascii_downcase",
    "paths",
    "getpath(",
    "setpath(",
    "del(",
    "to_entries",
    "from_entries",
    "group_by(.)",
    "unique",
    "sort",
    "limit(",
    "first(",
    "any",
    "all",
    "@base64",
    "@json",
    "error",
    "null",
    "true",
    "[.[]]",
    "implode",
    "explode",
    "ltrimstr(\"a\")",
    "splits(\"a\")",
    "|=",
    "+=",
    "recurse",
    "env",
    "input",
    "def f: f;",
    "reduce",
    "$__loc__",
    "tostream",
    "getpath([\"a\"])",
];

fn program() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(TOKENS), 1..24)
            .prop_map(|t| t.join(" ")),
        1 => "\\PC{0,60}",
        1 => prop::collection::vec(prop::sample::select(&["[", "(", "{", "\"", "\\(", "."][..]), 1..200)
            .prop_map(|t| t.concat()),
    ]
}

fn event() -> serde_json::Value {
    let a: Vec<_> = (0..200)
        .map(|i| json!({"v": i, "s": "a,b,c", "t": [1, [2, [3]]]}))
        .collect();
    json!({"id": "x", "event_type": "t", "detail": {"a": a, "host": "web-1"}, "labels": {}})
}

fn limits() -> Limits {
    Limits {
        max_eval_time: Some(Duration::from_millis(50)),
        ..Limits::default()
    }
}

/// Runs `cases` cases of `strategy` through `check`; prints how many ran.
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

fn bounded(r: Result<(), EvalError>, what: &str) -> Result<(), TestCaseError> {
    match r {
        Err(EvalError::Internal(m)) => Err(TestCaseError::fail(format!(
            "{what}: interpreter panic: {m}"
        ))),
        _ => Ok(()),
    }
}

#[test]
fn fuzz_jq_programs() {
    let input = Input::new(event());
    fuzz("jq", 1500, program(), |src| {
        if let Ok(f) = Filter::compile_with(&src, &limits()) {
            bounded(f.run(&input).map(drop), &src)?;
            bounded(f.test(&input).map(drop), &src)?;
        }
        Ok(())
    });
}

#[test]
fn fuzz_templates() {
    let input = Input::new(event());
    let strategy = (
        program(),
        "\\PC{0,10}",
        prop::sample::select(&["{{ ", "{{", "{{{ ", "{{ {{ "][..]),
        prop::sample::select(&[" }}", "}}", " }}}", ""][..]),
    );
    fuzz("template", 1000, strategy, |(src, text, open, close)| {
        let t = format!("{text}{open}{src}{close}{text}");
        let mut c = Compiler::with_limits(limits());
        if let Ok(tpl) = c.template(&t) {
            if let Err(e) = tpl.render(&input) {
                if e.reason.contains("internal error in the jq interpreter") {
                    return Err(TestCaseError::fail(format!("{t}: {e}")));
                }
            }
        }
        let _ = Template::compile(&t);
        Ok(())
    });
}

/// Inputs kept as regression cases: the slow predicate, and the hostile shapes of
/// finding 1 written as jq.
#[test]
fn regression_corpus() {
    let input = Input::new(super::time::big_event());
    let corpus = [
        super::time::SLOW,
        "[.detail.a[] | tostring] | join(\",\") | length",
        "[paths] | length",
        "[.. | tostring] | length",
        &"(".repeat(400),
        &"!".repeat(4000),
        &"not ".repeat(2000),
        &format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
    ];
    for src in corpus {
        match Filter::compile_with(src, &limits()) {
            Ok(f) => {
                let r = f.run(&input);
                assert!(!matches!(r, Err(EvalError::Internal(_))), "{src}: {r:?}");
            }
            Err(e) => assert!(!e.message.is_empty()),
        }
    }
    eprintln!("fuzz jq corpus: {} cases", corpus.len());
}
