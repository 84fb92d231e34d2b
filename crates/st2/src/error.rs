//! One error type for every call, with a kind that tells the caller whether to retry.
//!
//! Messages are lowercase, name the method and URL path that failed, and never carry a
//! credential: text taken from a server or a transport error is scrubbed before it is stored.

use std::fmt;

/// What went wrong, so callers can `match err.kind()`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// StackStorm answered with an error status. 5xx (and 408, 429) are worth retrying; other
    /// 4xx are terminal (unknown action, bad parameters, bad credentials).
    Http { status: u16, faultstring: String },
    /// StackStorm answered 200 but refused the operation (cancel of a finished execution
    /// returns 200 with a `faultstring`).
    Refused { faultstring: String },
    /// The connection could not be made or broke (refused, reset, closed early).
    Transport,
    /// No answer within the configured timeout.
    Timeout,
    /// The answer was not the JSON we expected.
    Decode,
    /// The client was configured with something unusable (a bad base URL).
    Config,
}

/// An error from a StackStorm call.
#[derive(Debug, Clone)]
pub struct St2Error {
    kind: ErrorKind,
    /// `METHOD url` of the failed call, or empty for configuration errors.
    call: String,
    /// Human detail (already scrubbed of secrets).
    detail: String,
}

impl St2Error {
    pub(crate) fn new(kind: ErrorKind, call: String, detail: String) -> Self {
        Self { kind, call, detail }
    }

    /// The kind of failure.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// True when the same call may succeed later: 5xx, 408, 429, transport errors, timeouts.
    pub fn is_retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            ErrorKind::Transport | ErrorKind::Timeout => true,
            ErrorKind::Refused { .. } | ErrorKind::Decode | ErrorKind::Config => false,
        }
    }

    /// The HTTP status, when StackStorm answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            ErrorKind::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// StackStorm's own message, when it sent one.
    pub fn faultstring(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Http { faultstring, .. } | ErrorKind::Refused { faultstring } => {
                Some(faultstring)
            }
            _ => None,
        }
    }
}

impl fmt::Display for St2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.call.is_empty() {
            write!(f, "{}: ", self.call)?;
        }
        match &self.kind {
            ErrorKind::Http {
                status,
                faultstring,
            } => {
                let class = if *status >= 500 {
                    "server error"
                } else {
                    "request rejected"
                };
                write!(f, "{class} (http {status}): {faultstring}")
            }
            ErrorKind::Refused { faultstring } => write!(f, "refused by stackstorm: {faultstring}"),
            ErrorKind::Transport => write!(f, "connection failed: {}", self.detail),
            ErrorKind::Timeout => write!(f, "timed out: {}", self.detail),
            ErrorKind::Decode => write!(f, "cannot decode the response: {}", self.detail),
            ErrorKind::Config => write!(f, "invalid configuration: {}", self.detail),
        }
    }
}

impl std::error::Error for St2Error {}

/// `Result` with [`St2Error`].
pub type Result<T, E = St2Error> = std::result::Result<T, E>;
