//! whale's integration suite: one test binary (links once) with a module per area. Every test
//! talks to real servers started by `harness` on free ports (nats-server, redis-server, the
//! StackStorm emulator) and runs the real `whale` binary as child processes.

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
