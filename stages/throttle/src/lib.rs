//! The throttle stage: events repeat, tasks should not. A task whose rule has a `throttle` asks
//! Redis for a token from the bucket of its (rule, rendered key); admitted tasks go on to the
//! approval gate or to dispatch, the rest are recorded on `whale.pipe.throttled` with the time
//! the next token frees up. The bucket lives in Redis and is updated by one atomic Lua script on
//! Redis's clock, so any number of workers on any number of machines share one limit.
//!
//! - [`policy`]: what `limit`/`per`/`burst`/`mode` mean in bucket terms, and the key layout.
//! - [`limiter`]: the script, pipelined EVALSHA per batch, NOSCRIPT reload, reconnection.
//! - [`servers`]: `redis.url` read as one server, a Redis Cluster or a Sentinel-named master.
//! - [`stage`]: the [`whale_kernel::Stage`]: tasks in, outputs and outcomes out, outage handling.
//! - [`metrics`]: per-rule decisions and Redis availability.

pub mod limiter;
pub mod metrics;
pub mod policy;
pub mod servers;
pub mod stage;

pub use limiter::{Decision, Limiter};
pub use stage::ThrottleStage;
