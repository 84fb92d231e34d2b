//! How to reach one StackStorm cluster: its base URL, credentials and timeout.

use crate::secret::Secret;
use std::time::Duration;

/// Credentials for a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A non-expiring API key, sent as `St2-Api-Key`.
    ApiKey(Secret),
    /// A user whose password buys tokens at `POST /auth/v1/tokens`; the token is cached and
    /// renewed before it expires (and once on a 401).
    UserPassword { user: String, password: Secret },
    /// No credentials (a StackStorm with `auth.enable = False`).
    None,
}

/// One cluster's connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConn {
    /// Base URL as behind StackStorm's nginx, e.g. `http://127.0.0.1:9101` or
    /// `https://st2.example.com`; the client appends `/api/v1`, `/auth/v1`, `/stream/v1`.
    pub base_url: String,
    pub auth: Auth,
    /// Limit for each request (connect, send, read the whole answer). Streams use it for the
    /// connect and the response headers only.
    pub timeout: Duration,
    /// A PEM file of CA certificates trusted for an `https://` base URL, in addition to the
    /// public roots (a StackStorm behind a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl ClusterConn {
    /// Settings with a 30 s timeout.
    pub fn new(base_url: impl Into<String>, auth: Auth) -> Self {
        Self {
            base_url: base_url.into(),
            auth,
            timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }

    /// Trusts the CA certificates in `path` (PEM) too.
    pub fn with_ca_file(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.ca_file = path;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_credentials() {
        let key = ClusterConn::new("http://h", Auth::ApiKey(Secret::new("k-123-secret")));
        let user = ClusterConn::new(
            "http://h",
            Auth::UserPassword {
                user: "bob".into(),
                password: Secret::new("p-456-secret"),
            },
        );
        let text = format!("{key:?} {user:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("bob"), "{text}");
    }
}
