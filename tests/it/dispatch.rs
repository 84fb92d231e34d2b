//! The dispatch stage against real NATS, StackStorm emulators and the real `whale` binary:
//! routing by cluster, 500s and recovery, the circuit breaker, drains and failover, kill -9
//! chaos, refusals into the dead letter, and API keys that never reach a log.
//!
//! Tasks are published straight to `whale.pipe.admitted.<cluster>`, as throttle does, so these
//! tests need no rules. Counting happens on the StackStorm side (`/_emulator/stats`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::records::{self, Task};
use whale_kernel::subjects::{Pipe, STREAM_PIPE};
use whale_kernel::{Nats, Window};

use crate::harness::*;

/// A task for `cluster` running `action` with `params`.
fn task(i: usize, cluster: &str, action: &str, params: Value) -> Task {
    let event_id = format!("ev-{i:06}");
    Task {
        task_id: records::task_id(&event_id, "dispatch-test"),
        event_id,
        event_type: "vm.disk_usage".into(),
        rule: "dispatch-test".into(),
        rule_version: "v1".into(),
        action: action.into(),
        parameters: params,
        throttle: None,
        cluster: cluster.into(),
        approval: None,
        notify: Vec::new(),
        result_event: false,
        replay: None,
        // Fresh: a task older than a claim lives is reconciled by trace tag first (claim.rs).
        created: time::OffsetDateTime::now_utc(),
        item: None,
        labels: Default::default(),
    }
}

fn simple(i: usize, cluster: &str) -> Task {
    task(
        i,
        cluster,
        "ops.clean_disk",
        json!({"host": format!("web-{i}")}),
    )
}

/// Publishes tasks as throttle admits them: `whale.pipe.admitted.<cluster>`, msg id `adm:<id>`.
pub(crate) async fn admit(nats: &Nats, tasks: &[Task]) {
    let mut w: Window<usize> = Window::on(nats, 512);
    let mut results = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        results.extend(w.send(i, t.admitted()).await);
    }
    results.extend(w.drain().await);
    assert!(
        results.iter().all(|(_, r)| r.is_ok()),
        "publishing tasks failed"
    );
}

async fn dispatched(nats: &Nats) -> u64 {
    count(nats, STREAM_PIPE, &Pipe::Dispatched.subject()).await
}

async fn dead_letters(nats: &Nats) -> Vec<Value> {
    read_all(nats, STREAM_PIPE, &Pipe::DeadLetter.subject()).await
}

/// Waits until `n` tasks are dispatched; panics with what is known otherwise.
async fn wait_dispatched(nats: &Nats, n: u64, timeout: Duration) {
    let ok = eventually(timeout, || async { dispatched(nats).await >= n }).await;
    assert!(
        ok,
        "only {} of {n} tasks dispatched within {timeout:?}",
        dispatched(nats).await
    );
}

/// Every Dispatched record: checks one per task and one execution per record.
async fn dispatched_records(nats: &Nats, n: usize) -> Vec<Value> {
    let recs = read_all(nats, STREAM_PIPE, &Pipe::Dispatched.subject()).await;
    assert_eq!(recs.len(), n, "Dispatched records");
    let tasks: BTreeSet<&str> = recs
        .iter()
        .map(|r| r["task"]["task_id"].as_str().unwrap())
        .collect();
    let execs: BTreeSet<&str> = recs
        .iter()
        .map(|r| r["execution_id"].as_str().unwrap())
        .collect();
    assert_eq!(tasks.len(), n, "one Dispatched record per task");
    assert_eq!(execs.len(), n, "one execution per task");
    recs
}

/// A whale.toml with `[dispatch]` settings and clusters `(name, url, key env, failover)`; the
/// key env defaults to `TEST_ST2_KEY`.
fn config(
    dir: &Path,
    dispatch: &str,
    clusters: &[(&str, &str, Option<&str>, Option<&str>)],
) -> PathBuf {
    let mut text = format!("[dispatch]\n{dispatch}\n");
    for (name, url, key_env, failover) in clusters {
        text += &format!("\n[clusters.{name}]\nurl = \"{url}\"\n");
        let k = key_env.unwrap_or("TEST_ST2_KEY");
        text += &format!("api_key_env = \"{k}\"\n");
        if let Some(f) = failover {
            text += &format!("failover = \"{f}\"\n");
        }
    }
    let path = dir.join("whale.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An environment where `TEST_ST2_KEY` (the clusters' key env) is set:
/// the emulator takes any key, but not none.
fn keyed_env() -> Env {
    let mut env = Env::new();
    env.set("TEST_ST2_KEY", "k");
    env
}

/// An environment with one cluster, `default`, at `st2_url`, [`QUICK`] retries, and `whale setup`
/// done.
fn quick_env(dir: &Path, st2_url: &str) -> Env {
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", config(dir, QUICK, &[]).to_str().unwrap());
    env.set("WHALE_ST2_URL", st2_url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.ok(&["setup"]);
    env
}

/// Retries and waits fast enough for tests.
const QUICK: &str = r#"backoff_base = "100ms"
backoff_max = "1s"
breaker_cooldown = "1s"
wait_retry = "300ms"
request_timeout = "2s""#;

/// `whale run --stages dispatch` with its own HTTP port and its stderr in a file.
struct DispatchWorker {
    child: Option<Child>,
    pub log: PathBuf,
    port: u16,
}

impl DispatchWorker {
    fn start(env: &Env, log: PathBuf, extra: &[(&str, &str)]) -> DispatchWorker {
        let mut w = DispatchWorker {
            child: None,
            log,
            port: free_port(),
        };
        w.spawn(env, extra);
        w
    }

    fn spawn(&mut self, env: &Env, extra: &[(&str, &str)]) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = env.whale(&["run", "--stages", "dispatch"]);
        cmd.env("WHALE_HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn whale run"));
    }

    async fn ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let ok = eventually(Duration::from_secs(30), || async {
            reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ok, "dispatch worker not ready; log:\n{}", self.stderr());
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True once the process ended by itself (e.g. its failpoint fired).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Waits until the log contains `needle` (a live change the worker announces).
    async fn logged(&self, needle: &str) {
        let ok = eventually(Duration::from_secs(10), || async {
            self.stderr().contains(needle)
        })
        .await;
        assert!(
            ok,
            "worker never logged {needle:?}; log:\n{}",
            self.stderr()
        );
    }
}

impl Drop for DispatchWorker {
    /// Stops the worker; when the test failed, prints the end of its log first (the log sits in
    /// the test's temporary directory, gone once the test ends).
    fn drop(&mut self) {
        if std::thread::panicking() {
            let status = match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(s))) => format!("exited: {s}"),
                Some(_) => "running".to_owned(),
                None => "stopped by the test".to_owned(),
            };
            let log = self.stderr();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(200)..].join("\n");
            eprintln!(
                "dispatch worker (port {}, {status}), last {} of {} log lines:\n{tail}",
                self.port,
                lines.len().min(200),
                lines.len()
            );
        }
        self.kill9();
    }
}

/// A random number in `range` (std only: the seed of a fresh `RandomState`).
fn random(range: std::ops::Range<u64>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    range.start + r % (range.end - range.start)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_are_routed_to_their_clusters() {
    let east = Emulator::start(&["--any-action"]);
    let west = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("unknown_route = \"dead_letter\"\n{QUICK}"),
        &[
            ("east", &east.url, None, None),
            ("west", &west.url, None, None),
        ],
    );
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.set("WHALE_ST2_URL", "");
    env.ok(&["setup"]);
    let nats = env.connect().await;
    let mut tasks: Vec<Task> = (0..1000)
        .map(|i| simple(i, if i % 3 == 0 { "west" } else { "east" }))
        .collect();
    tasks.extend((1000..1010).map(|i| simple(i, "nowhere")));
    admit(&nats, &tasks).await;
    let w = DispatchWorker::start(&env, dir.path().join("worker.log"), &[]);
    w.ready().await;
    wait_dispatched(&nats, 1000, Duration::from_secs(120)).await;
    let ok = eventually(Duration::from_secs(10), || async {
        dead_letters(&nats).await.len() == 10
    })
    .await;
    assert!(ok, "the 10 tasks for an unknown cluster are dead letters");

    assert_eq!(east.created().await, 666);
    assert_eq!(west.created().await, 334);
    for r in dispatched_records(&nats, 1000).await {
        assert_eq!(r["cluster"], r["task"]["cluster"], "{r}");
    }
    for d in dead_letters(&nats).await {
        assert_eq!(d["task"]["cluster"], "nowhere");
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains("\"nowhere\" is not configured"), "{reason}");
    }
    // Nothing more happens later: every task ended once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(east.created().await + west.created().await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_recovery_execute_every_task_exactly_once() {
    let st2 = Emulator::start(&["--any-action"]);
    st2.fault(json!({"http_500": {"for_ms": 3000}})).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("{QUICK}\nmax_attempts = 50\nbreaker_threshold = 3"),
        &[],
    );
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.ok(&["setup"]);
    let nats = env.connect().await;
    let tasks: Vec<Task> = (0..300).map(|i| simple(i, "default")).collect();
    admit(&nats, &tasks[..200]).await;
    let w = DispatchWorker::start(&env, dir.path().join("worker.log"), &[]);
    w.ready().await;
    w.logged("circuit breaker opened").await;
    // Connections closed mid-answer, later on, while the rest arrives.
    wait_dispatched(&nats, 200, Duration::from_secs(60)).await;
    st2.fault(json!({"refuse": {"for_ms": 1500}})).await;
    admit(&nats, &tasks[200..]).await;
    wait_dispatched(&nats, 300, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(
        st2.created().await,
        300,
        "one execution per task, none doubled"
    );
    dispatched_records(&nats, 300).await;
    assert!(dead_letters(&nats).await.is_empty());
    assert!(
        w.stderr().contains("circuit breaker closed"),
        "{}",
        w.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_fails_over_and_closes_after_a_good_probe() {
    let east = Emulator::start(&["--any-action"]);
    let west = Emulator::start(&["--any-action"]);
    east.fault(json!({"latency_ms": 5})).await;
    west.fault(json!({"latency_ms": 5})).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("{QUICK}\nmax_attempts = 50\nbreaker_threshold = 3\nconcurrency = 4"),
        &[
            ("east", &east.url, None, Some("west")),
            ("west", &west.url, None, None),
        ],
    );
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.ok(&["setup"]);
    let nats = env.connect().await;
    let w = DispatchWorker::start(&env, dir.path().join("worker.log"), &[]);
    w.ready().await;
    let tasks: Vec<Task> = (0..400).map(|i| simple(i, "east")).collect();
    admit(&nats, &tasks[..50]).await;
    wait_dispatched(&nats, 50, Duration::from_secs(30)).await;
    east.fault(json!({"http_500": {"for_ms": 2500}})).await;
    admit(&nats, &tasks[50..]).await;
    wait_dispatched(&nats, 400, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (e, wst) = (east.created().await, west.created().await);
    assert_eq!(
        e + wst,
        400,
        "east {e} + west {wst}: one execution per task"
    );
    assert!(
        wst > 0,
        "the failover cluster took tasks while east's breaker was open"
    );
    assert!(e > 50, "east took tasks again once its breaker closed");
    let log = w.stderr();
    assert!(
        log.contains("circuit breaker opened") && log.contains("new tasks go to west"),
        "{log}"
    );
    assert!(log.contains("circuit breaker closed"), "{log}");
    dispatched_records(&nats, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_cluster_gets_nothing_new_and_its_failover_does() {
    let east = Emulator::start(&["--any-action"]);
    let west = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        QUICK,
        &[
            ("east", &east.url, None, Some("west")),
            ("west", &west.url, None, None),
        ],
    );
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.ok(&["setup"]);
    let nats = env.connect().await;

    let out = env.ok(&["clusters", "drain", "east"]);
    assert!(
        stdout(&out).contains("drained east: new tasks go to west"),
        "{}",
        stdout(&out)
    );
    let out = env.ok(&["clusters", "drain", "east"]);
    assert!(stdout(&out).contains("already drained"), "{}", stdout(&out));
    let bad = env.whale(&["clusters", "drain", "nope"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("\"nope\" is not configured (configured: east, west)"));
    let list: Value =
        serde_json::from_slice(&env.ok(&["clusters", "list", "--json"]).stdout).unwrap();
    let by_name: BTreeMap<&str, &Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c))
        .collect();
    assert_eq!(by_name["east"]["drained"], true);
    assert_eq!(by_name["west"]["drained"], false);
    assert_eq!(by_name["east"]["health"]["ok"], true, "{list}");
    assert_eq!(by_name["east"]["failover"], "west");

    // Drained before the worker starts: all of east's tasks go to west.
    let w = DispatchWorker::start(&env, dir.path().join("worker.log"), &[]);
    w.ready().await;
    let tasks: Vec<Task> = (0..350)
        .map(|i| simple(i, if i < 300 { "east" } else { "west" }))
        .collect();
    admit(&nats, &tasks[..100]).await;
    wait_dispatched(&nats, 100, Duration::from_secs(30)).await;
    assert_eq!((east.created().await, west.created().await), (0, 100));
    for r in dispatched_records(&nats, 100).await {
        assert_eq!(r["cluster"], "west");
    }

    // Undrained live: east takes its tasks again.
    env.ok(&["clusters", "undrain", "east"]);
    w.logged("undrained").await;
    admit(&nats, &tasks[100..200]).await;
    wait_dispatched(&nats, 200, Duration::from_secs(30)).await;
    assert_eq!((east.created().await, west.created().await), (100, 100));

    // A drained cluster without failover: its tasks wait, nothing is lost or dead-lettered...
    env.ok(&["clusters", "drain", "west"]);
    w.logged("drained: new tasks wait (no failover)").await;
    admit(&nats, &tasks[300..]).await;
    admit(&nats, &tasks[200..300]).await;
    wait_dispatched(&nats, 300, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        dispatched(&nats).await,
        300,
        "west's tasks wait while it is drained"
    );
    assert_eq!((east.created().await, west.created().await), (200, 100));
    assert!(dead_letters(&nats).await.is_empty());
    // ...and run once it is back.
    let out = env.ok(&["clusters", "undrain", "west"]);
    assert!(stdout(&out).contains("undrained west"));
    wait_dispatched(&nats, 350, Duration::from_secs(30)).await;
    assert_eq!((east.created().await, west.created().await), (200, 150));
    dispatched_records(&nats, 350).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_post_and_record_is_reconciled_by_trace_tag() {
    let st2 = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), QUICK, &[]);
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.ok(&["setup"]);
    let nats = env.connect().await;
    let tasks: Vec<Task> = (0..200).map(|i| simple(i, "default")).collect();
    admit(&nats, &tasks).await;
    let log = dir.path().join("worker.log");
    // The first worker dies right after its 20th execution is created, before recording it.
    let mut w = DispatchWorker::start(
        &env,
        log.clone(),
        &[(whale_dispatch::stage::KILL_AFTER_ENV, "20")],
    );
    let died = eventually(Duration::from_secs(30), || {
        let alive = w
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        async move { !alive }
    })
    .await;
    assert!(died, "the failpoint did not fire");
    let before = st2.created().await;
    assert!(before >= 20);
    w.kill9();
    w.spawn(&env, &[]);
    w.ready().await;
    // The dead worker's messages come back after the consumer's ack wait (30 s).
    wait_dispatched(&nats, 200, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        st2.created().await,
        200,
        "no task created twice ({before} before the crash)"
    );
    dispatched_records(&nats, 200).await;
    assert!(
        w.stderr().contains("execution found by trace tag"),
        "the restarted worker reconciled: {}",
        w.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill9_two_workers_creates_every_execution_exactly_once() {
    let east = Emulator::start(&["--any-action"]);
    let west = Emulator::start(&["--any-action"]);
    east.fault(json!({"latency_ms": 40})).await;
    west.fault(json!({"latency_ms": 40})).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("{QUICK}\nconcurrency = 8\nmax_attempts = 100"),
        &[
            ("east", &east.url, None, None),
            ("west", &west.url, None, None),
        ],
    );
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.ok(&["setup"]);
    let nats = env.connect().await;
    let n = 2000;
    let tasks: Vec<Task> = (0..n)
        .map(|i| simple(i, if i % 2 == 0 { "east" } else { "west" }))
        .collect();
    admit(&nats, &tasks).await;
    let mut workers: Vec<DispatchWorker> = (0..2)
        .map(|i| DispatchWorker::start(&env, dir.path().join(format!("w{i}.log")), &[]))
        .collect();
    let mut kills = 0;
    while kills < 12 && dispatched(&nats).await < n as u64 * 9 / 10 {
        tokio::time::sleep(Duration::from_millis(random(150..900))).await;
        let i = random(0..2) as usize;
        workers[i].kill9();
        kills += 1;
        if random(0..2) == 0 {
            tokio::time::sleep(Duration::from_millis(random(0..300))).await;
        }
        // Half the new workers also kill themselves at the worst moment: right after an
        // execution was created, before it is recorded (the first one always does).
        let first = kills == 1;
        match first || random(0..2) == 0 {
            true => {
                if first {
                    // The other worker dies too and stays down until the first failpoint
                    // fired: alone on the consumer, this worker reaches its count, where the
                    // other could otherwise dispatch every task first (a fast machine), or a
                    // random kill take this one down first (a busy one).
                    workers[1 - i].kill9();
                    kills += 1;
                }
                let after = random(3..40).to_string();
                let w = &mut workers[i];
                w.spawn(
                    &env,
                    &[(whale_dispatch::stage::KILL_AFTER_ENV, after.as_str())],
                );
                if first {
                    let deadline = std::time::Instant::now() + Duration::from_secs(120);
                    while !w.exited() && std::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    assert!(w.exited(), "the first failpoint did not fire");
                    workers[1 - i].spawn(&env, &[]);
                }
            }
            false => workers[i].spawn(&env, &[]),
        }
    }
    // Whatever the chaos left dead comes back without the failpoint.
    for w in &mut workers {
        w.kill9();
        w.spawn(&env, &[]);
    }
    eprintln!(
        "chaos: {kills} kills, {} dispatched when they stopped",
        dispatched(&nats).await
    );
    assert!(kills >= 3, "the run ended before the chaos could start");
    wait_dispatched(&nats, n as u64, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        east.created().await,
        n as u64 / 2,
        "east: none lost, none doubled"
    );
    assert_eq!(
        west.created().await,
        n as u64 / 2,
        "west: none lost, none doubled"
    );
    dispatched_records(&nats, n).await;
    assert!(dead_letters(&nats).await.is_empty());
    let logs: String = workers.iter().map(DispatchWorker::stderr).collect();
    let (found, suicides) = (
        logs.matches("execution found by trace tag").count(),
        logs.matches(whale_dispatch::stage::KILL_AFTER_ENV).count(),
    );
    eprintln!("chaos: {suicides} failpoint kills; {found} executions found by trace tag instead of created again");
    assert!(
        found >= 1,
        "a killed worker's created-but-unrecorded executions were reconciled"
    );
}

const ACTIONS: &str = r#"
actions:
  - ref: ops.restart
    parameters:
      host: { type: string, required: true }
      force: { type: boolean }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tasks_go_to_the_dead_letter_with_stackstorms_message() {
    let dir = tempfile::tempdir().unwrap();
    let actions = dir.path().join("actions.yaml");
    std::fs::write(&actions, ACTIONS).unwrap();
    let st2 = Emulator::start(&["--actions", actions.to_str().unwrap()]);
    let env = quick_env(dir.path(), &st2.url);
    let nats = env.connect().await;
    let cases = [
        ("ops.restart", json!({"host": "web-1"}), None),
        (
            "ops.nope",
            json!({"host": "web-1"}),
            Some("Action \"ops.nope\" cannot be found."),
        ),
        (
            "ops.restart",
            json!({}),
            Some("'host' is a required property"),
        ),
        (
            "ops.restart",
            json!({"host": "web-1", "force": "yes"}),
            Some("'yes' is not of type 'boolean'"),
        ),
        (
            "ops.restart",
            json!({"host": "web-1", "bogus": 1}),
            Some("Additional properties are not allowed ('bogus' was unexpected)"),
        ),
    ];
    let tasks: Vec<Task> = cases
        .iter()
        .enumerate()
        .map(|(i, (a, p, _))| task(i, "default", a, p.clone()))
        .collect();
    admit(&nats, &tasks).await;
    let _w = DispatchWorker::start(&env, dir.path().join("worker.log"), &[]);
    wait_dispatched(&nats, 1, Duration::from_secs(30)).await;
    let ok = eventually(Duration::from_secs(30), || async {
        dead_letters(&nats).await.len() == 4
    })
    .await;
    assert!(ok, "4 dead letters");
    let letters: BTreeMap<String, Value> = dead_letters(&nats)
        .await
        .into_iter()
        .map(|d| (d["task"]["task_id"].as_str().unwrap().to_owned(), d))
        .collect();
    for (t, (_, _, want)) in tasks.iter().zip(&cases) {
        let Some(want) = want else { continue };
        let d = &letters[&t.task_id];
        assert_eq!(d["faultstring"], *want, "{d}");
        assert!(d["reason"].as_str().unwrap().contains(want), "{d}");
        assert_eq!(d["cluster"], "default");
        assert_eq!(d["attempts"], 1, "a refusal is not retried: {d}");
    }
    assert_eq!(st2.created().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_appear_in_logs_errors_or_records() {
    const KEY: &str = "sekrit-Key-6f1c2a";
    const WRONG: &str = "wrong-Key-93bd07";
    let st2 = Emulator::start(&["--any-action", "--api-key", KEY]);
    st2.fault(json!({"http_500": {"count": 6}})).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("{QUICK}\nmax_attempts = 3\nbreaker_threshold = 100"),
        &[("wrongkey", &st2.url, Some("WRONG_KEY"), None)],
    );
    let mut env = keyed_env();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", KEY);
    env.set("WRONG_KEY", WRONG);
    env.set("WHALE_LOG", "debug");
    env.ok(&["setup"]);
    let nats = env.connect().await;
    let mut tasks: Vec<Task> = (0..20).map(|i| simple(i, "default")).collect();
    tasks.extend((20..25).map(|i| simple(i, "wrongkey")));
    admit(&nats, &tasks).await;
    let w = DispatchWorker::start(&env, dir.path().join("worker.log"), &[]);
    wait_dispatched(&nats, 20, Duration::from_secs(60)).await;
    let ok = eventually(Duration::from_secs(60), || async {
        dead_letters(&nats).await.len() == 5
    })
    .await;
    assert!(ok, "the wrong key's tasks give up after max_attempts");
    let letters = dead_letters(&nats).await;
    for d in &letters {
        let reason = d["reason"].as_str().unwrap();
        assert!(
            reason.contains("gave up after 3 failed attempts") && reason.contains("401"),
            "{reason}"
        );
    }
    let list = env.whale(&["clusters", "list"]).output().unwrap();
    let list_json = env.whale(&["clusters", "list", "--json"]).output().unwrap();
    let log = w.stderr();
    assert!(
        log.contains("dead letter") && log.contains("500"),
        "the log holds the errors: {log}"
    );
    let everything = [
        log,
        serde_json::to_string(&letters).unwrap(),
        String::from_utf8_lossy(&list.stdout).into_owned(),
        String::from_utf8_lossy(&list.stderr).into_owned(),
        String::from_utf8_lossy(&list_json.stdout).into_owned(),
        String::from_utf8_lossy(&list_json.stderr).into_owned(),
    ]
    .join("\n");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("401"),
        "the list shows the refusal"
    );
    for k in [KEY, WRONG] {
        assert!(!everything.contains(k), "API key leaked:\n{everything}");
    }
}

/// `whale dead-letters` with `--json`: one entry per line.
fn dl_list(env: &Env, all: bool) -> Vec<Value> {
    let mut args = vec!["dead-letters", "list", "--json"];
    if all {
        args.push("--all");
    }
    let out = env.ok(&args);
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Dead letters have a way out: listed, shown, retried with the same task id once the cause is
/// fixed — exactly one execution however many times it is retried, and none for a task that
/// already ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_retried_with_their_task_id_and_execute_once() {
    let dir = tempfile::tempdir().unwrap();
    let actions = dir.path().join("actions.yaml");
    std::fs::write(&actions, ACTIONS).unwrap();
    // The cluster does not know the action yet: both tasks are refused for good.
    let refusing = Emulator::start(&["--actions", actions.to_str().unwrap()]);
    let env = quick_env(dir.path(), &refusing.url);
    let nats = env.connect().await;
    let tasks: Vec<Task> = (0..2)
        .map(|i| task(i, "default", "ops.fix", json!({"host": format!("web-{i}")})))
        .collect();
    let (a, b) = (tasks[0].task_id.clone(), tasks[1].task_id.clone());
    admit(&nats, &tasks).await;
    let mut w = DispatchWorker::start(&env, dir.path().join("w1.log"), &[]);
    let ok = eventually(Duration::from_secs(30), || async {
        dead_letters(&nats).await.len() == 2
    })
    .await;
    assert!(ok, "2 dead letters; log:\n{}", w.stderr());
    assert_eq!(refusing.created().await, 0);

    let list = dl_list(&env, false);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|e| e["state"] == "dead"), "{list:?}");
    let out = env.ok(&["dead-letters", "show", &a]);
    let text = stdout(&out);
    eprintln!("{text}");
    assert!(text.contains("state:     dead"), "{text}");
    assert!(
        text.contains("Action \"ops.fix\" cannot be found"),
        "{text}"
    );
    let out = env
        .whale(&["dead-letters", "retry", "no-such-task"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));

    // The cause is fixed (the cluster now has the action). A retried twice, B once, before any
    // worker runs: three admissions of two task ids.
    w.kill9();
    let fixed = Emulator::start(&["--any-action"]);
    let out = env.ok(&["dead-letters", "retry", &a, "--by", "alice", "--json"]);
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (e["state"].as_str(), e["retry"]["retries"].as_u64()),
        (Some("retried"), Some(1)),
        "{e}"
    );
    assert_eq!(e["retry"]["by"], "alice");
    env.ok(&["dead-letters", "retry", &a]);
    env.ok(&["dead-letters", "retry", &b]);
    assert!(
        dl_list(&env, false).is_empty(),
        "retried letters are not pending"
    );
    assert_eq!(
        count(&nats, STREAM_PIPE, &Pipe::Admitted.filter()).await,
        5,
        "2 admissions and 3 retries"
    );
    let w2 = DispatchWorker::start(
        &env,
        dir.path().join("w2.log"),
        &[("WHALE_ST2_URL", fixed.url.as_str())],
    );
    w2.ready().await;
    wait_dispatched(&nats, 2, Duration::from_secs(30)).await;
    // Every admission handled (the duplicate of A included) before counting.
    let ok = eventually(Duration::from_secs(30), || async {
        fixed.created().await >= 2
    })
    .await;
    assert!(ok, "{}", fixed.stats().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fixed.created().await, 2, "one execution per task");
    let recs = dispatched_records(&nats, 2).await;
    let ids: BTreeSet<&str> = recs
        .iter()
        .map(|r| r["task"]["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([a.as_str(), b.as_str()]));

    // Executed: listed as such, and a further retry is refused (CLI and HTTP).
    let all = dl_list(&env, true);
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|e| e["state"] == "executed" && e["execution_id"].is_string()),
        "{all:?}"
    );
    let out = env.whale(&["dead-letters", "retry", &a]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already executed"));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", w2.port);
    let r = http
        .post(format!("{base}/v1/dead-letters/{b}/retry"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .get(format!("{base}/v1/dead-letters?all=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let r = http
        .get(format!("{base}/v1/dead-letters/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["claim"]["state"], "created", "{v}");
    assert_eq!(v["retry"]["retries"], 2, "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fixed.created().await, 2, "still one execution per task");

    // Every retry attempt is an audit record: three done (alice's first), three refused (the
    // unknown task, and the two after execution).
    let out = env.ok(&["audit", "--json", "--action", "dead_letter.retry"]);
    let recs: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect();
    let outcome = |o: &str| recs.iter().filter(|r| r["outcome"] == o).count();
    assert_eq!(
        (recs.len(), outcome("ok"), outcome("refused")),
        (6, 3, 3),
        "{recs:#?}"
    );
    assert!(
        recs.iter().any(|r| r["who"] == "alice"
            && r["outcome"] == "ok"
            && r["target"]["id"] == a.as_str()
            && r["task_id"] == a.as_str()),
        "{recs:#?}"
    );
}
