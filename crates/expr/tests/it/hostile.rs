//! Hostile jq: each case is refused when the rule is compiled, or bounded when it runs; and a
//! normal filter still works afterwards on the same thread.

use super::still_works;
use serde_json::json;
use whale_expr::{EvalError, Filter, Input, Limits};

/// `src` is refused at compile time with a message containing `why`.
fn refused(src: &str, why: &str) {
    let e = Filter::compile(src).expect_err(src);
    assert!(e.to_string().contains(why), "{src}: {e}");
    still_works();
}

/// `src` compiles, and running it on `input` fails with an error matching `check`. Without the
/// time limit: these cases are about the other limits (the time limit has its own tests in
/// `time.rs`), and a debug build may take longer than 100 ms to reach them.
fn bounded(src: &str, input: serde_json::Value, check: impl Fn(&EvalError) -> bool) {
    let limits = Limits {
        max_eval_time: None,
        ..Limits::default()
    };
    let f = Filter::compile_with(src, &limits).unwrap_or_else(|e| panic!("{src}: {e}"));
    let r = f.run(&Input::new(input));
    assert!(matches!(&r, Err(e) if check(e)), "{src}: {r:?}");
    still_works();
}

fn budget(e: &EvalError) -> bool {
    matches!(e, EvalError::Budget(_))
}

#[test]
fn recursion_is_refused() {
    refused(
        "def f: 1 + f; f",
        "function definitions (`def`) are not allowed",
    );
    refused("def f(g): g; f(.)", "function definitions");
    refused(
        "last(repeat(1))",
        "`repeat` is not allowed in rule expressions: it can loop forever",
    );
    refused("[.[] | while(true; .)]", "`while` is not allowed");
    refused("0 | until(false; . + 1)", "`until` is not allowed");
    refused("recurse(. + 1)", "with an argument it can loop forever");
    refused("recurse(.[]; true)", "with an argument it can loop forever");
    refused(
        "reduce range(10) as $i (0; . + $i)",
        "`reduce` is not allowed",
    );
    refused(
        "foreach range(10) as $i (0; . + $i)",
        "`foreach` is not allowed",
    );
}

#[test]
fn side_effects_and_secrets_are_refused() {
    refused("$ENV.WHALE_ST2_API_KEY", "`$ENV` is not allowed");
    refused(
        "env.HOME",
        "`env` is not allowed in rule expressions: it would expose",
    );
    refused("input", "a rule sees exactly one event");
    refused("[inputs]", "`inputs` is not allowed");
    refused("halt", "it would stop the worker");
    refused("halt_error(1)", "it would stop the worker");
    refused("debug", "side effects");
    refused("debug(\"x\")", "side effects");
    refused("stderr", "side effects");
    refused("input_filename", "side effects");
    refused("matches(\"a\"; \"\")", "internal helper");
    refused("$__whale_1", "reserved");
}

#[test]
fn unbounded_generators() {
    refused(
        "[range(1e12)]",
        "`range` would yield 1000000000000 values; the limit is 100000",
    );
    refused("last(range(0; 1e9; 1))", "the limit is 100000");
    refused("range(0; 10; 0)", "a step of 0 never ends");
    refused("[combinations]", "product of its input sizes");
    refused("transpose", "product of its input sizes");
    // computed bounds are allowed and bounded by the budget
    bounded("[range(.n)]", json!({"n": 1e12}), budget);
    bounded("last(range(.n))", json!({"n": 1e12}), budget);
    bounded(
        "[limit(.n; range(.n))] | length",
        json!({"n": 1e12}),
        budget,
    );
}

#[test]
fn products_of_generators_are_bounded() {
    let items: Vec<u32> = (0..100_000).collect();
    let input = json!({"items": items});
    bounded(
        "[range(100000) as $i | range(100000)] | length",
        json!(null),
        budget,
    );
    bounded(
        ".items as $a | [$a[] as $x | $a[] | select(. == $x)] | length",
        input.clone(),
        budget,
    );
    bounded(
        ".items | map(. as $x | $x) | length, (. as $a | [.[] | $a | length] | add)",
        input.clone(),
        budget,
    );
    let zeros = "(0,0,0,0,0,0,0,0,0,0)";
    bounded(
        &format!("[{}] | length", [zeros; 8].join("|")),
        json!(null),
        budget,
    );
    // a caught budget error still fails the run
    bounded("[.items[] | try (range(100000) | if . > 99990 then error else empty end) catch 0] | length", input.clone(), budget);
    bounded(
        "try ([range(100000) as $i | range(100000)] | length) catch 0",
        json!(null),
        budget,
    );
    bounded(
        "del(.items[]) , (range(100000) as $i | .items[$i] = 1 | 0)",
        input,
        budget,
    );
}

#[test]
fn sizes_are_bounded() {
    // string repetition is charged before it allocates
    bounded("\"x\" * 10000000000", json!(null), budget);
    bounded("\"x\" * .n", json!({"n": 10_000_000_000u64}), budget);
    bounded("\"xy\" | .s = . | \"x\" * 1e10", json!(null), |e| {
        matches!(e, EvalError::Jq(_))
    });
    // doubling a string, a shared tree, a big number
    let s = "x".repeat(100_000);
    bounded(
        &format!(".s{}", " | . + .".repeat(12)),
        json!({"s": s}),
        budget,
    );
    let doubling = " | [., .]".repeat(30);
    bounded(&format!(".{doubling} | tojson | length"), json!(1), budget);
    bounded(&format!(".{doubling} | . == ."), json!(1), budget);
    bounded(&format!(".{doubling} | flatten | length"), json!(1), budget);
    bounded(&format!(".{doubling}"), json!(1), |e| {
        matches!(e, EvalError::OutputTooLarge(_))
    });
    bounded(
        &format!("10000000000{}", " | . * .".repeat(18)),
        json!(null),
        |e| matches!(e, EvalError::Jq(m) if m.contains("number too large")),
    );
    // array difference and containment compare every pair
    let items: Vec<u32> = (0..100_000).collect();
    bounded(".items | . - .", json!({"items": items}), budget);
    bounded(".items | contains(.)", json!({"items": items}), budget);
}

#[test]
fn deep_values_are_refused() {
    bounded(
        "[range(100000) | \"[\"] | add | fromjson",
        json!(null),
        |e| matches!(e, EvalError::Jq(m) if m.contains("recursion limit exceeded")),
    );
    bounded(
        "[range(100000) | 0] as $p | null | setpath($p; 1)",
        json!(null),
        |e| matches!(e, EvalError::Jq(m) if m.contains("at most 64 elements")),
    );
    refused(
        "del(.items[range(100000)])",
        "an index must be a literal, a $variable or a simple path",
    );
    refused(".a[.b[]] = 1", "an index must be a literal");
    let mut deep = json!(0);
    for _ in 0..1000 {
        deep = json!([deep]);
    }
    bounded(".", deep, |e| {
        matches!(e, EvalError::TooDeep { what: "input", .. })
    });
}

#[test]
fn regex_bombs() {
    refused(
        "test(\"(a{100}){100}\")",
        "compiles to more than 65536 bytes",
    );
    refused("test(.pattern)", "must be a string literal");
    refused(
        "test(\"a\"; .flags)",
        "flags of `test` must be a string literal",
    );
    refused("test(\"a\"; \"q\")", "unknown regex flag");
    refused("test(\"(\")", "invalid regular expression");
    refused(
        &format!("test(\"{}\")", "a".repeat(2000)),
        "longer than 1000 bytes",
    );
    // the engine is linear: a classic catastrophic pattern is merely charged
    let f = Filter::compile(".s | test(\"(x+x+)+y\")").unwrap();
    assert_eq!(
        f.run(&Input::new(json!({"s": "x".repeat(20_000)}))),
        Ok(vec![json!(false)])
    );
    bounded(
        ".s | test(\"(x+x+)+y\")",
        json!({"s": "x".repeat(1_000_000)}),
        budget,
    );
}

#[test]
fn oversized_programs_are_refused_without_crashing() {
    refused(
        &format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
        "bytes long",
    );
    refused(
        &format!("{}1{}", "[".repeat(40), "]".repeat(40)),
        "brackets are nested more than 32 deep",
    );
    refused(&format!("{}1", "- ".repeat(200)), "operators that nest");
    refused(&format!(".{}", " | .".repeat(200)), "operators that nest");
    refused(
        &format!("1{}", " + 1".repeat(300)),
        "nested more than 96 levels",
    );
    refused(&format!("\"{}\"", "\\(".repeat(40)), "brackets are nested");
}

/// The deepest programs that pass the checks compile and run on a thread with a 2 MiB stack
/// (the default for spawned threads and tokio workers), in a debug build.
#[test]
fn accepted_programs_fit_a_small_stack() {
    let programs = [
        format!("{}1{}", "[".repeat(32), "]".repeat(32)),
        format!("{}1", "-".repeat(90)),
        format!(".{}", " | .a".repeat(90)),
        format!("1{}", " + 1".repeat(90)),
        format!("{}1{}", "[(".repeat(16), ")]".repeat(16)),
        format!("[.{}] | tojson", " | [.]".repeat(90)),
    ];
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for p in &programs {
                let f = Filter::compile(p).unwrap_or_else(|e| panic!("{p}: {e}"));
                f.run(&Input::new(json!({"a": null})))
                    .unwrap_or_else(|e| panic!("{p}: {e}"));
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
