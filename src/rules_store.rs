//! Where the active rule set lives: the `whale_rules` KV bucket, key `active`, holding the rule
//! files' text and the set's version. `whale rules apply` writes it; match and render workers
//! watch it, compile each new version themselves and keep the last good one.

use serde::{Deserialize, Serialize};
use whale_kernel::kv::{self, Live};
use whale_kernel::{subjects, Nats};
use whale_rules::{RuleSet, RuleSource};

/// The key of the active set.
pub const ACTIVE: &str = "active";

/// What the bucket stores.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    pub version: String,
    pub applied_at: String,
    pub sources: Vec<RuleSource>,
}

/// Compiles a stored set (what every worker does on a change).
pub fn compile(bytes: &[u8]) -> anyhow::Result<RuleSet> {
    let stored: Stored = serde_json::from_slice(bytes)?;
    RuleSet::compile(&stored.sources).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A live view of the active rule set.
pub async fn live(nats: &Nats) -> anyhow::Result<Live<RuleSet>> {
    Live::watch(nats, subjects::KV_RULES, ACTIVE, compile).await
}

/// The stored active set, if any.
pub async fn active(nats: &Nats) -> anyhow::Result<Option<Stored>> {
    Ok(match kv::get(nats, subjects::KV_RULES, ACTIVE).await? {
        Some(b) => Some(serde_json::from_slice(&b)?),
        None => None,
    })
}

/// Stores `set` as the active one (atomically: one KV put); returns the KV revision.
pub async fn apply(nats: &Nats, set: &RuleSet) -> anyhow::Result<u64> {
    let stored = Stored {
        version: set.version().to_owned(),
        applied_at: whale_kernel::envelope::format_time(time::OffsetDateTime::now_utc()),
        sources: set.sources().to_vec(),
    };
    kv::put(
        nats,
        subjects::KV_RULES,
        ACTIVE,
        serde_json::to_vec(&stored)?,
    )
    .await
}
