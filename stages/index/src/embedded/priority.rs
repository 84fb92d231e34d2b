//! The embedded index yields the CPU to the event path of its own process: its threads run in
//! Linux's idle scheduling class (any runnable event-path thread preempts them at once, which
//! keeps p99 ingest→POST low), with a floor — when its writes have waited too long, its threads
//! return to the normal class at nice 10 until it catches up, so search cannot fall behind
//! without bound while the CPU stays busy (docs/search.md "CPU priority").
//!
//! A thread belongs to the index by its class, not its name: only the writer thread enters the
//! idle class, and every thread tantivy starts inherits it from the writer. The floor moves back
//! only the threads it moved out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// Nice value of the index's threads in the normal class: before they enter the idle class, and
/// while the floor holds them out of it. In the idle class the event path of a saturated
/// one-process pipeline finished ~15% sooner than with nice 10 alone (docs/operations.md,
/// session 12).
pub(crate) const NICE: i32 = 10;

/// How the index's threads are scheduled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scheduling {
    /// Use the idle class (else nice [`NICE`] only).
    pub idle: bool,
    /// The floor: out of the idle class once the oldest job waiting for the writer is this old.
    /// A job waits at most a second for its commit when the writer keeps up.
    pub raise_after: Duration,
    /// Back into the idle class once the oldest waiting job is younger than this (or none waits).
    pub lower_below: Duration,
}

impl Scheduling {
    /// What `whale run` uses: the idle class when this process may leave it again (the floor
    /// needs that), else nice 10 alone; nice 10 alone too when the calling thread is not in the
    /// normal class (a whale started with `chrt`: its choice stands).
    pub(crate) fn standard() -> Scheduling {
        Scheduling {
            idle: class_of(0) == Ok(Class::Normal) && can_leave_idle(),
            raise_after: Duration::from_secs(3),
            lower_below: Duration::from_millis(1500),
        }
    }
}

/// How often the floor looks.
const EVERY: Duration = Duration::from_millis(250);

/// When each job now waiting for the writer was sent (oldest first): pushed when a job is sent,
/// popped when the writer answers one (it answers in the order they came).
#[derive(Default)]
pub(crate) struct Waiting(Mutex<VecDeque<Instant>>);

impl Waiting {
    pub(crate) fn sent(&self) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(Instant::now());
        }
    }

    pub(crate) fn answered(&self) {
        if let Ok(mut q) = self.0.lock() {
            q.pop_front();
        }
    }

    /// How long the oldest waiting job has waited (none: nothing waits).
    fn oldest(&self) -> Option<Duration> {
        self.0.lock().ok()?.front().map(|t| t.elapsed())
    }
}

/// Puts the calling thread (the writer, before it starts tantivy's threads) at nice [`NICE`], and
/// into the idle class when `s.idle`. Returns whether it is in the idle class.
pub(crate) fn enter(s: &Scheduling) -> bool {
    if let Err(e) = set_nice(NICE) {
        tracing::debug!("the index writer keeps its priority: {e}");
    }
    if !s.idle {
        return false;
    }
    match set_class(0, Class::Idle) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("the index's threads stay at nice {NICE}: {e}");
            false
        }
    }
}

/// Indexes of this process the floor watches, and whether its thread runs. One floor per
/// process: the index's threads are known by their class, so two floors would move each other's.
static WATCHED: Mutex<(Vec<Watched>, bool)> = Mutex::new((Vec::new(), false));

/// An index under the floor: its waiting jobs and its thresholds.
type Watched = (Weak<Waiting>, Scheduling);

/// Times the floor raised the index's threads since the process started.
static RAISED: AtomicU64 = AtomicU64::new(0);

/// Times the floor raised the index's threads out of the idle class since the process started.
pub fn raised() -> u64 {
    RAISED.load(Ordering::Relaxed)
}

/// Puts an index under the floor: its threads leave the idle class when its oldest job has
/// waited [`Scheduling::raise_after`], and return once it caught up. Watching ends when
/// `waiting` is dropped (the index closed).
pub(crate) fn watch(s: Scheduling, waiting: Weak<Waiting>) {
    let Ok(mut w) = WATCHED.lock() else { return };
    w.0.push((waiting, s));
    if w.1 {
        return;
    }
    match std::thread::Builder::new()
        .name("whale-index-floor".into())
        .spawn(floor)
    {
        Ok(_) => w.1 = true,
        Err(e) => {
            tracing::warn!(
                "cannot start the index's priority floor ({e}): its threads stay at nice {NICE}"
            );
            w.0.clear();
            drop(w);
            raise(&mut Default::default());
        }
    }
}

/// The floor's thread (normal class); it ends when no index is left to watch.
fn floor() {
    let mut up = false;
    // The threads it took out of the idle class: only these go back (never a thread the index
    // did not put there, whatever its nice value).
    let mut raised_tids = std::collections::HashSet::new();
    loop {
        std::thread::sleep(EVERY);
        let (want_up, age) = {
            let Ok(mut w) = WATCHED.lock() else { return };
            w.0.retain(|(q, _)| q.strong_count() > 0);
            if w.0.is_empty() {
                w.1 = false;
                return;
            }
            let mut worst = Duration::ZERO;
            let mut want = false;
            for (q, s) in &w.0 {
                let age = q.upgrade().and_then(|q| q.oldest()).unwrap_or_default();
                worst = worst.max(age);
                want |= age >= if up { s.lower_below } else { s.raise_after };
            }
            (want, worst)
        };
        if want_up && !up {
            tracing::info!(
                "the embedded index is {:.1} s behind with the CPU busy: its threads leave the idle \
                 class (nice {NICE}) until it catches up",
                age.as_secs_f64()
            );
            RAISED.fetch_add(1, Ordering::Relaxed);
        } else if up && !want_up {
            tracing::info!("the embedded index caught up: its threads are back in the idle class");
            lower(&mut raised_tids);
        }
        up = want_up;
        if up {
            // Every look, not only on a change: a thread tantivy started meanwhile from one
            // still in the idle class is raised too.
            raise(&mut raised_tids);
        }
    }
}

/// Moves every thread of this process in the idle class (only the index's threads enter it)
/// to the normal class, and remembers it.
fn raise(raised: &mut std::collections::HashSet<i32>) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for tid in tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
    {
        if class_of(tid) == Ok(Class::Idle) {
            match set_class(tid, Class::Normal) {
                Ok(()) => {
                    raised.insert(tid);
                }
                Err(e) => warn_unless_gone(tid, &e),
            }
        }
    }
}

/// Moves the threads [`raise`] moved back into the idle class.
fn lower(raised: &mut std::collections::HashSet<i32>) {
    for tid in raised.drain() {
        if class_of(tid) == Ok(Class::Normal) {
            if let Err(e) = set_class(tid, Class::Idle) {
                warn_unless_gone(tid, &e);
            }
        }
    }
}

/// A thread may end between the look and the move (tantivy's indexing threads end with their
/// segment): that is no failure.
fn warn_unless_gone(tid: i32, e: &str) {
    if std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
        tracing::warn!("cannot move index thread {tid} between scheduling classes: {e}");
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Normal,
    Idle,
    Other,
}

#[cfg(target_os = "linux")]
fn class_of(tid: i32) -> Result<Class, String> {
    match uapi::sched_getscheduler(tid) {
        Ok(uapi::c::SCHED_OTHER) => Ok(Class::Normal),
        Ok(uapi::c::SCHED_IDLE) => Ok(Class::Idle),
        Ok(_) => Ok(Class::Other),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(target_os = "linux")]
fn set_class(tid: i32, class: Class) -> Result<(), String> {
    let policy = match class {
        Class::Normal => uapi::c::SCHED_OTHER,
        Class::Idle => uapi::c::SCHED_IDLE,
        Class::Other => return Ok(()),
    };
    uapi::sched_setscheduler(tid, policy, &uapi::c::sched_param { sched_priority: 0 })
        .map(|_| ())
        .map_err(|e| format!("sched_setscheduler: {e}"))
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
#[cfg(target_os = "linux")]
fn set_nice(nice: i32) -> Result<(), String> {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
        .map_err(|e| e.to_string())
}

/// The calling thread's id.
#[cfg(target_os = "linux")]
pub(crate) fn tid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// Whether a thread of this process may leave the idle class again: an unprivileged process
/// needs RLIMIT_NICE ≥ 20 − [`NICE`] (systemd `LimitNICE=10`) or CAP_SYS_NICE. Tried on a
/// thread that ends with the try.
#[cfg(target_os = "linux")]
fn can_leave_idle() -> bool {
    let tried = std::thread::Builder::new()
        .name("whale-index-probe".into())
        .spawn(|| {
            set_nice(NICE)?;
            set_class(0, Class::Idle)?;
            set_class(0, Class::Normal)
        })
        .map_err(|e| e.to_string())
        .and_then(|h| {
            h.join()
                .unwrap_or_else(|_| Err("the probe panicked".into()))
        });
    match tried {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(
                "the embedded index's threads run at nice {NICE}, not in the idle class: this process could \
                 not leave that class again if the index fell behind ({e}; allow it with LimitNICE=10 or \
                 CAP_SYS_NICE — docs/search.md \"CPU priority\")"
            );
            false
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn class_of(_: i32) -> Result<Class, String> {
    Ok(Class::Other)
}
#[cfg(not(target_os = "linux"))]
fn set_class(_: i32, _: Class) -> Result<(), String> {
    Err("scheduling classes are Linux only".into())
}
#[cfg(not(target_os = "linux"))]
fn set_nice(_: i32) -> Result<(), String> {
    Err("per-thread nice is Linux only".into())
}
#[cfg(not(target_os = "linux"))]
pub(crate) fn tid() -> i32 {
    0
}
#[cfg(not(target_os = "linux"))]
fn can_leave_idle() -> bool {
    false
}
