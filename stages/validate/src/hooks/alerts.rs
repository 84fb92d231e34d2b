//! Alertmanager (webhook payload version 4) and Grafana unified alerting bodies: a group of
//! alerts becomes one event per alert, so a rule sees one alert's own status, labels and
//! annotations, with the group's context beside them. The event id is a digest of the group
//! key, the alert's fingerprint, status and start, so the sender's re-notification of an
//! unchanged alert is the same event and JetStream drops the duplicate.

use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use whale_kernel::envelope::Reason;

use super::{digest_id, Hook, HookError, Raw};

/// The event type of one Alertmanager alert.
pub const ALERTMANAGER_TYPE: &str = "prometheus.alert";
/// The event type of one Grafana alert.
pub const GRAFANA_TYPE: &str = "grafana.alert";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Alertmanager,
    Grafana,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Alertmanager => "Alertmanager webhook (version 4)",
            Kind::Grafana => "Grafana alerting webhook",
        }
    }
}

/// Group fields copied into every alert's event (`status` becomes `groupStatus`).
const GROUP_STRINGS: [&str; 3] = ["receiver", "groupKey", "externalURL"];
const GROUP_LABELS: [&str; 3] = ["groupLabels", "commonLabels", "commonAnnotations"];
/// Grafana's extra group fields, copied as they are.
const GRAFANA_EXTRA: [&str; 5] = ["orgId", "title", "state", "message", "truncatedAlerts"];

fn bad(hook: &Hook, kind: Kind, reasons: Vec<Reason>) -> HookError {
    HookError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "hook {:?}: not a valid {} ({} problem(s)); nothing was accepted",
            hook.name,
            kind.label(),
            reasons.len()
        ),
        reasons,
    )
}

/// `labels`-like maps: an object of strings.
fn string_map(v: &Value, at: &str, reasons: &mut Vec<Reason>) -> bool {
    match v {
        Value::Object(m) => {
            let mut ok = true;
            for (k, x) in m {
                if !x.is_string() {
                    ok = false;
                    reasons.push(Reason::new(
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        format!("must be a string, got {}", whale_kernel::json_type(x)),
                    ));
                }
            }
            ok
        }
        other => {
            reasons.push(Reason::new(
                at,
                format!(
                    "must be an object of strings, got {}",
                    whale_kernel::json_type(other)
                ),
            ));
            false
        }
    }
}

fn time_of(v: Option<&Value>) -> Option<OffsetDateTime> {
    v.and_then(Value::as_str)
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        // Alertmanager's "no end" is 0001-01-01T00:00:00Z.
        .filter(|t| t.year() > 1)
}

/// The alert's labels' fingerprint when the sender gave none: a digest of the sorted labels.
fn fingerprint(labels: &Map<String, Value>) -> String {
    let flat: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let refs: Vec<&str> = flat.iter().map(String::as_str).collect();
    digest_id("fp", &refs)[3..19].to_owned()
}

/// Splits a group body into one raw envelope per alert; every problem is reported with its
/// pointer into the body.
pub(crate) fn split(kind: Kind, hook: &Hook, body: Value) -> Result<Vec<Raw>, HookError> {
    let Value::Object(mut group) = body else {
        return Err(bad(
            hook,
            kind,
            vec![Reason::new(
                "",
                format!(
                    "the body must be a JSON object, got {}",
                    whale_kernel::json_type(&body)
                ),
            )],
        ));
    };
    let mut reasons = Vec::new();
    if kind == Kind::Alertmanager {
        match group.get("version") {
            Some(Value::String(v)) if v == "4" => {}
            None => {}
            Some(v) => reasons.push(Reason::new(
                "/version",
                format!("this adapter reads Alertmanager webhook version \"4\", got {v}"),
            )),
        }
    }
    let alerts = match group.remove("alerts") {
        Some(Value::Array(a)) => a,
        Some(other) => {
            reasons.push(Reason::new(
                "/alerts",
                format!(
                    "must be an array of alerts, got {}",
                    whale_kernel::json_type(&other)
                ),
            ));
            return Err(bad(hook, kind, reasons));
        }
        None => {
            reasons.push(Reason::new(
                "/alerts",
                format!("missing: a {} carries its alerts in `alerts`", kind.label()),
            ));
            return Err(bad(hook, kind, reasons));
        }
    };
    if alerts.len() > hook.max_items {
        return Err(hook.too_many(alerts.len()));
    }
    // The group's context, checked once.
    let mut context = Map::new();
    for k in GROUP_STRINGS {
        match group.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                context.insert(k.into(), Value::String(s.clone()));
            }
            Some(other) => reasons.push(Reason::new(
                format!("/{k}"),
                format!("must be a string, got {}", whale_kernel::json_type(other)),
            )),
        }
    }
    for k in GROUP_LABELS {
        match group.get(k) {
            None | Some(Value::Null) => {}
            Some(v) => {
                if string_map(v, &format!("/{k}"), &mut reasons) {
                    context.insert(k.into(), v.clone());
                }
            }
        }
    }
    match group.get("status") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            context.insert("groupStatus".into(), Value::String(s.clone()));
        }
        Some(other) => reasons.push(Reason::new(
            "/status",
            format!("must be a string, got {}", whale_kernel::json_type(other)),
        )),
    }
    if kind == Kind::Grafana {
        for k in GRAFANA_EXTRA {
            if let Some(v) = group.get(k) {
                context.insert(k.into(), v.clone());
            }
        }
    } else if let Some(v) = group.get("truncatedAlerts") {
        context.insert("truncatedAlerts".into(), v.clone());
    }
    let group_key = context
        .get("groupKey")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let source = match context.get("externalURL").and_then(Value::as_str) {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ => format!("hook/{}", hook.name),
    };
    let (event_type, prefix) = match kind {
        Kind::Alertmanager => (super::ALERTMANAGER_TYPE, "am"),
        Kind::Grafana => (super::GRAFANA_TYPE, "gf"),
    };
    let mut out = Vec::with_capacity(alerts.len());
    for (i, alert) in alerts.into_iter().enumerate() {
        let at = format!("/alerts/{i}");
        let Value::Object(mut a) = alert else {
            reasons.push(Reason::new(
                &at,
                format!(
                    "an alert must be a JSON object, got {}",
                    whale_kernel::json_type(&alert)
                ),
            ));
            continue;
        };
        let before = reasons.len();
        let status = match a.get("status") {
            Some(Value::String(s)) if s == "firing" || s == "resolved" => s.clone(),
            Some(v) => {
                reasons.push(Reason::new(
                    format!("{at}/status"),
                    format!("must be \"firing\" or \"resolved\", got {v}"),
                ));
                String::new()
            }
            None => {
                reasons.push(Reason::new(
                    format!("{at}/status"),
                    "missing: every alert has a status (firing or resolved)",
                ));
                String::new()
            }
        };
        match a.get("labels") {
            Some(v) => {
                string_map(v, &format!("{at}/labels"), &mut reasons);
            }
            None => reasons.push(Reason::new(
                format!("{at}/labels"),
                "missing: every alert has labels",
            )),
        }
        if let Some(v) = a.get("annotations") {
            string_map(v, &format!("{at}/annotations"), &mut reasons);
        }
        let starts = match a.get("startsAt") {
            Some(Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
                Ok(_) => s.clone(),
                Err(_) => {
                    reasons.push(Reason::new(
                        format!("{at}/startsAt"),
                        format!("{s:?} is not an RFC 3339 time"),
                    ));
                    String::new()
                }
            },
            Some(v) => {
                reasons.push(Reason::new(
                    format!("{at}/startsAt"),
                    format!(
                        "must be an RFC 3339 string, got {}",
                        whale_kernel::json_type(v)
                    ),
                ));
                String::new()
            }
            None => {
                reasons.push(Reason::new(
                    format!("{at}/startsAt"),
                    "missing: every alert has startsAt",
                ));
                String::new()
            }
        };
        for k in ["endsAt", "generatorURL", "fingerprint"] {
            match a.get(k) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(v) => reasons.push(Reason::new(
                    format!("{at}/{k}"),
                    format!("must be a string, got {}", whale_kernel::json_type(v)),
                )),
            }
        }
        if reasons.len() > before {
            continue;
        }
        let fp = match a.get("fingerprint").and_then(Value::as_str) {
            Some(f) if !f.is_empty() => f.to_owned(),
            _ => {
                let f = a
                    .get("labels")
                    .and_then(Value::as_object)
                    .map(fingerprint)
                    .unwrap_or_default();
                a.insert("fingerprint".into(), Value::String(f.clone()));
                f
            }
        };
        let time = if status == "resolved" {
            time_of(a.get("endsAt"))
        } else {
            None
        }
        .or_else(|| time_of(a.get("startsAt")));
        let id = digest_id(prefix, &[&group_key, &fp, &status, &starts]);
        for (k, v) in &context {
            a.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let mut ev = json!({
            "id": id,
            "event_type": event_type,
            "source": source,
            "detail": Value::Object(a),
        });
        if let Some(t) = time.and_then(|t| t.format(&Rfc3339).ok()) {
            ev["time"] = Value::String(t);
        }
        out.push(Raw { at, value: ev });
    }
    if !reasons.is_empty() {
        return Err(bad(hook, kind, reasons));
    }
    Ok(out)
}
