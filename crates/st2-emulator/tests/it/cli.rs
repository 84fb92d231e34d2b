//! The official `st2` CLI (st2client 3.9.0) against the emulator: if these pass, the emulator
//! answers what real StackStorm clients expect.

use crate::harness::{eventually, strip_ansi, Cli, Emulator};
use serde_json::Value;

async fn status(cli: &Cli, id: &str) -> String {
    let r = cli.run(&["execution", "get", id, "-j"]).await;
    r.json()["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn run_succeeds_and_a_failing_action_exits_1() {
    let emu = Emulator::start();
    let cli = Cli::new(&emu);

    let r = cli.run(&["run", "ops.echo", "message=hi", "count=3"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("action.ref: ops.echo"), "{}", r.stdout);
    assert!(r.stdout.contains("status: succeeded"), "{}", r.stdout);
    assert!(
        r.stdout.contains("count: 3") && r.stdout.contains("hello"),
        "{}",
        r.stdout
    );

    let j = cli
        .run(&["run", "ops.echo", "message=hi", "count=3", "-j"])
        .await
        .json();
    assert_eq!(j["status"], "succeeded");
    assert_eq!(
        j["parameters"]["count"], 3,
        "the CLI typed count from the action schema"
    );
    assert_eq!(j["result"]["stdout"], "hello\nworld");

    let r = cli.run(&["run", "ops.broken"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("status: failed"), "{}", r.stdout);

    let r = cli.run(&["run", "ops.echo", "message=x", "bogus=1"]).await;
    assert_ne!(r.code, 0);
    assert!(
        r.stdout
            .contains("Additional properties are not allowed ('bogus' was unexpected)"),
        "{}",
        r.stdout
    );
    let r = cli.run(&["run", "ops.echo"]).await;
    assert!(
        r.stdout.contains("'message' is a required property"),
        "{}",
        r.stdout
    );
    assert_eq!(
        emu.stats().await["executions_created"],
        3,
        "rejected runs create nothing"
    );
}

#[tokio::test]
async fn execution_list_and_get() {
    let emu = Emulator::start();
    let cli = Cli::new(&emu);
    let a = cli.run_async(&["ops.echo", "message=one"]).await;
    let b = cli.run_async(&["ops.broken"]).await;
    for id in [&a, &b] {
        eventually(20, "terminal", || async {
            ["succeeded", "failed"].contains(&status(&cli, id).await.as_str())
        })
        .await;
    }

    let r = cli.run(&["execution", "list"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&a) && r.stdout.contains(&b),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("succeeded") && r.stdout.contains("failed"),
        "{}",
        r.stdout
    );

    let list = cli.run(&["execution", "list", "-j"]).await.json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));

    let r = cli
        .run(&["execution", "list", "-n", "1", "--action", "ops.echo", "-j"])
        .await
        .json();
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["id"], a.as_str());

    let r = cli.run(&["execution", "get", &a]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&format!("id: {a}")), "{}", r.stdout);
    assert!(r.stdout.contains("status: succeeded"), "{}", r.stdout);
    assert!(
        r.stdout.contains("- status: running"),
        "log entries: {}",
        r.stdout
    );

    let j = cli.run(&["execution", "get", &b, "-j"]).await.json();
    assert_eq!(j["id"], b.as_str());
    assert_eq!(j["status"], "failed");
    assert_eq!(j["action"]["ref"], "ops.broken");

    let r = cli
        .run(&["execution", "get", "0123456789abcdef01234567"])
        .await;
    assert!(r.stdout.contains("not found"), "{}{}", r.stdout, r.stderr);
}

#[tokio::test]
async fn execution_cancel() {
    let emu = Emulator::start();
    let cli = Cli::new(&emu);
    let id = cli.run_async(&["ops.long"]).await;
    eventually(20, "running", || async {
        status(&cli, &id).await == "running"
    })
    .await;
    let r = cli.run(&["execution", "cancel", &id]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.trim(),
        format!("action execution with id {id} canceled.")
    );
    eventually(20, "canceled", || async {
        status(&cli, &id).await == "canceled"
    })
    .await;
    let j = cli.run(&["execution", "get", &id, "-j"]).await.json();
    assert_eq!(j["result"]["message"], "Action canceled by user.");

    let done = cli.run_async(&["ops.echo", "message=x"]).await;
    eventually(20, "succeeded", || async {
        status(&cli, &done).await == "succeeded"
    })
    .await;
    let r = cli.run(&["execution", "cancel", &done]).await;
    assert_eq!(
        r.stdout.trim(),
        "Action cannot be canceled. State = succeeded."
    );
}

#[tokio::test]
async fn execution_re_run() {
    let emu = Emulator::start();
    let cli = Cli::new(&emu);
    let first = cli
        .run(&["run", "ops.echo", "message=a", "count=2", "-j"])
        .await
        .json();
    let old = first["id"].as_str().unwrap().to_owned();

    let r = cli.run(&["execution", "re-run", &old, "message=b"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("status: succeeded"), "{}", r.stdout);
    let new = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("re-run prints the new id")
        .trim()
        .to_owned();
    assert_ne!(new, old);
    let j = cli.run(&["execution", "get", &new, "-j"]).await.json();
    assert_eq!(j["parameters"]["message"], "b");
    assert_eq!(
        j["parameters"]["count"], 2,
        "re-run merges the original parameters"
    );
    let full: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/executions/{new}", emu.base()))
        .header("St2-Api-Key", crate::harness::KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(full["context"]["re-run"]["ref"], old.as_str());
}

#[tokio::test]
async fn execution_pause_and_resume_a_workflow() {
    let emu = Emulator::start();
    let cli = Cli::new(&emu);
    let id = cli.run_async(&["ops.flow"]).await;
    eventually(20, "running", || async {
        status(&cli, &id).await == "running"
    })
    .await;

    let r = cli.run(&["execution", "pause", &id]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("status: pausing"), "{}", r.stdout);
    eventually(20, "paused", || async {
        status(&cli, &id).await == "paused"
    })
    .await;

    let r = cli.run(&["execution", "resume", &id, "-j"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["status"], "resuming");
    eventually(30, "succeeded", || async {
        status(&cli, &id).await == "succeeded"
    })
    .await;
    let j = cli.run(&["execution", "get", &id, "-j"]).await.json();
    assert_eq!(j["result"]["output"]["greeting"], "hi");

    let shell = cli.run_async(&["ops.long"]).await;
    eventually(20, "running", || async {
        status(&cli, &shell).await == "running"
    })
    .await;
    let r = cli.run(&["execution", "pause", &shell]).await;
    assert!(
        r.stdout
            .contains("not supported by the \"local-shell-cmd\" runner"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[tokio::test]
async fn execution_tail_follows_the_stream() {
    let emu = Emulator::start();
    let cli = Cli::new(&emu);
    // The stream has no replay, so hold the execution (delayed) until tail is subscribed,
    // then release it with a plain status update, as StackStorm allows.
    let api = |m: reqwest::Method, path: &str| {
        reqwest::Client::new()
            .request(m, format!("{}/api/v1/executions{path}", emu.base()))
            .header("St2-Api-Key", crate::harness::KEY)
    };
    let held: Value = api(reqwest::Method::POST, "")
        .json(&serde_json::json!({"action": "ops.slow", "delay": 600_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held["status"], "delayed");
    let id = held["id"].as_str().unwrap().to_owned();
    let tail = cli.command(&["execution", "tail", &id]).spawn().unwrap();
    eventually(30, "tail to subscribe", || async {
        emu.stats().await["open_streams"] == 1
    })
    .await;
    let put = api(reqwest::Method::PUT, &format!("/{id}"))
        .json(&serde_json::json!({"status": "requested"}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let out = tail.wait_with_output().await.unwrap();
    let stdout = strip_ansi(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with(&format!("Execution {id} has started.\n\none\ntwo\nthree\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Execution {id} has completed (status=succeeded).")),
        "{stdout}"
    );
    // Tailing a finished execution prints its stored output.
    let r = cli.run(&["execution", "tail", &id]).await;
    assert!(r.stdout.starts_with("one\ntwo\nthree\n"), "{}", r.stdout);
    assert!(
        r.stdout.contains("has completed (status=succeeded)"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn a_wrong_api_key_is_refused() {
    let emu = Emulator::start();
    let cli = Cli::new(&emu).with_key("not-the-key");
    let r = cli.run(&["execution", "list"]).await;
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("401"), "{all}");
    assert!(
        all.contains("Unauthorized - One of Token or API key required."),
        "{all}"
    );
}
