//! `whale-bench validate`: the validate stage's throughput printed beside raw JetStream rates
//! measured on the same server in the same run. By default a private nats-server is started in a
//! temp dir, so a bench never writes into a real pipeline; `--nats-url` points it at a scratch
//! server instead.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use whale_kernel::testkit::NatsServer;
use whale_kernel::{kv, setup, subjects, worker, Config, Health, Stage as _, Window};

use crate::raw::{Rates, Raw, Reference, Sample};

#[derive(clap::Args)]
pub struct Args {
    /// Events to push through.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Validate worker loops in this process.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Use this (scratch!) server instead of starting a private one.
    #[arg(long)]
    nats_url: Option<String>,
    #[arg(long)]
    json: bool,
}

fn sample(i: usize) -> serde_json::Value {
    json!({
        "id": format!("bench-{i:09}"),
        "event_type": "bench.disk",
        "source": "bench",
        "time": "2026-11-28T01:00:00Z",
        "detail": {"host": format!("web-{}", i % 100), "usage_pct": 50 + (i % 50), "env": "prod",
                   "mounts": [{"path": "/data", "free_gb": i % 7}], "msg": ["disk almost full", "cleanup needed"]},
        "labels": {"biz": "trade"}
    })
}

pub async fn run(mut cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let server = match &a.nats_url {
        Some(_) => None,
        None => Some(NatsServer::start()),
    };
    cfg.nats.urls = vec![a
        .nats_url
        .clone()
        .unwrap_or_else(|| server.as_ref().unwrap().url())];
    let nats = crate::connect(&cfg, "validate").await?;
    let raw = Raw::connect(&cfg.nats.urls[0]).await?;
    let n = a.events;
    // The events as published to whale.in (what validate reads below) and as its records.
    let events = Sample::of((0..n).map(sample))?;
    let avg = events.avg_ingest_bytes();

    let before = raw.rates(&nats, &events).await?;

    setup::setup(&nats, &cfg).await?;
    let schema = json!({"event_type": "bench.disk", "version": 1, "digest": "bench", "schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "required": ["host", "usage_pct"],
        "properties": {"host": {"type": "string"}, "usage_pct": {"type": "number", "minimum": 0, "maximum": 100},
                       "env": {"enum": ["prod", "staging", "dev"]}}}});
    kv::put(
        &nats,
        subjects::KV_SCHEMAS,
        "bench.disk",
        serde_json::to_vec(&schema)?,
    )
    .await?;
    let mut w: Window<()> = Window::on(&nats, 1024);
    for out in &events.ingest {
        w.send((), out.clone()).await;
    }
    w.drain().await;

    let stage = Arc::new(whale_validate::Validate {
        registry: whale_validate::Registry::load_and_watch(&nats).await?,
        limits: cfg.events.limits(),
        allow_unknown_types: false,
        hooks: Default::default(),
    });
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let mut loops = Vec::new();
    for input in subjects::stage_inputs("validate") {
        for _ in 0..a.workers.max(1) {
            loops.push(tokio::spawn(worker::run(
                nats.clone(),
                stage.clone(),
                input.clone(),
                stage.options(),
                Health::default(),
                rx.clone(),
            )));
        }
    }
    loop {
        if raw
            .subject_count(subjects::STREAM_EVENTS, "whale.events.>")
            .await? as usize
            >= n
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let validate = n as f64 / secs;
    // The reference again with validate stopped (the machine's load can change within a run):
    // the bound is the mean of both.
    let after = raw.rates(&nats, &events).await?;
    // One validated event costs one consume+ack of an ingest message from the work queue and
    // one publish of its record: that is the bound.
    let bound_of = |r: Rates| 1.0 / (1.0 / r.publish_record + 1.0 / r.consume_ack_queue);
    let reference = Reference::of(before, after, bound_of);
    let (raw_pub, raw_consume, bound) = (
        reference.rates.publish_record,
        reference.rates.consume_ack_queue,
        reference.bound,
    );
    let result = json!({
        "events": n, "avg_event_bytes": avg, "workers": a.workers,
        "raw_publish_record_per_s": raw_pub.round(), "raw_consume_ack_queue_per_s": raw_consume.round(),
        "reference_before": reference.before, "reference_after": reference.after,
        "jetstream_bound_per_s": bound.round(), "validate_events_per_s": validate.round(),
        "efficiency": (validate / bound * 100.0).round() / 100.0,
        "nats_server": raw.server_version(),
    });
    if a.json {
        crate::print_json(&result)?;
    } else {
        println!(
            "validate bench: {n} events of ~{avg} B, {} worker loop(s), nats-server {}",
            a.workers, result["nats_server"]
        );
        println!(
            "  raw JetStream publish of records     {:>10.0} msg/s  (before {:.0}, after {:.0})",
            raw_pub, before.publish_record, after.publish_record
        );
        println!(
            "  raw JetStream consume+ack, work queue {:>9.0} msg/s  (before {:.0}, after {:.0})",
            raw_consume, before.consume_ack_queue, after.consume_ack_queue
        );
        println!(
            "  bound for consume+ack+publish        {:>10.0} msg/s  (before {:.0}, after {:.0}; the mean is the bound)",
            bound,
            bound_of(before),
            bound_of(after)
        );
        println!(
            "  validate whale.in → whale.events     {:>10.0} events/s  ({:.2} × bound)",
            validate,
            validate / bound
        );
    }
    drop(server);
    Ok(ExitCode::SUCCESS)
}
