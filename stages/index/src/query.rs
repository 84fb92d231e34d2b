//! The one query syntax both backends answer: a Lucene-style query string parsed here into a
//! small AST, which each backend translates itself (tantivy queries, OpenSearch query DSL). Parsing
//! once in whale, rather than handing the string to tantivy's or OpenSearch's own parser, is what
//! makes the same query mean the same thing on both.
//!
//! ```text
//! event_type:vm.disk_usage AND detail.host:web-12     field terms, AND / OR / NOT, ( )
//! detail.usage_pct:[90 TO 100]   detail.usage_pct:>=90   ranges ([ ] inclusive, { } exclusive, *)
//! kernel oops   "disk full"   oop*                     free text: words, phrases, wildcards
//! detail.host:web-*   _exists_:detail.code   detail.code:*   wildcards and existence
//! kind:(event OR rejected)   -kind:task   time:[2026-11-28 TO now-1h]
//! ```
//!
//! Juxtaposed clauses are ANDed. Keyword fields and `detail.*`/`labels.*` values match exactly
//! (case-sensitive); free text matches words case-insensitively. A `detail.*` value that is a
//! number also matches numerically (`detail.code:1` matches `1` and `1.0`), and a range whose
//! bounds are numbers compares numerically.

use std::fmt;
use std::ops::Bound;

use time::OffsetDateTime;

/// Top-level keyword fields (exact, case-sensitive values).
pub const KEYWORDS: [&str; 12] = [
    "kind",
    "id",
    "event_id",
    "event_type",
    "source",
    "rule",
    "task_id",
    "cluster",
    "status",
    "execution_id",
    "subject",
    "index_error",
];

/// The objects whose arbitrary keys are searchable as `<root>.<path>`.
pub const FLAT_ROOTS: [&str; 2] = ["detail", "labels"];

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Every document.
    All,
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
    Clause(Field, Pred),
}

/// What a clause looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// Free text over every string of the record (words, lowercased).
    Text,
    /// One of [`KEYWORDS`].
    Keyword(&'static str),
    /// `time` (the event's time; a record's publish time) or `seen` (when whale stored it on NATS).
    Date(&'static str),
    /// `detail.<path>` or `labels.<path>`; an empty path means any key of that object.
    Flat { root: &'static str, path: String },
}

impl Field {
    /// `detail.host`, `kind`, ...: the name as written in queries.
    pub fn name(&self) -> String {
        match self {
            Field::Text => "text".into(),
            Field::Keyword(k) | Field::Date(k) => (*k).into(),
            Field::Flat { root, path } if path.is_empty() => (*root).into(),
            Field::Flat { root, path } => format!("{root}.{path}"),
        }
    }
}

/// What a clause requires of its field.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    /// An unquoted value: exact for keyword and flat fields, word(s) for text.
    Term(String),
    /// A quoted value: exact for keyword and flat fields, a phrase for text.
    Phrase(String),
    /// A value with `*` / `?` wildcards.
    Wildcard(String),
    /// The field has a value (`field:*`, `_exists_:field`).
    Exists,
    /// Lexicographic range (keyword fields; flat fields when a bound is not a number).
    StrRange(Bound<String>, Bound<String>),
    /// Numeric range on a flat field (both bounds numbers or `*`).
    NumRange(Bound<f64>, Bound<f64>),
    /// Range on a date field, bounds resolved when the query was parsed.
    TimeRange(Bound<OffsetDateTime>, Bound<OffsetDateTime>),
}

/// A query that cannot be parsed: where (character offset) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct QueryError {
    pub pos: usize,
    pub msg: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query error at character {}: {}", self.pos + 1, self.msg)
    }
}

/// Most characters of the query an error shows.
pub const EXPLAIN_CHARS: usize = 120;

impl QueryError {
    /// The error with the query and a caret under the offending character.
    /// A long query is shown as the part around the error (at most [`EXPLAIN_CHARS`] characters),
    /// so that an error never echoes a whole oversized query back.
    pub fn explain(&self, query: &str) -> String {
        let col: usize = query.get(..self.pos).unwrap_or(query).chars().count();
        let total = query.chars().count();
        let first = col
            .saturating_sub(EXPLAIN_CHARS / 2)
            .min(total.saturating_sub(EXPLAIN_CHARS));
        let shown: String = query.chars().skip(first).take(EXPLAIN_CHARS).collect();
        let (pre, post) = (
            if first > 0 { "…" } else { "" },
            if first + EXPLAIN_CHARS < total {
                "…"
            } else {
                ""
            },
        );
        let caret = col - first + pre.chars().count();
        format!("{self}\n  {pre}{shown}{post}\n  {}^", " ".repeat(caret))
    }
}

/// Bounds on one query, checked while parsing, so that no query can overflow the stack of a
/// recursive pass (parsing, [`simplify`], both translations, tantivy's scorers) or make one
/// search do unbounded work. Set in `[index]` of whale.toml (docs/limits.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest query, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting: every `(` group and every `NOT` / `!` / `-` / `+` adds one level.
    pub max_depth: usize,
    /// Most clauses: every field:value, range, wildcard and word of free text counts one (a
    /// number on a `detail.*` key and `detail.<key>:*` count two), as OpenSearch counts them.
    pub max_clauses: usize,
    /// Most clauses that walk a field's whole term dictionary with a pattern: wildcard values,
    /// `field:*` / `_exists_:` on keyword, `detail.*` and `labels.*` fields, and `detail:value`.
    pub max_wildcards: usize,
    /// Most `*` and `?` in one value: each `?` after a `*` can double the automaton a pattern
    /// compiles to (measured: 6 take up to ~40 ms to compile, 8 up to ~0.4 s).
    pub max_wildcard_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4096,
            max_depth: 32,
            max_clauses: 256,
            max_wildcards: 8,
            max_wildcard_chars: 6,
        }
    }
}

/// Deepest nesting any configuration may allow: what every recursive pass over a query is
/// proven to handle on a 2 MiB thread stack (see the tests).
pub const HARD_MAX_DEPTH: usize = 128;
/// Most clauses any configuration may allow: OpenSearch's default
/// `indices.query.bool.max_clause_count`, which counts every clause of the whole query.
pub const HARD_MAX_CLAUSES: usize = 1024;
/// Deepest query tree a translation accepts: a query parsed within [`HARD_MAX_DEPTH`] is at
/// most about twice as deep (a group is an OR holding an AND), plus the time and kind filters.
pub const MAX_TREE_DEPTH: usize = 2 * HARD_MAX_DEPTH + 8;
/// Most dictionary-walking clauses any configuration may allow.
pub const HARD_MAX_WILDCARDS: usize = 64;
/// Most `*` / `?` in one value any configuration may allow.
pub const HARD_MAX_WILDCARD_CHARS: usize = 8;

impl Limits {
    /// The limits with every value within [`HARD_MAX_DEPTH`] and [`HARD_MAX_CLAUSES`] and at
    /// least 1.
    pub fn capped(self) -> Limits {
        Limits {
            max_bytes: self.max_bytes.max(1),
            max_depth: self.max_depth.clamp(1, HARD_MAX_DEPTH),
            max_clauses: self.max_clauses.clamp(1, HARD_MAX_CLAUSES),
            max_wildcards: self.max_wildcards.min(HARD_MAX_WILDCARDS),
            max_wildcard_chars: self.max_wildcard_chars.clamp(1, HARD_MAX_WILDCARD_CHARS),
        }
    }

    /// The `[index]` limits of the configuration.
    pub fn from_config(c: &whale_kernel::config::IndexConfig) -> Limits {
        Limits {
            max_bytes: c.query_max_bytes,
            max_depth: c.query_max_depth,
            max_clauses: c.query_max_clauses,
            max_wildcards: c.query_max_wildcards,
            max_wildcard_chars: c.query_max_wildcard_chars,
        }
        .capped()
    }

    /// Checks the clause count of a whole query (as a backend will receive it).
    pub fn check_clauses(&self, q: &Query) -> Result<(), QueryError> {
        let n = clauses(q);
        if n > self.max_clauses {
            return Err(QueryError {
                pos: 0,
                msg: format!(
                    "the query has {n} clauses, more than the limit of {} (index.query_max_clauses): \
                     use fewer terms, e.g. a wildcard or a range instead of many ORs",
                    self.max_clauses
                ),
            });
        }
        let n = scans(q);
        if n > self.max_wildcards {
            return Err(QueryError {
                pos: 0,
                msg: format!(
                    "the query has {n} wildcard or exists clauses, more than the limit of {} \
                     (index.query_max_wildcards; each walks a field's whole dictionary): use exact \
                     values or fewer patterns",
                    self.max_wildcards
                ),
            });
        }
        Ok(())
    }
}

/// How many clauses of `q` walk a field's whole term dictionary with a pattern (the costly ones:
/// see [`Limits::max_wildcards`]). Iterative.
pub fn scans(q: &Query) -> usize {
    let mut n = 0usize;
    let mut stack = vec![q];
    while let Some(q) = stack.pop() {
        match q {
            Query::And(v) | Query::Or(v) => stack.extend(v),
            Query::Not(x) => stack.push(x),
            Query::All => {}
            Query::Clause(f, p) => {
                let scan = match (f, p) {
                    (_, Pred::Wildcard(_)) => true,
                    (Field::Keyword(_) | Field::Flat { .. }, Pred::Exists) => true,
                    (Field::Flat { path, .. }, Pred::Term(_) | Pred::Phrase(_)) => path.is_empty(),
                    (Field::Keyword(_), Pred::StrRange(lo, hi)) => {
                        *lo == Bound::Unbounded && *hi == Bound::Unbounded
                    }
                    _ => false,
                };
                n += usize::from(scan);
            }
        }
    }
    n
}

/// How many clauses a backend sees for `q` (OpenSearch counts every leaf query and every word of
/// a phrase). Iterative, so it is safe on any tree.
pub fn clauses(q: &Query) -> usize {
    let mut n = 0usize;
    let mut stack = vec![q];
    while let Some(q) = stack.pop() {
        match q {
            Query::All => n += 1,
            Query::And(v) => {
                if v.iter().all(|x| matches!(x, Query::Not(_))) {
                    n += 1; // the match_all a purely negative AND gets
                }
                // A NOT in an AND becomes a must_not clause of it: no match_all of its own.
                stack.extend(v.iter().map(|x| match x {
                    Query::Not(inner) => &**inner,
                    x => x,
                }));
            }
            Query::Or(v) => stack.extend(v),
            Query::Not(x) => {
                n += 1; // the match_all a NOT is subtracted from
                stack.push(x);
            }
            Query::Clause(f, p) => n += clause_weight(f, p),
        }
    }
    n
}

fn clause_weight(f: &Field, p: &Pred) -> usize {
    match (f, p) {
        (Field::Text, Pred::Term(v) | Pred::Phrase(v)) => words(v).max(1),
        (Field::Flat { path, .. }, Pred::Term(v) | Pred::Phrase(v))
            if !path.is_empty() && parse_number(v).is_some() =>
        {
            2
        }
        (Field::Flat { path, .. }, Pred::Exists) if !path.is_empty() => 2,
        _ => 1,
    }
}

/// Words of free text, as the tokenizers split them (runs of letters and digits).
pub fn words(s: &str) -> usize {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count()
}

/// Depth of a query tree, without recursion.
pub fn depth(q: &Query) -> usize {
    let mut max = 0;
    let mut stack = vec![(q, 1usize)];
    while let Some((q, d)) = stack.pop() {
        max = max.max(d);
        match q {
            Query::And(v) | Query::Or(v) => stack.extend(v.iter().map(|x| (x, d + 1))),
            Query::Not(x) => stack.push((x, d + 1)),
            Query::All | Query::Clause(..) => {}
        }
    }
    max
}

/// Parses a query string (empty or `*` = everything) within the default [`Limits`]; relative
/// times resolve against now.
pub fn parse(s: &str) -> Result<Query, QueryError> {
    parse_with(s, OffsetDateTime::now_utc(), &Limits::default())
}

/// Parses with relative times (`1h`, `now`) resolved against `now`, within the default limits.
pub fn parse_at(s: &str, now: OffsetDateTime) -> Result<Query, QueryError> {
    parse_with(s, now, &Limits::default())
}

/// Parses within `limits` (capped to the hard maxima); relative times resolve against `now`.
pub fn parse_with(s: &str, now: OffsetDateTime, limits: &Limits) -> Result<Query, QueryError> {
    let limits = limits.capped();
    if s.len() > limits.max_bytes {
        return Err(QueryError {
            pos: 0,
            msg: format!(
                "the query is {} bytes long, more than the limit of {} (index.query_max_bytes): \
                 shorten it, e.g. narrow it with --from/--to or kind instead of long lists",
                s.len(),
                limits.max_bytes
            ),
        });
    }
    let mut p = Parser {
        s,
        pos: 0,
        now,
        depth: 0,
        max_depth: limits.max_depth,
        max_wildcard_chars: limits.max_wildcard_chars,
    };
    p.ws();
    if p.eof() {
        return Ok(Query::All);
    }
    let q = p.or(None)?;
    p.ws();
    if !p.eof() {
        return Err(p.err(if p.peek() == Some(')') {
            "unbalanced ')'".to_string()
        } else {
            "unexpected text".to_string()
        }));
    }
    // The tree is at most 2 * max_depth + 3 deep here, so simplify's recursion is bounded.
    let q = simplify(q);
    limits.check_clauses(&q)?;
    Ok(q)
}

/// Resolves a field name as written in a query.
pub fn field(name: &str) -> Result<Field, String> {
    if name == "text" {
        return Ok(Field::Text);
    }
    if let Some(k) = KEYWORDS.iter().find(|k| **k == name) {
        return Ok(Field::Keyword(k));
    }
    if name == "time" {
        return Ok(Field::Date("time"));
    }
    if name == "seen" {
        return Ok(Field::Date("seen"));
    }
    for root in FLAT_ROOTS {
        if name == root {
            return Ok(Field::Flat {
                root,
                path: String::new(),
            });
        }
        if let Some(path) = name.strip_prefix(root).and_then(|r| r.strip_prefix('.')) {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("{name:?} is not a valid path"));
            }
            return Ok(Field::Flat {
                root,
                path: path.to_owned(),
            });
        }
    }
    Err(format!(
        "unknown field {name:?}: use {}, time, seen, text, detail.<key> or labels.<key> \
         (an event's own keys are under detail.)",
        KEYWORDS.join(", ")
    ))
}

/// Drops one-item ANDs and ORs. Recursive: only called on what the parser built within
/// [`Limits::max_depth`].
fn simplify(q: Query) -> Query {
    match q {
        Query::And(v) | Query::Or(v) if v.len() == 1 => {
            simplify(v.into_iter().next().unwrap_or(Query::All))
        }
        Query::And(v) => Query::And(v.into_iter().map(simplify).collect()),
        Query::Or(v) => Query::Or(v.into_iter().map(simplify).collect()),
        Query::Not(x) => Query::Not(Box::new(simplify(*x))),
        other => other,
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
    now: OffsetDateTime,
    /// Groups and NOTs open at `pos`.
    depth: usize,
    max_depth: usize,
    max_wildcard_chars: usize,
}

/// A value as read: its text and whether it had an unescaped wildcard or was quoted.
struct Word {
    text: String,
    wildcard: bool,
    start: usize,
}

const SPECIAL: &[char] = &['(', ')', '"', '[', ']', '{', '}'];

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }
    fn err(&self, msg: impl Into<String>) -> QueryError {
        QueryError {
            pos: self.pos,
            msg: msg.into(),
        }
    }
    fn err_at(&self, pos: usize, msg: impl Into<String>) -> QueryError {
        QueryError {
            pos,
            msg: msg.into(),
        }
    }

    /// Enters one more level of nesting (a group or a NOT), refusing past the limit.
    fn deeper(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(self.err(format!(
                "the query nests deeper than the limit of {} levels (index.query_max_depth; \
                 every ( and every NOT, !, - or + adds one): flatten it",
                self.max_depth
            )));
        }
        Ok(())
    }

    /// An operator word (`AND`, `OR`, `NOT`, `TO`) followed by a separator.
    fn at_op(&self, op: &str) -> bool {
        let r = self.rest();
        r.starts_with(op)
            && r[op.len()..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '(' || c == '"')
    }

    fn or(&mut self, default: Option<&Field>) -> Result<Query, QueryError> {
        let mut items = vec![self.and(default)?];
        loop {
            self.ws();
            if !(self.at_op("OR") || self.rest().starts_with("||")) {
                break;
            }
            self.pos += 2;
            self.ws();
            if self.eof() || self.peek() == Some(')') {
                return Err(self.err("OR needs something after it"));
            }
            items.push(self.and(default)?);
        }
        Ok(Query::Or(items))
    }

    fn and(&mut self, default: Option<&Field>) -> Result<Query, QueryError> {
        let mut items = vec![self.unary(default)?];
        loop {
            self.ws();
            if self.eof()
                || self.peek() == Some(')')
                || self.at_op("OR")
                || self.rest().starts_with("||")
            {
                break;
            }
            if self.at_op("AND") {
                self.pos += 3;
                self.ws();
            } else if self.rest().starts_with("&&") {
                self.pos += 2;
                self.ws();
            }
            if self.eof() || self.peek() == Some(')') {
                return Err(self.err("AND needs something after it"));
            }
            items.push(self.unary(default)?);
        }
        Ok(Query::And(items))
    }

    fn unary(&mut self, default: Option<&Field>) -> Result<Query, QueryError> {
        // Prefix operators are read in a loop (a long run of them costs no stack here) and each
        // counts as one level of nesting; `+` (required) changes nothing but nests all the same.
        let entered = self.depth;
        let mut negations = 0usize;
        loop {
            self.ws();
            if self.at_op("NOT") {
                self.deeper()?;
                self.pos += 3;
                negations += 1;
                continue;
            }
            match self.peek() {
                Some('!') | Some('-') => {
                    let next = self.rest()[1..].chars().next();
                    if next.is_some_and(|c| !c.is_whitespace()) {
                        self.deeper()?;
                        self.bump();
                        negations += 1;
                        continue;
                    }
                }
                Some('+') => {
                    self.deeper()?;
                    self.bump();
                    continue;
                }
                _ => {}
            }
            break;
        }
        let mut q = self.primary(default)?;
        self.depth = entered;
        for _ in 0..negations {
            q = Query::Not(Box::new(q));
        }
        Ok(q)
    }

    fn primary(&mut self, default: Option<&Field>) -> Result<Query, QueryError> {
        self.ws();
        let Some(c) = self.peek() else {
            return Err(self.err("the query ends where a value was expected"));
        };
        if c == '(' {
            self.deeper()?;
            self.bump();
            let q = self.or(default)?;
            self.ws();
            if self.bump() != Some(')') {
                return Err(self.err("missing ')'"));
            }
            self.depth -= 1;
            return Ok(q);
        }
        if c == ')' {
            return Err(self.err("unexpected ')'"));
        }
        // `name:` introduces a field.
        if default.is_none() {
            if let Some((name, after)) = self.field_prefix() {
                let start = self.pos;
                if name == "_exists_" {
                    self.pos = after;
                    let w = self.word(false)?;
                    let f = field(&w.text).map_err(|m| self.err_at(w.start, m))?;
                    return Ok(Query::Clause(f, Pred::Exists));
                }
                let f = field(&name).map_err(|m| self.err_at(start, m))?;
                self.pos = after;
                if self.peek().is_none_or(char::is_whitespace) {
                    return Err(self.err(format!("{name}: needs a value right after the colon")));
                }
                return self.value(&f);
            }
        }
        let f = default.cloned().unwrap_or(Field::Text);
        self.value(&f)
    }

    /// If the text at `pos` is `name:`, the name (unescaped) and the offset after the colon.
    fn field_prefix(&self) -> Option<(String, usize)> {
        let mut name = String::new();
        let mut it = self.rest().char_indices();
        while let Some((i, c)) = it.next() {
            match c {
                ':' if !name.is_empty() => return Some((name, self.pos + i + 1)),
                '\\' => name.push(it.next()?.1),
                c if c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '@' | '/') => {
                    name.push(c)
                }
                _ => return None,
            }
        }
        None
    }

    /// Reads an unquoted word (colons allowed when `colon_ok`, e.g. in values like times).
    fn word(&mut self, colon_ok: bool) -> Result<Word, QueryError> {
        let start = self.pos;
        let mut text = String::new();
        let mut wildcard = false;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || SPECIAL.contains(&c) || (c == ':' && !colon_ok) {
                break;
            }
            self.bump();
            match c {
                '\\' => match self.bump() {
                    Some(e) => text.push(e),
                    None => return Err(self.err("a backslash at the end escapes nothing")),
                },
                '*' | '?' => {
                    wildcard = true;
                    text.push(c);
                }
                c => text.push(c),
            }
        }
        if text.is_empty() {
            return Err(self.err_at(start, "a value was expected here"));
        }
        Ok(Word {
            text,
            wildcard,
            start,
        })
    }

    fn phrase(&mut self) -> Result<String, QueryError> {
        let start = self.pos;
        self.bump(); // opening quote
        let mut text = String::new();
        loop {
            match self.bump() {
                None => return Err(self.err_at(start, "unterminated \"phrase\"")),
                Some('"') => return Ok(text),
                Some('\\') => match self.bump() {
                    Some(e) => text.push(e),
                    None => return Err(self.err_at(start, "unterminated \"phrase\"")),
                },
                Some(c) => text.push(c),
            }
        }
    }

    fn value(&mut self, f: &Field) -> Result<Query, QueryError> {
        let start = self.pos;
        match self.peek() {
            Some('(') => {
                self.deeper()?;
                self.bump();
                let q = self.or(Some(f))?;
                self.ws();
                if self.bump() != Some(')') {
                    return Err(self.err("missing ')'"));
                }
                self.depth -= 1;
                Ok(q)
            }
            Some('"') => {
                let text = self.phrase()?;
                self.clause(f, Pred::Phrase(text), start)
            }
            Some('[') | Some('{') => self.range(f),
            Some('>') | Some('<') => {
                let gt = self.bump() == Some('>');
                let eq = if self.peek() == Some('=') {
                    self.bump();
                    true
                } else {
                    false
                };
                let v = self.bound_value()?;
                let Some(v) = v else {
                    return Err(self.err_at(start, "a comparison needs a value, not *"));
                };
                let b = if eq {
                    Bound::Included(v)
                } else {
                    Bound::Excluded(v)
                };
                let (lo, hi) = if gt {
                    (b, Bound::Unbounded)
                } else {
                    (Bound::Unbounded, b)
                };
                self.range_clause(f, lo, hi, start)
            }
            _ => {
                let w = self.word(true)?;
                if w.text == "*" {
                    return Ok(match f {
                        Field::Text => Query::All,
                        f => Query::Clause(f.clone(), Pred::Exists),
                    });
                }
                let pred = if w.wildcard {
                    let n = w.text.chars().filter(|c| matches!(c, '*' | '?')).count();
                    if n > self.max_wildcard_chars {
                        return Err(self.err_at(
                            w.start,
                            format!(
                                "the value has {n} wildcards (* and ?), more than the limit of {} \
                                 (index.query_max_wildcard_chars): use fewer",
                                self.max_wildcard_chars
                            ),
                        ));
                    }
                    Pred::Wildcard(w.text)
                } else {
                    Pred::Term(w.text)
                };
                self.clause(f, pred, w.start)
            }
        }
    }

    /// A range bound: a word, a phrase, or `*` (None).
    fn bound_value(&mut self) -> Result<Option<String>, QueryError> {
        self.ws();
        if self.peek() == Some('"') {
            return self.phrase().map(Some);
        }
        let start = self.pos;
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, ']' | '}' | ')' | '(') {
                break;
            }
            self.bump();
            if c == '\\' {
                match self.bump() {
                    Some(e) => text.push(e),
                    None => return Err(self.err("a backslash at the end escapes nothing")),
                }
            } else {
                text.push(c);
            }
        }
        match text.as_str() {
            "" => Err(self.err_at(start, "a range bound was expected here")),
            "*" => Ok(None),
            _ => Ok(Some(text)),
        }
    }

    fn range(&mut self, f: &Field) -> Result<Query, QueryError> {
        let start = self.pos;
        let lo_incl = self.bump() == Some('[');
        let lo = self.bound_value()?;
        self.ws();
        if !self.at_op("TO") {
            return Err(self.err("a range is written [LOW TO HIGH] (TO in capitals)"));
        }
        self.pos += 2;
        let hi = self.bound_value()?;
        self.ws();
        let hi_incl = match self.bump() {
            Some(']') => true,
            Some('}') => false,
            _ => return Err(self.err_at(start, "a range ends with ] or }")),
        };
        let bound = |v: Option<String>, incl: bool| match v {
            None => Bound::Unbounded,
            Some(v) if incl => Bound::Included(v),
            Some(v) => Bound::Excluded(v),
        };
        self.range_clause(f, bound(lo, lo_incl), bound(hi, hi_incl), start)
    }

    fn range_clause(
        &self,
        f: &Field,
        lo: Bound<String>,
        hi: Bound<String>,
        start: usize,
    ) -> Result<Query, QueryError> {
        let pred = match f {
            Field::Text => {
                return Err(self.err_at(start, "ranges need a field: write field:[LOW TO HIGH]"))
            }
            Field::Date(_) => {
                let t = |s: &String| {
                    crate::time::parse_time_at(s, self.now).map_err(|m| self.err_at(start, m))
                };
                Pred::TimeRange(map_bound(lo, t)?, map_bound(hi, t)?)
            }
            Field::Keyword(_) => Pred::StrRange(lo, hi),
            Field::Flat { path, .. } if path.is_empty() => {
                return Err(self.err_at(
                    start,
                    "a range needs a key: write detail.<key>:[LOW TO HIGH]",
                ))
            }
            Field::Flat { .. } => {
                let num = |b: &Bound<String>| match b {
                    Bound::Included(s) | Bound::Excluded(s) => parse_number(s).is_some(),
                    Bound::Unbounded => true,
                };
                if num(&lo) && num(&hi) && !(lo == Bound::Unbounded && hi == Bound::Unbounded) {
                    let n = |s: &String| {
                        parse_number(s).ok_or_else(|| self.err_at(start, "not a number"))
                    };
                    Pred::NumRange(map_bound(lo, n)?, map_bound(hi, n)?)
                } else {
                    Pred::StrRange(lo, hi)
                }
            }
        };
        Ok(Query::Clause(f.clone(), pred))
    }

    fn clause(&self, f: &Field, pred: Pred, start: usize) -> Result<Query, QueryError> {
        if let Field::Date(_) = f {
            let text = match &pred {
                Pred::Term(t) | Pred::Phrase(t) => t.clone(),
                Pred::Wildcard(_) => {
                    return Err(self.err_at(start, "wildcards do not apply to times"))
                }
                _ => unreachable!("only values reach clause()"),
            };
            let t =
                crate::time::parse_time_at(&text, self.now).map_err(|m| self.err_at(start, m))?;
            // A bare date means that whole day.
            let is_date = text.len() == 10 && text.as_bytes()[4] == b'-';
            let hi = if is_date {
                // Checked: the last day of the calendar has no next day.
                t.checked_add(time::Duration::days(1))
                    .map_or(Bound::Unbounded, Bound::Excluded)
            } else {
                Bound::Included(t)
            };
            return Ok(Query::Clause(
                f.clone(),
                Pred::TimeRange(Bound::Included(t), hi),
            ));
        }
        Ok(Query::Clause(f.clone(), pred))
    }
}

fn map_bound<T, U, E>(b: Bound<T>, f: impl Fn(&T) -> Result<U, E>) -> Result<Bound<U>, E> {
    Ok(match b {
        Bound::Included(v) => Bound::Included(f(&v)?),
        Bound::Excluded(v) => Bound::Excluded(f(&v)?),
        Bound::Unbounded => Bound::Unbounded,
    })
}

/// A finite number as written in a query or a document.
pub fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty()
        || s.starts_with('+')
        || s.eq_ignore_ascii_case("nan")
        || s.to_ascii_lowercase().contains("inf")
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// The key under which a numeric leaf is indexed for numeric equality and ranges: the field path,
/// a unit separator, then the number encoded so that byte order is numeric order. Both backends
/// index these in a keyword field (`num`), so numeric ranges on arbitrary `detail` keys need no
/// per-key mapping (OpenSearch's `flat_object` compares values as strings: "100" < "90").
pub fn num_key(path: &str, n: f64) -> String {
    format!("{path}\u{1f}{}", sortable(n))
}

/// The smallest and the past-the-end keys of a path in the `num` field.
pub fn num_key_bounds(path: &str) -> (String, String) {
    (format!("{path}\u{1f}"), format!("{path}\u{20}"))
}

fn sortable(n: f64) -> String {
    let n = if n == 0.0 { 0.0 } else { n }; // -0.0 == 0.0
    let bits = n.to_bits();
    let key = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    format!("{key:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn p(s: &str) -> Query {
        parse_at(s, datetime!(2026-11-28 12:00:00 UTC))
            .unwrap_or_else(|e| panic!("{}", e.explain(s)))
    }
    fn kw(k: &'static str, v: &str) -> Query {
        Query::Clause(Field::Keyword(k), Pred::Term(v.into()))
    }
    fn flat(path: &str, pred: Pred) -> Query {
        Query::Clause(
            Field::Flat {
                root: "detail",
                path: path.into(),
            },
            pred,
        )
    }
    fn text(v: &str) -> Query {
        Query::Clause(Field::Text, Pred::Term(v.into()))
    }

    #[test]
    fn fields_boolean_operators_and_implicit_and() {
        assert_eq!(
            p("event_type:vm.disk_usage AND detail.host:web-12"),
            Query::And(vec![
                kw("event_type", "vm.disk_usage"),
                flat("host", Pred::Term("web-12".into()))
            ])
        );
        assert_eq!(
            p("kernel oops"),
            Query::And(vec![text("kernel"), text("oops")])
        );
        assert_eq!(
            p("a OR b c"),
            Query::Or(vec![text("a"), Query::And(vec![text("b"), text("c")])])
        );
        assert_eq!(p("-kind:task"), Query::Not(Box::new(kw("kind", "task"))));
        assert_eq!(p("NOT kind:task"), Query::Not(Box::new(kw("kind", "task"))));
        assert_eq!(
            p("kind:(event OR rejected)"),
            Query::Or(vec![kw("kind", "event"), kw("kind", "rejected")])
        );
        assert_eq!(p(""), Query::All);
        assert_eq!(p("*"), Query::All);
        assert_eq!(p("and or"), Query::And(vec![text("and"), text("or")]));
    }

    #[test]
    fn values_ranges_wildcards_and_exists() {
        assert_eq!(
            p("detail.usage_pct:[90 TO 100]"),
            flat(
                "usage_pct",
                Pred::NumRange(Bound::Included(90.0), Bound::Included(100.0))
            )
        );
        assert_eq!(
            p("detail.usage_pct:{90 TO *]"),
            flat(
                "usage_pct",
                Pred::NumRange(Bound::Excluded(90.0), Bound::Unbounded)
            )
        );
        assert_eq!(
            p("detail.usage_pct:>=90"),
            flat(
                "usage_pct",
                Pred::NumRange(Bound::Included(90.0), Bound::Unbounded)
            )
        );
        assert_eq!(
            p("detail.host:[a TO m}"),
            flat(
                "host",
                Pred::StrRange(Bound::Included("a".into()), Bound::Excluded("m".into()))
            )
        );
        assert_eq!(
            p("detail.host:web-*"),
            flat("host", Pred::Wildcard("web-*".into()))
        );
        assert_eq!(
            p("detail.host:web\\*"),
            flat("host", Pred::Term("web*".into()))
        );
        assert_eq!(p("detail.code:*"), flat("code", Pred::Exists));
        assert_eq!(p("_exists_:detail.code"), flat("code", Pred::Exists));
        assert_eq!(
            p("\"disk full\""),
            Query::Clause(Field::Text, Pred::Phrase("disk full".into()))
        );
        assert_eq!(
            p("detail.msg:\"a \\\"b\\\"\""),
            flat("msg", Pred::Phrase("a \"b\"".into()))
        );
        assert_eq!(
            p("time:[2026-11-28T00:00:00Z TO 1h]"),
            Query::Clause(
                Field::Date("time"),
                Pred::TimeRange(
                    Bound::Included(datetime!(2026-11-28 00:00:00 UTC)),
                    Bound::Included(datetime!(2026-11-28 11:00:00 UTC))
                )
            )
        );
        assert_eq!(
            p("time:2026-11-27"),
            Query::Clause(
                Field::Date("time"),
                Pred::TimeRange(
                    Bound::Included(datetime!(2026-11-27 00:00:00 UTC)),
                    Bound::Excluded(datetime!(2026-11-28 00:00:00 UTC))
                )
            )
        );
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = parse("evnt_type:x").unwrap_err();
        assert!(
            e.msg.contains("unknown field \"evnt_type\"") && e.msg.contains("detail.<key>"),
            "{e}"
        );
        assert_eq!(e.pos, 0);
        let e = parse("kind:event AND (x").unwrap_err();
        assert!(e.msg.contains("missing ')'"), "{e}");
        let e = parse("detail.n:[1 100]").unwrap_err();
        assert!(e.msg.contains("TO"), "{e}");
        let e = parse("\"open").unwrap_err();
        assert!(e.msg.contains("unterminated"), "{e}");
        let e = parse("time:[yesterday TO now]").unwrap_err();
        assert!(e.msg.contains("not a time"), "{e}");
        assert!(parse("a )").unwrap_err().explain("a )").contains("\n    ^"));
    }

    #[test]
    fn numeric_keys_sort_numerically() {
        let nums = [
            -1e300, -2.5, -1.0, 0.0, 1e-9, 1.0, 9.0, 10.0, 90.0, 100.0, 1e300,
        ];
        let keys: Vec<String> = nums.iter().map(|n| num_key("detail.x", *n)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(num_key("d", -0.0), num_key("d", 0.0));
        let (lo, hi) = num_key_bounds("detail.x");
        assert!(keys.iter().all(|k| *k >= lo && *k < hi));
        assert!(num_key("detail.xy", 1.0) > hi || num_key("detail.xy", 1.0) < lo);
    }
}
