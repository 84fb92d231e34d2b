//! `whale clusters list|drain|undrain`: operator state in the `whale_state` bucket that every
//! dispatch worker watches — `drain.<cluster>` while a cluster is drained, `breaker.<cluster>`
//! for the last circuit breaker change a worker reported — and a live health check of each
//! cluster for the list.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use whale_kernel::kv::{Bucket, Ttl};
use whale_kernel::{subjects, Config, Nats};

use crate::clusters::Clusters;
use crate::state::{breaker_key, drain_key, now_rfc3339, BreakerReport, DrainRecord};

/// One line of `whale clusters list`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub url: String,
    pub failover: Option<String>,
    pub max_concurrent: Option<usize>,
    pub drained: bool,
    pub drained_since: Option<String>,
    /// The last breaker change a worker reported (breakers are per worker).
    pub breaker: Option<BreakerReport>,
    pub health: Health,
}

/// The result of `GET /api/v1/` from here, now.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub ok: bool,
    pub version: Option<String>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

async fn state(nats: &Nats) -> anyhow::Result<Bucket> {
    Bucket::open(nats, subjects::KV_STATE).await
}

fn known(cfg: &Config, name: &str) -> anyhow::Result<()> {
    if cfg.clusters.contains_key(name) {
        return Ok(());
    }
    let names: Vec<&str> = cfg.clusters.keys().map(String::as_str).collect();
    match names.is_empty() {
        true => bail!("cluster {name:?} is not configured, and no cluster is (set WHALE_ST2_URL, or [clusters.<name>] in whale.toml)"),
        false => bail!("cluster {name:?} is not configured (configured: {})", names.join(", ")),
    }
}

/// Drains `name`; returns false when it already was.
pub async fn drain(nats: &Nats, cfg: &Config, name: &str) -> anyhow::Result<bool> {
    known(cfg, name)?;
    let kv = state(nats).await?;
    let key = drain_key(name);
    if let Some(v) = kv.get(&key).await? {
        if DrainRecord::parse(&v).drained {
            return Ok(false);
        }
    }
    let rec = DrainRecord {
        drained: true,
        since: Some(now_rfc3339()),
    };
    // A drain holds until an operator lifts it: it never expires (`whale_state` has a max age).
    kv.put(&key, serde_json::to_vec(&rec)?.into(), Ttl::Never)
        .await?;
    Ok(true)
}

/// Undrains `name`; returns false when it was not drained.
pub async fn undrain(nats: &Nats, cfg: &Config, name: &str) -> anyhow::Result<bool> {
    known(cfg, name)?;
    let kv = state(nats).await?;
    let key = drain_key(name);
    let was = kv
        .get(&key)
        .await?
        .is_some_and(|v| DrainRecord::parse(&v).drained);
    if was {
        kv.delete(&key).await?;
    }
    Ok(was)
}

/// Every configured cluster with its drain flag, last breaker report and a health check.
pub async fn list(nats: &Nats, cfg: &Config) -> anyhow::Result<Vec<ClusterStatus>> {
    let kv = state(nats).await?;
    let mut quick = cfg.clone();
    quick.dispatch.request_timeout = Duration::from_secs(3);
    let clusters = Clusters::from_config(&quick, "cli")?;
    let checks = clusters.names().map(|name| {
        let c = clusters.get(name).expect("listed").clone();
        async move {
            let started = Instant::now();
            let r = c.st2.api_info().await;
            let latency_ms = started.elapsed().as_millis() as u64;
            match r {
                Ok(v) => Health {
                    ok: true,
                    version: v.get("version").and_then(|v| v.as_str()).map(Into::into),
                    latency_ms,
                    error: None,
                },
                Err(e) => Health {
                    ok: false,
                    version: None,
                    latency_ms,
                    error: Some(whale_kernel::config::redact_url(&e.to_string())),
                },
            }
        }
    });
    let health = futures::future::join_all(checks).await;
    let mut out = Vec::new();
    for ((name, c), health) in cfg.clusters.iter().zip(health) {
        let drain = kv
            .get(&drain_key(name))
            .await?
            .map(|v| DrainRecord::parse(&v));
        let breaker = kv
            .get(&breaker_key(name))
            .await?
            .and_then(|v| serde_json::from_slice(&v).ok());
        out.push(ClusterStatus {
            name: name.clone(),
            // The URL may carry a password (`http://user:password@host`): never shown.
            url: whale_kernel::config::redact_url(&c.url),
            failover: c.failover.clone(),
            max_concurrent: c.max_concurrent,
            drained: drain.as_ref().is_some_and(|d| d.drained),
            drained_since: drain.and_then(|d| d.since),
            breaker,
            health,
        });
    }
    Ok(out)
}
