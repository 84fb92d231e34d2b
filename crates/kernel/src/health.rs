//! Health of the stages running in this process, for `/healthz`, `/readyz` and logs, and of the
//! servers they need besides NATS (Redis for throttle): a stage whose every message would wait
//! is not ready.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

/// Checks one server a stage depends on: `Err` says why it cannot be used.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Longest a probe may take before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// State of one stage loop.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum StageState {
    Starting,
    Running,
    Error { message: String },
    Stopped,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, StageState>>>,
    probes: Arc<Mutex<BTreeMap<String, Probe>>>,
}

impl Health {
    pub fn register(&self, stage: &str) {
        self.set(stage, StageState::Starting);
    }
    pub fn set_running(&self, stage: &str) {
        self.set(stage, StageState::Running);
    }
    pub fn set_error(&self, stage: &str, message: String) {
        self.set(stage, StageState::Error { message });
    }
    pub fn set_stopped(&self, stage: &str) {
        self.set(stage, StageState::Stopped);
    }
    fn set(&self, stage: &str, s: StageState) {
        self.inner.lock().unwrap().insert(stage.to_owned(), s);
    }
    /// Every stage's state.
    pub fn snapshot(&self) -> BTreeMap<String, StageState> {
        self.inner.lock().unwrap().clone()
    }
    /// Adds a server the stages here need (`redis`, ...), checked by every `/readyz`.
    pub fn add_probe(&self, name: &str, probe: Probe) {
        self.probes.lock().unwrap().insert(name.to_owned(), probe);
    }

    /// Runs every probe (concurrently, each bounded by [`PROBE_TIMEOUT`]): name → `"up"` or
    /// `"down: why"`, and whether all are up.
    pub async fn check_dependencies(&self) -> (BTreeMap<String, String>, bool) {
        let probes: Vec<(String, Probe)> = self
            .probes
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let results = futures::future::join_all(probes.into_iter().map(|(name, p)| async move {
            let r = match tokio::time::timeout(PROBE_TIMEOUT, p()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
            };
            (name, r)
        }))
        .await;
        let ok = results.iter().all(|(_, r)| r.is_ok());
        let map = results
            .into_iter()
            .map(|(n, r)| {
                let v = match r {
                    Ok(()) => "up".to_owned(),
                    Err(e) => format!("down: {}", crate::config::redact_url(&e)),
                };
                (n, v)
            })
            .collect();
        (map, ok)
    }

    /// Ready when every registered stage is running.
    pub fn ready(&self) -> bool {
        self.inner
            .lock()
            .unwrap()
            .values()
            .all(|s| *s == StageState::Running)
    }
}
