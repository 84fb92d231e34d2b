//! Starting real servers and `whale` processes for tests, and reading what they produced.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use whale_kernel::auth::{token_line, Role};
pub use whale_kernel::testkit::{free_port, NatsServer};
use whale_kernel::{config::NatsConfig, Nats};

/// Path of the repository (schemas/, pipelines/ live there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A client of `server`, a stream `stream` of its own on `prefix.>` and a stage consumer
/// `consumer` on it, made as `whale setup` makes one: for tests that run the worker loop with a
/// stage of their own.
pub async fn raw_input(
    server: &NatsServer,
    stream: &'static str,
    consumer: &'static str,
    prefix: &str,
) -> (Nats, whale_kernel::subjects::Input) {
    let nats = Nats::connect(
        &NatsConfig {
            urls: vec![server.url()],
            ..Default::default()
        },
        consumer,
    )
    .await
    .expect("connect to test nats");
    let all = format!("{prefix}.>");
    nats.create_stream_raw(stream, &[all.as_str()])
        .await
        .expect("create the stream");
    let input = whale_kernel::subjects::Input {
        stream,
        consumer,
        filters: vec![all],
        whole_stream: false,
    };
    whale_kernel::setup::ensure_consumer(&nats, &input, &whale_kernel::Config::default())
        .await
        .expect("create the consumer");
    (nats, input)
}

/// Starts the worker loop of `stage` on `input` in this process with the stage's own options, as
/// `whale run` would (for tests with a stage of their own); sending `true` stops it.
pub fn spawn_loop(
    nats: &Nats,
    stage: std::sync::Arc<dyn whale_kernel::Stage>,
    input: whale_kernel::subjects::Input,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let options = stage.options();
    let task = tokio::spawn(whale_kernel::worker::run(
        nats.clone(),
        stage,
        input,
        options,
        whale_kernel::Health::default(),
        stop_rx,
    ));
    (stop, task)
}

/// A test environment: one nats-server plus the env vars that point whale at it.
pub struct Env {
    pub nats: NatsServer,
    pub http_port: u16,
    pub extra: Vec<(String, String)>,
    /// The embedded index's directory unless a test sets its own: never the repository's
    /// `.whale/index`, which tests running at once would fight over (one writer per directory).
    _index: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env::on(NatsServer::start())
    }

    /// An environment on a nats-server the test started itself.
    pub fn on(nats: NatsServer) -> Env {
        let index = tempfile::tempdir().expect("temp dir");
        let extra = vec![(
            "WHALE_INDEX_DIR".to_owned(),
            index.path().join("index").to_str().unwrap().to_owned(),
        )];
        Env {
            nats,
            http_port: free_port(),
            extra,
            _index: index,
        }
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.extra.push((k.into(), v.into()));
    }

    /// A `whale` command with this environment.
    pub fn whale(&self, args: &[&str]) -> Command {
        let mut c = whale_command(&self.nats.url(), args, &self.extra);
        c.env("WHALE_HTTP_ADDR", format!("127.0.0.1:{}", self.http_port));
        c
    }

    /// Runs a whale command to completion; panics with its output if it fails.
    pub fn ok(&self, args: &[&str]) -> Output {
        run_ok(self.whale(args), args)
    }

    /// `whale setup` + `whale schemas apply schemas`.
    pub fn prepare(&self) {
        self.ok(&["setup"]);
        self.ok(&["schemas", "apply", "schemas"]);
    }

    /// Points this environment at a whole pipeline: `config` as its `whale.toml` (written in
    /// `dir`), `redis`, the StackStorm `emulator` (API key `k`) and an embedded index under
    /// `dir`; then [`Env::prepare`] and, unless `rules` is empty, `whale rules apply` of `rules`
    /// (file name → text).
    pub fn prepare_pipeline(
        &mut self,
        dir: &Path,
        config: &str,
        redis: &str,
        emulator: &str,
        rules: &[(&str, &str)],
    ) {
        let cfg = dir.join("whale.toml");
        std::fs::write(&cfg, config).unwrap();
        self.set("WHALE_CONFIG", cfg.to_str().unwrap());
        self.set("WHALE_REDIS_URL", redis);
        self.set("WHALE_ST2_URL", emulator);
        self.set("WHALE_ST2_API_KEY", "k");
        self.set("WHALE_INDEX_DIR", dir.join("index").to_str().unwrap());
        self.prepare();
        if !rules.is_empty() {
            self.apply_rules(dir, rules);
        }
    }

    /// `whale rules apply` of a fresh directory (under `dir`) holding `rules` (name → text).
    pub fn apply_rules(&self, dir: &Path, rules: &[(&str, &str)]) {
        let d = tempfile::tempdir_in(dir).unwrap();
        for (name, text) in rules {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        self.ok(&["rules", "apply", d.path().to_str().unwrap()]);
    }

    /// Starts `whale run --stages ...` in the background; waits for /readyz.
    pub fn run(&self, stages: &str) -> Worker {
        let child = self
            .whale(&["run", "--stages", stages])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn whale run");
        let w = Worker { child: Some(child) };
        wait_ready(self.http_port);
        w
    }

    /// Starts `whale run --stages ...` on its own HTTP `port` with `extra` env vars and its stderr
    /// appended to `log`, without waiting for it (see [`ready`]): for tests that run many workers
    /// and start them again while servers are down.
    pub fn spawn_on(&self, stages: &str, port: u16, log: &Path, extra: &[(&str, &str)]) -> Worker {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open worker log");
        let mut cmd = self.whale(&["run", "--stages", stages]);
        cmd.env("WHALE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Worker {
            child: Some(cmd.spawn().expect("spawn whale run")),
        }
    }

    /// Starts `whale run --stages ...` on this environment's HTTP port with its stderr in `log`
    /// and waits for /readyz; panics with the log when it does not become ready.
    pub async fn run_logged(&self, stages: &str, log: &Path) -> Worker {
        let w = self.spawn_on(stages, self.http_port, log, &[]);
        assert!(
            ready(self.http_port, Duration::from_secs(30)).await,
            "whale run: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        w
    }

    pub async fn connect(&self) -> Nats {
        let cfg = NatsConfig {
            urls: vec![self.nats.url()],
            ..Default::default()
        };
        Nats::connect(&cfg, "whale-test")
            .await
            .expect("connect to test nats")
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
}

/// The `whale.toml` entries (`[[auth.tokens]]`, as `whale auth hash-token` prints them) of
/// these (name, role, token) API tokens.
pub fn tokens_toml(tokens: &[(&str, Role, &str)]) -> String {
    tokens
        .iter()
        .map(|(name, role, token)| token_line(name, *role, token) + "\n")
        .collect()
}

/// The `whale` under test with `args`, pointed at `nats_url` (a comma list for a cluster), run
/// from the repository, with `extra` environment variables and no configuration file of the
/// caller's environment.
pub fn whale_command(nats_url: &str, args: &[&str], extra: &[(String, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whale"));
    c.args(args)
        .env_remove("WHALE_CONFIG")
        .env("WHALE_NATS_URL", nats_url)
        .env("WHALE_LOG", "info,async_nats=warn")
        .current_dir(repo());
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

/// Runs `cmd` (`whale args`) to completion; panics with its output if it fails.
pub fn run_ok(mut cmd: Command, args: &[&str]) -> Output {
    let out = cmd.output().expect("run whale");
    assert!(
        out.status.success(),
        "whale {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = plain::get_status(&format!("http://127.0.0.1:{port}/readyz")) {
            if r == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("whale run did not become ready on port {port}");
}

/// Waits (without blocking the runtime) until a `whale run` answers 200 on `port`'s /readyz.
pub async fn ready(port: u16, timeout: Duration) -> bool {
    let url = format!("http://127.0.0.1:{port}/readyz");
    eventually(timeout, || async {
        reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
    })
    .await
}

/// Minimal blocking GET without pulling in reqwest's blocking feature.
mod plain {
    pub fn get_status(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

/// A running `whale run` process; killed (SIGKILL) on drop.
pub struct Worker {
    child: Option<Child>,
}

impl Worker {
    /// The process id while it runs (to read its `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status if the process ended by itself (None while it runs or after a kill).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM and wait for a clean exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every message on `filter` in `stream`, as JSON (reads from the start, acks nothing): the
/// kernel's history walk over all time.
pub async fn read_all(nats: &Nats, stream: &str, filter: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    whale_kernel::history::read_all(nats, stream, filter, |d| {
        out.push(serde_json::from_slice(&d.payload).expect("JSON record"));
    })
    .await
    .expect("read the stream");
    out
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Number of messages in a stream matching `filter` (0 while the stream cannot be asked).
pub async fn count(nats: &Nats, stream: &str, filter: &str) -> u64 {
    nats.subject_count(stream, filter).await.unwrap_or(0)
}

/// A binary of another workspace package (`st2-emulator`, `whale-bench`): the root package
/// cannot depend on another package's binary, so it is found next to the `whale` test binary;
/// `cargo test --workspace` (or `cargo build --workspace --bins` before `cargo test --test it`)
/// builds it there. Panics with that fix when it is missing.
pub fn sibling_binary(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_whale")).with_file_name(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --workspace --bins` (or run `cargo test --workspace`) before `cargo test --test it`",
        bin.display()
    );
    bin
}

/// The StackStorm emulator (`st2-emulator`, a bin of the workspace, see [`sibling_binary`]) on a
/// free port; killed on drop.
pub struct Emulator {
    child: Child,
    pub url: String,
}

impl Emulator {
    /// Path of the emulator binary; panics with the fix when it was not built.
    pub fn binary() -> PathBuf {
        sibling_binary("st2-emulator")
    }

    /// Starts it with extra flags (`--any-action`, `--api-key K`, `--actions FILE`).
    pub fn start(args: &[&str]) -> Emulator {
        use std::io::BufRead;
        let mut child = Command::new(Self::binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn st2-emulator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the emulator's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("st2-emulator did not start: {line:?}"))
            .to_owned();
        Emulator {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// `GET /_emulator/stats`.
    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/_emulator/stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every execution the emulator holds (`GET /api/v1/executions?limit=-1` with API key `k`,
    /// the key [`Env::prepare_pipeline`] gives whale).
    pub async fn executions(&self) -> Vec<serde_json::Value> {
        reqwest::Client::new()
            .get(format!("{}/api/v1/executions?limit=-1", self.url))
            .header("St2-Api-Key", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Executions the emulator created so far.
    pub async fn created(&self) -> u64 {
        self.stats().await["executions_created"]
            .as_u64()
            .unwrap_or(0)
    }

    /// `POST /_emulator/faults` (e.g. `{"http_500": {"for_ms": 3000}}`).
    pub async fn fault(&self, body: serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/_emulator/faults", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "fault {body} refused: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `free_port` hands out each port once per process, below the kernel's ephemeral range (where
/// no outgoing connection can take it between the probe and the server's bind), and bindable.
#[test]
fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
    let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports = whale_kernel::testkit::free_ports(300);
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    assert!(
        ports.iter().all(|p| (20_000..ephemeral).contains(p)),
        "{ports:?}"
    );
    for p in ports {
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
}
