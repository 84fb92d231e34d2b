//! The OpenSearch backend, on the official `opensearch` client crate (rustls; SigV4 signing for
//! Amazon OpenSearch Service): composable templates installed on first use, daily indices
//! `<prefix>-YYYY.MM.DD` chosen by when a record was stored on NATS (so retention here follows the
//! stream's), `_bulk` writes with per-item handling, and retention enforced by whale (old daily
//! indices deleted; no ISM plugin needed).
//!
//! Per item: stored → done; 429/5xx → sent again (only those items) with a short backoff, then
//! left to the stage to redeliver; any other refusal (a mapping error such as a value over
//! Lucene's 32 KiB term limit) → stored again without `detail`/`labels` and with `index_error`
//! saying why, so one bad document can never block its batch. A cluster that cannot be reached
//! fails the whole call: the stage naks with a delay and nothing is lost; ids are deterministic,
//! so a batch sent twice overwrites itself.

mod aws;
mod template;
pub(crate) mod translate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use opensearch::auth::Credentials;
use opensearch::cat::CatIndicesParts;
use opensearch::cert::{Certificate, CertificateValidation};
use opensearch::cluster::ClusterPutComponentTemplateParts;
use opensearch::http::headers::{HeaderValue, ACCEPT_ENCODING};
use opensearch::http::response::Response;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::http::{StatusCode, Url};
use opensearch::indices::{IndicesDeleteParts, IndicesPutIndexTemplateParts, IndicesRefreshParts};
use opensearch::{BulkParts, SearchParts};
use serde_json::{json, Value};
use time::{Date, OffsetDateTime};
use whale_kernel::config::{IndexConfig, OpenSearchAuth};

use crate::backend::{Backend, Error, Hits, Order, Search, WriteReport};
use crate::doc::Doc;

/// Largest `_bulk` body sent at once (OpenSearch refuses bodies over `http.max_content_length`,
/// 100 MiB by default).
const BULK_BYTES: usize = 8 * 1024 * 1024;
/// How long one `_bulk` may take before it counts as failed: longer than other requests (20 s),
/// since a busy cluster still working on a large bulk must not be sent it again (which only adds
/// to its load); OpenSearch itself waits up to a minute for shards in a bulk.
const BULK_TIMEOUT: Duration = Duration::from_secs(90);
/// Rounds of resending items the cluster was too busy for, within one write.
const ITEM_ROUNDS: u32 = 3;
/// Largest result page (`index.max_result_window`).
pub const MAX_LIMIT: usize = 10_000;

/// An OpenSearch cluster.
pub struct OpenSearch {
    client: opensearch::OpenSearch,
    /// Base URL without credentials (safe to print).
    base: String,
    prefix: String,
    templates_ok: AtomicBool,
}

impl OpenSearch {
    /// A client for `url` (`http[s]://[user:password@]host:port`) writing `whale-*` indices.
    pub fn new(url: &str) -> Result<OpenSearch, Error> {
        Self::with_prefix(url, "whale")
    }

    /// As [`OpenSearch::new`] with another index name prefix (tests share a cluster this way).
    pub fn with_prefix(url: &str, prefix: &str) -> Result<OpenSearch, Error> {
        let cfg = IndexConfig {
            opensearch_url: Some(url.to_owned()),
            ..IndexConfig::default()
        };
        Self::configured(&cfg, prefix)
    }

    /// The cluster `cfg` names (`index.opensearch_url`), with its CA file and authentication
    /// (`index.opensearch_auth`: basic, none, or AWS SigV4), writing `<prefix>-*` indices.
    pub fn configured(cfg: &IndexConfig, prefix: &str) -> Result<OpenSearch, Error> {
        let url = cfg.opensearch_url.as_deref().ok_or_else(|| {
            Error::Invalid("index.opensearch_url is not set (WHALE_OPENSEARCH_URL)".into())
        })?;
        let mut u = Url::parse(url).map_err(|e| {
            Error::Invalid(format!(
                "WHALE_OPENSEARCH_URL is not a URL ({e}): use http://host:9200"
            ))
        })?;
        let user = (!u.username().is_empty()).then(|| {
            (
                u.username().to_owned(),
                u.password().unwrap_or_default().to_owned(),
            )
        });
        let _ = u.set_username("");
        let _ = u.set_password(None);
        let base = u.as_str().trim_end_matches('/').to_owned();
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(u))
            .timeout(Duration::from_secs(20));
        match (cfg.opensearch_auth, user) {
            (OpenSearchAuth::Basic, Some((name, password))) => {
                builder = builder.auth(Credentials::Basic(name, password));
            }
            (OpenSearchAuth::Basic, None) | (OpenSearchAuth::None, None) => {}
            (OpenSearchAuth::None, Some(_)) | (OpenSearchAuth::AwsSigv4, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "WHALE_OPENSEARCH_URL has a user and password but index.opensearch_auth is {}: \
                     remove them from the URL, or use opensearch_auth = \"basic\"",
                    if cfg.opensearch_auth == OpenSearchAuth::None {
                        "none"
                    } else {
                        "aws_sigv4"
                    }
                )));
            }
            (OpenSearchAuth::AwsSigv4, None) => {
                let (credentials, service) = aws::credentials(cfg)?;
                builder = builder.auth(credentials).service_name(service);
            }
        }
        if let Some(path) = &cfg.opensearch_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Invalid(format!(
                    "cannot read index.opensearch_ca_file {}: {e}",
                    path.display()
                ))
            })?;
            let certs = Certificate::from_pem(&pem).map_err(|e| {
                Error::Invalid(format!(
                    "index.opensearch_ca_file {} holds no usable PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(certs));
        }
        let transport = builder
            .build()
            .map_err(|e| Error::Invalid(format!("OpenSearch client: {}", chain(&e))))?;
        Ok(OpenSearch {
            client: opensearch::OpenSearch::new(transport),
            base,
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

    /// Reads the answer to a request; `Unavailable` when no answer came.
    async fn answer(
        &self,
        sent: Result<Response, opensearch::Error>,
    ) -> Result<(StatusCode, Value), Error> {
        let resp = sent.map_err(|e| {
            Error::Unavailable(format!(
                "OpenSearch at {} did not answer: {}",
                self.base,
                chain(&e)
            ))
        })?;
        let status = resp.status_code();
        let body = resp.bytes().await.map_err(|e| {
            Error::Unavailable(format!(
                "OpenSearch at {} broke off: {}",
                self.base,
                chain(&e)
            ))
        })?;
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&body)}));
        Ok((status, v))
    }

    /// As [`OpenSearch::answer`], `Unavailable` also when the cluster cannot take it now, and
    /// `Other` for any other refusal.
    async fn answer_ok(
        &self,
        sent: Result<Response, opensearch::Error>,
        what: &str,
    ) -> Result<Value, Error> {
        let (status, v) = self.answer(sent).await?;
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Error::Unavailable(format!(
                "OpenSearch at {} answered {status}: {}",
                self.base,
                reason(&v)
            )));
        }
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
        let component = template::component_name(p);
        let sent = self
            .client
            .cluster()
            .put_component_template(ClusterPutComponentTemplateParts::Name(&component))
            .body(template::component(p))
            .send()
            .await;
        self.answer_ok(sent, "installing the component template")
            .await?;
        let sent = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(p))
            .body(template::index_template(p))
            .send()
            .await;
        self.answer_ok(sent, "installing the index template")
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
        // The answer is not compressed: the client asks for gzip by default, and compressing
        // the item list of a large bulk costs the cluster CPU for no gain (it is read at once
        // and mostly thrown away).
        let sent = self
            .client
            .bulk(BulkParts::None)
            .header(ACCEPT_ENCODING, HeaderValue::from_static("identity"))
            .request_timeout(BULK_TIMEOUT)
            .body(vec![bytes::Bytes::from(body)])
            .send()
            .await;
        let v = self.answer_ok(sent, "bulk write").await?;
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

/// An error with its causes (e.g. `invalid peer certificate: UnknownIssuer`: the client's own
/// message does not say why a request failed), without any URL credentials.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    if let Some(at) = text.find('@') {
        if let Some(scheme) = text[..at].rfind("://") {
            text.replace_range(scheme + 3..at, "***");
        }
    }
    text
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
impl Backend for OpenSearch {
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
        let pattern = format!("{}-*", self.prefix);
        let sent = self
            .client
            .search(SearchParts::Index(&[&pattern]))
            .ignore_unavailable(true)
            .allow_no_indices(true)
            .body(body)
            .send()
            .await;
        let (status, v) = self.answer(sent).await?;
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
        let pattern = format!("{}-*", self.prefix);
        let sent = self
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[&pattern]))
            .ignore_unavailable(true)
            .allow_no_indices(true)
            .send()
            .await;
        self.answer_ok(sent, "refresh").await.map(|_| ())
    }

    async fn expire(&self, cutoff: OffsetDateTime) -> Result<u64, Error> {
        let pattern = format!("{}-*", self.prefix);
        let sent = self
            .client
            .cat()
            .indices(CatIndicesParts::Index(&[&pattern]))
            .format("json")
            .h(&["index"])
            .send()
            .await;
        let v = self.answer_ok(sent, "listing indices").await?;
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
                let sent = self
                    .client
                    .indices()
                    .delete(IndicesDeleteParts::Index(&[name]))
                    .send()
                    .await;
                self.answer_ok(sent, "deleting an expired index").await?;
                tracing::info!(index = name, "deleted index past retention");
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

impl OpenSearch {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_index_names_and_credentials() {
        let os = OpenSearch::with_prefix("http://user:sekrit@127.0.0.1:9200/", "whale").unwrap();
        assert_eq!(os.url(), "http://127.0.0.1:9200");
        assert_eq!(
            os.day_of("whale-2026.11.28"),
            Date::from_calendar_date(2026, time::Month::November, 28).ok()
        );
        assert_eq!(os.day_of("whale-mappings"), None);
        assert_eq!(os.day_of("whalefoo-2026.11.28"), None);
    }

    #[test]
    fn authentication_settings() {
        let cfg = |url: &str, auth: OpenSearchAuth| IndexConfig {
            opensearch_url: Some(url.into()),
            opensearch_auth: auth,
            opensearch_aws_region: Some("eu-west-1".into()),
            ..IndexConfig::default()
        };
        let refused = |c: IndexConfig| match OpenSearch::configured(&c, "whale") {
            Err(Error::Invalid(why)) => why,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted {:?}", c.opensearch_auth),
        };
        // Credentials in the URL are for basic only, and never shown.
        for auth in [OpenSearchAuth::None, OpenSearchAuth::AwsSigv4] {
            let why = refused(cfg("https://u:sekrit@example.com:9200", auth));
            assert!(why.contains("opensearch_auth"), "{why}");
            assert!(!why.contains("sekrit"), "{why}");
        }
        for auth in [
            OpenSearchAuth::Basic,
            OpenSearchAuth::None,
            OpenSearchAuth::AwsSigv4,
        ] {
            let os = OpenSearch::configured(&cfg("https://example.com", auth), "whale").unwrap();
            assert_eq!(os.url(), "https://example.com");
        }
        let mut aoss = cfg(
            "https://x.eu-west-1.aoss.amazonaws.com",
            OpenSearchAuth::AwsSigv4,
        );
        aoss.opensearch_aws_service = "aoss".into();
        assert!(OpenSearch::configured(&aoss, "whale").is_ok());
    }
}
