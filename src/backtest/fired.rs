//! What actually fired, for a backtest: the match records of the replayed events. The pipe
//! stream keeps them `nats.pipe_retention` (24 h) while events are kept `WHALE_RETENTION` (7 d),
//! so older ones come from the index (which stores every pipe record), and the part of the range
//! neither covers is reported as not comparable rather than counted as "+new".

use std::collections::{BTreeSet, HashSet};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use whale_index::query::{Field, Pred, Query};
use whale_index::{Backend, Order, Search};
use whale_kernel::envelope::format_time;
use whale_kernel::history;
use whale_kernel::subjects::{self, Pipe};
use whale_kernel::{Config, Nats};

/// How long after its event a match record may be written (the match stage lagging).
const MATCH_LAG: time::Duration = time::Duration::hours(1);
/// A page of index hits.
const PAGE: usize = 10_000;

/// One source of match records and the stream-time range of events it answers for.
#[derive(Debug, Serialize)]
pub struct Source {
    pub source: &'static str,
    #[serde(serialize_with = "ser_time")]
    pub from: OffsetDateTime,
    #[serde(serialize_with = "ser_opt_time")]
    pub to: Option<OffsetDateTime>,
}

impl Source {
    pub fn describe(&self) -> String {
        match self.to {
            None => format!(
                "{} (match records since {})",
                self.source,
                format_time(self.from)
            ),
            Some(to) => format!(
                "{} (match records {}..{})",
                self.source,
                format_time(self.from),
                format_time(to)
            ),
        }
    }

    fn covers(&self, t: OffsetDateTime) -> bool {
        t >= self.from && self.to.is_none_or(|to| t <= to)
    }
}

/// A part of the range no source covers.
#[derive(Debug, Serialize)]
pub struct Gap {
    #[serde(serialize_with = "ser_time")]
    pub from: OffsetDateTime,
    #[serde(serialize_with = "ser_time")]
    pub to: OffsetDateTime,
    pub reason: String,
    /// Would-be matches of events in this part with no record of firing: not compared.
    pub matches: u64,
}

pub struct Coverage {
    pub sources: Vec<Source>,
    pub gaps: Vec<Gap>,
    index: Option<std::sync::Arc<dyn Backend>>,
    from: OffsetDateTime,
    to: OffsetDateTime,
}

/// Match records read.
pub struct Fired {
    pub fired: BTreeSet<(String, String)>,
    pub unreadable: u64,
}

impl Coverage {
    /// Which sources answer for which part of `from..to` (times are stream times of events).
    pub async fn find(
        cfg: &Config,
        nats: &Nats,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> anyhow::Result<Coverage> {
        let pipe_since = history::complete_since(nats, subjects::STREAM_PIPE).await?;
        let mut sources = vec![Source {
            source: "pipe stream WHALE_PIPE",
            from: pipe_since,
            to: None,
        }];
        let mut index = None;
        let mut index_why = String::new();
        if from < pipe_since {
            match whale_index::reader(cfg) {
                Err(e) => index_why = format!("the index cannot be opened ({e})"),
                Ok(b) => match pipe_records_span(&*b).await? {
                    None => index_why = format!("the {} index holds no pipeline records", b.name()),
                    Some((lo, hi)) => {
                        index_why = format!(
                            "the {} index holds pipeline records {}..{} only",
                            b.name(),
                            format_time(lo),
                            format_time(hi)
                        );
                        sources.push(Source {
                            source: if b.name() == "embedded" {
                                "embedded index"
                            } else {
                                "OpenSearch index"
                            },
                            from: lo,
                            to: Some(hi),
                        });
                        index = Some(b);
                    }
                },
            }
        }
        // The uncovered parts of from..to: walk the range, skipping what a source covers.
        let mut gaps = Vec::new();
        let mut edges: Vec<OffsetDateTime> = vec![from, to];
        for s in &sources {
            edges.push(s.from);
            if let Some(t) = s.to {
                edges.push(t);
            }
        }
        edges.retain(|t| *t >= from && *t <= to);
        edges.sort();
        edges.dedup();
        for w in edges.windows(2) {
            let (a, b) = (w[0], w[1]);
            let mid = a + (b - a) / 2;
            if sources.iter().any(|s| s.covers(mid)) {
                continue;
            }
            match gaps.last_mut() {
                Some(Gap { to, .. }) if *to == a => *to = b,
                _ => gaps.push(Gap {
                    from: a,
                    to: b,
                    reason: String::new(),
                    matches: 0,
                }),
            }
        }
        for g in &mut gaps {
            g.reason = format!(
                "no record of what fired (WHALE_PIPE keeps match records {} (nats.pipe_retention) and holds them since {}; {})",
                humantime::format_duration(cfg.nats.pipe_retention),
                format_time(pipe_since),
                if index_why.is_empty() {
                    "index not consulted".to_owned()
                } else {
                    index_why.clone()
                }
            );
        }
        Ok(Coverage {
            sources,
            gaps,
            index,
            from,
            to,
        })
    }

    /// Counts a not-comparable match of an event stored at `t` in its gap.
    pub fn count_not_comparable(&mut self, t: OffsetDateTime) {
        if let Some(g) = self.gaps.iter_mut().find(|g| t >= g.from && t <= g.to) {
            g.matches += 1;
        }
    }

    /// Whether an event stored at `t` can be compared.
    pub fn covers(&self, t: OffsetDateTime) -> bool {
        self.sources.iter().any(|s| s.covers(t))
    }

    /// The (event, rule) pairs that fired for the events in `compared` (a record found settles
    /// an event even outside the covered range).
    pub async fn read(
        &self,
        nats: &Nats,
        rule: Option<&str>,
        compared: &HashSet<String>,
    ) -> anyhow::Result<Fired> {
        let mut out = Fired {
            fired: BTreeSet::new(),
            unreadable: 0,
        };
        let keep = |e: &str, r: &str, out: &mut BTreeSet<(String, String)>| {
            if compared.contains(e) && rule.is_none_or(|x| x == r) {
                out.insert((e.to_owned(), r.to_owned()));
            }
        };
        let pipe = &self.sources[0];
        if pipe.from <= self.to {
            let start = pipe.from.max(self.from);
            let mut unreadable = 0;
            let mut fired = BTreeSet::new();
            history::read(
                nats,
                subjects::STREAM_PIPE,
                &Pipe::Matched.subject(),
                start,
                self.to + MATCH_LAG,
                |d| {
                    let v: Option<Value> = serde_json::from_slice(&d.payload).ok();
                    match v
                        .as_ref()
                        .map(|v| (v["event_id"].as_str(), v["rule"].as_str()))
                    {
                        Some((Some(e), Some(r))) => keep(e, r, &mut fired),
                        _ => unreadable += 1,
                    }
                },
            )
            .await
            .context("reading what fired from the pipe stream (WHALE_PIPE)")?;
            out.unreadable += unreadable;
            out.fired.extend(fired);
        }
        if let (Some(b), Some(src)) = (&self.index, self.sources.get(1)) {
            let lo = src.from.max(self.from);
            let hi = src.to.unwrap_or(self.to).min(self.to) + MATCH_LAG;
            let mut next = lo;
            loop {
                let mut s = Search::new(Query::Clause(
                    Field::Keyword("kind"),
                    Pred::Term("matched".into()),
                ));
                s.from = Some(next);
                s.to = Some(hi);
                s.order = Order::SeenFirst;
                s.limit = PAGE;
                let hits = b
                    .search(&s)
                    .await
                    .with_context(|| format!("reading what fired from the {} index", b.name()))?;
                let n = hits.hits.len();
                let (first, last) = match (hits.hits.first(), hits.hits.last()) {
                    (Some(f), Some(l)) => (f.seen, l.seen),
                    _ => break,
                };
                for d in &hits.hits {
                    match (&d.event_id, &d.rule) {
                        (Some(e), Some(r)) => keep(e, r, &mut out.fired),
                        _ => out.unreadable += 1,
                    }
                }
                if n < PAGE {
                    break;
                }
                anyhow::ensure!(
                    last > first,
                    "the {} index holds more than {PAGE} match records stored at {}: cannot page through them",
                    b.name(),
                    format_time(first)
                );
                // The next page starts at the last page's last millisecond (re-read, de-duplicated).
                next = last;
            }
        }
        Ok(out)
    }
}

/// The stored times of the oldest and newest pipeline records (not events) the index holds.
async fn pipe_records_span(
    b: &dyn Backend,
) -> anyhow::Result<Option<(OffsetDateTime, OffsetDateTime)>> {
    let not_pipe = ["event", "rejected", "unparsed"]
        .iter()
        .map(|k| Query::Clause(Field::Keyword("kind"), Pred::Term((*k).into())))
        .collect();
    let q = Query::Not(Box::new(Query::Or(not_pipe)));
    let mut s = Search::new(q);
    s.limit = 1;
    s.order = Order::SeenFirst;
    let oldest = b
        .search(&s)
        .await
        .with_context(|| format!("reading the {} index", b.name()))?;
    let Some(lo) = oldest.hits.first().map(|d| d.seen) else {
        return Ok(None);
    };
    s.order = Order::NewestFirst;
    let newest = b
        .search(&s)
        .await
        .with_context(|| format!("reading the {} index", b.name()))?;
    let hi = newest.hits.first().map_or(lo, |d| d.time.max(d.seen));
    Ok(Some((lo, hi)))
}

fn ser_time<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_time(*t)),
        None => s.serialize_none(),
    }
}
