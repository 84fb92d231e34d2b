//! The request path every call shares: authorize, send, renew the token once on a 401, read
//! the answer, and turn any failure into an [`St2Error`] that names the URL and carries no
//! credential.

use crate::client::St2Client;
use crate::conn::Auth;
use crate::error::{ErrorKind, Result, St2Error};
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A successful answer, read whole.
pub(crate) struct Reply {
    pub(crate) call: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl St2Client {
    /// Sends one request (renewing the token once on a 401) and reads the whole answer.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply> {
        let (call, url) = self.call_label(&method, path);
        let timeout = self.inner.timeout;
        let resp = self
            .execute(&call, || {
                let req = self.inner.http.request(method.clone(), &url).query(query);
                let req = req.timeout(timeout);
                match body {
                    Some(b) => req.json(b),
                    None => req,
                }
            })
            .await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.reqwest_error(&call, e))?;
        if !status.is_success() {
            return Err(self.http_error(call, status, &body));
        }
        Ok(Reply {
            call,
            headers,
            body,
        })
    }

    /// Authorizes and sends `build()`, retrying once with a fresh token after a 401.
    pub(crate) async fn execute(
        &self,
        call: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let mut renewed = false;
        loop {
            let req = self.authorize(build(), call).await?;
            tracing::debug!(call, "stackstorm request");
            let resp = req.send().await.map_err(|e| self.reqwest_error(call, e))?;
            let token_auth = matches!(self.inner.auth, Auth::UserPassword { .. });
            if resp.status() == StatusCode::UNAUTHORIZED && token_auth && !renewed {
                self.forget_token();
                renewed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    pub(crate) fn call_label(&self, method: &Method, path: &str) -> (String, String) {
        let url = format!("{}{}", self.inner.base, path);
        let shown = format!("{}{}", self.inner.shown_base, path);
        (format!("{} {}", method.as_str().to_lowercase(), shown), url)
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self, r: &Reply) -> Result<T> {
        serde_json::from_slice(&r.body).map_err(|e| {
            St2Error::new(
                ErrorKind::Decode,
                r.call.clone(),
                self.scrub(&e.to_string()),
            )
        })
    }

    pub(crate) fn decode_value<T: DeserializeOwned>(&self, call: &str, v: Value) -> Result<T> {
        serde_json::from_value(v).map_err(|e| {
            St2Error::new(
                ErrorKind::Decode,
                call.to_owned(),
                self.scrub(&e.to_string()),
            )
        })
    }

    pub(crate) fn http_error(&self, call: String, status: StatusCode, body: &[u8]) -> St2Error {
        let fault = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("faultstring")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                match text.is_empty() {
                    true => status.canonical_reason().unwrap_or("").to_owned(),
                    false => text.chars().take(300).collect(),
                }
            });
        let faultstring = self.scrub(&fault);
        let kind = ErrorKind::Http {
            status: status.as_u16(),
            faultstring,
        };
        St2Error::new(kind, call, String::new())
    }

    pub(crate) fn reqwest_error(&self, call: &str, e: reqwest::Error) -> St2Error {
        if e.is_timeout() {
            let detail = format!("no answer within {:?}", self.inner.timeout);
            return St2Error::new(ErrorKind::Timeout, call.to_owned(), detail);
        }
        let kind = if e.is_decode() {
            ErrorKind::Decode
        } else {
            ErrorKind::Transport
        };
        let e = e.without_url();
        let mut parts = vec![e.to_string()];
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = cur {
            parts.push(s.to_string());
            cur = s.source();
        }
        parts.dedup();
        St2Error::new(kind, call.to_owned(), self.scrub(&parts.join(": ")))
    }

    /// Removes every credential this client knows from `text`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = match &self.inner.auth {
            Auth::ApiKey(k) => k.scrub(text),
            Auth::UserPassword { password, .. } => password.scrub(text),
            Auth::None => text.to_owned(),
        };
        if let Some(t) = self.inner.tokens.current_secret() {
            out = t.scrub(&out);
        }
        out
    }
}
