//! Indexing throughput and search latency of both backends (plain timing, `harness = false`):
//!
//! ```text
//! cargo bench -p whale-index --features testkit --bench index
//! WHALE_BENCH_EMBEDDED=300000 WHALE_BENCH_OPENSEARCH=200000 WHALE_BENCH_BATCH=512 (defaults)
//! WHALE_BENCH_CJK=1   each event's message is also a Chinese sentence (~20 CJK characters)
//! WHALE_BENCH_BEFORE=100000   events indexed as before (delete by id, commit per group) first
//! WHALE_BENCH_MAIN=100000     events indexed as main did before sequence marks (commit on time
//!                             or size, every document replaces by id), same driver as "after"
//! ```
//!
//! It first times the embedded free-text tokenizers alone on the same texts: tantivy's `default`
//! (what the index used before CJK support) and `whale_text` (CJK bigrams).
//!
//! Documents are built from deliveries exactly as the stage builds them and handed to the backend
//! as the stage does (`Backend::submit`, first deliveries) in batches of 512 (the worker's batch)
//! by 4 concurrent writers, each keeping at most 5,000 documents awaiting their commit (the
//! stage's consumers deliver at most 20,000 unacked messages). Search latency is measured once
//! everything is stored, over typical queries, 30 runs each.
//!
//! Same-run references (the machine is shared: judge by the ratio):
//! - embedded: tantivy alone on the same events (each payload as one default-tokenized text field
//!   plus stored, one writer thread, one commit at the end): what the library does here, now;
//! - OpenSearch: raw `_bulk` of the same bodies the backend sends (serialized beforehand, same
//!   batches and concurrency) into another prefix with the same templates on the same node.
//!
//! Each figure is given per wall second and per CPU second of this process (the embedded index
//! runs in it; OpenSearch does not, so its CPU figure is the client's).

use std::sync::Arc;

/// The `whale` binary's allocator (src/main.rs), so the figures are what the stage does there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use time::OffsetDateTime;
use whale_index::embedded::Embedded;
use whale_index::opensearch::OpenSearch;
use whale_index::testkit::OpenSearchNode;
use whale_index::{Backend, Doc, Search};
use whale_kernel::Delivery;

const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const BIZ: [&str; 2] = ["trade", "ops"];
const WRITERS: usize = 4;
const TYPES: [&str; 8] = [
    "vm.disk_usage",
    "dmesg.error",
    "net.link_down",
    "app.latency",
    "alertmanager.alert",
    "generic",
    "db.slow_query",
    "k8s.pod_crash",
];

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn delivery(i: usize, base: OffsetDateTime) -> Delivery {
    let ev = json!({
        "id": format!("b-{i:08}"),
        "event_type": TYPES[i % TYPES.len()],
        "source": "bench",
        "time": whale_index::time::format_ms(base + Duration::from_millis(i as u64 * 10)),
        "detail": {
            "host": format!("web-{}", i % 500),
            "usage_pct": i % 101,
            "env": ENVS[i % 3],
            "msg": message(i),
            "code": if i.is_multiple_of(2) { json!(i % 7) } else { json!({"x": i % 5}) },
        },
        "labels": {"biz": BIZ[i % 2]}
    });
    let id = format!("b-{i:08}");
    Delivery::new(
        format!("whale.events.{}", TYPES[i % TYPES.len()]),
        Bytes::from(serde_json::to_vec(&ev).unwrap()),
        &[("Nats-Msg-Id", &id)],
        1,
        i as u64 + 1,
        base + Duration::from_millis(i as u64 * 10),
    )
}

fn cjk() -> bool {
    env_n("WHALE_BENCH_CJK", 0) > 0
}

fn message(i: usize) -> String {
    let mut m = format!(
        "disk usage {} percent on web-{} mount /var{}",
        i % 101,
        i % 500,
        if i.is_multiple_of(997) {
            " kernel oops"
        } else {
            ""
        }
    );
    if cjk() {
        m.push_str(&format!(
            " 磁盘使用率{}超过阈值，服务器web-{}挂载点空间不足",
            i % 101,
            i % 500
        ));
    }
    m
}

/// Tokens per second of tantivy's `default` and of `whale_text` over the same 100,000 texts.
fn tokenizers() {
    use tantivy::tokenizer::{TokenStream as _, TokenizerManager};
    let texts: Vec<String> = (0..100_000)
        .map(|i| {
            let d = delivery(i, OffsetDateTime::now_utc());
            Doc::from_delivery(&d).text()
        })
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    let analyzers = [
        (
            "default",
            TokenizerManager::default().get("default").unwrap(),
        ),
        ("whale_text", whale_index::embedded::tokenizer::analyzer()),
    ];
    for (name, mut a) in analyzers {
        let t = Instant::now();
        let mut n = 0u64;
        for text in &texts {
            let mut s = a.token_stream(text);
            while s.advance() {
                n += 1;
            }
        }
        let e = t.elapsed().as_secs_f64();
        println!(
            "tokenizer  {name:<10}: {} texts ({:.1} MB) in {:.2} s = {:.0} texts/s, {n} tokens",
            texts.len(),
            bytes as f64 / 1e6,
            e,
            texts.len() as f64 / e
        );
    }
}

/// CPU seconds this process has used (all threads), from /proc/self/stat (clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Most documents one writer keeps awaiting their commit.
const OUTSTANDING: usize = 5_000;

/// Tantivy alone on the same events: one text field, stored, one commit at the end.
fn reference_tantivy(n: usize) -> f64 {
    use tantivy::schema::{Schema, STORED, TEXT};
    let mut b = Schema::builder();
    let text = b.add_text_field("text", TEXT);
    let stored = b.add_text_field("doc", STORED);
    let dir = tempfile::tempdir().unwrap();
    let index = tantivy::Index::create_in_dir(dir.path(), b.build()).unwrap();
    let mut w: tantivy::IndexWriter = index.writer_with_num_threads(1, 128 << 20).unwrap();
    let base = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let deliveries: Vec<Delivery> = (0..n).map(|i| delivery(i, base)).collect();
    let (t, cpu) = (Instant::now(), cpu_secs());
    for d in &deliveries {
        let s = std::str::from_utf8(&d.payload).unwrap();
        let mut doc = tantivy::TantivyDocument::new();
        doc.add_text(text, s);
        doc.add_text(stored, s);
        w.add_document(doc).unwrap();
    }
    w.commit().unwrap();
    let (e, c) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
    println!(
        "reference  tantivy alone: {n} events in {e:.1} s = {:.0} events/s, {:.0} events per CPU-second",
        n as f64 / e,
        n as f64 / c.max(0.01)
    );
    n as f64 / e
}

/// Raw `_bulk` of the bodies `os` would send, into its own prefix: the node's own speed now.
async fn reference_bulk(url: &str, n: usize, label: &str) -> f64 {
    #[allow(non_snake_case)]
    let BATCH = env_n("WHALE_BENCH_BATCH", 512);
    let os = OpenSearch::with_prefix(url, "rawref").unwrap();
    os.ensure_templates().await.unwrap();
    let base = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let bodies: Vec<Vec<u8>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| {
            let docs: Vec<Doc> = c
                .iter()
                .map(|&i| Doc::from_delivery(&delivery(i, base)))
                .collect();
            os.bulk_body(&docs)
        })
        .collect();
    let http = reqwest::Client::new();
    let queue = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let (t, cpu) = (Instant::now(), cpu_secs());
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (queue, http, url) = (queue.clone(), http.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().next();
                let Some(body) = next else { break };
                let r = http
                    .post(format!("{url}/_bulk"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .expect("bulk");
                assert!(r.status().is_success(), "{}", r.status());
                let v: serde_json::Value = r.json().await.expect("bulk answer");
                assert_eq!(v["errors"], false, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (e, c) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
    // Give the node its disk and merges back before the backend's run.
    let _ = http.delete(format!("{url}/rawref-*")).send().await;
    println!(
        "reference  raw _bulk ({label}): {n} events in {e:.1} s = {:.0} events/s (batches of {BATCH}, {WRITERS} writers, bodies made beforehand; client {:.2} CPU-s)",
        n as f64 / e,
        c
    );
    n as f64 / e
}

/// The embedded index used as before this design, in the same run: every batch looked up by id
/// (delete, then add) and committed at once with whatever other batches wait (group commit).
async fn index_as_before(backend: Arc<dyn Backend>, n: usize) -> f64 {
    let base = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let deliveries: Vec<Delivery> = (0..n).map(|i| delivery(i, base)).collect();
    let batches: Vec<Vec<Delivery>> = deliveries.chunks(512).map(<[Delivery]>::to_vec).collect();
    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let (t, cpu) = (Instant::now(), cpu_secs());
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (queue, backend) = (queue.clone(), backend.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().next();
                let Some(batch) = next else { break };
                let docs: Vec<Doc> = batch.iter().map(Doc::from_delivery).collect();
                // No delivery information: every document replaces by id.
                let (_, committed) = backend.submit(docs, Vec::new()).await.expect("write");
                backend.refresh().await.expect("commit");
                committed.await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (e, c) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
    println!(
        "before     embedded as before (delete by id + commit per group of batches): {n} events in {e:.1} s = {:.0} events/s, {:.0} events per CPU-second",
        n as f64 / e,
        n as f64 / c.max(0.01)
    );
    n as f64 / e
}

/// `replace_all`: hand no delivery information over, so every document is looked up by id
/// (main before the sequence marks).
async fn index(backend: Arc<dyn Backend>, n: usize, label: &str, replace_all: bool) -> f64 {
    #[allow(non_snake_case)]
    let BATCH = env_n("WHALE_BENCH_BATCH", 512);
    let base = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let mut elapsed = Duration::ZERO;
    let mut cpu_used = 0.0;
    let step = 100_000;
    let mut start_i = 0;
    while start_i < n {
        let end = (start_i + step).min(n);
        let deliveries: Vec<Delivery> = (start_i..end).map(|i| delivery(i, base)).collect();
        let batches: Vec<Vec<Delivery>> =
            deliveries.chunks(BATCH).map(<[Delivery]>::to_vec).collect();
        let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
        let (t, cpu) = (Instant::now(), cpu_secs());
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            let (queue, backend) = (queue.clone(), backend.clone());
            tasks.push(tokio::spawn(async move {
                let mut waiting = std::collections::VecDeque::new();
                let mut held = 0;
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some(batch) = next else { break };
                    let n = batch.len();
                    // As the index stage hands its messages over (the backend builds the
                    // documents), or, before the marks, documents without delivery information.
                    let submitted = match replace_all {
                        true => {
                            let docs = batch.iter().map(Doc::from_delivery).collect();
                            backend.submit(docs, Vec::new()).await
                        }
                        false => backend.submit_messages(&batch).await,
                    };
                    let (r, committed) = submitted.expect("write");
                    assert!(r.retry.is_empty() && r.dropped.is_empty(), "{r:?}");
                    waiting.push_back((n, committed));
                    held += n;
                    while held > OUTSTANDING {
                        let (n, c) = waiting.pop_front().unwrap();
                        c.await.expect("commit");
                        held -= n;
                    }
                }
                for (_, c) in waiting {
                    c.await.expect("commit");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        elapsed += t.elapsed();
        cpu_used += cpu_secs() - cpu;
        start_i = end;
        eprintln!("  {label}: {end} stored");
    }
    backend.refresh().await.unwrap();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<10} indexing{}: {n} events in {:.1} s = {:.0} events/s, {:.0} events per CPU-second of this process (batches of {BATCH}, {WRITERS} writers)",
        if replace_all {
            " (main today: every document replaced by id)"
        } else {
            ""
        },
        elapsed.as_secs_f64(),
        rate,
        n as f64 / cpu_used.max(0.01)
    );
    rate
}

async fn search_latency(backend: &dyn Backend, stored: usize) {
    let queries = [
        "event_type:vm.disk_usage",
        "event_type:vm.disk_usage AND detail.host:web-12",
        "detail.usage_pct:[90 TO 100]",
        "detail.code.x:3 AND labels.biz:ops",
        "oops",
        "\"usage 93 percent\"",
        "detail.host:web-1*",
        "磁盘",
        "\"空间不足\"",
    ];
    println!(
        "{:<10} search at {stored} stored events (limit 20, newest first; 30 runs):",
        backend.name()
    );
    for q in queries {
        let mut s = Search::new(whale_index::query::parse(q).unwrap());
        s.kinds = vec![];
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..30 {
            let t = Instant::now();
            total = backend.search(&s).await.unwrap().total;
            times.push(t.elapsed());
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "    {q:<50} {total:>8} hits  p50 {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms",
            ms(times[15]),
            ms(times[27]),
            ms(times[29])
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let n_emb = env_n("WHALE_BENCH_EMBEDDED", 300_000);
    let n_os = env_n("WHALE_BENCH_OPENSEARCH", 200_000);
    println!(
        "whale-index benchmark (2-core machine; client and server share the cores); CJK text: {}",
        if cjk() { "yes" } else { "no" }
    );
    tokenizers();
    if n_emb > 0 {
        let reference = reference_tantivy(n_emb);
        let n_before = env_n("WHALE_BENCH_BEFORE", 100_000);
        if n_before > 0 {
            let dir = tempfile::tempdir().unwrap();
            let b: Arc<dyn Backend> = Arc::new(Embedded::open(dir.path()).unwrap());
            let rate = rt.block_on(index_as_before(b, n_before));
            println!(
                "before     = {:.2} x tantivy alone in the same run",
                rate / reference
            );
        }
        let n_main = env_n("WHALE_BENCH_MAIN", 100_000);
        if n_main > 0 {
            let dir = tempfile::tempdir().unwrap();
            let b: Arc<dyn Backend> = Arc::new(Embedded::open(dir.path()).unwrap());
            let rate = rt.block_on(index(b, n_main, "embedded", true));
            println!(
                "main today = {:.2} x tantivy alone in the same run",
                rate / reference
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(Embedded::open(dir.path()).unwrap());
        rt.block_on(async {
            let rate = index(b.clone(), n_emb, "embedded", false).await;
            println!(
                "embedded   = {:.2} x tantivy alone in the same run",
                rate / reference
            );
            search_latency(&*b, n_emb).await;
        });
        let size: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!(
            "embedded   index size on disk: {:.0} MiB",
            size as f64 / 1048576.0
        );
    }
    if n_os > 0 {
        let node = OpenSearchNode::start();
        let url = node.url();
        let b: Arc<dyn Backend> = Arc::new(OpenSearch::new(&url).unwrap());
        rt.block_on(async {
            // The JVM compiles its hot paths in the first minute: warm it up before the figures.
            reference_bulk(&url, (n_os / 4).max(10_000), "warm-up, not a figure").await;
            let before = reference_bulk(&url, n_os, "first").await;
            let rate = index(b.clone(), n_os, "opensearch", false).await;
            let after = reference_bulk(&url, n_os, "last").await;
            let reference = (before + after) / 2.0;
            println!(
                "opensearch = {:.2} x raw _bulk of the same node in the same run (mean of first and last), {:.2} x the last",
                rate / reference,
                rate / after
            );
            search_latency(&*b, n_os).await;
        });
    }
}
