//! Unit and property tests of the ingest body splitter and of preparing a body: bounded item
//! counts, raw-slice sizes, bounded error answers, and the issue's inputs as regression cases.

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};

use super::*;

fn spans_of(body: &str) -> Vec<&str> {
    split(body.as_bytes(), Form::Auto, 100)
        .expect("split")
        .into_iter()
        .map(|r| &body[r])
        .collect()
}

#[test]
fn splits_arrays_documents_and_lines() {
    assert_eq!(
        spans_of(r#" [ {"a":"],}"} , 1 ,[2] ] "#),
        [r#"{"a":"],}"}"#, "1", "[2]"]
    );
    assert_eq!(
        spans_of("{\"a\":1}\n{\"b\":\"\\\"{\"}\n"),
        ["{\"a\":1}", "{\"b\":\"\\\"{\"}"]
    );
    assert_eq!(spans_of(r#"{"a":1}"#), [r#"{"a":1}"#]);
    assert_eq!(spans_of("[]"), Vec::<&str>::new());
    assert_eq!(spans_of("  "), Vec::<&str>::new());
    for bad in ["[1,]", "[,1]", "[1 2]", "[{\"a\":1}", "\"abc", "]"] {
        assert!(
            matches!(
                split(bad.as_bytes(), Form::Auto, 100),
                Err(SplitError::Malformed { .. })
            ),
            "{bad}"
        );
    }
    // An unbalanced line in a multi-line body falls back to one event per line.
    let body = "{\"a\":[1}\n{\"b\":2}\n";
    let r = split(body.as_bytes(), Form::Auto, 100).expect("lines");
    assert_eq!(r.len(), 2);
    let body = "{\"a\":1}\r\n\n  \n{\"b\":2}";
    assert_eq!(
        split(body.as_bytes(), Form::Lines, 100)
            .expect("lines")
            .len(),
        2
    );
}

/// Finding 2: a 4 MiB `[{},{},…]` body is refused by count before any per-item structure.
#[test]
fn item_count_is_bounded_before_parsing() {
    let n = 4 * 1024 * 1024 / 3;
    let body = "[".to_owned() + &"{},".repeat(n) + "{}]";
    assert_eq!(
        split(body.as_bytes(), Form::Auto, 10_000),
        Err(SplitError::TooMany { limit: 10_000 })
    );
    let lines = "{}\n".repeat(10_001);
    assert_eq!(
        split(lines.as_bytes(), Form::Lines, 10_000),
        Err(SplitError::TooMany { limit: 10_000 })
    );
    let ok = "[".to_owned() + &"{},".repeat(9_999) + "{}]";
    assert_eq!(
        split(ok.as_bytes(), Form::Auto, 10_000).expect("ok").len(),
        10_000
    );
}

/// Finding 2: the error answer lists the first N refusals and the total; sizes are the raw
/// slices (whitespace inside an event counts, nothing is re-serialised).
#[test]
fn refusals_are_capped_and_sizes_are_raw() {
    let body = "[".to_owned() + &"{},".repeat(999) + "{}]";
    let spans = split(body.as_bytes(), Form::Auto, 10_000).expect("split");
    let r = prepare(body.as_bytes(), &spans, &Limits::default(), 20).unwrap_err();
    assert_eq!(r.total, 1000);
    assert_eq!(r.first.len(), 20);
    assert!(!r.too_large);
    let limits = Limits {
        max_bytes: 40,
        max_depth: 64,
    };
    let padded = r#"[{"event_type":"generic",                     "detail":{}}]"#;
    let spans = split(padded.as_bytes(), Form::Auto, 10).expect("split");
    let r = prepare(padded.as_bytes(), &spans, &limits, 20).unwrap_err();
    assert!(r.too_large);
    assert!(
        r.first[0].reasons[0].message.contains("limit is 40"),
        "{r:?}"
    );
    let good = r#"[{"event_type":"generic","detail":{}},{"event_type":"generic","source":"s"}]"#;
    let spans = split(good.as_bytes(), Form::Auto, 10).expect("split");
    let ready = prepare(good.as_bytes(), &spans, &Limits::default(), 20).expect("ready");
    assert_eq!(ready.sources, ["http", "s"]);
    assert_eq!(ready.outputs.len(), 2);
    assert!(ready.outputs[0]
        .headers
        .iter()
        .any(|(k, _)| *k == envelope::HDR_NORMALIZED));
}

/// Finding 12: duplicate keys and depth refusals carry pointers in the refused shape.
#[test]
fn duplicate_keys_and_depth_have_pointers() {
    let body = r#"[{"event_type":"generic","detail":{"a":1,"a":2}}, {"event_type":"generic","detail":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"}]"#;
    let spans = split(body.as_bytes(), Form::Auto, 10).expect("split");
    let r = prepare(body.as_bytes(), &spans, &Limits::default(), 20).unwrap_err();
    assert_eq!(r.total, 2);
    assert_eq!(r.first[0].reasons[0].pointer, "/detail/a");
    assert!(
        r.first[1].reasons[0].pointer.starts_with("/detail/0/0"),
        "{r:?}"
    );
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "\r\n",
    "1",
    "null",
    "\"a\"",
    "\"\\\"\"",
    "\"event_type\"",
    "\"generic\"",
    "\"detail\"",
    "{}",
    "[]",
    "\"\\\\\"",
    "\u{ff}",
];

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(proptest::sample::select(TOKENS), 0..200)
            .prop_map(|t| t.concat().into_bytes()),
        (0usize..12_000, any::<bool>()).prop_map(|(n, arr)| {
            let item = r#"{"event_type":"generic","detail":{"k":1}}"#;
            if arr {
                format!("[{}]", vec![item; n].join(",")).into_bytes()
            } else {
                vec![item; n].join("\n").into_bytes()
            }
        }),
        (0usize..5_000).prop_map(|d| ("[".repeat(d) + &"]".repeat(d)).into_bytes()),
    ]
}

#[test]
fn fuzz_splitter_and_prepare_are_bounded() {
    let limits = Limits::default();
    let max_items = 10_000;
    let mut runner = TestRunner::new(PtConfig {
        cases: 400,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let tried = std::cell::Cell::new(0u64);
    runner
        .run(&(body(), any::<bool>()), |(b, lines)| {
            tried.set(tried.get() + 1);
            let form = if lines { Form::Lines } else { Form::Auto };
            if let Ok(spans) = split(&b, form, max_items) {
                prop_assert!(spans.len() <= max_items);
                let mut last = 0;
                for s in &spans {
                    prop_assert!(s.start >= last && s.start < s.end && s.end <= b.len());
                    last = s.end;
                }
                match prepare(&b, &spans, &limits, 20) {
                    Ok(r) => {
                        prop_assert_eq!(r.outputs.len(), spans.len());
                        let out: usize = r.outputs.iter().map(|o| o.payload.len()).sum();
                        prop_assert!(out <= b.len() * 4 + 200 * spans.len());
                    }
                    Err(r) => {
                        prop_assert!(r.first.len() <= 20 && r.total <= spans.len());
                    }
                }
            }
            Ok(())
        })
        .expect("splitter fuzz");
    eprintln!("fuzz ingest split+prepare: {} cases", tried.get());
}
