//! Live views of KV buckets (schemas, the rule set, operator state): load everything, then apply
//! each change as it happens, so running workers pick up `whale schemas apply` / `whale rules
//! apply` without a restart. Stages get callbacks, never a NATS handle. [`Bucket`] writes values
//! with a lifetime of their own (per-message TTL).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::kv::{
    CreateError, CreateErrorKind, Entry, Operation, Store, UpdateError,
};
use bytes::Bytes;
use futures::StreamExt;

use crate::nats::Nats;

/// Calls `apply(key, Some(value))` for every key in `bucket` (or `None` when a key is deleted),
/// first for what is there now — returning only once that initial load is complete — then for
/// every later change, from a background task, for as long as the process runs.
pub async fn watch_bucket<F>(nats: &Nats, bucket: &str, apply: F) -> anyhow::Result<()>
where
    F: Fn(&str, Option<&[u8]>) + Send + Sync + 'static,
{
    let kv =
        nats.js.get_key_value(bucket).await.with_context(|| {
            format!("KV bucket {bucket} does not exist: run `whale setup` first")
        })?;
    let initial = kv.status().await?.values();
    let mut watch = kv.watch_with_history(">").await?;
    let call = |e: &Entry| match e.operation {
        Operation::Put => apply(&e.key, Some(&e.value)),
        Operation::Delete | Operation::Purge => apply(&e.key, None),
    };
    let mut seen = 0u64;
    if initial > 0 {
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            call(&entry);
            seen += 1;
            if entry.delta == 0 || seen >= initial {
                break;
            }
        }
    }
    let bucket = bucket.to_owned();
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) => match e.operation {
                    Operation::Put => apply(&e.key, Some(&e.value)),
                    Operation::Delete | Operation::Purge => apply(&e.key, None),
                },
                Err(e) => tracing::warn!(bucket, "watch: {e}"),
            }
        }
        tracing::error!(
            bucket,
            "watch ended; changes will not be seen until restart"
        );
    });
    Ok(())
}

/// Reads one key.
pub async fn get(nats: &Nats, bucket: &str, key: &str) -> anyhow::Result<Option<bytes::Bytes>> {
    let kv =
        nats.js.get_key_value(bucket).await.with_context(|| {
            format!("KV bucket {bucket} does not exist: run `whale setup` first")
        })?;
    Ok(kv.get(key).await?)
}

/// Every revision the bucket still holds of one key, oldest first (deletes left out).
pub async fn history(nats: &Nats, bucket: &str, key: &str) -> anyhow::Result<Vec<bytes::Bytes>> {
    let kv =
        nats.js.get_key_value(bucket).await.with_context(|| {
            format!("KV bucket {bucket} does not exist: run `whale setup` first")
        })?;
    let mut out = Vec::new();
    let mut entries = kv.history(key).await?;
    while let Some(e) = entries.next().await {
        let e = e?;
        if e.operation == async_nats::jetstream::kv::Operation::Put {
            out.push(e.value);
        }
    }
    Ok(out)
}

/// Writes one key; returns the new revision.
pub async fn put(nats: &Nats, bucket: &str, key: &str, value: Vec<u8>) -> anyhow::Result<u64> {
    let kv =
        nats.js.get_key_value(bucket).await.with_context(|| {
            format!("KV bucket {bucket} does not exist: run `whale setup` first")
        })?;
    Ok(kv.put(key, value.into()).await?)
}

/// The latest good value of one KV key, compiled by `build`: a bad new value is logged and the
/// previous good one kept (a running worker keeps its last good rule set).
pub struct Live<T> {
    current: std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<T>>>>,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live {
            current: self.current.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Live<T> {
    /// Watches `bucket`/`key`; returns after the initial load.
    pub async fn watch<B>(nats: &Nats, bucket: &str, key: &str, build: B) -> anyhow::Result<Live<T>>
    where
        B: Fn(&[u8]) -> anyhow::Result<T> + Send + Sync + 'static,
    {
        let live = Live {
            current: Default::default(),
        };
        let slot = live.current.clone();
        let wanted = key.to_owned();
        let bucket_name = bucket.to_owned();
        watch_bucket(nats, bucket, move |k, v| {
            if k != wanted {
                return;
            }
            match v.map(&build) {
                Some(Ok(t)) => {
                    *slot.write().unwrap() = Some(std::sync::Arc::new(t));
                    tracing::info!(bucket = %bucket_name, key = k, "loaded new version");
                }
                Some(Err(e)) => tracing::error!(
                    bucket = %bucket_name,
                    key = k,
                    "new version refused, keeping the last good one: {e:#}"
                ),
                None => tracing::warn!(bucket = %bucket_name, key = k, "deleted; keeping the last good version"),
            }
        })
        .await?;
        Ok(live)
    }

    /// The current value, if any was ever loaded.
    pub fn current(&self) -> Option<std::sync::Arc<T>> {
        self.current.read().unwrap().clone()
    }

    /// A view holding a fixed value (offline tools, tests).
    pub fn fixed(t: T) -> Live<T> {
        Live {
            current: std::sync::Arc::new(std::sync::RwLock::new(Some(std::sync::Arc::new(t)))),
        }
    }
}

/// How long one value written through a [`Bucket`] lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The bucket's own `max_age` (forever when it has none).
    Bucket,
    /// This long after the write (per-message TTL; never longer than the bucket's `max_age`).
    For(Duration),
    /// Until it is deleted on purpose, whatever the bucket's `max_age` (`Nats-TTL: never`).
    Never,
}

/// A KV bucket whose writes may carry their own lifetime (per-message TTL, the `Nats-TTL`
/// header, nats-server ≥ 2.11), for buckets whose keys live for different times: `whale_state`
/// keeps drains forever, approvals until their timeout and everything else for its `max_age`.
/// Reads go through the [`Store`] (`Deref`). On a bucket set up by an older `whale setup`
/// (no per-message TTL allowed) writes carry no TTL, so they are accepted and live as long as
/// that bucket keeps everything; `whale setup` turns lifetimes on.
#[derive(Clone)]
pub struct Bucket {
    store: Store,
    js: async_nats::jetstream::Context,
    ttl_allowed: bool,
    max_age: Duration,
}

impl std::ops::Deref for Bucket {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Bucket {
    /// Opens `bucket` (created by `whale setup`).
    pub async fn open(nats: &Nats, bucket: &str) -> anyhow::Result<Bucket> {
        let store = nats.js.get_key_value(bucket).await.with_context(|| {
            format!("KV bucket {bucket} does not exist: run `whale setup` first")
        })?;
        let cfg = &store.stream.cached_info().config;
        let (ttl_allowed, max_age) = (cfg.allow_message_ttl, cfg.max_age);
        if !ttl_allowed {
            tracing::warn!(
                bucket,
                "KV bucket has no lifetimes yet: run `whale setup` to apply them"
            );
        }
        Ok(Bucket {
            store,
            js: nats.js.clone(),
            ttl_allowed,
            max_age,
        })
    }

    /// The `Nats-TTL` header value for `ttl` in this bucket, if one is to be sent.
    pub fn ttl_header(&self, ttl: Ttl) -> Option<String> {
        if !self.ttl_allowed {
            return None;
        }
        match ttl {
            Ttl::Bucket => None,
            Ttl::Never => Some("never".into()),
            Ttl::For(d) if !self.max_age.is_zero() && d >= self.max_age => None,
            // The server's minimum is one second; round up so a value never lives shorter.
            Ttl::For(d) => Some(format!(
                "{}s",
                d.as_secs().max(1) + u64::from(d.subsec_nanos() > 0)
            )),
        }
    }

    fn subject(&self, key: &str) -> String {
        format!(
            "{}{key}",
            self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix)
        )
    }

    async fn write(
        &self,
        key: &str,
        value: Bytes,
        revision: Option<u64>,
        ttl: Ttl,
    ) -> Result<u64, async_nats::jetstream::context::PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(rev) = revision {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                rev.to_string().as_str(),
            );
        }
        if let Some(t) = self.ttl_header(ttl) {
            headers.insert("Nats-TTL", t.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(self.subject(key), headers, value)
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Writes `key` whatever it holds; returns the new revision.
    pub async fn put(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<u64, UpdateError> {
        self.write(key, value, None, ttl).await.map_err(Into::into)
    }

    /// Replaces `key` only if it is still at `revision` (`WrongLastRevision` otherwise).
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        ttl: Ttl,
    ) -> Result<u64, UpdateError> {
        self.write(key, value, Some(revision), ttl)
            .await
            .map_err(Into::into)
    }

    /// Writes `key` only if it holds nothing (`AlreadyExists` otherwise); a deleted key counts
    /// as nothing.
    pub async fn create(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<u64, CreateError> {
        let first = match self.update(key, value.clone(), 0, ttl).await {
            Ok(rev) => return Ok(rev),
            Err(e) => e,
        };
        match self.store.entry(key).await? {
            Some(e) if e.operation != Operation::Put => {
                Ok(self.update(key, value, e.revision, ttl).await?)
            }
            Some(_) => Err(CreateError::new(CreateErrorKind::AlreadyExists)),
            None => Err(first.into()),
        }
    }
}

/// Whether `e` comes from NATS not answering or refusing a KV or JetStream call (the server is
/// down, unreachable or timing out) rather than from what a value holds: HTTP APIs answer 503
/// ("try again") for these and 500 for the rest.
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    use async_nats::jetstream::{context, kv};
    e.chain().any(|c| {
        c.is::<kv::EntryError>()
            || c.is::<kv::UpdateError>()
            || c.is::<kv::CreateError>()
            || c.is::<kv::PutError>()
            || c.is::<kv::WatchError>()
            || c.is::<kv::WatcherError>()
            || c.is::<kv::StatusError>()
            || c.is::<context::PublishError>()
            || c.is::<context::KeyValueError>()
            || c.is::<context::RequestError>()
            || c.is::<async_nats::RequestError>()
    })
}
