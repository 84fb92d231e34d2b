//! Test harness: real servers on free ports with temporary directories, stopped on drop
//! (feature `testkit`). Used by every crate's tests and by the integration suite; no mocks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback, each at most once per process, from below the kernel's range of
/// ephemeral ports.
///
/// Binding port 0 gives a port of the ephemeral range (32768–60999 by default). Once the probe is
/// closed, the kernel may hand that port to any outgoing connection of any process (a suite makes
/// thousands) before the server the test starts has bound it: a rare "address in use" in a
/// parallel suite. The kernel never picks ports below `ip_local_port_range` for outgoing
/// connections, so these come from 20000 up to it, counted from an offset by process id (test
/// processes running side by side start apart), each returned only once a probe could bind it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const LOW: u32 = 20_000;
    static RANGE: OnceLock<(u32, u32)> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let &(span, offset) = RANGE.get_or_init(|| {
        let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32_768);
        let span = high.saturating_sub(LOW);
        (span, std::process::id().wrapping_mul(7_919) % span.max(1))
    });
    for _ in 0..span.min(2_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // No room below the ephemeral range (an unusual `ip_local_port_range`): any free port.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `n` distinct free TCP ports on loopback ([`free_port`] never returns a port twice).
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// Whether this process (and a child started with its credentials and limits) may leave Linux's
/// idle scheduling class at nice 10: CAP_SYS_NICE (bit 23 of the effective set) or RLIMIT_NICE
/// ≥ 10, read from /proc. The embedded index enters that class only when it may (tests of its
/// threads' class compare with this).
pub fn may_leave_idle_class() -> bool {
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let caps = read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let nice_limit: u64 = read("/proc/self/limits")
        .lines()
        .find(|l| l.starts_with("Max nice priority"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    caps & (1 << 23) != 0 || nice_limit >= 10
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn find_binary(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed (not on PATH, ${env} unset): run deploy/install.sh");
}

/// `max_file_store` of the test servers (see `NatsServer::spawn`).
const TEST_MAX_FILE_STORE: &str = "1TB";

/// A nats-server with JetStream, on a free port, storing under a temp dir.
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra configuration appended to the generated file, and the server's environment
    /// (values for `$VAR` references in it); empty for [`NatsServer::start`].
    extra_conf: String,
    env: Vec<(String, String)>,
    /// Leave `max_payload` at nats-server's default (1 MiB) instead of the tests' 8 MB.
    default_max_payload: bool,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with_config("", &[])
    }

    /// Like [`NatsServer::start`] with nats-server's own `max_payload` (1 MiB), as a production
    /// server usually has; the other servers raise it to 8 MB as the quick start does.
    pub fn start_with_default_max_payload() -> NatsServer {
        Self::start_inner("", &[], true)
    }

    /// Like [`NatsServer::start`], with `extra_conf` (e.g. an `authorization { ... }` block)
    /// appended to the generated configuration and `env` set for the server (for `$VAR`
    /// references). The server logs to [`NatsServer::log_path`], so tests can read its
    /// `Permissions Violation` lines.
    pub fn start_with_config(extra_conf: &str, env: &[(&str, &str)]) -> NatsServer {
        Self::start_inner(extra_conf, env, false)
    }

    fn start_inner(
        extra_conf: &str,
        env: &[(&str, &str)],
        default_max_payload: bool,
    ) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = NatsServer {
            port: free_port(),
            dir,
            child: None,
            extra_conf: extra_conf.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            default_max_payload,
        };
        // Another test may take the port between `free_port` and the server's bind: then this
        // server exits and the port answers for someone else. Try another port.
        for _ in 0..5 {
            if s.try_spawn() {
                return s;
            }
            s.port = free_port();
        }
        panic!("nats-server did not start: 5 ports were taken before it could listen");
    }

    /// The server's log file (written only for [`NatsServer::start_with_config`] servers).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "nats-server did not start on port {} (is another process listening there?)",
            self.port
        );
    }

    /// Starts the server on `self.port`; true once it is listening. It writes a ports file named
    /// with its pid when it listens (`ports_file_dir`), so a port that answers for another
    /// process is never taken for this server.
    fn try_spawn(&mut self) -> bool {
        let conf = self.dir.path().join("nats.conf");
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        // A fixed JetStream store limit: by default nats-server takes 75% of the free disk, and
        // `whale setup` reserves the streams' size caps against it (about 13 GiB by default), so
        // tests would fail with "insufficient storage" whenever this machine's disk is fuller.
        // The tests write a few MiB; the limit is only a reservation check.
        let mut text = format!(
            "listen: 127.0.0.1:{}\nports_file_dir: {:?}\n{}jetstream {{\n  store_dir: {:?}\n  max_file_store: {TEST_MAX_FILE_STORE}\n}}\n",
            self.port,
            ports_dir,
            if self.default_max_payload {
                ""
            } else {
                "max_payload: 8MB\n"
            },
            self.dir.path().join("js")
        );
        if !self.extra_conf.is_empty() {
            text += &format!("log_file: {:?}\n{}\n", self.log_path(), self.extra_conf);
        }
        std::fs::write(&conf, text).expect("write nats.conf");
        let mut child = Command::new(find_binary("nats-server", "WHALE_NATS_SERVER"))
            .arg("-c")
            .arg(&conf)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let suffix = format!("_{}.ports", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let listening = std::fs::read_dir(&ports_dir).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            });
            if listening && wait_for_port(self.port, Duration::from_secs(1)) {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the running server (for CPU/memory figures in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A redis-server on a free port, without persistence unless started with
/// [`RedisServer::start_persistent`].
pub struct RedisServer {
    pub port: u16,
    _dir: tempfile::TempDir,
    node: RedisNode,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// With an append-only file fsynced on every write (`--appendonly yes --appendfsync always`),
    /// as production Redis for the throttle must run: a killed server comes back with every
    /// bucket it acknowledged, so limits hold across a restart.
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let aof: &[&str] = match persistent {
            true => &["--appendonly", "yes", "--appendfsync", "always"],
            false => &[],
        };
        let mut node = RedisNode::data(port, dir.path().to_path_buf(), aof);
        node.spawn();
        RedisServer {
            port,
            _dir: dir,
            node,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Process id of the running server (for CPU/memory figures in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    pub fn stop(&mut self) {
        self.node.kill();
    }

    /// Starts it again after [`RedisServer::stop`] (same port; without persistence the data is
    /// gone, as after a crash; a persistent server reloads its append-only file).
    pub fn start_again(&mut self) {
        self.node.spawn();
    }
}

/// Three nats-servers on loopback joined by cluster routes (`whale-test`), each with
/// JetStream and its own store, for tests of replicated streams and node loss. Every node
/// has a monitoring port; [`NatsCluster::start`] and [`NatsCluster::start_node`] return once the
/// cluster has a JetStream meta leader. Stopped on drop.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<ClusterNode>,
}

/// One node of a [`NatsCluster`]: client, route and monitoring ports, and the process.
struct ClusterNode {
    name: String,
    port: u16,
    route_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three nodes (`n1`, `n2`, `n3`) and waits for a meta leader. Ports are picked
    /// free, but another process can take one before the server binds it: then the whole
    /// cluster is started again on new ports (up to three times).
    pub fn start() -> NatsCluster {
        let mut last = String::new();
        for _ in 0..3 {
            let ports = free_ports(9);
            let nodes = (0..3)
                .map(|i| ClusterNode {
                    name: format!("n{}", i + 1),
                    port: ports[3 * i],
                    route_port: ports[3 * i + 1],
                    http_port: ports[3 * i + 2],
                    child: None,
                })
                .collect();
            let mut c = NatsCluster {
                dir: tempfile::tempdir().expect("temp dir"),
                nodes,
            };
            for i in 0..c.nodes.len() {
                c.spawn(i);
            }
            match (0..c.nodes.len())
                .try_for_each(|i| c.wait_joined(i))
                .and_then(|()| c.wait_all_peers_current())
            {
                Ok(()) => return c,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        let node = &self.nodes[i];
        let dir = self.dir.path().join(&node.name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
                 max_payload: 8MB\njetstream {{\n  store_dir: {store:?}\n  max_file_store: {TEST_MAX_FILE_STORE}\n}}\n\
                 cluster {{\n  name: whale-test\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                name = node.name,
                port = node.port,
                http = node.http_port,
                store = dir.join("js"),
                route = node.route_port,
                routes = routes.join(", "),
            ),
        )
        .expect("write nats.conf");
        let log = std::fs::File::create(dir.join("nats.log")).expect("node log");
        let child = Command::new(find_binary("nats-server", "WHALE_NATS_SERVER"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.nodes[i].child = Some(child);
    }

    /// Waits until node `i` serves JetStream and knows a meta leader; why not otherwise.
    fn wait_joined(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(Child::try_wait) {
                self.nodes[i].child = None;
                return Err(format!(
                    "nats node {} exited ({status}); log:\n{}",
                    self.nodes[i].name,
                    self.log(i)
                ));
            }
            let node = &self.nodes[i];
            let healthy = http_get(node.http_port, "/healthz?js-enabled-only=true")
                .is_some_and(|(status, _)| status == 200);
            if healthy && self.meta_leader_seen_by(i).is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "nats node {} did not join a cluster with a JetStream meta leader within 60 s; log:\n{}",
            self.nodes[i].name,
            self.log(i)
        ))
    }

    /// Waits until the meta leader sees every other node as a current, online peer: a meta
    /// leader alone is not enough to place a replicated stream ("no suitable peers for
    /// placement, peer offline" when `whale setup` came too early on a busy machine).
    fn wait_all_peers_current(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if (0..self.nodes.len()).any(|i| self.peers_current_seen_by(i)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the nats cluster's meta peers did not all become current within 60 s; log of n1:\n{}",
            self.log(0)
        ))
    }

    /// Whether node `i` knows a meta leader and sees the other nodes as current, online peers
    /// (the leader reports its peers' state; a follower may list none).
    fn peers_current_seen_by(&self, i: usize) -> bool {
        let Some((200, body)) = http_get(self.nodes[i].http_port, "/jsz") else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let meta = &v["meta_cluster"];
        let leader = meta["leader"].as_str().unwrap_or("");
        let replicas = meta["replicas"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        !leader.is_empty()
            && replicas.len() == self.nodes.len() - 1
            && replicas
                .iter()
                .all(|r| r["current"] == true && r["offline"] != true)
    }

    /// The meta leader's server name as node `i` sees it (`/jsz`).
    fn meta_leader_seen_by(&self, i: usize) -> Option<String> {
        let (status, body) = http_get(self.nodes[i].http_port, "/jsz")?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let leader = v["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    /// Client URLs of every node, comma-separated (for `WHALE_NATS_URL`).
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// Client URLs of every node.
    pub fn url_list(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Server name of node `i` (`n1`, `n2`, `n3`): what stream info reports as leader/peer.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Kills node `i` with SIGKILL (no lame duck, no flush).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again (same ports, same store) and waits until it has rejoined and sees
    /// a meta leader.
    pub fn start_node(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "node {} is running",
            self.nodes[i].name
        );
        self.spawn(i);
        if let Err(e) = self.wait_joined(i) {
            panic!("{e}");
        }
    }

    /// Names of the clients connected to node `i` (`/connz`); empty when it is down.
    pub fn client_names(&self, i: usize) -> Vec<String> {
        let Some((200, body)) = http_get(self.nodes[i].http_port, "/connz?limit=1000") else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["connections"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The server's log of node `i` (stderr), for failure messages.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(&self.nodes[i].name).join("nats.log"))
            .unwrap_or_default()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A blocking `GET` on a loopback port: status and body (HTTP/1.0, so never chunked).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// What tests (and the benchmarks measuring NATS itself) do to NATS beyond what whale does:
/// publish as a raw producer would, set up streams and buckets by hand, ask the server
/// directly. Only with feature `testkit`; product code goes through [`crate::Nats`]'s
/// own operations, [`crate::kv`], [`crate::history`] and [`crate::Window`].
impl crate::Nats {
    /// Publishes `payload` on `subject` with exactly `headers` (no msg id unless one is given as
    /// `Nats-Msg-Id`), as any NATS client would, and waits for JetStream's ack.
    pub async fn publish_raw(
        &self,
        subject: impl Into<String>,
        headers: &[(&str, &str)],
        payload: impl Into<bytes::Bytes>,
    ) -> anyhow::Result<()> {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        self.js
            .publish_with_headers(subject.into(), h, payload.into())
            .await?
            .await?;
        Ok(())
    }

    /// A core NATS request (no JetStream): the reply's payload.
    pub async fn request_raw(
        &self,
        subject: impl Into<String>,
        payload: impl Into<bytes::Bytes>,
    ) -> anyhow::Result<bytes::Bytes> {
        let r = self.client.request(subject.into(), payload.into()).await?;
        Ok(r.payload)
    }

    /// The payloads of core NATS messages on `subject` from now on (the subscription is known
    /// to the server when this returns).
    pub async fn subscribe_raw(
        &self,
        subject: impl Into<String>,
    ) -> anyhow::Result<futures::stream::BoxStream<'static, bytes::Bytes>> {
        use futures::StreamExt as _;
        let sub = self.client.subscribe(subject.into()).await?;
        self.client.flush().await?;
        Ok(sub.map(|m| m.payload).boxed())
    }

    /// Creates a plain stream `name` on `subjects` (JetStream defaults otherwise).
    pub async fn create_stream_raw(&self, name: &str, subjects: &[&str]) -> anyhow::Result<()> {
        self.js
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Creates KV bucket `bucket` keeping `history` revisions per key and nothing else set (as
    /// an old `whale setup` made it).
    pub async fn create_bucket_raw(&self, bucket: &str, history: i64) -> anyhow::Result<()> {
        self.js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: bucket.into(),
                history,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Deletes stream `name` and everything it holds.
    pub async fn delete_stream(&self, name: &str) -> anyhow::Result<()> {
        self.js.delete_stream(name).await?;
        Ok(())
    }
}

/// Runs `redis-cli -p <port> <args>`; its stdout, trimmed. Panics (with how to install it)
/// when redis-cli is missing.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_tls(port, None, args)
}

/// [`redis_cli`] over TLS when `tls` is given (trusting its CA), for the TLS-only servers of
/// [`RedisCluster::start_tls`] and [`RedisSentinels::start_tls`].
pub fn redis_cli_tls(port: u16, tls: Option<&RedisTls>, args: &[&str]) -> String {
    let out = Command::new(find_binary("redis-cli", "WHALE_REDIS_CLI"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(tls.map(RedisTls::cli_args).unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// TLS files for test Redis servers (made by the test, e.g. with rcgen): the servers listen
/// only on TLS (`--port 0 --tls-port`), also between themselves (cluster bus, replication,
/// Sentinel to data nodes), and do not ask clients for certificates.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The CA (PEM) that signed `cert`; clients trust it.
    pub ca: PathBuf,
    /// The servers' certificate (PEM, names 127.0.0.1) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl RedisTls {
    /// Server arguments: TLS on `port`, plain TCP off.
    fn server_args(&self, port: u16) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &p(&self.cert),
            "--tls-key-file",
            &p(&self.key),
            "--tls-ca-cert-file",
            &p(&self.ca),
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
            "--tls-cluster",
            "yes",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
        ]
    }
}

/// One redis-server (or Sentinel) process of a [`RedisCluster`] or [`RedisSentinels`]: its
/// port, arguments and own directory, so that it can be killed and started again the same way.
struct RedisNode {
    port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisNode {
    /// A data node on loopback `port` keeping its files in `dir`, without snapshots or an
    /// append-only file unless `extra` asks (later arguments win), not started yet.
    fn data(port: u16, dir: PathBuf, extra: &[&str]) -> RedisNode {
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--port", &port.to_string()]
            .into_iter()
            .chain(["--save", "", "--appendonly", "no"])
            .map(str::to_owned)
            .collect();
        args.extend(["--dir".to_owned(), dir.display().to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        RedisNode {
            port,
            args,
            dir,
            child: None,
        }
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("node dir");
        let child = Command::new(find_binary("redis-server", "WHALE_REDIS_SERVER"))
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis-server did not start on port {}",
            self.port
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters without replicas on loopback, made the way an operator
/// makes one (`redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`), each node
/// with its own cluster bus port and directory. Ready (every slot served) when `start` returns;
/// stopped on drop.
pub struct RedisCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<RedisNode>,
    tls: Option<RedisTls>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with(None)
    }

    /// The same cluster speaking only TLS (clients and cluster bus); [`RedisCluster::url`]
    /// is `rediss+cluster://…`.
    pub fn start_tls(tls: &RedisTls) -> RedisCluster {
        Self::start_with(Some(tls.clone()))
    }

    fn start_with(tls: Option<RedisTls>) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(6);
        let mut nodes: Vec<RedisNode> = (0..3)
            .map(|i| {
                let (port, bus) = (ports[i], ports[i + 3]);
                let bus = bus.to_string();
                RedisNode::data(
                    port,
                    dir.path().join(format!("node-{port}")),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        if let Some(t) = &tls {
            for n in &mut nodes {
                let args = t.server_args(n.port);
                n.args.extend(args);
            }
        }
        for n in &mut nodes {
            n.spawn();
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(find_binary("redis-cli", "WHALE_REDIS_CLI"))
            .args(tls.as_ref().map(RedisTls::cli_args).unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster {
            _dir: dir,
            nodes,
            tls,
        };
        for n in &c.nodes {
            let ok = wait_until(Duration::from_secs(20), || {
                c.cli(n.port, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
            assert!(
                ok,
                "Redis Cluster node {} never reached cluster_state:ok",
                n.port
            );
        }
        c
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>` (`rediss+cluster` with TLS).
    pub fn url(&self) -> String {
        let s = if self.tls.is_some() { "s" } else { "" };
        format!("redis{s}+cluster://{}", self.seeds())
    }

    /// `redis-cli` on the node at `port` (over TLS if the cluster speaks it).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli_tls(port, self.tls.as_ref(), args)
    }

    /// The port of the master serving `slot` now.
    pub fn owner_of(&self, slot: u16) -> u16 {
        let nodes = self.cli(self.nodes[0].port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let serves = f.iter().skip(8).any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>() == Ok(slot),
            });
            if serves && f.len() > 2 && f[2].contains("master") {
                let port = f[1]
                    .split(['@', ','])
                    .next()
                    .and_then(|a| a.rsplit(':').next());
                return port.and_then(|p| p.parse().ok()).expect("node address");
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// Moves `slot` from the master on `from` to the one on `to` as `redis-cli --cluster
    /// reshard` does, step by step: the target marks it IMPORTING, the source MIGRATING, the
    /// keys go over `batch` at a time with `MIGRATE` (pausing `pause` after each, so clients
    /// meet the slot half-moved: `ASK` from the source, `TRYAGAIN` for keys split between
    /// the two), then every master is told the new owner (clients of the old one get `MOVED`).
    /// Returns how many keys moved.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16, batch: usize, pause: Duration) -> usize {
        let id = |port: u16| self.cli(port, &["CLUSTER", "MYID"]);
        let (from_id, to_id) = (id(from), id(to));
        let slot_s = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            let out = self.cli(port, args);
            assert_eq!(out, "OK", "{args:?} on {port}: {out}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        let mut moved = 0;
        loop {
            let keys = self.cli(
                from,
                &["CLUSTER", "GETKEYSINSLOT", &slot_s, &batch.to_string()],
            );
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let out = self.cli(from, &args);
            assert!(out == "OK" || out == "NOKEY", "MIGRATE on {from}: {out}");
            moved += keys.len();
            std::thread::sleep(pause);
        }
        // The new owner first, then the old one, then the rest (as redis-cli does).
        ok(to, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        for n in &self.nodes {
            if n.port != from && n.port != to {
                ok(n.port, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
            }
        }
        moved
    }

    /// `127.0.0.1:<p1>,...` (every node).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client ports of the nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Process ids of the nodes (for CPU/memory figures in benchmarks).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(RedisNode::pid).collect()
    }
}

/// Redis with Sentinel on loopback: one master, one replica and three Sentinels watching
/// them under the name [`RedisSentinels::MASTER`] (quorum 2, a master is down after 1 s). A
/// killed node can be started again; Sentinel makes it a replica of whoever is master then.
/// Ready when `start` returns: the replica is in sync and every Sentinel knows the replica and
/// the other two Sentinels, so a failover can happen. Stopped on drop.
pub struct RedisSentinels {
    _dir: tempfile::TempDir,
    /// The two data nodes (first started as master, second as its replica).
    data: Vec<RedisNode>,
    sentinels: Vec<RedisNode>,
    tls: Option<RedisTls>,
}

impl RedisSentinels {
    /// The master name the Sentinels know.
    pub const MASTER: &'static str = "whale";

    pub fn start() -> RedisSentinels {
        Self::start_with(None)
    }

    /// The same setup speaking only TLS: Sentinels, data nodes, replication and Sentinel to
    /// data nodes; [`RedisSentinels::url`] is `rediss+sentinel://…`.
    pub fn start_tls(tls: &RedisTls) -> RedisSentinels {
        Self::start_with(Some(tls.clone()))
    }

    fn start_with(tls: Option<RedisTls>) -> RedisSentinels {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(5);
        let data_node = |port: u16, replica_of: Option<u16>| {
            let master = replica_of.map(|m| m.to_string());
            let replica: Vec<&str> = match &master {
                Some(m) => vec!["--replicaof", "127.0.0.1", m],
                None => vec![],
            };
            let mut n = RedisNode::data(port, dir.path().join(format!("redis-{port}")), &replica);
            if let Some(t) = &tls {
                n.args.extend(t.server_args(port));
            }
            n
        };
        let mut data = vec![
            data_node(ports[0], None),
            data_node(ports[1], Some(ports[0])),
        ];
        for n in &mut data {
            n.spawn();
        }
        let mut sentinels: Vec<RedisNode> = ports[2..]
            .iter()
            .map(|&port| {
                let node_dir = dir.path().join(format!("sentinel-{port}"));
                std::fs::create_dir_all(&node_dir).expect("sentinel dir");
                let conf = node_dir.join("sentinel.conf");
                // Over TLS the Sentinel listens on its TLS port only and reaches the data
                // nodes over TLS (`tls-replication yes`).
                let tls_conf = match &tls {
                    Some(t) => format!(
                        "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                         tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                        t.cert.display(),
                        t.key.display(),
                        t.ca.display()
                    ),
                    None => String::new(),
                };
                std::fs::write(
                    &conf,
                    format!(
                        "bind 127.0.0.1\nport {port}\ndir {}\n\
                         sentinel monitor {m} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {m} 1000\n\
                         sentinel failover-timeout {m} 10000\n\
                         sentinel parallel-syncs {m} 1\n{tls_conf}",
                        node_dir.display(),
                        m = Self::MASTER,
                        master = ports[0],
                    ),
                )
                .expect("write sentinel.conf");
                RedisNode {
                    port,
                    args: vec![conf.display().to_string(), "--sentinel".into()],
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        for s in &mut sentinels {
            s.spawn();
        }
        let s = RedisSentinels {
            _dir: dir,
            data,
            sentinels,
            tls,
        };
        s.wait_ready(s.data[0].port, Duration::from_secs(30));
        s
    }

    /// `redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/whale`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let s = if self.tls.is_some() { "s" } else { "" };
        format!("redis{s}+sentinel://{}/{}", hosts.join(","), Self::MASTER)
    }

    /// `redis-cli` on the Sentinel or data node at `port` (over TLS if the setup speaks it).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli_tls(port, self.tls.as_ref(), args)
    }

    /// The master's port as the first Sentinel that answers sees it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels
            .iter()
            .find_map(|s| self.master_seen_by(s.port))
    }

    /// The master's port as the Sentinel on `port` sees it.
    fn master_seen_by(&self, port: u16) -> Option<u16> {
        let out = self.cli(port, &["SENTINEL", "get-master-addr-by-name", Self::MASTER]);
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Kills the current master (SIGKILL: no goodbye to anyone); returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port().expect("a Sentinel names the master");
        let node = self
            .data
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the master is one of ours");
        node.kill();
        port
    }

    /// A planned switch (`SENTINEL FAILOVER`): the replica is promoted and the master demoted.
    /// Returns the old master's port; see [`RedisSentinels::wait_failover`].
    pub fn failover(&self) -> u16 {
        let old = self.master_port().expect("a Sentinel names the master");
        let out = self.cli(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", Self::MASTER],
        );
        assert_eq!(out, "OK", "SENTINEL FAILOVER refused: {out}");
        old
    }

    /// Starts a killed data node again (empty: no persistence); the Sentinels make it a
    /// replica of the current master.
    pub fn restart(&mut self, port: u16) {
        let node = self
            .data
            .iter_mut()
            .find(|n| n.port == port)
            .expect("one of ours");
        node.spawn();
    }

    /// Waits until every Sentinel names a master other than `old` and returns it.
    pub fn wait_failover(&self, old: u16, timeout: Duration) -> u16 {
        let mut new = None;
        let ok = wait_until(timeout, || {
            let seen: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| self.master_seen_by(s.port))
                .collect();
            new = seen[0];
            seen.iter()
                .all(|p| p.is_some() && *p == seen[0] && *p != Some(old))
        });
        assert!(
            ok,
            "the Sentinels did not agree on a new master within {timeout:?}"
        );
        new.expect("a new master")
    }

    /// Waits until `master` has a replica in sync and every Sentinel knows one replica and the
    /// other two Sentinels.
    pub fn wait_ready(&self, master: u16, timeout: Duration) {
        let ok = wait_until(timeout, || {
            let info = self.cli(master, &["INFO", "replication"]);
            let synced = info.contains("role:master")
                && info
                    .lines()
                    .any(|l| l.starts_with("slave0:") && l.contains("state=online"));
            synced
                && self.sentinels.iter().all(|s| {
                    let m = self.cli(s.port, &["SENTINEL", "master", Self::MASTER]);
                    let field = |name: &str| {
                        let mut lines = m.lines();
                        lines.find(|l| l.trim() == name)?;
                        lines.next().map(|v| v.trim().to_owned())
                    };
                    field("num-slaves").as_deref() == Some("1")
                        && field("num-other-sentinels").as_deref() == Some("2")
                        && field("port").as_deref() == Some(master.to_string().as_str())
                })
        });
        assert!(
            ok,
            "Redis Sentinel setup not ready (replica in sync, 3 Sentinels agreeing on master {master}) within {timeout:?}"
        );
    }
}
