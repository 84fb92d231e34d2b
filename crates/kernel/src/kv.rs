//! Live views of KV buckets (schemas, the rule set, operator state): load everything, then apply
//! each change as it happens, so running workers pick up `whale schemas apply` / `whale rules
//! apply` without a restart. Stages get callbacks, never a NATS handle. [`Bucket`] writes values
//! with a lifetime of their own (per-message TTL).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::kv::{Entry, Operation, Store};
use bytes::Bytes;
use futures::StreamExt;

use crate::nats::Nats;

/// Opens a KV bucket that `whale setup` creates: the one place its absence is explained.
async fn store(nats: &Nats, bucket: &str) -> anyhow::Result<Store> {
    nats.js
        .get_key_value(bucket)
        .await
        .with_context(|| format!("KV bucket {bucket} does not exist: run `whale setup` first"))
}

/// Calls `apply(key, Some(value))` for every key in `bucket` (or `None` when a key is deleted),
/// first for what is there now — returning only once that initial load is complete — then for
/// every later change, from a background task, for as long as the process runs.
pub async fn watch_bucket<F>(nats: &Nats, bucket: &str, apply: F) -> anyhow::Result<()>
where
    F: Fn(&str, Option<&[u8]>) + Send + Sync + 'static,
{
    let kv = store(nats, bucket).await?;
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
    let kv = store(nats, bucket).await?;
    Ok(kv.get(key).await?)
}

/// Every revision the bucket still holds of one key, oldest first (deletes left out).
pub async fn history(nats: &Nats, bucket: &str, key: &str) -> anyhow::Result<Vec<bytes::Bytes>> {
    let kv = store(nats, bucket).await?;
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
    let kv = store(nats, bucket).await?;
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

    /// Like [`Live::watch`] for a value that is only a pointer to the real content (the rule
    /// set's manifest, naming its chunks): `build` may read more keys before it answers. Only
    /// `key` is watched (not the whole bucket), and a value is built after the previous one, in
    /// revision order; a failed build keeps the last good value. Returns after the initial load.
    pub async fn watch_with<B>(
        nats: &Nats,
        bucket: &str,
        key: &str,
        build: B,
    ) -> anyhow::Result<Live<T>>
    where
        B: Fn(Bytes) -> futures::future::BoxFuture<'static, anyhow::Result<T>>
            + Send
            + Sync
            + 'static,
    {
        let kv = store(nats, bucket).await?;
        let live = Live {
            current: Default::default(),
        };
        // What the key holds now: the watch below delivers it (or a later revision) first.
        let initial = kv.entry(key).await?.map(|e| e.revision);
        let mut watch = kv.watch_with_history(key).await?;
        let slot = live.current.clone();
        let name = format!("{bucket}/{key}");
        let load = move |e: Entry| {
            let (slot, name, revision) = (slot.clone(), name.clone(), e.revision);
            let built = match e.operation {
                Operation::Put => Some(build(e.value)),
                _ => None,
            };
            async move {
                match built {
                    Some(fut) => match fut.await {
                        Ok(t) => {
                            let old = slot.write().unwrap().replace(std::sync::Arc::new(t));
                            tracing::info!(key = %name, revision, "loaded new version");
                            // Freeing the old version (10,000 rules: tens of ms) happens after
                            // the switch, outside the lock readers take, off the async threads.
                            if let Some(old) = old {
                                tokio::task::spawn_blocking(move || drop(old));
                            }
                        }
                        Err(e) => tracing::error!(
                            key = %name,
                            "new version refused, keeping the last good one: {e:#}"
                        ),
                    },
                    None => tracing::warn!(key = %name, "deleted; keeping the last good version"),
                }
            }
        };
        if let Some(rev) = initial {
            while let Some(e) = watch.next().await {
                let e = e?;
                let done = e.revision >= rev;
                load(e).await;
                if done {
                    break;
                }
            }
        }
        let bucket = bucket.to_owned();
        tokio::spawn(async move {
            while let Some(e) = watch.next().await {
                match e {
                    Ok(e) => load(e).await,
                    Err(e) => tracing::warn!(bucket, "watch: {e}"),
                }
            }
            tracing::error!(
                bucket,
                "watch ended; changes will not be seen until restart"
            );
        });
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

/// Why a KV call did not happen.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Someone wrote the key first (create) or since it was read (update).
    #[error("the key changed under us")]
    Conflict,
    /// NATS did not answer or refused (see [`is_unavailable`]).
    #[error(transparent)]
    Nats(Box<dyn std::error::Error + Send + Sync>),
}

impl KvError {
    fn nats(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> KvError {
        KvError::Nats(e.into())
    }
}

/// A live value and the revision it was written at (the revision an update compares with).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub value: Bytes,
    pub revision: u64,
}

/// What a [`Bucket::modify`] step decides about the value it was shown.
pub enum Step<R> {
    /// Write nothing; `modify` returns this.
    Keep(R),
    /// Write `value` (created when there was none, else compare-and-set at the revision that was
    /// shown) with lifetime `ttl`; `modify` returns `then` once the write wins.
    Write { value: Bytes, ttl: Ttl, then: R },
}

/// A KV bucket, the only way stages read and write KV: typed errors ([`KvError::Conflict`] for
/// a lost compare-and-set), compare-and-set loops as one call ([`Bucket::modify`]), and writes
/// that may carry their own lifetime (per-message TTL, the `Nats-TTL` header, nats-server ≥
/// 2.11) for buckets whose keys live for different times: `whale_state` keeps drains forever,
/// approvals until their timeout and everything else for its `max_age`. On a bucket set up by
/// an older `whale setup` (no per-message TTL allowed) writes carry no TTL, so they are accepted
/// and live as long as that bucket keeps everything; `whale setup` turns lifetimes on.
#[derive(Clone)]
pub struct Bucket {
    store: Store,
    js: async_nats::jetstream::Context,
    ttl_allowed: bool,
    max_age: Duration,
    max_payload: usize,
}

impl Bucket {
    /// Opens `bucket` (created by `whale setup`).
    pub async fn open(nats: &Nats, bucket: &str) -> anyhow::Result<Bucket> {
        let store = store(nats, bucket).await?;
        let cfg = &store.stream.cached_info().config;
        let (ttl_allowed, max_age) = (cfg.allow_message_ttl, cfg.max_age);
        // Only `whale_state` gets lifetimes from `whale setup` (see `setup::bucket_limits`).
        if !ttl_allowed && bucket == crate::subjects::KV_STATE {
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
            max_payload: nats.client.max_payload(),
        })
    }

    /// The largest message the server takes (its `max_payload`, 1 MiB by default): a value
    /// and its headers must fit in it.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Every value the bucket still holds of `key`, oldest first, with its revision (deletes
    /// left out; as many as the bucket's `history` keeps).
    pub async fn history(&self, key: &str) -> Result<Vec<Versioned>, KvError> {
        let mut out = Vec::new();
        let mut entries = self.store.history(key).await.map_err(KvError::nats)?;
        while let Some(e) = entries.next().await {
            let e = e.map_err(KvError::nats)?;
            if e.operation == Operation::Put {
                out.push(Versioned {
                    value: e.value,
                    revision: e.revision,
                });
            }
        }
        Ok(out)
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
    ) -> Result<u64, KvError> {
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
            .await
            .map_err(KvError::nats)?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if revision.is_some() && is_wrong_revision(&e) => Err(KvError::Conflict),
            Err(e) => Err(KvError::nats(e)),
        }
    }

    /// The live value of `key` and its revision (None when there is none or it was deleted).
    pub async fn entry(&self, key: &str) -> Result<Option<Versioned>, KvError> {
        Ok(match self.store.entry(key).await.map_err(KvError::nats)? {
            Some(e) if e.operation == Operation::Put => Some(Versioned {
                value: e.value,
                revision: e.revision,
            }),
            _ => None,
        })
    }

    /// The live value of `key` (None when there is none or it was deleted).
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        Ok(self.entry(key).await?.map(|v| v.value))
    }

    /// Every key starting with `prefix` (the bucket's key prefixes are named in [`crate::keys`]).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let mut keys = self.store.keys().await.map_err(KvError::nats)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(KvError::nats)?;
            if k.starts_with(prefix) {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Writes `key` whatever it holds; returns the new revision.
    pub async fn put(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<u64, KvError> {
        self.write(key, value, None, ttl).await
    }

    /// Replaces `key` only if it is still at `revision` ([`KvError::Conflict`] otherwise).
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        ttl: Ttl,
    ) -> Result<u64, KvError> {
        self.write(key, value, Some(revision), ttl).await
    }

    /// Writes `key` only if it holds nothing ([`KvError::Conflict`] otherwise); a deleted key
    /// counts as nothing.
    pub async fn create(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<u64, KvError> {
        let first = match self.update(key, value.clone(), 0, ttl).await {
            Ok(rev) => return Ok(rev),
            Err(e) => e,
        };
        match self.store.entry(key).await.map_err(KvError::nats)? {
            Some(e) if e.operation != Operation::Put => {
                self.update(key, value, e.revision, ttl).await
            }
            Some(_) => Err(KvError::Conflict),
            None => Err(first),
        }
    }

    /// Deletes `key` (a later [`Bucket::create`] succeeds).
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.store.delete(key).await.map_err(KvError::nats)
    }

    /// Read-modify-write as one call: shows `step` the live value of `key` (None when there is
    /// none) and does what it answers; when another writer got there first, reads again and
    /// asks again, until a step keeps the value or its write wins. Returns the step's result.
    pub async fn modify<R>(
        &self,
        key: &str,
        mut step: impl FnMut(Option<&[u8]>) -> Step<R>,
    ) -> Result<R, KvError> {
        loop {
            let current = self.entry(key).await?;
            let (value, ttl, then) = match step(current.as_ref().map(|v| &v.value[..])) {
                Step::Keep(r) => return Ok(r),
                Step::Write { value, ttl, then } => (value, ttl, then),
            };
            let written = match &current {
                None => self.create(key, value, ttl).await,
                Some(v) => self.update(key, value, v.revision, ttl).await,
            };
            match written {
                Ok(_) => return Ok(then),
                Err(KvError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a publish ack says the expected revision was not the last one.
fn is_wrong_revision(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::context::PublishErrorKind;
    e.kind() == PublishErrorKind::WrongLastSequence
}

/// Whether `e` comes from NATS not answering or refusing a KV or JetStream call (the server is
/// down, unreachable or timing out) rather than from what a value holds: HTTP APIs answer 503
/// ("try again") for these and 500 for the rest.
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    use async_nats::jetstream::{context, kv};
    e.chain().any(|c| {
        matches!(c.downcast_ref::<KvError>(), Some(KvError::Nats(_)))
            || c.is::<kv::EntryError>()
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
