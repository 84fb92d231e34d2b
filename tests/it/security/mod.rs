//! Issue 12's findings as regression tests against the real HTTP server and NATS: every way a
//! hostile or careless input once hurt whale, one module per area, each test naming the finding.

mod auth;
mod ingest;
mod links;
mod natsperm;
mod query;
mod state;
mod worker;
