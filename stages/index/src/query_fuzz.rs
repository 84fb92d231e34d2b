//! Fuzzing of the query language (issue 12, finding 1): arbitrary and grammar-shaped query
//! strings through the parser, the tantivy translation (run against a small in-memory index)
//! and the OpenSearch translation — no panic, no stack overflow, trees and outputs bounded by the
//! limits. The issue's inputs and whatever the fuzzers found are kept as regression cases
//! ([`REGRESSIONS`]). Each target prints how many cases it tried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tantivy::collector::Count;
use tantivy::{Index, IndexReader};
use time::macros::datetime;
use time::OffsetDateTime;

use crate::backend::Search;
use crate::embedded::schema::Fields;
use crate::embedded::translate::Translator;
use crate::query::{clauses, depth, parse_with, Limits, Query, HARD_MAX_DEPTH};

const NOW: OffsetDateTime = datetime!(2026-11-28 12:00:00 UTC);

/// Inputs that once hurt (the issue's) or that the fuzzers found, checked on every run.
const REGRESSIONS: &[&str] = &[
    "kind:event AND (x",
    "a )",
    "\\",
    "\"\\",
    "detail.x:[1 TO",
    "detail.x:{* TO *}",
    "detail.x:>*",
    "time:2026-11-2é",
    "time:[now-1h TO",
    "_exists_:",
    "_exists_:detail.",
    "detail..x:1",
    "- - -",
    "!",
    "NOT",
    "+",
    "(",
    ")",
    "a:(b:(c))",
    "kind:(a OR (b AND -c))",
    "detail.host:web\\*",
    "\"\u{1b}[31m\u{7}\"",
    "ü:ü",
    "text:[a TO b]",
    "detail:[a TO b]",
    "time:?",
    // Times at the ends of the calendar (once panics on overflow).
    "time:9999-12-31",
    "time:[now-100000000y TO now]",
    "seen:>9999-12-31T23:59:59-23:59",
    "time:<0000-01-01T00:00:00+23:59",
    // Found by fuzz_grammar: a time past 2262 overflowed tantivy's nanosecond date.
    "time:[2300-01-01 TO *]",
    "seen:9999-12-31",
    // Found by fuzz_arbitrary_strings: a NOT over a phrase (`a&&a` is the phrase "a a") made
    // tantivy's phrase scorer assert in a debug build (embedded/phrase.rs).
    "\"\"ANDAND ||!a&&a",
    "kind:event AND NOT \"disk full\"",
    "NOT \"web 12\" AND detail.host:web-12",
];

/// A small index with a few documents, so that translated queries also run.
struct Tiny {
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

static TINY: LazyLock<Tiny> = LazyLock::new(|| {
    let index = Index::create_in_ram(Fields::schema());
    index.tokenizers().register(
        crate::embedded::tokenizer::NAME,
        crate::embedded::tokenizer::analyzer(),
    );
    let fields = Fields::new(index.schema()).expect("fields");
    let mut w: tantivy::IndexWriter = index.writer(15_000_000).expect("writer");
    let events = [
        serde_json::json!({"id": "e1", "event_type": "vm.disk_usage", "source": "prom", "time": "2026-11-28T01:00:00Z",
            "detail": {"host": "web-12", "usage_pct": 93, "msg": "disk full \u{1b}[31m"}, "labels": {"env": "prod"}}),
        serde_json::json!({"id": "e2", "event_type": "generic", "source": "script", "time": "2026-11-28T02:00:00Z",
            "detail": {"message": "kernel oops ünïcødé", "code": {"x": 1}, "list": [1, "a", {"n": 2.5}]}}),
    ];
    for (i, ev) in events.iter().enumerate() {
        let d = crate::doc::Doc::from_delivery(&whale_kernel::Delivery::new(
            format!("whale.events.{}", ev["event_type"].as_str().unwrap_or("x")),
            bytes::Bytes::from(serde_json::to_vec(ev).expect("json")),
            &[("Nats-Msg-Id", &format!("e{i}"))],
            1,
            i as u64 + 1,
            NOW,
        ));
        w.add_document(fields.to_tantivy(&d)).expect("add");
    }
    w.commit().expect("commit");
    let reader = index.reader().expect("reader");
    Tiny {
        index,
        reader,
        fields,
    }
});

/// What happened to one input.
#[derive(Debug, PartialEq)]
enum Seen {
    Refused(String),
    Searched,
}

/// Parses `s` within `limits` and, if accepted, translates it for both backends and runs the
/// tantivy query; asserts every bound the limits promise.
fn check(s: &str, limits: &Limits) -> Seen {
    let limits = limits.capped();
    let q = match parse_with(s, NOW, &limits) {
        Ok(q) => q,
        Err(e) => {
            let shown = e.explain(s);
            // An error never echoes more than a window of the query.
            assert!(
                shown.chars().count() <= e.msg.chars().count() + 400,
                "explain too long for {s:?}"
            );
            return Seen::Refused(e.msg);
        }
    };
    assert!(
        depth(&q) <= 2 * limits.max_depth + 3,
        "{s:?}: tree {} deep",
        depth(&q)
    );
    assert!(clauses(&q) <= limits.max_clauses, "{s:?}: too many clauses");
    // As the backends get it (time and kind filters folded in).
    let mut search = Search::new(q);
    search.kinds = vec!["event".into(), "rejected".into()];
    search.from = Some(NOW - time::Duration::days(1));
    let eq = search.effective_query();
    match crate::opensearch::translate::query(&eq) {
        Ok(v) => {
            let n = v.to_string().len();
            assert!(n <= 100 * s.len() + 2048, "{s:?}: {n} bytes of query DSL");
        }
        Err(crate::Error::Invalid(_)) => {}
        Err(e) => panic!("{s:?}: OpenSearch translation failed oddly: {e}"),
    }
    let t = &*TINY;
    let tr = Translator {
        fields: &t.fields,
        index: &t.index,
    };
    match tr.query(&eq) {
        Ok(tq) => {
            let _ = t.reader.searcher().search(&*tq, &Count);
        }
        Err(crate::Error::Invalid(_)) => {}
        Err(e) => panic!("{s:?}: tantivy translation failed oddly: {e}"),
    }
    Seen::Searched
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn run<S: Strategy>(name: &str, cases: u32, strategy: S, f: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let tried = AtomicUsize::new(0);
    let result = runner(cases).run(&strategy, |v| {
        tried.fetch_add(1, Ordering::Relaxed);
        f(v);
        Ok(())
    });
    eprintln!(
        "fuzz query/{name}: {} cases tried",
        tried.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("fuzz query/{name}: {e}");
    }
}

/// Limits as configured: mostly the defaults, sometimes anything within the hard maxima.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (1usize..20_000, 1usize..=HARD_MAX_DEPTH, 1usize..=1024, 0usize..=64, 1usize..=8).prop_map(
            |(b, d, c, w, wc)| Limits {
                max_bytes: b,
                max_depth: d,
                max_clauses: c,
                max_wildcards: w,
                max_wildcard_chars: wc,
            }
        ),
    ]
}

/// One clause as people write them, plus near misses.
fn leaf() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("kind"),
        Just("event_type"),
        Just("id"),
        Just("detail.host"),
        Just("detail.usage_pct"),
        Just("detail.a.b"),
        Just("detail"),
        Just("labels.env"),
        Just("labels"),
        Just("time"),
        Just("seen"),
        Just("text"),
        Just("_exists_"),
        Just("bogus"),
        Just("detail."),
    ];
    let value = prop_oneof![
        "[a-z0-9._-]{1,8}",
        "-?[0-9]{1,4}(\\.[0-9]{1,2})?",
        "[a-z]{0,3}[*?][a-z*?]{0,4}",
        "\"([^\"\\\\]|\\\\.){0,12}\"",
        "\\PC{1,6}",
        Just("*".to_string()),
        Just("2026-11-28".to_string()),
        Just("now-1h".to_string()),
        "(now-)?[0-9]{1,16}[smhdwy]",
        "[0-9]{4}-[01][0-9]-[0-3][0-9](T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](Z|[+-][0-2][0-9]:[0-5][0-9]))?",
        "[<>]=?-?[0-9]{1,3}",
        ("[\\[{]", "(\\*|-?[0-9]{1,3}|[a-z]{1,3}|now-[0-9]h)", "(\\*|[0-9]{1,3}|[a-z]{1,3}|now)", "[\\]}]")
            .prop_map(|(o, a, b, c)| format!("{o}{a} TO {b}{c}")),
    ];
    prop_oneof![
        "[a-zA-Z0-9]{1,8}",
        "\\PC{1,8}",
        "\"([^\"\\\\]|\\\\.){0,16}\"",
        "[a-z]{0,3}\\*[a-z?]{0,3}",
        (field, value).prop_map(|(f, v)| format!("{f}:{v}")),
    ]
}

/// Grammar-shaped queries: groups, boolean operators, prefixes, field groups.
fn expr() -> impl Strategy<Value = String> {
    leaf().prop_recursive(8, 96, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|v| v.join(" ")),
            (
                prop::collection::vec(inner.clone(), 2..4),
                prop_oneof![Just(" AND "), Just(" OR "), Just(" && "), Just(" || ")]
            )
                .prop_map(|(v, op)| v.join(op)),
            inner.clone().prop_map(|s| format!("({s})")),
            (
                inner.clone(),
                prop_oneof![Just("NOT "), Just("!"), Just("-"), Just("+")]
            )
                .prop_map(|(s, p)| format!("{p}{s}")),
            (
                inner,
                prop_oneof![Just("kind"), Just("detail.x"), Just("text")]
            )
                .prop_map(|(s, f)| format!("{f}:({s})")),
        ]
    })
}

/// Deep nesting and long prefix chains around a query, at and past the depth limit.
fn deep() -> impl Strategy<Value = String> {
    (
        expr(),
        0usize..300,
        prop_oneof![
            Just(("(", ")")),
            Just(("NOT ", "")),
            Just(("!", "")),
            Just(("-", "")),
            Just(("+", "")),
            Just(("(NOT ", ")")),
            Just(("kind:(", ")")),
            Just(("(a OR ", ")")),
        ],
    )
        .prop_map(|(inner, n, (open, close))| {
            format!("{}{inner}{}", open.repeat(n), close.repeat(n))
        })
}

/// Many terms: at and past the clause limit.
fn wide() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            "[a-z]{1,3}|detail\\.n:[0-9]{1,2}|\"[a-z]{1,3} [a-z]{1,3}\"",
            150..600,
        ),
        prop_oneof![Just(" "), Just(" OR "), Just(" AND ")],
    )
        .prop_map(|(v, op)| v.join(op))
}

#[test]
fn issue_inputs_are_refused_with_the_limit_named() {
    let generous = Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    let cases = [
        "(".repeat(400),
        format!("{}a{}", "(".repeat(400), ")".repeat(400)),
        format!("{}a", "!".repeat(5000)),
        format!("{}a", "NOT ".repeat(5000)),
        format!("{}a", "-".repeat(5000)),
        format!("{}a", "+".repeat(5000)),
        format!("{}a{}", "kind:(".repeat(400), ")".repeat(400)),
        format!("{}a{}", "(NOT ".repeat(2000), ")".repeat(2000)),
    ];
    for s in &cases {
        // Within the byte limit of this test, the depth limit refuses them.
        match check(s, &generous) {
            Seen::Refused(m) => assert!(m.contains("index.query_max_depth"), "{m}"),
            other => panic!("{:?}...: {other:?}", &s[..20]),
        }
        // With the defaults, the length limit comes first.
        match check(s, &Limits::default()) {
            Seen::Refused(m) => assert!(
                m.contains("index.query_max_bytes") || m.contains("index.query_max_depth"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        // Even a configuration asking for more is held to the hard maximum.
        let wild = Limits {
            max_bytes: usize::MAX,
            max_depth: usize::MAX,
            max_clauses: usize::MAX,
            max_wildcards: usize::MAX,
            max_wildcard_chars: usize::MAX,
        };
        assert!(matches!(check(s, &wild), Seen::Refused(_)));
    }
    let long = "a ".repeat(3000);
    match check(&long, &Limits::default()) {
        Seen::Refused(m) => assert!(m.contains("6000 bytes") && m.contains("4096"), "{m}"),
        other => panic!("{other:?}"),
    }
    let wide = vec!["x"; 300].join(" OR ");
    match check(&wide, &Limits::default()) {
        Seen::Refused(m) => assert!(
            m.contains("300 clauses") && m.contains("index.query_max_clauses"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    // Just within the limits is fine.
    let ok = format!("{}a{}", "(".repeat(32), ")".repeat(32));
    assert_eq!(check(&ok, &Limits::default()), Seen::Searched);
    assert_eq!(
        check(&format!("{}a", "!".repeat(32)), &Limits::default()),
        Seen::Searched
    );
    assert!(matches!(
        check(&format!("{}a", "!".repeat(33)), &Limits::default()),
        Seen::Refused(_)
    ));
    assert_eq!(
        check(&vec!["x"; 256].join(" OR "), &Limits::default()),
        Seen::Searched
    );
    // Double negation keeps its meaning.
    assert_eq!(
        parse_with("NOT NOT a", NOW, &Limits::default()).unwrap(),
        Query::Not(Box::new(Query::Not(Box::new(
            parse_with("a", NOW, &Limits::default()).unwrap()
        ))))
    );
    for s in REGRESSIONS {
        check(s, &Limits::default());
    }
}

/// The deepest queries any configuration allows go through every pass on a quarter of the stack
/// a tokio or blocking thread has (2 MiB).
#[test]
fn hard_maximum_depth_fits_a_small_stack() {
    let d = HARD_MAX_DEPTH;
    let max = Limits {
        max_bytes: 1 << 20,
        max_depth: d,
        max_clauses: 1024,
        ..Limits::default()
    };
    let shapes = [
        format!("{}a{}", "(".repeat(d), ")".repeat(d)),
        format!("{}a", "NOT ".repeat(d)),
        format!("{}a{}", "(a OR ".repeat(d), ")".repeat(d)),
        format!("{}a{}", "(a ".repeat(d), ")".repeat(d)),
        format!("{}a{}", "(NOT b OR ".repeat(d / 2), ")".repeat(d / 2)),
        format!("{}a{}", "kind:(a OR ".repeat(d), ")".repeat(d)),
    ];
    for s in shapes {
        let h = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || check(&s, &max))
            .expect("thread");
        assert_eq!(h.join().expect("no overflow"), Seen::Searched);
    }
}

#[test]
fn fuzz_arbitrary_strings() {
    run(
        "arbitrary",
        2000,
        (
            prop_oneof![
                any::<String>(),
                "[()\"\\\\\\[\\]{}:*?!+<>= a-cA-C0-9.-]{0,120}",
                "(AND|OR|NOT|TO|&&|\\|\\||[()!+-]| |a|:|\"|\\*){0,80}",
            ],
            limits(),
        ),
        |(s, l)| {
            check(&s, &l);
        },
    );
}

#[test]
fn fuzz_grammar() {
    run("grammar", 1500, (expr(), limits()), |(s, l)| {
        check(&s, &l);
    });
}

#[test]
fn fuzz_deep_nesting() {
    run("deep", 500, (deep(), limits()), |(s, l)| {
        check(&s, &l);
    });
}

#[test]
fn fuzz_many_terms() {
    run("wide", 300, (wide(), limits()), |(s, l)| {
        check(&s, &l);
    });
}
