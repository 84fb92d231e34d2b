//! Live views of KV buckets (schemas, the rule set, operator state): load everything, then apply
//! each change as it happens, so running workers pick up `whale schemas apply` / `whale rules
//! apply` without a restart. Stages get callbacks, never a NATS handle.

use anyhow::Context as _;
use async_nats::jetstream::kv::{Entry, Operation};
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
