//! The dispatch stage: every admitted task (`whale.pipe.admitted.<cluster>`) becomes exactly one
//! StackStorm execution, on the cluster its route names — or on that cluster's failover while it
//! is drained or failing — and a `Dispatched` record for feedback. StackStorm has no idempotency
//! key, so the guarantee "never two executions" lives here: a create-only claim per task in KV
//! before the POST, the execution id recorded after, and a lookup by trace tag when a claimed
//! task comes back without one (see [`claim`]).
//!
//! - [`stage`]: the [`Stage`](whale_kernel::Stage) — one task from claim to record.
//! - [`clusters`]: one client per cluster, its concurrency cap, drain flag and breaker; routing.
//! - [`breaker`]: the per-cluster circuit breaker.
//! - [`claim`]: the claim records and the KV operations on them.
//! - [`backoff`]: retry delays with jitter.
//! - [`state`]: the drain flags and breaker reports in `whale_state`, and their keys.
//! - [`admin`]: what `whale clusters list|drain|undrain` does.
//! - [`dead_letters`]: `whale dead-letters list|show|retry` and [`http`] `/v1/dead-letters`.

pub mod admin;
pub mod breaker;
pub mod claim;
pub mod clusters;
pub mod dead_letters;
pub mod http;
mod metrics;
pub mod stage;
pub mod state;

pub use clusters::{Clusters, Route};
pub use stage::Dispatch;

/// True for names usable as a cluster: a NATS subject token and a KV key part (letters,
/// digits, `-`, `_`).
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
