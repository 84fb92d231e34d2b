//! The one test failpoint: a worker that kills itself with SIGKILL after a number of units of
//! work (decisions, executions), read from an environment variable that is never set in
//! production, so chaos tests can crash a worker at the worst moment (after the side effect,
//! before the record and the ack) and check that nothing is lost or done twice.

use std::sync::atomic::{AtomicU64, Ordering};

/// Kills this process once `limit` units were counted (never when the variable is unset).
#[derive(Debug)]
pub struct KillAfter {
    env: &'static str,
    limit: Option<u64>,
    done: AtomicU64,
}

impl KillAfter {
    /// Reads the limit from `env` (unset or not a number: never kills).
    pub fn from_env(env: &'static str) -> KillAfter {
        KillAfter {
            env,
            limit: std::env::var(env).ok().and_then(|v| v.parse().ok()),
            done: AtomicU64::new(0),
        }
    }

    /// A failpoint that never fires.
    pub fn never(env: &'static str) -> KillAfter {
        KillAfter {
            env,
            limit: None,
            done: AtomicU64::new(0),
        }
    }

    /// Counts `n` more units; at the limit, logs `what` ("executions, before recording or
    /// acking them") and kills the process with SIGKILL (abort if `kill` cannot run).
    pub fn count(&self, n: u64, what: &str) {
        let Some(limit) = self.limit else { return };
        let total = self.done.fetch_add(n, Ordering::SeqCst) + n;
        if total >= limit {
            tracing::error!("{}: killing this process after {total} {what}", self.env);
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::process::abort();
        }
    }
}
