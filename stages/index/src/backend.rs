//! The one interface the index stage, search, trace and the HTTP route use, whichever store is
//! behind it: the embedded tantivy index or OpenSearch. Both take the same [`Doc`]s and answer the
//! same [`Search`] (a parsed [`Query`] plus time bounds and kinds).

use std::ops::Bound;

use async_trait::async_trait;
use time::OffsetDateTime;
use whale_kernel::Delivery;

use crate::doc::Doc;
use crate::query::{Field, Pred, Query};

/// Why a backend call failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store cannot be reached or is overloaded now: try again later (nothing was lost).
    #[error("index backend unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (bad query for this backend, bad configuration).
    #[error("{0}")]
    Invalid(String),
    /// Anything else the store reported.
    #[error("index backend error: {0}")]
    Other(String),
}

/// What happened to each document of a [`Backend::write`].
#[derive(Debug, Default, Clone)]
pub struct WriteReport {
    /// Not stored now (the store was busy or failing for these): indices into the batch and why.
    /// The stage has these messages redelivered.
    pub retry: Vec<(usize, String)>,
    /// Refused as built and stored without `detail`/`labels`, with `index_error` set.
    pub degraded: Vec<(usize, String)>,
    /// Refused even in degraded form: not stored (counted and logged; acked so they cannot block).
    pub dropped: Vec<(usize, String)>,
}

/// How the message behind a submitted document was delivered.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    /// 1 on first delivery.
    pub attempt: i64,
    /// Its sequence on its stream (0: unknown).
    pub stream_seq: u64,
}

/// Resolves once the documents of a [`Backend::submit`] are durable (or failed to become so).
pub type Committed = futures::future::BoxFuture<'static, Result<(), Error>>;

/// Result order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest `time` first (searching).
    #[default]
    NewestFirst,
    /// Oldest `seen` first (tracing: the order things happened).
    SeenFirst,
}

/// A search: query, time bounds on `time` (inclusive), document kinds (empty = all), limit.
#[derive(Debug, Clone)]
pub struct Search {
    pub query: Query,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub kinds: Vec<String>,
    pub limit: usize,
    pub order: Order,
}

impl Search {
    pub fn new(query: Query) -> Search {
        Search {
            query,
            from: None,
            to: None,
            kinds: Vec::new(),
            limit: 20,
            order: Order::NewestFirst,
        }
    }

    /// The query with the time bounds and kinds folded in, which is what backends translate.
    pub fn effective_query(&self) -> Query {
        let mut all = vec![self.query.clone()];
        if self.from.is_some() || self.to.is_some() {
            let b = |t: Option<OffsetDateTime>| t.map_or(Bound::Unbounded, Bound::Included);
            all.push(Query::Clause(
                Field::Date("time"),
                Pred::TimeRange(b(self.from), b(self.to)),
            ));
        }
        if !self.kinds.is_empty() {
            all.push(Query::Or(
                self.kinds
                    .iter()
                    .map(|k| Query::Clause(Field::Keyword("kind"), Pred::Term(k.clone())))
                    .collect(),
            ));
        }
        if all.len() == 1 {
            all.pop().unwrap_or(Query::All)
        } else {
            Query::And(all)
        }
    }
}

/// Search results: how many documents match in all, and the first `limit` of them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Hits {
    pub total: u64,
    pub hits: Vec<Doc>,
}

/// A document store.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `embedded` or `opensearch`.
    fn name(&self) -> &'static str;

    /// Stores the documents; a document whose id is already stored is replaced. `Err` means
    /// nothing can be stored now (retry the whole batch); otherwise the report says which ones
    /// need another try. Returns only once what it reports as stored is durable.
    async fn write(&self, docs: Vec<Doc>) -> Result<WriteReport, Error>;

    /// As [`Backend::write`], but returns as soon as the documents are handed over, with a
    /// [`Committed`] that resolves once they are durable: the index stage acks its messages only
    /// then, and meanwhile goes on with the next batches (the embedded index commits on time or
    /// size, not per batch). `from[i]` says how the message of document `i` was delivered, so a
    /// backend may skip looking for an earlier copy of a document that cannot have one (see
    /// `embedded`). The default writes and waits.
    async fn submit(
        &self,
        docs: Vec<Doc>,
        from: Vec<Delivered>,
    ) -> Result<(WriteReport, Committed), Error> {
        let _ = from;
        let report = self.write(docs).await?;
        Ok((report, Box::pin(async { Ok(()) })))
    }

    /// As [`Backend::submit`], from the messages the index stage read: document `i` is
    /// `batch[i]`'s. A backend may build the documents where it likes; the embedded index builds
    /// them in its writer thread, so that work runs in the index's own CPU class (idle under
    /// load, see `embedded::priority`) and not on the event path's threads. The default builds
    /// them here.
    async fn submit_messages(&self, batch: &[Delivery]) -> Result<(WriteReport, Committed), Error> {
        let docs = batch.iter().map(Doc::of).collect();
        let from = batch
            .iter()
            .map(|d| Delivered {
                attempt: d.attempt,
                stream_seq: d.stream_seq,
            })
            .collect();
        self.submit(docs, from).await
    }

    /// Searches. `total` is exact.
    /// Whether the backend keeps its own place in the streams (the embedded index: its commits
    /// record the last sequence they hold). The stage then reads each stream in order from
    /// [`Backend::position`] and acks nothing; otherwise every copy shares the durable consumers
    /// and acks each message once it is stored.
    fn keeps_position(&self) -> bool {
        false
    }

    /// Where the input of these subject prefixes (one stream's: `whale.events`,
    /// `whale.rejected`) reads on, for a backend that [`Backend::keeps_position`]: after what is
    /// committed, and anything not committed is forgotten.
    async fn position(&self, prefixes: &[String]) -> Result<whale_kernel::worker::Position, Error> {
        let _ = prefixes;
        Ok(whale_kernel::worker::Position::At(1))
    }

    async fn search(&self, search: &Search) -> Result<Hits, Error>;

    /// Makes every completed write visible to search now (both backends do it on their own within
    /// about a second).
    async fn refresh(&self) -> Result<(), Error>;

    /// Deletes what was `seen` before `cutoff`; returns how many documents (embedded) or daily
    /// indices (OpenSearch) went.
    async fn expire(&self, cutoff: OffsetDateTime) -> Result<u64, Error>;
}
