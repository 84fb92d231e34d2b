//! Issues 12 and 13 as regression tests against the real HTTP server and NATS: every way a
//! hostile input or an unauthorised caller once reached whale, one module per area, each test
//! naming the finding.

mod audit;
mod auth;
mod ingest;
mod links;
mod natsperm;
mod oidc;
mod proxy;
mod query;
mod state;
mod tls;
mod worker;
