//! whale on a 3-node NATS cluster (issue 8, docs/contract.md "Reliability targets"): `whale setup`
//! replicates every stream, consumer and bucket three times, and the whole pipeline (validate →
//! match → render → throttle → dispatch to the StackStorm emulator) keeps going when the node
//! leading a stream is killed with SIGKILL mid-run — no accepted event lost, no task executed twice
//! — and the node catches up when it comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};
use whale_kernel::config::NatsConfig;
use whale_kernel::subjects::{self, Pipe, STREAM_AUDIT, STREAM_EVENTS, STREAM_INGEST, STREAM_PIPE};
use whale_kernel::testkit::{NatsCluster, NatsServer, RedisServer};
use whale_kernel::{Nats, Output};

use crate::harness::*;

const STREAMS: [&str; 4] = [STREAM_INGEST, STREAM_EVENTS, STREAM_PIPE, STREAM_AUDIT];

/// Streams holding the KV buckets (`KV_<bucket>`).
fn kv_streams() -> Vec<String> {
    subjects::KV_BUCKETS
        .iter()
        .map(|b| format!("KV_{b}"))
        .collect()
}

/// `whale` commands pointed at every node of the cluster, with replicas 3.
struct ClusterEnv {
    cluster: NatsCluster,
    extra: Vec<(String, String)>,
}

impl ClusterEnv {
    fn new() -> ClusterEnv {
        ClusterEnv {
            cluster: NatsCluster::start(),
            extra: Vec::new(),
        }
    }

    fn set(&mut self, k: &str, v: &str) {
        self.extra.push((k.into(), v.into()));
    }

    fn whale(&self, args: &[&str]) -> Command {
        let mut c = whale_command(&self.cluster.urls(), args, &self.extra);
        c.env("WHALE_NATS_REPLICAS", "3");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let mut cmd = self.whale(args);
        cmd.env("WHALE_HTTP_ADDR", format!("127.0.0.1:{}", free_port()));
        String::from_utf8_lossy(&run_ok(cmd, args).stdout).into_owned()
    }

    /// A client on every node's URL, with a short JetStream timeout (the test's own requests
    /// during the node loss should fail fast and be retried, not hang for 10 s).
    async fn connect(&self, name: &str) -> Nats {
        let cfg = NatsConfig {
            urls: self.cluster.url_list(),
            ..Default::default()
        };
        Nats::connect(&cfg, name)
            .await
            .expect("connect to cluster")
            .with_request_timeout(Duration::from_secs(2))
    }
}

/// A `whale run` process with its own HTTP port and its stderr in a file; killed on drop.
struct RunWorker {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl RunWorker {
    fn start(env: &ClusterEnv, stages: &str, log: PathBuf) -> RunWorker {
        let port = free_port();
        let err = std::fs::File::create(&log).unwrap();
        let child = env
            .whale(&["run", "--stages", stages])
            .env("WHALE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn whale run");
        RunWorker { child, log, port }
    }

    async fn ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let ok = eventually(Duration::from_secs(60), || async {
            reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ok, "worker not ready; log:\n{}", self.stderr());
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stream info, or why not (a request can fail while a leader is being elected).
async fn stream_info(nats: &Nats, name: &str) -> Result<whale_kernel::nats::StreamInfo, String> {
    nats.stream_info(name)
        .await
        .map_err(|e| format!("{name}: {e:#}"))
}

/// The stream's RAFT leader and followers are all there and current: leader elected, two
/// other replicas, none offline, none behind.
fn check_group(
    what: &str,
    cluster: Option<&jetstream::stream::ClusterInfo>,
) -> Result<String, String> {
    let c = cluster.ok_or_else(|| format!("{what}: no cluster info"))?;
    let leader = c
        .leader
        .clone()
        .ok_or_else(|| format!("{what}: no leader"))?;
    if c.replicas.len() != 2 {
        return Err(format!(
            "{what}: leader {leader} with {} other replicas, want 2",
            c.replicas.len()
        ));
    }
    for p in &c.replicas {
        if !p.current || p.offline || p.lag.unwrap_or(0) != 0 {
            return Err(format!(
                "{what}: replica {} current={} offline={} lag={:?}",
                p.name, p.current, p.offline, p.lag
            ));
        }
    }
    Ok(leader)
}

/// Every stream, KV bucket and stage consumer has three current replicas.
async fn all_replicas_current(nats: &Nats) -> Result<(), String> {
    let mut names: Vec<String> = STREAMS.iter().map(|s| s.to_string()).collect();
    names.extend(kv_streams());
    for name in &names {
        let info = stream_info(nats, name).await?;
        if info.config.num_replicas != 3 {
            return Err(format!("{name}: num_replicas {}", info.config.num_replicas));
        }
        check_group(name, info.cluster.as_ref())?;
    }
    for stage in subjects::STAGES {
        for input in subjects::stage_inputs(stage) {
            let what = format!("{}/{}", input.stream, input.consumer);
            let info = nats
                .consumer_info(input.stream, input.consumer)
                .await
                .map_err(|e| format!("{what}: {e:#}"))?;
            if info.config.num_replicas != 3 {
                return Err(format!("{what}: num_replicas {}", info.config.num_replicas));
            }
            check_group(&what, info.cluster.as_ref())?;
        }
    }
    Ok(())
}

/// Polls [`all_replicas_current`] until it holds; the last reason otherwise.
async fn wait_replicas_current(nats: &Nats, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match all_replicas_current(nats).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_replicates_every_stream_and_bucket_three_times() {
    let env = ClusterEnv::new();
    env.ok(&["setup"]);
    let nats = env.connect("cluster-test").await;
    if let Err(e) = wait_replicas_current(&nats, Duration::from_secs(60)).await {
        panic!("replicas not all current: {e}");
    }
    for name in STREAMS.iter().map(|s| s.to_string()).chain(kv_streams()) {
        let info = stream_info(&nats, &name).await.unwrap();
        let c = info.cluster.expect("cluster info");
        assert_eq!(info.config.num_replicas, 3, "{name}");
        assert_eq!(c.name.as_deref(), Some("whale-test"), "{name}");
        let mut peers: BTreeSet<String> = c.replicas.iter().map(|p| p.name.clone()).collect();
        peers.insert(c.leader.clone().unwrap());
        assert_eq!(
            peers,
            ["n1", "n2", "n3"].map(String::from).into(),
            "{name} is on every node"
        );
    }
    // A second run finds everything as wanted.
    let again = env.ok(&["setup"]);
    assert!(
        again.contains(": 0 changed"),
        "setup is idempotent on a cluster: {again}"
    );
}

/// Rules with an exactly computable outcome: every prod event over 90% → one execution; staging
/// events over 90% → one execution per host (once_within 1h), the rest throttled.
const RULES: &str = r#"
- name: cl-prod-clean
  on: vm.disk_usage
  when:
    - { path: .detail.env, eq: prod }
    - { path: .detail.usage_pct, gt: 90 }
  action: ops.clean_disk
  params:
    host: "{{ .detail.host }}"
    event: "{{ .id }}"
    rule: cl-prod-clean
- name: cl-staging-once
  on: vm.disk_usage
  when:
    - { path: .detail.env, eq: staging }
    - { path: .detail.usage_pct, gt: 90 }
  action: ops.notify_staging
  params:
    host: "{{ .detail.host }}"
    event: "{{ .id }}"
    rule: cl-staging-once
  throttle:
    key: "{{ .detail.host }}"
    limit: 1
    per: 1h
    mode: once_within
"#;

/// Event `i`: its id, its JSON, and whether it is valid. Every 10th is invalid (usage as a
/// string); envs alternate; a third are under the threshold; 40 hosts.
fn event(i: usize) -> (String, Vec<u8>, bool) {
    let id = format!("cl-{i:05}");
    let valid = i % 10 != 7;
    let usage = if !valid {
        json!("high")
    } else if i.is_multiple_of(3) {
        json!(50)
    } else {
        json!(91 + i % 9)
    };
    let env = if i.is_multiple_of(2) {
        "prod"
    } else {
        "staging"
    };
    let body = json!({
        "id": id,
        "event_type": "vm.disk_usage",
        "source": "cluster-test",
        "detail": {"host": format!("web-{}", i % 40), "usage_pct": usage, "env": env},
    });
    (id, serde_json::to_vec(&body).unwrap(), valid)
}

/// A rule applied after the node came back, to show the workers' live views survived.
const AFTER_RULE: &str = r#"
name: cl-after-loss
on: vm.disk_usage
when:
  - { path: .detail.env, eq: dev }
action: ops.after_loss
params:
  host: "{{ .detail.host }}"
  event: "{{ .id }}"
  rule: cl-after-loss
"#;

/// Events published after the node came back (all match [`AFTER_RULE`] only).
const AFTER: usize = 200;

fn after_event(i: usize) -> (String, Vec<u8>) {
    let id = format!("cl-after-{i:05}");
    let body = json!({
        "id": id,
        "event_type": "vm.disk_usage",
        "source": "cluster-test",
        "detail": {"host": format!("web-{i}"), "usage_pct": 95, "env": "dev"},
    });
    (id, serde_json::to_vec(&body).unwrap())
}

/// Consumers of the KV streams (the workers' watches) whose leader is `node`.
async fn kv_consumers_on(nats: &Nats, node: &str) -> usize {
    let mut n = 0;
    for name in kv_streams() {
        let Ok(consumers) = nats.consumers(&name).await else {
            continue;
        };
        for c in consumers {
            if c.cluster.and_then(|c| c.leader).as_deref() == Some(node) {
                n += 1;
            }
        }
    }
    n
}

/// The stage consumers whose RAFT leader is `node`.
async fn stage_consumers_on(nats: &Nats, node: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for stage in subjects::STAGES {
        for input in subjects::stage_inputs(stage) {
            if let Ok(info) = nats.consumer_info(input.stream, input.consumer).await {
                if info.cluster.and_then(|c| c.leader).as_deref() == Some(node) {
                    out.push(input.consumer);
                }
            }
        }
    }
    out
}

/// What the rules must produce for events `0..n`: (valid, executions as (event id, rule),
/// throttled).
fn expected(n: usize) -> (usize, BTreeSet<(String, String)>, usize) {
    let (mut valid, mut execs, mut throttled) = (0, BTreeSet::new(), 0);
    let mut staging_hosts = BTreeSet::new();
    for i in 0..n {
        let (id, _, ok) = event(i);
        if !ok {
            continue;
        }
        valid += 1;
        if i.is_multiple_of(3) {
            continue;
        }
        if i.is_multiple_of(2) {
            execs.insert((id, "cl-prod-clean".to_owned()));
        } else if staging_hosts.insert(i % 40) {
            execs.insert((id, "cl-staging-once".to_owned()));
        } else {
            throttled += 1;
        }
    }
    (valid, execs, throttled)
}

/// What the publisher did so far.
#[derive(Default)]
struct Progress {
    acked: AtomicUsize,
    retries: AtomicU64,
    duplicates: AtomicU64,
    last_error: std::sync::Mutex<String>,
}

/// Publishes `(id, JSON)` events to `whale.in.vm.disk_usage` at about `rate` per second, as a careful
/// producer does: `Nats-Msg-Id` = event id, each publish retried until acked (a timeout or "no
/// responders" while a leader is being elected is retried; the duplicate window makes a retry
/// of a publish that did land harmless). Gives up after 3 minutes per event.
async fn publish_steadily(
    nats: Nats,
    events: Vec<(String, Vec<u8>)>,
    rate: u64,
    progress: Arc<Progress>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (id, payload)) in events.into_iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_micros(i as u64 * 1_000_000 / rate)).await;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (nats, progress) = (nats.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let subject = subjects::ingest("vm.disk_usage");
            let first = Instant::now();
            loop {
                let out = Output::new(subject.clone(), id.clone(), payload.clone());
                match nats.publish_new(out).await {
                    Ok(stored) => {
                        if !stored {
                            progress.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        progress.acked.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        progress.retries.fetch_add(1, Ordering::Relaxed);
                        *progress.last_error.lock().unwrap() = format!("{e:#}");
                        assert!(
                            first.elapsed() < Duration::from_secs(180),
                            "publishing {id} still fails after 3 minutes: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("publisher task");
    }
}

fn write_rules(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("cluster.yaml"), RULES).unwrap();
    rules
}

/// Every execution on the emulator as (parameters.event, parameters.rule).
async fn executions(emu: &Emulator) -> Vec<(String, String)> {
    emu.executions()
        .await
        .iter()
        .map(|e| {
            let p = &e["parameters"];
            (
                p["event"].as_str().unwrap_or("").to_owned(),
                p["rule"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Messages in `stream` on `filter`; None while the stream cannot be asked (an election).
async fn try_count(nats: &Nats, stream: &str, filter: &str) -> Option<u64> {
    nats.subject_count(stream, filter).await.ok()
}

/// (accepted, rejected, dispatched, throttled); None while a stream cannot be asked.
async fn try_counts(nats: &Nats) -> Option<(u64, u64, u64, u64)> {
    Some((
        try_count(nats, STREAM_EVENTS, "whale.events.>").await?,
        try_count(nats, STREAM_EVENTS, "whale.rejected.>").await?,
        try_count(nats, STREAM_PIPE, &Pipe::Dispatched.subject()).await?,
        try_count(nats, STREAM_PIPE, &Pipe::Throttled.subject()).await?,
    ))
}

async fn counts(nats: &Nats) -> (u64, u64, u64, u64) {
    try_counts(nats).await.expect("stream counts")
}

/// Makes `node` the leader of `stream`: asks the current leader to step down in its favour
/// (retried: an election may pick another peer or a request may time out).
async fn move_leader(nats: &Nats, stream: &str, node: &str) {
    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
    let body = serde_json::to_vec(&json!({"placement": {"preferred": node}})).unwrap();
    for _ in 0..20 {
        let leader = stream_info(nats, stream)
            .await
            .ok()
            .and_then(|i| i.cluster?.leader);
        match leader.as_deref() {
            Some(l) if l == node => return,
            Some(_) => {
                let r = nats.request_raw(subject.clone(), body.clone()).await;
                if let Ok(reply) = r {
                    let v: Value = serde_json::from_slice(&reply).unwrap_or_default();
                    assert!(v["error"].is_null(), "stepdown of {stream} refused: {v}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    panic!("could not move the leader of {stream} to {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_survives_the_kill9_of_a_stream_leader() {
    const N: usize = 3000;
    const RATE: u64 = 180;
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let st2 = Emulator::start(&["--any-action"]);
    let mut env = ClusterEnv::new();
    env.set("WHALE_REDIS_URL", &redis.url());
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.ok(&["setup"]);
    env.ok(&["schemas", "apply", "schemas"]);
    let rules = write_rules(dir.path());
    env.ok(&["rules", "apply", rules.to_str().unwrap()]);
    let nats = env.connect("cluster-test").await;
    let mut worker = RunWorker::start(
        &env,
        "validate,match,render,throttle,dispatch",
        dir.path().join("worker.log"),
    );
    worker.ready().await;

    // The node to kill mid-run leads WHALE_PIPE *and* serves the worker's connection, the worst
    // case: a leader election and a client failover at once. The leader is moved there before
    // the run if needed (stepdown with a preferred peer, NATS >= 2.11).
    let stream = STREAM_PIPE;
    let victim = (0..env.cluster.len())
        .find(|&i| {
            env.cluster
                .client_names(i)
                .iter()
                .any(|n| n.starts_with("whale run"))
        })
        .expect("the worker is connected to a node");
    move_leader(&nats, stream, env.cluster.name(victim)).await;

    let (valid, want, want_throttled) = expected(N);
    let progress = Arc::new(Progress::default());
    let publisher = tokio::spawn(publish_steadily(
        env.connect("cluster-test-publisher").await,
        (0..N).map(event).map(|(id, body, _)| (id, body)).collect(),
        RATE,
        progress.clone(),
    ));

    // Mid-run: kill -9 the node that leads WHALE_PIPE and serves the worker's connection.
    let kill_at = N * 2 / 5;
    let ok = eventually(Duration::from_secs(120), || async {
        progress.acked.load(Ordering::Relaxed) >= kill_at
    })
    .await;
    assert!(ok, "publishing did not reach {kill_at}");
    let victim_name = env.cluster.name(victim).to_owned();
    let leader_now = stream_info(&nats, stream)
        .await
        .ok()
        .and_then(|i| i.cluster?.leader);
    assert_eq!(
        leader_now.as_deref(),
        Some(victim_name.as_str()),
        "{stream} leader moved"
    );
    let publisher_there = env
        .cluster
        .client_names(victim)
        .iter()
        .any(|n| n == "cluster-test-publisher");
    let watches_there = kv_consumers_on(&nats, &victim_name).await;
    let stage_consumers_there = stage_consumers_on(&nats, &victim_name).await;
    let published_at_kill = progress.acked.load(Ordering::Relaxed);
    let at_kill = counts(&nats).await;
    let mut leaders = Vec::new();
    for name in STREAMS {
        let l = stream_info(&nats, name)
            .await
            .ok()
            .and_then(|i| i.cluster?.leader);
        leaders.push(format!("{name}={}", l.unwrap_or_default()));
    }
    env.cluster.kill(victim);
    let killed = Instant::now();
    eprintln!(
        "cluster: killed {victim_name} (leader of {stream}, the worker's server; publisher connected there: {publisher_there}; stage consumers led there: {stage_consumers_there:?}; KV watch consumers there: {watches_there}; stream leaders {}) at {published_at_kill}/{N} published; accepted/rejected/dispatched/throttled then: {at_kill:?}",
        leaders.join(" ")
    );

    // How long the streams it led are without a leader (the RAFT election after a kill).
    let elections = tokio::spawn({
        let (nats, victim_name) = (nats.clone(), victim_name.clone());
        async move {
            let mut out = Vec::new();
            for name in STREAMS {
                loop {
                    let l = stream_info(&nats, name)
                        .await
                        .ok()
                        .and_then(|i| i.cluster?.leader);
                    if l.is_some_and(|l| l != victim_name) {
                        out.push(format!("{name} {:.1}s", killed.elapsed().as_secs_f64()));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            out.join(", ")
        }
    });

    // With the node down, everything gets published and goes all the way through.
    let mut published_all = None;
    let mut timeline: Vec<(u64, u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let done = loop {
        if published_all.is_none() && publisher.is_finished() {
            published_all = Some(killed.elapsed());
        }
        if Instant::now() > deadline {
            break false;
        }
        let Some((acc, rej, disp, thr)) = try_counts(&nats).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let second = killed.elapsed().as_secs();
        if timeline.last().is_none_or(|t| t.0 < second) {
            timeline.push((second, acc, disp + thr));
        }
        if published_all.is_some()
            && acc == valid as u64
            && rej == (N - valid) as u64
            && disp == want.len() as u64
            && thr == want_throttled as u64
        {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (acc, rej, disp, thr) = try_counts(&nats).await.unwrap_or_default();
    assert!(
        done,
        "with {victim_name} down the pipeline did not finish: accepted {acc}/{valid}, rejected {rej}/{}, dispatched {disp}/{}, throttled {thr}/{want_throttled}; worker alive: {}; log:\n{}",
        N - valid,
        want.len(),
        worker.alive(),
        worker.stderr()
    );
    let drained = killed.elapsed();
    eprintln!(
        "cluster: stream info answered with a new leader after the kill: {}",
        elections.await.expect("elections")
    );
    publisher.await.expect("publisher");
    let published_all = published_all.expect("publisher finished");
    // One sample per second after the kill: (s, accepted, decided by throttle and dispatched).
    eprintln!("cluster: after the kill (s, accepted, dispatched+throttled): {timeline:?}");
    assert!(
        worker.alive(),
        "the worker exited; log:\n{}",
        worker.stderr()
    );

    // The node comes back and catches up: every replica current, lag 0.
    env.cluster.start_node(victim);
    if let Err(e) = wait_replicas_current(&nats, Duration::from_secs(120)).await {
        panic!(
            "{victim_name} did not catch up: {e}; its log:\n{}",
            env.cluster.log(victim)
        );
    }
    let stream_leader = stream_info(&nats, stream)
        .await
        .ok()
        .and_then(|i| i.cluster)
        .and_then(|c| c.leader)
        .unwrap_or_default();

    // Let any late redelivery show itself, then count exactly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (acc, rej, disp, thr) = counts(&nats).await;
    assert_eq!(acc, valid as u64, "accepted == valid sent");
    assert_eq!(rej, (N - valid) as u64, "rejected == invalid sent");
    assert_eq!(thr, want_throttled as u64, "throttled");
    assert_eq!(disp, want.len() as u64, "Dispatched records");
    let accepted_ids: BTreeSet<String> = read_all(&nats, STREAM_EVENTS, "whale.events.>")
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let valid_ids: BTreeSet<String> = (0..N).map(event).filter(|e| e.2).map(|e| e.0).collect();
    assert_eq!(accepted_ids, valid_ids, "every valid event accepted once");
    let execs = executions(&st2).await;
    let mut per_task: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for e in &execs {
        *per_task.entry(e).or_default() += 1;
    }
    let doubled: Vec<_> = per_task.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "tasks executed twice: {doubled:?}");
    let got: BTreeSet<(String, String)> = execs.iter().cloned().collect();
    assert_eq!(got.difference(&want).count(), 0, "unexpected executions");
    assert_eq!(
        want.difference(&got).cloned().collect::<Vec<_>>(),
        Vec::<(String, String)>::new(),
        "lost executions"
    );
    assert_eq!(st2.created().await, want.len() as u64, "executions created");

    // The worker's live view survived too: a rule applied now reaches match and render (they
    // share one view of the rule set per process, which logs "loaded new version" once), and
    // events published now are executed by it.
    let loaded = |log: &str| log.matches("loaded new version").count();
    let before = loaded(&worker.stderr());
    std::fs::write(rules.join("after.yaml"), AFTER_RULE).unwrap();
    env.ok(&["rules", "apply", rules.to_str().unwrap()]);
    let ok = eventually(Duration::from_secs(60), || async {
        loaded(&worker.stderr()) > before
    })
    .await;
    assert!(
        ok,
        "match and render did not load the rule applied after the node loss; log:\n{}",
        worker.stderr()
    );
    let after: Vec<(String, Vec<u8>)> = (0..AFTER).map(after_event).collect();
    publish_steadily(
        env.connect("cluster-test-publisher").await,
        after,
        RATE,
        Arc::new(Progress::default()),
    )
    .await;
    let total = (want.len() + AFTER) as u64;
    let ok = eventually(Duration::from_secs(120), || async {
        try_count(&nats, STREAM_PIPE, &Pipe::Dispatched.subject()).await == Some(total)
    })
    .await;
    assert!(ok, "events after the node loss not all dispatched");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later: BTreeSet<(String, String)> = executions(&st2)
        .await
        .into_iter()
        .filter(|e| e.1 == "cl-after-loss")
        .collect();
    assert_eq!(later.len(), AFTER, "executions of the rule applied after");
    assert_eq!(st2.created().await, total, "executions created in all");

    assert!(
        worker.alive(),
        "the worker exited; log:\n{}",
        worker.stderr()
    );
    let log = worker.stderr();
    assert!(
        !log.contains("watch ended"),
        "a live view stopped; log:\n{log}"
    );
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("works again"))
        .take(40)
    {
        eprintln!("cluster: worker: {line}");
    }
    eprintln!(
        "cluster: 3 nodes R3, killed leader {victim_name} of {stream} at {published_at_kill}/{N} published \
         (the worker's server), {acc} accepted (valid {valid}), {rej} rejected, \
         {} executions (expected {}), {thr} throttled, 0 duplicates; publisher: {} retries, {} dedup hits \
         (last error: {:?}); all published {:.1}s and all done {:.1}s after the kill; node back, \
         replicas current ({stream} leader now {stream_leader}), a rule applied then ran {AFTER}/{AFTER}; worker log: {} publish outages, {} warnings; total {:.0}s",
        execs.len(),
        want.len(),
        progress.retries.load(Ordering::Relaxed),
        progress.duplicates.load(Ordering::Relaxed),
        progress.last_error.lock().unwrap(),
        published_all.as_secs_f64(),
        drained.as_secs_f64(),
        log.matches("publish failed").count(),
        log.matches("WARN").count(),
        began.elapsed().as_secs_f64(),
    );
}

/// A publish whose server dies before acking fails as soon as the connection drops, not after
/// the JetStream timeout (10 s): the worker naks and retries on the surviving nodes at once.
/// The "server" that should ack here is a plain subscriber that never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_in_flight_when_its_server_dies_fails_at_once() {
    use futures::StreamExt;
    use whale_kernel::Window;
    let mut server = NatsServer::start();
    let cfg = NatsConfig {
        urls: vec![server.url()],
        ..Default::default()
    };
    let nats = Nats::connect(&cfg, "cluster-test").await.unwrap();
    let mut silent = nats.subscribe_raw("whale.test.silent").await.unwrap();
    let mut window: Window<u32> = Window::on(&nats, 8).fail_fast_on_disconnect(&nats);
    let out = Output::new("whale.test.silent".into(), "m1".into(), "x");
    assert!(window.send(1, out).await.is_empty());
    assert!(silent.next().await.is_some(), "the publish went out");
    server.stop();
    let done = window.drain().await;
    assert_eq!(done.len(), 1);
    let err = done[0].1.clone().unwrap_err();
    assert!(
        err.contains("connection to the server lost"),
        "failed for the lost connection, not a timeout: {err}"
    );
}
