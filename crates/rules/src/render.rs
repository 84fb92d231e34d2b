//! What a matching rule turns into: the task for the throttle and dispatch stages, with its
//! parameters, throttle key and route rendered from the event. Everything here is plain data
//! that serializes, so stages can pass it along and `whale rules test --json` can print it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// How a throttle counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleMode {
    /// Token bucket: `limit` tasks per `per`, plus `burst` extra at once.
    #[default]
    Rate,
    /// At most one task per key within `per` (later ones are throttled until it has passed).
    OnceWithin,
}

/// A throttle with its key rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedThrottle {
    /// The bucket key (the rule's name when the rule gives no key template).
    pub key: String,
    /// Tasks allowed per period.
    pub limit: u64,
    /// The period.
    #[serde(with = "duration")]
    pub per: Duration,
    /// Extra tasks allowed at once above the steady rate.
    pub burst: u64,
    /// How the limit is counted.
    pub mode: ThrottleMode,
    /// Dispatch anyway when the throttle store is unreachable (default: wait).
    pub fail_open: bool,
}

/// The approval gate of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Hold the task until a person approves it.
    pub required: bool,
    /// After this long without a decision the task expires.
    #[serde(
        with = "opt_duration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Where to ask (a notification channel name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// The task a matching rule produces for one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedTask {
    /// The rule's name.
    pub rule: String,
    /// StackStorm action ref (`pack.action`).
    pub action: String,
    /// Rendered parameters (always an object).
    pub parameters: Value,
    /// The throttle, with its key rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<RenderedThrottle>,
    /// The StackStorm cluster to dispatch to, rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The approval gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Channels to notify with the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    /// Publish the execution result as an event.
    #[serde(default)]
    pub result_event: bool,
}

/// A rule matched but its task could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderError {
    /// The rule's name.
    pub rule: String,
    /// The field: `params.host`, `params.items[2]`, `throttle.key`, `route`.
    pub field: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {:?}: {}: {}", self.rule, self.field, self.reason)
    }
}

impl std::error::Error for RenderError {}

/// Durations as humantime text (`10m`); integers are read as seconds.
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        crate::parse::DurationSpec::deserialize(d)?
            .to_duration()
            .map_err(serde::de::Error::custom)
    }
}

pub(crate) mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<crate::parse::DurationSpec>::deserialize(d)?
            .map(|spec| spec.to_duration().map_err(serde::de::Error::custom))
            .transpose()
    }
}
