//! `whale-bench rules-load`: how long a large rule set takes to load — check (read + compile,
//! what `whale rules check` does), apply (chunks + manifest into KV) and switch (until every
//! watching worker has read and compiled it) — for each size and file layout, on a nats-server
//! with its default settings (1 MiB `max_payload`), beside a same-run reference: raw KV puts of
//! the same bytes. Then the memory (RSS) of a real `whale run --stages match` holding the set.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use whale_kernel::kv::{Bucket, Ttl};
use whale_kernel::testkit::{free_port, NatsServer};
use whale_kernel::{setup, subjects, Config};
use whale_rules::RuleSet;

use whale_rulestore as rules_store;

#[derive(clap::Args)]
pub struct Args {
    /// Rule-set sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    rules: Vec<usize>,
    /// Watching workers (live views in this process) that must all switch.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Measure the RSS of a `whale run --stages match` holding this many rules (0: skip).
    #[arg(long, default_value_t = 10_000)]
    rss_rules: usize,
    /// Use this (scratch!) server instead of starting a private one with default settings.
    #[arg(long)]
    nats_url: Option<String>,
    #[arg(long)]
    json: bool,
}

/// One generated rule (~230 bytes): a host's disk rule, on one of 100 event types.
fn rule(i: usize) -> String {
    format!(
        "- name: host-{i}\n  on: svc{}.disk\n  when:\n    - {{ path: .detail.host, eq: host-{i} }}\n    - {{ path: .detail.usage_pct, gt: {} }}\n  action: ops.clean_disk\n  params:\n    host: \"{{{{ .detail.host }}}}\"\n    note: \"{{{{ .detail.usage_pct }}}}% on {{{{ .detail.host }}}}\"\n",
        i % 100,
        80 + i % 15
    )
}

/// Writes `n` rules into `dir`: one file, or files of `per_file` rules.
fn write_set(dir: &Path, n: usize, per_file: usize) -> anyhow::Result<()> {
    for f in 0..n.div_ceil(per_file) {
        let text: String = (f * per_file..((f + 1) * per_file).min(n))
            .map(rule)
            .collect();
        std::fs::write(dir.join(format!("gen-{f:05}.yaml")), text)?;
    }
    Ok(())
}

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `/readyz` on `port` answers 200 within `timeout` (the stage has loaded its rules).
async fn wait_ready(port: u16, timeout: Duration) -> bool {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub async fn run(mut cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let server = match &a.nats_url {
        Some(_) => None,
        None => Some(NatsServer::start_with_default_max_payload()),
    };
    let url = a
        .nats_url
        .clone()
        .unwrap_or_else(|| server.as_ref().map(NatsServer::url).unwrap_or_default());
    cfg.nats.urls = vec![url.clone()];
    let nats = crate::connect(&cfg, "bench").await?;
    setup::setup(&nats, &cfg).await?;
    let bucket = Bucket::open(&nats, subjects::KV_RULES).await?;
    let mut workers = Vec::new();
    for _ in 0..a.workers.max(1) {
        workers.push(rules_store::watch(&nats).await?);
    }
    let mut rows = Vec::new();
    println!(
        "rule-set load on nats-server (max_payload {} bytes), {} watching workers",
        bucket.max_payload(),
        workers.len()
    );
    println!(
        "{:>7} {:>12} {:>9} {:>10} {:>10} {:>10} {:>10} | {:>14}",
        "rules", "layout", "MB", "check ms", "apply ms", "switch ms", "total ms", "raw KV put ms"
    );
    for &n in &a.rules {
        for (layout, per_file) in [("one file", n.max(1)), ("10 per file", 10)] {
            let dir = tempfile::tempdir()?;
            write_set(dir.path(), n, per_file)?;
            let t = Instant::now();
            let set = RuleSet::load_dir(dir.path())?;
            let check = t.elapsed();
            // the bytes the store writes: each file's text and its parsed rules
            let content = rules_store::content(&set)?;
            let t = Instant::now();
            rules_store::apply(&nats, &set, rules_store::Provenance::default(), "apply").await?;
            let apply = t.elapsed();
            let t = Instant::now();
            let deadline = t + Duration::from_secs(600);
            while !workers
                .iter()
                .all(|w| w.current().is_some_and(|s| s.version() == set.version()))
            {
                anyhow::ensure!(Instant::now() < deadline, "workers did not switch in 600 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let switch = t.elapsed();
            // The reference: the same bytes as raw KV puts of the store's chunk size, one after
            // the other (the server takes no single message of this size).
            let piece = rules_store::chunk_size(&bucket);
            let t = Instant::now();
            for (i, part) in content.chunks(piece).enumerate() {
                bucket
                    .put(
                        &format!("bench.raw.{i}"),
                        bytes::Bytes::copy_from_slice(part),
                        Ttl::Bucket,
                    )
                    .await?;
            }
            let raw = t.elapsed();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let total = check + apply + switch;
            println!(
                "{:>7} {:>12} {:>9.1} {:>10.0} {:>10.0} {:>10.0} {:>10.0} | {:>14.0}",
                n,
                layout,
                content.len() as f64 / 1e6,
                ms(check),
                ms(apply),
                ms(switch),
                ms(total),
                ms(raw)
            );
            rows.push(json!({"rules": n, "layout": layout, "bytes": content.len(),
                "check_ms": ms(check), "apply_ms": ms(apply), "switch_ms": ms(switch),
                "total_ms": ms(total), "raw_kv_put_ms": ms(raw)}));
        }
    }
    let mut rss = None;
    if a.rss_rules > 0 {
        let dir = tempfile::tempdir()?;
        write_set(dir.path(), a.rss_rules, 10)?;
        let set = RuleSet::load_dir(dir.path())?;
        rules_store::apply(&nats, &set, rules_store::Provenance::default(), "apply").await?;
        let port = free_port();
        let mut child = std::process::Command::new(crate::pipeline::sibling("whale")?)
            .args(["run", "--stages", "match"])
            .env("WHALE_NATS_URL", &url)
            .env("WHALE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env_remove("WHALE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ready = wait_ready(port, Duration::from_secs(300)).await;
        // let the allocator settle after the compile
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (now, peak) = (rss_kb(child.id(), "VmRSS:"), rss_kb(child.id(), "VmHWM:"));
        let _ = child.kill();
        let _ = child.wait();
        anyhow::ensure!(ready, "whale run --stages match did not become ready");
        println!(
            "whale run --stages match holding {} rules: RSS {} MB (peak {} MB)",
            a.rss_rules,
            now.map_or("?".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
            peak.map_or("?".into(), |k| format!("{:.0}", k as f64 / 1024.0)),
        );
        rss = Some(json!({"rules": a.rss_rules, "rss_kb": now, "peak_kb": peak}));
    }
    if a.json {
        crate::print_json(
            &json!({"max_payload": bucket.max_payload(), "loads": rows, "worker_rss": rss}),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
