//! The runner stand-in: moves each execution through StackStorm's lifecycle on its own clock
//! (delayed → requested → scheduled → running → outcome; pausing → paused; resuming → running;
//! canceling → canceled) and streams its output lines while it runs.

use crate::execution::{is_terminal, Exec};
use crate::state::{lock, Emu};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Time between automatic steps (requested → scheduled → running, pausing → paused, ...).
pub const STEP: Duration = Duration::from_millis(10);

enum Next {
    /// Check again after this long, or when woken.
    Wait(Duration),
    /// Nothing happens until a request wakes it (paused).
    Park,
    Done,
}

/// One task per execution, ending when the execution is terminal.
pub async fn drive(emu: Arc<Emu>, id: String, notify: Arc<Notify>) {
    loop {
        let next = {
            let mut store = lock(&emu.store);
            match store.execs.get_mut(&id) {
                Some(ex) => step(&emu, ex),
                None => Next::Done,
            }
        };
        match next {
            Next::Done => return,
            Next::Park => notify.notified().await,
            Next::Wait(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = notify.notified() => {}
                }
            }
        }
    }
}

/// Applies every transition that is due and says when to look again.
fn step(emu: &Emu, ex: &mut Exec) -> Next {
    loop {
        let now = Instant::now();
        let phase_at = ex.phase_at;
        let due = |after: Duration| {
            let at = phase_at + after;
            (now >= at).then_some(()).ok_or(at - now)
        };
        let (wait_for, next_status) = match ex.status.as_str() {
            s if is_terminal(s) => return Next::Done,
            "paused" | "pending" => return Next::Park,
            "delayed" => (due(Duration::from_millis(ex.delay_ms)), "requested"),
            "requested" => (due(STEP), "scheduled"),
            "scheduled" => (due(STEP), "running"),
            "pausing" => (due(STEP), "paused"),
            "resuming" => (due(STEP), "running"),
            "canceling" => (due(STEP), "canceled"),
            "running" => match run(emu, ex, now) {
                Some(wait) => return Next::Wait(wait),
                None => continue,
            },
            _ => return Next::Park,
        };
        if let Err(wait) = wait_for {
            return Next::Wait(wait);
        }
        if next_status == "running" {
            ex.clock.since = Some(now);
        }
        emu.set_status(ex, next_status);
    }
}

/// While running: emit the output lines that are due, then finish at the scripted duration.
/// Returns how long to wait, or `None` when the status changed.
fn run(emu: &Emu, ex: &mut Exec, now: Instant) -> Option<Duration> {
    if ex.clock.since.is_none() {
        ex.clock.since = Some(now);
    }
    let elapsed = ex.clock.elapsed(now);
    let lines = ex.output_lines();
    while let Some((at, line)) = lines.get(ex.clock.lines_sent) {
        if *at > elapsed {
            break;
        }
        let doc = ex.output_doc(line);
        emu.publish("st2.execution.output__create", ex, Some(doc.clone()));
        ex.output.push(doc);
        ex.clock.lines_sent += 1;
    }
    let total = Duration::from_millis(ex.action.outcome.duration_ms);
    if elapsed < total {
        let next_line = lines.get(ex.clock.lines_sent).map_or(total, |(at, _)| *at);
        return Some(next_line.min(total) - elapsed);
    }
    for (_, line) in lines.iter().skip(ex.clock.lines_sent) {
        let doc = ex.output_doc(line);
        emu.publish("st2.execution.output__create", ex, Some(doc.clone()));
        ex.output.push(doc);
    }
    ex.clock.lines_sent = lines.len();
    ex.result = ex.outcome_result();
    let status = ex.action.outcome.status.clone();
    emu.set_status(ex, &status);
    None
}
