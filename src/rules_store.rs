//! Where the active rule set lives: the `whale_rules` KV bucket, key `active`, holding the rule
//! files' text and the set's version. `whale rules apply` writes it; match and render workers
//! watch it, compile each new version themselves and keep the last good one.
//!
//! Every applied version is also kept under `v.<version>` (same content), for ever: match
//! records name the version they were made with, and `whale trace` explains "why not" with that
//! version, not today's. A version is a content hash, so applying the same files again writes
//! the same key. Versions applied before these keys existed are found in the history of
//! `active` (16 revisions).

use serde::{Deserialize, Serialize};
use whale_kernel::kv::{self, Live};
use whale_kernel::{subjects, Nats};
use whale_rules::{RuleSet, RuleSource};

/// The key of the active set.
pub const ACTIVE: &str = "active";

/// The key under which one version is kept.
pub fn version_key(version: &str) -> String {
    format!("v.{version}")
}

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
    Live::watch(nats, subjects::KV_RULES, ACTIVE, |bytes| {
        let set = compile(bytes)?;
        whale_kernel::metrics::rule_set_in_force(set.version());
        Ok(set)
    })
    .await
}

/// The stored active set, if any.
pub async fn active(nats: &Nats) -> anyhow::Result<Option<Stored>> {
    Ok(match kv::get(nats, subjects::KV_RULES, ACTIVE).await? {
        Some(b) => Some(serde_json::from_slice(&b)?),
        None => None,
    })
}

/// Stores `set` as the active one (atomically: one KV put); returns the KV revision. The
/// version is kept under [`version_key`] first, so a match made with it can always be
/// explained.
pub async fn apply(nats: &Nats, set: &RuleSet) -> anyhow::Result<u64> {
    let stored = Stored {
        version: set.version().to_owned(),
        applied_at: whale_kernel::envelope::format_time(time::OffsetDateTime::now_utc()),
        sources: set.sources().to_vec(),
    };
    let bytes = serde_json::to_vec(&stored)?;
    kv::put(
        nats,
        subjects::KV_RULES,
        &version_key(set.version()),
        bytes.clone(),
    )
    .await?;
    kv::put(nats, subjects::KV_RULES, ACTIVE, bytes).await
}

/// The stored set of one version: its own key, or else a revision of `active`.
pub async fn version(nats: &Nats, version: &str) -> anyhow::Result<Option<Stored>> {
    if let Some(b) = kv::get(nats, subjects::KV_RULES, &version_key(version)).await? {
        return Ok(Some(serde_json::from_slice(&b)?));
    }
    Ok(applied(nats)
        .await?
        .into_iter()
        .rev()
        .find(|s| s.version == version))
}

/// The set that was active at `at` (RFC 3339): the last one applied at or before it, among
/// the revisions of `active` the bucket still holds (16); `None` if the history does not
/// reach back that far.
pub async fn in_force_at(nats: &Nats, at: &str) -> anyhow::Result<Option<Stored>> {
    let at = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)?;
    let parse = |s: &Stored| {
        time::OffsetDateTime::parse(
            &s.applied_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    };
    Ok(applied(nats)
        .await?
        .into_iter()
        .rfind(|s| parse(s).is_some_and(|t| t <= at)))
}

/// The revisions of `active`, oldest first.
async fn applied(nats: &Nats) -> anyhow::Result<Vec<Stored>> {
    Ok(kv::history(nats, subjects::KV_RULES, ACTIVE)
        .await?
        .iter()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect())
}
