//! The StackStorm clusters one worker talks to — a client, a concurrency cap, a drain flag and a
//! circuit breaker each — and routing: which cluster a task goes to now. A task names its
//! cluster; an unknown name goes to `default` or the dead letter (`dispatch.unknown_route`); a
//! drained cluster or one whose breaker is open hands its new tasks to its `failover` (and that
//! one to its own), and when no cluster in the chain can take them they wait.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{Semaphore, SemaphorePermit};
use whale_kernel::config::{Config, DispatchConfig, UnknownRoute};
use whale_kernel::{subjects, Nats};
use whale_st2::{Auth, ClusterConn, ErrorKind, St2Client, St2Error};

use crate::breaker::{Breaker, Gate, Transition};
use crate::metrics;
use crate::state::{self, BreakerReport, DrainRecord};

/// One StackStorm cluster as a worker sees it.
pub struct Cluster {
    pub name: String,
    pub url: String,
    pub failover: Option<String>,
    pub st2: St2Client,
    permits: Semaphore,
    drained: AtomicBool,
    pub breaker: Breaker,
}

impl Cluster {
    /// Waits for one of the cluster's `max_concurrent` slots.
    pub async fn permit(&self) -> SemaphorePermit<'_> {
        self.permits
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
        metrics::drained(&self.name, drained);
    }
}

/// Where a task goes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Create it on this cluster. `rerouted` when that is not the cluster the task named.
    To { cluster: String, rerouted: bool },
    /// No cluster can take it now (drained, breaker open); ask again later.
    Wait { reason: String },
    /// It can never go anywhere (unknown cluster, no default).
    Dead { reason: String },
}

/// How a failed call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// StackStorm refused this task for good (unknown action, bad parameters): dead letter.
    Terminal,
    /// Worth another attempt, and a sign the cluster is sick (5xx, timeout, connection, 401/403).
    ClusterFault,
    /// Worth another attempt, not the cluster's fault (an answer whale could not read).
    Retry,
}

/// How `err` counts, and a short label for metrics.
pub fn verdict(err: &St2Error) -> (Verdict, &'static str) {
    match err.kind() {
        ErrorKind::Http { status, .. } => match *status {
            401 | 403 => (Verdict::ClusterFault, "auth"),
            408 | 429 => (Verdict::ClusterFault, "server"),
            s if s >= 500 => (Verdict::ClusterFault, "server"),
            _ => (Verdict::Terminal, "refused"),
        },
        ErrorKind::Timeout => (Verdict::ClusterFault, "timeout"),
        ErrorKind::Transport => (Verdict::ClusterFault, "connection"),
        // A 2xx whale could not decode: the execution may well exist, so never dead-letter;
        // the next attempt looks it up by trace tag.
        ErrorKind::Decode => (Verdict::Retry, "decode"),
        _ => (Verdict::Terminal, "refused"),
    }
}

/// Every configured cluster.
pub struct Clusters {
    by_name: BTreeMap<String, Arc<Cluster>>,
    unknown_route: UnknownRoute,
    /// Where breaker changes are reported for `whale clusters list` (None in unit tests).
    reports: Option<whale_kernel::kv::Bucket>,
    worker: String,
}

impl Clusters {
    /// Clients for every cluster in `cfg.clusters`. Refuses names that cannot be subject tokens.
    pub fn from_config(cfg: &Config, worker: &str) -> anyhow::Result<Clusters> {
        let d: &DispatchConfig = &cfg.dispatch;
        let mut by_name = BTreeMap::new();
        for (name, c) in &cfg.clusters {
            if !crate::valid_cluster_name(name) {
                anyhow::bail!("cluster name {name:?} is not usable: use letters, digits, '-' and '_' (it becomes a NATS subject token)");
            }
            let auth = match &c.api_key {
                // Kernel and client have their own Secret types; the key crosses here only.
                Some(k) if !k.is_empty() => Auth::ApiKey(whale_st2::Secret::new(k.expose())),
                _ => {
                    tracing::warn!(cluster = %name, "no API key configured (api_key_env, or WHALE_ST2_API_KEY for `default`): requests go without credentials");
                    Auth::None
                }
            };
            let conn = ClusterConn::new(c.url.clone(), auth)
                .with_timeout(d.request_timeout)
                .with_ca_file(c.ca_file.clone());
            let st2 = St2Client::new(conn).with_context(|| format!("cluster {name:?}"))?;
            let permits = c.max_concurrent.unwrap_or(Semaphore::MAX_PERMITS).max(1);
            by_name.insert(
                name.clone(),
                Arc::new(Cluster {
                    name: name.clone(),
                    url: c.url.clone(),
                    failover: c.failover.clone(),
                    st2,
                    permits: Semaphore::new(permits.min(Semaphore::MAX_PERMITS)),
                    drained: AtomicBool::new(false),
                    breaker: Breaker::new(d.breaker_threshold, d.breaker_cooldown),
                }),
            );
        }
        Ok(Clusters {
            by_name,
            unknown_route: d.unknown_route,
            reports: None,
            worker: worker.to_owned(),
        })
    }

    /// Follows `whale clusters drain|undrain` live (KV `whale_state`, keys `drain.<name>`) and
    /// reports breaker changes there. Returns once the current drains are loaded.
    pub async fn watch(&mut self, nats: &Nats) -> anyhow::Result<()> {
        let by_name = self.by_name.clone();
        whale_kernel::kv::watch_bucket(nats, subjects::KV_STATE, move |key, value| {
            let Some(name) = key.strip_prefix(state::DRAIN_PREFIX) else {
                return;
            };
            let Some(c) = by_name.get(name) else { return };
            let drained = value.is_some_and(|v| DrainRecord::parse(v).drained);
            if drained != c.is_drained() {
                match (drained, &c.failover) {
                    (true, Some(f)) => tracing::info!(
                        cluster = name,
                        "drained: new tasks go to {f}, in-flight ones finish"
                    ),
                    (true, None) => tracing::info!(
                        cluster = name,
                        "drained: new tasks wait (no failover), in-flight ones finish"
                    ),
                    (false, _) => {
                        tracing::info!(cluster = name, "undrained: takes new tasks again")
                    }
                }
            }
            c.set_drained(drained);
        })
        .await?;
        self.reports = whale_kernel::kv::Bucket::open(nats, subjects::KV_STATE)
            .await
            .ok();
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Where a task naming `wanted` goes now.
    pub async fn route(&self, wanted: &str) -> Route {
        let start = if self.by_name.contains_key(wanted) {
            wanted
        } else {
            let known = self.names().collect::<Vec<_>>().join(", ");
            match self.unknown_route {
                UnknownRoute::Default if self.by_name.contains_key("default") => "default",
                UnknownRoute::Default => {
                    return Route::Dead {
                        reason: format!("cluster {wanted:?} is not configured and there is no `default` cluster (configured: {known})"),
                    }
                }
                UnknownRoute::DeadLetter => {
                    return Route::Dead {
                        reason: format!("cluster {wanted:?} is not configured (configured: {known}; dispatch.unknown_route = \"dead_letter\")"),
                    }
                }
            }
        };
        let mut name = start;
        let mut why = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        loop {
            let c = &self.by_name[name];
            match self.available(c).await {
                Ok(()) => {
                    return Route::To {
                        cluster: name.to_owned(),
                        rerouted: name != wanted,
                    }
                }
                Err(reason) => why.push(reason),
            }
            seen.push(name);
            match c.failover.as_deref() {
                Some(f) if self.by_name.contains_key(f) && !seen.contains(&f) => name = f,
                _ => {
                    return Route::Wait {
                        reason: why.join("; "),
                    }
                }
            }
        }
    }

    /// Ok when `c` takes new tasks now; probes it when its breaker's cooldown is over.
    pub async fn available(&self, c: &Cluster) -> Result<(), String> {
        if c.is_drained() {
            return Err(format!("cluster {} is drained", c.name));
        }
        self.healthy(c).await
    }

    /// Ok unless `c`'s breaker is open (drain does not matter: for looking executions up).
    pub async fn healthy(&self, c: &Cluster) -> Result<(), String> {
        let blocked = || {
            let last = c.breaker.last_error().unwrap_or_default();
            format!(
                "cluster {}'s circuit breaker is open (last error: {last})",
                c.name
            )
        };
        match c.breaker.gate() {
            Gate::Pass => Ok(()),
            Gate::Blocked => Err(blocked()),
            Gate::Probe => {
                let _slot = c.permit().await;
                match c.st2.api_info().await {
                    Ok(_) => {
                        self.succeeded(c);
                        Ok(())
                    }
                    Err(e) => {
                        self.failed(c, &e);
                        Err(blocked())
                    }
                }
            }
        }
    }

    /// Tells the breaker a call worked (including a clean 4xx refusal: the cluster answered).
    pub fn succeeded(&self, c: &Cluster) {
        if let Some(t) = c.breaker.success() {
            self.transition(c, t, None);
        }
    }

    /// Tells the breaker (and the metrics) that a call failed.
    pub fn failed(&self, c: &Cluster, err: &St2Error) {
        let (v, label) = verdict(err);
        metrics::call_error(&c.name, label);
        if v != Verdict::ClusterFault {
            return;
        }
        let text = err.to_string();
        if let Some(t) = c.breaker.failure(&text) {
            self.transition(c, t, Some(text));
        }
    }

    fn transition(&self, c: &Cluster, t: Transition, error: Option<String>) {
        let open = t == Transition::Opened;
        metrics::breaker_open(&c.name, open);
        match (&error, &c.failover) {
            (Some(e), Some(f)) => {
                tracing::warn!(cluster = %c.name, "circuit breaker opened after repeated errors; new tasks go to {f} until a probe succeeds: {e}")
            }
            (Some(e), None) => {
                tracing::warn!(cluster = %c.name, "circuit breaker opened after repeated errors; new tasks wait until a probe succeeds: {e}")
            }
            (None, _) => {
                tracing::info!(cluster = %c.name, "circuit breaker closed: the cluster answers again")
            }
        }
        let Some(kv) = self.reports.clone() else {
            return;
        };
        let report = BreakerReport::now(open, &self.worker, error);
        let key = state::breaker_key(&c.name);
        tokio::spawn(async move {
            let body = serde_json::to_vec(&report).expect("reports serialize");
            if let Err(e) = kv
                .put(&key, body.into(), whale_kernel::kv::Ttl::Bucket)
                .await
            {
                tracing::debug!("cannot report breaker state: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whale_kernel::config::ClusterConfig;

    fn clusters(unknown: UnknownRoute) -> Clusters {
        let mut cfg = Config::default();
        cfg.dispatch.unknown_route = unknown;
        cfg.dispatch.breaker_threshold = 1;
        cfg.dispatch.breaker_cooldown = std::time::Duration::from_secs(3600);
        // Nothing listens on port 9: calls fail at once with a connection error.
        let c = |failover: Option<&str>| ClusterConfig {
            url: "http://127.0.0.1:9".into(),
            failover: failover.map(Into::into),
            ..Default::default()
        };
        cfg.clusters.insert("default".into(), c(None));
        cfg.clusters.insert("east".into(), c(Some("west")));
        cfg.clusters.insert("west".into(), c(Some("east")));
        Clusters::from_config(&cfg, "test").unwrap()
    }

    fn to(c: &str, rerouted: bool) -> Route {
        Route::To {
            cluster: c.into(),
            rerouted,
        }
    }

    #[test]
    fn dispatch_settings_parse_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("whale.toml");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load_with_env(Some(&p), &|_| None).map_err(|e| format!("{e:#}"))
        };
        let cfg = load("[dispatch]\nunknown_route = \"dead_letter\"\nbackoff_base = \"250ms\"\nmax_attempts = 3\n").unwrap();
        assert_eq!(cfg.dispatch.unknown_route, UnknownRoute::DeadLetter);
        assert_eq!(
            cfg.dispatch.backoff_base,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(cfg.dispatch.max_attempts, 3);
        assert_eq!(cfg.dispatch.breaker_threshold, 5, "defaults for the rest");
        let err = load("[dispatch]\nmax_retries = 3\n").unwrap_err();
        assert!(err.contains("unknown field `max_retries`"), "{err}");
        let err = load("[dispatch]\nunknown_route = \"drop\"\n").unwrap_err();
        assert!(err.contains("unknown variant `drop`"), "{err}");
        let err = load("[dispatch]\nmax_attempts = 0\n").unwrap_err();
        assert!(err.contains("max_attempts"), "{err}");
    }

    #[tokio::test]
    async fn routes_by_name_unknown_to_default_or_dead_letter() {
        let cs = clusters(UnknownRoute::Default);
        assert_eq!(cs.route("east").await, to("east", false));
        assert_eq!(cs.route("nowhere").await, to("default", true));
        let cs = clusters(UnknownRoute::DeadLetter);
        match cs.route("nowhere").await {
            Route::Dead { reason } => {
                assert!(reason.contains("\"nowhere\" is not configured"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn drained_or_open_clusters_fail_over_along_the_chain_then_wait() {
        let cs = clusters(UnknownRoute::Default);
        cs.get("east").unwrap().set_drained(true);
        assert_eq!(cs.route("east").await, to("west", true));
        let west = cs.get("west").unwrap();
        let err = whale_st2::St2Client::new(ClusterConn::new("http://127.0.0.1:9", Auth::None))
            .unwrap()
            .api_info()
            .await
            .unwrap_err();
        cs.failed(west, &err);
        assert!(west.breaker.is_open());
        match cs.route("east").await {
            Route::Wait { reason } => {
                assert!(reason.contains("east is drained"), "{reason}");
                assert!(
                    reason.contains("west's circuit breaker is open"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The cycle east → west → east ends; default has no failover and simply waits.
        cs.get("default").unwrap().set_drained(true);
        assert!(matches!(cs.route("default").await, Route::Wait { .. }));
        cs.get("east").unwrap().set_drained(false);
        assert_eq!(cs.route("west").await, to("east", true));
    }
}
