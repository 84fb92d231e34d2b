//! whale's kernel: the only crate that talks to NATS. It owns the event envelope, every subject,
//! stream, consumer and bucket name ([`subjects`]), `whale setup`, the one JetStream worker loop
//! every stage runs ([`worker`]), windowed publishing, configuration, logs, metrics, health and
//! the HTTP server. Stages depend on this crate and never on each other.

pub mod audit;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod envelope;
pub mod failpoint;
pub mod health;
pub mod history;
pub mod http;
pub mod keys;
pub mod kv;
pub mod metrics;
pub mod nats;
pub mod oidc;
pub mod publish;
pub mod records;
pub mod session;
pub mod setup;
pub mod status;
pub mod subjects;
pub mod telemetry;
pub mod tls;
pub mod tracectx;
pub mod worker;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Config, Secret};
pub use envelope::{Envelope, Reason};
pub use health::Health;
pub use nats::Nats;
pub use publish::{Output, PublishStats, Window};
pub use worker::{Delivery, Durable, Outcome, Stage};

/// The JSON type name of a value, for error messages.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Hex SHA-256 of the parts (separated so that ("ab","c") and ("a","bc") differ). Stable across
/// builds and machines, unlike `std`'s hasher: use it for every id derived from content.
pub fn digest(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}
