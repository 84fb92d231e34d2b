//! whale's client for StackStorm's REST API: create and follow executions, cancel, pause,
//! resume and re-run them, find one by trace tag, and read the event stream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), whale_st2::St2Error> {
//! use whale_st2::{Auth, ClusterConn, ExecutionRequest, Secret, St2Client};
//! let st2 = St2Client::new(ClusterConn::new(
//!     "http://127.0.0.1:9101",
//!     Auth::ApiKey(Secret::new("key")),
//! ))?;
//! let exec = st2
//!     .create_execution(&ExecutionRequest {
//!         action: "core.local".into(),
//!         parameters: serde_json::json!({"cmd": "date"}),
//!         context: ExecutionRequest::whale_context("ev1", "rule1", "task1"),
//!     })
//!     .await?;
//! println!("{} is {:?}", exec.id, exec.status);
//! # Ok(()) }
//! ```
//!
//! The client never retries on its own (except renewing an expired token once): callers
//! decide with [`St2Error::is_retryable`], because a retried POST creates a second execution.

mod auth;
mod client;
mod conn;
mod error;
mod filter;
mod model;
mod secret;
mod sse;
mod stream;
pub mod timefmt;
mod transport;

pub use client::St2Client;
pub use conn::{Auth, ClusterConn};
pub use error::{ErrorKind, Result, St2Error};
pub use filter::{ListFilter, StreamFilter};
pub use model::{
    ActionInfo, Execution, ExecutionRequest, LogEntry, Status, StreamEvent, Trace, TraceComponent,
};
pub use secret::Secret;
pub use sse::SseParser;
pub use stream::EventStream;
