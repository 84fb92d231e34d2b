//! The Redis side of the throttle: one Lua script (`decide.lua`) run with EVALSHA, a whole batch
//! of decisions in one pipeline, the script reloaded when Redis answers NOSCRIPT (its script
//! cache is empty after a restart), and a connection that reconnects by itself. Never connects
//! eagerly: a worker starts while Redis is down and its tasks wait.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ServerErrorKind, Value};
use whale_kernel::Secret;

use crate::policy::Request;

/// The decision script.
pub const SCRIPT: &str = include_str!("decide.lua");

/// How long one batch may wait for Redis before its tasks are sent back to wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// Redis's answer for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub admitted: bool,
    /// Milliseconds until the next token frees up (0 when admitted).
    pub retry_after_ms: u64,
    /// This task had been decided before (a redelivery): the earlier answer, bucket untouched.
    pub repeated: bool,
}

/// Why a decision could not be made. Either way the task waits and is asked again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No connection, a dropped one, or no answer in time.
    #[error("Redis unreachable: {0}")]
    Unreachable(String),
    /// Redis answered with an error (loading its data, out of memory, a bad script reply).
    #[error("Redis refused the decision: {0}")]
    Refused(String),
}

/// A bad `redis.url`. Says what is wrong without repeating the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("redis.url (WHALE_REDIS_URL) is not a valid Redis URL ({0}); expected redis://[user:password@]host:port[/db]")]
pub struct BadUrl(String);

/// `[redis]` that cannot be used: a bad URL, or TLS files that cannot be read or do not fit.
#[derive(Debug, thiserror::Error)]
pub enum Setup {
    #[error(transparent)]
    Url(#[from] BadUrl),
    #[error("{0}")]
    Tls(String),
}

/// Asks Redis for decisions. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Limiter {
    conn: ConnectionManager,
    sha: String,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's Debug would print the URL, password included.
        f.debug_struct("Limiter")
            .field("script", &self.sha)
            .finish()
    }
}

impl Limiter {
    /// A limiter for the Redis at `url`. Does not connect: the first decision does, and every
    /// later one reconnects if the connection was lost. Must be called inside a Tokio runtime.
    pub fn new(url: &Secret) -> Result<Limiter, BadUrl> {
        let client =
            redis::Client::open(url.expose()).map_err(|e| BadUrl(format!("{:?}", e.kind())))?;
        Self::with_client(client)
    }

    /// A limiter for `[redis]`: its URL and, for `rediss://`, its own CA and client
    /// certificate. Errors name the file, never the URL.
    pub fn from_config(cfg: &whale_kernel::config::RedisConfig) -> Result<Limiter, Setup> {
        if cfg.tls_ca.is_none() && cfg.tls_cert.is_none() && cfg.tls_key.is_none() {
            return Ok(Self::new(&cfg.url)?);
        }
        if !cfg.url.expose().starts_with("rediss://") {
            return Err(Setup::Tls(
                "redis.tls_ca / tls_cert / tls_key are set but the Redis URL is not rediss://: use rediss:// for TLS".into(),
            ));
        }
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p)
                .map_err(|e| Setup::Tls(format!("cannot read {what} {}: {e}", p.display())))
        };
        let client_tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read(c, "redis.tls_cert")?,
                client_key: read(k, "redis.tls_key")?,
            }),
            (None, None) => None,
            _ => {
                return Err(Setup::Tls(
                    "set both redis.tls_cert and redis.tls_key (WHALE_REDIS_TLS_CERT, WHALE_REDIS_TLS_KEY), or neither".into(),
                ))
            }
        };
        let root_cert = cfg
            .tls_ca
            .as_deref()
            .map(|p| read(p, "redis.tls_ca"))
            .transpose()?;
        let client = redis::Client::build_with_tls(
            cfg.url.expose(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| {
            Setup::Tls(format!(
                "redis TLS setup (redis.tls_ca, redis.tls_cert, redis.tls_key): {:?} {}",
                e.kind(),
                e.detail().unwrap_or("")
            ))
        })?;
        Ok(Self::with_client(client)?)
    }

    fn with_client(client: redis::Client) -> Result<Limiter, BadUrl> {
        // Short connection attempts and few retries: while Redis is down a batch should come
        // back quickly as "wait", not hang; the worker's next batch tries again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| BadUrl(e.to_string()))?;
        Ok(Limiter {
            conn,
            sha: redis::Script::new(SCRIPT).get_hash().to_owned(),
        })
    }

    /// `PING`: whether Redis answers now (for `/readyz`). The error never holds the URL.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e).to_string()),
            Err(_) => Err("Redis unreachable: no answer within 2s".into()),
        }
    }

    /// Decides every request, in order, in one pipelined round trip (two when the script has to
    /// be loaded first). Requests for the same task in one call get the same answer.
    pub async fn decide(&self, reqs: &[Request]) -> Vec<Result<Decision, Error>> {
        match tokio::time::timeout(CALL_TIMEOUT, self.decide_inner(reqs)).await {
            Ok(out) => out,
            Err(_) => {
                let e = Error::Unreachable(format!("no answer within {}s", CALL_TIMEOUT.as_secs()));
                vec![Err(e); reqs.len()]
            }
        }
    }

    async fn decide_inner(&self, reqs: &[Request]) -> Vec<Result<Decision, Error>> {
        let mut out: Vec<Option<Result<Decision, Error>>> = vec![None; reqs.len()];
        let mut todo: Vec<usize> = (0..reqs.len()).collect();
        let mut conn = self.conn.clone();
        for attempt in 0..2 {
            if todo.is_empty() {
                break;
            }
            if attempt > 0 {
                // NOSCRIPT: Redis restarted or its script cache was flushed.
                let loaded = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(SCRIPT)
                    .query_async::<String>(&mut conn)
                    .await;
                if let Err(e) = loaded {
                    let e = classify(&e);
                    for i in todo.drain(..) {
                        out[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &todo {
                let r = &reqs[i];
                pipe.cmd("EVALSHA")
                    .arg(&self.sha)
                    .arg(2)
                    .arg(&r.log_key)
                    .arg(&r.marker_key)
                    .arg(&r.member)
                    .arg(r.capacity)
                    .arg(r.horizon_ms)
                    .arg(r.admitted_ttl_ms)
                    .arg(r.throttled_ttl_ms);
            }
            let values = match pipe.query_async::<Vec<Value>>(&mut conn).await {
                Ok(v) if v.len() == todo.len() => v,
                Ok(v) => {
                    let e =
                        Error::Refused(format!("{} answers to {} questions", v.len(), todo.len()));
                    for i in todo.drain(..) {
                        out[i] = Some(Err(e.clone()));
                    }
                    break;
                }
                Err(e) => {
                    let e = classify(&e);
                    for i in todo.drain(..) {
                        out[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
            let mut again = Vec::new();
            for (i, v) in todo.iter().copied().zip(values) {
                match v {
                    Value::ServerError(e)
                        if e.kind() == Some(ServerErrorKind::NoScript) && attempt == 0 =>
                    {
                        again.push(i)
                    }
                    v => out[i] = Some(parse(v)),
                }
            }
            todo = again;
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Refused("script could not be loaded".into()))))
            .collect()
    }
}

fn classify(e: &redis::RedisError) -> Error {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        Error::Unreachable(e.to_string())
    } else {
        Error::Refused(e.to_string())
    }
}

fn parse(v: Value) -> Result<Decision, Error> {
    let bad = |v: &Value| Error::Refused(format!("unexpected script reply {v:?}"));
    match v {
        Value::ServerError(e) => Err(Error::Refused(format!(
            "{} {}",
            e.code(),
            e.details().unwrap_or_default()
        ))),
        Value::Array(ref items) => match items.as_slice() {
            [Value::Int(a), Value::Int(retry), Value::Int(rep)] => Ok(Decision {
                admitted: *a == 1,
                retry_after_ms: (*retry).max(0) as u64,
                repeated: *rep == 1,
            }),
            _ => Err(bad(&v)),
        },
        _ => Err(bad(&v)),
    }
}
