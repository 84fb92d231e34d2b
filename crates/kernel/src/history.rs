//! Reading history: the records a stream holds for a time range, in order, without disturbing
//! any stage's consumer. `whale replay` reads accepted events this way; the range is the time
//! whale stored them (stream time), which is what retention applies to.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::StreamExt;
use time::OffsetDateTime;

use crate::nats::Nats;
use crate::worker::Delivery;

/// What the stream still holds: its first message's time (older history is gone).
pub async fn oldest(nats: &Nats, stream: &str) -> anyhow::Result<Option<OffsetDateTime>> {
    let info = nats.stream_info(stream).await?;
    Ok((info.state.messages > 0).then_some(info.state.first_timestamp))
}

/// From when the stream still holds everything it stored (retention drops the oldest first):
/// its creation while it has dropped nothing (its first message is sequence 1, or it never held
/// one); else its oldest message's time, or just after its last one when everything is gone.
pub async fn complete_since(nats: &Nats, stream: &str) -> anyhow::Result<OffsetDateTime> {
    let info = nats.stream_info(stream).await?;
    let s = &info.state;
    Ok(
        if s.last_sequence == 0 || (s.messages > 0 && s.first_sequence == 1) {
            info.created
        } else if s.messages > 0 {
            s.first_timestamp
        } else {
            s.last_timestamp + time::Duration::nanoseconds(1)
        },
    )
}

/// Calls `f` for every message on `filter` stored between `from` and `to`, oldest first.
/// Returns how many were read. Uses an ephemeral consumer that acks nothing.
pub async fn read<F>(
    nats: &Nats,
    stream: &str,
    filter: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    f: F,
) -> anyhow::Result<u64>
where
    F: FnMut(Delivery),
{
    let start = DeliverPolicy::ByStartTime { start_time: from };
    Ok(walk(nats, stream, filter, start, Some(to), None, f)
        .await?
        .0)
}

/// As [`read`], but stops after `max` messages: returns how many were read and whether the
/// cap cut the range short (more messages of the range were left unread).
pub async fn read_at_most<F>(
    nats: &Nats,
    stream: &str,
    filter: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
    max: u64,
    f: F,
) -> anyhow::Result<(u64, bool)>
where
    F: FnMut(Delivery),
{
    let start = DeliverPolicy::ByStartTime { start_time: from };
    walk(nats, stream, filter, start, Some(to), Some(max), f).await
}

/// Calls `f` for every message on `filter` that `stream` holds now, oldest first (what a
/// backtest, a benchmark or a test reads back). Returns how many were read.
pub async fn read_all<F>(nats: &Nats, stream: &str, filter: &str, f: F) -> anyhow::Result<u64>
where
    F: FnMut(Delivery),
{
    Ok(
        walk(nats, stream, filter, DeliverPolicy::All, None, None, f)
            .await?
            .0,
    )
}

/// The one walk over a stream's history: an ephemeral consumer from `start` that acks nothing,
/// fetched in batches until what was pending when it was created has been read (or a message
/// stored after `to` is reached, or `max` were read: then the second value is true).
async fn walk<F>(
    nats: &Nats,
    stream: &str,
    filter: &str,
    start: DeliverPolicy,
    to: Option<OffsetDateTime>,
    max: Option<u64>,
    mut f: F,
) -> anyhow::Result<(u64, bool)>
where
    F: FnMut(Delivery),
{
    let st = nats
        .js
        .get_stream(stream)
        .await
        .with_context(|| crate::setup::not_set_up(&format!("stream {stream}")))?;
    let c: consumer::PullConsumer = st
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: start,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot read {stream}"))?;
    let mut remaining = c.cached_info().num_pending;
    let mut n = 0;
    let mut cut = false;
    'outer: while remaining > 0 {
        let mut batch = c
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .with_context(|| format!("cannot read {stream}"))?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let mut m = m
                .map_err(anyhow::Error::from_boxed)
                .with_context(|| format!("cannot read {stream}"))?;
            got += 1;
            let d = Delivery::from_message(&mut m);
            if to.is_some_and(|to| d.published > to) {
                break 'outer;
            }
            if max.is_some_and(|max| n >= max) {
                cut = true;
                break 'outer;
            }
            n += 1;
            f(d);
        }
        if got == 0 {
            break;
        }
        remaining = remaining.saturating_sub(got);
    }
    Ok((n, cut))
}

/// Parses a time argument: RFC 3339 (`2026-11-28T01:00:00Z`), `now`, or a duration meaning
/// that long ago (`90m`, `24h`, `7d`).
pub fn parse_time_arg(s: &str) -> anyhow::Result<OffsetDateTime> {
    let s = s.trim();
    if s == "now" {
        return Ok(OffsetDateTime::now_utc());
    }
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let ago = crate::config::parse_duration(s).map_err(|_| {
        anyhow::anyhow!("{s:?} is not a time: use RFC 3339 (2026-11-28T01:00:00Z), `now`, or an age like 90m, 24h, 7d")
    })?;
    Ok(OffsetDateTime::now_utc() - ago)
}
