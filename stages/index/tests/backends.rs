//! The same tests on both backends — the embedded tantivy index and a real OpenSearch 2.19 node
//! (deploy/opensearch) — through the one `Backend` trait, with documents built from deliveries
//! exactly as the index stage builds them. Each OpenSearch test has its own index prefix on one
//! shared node.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{json, Value};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use whale_index::opensearch::OpenSearch;
use whale_index::testkit::OpenSearchNode;
use whale_index::{embedded::Embedded, Backend, Doc, Order, Search};
use whale_kernel::Delivery;

const BASE: OffsetDateTime = datetime!(2026-11-20 00:00:00 UTC);

/// Keeps what a backend needs alive for the test.
#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    None,
}

fn embedded() -> (Arc<dyn Backend>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let b = Embedded::open(dir.path()).unwrap();
    (Arc::new(b), Guard::Dir(dir))
}

fn node() -> &'static OpenSearchNode {
    static NODE: OnceLock<OpenSearchNode> = OnceLock::new();
    NODE.get_or_init(OpenSearchNode::start)
}

fn opensearch(test: &str) -> (Arc<dyn Backend>, Guard) {
    let b = OpenSearch::with_prefix(&node().url(), &format!("t-{test}")).unwrap();
    (Arc::new(b), Guard::None)
}

/// A delivery on `subject` as the worker would hand it to the stage.
fn delivery(
    subject: &str,
    msg_id: &str,
    seq: u64,
    seen: OffsetDateTime,
    payload: &Value,
) -> Delivery {
    Delivery::new(
        subject,
        Bytes::from(serde_json::to_vec(payload).unwrap()),
        &[("Nats-Msg-Id", msg_id)],
        1,
        seq,
        seen,
    )
}

fn event_doc(ev: &Value, seq: u64, seen: OffsetDateTime) -> Doc {
    let id = ev["id"].as_str().unwrap();
    let subject = format!("whale.events.{}", ev["event_type"].as_str().unwrap());
    Doc::from_delivery(&delivery(&subject, id, seq, seen, ev))
}

async fn search(b: &dyn Backend, q: &str, limit: usize) -> (u64, BTreeSet<String>) {
    let mut s =
        Search::new(whale_index::query::parse(q).unwrap_or_else(|e| panic!("{}", e.explain(q))));
    s.limit = limit;
    let hits = b
        .search(&s)
        .await
        .unwrap_or_else(|e| panic!("{} backend, query {q:?}: {e}", b.name()));
    (
        hits.total,
        hits.hits.into_iter().filter_map(|d| d.event_id).collect(),
    )
}

async fn ids(b: &dyn Backend, q: &str) -> BTreeSet<String> {
    let (total, ids) = search(b, q, 10_000).await;
    assert_eq!(
        total as usize,
        ids.len(),
        "{} backend, query {q:?}: total and hits differ",
        b.name()
    );
    ids
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// 100,000 events; searches by type, detail field, range, text and time return exactly the
// expected sets; a redelivered batch overwrites instead of doubling.

const TYPES: [&str; 4] = [
    "vm.disk_usage",
    "dmesg.error",
    "net.link_down",
    "app.latency",
];

fn bulk_event(i: u64) -> Value {
    let mut msg = format!("disk usage on web-{} at {}", i % 50, i % 101);
    if i % 1000 == 7 {
        msg.push_str(" kernel oops panic");
    }
    json!({
        "id": format!("ev-{i:06}"),
        "event_type": TYPES[(i % 4) as usize],
        "source": "bench",
        "time": whale_index::time::format_ms(BASE + Duration::seconds(i as i64)),
        "detail": {"host": format!("web-{}", i % 50), "usage_pct": i % 101, "seq": i, "msg": msg},
        "labels": {"biz": if i.is_multiple_of(3) { "trade" } else { "ops" }}
    })
}

/// The query's total is the expected count, and (when it fits one page) exactly the expected ids.
async fn check(b: &dyn Backend, q: &str, want: BTreeSet<String>) {
    let (total, got) = search(b, q, 10_000).await;
    assert_eq!(
        total as usize,
        want.len(),
        "{} backend, {q:?}: total",
        b.name()
    );
    if want.len() <= 10_000 {
        assert_eq!(got, want, "{} backend, {q:?}: hits", b.name());
    }
}

async fn hundred_thousand_events(b: &dyn Backend) {
    const N: u64 = 100_000;
    let events: Vec<Value> = (0..N).map(bulk_event).collect();
    for chunk in events.chunks(5_000) {
        let docs = chunk
            .iter()
            .map(|e| {
                let i = e["detail"]["seq"].as_u64().unwrap();
                event_doc(e, i + 1, BASE + Duration::seconds(i as i64))
            })
            .collect();
        let r = b.write(docs).await.unwrap();
        assert!(
            r.retry.is_empty() && r.dropped.is_empty() && r.degraded.is_empty(),
            "{r:?}"
        );
    }
    // A redelivered batch: same ids, overwritten.
    let again = events[..2_000]
        .iter()
        .enumerate()
        .map(|(i, e)| event_doc(e, i as u64 + 1, BASE + Duration::seconds(i as i64)))
        .collect();
    b.write(again).await.unwrap();
    b.refresh().await.unwrap();

    let expect = |f: &dyn Fn(u64) -> bool| -> BTreeSet<String> {
        (0..N)
            .filter(|i| f(*i))
            .map(|i| format!("ev-{i:06}"))
            .collect()
    };
    check(b, "*", expect(&|_| true)).await;
    check(b, "event_type:vm.disk_usage", expect(&|i| i % 4 == 0)).await;
    check(
        b,
        "event_type:vm.disk_usage AND detail.host:web-12",
        expect(&|i| i % 4 == 0 && i % 50 == 12),
    )
    .await;
    check(
        b,
        "detail.usage_pct:[90 TO 100]",
        expect(&|i| i % 101 >= 90),
    )
    .await;
    check(
        b,
        "detail.usage_pct:{90 TO 100} AND labels.biz:trade",
        expect(&|i| (91..100).contains(&(i % 101)) && i % 3 == 0),
    )
    .await;
    check(
        b,
        "detail.usage_pct:>=100 OR detail.seq:<3",
        expect(&|i| i % 101 == 100 || i < 3),
    )
    .await;
    check(b, "oops", expect(&|i| i % 1000 == 7)).await;
    check(
        b,
        "\"kernel oops\" AND -event_type:net.link_down",
        expect(&|i| i % 1000 == 7 && i % 4 != 2),
    )
    .await;
    check(
        b,
        "detail.host:web-4*",
        expect(&|i| i % 50 == 4 || (40..50).contains(&(i % 50))),
    )
    .await;
    check(
        b,
        "time:[2026-11-20T01:00:00Z TO 2026-11-20T02:00:00Z}",
        expect(&|i| (3600..7200).contains(&i)),
    )
    .await;

    // --from/--to are inclusive on `time`.
    let mut s = Search::new(whale_index::query::parse("detail.host:web-1").unwrap());
    s.from = Some(BASE + Duration::seconds(50_000));
    s.to = Some(BASE + Duration::seconds(60_000));
    s.limit = 10_000;
    let hits = b.search(&s).await.unwrap();
    let want = expect(&|i| (50_000..=60_000).contains(&i) && i % 50 == 1);
    assert_eq!(hits.total as usize, want.len());
    let got: BTreeSet<String> = hits
        .hits
        .iter()
        .filter_map(|d| d.event_id.clone())
        .collect();
    assert_eq!(got, want);
    // Newest first, ties by id.
    assert!(hits.hits.windows(2).all(|w| w[0].time >= w[1].time));
}

// ---------------------------------------------------------------------------------------------
// `detail.code` a number in one event and an object in another: both index, both searchable.

async fn code_number_and_object(b: &dyn Backend) {
    let evs = [
        json!({"id": "num", "event_type": "app.error", "source": "t", "time": "2026-11-28T00:00:00Z", "detail": {"code": 5}}),
        json!({"id": "obj", "event_type": "app.error", "source": "t", "time": "2026-11-28T00:00:01Z", "detail": {"code": {"x": 1, "y": "z"}}}),
        json!({"id": "str", "event_type": "app.error", "source": "t", "time": "2026-11-28T00:00:02Z", "detail": {"code": "5"}}),
        json!({"id": "arr", "event_type": "app.error", "source": "t", "time": "2026-11-28T00:00:03Z", "detail": {"code": [5.0, {"x": 2}]}}),
    ];
    let docs = evs
        .iter()
        .enumerate()
        .map(|(i, e)| event_doc(e, i as u64, OffsetDateTime::now_utc()))
        .collect();
    let r = b.write(docs).await.unwrap();
    assert!(
        r.retry.is_empty() && r.dropped.is_empty() && r.degraded.is_empty(),
        "{r:?}"
    );
    b.refresh().await.unwrap();
    assert_eq!(ids(b, "detail.code:5").await, set(&["num", "str", "arr"]));
    assert_eq!(ids(b, "detail.code.x:1").await, set(&["obj"]));
    assert_eq!(ids(b, "detail.code.x:[1 TO 2]").await, set(&["obj", "arr"]));
    assert_eq!(
        ids(b, "detail.code:[4 TO 6]").await,
        set(&["num", "arr"]),
        "string \"5\" is not a number"
    );
    assert_eq!(
        ids(b, "_exists_:detail.code").await,
        set(&["num", "obj", "str", "arr"])
    );
    assert_eq!(ids(b, "detail.code.y:*").await, set(&["obj"]));
    assert_eq!(ids(b, "detail:z").await, set(&["obj"]));
}

// ---------------------------------------------------------------------------------------------
// 5,000 distinct detail keys: in one event, and one new key per event.

async fn five_thousand_keys(b: &dyn Backend) {
    let mut wide = serde_json::Map::new();
    for k in 0..5_000 {
        wide.insert(format!("key_{k}"), json!(format!("v{k}")));
    }
    let mut docs = vec![event_doc(
        &json!({"id": "wide", "event_type": "app.wide", "source": "t", "time": "2026-11-28T00:00:00Z", "detail": wide}),
        0,
        OffsetDateTime::now_utc(),
    )];
    for k in 0..5_000u64 {
        let mut d = serde_json::Map::new();
        d.insert(format!("only_{k}"), json!(k));
        docs.push(event_doc(
            &json!({"id": format!("k{k}"), "event_type": "app.keys", "source": "t", "time": "2026-11-28T00:00:00Z", "detail": d}),
            k + 1,
            OffsetDateTime::now_utc(),
        ));
    }
    let r = b.write(docs).await.unwrap();
    assert!(
        r.retry.is_empty() && r.dropped.is_empty() && r.degraded.is_empty(),
        "{r:?}"
    );
    b.refresh().await.unwrap();
    assert_eq!(ids(b, "detail.key_4321:v4321").await, set(&["wide"]));
    assert_eq!(ids(b, "detail.only_4999:4999").await, set(&["k4999"]));
    assert_eq!(ids(b, "detail.only_17:[10 TO 20]").await, set(&["k17"]));
    assert_eq!(search(b, "event_type:app.keys", 1).await.0, 5_000);
}

// ---------------------------------------------------------------------------------------------
// The same small corpus, every kind of clause: both backends must agree exactly.

async fn query_semantics(b: &dyn Backend) {
    let now = OffsetDateTime::now_utc();
    let evs = [
        json!({"id": "a", "event_type": "vm.disk_usage", "source": "prometheus/alertmanager", "time": "2026-11-28T01:00:00Z",
               "detail": {"host": "web-12", "usage_pct": 93, "env": "prod", "msg": "Disk almost full on /var"}, "labels": {"biz": "trade"}}),
        json!({"id": "b", "event_type": "vm.disk_usage", "source": "prometheus/alertmanager", "time": "2026-11-28T02:00:00Z",
               "detail": {"host": "web-13", "usage_pct": 9.5, "env": "staging", "msg": "disk fine"}}),
        json!({"id": "c", "event_type": "dmesg.error", "source": "kernel", "time": "2026-11-27T23:59:59.500Z",
               "detail": {"host": "db-1", "msg": ["kernel: Oops", "BUG at mm/slab.c"], "code": "1", "ok": true}}),
        json!({"id": "d", "event_type": "dmesg.error", "source": "kernel", "time": "2026-11-28T03:00:00Z",
               "detail": {"host": "Web-12", "nested": {"deep": {"er": -4}}, "dotted.key": "yes"}}),
    ];
    let mut docs: Vec<Doc> = evs
        .iter()
        .enumerate()
        .map(|(i, e)| event_doc(e, i as u64, now))
        .collect();
    let rej = json!({"id": "r", "event_type": "vm.disk_usage", "received": "2026-11-28T04:00:00Z",
                     "reasons": [{"pointer": "/detail/usage_pct", "message": "\"high\" is not of type \"integer\""}],
                     "event": {"id": "r", "event_type": "vm.disk_usage", "source": "x", "detail": {"usage_pct": "high", "host": "web-12"}}});
    docs.push(Doc::from_delivery(&delivery(
        "whale.rejected.vm.disk_usage",
        "rej:r",
        9,
        now,
        &rej,
    )));
    let task = json!({"task_id": "t-a", "event_id": "a", "event_type": "vm.disk_usage", "rule": "disk-full", "rule_version": "v1",
                      "action": "linux.clean_disk", "parameters": {"host": "web-12"}, "cluster": "east", "created": "2026-11-28T01:00:01Z"});
    docs.push(Doc::from_delivery(&delivery(
        "whale.pipe.task",
        "task:t-a",
        1,
        now,
        &task,
    )));
    b.write(docs).await.unwrap();
    b.refresh().await.unwrap();

    let cases: &[(&str, &[&str])] = &[
        ("event_type:vm.disk_usage", &["a", "b", "r"]),
        (
            "event_type:vm.disk_usage AND detail.host:web-12",
            &["a", "r"],
        ),
        ("event_type:vm.disk_usage detail.host:web-12", &["a", "r"]),
        ("detail.host:web-12 OR detail.host:db-1", &["a", "c", "r"]),
        ("detail.host:(web-13 OR db-1)", &["b", "c"]),
        ("detail.host:Web-12", &["d"]),
        ("detail.host:web-1?", &["a", "b", "r"]),
        ("detail.host:*b-1*", &["a", "b", "c", "d", "r"]),
        ("detail.host:[db TO web-12]", &["a", "c", "r"]),
        ("detail.host:{db-1 TO *]", &["a", "b", "r"]),
        ("detail.usage_pct:[9 TO 93]", &["a", "b"]),
        ("detail.usage_pct:<10", &["b"]),
        ("detail.usage_pct:93.0", &["a"]),
        ("detail.usage_pct:high", &["r"]),
        ("detail.nested.deep.er:<0", &["d"]),
        ("_exists_:detail.nested", &["d"]),
        ("detail.dotted.key:yes", &["d"]),
        ("detail.msg:\"kernel: Oops\"", &["c"]),
        ("detail.ok:true", &["c"]),
        ("detail.code:1", &["c"]),
        ("labels.biz:trade", &["a"]),
        (
            "-labels.biz:trade AND event_type:vm.disk_usage",
            &["b", "r"],
        ),
        ("NOT event_type:vm.disk_usage", &["c", "d"]),
        ("disk", &["a", "b", "r"]),
        ("DISK full", &["a"]),
        ("\"almost full\"", &["a"]),
        ("\"full almost\"", &[]),
        // a NOT over a phrase (tantivy's own phrase scorer asserted there: embedded/phrase.rs)
        ("disk AND NOT \"almost full\"", &["b", "r"]),
        ("oop*", &["c"]),
        ("web-12", &["a", "d", "r"]),
        ("mm/slab.c", &["c"]),
        ("alertmanager", &["a", "b"]),
        ("source:prometheus/alertmanager", &["a", "b"]),
        ("source:prometheus", &[]),
        ("id:event\\:a", &["a"]),
        (
            "time:[2026-11-28T00:00:00Z TO 2026-11-28T02:00:00Z]",
            &["a", "b"],
        ),
        ("time:{2026-11-28T01:00:00Z TO *]", &["b", "d", "r"]),
        ("time:2026-11-27", &["c"]),
        ("time:<2026-11-28", &["c"]),
        ("not of type", &["r"]),
        ("kind:rejected", &["r"]),
    ];
    let mut failures = Vec::new();
    for (q, want) in cases {
        let mut s = Search::new(whale_index::query::parse(q).unwrap());
        s.kinds = vec!["event".into(), "rejected".into()];
        s.limit = 100;
        let got: BTreeSet<String> = b
            .search(&s)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .hits
            .into_iter()
            .filter_map(|d| d.event_id)
            .collect();
        if got != set(want) {
            failures.push(format!("{q:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} backend:\n{}",
        b.name(),
        failures.join("\n")
    );

    // Pipeline records are searchable too, by their own fields.
    let mut s = Search::new(
        whale_index::query::parse("kind:task AND detail.parameters.host:web-12 AND rule:disk-full")
            .unwrap(),
    );
    s.limit = 10;
    let hits = b.search(&s).await.unwrap();
    assert_eq!(hits.total, 1);
    assert_eq!(hits.hits[0].task_id.as_deref(), Some("t-a"));
    assert_eq!(hits.hits[0].cluster.as_deref(), Some("east"));
}

// ---------------------------------------------------------------------------------------------
// A document the backend refuses is stored without detail (OpenSearch: a value over Lucene's
// 32 KiB term limit); the embedded index stores it whole. Either way it is never lost.

async fn oversized_value(b: &dyn Backend) {
    let big = "x".repeat(40_000);
    let docs = vec![
        event_doc(
            &json!({"id": "big", "event_type": "app.big", "source": "t", "time": "2026-11-28T00:00:00Z", "detail": {"blob": big, "host": "h1"}}),
            1,
            OffsetDateTime::now_utc(),
        ),
        event_doc(
            &json!({"id": "small", "event_type": "app.big", "source": "t", "time": "2026-11-28T00:00:00Z", "detail": {"host": "h1"}}),
            2,
            OffsetDateTime::now_utc(),
        ),
    ];
    let r = b.write(docs).await.unwrap();
    assert!(r.retry.is_empty() && r.dropped.is_empty(), "{r:?}");
    b.refresh().await.unwrap();
    assert_eq!(ids(b, "event_type:app.big").await, set(&["big", "small"]));
    let mut s = Search::new(whale_index::query::parse("event_id:big").unwrap());
    s.limit = 1;
    let doc = b.search(&s).await.unwrap().hits.remove(0);
    assert_eq!(
        doc.record["detail"]["blob"].as_str().map(str::len),
        Some(40_000),
        "the record is kept whole"
    );
    match b.name() {
        "opensearch" => {
            assert_eq!(r.degraded.len(), 1, "{r:?}");
            assert!(
                doc.index_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("immense term"),
                "{doc:?}"
            );
            assert_eq!(ids(b, "detail.host:h1").await, set(&["small"]));
            assert_eq!(ids(b, "_exists_:index_error").await, set(&["big"]));
        }
        _ => {
            assert!(r.degraded.is_empty());
            assert_eq!(ids(b, "detail.host:h1").await, set(&["big", "small"]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Retention: what was seen before the cutoff goes, the rest stays.

async fn retention(b: &dyn Backend) {
    let now = OffsetDateTime::now_utc();
    let ev = |id: &str| json!({"id": id, "event_type": "app.ret", "source": "t", "time": "2026-11-28T00:00:00Z", "detail": {}});
    let docs = vec![
        event_doc(&ev("old"), 1, now - Duration::days(10)),
        event_doc(&ev("edge"), 2, now - Duration::days(3)),
        event_doc(&ev("new"), 3, now),
    ];
    b.write(docs).await.unwrap();
    b.refresh().await.unwrap();
    assert_eq!(
        ids(b, "event_type:app.ret").await,
        set(&["old", "edge", "new"])
    );
    let removed = b.expire(now - Duration::days(7)).await.unwrap();
    assert!(removed >= 1, "{removed}");
    b.refresh().await.unwrap();
    assert_eq!(ids(b, "event_type:app.ret").await, set(&["edge", "new"]));
}

// ---------------------------------------------------------------------------------------------
// Trace ordering from stored documents.

async fn trace_story(b: &dyn Backend) {
    let t0 = OffsetDateTime::now_utc() - Duration::minutes(5);
    let ev = json!({"id": "e-tr", "event_type": "vm.disk_usage", "source": "prom", "time": "2026-11-28T01:00:00Z", "detail": {"host": "web-1"}});
    let matched = json!({"event_id": "e-tr", "rule": "disk", "rule_version": "v1", "event": ev});
    let task = json!({"task_id": "t-tr", "event_id": "e-tr", "event_type": "vm.disk_usage", "rule": "disk", "rule_version": "v1",
                      "action": "linux.clean", "parameters": {"host": "web-1"}, "cluster": "east", "created": "x",
                      "throttle": {"key": "web-1", "limit": 1, "per_ms": 60000, "burst": 0}});
    let thr = json!({"task": task, "retry_after_ms": 1500, "reason": "over 1 per 60s"});
    let other = json!({"id": "e-other", "event_type": "vm.disk_usage", "source": "prom", "time": "2026-11-28T01:00:00Z", "detail": {}});
    let docs = vec![
        Doc::from_delivery(&delivery(
            "whale.pipe.throttled",
            "thr:t-tr",
            4,
            t0 + Duration::milliseconds(30),
            &thr,
        )),
        Doc::from_delivery(&delivery(
            "whale.pipe.task",
            "task:t-tr",
            3,
            t0 + Duration::milliseconds(20),
            &task,
        )),
        Doc::from_delivery(&delivery(
            "whale.pipe.matched",
            "m:e-tr:disk",
            2,
            t0 + Duration::milliseconds(10),
            &matched,
        )),
        event_doc(&ev, 1, t0),
        event_doc(&other, 5, t0),
    ];
    b.write(docs).await.unwrap();
    b.refresh().await.unwrap();
    let t = whale_index::trace::trace(b, "e-tr").await.unwrap();
    assert_eq!(t.outcome, "accepted");
    let kinds: Vec<&str> = t.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["event", "matched", "task", "throttled"]);
    assert!(
        t.steps[2]
            .details
            .iter()
            .any(|d| d.contains("throttle key web-1")),
        "{:?}",
        t.steps[2]
    );
    assert!(
        t.steps[3].summary.contains("over 1 per 60s"),
        "{}",
        t.steps[3].summary
    );
    let unknown = whale_index::trace::trace(b, "nope").await.unwrap();
    assert_eq!(unknown.outcome, "unknown");
    // Oldest-seen order is available to any search.
    let mut s = Search::new(whale_index::query::parse("event_id:e-tr").unwrap());
    s.kinds = vec![];
    s.order = Order::SeenFirst;
    assert_eq!(b.search(&s).await.unwrap().hits[0].kind, "event");
}

/// Issue 12, finding 1: the largest queries the default limits allow run on both backends (so the
/// limits sit under OpenSearch's own, `indices.query.bool.max_clause_count` = 1024), and a query
/// built past them in code is refused as `Invalid` (a 400), never sent to fail as a 500.
async fn query_limits(b: &dyn Backend) {
    use whale_index::query::{parse_with, Field, Limits, Pred, Query, MAX_TREE_DEPTH};
    let docs: Vec<Doc> = (0..20)
        .map(|i| {
            event_doc(
                &json!({"id": format!("ql-{i}"), "event_type": "generic", "source": "s", "time": "2026-11-20T01:00:00Z",
                        "detail": {"host": format!("web-{i}"), "n": i, "message": "web web web"}}),
                i + 1,
                BASE,
            )
        })
        .collect();
    b.write(docs).await.unwrap();
    b.refresh().await.unwrap();
    let or = |c: &str, k: usize| vec![c; k].join(" OR ");
    let biggest = [
        (or("source:s", 254), 20),
        (or("detail.n:3", 127), 1),
        (or("detail.n:*", 8), 20),
        (
            format!(
                "{} OR {}",
                or("detail:*eb*", 4),
                or("detail.host:w?b-1*", 4)
            ),
            20,
        ),
        (
            format!(
                "{} OR {}",
                or("detail.host:a*a?a?a??*", 8),
                or("source:s", 200)
            ),
            20,
        ),
        (format!("\"{}\"", ["web"; 3].join(" ")), 20),
        (format!("\"{}\"", vec!["web"; 254].join(" ")), 0),
        (
            format!("{}detail.n:3{}", "(NOT x OR ".repeat(31), ")".repeat(31)),
            20,
        ),
        (
            format!("{}detail.n:3{}", "(x OR ".repeat(32), ")".repeat(32)),
            1,
        ),
    ];
    for (q, want) in &biggest {
        let parsed = parse_with(q, OffsetDateTime::now_utc(), &Limits::default())
            .unwrap_or_else(|e| panic!("{}", e.explain(q)));
        let mut s = Search::new(parsed);
        s.kinds = vec!["event".into(), "rejected".into()];
        let hits = b
            .search(&s)
            .await
            .unwrap_or_else(|e| panic!("{}: {q}: {e}", b.name()));
        assert_eq!(hits.total, *want, "{}: {q}", b.name());
    }
    // Counted as OpenSearch counts: 1000 clauses (500 numbers on a detail key, two each) pass.
    let terms = |k: usize, v: &str| {
        Query::Or(
            (0..k)
                .map(|_| {
                    Query::Clause(
                        Field::Flat {
                            root: "detail",
                            path: "n".into(),
                        },
                        Pred::Term(v.into()),
                    )
                })
                .collect(),
        )
    };
    let mut s = Search::new(terms(500, "3"));
    s.kinds = vec![];
    assert_eq!(b.search(&s).await.unwrap().total, 1, "{}", b.name());
    // Past 1024: refused by whale on OpenSearch (tantivy has no such limit).
    let mut s = Search::new(terms(520, "3"));
    s.kinds = vec![];
    match (b.name(), b.search(&s).await) {
        ("opensearch", Err(whale_index::Error::Invalid(m))) => {
            assert!(m.contains("max_clause_count"), "{m}")
        }
        ("embedded", Ok(h)) => assert_eq!(h.total, 1),
        (name, other) => panic!("{name}: {other:?}"),
    }
    // A tree deeper than any parsed query: refused by both before any recursion.
    let mut deep = Query::Clause(Field::Keyword("kind"), Pred::Term("event".into()));
    for _ in 0..=MAX_TREE_DEPTH {
        deep = Query::Not(Box::new(deep));
    }
    match b.search(&Search::new(deep)).await {
        Err(whale_index::Error::Invalid(m)) => assert!(m.contains("levels deep"), "{m}"),
        other => panic!("{}: {other:?}", b.name()),
    }
}

// ---------------------------------------------------------------------------------------------
// Words inside Chinese, Japanese and Korean sentences (no spaces between words): found by the word,
// not by a word absent from the sentence; a longer word is a phrase of its bigrams.

async fn cjk_words(b: &dyn Backend) {
    let now = OffsetDateTime::now_utc();
    let msgs = [
        ("zh", "磁盘空间不足，服务器即将停止服务"),
        ("ja", "ディスク容量が不足しています"),
        ("ko", "디스크 공간이 부족합니다"),
        ("mixed", "nginx 服务器 CPU使用率超过95%"),
        ("en", "Disk almost full on web-12"),
    ];
    let docs: Vec<Doc> = msgs
        .iter()
        .enumerate()
        .map(|(i, (id, msg))| {
            event_doc(
                &json!({"id": id, "event_type": "app.log", "source": "t", "time": "2026-11-28T01:00:00Z",
                        "detail": {"host": "db-1", "message": msg}}),
                i as u64,
                now,
            )
        })
        .collect();
    b.write(docs).await.unwrap();
    b.refresh().await.unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("磁盘", &["zh"]),
        ("服务器", &["zh", "mixed"]),
        ("停止服务", &["zh"]),
        ("\"空间不足\"", &["zh"]),
        ("磁盘 服务器", &["zh"]),
        ("网络", &[]),
        ("空间磁盘", &[]),
        ("服务器 AND 网络", &[]),
        ("磁", &[]),
        ("容量", &["ja"]),
        ("ディスク", &["ja"]),
        ("不足", &["zh", "ja"]),
        ("ネットワーク", &[]),
        ("공간", &["ko"]),
        ("부족", &["ko"]),
        ("디스크", &["ko"]),
        ("네트워크", &[]),
        ("nginx 服务器", &["mixed"]),
        ("使用率", &["mixed"]),
        ("cpu", &["mixed"]),
        ("nginx 磁盘", &[]),
        ("disk", &["en"]),
        ("\"almost full\"", &["en"]),
        ("detail.message:磁盘", &[]),
        ("detail.message:*磁盘*", &["zh"]),
    ];
    let mut failures = Vec::new();
    for (q, want) in cases {
        let got = ids(b, q).await;
        eprintln!("{} backend: {q} -> {got:?}", b.name());
        if got != set(want) {
            failures.push(format!("{q:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} backend:\n{}",
        b.name(),
        failures.join("\n")
    );
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (b, _guard) = super::embedded();
                    super::$name(&*b).await;
                }
            )*
        }
        mod opensearch_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (b, _guard) = tokio::task::spawn_blocking(|| super::opensearch(stringify!($name))).await.unwrap();
                    super::$name(&*b).await;
                }
            )*
        }
    };
}

both!(
    hundred_thousand_events,
    code_number_and_object,
    five_thousand_keys,
    query_semantics,
    oversized_value,
    retention,
    trace_story,
    query_limits,
    cjk_words,
);

/// flat_object keeps the mapping small however many keys events carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_mapping_stays_small_and_detail_is_flat_object() {
    let (b, _g) = tokio::task::spawn_blocking(|| opensearch("mapping"))
        .await
        .unwrap();
    five_thousand_keys(&*b).await;
    let (code, body) = tokio::task::spawn_blocking(|| node().get("/t-mapping-*/_mapping"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let (_, idx) = v.as_object().unwrap().iter().next().unwrap();
    let props = idx["mappings"]["properties"].as_object().unwrap();
    assert_eq!(props["detail"]["type"], "flat_object");
    assert_eq!(idx["mappings"]["dynamic"], "strict");
    assert!(props.len() < 30, "{} mapped fields", props.len());
}
