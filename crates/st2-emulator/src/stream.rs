//! `/stream/v1/stream` and `/stream/v1/executions/{id}/output`: server-sent events framed as
//! st2stream frames them (`event: NAME\ndata: JSON\n\n`, a bare newline as heartbeat at connect
//! and every 25 s, no `id:`), with its filters and its `end_event`/`end_execution_id` stop.
//! Like StackStorm, nothing is replayed: events sent while a client is away are lost.

use crate::execution::is_terminal;
use crate::executions::{list_param, Q};
use crate::state::{lock, Emu, Event};
use crate::util::ApiResult;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use serde_json::Value;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

pub const HEARTBEAT: Duration = Duration::from_secs(25);

const DEFAULT_EVENTS: &[&str] = &[
    "st2.announcement__*",
    "st2.execution__create",
    "st2.execution__update",
    "st2.execution__delete",
    "st2.liveaction__create",
    "st2.liveaction__update",
    "st2.liveaction__delete",
];

/// `fnmatch`-style match with `*` and `?`.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn sse(body: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream; charset=UTF-8"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, Body::from_stream(body.map(Ok::<_, Infallible>))).into_response()
}

/// Live events until the client leaves, an admin disconnect, or the end event.
fn live(
    emu: &Arc<Emu>,
    keep: impl Fn(&Event) -> Option<Bytes> + Send + Sync + 'static,
    stop: impl Fn(&Event) -> bool + Send + Sync + 'static,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let rx = emu.events.subscribe();
    let mut dc = emu.disconnect.subscribe();
    dc.mark_unchanged();
    let mut hb = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let filters = Arc::new((keep, stop));
    let state = (rx, dc, hb, false);
    stream::unfold(state, move |(mut rx, mut dc, mut hb, done)| {
        let filters = filters.clone();
        async move {
            if done {
                return None;
            }
            let (keep, stop) = &*filters;
            loop {
                tokio::select! {
                    _ = dc.changed() => return None,
                    _ = hb.tick() => return Some((Bytes::from_static(b"\n"), (rx, dc, hb, false))),
                    msg = rx.recv() => match msg {
                        Ok(ev) => {
                            let last = stop(&ev);
                            match keep(&ev) {
                                Some(b) => return Some((b, (rx, dc, hb, last))),
                                None if last => return None,
                                None => continue,
                            }
                        }
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    },
                }
            }
        }
    })
}

/// `GET /stream/v1/stream?events=&action_refs=&execution_ids=&end_event=&end_execution_id=`.
pub async fn events(State(emu): State<Arc<Emu>>, Query(q): Q) -> Response {
    let owned =
        |k: &str| -> Vec<String> { list_param(&q, k).into_iter().map(str::to_owned).collect() };
    let mut names = owned("events");
    if names.is_empty() {
        names = DEFAULT_EVENTS.iter().map(|s| (*s).to_owned()).collect();
    }
    let (refs, ids) = (owned("action_refs"), owned("execution_ids"));
    let end_event = q.get("end_event").cloned();
    let end_id = q.get("end_execution_id").cloned();
    let keep = move |ev: &Event| {
        let wanted = names.iter().any(|n| glob(n, ev.name))
            && (refs.is_empty() || refs.contains(&ev.action_ref))
            && (ids.is_empty() || ids.contains(&ev.execution_id));
        wanted.then(|| frame(ev.name, &ev.data))
    };
    let stop = move |ev: &Event| {
        end_event.as_deref() == Some(ev.name)
            && end_id.as_deref() == Some(ev.execution_id.as_str())
            && ev.status.as_deref().is_some_and(is_terminal)
    };
    let body = stream::once(async { Bytes::from_static(b"\n") }).chain(live(&emu, keep, stop));
    sse(body)
}

/// `GET /stream/v1/executions/{id}/output?output_type=`: stored output first, then live
/// output, then `event: EOF` once the execution is terminal, pausing or resuming.
pub async fn output(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Query(q): Q,
) -> ApiResult<Response> {
    let id = emu.resolve_id(&id)?;
    let kind = q
        .get("output_type")
        .cloned()
        .unwrap_or_else(|| "all".into());
    let wants = move |o: &Value| kind == "all" || o["output_type"] == kind.as_str();
    let ends = |s: &str| is_terminal(s) || s == "pausing" || s == "resuming";
    // Subscribe before reading what is stored, so nothing falls in between.
    let (id2, wants2) = (id.clone(), wants.clone());
    let seen: Arc<std::sync::Mutex<HashSet<String>>> = Default::default();
    let seen2 = seen.clone();
    let keep = move |ev: &Event| {
        if ev.execution_id != id2 {
            return None;
        }
        if ev.name == "st2.execution__update" {
            return ev
                .status
                .as_deref()
                .filter(|s| ends(s))
                .map(|_| frame("EOF", &Value::from("")));
        }
        let oid = ev.data["id"].as_str().unwrap_or_default().to_owned();
        let fresh = lock(&seen2).insert(oid);
        (ev.name == "st2.execution.output__create" && fresh && wants2(&ev.data))
            .then(|| frame(ev.name, &ev.data))
    };
    let id3 = id.clone();
    let stop = move |ev: &Event| ev.execution_id == id3 && ev.status.as_deref().is_some_and(ends);
    let live = live(&emu, keep, stop);
    let (stored, status) = emu.with_exec(&id, |ex| Ok((ex.output.clone(), ex.status.clone())))?;
    let mut head = Vec::new();
    for o in stored.iter().filter(|o| wants(o)) {
        lock(&seen).insert(o["id"].as_str().unwrap_or_default().to_owned());
        head.push(frame("st2.execution.output__create", o));
    }
    if ends(&status) {
        head.push(frame("EOF", &Value::from("")));
        return Ok(sse(stream::iter(head)));
    }
    Ok(sse(stream::iter(head).chain(live)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        assert!(super::glob("st2.execution__*", "st2.execution__update"));
        assert!(super::glob(
            "st2.execution__update",
            "st2.execution__update"
        ));
        assert!(!super::glob("st2.execution__*", "st2.liveaction__update"));
        assert!(super::glob("*", "x"));
    }
}
