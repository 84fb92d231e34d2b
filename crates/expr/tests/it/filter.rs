//! Ordinary jq works as jq: paths, builtins, errors, limits on outputs.

use super::{event, run};
use serde_json::json;
use whale_expr::{EvalError, Filter, Input, Limits};

#[test]
fn paths_and_operators() {
    assert_eq!(run(".detail.host").unwrap(), vec![json!("web-12")]);
    assert_eq!(run(".detail.missing").unwrap(), vec![json!(null)]);
    assert_eq!(
        run("[.detail.mounts[].path]").unwrap(),
        vec![json!(["/data", "/"])]
    );
    assert_eq!(
        run(".detail.usage_pct > 90 and .detail.env == \"prod\"").unwrap(),
        vec![json!(true)]
    );
    assert_eq!(
        run(".detail.usage_pct + 1, .detail.usage_pct * 2").unwrap(),
        vec![json!(94), json!(186)]
    );
    assert_eq!(
        run(".labels.biz // \"default\"").unwrap(),
        vec![json!("trade")]
    );
    assert_eq!(
        run(".labels.nope // \"default\"").unwrap(),
        vec![json!("default")]
    );
    assert_eq!(run("[1,2,3] | .[1:]").unwrap(), vec![json!([2, 3])]);
    assert_eq!(
        run(". as {detail: {host: $h}} | $h").unwrap(),
        vec![json!("web-12")]
    );
    assert_eq!(
        run("\"\\(.detail.host):\\(.detail.usage_pct)\"").unwrap(),
        vec![json!("web-12:93")]
    );
    assert_eq!(
        run("if .detail.usage_pct > 95 then 1 elif .detail.usage_pct > 90 then 2 else 3 end")
            .unwrap(),
        vec![json!(2)]
    );
    assert_eq!(
        run("label $out | 1, break $out, 2").unwrap(),
        vec![json!(1)]
    );
    assert_eq!(
        run("try error(\"boom\") catch .").unwrap(),
        vec![json!("boom")]
    );
}

#[test]
fn builtins() {
    assert_eq!(
        run(".detail.host | test(\"^web-\\\\d+$\")").unwrap(),
        vec![json!(true)]
    );
    assert_eq!(
        run(".detail.host | sub(\"-\"; \"_\")").unwrap(),
        vec![json!("web_12")]
    );
    assert_eq!(
        run("[.detail.msg[] | ascii_upcase] | join(\"; \")").unwrap(),
        vec![json!("DISK ALMOST FULL; CLEANUP ADVISED")]
    );
    assert_eq!(
        run("[3,1,2] | sort, (map(. * 10) | add), min, max").unwrap(),
        vec![json!([1, 2, 3]), json!(60), json!(1), json!(3)]
    );
    assert_eq!(
        run(".detail | to_entries | map(.key) | length").unwrap(),
        vec![json!(6)]
    );
    assert_eq!(
        run(".detail.msg | contains([\"cleanup advised\"])").unwrap(),
        vec![json!(true)]
    );
    assert_eq!(
        run(".detail | del(.mounts, .msg) | keys").unwrap(),
        vec![json!(["app", "env", "host", "usage_pct"])]
    );
    assert_eq!(
        run(".detail.usage_pct |= . + 1 | .detail.usage_pct").unwrap(),
        vec![json!(94)]
    );
    assert_eq!(
        run(".detail.usage_pct += 1 | .detail.usage_pct").unwrap(),
        vec![json!(94)]
    );
    assert_eq!(
        run("\"[1,{\\\"a\\\":2}]\" | fromjson").unwrap(),
        vec![json!([1, {"a": 2}])]
    );
    assert_eq!(
        run(".detail.msg | @json").unwrap(),
        vec![json!("[\"disk almost full\",\"cleanup advised\"]")]
    );
    assert_eq!(
        run("[limit(2; range(10))], [range(0; 10; 4)]").unwrap(),
        vec![json!([0, 1]), json!([0, 4, 8])]
    );
    assert_eq!(run("[paths] | length").unwrap().len(), 1);
    assert_eq!(
        run("\"2015-03-05T23:51:47Z\" | fromdate").unwrap(),
        vec![json!(1425599507)]
    );
}

#[test]
fn predicate_semantics() {
    let input = Input::new(event());
    let t = |src: &str| Filter::compile(src).unwrap().test(&input);
    assert_eq!(t(".detail.mounts | any(.path == \"/data\")"), Ok(true));
    assert_eq!(t(".detail.missing"), Ok(false));
    assert_eq!(t("empty"), Ok(false));
    assert_eq!(t("0"), Ok(true), "0 is truthy in jq");
    assert_eq!(t("false, true"), Ok(false), "only the first output counts");
    assert!(matches!(t(".detail.host.x"), Err(EvalError::Jq(_))));
}

#[test]
fn errors_name_the_position() {
    let e = Filter::compile(".detail | foo(1)").unwrap_err();
    assert_eq!(e.position, Some((1, 11)));
    assert!(
        e.to_string()
            .contains("unknown or disallowed function `foo/1`"),
        "{e}"
    );
    let e = Filter::compile(".a |\n  (.b").unwrap_err();
    assert!(e.to_string().starts_with("syntax error"), "{e}");
    let e = Filter::compile(".a | ]").unwrap_err();
    assert!(e.to_string().contains("syntax error"), "{e}");
    let e = Filter::compile("$undefined").unwrap_err();
    assert!(
        e.to_string().contains("undefined variable `$undefined`"),
        "{e}"
    );
    let e = Filter::compile("").unwrap_err();
    assert_eq!(e.to_string(), "program is empty");
}

#[test]
fn outputs_are_bounded() {
    let input = Input::new(event());
    let f = Filter::compile("range(2000)").unwrap();
    assert_eq!(f.run(&input), Err(EvalError::TooManyOutputs(1000)));
    let small = Limits {
        max_output_bytes: 100,
        ..Limits::default()
    };
    let f = Filter::compile_with(".", &small).unwrap();
    assert_eq!(f.run(&input), Err(EvalError::OutputTooLarge(100)));
    // an error message carrying a huge value is cut short
    let untimed = Limits {
        max_eval_time: None,
        ..Limits::default()
    };
    let f = Filter::compile_with("[range(100000)] | error", &untimed).unwrap();
    match f.run(&input) {
        Err(EvalError::Jq(msg)) => assert!(msg.chars().count() < 400, "{}", msg.len()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn input_is_shared_and_checked() {
    let input = Input::new(event());
    let a = Filter::compile(".detail.host").unwrap();
    let b = Filter::compile(".labels.biz").unwrap();
    assert_eq!(a.run(&input).unwrap(), vec![json!("web-12")]);
    assert_eq!(b.run(&input).unwrap(), vec![json!("trade")]);
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let r = a.run(&Input::new(deep));
    assert_eq!(
        r,
        Err(EvalError::TooDeep {
            what: "input",
            limit: 128
        })
    );
}
