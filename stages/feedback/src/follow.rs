//! Following executions to their end on one StackStorm cluster, cheaply and without trusting
//! memory. StackStorm's event stream has no replay, so the stream is only a shortcut: an
//! execution counts as *covered* once a GET (or a re-list) saw it running while the current
//! stream connection was already open — from then on its end cannot be missed unless that
//! connection drops. A covered execution costs nothing to look at again; anything else (no
//! stream, a reconnect, a restarted worker) is looked at with a GET. After every reconnect the
//! executions being followed are re-listed in pages, so a disconnect does not turn into one GET
//! per execution.
//!
//! What is followed is not kept here: it is the set of un-acked `Dispatched` messages, which
//! JetStream redelivers after each delay. This map is a cache a restart may lose.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use whale_kernel::backoff::Backoff;
use whale_st2::{Execution, ListFilter, St2Client, St2Error, StreamFilter};

/// What a look at an execution found.
#[derive(Debug)]
pub enum Look {
    Finished(Box<Execution>),
    Running,
}

/// Follows the executions of one cluster.
pub struct Follower {
    cluster: String,
    client: St2Client,
    use_stream: bool,
    started: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Bumped on every stream (re)connection.
    epoch: u64,
    connected: bool,
    watched: HashMap<String, Watch>,
    /// Terminal executions the stream or a re-list reported, until looked at.
    done: HashMap<String, Execution>,
    last_evict: Option<Instant>,
}

struct Watch {
    /// The connection epoch under which the execution was seen running (0: never).
    covered: u64,
    seen: Instant,
    created: Option<OffsetDateTime>,
}

/// Entries not looked at for this long belong to a message another worker took over.
const STALE: Duration = Duration::from_secs(600);
/// Re-list at most this many pages of 100 after a reconnect; the rest is looked at one by one.
const RELIST_PAGES: u32 = 20;

impl Follower {
    pub fn new(cluster: &str, client: St2Client, use_stream: bool) -> Arc<Follower> {
        Arc::new(Follower {
            cluster: cluster.to_owned(),
            client,
            use_stream,
            started: AtomicBool::new(false),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at one execution: finished (with its document) or still running.
    pub async fn look(self: &Arc<Self>, id: &str, created: &str) -> Result<Look, St2Error> {
        if self.use_stream && !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().run());
        }
        let epoch = {
            let mut st = self.state();
            if st
                .last_evict
                .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
            {
                st.evict_stale();
            }
            if let Some(e) = st.done.remove(id) {
                st.watched.remove(id);
                return Ok(Look::Finished(Box::new(e)));
            }
            let (connected, epoch) = (st.connected, st.epoch);
            let w = st.watched.entry(id.to_owned()).or_insert_with(|| Watch {
                covered: 0,
                seen: Instant::now(),
                created: OffsetDateTime::parse(created, &Rfc3339).ok(),
            });
            w.seen = Instant::now();
            if connected && w.covered == epoch {
                crate::metrics::LOOKS
                    .with_label_values(&[&self.cluster, "stream"])
                    .inc();
                return Ok(Look::Running);
            }
            connected.then_some(epoch)
        };
        // Registered before the GET: an end reported by the stream from now on is kept.
        crate::metrics::LOOKS
            .with_label_values(&[&self.cluster, "get"])
            .inc();
        let e = self.client.get_execution(id).await?;
        let mut st = self.state();
        if e.is_terminal() {
            st.watched.remove(id);
            st.done.remove(id);
            return Ok(Look::Finished(Box::new(e)));
        }
        if let Some(e) = st.done.remove(id) {
            st.watched.remove(id);
            return Ok(Look::Finished(Box::new(e)));
        }
        if let Some(epoch) = epoch {
            if st.connected && st.epoch == epoch {
                if let Some(w) = st.watched.get_mut(id) {
                    w.covered = epoch;
                }
            }
        }
        Ok(Look::Running)
    }

    /// Whether the stream is connected now (for logs and tests).
    pub fn connected(&self) -> bool {
        self.state().connected
    }

    /// The stream loop: connect, re-list, take in terminal events; on any end, reconnect.
    async fn run(self: Arc<Self>) {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        };
        let mut failures = 1;
        loop {
            match self.client.stream(&StreamFilter::executions()).await {
                Ok(mut events) => {
                    failures = 1;
                    let epoch = {
                        let mut st = self.state();
                        st.epoch += 1;
                        st.connected = true;
                        st.epoch
                    };
                    crate::metrics::STREAM_CONNECTS
                        .with_label_values(&[&self.cluster])
                        .inc();
                    tracing::debug!(cluster = %self.cluster, epoch, "stream connected");
                    let relist = tokio::spawn(self.clone().relist(epoch));
                    while let Some(item) = events.next().await {
                        match item {
                            Ok(ev) => {
                                if let Some(e) = ev.execution() {
                                    self.saw(e);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(cluster = %self.cluster, "stream: {e}");
                                break;
                            }
                        }
                    }
                    self.state().connected = false;
                    relist.abort();
                    tracing::info!(cluster = %self.cluster, "stream ended; reconnecting and re-listing");
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.cluster, "cannot open the stream ({e}); polling until it is back");
                }
            }
            self.state().evict_stale();
            tokio::time::sleep(backoff.ceiling(failures)).await;
            failures = failures.saturating_add(1);
        }
    }

    fn saw(&self, e: Execution) {
        if e.is_terminal() {
            let mut st = self.state();
            if st.watched.contains_key(&e.id) {
                st.done.insert(e.id.clone(), e);
            }
        }
    }

    /// After a (re)connection: list the cluster's executions since the oldest one followed and
    /// settle every followed one the list shows (terminal → done, running → covered).
    async fn relist(self: Arc<Self>, epoch: u64) {
        let (ids, oldest) = {
            let st = self.state();
            let ids: HashSet<String> = st
                .watched
                .iter()
                .filter(|(_, w)| w.covered != epoch)
                .map(|(k, _)| k.clone())
                .collect();
            let oldest = st.watched.values().filter_map(|w| w.created).min();
            (ids, oldest)
        };
        if ids.is_empty() {
            return;
        }
        // Clocks of whale and StackStorm differ a little: start a while earlier.
        let since = oldest.map(|t| t - time::Duration::minutes(5));
        let mut settled = 0usize;
        for page in 0..RELIST_PAGES {
            let filter = ListFilter {
                timestamp_gt: since.and_then(|t| t.format(&Rfc3339).ok()),
                limit: Some(100),
                offset: Some(page * 100),
                oldest_first: true,
                ..ListFilter::default()
            };
            let list = match self.client.list_executions(&filter).await {
                Ok((list, _)) => list,
                Err(e) => {
                    tracing::warn!(cluster = %self.cluster, "re-list after reconnect: {e}; looking at each execution instead");
                    return;
                }
            };
            let n = list.len();
            let mut st = self.state();
            for e in list {
                if !ids.contains(&e.id) {
                    continue;
                }
                settled += 1;
                if e.is_terminal() {
                    if st.watched.contains_key(&e.id) {
                        st.done.insert(e.id.clone(), e);
                    }
                } else if st.connected && st.epoch == epoch {
                    if let Some(w) = st.watched.get_mut(&e.id) {
                        w.covered = epoch;
                    }
                }
            }
            drop(st);
            if n < 100 || settled >= ids.len() {
                break;
            }
        }
        tracing::debug!(cluster = %self.cluster, followed = ids.len(), settled, "re-listed after reconnect");
    }
}

impl State {
    fn evict_stale(&mut self) {
        self.last_evict = Some(Instant::now());
        self.watched.retain(|_, w| w.seen.elapsed() < STALE);
        let State { watched, done, .. } = self;
        done.retain(|id, _| watched.contains_key(id));
    }
}
