//! Indexing throughput and search latency of both backends (plain timing, `harness = false`):
//!
//! ```text
//! cargo bench -p whale-index --features testkit --bench index
//! WHALE_BENCH_EMBEDDED=1000000 WHALE_BENCH_OPENSEARCH=200000 WHALE_BENCH_BATCH=512 (defaults)
//! WHALE_BENCH_CJK=1   each event's message is also a Chinese sentence (~20 CJK characters)
//! ```
//!
//! It first times the embedded free-text tokenizers alone on the same texts: tantivy's `default`
//! (what the index used before CJK support) and `whale_text` (CJK bigrams).
//!
//! Documents are built from deliveries exactly as the stage builds them and written through the
//! `Backend` trait in batches of 512 (the worker's batch) by 4 concurrent writers (the stage's
//! two inputs, with room for `--concurrency`). Search latency is measured once everything is
//! stored, over typical queries, 30 runs each.

use std::sync::Arc;
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
    Delivery {
        subject: format!("whale.events.{}", TYPES[i % TYPES.len()]),
        payload: Bytes::from(serde_json::to_vec(&ev).unwrap()),
        headers: vec![("Nats-Msg-Id".into(), id)],
        attempt: 1,
        stream_seq: i as u64 + 1,
        published: base + Duration::from_millis(i as u64 * 10),
    }
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

async fn index(backend: Arc<dyn Backend>, n: usize) -> f64 {
    #[allow(non_snake_case)]
    let BATCH = env_n("WHALE_BENCH_BATCH", 512);
    let base = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let mut elapsed = Duration::ZERO;
    let step = 100_000;
    let mut start_i = 0;
    while start_i < n {
        let end = (start_i + step).min(n);
        let deliveries: Vec<Delivery> = (start_i..end).map(|i| delivery(i, base)).collect();
        let batches: Vec<Vec<Delivery>> =
            deliveries.chunks(BATCH).map(<[Delivery]>::to_vec).collect();
        let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            let (queue, backend) = (queue.clone(), backend.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some(batch) = next else { break };
                    let docs: Vec<Doc> = batch.iter().map(Doc::from_delivery).collect();
                    let r = backend.write(docs).await.expect("write");
                    assert!(r.retry.is_empty() && r.dropped.is_empty(), "{r:?}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        elapsed += t.elapsed();
        start_i = end;
        eprintln!("  {}: {end} stored", backend.name());
    }
    backend.refresh().await.unwrap();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{:<10} indexing: {n} events in {:.1} s = {:.0} events/s (batches of {BATCH}, {WRITERS} writers)",
        backend.name(),
        elapsed.as_secs_f64(),
        rate
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
    let n_emb = env_n("WHALE_BENCH_EMBEDDED", 1_000_000);
    let n_os = env_n("WHALE_BENCH_OPENSEARCH", 200_000);
    println!(
        "whale-index benchmark (2-core machine; client and server share the cores); CJK text: {}",
        if cjk() { "yes" } else { "no" }
    );
    tokenizers();
    if n_emb > 0 {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> = Arc::new(Embedded::open(dir.path()).unwrap());
        rt.block_on(async {
            index(b.clone(), n_emb).await;
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
        let b: Arc<dyn Backend> = Arc::new(OpenSearch::new(&node.url()).unwrap());
        rt.block_on(async {
            index(b.clone(), n_os).await;
            search_latency(&*b, n_os).await;
        });
    }
}
