//! The records dispatch keeps in the `whale_state` bucket, shared by the workers that write and
//! follow them ([`crate::clusters`]) and the operator commands that set and show them
//! ([`crate::admin`]): `drain.<cluster>` while a cluster is drained, `breaker.<cluster>` for the
//! last circuit breaker change a worker reported. A module of their own so that `admin` depends
//! on `clusters` and never the other way round.

use serde::{Deserialize, Serialize};
use whale_kernel::keys;

/// Key prefix of drain flags in `whale_state`.
pub const DRAIN_PREFIX: &str = keys::DRAIN;
pub fn drain_key(cluster: &str) -> String {
    keys::drain(cluster)
}

pub fn breaker_key(cluster: &str) -> String {
    keys::breaker(cluster)
}

/// The value of `drain.<cluster>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainRecord {
    #[serde(default = "yes")]
    pub drained: bool,
    #[serde(default)]
    pub since: Option<String>,
}

fn yes() -> bool {
    true
}

impl DrainRecord {
    /// Reads a stored value; anything unreadable counts as drained (someone meant to drain).
    pub fn parse(value: &[u8]) -> DrainRecord {
        serde_json::from_slice(value).unwrap_or(DrainRecord {
            drained: true,
            since: None,
        })
    }
}

/// The value of `breaker.<cluster>`: the last change one worker saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerReport {
    /// `open` or `closed`.
    pub state: String,
    pub since: String,
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BreakerReport {
    pub fn now(open: bool, worker: &str, error: Option<String>) -> BreakerReport {
        BreakerReport {
            state: if open { "open" } else { "closed" }.into(),
            since: now_rfc3339(),
            worker: worker.into(),
            error,
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
