//! Small pieces every handler uses: StackStorm's error body, its timestamp spelling, Mongo-like
//! ids, Python-style `repr` for messages copied from StackStorm, and "drop falsy fields".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use time::macros::format_description;
use time::OffsetDateTime;

/// An error answered as StackStorm does: `{"faultstring": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub faultstring: String,
}

impl ApiError {
    pub fn new(status: StatusCode, faultstring: impl Into<String>) -> Self {
        Self {
            status,
            faultstring: faultstring.into(),
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    pub fn not_found_id(id: &str) -> Self {
        let msg = format!("Unable to identify resource with id \"{id}\".");
        Self::new(StatusCode::NOT_FOUND, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"faultstring": self.faultstring}))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `2026-01-02T03:04:05.123456Z`.
pub fn fmt_ts(t: OffsetDateTime) -> String {
    let f =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.format(&f).unwrap_or_default()
}

/// Parses what StackStorm accepts as a timestamp filter.
pub fn parse_ts(s: &str) -> Option<OffsetDateTime> {
    let mut t = s.trim().replacen(' ', "T", 1);
    if t.ends_with("+00") {
        t.push_str(":00");
    } else if t.ends_with("+0000") {
        t.truncate(t.len() - 5);
        t.push('Z');
    }
    OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
}

/// A 24-hex id like a Mongo ObjectId: seconds, a per-process random part, a counter, so ids
/// sort by creation.
pub fn object_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let salt = *SALT.get_or_init(|| {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        (nanos ^ (u64::from(std::process::id()) << 20)) & 0xff_ffff_ffff
    });
    let secs = OffsetDateTime::now_utc().unix_timestamp() as u32;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
    format!("{secs:08x}{salt:010x}{n:06x}")
}

/// A stable 24-hex id for a named thing (actions, runners), so repeated GETs agree.
pub fn stable_id(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("5f0000000000{:012x}", h & 0xffff_ffff_ffff)
}

/// Python's `repr` of a JSON value, as StackStorm's messages quote values.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            let items: Vec<_> = o
                .iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Drops falsy top-level fields, like `ActionExecutionAPI.from_model`.
pub fn drop_falsy(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter().filter(|(_, v)| truthy(v)).collect()
}

/// Keeps only the dotted `paths` of `doc` (`action.ref`, `context.user`), as
/// `include_attributes` does.
pub fn project(doc: &Value, paths: &[&str]) -> Value {
    let mut out = Value::Object(Map::new());
    for path in paths {
        let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
        let Some(found) = parts.iter().try_fold(doc, |v, p| v.get(p)) else {
            continue;
        };
        let mut slot = &mut out;
        for (i, p) in parts.iter().enumerate() {
            let Value::Object(map) = slot else { break };
            if i + 1 == parts.len() {
                map.insert((*p).to_owned(), found.clone());
                break;
            }
            slot = map.entry(*p).or_insert_with(|| Value::Object(Map::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_like_python() {
        assert_eq!(py_repr(&json!("abc")), "'abc'");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(
            py_repr(&json!({"a": [1, true, null]})),
            "{'a': [1, True, None]}"
        );
    }

    #[test]
    fn projects_dotted_paths() {
        let doc = json!({"id": "1", "action": {"ref": "a.b", "pack": "a"}, "status": "x"});
        let got = project(&doc, &["id", "action.ref", "missing.x"]);
        assert_eq!(got, json!({"id": "1", "action": {"ref": "a.b"}}));
    }

    #[test]
    fn ids_sort_by_creation_and_timestamps_round_trip() {
        let (a, b) = (object_id(), object_id());
        assert!(a < b && a.len() == 24);
        let t = parse_ts("2026-01-02T03:04:05.123456Z").unwrap();
        assert_eq!(fmt_ts(t), "2026-01-02T03:04:05.123456Z");
        assert_eq!(parse_ts("2026-01-02 03:04:05.123456+00"), Some(t));
    }
}
