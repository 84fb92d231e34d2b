//! `whale setup` is idempotent and refuses what it cannot do; `whale status` reports backlog.

use crate::harness::*;

#[test]
fn setup_twice_changes_nothing_the_second_time() {
    let env = Env::new();
    let first: serde_json::Value =
        serde_json::from_slice(&env.ok(&["setup", "--json"]).stdout).unwrap();
    let items = first.as_array().unwrap();
    assert!(items.len() >= 12, "streams, consumers and buckets: {first}");
    assert!(items.iter().all(|i| i["change"] == "created"), "{first}");
    let second: serde_json::Value =
        serde_json::from_slice(&env.ok(&["setup", "--json"]).stdout).unwrap();
    let second = second.as_array().unwrap();
    assert_eq!(second.len(), items.len());
    assert!(
        second.iter().all(|i| i["change"] == "unchanged"),
        "{second:?}"
    );
}

#[test]
fn setup_applies_a_new_retention_and_status_reports_consumers() {
    let mut env = Env::new();
    env.ok(&["setup"]);
    env.set("WHALE_RETENTION", "2d");
    let out: serde_json::Value =
        serde_json::from_slice(&env.ok(&["setup", "--json"]).stdout).unwrap();
    let events = out
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "WHALE_EVENTS")
        .unwrap();
    assert_eq!(events["change"], "updated");
    let st: serde_json::Value =
        serde_json::from_slice(&env.ok(&["status", "--json"]).stdout).unwrap();
    assert!(st["server_version"].as_str().unwrap().starts_with("2."));
    let validate = st["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["stage"] == "validate")
        .unwrap();
    assert_eq!(validate["pending"], 0);
    assert!(validate["error"].is_null(), "{validate}");
}

#[test]
fn run_refuses_unknown_stages_and_a_server_without_setup() {
    let env = Env::new();
    let out = env
        .whale(&["run", "--stages", "validate,bogus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown stage \"bogus\"") && err.contains("validate"),
        "{err}"
    );
    let out = env
        .whale(&["run", "--stages", "validate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("whale setup"), "{err}");
}

#[test]
fn sigterm_stops_a_worker_cleanly() {
    let env = Env::new();
    env.prepare();
    let mut w = env.run("ingest,validate");
    assert!(w.terminate(), "whale run exits 0 on SIGTERM");
}

/// `whale run` starts itself again with `MIMALLOC_PURGE_DELAY=100` (freed memory goes back to
/// the system sooner; `purge_sooner` in main.rs) as the same process, with its arguments and the
/// rest of its environment; a value the environment sets is left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whale_run_sets_the_allocators_purge_delay_unless_the_environment_does() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let proc_file = |pid: u32, name: &str| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/{name}"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    for (given, expect) in [(None, "100"), (Some("1000"), "1000")] {
        let port = free_port();
        let log = dir.path().join(format!("run-{expect}.log"));
        let extra: Vec<(&str, &str)> = given
            .map(|v| vec![("MIMALLOC_PURGE_DELAY", v)])
            .unwrap_or_default();
        let w = env.spawn_on("ingest", port, &log, &extra);
        assert!(
            ready(port, std::time::Duration::from_secs(30)).await,
            "whale run: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let pid = w.pid().unwrap();
        let environ = proc_file(pid, "environ");
        let delays: Vec<&String> = environ
            .iter()
            .filter(|v| v.starts_with("MIMALLOC_PURGE_DELAY="))
            .collect();
        assert_eq!(
            delays,
            [&format!("MIMALLOC_PURGE_DELAY={expect}")],
            "{environ:?}"
        );
        let nats = format!("WHALE_NATS_URL={}", env.nats.url());
        assert!(
            environ.contains(&nats),
            "the rest of the environment: {environ:?}"
        );
        let cmdline = proc_file(pid, "cmdline");
        assert!(
            cmdline.ends_with(&[
                "run".into(),
                "--stages".into(),
                "ingest".into(),
                String::new()
            ]),
            "{cmdline:?}"
        );
    }
}

/// A stream cap larger than the server's `max_file_store` (the test servers have 1 TB): setup
/// fails naming the stream, its cap and the settings that fix it, not only the server's
/// "insufficient storage"; a cap that fits then sets up.
#[test]
fn setup_says_which_cap_does_not_fit_the_servers_disk() {
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("whale.toml");
    std::fs::write(&cfg, "[nats]\nevents_max_bytes = 2199023255552\n").unwrap();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    let out = env.whale(&["setup"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "stream WHALE_EVENTS",
        "a cap of 2048.0 GiB",
        "max_file_store",
        "nats.events_max_bytes",
        "insufficient storage",
    ] {
        assert!(err.contains(want), "{want:?} missing: {err}");
    }
    std::fs::write(&cfg, "[nats]\nevents_max_bytes = 1073741824\n").unwrap();
    env.ok(&["setup"]);
}

/// A consumer that reads its whole stream has no filter subjects (nats-server then reads the
/// stream in order instead of matching every message against the filters), as has match's (it
/// reads the whole stream and skips the rejections itself); one that reads part of it keeps them; a consumer made with filters by an earlier whale is updated in place and
/// goes on from where it was, stream subjects it did not filter included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_a_whole_stream_has_no_filters_and_an_old_one_is_updated_in_place() {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use futures::StreamExt;
    use whale_kernel::subjects::{EVENTS_PREFIX, REJECTED_PREFIX, STREAM_EVENTS};

    let env = Env::new();
    env.ok(&["setup"]);
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(STREAM_EVENTS).await.unwrap();
    let filters = |c: &async_nats::jetstream::consumer::Config| {
        let mut f = c.filter_subjects.clone();
        f.extend((!c.filter_subject.is_empty()).then(|| c.filter_subject.clone()));
        f
    };
    let index = stream.consumer_info("index-events").await.unwrap().config;
    assert!(filters(&index).is_empty(), "{index:?}");
    // match handles only `whale.events.>` but reads the whole stream (`Input::whole_stream`: the
    // worker loop acks the rejections unread), so its consumer has no filter either.
    let matching = stream.consumer_info("match").await.unwrap().config;
    assert!(filters(&matching).is_empty(), "{matching:?}");
    let pipe = js
        .get_stream(whale_kernel::subjects::STREAM_PIPE)
        .await
        .unwrap();
    let render = pipe.consumer_info("render").await.unwrap().config;
    assert_eq!(filters(&render), vec!["whale.pipe.matched".to_string()]);

    // index-events as whale made it before: both subjects of the stream as filters.
    stream.delete_consumer("index-events").await.unwrap();
    let old: pull::Config = pull::Config {
        durable_name: Some("index-events".into()),
        ack_policy: AckPolicy::Explicit,
        filter_subjects: vec![format!("{EVENTS_PREFIX}.>"), format!("{REJECTED_PREFIX}.>")],
        ..Default::default()
    };
    let consumer = stream.create_consumer(old).await.unwrap();
    for s in ["a", "b", "c"] {
        js.publish(format!("{EVENTS_PREFIX}.t.{s}"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish(format!("{REJECTED_PREFIX}.t"), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut first = consumer.fetch().max_messages(2).messages().await.unwrap();
    while let Some(m) = first.next().await {
        m.unwrap().double_ack().await.unwrap();
    }

    let out: serde_json::Value =
        serde_json::from_slice(&env.ok(&["setup", "--json"]).stdout).unwrap();
    let item = out
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "WHALE_EVENTS/index-events")
        .unwrap_or_else(|| panic!("index-events in {out}"));
    assert_eq!(item["change"], "updated", "{out}");
    let updated: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("index-events").await.unwrap();
    assert!(filters(&updated.cached_info().config).is_empty());
    let mut rest = updated
        .fetch()
        .max_messages(10)
        .expires(std::time::Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut subjects = Vec::new();
    while let Some(m) = rest.next().await {
        let m = m.unwrap();
        subjects.push(m.subject.to_string());
        m.ack().await.unwrap();
    }
    assert_eq!(
        subjects,
        vec![
            format!("{EVENTS_PREFIX}.t.c"),
            format!("{REJECTED_PREFIX}.t")
        ],
        "the updated consumer goes on after the two acked messages"
    );
}
