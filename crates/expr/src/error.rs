//! Errors of this crate: `ExprError` when a program cannot be accepted (with the position in
//! the program), `EvalError` when a run fails. Messages are lowercase and say what to change.

use std::fmt;

/// A jq program that does not parse, uses something that is not allowed, or is too big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// What is wrong, and what to do instead where there is an alternative.
    pub message: String,
    /// 1-based line and column (in characters) in the program, where known.
    pub position: Option<(usize, usize)>,
}

impl ExprError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ExprError {
            message: message.into(),
            position: None,
        }
    }

    /// An error located at byte `offset` of `src`.
    pub(crate) fn at(src: &str, offset: usize, message: impl Into<String>) -> Self {
        let offset = offset.min(src.len());
        let before = &src[..floor_char_boundary(src, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ExprError {
            message: message.into(),
            position: Some((line, column)),
        }
    }

    /// An error located at `part`, a slice of `src` (falls back to no position otherwise).
    pub(crate) fn at_slice(src: &str, part: &str, message: impl Into<String>) -> Self {
        let (start, end) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
        let p = part.as_ptr() as usize;
        if p >= start && p <= end {
            Self::at(src, p - start, message)
        } else {
            Self::new(message)
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((1, c)) => write!(f, "{} (at column {c})", self.message),
            Some((l, c)) => write!(f, "{} (at line {l}, column {c})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ExprError {}

/// Why one run of a filter failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The program raised an error (`error(...)`, `.a` on a number, ...).
    #[error("{0}")]
    Jq(String),
    /// The run used up its evaluation budget (see [`crate::Limits::fuel`]).
    #[error("expression exceeded its evaluation budget of {0} steps")]
    Budget(u64),
    /// The run took longer than its time limit (see [`crate::Limits::max_eval_time`]).
    #[error("expression exceeded its time limit of {} ms per evaluation (rules.eval_time_limit): make it cheaper, e.g. test a narrower path first", .0.as_millis())]
    Time(std::time::Duration),
    /// The run yielded more outputs than allowed.
    #[error("expression yields more than {0} values")]
    TooManyOutputs(usize),
    /// The outputs are bigger than allowed.
    #[error("expression output is larger than {0} bytes")]
    OutputTooLarge(usize),
    /// An input or output value is nested deeper than allowed.
    #[error("{what} is nested deeper than {limit} levels")]
    TooDeep {
        /// "input" or "output".
        what: &'static str,
        /// The limit that was passed.
        limit: usize,
    },
    /// The interpreter panicked; the panic was contained.
    #[error("internal error in the jq interpreter: {0}")]
    Internal(String),
}
