//! Claims: how dispatch makes sure a task becomes at most one StackStorm execution although
//! StackStorm has no idempotency key and any worker may die at any instant.
//!
//! One key per task in the `whale_claims` bucket, `claim.<task_id>`, moves through:
//!
//! 1. **pending** — written create-only (`kv.create` fails when the key exists) before the
//!    POST, naming the cluster and carrying a lease (twice the request timeout). Only the worker
//!    that wrote it may POST while the lease runs; a redelivered copy waits for it to end.
//! 2. **created** — the execution id, written after StackStorm answered 201. A redelivered task
//!    whose claim is `created` only re-publishes its `Dispatched` record (same msg id, so
//!    JetStream drops the copy).
//! 3. **dead** — StackStorm refused the task for good (4xx) or it failed too often; a
//!    redelivery re-publishes the same dead letter.
//!
//! A **pending** claim without a live lease means a worker died (or failed) between claim and
//! record: the POST may or may not have gone through. The next worker takes the claim over
//! (compare-and-set on the revision), asks the claimed cluster for an execution whose trace tag
//! is the task id, records it if there is one, and only otherwise creates it — on the claimed
//! cluster, or on another one only after the claimed cluster said it has none. A claimed
//! cluster that cannot be asked is waited for: failing over then could double the execution.
//!
//! # Lifetime
//!
//! Claims expire: the bucket's max age is `state.claims` (default and minimum
//! `nats.pipe_retention`), counted from a claim's last write. A claim is written after its task
//! message was stored, so it outlives every copy of that message in `WHALE_PIPE`: a redelivery
//! always finds it. A task that arrives older than a claim lives (re-published by hand, or
//! re-rendered from an event redelivered after a long outage) may have lost its claim, so it is
//! treated as an interrupted attempt ([`may_have_expired`]): the cluster is asked by trace tag
//! before anything is created.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use whale_kernel::kv::{Bucket, KvError, Ttl};
use whale_kernel::{keys, subjects, Nats};

/// One task's claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Claim {
    /// Being created on `cluster` (or was, by a worker that died or failed).
    Pending {
        cluster: String,
        /// Who holds the lease: a token unique to one worker's attempt.
        owner: String,
        /// Unix milliseconds until which only `owner` may create the execution; 0 = released.
        lease_until_ms: u64,
        /// Failed StackStorm calls so far (counts toward `dispatch.max_attempts`).
        errors: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
    },
    /// StackStorm created the execution.
    Created {
        cluster: String,
        execution_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        web_url: Option<String>,
        /// RFC 3339.
        created: String,
    },
    /// Will never be executed; the dead letter says why.
    Dead {
        cluster: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        faultstring: Option<String>,
        attempts: u64,
    },
}

impl Claim {
    /// True while another worker's lease protects a POST that may be in flight.
    pub fn leased_by_other(&self, me: &str, now_ms: u64) -> Option<Duration> {
        match self {
            Claim::Pending {
                owner,
                lease_until_ms,
                ..
            } if owner != me && *lease_until_ms > now_ms => {
                Some(Duration::from_millis(lease_until_ms - now_ms))
            }
            _ => None,
        }
    }

    fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("claims serialize"))
    }
}

/// The key of a task's claim, or None when the task id cannot be a KV key.
pub fn key(task_id: &str) -> Option<String> {
    keys::claim(task_id)
}

/// Whether a task rendered at `created` may have had a claim that expired by now: it is older
/// than `lifetime` less a margin for clock differences between workers (a tenth of the
/// lifetime, at most a minute).
pub fn may_have_expired(at: time::OffsetDateTime, lifetime: Duration) -> bool {
    let margin = (lifetime / 10).min(Duration::from_secs(60));
    let age_ms = (time::OffsetDateTime::now_utc() - at).whole_milliseconds();
    age_ms >= (lifetime.saturating_sub(margin)).as_millis() as i128
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a claim operation did not happen. The cause is kept as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Someone else wrote the key first (create) or since we read it (update).
    #[error("the claim changed under us")]
    Conflict,
    /// NATS did not answer or refused.
    #[error("claims bucket unavailable")]
    Store(#[source] KvError),
    /// The stored claim does not parse: reported, never treated as "no claim" (which could
    /// double an execution).
    #[error("claim {key} is not readable")]
    Unreadable {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl From<KvError> for ClaimError {
    fn from(e: KvError) -> ClaimError {
        match e {
            KvError::Conflict => ClaimError::Conflict,
            e => ClaimError::Store(e),
        }
    }
}

impl ClaimError {
    /// The error and its causes on one line (`a: b: c`), for retry reasons and logs.
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }
}

/// The claims bucket.
#[derive(Clone)]
pub struct Claims {
    kv: Bucket,
}

impl Claims {
    /// Opens `whale_claims` (created by `whale setup`).
    pub async fn open(nats: &Nats) -> anyhow::Result<Claims> {
        Ok(Claims {
            kv: Bucket::open(nats, subjects::KV_CLAIMS).await?,
        })
    }

    /// Writes `claim` only if the key does not exist; returns the revision.
    pub async fn create(&self, key: &str, claim: &Claim) -> Result<u64, ClaimError> {
        Ok(self.kv.create(key, claim.to_bytes(), Ttl::Bucket).await?)
    }

    /// Replaces the claim only if it is still at `revision`; returns the new revision.
    pub async fn update(&self, key: &str, claim: &Claim, revision: u64) -> Result<u64, ClaimError> {
        Ok(self
            .kv
            .update(key, claim.to_bytes(), revision, Ttl::Bucket)
            .await?)
    }

    /// Replaces the claim whatever it holds (the final record of an outcome).
    pub async fn put(&self, key: &str, claim: &Claim) -> Result<u64, ClaimError> {
        Ok(self.kv.put(key, claim.to_bytes(), Ttl::Bucket).await?)
    }

    /// The claim and its revision, if there is one. A value that does not parse is reported as
    /// a store error (never silently treated as "no claim", which could double an execution).
    pub async fn get(&self, key: &str) -> Result<Option<(Claim, u64)>, ClaimError> {
        match self.kv.entry(key).await? {
            Some(e) => serde_json::from_slice(&e.value)
                .map(|c| Some((c, e.revision)))
                .map_err(|source| ClaimError::Unreadable {
                    key: key.to_owned(),
                    source,
                }),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_leases_protect_only_others() {
        let c = Claim::Pending {
            cluster: "east".into(),
            owner: "w1".into(),
            lease_until_ms: 2_000,
            errors: 0,
            last_error: None,
        };
        let text = String::from_utf8(c.to_bytes().to_vec()).unwrap();
        assert!(text.contains(r#""state":"pending""#), "{text}");
        assert_eq!(serde_json::from_str::<Claim>(&text).unwrap(), c);
        assert_eq!(
            c.leased_by_other("w2", 1_500),
            Some(Duration::from_millis(500))
        );
        assert_eq!(c.leased_by_other("w1", 1_500), None, "our own lease");
        assert_eq!(c.leased_by_other("w2", 2_000), None, "expired");
        let done = Claim::Created {
            cluster: "east".into(),
            execution_id: "e1".into(),
            web_url: None,
            created: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(done.leased_by_other("w2", 0), None);
    }

    #[test]
    fn old_tasks_may_have_lost_their_claim() {
        let day = Duration::from_secs(86_400);
        let now = time::OffsetDateTime::now_utc();
        assert!(!may_have_expired(now, day));
        assert!(!may_have_expired(now - Duration::from_secs(3_600), day));
        assert!(may_have_expired(now - day, day));
        assert!(
            may_have_expired(now - Duration::from_secs(86_400 - 30), day),
            "within the clock margin"
        );
        assert!(
            !may_have_expired(now + Duration::from_secs(60), day),
            "a clock ahead"
        );
    }

    #[test]
    fn only_safe_task_ids_become_keys() {
        assert_eq!(key("t-abc123").as_deref(), Some("claim.t-abc123"));
        for bad in ["", "a.b", "a b", "a*", "a>", "ü"] {
            assert_eq!(key(bad), None, "{bad:?}");
        }
    }
}
