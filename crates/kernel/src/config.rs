//! Configuration: `whale.toml` (`--config` or `WHALE_CONFIG`) overridden by the `WHALE_*`
//! environment variables of docs/contract.md "Environment". Every field has a default, so whale
//! runs on a laptop with no file at all. Secrets are held in [`Secret`], which never prints its
//! value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Deserializer};

/// A secret string (API key, password, token). Debug and Display print `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value, for the one place that sends it to a server.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Query parameters whose values are credentials (WeCom robot `key`, tokens, signatures).
const SECRET_PARAMS: [&str; 8] = [
    "key",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "password",
    "secret",
    "sig",
];

/// `text` (a URL, or a message that embeds URLs, like a connection or reqwest error) with every
/// credential in a URL replaced by `***`: the password of `scheme://user:password@host` (the whole
/// user part when there is no password: `nats://TOKEN@host` carries a token), and the values of
/// query parameters such as `key=` or `token=`. Use it wherever a configured URL is printed or
/// logged.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ',')
            })
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        out.push_str(&redact_one(url));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The credential in a URL's user part: the password of `user:password@`, or the whole user
/// part when it has no password (a token).
fn url_credential(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(userinfo.split_once(':').map_or(userinfo, |(_, p)| p)).filter(|s| !s.is_empty())
}

/// One URL without its scheme (`user:pass@host/path?query`).
fn redact_one(url: &str) -> String {
    let auth_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(auth_end);
    let mut out = match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _)) => format!("{user}:***@{}", &authority[at + 1..]),
            None => format!("***@{}", &authority[at + 1..]),
        },
        None => authority.to_owned(),
    };
    let Some(q) = path.find('?') else {
        out.push_str(path);
        return out;
    };
    out.push_str(&path[..=q]);
    let (query, fragment) = match path[q + 1..].find('#') {
        Some(h) => path[q + 1..].split_at(h),
        None => (&path[q + 1..], ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    out.push_str(&pairs.join("&"));
    out.push_str(fragment);
    out
}

/// Durations in config files are human strings: "30s", "10m", "7d".
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s.trim())
        .with_context(|| format!("{s:?} is not a duration (use e.g. 30s, 10m, 2h, 7d)"))
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats: NatsConfig,
    pub events: EventsConfig,
    pub http: HttpConfig,
    pub redis: RedisConfig,
    pub index: IndexConfig,
    /// StackStorm clusters by name; `default` comes from WHALE_ST2_URL / WHALE_ST2_API_KEY.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Notification channels by name (used by rules' `notify` and approvals).
    pub channels: BTreeMap<String, ChannelConfig>,
    /// The feedback stage: following executions and sending notifications.
    pub feedback: FeedbackConfig,
    /// The approval gate: signed links in chat.
    pub approvals: ApprovalsConfig,
    /// The dispatch stage: routing of unknown clusters, retries, circuit breakers.
    pub dispatch: DispatchConfig,
    /// Rule evaluation (`[rules]`): limits on jq predicates and templates.
    pub rules: RulesConfig,
    /// Lifetimes of the state kept in KV (claims, execution index, markers, approvals).
    pub state: StateConfig,
    /// Bounds on the operator APIs' bodies (approvals, executions) and schema files.
    pub api: ApiConfig,
    /// Who may call the HTTP API (`[auth]`): named, hashed API tokens and their roles.
    pub auth: AuthConfig,
    /// `[[hooks]]`: webhook adapters at `POST /v1/hooks/<name>` (docs/sources.md). The
    /// built-in `alertmanager`, `grafana` and `cloudevents` exist without an entry; an entry
    /// with their name changes their limits or tokens.
    pub hooks: Vec<HookConfig>,
    /// The audit trail (`[audit]`): how long and how much of it `WHALE_AUDIT` keeps.
    pub audit: AuditConfig,
    /// The operator console (`[console]`, docs/console.md): browser sessions and form limits.
    pub console: ConsoleConfig,
}

/// One webhook adapter (`[[hooks]]`, docs/sources.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The URL segment: `POST /v1/hooks/<name>` (letters, digits, `_`, `-`).
    pub name: String,
    /// `alertmanager`, `grafana`, `cloudevents` or `generic`; default: the name when it is a
    /// built-in adapter's, else `generic`.
    #[serde(default)]
    pub adapter: Option<String>,
    /// `generic` only: a jq program from the request body to one envelope or an array of
    /// envelopes (`event_type`, `detail`, optional `id`, `source`, `time`, `labels`). Runs under
    /// the rule engine's limits (time `rules.eval_time_limit`, work budget, 1,000 outputs).
    #[serde(default)]
    pub jq: Option<String>,
    /// Token names (`[[auth.tokens]]` `name`) allowed to post here; empty = any producer.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Largest request body for this hook, in bytes (default 4 MiB; also bounded by
    /// `http.max_body_bytes`). Over it: 413.
    #[serde(default = "default_hook_body")]
    pub max_body_bytes: usize,
    /// Most events one request may become (default 1,000). Over it: 413, nothing accepted.
    #[serde(default = "default_hook_items")]
    pub max_items: usize,
}

fn default_hook_body() -> usize {
    4 * 1024 * 1024
}

fn default_hook_items() -> usize {
    1000
}

impl HookConfig {
    /// The entry a built-in adapter has when `whale.toml` names none.
    pub fn builtin(name: &str) -> Self {
        HookConfig {
            name: name.to_owned(),
            adapter: None,
            jq: None,
            tokens: Vec::new(),
            max_body_bytes: default_hook_body(),
            max_items: default_hook_items(),
        }
    }
}

/// The audit trail (`[audit]`, docs/security.md "Audit trail"): every decision and change is a
/// record on the `WHALE_AUDIT` stream, which `whale setup` creates with these limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How long a record is kept (the stream's max age; `"0s"` keeps records forever). At least
    /// `nats.duplicate_window`.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// Size cap of `WHALE_AUDIT` in bytes (0 = none; default 256 MiB, about 200,000 records of
    /// ~1 KiB). Discard new: when full, actions are refused (503) before they happen, never an
    /// old record dropped; raise it or shorten `retention`. It counts toward the server's
    /// `max_file_store` with the other streams' caps.
    pub max_bytes: u64,
    /// Most records one `whale audit` / `GET /v1/audit` returns (`--limit`, `limit=`).
    pub max_list: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Duration::from_secs(400 * 24 * 3600),
            max_bytes: 256 << 20,
            max_list: 10_000,
        }
    }
}

/// The operator console served by `whale run` at `/` (`[console]`, docs/console.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// How long a browser session lasts after sign-in (the signed cookie's expiry).
    #[serde(deserialize_with = "de_duration")]
    pub session_ttl: Duration,
    /// The key that signs session cookies (at least 32 bytes). Unset (default): a random key
    /// kept in KV (`whale_state`, `console.session-key`), shared by every `whale run`.
    pub session_secret: Option<Secret>,
    /// Largest console form body (sign-in, approve/deny reason, retry, rule text to try).
    pub max_form_bytes: usize,
    /// Events a console search counts by type and source (the newest ones of the match).
    pub count_sample: usize,
    /// Most events one backtest on the Rules page reads; past it the report stops there and
    /// says so (`limited`). `whale replay --dry-run` reads the whole range.
    pub backtest_max_events: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_ttl: Duration::from_secs(12 * 3600),
            session_secret: None,
            max_form_bytes: 256 * 1024,
            count_sample: 1000,
            backtest_max_events: 100_000,
        }
    }
}

/// HTTP access control (`[auth]`, see docs/security.md). With no token here, no `tokens_file`
/// and no `WHALE_HTTP_TOKEN`, every route is open and `whale run` listens on loopback only.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `[[auth.tokens]]`: `name`, `role` (producer, viewer, operator, admin), `sha256` (hex of
    /// the token; `whale auth hash-token` prints the entry). Remove an entry to revoke it.
    pub tokens: Vec<crate::auth::TokenEntry>,
    /// A TOML file of `[[tokens]]` entries in the same format (e.g. a mounted Secret), read
    /// at start in addition to `tokens` and again every 2 s (`auth::TOKENS_FILE_POLL`): a
    /// token removed from it is refused without a restart.
    pub tokens_file: Option<PathBuf>,
    /// OIDC/JWT bearer tokens from an identity provider (`[auth.oidc]`: issuer, audience,
    /// jwks_file, algorithms, role_claim, roles, name_claim, leeway, max_token_bytes,
    /// max_jwks_bytes; see docs/security.md "OIDC").
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// Reverse proxies (IPs or CIDRs, e.g. `["10.0.0.5", "10.1.0.0/16"]`) whose identity
    /// header (`proxy_user_header`) and `X-Forwarded-For` are believed. From any other peer
    /// both headers are ignored. Empty (default): never believed.
    pub trusted_proxies: Vec<String>,
    /// The header a trusted proxy names its authenticated user in (default `X-Forwarded-User`);
    /// the principal is `proxy:<user>`.
    pub proxy_user_header: Option<String>,
    /// Role of every proxy-authenticated user not listed in `proxy_roles` (none: only listed
    /// users get a role, the others are refused with 403).
    pub proxy_role: Option<crate::auth::Role>,
    /// Per-user roles for proxy-authenticated users (`proxy_roles = { "alice" = "admin" }`).
    pub proxy_roles: BTreeMap<String, crate::auth::Role>,
}

/// How to reach NATS. Several URLs for a cluster; one of the auth methods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://...`); the client fails over between them.
    pub urls: Vec<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A `.creds` file (JWT + NKey).
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU...`, as `nk -gen user` writes it), for servers
    /// whose users are NKeys (`authorization { users: [{ nkey: U... }] }`).
    pub nkey_seed_file: Option<PathBuf>,
    /// Prefix of the client's reply subjects (default `_INBOX`). A user allowed to subscribe
    /// only to its own prefix (the `producer` of deploy/nats/nats.conf: `_INBOX_producer`)
    /// sets it so that `whale publish` receives its JetStream acks.
    pub inbox_prefix: Option<String>,
    /// CA bundle (PEM) for TLS, e.g. a private CA (`WHALE_NATS_TLS_CA`); setting it (or
    /// `tls_required`) turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS (`WHALE_NATS_TLS_CERT`,
    /// `WHALE_NATS_TLS_KEY`); set both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
    /// Stream replicas (1 for one server, 3 for a cluster).
    pub replicas: usize,
    /// Retention of internal pipeline records.
    #[serde(deserialize_with = "de_duration")]
    pub pipe_retention: Duration,
    /// How long JetStream remembers message ids for deduplication.
    #[serde(deserialize_with = "de_duration")]
    pub duplicate_window: Duration,
    /// Ack wait of every stage consumer: a message not acked (nor kept alive) this long after
    /// delivery goes to another worker. Workers send in-progress acks every third of it while
    /// they handle a batch, so it bounds how long a crashed worker's messages wait, not how
    /// long a batch may take. `whale setup` updates existing consumers. At least 1s.
    #[serde(deserialize_with = "de_duration")]
    pub ack_wait: Duration,
    /// Size cap of `WHALE_INGEST` in bytes (0 = none). Discard new: when full, ingest answers 429
    /// and `whale publish` retries, nothing already queued is lost.
    pub ingest_max_bytes: u64,
    /// Size cap of `WHALE_EVENTS` in bytes (0 = none). Discard old: the oldest history goes first.
    pub events_max_bytes: u64,
    /// Size cap of `WHALE_PIPE` in bytes (0 = none). Discard new: a record not yet handled by
    /// the next stage is never dropped; a full stream makes stages retry (back pressure to ingest).
    pub pipe_max_bytes: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            user: None,
            password: None,
            token: None,
            creds_file: None,
            nkey_seed_file: None,
            inbox_prefix: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            replicas: 1,
            pipe_retention: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(10 * 60),
            ack_wait: Duration::from_secs(5),
            ingest_max_bytes: 1 << 30,
            events_max_bytes: 8 << 30,
            pipe_max_bytes: 4 << 30,
        }
    }
}

/// Accepted-event handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// History of accepted events kept for replay.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    pub max_bytes: usize,
    pub max_depth: usize,
    /// Accept event types that have no schema (default: reject them).
    pub allow_unknown_types: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1024 * 1024,
            max_depth: 64,
            allow_unknown_types: false,
        }
    }
}

impl EventsConfig {
    pub fn limits(&self) -> crate::envelope::Limits {
        crate::envelope::Limits {
            max_bytes: self.max_bytes,
            max_depth: self.max_depth,
        }
    }
}

/// The HTTP server (ingest, metrics, health, approvals).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub addr: String,
    /// Bearer token required on `/v1/*` when set.
    pub token: Option<Secret>,
    /// Largest request body (a batch of events); over it: 413 with the JSON error shape.
    pub max_body_bytes: usize,
    /// Longest time one request may take; a slower one gets a JSON 503 and its work is
    /// dropped (at least 1s).
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Most events in one request body; over it: 413 before any event is parsed.
    pub max_items: usize,
    /// How many refusals an error answer lists (plus the total count).
    pub max_refusals: usize,
    /// Events per second accepted from one `source` (token bucket in each process; 0 = no
    /// limit). Over it: 429 with `Retry-After` for that source only.
    pub rate_per_source: f64,
    /// Burst size of the per-source bucket (events); 0 = one second's worth, at least 1.
    pub burst_per_source: u32,
    /// `POST /v1/events` and `/v1/hooks/*` requests handled at once per process; more wait,
    /// before their body is read, so memory stays near this × `max_body_bytes` × a small factor.
    pub max_concurrent_ingest: usize,
    /// Serve HTTPS with this certificate chain (PEM, server certificate first) and
    /// `tls_key_file` (`WHALE_HTTP_TLS_CERT_FILE`). Both files are re-read when they change:
    /// a renewed certificate needs no restart.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1;
    /// `WHALE_HTTP_TLS_KEY_FILE`).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8080".into(),
            token: None,
            max_body_bytes: 16 * 1024 * 1024,
            max_items: 10_000,
            max_refusals: 20,
            rate_per_source: 0.0,
            burst_per_source: 0,
            max_concurrent_ingest: 8,
            request_timeout: Duration::from_secs(60),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// Rule evaluation (`[rules]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Longest time one jq predicate or template may run on one event; past it the step counts
    /// as not matching (match) or the task fails to render (render), naming the limit. Keeps a
    /// slow rule from stalling a whole batch. `0s` turns the time limit off (the step budget
    /// still applies).
    #[serde(deserialize_with = "de_duration")]
    pub eval_time_limit: Duration,
    /// Most elements a rule's `for_each` may yield for one event. Past it the rule fires for
    /// none of them and a `render_failed` record (field `for_each`) names the rule and the
    /// count; never a silent, partial fan-out.
    pub max_for_each_items: usize,
    /// How many times an execution result may feed back into the rules: a task fired by an
    /// event at chain depth `max_chain_depth` still runs, but its `whale.execution_finished`
    /// event is recorded as a rejection, not matched, so a rule firing on its own results
    /// stops. Ordinary events have depth 0.
    pub max_chain_depth: u32,
    /// Most versions `whale rules history` / `GET /v1/rules/history` list (newest first); a
    /// larger `limit` is refused with this name.
    pub max_history: usize,
    /// Largest diff `whale rules diff` / `GET /v1/rules/diff` returns, in bytes of unified diff
    /// text; past it the answer is refused with this name (ask for one file with `file`).
    pub max_diff_bytes: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            eval_time_limit: Duration::from_millis(100),
            max_for_each_items: 100,
            max_chain_depth: 3,
            max_history: 1000,
            max_diff_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Where the throttle's buckets live. One server: `redis://[user:password@]host:port[/db]`
    /// (`rediss://` for TLS). A Redis Cluster: `redis+cluster://[user:password@]host1:port,host2:port`
    /// (any reachable nodes; the rest are discovered). Sentinel:
    /// `redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>[/db]` (the
    /// password is the master's; `rediss+cluster://`, `rediss+sentinel://` for TLS).
    pub url: Secret,
    /// Password of the Sentinels themselves, when they require one (`requirepass` in
    /// sentinel.conf; `WHALE_REDIS_SENTINEL_PASSWORD`). Unset: Sentinels are asked without one.
    pub sentinel_password: Option<Secret>,
    /// Replicas that must hold a batch's decisions before they are acted on (Redis `WAIT`,
    /// `WHALE_REDIS_WAIT_REPLICAS`). `0` (default): act at once; a failover can then forget the
    /// decisions not yet replicated (docs/operations.md). `1` with Sentinel: a failover forgets
    /// none, but while no replica answers every task waits.
    pub wait_replicas: u32,
    /// Longest `WAIT` for those replicas; past it the batch's tasks wait and are asked again
    /// (the same answers: decisions are idempotent per task).
    #[serde(deserialize_with = "de_duration")]
    pub wait_timeout: Duration,
    /// CA bundle (PEM) trusted for a `rediss://` URL instead of the system's roots, e.g. a
    /// private CA (`WHALE_REDIS_TLS_CA`).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for a Redis that requires one (`tls-auth-clients yes`;
    /// `WHALE_REDIS_TLS_CERT`, `WHALE_REDIS_TLS_KEY`); set both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret::new("redis://127.0.0.1:6379"),
            sentinel_password: None,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// OpenSearch URL; unset → the embedded index in `dir`.
    pub opensearch_url: Option<String>,
    /// CA certificates (PEM) trusted for an `https://` OpenSearch URL in addition to the
    /// public roots (OpenSearch's security plugin with its own CA; `WHALE_OPENSEARCH_CA_FILE`).
    pub opensearch_ca_file: Option<PathBuf>,
    /// How whale authenticates to OpenSearch (`WHALE_OPENSEARCH_AUTH`): `basic` (default: HTTP
    /// basic with the `user:password` of `opensearch_url`, nothing when it has none), `none`, or
    /// `aws_sigv4` (every request signed with AWS Signature V4 for Amazon OpenSearch Service or
    /// Serverless; credentials from the standard AWS chain: environment, profile files, web
    /// identity, ECS, EC2 instance metadata, `credential_process`).
    pub opensearch_auth: OpenSearchAuth,
    /// AWS region for `aws_sigv4` (`WHALE_OPENSEARCH_AWS_REGION`); unset → `AWS_REGION`, then
    /// `AWS_DEFAULT_REGION`.
    pub opensearch_aws_region: Option<String>,
    /// AWS service signed for with `aws_sigv4` (`WHALE_OPENSEARCH_AWS_SERVICE`): `es` (Amazon
    /// OpenSearch Service, default) or `aoss` (OpenSearch Serverless).
    pub opensearch_aws_service: String,
    pub dir: PathBuf,
    /// Longest search query (`GET /v1/events?q=`, `whale events search`), in bytes.
    pub query_max_bytes: usize,
    /// Deepest query nesting: every `(` and every `NOT`/`!`/`-`/`+` adds a level (at most 128).
    pub query_max_depth: usize,
    /// Most clauses in one search, kind filter included (at most 1024, OpenSearch's default
    /// `indices.query.bool.max_clause_count`).
    pub query_max_clauses: usize,
    /// Most clauses in one search that walk a whole term dictionary with a pattern (wildcards,
    /// `field:*`, `_exists_:`) (at most 64).
    pub query_max_wildcards: usize,
    /// Most `*` and `?` in one query value (at most 8: each can double the pattern's automaton).
    pub query_max_wildcard_chars: usize,
    /// Most hits one search returns (`limit`).
    pub search_max_limit: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            opensearch_url: None,
            opensearch_ca_file: None,
            opensearch_auth: OpenSearchAuth::Basic,
            opensearch_aws_region: None,
            opensearch_aws_service: "es".into(),
            dir: PathBuf::from(".whale/index"),
            query_max_bytes: 4096,
            query_max_depth: 32,
            query_max_clauses: 256,
            query_max_wildcards: 8,
            query_max_wildcard_chars: 6,
            search_max_limit: 10_000,
        }
    }
}

/// `index.opensearch_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenSearchAuth {
    /// HTTP basic with the URL's `user:password` (none when the URL has none).
    #[default]
    Basic,
    /// No credentials (a URL with `user:password` is refused as a mistake).
    None,
    /// AWS Signature V4 (Amazon OpenSearch Service `es`, Serverless `aoss`).
    AwsSigv4,
}

impl std::str::FromStr for OpenSearchAuth {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "basic" => Ok(OpenSearchAuth::Basic),
            "none" => Ok(OpenSearchAuth::None),
            "aws_sigv4" => Ok(OpenSearchAuth::AwsSigv4),
            _ => bail!("index.opensearch_auth must be basic, none or aws_sigv4, not {s:?}"),
        }
    }
}

impl IndexConfig {
    fn check(&self) -> anyhow::Result<()> {
        if !["es", "aoss"].contains(&self.opensearch_aws_service.as_str()) {
            bail!(
                "index.opensearch_aws_service must be es (Amazon OpenSearch Service) or aoss (OpenSearch Serverless), not {:?}",
                self.opensearch_aws_service
            );
        }
        if self.query_max_bytes == 0 || self.search_max_limit == 0 {
            bail!("index.query_max_bytes and index.search_max_limit must be at least 1");
        }
        if !(1..=128).contains(&self.query_max_depth) {
            bail!("index.query_max_depth must be between 1 and 128 (deeper queries could overflow the stack)");
        }
        if !(1..=1024).contains(&self.query_max_clauses) {
            bail!("index.query_max_clauses must be between 1 and 1024 (OpenSearch refuses more by default)");
        }
        if self.query_max_wildcards > 64 {
            bail!(
                "index.query_max_wildcards must be at most 64 (each walks a whole term dictionary)"
            );
        }
        if !(1..=8).contains(&self.query_max_wildcard_chars) {
            bail!("index.query_max_wildcard_chars must be between 1 and 8 (each can double a pattern's automaton)");
        }
        if self.search_max_limit > 10_000 {
            bail!("index.search_max_limit must be at most 10000 (OpenSearch's index.max_result_window)");
        }
        Ok(())
    }
}

/// One StackStorm cluster.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Base URL, e.g. `https://st2.example.com` (whale appends /api/v1, /auth/v1, /stream/v1).
    pub url: String,
    /// Name of the environment variable holding the API key (keys never live in the file).
    pub api_key_env: Option<String>,
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// Most executions whale keeps in flight on this cluster.
    pub max_concurrent: Option<usize>,
    /// Cluster that takes this one's tasks while it is drained or failing.
    pub failover: Option<String>,
    /// CA certificates (PEM) trusted for an `https://` url in addition to the public roots,
    /// for a StackStorm behind a private CA.
    pub ca_file: Option<PathBuf>,
}

/// What dispatch does with a task whose `cluster` is not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownRoute {
    /// Send it to the cluster named `default` (dead letter if there is none).
    #[default]
    Default,
    /// Put it in the dead letter with the reason.
    DeadLetter,
}

/// The dispatch stage (`[dispatch]`): how tasks reach StackStorm and what happens when they cannot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Task for a cluster that is not configured: `"default"` or `"dead_letter"`.
    pub unknown_route: UnknownRoute,
    /// Failed StackStorm calls (5xx, timeouts, connection errors, 401/403) for one task before it
    /// goes to the dead letter with the last error. Waiting for a drained cluster does not count.
    pub max_attempts: u32,
    /// Delay after the first failed call; it doubles with each further failure (with jitter).
    #[serde(deserialize_with = "de_duration")]
    pub backoff_base: Duration,
    /// Longest delay between two attempts.
    #[serde(deserialize_with = "de_duration")]
    pub backoff_max: Duration,
    /// Consecutive failed calls to one cluster (per worker) that open its circuit breaker: its
    /// new tasks then go to its failover cluster, or wait.
    pub breaker_threshold: u32,
    /// How long an open breaker stays open before one probe (`GET /api/v1/`) may close it.
    #[serde(deserialize_with = "de_duration")]
    pub breaker_cooldown: Duration,
    /// Limit for one StackStorm request. A task's claim is leased for twice this while its
    /// execution is being created; a task redelivered meanwhile waits for the lease to end.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// How often a task waiting for a drained or failing cluster (no failover available) is
    /// looked at again.
    #[serde(deserialize_with = "de_duration")]
    pub wait_retry: Duration,
    /// How long a task may wait for its cluster before it goes to the dead letter. Keep it below
    /// `nats.pipe_retention`, which would otherwise drop the waiting task from the stream.
    #[serde(deserialize_with = "de_duration")]
    pub max_wait: Duration,
    /// StackStorm calls in flight per worker loop, over all clusters (each cluster's
    /// `max_concurrent` caps its own share).
    pub concurrency: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            unknown_route: UnknownRoute::Default,
            max_attempts: 10,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            wait_retry: Duration::from_secs(5),
            max_wait: Duration::from_secs(3600),
            concurrency: 64,
        }
    }
}

impl DispatchConfig {
    /// Refuses settings that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_attempts == 0 || self.breaker_threshold == 0 || self.concurrency == 0 {
            bail!("dispatch.max_attempts, dispatch.breaker_threshold and dispatch.concurrency must be at least 1");
        }
        if self.backoff_base.is_zero() || self.backoff_base > self.backoff_max {
            bail!("dispatch.backoff_base must be above zero and at most dispatch.backoff_max");
        }
        if self.request_timeout.is_zero() {
            bail!("dispatch.request_timeout must be above zero");
        }
        Ok(())
    }
}

/// How long the state whale keeps in KV lives (`[state]`), enforced by nats-server (bucket
/// `max_age`, per-message `Nats-TTL`); docs/limits.md "Lifetimes of state" says why each is safe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Dispatch claims (`whale_claims`), counted from their last write. Unset: the longest a task
    /// can still be redelivered, `nats.pipe_retention`. Never below it.
    #[serde(deserialize_with = "de_opt_duration")]
    pub claims: Option<Duration>,
    /// Execution index (`exec.*`, `exec-id.*`) and notification markers (`notified.*`) in
    /// `whale_state`: the bucket's max age (drains excepted). Never below `nats.pipe_retention`.
    #[serde(deserialize_with = "de_duration")]
    pub executions: Duration,
}

/// Bounds on what operators send (`[api]`): bodies of `/v1/approvals` and `/v1/executions`, and
/// the files of `whale schemas apply`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest body of an approvals or executions API call (413 above it).
    pub max_body_bytes: usize,
    /// Deepest JSON nesting in such a body (400 above it).
    pub max_depth: usize,
    /// Largest schema file `whale schemas apply` takes (a schema is one KV value).
    pub max_schema_bytes: usize,
    /// Deepest JSON nesting in a schema file.
    pub max_schema_depth: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 64 * 1024,
            max_depth: 32,
            max_schema_bytes: 512 * 1024,
            max_schema_depth: 64,
        }
    }
}

impl ApiConfig {
    /// The bounds of a schema file.
    pub fn schema_limits(&self) -> crate::envelope::Limits {
        crate::envelope::Limits {
            max_bytes: self.max_schema_bytes,
            max_depth: self.max_schema_depth,
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            claims: None,
            executions: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Config {
    /// How long a dispatch claim lives (`state.claims`, default `nats.pipe_retention`).
    pub fn claims_lifetime(&self) -> Duration {
        self.state.claims.unwrap_or(self.nats.pipe_retention)
    }

    /// How long a decided or timed-out approval is kept after its timeout: as long as the
    /// messages that could re-open it (`nats.pipe_retention`).
    pub fn approval_margin(&self) -> Duration {
        self.nats.pipe_retention
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// What kind of webhook a channel is; it decides the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// WeCom (企业微信) group robot: `{"msgtype": "markdown", "markdown": {"content": ...}}`.
    Wecom,
    /// Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// Any HTTP endpoint: the JSON record itself.
    Webhook,
}

/// One notification channel (`[channels.<name>]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// `wecom`, `slack` or `webhook`.
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// Webhook URL, for URLs that hold no secret (WeCom defaults to its robot endpoint).
    pub url: Option<String>,
    /// Environment variable holding the whole URL instead (Slack webhook URLs are secrets).
    pub url_env: Option<String>,
    /// Environment variable holding the key: the WeCom robot `key` query parameter, or a bearer
    /// token for generic webhooks.
    pub key_env: Option<String>,
    /// Message: a `{{ jq }}` template over `{event, task, result}`; default: a short summary.
    pub template: Option<String>,
    /// The URL to call, key included (filled from the environment; never printed).
    #[serde(skip)]
    pub endpoint: Option<Secret>,
    /// Bearer token for generic webhooks (from `key_env`).
    #[serde(skip)]
    pub bearer: Option<Secret>,
}

/// WeCom's group robot endpoint, used when a `wecom` channel gives only its key.
pub const WECOM_ROBOT_URL: &str = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send";

impl ChannelConfig {
    /// Fills `endpoint` and `bearer` from the file and the environment.
    fn resolve(&mut self, name: &str, var: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let from_env = |v: &str| {
            var(v).with_context(|| format!("channel {name:?} reads ${v}, which is not set"))
        };
        let url = match (&self.url, &self.url_env) {
            (Some(_), Some(_)) => bail!("channel {name:?}: give url or url_env, not both"),
            (Some(u), None) => Some(u.clone()),
            (None, Some(v)) => Some(from_env(v)?),
            (None, None) if self.kind == ChannelKind::Wecom => Some(WECOM_ROBOT_URL.to_owned()),
            (None, None) => bail!("channel {name:?} has no url: set url or url_env"),
        };
        let key = self.key_env.as_deref().map(from_env).transpose()?;
        let url = url.unwrap_or_default();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("channel {name:?}: the url is not an http(s) URL");
        }
        self.endpoint = Some(Secret::new(match (self.kind, key) {
            (ChannelKind::Wecom, Some(k)) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}key={k}")
            }
            (ChannelKind::Wecom, None) if !url.contains("key=") => {
                bail!("channel {name:?}: a WeCom robot needs its key: set key_env (or a url_env with ?key=)")
            }
            (ChannelKind::Slack, Some(_)) => {
                bail!("channel {name:?}: Slack webhook URLs carry their secret; use url_env, not key_env")
            }
            (ChannelKind::Webhook, Some(k)) => {
                self.bearer = Some(Secret::new(k));
                url
            }
            (_, None) => url,
        }));
        Ok(())
    }
}

/// The feedback stage (`[feedback]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// First look at a running execution after this; the wait doubles up to `poll_max`.
    #[serde(deserialize_with = "de_duration")]
    pub poll_min: Duration,
    /// Longest wait between two looks at a running execution (the most a result lags).
    #[serde(deserialize_with = "de_duration")]
    pub poll_max: Duration,
    /// Follow StackStorm's event stream; off (or disconnected) means every look is a GET.
    pub stream: bool,
    /// StackStorm calls and webhook posts in flight per worker loop.
    pub concurrency: usize,
    /// Limit for one webhook post.
    #[serde(deserialize_with = "de_duration")]
    pub notify_timeout: Duration,
    /// Posts to a failing channel before the notification is recorded as failed.
    pub notify_attempts: u32,
    /// Wait after the first failed post; doubles with each failure up to `notify_backoff_max`.
    #[serde(deserialize_with = "de_duration")]
    pub notify_backoff: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub notify_backoff_max: Duration,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            poll_min: Duration::from_millis(500),
            poll_max: Duration::from_secs(5),
            stream: true,
            concurrency: 32,
            notify_timeout: Duration::from_secs(10),
            notify_attempts: 5,
            notify_backoff: Duration::from_secs(1),
            notify_backoff_max: Duration::from_secs(60),
        }
    }
}

impl FeedbackConfig {
    /// Refuses settings that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.poll_min.is_zero() || self.poll_min > self.poll_max {
            bail!("feedback.poll_min must be above zero and at most feedback.poll_max");
        }
        if self.concurrency == 0 || self.notify_attempts == 0 || self.notify_timeout.is_zero() {
            bail!("feedback.concurrency, feedback.notify_attempts and feedback.notify_timeout must be above zero");
        }
        Ok(())
    }
}

/// The approval gate (`[approvals]`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Base URL people reach whale's HTTP server at, for the links (default `http://<http.addr>`).
    /// A link's confirmation POST with an `Origin` header of another origin is refused.
    pub public_url: Option<String>,
    /// Environment variable holding the link-signing secret (default `WHALE_APPROVAL_SECRET`).
    /// Without a secret, messages carry no links (CLI and HTTP API still decide). It needs at
    /// least 32 random bytes (`openssl rand -hex 32`): `whale run` refuses a weaker or
    /// placeholder one (see docs/security.md).
    pub secret_env: Option<String>,
    #[serde(skip)]
    pub secret: Option<Secret>,
    /// How long a link works after it is sent (never past the approval's timeout).
    #[serde(deserialize_with = "de_opt_duration")]
    pub link_ttl: Option<Duration>,
}

/// Every fixed environment variable whale reads (config overrides and process settings). Channels,
/// clusters and the approval secret may also name variables of their own in `whale.toml`
/// (`*_env` keys). Deployment manifests are checked against this list.
pub const ENV_VARS: &[&str] = &[
    "WHALE_CONFIG",
    "WHALE_LOG",
    "WHALE_LOG_FORMAT",
    "WHALE_NATS_URL",
    "WHALE_NATS_REPLICAS",
    "WHALE_NATS_USER",
    "WHALE_NATS_PASSWORD",
    "WHALE_NATS_TOKEN",
    "WHALE_NATS_CREDS",
    "WHALE_NATS_NKEY_SEED_FILE",
    "WHALE_NATS_INBOX_PREFIX",
    "WHALE_NATS_TLS_CA",
    "WHALE_NATS_TLS_CERT",
    "WHALE_NATS_TLS_KEY",
    "WHALE_REDIS_URL",
    "WHALE_REDIS_TLS_CA",
    "WHALE_REDIS_TLS_CERT",
    "WHALE_REDIS_TLS_KEY",
    "WHALE_REDIS_SENTINEL_PASSWORD",
    "WHALE_REDIS_WAIT_REPLICAS",
    "WHALE_OPENSEARCH_URL",
    "WHALE_OPENSEARCH_CA_FILE",
    "WHALE_OPENSEARCH_AUTH",
    "WHALE_OPENSEARCH_AWS_REGION",
    "WHALE_OPENSEARCH_AWS_SERVICE",
    "WHALE_INDEX_DIR",
    "WHALE_HTTP_ADDR",
    "WHALE_HTTP_TOKEN",
    "WHALE_HTTP_TLS_CERT_FILE",
    "WHALE_HTTP_TLS_KEY_FILE",
    "WHALE_RETENTION",
    "WHALE_MAX_EVENT_BYTES",
    "WHALE_ALLOW_UNKNOWN_TYPES",
    "WHALE_ST2_URL",
    "WHALE_ST2_API_KEY",
    "WHALE_APPROVAL_SECRET",
];

impl Config {
    /// Reads the file (if any) and applies the environment. `path` None → `WHALE_CONFIG`, then
    /// `./whale.toml` if it exists, else defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// As [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| env("WHALE_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("whale.toml")).filter(|p| p.exists()));
        let mut cfg = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                toml::from_str::<Config>(&text)
                    .with_context(|| format!("config file {} is invalid", p.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.check()?;
        cfg.hide_secrets();
        Ok(cfg)
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(v) = var("WHALE_NATS_URL") {
            self.nats.urls = v.split(',').map(|s| s.trim().to_owned()).collect();
        }
        if let Some(v) = var("WHALE_NATS_REPLICAS") {
            self.nats.replicas = v
                .parse()
                .context("WHALE_NATS_REPLICAS must be a number (1, or 3 for a 3-node cluster)")?;
        }
        if let Some(v) = var("WHALE_NATS_USER") {
            self.nats.user = Some(v);
        }
        if let Some(v) = var("WHALE_NATS_PASSWORD") {
            self.nats.password = Some(Secret::new(v));
        }
        if let Some(v) = var("WHALE_NATS_TOKEN") {
            self.nats.token = Some(Secret::new(v));
        }
        if let Some(v) = var("WHALE_NATS_CREDS") {
            self.nats.creds_file = Some(v.into());
        }
        if let Some(v) = var("WHALE_NATS_NKEY_SEED_FILE") {
            self.nats.nkey_seed_file = Some(v.into());
        }
        if let Some(v) = var("WHALE_NATS_INBOX_PREFIX") {
            self.nats.inbox_prefix = Some(v);
        }
        if let Some(v) = var("WHALE_NATS_TLS_CA") {
            self.nats.tls_ca = Some(v.into());
        }
        if let Some(v) = var("WHALE_NATS_TLS_CERT") {
            self.nats.tls_cert = Some(v.into());
        }
        if let Some(v) = var("WHALE_NATS_TLS_KEY") {
            self.nats.tls_key = Some(v.into());
        }
        if let Some(v) = var("WHALE_REDIS_URL") {
            self.redis.url = Secret::new(v);
        }
        if let Some(v) = var("WHALE_REDIS_TLS_CA") {
            self.redis.tls_ca = Some(v.into());
        }
        if let Some(v) = var("WHALE_REDIS_TLS_CERT") {
            self.redis.tls_cert = Some(v.into());
        }
        if let Some(v) = var("WHALE_REDIS_TLS_KEY") {
            self.redis.tls_key = Some(v.into());
        }
        if let Some(v) = var("WHALE_REDIS_SENTINEL_PASSWORD") {
            self.redis.sentinel_password = Some(Secret::new(v));
        }
        if let Some(v) = var("WHALE_REDIS_WAIT_REPLICAS") {
            self.redis.wait_replicas = v
                .parse()
                .context("WHALE_REDIS_WAIT_REPLICAS must be a number of replicas (0, 1, ...)")?;
        }
        if let Some(v) = var("WHALE_OPENSEARCH_URL") {
            self.index.opensearch_url = Some(v);
        }
        if let Some(v) = var("WHALE_OPENSEARCH_CA_FILE") {
            self.index.opensearch_ca_file = Some(v.into());
        }
        if let Some(v) = var("WHALE_OPENSEARCH_AUTH") {
            self.index.opensearch_auth = v.parse().context("WHALE_OPENSEARCH_AUTH")?;
        }
        if let Some(v) = var("WHALE_OPENSEARCH_AWS_REGION") {
            self.index.opensearch_aws_region = Some(v);
        }
        if let Some(v) = var("WHALE_OPENSEARCH_AWS_SERVICE") {
            self.index.opensearch_aws_service = v;
        }
        if let Some(v) = var("WHALE_INDEX_DIR") {
            self.index.dir = v.into();
        }
        if let Some(v) = var("WHALE_HTTP_ADDR") {
            self.http.addr = v;
        }
        if let Some(v) = var("WHALE_HTTP_TOKEN") {
            self.http.token = Some(Secret::new(v));
        }
        if let Some(v) = var("WHALE_HTTP_TLS_CERT_FILE") {
            self.http.tls_cert_file = Some(v.into());
        }
        if let Some(v) = var("WHALE_HTTP_TLS_KEY_FILE") {
            self.http.tls_key_file = Some(v.into());
        }
        if let Some(v) = var("WHALE_RETENTION") {
            self.events.retention = parse_duration(&v).context("WHALE_RETENTION")?;
        }
        if let Some(v) = var("WHALE_MAX_EVENT_BYTES") {
            self.events.max_bytes = v
                .parse()
                .context("WHALE_MAX_EVENT_BYTES must be a number of bytes")?;
        }
        if let Some(v) = var("WHALE_ALLOW_UNKNOWN_TYPES") {
            self.events.allow_unknown_types = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = var("WHALE_ST2_URL") {
            self.clusters.entry("default".into()).or_default().url = v;
        }
        if let Some(v) = var("WHALE_ST2_API_KEY") {
            self.clusters.entry("default".into()).or_default().api_key = Some(Secret::new(v));
        }
        for (name, c) in &mut self.channels {
            c.resolve(name, &var)?;
        }
        let secret_var = self
            .approvals
            .secret_env
            .as_deref()
            .unwrap_or("WHALE_APPROVAL_SECRET");
        if let Some(v) = var(secret_var) {
            self.approvals.secret = Some(Secret::new(v));
        }
        for (name, c) in &mut self.clusters {
            if let Some(var_name) = &c.api_key_env {
                match var(var_name) {
                    Some(k) => c.api_key = Some(Secret::new(k)),
                    None if c.api_key.is_none() => bail!(
                        "cluster {name:?} takes its API key from ${var_name}, which is not set"
                    ),
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// Tells the log writer every secret this configuration holds, so that no library's
    /// message can print one (see [`crate::telemetry::scrub`]).
    fn hide_secrets(&self) {
        use crate::telemetry::hide;
        let mut urls: Vec<&str> = self.nats.urls.iter().map(String::as_str).collect();
        urls.push(self.redis.url.expose());
        urls.extend(self.clusters.values().map(|c| c.url.as_str()));
        for u in urls {
            if let Some(s) = url_credential(u) {
                hide(s);
            }
        }
        let secrets = [
            &self.nats.password,
            &self.nats.token,
            &self.http.token,
            &self.approvals.secret,
            &self.redis.sentinel_password,
        ];
        for s in secrets.into_iter().flatten() {
            hide(s.expose());
        }
        for c in self.clusters.values() {
            if let Some(k) = &c.api_key {
                hide(k.expose());
            }
        }
        for c in self.channels.values() {
            if let Some(b) = &c.bearer {
                hide(b.expose());
            }
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.nats.urls.is_empty() {
            bail!("nats.urls is empty: set WHALE_NATS_URL or nats.urls in whale.toml");
        }
        if self.nats.replicas == 0 {
            bail!("nats.replicas must be at least 1");
        }
        if self.nats.ack_wait < Duration::from_secs(1) {
            bail!(
                "nats.ack_wait must be at least 1s (workers keep batches alive every third of it)"
            );
        }
        if self.http.request_timeout < Duration::from_secs(1) {
            bail!("http.request_timeout must be at least 1s");
        }
        self.dispatch.check()?;
        self.feedback.check()?;
        if !self.audit.retention.is_zero() && self.audit.retention < self.nats.duplicate_window {
            bail!("audit.retention ({}) is shorter than nats.duplicate_window ({}): JetStream refuses such a stream; keep audit records longer (default 400d)", humantime::format_duration(self.audit.retention), humantime::format_duration(self.nats.duplicate_window));
        }
        if self.audit.max_list == 0 {
            bail!("audit.max_list must be at least 1");
        }
        self.index.check()?;
        let pipe = self.nats.pipe_retention;
        if self.claims_lifetime() < pipe {
            bail!("state.claims ({}) is shorter than nats.pipe_retention ({}): a task still in the stream could lose its claim and run twice; raise state.claims or leave it unset", humantime::format_duration(self.claims_lifetime()), humantime::format_duration(pipe));
        }
        if self.state.executions < pipe {
            bail!("state.executions ({}) is shorter than nats.pipe_retention ({}): a redelivered result could notify twice; raise state.executions", humantime::format_duration(self.state.executions), humantime::format_duration(pipe));
        }
        for (name, c) in &self.clusters {
            if c.url.is_empty() {
                bail!("cluster {name:?} has no url");
            }
            if let Some(f) = &c.failover {
                if !self.clusters.contains_key(f) {
                    bail!("cluster {name:?} fails over to {f:?}, which is not configured");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_secrets_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("whale.toml");
        std::fs::write(
            &p,
            "[nats]\nurls = [\"nats://a:4222\"]\n[events]\nretention = \"2d\"\n[clusters.east]\nurl = \"http://east\"\napi_key_env = \"EAST_KEY\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "WHALE_NATS_URL" => Some("nats://x:1,nats://y:2".to_string()),
            "WHALE_ST2_URL" => Some("http://st2".to_string()),
            "WHALE_ST2_API_KEY" => Some("sekrit-key".to_string()),
            "EAST_KEY" => Some("east-sekrit".to_string()),
            _ => None,
        };
        let cfg = Config::load_with_env(Some(&p), &env).unwrap();
        assert_eq!(cfg.nats.urls, vec!["nats://x:1", "nats://y:2"]);
        assert_eq!(cfg.events.retention, Duration::from_secs(2 * 86400));
        assert_eq!(cfg.clusters["default"].url, "http://st2");
        assert_eq!(
            cfg.clusters["east"].api_key.as_ref().unwrap().expose(),
            "east-sekrit"
        );
        let dump = format!("{cfg:?}");
        assert!(!dump.contains("sekrit"), "secret leaked in Debug: {dump}");
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("whale.toml");
        std::fs::write(&p, "[nats]\nurl = \"x\"\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load_with_env(Some(&p), &|_| None).unwrap_err()
        );
        assert!(
            err.contains("whale.toml") && err.contains("unknown field"),
            "{err}"
        );
        std::fs::write(&p, "[events]\nretention = \"forever\"\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load_with_env(Some(&p), &|_| None).unwrap_err()
        );
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn every_variable_read_is_listed() {
        let src = include_str!("config.rs");
        let body = &src[src.find("fn apply_env").unwrap()..];
        let body = &body[..body.find("\n    }\n").unwrap()];
        for part in body.split("var(\"").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                ENV_VARS.contains(&name),
                "{name} is read but not in ENV_VARS"
            );
        }
    }

    #[test]
    fn urls_print_without_credentials() {
        let cases = [
            (
                "nats://user:hunter2@10.0.0.1:4222",
                "nats://user:***@10.0.0.1:4222",
            ),
            ("nats://s3cret-token@host:4222", "nats://***@host:4222"),
            (
                "http://st2:pa:ss@st2.example.com/api/v1/?x=1",
                "http://st2:***@st2.example.com/api/v1/?x=1",
            ),
            (
                "https://qyapi.weixin.qq.com/send?key=abc&debug=1",
                "https://qyapi.weixin.qq.com/send?key=***&debug=1",
            ),
            (
                "error sending request for url (http://a:b@h:9/api/v1/): refused",
                "error sending request for url (http://a:***@h:9/api/v1/): refused",
            ),
            (
                "cannot connect to NATS at nats://u:p@x:1,nats://u:p@y:2: down",
                "cannot connect to NATS at nats://u:***@x:1,nats://u:***@y:2: down",
            ),
            ("no url here", "no url here"),
            ("http://plain.example/a?b=c", "http://plain.example/a?b=c"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn replicas_from_env() {
        let cfg =
            Config::load_with_env(None, &|k| (k == "WHALE_NATS_REPLICAS").then(|| "3".into()))
                .unwrap();
        assert_eq!(cfg.nats.replicas, 3);
        let err =
            Config::load_with_env(None, &|k| (k == "WHALE_NATS_REPLICAS").then(|| "x".into()))
                .unwrap_err();
        assert!(format!("{err:#}").contains("WHALE_NATS_REPLICAS"));
    }
}
