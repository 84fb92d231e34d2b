//! Property tests over the envelope parser: whatever the bytes (random, JSON-like token soup,
//! deep nesting, invalid UTF-8, duplicate keys, CloudEvents), parsing and normalizing never
//! panic, never return a value deeper than the limit, and keep their messages bounded. The
//! issue's inputs are kept as explicit regression cases.

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};

use super::*;

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "1",
    "-0.5e3",
    "null",
    "true",
    "\"a\"",
    "\"id\"",
    "\"x\"",
    "\"\\\\\"",
    "\"\\u00e9\"",
    "\"detail\"",
    "\"event_type\"",
    "\"generic\"",
    "\"specversion\"",
    "\"1.0\"",
    "\"type\"",
    "\"data\"",
    "\"labels\"",
    "\"time\"",
    "\"2026-11-28T01:00:00Z\"",
    "\"{\\\"a\\\":1,\\\"a\\\":2}\"",
    "\"[[[[[[]]]]]]\"",
    "\u{feff}",
    "\"datacontenttype\"",
    "\"text/plain\"",
];

fn soup() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(proptest::sample::select(TOKENS), 0..120)
            .prop_map(|t| t.concat().into_bytes()),
        (0usize..3000, 0u8..4).prop_map(|(d, k)| deep(d, k).into_bytes()),
        (
            proptest::collection::vec(proptest::sample::select(TOKENS), 0..60),
            any::<u8>()
        )
            .prop_map(|(t, b)| {
                let mut v = t.concat().into_bytes();
                let at = v.len() / 2;
                v.insert(at, b);
                v
            }),
    ]
}

/// Deep nesting of kind `k`: arrays, objects, an event whose string detail nests, unclosed.
fn deep(d: usize, k: u8) -> String {
    match k {
        0 => "[".repeat(d) + &"]".repeat(d),
        1 => "{\"a\":".repeat(d) + "1" + &"}".repeat(d),
        2 => format!(
            r#"{{"event_type":"generic","detail":{}}}"#,
            serde_json::Value::String("[".repeat(d) + &"]".repeat(d))
        ),
        _ => "[".repeat(d),
    }
}

fn check(raw: &[u8], limits: &Limits) {
    match parse_bytes(raw, limits) {
        Ok(v) => {
            assert!(depth(&v) <= limits.max_depth);
            let d = Defaults {
                event_type: None,
                id: "x".into(),
                time: OffsetDateTime::UNIX_EPOCH,
                source: "fuzz",
            };
            for mode in [StringDetail::Decode, StringDetail::Keep] {
                match normalize_with(v.clone(), &d, limits, mode) {
                    Ok(e) => {
                        assert!(depth(&e.detail) < limits.max_depth.max(1));
                        assert!(e.to_string_len() <= raw.len() * 8 + 1024);
                    }
                    Err(rs) => {
                        assert!(!rs.is_empty());
                        for r in rs {
                            assert!(r.message.len() <= raw.len() + 1024, "{r:?}");
                        }
                    }
                }
            }
        }
        Err(r) => assert!(r.message.len() <= 1024 + raw.len().min(1024), "{r:?}"),
    }
}

trait Len {
    fn to_string_len(&self) -> usize;
}
impl Len for Envelope {
    fn to_string_len(&self) -> usize {
        serde_json::to_vec(self).map_or(0, |v| v.len())
    }
}

#[test]
fn fuzz_parse_and_normalize_never_panic() {
    let limits = Limits::default();
    let mut runner = TestRunner::new(PtConfig {
        cases: 5000,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let tried = std::cell::Cell::new(0u64);
    runner
        .run(&soup(), |raw| {
            tried.set(tried.get() + 1);
            check(&raw, &limits);
            Ok(())
        })
        .expect("envelope fuzz");
    eprintln!("fuzz envelope parse_bytes+normalize: {} cases", tried.get());
}

#[test]
fn fuzz_cloudevent_binary_never_panics() {
    let limits = Limits::default();
    let headers = proptest::collection::vec(
        (
            proptest::sample::select(vec![
                "ce-specversion",
                "ce-type",
                "ce-id",
                "ce-source",
                "ce-time",
                "ce-biz",
                "content-type",
                "x-other",
            ]),
            proptest::sample::select(vec![
                "1.0",
                "0.3",
                "generic",
                "",
                "a b",
                "2026-11-28T01:00:00Z",
            ]),
        ),
        0..8,
    );
    let ct = proptest::option::of(proptest::sample::select(vec![
        "text/plain",
        "application/json",
        "application/cloudevents+json",
        "x",
    ]));
    let mut runner = TestRunner::new(PtConfig {
        cases: 3000,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let tried = std::cell::Cell::new(0u64);
    runner
        .run(&(headers, ct, soup()), |(hs, ct, body)| {
            tried.set(tried.get() + 1);
            let it = hs.iter().map(|(k, v)| (*k, *v));
            if let Ok(v) = cloudevent_from_binary(it, ct, &body, &limits) {
                let d = Defaults::fresh(None, "fuzz");
                if let Ok(e) = normalize_with(v, &d, &limits, StringDetail::Decode) {
                    // Text data stays the text; validate keeps it (no second decode).
                    if ct == Some("text/plain") {
                        assert_eq!(
                            e.detail,
                            serde_json::Value::String(String::from_utf8(body).unwrap())
                        );
                    }
                }
            }
            Ok(())
        })
        .expect("cloudevent fuzz");
    eprintln!(
        "fuzz envelope cloudevent_from_binary: {} cases",
        tried.get()
    );
}

/// The issue's inputs, kept as regression cases.
#[test]
fn corpus_of_the_issue() {
    let limits = Limits::default();
    let detail_120 = deep(120, 2);
    let r = parse_bytes(detail_120.as_bytes(), &limits)
        .map_err(|r| vec![r])
        .and_then(|v| {
            normalize_with(
                v,
                &Defaults::fresh(None, "t"),
                &limits,
                StringDetail::Decode,
            )
        })
        .unwrap_err();
    assert_eq!(r[0].pointer, format!("/detail{}", "/0".repeat(63)));
    for raw in [
        deep(100_000, 0),
        deep(100_000, 3),
        deep(5_000, 1),
        r#"{"event_type":"generic","event_type":"other"}"#.to_owned(),
        "[{},{},{}]".to_owned(),
    ] {
        check(raw.as_bytes(), &limits);
    }
    check(b"{\"a\":\"\xff\"}", &limits);
}
