//! Who may call which HTTP route: named API tokens (stored as SHA-256 hashes), their roles, the
//! route-by-route policy table, and the one middleware that enforces it in front of every
//! handler. A route without a policy is refused, so a route added later cannot be open by
//! accident; handlers read the caller's [`Principal`] from the request instead of checking
//! tokens themselves.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::http::{error, media_type};

/// What a principal may do. `viewer` ⊂ `operator` ⊂ `admin`; `producer` only posts events
/// (and `admin`, which may do everything, may post events too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Producer,
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether a principal with this role may call a route that needs `need`.
    pub fn allows(self, need: Role) -> bool {
        match (self, need) {
            (Role::Admin, _) => true,
            (Role::Producer, n) => n == Role::Producer,
            (Role::Operator, n) => matches!(n, Role::Operator | Role::Viewer),
            (Role::Viewer, n) => n == Role::Viewer,
        }
    }
}

/// The access a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can reach the port (health probes).
    Public,
    /// A principal whose role allows this one.
    Role(Role),
    /// An approval link: public when the request carries a signature (`sig=` in the query; the
    /// handler checks it), otherwise an API call that needs `operator`.
    SignedLink,
    /// A page or form of the operator console (`src/console`): a signed-in browser session
    /// (or a bearer token) whose role allows this one. Without credentials a page redirects to
    /// the sign-in page instead of answering JSON; a form needs a same-origin `Origin` (its
    /// CSRF token is checked by the console).
    Console(Role),
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Role(r) => r.as_str(),
            Access::SignedLink => "signed-link",
            Access::Console(Role::Producer) => "console:producer",
            Access::Console(Role::Viewer) => "console:viewer",
            Access::Console(Role::Operator) => "console:operator",
            Access::Console(Role::Admin) => "console:admin",
        }
    }
}

/// What a route's body must be, checked before the handler reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body expected (GET) or not checked.
    Any,
    /// `Content-Type: application/json` (415 otherwise).
    Json,
    /// Events: JSON, `application/*+json`, NDJSON, or CloudEvents binary mode (`ce-specversion`
    /// set) with any type.
    Events,
    /// `application/x-www-form-urlencoded`: a console form.
    Form,
}

/// One row of the policy table.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub method: &'static str,
    /// The route pattern exactly as the router declares it (axum's `MatchedPath`).
    pub route: &'static str,
    pub access: Access,
    pub body: Body,
}

const fn p(method: &'static str, route: &'static str, access: Access, body: Body) -> Policy {
    Policy {
        method,
        route,
        access,
        body,
    }
}

const VIEWER: Access = Access::Role(Role::Viewer);
const OPERATOR: Access = Access::Role(Role::Operator);
const PAGE: Access = Access::Console(Role::Viewer);
const PAGE_ACTION: Access = Access::Console(Role::Operator);

/// Every route `whale run` serves and what it needs. A route missing here is refused (403) and
/// logged; `tests/it/security/auth.rs` checks that this table covers every route declared in
/// the source and walks each one.
pub const POLICIES: &[Policy] = &[
    p("GET", "/healthz", Access::Public, Body::Any),
    p("GET", "/readyz", Access::Public, Body::Any),
    p("GET", "/metrics", VIEWER, Body::Any),
    p(
        "POST",
        "/v1/events",
        Access::Role(Role::Producer),
        Body::Events,
    ),
    p("GET", "/v1/events", VIEWER, Body::Any),
    p(
        "POST",
        "/v1/hooks/{name}",
        Access::Role(Role::Producer),
        Body::Events,
    ),
    p("GET", "/v1/executions", VIEWER, Body::Any),
    p("GET", "/v1/executions/{id}", VIEWER, Body::Any),
    p("GET", "/v1/executions/{id}/logs", VIEWER, Body::Any),
    p("POST", "/v1/executions/{id}/{action}", OPERATOR, Body::Json),
    p("GET", "/v1/dead-letters", VIEWER, Body::Any),
    p("GET", "/v1/dead-letters/{id}", VIEWER, Body::Any),
    p("POST", "/v1/dead-letters/{id}/retry", OPERATOR, Body::Json),
    p("GET", "/v1/approvals", VIEWER, Body::Any),
    p("POST", "/v1/approvals", OPERATOR, Body::Json),
    p("GET", "/v1/approvals/{id}", VIEWER, Body::Any),
    p(
        "GET",
        "/v1/approvals/{id}/{action}",
        Access::SignedLink,
        Body::Any,
    ),
    p(
        "POST",
        "/v1/approvals/{id}/{action}",
        Access::SignedLink,
        Body::Json,
    ),
    // Read-only oversight (docs/security.md "Audit trail"): an auditor needs no power to act.
    p("GET", "/v1/audit", VIEWER, Body::Any),
    // Rule-set versions (served by every `whale run`): reading for viewers, rollback changes
    // the rules, so admin, as `whale rules apply` is an admin's act.
    p("GET", "/v1/rules", VIEWER, Body::Any),
    p("GET", "/v1/rules/history", VIEWER, Body::Any),
    p("GET", "/v1/rules/diff", VIEWER, Body::Any),
    p(
        "POST",
        "/v1/rules/rollback",
        Access::Role(Role::Admin),
        Body::Json,
    ),
    // The operator console (docs/console.md): pages are viewer, actions operator.
    p("GET", "/", Access::Public, Body::Any),
    p("GET", "/ui/assets/{file}", Access::Public, Body::Any),
    p("GET", "/ui/sign-in", Access::Public, Body::Any),
    p("POST", "/ui/sign-in", Access::Public, Body::Any),
    p("GET", "/ui/lang/{lang}", Access::Public, Body::Any),
    p("POST", "/ui/sign-out", PAGE, Body::Form),
    p("GET", "/ui/", PAGE, Body::Any),
    p("GET", "/ui/live", PAGE, Body::Any),
    p("GET", "/ui/events", PAGE, Body::Any),
    p("GET", "/ui/trace/{id}", PAGE, Body::Any),
    p("GET", "/ui/executions", PAGE, Body::Any),
    p("GET", "/ui/executions/{id}", PAGE, Body::Any),
    p(
        "POST",
        "/ui/executions/{id}/{action}",
        PAGE_ACTION,
        Body::Form,
    ),
    p("GET", "/ui/approvals", PAGE, Body::Any),
    p(
        "POST",
        "/ui/approvals/{id}/{action}",
        PAGE_ACTION,
        Body::Form,
    ),
    p("GET", "/ui/dead-letters", PAGE, Body::Any),
    p(
        "POST",
        "/ui/dead-letters/{id}/retry",
        PAGE_ACTION,
        Body::Form,
    ),
    p("GET", "/ui/audit", PAGE, Body::Any),
    p("GET", "/ui/rules", PAGE, Body::Any),
    p("POST", "/ui/rules/try", PAGE_ACTION, Body::Form),
    p("GET", "/ui/rules/diff", PAGE, Body::Any),
    p("POST", "/ui/rules/backtest", PAGE_ACTION, Body::Form),
    // Rollback changes the rules: admin, as `POST /v1/rules/rollback`.
    p(
        "POST",
        "/ui/rules/rollback",
        Access::Console(Role::Admin),
        Body::Form,
    ),
];

/// The policy of `method` on the route pattern `route` (HEAD follows GET).
pub fn policy(method: &Method, route: &str) -> Option<&'static Policy> {
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    POLICIES.iter().find(|p| p.method == m && p.route == route)
}

/// The authenticated caller, put in the request's extensions for handlers: its name is what
/// approvals and execution actions record as "who".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    /// None: no auth is configured (`anonymous`) or an approval link (the signature decides).
    pub role: Option<Role>,
}

impl Principal {
    /// The caller when no auth is configured.
    pub fn anonymous() -> Self {
        Principal {
            name: "anonymous".into(),
            role: None,
        }
    }
}

/// The caller of a handler: the principal the auth layer put in the request, else anonymous
/// (a router served without the layer, as in some tests).
pub fn principal(p: Option<axum::Extension<Principal>>) -> Principal {
    p.map_or_else(Principal::anonymous, |axum::Extension(p)| p)
}

/// One API token in `[[auth.tokens]]` or `auth.tokens_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The principal's name, recorded as "who".
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token (`whale auth hash-token` prints it).
    pub sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// The SHA-256 of a token, as stored in config.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The line to paste into `whale.toml` for a token.
pub fn token_line(name: &str, role: Role, token: &str) -> String {
    format!(
        "[[auth.tokens]]\nname = {}\nrole = \"{}\"\nsha256 = \"{}\"",
        toml_str(name),
        role.as_str(),
        hex::encode(hash_token(token))
    )
}

fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Name of the admin principal `WHALE_HTTP_TOKEN` (`http.token`) stands for.
pub const HTTP_TOKEN_PRINCIPAL: &str = "http-token";

struct Known {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// What `auth.tokens_file` held when last read: its text (taken or refused), or why it could not
/// be read.
#[derive(PartialEq)]
enum Seen {
    Text(String),
    Unreadable(String),
}

/// Longest `auth.tokens_file` read (a file of hashes: a few hundred bytes per token).
const MAX_TOKENS_FILE_BYTES: u64 = 1024 * 1024;

/// How often a running whale reads `auth.tokens_file` again ([`Auth::watch_tokens_file`]): how
/// long a token removed from the file may still be used.
pub const TOKENS_FILE_POLL: Duration = Duration::from_secs(2);

/// The principals whale knows: from `[auth]` and `http.token` at start, and from
/// `auth.tokens_file` whenever it changes ([`Auth::watch_tokens_file`]).
pub struct Auth {
    /// The tokens now known: `[[auth.tokens]]`, `http.token` and the tokens file's entries.
    known: RwLock<Vec<Known>>,
    /// `[[auth.tokens]]` and `http.token`'s hash (fixed for the process), to rebuild `known`.
    fixed: Vec<TokenEntry>,
    http_token: Option<[u8; 32]>,
    /// `auth.tokens_file` and what it held when last read.
    tokens_file: Option<(PathBuf, std::sync::Mutex<Seen>)>,
    /// Whether any principal was configured at start; fixed for the process, so a tokens file
    /// emptied later leaves every route closed, never open.
    enabled: bool,
    oidc: Option<crate::oidc::Oidc>,
    proxies: Proxies,
    /// The console's signed session cookies (`Access::Console` routes).
    sessions: Option<Arc<crate::session::Sessions>>,
}

/// `auth.trusted_proxies` and what their identity header grants.
struct Proxies {
    nets: Vec<ipnet::IpNet>,
    header: header::HeaderName,
    role: Option<Role>,
    roles: std::collections::BTreeMap<String, Role>,
}

impl Proxies {
    fn from_config(a: &crate::config::AuthConfig) -> anyhow::Result<Proxies> {
        let mut nets = Vec::new();
        for s in &a.trusted_proxies {
            let net = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| {
                    format!("auth.trusted_proxies: {s:?} is not an IP address or CIDR (e.g. 10.0.0.5 or 10.1.0.0/16)")
                })?;
            nets.push(net);
        }
        let name = a.proxy_user_header.as_deref().unwrap_or("X-Forwarded-User");
        let header = header::HeaderName::from_bytes(name.as_bytes()).with_context(|| {
            format!("auth.proxy_user_header {name:?} is not a valid header name")
        })?;
        if nets.is_empty() && (a.proxy_role.is_some() || !a.proxy_roles.is_empty()) {
            bail!("auth.proxy_role / auth.proxy_roles are set but auth.trusted_proxies is empty: list the proxies' addresses");
        }
        Ok(Proxies {
            nets,
            header,
            role: a.proxy_role,
            roles: a.proxy_roles.clone(),
        })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:a.b.c.d`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client a request comes from ("from where"), put in the request's extensions by the
/// auth layer: the TCP peer, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not one. None when the server did not record peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The TCP peer of a connection, recorded by [`crate::http::serve`] (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Most `X-Forwarded-For` entries looked at (from the right).
const MAX_FORWARDED_HOPS: usize = 32;

/// Longest proxy user name accepted from the identity header.
const MAX_PROXY_USER_BYTES: usize = 256;

impl Auth {
    /// Reads `[[auth.tokens]]`, `auth.tokens_file` and `http.token`. Errors name the entry
    /// and what to fix.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Auth> {
        let fixed = cfg.auth.tokens.clone();
        let mut file_entries = Vec::new();
        let tokens_file = match &cfg.auth.tokens_file {
            Some(path) => {
                let text = read_tokens_text(path)?;
                file_entries = parse_tokens_file(path, &text)?;
                Some((path.clone(), std::sync::Mutex::new(Seen::Text(text))))
            }
            None => None,
        };
        let http_token = cfg
            .http
            .token
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(|t| hash_token(t.expose()));
        let known = known_tokens(&fixed, file_entries, http_token)?;
        let oidc = match &cfg.auth.oidc {
            Some(o) => Some(crate::oidc::Oidc::new(o)?),
            None => None,
        };
        let proxies = Proxies::from_config(&cfg.auth)?;
        let enabled = !known.is_empty()
            || tokens_file.is_some()
            || oidc.is_some()
            || !proxies.nets.is_empty();
        Ok(Auth {
            known: RwLock::new(known),
            fixed,
            http_token,
            tokens_file,
            enabled,
            oidc,
            proxies,
            sessions: None,
        })
    }

    /// Reads `auth.tokens_file` again every [`TOKENS_FILE_POLL`] while `auth` is in use, so a
    /// token added to or removed from the file (a rotated Secret) is known or refused within
    /// that time, without a restart; its console sessions follow on their next request. A file
    /// that cannot be read or is invalid is logged as an error and the tokens known before stay
    /// (fix the file; the next good version is taken). Nothing to do without a tokens file.
    pub fn watch_tokens_file(auth: &Arc<Auth>) {
        if auth.tokens_file.is_none() {
            return;
        }
        let weak = Arc::downgrade(auth);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TOKENS_FILE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(auth) = weak.upgrade() else { return };
                let a = auth.clone();
                // File reads block: off the runtime's workers.
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || a.reload_tokens_file()).await
                {
                    tracing::error!(
                        "{e:#}; the tokens known before stay in force until the file is fixed"
                    );
                }
            }
        });
    }

    /// Reads `auth.tokens_file` and, when its text changed and is valid, makes its entries the
    /// known file tokens. `Ok(true)` when the tokens changed. A file that cannot be read or is
    /// invalid is an `Err` once; read again unchanged, it is `Ok(false)` (one log line per
    /// broken version, not one every poll).
    pub fn reload_tokens_file(&self) -> anyhow::Result<bool> {
        let Some((path, last)) = &self.tokens_file else {
            return Ok(false);
        };
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        let text = match read_tokens_text(path) {
            Ok(text) => text,
            Err(e) => {
                let seen = Seen::Unreadable(format!("{e:#}"));
                return if *last == seen {
                    Ok(false)
                } else {
                    *last = seen;
                    Err(e)
                };
            }
        };
        if *last == Seen::Text(text.clone()) {
            return Ok(false);
        }
        let parsed = parse_tokens_file(path, &text)
            .and_then(|file| known_tokens(&self.fixed, file, self.http_token));
        let known = match parsed {
            Ok(known) => known,
            Err(e) => {
                *last = Seen::Text(text);
                return Err(e);
            }
        };
        let names = |v: &[Known]| v.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        tracing::info!(
            file = %path.display(),
            tokens = ?names(&known),
            "auth.tokens_file changed: these tokens are now known"
        );
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = known;
        *last = Seen::Text(text);
        Ok(true)
    }

    /// Accepts the console's session cookies (signed with `sessions`' key) on console routes.
    pub fn with_sessions(mut self, sessions: Arc<crate::session::Sessions>) -> Auth {
        self.sessions = Some(sessions);
        self
    }

    /// The console's session signer, when set.
    pub fn sessions(&self) -> Option<&Arc<crate::session::Sessions>> {
        self.sessions.as_ref()
    }

    /// The principal a console session stands for, as whale knows it now: a named token's
    /// current role (None when the token was removed from the config, or its role is now
    /// `producer`); an OIDC or proxy principal while that way of signing in is still
    /// configured; `anonymous` only while no auth is configured.
    pub fn session_principal(&self, s: &crate::session::Session) -> Option<Principal> {
        let known_role = {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            known.iter().find(|k| k.name == s.name).map(|k| k.role)
        };
        let role = if let Some(role) = known_role {
            role
        } else if (s.name.starts_with("oidc:") && self.oidc.is_some())
            || (s.name.starts_with("proxy:") && !self.proxies.nets.is_empty())
            || (s.name == "anonymous" && !self.enabled())
        {
            s.role
        } else {
            return None;
        };
        (role != Role::Producer).then(|| Principal {
            name: s.name.clone(),
            role: Some(role),
        })
    }

    /// Whether any principal was configured at start (tokens, a tokens file even while it lists
    /// none, OIDC or trusted proxies); without one every route is open (loopback only).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Where a request comes from: the peer, or what a trusted proxy says in
    /// `X-Forwarded-For` (the nearest address that is not itself a trusted proxy).
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.proxies.trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = canonical(ip);
            if !self.proxies.trusted(client) {
                break;
            }
        }
        client
    }

    /// The caller of a request: a bearer token (named token or OIDC JWT), else the identity
    /// header of a trusted proxy. `Ok` with `role: None` is a known caller without a role
    /// (403); `Err` says why the request is not authenticated (401), never echoing a token.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Principal, String> {
        if let Some(t) = bearer(headers) {
            if let Some(p) = self.principal(t) {
                return Ok(p);
            }
            if let Some(o) = self
                .oidc
                .as_ref()
                .filter(|_| crate::oidc::Oidc::looks_like_jwt(t))
            {
                return o.principal(t).map_err(|r| r.0);
            }
            return Err("unknown bearer token: send `Authorization: Bearer <token>` with a token whale knows".into());
        }
        if let Some(user) = headers.get(&self.proxies.header) {
            if !peer.is_some_and(|ip| self.proxies.trusted(ip)) {
                tracing::info!(
                    peer = ?peer,
                    header = %self.proxies.header,
                    "ignored an identity header from a peer that is not in auth.trusted_proxies"
                );
                return Err(format!(
                    "no credentials: the {} header is believed only from auth.trusted_proxies; send `Authorization: Bearer <token>`",
                    self.proxies.header
                ));
            }
            let user = user.to_str().unwrap_or("").trim();
            if user.is_empty()
                || user.len() > MAX_PROXY_USER_BYTES
                || user.chars().any(char::is_control)
            {
                return Err(format!(
                    "the trusted proxy's {} header is empty, over {MAX_PROXY_USER_BYTES} bytes or not plain text",
                    self.proxies.header
                ));
            }
            return Ok(Principal {
                name: format!("proxy:{user}"),
                role: self.proxies.roles.get(user).copied().or(self.proxies.role),
            });
        }
        Err(
            "missing bearer token: send `Authorization: Bearer <token>` with a token whale knows"
                .into(),
        )
    }

    /// The principal a bearer token stands for. Every known hash is compared, in constant time,
    /// whatever matches.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        let given = hash_token(token);
        let mut found = None;
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        for k in known.iter() {
            if constant_time_eq(&given, &k.hash) && found.is_none() {
                found = Some(Principal {
                    name: k.name.clone(),
                    role: Some(k.role),
                });
            }
        }
        found
    }
}

/// `entries` as known tokens, checked: hex hashes, non-empty names, no name twice (`fixed`, the
/// config's own tokens, come first), then `http.token`'s hash as [`HTTP_TOKEN_PRINCIPAL`].
/// Errors name the entry and what to fix.
fn known_tokens(
    fixed: &[TokenEntry],
    file: Vec<TokenEntry>,
    http_token: Option<[u8; 32]>,
) -> anyhow::Result<Vec<Known>> {
    let mut known = Vec::new();
    for e in fixed.iter().cloned().chain(file) {
        let hash = decode_hash(&e.sha256).with_context(|| {
            format!(
                "auth token {:?}: sha256 must be 64 hex digits (make it with `whale auth hash-token`)",
                e.name
            )
        })?;
        if e.name.trim().is_empty() {
            bail!("an auth token has an empty name: give every token a name (it is recorded as who acted)");
        }
        if known.iter().any(|k: &Known| k.name == e.name) {
            bail!(
                "auth token name {:?} appears twice: names identify principals, make them unique",
                e.name
            );
        }
        known.push(Known {
            name: e.name,
            role: e.role,
            hash,
        });
    }
    if let Some(hash) = http_token {
        known.push(Known {
            name: HTTP_TOKEN_PRINCIPAL.into(),
            role: Role::Admin,
            hash,
        });
    }
    Ok(known)
}

fn read_tokens_text(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let what = || {
        format!(
            "cannot read auth.tokens_file {}: mount the tokens Secret there or remove the key",
            path.display()
        )
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(what)?
        .take(MAX_TOKENS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(what)?;
    if text.len() as u64 > MAX_TOKENS_FILE_BYTES {
        bail!(
            "auth.tokens_file {} is over {} KiB: it should hold only `[[tokens]]` entries (name, role, sha256)",
            path.display(),
            MAX_TOKENS_FILE_BYTES / 1024
        );
    }
    Ok(text)
}

fn parse_tokens_file(path: &Path, text: &str) -> anyhow::Result<Vec<TokenEntry>> {
    let f: TokensFile = toml::from_str(text).with_context(|| {
        format!(
            "auth.tokens_file {} is invalid: it holds `[[tokens]]` entries with name, role and sha256",
            path.display()
        )
    })?;
    Ok(f.tokens)
}

fn decode_hash(s: &str) -> anyhow::Result<[u8; 32]> {
    let v = hex::decode(s.trim())?;
    v.try_into().map_err(|_| anyhow::anyhow!("not 32 bytes"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `addr` (`host:port`) listens only on a loopback address.
pub fn is_loopback(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.ip().is_loopback();
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Applies the policy table to every route of `router` (call it after every merge, before
/// [`crate::http::harden`]).
pub fn layer(router: Router, auth: Arc<Auth>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(auth, enforce))
}

async fn enforce(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| c.0 .0.ip());
    if let Some(ip) = peer {
        let client = auth.client_addr(ip, req.headers());
        req.extensions_mut().insert(ClientAddr(client));
    }
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        // No route matched: the router answers 404 itself.
        return next.run(req).await;
    };
    let Some(pol) = policy(req.method(), &route) else {
        tracing::warn!(method = %req.method(), route, "refused: this route has no access policy (auth::POLICIES)");
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "{} {route} has no access policy, so it is refused: add it to whale's policy table",
                req.method()
            ),
            json!({"route": route}),
        );
    };
    if let Access::Console(need) = pol.access {
        return console_gate(&auth, need, pol.body, req, next, peer).await;
    }
    let signed = pol.access == Access::SignedLink && is_link_request(&req);
    let principal = if pol.access == Access::Public || signed {
        Principal {
            name: if signed {
                "link".into()
            } else {
                "anonymous".into()
            },
            role: None,
        }
    } else if !auth.enabled() {
        Principal::anonymous()
    } else {
        let need = match pol.access {
            Access::Role(r) => r,
            _ => Role::Operator,
        };
        let from = req
            .extensions()
            .get::<ClientAddr>()
            .map_or_else(String::new, |c| c.0.to_string());
        let p = match auth.authenticate(req.headers(), peer) {
            Ok(p) => p,
            Err(why) => {
                tracing::info!(%from, route, "refused (401): {why}");
                return error(
                    StatusCode::UNAUTHORIZED,
                    why,
                    json!({"needs_role": need.as_str()}),
                );
            }
        };
        if !p.role.is_some_and(|r| r.allows(need)) {
            tracing::info!(principal = %p.name, %from, route, "refused: role {} needed", need.as_str());
            let has = match p.role {
                Some(r) => format!("has role {}", r.as_str()),
                None => {
                    "has no whale role (none of its groups or claim values is mapped to one)".into()
                }
            };
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "principal {:?} {has}, this route needs {}",
                    p.name,
                    need.as_str()
                ),
                json!({"needs_role": need.as_str()}),
            );
        }
        p
    };
    if !signed {
        if let Err(r) = check_type(pol.body, req.headers()) {
            return r;
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// How a console request was authenticated, for the console's CSRF check: a browser session
/// (its forms carry the session's token), a bearer token (no cookie, nothing to forge), or no
/// auth configured (forms carry the `anonymous` token).
#[derive(Debug, Clone)]
pub enum ConsoleAuth {
    Session(crate::session::Session),
    Bearer,
    Open,
}

/// A console route: the session cookie, else a bearer token, else (no auth configured) open.
/// A page without credentials redirects to sign-in; refusals are short HTML pages.
async fn console_gate(
    auth: &Auth,
    need: Role,
    body: Body,
    mut req: Request,
    next: Next,
    peer: Option<IpAddr>,
) -> Response {
    let is_read = req.method() == Method::GET || req.method() == Method::HEAD;
    let bearer_given = bearer(req.headers()).is_some();
    if !is_read && !bearer_given && !same_origin(req.headers()) {
        return console_refusal(
            StatusCode::FORBIDDEN,
            "this form did not come from the console's own origin (Origin/Referer header): reload the page and try again",
        );
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let session = auth.sessions.as_ref().and_then(|s| {
        crate::session::cookie(req.headers(), crate::session::COOKIE).and_then(|v| s.verify(v, now))
    });
    // A session stands for a principal whale still knows (a token removed from the config ends
    // its sessions; a changed role applies at once).
    let session = session.and_then(|s| auth.session_principal(&s).map(|p| (p, s)));
    let (principal, how) = if let Some((p, s)) = session {
        (p, ConsoleAuth::Session(s))
    } else if bearer_given && auth.enabled() {
        match auth.authenticate(req.headers(), peer) {
            Ok(p) => (p, ConsoleAuth::Bearer),
            Err(why) => return console_refusal(StatusCode::UNAUTHORIZED, &why),
        }
    } else if !auth.enabled() {
        (Principal::anonymous(), ConsoleAuth::Open)
    } else if is_read {
        let next_url = req
            .uri()
            .path_and_query()
            .map_or("/ui/", |p| p.as_str())
            .to_owned();
        let to = format!("/ui/sign-in?next={}", url_escape(&next_url));
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, to)
            .body(axum::body::Body::empty())
            .unwrap_or_default();
    } else {
        return console_refusal(
            StatusCode::UNAUTHORIZED,
            "your console session has expired or you are not signed in: sign in again at /ui/sign-in",
        );
    };
    if auth.enabled() && !principal.role.is_some_and(|r| r.allows(need)) {
        let has = principal.role.map_or("no role", |r| r.as_str());
        tracing::info!(principal = %principal.name, "console: refused, role {} needed", need.as_str());
        let mut r = console_refusal(
            StatusCode::FORBIDDEN,
            &format!(
                "{} has role {has}; this needs the {} role. Ask an administrator, or sign in with another token.",
                principal.name,
                need.as_str()
            ),
        );
        r.headers_mut().insert(
            "x-whale-needs-role",
            header::HeaderValue::from_static(need.as_str()),
        );
        return r;
    }
    if !is_read {
        if let Err(r) = check_type(body, req.headers()) {
            return r;
        }
    }
    req.extensions_mut().insert(principal);
    req.extensions_mut().insert(how);
    next.run(req).await
}

/// Whether a form post names the console's own origin: `Origin` (or, without it, `Referer`)
/// has the request's `Host` as its authority.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(from) = from else {
        return false;
    };
    let authority = from
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
    authority == Some(host)
}

/// Percent-encodes what is not unreserved (a redirect target in a query).
pub fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A console refusal: a short HTML page with a link to sign in (never JSON to a browser).
fn console_refusal(code: StatusCode, why: &str) -> Response {
    let esc = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let html = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>whale: {code}</title>\
         <main><h1>{code}</h1><p id=\"refusal\">{esc}</p><p><a href=\"/ui/sign-in\">Sign in</a> · <a href=\"/ui/\">Console</a></p></main></html>"
    );
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(axum::body::Body::from(html))
        .unwrap_or_default()
}

/// An approval link (GET opens it; POST with `sig=` in the query or a form body confirms it):
/// the handler checks the signature. Any other request on a link route is an API call.
fn is_link_request(req: &Request) -> bool {
    let form = media_type(req.headers()) == "application/x-www-form-urlencoded";
    req.method() == Method::GET
        || req.method() == Method::HEAD
        || form
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sig=")))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

#[allow(clippy::result_large_err)]
fn check_type(body: Body, headers: &HeaderMap) -> Result<(), Response> {
    let ct = media_type(headers);
    let ok = match body {
        Body::Any => true,
        Body::Json => ct == "application/json",
        Body::Form => ct == "application/x-www-form-urlencoded",
        Body::Events => {
            headers.contains_key("ce-specversion")
                || ct == "application/json"
                || (ct.starts_with("application/") && ct.ends_with("+json"))
                || ct == "application/x-ndjson"
                || ct == "application/jsonl"
        }
    };
    if ok {
        return Ok(());
    }
    let accepted = match body {
        Body::Events => "application/json, application/x-ndjson, application/cloudevents+json, or CloudEvents binary mode (ce-specversion)",
        Body::Form => "application/x-www-form-urlencoded (a console form)",
        _ => "application/json",
    };
    Err(error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "Content-Type {:?} is not accepted here: send {accepted}",
            if ct.is_empty() { "(none)" } else { ct.as_str() }
        ),
        json!({"accepted": accepted}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_producer_is_separate() {
        assert!(Role::Admin.allows(Role::Producer));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert!(!Role::Producer.allows(Role::Viewer));
        assert!(!Role::Operator.allows(Role::Producer));
        assert!(!Role::Operator.allows(Role::Admin));
    }

    #[test]
    fn tokens_resolve_to_their_principal() {
        let mut cfg = Config::default();
        cfg.auth.tokens.push(TokenEntry {
            name: "am".into(),
            role: Role::Producer,
            sha256: hex::encode(hash_token("tok-a")),
        });
        cfg.http.token = Some(crate::Secret::new("legacy"));
        let a = Auth::from_config(&cfg).unwrap();
        assert_eq!(a.principal("tok-a").unwrap().name, "am");
        assert_eq!(a.principal("legacy").unwrap().role, Some(Role::Admin));
        assert!(a.principal("tok-b").is_none());
        cfg.auth.tokens[0].sha256 = "abc".into();
        assert!(Auth::from_config(&cfg).is_err());
    }

    /// `reload_tokens_file`: a changed file replaces the file's tokens (the config's and
    /// `http.token` stay), an unchanged one is not re-parsed, a broken one changes nothing, and
    /// an empty file keeps auth on with nobody let in.
    #[test]
    fn a_reloaded_tokens_file_replaces_its_tokens_and_a_broken_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        let entry = |name: &str, token: &str| {
            format!(
                "[[tokens]]\nname = \"{name}\"\nrole = \"viewer\"\nsha256 = \"{}\"\n",
                hex::encode(hash_token(token))
            )
        };
        std::fs::write(&file, entry("a", "tok-a")).unwrap();
        let mut cfg = Config::default();
        cfg.auth.tokens_file = Some(file.clone());
        cfg.auth.tokens.push(TokenEntry {
            name: "cfg".into(),
            role: Role::Admin,
            sha256: hex::encode(hash_token("tok-cfg")),
        });
        cfg.http.token = Some(crate::Secret::new("legacy"));
        let a = Auth::from_config(&cfg).unwrap();
        assert_eq!(a.principal("tok-a").unwrap().name, "a");
        assert!(!a.reload_tokens_file().unwrap(), "unchanged");

        std::fs::write(&file, entry("b", "tok-b")).unwrap();
        assert!(a.reload_tokens_file().unwrap());
        assert!(a.principal("tok-a").is_none());
        assert_eq!(a.principal("tok-b").unwrap().name, "b");
        assert_eq!(a.principal("tok-cfg").unwrap().name, "cfg");
        assert_eq!(a.principal("legacy").unwrap().name, HTTP_TOKEN_PRINCIPAL);

        for broken in [
            entry("b", "tok-b") + "[[tokens]]\nname = \"c\"\nrole = \"viewer\"\nsha256 = \"xyz\"\n",
            entry("cfg", "tok-c"),
            "[[tokens]\n".into(),
            "x".repeat(MAX_TOKENS_FILE_BYTES as usize + 1),
        ] {
            std::fs::write(&file, &broken).unwrap();
            let e = a.reload_tokens_file().unwrap_err();
            assert!(format!("{e:#}").contains("auth"), "{e:#}");
            assert!(!format!("{e:#}").contains("tok-"), "{e:#}");
            assert_eq!(a.principal("tok-b").unwrap().name, "b", "kept after {e:#}");
            assert!(
                !a.reload_tokens_file().unwrap(),
                "the same broken file again: quiet"
            );
        }
        std::fs::remove_file(&file).unwrap();
        assert!(a.reload_tokens_file().is_err());
        assert!(!a.reload_tokens_file().unwrap(), "still missing: quiet");
        assert_eq!(a.principal("tok-b").unwrap().name, "b");

        std::fs::write(&file, "").unwrap();
        assert!(a.reload_tokens_file().unwrap());
        assert!(a.principal("tok-b").is_none());
        let only_file = Config {
            auth: crate::config::AuthConfig {
                tokens_file: Some(file),
                ..Default::default()
            },
            ..Default::default()
        };
        let empty = Auth::from_config(&only_file).unwrap();
        assert!(empty.enabled(), "a tokens file, even empty, turns auth on");
    }

    #[test]
    fn forwarded_for_is_read_only_through_trusted_proxies() {
        let mut cfg = Config::default();
        cfg.auth.trusted_proxies = vec!["10.0.0.0/8".into(), "127.0.0.1".into()];
        let a = Auth::from_config(&cfg).unwrap();
        assert!(a.enabled());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.5, 10.1.2.3".parse().unwrap(),
        );
        assert_eq!(a.client_addr(ip("127.0.0.1"), &h), ip("203.0.113.5"));
        assert_eq!(a.client_addr(ip("::ffff:127.0.0.1"), &h), ip("203.0.113.5"));
        assert_eq!(a.client_addr(ip("192.0.2.9"), &h), ip("192.0.2.9"));
        h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(a.client_addr(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        h.insert("x-forwarded-user", "eve".parse().unwrap());
        assert!(a.authenticate(&h, Some(ip("192.0.2.9"))).is_err());
        let p = a.authenticate(&h, Some(ip("10.9.9.9"))).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("proxy:eve", None));

        cfg.auth.trusted_proxies = vec!["10.0.0.0/33".into()];
        assert!(Auth::from_config(&cfg).is_err());
        cfg.auth.trusted_proxies.clear();
        cfg.auth.proxy_role = Some(Role::Viewer);
        assert!(
            Auth::from_config(&cfg).is_err(),
            "a proxy role with no proxy"
        );
    }

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1:8080",
            "[::1]:80",
            "localhost:8080",
            "127.0.0.2:1",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "0.0.0.0:8080",
            "[::]:8080",
            "10.0.0.1:80",
            "whale.example:80",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }
}
