//! Webhook adapters (`POST /v1/hooks/<name>`, `whale hooks test`): Alertmanager, Grafana and
//! most other senders cannot wrap their payloads in whale's envelope, so an adapter turns one
//! foreign body into envelopes that then go the normal way (ingest ids, validation against the
//! type's schema, rejection records). Pure: no I/O, so the CLI runs the same code offline.

mod alerts;
mod generic;

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use whale_kernel::config::HookConfig;
use whale_kernel::envelope::{self, Defaults, Limits, Reason, StringDetail};
use whale_kernel::{Config, Envelope};

pub use alerts::{ALERTMANAGER_TYPE, GRAFANA_TYPE};

/// The adapters that exist without a `[[hooks]]` entry (their hook has the adapter's name).
pub const BUILTIN: [&str; 3] = ["alertmanager", "grafana", "cloudevents"];

/// How a hook reads its body.
#[derive(Debug)]
pub enum Adapter {
    /// Alertmanager webhook payload version 4: one `prometheus.alert` event per alert.
    Alertmanager,
    /// Grafana unified alerting webhook: one `grafana.alert` event per alert.
    Grafana,
    /// CloudEvents 1.0 structured mode: one event, or an array (batch mode).
    CloudEvents,
    /// A jq program from the body to one envelope or an array of envelopes.
    Generic(Box<whale_expr::Filter>),
}

impl Adapter {
    pub fn name(&self) -> &'static str {
        match self {
            Adapter::Alertmanager => "alertmanager",
            Adapter::Grafana => "grafana",
            Adapter::CloudEvents => "cloudevents",
            Adapter::Generic(_) => "generic",
        }
    }

    /// The event type(s) it emits, for `whale hooks list`.
    pub fn emits(&self) -> &'static str {
        match self {
            Adapter::Alertmanager => ALERTMANAGER_TYPE,
            Adapter::Grafana => GRAFANA_TYPE,
            Adapter::CloudEvents => "(the CloudEvent's type)",
            Adapter::Generic(_) => "(what the jq program sets)",
        }
    }
}

/// One configured hook.
#[derive(Debug)]
pub struct Hook {
    pub name: String,
    pub adapter: Adapter,
    /// Token names allowed to post (empty: any producer).
    pub tokens: Vec<String>,
    pub max_body_bytes: usize,
    pub max_items: usize,
    /// The generic adapter's program, as configured.
    pub jq: Option<String>,
}

/// Why a body was refused: the HTTP status, one sentence, and where in the body (JSON
/// pointers, or `output N` for a generic mapping's N-th envelope).
#[derive(Debug, Clone, Serialize)]
pub struct HookError {
    #[serde(skip)]
    pub status: StatusCode,
    pub message: String,
    pub reasons: Vec<Reason>,
}

impl HookError {
    fn new(status: StatusCode, message: impl Into<String>, reasons: Vec<Reason>) -> Self {
        HookError {
            status,
            message: message.into(),
            reasons,
        }
    }
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for r in &self.reasons {
            write!(f, "\n  {r}")?;
        }
        Ok(())
    }
}

/// Hook names are one URL path segment and one subject token.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Hook {
    /// Builds a hook from its entry; a bad entry is an error naming it.
    pub fn from_config(c: &HookConfig) -> anyhow::Result<Hook> {
        let name = &c.name;
        if !is_valid_name(name) {
            bail!("[[hooks]] name {name:?}: use 1 to 64 letters, digits, '_' or '-'");
        }
        let kind = c
            .adapter
            .as_deref()
            .unwrap_or(if BUILTIN.contains(&name.as_str()) {
                name.as_str()
            } else {
                "generic"
            });
        let adapter = match kind {
            "alertmanager" => Adapter::Alertmanager,
            "grafana" => Adapter::Grafana,
            "cloudevents" => Adapter::CloudEvents,
            "generic" => {
                let Some(src) = c.jq.as_deref() else {
                    bail!("[[hooks]] {name:?}: the generic adapter needs `jq = \"...\"`, a program from the body to one envelope or an array of envelopes");
                };
                let filter = generic::compile(src)
                    .with_context(|| format!("[[hooks]] {name:?}: jq does not compile"))?;
                Adapter::Generic(Box::new(filter))
            }
            other => bail!(
                "[[hooks]] {name:?}: unknown adapter {other:?}; use alertmanager, grafana, cloudevents or generic"
            ),
        };
        if c.jq.is_some() && !matches!(adapter, Adapter::Generic(_)) {
            bail!("[[hooks]] {name:?}: `jq` is for adapter = \"generic\" only");
        }
        if c.max_body_bytes == 0 || c.max_items == 0 {
            bail!("[[hooks]] {name:?}: max_body_bytes and max_items must be above zero");
        }
        Ok(Hook {
            name: name.clone(),
            adapter,
            tokens: c.tokens.clone(),
            max_body_bytes: c.max_body_bytes,
            max_items: c.max_items,
            jq: c.jq.clone(),
        })
    }

    /// Whether the principal `who` may post here (`None`: auth is off).
    pub fn allows(&self, who: Option<&str>) -> bool {
        match who {
            None => true,
            Some(n) => self.tokens.is_empty() || self.tokens.iter().any(|t| t == n),
        }
    }

    /// Turns a body into normalized envelopes, all or nothing. `limits` are the event limits
    /// (`events.max_bytes`, `events.max_depth`); `now` fills in missing times.
    pub fn convert(
        &self,
        body: &[u8],
        limits: &Limits,
        now: OffsetDateTime,
    ) -> Result<Vec<Envelope>, HookError> {
        if body.len() > self.max_body_bytes {
            return Err(HookError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is {} bytes; hook {:?} takes at most {} (hooks max_body_bytes)",
                    body.len(),
                    self.name,
                    self.max_body_bytes
                ),
                vec![],
            ));
        }
        let parse_limits = Limits {
            max_bytes: self.max_body_bytes,
            max_depth: limits.max_depth,
        };
        let value = envelope::parse_bytes(body, &parse_limits).map_err(|r| {
            HookError::new(
                StatusCode::BAD_REQUEST,
                format!("the body of hook {:?} is not acceptable JSON", self.name),
                vec![r],
            )
        })?;
        let raw = match &self.adapter {
            Adapter::Alertmanager => alerts::split(alerts::Kind::Alertmanager, self, value),
            Adapter::Grafana => alerts::split(alerts::Kind::Grafana, self, value),
            Adapter::CloudEvents => cloudevents(self, value),
            Adapter::Generic(f) => generic::run(f, self, value),
        }?;
        self.normalize(raw, limits, now)
    }

    fn too_many(&self, n: usize) -> HookError {
        HookError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body becomes {n} events; hook {:?} takes at most {} per request (hooks max_items): send fewer per request (Alertmanager: max_alerts in the webhook config)",
                self.name, self.max_items
            ),
            vec![],
        )
    }

    /// Each raw envelope through the kernel's normalization; a missing id becomes a digest of
    /// the hook and the envelope, so a sender's retry of the same body is deduplicated.
    fn normalize(
        &self,
        raw: Vec<Raw>,
        limits: &Limits,
        now: OffsetDateTime,
    ) -> Result<Vec<Envelope>, HookError> {
        if raw.len() > self.max_items {
            return Err(self.too_many(raw.len()));
        }
        let source = format!("hook/{}", self.name);
        let mut out = Vec::with_capacity(raw.len());
        let mut reasons = Vec::new();
        let mut too_large = false;
        for Raw { at, value } in raw {
            let id = digest_id("hk", &[&self.name, &value.to_string()]);
            let defaults = Defaults {
                event_type: None,
                id,
                time: now,
                source: &source,
            };
            let normalized =
                envelope::normalize_with(value, &defaults, limits, StringDetail::Decode).and_then(
                    |ev| match crate::reserved_type(&ev.event_type) {
                        Some(r) => Err(vec![r]),
                        None => Ok(ev),
                    },
                );
            match normalized {
                Ok(mut ev) => {
                    ev.labels
                        .entry("hook".into())
                        .or_insert_with(|| self.name.clone());
                    let size = serde_json::to_vec(&ev).map(|v| v.len()).unwrap_or(0);
                    if size > limits.max_bytes {
                        too_large = true;
                        reasons.push(Reason::new(
                            at,
                            format!(
                                "becomes an event of {size} bytes; the limit is {} (events.max_bytes)",
                                limits.max_bytes
                            ),
                        ));
                    } else {
                        out.push(ev);
                    }
                }
                Err(rs) => reasons.extend(rs.into_iter().map(|r| {
                    let p = if r.pointer.is_empty() {
                        at.clone()
                    } else if at.is_empty() || at.starts_with('/') {
                        format!("{at}{}", r.pointer)
                    } else {
                        format!("{at} {}", r.pointer)
                    };
                    Reason::new(p, r.message)
                })),
            }
        }
        if !reasons.is_empty() {
            let status = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(HookError::new(
                status,
                format!(
                    "hook {:?}: {} problem(s) in what the body becomes; nothing was accepted",
                    self.name,
                    reasons.len()
                ),
                reasons,
            ));
        }
        Ok(out)
    }
}

/// One envelope an adapter made, and where it came from (a JSON pointer into the body, or
/// `output N` for a jq mapping) for error messages.
#[derive(Debug)]
pub(crate) struct Raw {
    pub at: String,
    pub value: Value,
}

/// `prefix-` + 32 hex digits of SHA-256 over the parts (separated so that parts cannot run
/// into each other).
pub(crate) fn digest_id(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    format!("{prefix}-{}", &hex::encode(d)[..32])
}

/// CloudEvents 1.0 structured mode: one object, or an array of them (batch mode).
fn cloudevents(hook: &Hook, value: Value) -> Result<Vec<Raw>, HookError> {
    let items = match value {
        Value::Array(a) => {
            if a.len() > hook.max_items {
                return Err(hook.too_many(a.len()));
            }
            a.into_iter()
                .enumerate()
                .map(|(i, v)| (format!("/{i}"), v))
                .collect::<Vec<_>>()
        }
        v => vec![(String::new(), v)],
    };
    let mut reasons = Vec::new();
    let mut out = Vec::new();
    for (at, v) in items {
        match &v {
            Value::Object(o) if o.contains_key("specversion") => out.push(Raw { at, value: v }),
            Value::Object(_) => reasons.push(Reason::new(
                at,
                "not a CloudEvent: `specversion` is missing (send structured mode, application/cloudevents+json, or a batch array of them)",
            )),
            other => reasons.push(Reason::new(
                at,
                format!(
                    "a CloudEvent must be a JSON object, got {}",
                    whale_kernel::json_type(other)
                ),
            )),
        }
    }
    if !reasons.is_empty() {
        return Err(HookError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "hook {:?}: {} item(s) are not CloudEvents; nothing was accepted",
                hook.name,
                reasons.len()
            ),
            reasons,
        ));
    }
    Ok(out)
}

/// Every hook whale serves: the built-in ones, then `[[hooks]]` entries (which may replace a
/// built-in one of the same name).
#[derive(Debug, Default)]
pub struct Hooks {
    by_name: BTreeMap<String, Hook>,
}

impl Hooks {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Hooks> {
        let mut by_name = BTreeMap::new();
        for b in BUILTIN {
            by_name.insert(b.to_owned(), Hook::from_config(&HookConfig::builtin(b))?);
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &cfg.hooks {
            if !seen.insert(c.name.as_str()) {
                bail!("[[hooks]] {:?} is configured twice", c.name);
            }
            let h = Hook::from_config(c)?;
            by_name.insert(h.name.clone(), h);
        }
        Ok(Hooks { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Hook> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Hook> {
        self.by_name.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests;
