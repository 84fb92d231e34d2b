//! Incremental parser for StackStorm's server-sent events: `event:` and `data:` lines, a blank
//! line ends a frame, a lone newline is a heartbeat. Bytes arrive in arbitrary chunks.

use crate::model::StreamEvent;
use serde_json::Value;

/// Feeds chunks in, takes complete events out.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk and returns the events it completed. Heartbeats yield nothing.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<StreamEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<StreamEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {} // id, retry: StackStorm sends neither
        }
        None
    }

    fn dispatch(&mut self) -> Option<StreamEvent> {
        let event = self.event.take();
        if self.data.is_empty() && event.is_none() {
            return None; // heartbeat
        }
        let raw = std::mem::take(&mut self.data).join("\n");
        let data = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
        Some(StreamEvent {
            event: event.unwrap_or_else(|| "message".to_owned()),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_split_anywhere_and_heartbeats() {
        let wire =
            b"\nevent: st2.execution__update\ndata: {\"id\": \"a\", \"status\": \"running\"}\n\n\n\
event: st2.execution.output__create\r\ndata: \"x\"\r\n\r\n: comment\n\n";
        for split in 0..wire.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&wire[..split]);
            got.extend(p.push(&wire[split..]));
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].event, "st2.execution__update");
            assert_eq!(got[0].data, json!({"id": "a", "status": "running"}));
            assert_eq!(got[0].execution().unwrap().id, "a");
            assert_eq!(got[1].data, json!("x"));
        }
    }

    #[test]
    fn multi_line_data_and_non_json() {
        let mut p = SseParser::new();
        let got = p.push(b"data: line one\ndata: line two\n\n");
        assert_eq!(got[0].event, "message");
        assert_eq!(got[0].data, json!("line one\nline two"));
    }
}
