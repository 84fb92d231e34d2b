//! Test harness: real servers on free ports with temporary directories, stopped on drop
//! (feature `testkit`). Used by every crate's tests and by the integration suite; no mocks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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

/// A nats-server with JetStream, on a free port, storing under a temp dir.
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = NatsServer {
            port: free_port(),
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n",
                self.port,
                self.dir.path().join("js")
            ),
        )
        .expect("write nats.conf");
        let child = Command::new(find_binary("nats-server", "WHALE_NATS_SERVER"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "nats-server did not start on port {}",
            self.port
        );
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
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
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
        let mut s = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            persistent,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let aof: &[&str] = match self.persistent {
            true => &["--appendonly", "yes", "--appendfsync", "always"],
            false => &["--appendonly", "no"],
        };
        let child = Command::new(find_binary("redis-server", "WHALE_REDIS_SERVER"))
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", ""])
            .args(aof)
            .arg("--dir")
            .arg(self.dir.path())
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

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after [`RedisServer::stop`] (same port; without persistence the data is
    /// gone, as after a crash; a persistent server reloads its append-only file).
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
