//! index stage: stores accepted events, rejections and every pipeline record so that people can
//! search them (`whale events search`, `GET /v1/events`) and follow one event through every stage
//! (`whale trace`). Two backends behind one [`Backend`] trait and one query syntax ([`query`]):
//! an embedded tantivy index (default, no server) and OpenSearch (`WHALE_OPENSEARCH_URL`).
//!
//! Code map: [`doc`] (message → document), [`query`] (the query syntax), [`backend`] (the trait),
//! [`embedded`] and [`opensearch`] (the backends and their query translations), [`stage`] (the
//! worker stage, retention), [`trace`] (one event's story), [`http`] (`GET /v1/events`).

pub mod backend;
pub mod doc;
pub mod embedded;
pub mod http;
pub mod opensearch;
pub mod query;
pub mod stage;
pub mod time;
pub mod trace;

#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(test)]
mod query_fuzz;

use std::sync::Arc;

use whale_kernel::Config;

pub use backend::{Backend, Committed, Delivered, Error, Hits, Order, Search, WriteReport};
pub use doc::Doc;
pub use stage::Index;

/// Opens the configured backend for writing. Tantivy allows one writer per directory, so a
/// process opens it once and hands the same handle to everything that writes or searches with
/// it (the index stage, its worker loops on every input, and its search route: `src/registry.rs`);
/// a second open of the same directory fails with a clear error instead of sharing silently.
pub fn open_writer(cfg: &Config) -> Result<Arc<dyn Backend>, Error> {
    Ok(match &cfg.index.opensearch_url {
        Some(_) => Arc::new(opensearch::OpenSearch::configured(&cfg.index, "whale")?),
        None => Arc::new(embedded::Embedded::open(&cfg.index.dir)?),
    })
}

/// The configured backend for searching only (CLI commands, the console; never takes the
/// embedded writer, and sees every commit of the process that holds it).
pub fn reader(cfg: &Config) -> Result<Arc<dyn Backend>, Error> {
    Ok(match &cfg.index.opensearch_url {
        Some(_) => Arc::new(opensearch::OpenSearch::configured(&cfg.index, "whale")?),
        None => Arc::new(embedded::Embedded::open_read_only(&cfg.index.dir)?),
    })
}

/// Builds the index stage on the configured backend and starts its retention loop (accepted-event
/// retention, `WHALE_RETENTION`). `backend` is the process's handle from [`open_writer`].
pub fn build(cfg: &Config, backend: Arc<dyn Backend>) -> Arc<Index> {
    let stage = Index::new(backend);
    stage.spawn_retention(cfg.events.retention);
    Arc::new(stage)
}
