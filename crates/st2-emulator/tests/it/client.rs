//! whale's StackStorm client (`whale-st2`) against the emulator: every call, both auth modes,
//! and errors that carry StackStorm's message but never the key.

use crate::harness::{Emulator, KEY};
use serde_json::json;
use std::time::Duration;
use whale_st2::{
    Auth, ClusterConn, ErrorKind, Execution, ExecutionRequest, ListFilter, Secret, St2Client,
    Status,
};

pub fn client(emu: &Emulator) -> St2Client {
    client_with_key(emu, KEY)
}

pub fn client_with_key(emu: &Emulator, key: &str) -> St2Client {
    let conn = ClusterConn::new(emu.base(), Auth::ApiKey(Secret::new(key)))
        .with_timeout(Duration::from_secs(5));
    St2Client::new(conn).unwrap()
}

pub fn request(action: &str, params: serde_json::Value, task: &str) -> ExecutionRequest {
    ExecutionRequest {
        action: action.into(),
        parameters: params,
        context: ExecutionRequest::whale_context("ev-1", "rule-1", task),
    }
}

pub async fn wait_status(st2: &St2Client, id: &str, want: Status) -> Execution {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let e = st2.get_execution(id).await.unwrap();
        if e.status.as_ref() == Some(&want) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never became {want}: {:?}",
            e.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn create_follow_list_output_and_find_by_trace_tag() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    let created = st2
        .create_execution(&request("ops.echo", json!({"message": "hi"}), "task-42"))
        .await
        .unwrap();
    assert_eq!(created.status, Some(Status::Requested));
    assert!(!created.is_terminal());
    assert_eq!(created.action_ref(), Some("ops.echo"));
    assert_eq!(created.trace_tag(), Some("task-42"));
    let ctx = created.context.clone().unwrap();
    assert_eq!(ctx["whale"]["task_id"], "task-42");
    assert_eq!(ctx["user"], "st2admin");

    let done = wait_status(&st2, &created.id, Status::Succeeded).await;
    assert!(done.is_terminal());
    assert!(done.end_time().unwrap() >= done.start_time().unwrap());
    let statuses: Vec<_> = done
        .log
        .unwrap()
        .into_iter()
        .filter_map(|l| l.status)
        .collect();
    assert_eq!(
        statuses,
        [
            Status::Requested,
            Status::Scheduled,
            Status::Running,
            Status::Succeeded
        ]
    );
    assert_eq!(st2.output(&created.id).await.unwrap(), "hello\nworld\n");
    assert_eq!(st2.get_execution("last").await.unwrap().id, created.id);

    st2.create_execution(&request("ops.broken", json!(null), "task-43"))
        .await
        .unwrap();
    let filter = ListFilter {
        action: Some("ops.echo".into()),
        parent_null: true,
        ..ListFilter::default()
    };
    let (page, total) = st2.list_executions(&filter).await.unwrap();
    assert_eq!((page.len(), total), (1, 1));
    let (page, total) = st2
        .list_executions(&ListFilter {
            limit: Some(1),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (page.len(), total),
        (1, 2),
        "X-Total-Count counts past the page"
    );

    let found = st2
        .find_by_trace_tag("task-42")
        .await
        .unwrap()
        .expect("found by trace tag");
    assert_eq!(found.id, created.id);
    assert!(st2
        .find_by_trace_tag("task-nobody-sent")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        st2.get_action("ops.echo").await.unwrap()["runner_type"],
        "local-shell-cmd"
    );
    assert_eq!(st2.api_info().await.unwrap()["version"], "3.9.0");
}

#[tokio::test]
async fn cancel_pause_resume_and_re_run() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    let slow = st2
        .create_execution(&request("ops.slow", json!({}), "t1"))
        .await
        .unwrap();
    wait_status(&st2, &slow.id, Status::Running).await;
    let c = st2.cancel(&slow.id).await.unwrap();
    assert_eq!(c.status, Some(Status::Canceling));
    wait_status(&st2, &slow.id, Status::Canceled).await;

    let echo = st2
        .create_execution(&request(
            "ops.echo",
            json!({"message": "a", "count": 2}),
            "t2",
        ))
        .await
        .unwrap();
    wait_status(&st2, &echo.id, Status::Succeeded).await;
    let refused = st2.cancel(&echo.id).await.unwrap_err();
    assert_eq!(
        refused.faultstring(),
        Some("Action cannot be canceled. State = succeeded.")
    );
    assert!(matches!(refused.kind(), ErrorKind::Refused { .. }) && !refused.is_retryable());

    let again = st2.re_run(&echo.id, json!({"message": "b"})).await.unwrap();
    assert_ne!(again.id, echo.id);
    let params = again.parameters.clone().unwrap();
    assert_eq!(
        (params["message"].clone(), params["count"].clone()),
        (json!("b"), json!(2))
    );
    assert_eq!(again.context.unwrap()["re-run"]["ref"], echo.id.as_str());
    // A re-run joins the original trace; the tag still finds the original.
    assert_eq!(
        st2.find_by_trace_tag("t2").await.unwrap().unwrap().id,
        echo.id
    );

    let flow = st2
        .create_execution(&request("ops.flow", json!({}), "t3"))
        .await
        .unwrap();
    wait_status(&st2, &flow.id, Status::Running).await;
    assert_eq!(
        st2.pause(&flow.id).await.unwrap().status,
        Some(Status::Pausing)
    );
    wait_status(&st2, &flow.id, Status::Paused).await;
    assert_eq!(
        st2.resume(&flow.id).await.unwrap().status,
        Some(Status::Resuming)
    );
    wait_status(&st2, &flow.id, Status::Running).await;
    let e = st2.pause(&echo.id).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert_eq!(
        e.faultstring(),
        Some("Execution is already in completed state.")
    );
}

#[tokio::test]
async fn unknown_action_and_bad_parameters_are_terminal_with_the_faultstring() {
    let emu = Emulator::start();
    let st2 = client(&emu);
    let cases = [
        ("x.y", json!({}), "Action \"x.y\" cannot be found."),
        ("ops.echo", json!({}), "'message' is a required property"),
        (
            "ops.echo",
            json!({"message": "m", "nope": 1}),
            "Additional properties are not allowed ('nope' was unexpected)",
        ),
        (
            "ops.echo",
            json!({"message": "m", "count": "3"}),
            "'3' is not of type 'integer'",
        ),
        (
            "ops.echo",
            json!({"message": "m", "mode": "x"}),
            "Override of immutable parameter(s) ['mode'] is unsupported.",
        ),
    ];
    for (action, params, fault) in cases {
        let e = st2
            .create_execution(&request(action, params, "t"))
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            &ErrorKind::Http {
                status: 400,
                faultstring: fault.into()
            }
        );
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("/api/v1/executions"), "{e}");
    }
    assert_eq!(emu.stats().await["executions_created"], 0);
    let e = st2
        .get_execution("0123456789abcdef01234567")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
}

#[tokio::test]
async fn user_password_tokens_and_renewal() {
    let emu = Emulator::start_with(&[
        "--actions",
        crate::harness::ACTIONS,
        "--api-key",
        KEY,
        "--token-ttl",
        "2",
    ]);
    let auth = Auth::UserPassword {
        user: "alice".into(),
        password: Secret::new("wonderland"),
    };
    let st2 = St2Client::new(ClusterConn::new(emu.base(), auth)).unwrap();
    let e = st2
        .create_execution(&request("ops.echo", json!({"message": "m"}), "t"))
        .await
        .unwrap();
    assert_eq!(e.context.unwrap()["user"], "alice");
    tokio::time::sleep(Duration::from_millis(2300)).await; // the first token has expired
    assert!(st2.get_execution(&e.id).await.is_ok(), "token renewed");

    let bad = Auth::UserPassword {
        user: "alice".into(),
        password: Secret::new("Pa55-wrong-Secret"),
    };
    let st2 = St2Client::new(ClusterConn::new(emu.base(), bad)).unwrap();
    let err = st2.get_execution("last").await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("/auth/v1/tokens"), "{err}");
    assert!(!format!("{err} {err:?}").contains("Pa55-wrong-Secret"));
}

#[tokio::test]
async fn no_auth_cluster_and_bad_base_url() {
    let emu = Emulator::start_with(&["--any-action", "--no-auth"]);
    let st2 = St2Client::new(ClusterConn::new(
        format!("{}/api/v1/", emu.base()),
        Auth::None,
    ))
    .unwrap();
    let e = st2
        .create_execution(&request("any.thing", json!({"x": [1]}), "t"))
        .await
        .unwrap();
    let done = wait_status(&st2, &e.id, Status::Succeeded).await;
    assert_eq!(done.context.unwrap()["user"], "stanley");
    let err = St2Client::new(ClusterConn::new("127.0.0.1:9101", Auth::None)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Config);
}
