//! The OpenSearch backend as it was before the `opensearch` crate (hand-written reqwest requests), kept only so the benchmark can compare both in one run; to be removed. Over plain HTTP: composable templates installed on first use, daily
//! indices `<prefix>-YYYY.MM.DD` chosen by when a record was stored on NATS (so retention here
//! follows the stream's), `_bulk` writes with per-item handling, and retention enforced by whale
//! (old daily indices deleted; no ISM plugin needed).
//!
//! Per item: stored → done; 429/5xx → sent again (only those items) with a short backoff, then
//! left to the stage to redeliver; any other refusal (a mapping error such as a value over
//! Lucene's 32 KiB term limit) → stored again without `detail`/`labels` and with `index_error`
//! saying why, so one bad document can never block its batch. A cluster that cannot be reached
//! fails the whole call: the stage naks with a delay and nothing is lost; ids are deterministic,
//! so a batch sent twice overwrites itself.

use super::{template, translate};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use time::{Date, OffsetDateTime};

use crate::backend::{Backend, Error, Hits, Order, Search, WriteReport};
use crate::doc::Doc;

/// Largest `_bulk` body sent at once (OpenSearch refuses bodies over `http.max_content_length`,
/// 100 MiB by default).
const BULK_BYTES: usize = 8 * 1024 * 1024;
/// Rounds of resending items the cluster was too busy for, within one write.
const ITEM_ROUNDS: u32 = 3;
/// Largest result page (`index.max_result_window`).
const MAX_LIMIT: usize = 10_000;

/// An OpenSearch cluster.
pub struct HandWritten {
    http: reqwest::Client,
    /// Base URL without credentials (safe to print).
    base: String,
    auth: Option<(String, Option<String>)>,
    prefix: String,
    templates_ok: AtomicBool,
}

impl HandWritten {
    /// A client for `url` (`http[s]://[user:password@]host:port`) writing `whale-*` indices.
    pub fn new(url: &str) -> Result<HandWritten, Error> {
        Self::with_prefix(url, "whale")
    }

    /// As [`OpenSearch::new`] with another index name prefix (tests share a cluster this way).
    pub fn with_prefix(url: &str, prefix: &str) -> Result<HandWritten, Error> {
        Self::with_ca(url, prefix, None)
    }

    /// As [`OpenSearch::with_prefix`], also trusting the CA certificates in `ca_file` (PEM;
    /// `index.opensearch_ca_file`).
    pub fn with_ca(
        url: &str,
        prefix: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<HandWritten, Error> {
        let mut u = reqwest::Url::parse(url).map_err(|e| {
            Error::Invalid(format!(
                "WHALE_OPENSEARCH_URL is not a URL ({e}): use http://host:9200"
            ))
        })?;
        let auth = (!u.username().is_empty())
            .then(|| (u.username().to_owned(), u.password().map(str::to_owned)));
        let _ = u.set_username("");
        let _ = u.set_password(None);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Invalid(format!(
                    "cannot read index.opensearch_ca_file {}: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "index.opensearch_ca_file {} holds no PEM certificate",
                        path.display()
                    ))
                })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|e| Error::Other(e.to_string()))?;
        Ok(HandWritten {
            http,
            base: u.as_str().trim_end_matches('/').to_owned(),
            auth,
            prefix: prefix.to_owned(),
            templates_ok: AtomicBool::new(false),
        })
    }

    /// The URL (without credentials).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The daily index a document goes to.
    pub fn index_for(&self, doc: &Doc) -> String {
        let d = doc.seen.date();
        format!(
            "{}-{:04}.{:02}.{:02}",
            self.prefix,
            d.year(),
            u8::from(d.month()),
            d.day()
        )
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, p.as_deref()),
            None => r,
        }
    }

    /// Sends a request; `Unavailable` when the cluster cannot take it now.
    async fn send(&self, r: RequestBuilder) -> Result<(StatusCode, Value), Error> {
        let (status, v) = self.send_raw(r).await?;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Error::Unavailable(format!(
                "OpenSearch at {} answered {status}: {}",
                self.base,
                reason(&v)
            )));
        }
        Ok((status, v))
    }

    /// Sends a request and returns whatever status came back; `Unavailable` only when no answer
    /// came.
    async fn send_raw(&self, r: RequestBuilder) -> Result<(StatusCode, Value), Error> {
        let resp = r.send().await.map_err(|e| {
            Error::Unavailable(format!(
                "OpenSearch at {} did not answer: {}",
                self.base,
                redact(&e)
            ))
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            Error::Unavailable(format!(
                "OpenSearch at {} broke off: {}",
                self.base,
                redact(&e)
            ))
        })?;
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&body)}));
        Ok((status, v))
    }

    async fn send_ok(&self, r: RequestBuilder, what: &str) -> Result<Value, Error> {
        let (status, v) = self.send(r).await?;
        if !status.is_success() {
            return Err(Error::Other(format!(
                "{what}: OpenSearch answered {status}: {}",
                reason(&v)
            )));
        }
        Ok(v)
    }

    /// Installs (or updates) the component and index templates. Idempotent.
    pub async fn ensure_templates(&self) -> Result<(), Error> {
        if self.templates_ok.load(Ordering::Relaxed) {
            return Ok(());
        }
        let p = &self.prefix;
        self.send_ok(
            self.req(
                Method::PUT,
                &format!("/_component_template/{}", template::component_name(p)),
            )
            .json(&template::component(p)),
            "installing the component template",
        )
        .await?;
        self.send_ok(
            self.req(Method::PUT, &format!("/_index_template/{p}"))
                .json(&template::index_template(p)),
            "installing the index template",
        )
        .await?;
        self.templates_ok.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The bulk body lines of one document (action + source with the derived fields), written
    /// straight from the document (no intermediate JSON value).
    fn bulk_lines(&self, doc: &Doc, out: &mut Vec<u8>) {
        #[derive(serde::Serialize)]
        struct Target<'a> {
            _index: &'a str,
            _id: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Action<'a> {
            index: Target<'a>,
        }
        #[derive(serde::Serialize)]
        struct Source<'a> {
            #[serde(flatten)]
            doc: &'a Doc,
            text: String,
            num: Vec<String>,
        }
        let index = self.index_for(doc);
        let action = Action {
            index: Target {
                _index: &index,
                _id: &doc.id,
            },
        };
        let src = Source {
            doc,
            text: doc.text(),
            num: doc.nums(),
        };
        let _ = serde_json::to_writer(&mut *out, &action);
        out.push(b'\n');
        let _ = serde_json::to_writer(&mut *out, &src);
        out.push(b'\n');
    }

    /// The `_bulk` body that stores `docs` as [`Backend::write`] sends it (the benchmark posts
    /// these itself for its raw `_bulk` reference).
    pub fn bulk_body(&self, docs: &[Doc]) -> Vec<u8> {
        let mut body = Vec::with_capacity(docs.len() * 768);
        for d in docs {
            self.bulk_lines(d, &mut body);
        }
        body
    }

    /// The `_bulk` requests for `items` (indices into `docs`): each document serialized once,
    /// requests cut at [`BULK_BYTES`].
    fn bodies(&self, docs: &[Doc], items: &[usize]) -> Vec<(Vec<usize>, Vec<u8>)> {
        let mut out: Vec<(Vec<usize>, Vec<u8>)> = Vec::new();
        let mut lines = Vec::with_capacity(1024);
        for &i in items {
            lines.clear();
            self.bulk_lines(&docs[i], &mut lines);
            match out.last_mut() {
                Some((chunk, body)) if body.len() + lines.len() <= BULK_BYTES => {
                    chunk.push(i);
                    body.extend_from_slice(&lines);
                }
                _ => {
                    let mut body = Vec::with_capacity((items.len() * 768).min(BULK_BYTES));
                    body.extend_from_slice(&lines);
                    out.push((vec![i], body));
                }
            }
        }
        out
    }

    /// One `_bulk` request for `items` (indices into `docs`); per item: None = stored, Some((retry, why)).
    /// (Asking for only each item's status with `filter_path` was tried: the test with 5,000
    /// distinct keys then timed out; not kept.)
    async fn bulk(
        &self,
        items: &[usize],
        body: Vec<u8>,
    ) -> Result<Vec<Option<(bool, String)>>, Error> {
        let v = self
            .send_ok(
                self.req(Method::POST, "/_bulk")
                    .header("content-type", "application/x-ndjson")
                    .body(body),
                "bulk write",
            )
            .await?;
        let results = v["items"].as_array().cloned().unwrap_or_default();
        if results.len() != items.len() {
            return Err(Error::Other(format!(
                "bulk write: sent {} documents, OpenSearch answered for {}",
                items.len(),
                results.len()
            )));
        }
        Ok(results
            .iter()
            .map(|r| {
                let r = r.get("index").unwrap_or(r);
                let status = r["status"].as_u64().unwrap_or(0);
                if (200..300).contains(&status) {
                    None
                } else {
                    let retry = status == 429 || status >= 500 || status == 0;
                    Some((retry, format!("{status}: {}", reason(r))))
                }
            })
            .collect())
    }
}

/// Error text without any URL credentials.
fn redact(e: &reqwest::Error) -> String {
    // With the causes (e.g. `invalid peer certificate: UnknownIssuer`): reqwest's own message
    // does not say why a request failed.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    let mut e = text;
    if let Some(at) = e.find('@') {
        if let Some(scheme) = e[..at].rfind("://") {
            e.replace_range(scheme + 3..at, "***");
        }
    }
    e
}

/// The `error.reason` (and type) of an OpenSearch answer.
fn reason(v: &Value) -> String {
    let e = &v["error"];
    match (e["type"].as_str(), e["reason"].as_str()) {
        (Some(t), Some(r)) => format!("{t}: {r}"),
        (None, Some(r)) => r.to_owned(),
        _ if e.is_string() => e.as_str().unwrap_or_default().to_owned(),
        _ => {
            let s = v.to_string();
            s.chars().take(300).collect()
        }
    }
}

/// Whether an error answer to a search is about the query itself (its root causes name a clause
/// limit, a too complex pattern or a query parse failure).
fn query_refused(v: &Value) -> bool {
    const QUERY_ERRORS: [&str; 5] = [
        "too_many_clauses",
        "too_many_nested_clauses",
        "too_complex_to_determinize",
        "query_shard_exception",
        "parsing_exception",
    ];
    let text = v["error"].to_string();
    QUERY_ERRORS.iter().any(|e| text.contains(e))
}

#[async_trait]
impl Backend for HandWritten {
    fn name(&self) -> &'static str {
        "opensearch"
    }

    async fn write(&self, mut docs: Vec<Doc>) -> Result<WriteReport, Error> {
        let mut report = WriteReport::default();
        if docs.is_empty() {
            return Ok(report);
        }
        self.ensure_templates().await?;
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        let mut degraded: Vec<Option<String>> = vec![None; docs.len()];
        let mut stored_any = false;
        let mut round = 0;
        loop {
            let mut again: Vec<(usize, String)> = Vec::new();
            let mut busy = false;
            for (chunk, body) in self.bodies(&docs, &pending) {
                let results = match self.bulk(&chunk, body).await {
                    Ok(r) => r,
                    Err(Error::Unavailable(why)) if !stored_any && round == 0 => {
                        // Nothing stored yet: the whole batch waits for the cluster.
                        return Err(Error::Unavailable(why));
                    }
                    Err(e) => {
                        busy = true;
                        chunk.iter().map(|_| Some((true, e.to_string()))).collect()
                    }
                };
                for (&i, r) in chunk.iter().zip(results) {
                    match r {
                        None => stored_any = true,
                        Some((true, why)) => {
                            busy = true;
                            again.push((i, why));
                        }
                        Some((false, why)) if degraded[i].is_none() => {
                            tracing::warn!(id = %docs[i].id, "OpenSearch refused the document ({why}); storing it without detail");
                            docs[i] = docs[i].degraded(&why);
                            degraded[i] = Some(why.clone());
                            again.push((i, why));
                        }
                        Some((false, why)) => {
                            tracing::error!(id = %docs[i].id, "OpenSearch refused the document even without detail: {why}");
                            report.dropped.push((i, why));
                        }
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            round += 1;
            if round > ITEM_ROUNDS {
                report.retry = again;
                break;
            }
            if busy {
                tokio::time::sleep(Duration::from_millis(200 << round)).await;
            }
            pending = again.into_iter().map(|(i, _)| i).collect();
        }
        let retrying: std::collections::HashSet<usize> =
            report.retry.iter().map(|(i, _)| *i).collect();
        let dropped: std::collections::HashSet<usize> =
            report.dropped.iter().map(|(i, _)| *i).collect();
        report.degraded = degraded
            .into_iter()
            .enumerate()
            .filter_map(|(i, w)| {
                w.filter(|_| !retrying.contains(&i) && !dropped.contains(&i))
                    .map(|w| (i, w))
            })
            .collect();
        Ok(report)
    }

    async fn search(&self, s: &Search) -> Result<Hits, Error> {
        let q = translate::query(&s.effective_query())?;
        let sort = match s.order {
            Order::NewestFirst => json!([{"time": {"order": "desc"}}, {"id": {"order": "asc"}}]),
            Order::SeenFirst => json!([{"seen": {"order": "asc"}}, {"id": {"order": "asc"}}]),
        };
        let body = json!({
            "query": q,
            "size": s.limit.min(MAX_LIMIT),
            "sort": sort,
            "track_total_hits": true,
        });
        let path = format!(
            "/{}-*/_search?ignore_unavailable=true&allow_no_indices=true",
            self.prefix
        );
        let (status, v) = self
            .send_raw(self.req(Method::POST, &path).json(&body))
            .await?;
        if status.is_server_error() && query_refused(&v) {
            // OpenSearch reports some refusals of the query itself (too many clauses, a pattern
            // too complex) as a 500: they are the caller's to fix, not a reason to retry.
            return Err(Error::Invalid(format!(
                "OpenSearch refused the query: {}",
                reason(&v)
            )));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Error::Unavailable(format!(
                "OpenSearch at {} answered {status}: {}",
                self.base,
                reason(&v)
            )));
        }
        if status == StatusCode::BAD_REQUEST {
            return Err(Error::Invalid(format!(
                "OpenSearch refused the query: {}",
                reason(&v)
            )));
        }
        if !status.is_success() {
            return Err(Error::Other(format!(
                "search: OpenSearch answered {status}: {}",
                reason(&v)
            )));
        }
        let total = v["hits"]["total"]["value"].as_u64().unwrap_or(0);
        let mut hits = Vec::new();
        for h in v["hits"]["hits"].as_array().into_iter().flatten() {
            match serde_json::from_value::<Doc>(h["_source"].clone()) {
                Ok(d) => hits.push(d),
                Err(e) => tracing::warn!("document {} does not parse: {e}", h["_id"]),
            }
        }
        crate::embedded::sort_hits(&mut hits, s.order);
        Ok(Hits { total, hits })
    }

    async fn refresh(&self) -> Result<(), Error> {
        let path = format!(
            "/{}-*/_refresh?ignore_unavailable=true&allow_no_indices=true",
            self.prefix
        );
        self.send_ok(self.req(Method::POST, &path), "refresh")
            .await
            .map(|_| ())
    }

    async fn expire(&self, cutoff: OffsetDateTime) -> Result<u64, Error> {
        let path = format!("/_cat/indices/{}-*?format=json&h=index", self.prefix);
        let v = self
            .send_ok(self.req(Method::GET, &path), "listing indices")
            .await?;
        let mut deleted = 0;
        for name in v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["index"].as_str())
        {
            let Some(day) = self.day_of(name) else {
                continue;
            };
            // The index holds what was seen that day: it goes once its whole day is past retention.
            let end = day.next_day().map(|d| d.midnight().assume_utc());
            if end.is_some_and(|end| end <= cutoff) {
                self.send_ok(
                    self.req(Method::DELETE, &format!("/{name}")),
                    "deleting an expired index",
                )
                .await?;
                tracing::info!(index = name, "deleted index past retention");
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

impl HandWritten {
    /// The day of a `<prefix>-YYYY.MM.DD` index name; None for any other name.
    fn day_of(&self, name: &str) -> Option<Date> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        Date::parse(
            rest,
            time::macros::format_description!("[year].[month].[day]"),
        )
        .ok()
    }
}
