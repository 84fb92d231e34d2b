//! whale's own record of every execution it followed, kept in KV `whale_state` so that task
//! management finds an execution's cluster without asking every StackStorm: `exec.<task_id>` →
//! [`ExecRecord`], and `exec-id.<execution_id>` → task id. Written by the feedback stage when it
//! first sees an execution and again when the execution ends. Both keys live for
//! `state.executions` after their last write (the bucket's max age, default 7 days, never below
//! `nats.pipe_retention`, so a redelivered `Dispatched` record still finds its record); then
//! `whale exec` knows the execution only by its StackStorm id on the cluster.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use whale_kernel::kv::{Bucket, Ttl};
use whale_kernel::records::Dispatched;
use whale_kernel::{keys, subjects, Nats};

/// One execution as whale knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRecord {
    pub task_id: String,
    pub event_id: String,
    pub rule: String,
    pub action: String,
    pub cluster: String,
    pub execution_id: String,
    /// The last status whale saw: `running` until the execution ends, then StackStorm's
    /// terminal status.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_seconds: Option<f64>,
}

impl ExecRecord {
    /// The record of a freshly dispatched execution.
    pub fn from_dispatched(d: &Dispatched) -> ExecRecord {
        ExecRecord {
            task_id: d.task.task_id.clone(),
            event_id: d.task.event_id.clone(),
            rule: d.task.rule.clone(),
            action: d.task.action.clone(),
            cluster: d.cluster.clone(),
            execution_id: d.execution_id.clone(),
            status: "running".into(),
            web_url: d.web_url.clone(),
            created: d.created.clone(),
            finished: None,
            elapsed_seconds: None,
        }
    }
}

/// The bucket.
pub async fn store(nats: &Nats) -> anyhow::Result<Bucket> {
    Bucket::open(nats, subjects::KV_STATE).await
}

/// Writes the record under both keys.
pub async fn put(kv: &Bucket, rec: &ExecRecord) -> anyhow::Result<()> {
    let body = serde_json::to_vec(rec)?;
    kv.put(&keys::exec(&rec.task_id), body.into(), Ttl::Bucket)
        .await?;
    kv.put(
        &keys::exec_id(&rec.execution_id),
        rec.task_id.clone().into_bytes().into(),
        Ttl::Bucket,
    )
    .await?;
    Ok(())
}

/// The record of a task id.
pub async fn by_task(kv: &Bucket, task_id: &str) -> anyhow::Result<Option<ExecRecord>> {
    match kv.get(&keys::exec(task_id)).await? {
        Some(v) => Ok(serde_json::from_slice(&v).ok()),
        None => Ok(None),
    }
}

/// The record of a StackStorm execution id.
pub async fn by_execution(kv: &Bucket, execution_id: &str) -> anyhow::Result<Option<ExecRecord>> {
    match kv.get(&keys::exec_id(execution_id)).await? {
        Some(task) => by_task(kv, &String::from_utf8_lossy(&task)).await,
        None => Ok(None),
    }
}

/// Every record (newest first).
pub async fn list(kv: &Bucket) -> anyhow::Result<Vec<ExecRecord>> {
    let keys = kv.keys(keys::EXEC).await?;
    let mut out: Vec<ExecRecord> = futures::stream::iter(keys)
        .map(|k| async move { kv.get(&k).await })
        .buffer_unordered(32)
        .filter_map(|r| async move {
            r.ok()
                .flatten()
                .and_then(|v| serde_json::from_slice(&v).ok())
        })
        .collect()
        .await;
    out.sort_by(|a: &ExecRecord, b| {
        b.created
            .cmp(&a.created)
            .then_with(|| a.task_id.cmp(&b.task_id))
    });
    Ok(out)
}
