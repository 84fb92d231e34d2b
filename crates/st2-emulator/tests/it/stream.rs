//! The event stream through whale's client: execution events, filters, the end event, and a
//! server-side disconnect that the client must notice.

use crate::client::{client, client_with_key, request};
use crate::harness::Emulator;
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;
use whale_st2::{EventStream, Status, StreamFilter};

async fn next(s: &mut EventStream) -> Option<whale_st2::StreamEvent> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("stream stalled")
        .map(|r| r.expect("stream error"))
}

#[tokio::test]
async fn execution_events_reach_the_client() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    let mut events = st2.stream(&StreamFilter::executions()).await.unwrap();
    let e = st2
        .create_execution(&request("ops.echo", json!({"message": "m"}), "t"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = next(&mut events).await {
        let ex = ev.execution().expect("execution events carry an execution");
        if ex.id != e.id {
            continue;
        }
        seen.push((ev.event.clone(), ex.status.clone().unwrap()));
        if ex.is_terminal() {
            break;
        }
    }
    assert_eq!(
        seen[0],
        ("st2.execution__create".to_owned(), Status::Requested)
    );
    let statuses: Vec<_> = seen.iter().skip(1).map(|(_, s)| s.clone()).collect();
    assert_eq!(
        statuses,
        [Status::Scheduled, Status::Running, Status::Succeeded]
    );
}

#[tokio::test]
async fn filters_output_events_and_the_end_event() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    let e = st2
        .create_execution(&request("ops.slow", json!({}), "t"))
        .await
        .unwrap();
    let filter = StreamFilter {
        events: vec![
            "st2.execution__update".into(),
            "st2.execution.output__*".into(),
        ],
        action_refs: vec!["ops.slow".into()],
        end_event: Some("st2.execution__update".into()),
        end_execution_id: Some(e.id.clone()),
        ..StreamFilter::default()
    };
    let mut events = st2.stream(&filter).await.unwrap();
    let mut text = String::new();
    let mut last = None;
    while let Some(ev) = next(&mut events).await {
        if ev.event == "st2.execution.output__create" {
            text.push_str(ev.data["data"].as_str().unwrap());
        }
        last = Some(ev);
    }
    assert_eq!(text, "one\ntwo\nthree\n");
    let last = last.unwrap().execution().unwrap();
    assert_eq!(
        (last.id, last.status),
        (e.id, Some(Status::Succeeded)),
        "stream ended after the end event"
    );
}

#[tokio::test]
async fn a_server_disconnect_ends_the_stream_and_reconnecting_works() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    let mut events = st2.stream(&StreamFilter::executions()).await.unwrap();
    let closed = emu
        .admin(reqwest::Method::POST, "stream/disconnect", None)
        .await;
    assert_eq!(closed["disconnected"], 1);
    assert!(next(&mut events).await.is_none(), "stream ended");

    let mut events = st2.stream(&StreamFilter::executions()).await.unwrap();
    let e = st2
        .create_execution(&request("ops.echo", json!({"message": "m"}), "t"))
        .await
        .unwrap();
    let first = next(&mut events).await.unwrap().execution().unwrap();
    assert_eq!(first.id, e.id);

    let err = client_with_key(&emu, "wrong")
        .stream(&StreamFilter::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(401));
}
