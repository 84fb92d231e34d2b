//! The one malformed-input policy (ARCHITECTURE.md, "Malformed input, one policy"): a message on
//! an internal subject that is not the record its stage reads is logged, counted as outcome
//! `malformed` and acked — never retried, never terminated, never lost (it stays in its
//! stream). One bad record on every internal subject a stage consumes, against the real
//! `whale run` with every consuming stage but index.

use std::collections::BTreeMap;
use std::time::Duration;

use whale_kernel::subjects::{self, Pipe, STREAM_EVENTS, STREAM_PIPE};
use whale_kernel::testkit::RedisServer;

use crate::harness::*;

/// Each internal subject a stage reads, and the stage (and its consumer) reading it.
fn subjects_under_test() -> Vec<(String, &'static str, &'static str)> {
    vec![
        (subjects::events("generic"), "match", "match"),
        (Pipe::Matched.subject(), "render", "render"),
        (Pipe::Task.subject(), "throttle", "throttle"),
        (
            Pipe::Admitted.subject_with("default"),
            "dispatch",
            "dispatch",
        ),
        (Pipe::Approval.subject(), "approve", "approve"),
        (subjects::approval_wait(), "approve", "approve"),
        (Pipe::Decision.subject(), "approve", "approve"),
        (Pipe::Dispatched.subject(), "feedback", "feedback"),
        (Pipe::Notify.subject(), "feedback", "feedback-notify"),
    ]
}

/// `whale_stage_messages_total{stage="<stage>",outcome="<outcome>"}` from `/metrics` (0 when
/// absent).
fn counter(metrics: &str, stage: &str, outcome: &str) -> u64 {
    let want = format!("stage=\"{stage}\"");
    let want_outcome = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("whale_stage_messages_total{"))
        .filter(|l| l.contains(&want) && l.contains(&want_outcome))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_on_each_internal_subject_is_counted_acked_and_kept() {
    let redis = RedisServer::start();
    let emu = Emulator::start(&["--any-action", "--api-key", "k"]);
    let mut env = Env::new();
    env.set("WHALE_REDIS_URL", &redis.url());
    env.set("WHALE_ST2_URL", &emu.url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.prepare();
    // With a rule set, so that match reads its input (with none it acks everything unread).
    env.ok(&["rules", "apply", "pipelines"]);
    let _w = env.run("match,render,throttle,dispatch,approve,feedback");
    let nats = env.connect().await;

    let cases = subjects_under_test();
    let mut per_stage: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, (subject, stage, _)) in cases.iter().enumerate() {
        // JSON that is no record on even subjects, not JSON at all on odd ones.
        let body = if i % 2 == 0 {
            "[1, 2]"
        } else {
            "{\"not\": \"a rec"
        };
        nats.publish_raw(subject.clone(), &[], body).await.unwrap();
        *per_stage.entry(stage).or_default() += 1;
    }

    let metrics = || async {
        reqwest::get(env.http("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let all_counted = eventually(Duration::from_secs(30), || async {
        let m = metrics().await;
        per_stage
            .iter()
            .all(|(stage, n)| counter(&m, stage, "malformed") == *n)
    })
    .await;
    let m = metrics().await;
    assert!(
        all_counted,
        "each stage counts its malformed records once: want {per_stage:?}, /metrics has:\n{}",
        m.lines()
            .filter(|l| l.starts_with("whale_stage_messages_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for stage in per_stage.keys() {
        for outcome in ["term", "retry"] {
            assert_eq!(counter(&m, stage, outcome), 0, "{stage}: no {outcome}");
        }
    }

    // Acked: nothing pending or awaiting an ack on any consumer, nothing redelivered.
    for (subject, stage, consumer) in &cases {
        let stream = if subject.starts_with("whale.events.") {
            STREAM_EVENTS
        } else {
            STREAM_PIPE
        };
        let info = nats.consumer_info(stream, consumer).await.unwrap();
        assert_eq!(info.num_pending, 0, "{stage}/{consumer}: {subject} pending");
        assert_eq!(
            info.num_ack_pending, 0,
            "{stage}/{consumer}: {subject} not acked"
        );
        assert_eq!(
            info.num_redelivered, 0,
            "{stage}/{consumer}: {subject} redelivered"
        );
        // Kept: the message is still in its stream (nothing is lost silently).
        assert_eq!(
            count(&nats, stream, subject).await,
            1,
            "{subject} is still in {stream}"
        );
    }
}
