//! `whale bench ...`: throughput figures printed beside raw JetStream rates measured on the same
//! server in the same run. By default a private nats-server is started in a temp dir, so a bench
//! never writes into a real pipeline; `--nats-url` points it at a scratch server instead.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use whale_kernel::testkit::NatsServer;
use whale_kernel::{setup, subjects, worker, Config, Health, Nats, Output, Stage as _, Window};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// validate stage: whale.in → whale.events events/s vs raw JetStream publish and consume+ack.
    Validate(Args),
    /// The whole pipeline (all stages, NATS, Redis, StackStorm emulator) end to end: events/s,
    /// ingest→StackStorm latency, CPU/memory per process, beside raw JetStream rates.
    Pipeline(super::bench_pipeline::Args),
    /// The operator console: page weight of a first view and each page's response time with
    /// 100k events in the embedded index, beside the JSON route for the same data.
    Console(super::bench_console::Args),
}

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

pub async fn run(mut cfg: Config, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let a = match cmd {
        Cmd::Validate(a) => a,
        Cmd::Pipeline(a) => return super::bench_pipeline::run(cfg, a).await,
        Cmd::Console(a) => return super::bench_console::run(cfg, a).await,
    };
    let server = match &a.nats_url {
        Some(_) => None,
        None => Some(NatsServer::start()),
    };
    cfg.nats.urls = vec![a
        .nats_url
        .clone()
        .unwrap_or_else(|| server.as_ref().unwrap().url())];
    let nats = super::connect(&cfg, "bench").await?;
    let n = a.events;
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&sample(i)).unwrap())
        .collect();
    let avg = payloads.iter().map(Vec::len).sum::<usize>() / n.max(1);

    let (raw_pub, raw_consume) = raw_jetstream(&nats, &payloads).await?;

    setup::setup(&nats, &cfg).await?;
    let kv = nats.js.get_key_value(subjects::KV_SCHEMAS).await?;
    let schema = json!({"event_type": "bench.disk", "version": 1, "digest": "bench", "schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "required": ["host", "usage_pct"],
        "properties": {"host": {"type": "string"}, "usage_pct": {"type": "number", "minimum": 0, "maximum": 100},
                       "env": {"enum": ["prod", "staging", "dev"]}}}});
    kv.put("bench.disk", serde_json::to_vec(&schema)?.into())
        .await?;
    let mut w: Window<()> = Window::new(nats.js.clone(), 1024);
    for (i, p) in payloads.iter().enumerate() {
        let out = Output::new(
            subjects::ingest("bench.disk"),
            format!("bench-{i:09}"),
            p.clone(),
        );
        w.send((), out).await;
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
    let mut events = nats.js.get_stream(subjects::STREAM_EVENTS).await?;
    loop {
        if events.info().await?.state.messages as usize >= n {
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
    // One validated event costs one consume+ack and one publish: that is the bound.
    let bound = 1.0 / (1.0 / raw_pub + 1.0 / raw_consume);
    let result = json!({
        "events": n, "avg_event_bytes": avg, "workers": a.workers,
        "raw_publish_per_s": raw_pub.round(), "raw_consume_ack_per_s": raw_consume.round(),
        "jetstream_bound_per_s": bound.round(), "validate_events_per_s": validate.round(),
        "efficiency": (validate / bound * 100.0).round() / 100.0,
        "nats_server": nats.client.server_info().version,
    });
    if a.json {
        super::print_json(&result)?;
    } else {
        println!(
            "validate bench: {n} events of ~{avg} B, {} worker loop(s), nats-server {}",
            a.workers, result["nats_server"]
        );
        println!(
            "  raw JetStream publish (window 1024)  {:>10.0} msg/s",
            raw_pub
        );
        println!(
            "  raw JetStream consume+ack            {:>10.0} msg/s",
            raw_consume
        );
        println!(
            "  bound for consume+ack+publish        {:>10.0} msg/s",
            bound
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

/// Raw publish (window 1024, with msg ids like whale) and pull consume+ack rates.
pub(crate) async fn raw_jetstream(nats: &Nats, payloads: &[Vec<u8>]) -> anyhow::Result<(f64, f64)> {
    let js = &nats.js;
    let _ = js.delete_stream("BENCH_RAW").await;
    let st = js
        .create_stream(stream::Config {
            name: "BENCH_RAW".into(),
            subjects: vec!["bench.raw".into()],
            ..Default::default()
        })
        .await?;
    let t = Instant::now();
    let mut w: Window<()> = Window::new(js.clone(), 1024);
    for (i, p) in payloads.iter().enumerate() {
        w.send(
            (),
            Output::new("bench.raw".into(), format!("raw-{i}"), p.clone()),
        )
        .await;
    }
    w.drain().await;
    let publish = payloads.len() as f64 / t.elapsed().as_secs_f64();
    let c: jetstream::consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let t = Instant::now();
    let mut msgs = c.stream().max_messages_per_batch(512).messages().await?;
    let mut got = 0;
    while got < payloads.len() {
        match msgs.next().await {
            Some(Ok(m)) => {
                m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                got += 1;
            }
            Some(Err(e)) => tracing::debug!("bench consume: {e}"),
            None => break,
        }
    }
    let consume = got as f64 / t.elapsed().as_secs_f64();
    let _ = js.delete_stream("BENCH_RAW").await;
    Ok((publish, consume))
}
