//! Bounded rule files (issue 12): size, rules per file, steps per rule, nesting and string
//! length are refused with `file:line` errors naming the limit; YAML nested 10,000 deep and an
//! alias bomb ("billion laughs") are refused by the YAML parser without a crash.

use super::compile;
use whale_rules::FileLimits;

fn refused(text: &str, want: &[&str]) -> String {
    let e = compile(&[("big.yaml", text)]).expect_err("must be refused");
    for w in want {
        assert!(e.contains(w), "expected {w:?} in: {e}");
    }
    e
}

#[test]
fn yaml_nested_10000_deep_is_refused() {
    let deep = format!(
        "name: deep\non: e\naction: a.b\nparams:\n  x: {}1{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let e = refused(&deep, &["big.yaml:", "recursion limit exceeded"]);
    eprintln!("10,000-deep YAML: {e}");
    // as a flow mapping, and as a block sequence
    let deep_map = format!(
        "name: deep\non: e\naction: a.b\nparams:\n  x: {}1{}\n",
        "{a: ".repeat(10_000),
        "}".repeat(10_000)
    );
    refused(&deep_map, &["big.yaml:", "recursion limit exceeded"]);
    let block: String = (0..10_000)
        .map(|i| format!("{}-\n", " ".repeat(i)))
        .collect();
    refused(
        &format!("name: deep\non: e\naction: a.b\nparams:\n x:\n{block}"),
        &["big.yaml"],
    );
}

#[test]
fn billion_laughs_is_refused() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names: Vec<char> = "bcdefghi".chars().collect();
    let mut prev = 'a';
    for n in &names {
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{n}: &{n} [{refs}]\n"));
        prev = *n;
    }
    // at the top of a file it is refused before it is expanded
    refused(&bomb, &["big.yaml:1"]);
    // inside a rule's params, where it is a valid value
    let rule = format!(
        "name: bomb\non: e\naction: a.b\nparams:\n{}",
        bomb.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let e = refused(&rule, &["big.yaml", "repetition limit exceeded"]);
    eprintln!("billion laughs: {e}");
}

#[test]
fn file_size_is_limited() {
    let max = FileLimits::default().max_file_bytes;
    let text = format!("name: big\non: e\naction: a.b\n# {}\n", "x".repeat(max));
    refused(&text, &["big.yaml:", "bytes per rule file", "split it"]);
}

#[test]
fn rules_per_file_are_limited() {
    let max = FileLimits::default().max_rules_per_file;
    let text: String = (0..=max)
        .map(|i| format!("- name: r{i}\n  on: e\n  action: a.b\n"))
        .collect();
    let e = refused(&text, &["rules per file", "split it"]);
    // the line of the first rule over the limit
    assert!(e.contains(&format!("big.yaml:{}", 3 * max + 1)), "{e}");
}

#[test]
fn steps_per_rule_are_limited() {
    let max = FileLimits::default().max_steps_per_rule;
    let steps: String = (0..=max)
        .map(|i| format!("  - {{ path: .detail.x{i}, exists: true }}\n"))
        .collect();
    let text = format!("name: many\non: e\naction: a.b\nwhen:\n{steps}");
    refused(&text, &["big.yaml:1: rule \"many\"", "steps per rule"]);
    // nested groups count too
    let nested = format!(
        "name: nested\non: e\naction: a.b\nwhen:\n  - any:\n{}",
        (0..=max)
            .map(|i| format!("    - {{ path: .detail.x{i}, exists: true }}\n"))
            .collect::<String>()
    );
    refused(&nested, &["steps per rule"]);
}

#[test]
fn nesting_is_limited() {
    let max = FileLimits::default().max_depth;
    let text = format!(
        "name: nest\non: e\naction: a.b\nparams:\n  x: {}1{}\n",
        "[".repeat(max + 1),
        "]".repeat(max + 1)
    );
    refused(&text, &["big.yaml:1", "nested", "flatten it"]);
}

#[test]
fn string_length_is_limited() {
    let max = FileLimits::default().max_string_bytes;
    let text = format!(
        "name: long\non: e\naction: a.b\nparams:\n  x: \"{{{{ .detail.host }}}}{}\"\n",
        "y".repeat(max)
    );
    refused(&text, &["big.yaml:1", "bytes per string"]);
    // a jq program over its own 4 KiB limit is refused when it is compiled
    let jq = format!(
        "name: jq\non: e\naction: a.b\nwhen:\n  - jq: '{}'\n",
        vec![".detail.host == \"a\""; 300].join(" or ")
    );
    refused(&jq, &["big.yaml:", "4096"]);
}

#[test]
fn within_the_limits_still_compiles() {
    let max = FileLimits::default();
    let steps: String = (0..max.max_steps_per_rule)
        .map(|i| format!("  - {{ path: .detail.x{i}, exists: true }}\n"))
        .collect();
    let text = format!("name: ok\non: e\naction: a.b\nwhen:\n{steps}");
    compile(&[("ok.yaml", &text)]).unwrap();
}

/// Finding 6: a slow `jq:` step stops at the time limit; the rule does not match, the error is
/// counted, and the explanation (`whale rules test`, `whale trace`) names the rule's step and
/// the limit.
#[test]
fn a_slow_jq_step_fails_at_the_time_limit_naming_it() {
    let text = "name: slow\non: e\naction: a.b\nwhen:\n  - jq: '[range(100000) | tostring] | [., ., ., .] | flatten | length > 0'\n";
    let set = compile(&[("slow.yaml", text)]).unwrap();
    let input = whale_rules::Input::new(super::envelope("e", serde_json::json!({})));
    let ev = set.rules()[0].evaluate(&input);
    assert!(!ev.matched);
    assert_eq!(ev.jq_errors, 1);
    let failed = ev.failed.expect("the failing step is explained");
    assert!(failed.step.contains("flatten"), "{failed:?}");
    assert!(
        failed.reason.contains("time limit of 100 ms")
            || failed.reason.contains("evaluation budget"),
        "{failed:?}"
    );
    assert_eq!(set.match_event(&input).counts.jq_errors, 1);
}
