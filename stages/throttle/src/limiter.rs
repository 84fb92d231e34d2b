//! The Redis side of the throttle: one Lua script (`decide.lua`) run with EVALSHA, a whole batch
//! of decisions in one pipeline (on a cluster, one per master, all at once), EVAL instead
//! when Redis answers NOSCRIPT (its script cache is empty after a restart), and a connection
//! that reconnects by itself — to the new master after a Sentinel failover. Never connects
//! eagerly: a worker starts while Redis is down and its tasks wait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{SingleNodeRoutingInfo, Slot};
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ErrorKind, ServerErrorKind, Value};
use whale_kernel::Secret;

use crate::policy::Request;
use crate::servers::{self, Servers};

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
    /// A cluster node answered MOVED/ASK: the slot is served elsewhere now (or, for ASK, this
    /// key is already on the node the slot is moving to). Internal to the limiter, which asks
    /// that node; never returned by `decide`.
    #[error("Redis Cluster slot moved")]
    Moved(Redirect),
}

/// Where a `MOVED`/`ASK` answer sends a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Redirect {
    /// `ASK` (ask once, after `ASKING`; the slot is half-moved) rather than `MOVED` (for good).
    pub ask: bool,
    pub host: String,
    pub port: u16,
}

/// A bad `redis.url`. Says what is wrong without repeating the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("redis.url (WHALE_REDIS_URL) is not a valid Redis URL ({0}); expected redis://[user:password@]host:port[/db], redis+cluster://[user:password@]host1:port,host2:port or redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>[/db] (rediss… for TLS)")]
pub struct BadUrl(String);

/// `[redis]` that cannot be used: a bad URL, or TLS files that cannot be read or do not fit.
#[derive(Debug, thiserror::Error)]
pub enum Setup {
    #[error(transparent)]
    Url(#[from] BadUrl),
    #[error("{0}")]
    Tls(String),
    /// A test failpoint variable is set in a build without failpoints.
    #[error(transparent)]
    Failpoint(#[from] whale_kernel::failpoint::Absent),
}

/// Connection attempts are short: while Redis is down a batch comes back quickly as "wait".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks Redis for decisions. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Limiter {
    conn: Conn,
    sha: String,
    /// What `redis.url` names, without secrets (for `whale status`).
    servers: String,
    /// `WAIT` for this many replicas after each pipeline (0: don't).
    wait_replicas: u32,
    wait_timeout: Duration,
}

/// The connection to whatever `redis.url` names.
#[derive(Clone)]
enum Conn {
    /// One server; the manager reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster; the connection follows slot moves and node changes by itself, but
    /// needs a node to be up to be created, so it is made on first use.
    Cluster(Arc<ClusterState>),
    /// The master the Sentinels name, found again after a connection error or a READONLY
    /// answer (the old master demoted by a failover).
    Sentinel(Arc<Lazy<MultiplexedConnection>>),
}

/// How a batch goes to a Redis Cluster. The keys of one batch live on different nodes; one
/// pipeline per node is what one server gets, one per bucket leaves the grouping to the client
/// (`cargo bench -p whale-throttle --bench decisions` measures both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterBatches {
    /// One pipeline per master, from whale's own copy of the slot map (`CLUSTER SLOTS`, read
    /// again after a `MOVED`; the requests that met one are sent again per bucket).
    PerNode,
    /// One pipeline per bucket (hash tag), all at once: the client routes each.
    PerBucket,
}

/// A Redis Cluster connection and whale's copy of its slot map.
struct ClusterState {
    conn: Arc<Lazy<ClusterConnection>>,
    batches: ClusterBatches,
    /// Slot → index into `nodes`; `None` until read, and again after a `MOVED`.
    slots: std::sync::RwLock<Option<Arc<SlotMap>>>,
}

struct SlotMap {
    owner: HashMap<Slot, usize>,
    /// The masters' addresses, as `CLUSTER SLOTS` gives them.
    nodes: Vec<(String, u16)>,
}

impl ClusterState {
    async fn slot_map(&self, conn: &mut ClusterConnection) -> Result<Arc<SlotMap>, Error> {
        if let Some(m) = self.slots.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(m);
        }
        let v: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(conn)
            .await
            .map_err(|e| classify(&e))?;
        let bad = || Error::Refused("unexpected CLUSTER SLOTS answer".into());
        let Value::Array(ranges) = v else {
            return Err(bad());
        };
        let mut owner = HashMap::new();
        let mut nodes: Vec<(String, u16)> = Vec::new();
        for r in ranges {
            let Value::Array(r) = r else {
                return Err(bad());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return Err(bad());
            };
            let node = match master.as_slice() {
                [Value::BulkString(h), Value::Int(p), ..] => {
                    (String::from_utf8_lossy(h).into_owned(), *p)
                }
                [Value::SimpleString(h), Value::Int(p), ..] => (h.clone(), *p),
                _ => return Err(bad()),
            };
            let node = (node.0, u16::try_from(node.1).map_err(|_| bad())?);
            let idx = match nodes.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            for n in *start..=*end {
                let slot = u16::try_from(n).ok().and_then(Slot::new).ok_or_else(bad)?;
                owner.insert(slot, idx);
            }
        }
        let m = Arc::new(SlotMap { owner, nodes });
        *self.slots.write().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        Ok(m)
    }

    fn forget_slots(&self) {
        *self.slots.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Sends one pipeline somewhere: a connection as it is, or a cluster node chosen by a slot.
trait SendPipe: Send {
    fn send<'a>(
        &'a mut self,
        pipe: &'a redis::Pipeline,
    ) -> BoxFuture<'a, redis::RedisResult<Vec<Value>>>;
}

/// A connection that routes by itself (one server, a Sentinel master, a cluster per bucket).
struct Direct<C>(C);

impl<C: ConnectionLike + Send> SendPipe for Direct<C> {
    fn send<'a>(
        &'a mut self,
        pipe: &'a redis::Pipeline,
    ) -> BoxFuture<'a, redis::RedisResult<Vec<Value>>> {
        Box::pin(pipe.query_async::<Vec<Value>>(&mut self.0))
    }
}

/// One cluster node by its address (from whale's slot map or a redirection), for a pipeline
/// of keys in several of its slots. Not by the client's own slot map: the client reads that
/// again only when one of its own commands meets `MOVED`, never for the answers inside a
/// pipeline that ignores errors, so after a slot move it would keep sending to the old owner.
struct ToNode(ClusterConnection, String, u16);

impl SendPipe for ToNode {
    fn send<'a>(
        &'a mut self,
        pipe: &'a redis::Pipeline,
    ) -> BoxFuture<'a, redis::RedisResult<Vec<Value>>> {
        let n = pipe.len();
        Box::pin(self.0.route_pipeline(
            pipe.clone(),
            0,
            n,
            SingleNodeRoutingInfo::ByAddress {
                host: self.1.clone(),
                port: self.2,
            },
        ))
    }
}

type Connect<C> = Box<dyn Fn() -> BoxFuture<'static, redis::RedisResult<C>> + Send + Sync>;

/// A connection made on first use and made again after [`Lazy::forget`].
struct Lazy<C> {
    connect: Connect<C>,
    conn: tokio::sync::Mutex<Option<C>>,
}

impl<C: Clone> Lazy<C> {
    fn new(connect: Connect<C>) -> Arc<Lazy<C>> {
        Arc::new(Lazy {
            connect,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn get(&self) -> Result<C, Error> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = match tokio::time::timeout(CONNECT_TIMEOUT * 3, (self.connect)()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(classify(&e)),
            Err(_) => {
                return Err(Error::Unreachable(format!(
                    "no connection within {}s",
                    (CONNECT_TIMEOUT * 3).as_secs()
                )))
            }
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's Debug would print the URL, password included.
        f.debug_struct("Limiter")
            .field("servers", &self.servers)
            .field("script", &self.sha)
            .finish()
    }
}

impl Limiter {
    /// A limiter for the Redis (cluster, Sentinel master) at `url`. Does not connect: the
    /// first decision does, and every later one reconnects if the connection was lost. Must be
    /// called inside a Tokio runtime.
    pub fn new(url: &Secret) -> Result<Limiter, Setup> {
        Self::from_config(&whale_kernel::config::RedisConfig {
            url: url.clone(),
            ..Default::default()
        })
    }

    /// A limiter for `[redis]`: its URL (one server, a cluster or Sentinel) and, for TLS, its
    /// own CA and client certificate. Errors name the file or the mistake, never the URL.
    pub fn from_config(cfg: &whale_kernel::config::RedisConfig) -> Result<Limiter, Setup> {
        let url = cfg.url.expose();
        let servers = servers::parse(url).map_err(BadUrl)?;
        let certs = tls_files(cfg)?;
        let conn = match &servers {
            Servers::Single => Conn::Single(single(url, certs)?),
            Servers::Cluster {
                tls,
                userinfo,
                nodes,
            } => Conn::Cluster(Arc::new(ClusterState {
                conn: cluster(*tls, userinfo.as_deref(), nodes, certs)?,
                batches: ClusterBatches::PerNode,
                slots: std::sync::RwLock::new(None),
            })),
            Servers::Sentinel {
                tls,
                userinfo,
                sentinels,
                master,
                db,
            } => Conn::Sentinel(sentinel(
                *tls,
                userinfo.as_deref(),
                sentinels,
                master,
                *db,
                cfg.sentinel_password.as_ref(),
                certs,
            )?),
        };
        let described = match &servers {
            Servers::Single => format!("redis {}", whale_kernel::config::redact_url(url)),
            other => format!("redis {}", other.describe()),
        };
        Ok(Limiter {
            conn,
            sha: redis::Script::new(SCRIPT).get_hash().to_owned(),
            servers: described,
            wait_replicas: cfg.wait_replicas,
            wait_timeout: cfg.wait_timeout,
        })
    }

    /// The same limiter sending cluster batches `how` (benchmarks compare the two). No effect
    /// unless `redis.url` names a cluster.
    pub fn with_cluster_batches(mut self, how: ClusterBatches) -> Limiter {
        if let Conn::Cluster(c) = &self.conn {
            self.conn = Conn::Cluster(Arc::new(ClusterState {
                conn: c.conn.clone(),
                batches: how,
                slots: std::sync::RwLock::new(None),
            }));
        }
        self
    }

    /// What this limiter talks to, without secrets: `redis cluster via h1:7000,h2:7001`.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Whether Redis answers now (for `/readyz` and `whale status`): `PING` on one server or
    /// the Sentinels' master, `CLUSTER INFO` with `cluster_state:ok` on a cluster (every slot
    /// served). The error never holds the URL.
    pub async fn ping(&self) -> Result<(), String> {
        let probe = async {
            match &self.conn {
                Conn::Single(c) => {
                    let mut c = c.clone();
                    redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .map(drop)
                        .map_err(|e| classify(&e))
                }
                Conn::Sentinel(lazy) => {
                    let mut c = lazy.get().await?;
                    let r = redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .map(drop)
                        .map_err(|e| classify(&e));
                    if r.is_err() {
                        lazy.forget().await;
                    }
                    r
                }
                Conn::Cluster(cs) => {
                    let mut c = cs.conn.get().await?;
                    let info = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async::<String>(&mut c)
                        .await
                        .map_err(|e| classify(&e))?;
                    match info.lines().find_map(|l| l.strip_prefix("cluster_state:")) {
                        Some("ok") => Ok(()),
                        state => Err(Error::Unreachable(format!(
                            "Redis Cluster state is {} (some hash slots are not served)",
                            state.unwrap_or("unknown").trim()
                        ))),
                    }
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("Redis unreachable: no answer within 2s".into()),
        }
    }

    /// Decides every request, in order, in one pipelined round trip (two when the script has to
    /// be loaded first). On a cluster, one pipeline per master, all at once (a batch's keys
    /// live on different nodes). Requests for the same task in one call get the same answer.
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
        let all: Vec<&Request> = reqs.iter().collect();
        match &self.conn {
            Conn::Single(c) => self.decide_on(&mut Direct(c.clone()), &all, false).await,
            Conn::Sentinel(lazy) => {
                let c = match lazy.get().await {
                    Ok(c) => c,
                    Err(e) => return vec![Err(e); reqs.len()],
                };
                let out = self.decide_on(&mut Direct(c), &all, false).await;
                if out.iter().any(|r| matches!(r, Err(Error::Unreachable(_)))) {
                    // Dropped, or the master was demoted: ask the Sentinels again next time.
                    lazy.forget().await;
                }
                out
            }
            Conn::Cluster(cs) => {
                let mut c = match cs.conn.get().await {
                    Ok(c) => c,
                    Err(e) => return vec![Err(e); reqs.len()],
                };
                let mut out: Vec<Option<Result<Decision, Error>>> = vec![None; reqs.len()];
                let mut rest: Vec<usize> = (0..reqs.len()).collect();
                if cs.batches == ClusterBatches::PerNode {
                    match cs.slot_map(&mut c).await {
                        Ok(map) => rest = self.per_node(cs, &c, &map, reqs, &mut out).await,
                        Err(e) => tracing::debug!("no slot map ({e}); sending per bucket"),
                    }
                }
                self.per_bucket(&c, reqs, &rest, &mut out).await;
                out.into_iter()
                    .map(|o| o.unwrap_or_else(|| Err(Error::Refused("no answer".into()))))
                    .collect()
            }
        }
    }

    /// One pipeline per master, all at once, each to the master's address in whale's slot
    /// map. Requests that meet a `MOVED` or `ASK` are sent once more, to the node it names
    /// (after `ASKING` for an `ASK`); a `MOVED` also makes whale (and the client) read the slot
    /// map again. Returns the requests for slots no master serves, for [`Self::per_bucket`].
    async fn per_node(
        &self,
        cs: &ClusterState,
        c: &ClusterConnection,
        map: &SlotMap,
        reqs: &[Request],
        out: &mut [Option<Result<Decision, Error>>],
    ) -> Vec<usize> {
        let unserved = map.nodes.len();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); unserved + 1];
        for (i, r) in reqs.iter().enumerate() {
            let node = map
                .owner
                .get(&Slot::for_key(&r.log_key))
                .copied()
                .unwrap_or(unserved);
            groups[node].push(i);
        }
        // Slots no node serves (a cluster being reshaped): let the client find them.
        let rest = std::mem::take(&mut groups[unserved]);
        let calls = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(n, idx)| {
                let (host, port) = map.nodes[n].clone();
                let mut to = ToNode(c.clone(), host, port);
                async move {
                    let group: Vec<&Request> = idx.iter().map(|&i| &reqs[i]).collect();
                    let res = self.decide_on(&mut to, &group, false).await;
                    (idx, res)
                }
            });
        let mut redirected: HashMap<Redirect, Vec<usize>> = HashMap::new();
        for (idx, res) in futures::future::join_all(calls).await {
            for (i, r) in idx.into_iter().zip(res) {
                match r {
                    Err(Error::Moved(to)) => redirected.entry(to).or_default().push(i),
                    r => out[i] = Some(r),
                }
            }
        }
        if let Some(idx) = redirected.iter().find(|(to, _)| !to.ask).map(|(_, i)| i) {
            cs.forget_slots();
            // The client reads its own slot map again (and connects to nodes it did not know)
            // only when one of its own commands meets MOVED: give it one.
            let probe = redis::cmd("EXISTS")
                .arg(&reqs[idx[0]].log_key)
                .query_async::<Value>(&mut c.clone())
                .await;
            if let Err(e) = probe {
                tracing::debug!("slot map refresh after MOVED: {e}");
            }
        }
        let follows = redirected.into_iter().map(|(to, idx)| {
            crate::metrics::redirected(if to.ask { "ask" } else { "moved" }, idx.len());
            let mut node = ToNode(c.clone(), to.host.clone(), to.port);
            async move {
                let group: Vec<&Request> = idx.iter().map(|&i| &reqs[i]).collect();
                let res = self.decide_on(&mut node, &group, to.ask).await;
                (idx, res)
            }
        });
        for (idx, res) in futures::future::join_all(follows).await {
            for (i, r) in idx.into_iter().zip(res) {
                out[i] = Some(match r {
                    Err(Error::Moved(_)) => Err(Error::Unreachable(
                        "the Redis Cluster slot is moving (redirected twice)".into(),
                    )),
                    r => r,
                });
            }
        }
        rest
    }

    /// One pipeline per bucket (one hash tag, so one slot), all in flight at once; the cluster
    /// connection sends each to its node and follows redirections.
    async fn per_bucket(
        &self,
        c: &ClusterConnection,
        reqs: &[Request],
        which: &[usize],
        out: &mut [Option<Result<Decision, Error>>],
    ) {
        let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
        for &i in which {
            groups.entry(reqs[i].log_key.as_str()).or_default().push(i);
        }
        let calls = groups.into_values().map(|idx| {
            let mut c = Direct(c.clone());
            async move {
                let group: Vec<&Request> = idx.iter().map(|&i| &reqs[i]).collect();
                let res = self.decide_on(&mut c, &group, false).await;
                (idx, res)
            }
        });
        for (idx, res) in futures::future::join_all(calls).await {
            for (i, r) in idx.into_iter().zip(res) {
                out[i] = Some(match r {
                    Err(Error::Moved(_)) => Err(Error::Unreachable(
                        "the Redis Cluster slot is moving (the client's slot map is behind)".into(),
                    )),
                    r => r,
                });
            }
        }
    }

    /// One pipeline of EVALSHA (then EVAL for those the server answered NOSCRIPT: its script
    /// cache is empty after a restart or on a node seen for the first time), ending with
    /// `WAIT` when `redis.wait_replicas` asks for it. `asking`: each script call follows an
    /// `ASK` (the node importing its slot serves it only after `ASKING`).
    async fn decide_on(
        &self,
        conn: &mut impl SendPipe,
        reqs: &[&Request],
        asking: bool,
    ) -> Vec<Result<Decision, Error>> {
        let mut out: Vec<Option<Result<Decision, Error>>> = vec![None; reqs.len()];
        let mut todo: Vec<usize> = (0..reqs.len()).collect();
        for attempt in 0..2 {
            if todo.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &todo {
                let r = reqs[i];
                if asking {
                    pipe.cmd("ASKING");
                }
                match attempt {
                    0 => pipe.cmd("EVALSHA").arg(&self.sha),
                    _ => pipe.cmd("EVAL").arg(SCRIPT),
                }
                .arg(2)
                .arg(&r.log_key)
                .arg(&r.marker_key)
                .arg(&r.member)
                .arg(r.capacity)
                .arg(r.horizon_ms)
                .arg(r.admitted_ttl_ms)
                .arg(r.throttled_ttl_ms);
            }
            if self.wait_replicas > 0 {
                pipe.cmd("WAIT")
                    .arg(self.wait_replicas)
                    .arg(self.wait_timeout.as_millis().max(1) as u64);
            }
            let per_request = 1 + asking as usize;
            let expected = todo.len() * per_request + (self.wait_replicas > 0) as usize;
            let mut values = match conn.send(&pipe).await {
                Ok(v) if v.len() == expected => v,
                Ok(v) => {
                    let e = Error::Refused(format!("{} answers to {expected} questions", v.len()));
                    for i in todo.drain(..) {
                        out[i] = Some(Err(e.clone()));
                    }
                    break;
                }
                Err(e) => {
                    // The cluster client answers a whole pipeline with MOVED/ASK when it could
                    // not place it: the group goes to the node named, like a single answer.
                    let e = match (e.kind(), e.detail()) {
                        (
                            ErrorKind::Server(k @ (ServerErrorKind::Moved | ServerErrorKind::Ask)),
                            Some(d),
                        ) => redirect(k == ServerErrorKind::Ask, d).unwrap_or_else(|| classify(&e)),
                        (ErrorKind::Server(ServerErrorKind::TryAgain), _) => {
                            crate::metrics::redirected("tryagain", todo.len());
                            classify(&e)
                        }
                        _ => classify(&e),
                    };
                    for i in todo.drain(..) {
                        out[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
            if self.wait_replicas > 0 {
                let acked = match values.pop() {
                    Some(Value::Int(n)) => n,
                    _ => -1,
                };
                if acked < self.wait_replicas as i64 {
                    // Not on enough replicas: a failover now could forget these decisions, so
                    // none is acted on; asked again, they get the same answers from the markers.
                    let e = Error::Unreachable(format!(
                        "decisions reached {} of {} replicas within {}ms (redis.wait_replicas)",
                        acked.max(0),
                        self.wait_replicas,
                        self.wait_timeout.as_millis()
                    ));
                    for i in todo.drain(..) {
                        out[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            }
            let mut again = Vec::new();
            // Each request's last answer (after its ASKING's OK).
            let answers = values
                .into_iter()
                .skip(per_request - 1)
                .step_by(per_request);
            for (i, v) in todo.iter().copied().zip(answers) {
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

/// The TLS files of `[redis]`, read; `None` when none is set.
fn tls_files(
    cfg: &whale_kernel::config::RedisConfig,
) -> Result<Option<redis::TlsCertificates>, Setup> {
    if cfg.tls_ca.is_none() && cfg.tls_cert.is_none() && cfg.tls_key.is_none() {
        return Ok(None);
    }
    if !Servers::tls(cfg.url.expose()) {
        return Err(Setup::Tls(
            "redis.tls_ca / tls_cert / tls_key are set but the Redis URL is not rediss:// (or rediss+cluster://, rediss+sentinel://): use rediss for TLS".into(),
        ));
    }
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| Setup::Tls(format!("cannot read {what} {}: {e}", p.display())))
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
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn tls_error(e: redis::RedisError) -> Setup {
    Setup::Tls(format!(
        "redis TLS setup (redis.tls_ca, redis.tls_cert, redis.tls_key): {:?} {}",
        e.kind(),
        e.detail().unwrap_or("")
    ))
}

fn single(url: &str, certs: Option<redis::TlsCertificates>) -> Result<ConnectionManager, Setup> {
    let client = match certs {
        None => redis::Client::open(url).map_err(|e| BadUrl(format!("{:?}", e.kind())))?,
        Some(certs) => redis::Client::build_with_tls(url, certs).map_err(tls_error)?,
    };
    // Short connection attempts and few retries: while Redis is down a batch should come
    // back quickly as "wait", not hang; the worker's next batch tries again.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| BadUrl(e.to_string()))?)
}

fn cluster(
    tls: bool,
    userinfo: Option<&str>,
    nodes: &[(String, u16)],
    certs: Option<redis::TlsCertificates>,
) -> Result<Arc<Lazy<ClusterConnection>>, Setup> {
    let scheme = if tls { "rediss" } else { "redis" };
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let urls: Vec<String> = nodes
        .iter()
        .map(|(h, p)| match h.contains(':') {
            true => format!("{scheme}://{auth}[{h}]:{p}"),
            false => format!("{scheme}://{auth}{h}:{p}"),
        })
        .collect();
    let mut b = ClusterClientBuilder::new(urls)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(2)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(certs) = certs {
        b = b.certs(certs);
    }
    let client = b
        .build()
        .map_err(|e| BadUrl(format!("cluster: {:?}", e.kind())))?;
    Ok(Lazy::new(Box::new(move || {
        let client = client.clone();
        Box::pin(async move { client.get_async_connection().await })
    })))
}

#[allow(clippy::too_many_arguments)]
fn sentinel(
    tls: bool,
    userinfo: Option<&str>,
    sentinels: &[(String, u16)],
    master: &str,
    db: i64,
    sentinel_password: Option<&Secret>,
    certs: Option<redis::TlsCertificates>,
) -> Result<Arc<Lazy<MultiplexedConnection>>, Setup> {
    let addrs = sentinels.iter().map(|(h, p)| match tls {
        true => redis::ConnectionAddr::TcpTls {
            host: h.clone(),
            port: *p,
            insecure: false,
            tls_params: None,
        },
        false => redis::ConnectionAddr::Tcp(h.clone(), *p),
    });
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| BadUrl(format!("sentinel: {:?}", e.kind())))?
        .set_client_to_redis_db(db);
    if let Some(u) = userinfo {
        // The crate's own URL parser decodes `user:password` (percent-encoding included).
        use redis::IntoConnectionInfo;
        let info = format!("redis://{u}@localhost")
            .into_connection_info()
            .map_err(|e| BadUrl(format!("user or password: {:?}", e.kind())))?;
        let s = info.redis_settings();
        if let Some(user) = s.username() {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(pw) = s.password() {
            b = b.set_client_to_redis_password(pw);
        }
    }
    if let Some(pw) = sentinel_password {
        b = b.set_client_to_sentinel_password(pw.expose());
    }
    if tls {
        b = b
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certs) = certs {
            b = b
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    }
    let client = b
        .build()
        .map_err(|e| BadUrl(format!("sentinel: {:?}", e.kind())))?;
    let client = Arc::new(tokio::sync::Mutex::new(client));
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    Ok(Lazy::new(Box::new(move || {
        let client = client.clone();
        let config = config.clone();
        Box::pin(async move {
            // Asks the Sentinels which node is the master now (and checks its ROLE).
            let master = client.lock().await.async_get_client().await?;
            master
                .get_multiplexed_async_connection_with_config(&config)
                .await
        })
    })))
}

/// Answers that mean "not this server, not now": a demoted master (READONLY after a
/// failover), a master that lost its replicas, a cluster with slots unserved or moving. The
/// task waits as when Redis is unreachable, and a Sentinel connection looks for the master again.
fn not_now(kind: Option<ServerErrorKind>) -> bool {
    matches!(
        kind,
        Some(
            ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
        )
    )
}

fn classify(e: &redis::RedisError) -> Error {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound | ErrorKind::MasterNameNotFoundBySentinel
        )
        || matches!(e.kind(), ErrorKind::Server(k) if not_now(Some(k)))
    {
        Error::Unreachable(e.to_string())
    } else {
        Error::Refused(e.to_string())
    }
}

/// The node a `MOVED`/`ASK` names: details `<slot> <host>:<port>`.
fn redirect(ask: bool, details: &str) -> Option<Error> {
    let (host, port) = details.split_whitespace().nth(1)?.rsplit_once(':')?;
    Some(Error::Moved(Redirect {
        ask,
        host: host.trim_matches(['[', ']']).to_owned(),
        port: port.parse().ok()?,
    }))
}

fn parse(v: Value) -> Result<Decision, Error> {
    let bad = |v: &Value| Error::Refused(format!("unexpected script reply {v:?}"));
    match v {
        Value::ServerError(e)
            if matches!(
                e.kind(),
                Some(ServerErrorKind::Moved | ServerErrorKind::Ask)
            ) =>
        {
            let ask = e.kind() == Some(ServerErrorKind::Ask);
            match e.details().and_then(|d| redirect(ask, d)) {
                Some(to) => Err(to),
                None => Err(Error::Refused(format!(
                    "{} {} (no node address)",
                    e.code(),
                    e.details().unwrap_or_default()
                ))),
            }
        }
        Value::ServerError(e) if not_now(e.kind()) => {
            if e.kind() == Some(ServerErrorKind::TryAgain) {
                crate::metrics::redirected("tryagain", 1);
            }
            Err(Error::Unreachable(format!(
                "{} {}",
                e.code(),
                e.details().unwrap_or_default()
            )))
        }
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
