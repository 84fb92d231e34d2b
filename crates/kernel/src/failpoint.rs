//! The one test failpoint: a worker that kills itself with SIGKILL after a number of units of
//! work (decisions, executions), read from an environment variable, so chaos tests can crash a
//! worker at the worst moment (after the side effect, before the record and the ack) and check
//! that nothing is lost or done twice. The killing is compiled only with the cargo feature
//! `failpoints`, which the root package turns on in its dev-dependencies (so the `whale` that
//! `cargo test` builds has it and a `cargo build` of the product does not); a build without it
//! refuses to start when a failpoint variable is set, so a test cannot silently lose its crash.

#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether this build has the failpoints (cargo feature `failpoints`).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// A failpoint variable is set in a build without failpoints.
#[derive(Debug, thiserror::Error)]
#[error(
    "{env} is set, but this whale was built without failpoints: build it with \
     `--features whale-kernel/failpoints` (as `cargo test` does) or unset {env}"
)]
pub struct Absent {
    pub env: &'static str,
}

/// Kills this process once `limit` units were counted (never when the variable is unset).
#[derive(Debug)]
pub struct KillAfter {
    #[cfg(feature = "failpoints")]
    env: &'static str,
    #[cfg(feature = "failpoints")]
    limit: Option<u64>,
    #[cfg(feature = "failpoints")]
    done: AtomicU64,
}

impl KillAfter {
    /// Reads the limit from `env` (unset or not a number: never kills). Without the feature a
    /// set limit is an error: the process must not run as if it could crash on cue.
    pub fn from_env(env: &'static str) -> Result<KillAfter, Absent> {
        let limit: Option<u64> = std::env::var(env).ok().and_then(|v| v.parse().ok());
        #[cfg(feature = "failpoints")]
        return Ok(KillAfter {
            env,
            limit,
            done: AtomicU64::new(0),
        });
        #[cfg(not(feature = "failpoints"))]
        match limit {
            Some(_) => Err(Absent { env }),
            None => Ok(KillAfter::never(env)),
        }
    }

    /// A failpoint that never fires.
    pub fn never(env: &'static str) -> KillAfter {
        #[cfg(not(feature = "failpoints"))]
        let _ = env;
        KillAfter {
            #[cfg(feature = "failpoints")]
            env,
            #[cfg(feature = "failpoints")]
            limit: None,
            #[cfg(feature = "failpoints")]
            done: AtomicU64::new(0),
        }
    }

    /// Counts `n` more units; at the limit, logs `what` ("executions, before recording or
    /// acking them") and kills the process with SIGKILL (abort if `kill` cannot run). Without
    /// the feature it does nothing.
    pub fn count(&self, n: u64, what: &str) {
        #[cfg(not(feature = "failpoints"))]
        let _ = (n, what);
        #[cfg(feature = "failpoints")]
        {
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
}
