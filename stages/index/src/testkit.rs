//! A real OpenSearch 2.19 node for tests and benchmarks (feature `testkit`): the Java launcher in
//! `deploy/opensearch` (built by `deploy/install.sh`) started on a free port with a temporary
//! home, stopped on drop. Missing Java or jars fail loudly with the fix: a test that needs
//! OpenSearch never skips silently.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use whale_kernel::testkit::free_port;

/// Where the launcher and its jars are: `$WHALE_OPENSEARCH_DIR`, else `deploy/opensearch/target`.
pub fn launcher_dir() -> PathBuf {
    match std::env::var_os("WHALE_OPENSEARCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/opensearch/target"),
    }
}

fn java() -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let p = PathBuf::from(home).join("bin/java");
        if p.is_file() {
            return p;
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("java");
        if p.is_file() {
            return p;
        }
    }
    panic!("java is not installed (not on PATH, $JAVA_HOME unset): OpenSearch tests need Java 17; run deploy/install.sh");
}

/// A single-node OpenSearch on a free port; killed on drop.
pub struct OpenSearchNode {
    pub port: u16,
    home: tempfile::TempDir,
    child: Option<(Child, ChildStdin)>,
}

impl OpenSearchNode {
    /// Starts a node and waits until the cluster is usable (up to 3 minutes on a busy machine).
    pub fn start() -> OpenSearchNode {
        let mut n = OpenSearchNode {
            port: free_port(),
            home: tempfile::Builder::new()
                .prefix("whale-opensearch")
                .tempdir()
                .expect("temp dir"),
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let dir = launcher_dir();
        let jar = dir.join("whale-opensearch.jar");
        assert!(
            jar.is_file() && dir.join("lib").is_dir(),
            "the OpenSearch test launcher is not built ({} missing): run deploy/install.sh \
             (or `mvn -q -f deploy/opensearch/pom.xml package`)",
            jar.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.path().join("node.log"))
            .expect("node log");
        let mut child = Command::new(java())
            .arg("-Xms256m")
            .arg("-Xmx512m")
            .arg("-XX:+UseSerialGC")
            .arg("-cp")
            .arg(format!("{}:{}/lib/*", jar.display(), dir.display()))
            .arg("whale.OpenSearchNode")
            .arg(self.port.to_string())
            .arg(self.home.path().join("home"))
            .arg("--stdin-watch")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn java");
        let stdin = child.stdin.take().expect("stdin");
        self.child = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok((200, _)) = get(
                self.port,
                "/_cluster/health?wait_for_status=yellow&timeout=5s",
            ) {
                return;
            }
            if let Some((c, _)) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "OpenSearch exited ({status}) before it was ready:\n{}",
                        self.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "OpenSearch did not become ready on port {} within 180 s:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.home.path().join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the node (SIGKILL), as a crash or an outage would.
    pub fn stop(&mut self) {
        if let Some((mut c, stdin)) = self.child.take() {
            drop(stdin);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node again on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the node is still running");
        self.spawn();
    }

    /// A blocking GET on the node: status and body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        get(self.port, path)
    }
}

impl Drop for OpenSearchNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Minimal blocking HTTP/1.1 GET on loopback.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
