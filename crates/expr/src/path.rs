//! Simple jq paths (`.detail.host`, `.labels["biz"]`, `.items[0].name`, `.["odd key"]`)
//! evaluated directly on `serde_json::Value`, without jaq. Rule steps and most template
//! expressions are simple paths; evaluating them natively is what makes matching fast and
//! compiling a large rule set cheap.

use serde_json::Value;
use std::fmt;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// `.key` or `["key"]`
    Key(String),
    /// `[3]`, `[-1]` (negative counts from the end, as in jq)
    Index(i64),
}

/// A path made only of keys and literal indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SimplePath {
    segments: Vec<Segment>,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup<'a> {
    /// The value at the path.
    Found(&'a Value),
    /// A key or index along the path does not exist, or a value before the last step is
    /// `null`. (A last step holding an explicit `null` is `Found(null)`.)
    Missing,
    /// A value along the path is not an object/array where the path needs one; jq would
    /// raise an error here (e.g. `.host.name` where `.host` is a string).
    Mismatch,
}

impl SimplePath {
    /// Parse a simple path; `None` if `src` is anything else (then it needs jq).
    pub fn parse(src: &str) -> Option<SimplePath> {
        let s = src.trim();
        let mut rest = s.strip_prefix('.')?;
        let mut segments = Vec::new();
        // right after a `.`: an identifier, a string, `[`, or the end (`.` alone)
        let mut after_dot = true;
        while !rest.is_empty() {
            if after_dot && rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                segments.push(Segment::Key(rest[..end].to_owned()));
                rest = &rest[end..];
            } else if after_dot && rest.starts_with('"') {
                let (key, tail) = json_string(rest)?;
                segments.push(Segment::Key(key));
                rest = tail;
            } else if let Some(inner) = rest.strip_prefix('[') {
                let inner = inner.trim_start();
                let (seg, tail) = if inner.starts_with('"') {
                    let (key, tail) = json_string(inner)?;
                    (Segment::Key(key), tail)
                } else {
                    let end = inner.find(|c: char| !(c.is_ascii_digit() || c == '-'))?;
                    (Segment::Index(inner[..end].parse().ok()?), &inner[end..])
                };
                segments.push(seg);
                rest = tail.trim_start().strip_prefix(']')?;
            } else if let Some(tail) = rest.strip_prefix('.') {
                if after_dot {
                    return None; // `..` is recursion, not a path
                }
                rest = tail;
                after_dot = true;
                continue;
            } else {
                return None;
            }
            after_dot = false;
        }
        if after_dot && !segments.is_empty() {
            return None; // trailing `.`
        }
        Some(SimplePath { segments })
    }

    /// The steps of the path.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Look the path up in `v`.
    pub fn lookup<'a>(&self, v: &'a Value) -> Lookup<'a> {
        let mut cur = v;
        for seg in &self.segments {
            cur = match (seg, cur) {
                (_, Value::Null) => return Lookup::Missing,
                (Segment::Key(k), Value::Object(o)) => match o.get(k) {
                    Some(x) => x,
                    None => return Lookup::Missing,
                },
                (Segment::Index(i), Value::Array(a)) => {
                    let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                    match usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                        Some(x) => x,
                        None => return Lookup::Missing,
                    }
                }
                _ => return Lookup::Mismatch,
            };
        }
        Lookup::Found(cur)
    }

    /// What jq yields for this path: the value, `null` when missing, an error on a mismatch.
    pub fn eval_jq(&self, v: &Value) -> Result<Value, String> {
        match self.lookup(v) {
            Lookup::Found(x) => Ok(x.clone()),
            Lookup::Missing => Ok(Value::Null),
            Lookup::Mismatch => Err(format!(
                "cannot follow path {self}: a value along it has the wrong type"
            )),
        }
    }
}

/// Parse a JSON string literal at the start of `s`; return it and the rest.
fn json_string(s: &str) -> Option<(String, &str)> {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                if bytes.get(i + 1) == Some(&b'(') {
                    return None; // interpolation
                }
                i += 2;
            }
            b'"' => {
                let key: String = serde_json::from_str(&s[..=i]).ok()?;
                return Some((key, &s[i + 1..]));
            }
            _ => i += 1,
        }
    }
    None
}

impl fmt::Display for SimplePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str(".");
        }
        for (i, seg) in self.segments.iter().enumerate() {
            if i == 0 && !matches!(seg, Segment::Key(k) if is_ident(k)) {
                f.write_str(".")?;
            }
            match seg {
                Segment::Key(k) if is_ident(k) => write!(f, ".{k}")?,
                Segment::Key(k) => write!(f, "[{}]", Value::String(k.clone()))?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

fn is_ident(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_simple_paths_only() {
        let ok = [
            ".",
            ".a",
            ".a.b",
            ".a[0]",
            ".a[-1].b",
            ".[\"odd key\"]",
            ".a.\"b c\"",
            ".a[ 2 ]",
            "._x1",
        ];
        for p in ok {
            assert!(SimplePath::parse(p).is_some(), "{p}");
        }
        let bad = [
            "a",
            "..",
            ".a.",
            ".a[]",
            ".a | .b",
            ".a[.b]",
            ".[\"\\(x)\"]",
            ".a-b",
            ".a?",
            "map(.)",
            "",
        ];
        for p in bad {
            assert!(SimplePath::parse(p).is_none(), "{p}");
        }
        let p = SimplePath::parse(".detail[\"odd key\"][0].x").unwrap();
        assert_eq!(p.to_string(), ".detail[\"odd key\"][0].x");
        assert_eq!(
            SimplePath::parse(".[\"a b\"]").unwrap().to_string(),
            ".[\"a b\"]"
        );
    }

    #[test]
    fn lookups() {
        let v = json!({"a": {"b": [1, {"c": null}]}, "s": "x"});
        let get = |p: &str| SimplePath::parse(p).unwrap().lookup(&v);
        assert_eq!(get(".a.b[0]"), Lookup::Found(&json!(1)));
        assert_eq!(get(".a.b[-1].c"), Lookup::Found(&Value::Null));
        assert_eq!(get(".a.b[5]"), Lookup::Missing);
        assert_eq!(get(".a.x.y"), Lookup::Missing);
        assert_eq!(get(".a.b[-1].c.d"), Lookup::Missing);
        assert_eq!(get(".s.x"), Lookup::Mismatch);
        assert_eq!(get(".a[0]"), Lookup::Mismatch);
        assert_eq!(
            SimplePath::parse(".s.x")
                .unwrap()
                .eval_jq(&v)
                .map_err(|_| ()),
            Err(())
        );
        assert_eq!(
            SimplePath::parse(".nope").unwrap().eval_jq(&v),
            Ok(Value::Null)
        );
    }
}
