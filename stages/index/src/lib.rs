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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use whale_kernel::Config;

pub use backend::{Backend, Committed, Delivered, Error, Hits, Order, Search, WriteReport};
pub use doc::Doc;
pub use stage::Index;

type Cache = Mutex<HashMap<String, Arc<dyn Backend>>>;

static WRITERS: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Default::default);

/// The configured backend for writing, opened once per process: the index stage and the HTTP
/// route of the same `whale run` share it (tantivy allows one writer per directory).
pub fn writer(cfg: &Config) -> Result<Arc<dyn Backend>, Error> {
    let key = cache_key(cfg);
    let mut cache = WRITERS
        .lock()
        .map_err(|_| Error::Other("backend cache poisoned".into()))?;
    if let Some(b) = cache.get(&key) {
        return Ok(b.clone());
    }
    let b: Arc<dyn Backend> = match &cfg.index.opensearch_url {
        Some(_) => Arc::new(opensearch::OpenSearch::configured(&cfg.index, "whale")?),
        None => Arc::new(embedded::Embedded::open(&cfg.index.dir)?),
    };
    cache.insert(key, b.clone());
    Ok(b)
}

/// The configured backend for searching only (CLI commands; never takes the embedded writer).
pub fn reader(cfg: &Config) -> Result<Arc<dyn Backend>, Error> {
    if let Some(b) = WRITERS
        .lock()
        .ok()
        .and_then(|c| c.get(&cache_key(cfg)).cloned())
    {
        return Ok(b);
    }
    Ok(match &cfg.index.opensearch_url {
        Some(_) => Arc::new(opensearch::OpenSearch::configured(&cfg.index, "whale")?),
        None => Arc::new(embedded::Embedded::open_read_only(&cfg.index.dir)?),
    })
}

fn cache_key(cfg: &Config) -> String {
    match &cfg.index.opensearch_url {
        Some(u) => format!("opensearch:{u}"),
        None => format!("embedded:{}", cfg.index.dir.display()),
    }
}

/// Builds the index stage on the configured backend and starts its retention loop (accepted-event
/// retention, `WHALE_RETENTION`).
pub fn build(cfg: &Config) -> Result<Arc<Index>, Error> {
    let stage = Index::new(writer(cfg)?);
    stage.spawn_retention(cfg.events.retention);
    Ok(Arc::new(stage))
}
