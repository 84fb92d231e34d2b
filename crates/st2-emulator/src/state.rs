//! The emulator's in-memory StackStorm: actions, executions, traces, tokens, counters, and the
//! event bus that the stream endpoint reads. One mutex guards the executions; handlers never
//! hold it across an await.

use crate::actions::{ActionSpec, UserSpec};
use crate::execution::{is_terminal, Exec, RunClock};
use crate::faults::Faults;
use crate::params;
use crate::util::{fmt_ts, object_id, ApiError, ApiResult};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch, Notify};

/// Command-line settings the handlers need.
#[derive(Debug, Clone)]
pub struct Config {
    pub api_key: Option<String>,
    pub any_action: bool,
    pub no_auth: bool,
    pub webui_url: String,
    pub token_ttl: u64,
}

/// One stream event, with what the stream filters look at.
#[derive(Debug)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
    pub execution_id: String,
    pub action_ref: String,
    pub status: Option<String>,
}

#[derive(Debug)]
pub struct TraceRec {
    pub id: String,
    pub tag: String,
    pub start: OffsetDateTime,
    pub executions: Vec<(String, String, OffsetDateTime)>,
}

impl TraceRec {
    pub fn doc(&self) -> Value {
        let comps: Vec<Value> = self
            .executions
            .iter()
            .map(|(id, r, t)| json!({"object_id": id, "ref": r, "updated_at": fmt_ts(*t), "caused_by": {}}))
            .collect();
        json!({
            "id": self.id, "uid": format!("trace:{}", self.id), "trace_tag": self.tag,
            "start_timestamp": fmt_ts(self.start), "action_executions": comps,
        })
    }
}

#[derive(Debug, Default)]
pub struct Store {
    pub execs: HashMap<String, Exec>,
    /// Execution ids in creation order.
    pub order: Vec<String>,
    pub traces: Vec<TraceRec>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub created: AtomicU64,
    pub by_action: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug)]
pub struct Token {
    pub user: String,
    pub expiry: OffsetDateTime,
}

pub struct Emu {
    pub cfg: Config,
    pub actions: RwLock<BTreeMap<String, ActionSpec>>,
    pub users: HashMap<String, String>,
    pub tokens: Mutex<HashMap<String, Token>>,
    pub store: Mutex<Store>,
    pub events: broadcast::Sender<Arc<Event>>,
    pub disconnect: watch::Sender<u64>,
    pub faults: Arc<Faults>,
    pub stats: Stats,
}

/// What a create (POST /executions or re_run) asks for.
pub struct CreateReq {
    pub action_ref: String,
    pub params: Map<String, Value>,
    pub context: Map<String, Value>,
    pub user: String,
    pub delay_ms: u64,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Emu {
    pub fn new(
        cfg: Config,
        actions: Vec<ActionSpec>,
        users: Vec<UserSpec>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            cfg,
            actions: RwLock::new(actions.into_iter().map(|a| (a.r#ref.clone(), a)).collect()),
            users: users.into_iter().map(|u| (u.name, u.password)).collect(),
            tokens: Mutex::new(HashMap::new()),
            store: Mutex::new(Store::default()),
            events: broadcast::channel(8192).0,
            disconnect: watch::channel(0).0,
            faults,
            stats: Stats::default(),
        }
    }

    /// The action for `r`, or a permissive one under `--any-action`.
    pub fn action(&self, r: &str) -> Option<ActionSpec> {
        let known = self
            .actions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(r)
            .cloned();
        known.or_else(|| (self.cfg.any_action && r.contains('.')).then(|| ActionSpec::any(r)))
    }

    /// Sends an event to open streams (skipped when nobody listens).
    pub fn publish(&self, name: &'static str, ex: &Exec, data: Option<Value>) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let is_exec = data.is_none();
        let data = data.unwrap_or_else(|| ex.doc(&self.cfg.webui_url));
        let _ = self.events.send(Arc::new(Event {
            name,
            data,
            execution_id: ex.id.clone(),
            action_ref: ex.action.r#ref.clone(),
            status: is_exec.then(|| ex.status.clone()),
        }));
    }

    /// Moves `ex` to `status`: log entry, end time when terminal, update event, driver woken.
    pub fn set_status(&self, ex: &mut Exec, status: &str) {
        let now = OffsetDateTime::now_utc();
        ex.status = status.to_owned();
        ex.log.push((now, status.to_owned()));
        ex.phase_at = Instant::now();
        if is_terminal(status) {
            ex.end = Some(now);
            ex.clock.stop(Instant::now());
        }
        self.publish("st2.execution__update", ex, None);
        ex.notify.notify_one();
    }

    /// Validates and records a new execution, as `POST /executions` does; returns its document.
    pub fn create(self: &Arc<Self>, req: CreateReq) -> ApiResult<Value> {
        let action = self.action(&req.action_ref).ok_or_else(|| {
            ApiError::bad_request(format!("Action \"{}\" cannot be found.", req.action_ref))
        })?;
        if !self.cfg.any_action {
            params::validate(&req.params, &action).map_err(ApiError::bad_request)?;
        }
        let mut context = req.context;
        context.insert("user".into(), json!(req.user));
        context.insert("pack".into(), json!(action.pack()));
        let trace_ctx = context.get("trace_context").cloned();
        let now = OffsetDateTime::now_utc();
        let (id, liveaction_id) = (object_id(), object_id());
        let status = if req.delay_ms > 0 {
            "delayed"
        } else {
            "requested"
        };
        let ex = Exec {
            id: id.clone(),
            liveaction_id: liveaction_id.clone(),
            action: action.clone(),
            status: status.into(),
            params: req.params,
            context,
            result: Value::Null,
            start: now,
            end: None,
            log: vec![(now, status.into())],
            parent: None,
            children: Vec::new(),
            output: Vec::new(),
            delay_ms: req.delay_ms,
            phase_at: Instant::now(),
            clock: RunClock::default(),
            notify: Arc::new(Notify::new()),
        };
        let mut store = lock(&self.store);
        let trace_id = trace_ctx
            .as_ref()
            .and_then(|t| t.get("id_")?.as_str().map(str::to_owned));
        let trace = match trace_id {
            Some(tid) => store
                .traces
                .iter()
                .position(|t| t.id == tid)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("Unable to find Trace with id=\"{tid}\""))
                })?,
            None => {
                let tag = trace_ctx
                    .as_ref()
                    .and_then(|t| t.get("trace_tag")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("execution-{liveaction_id}"));
                store.traces.push(TraceRec {
                    id: object_id(),
                    tag,
                    start: now,
                    executions: vec![],
                });
                store.traces.len() - 1
            }
        };
        store.traces[trace]
            .executions
            .push((id.clone(), action.r#ref.clone(), now));
        self.stats.created.fetch_add(1, Ordering::Relaxed);
        *lock(&self.stats.by_action)
            .entry(action.r#ref.clone())
            .or_default() += 1;
        let doc = ex.doc(&self.cfg.webui_url);
        self.publish("st2.execution__create", &ex, Some(doc.clone()));
        let notify = ex.notify.clone();
        store.order.push(id.clone());
        store.execs.insert(id.clone(), ex);
        drop(store);
        tokio::spawn(crate::lifecycle::drive(self.clone(), id, notify));
        Ok(doc)
    }

    /// Resolves `last` to the newest execution id.
    pub fn resolve_id(&self, id: &str) -> ApiResult<String> {
        if id != "last" {
            return Ok(id.to_owned());
        }
        lock(&self.store)
            .order
            .last()
            .cloned()
            .ok_or_else(|| ApiError::bad_request("No executions found in the database"))
    }

    /// Runs `f` on the execution `id` (404 when unknown).
    pub fn with_exec<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Exec) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let id = self.resolve_id(id)?;
        let mut store = lock(&self.store);
        let ex = store
            .execs
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found_id(&id))?;
        f(ex)
    }
}
