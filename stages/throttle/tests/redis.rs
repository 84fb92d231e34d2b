//! The throttle against a real redis-server (testkit): exact limits, refill, burst, once_within,
//! idempotency per task, odd keys, and Redis going away and coming back — first at the level of
//! the limiter (Redis decisions), then through the stage (outcomes and records).

use std::time::Duration;

use bytes::Bytes;
use whale_kernel::records::{Approval, Task, Throttle, ThrottleMode, Throttled};
use whale_kernel::subjects::{HDR_EVENT_ID, HDR_RULE, HDR_TASK_ID};
use whale_kernel::testkit::RedisServer;
use whale_kernel::{Delivery, Outcome, Secret, Stage};
use whale_throttle::policy::{self, Plan, Request};
use whale_throttle::{Limiter, ThrottleStage};

fn throttle(key: &str, limit: u64, per_ms: u64, burst: u64, mode: ThrottleMode) -> Throttle {
    Throttle {
        key: key.into(),
        limit,
        per_ms,
        burst,
        mode,
        fail_open: false,
    }
}

fn req(t: &Throttle, task_id: &str) -> Request {
    match policy::plan("rule-a", t, task_id) {
        Plan::Ask(r) => r,
        other => panic!("expected a Redis question, got {other:?}"),
    }
}

fn limiter(redis: &RedisServer) -> Limiter {
    Limiter::new(&Secret::new(redis.url())).expect("valid url")
}

/// (admitted, throttled retry_after_ms) of asking for `ids` in one pipeline.
async fn ask(l: &Limiter, t: &Throttle, ids: &[String]) -> (Vec<String>, Vec<u64>) {
    let reqs: Vec<Request> = ids.iter().map(|id| req(t, id)).collect();
    let mut admitted = Vec::new();
    let mut retry = Vec::new();
    for (id, d) in ids.iter().zip(l.decide(&reqs).await) {
        let d = d.expect("Redis answers");
        if d.admitted {
            admitted.push(id.clone());
        } else {
            assert!(
                d.retry_after_ms > 0,
                "a throttled task says when to come back"
            );
            retry.push(d.retry_after_ms);
        }
    }
    (admitted, retry)
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn redis_cmd<T: redis::FromRedisValue>(redis: &RedisServer, args: &[&str]) -> T {
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c).unwrap()
}

#[tokio::test]
async fn exact_limit_then_refill_after_the_period() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    let t = throttle("web-1", 5, 1_000, 0, ThrottleMode::Rate);
    let (admitted, retry) = ask(&l, &t, &ids("a", 20)).await;
    assert_eq!(admitted, ids("a", 5), "the first five in order, exactly");
    assert_eq!(retry.len(), 15);
    assert!(retry.iter().all(|&r| r <= 1_000), "{retry:?}");
    // Nothing frees up before the period has passed...
    let (admitted, _) = ask(&l, &t, &ids("b", 3)).await;
    assert!(admitted.is_empty());
    // ...and after it the bucket is whole again: five more, exactly.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (admitted, retry) = ask(&l, &t, &ids("c", 8)).await;
    assert_eq!(admitted, ids("c", 5));
    assert_eq!(retry.len(), 3);
    // Another key of the same rule, and the same key of another rule, are separate buckets.
    let (admitted, _) = ask(
        &l,
        &throttle("web-2", 5, 1_000, 0, ThrottleMode::Rate),
        &ids("d", 6),
    )
    .await;
    assert_eq!(admitted.len(), 5);
    let other_rule = match policy::plan("rule-b", &t, "e-0") {
        Plan::Ask(r) => r,
        p => panic!("{p:?}"),
    };
    assert!(l.decide(&[other_rule]).await[0].as_ref().unwrap().admitted);
}

#[tokio::test]
async fn retry_after_is_when_the_next_token_frees_up() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    let t = throttle("k", 2, 1_500, 0, ThrottleMode::Rate);
    assert_eq!(ask(&l, &t, &ids("a", 1)).await.0.len(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ask(&l, &t, &ids("b", 1)).await.0.len(), 1);
    // Full. The first token was taken ~600 ms ago: it frees up in ~900 ms, not in 1.5 s.
    let (_, retry) = ask(&l, &t, &ids("c", 1)).await;
    assert!(retry[0] <= 900, "{retry:?}");
    tokio::time::sleep(Duration::from_millis(retry[0] + 50)).await;
    // One token back (the first), the second still held.
    let (admitted, _) = ask(&l, &t, &ids("d", 2)).await;
    assert_eq!(admitted, ids("d", 1));
}

#[tokio::test]
async fn burst_lets_more_through_at_once_and_keeps_the_rate() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    // 2 per second with a burst of 3: five at once, then each token is held 2.5 s.
    let t = throttle("k", 2, 1_000, 3, ThrottleMode::Rate);
    let (admitted, retry) = ask(&l, &t, &ids("a", 10)).await;
    assert_eq!(admitted.len(), 5);
    assert!(retry.iter().all(|&r| r > 1_000 && r <= 2_500), "{retry:?}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(
        ask(&l, &t, &ids("b", 1)).await.0.is_empty(),
        "no refill before 2.5 s"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(ask(&l, &t, &ids("c", 10)).await.0.len(), 5);
}

#[tokio::test]
async fn once_within_fires_the_first_and_suppresses_the_rest_until_the_window_passes() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    // limit and burst do not matter in this mode.
    let t = throttle("host-7", 50, 1_000, 9, ThrottleMode::OnceWithin);
    let (admitted, retry) = ask(&l, &t, &ids("a", 10)).await;
    assert_eq!(admitted, ids("a", 1));
    assert!(retry.iter().all(|&r| r <= 1_000));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        ask(&l, &t, &ids("b", 3)).await.0.is_empty(),
        "still within the window"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        ask(&l, &t, &ids("c", 3)).await.0,
        ids("c", 1),
        "window passed: the next one fires"
    );
}

#[tokio::test]
async fn decisions_are_idempotent_per_task() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    let t = throttle("k", 5, 60_000, 0, ThrottleMode::Rate);
    let first: Vec<_> = l
        .decide(&ids("t", 3).iter().map(|id| req(&t, id)).collect::<Vec<_>>())
        .await;
    assert!(first
        .iter()
        .all(|d| d.as_ref().unwrap().admitted && !d.as_ref().unwrap().repeated));
    // The three again (a redelivery), twice in the same pipeline, plus four new tasks: the
    // repeats take no tokens, so two of the new ones still fit.
    let mut again = ids("t", 3);
    again.extend(ids("t", 3));
    again.extend(ids("n", 4));
    let reqs: Vec<Request> = again.iter().map(|id| req(&t, id)).collect();
    let d: Vec<_> = l
        .decide(&reqs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(d[..6].iter().all(|d| d.admitted && d.repeated), "{d:?}");
    assert_eq!(
        d[6..].iter().map(|d| d.admitted).collect::<Vec<_>>(),
        [true, true, false, false]
    );
    // A throttled task asked again gets the same answer, the same retry_after, even after a
    // token has freed up — and an admitted one stays admitted.
    let thr = l.decide(&[req(&t, "n-3")]).await.remove(0).unwrap();
    assert!(!thr.admitted && thr.repeated);
    assert_eq!(thr.retry_after_ms, d[9].retry_after_ms);
    let log = req(&t, "x").log_key;
    assert_eq!(
        redis_cmd::<u64>(&redis, &["ZCARD", &log]),
        5,
        "five tokens taken, no more"
    );
}

#[tokio::test]
async fn repeated_decision_outlives_a_short_period() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    // A 200 ms period: by the time a crashed worker's task is redelivered (ack wait) the token
    // is long back, but the task must still get its first answer.
    let t = throttle("k", 1, 200, 0, ThrottleMode::Rate);
    let (admitted, _) = ask(&l, &t, &ids("t", 2)).await;
    assert_eq!(admitted, ids("t", 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d: Vec<_> = l.decide(&[req(&t, "t-1"), req(&t, "t-0")]).await;
    let d: Vec<_> = d.into_iter().map(Result::unwrap).collect();
    assert!(
        !d[0].admitted && d[0].repeated,
        "throttled stays throttled: {:?}",
        d[0]
    );
    assert!(d[1].admitted && d[1].repeated);
    let r = req(&t, "t-1");
    let pttl: i64 = redis_cmd(&redis, &["PTTL", &r.marker_key]);
    assert!(
        pttl > 60_000,
        "decision remembered past the ack wait: {pttl}"
    );
}

#[tokio::test]
async fn idle_keys_expire() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    let t = throttle("k", 3, 500, 0, ThrottleMode::Rate);
    ask(&l, &t, &ids("t", 5)).await;
    let r = req(&t, "t-0");
    let pttl: i64 = redis_cmd(&redis, &["PTTL", &r.log_key]);
    assert!(
        pttl > 0 && pttl <= 500,
        "log expires with its last token: {pttl}"
    );
    let pttl: i64 = redis_cmd(&redis, &["PTTL", &r.marker_key]);
    assert!(
        pttl > 0 && pttl <= policy::MARKER_TTL_MAX_MS as i64,
        "{pttl}"
    );
    let no_ttl: Vec<String> = redis_cmd::<Vec<String>>(&redis, &["KEYS", "*"])
        .into_iter()
        .filter(|k| redis_cmd::<i64>(&redis, &["PTTL", k]) < 0)
        .collect();
    assert!(
        no_ttl.is_empty(),
        "keys that would never expire: {no_ttl:?}"
    );
}

#[tokio::test]
async fn empty_huge_and_odd_keys_get_their_own_bounded_buckets() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    let huge = "h".repeat(4 << 20);
    let lossy = String::from_utf8_lossy(b"\xff\xfe host \xc3\x28").into_owned();
    let keys = [
        "",
        " ",
        huge.as_str(),
        "a\0b\r\n{}}{*",
        "🐳 müll",
        lossy.as_str(),
        "{rule-a}",
    ];
    for (i, key) in keys.iter().enumerate() {
        let t = throttle(key, 1, 60_000, 0, ThrottleMode::Rate);
        let (admitted, retry) = ask(&l, &t, &ids(&format!("k{i}"), 3)).await;
        assert_eq!(admitted.len(), 1, "key #{i}");
        assert_eq!(retry.len(), 2, "key #{i}");
    }
    let stored: Vec<String> = redis_cmd(&redis, &["KEYS", "*"]);
    assert_eq!(
        stored.iter().filter(|k| k.ends_with(":log")).count(),
        keys.len()
    );
    assert!(
        stored
            .iter()
            .all(|k| k.len() < 120 && k.starts_with("whale:throttle:{")),
        "{stored:?}"
    );
}

#[tokio::test]
async fn redis_gone_means_wait_and_decisions_resume_when_it_is_back() {
    let mut redis = RedisServer::start();
    let l = limiter(&redis);
    let t = throttle("k", 3, 60_000, 0, ThrottleMode::Rate);
    assert_eq!(ask(&l, &t, &ids("a", 1)).await.0.len(), 1);
    redis.stop();
    for _ in 0..3 {
        let d = l.decide(&[req(&t, "b-0"), req(&t, "b-1")]).await;
        assert!(
            d.iter()
                .all(|d| matches!(d, Err(whale_throttle::limiter::Error::Unreachable(_)))),
            "{d:?}"
        );
    }
    // Back, empty (no persistence) and with an empty script cache: NOSCRIPT → reload.
    redis.start_again();
    let mut answered = None;
    for _ in 0..50 {
        let d = l.decide(&[req(&t, "c-0")]).await;
        if let Ok(d) = &d[0] {
            answered = Some(*d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered.expect("decisions resume").admitted);
}

// ---- through the stage ------------------------------------------------------------------

fn task(id: &str, th: Option<Throttle>) -> Task {
    Task {
        task_id: id.into(),
        event_id: format!("ev-{id}"),
        event_type: "vm.disk_usage".into(),
        rule: "disk-full-cleanup".into(),
        rule_version: "v1".into(),
        action: "ops.clean_disk".into(),
        parameters: serde_json::json!({"host": "web-1"}),
        throttle: th,
        cluster: "default".into(),
        approval: None,
        notify: vec![],
        result_event: false,
        replay: None,
        created: time::macros::datetime!(2026-01-01 00:00 UTC),
        item: None,
        labels: Default::default(),
    }
}

fn delivery(payload: Vec<u8>) -> Delivery {
    Delivery::new(
        "whale.pipe.task",
        Bytes::from(payload),
        &[],
        1,
        1,
        time::OffsetDateTime::now_utc(),
    )
}

fn of(t: &Task) -> Delivery {
    delivery(serde_json::to_vec(t).unwrap())
}

fn outputs(o: &Outcome) -> &[whale_kernel::Output] {
    match o {
        Outcome::Ack(v) => v,
        other => panic!("expected ack, got {other:?}"),
    }
}

#[tokio::test]
async fn stage_routes_admitted_throttled_approval_and_unthrottled_tasks() {
    let redis = RedisServer::start();
    let stage = ThrottleStage::new(&Secret::new(redis.url())).unwrap();
    let th = throttle("web-1", 1, 60_000, 0, ThrottleMode::Rate);
    let mut gated = task("t-3", None);
    gated.approval = Some(Approval {
        timeout_ms: 1_000,
        channel: None,
    });
    let mut bad_cluster = task("t-5", Some(th.clone()));
    bad_cluster.cluster = "east.*".into();
    let mut batch = vec![
        of(&task("t-1", Some(th.clone()))),
        of(&task("t-2", Some(th.clone()))),
        of(&gated),
        of(&task("t-4", None)),
        of(&bad_cluster),
        delivery(b"{not a task".to_vec()),
    ];
    // A key with bytes that are not UTF-8, straight in the JSON.
    let mut raw = serde_json::to_vec(&task(
        "t-6",
        Some(throttle("KEY", 1, 60_000, 0, ThrottleMode::Rate)),
    ))
    .unwrap();
    let at = raw.windows(3).position(|w| w == b"KEY").unwrap();
    raw.splice(at..at + 3, b"\xff\xc3\x28".iter().copied());
    batch.push(delivery(raw));
    let out = stage.handle_batch(&batch).await;
    assert_eq!(out.len(), batch.len());

    let o = &outputs(&out[0])[0];
    assert_eq!(
        (o.subject.as_str(), o.msg_id.as_str()),
        ("whale.pipe.admitted.default", "adm:t-1")
    );
    let hdr = |o: &whale_kernel::Output, k: &str| {
        o.headers
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(hdr(o, HDR_EVENT_ID).as_deref(), Some("ev-t-1"));
    assert_eq!(hdr(o, HDR_RULE).as_deref(), Some("disk-full-cleanup"));
    assert_eq!(hdr(o, HDR_TASK_ID).as_deref(), Some("t-1"));
    assert_eq!(
        serde_json::from_slice::<Task>(&o.payload).unwrap(),
        task("t-1", Some(th.clone()))
    );

    let o = &outputs(&out[1])[0];
    assert_eq!(
        (o.subject.as_str(), o.msg_id.as_str()),
        ("whale.pipe.throttled", "thr:t-2")
    );
    let rec: Throttled = serde_json::from_slice(&o.payload).unwrap();
    assert_eq!(rec.task.task_id, "t-2");
    assert!(rec.retry_after_ms > 0 && rec.retry_after_ms <= 60_000);
    assert!(
        rec.reason.contains("disk-full-cleanup") && rec.reason.contains("\"web-1\""),
        "{}",
        rec.reason
    );
    assert_eq!(hdr(o, HDR_TASK_ID).as_deref(), Some("t-2"));

    let o = &outputs(&out[2])[0];
    assert_eq!(
        (o.subject.as_str(), o.msg_id.as_str()),
        ("whale.pipe.approval", "apv:t-3")
    );
    let o = &outputs(&out[3])[0];
    assert_eq!(
        (o.subject.as_str(), o.msg_id.as_str()),
        ("whale.pipe.admitted.default", "adm:t-4")
    );
    let o = &outputs(&out[4])[0];
    assert_eq!(
        (o.subject.as_str(), o.msg_id.as_str()),
        ("whale.pipe.dead_letter", "dl:t-5")
    );
    assert!(
        matches!(&out[5], Outcome::Malformed { reason } if reason.contains("not a task record"))
    );
    let o = &outputs(&out[6])[0];
    assert_eq!(
        o.msg_id, "adm:t-6",
        "odd bytes in the key: read lossily, decided, admitted"
    );
    let again = stage.handle_batch(&batch[..2]).await;
    assert_eq!(
        outputs(&again[0])[0].msg_id,
        "adm:t-1",
        "redelivery gets the same decision"
    );
    assert_eq!(outputs(&again[1])[0].msg_id, "thr:t-2");
}

#[tokio::test]
async fn stage_waits_while_redis_is_down_unless_fail_open() {
    // The stage is built while Redis is down (a worker must start and wait).
    let port = whale_kernel::testkit::free_port();
    let stage = ThrottleStage::new(&Secret::new(format!("redis://127.0.0.1:{port}"))).unwrap();
    let th = throttle("k", 1, 60_000, 0, ThrottleMode::Rate);
    let open = Throttle {
        fail_open: true,
        ..th.clone()
    };
    let named = |mut t: Task| {
        t.rule = "waits-for-redis".into();
        of(&t)
    };
    let batch = vec![
        named(task("t-1", Some(th.clone()))),
        named(task("t-2", Some(open))),
        named(task("t-3", None)),
    ];
    for _ in 0..2 {
        let out = stage.handle_batch(&batch).await;
        assert!(
            matches!(&out[0], Outcome::Retry { delay, .. } if *delay == whale_throttle::stage::REDIS_RETRY),
            "{:?}",
            out[0]
        );
        assert_eq!(
            outputs(&out[1])[0].msg_id,
            "adm:t-2",
            "fail_open admits without Redis"
        );
        assert_eq!(
            outputs(&out[2])[0].msg_id,
            "adm:t-3",
            "no throttle, no Redis needed"
        );
    }
    let metrics = whale_kernel::metrics::render();
    assert!(metrics.contains(r#"whale_throttle_decisions_total{decision="waiting_for_redis",rule="waits-for-redis"} 2"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"whale_throttle_decisions_total{decision="fail_open",rule="waits-for-redis"} 2"#
        ),
        "{metrics}"
    );
    // Redis comes up on that port: the waiting task is decided.
    // RedisServer picks its own port; start one by hand on the port the stage was given.
    let bin = std::env::var("WHALE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let redis = std::process::Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let _guard = KillOnDrop(redis);
    assert!(whale_kernel::testkit::wait_for_port(
        port,
        Duration::from_secs(10)
    ));
    let mut decided = None;
    for _ in 0..50 {
        let out = stage.handle_batch(&batch[..1]).await;
        if let Outcome::Ack(o) = &out[0] {
            decided = Some(o[0].msg_id.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(decided.as_deref(), Some("adm:t-1"));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn script_cache_flushed_means_reload_not_failure() {
    let redis = RedisServer::start();
    let l = limiter(&redis);
    let t = throttle("k", 2, 60_000, 0, ThrottleMode::Rate);
    assert_eq!(ask(&l, &t, &ids("a", 1)).await.0.len(), 1);
    let _: String = redis_cmd(&redis, &["SCRIPT", "FLUSH"]);
    let (admitted, retry) = ask(&l, &t, &ids("b", 3)).await;
    assert_eq!(
        (admitted.len(), retry.len()),
        (1, 2),
        "the bucket survived, only the script was reloaded"
    );
}

/// Fails the Sentinels' master over and waits until the new one answers; returns the servers
/// and the new master's port.
async fn fail_over(
    redis: whale_kernel::testkit::RedisSentinels,
) -> (whale_kernel::testkit::RedisSentinels, u16) {
    tokio::task::spawn_blocking(move || {
        let old = redis.failover();
        let new = redis.wait_failover(old, Duration::from_secs(60));
        redis.wait_ready(new, Duration::from_secs(60));
        (redis, new)
    })
    .await
    .unwrap()
}

/// (admitted count per key) of asking for `per_key` tasks on each of `keys` keys in one batch.
async fn ask_keys(l: &Limiter, rule: &str, keys: usize, per_key: usize, limit: u64) -> Vec<usize> {
    let mut reqs = Vec::new();
    for k in 0..keys {
        let t = throttle(&format!("host-{k}"), limit, 600_000, 0, ThrottleMode::Rate);
        for i in 0..per_key {
            match policy::plan(rule, &t, &format!("{rule}-{k}-{i}")) {
                Plan::Ask(r) => reqs.push(r),
                p => panic!("{p:?}"),
            }
        }
    }
    let mut admitted = vec![0; keys];
    for (i, d) in l.decide(&reqs).await.into_iter().enumerate() {
        admitted[i / per_key] += d.expect("Redis answers").admitted as usize;
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_decides_exactly_per_master_and_per_bucket() {
    use whale_kernel::testkit::{redis_cli, RedisCluster};
    use whale_throttle::limiter::ClusterBatches;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let l = Limiter::new(&Secret::new(cluster.url())).expect("cluster url");
    assert_eq!(l.ping().await, Ok(()));
    assert_eq!(
        l.servers(),
        format!("redis cluster via {}", cluster.seeds())
    );
    // 60 keys x 30 tasks in one batch, limit 10: exactly 10 per key, whichever node holds it.
    assert_eq!(ask_keys(&l, "per-node", 60, 30, 10).await, vec![10; 60]);
    let per_bucket = l.clone().with_cluster_batches(ClusterBatches::PerBucket);
    assert_eq!(
        ask_keys(&per_bucket, "per-bucket", 60, 30, 10).await,
        vec![10; 60]
    );
    // Asked again, the same tasks get the same answers (markers) and take nothing more.
    assert_eq!(ask_keys(&l, "per-bucket", 60, 30, 10).await, vec![10; 60]);
    let logs: Vec<usize> = cluster
        .ports()
        .iter()
        .map(|&p| {
            redis_cli(p, &["--scan", "--pattern", "whale:throttle:*:log"])
                .lines()
                .count()
        })
        .collect();
    assert_eq!(logs.iter().sum::<usize>(), 120, "{logs:?}");
    assert!(
        logs.iter().all(|&n| n > 0),
        "buckets on every master: {logs:?}"
    );
    // Every node's script cache emptied: NOSCRIPT on each, EVAL instead, no failure.
    for p in cluster.ports() {
        assert_eq!(redis_cli(p, &["SCRIPT", "FLUSH"]), "OK");
    }
    assert_eq!(ask_keys(&l, "flushed", 60, 3, 2).await, vec![2; 60]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_limiter_follows_the_master_through_a_planned_failover() {
    use whale_kernel::testkit::RedisSentinels;
    let redis = tokio::task::spawn_blocking(RedisSentinels::start)
        .await
        .unwrap();
    let cfg = whale_kernel::config::RedisConfig {
        url: Secret::new(redis.url()),
        wait_replicas: 1,
        ..Default::default()
    };
    let l = Limiter::from_config(&cfg).expect("sentinel url");
    assert_eq!(l.ping().await, Ok(()));
    assert_eq!(ask_keys(&l, "before", 20, 10, 4).await, vec![4; 20]);
    let (redis, new_master) = fail_over(redis).await;
    assert_eq!(redis.master_port(), Some(new_master));
    // The old connection now meets READONLY (or is closed): the limiter asks the Sentinels
    // again. The first call may come back "wait"; within a few it answers from the new master.
    let mut answer = None;
    for _ in 0..50 {
        let t = throttle("host-0", 4, 600_000, 0, ThrottleMode::Rate);
        let Plan::Ask(r) = policy::plan("before", &t, "before-0-0") else {
            panic!("a Redis question")
        };
        let d = l.decide(&[r]).await;
        if let [Ok(d)] = d.as_slice() {
            answer = Some(*d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = answer.expect("decisions resume on the new master");
    // A decision made before the failover is remembered by the new master (WAIT 1).
    assert!(d.admitted && d.repeated, "{d:?}");
    // Every decision too (the same 4 of 10 per key, from the markers), and the buckets: a new
    // key takes exactly its limit.
    assert_eq!(ask_keys(&l, "before", 20, 10, 4).await, vec![4; 20]);
    assert_eq!(ask_keys(&l, "after", 5, 10, 4).await, vec![4; 5]);
    assert_eq!(l.ping().await, Ok(()));
}

/// A throwaway CA (rcgen) and the TLS files of test Redis servers it signed (for 127.0.0.1).
fn test_ca(dir: &std::path::Path, name: &str) -> whale_kernel::testkit::RedisTls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let file = |stem: &str, text: &str| {
        let p = dir.join(format!("{name}-{stem}"));
        std::fs::write(&p, text).unwrap();
        p
    };
    whale_kernel::testkit::RedisTls {
        ca: file("ca.pem", &ca_pem),
        cert: file("server.crt", &cert.pem()),
        key: file("server.key", &key.serialize_pem()),
    }
}

/// A limiter for `url` trusting only `ca`.
fn tls_limiter(url: String, ca: &std::path::Path, wait_replicas: u32) -> Limiter {
    whale_kernel::tls::install_crypto_provider();
    Limiter::from_config(&whale_kernel::config::RedisConfig {
        url: Secret::new(url),
        tls_ca: Some(ca.to_path_buf()),
        wait_replicas,
        ..Default::default()
    })
    .expect("TLS config")
}

/// A limiter trusting a CA that did not sign the servers' certificates: no decision, and the
/// error says why (the certificate), never the URL.
async fn assert_wrong_ca_refused(url: &str, wrong_ca: &std::path::Path) {
    let l = tls_limiter(url.to_owned(), wrong_ca, 0);
    let err = l.ping().await.expect_err("a server signed by another CA");
    eprintln!("wrong CA: {err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "the error should name the certificate problem: {err}"
    );
    let t = throttle("host-0", 1, 600_000, 0, ThrottleMode::Rate);
    let Plan::Ask(r) = policy::plan("wrong-ca", &t, "wrong-ca-0") else {
        panic!("a Redis question")
    };
    match l.decide(&[r]).await.as_slice() {
        [Err(whale_throttle::limiter::Error::Unreachable(e))] => {
            assert!(!e.contains("rediss"), "{e}")
        }
        other => panic!("a wrong CA must mean no decision (wait): {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls_decides_exactly_and_refuses_a_wrong_ca() {
    use whale_kernel::testkit::RedisCluster;
    let dir = tempfile::tempdir().unwrap();
    let tls = test_ca(dir.path(), "redis-ca");
    let wrong = test_ca(dir.path(), "other-ca");
    let cluster = {
        let tls = tls.clone();
        tokio::task::spawn_blocking(move || RedisCluster::start_tls(&tls))
            .await
            .unwrap()
    };
    assert!(
        cluster.url().starts_with("rediss+cluster://"),
        "{}",
        cluster.url()
    );
    // The servers speak only TLS: plain redis-cli gets nothing back.
    let port = cluster.ports()[0];
    assert_eq!(whale_kernel::testkit::redis_cli(port, &["PING"]), "");
    assert_eq!(cluster.cli(port, &["PING"]), "PONG");
    let l = tls_limiter(cluster.url(), &tls.ca, 0);
    assert_eq!(l.ping().await, Ok(()));
    assert_eq!(
        l.servers(),
        format!("redis cluster via {} (TLS)", cluster.seeds())
    );
    assert_eq!(ask_keys(&l, "tls", 60, 30, 10).await, vec![10; 60]);
    // Asked again: the same answers, nothing more taken.
    assert_eq!(ask_keys(&l, "tls", 60, 30, 10).await, vec![10; 60]);
    let logs: Vec<usize> = cluster
        .ports()
        .iter()
        .map(|&p| {
            cluster
                .cli(p, &["--scan", "--pattern", "whale:throttle:*:log"])
                .lines()
                .count()
        })
        .collect();
    assert_eq!(logs.iter().sum::<usize>(), 60, "{logs:?}");
    assert!(
        logs.iter().all(|&n| n > 0),
        "buckets on every master: {logs:?}"
    );
    assert_wrong_ca_refused(&cluster.url(), &wrong.ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_follows_a_failover_and_refuses_a_wrong_ca() {
    use whale_kernel::testkit::RedisSentinels;
    let dir = tempfile::tempdir().unwrap();
    let tls = test_ca(dir.path(), "redis-ca");
    let wrong = test_ca(dir.path(), "other-ca");
    let redis = {
        let tls = tls.clone();
        tokio::task::spawn_blocking(move || RedisSentinels::start_tls(&tls))
            .await
            .unwrap()
    };
    let url = redis.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    // WAIT 1 over TLS replication: every decision acted on is on the replica too.
    let l = tls_limiter(url.clone(), &tls.ca, 1);
    assert_eq!(l.ping().await, Ok(()));
    assert_eq!(ask_keys(&l, "tls-before", 20, 10, 4).await, vec![4; 20]);
    let (redis, new_master) = fail_over(redis).await;
    assert_eq!(redis.master_port(), Some(new_master));
    let mut resumed = false;
    for _ in 0..50 {
        if ask_keys_once(&l).await {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(resumed, "decisions resume on the new master over TLS");
    // Every decision made before the failover is remembered by the new master.
    assert_eq!(ask_keys(&l, "tls-before", 20, 10, 4).await, vec![4; 20]);
    assert_eq!(ask_keys(&l, "tls-after", 5, 10, 4).await, vec![4; 5]);
    assert_wrong_ca_refused(&url, &wrong.ca).await;
}

/// One decision for an already decided task; true once Redis answers it.
async fn ask_keys_once(l: &Limiter) -> bool {
    let t = throttle("host-0", 4, 600_000, 0, ThrottleMode::Rate);
    let Plan::Ask(r) = policy::plan("tls-before", &t, "tls-before-0-0") else {
        panic!("a Redis question")
    };
    matches!(l.decide(&[r]).await.as_slice(), [Ok(d)] if d.admitted && d.repeated)
}
