//! Credentials on the wire: the API key header, or a token bought with user/password at
//! `POST /auth/v1/tokens`, cached and renewed before it expires.

use crate::client::St2Client;
use crate::conn::Auth;
use crate::error::{ErrorKind, Result, St2Error};
use crate::secret::Secret;
use reqwest::header::HeaderValue;
use reqwest::RequestBuilder;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The current token and when to replace it; `fetch` makes concurrent callers wait for one
/// token request instead of each sending their own.
#[derive(Default)]
pub(crate) struct TokenCache {
    fetch: tokio::sync::Mutex<()>,
    current: Mutex<Option<Cached>>,
}

#[derive(Clone)]
struct Cached {
    token: Secret,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenReply {
    token: String,
    #[serde(default)]
    expiry: Option<String>,
}

impl TokenCache {
    fn fresh(&self) -> Option<Secret> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    pub(crate) fn current_secret(&self) -> Option<Secret> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().map(|c| c.token.clone())
    }

    fn set(&self, c: Option<Cached>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }
}

/// When to renew a token that StackStorm says expires at `expiry`: a quarter of its life
/// (at most a minute) early. Unknown expiry: StackStorm's default TTL, one day.
fn refresh_after(expiry: Option<&str>) -> Duration {
    let life = expiry
        .and_then(crate::timefmt::parse)
        .map(|t| t - time::OffsetDateTime::now_utc())
        .map(|d| Duration::try_from(d).unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::from_secs(86_400));
    life.saturating_sub((life / 4).min(Duration::from_secs(60)))
}

impl St2Client {
    /// Adds this cluster's credential to a request (header marked sensitive).
    pub(crate) async fn authorize(
        &self,
        req: RequestBuilder,
        call: &str,
    ) -> Result<RequestBuilder> {
        let (name, secret) = match &self.inner.auth {
            Auth::None => return Ok(req),
            Auth::ApiKey(key) => ("St2-Api-Key", key.clone()),
            Auth::UserPassword { .. } => ("X-Auth-Token", self.token(call).await?),
        };
        let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
            let detail = format!("the {name} credential has characters not allowed in a header");
            St2Error::new(ErrorKind::Config, call.to_owned(), detail)
        })?;
        value.set_sensitive(true);
        Ok(req.header(name, value))
    }

    pub(crate) fn forget_token(&self) {
        self.inner.tokens.set(None);
    }

    async fn token(&self, call: &str) -> Result<Secret> {
        if let Some(t) = self.inner.tokens.fresh() {
            return Ok(t);
        }
        let _one_at_a_time = self.inner.tokens.fetch.lock().await;
        if let Some(t) = self.inner.tokens.fresh() {
            return Ok(t);
        }
        let Auth::UserPassword { user, password } = &self.inner.auth else {
            return Err(St2Error::new(
                ErrorKind::Config,
                call.to_owned(),
                "no user".into(),
            ));
        };
        let (call, url) = self.call_label(&reqwest::Method::POST, "/auth/v1/tokens");
        tracing::debug!(call, user, "requesting a stackstorm token");
        let resp = self
            .inner
            .http
            .post(&url)
            .basic_auth(user, Some(password.expose()))
            .json(&serde_json::json!({}))
            .timeout(self.inner.timeout)
            .send()
            .await
            .map_err(|e| self.reqwest_error(&call, e))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.reqwest_error(&call, e))?;
        if !status.is_success() {
            return Err(self.http_error(call, status, &body));
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            // The body holds the token: never quote it.
            let detail = format!(
                "token response is not {{token, expiry}} JSON ({})",
                e.classify_name()
            );
            St2Error::new(ErrorKind::Decode, call.clone(), detail)
        })?;
        let token = Secret::new(reply.token);
        self.inner.tokens.set(Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + refresh_after(reply.expiry.as_deref()),
        }));
        Ok(token)
    }
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_a_quarter_early_at_most_a_minute() {
        let in_secs = |s: i64| {
            let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(s);
            crate::timefmt::format(t)
        };
        let d = refresh_after(Some(&in_secs(8)));
        assert!(
            d <= Duration::from_secs(6) && d >= Duration::from_secs(5),
            "{d:?}"
        );
        let d = refresh_after(Some(&in_secs(86_400)));
        assert!(
            d >= Duration::from_secs(86_300) && d <= Duration::from_secs(86_340),
            "{d:?}"
        );
        assert_eq!(refresh_after(Some(&in_secs(-5))), Duration::ZERO);
    }
}
