//! TLS on whale's HTTP listener (`http.tls_cert_file` / `http.tls_key_file`): the certificate
//! and key are re-read when their files change, so a renewed certificate (cert-manager, ACME)
//! is served to new connections without a restart. Handshakes run off the accept loop, so a
//! slow or silent client cannot hold up others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Names rustls's process-wide crypto provider (ring, what whale's TLS is built with). rustls
/// picks one by itself only when exactly one is compiled in; test builds link a second
/// (aws-lc-rs, through the WebDriver client), and then every TLS connection would panic.
/// Called once at start by every binary; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// What identifies a version of a file: modification time, size and inode (a file replaced by
/// rename, as Secret mounts and cert-manager do, has a new inode even within one clock tick).
type Stamp = Option<(SystemTime, u64, u64)>;

/// The server certificate, re-read from its files when either changes.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<(Stamp, Stamp, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ReloadingCert {
    /// Reads the PEM files once; errors name the file and what to fix.
    pub fn new(cert: &Path, key: &Path) -> anyhow::Result<ReloadingCert> {
        let provider = provider();
        let (sc, sk) = (stamp(cert), stamp(key));
        let ck = load(cert, key, &provider)?;
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            state: Mutex::new((sc, sk, Arc::new(ck))),
        })
    }

    /// The certificate to present now, re-read first when a file changed. A file that does not
    /// load (half-written, mismatched key) keeps the previous certificate, with a warning.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (sc, sk) = (stamp(&self.cert), stamp(&self.key));
        if (sc, sk) != (st.0, st.1) {
            st.0 = sc;
            st.1 = sk;
            match load(&self.cert, &self.key, &self.provider) {
                Ok(ck) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate files changed: new connections get the new certificate");
                    st.2 = Arc::new(ck);
                }
                Err(e) => tracing::warn!("TLS: keeping the previous certificate: {e:#}"),
            }
        }
        st.2.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "cannot read certificates from http.tls_cert_file {} (PEM, server certificate first)",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "http.tls_cert_file {} holds no CERTIFICATE block",
            cert.display()
        );
    }
    // The key's own parse error is not shown: it could quote key material.
    let der = PrivateKeyDer::from_pem_file(key).map_err(|_| {
        anyhow::anyhow!(
            "cannot read a private key from http.tls_key_file {} (PEM: PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        anyhow::anyhow!(
            "http.tls_key_file {} does not fit http.tls_cert_file {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// The rustls server configuration for `cert` (HTTP/1.1, TLS 1.2 and 1.3).
pub fn server_config(cert: Arc<ReloadingCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A listener that hands axum connections whose TLS handshake is done.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and runs each handshake in its own task (at most [`MAX_HANDSHAKES`] at
    /// once, each within [`HANDSHAKE_TIMEOUT`]).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> anyhow::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let limit = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let (sock, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("https accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for crate::auth::Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        crate::auth::Peer(*s.remote_addr())
    }
}

/// Serves `router` over HTTPS on `addr` with the certificate in `cert`/`key` (re-read when
/// they change) until `shutdown` turns true; like [`crate::http::serve`].
pub async fn serve(
    addr: &str,
    cert: &Path,
    key: &Path,
    router: Router,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let config = server_config(Arc::new(ReloadingCert::new(cert, key)?))?;
    let tcp = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (WHALE_HTTP_ADDR): is another process using it?")
    })?;
    let listener = TlsListener::new(tcp, config)?;
    let local = listener.local;
    Ok((
        local,
        crate::http::spawn_server(listener, router, shutdown, "https"),
    ))
}
