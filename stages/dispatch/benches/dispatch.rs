//! Executions created per second by the dispatch stage against the StackStorm emulator, with
//! one and with two workers, beside the emulator's raw rate for a plain HTTP load (a tight
//! reqwest loop POSTing executions with the same concurrency) measured in the same run. Every
//! measurement gets a fresh emulator, so none pays for another's stored executions. Prints a
//! table; asserts nothing.
//!
//! Run: `cargo build --release -p st2-emulator && cargo bench -p whale-dispatch --bench dispatch`
//! (`BENCH_TASKS` tasks per run, default 5000; nats-server must be on PATH).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use whale_kernel::config::ClusterConfig;
use whale_kernel::records::{self, Task};
use whale_kernel::subjects::{self, Pipe};
use whale_kernel::testkit::NatsServer;
use whale_kernel::{worker, Config, Health, Nats, Output, Stage, Window};

/// HTTP requests in flight in the raw load, as `dispatch.concurrency` in the stage.
const CONCURRENCY: usize = 64;

struct Emulator {
    child: Child,
    url: String,
}

impl Emulator {
    fn start() -> Emulator {
        use std::io::BufRead;
        // target/<profile>/deps/dispatch-<hash> → target/<profile>/st2-emulator
        let exe = std::env::current_exe().expect("bench path");
        let bin: PathBuf = exe
            .parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .join("st2-emulator");
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build --release -p st2-emulator` first",
            bin.display()
        );
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--any-action"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn st2-emulator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("address")
            .to_owned();
        Emulator {
            child,
            url: format!("http://{addr}"),
        }
    }

    async fn created(&self, http: &reqwest::Client) -> u64 {
        let v: Value = http
            .get(format!("{}/_emulator/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["executions_created"].as_u64().unwrap_or(0)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference: `n` POSTs of executions with `CONCURRENCY` in flight, nothing else.
async fn raw_load(n: usize) -> f64 {
    let emu = Emulator::start();
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/executions", emu.url);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let body = json!({"action": "ops.bench", "parameters": {"i": i},
                    "context": {"trace_context": {"trace_tag": format!("raw-{i}")}}});
                let r = http
                    .post(url)
                    .header("St2-Api-Key", "k")
                    .json(&body)
                    .send()
                    .await;
                assert_eq!(r.expect("emulator answers").status(), 201);
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// `n` admitted tasks dispatched by `workers` worker loops (each its own NATS connection and
/// stage, as separate processes would be): executions created per second.
async fn dispatch(nats_url: &str, n: usize, workers: usize, run: usize) -> f64 {
    let emu = Emulator::start();
    let mut cfg = Config::default();
    cfg.nats.urls = vec![nats_url.to_owned()];
    cfg.clusters.insert(
        "default".into(),
        ClusterConfig {
            url: emu.url.clone(),
            api_key: Some(whale_kernel::Secret::new("k")),
            ..Default::default()
        },
    );
    cfg.dispatch.concurrency = CONCURRENCY;
    let nats = Nats::connect(&cfg.nats, "bench").await.unwrap();
    let mut w: Window<()> = Window::on(&nats, 1024);
    for i in 0..n {
        let event_id = format!("bench-{run}-{i}");
        let t = Task {
            task_id: records::task_id(&event_id, "bench"),
            event_id,
            event_type: "bench".into(),
            rule: "bench".into(),
            rule_version: "v1".into(),
            action: "ops.bench".into(),
            parameters: json!({"i": i}),
            throttle: None,
            cluster: "default".into(),
            approval: None,
            notify: Vec::new(),
            result_event: false,
            replay: None,
            created: time::macros::datetime!(2026-01-01 00:00 UTC),
            item: None,
            labels: Default::default(),
        };
        let out = Output::json(
            Pipe::Admitted.subject_with("default"),
            format!("adm:{}", t.task_id),
            &t,
        );
        for (_, r) in w.send((), out).await {
            r.expect("publish");
        }
    }
    for (_, r) in w.drain().await {
        r.expect("publish");
    }
    let http = reqwest::Client::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let input = subjects::stage_inputs("dispatch").remove(0);
    let started = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..workers {
        let nats = Nats::connect(&cfg.nats, "bench worker").await.unwrap();
        let stage: Arc<dyn Stage> =
            Arc::new(whale_dispatch::Dispatch::start(&nats, &cfg).await.unwrap());
        loops.push(tokio::spawn(worker::run(
            nats,
            stage,
            input.clone(),
            worker::Options::default(),
            Health::default(),
            stop_rx.clone(),
        )));
    }
    while emu.created(&http).await < n as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    rate
}

fn main() {
    let n: usize = std::env::var("BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::start();
    rt.block_on(async {
        let mut cfg = Config::default();
        cfg.nats.urls = vec![server.url()];
        let nats = Nats::connect(&cfg.nats, "bench setup").await.unwrap();
        whale_kernel::setup::setup(&nats, &cfg).await.expect("setup");
        println!("dispatch benchmark: {n} executions per run, {CONCURRENCY} requests in flight per worker, 2 cores shared");
        println!("{:<52} {:>14}", "run", "executions/s");
        let raw = raw_load(n).await;
        println!("{:<52} {:>14.0}", "emulator raw (reqwest loop POSTing, no NATS)", raw);
        let one = dispatch(&server.url(), n, 1, 1).await;
        println!("{:<52} {:>14.0}   ({:.2} x raw)", "dispatch, 1 worker", one, one / raw);
        let two = dispatch(&server.url(), n, 2, 2).await;
        println!("{:<52} {:>14.0}   ({:.2} x raw, {:.2} x 1 worker)", "dispatch, 2 workers", two, two / raw, two / one);
        let raw2 = raw_load(n).await;
        println!("{:<52} {:>14.0}", "emulator raw again (drift check)", raw2);
    });
}
