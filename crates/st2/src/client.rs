//! The calls whale makes on one StackStorm cluster, over one pooled `reqwest::Client`.
//! Every call maps its failure into [`St2Error`] with the URL path and no credential.

use crate::auth::TokenCache;
use crate::conn::{Auth, ClusterConn};
use crate::error::{ErrorKind, Result, St2Error};
use crate::filter::ListFilter;
use crate::model::{Execution, ExecutionRequest, Trace};
use reqwest::Method;
use serde_json::{json, Value};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A client for one StackStorm cluster. Cheap to clone; clones share connections and the token.
#[derive(Clone)]
pub struct St2Client {
    pub(crate) inner: Arc<Inner>,
    pub(crate) stream_idle: Duration,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    /// `base` with any password in it replaced by `***`: what errors and logs show.
    pub(crate) shown_base: String,
    pub(crate) auth: Auth,
    pub(crate) timeout: Duration,
    pub(crate) tokens: TokenCache,
}

impl fmt::Debug for St2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("St2Client")
            .field("base_url", &self.inner.shown_base)
            .finish_non_exhaustive()
    }
}

impl St2Client {
    /// Builds a client. Fails only on an unusable base URL.
    pub fn new(conn: ClusterConn) -> Result<Self> {
        let base = conn.base_url.trim_end_matches('/');
        let base = base.strip_suffix("/api/v1").unwrap_or(base).to_owned();
        let parsed = reqwest::Url::parse(&base);
        let Some(mut shown) = parsed.ok().filter(|_| base.starts_with("http")) else {
            return Err(St2Error::new(
                ErrorKind::Config,
                String::new(),
                "the base url is not an http(s) url (expected e.g. http://127.0.0.1:9101)".into(),
            ));
        };
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        } else if !shown.username().is_empty() {
            let _ = shown.set_username("***");
        }
        let shown_base = shown.as_str().trim_end_matches('/').to_owned();
        let mut builder =
            reqwest::Client::builder().connect_timeout(conn.timeout.min(Duration::from_secs(10)));
        if let Some(path) = &conn.ca_file {
            let config_err = |m: String| St2Error::new(ErrorKind::Config, String::new(), m);
            let pem = std::fs::read(path)
                .map_err(|e| config_err(format!("cannot read ca_file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    config_err(format!(
                        "ca_file {} holds no PEM certificate",
                        path.display()
                    ))
                })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| St2Error::new(ErrorKind::Config, String::new(), e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                shown_base,
                auth: conn.auth,
                timeout: conn.timeout,
                tokens: TokenCache::default(),
            }),
            stream_idle: Duration::from_secs(75),
        })
    }

    /// How long a stream may stay silent (StackStorm sends a heartbeat every 25 s) before it
    /// ends with a timeout error. Default 75 s.
    pub fn with_stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle = idle;
        self
    }

    /// The base URL, as configured (without `/api/v1`).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// `POST /api/v1/executions`. A 201 carries the new execution, status `requested`.
    pub async fn create_execution(&self, req: &ExecutionRequest) -> Result<Execution> {
        let mut body = json!({"action": req.action, "parameters": req.parameters});
        if req.parameters.is_null() {
            body["parameters"] = json!({});
        }
        if !req.context.is_null() {
            body["context"] = req.context.clone();
        }
        let r = self
            .send(Method::POST, "/api/v1/executions", &[], Some(&body))
            .await?;
        self.decode(&r)
    }

    /// `GET /api/v1/executions/{id}` (`id` may be `last`).
    pub async fn get_execution(&self, id: &str) -> Result<Execution> {
        let r = self
            .send(Method::GET, &exec_path(id, ""), &[], None)
            .await?;
        self.decode(&r)
    }

    /// `GET /api/v1/executions` with filters; returns the page and `X-Total-Count` (the page
    /// length when the header is missing).
    pub async fn list_executions(&self, filter: &ListFilter) -> Result<(Vec<Execution>, u64)> {
        let r = self
            .send(Method::GET, "/api/v1/executions", &filter.query(), None)
            .await?;
        let list: Vec<Execution> = self.decode(&r)?;
        let total = r
            .headers
            .get("x-total-count")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(list.len() as u64);
        Ok((list, total))
    }

    /// `DELETE /api/v1/executions/{id}`. StackStorm answers a refusal (already finished) with
    /// HTTP 200 and a `faultstring`: that is an [`ErrorKind::Refused`] error here.
    pub async fn cancel(&self, id: &str) -> Result<Execution> {
        let r = self
            .send(Method::DELETE, &exec_path(id, ""), &[], None)
            .await?;
        let v: Value = self.decode(&r)?;
        if let Some(fault) = v.get("faultstring").and_then(Value::as_str) {
            return Err(St2Error::new(
                ErrorKind::Refused {
                    faultstring: self.scrub(fault),
                },
                r.call,
                String::new(),
            ));
        }
        self.decode_value(&r.call, v)
    }

    /// `PUT /api/v1/executions/{id}` `{"status": "pausing"}` (workflow runners only).
    pub async fn pause(&self, id: &str) -> Result<Execution> {
        self.put_status(id, "pausing").await
    }

    /// `PUT /api/v1/executions/{id}` `{"status": "resuming"}` (workflow runners only).
    pub async fn resume(&self, id: &str) -> Result<Execution> {
        self.put_status(id, "resuming").await
    }

    async fn put_status(&self, id: &str, status: &str) -> Result<Execution> {
        let body = json!({ "status": status });
        let r = self
            .send(Method::PUT, &exec_path(id, ""), &[], Some(&body))
            .await?;
        self.decode(&r)
    }

    /// `POST /api/v1/executions/{id}/re_run`; `parameters` are merged over the original ones.
    pub async fn re_run(&self, id: &str, parameters: Value) -> Result<Execution> {
        let parameters = if parameters.is_null() {
            json!({})
        } else {
            parameters
        };
        let body = json!({ "parameters": parameters });
        let r = self
            .send(Method::POST, &exec_path(id, "/re_run"), &[], Some(&body))
            .await?;
        self.decode(&r)
    }

    /// `GET /api/v1/executions/{id}/output`: the stored stdout/stderr text.
    pub async fn output(&self, id: &str) -> Result<String> {
        let r = self
            .send(Method::GET, &exec_path(id, "/output"), &[], None)
            .await?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The first execution recorded under `trace_tag` (`GET /api/v1/traces?trace_tag=`, oldest
    /// trace first, then the execution), or `None` when StackStorm has none. This is how a
    /// dispatcher learns, after a crash, whether its POST went through.
    pub async fn find_by_trace_tag(&self, trace_tag: &str) -> Result<Option<Execution>> {
        let query = [
            ("trace_tag", trace_tag.to_owned()),
            ("sort_asc", "True".to_owned()),
        ];
        let r = self
            .send(Method::GET, "/api/v1/traces", &query, None)
            .await?;
        let traces: Vec<Trace> = self.decode(&r)?;
        for component in traces.iter().flat_map(|t| &t.action_executions) {
            match self.get_execution(&component.object_id).await {
                Ok(e) => return Ok(Some(e)),
                Err(e) if e.status() == Some(404) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// `GET /api/v1/actions/{ref}`: the action document.
    pub async fn get_action(&self, action_ref: &str) -> Result<Value> {
        let path = format!("/api/v1/actions/{}", segment(action_ref));
        let r = self.send(Method::GET, &path, &[], None).await?;
        self.decode(&r)
    }

    /// `GET /api/v1/`: `{version, docs_url}`; a cheap authenticated health check.
    pub async fn api_info(&self) -> Result<Value> {
        let r = self.send(Method::GET, "/api/v1/", &[], None).await?;
        self.decode(&r)
    }
}

/// `/api/v1/executions/{id}{suffix}` with the id escaped.
fn exec_path(id: &str, suffix: &str) -> String {
    format!("/api/v1/executions/{}{suffix}", segment(id))
}

/// Percent-encodes everything but unreserved characters, so an id cannot change the path.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
