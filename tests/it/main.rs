//! whale's integration suite: one test binary (links once) with a module per area. Every test
//! talks to real servers started by `harness` on free ports (nats-server, redis-server, the
//! StackStorm emulator) and runs the real `whale` binary as child processes.

// The chaos, throttle and dispatch tests crash workers through the kernel's failpoint
// (`WHALE_*_TEST_KILL_AFTER`): the `whale` this build runs must have it (the dev-dependency
// feature `whale-kernel/failpoints`), or those tests would crash nothing. A `whale` built
// without it refuses to start when such a variable is set.
const _: () = assert!(
    whale_kernel::failpoint::ENABLED,
    "the integration tests need whale-kernel's `failpoints` feature (root Cargo.toml [dev-dependencies])"
);

mod alertmanager;
mod approvals;
mod bench;
mod chaos;
mod cluster;
mod console;
mod deploy;
mod dispatch;
mod fanout;
mod feedback;
mod harness;
mod index;
mod malformed;
mod observability;
mod replay;
mod rule_versions;
mod rules;
mod security;
mod setup;
mod throttle;
mod validate;
