//! The numbers that keep a rule expression cheap: program size, nesting, the evaluation budget
//! ("fuel") and the size of what a filter may return. One struct so that callers and tests can
//! see and change every limit in one place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The process-wide default of [`Limits::max_eval_time`], in microseconds (0: none).
static DEFAULT_EVAL_TIME_MICROS: AtomicU64 = AtomicU64::new(100_000);

/// The time limit per evaluation that [`Limits::default`] uses (100 ms unless changed).
pub fn default_eval_time() -> Option<Duration> {
    match DEFAULT_EVAL_TIME_MICROS.load(Ordering::Relaxed) {
        0 => None,
        us => Some(Duration::from_micros(us)),
    }
}

/// Set the time limit per evaluation for every [`Limits::default`] made afterwards in this
/// process (`whale run` sets it from `rules.eval_time_limit` before any rule set is compiled).
/// `None` or zero removes the time limit; the step budget still applies.
pub fn set_default_eval_time(limit: Option<Duration>) {
    let us = limit.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    DEFAULT_EVAL_TIME_MICROS.store(us, Ordering::Relaxed);
}

/// Limits applied when an expression is compiled and every time it runs.
///
/// The defaults suit rule predicates and templates: small programs over events of up to about
/// 1 MiB. A filter that goes over a limit fails with a clear error; it never hangs or aborts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted program, in bytes.
    pub max_program_bytes: usize,
    /// Deepest accepted bracket nesting (`(`, `[`, `{`, string interpolation).
    pub max_bracket_depth: usize,
    /// Most "nesting" tokens (`|`, `as`, `if`, `try`, unary `-`, assignments...) in a program;
    /// together with the bracket depth this bounds the recursion of parser, compiler and
    /// interpreter.
    pub max_nesting_tokens: usize,
    /// Deepest accepted syntax tree.
    pub max_ast_depth: usize,
    /// Evaluation budget per run: each produced value, each closure call and each byte or
    /// element that a builtin walks, copies or builds costs one unit.
    pub fuel: u64,
    /// Longest time one run may take (`None`: no time limit). Checked between steps, so a run
    /// stops soon after it; it fails with [`crate::EvalError::Time`]. The step budget alone
    /// does not bound time: one step over a large event can cost microseconds.
    pub max_eval_time: Option<Duration>,
    /// Most outputs one run may yield.
    pub max_outputs: usize,
    /// Largest total size of the outputs of one run, in bytes of compact JSON (approximately).
    pub max_output_bytes: usize,
    /// Deepest accepted input or output value.
    pub max_value_depth: usize,
    /// Largest span of `range` with literal bounds (`range(0; 1e12)` is refused outright).
    pub max_range_span: u64,
    /// Longest regular expression literal, in bytes.
    pub max_regex_bytes: usize,
    /// Largest compiled regular expression, in bytes of the regex engine's program.
    pub max_regex_program_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_program_bytes: 4096,
            max_bracket_depth: 32,
            max_nesting_tokens: 128,
            max_ast_depth: 96,
            fuel: 1_000_000,
            max_eval_time: default_eval_time(),
            max_outputs: 1000,
            max_output_bytes: 1 << 20,
            max_value_depth: 128,
            max_range_span: 100_000,
            max_regex_bytes: 1000,
            max_regex_program_bytes: 64 << 10,
        }
    }
}
