//! The ingest body splitter: finds where each event of a request body starts and ends (a JSON
//! array, NDJSON, or JSON documents one after another) without building any value, so the
//! number of events is bounded and each event is measured on its raw bytes before it is parsed.
//! It only follows strings and brackets; each event's own syntax is checked when it is parsed.

use std::ops::Range;

/// How to read the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// One JSON array of events, one event, or several JSON documents one after another.
    Auto,
    /// One event per line (`application/x-ndjson`, `application/jsonl`).
    Lines,
}

/// Why a body could not be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// More than `limit` events.
    TooMany { limit: usize },
    /// The body is not a sequence of JSON values (unterminated string or bracket, stray byte).
    Malformed { offset: usize, message: String },
}

/// The byte ranges of the events in `body`, at most `max_items` of them. Never panics, never
/// recurses, allocates one range per event.
pub fn split(body: &[u8], form: Form, max_items: usize) -> Result<Vec<Range<usize>>, SplitError> {
    match form {
        Form::Lines => lines(body, max_items),
        Form::Auto => match auto(body, max_items) {
            Err(SplitError::Malformed { .. }) if body.contains(&b'\n') => lines(body, max_items),
            r => r,
        },
    }
}

fn lines(body: &[u8], max_items: usize) -> Result<Vec<Range<usize>>, SplitError> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in body.split(|b| *b == b'\n') {
        let end = start + line.len();
        let r = trim(body, start..end);
        if !r.is_empty() {
            if out.len() == max_items {
                return Err(SplitError::TooMany { limit: max_items });
            }
            out.push(r);
        }
        start = end + 1;
    }
    Ok(out)
}

fn auto(body: &[u8], max_items: usize) -> Result<Vec<Range<usize>>, SplitError> {
    let mut values = Vec::new();
    let mut pos = skip_ws(body, 0);
    while pos < body.len() {
        if values.len() == max_items {
            return Err(SplitError::TooMany { limit: max_items });
        }
        let end = scan_value(body, pos)?;
        values.push(pos..end);
        pos = skip_ws(body, end);
    }
    match values.as_slice() {
        [only] if body[only.start] == b'[' => array(body, only.clone(), max_items),
        _ => Ok(values),
    }
}

/// The elements of the array spanning `arr`.
fn array(
    body: &[u8],
    arr: Range<usize>,
    max_items: usize,
) -> Result<Vec<Range<usize>>, SplitError> {
    let mut out = Vec::new();
    let close = arr.end - 1;
    let mut pos = skip_ws(body, arr.start + 1);
    if pos == close {
        return Ok(out);
    }
    loop {
        if out.len() == max_items {
            return Err(SplitError::TooMany { limit: max_items });
        }
        let end = scan_value(body, pos)?;
        if end > close {
            return Err(malformed(
                pos,
                "an array element runs past the end of the array",
            ));
        }
        out.push(pos..end);
        pos = skip_ws(body, end);
        match body.get(pos) {
            Some(b',') if pos < close => pos = skip_ws(body, pos + 1),
            _ if pos == close => return Ok(out),
            _ => return Err(malformed(pos, "expected ',' or ']' between events")),
        }
    }
}

/// End (exclusive) of the JSON value starting at `pos`.
fn scan_value(body: &[u8], pos: usize) -> Result<usize, SplitError> {
    match body.get(pos) {
        Some(b'"') => scan_string(body, pos),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = pos;
            while i < body.len() {
                match body[i] {
                    b'"' => {
                        i = scan_string(body, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            Err(malformed(pos, "unterminated object or array"))
        }
        Some(_) => {
            let end = body[pos..]
                .iter()
                .position(|b| b.is_ascii_whitespace() || b",]}[{\"".contains(b))
                .map_or(body.len(), |n| pos + n);
            if end == pos {
                Err(malformed(pos, "expected a JSON value"))
            } else {
                Ok(end)
            }
        }
        None => Err(malformed(
            pos,
            "expected a JSON value, found the end of the body",
        )),
    }
}

/// End (exclusive) of the string whose opening quote is at `pos`.
fn scan_string(body: &[u8], pos: usize) -> Result<usize, SplitError> {
    let mut i = pos + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(malformed(pos, "unterminated string"))
}

fn skip_ws(body: &[u8], mut pos: usize) -> usize {
    while pos < body.len() && body[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

fn trim(body: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && body[r.start].is_ascii_whitespace() {
        r.start += 1;
    }
    while r.end > r.start && body[r.end - 1].is_ascii_whitespace() {
        r.end -= 1;
    }
    r
}

fn malformed(offset: usize, message: &str) -> SplitError {
    SplitError::Malformed {
        offset,
        message: message.to_owned(),
    }
}
