//! The native evaluator agrees with jaq on every expression of its subset.

use serde_json::json;
use whale_expr::{Filter, Input};

const CORPUS: &[&str] = &[
    ".",
    ".detail.host",
    ".detail.missing",
    ".detail.host.x",
    ".detail.items[0]",
    ".detail.items[-1]",
    ".detail.items[9]",
    ".detail[\"odd key\"]",
    ".detail.items.x",
    ".detail.obj[0]",
    ".detail.n > 5",
    ".detail.n >= 5.0",
    ".detail.n == 7.0",
    ".detail.s < \"b\"",
    ".detail.host == \"web-12\"",
    ".detail.n != null",
    ". == .",
    ".detail.obj < .detail.obj2",
    ".detail.obj == .detail.obj3",
    ".detail.items < .detail.items2",
    ".detail.items > .detail.obj",
    "null < false",
    "false < true",
    "true < 0",
    "0 < \"\"",
    ".detail.flag and .detail.n > 1",
    ".detail.flag or false",
    ".detail.missing and .detail.host.x",
    ".detail.n and .detail.host.x",
    ".detail.missing // \"d\"",
    ".detail.host.x // 1",
    ".detail.flag // .detail.n",
    "if .detail.n > 5 then \"big\" elif .detail.n > 1 then \"mid\" else \"small\" end",
    "if .detail.flag then 1 end",
    "if .detail.host.x then 1 else 2 end",
    ".detail | not",
    ".detail.missing | not",
    ".detail.items | length",
    ".detail.host | length",
    ".detail.uni | length",
    ".detail.n | length",
    ".detail.neg | length",
    ".detail.flag | length",
    ".detail.missing | length",
    ".detail.obj | length",
    ".detail | type",
    ".detail.n | type",
    ".detail.mounts | any(.path == \"/data\")",
    ".detail.mounts | any(.path == \"/x\")",
    ".detail.mounts | all(.free > 1)",
    ".detail.mounts | all(.free > 100)",
    ".detail.mounts | any(.path.x)",
    ".detail.items | any",
    ".detail.items | all",
    ".detail.obj | any",
    ".detail.host | any",
    ".detail.missing | all",
    ".detail | has(\"host\")",
    ".detail | has(\"nope\")",
    ".detail.items | has(1)",
    ".detail.items | has(5)",
    ".detail.items | has(-1)",
    ".detail.host | has(\"x\")",
    ".detail | has(0)",
    ".detail.host | startswith(\"web\")",
    ".detail.host | endswith(\"12\")",
    ".detail.n | startswith(\"1\")",
    ".detail.host | ascii_upcase",
    ".detail.uni | ascii_downcase",
    ".detail.uni | ascii_upcase",
    "true",
    "null",
    "-1",
    "1.5 > 1",
    "1.0 == 1",
    ".detail.big > 1e18",
    ".detail.mounts[0].path",
    ".detail.mounts | any(.path | startswith(\"/d\"))",
    "(.detail.n > 1) == true",
    ".detail.missing.deeper[3].x",
    ".labels.biz // \"default\"",
];

fn inputs() -> Vec<serde_json::Value> {
    vec![
        json!({
            "detail": {
                "host": "web-12", "n": 7, "neg": -3.5, "s": "a", "flag": true, "uni": "ÉtÉ Ünï",
                "items": [1, "a", null, true], "items2": [1, "a", null, false, 0], "big": 9007199254740993u64,
                "odd key": {"x": 1}, "obj": {"a": 1, "b": [2]}, "obj2": {"a": 1, "c": 0}, "obj3": {"b": [2.0], "a": 1},
                "mounts": [{"path": "/", "free": 20}, {"path": "/data", "free": 3}]
            },
            "labels": {"biz": "trade"}
        }),
        json!({"detail": {"host": 5, "n": "7", "items": {}, "mounts": [], "flag": null, "obj": [], "neg": 0}, "labels": {}}),
        json!({"detail": null}),
        json!([1, 2]),
    ]
}

#[test]
fn native_and_jaq_agree() {
    for src in CORPUS {
        let native = Filter::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert!(!native.uses_jaq(), "{src} should run natively");
        let jaq = Filter::compile_jaq_only(src).unwrap();
        for v in inputs() {
            let input = Input::new(v.clone());
            let (a, b) = (native.run(&input), jaq.run(&input));
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert_eq!(x, y, "{src} on {v}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{src} on {v}: native {a:?}, jaq {b:?}"),
            }
            assert_eq!(
                native.test(&input).ok(),
                jaq.test(&input).ok(),
                "{src} on {v} (test)"
            );
        }
    }
}

#[test]
fn outside_the_subset_uses_jaq() {
    for src in [
        ".[]",
        "map(.a)",
        "\"\\(.a)\"",
        ".a + 1",
        "[.a]",
        "{a: 1}",
        ".a?",
        "test(\"x\")",
        ". as $x | $x",
        "1, 2",
    ] {
        assert!(Filter::compile(src).unwrap().uses_jaq(), "{src}");
    }
}
