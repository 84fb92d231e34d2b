//! A circuit breaker per cluster and worker: after `threshold` consecutive failed calls the
//! cluster is "open" — its new tasks fail over or wait instead of piling more load (and more
//! failed attempts) on a sick StackStorm. After `cooldown` one caller gets to probe; the probe's
//! success closes the breaker, its failure keeps it open for another cooldown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: call away.
    Pass,
    /// Open: do not call.
    Blocked,
    /// Open, cooldown over, and this caller was chosen to probe: report the result with
    /// [`Breaker::success`] or [`Breaker::failure`].
    Probe,
}

/// A change worth logging and reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_since: Option<Instant>,
    probing: bool,
    last_error: Option<String>,
}

/// One cluster's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go to this cluster now?
    pub fn gate(&self) -> Gate {
        let mut st = self.lock();
        match st.open_since {
            None => Gate::Pass,
            Some(t) if st.probing || t.elapsed() < self.cooldown => Gate::Blocked,
            Some(_) => {
                st.probing = true;
                Gate::Probe
            }
        }
    }

    /// True while open (for reports; does not claim a probe).
    pub fn is_open(&self) -> bool {
        self.lock().open_since.is_some()
    }

    /// The error that last counted against this cluster.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// A call (or a probe) worked.
    pub fn success(&self) -> Option<Transition> {
        let mut st = self.lock();
        st.failures = 0;
        st.probing = false;
        st.open_since.take().map(|_| Transition::Closed)
    }

    /// A call (or a probe) failed with a cluster-side error.
    pub fn failure(&self, error: &str) -> Option<Transition> {
        let mut st = self.lock();
        st.failures = st.failures.saturating_add(1);
        st.last_error = Some(error.to_owned());
        if st.probing {
            st.probing = false;
            st.open_since = Some(Instant::now());
            return None;
        }
        if st.open_since.is_none() && st.failures >= self.threshold {
            st.open_since = Some(Instant::now());
            return Some(Transition::Opened);
        }
        None
    }

    /// Forgets a probe that never happened (the prober gave up before calling).
    pub fn abandon_probe(&self) {
        self.lock().probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_blocks_then_one_probe_decides() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert_eq!(b.failure("e1"), None);
        assert_eq!(b.success(), None, "success resets the count");
        assert_eq!(b.failure("e1"), None);
        assert_eq!(b.failure("e2"), None);
        assert_eq!(b.gate(), Gate::Pass);
        assert_eq!(b.failure("e3"), Some(Transition::Opened));
        assert_eq!(b.failure("e4"), None, "opens once");
        assert_eq!(b.gate(), Gate::Blocked);
        assert_eq!(b.last_error().as_deref(), Some("e4"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.gate(), Gate::Probe);
        assert_eq!(b.gate(), Gate::Blocked, "only one prober at a time");
        assert_eq!(b.failure("probe failed"), None);
        assert_eq!(
            b.gate(),
            Gate::Blocked,
            "a failed probe starts a new cooldown"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.gate(), Gate::Probe);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.gate(), Gate::Pass);
        assert!(!b.is_open());
    }
}
