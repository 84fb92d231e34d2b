//! Task management: list, get, logs, retry (re_run), pause, resume and cancel an execution on
//! the cluster whale's own record names. One implementation behind both `whale exec` and
//! `/v1/executions`. Every action is an audit record (`whale_kernel::audit`): who, the
//! execution, the outcome and, for a retry, the changed parameters.
//!
//! An id is a whale task id or a StackStorm execution id. It is looked up in whale's execution
//! index (written by the feedback stage); a task id whale has no record of is then searched on
//! every cluster by trace tag (whale tags each execution with its task id), and an execution id
//! by a GET on every cluster.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use whale_kernel::audit::{self, Actor, Outcome, Target};
use whale_kernel::kv::Bucket;
use whale_kernel::{Config, Nats};
use whale_st2::{Execution, St2Error};

use crate::clusters::Clusters;
use crate::execs::{self, ExecRecord};

/// An action on one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    Pause,
    Resume,
    Cancel,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "retry" => Action::Retry,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "cancel" => Action::Cancel,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
        }
    }
}

/// Why a management call failed.
#[derive(Debug)]
pub enum Error {
    /// Neither whale's records nor any cluster know the id.
    NotFound(String),
    /// whale's record names a cluster this configuration does not have.
    UnknownCluster { id: String, cluster: String },
    /// StackStorm answered with an error or refused (its message is kept).
    StackStorm {
        cluster: String,
        what: String,
        err: Box<St2Error>,
    },
    /// The id is not in whale's execution index (whale did not create it) and the caller may
    /// only act on executions whale created.
    NotOwned(String),
    /// NATS / KV trouble.
    Internal(anyhow::Error),
    /// The audit trail cannot take a record now: nothing was done.
    AuditUnavailable(audit::Unavailable),
    /// Done, but its audit record could not be written.
    AuditMissing { found: Box<Found>, err: String },
}

impl Error {
    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NotFound(_) => 404,
            Error::UnknownCluster { .. } => 409,
            Error::NotOwned(_) => 403,
            Error::StackStorm { err, .. } => match err.status() {
                Some(s) if (400..500).contains(&s) => s,
                Some(_) => 502,
                None if err.faultstring().is_some() => 409,
                None => 502,
            },
            Error::Internal(_) | Error::AuditMissing { .. } => 500,
            Error::AuditUnavailable(_) => 503,
        }
    }

    /// StackStorm's own message, when it sent one.
    pub fn faultstring(&self) -> Option<&str> {
        match self {
            Error::StackStorm { err, .. } => err.faultstring(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound(id) => write!(f, "no execution {id:?}: not a whale task id or a StackStorm execution id whale knows (see `whale exec list`)"),
            Error::UnknownCluster { id, cluster } => write!(f, "{id} ran on cluster {cluster:?}, which is not configured here: add [clusters.{cluster}] to whale.toml"),
            Error::StackStorm { cluster, what, err } => match err.faultstring() {
                Some(fault) => write!(f, "StackStorm (cluster {cluster}) refused to {what}: {fault}"),
                None => write!(f, "cannot {what} on cluster {cluster}: {err}"),
            },
            Error::NotOwned(id) => write!(f, "{id:?} is not an execution whale created (not in whale's execution index): only an admin may act on it"),
            Error::Internal(e) => write!(f, "{e:#}"),
            Error::AuditUnavailable(e) => write!(f, "{e}"),
            Error::AuditMissing { found, err } => write!(f, "execution {} was acted on, but its audit record is missing: {err}", found.record.execution_id),
        }
    }
}

impl std::error::Error for Error {}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Internal(e)
    }
}

/// An execution as whale and StackStorm see it.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub record: ExecRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
}

/// Task management over the configured clusters.
#[derive(Clone)]
pub struct Manager {
    nats: Nats,
    kv: Bucket,
    clusters: Clusters,
}

impl Manager {
    pub async fn new(nats: &Nats, cfg: &Config) -> anyhow::Result<Manager> {
        Ok(Manager {
            nats: nats.clone(),
            kv: execs::store(nats).await?,
            clusters: Clusters::from_config(cfg)?,
        })
    }

    /// whale's records, newest first, filtered by rule and (last known) status.
    pub async fn list(
        &self,
        rule: Option<&str>,
        status: Option<&str>,
    ) -> Result<Vec<ExecRecord>, Error> {
        let all = execs::list(&self.kv).await?;
        Ok(all
            .into_iter()
            .filter(|r| rule.is_none_or(|x| r.rule == x))
            .filter(|r| status.is_none_or(|x| r.status == x))
            .collect())
    }

    /// whale's record of `id`, found in the index or on the clusters.
    pub async fn resolve(&self, id: &str) -> Result<ExecRecord, Error> {
        if let Some(r) = execs::by_task(&self.kv, id).await? {
            return Ok(r);
        }
        if let Some(r) = execs::by_execution(&self.kv, id).await? {
            return Ok(r);
        }
        for (name, c) in self.clusters.iter() {
            let found = match c.find_by_trace_tag(id).await {
                Ok(Some(e)) => Some(e),
                _ => c.get_execution(id).await.ok(),
            };
            if let Some(e) = found {
                return Ok(record_of(name, &e));
            }
        }
        Err(Error::NotFound(id.to_owned()))
    }

    fn client(&self, r: &ExecRecord) -> Result<&whale_st2::St2Client, Error> {
        self.clusters
            .get(&r.cluster)
            .ok_or_else(|| Error::UnknownCluster {
                id: r.task_id.clone(),
                cluster: r.cluster.clone(),
            })
    }

    fn st2(r: &ExecRecord, what: &str) -> impl FnOnce(St2Error) -> Error {
        let (cluster, what) = (
            r.cluster.clone(),
            format!("{what} execution {}", r.execution_id),
        );
        move |err| Error::StackStorm {
            cluster,
            what,
            err: Box::new(err),
        }
    }

    /// The record and StackStorm's current view of the execution.
    pub async fn get(&self, id: &str) -> Result<Found, Error> {
        let record = self.resolve(id).await?;
        let execution = self
            .client(&record)?
            .get_execution(&record.execution_id)
            .await
            .map_err(Self::st2(&record, "get"))?;
        Ok(Found {
            record,
            execution: Some(execution),
        })
    }

    /// The execution's stored output (stdout and stderr).
    pub async fn logs(&self, id: &str) -> Result<(ExecRecord, String), Error> {
        let record = self.resolve(id).await?;
        let text = self
            .client(&record)?
            .output(&record.execution_id)
            .await
            .map_err(Self::st2(&record, "read the output of"))?;
        Ok((record, text))
    }

    /// whale's own record of `id` (task or execution id), from its execution index only.
    async fn owned(&self, id: &str) -> Result<ExecRecord, Error> {
        if let Some(r) = execs::by_task(&self.kv, id).await? {
            return Ok(r);
        }
        if let Some(r) = execs::by_execution(&self.kv, id).await? {
            return Ok(r);
        }
        Err(Error::NotOwned(id.to_owned()))
    }

    /// Retry (re_run), pause, resume or cancel; StackStorm's refusal comes back as an error
    /// with its message. Unless `any` (admin, or the CLI, which holds whale's own NATS
    /// credentials), only executions in whale's execution index are acted on: StackStorm is not
    /// called for an execution whale did not create.
    ///
    /// Audited (`whale_kernel::audit`) as `actor`: nothing is done while the audit trail cannot
    /// take a record; then every attempt is recorded — done (a retry with its parameter diff and
    /// new execution), refused (unknown, not whale's) or failed (StackStorm's message).
    pub async fn act(
        &self,
        id: &str,
        action: Action,
        parameters: Value,
        actor: &Actor,
        any: bool,
    ) -> Result<Found, Error> {
        audit::check(&self.nats)
            .await
            .map_err(Error::AuditUnavailable)?;
        let kind = match action {
            Action::Retry => audit::Action::ExecRetry,
            Action::Pause => audit::Action::ExecPause,
            Action::Resume => audit::Action::ExecResume,
            Action::Cancel => audit::Action::ExecCancel,
        };
        let mut rec = audit::Record::new(actor, kind, Target::new("execution", id));
        let r = self.act_once(id, action, parameters, any, &mut rec).await;
        rec = match &r {
            Ok(_) => rec,
            Err(e @ (Error::NotFound(_) | Error::NotOwned(_) | Error::UnknownCluster { .. })) => {
                rec.outcome(Outcome::Refused, Some(e.to_string()))
            }
            Err(e) => rec.outcome(Outcome::Failed, Some(e.to_string())),
        };
        match (audit::record(&self.nats, &rec).await, r) {
            (Err(err), Ok(found)) => Err(Error::AuditMissing {
                found: Box::new(found),
                err: format!("{err:#}"),
            }),
            (_, r) => r,
        }
    }

    async fn act_once(
        &self,
        id: &str,
        action: Action,
        parameters: Value,
        any: bool,
        rec: &mut audit::Record,
    ) -> Result<Found, Error> {
        let record = if any {
            self.resolve(id).await?
        } else {
            self.owned(id).await?
        };
        rec.target = Target::new("execution", record.execution_id.clone());
        for (field, v) in [
            (&mut rec.task_id, &record.task_id),
            (&mut rec.event_id, &record.event_id),
            (&mut rec.rule, &record.rule),
            (&mut rec.cluster, &record.cluster),
        ] {
            *field = Some(v.clone()).filter(|v| !v.is_empty());
        }
        rec.execution_id = Some(record.execution_id.clone());
        let c = self.client(&record)?;
        let eid = &record.execution_id;
        let changed =
            action == Action::Retry && parameters.as_object().is_some_and(|m| !m.is_empty());
        if changed {
            // The diff: each parameter given, as it was (StackStorm's record of the original
            // execution; null when it had none) and as it is now.
            let original = c.get_execution(eid).await.ok().and_then(|e| e.parameters);
            let mut before = serde_json::Map::new();
            let mut after = serde_json::Map::new();
            for (k, v) in parameters.as_object().into_iter().flatten() {
                let old = original
                    .as_ref()
                    .and_then(|o| o.get(k))
                    .cloned()
                    .unwrap_or(Value::Null);
                if &old != v {
                    before.insert(k.clone(), old);
                    after.insert(k.clone(), v.clone());
                }
            }
            rec.before = Some(Value::Object(before));
            rec.after = Some(Value::Object(after));
        }
        let r = match action {
            Action::Retry => c.re_run(eid, parameters.clone()).await,
            Action::Pause => c.pause(eid).await,
            Action::Resume => c.resume(eid).await,
            Action::Cancel => c.cancel(eid).await,
        };
        let execution = r.map_err(Self::st2(&record, action.as_str()))?;
        if action == Action::Retry {
            // The new execution is the retry's natural id: a repeated write is stored once.
            *rec = rec.clone().natural_id(&execution.id);
            rec.details = Some(serde_json::json!({"new_execution_id": execution.id}));
        }
        tracing::info!(task_id = %record.task_id, execution_id = %eid, cluster = %record.cluster, by = %rec.who, changed_parameters = %if changed { parameters.to_string() } else { String::new() }, "{} → {}", action.as_str(), execution.id);
        Ok(Found {
            record,
            execution: Some(execution),
        })
    }
}

/// A record for an execution whale has no index entry for (found on a cluster).
fn record_of(cluster: &str, e: &Execution) -> ExecRecord {
    let w = e.context.as_ref().and_then(|c| c.get("whale"));
    let s = |k: &str| {
        w.and_then(|w| w.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    ExecRecord {
        task_id: s("task_id"),
        event_id: s("event_id"),
        rule: s("rule"),
        action: e.action_ref().unwrap_or("").to_owned(),
        cluster: cluster.to_owned(),
        execution_id: e.id.clone(),
        status: e
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        web_url: e.web_url.clone(),
        created: e.start_timestamp.clone().unwrap_or_default(),
        finished: e.end_timestamp.clone(),
        elapsed_seconds: e.elapsed_seconds,
    }
}
