//! Strict JSON parsing for events: builds a `serde_json::Value` but refuses duplicate object keys
//! (two parsers could disagree on which one wins) and nesting deeper than the limit, naming the
//! JSON pointer of the offending place. Used for every event whichever way it arrived (HTTP,
//! `whale publish`, validate on NATS) and for a `detail` sent as a JSON string.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{escape_pointer, Reason};

/// Where the parser is, as a linked list on the stack (built into a pointer only on error).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn pointer(&self, prefix: &str) -> String {
        let mut segs = Vec::new();
        let mut p = self;
        loop {
            match p {
                Path::Root => break,
                Path::Key(up, k) => {
                    segs.push(escape_pointer(k));
                    p = up;
                }
                Path::Index(up, i) => {
                    segs.push(i.to_string());
                    p = up;
                }
            }
        }
        let mut out = prefix.to_owned();
        for s in segs.iter().rev() {
            out.push('/');
            out.push_str(s);
        }
        out
    }
}

struct Seed<'a, 'p> {
    /// Deepest nesting allowed for containers (a container at the root is level `base + 1`).
    max_depth: usize,
    depth: usize,
    path: Path<'p>,
    prefix: &'a str,
    fail: &'a RefCell<Option<Reason>>,
}

impl Seed<'_, '_> {
    fn refuse<E: de::Error>(&self, pointer: String, message: String) -> E {
        let err = E::custom(&message);
        let mut f = self.fail.borrow_mut();
        if f.is_none() {
            *f = Some(Reason::new(pointer, message));
        }
        err
    }

    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let d = self.depth + 1;
        if d > self.max_depth {
            return Err(self.refuse(
                self.path.pointer(self.prefix),
                format!(
                    "nests deeper than {} levels (events.max_depth): flatten the event",
                    self.max_depth
                ),
            ));
        }
        Ok(d)
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter::<A::Error>()?;
        let mut out = Vec::new();
        loop {
            let path = Path::Index(&self.path, out.len());
            let seed = Seed {
                max_depth: self.max_depth,
                depth,
                path,
                prefix: self.prefix,
                fail: self.fail,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => break,
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter::<A::Error>()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let pointer = Path::Key(&self.path, &key).pointer(self.prefix);
                return Err(self.refuse(
                    pointer,
                    format!("duplicate key {key:?}: each key may appear once in an object"),
                ));
            }
            let seed = Seed {
                max_depth: self.max_depth,
                depth,
                path: Path::Key(&self.path, &key),
                prefix: self.prefix,
                fail: self.fail,
            };
            let v = map.next_value_seed(seed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `raw` (already known to be UTF-8) into a value, refusing duplicate keys and nesting
/// deeper than `max_depth`; `prefix` is put in front of every pointer (`/detail` for a decoded
/// string detail). Never panics and never recurses deeper than `max_depth` (plus serde_json's own
/// limit of 128).
pub fn parse(raw: &[u8], max_depth: usize, prefix: &str) -> Result<Value, Reason> {
    let fail = RefCell::new(None);
    let seed = Seed {
        max_depth,
        depth: 0,
        path: Path::Root,
        prefix,
        fail: &fail,
    };
    let mut de = serde_json::Deserializer::from_slice(raw);
    let r = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match r {
        Ok(v) => Ok(v),
        Err(e) => Err(match fail.into_inner() {
            Some(reason) => reason,
            None if e.to_string().contains("recursion limit") => Reason::new(
                prefix,
                format!(
                    "nests deeper than {max_depth} levels (events.max_depth; line {}, column {}): flatten the event",
                    e.line(),
                    e.column()
                ),
            ),
            None => Reason::new(prefix, format!("malformed JSON: {e}")),
        }),
    }
}
