//! Injected faults as a dispatcher will meet them: 500s that stop, closed connections, slow
//! answers; and a check that no error text ever carries the API key.

use crate::client::{client, client_with_key, request};
use crate::harness::{Emulator, KEY};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use whale_st2::{Auth, ClusterConn, ErrorKind, Secret, St2Client, St2Error};

/// Creates with retries on retryable errors, like the dispatch stage; returns the errors seen.
async fn create_with_retries(st2: &St2Client, task: &str) -> Vec<St2Error> {
    let mut errors = Vec::new();
    for _ in 0..100 {
        match st2
            .create_execution(&request("ops.echo", json!({"message": "m"}), task))
            .await
        {
            Ok(_) => return errors,
            Err(e) if e.is_retryable() => errors.push(e),
            Err(e) => panic!("terminal error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never recovered: {:?}", errors.last());
}

#[tokio::test]
async fn http_500_for_a_while_then_recovery_creates_exactly_once() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    emu.faults(json!({"http_500": {"for_ms": 1500}})).await;
    let errors = create_with_retries(&st2, "t1").await;
    assert!(!errors.is_empty());
    for e in &errors {
        assert_eq!(
            e.kind(),
            &ErrorKind::Http {
                status: 500,
                faultstring: "Internal Server Error".into()
            }
        );
        assert!(e.to_string().starts_with("post http://127.0.0.1:"), "{e}");
    }
    emu.faults(json!({"http_500": {"count": 2}})).await;
    assert_eq!(create_with_retries(&st2, "t2").await.len(), 2);
    let stats = emu.stats().await;
    assert_eq!(stats["executions_created"], 2, "{stats}");
    assert_eq!(stats["by_action"]["ops.echo"], 2);
}

#[tokio::test]
async fn refused_connections_are_retryable_transport_errors() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    st2.api_info().await.unwrap(); // a pooled keep-alive connection exists
    emu.faults(json!({"refuse": {"for_ms": 700}})).await;
    let e = st2.api_info().await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Transport, "{e}");
    assert!(e.is_retryable());
    tokio::time::sleep(Duration::from_millis(800)).await;
    st2.api_info().await.expect("recovered");

    emu.faults(json!({"refuse": {"count": 1}})).await;
    let fresh = client(&emu); // new pool: its first connection is closed
    assert_eq!(
        fresh.api_info().await.unwrap_err().kind(),
        &ErrorKind::Transport
    );
    fresh
        .api_info()
        .await
        .expect("the next connection is served");
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retryable() {
    let emu = Emulator::start();
    emu.faults(json!({"latency_ms": 1500})).await;
    let conn = ClusterConn::new(emu.base(), Auth::ApiKey(Secret::new(KEY)))
        .with_timeout(Duration::from_millis(300));
    let st2 = St2Client::new(conn).unwrap();
    let e = st2.api_info().await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());
    emu.admin(reqwest::Method::DELETE, "faults", None).await;
    st2.api_info().await.expect("fast again");
}

/// A one-response HTTP server, for answers the emulator never gives.
async fn raw_server(status: &'static str, body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn no_error_ever_shows_the_api_key() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    let mut errors: Vec<St2Error> = Vec::new();

    errors.push(
        client_with_key(&emu, &format!("{KEY}-wrong"))
            .api_info()
            .await
            .unwrap_err(),
    );
    errors.push(
        st2.create_execution(&request("x.y", json!({}), "t"))
            .await
            .unwrap_err(),
    );
    errors.push(
        st2.create_execution(&request(
            "ops.echo",
            json!({"message": KEY, "count": KEY}),
            "t",
        ))
        .await
        .unwrap_err(),
    );
    let done = st2
        .create_execution(&request("ops.broken", json!({}), "t"))
        .await
        .unwrap();
    crate::client::wait_status(&st2, &done.id, whale_st2::Status::Failed).await;
    errors.push(st2.cancel(&done.id).await.unwrap_err());
    emu.faults(json!({"http_500": {"count": 1}})).await;
    errors.push(st2.api_info().await.unwrap_err());
    emu.faults(json!({"refuse": {"count": 1}})).await;
    errors.push(client(&emu).api_info().await.unwrap_err());
    emu.faults(json!({"latency_ms": 1000})).await;
    let slow = ClusterConn::new(emu.base(), Auth::ApiKey(Secret::new(KEY)))
        .with_timeout(Duration::from_millis(200));
    errors.push(St2Client::new(slow).unwrap().api_info().await.unwrap_err());

    // Servers that echo the key back: it is scrubbed from what the client reports.
    let on = |base: String| {
        St2Client::new(ClusterConn::new(base, Auth::ApiKey(Secret::new(KEY)))).unwrap()
    };
    let echo_500 = raw_server(
        "500 Internal Server Error",
        json!({"faultstring": format!("bad key {KEY}")}).to_string(),
    )
    .await;
    errors.push(on(echo_500).api_info().await.unwrap_err());
    let not_json = raw_server("200 OK", json!(KEY).to_string()).await;
    errors.push(on(not_json).get_execution("x").await.unwrap_err());
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    errors.push(on(format!("http://{dead}")).api_info().await.unwrap_err());

    let kinds: Vec<String> = errors
        .iter()
        .map(|e| format!("{:?}", std::mem::discriminant(e.kind())))
        .collect();
    let distinct: std::collections::HashSet<_> = kinds.iter().collect();
    assert!(
        distinct.len() >= 5,
        "covers http, refused, transport, timeout, decode: {errors:#?}"
    );
    for e in &errors {
        let text = format!("{e} | {e:?}");
        assert!(!text.contains(KEY), "key leaked: {text}");
        assert!(text.contains("http://127.0.0.1:"), "names the url: {text}");
    }
    assert!(
        matches!(errors[8].kind(), ErrorKind::Decode),
        "{}",
        errors[8]
    );
    assert!(
        errors[7].to_string().contains("bad key ***"),
        "{}",
        errors[7]
    );
}
