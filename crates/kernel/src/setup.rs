//! `whale setup`: creates or updates every stream, consumer and KV bucket the pipeline needs.
//! Idempotent — it compares what exists with what is wanted and touches only what differs, so a
//! second run reports everything unchanged.

use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, kv, stream};
use serde::Serialize;

use crate::config::Config;
use crate::nats::Nats;
use crate::subjects;

/// What setup did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

/// One line of the setup report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub kind: &'static str,
    pub name: String,
    pub change: Change,
}

/// A size cap in bytes as JetStream spells it (-1 = none).
fn cap(bytes: u64) -> i64 {
    if bytes == 0 {
        -1
    } else {
        i64::try_from(bytes).unwrap_or(i64::MAX)
    }
}

/// The streams whale wants, from the configuration. Each has an age limit and a size cap
/// (`nats.*_max_bytes`) so a flood cannot fill the disk: the ingest work queue refuses new
/// messages when full (ingest answers 429, nothing queued is lost); the event history drops its
/// oldest events; the pipe refuses new records, because its head holds records the next stage has
/// not handled yet and dropping them would lose work — a full pipe makes stages retry, which
/// backs up into the ingest queue and so into 429s at the door. The audit trail refuses new
/// records when full too: an audit record is never dropped.
pub fn streams(cfg: &Config) -> Vec<stream::Config> {
    let base = |name: &str, subjects: Vec<String>, max_age: Duration| stream::Config {
        name: name.to_owned(),
        subjects,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: cfg.nats.replicas,
        duplicate_window: cfg.nats.duplicate_window,
        allow_direct: true,
        ..Default::default()
    };
    vec![
        stream::Config {
            retention: stream::RetentionPolicy::WorkQueue,
            max_bytes: cap(cfg.nats.ingest_max_bytes),
            discard: stream::DiscardPolicy::New,
            description: Some("whale: ingested events waiting for validation".into()),
            ..base(
                subjects::STREAM_INGEST,
                vec![subjects::all(subjects::INGEST_PREFIX)],
                cfg.nats.pipe_retention,
            )
        },
        stream::Config {
            max_bytes: cap(cfg.nats.events_max_bytes),
            discard: stream::DiscardPolicy::Old,
            description: Some("whale: accepted events (replay history) and rejections".into()),
            ..base(
                subjects::STREAM_EVENTS,
                vec![
                    subjects::all(subjects::EVENTS_PREFIX),
                    subjects::all(subjects::REJECTED_PREFIX),
                ],
                cfg.events.retention,
            )
        },
        stream::Config {
            max_bytes: cap(cfg.nats.pipe_max_bytes),
            discard: stream::DiscardPolicy::New,
            description: Some("whale: records between stages".into()),
            ..base(
                subjects::STREAM_PIPE,
                vec![subjects::all(subjects::PIPE_PREFIX)],
                cfg.nats.pipe_retention,
            )
        },
        // The audit trail: discard new, so a full stream refuses new records (and whale then
        // refuses the actions, see `crate::audit`) instead of dropping old ones; records cannot
        // be deleted or purged through the JetStream API, only age removes them.
        stream::Config {
            max_bytes: cap(cfg.audit.max_bytes),
            discard: stream::DiscardPolicy::New,
            deny_delete: true,
            deny_purge: true,
            description: Some("whale: audit trail of decisions and changes".into()),
            ..base(
                subjects::STREAM_AUDIT,
                vec![subjects::all(subjects::AUDIT_PREFIX)],
                cfg.audit.retention,
            )
        },
    ]
}

/// The filter subjects of `input`'s consumer: none when they are exactly the subjects of its
/// stream (the consumer reads the whole stream). nats-server matches every message it considers
/// against a consumer's filters, and with more than one filter it takes a slower path (profiled
/// under `whale-bench pipeline`: 15–20% of nats-server's CPU with the index stage), while a
/// consumer without filters reads the stream in order without matching.
pub fn consumer_filters(input: &subjects::Input, cfg: &Config) -> Vec<String> {
    match streams(cfg).into_iter().find(|s| s.name == input.stream) {
        Some(stream) => input_filters(input, &stream.subjects),
        None => input_filters(input, &[]),
    }
}

/// The filter subjects of a consumer of `input` on a stream of `stream_subjects`: none with
/// [`subjects::Input::whole_stream`] or when they are the stream's own subjects
/// ([`filters_within`]). The durable consumers (`whale setup`) and the worker loop's ordered
/// ones are both made with these.
pub fn input_filters(input: &subjects::Input, stream_subjects: &[String]) -> Vec<String> {
    match input.whole_stream {
        true => Vec::new(),
        false => filters_within(&input.filters, stream_subjects),
    }
}

/// `filters` for a consumer of a stream of `stream_subjects`: none when they are the same set.
pub fn filters_within(filters: &[String], stream_subjects: &[String]) -> Vec<String> {
    let mut want = filters.to_vec();
    want.sort();
    let mut have = stream_subjects.to_vec();
    have.sort();
    if want == have {
        Vec::new()
    } else {
        filters.to_vec()
    }
}

/// The durable consumer config of one stage input.
pub fn consumer_config(input: &subjects::Input, cfg: &Config) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(input.consumer.to_owned()),
        description: Some(format!("whale stage {}", input.consumer)),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.nats.ack_wait,
        max_deliver: -1,
        max_ack_pending: 20_000,
        filter_subjects: consumer_filters(input, cfg),
        num_replicas: cfg.nats.replicas,
        ..Default::default()
    }
}

/// nats-server reserves each stream's size cap on its disk up front and refuses a stream whose
/// cap does not fit (JetStream error 10047, "insufficient storage resources"): say which cap, and
/// what to do, instead of the bare server error.
fn no_room(e: anyhow::Error, name: &str, cap: i64) -> anyhow::Error {
    if !e.to_string().contains("10047") {
        return e;
    }
    let size = if cap < 0 {
        "no size cap".to_owned()
    } else {
        format!("a cap of {:.1} GiB", cap as f64 / f64::from(1u32 << 30))
    };
    e.context(format!(
        "nats-server has no room to reserve stream {name} ({size}) in its `max_file_store` \
         (which defaults to 75% of its free disk): free disk on the server, raise its \
         `jetstream {{ max_file_store }}`, or lower the caps in whale's config \
         (`nats.ingest_max_bytes`, `nats.events_max_bytes`, `nats.pipe_max_bytes`, \
         `audit.max_bytes`; docs/limits.md)"
    ))
}

/// Creates or updates everything; returns what changed.
pub async fn setup(nats: &Nats, cfg: &Config) -> anyhow::Result<Vec<Item>> {
    nats.check_server_version()?;
    let js = &nats.js;
    let mut report = Vec::new();
    for want in streams(cfg) {
        let name = want.name.clone();
        let change = match js.get_stream(&name).await {
            Ok(mut s) => {
                let have = s.info().await?.config.clone();
                if have.retention != want.retention {
                    bail!("stream {name} exists with retention {:?}, whale needs {:?}: delete it (`nats stream rm {name}`) and run setup again", have.retention, want.retention);
                }
                if same_stream(&have, &want) {
                    Change::Unchanged
                } else {
                    js.update_stream(&want)
                        .await
                        .map_err(|e| no_room(e.into(), &name, want.max_bytes))
                        .with_context(|| format!("cannot update stream {name}"))?;
                    Change::Updated
                }
            }
            Err(e) if is_not_found(&e) => {
                let cap = want.max_bytes;
                js.create_stream(want)
                    .await
                    .map_err(|e| no_room(e.into(), &name, cap))
                    .with_context(|| format!("cannot create stream {name}"))?;
                Change::Created
            }
            Err(e) => return Err(e).with_context(|| format!("cannot look up stream {name}")),
        };
        report.push(Item {
            kind: "stream",
            name,
            change,
        });
    }
    for stage in subjects::STAGES {
        for input in subjects::stage_inputs(stage) {
            let change = ensure_consumer(nats, &input, cfg).await?;
            report.push(Item {
                kind: "consumer",
                name: format!("{}/{}", input.stream, input.consumer),
                change,
            });
        }
    }
    for bucket in subjects::KV_BUCKETS {
        let change = ensure_bucket(js, cfg, bucket).await?;
        report.push(Item {
            kind: "kv",
            name: bucket.to_owned(),
            change,
        });
    }
    Ok(report)
}

/// Creates the durable consumer of `input` or brings its settings up to date (`whale setup`
/// does this for every stage input; a test does it for an input of its own).
pub async fn ensure_consumer(
    nats: &Nats,
    input: &subjects::Input,
    cfg: &Config,
) -> anyhow::Result<Change> {
    let want = consumer_config(input, cfg);
    let stream = nats
        .js
        .get_stream(input.stream)
        .await
        .with_context(|| format!("cannot look up stream {}", input.stream))?;
    Ok(match stream.consumer_info(input.consumer).await {
        Ok(info) => {
            let have = &info.config;
            let same = have.filter_subjects == want.filter_subjects
                && have.ack_wait == want.ack_wait
                && have.max_ack_pending == want.max_ack_pending
                && have.max_deliver == want.max_deliver
                && have.description == want.description;
            if same {
                Change::Unchanged
            } else {
                stream
                    .update_consumer(want)
                    .await
                    .with_context(|| format!("cannot update consumer {}", input.consumer))?;
                Change::Updated
            }
        }
        Err(_) => {
            stream
                .create_consumer(want)
                .await
                .with_context(|| format!("cannot create consumer {}", input.consumer))?;
            Change::Created
        }
    })
}

/// The lifetime settings of one KV bucket (docs/limits.md "Lifetimes of state").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLimits {
    /// Revisions kept per key (1: only the current value).
    pub history: i64,
    /// Age at which the server removes a value (zero: never).
    pub max_age: Duration,
    /// Values may carry their own lifetime (`Nats-TTL`).
    pub allow_msg_ttl: bool,
}

/// What whale wants of each bucket.
pub fn bucket_limits(cfg: &Config, bucket: &str) -> BucketLimits {
    let keep = |history| BucketLimits {
        history,
        max_age: Duration::ZERO,
        allow_msg_ttl: false,
    };
    match bucket {
        subjects::KV_RULES => keep(16),
        subjects::KV_CLAIMS => BucketLimits {
            history: 1,
            max_age: cfg.claims_lifetime(),
            allow_msg_ttl: false,
        },
        subjects::KV_STATE => BucketLimits {
            history: 1,
            max_age: cfg.state.executions,
            allow_msg_ttl: true,
        },
        _ => keep(5),
    }
}

/// Creates `bucket` with its lifetimes, or gives an existing one the lifetimes it lacks.
async fn ensure_bucket(
    js: &jetstream::Context,
    cfg: &Config,
    bucket: &str,
) -> anyhow::Result<Change> {
    let want = bucket_limits(cfg, bucket);
    let stream_name = format!("KV_{bucket}");
    let mut change = Change::Unchanged;
    if js.get_key_value(bucket).await.is_err() {
        js.create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            history: want.history,
            num_replicas: cfg.nats.replicas,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create KV bucket {bucket}"))?;
        change = Change::Created;
    }
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .with_context(|| format!("cannot look up KV bucket {bucket}"))?;
    let have = stream.info().await?.config.clone();
    if !have.allow_message_ttl && want.allow_msg_ttl {
        // First allow per-message TTLs (keeping the old max age), so that the keys that must
        // outlive the new max age can be pinned before it applies.
        let step = stream::Config {
            allow_message_ttl: true,
            ..have.clone()
        };
        js.update_stream(&step)
            .await
            .with_context(|| format!("cannot allow per-message TTLs on KV bucket {bucket} (nats-server 2.11 or newer is needed)"))?;
    }
    let mut pinned = 0;
    if want.allow_msg_ttl && bucket == subjects::KV_STATE {
        pinned = pin_permanent(js, &stream_name, bucket).await?;
    }
    let same = have.max_messages_per_subject == want.history
        && have.max_age == want.max_age
        && have.allow_message_ttl == want.allow_msg_ttl;
    if !same {
        let now = stream.info().await?.config.clone();
        // JetStream refuses a duplicate window longer than the max age.
        let duplicate_window = match want.max_age.is_zero() {
            true => now.duplicate_window,
            false => now.duplicate_window.min(want.max_age),
        };
        let next = stream::Config {
            max_messages_per_subject: want.history,
            max_age: want.max_age,
            allow_message_ttl: want.allow_msg_ttl,
            duplicate_window,
            ..now
        };
        js.update_stream(&next)
            .await
            .with_context(|| format!("cannot set the lifetimes of KV bucket {bucket}"))?;
    }
    if change == Change::Unchanged && (!same || pinned > 0) {
        change = Change::Updated;
    }
    Ok(change)
}

/// Rewrites the keys of [`subjects::STATE_PERMANENT`] that carry no `Nats-TTL: never` (written
/// before lifetimes existed) with it, so the bucket's max age never removes a drain. Returns
/// how many it rewrote.
async fn pin_permanent(
    js: &jetstream::Context,
    stream_name: &str,
    bucket: &str,
) -> anyhow::Result<usize> {
    use futures::TryStreamExt as _;
    let stream = js.get_stream(stream_name).await?;
    let mut pinned = 0;
    for prefix in subjects::STATE_PERMANENT {
        let filter = format!("$KV.{bucket}.{prefix}>");
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(&filter)
            .await?
            .try_collect()
            .await
            .with_context(|| format!("cannot list {filter}"))?;
        for (subject, _) in subjects {
            let msg = stream
                .direct_get_last_for_subject(&subject)
                .await
                .with_context(|| format!("cannot read {subject}"))?;
            let never = msg
                .headers
                .get("Nats-TTL")
                .is_some_and(|v| v.as_str() == "never");
            let deleted = msg.headers.get("KV-Operation").is_some();
            if never || deleted {
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-TTL", "never");
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                msg.sequence.to_string().as_str(),
            );
            js.publish_with_headers(subject.clone(), headers, msg.payload.clone())
                .await?
                .await
                .with_context(|| format!("cannot pin {subject}"))?;
            pinned += 1;
        }
    }
    Ok(pinned)
}

fn same_stream(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.max_age == want.max_age
        && have.max_bytes == want.max_bytes
        && have.discard == want.discard
        && have.num_replicas == want.num_replicas
        && have.duplicate_window == want.duplicate_window
        && have.storage == want.storage
        && have.description == want.description
        && have.allow_direct == want.allow_direct
        && have.deny_delete == want.deny_delete
        && have.deny_purge == want.deny_purge
}

/// Error for a stage started before `whale setup` ran.
pub fn not_set_up(what: &str) -> String {
    format!("{what} does not exist: run `whale setup` first")
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(je)
            if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}
