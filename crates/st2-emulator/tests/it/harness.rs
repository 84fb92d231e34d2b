//! Test plumbing: start the built `st2-emulator` on a free port (killed on drop), talk to its
//! admin endpoints, and run the official `st2` CLI against it with a throwaway HOME.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const ACTIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/actions.yaml");
pub const KEY: &str = "s3cr3t-KEY-0123456789";

/// A running emulator.
pub struct Emulator {
    child: Child,
    pub port: u16,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts the emulator with the test actions file, requiring [`KEY`].
    pub fn start() -> Self {
        Self::start_with(&["--actions", ACTIONS, "--api-key", KEY])
    }

    pub fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_st2-emulator"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn st2-emulator");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from st2-emulator: {line:?}"));
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Self {
            child,
            port,
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/_emulator/{path}", self.base()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().await.expect("admin json")
    }

    pub async fn stats(&self) -> Value {
        self.admin(reqwest::Method::GET, "stats", None).await
    }

    pub async fn faults(&self, body: Value) {
        self.admin(reqwest::Method::POST, "faults", Some(body))
            .await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The official CLI: `WHALE_ST2_CLI`, else the one deploy/install.sh puts in .whale/tools.
pub fn st2_cli() -> PathBuf {
    let path = std::env::var_os("WHALE_ST2_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.whale/tools/bin/st2"
            ))
        });
    assert!(
        path.exists(),
        "the official StackStorm CLI is missing at {}: run deploy/install.sh (installs st2client 3.9.0) \
         or set WHALE_ST2_CLI to an st2 binary",
        path.display()
    );
    path
}

/// The output of one CLI run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "st2 -j printed no JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// The CLI pointed at one emulator, with its own HOME.
pub struct Cli {
    home: tempfile::TempDir,
    port: u16,
    key: String,
}

impl Cli {
    pub fn new(emu: &Emulator) -> Self {
        Self {
            home: tempfile::tempdir().expect("temp HOME"),
            port: emu.port,
            key: KEY.into(),
        }
    }

    pub fn with_key(mut self, key: &str) -> Self {
        self.key = key.into();
        self
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let base = format!("http://127.0.0.1:{}", self.port);
        let mut cmd = tokio::process::Command::new(st2_cli());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("ST2_API_URL", format!("{base}/api/v1"))
            .env("ST2_AUTH_URL", format!("{base}/auth/v1"))
            .env("ST2_STREAM_URL", format!("{base}/stream/v1"))
            .env("ST2_API_KEY", &self.key)
            .env("ST2_CLI_SKIP_CONFIG", "1")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().await.expect("run st2");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: strip_ansi(&String::from_utf8_lossy(&out.stdout)),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `st2 run -a ...` and the execution id it printed.
    pub async fn run_async(&self, action_and_params: &[&str]) -> String {
        let mut args = vec!["run", "-a"];
        args.extend_from_slice(action_and_params);
        let r = self.run(&args).await;
        assert_eq!(r.code, 0, "st2 run -a failed: {}{}", r.stdout, r.stderr);
        r.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("st2 execution get "))
            .unwrap_or_else(|| panic!("no execution id in: {}", r.stdout))
            .trim()
            .to_owned()
    }
}

/// Removes terminal colour codes (the CLI colours status words).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `check` every 50 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
