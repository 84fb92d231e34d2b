//! Issue 13 "TLS where a deployment needs it", against the real `whale run`: certificates made
//! at test time by a throwaway CA (rcgen); the HTTP listener serves them and picks up a
//! replaced certificate without a restart.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::harness::*;

/// A certificate authority made for one test.
pub struct TestCa {
    /// The CA certificate (PEM), what clients trust.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and its key (PEM) for `names` (DNS names or IPs): a server
    /// certificate, or a client one when `client`.
    pub fn leaf(&self, names: &[&str], client: bool) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA (`ca.pem`) and a server leaf (`<stem>.crt`, `<stem>.key`) into `dir`.
    pub fn write_server(&self, dir: &Path, stem: &str, names: &[&str]) {
        let (cert, key) = self.leaf(names, false);
        replace(&dir.join(format!("{stem}.key")), &key);
        replace(&dir.join(format!("{stem}.crt")), &cert);
        std::fs::write(dir.join("ca.pem"), &self.pem).unwrap();
    }
}

/// Writes `path` by rename, as a Secret mount or cert-manager replaces a file.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client that trusts only `ca` and opens a new connection for every request (it may still
/// resume a TLS session it had: use a new client to see the certificate served now).
pub fn client_trusting(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Issue 13 "TLS on the HTTP listener (cert/key files, reloaded on change)": whale serves
/// HTTPS with the configured certificate; replacing the files makes new connections get the
/// new certificate, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_the_certificate_and_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new("whale test CA one");
    first.write_server(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let mut env = Env::new();
    env.set(
        "WHALE_HTTP_TLS_CERT_FILE",
        dir.path().join("server.crt").to_str().unwrap(),
    );
    env.set(
        "WHALE_HTTP_TLS_KEY_FILE",
        dir.path().join("server.key").to_str().unwrap(),
    );
    env.prepare();
    let log = dir.path().join("whale.log");
    let port = env.http_port;
    let mut w = env.spawn_on("ingest", port, &log, &[]);
    let url = format!("https://localhost:{port}/healthz");
    let old = client_trusting(&first);
    let up = eventually(Duration::from_secs(30), || async {
        old.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        up,
        "https did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let r = old
        .get(format!("https://127.0.0.1:{port}/readyz"))
        .send()
        .await;
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200), "by IP too");
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status() != 200),
        "plain HTTP is not served on the TLS port: {plain:?}"
    );
    let second = TestCa::new("whale test CA two");
    let new = client_trusting(&second);
    assert!(
        new.get(&url).send().await.is_err(),
        "a client trusting another CA is refused"
    );

    // Renewal: new files from another CA; whale keeps running.
    second.write_server(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let switched = eventually(Duration::from_secs(10), || async {
        new.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        switched,
        "new connections get the new certificate: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // A fresh client (no TLS session to resume from before the renewal) that trusts only the
    // first CA is refused: the certificate now served is the second CA's.
    let e = client_trusting(&first)
        .get(&url)
        .send()
        .await
        .expect_err("the old CA no longer fits");
    eprintln!("client trusting the first CA after the renewal: {e:?}");
    assert!(w.exited().is_none(), "no restart");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("TLS certificate files changed"), "{text}");

    // A key that does not fit the certificate: the previous certificate stays in use.
    let (_, stray_key) = second.leaf(&["localhost"], false);
    replace(&dir.path().join("server.key"), &stray_key);
    assert_eq!(
        client_trusting(&second)
            .get(&url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        Some(200),
        "a mismatched key keeps the previous certificate"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("keeping the previous certificate"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "key material in the log");
}

/// `whale <args>` against `nats_url` with `env`, killed after 30 s: (success, stderr).
fn whale_with(nats_url: &str, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_whale"));
    c.args(args)
        .env_remove("WHALE_CONFIG")
        .env("WHALE_NATS_URL", nats_url)
        .env("WHALE_LOG", "warn")
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    });
    let out = child.wait_with_output().unwrap();
    drop(killer);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 13 "client TLS with a custom CA" for NATS: a nats-server with a `tls {}` block signed
/// by a private CA and requiring client certificates (`verify: true`). whale connects with
/// `WHALE_NATS_TLS_CA` + `WHALE_NATS_TLS_CERT`/`_KEY`; without the client certificate, or
/// trusting another CA, it is refused.
#[test]
fn whale_reaches_nats_over_tls_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("whale test NATS CA");
    ca.write_server(d, "nats", &["localhost", "127.0.0.1"]);
    let (cert, key) = ca.leaf(&["whale"], true);
    std::fs::write(d.join("whale.crt"), cert).unwrap();
    std::fs::write(d.join("whale.key"), key).unwrap();
    let other = TestCa::new("another CA");
    std::fs::write(d.join("other.pem"), &other.pem).unwrap();
    let server = NatsServer::start_with_config(
        &format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 5\n}}",
            d.join("nats.crt"),
            d.join("nats.key"),
            d.join("ca.pem")
        ),
        &[],
    );
    let url = format!(
        "tls://127.0.0.1:{}",
        server.url().rsplit(':').next().unwrap()
    );
    let path = |f: &str| d.join(f).to_str().unwrap().to_owned();
    let full = [
        ("WHALE_NATS_TLS_CA", path("ca.pem")),
        ("WHALE_NATS_TLS_CERT", path("whale.crt")),
        ("WHALE_NATS_TLS_KEY", path("whale.key")),
    ];
    let (ok, err) = whale_with(&url, &["setup"], &full);
    assert!(
        ok,
        "setup over TLS with the CA and a client certificate: {err}"
    );
    let (ok, err) = whale_with(&url, &["status"], &full);
    assert!(ok, "status over TLS: {err}");

    let (ok, err) = whale_with(&url, &["status"], &full[..1]);
    assert!(!ok, "no client certificate, the server requires one");
    eprintln!(
        "without a client certificate: {}",
        err.lines().last().unwrap_or("")
    );
    let wrong_ca = [
        ("WHALE_NATS_TLS_CA", path("other.pem")),
        full[1].clone(),
        full[2].clone(),
    ];
    let (ok, err) = whale_with(&url, &["status"], &wrong_ca);
    assert!(!ok, "a server certificate from a CA whale does not trust");
    eprintln!("trusting another CA: {}", err.lines().last().unwrap_or(""));
    let (ok, err) = whale_with(&url, &["status"], &full[..2]);
    assert!(!ok);
    assert!(
        err.contains("set both nats.tls_cert and nats.tls_key"),
        "{err}"
    );
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

/// A redis-server serving TLS only, requiring client certificates; killed on drop.
struct TlsRedis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(certs: &Path) -> TlsRedis {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(certs.join("redis.crt"))
            .arg("--tls-key-file")
            .arg(certs.join("redis.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.join("ca.pem"))
            .args([
                "--tls-auth-clients",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (deploy/install.sh installs it; Debian's supports TLS)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server --tls-port did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 13 "client TLS with a custom CA" for Redis: `rediss://` to a redis-server whose
/// certificate comes from a private CA and which requires client certificates. The throttle
/// stage's Redis probe (`/readyz`) answers through TLS with `WHALE_REDIS_TLS_CA` and the client
/// certificate, and fails when whale trusts another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_reaches_redis_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("whale test Redis CA");
    ca.write_server(d, "redis", &["localhost", "127.0.0.1"]);
    let (cert, key) = ca.leaf(&["whale"], true);
    std::fs::write(d.join("whale.crt"), cert).unwrap();
    std::fs::write(d.join("whale.key"), key).unwrap();
    std::fs::write(d.join("other.pem"), TestCa::new("another CA").pem).unwrap();
    let redis = TlsRedis::start(d);
    let path = |f: &str| d.join(f).to_str().unwrap().to_owned();

    let mut env = Env::new();
    env.set(
        "WHALE_REDIS_URL",
        &format!("rediss://127.0.0.1:{}", redis.port),
    );
    env.prepare();
    let readyz = |port: u16| async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
        match r {
            Ok(r) => (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            ),
            Err(_) => (0, serde_json::Value::Null),
        }
    };

    let good_port = free_port();
    let log = d.join("good.log");
    let _good = env.spawn_on(
        "throttle",
        good_port,
        &log,
        &[
            ("WHALE_REDIS_TLS_CA", &path("ca.pem")),
            ("WHALE_REDIS_TLS_CERT", &path("whale.crt")),
            ("WHALE_REDIS_TLS_KEY", &path("whale.key")),
        ],
    );
    let up = eventually(Duration::from_secs(30), || async {
        readyz(good_port).await.0 == 200
    })
    .await;
    assert!(
        up,
        "throttle over rediss:// with the private CA: {} {}",
        readyz(good_port).await.1,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!(
        "with the CA and a client certificate: {}",
        readyz(good_port).await.1["dependencies"]
    );

    let bad_port = free_port();
    let bad_log = d.join("bad.log");
    let _bad = env.spawn_on(
        "throttle",
        bad_port,
        &bad_log,
        &[
            ("WHALE_REDIS_TLS_CA", &path("other.pem")),
            ("WHALE_REDIS_TLS_CERT", &path("whale.crt")),
            ("WHALE_REDIS_TLS_KEY", &path("whale.key")),
        ],
    );
    let answered = eventually(Duration::from_secs(30), || async {
        readyz(bad_port).await.0 == 503
    })
    .await;
    let (code, body) = readyz(bad_port).await;
    eprintln!("trusting another CA: {code} {}", body["dependencies"]);
    assert!(
        answered && code == 503,
        "not ready when the server's CA is not trusted: {code} {body}"
    );
    let text = std::fs::read_to_string(&bad_log).unwrap_or_default()
        + &std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("PRIVATE KEY"), "key material in the log");
}

/// A TLS terminator in front of `upstream` (`host:port`), with the certificate files `cert` and
/// `key`, served by whale's own HTTPS listener code. Returns its port.
async fn tls_front(cert: &Path, key: &Path, upstream: String) -> u16 {
    use axum::serve::Listener as _;
    let config = whale_kernel::tls::server_config(std::sync::Arc::new(
        whale_kernel::tls::ReloadingCert::new(cert, key).unwrap(),
    ))
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let mut listener = whale_kernel::tls::TlsListener::new(tcp, config).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tls, _) = listener.accept().await;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    port
}

fn admitted_task(i: usize) -> whale_kernel::records::Task {
    let event_id = format!("ev-tls-{i}");
    whale_kernel::records::Task {
        task_id: whale_kernel::records::task_id(&event_id, "tls-test"),
        event_id,
        event_type: "vm.disk_usage".into(),
        rule: "tls-test".into(),
        rule_version: "v1".into(),
        action: "ops.clean_disk".into(),
        parameters: serde_json::json!({"host": format!("web-{i}")}),
        throttle: None,
        cluster: "default".into(),
        approval: None,
        notify: Vec::new(),
        result_event: false,
        replay: None,
        created: time::OffsetDateTime::now_utc(),
        item: None,
        labels: Default::default(),
    }
}

/// Issue 13 "client TLS with a custom CA" for StackStorm: a cluster behind HTTPS with a
/// certificate from a private CA (the emulator behind a TLS terminator). Without
/// `[clusters.default] ca_file` dispatch refuses the certificate (dead letter naming it);
/// with it the execution is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_reaches_stackstorm_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("whale test StackStorm CA");
    ca.write_server(d, "st2", &["localhost", "127.0.0.1"]);
    let st2 = Emulator::start(&["--any-action"]);
    let upstream = st2
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let port = tls_front(&d.join("st2.crt"), &d.join("st2.key"), upstream).await;
    let write_cfg = |ca_line: &str| {
        let p = d.join("whale.toml");
        std::fs::write(
            &p,
            format!(
                "[dispatch]\nmax_attempts = 1\n\n[clusters.default]\nurl = \"https://localhost:{port}\"\napi_key_env = \"TEST_ST2_KEY\"\n{ca_line}"
            ),
        )
        .unwrap();
        p
    };
    let mut env = Env::new();
    env.set("TEST_ST2_KEY", "k");
    let cfg = write_cfg("");
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.prepare();
    let nats = env.connect().await;

    let log = d.join("no-ca.log");
    let mut w = env.spawn_on("dispatch", env.http_port, &log, &[]);
    assert!(
        ready(env.http_port, Duration::from_secs(30)).await,
        "dispatch started"
    );
    crate::dispatch::admit(&nats, &[admitted_task(1)]).await;
    let dead = eventually(Duration::from_secs(30), || async {
        count(
            &nats,
            whale_kernel::subjects::STREAM_PIPE,
            &whale_kernel::subjects::Pipe::DeadLetter.subject(),
        )
        .await
            == 1
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(dead, "without ca_file the task is dead-lettered: {text}");
    let reason = text
        .lines()
        .find(|l| l.contains("dead letter"))
        .unwrap_or_default()
        .to_owned();
    eprintln!("without ca_file: {reason}");
    assert!(reason.contains("certificate"), "{reason}");
    assert_eq!(st2.created().await, 0, "nothing reached StackStorm");
    w.terminate();

    write_cfg(&format!("ca_file = {:?}\n", d.join("ca.pem")));
    let log = d.join("ca.log");
    let _w = env.spawn_on("dispatch", env.http_port, &log, &[]);
    assert!(
        ready(env.http_port, Duration::from_secs(30)).await,
        "dispatch started again"
    );
    crate::dispatch::admit(&nats, &[admitted_task(2)]).await;
    let created = eventually(Duration::from_secs(30), || async {
        st2.created().await == 1
    })
    .await;
    assert!(
        created,
        "with ca_file the execution is created: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Issue 13 "client TLS with a custom CA" for OpenSearch: the real test node behind a TLS
/// terminator with a private-CA certificate. `whale events search` reaches it with
/// `WHALE_OPENSEARCH_CA_FILE` and is refused the certificate without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reaches_opensearch_over_https_with_a_private_ca() {
    let node = tokio::task::spawn_blocking(whale_index::testkit::OpenSearchNode::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("whale test OpenSearch CA");
    ca.write_server(d, "os", &["localhost", "127.0.0.1"]);
    let upstream = node
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let port = tls_front(&d.join("os.crt"), &d.join("os.key"), upstream).await;
    let mut env = Env::new();
    env.set("WHALE_OPENSEARCH_URL", &format!("https://localhost:{port}"));
    let search = |ca: Option<&Path>| {
        let mut c = env.whale(&["events", "search", "--json", "event_type:generic"]);
        if let Some(ca) = ca {
            c.env("WHALE_OPENSEARCH_CA_FILE", ca);
        }
        c.output().unwrap()
    };
    let out = search(None);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("without the CA: {}", err.trim());
    assert!(
        !out.status.success(),
        "a private-CA certificate without the CA"
    );
    assert!(err.contains("certificate"), "{err}");
    let out = search(Some(&d.join("ca.pem")));
    assert!(
        out.status.success(),
        "with WHALE_OPENSEARCH_CA_FILE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("with the CA: total {}", v["total"]);
    assert!(v["total"].is_u64(), "{v}");
}
