//! One integration-test binary for the emulator: the official `st2` CLI against it, and
//! whale's client (`whale-st2`) against it, including injected faults and the event stream.

mod cli;
mod client;
mod faults;
mod harness;
mod raw;
mod stream;
