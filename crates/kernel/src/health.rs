//! Health of the stages running in this process, for `/healthz`, `/readyz` and logs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

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
    /// Ready when every registered stage is running.
    pub fn ready(&self) -> bool {
        self.inner
            .lock()
            .unwrap()
            .values()
            .all(|s| *s == StageState::Running)
    }
}
