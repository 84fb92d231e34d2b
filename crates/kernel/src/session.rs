//! Browser sessions of the operator console: a signed cookie (HMAC-SHA256) that names the
//! principal, its role and an expiry, so any `whale run` that holds the key (from config or
//! the one kept in KV) accepts it without a session store. The cookie is HttpOnly,
//! SameSite=Strict (Secure under TLS); a form's CSRF token is derived from the session's nonce,
//! so it changes with every sign-in and cannot be computed without the key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::Role;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "whale_session";

/// Longest cookie value looked at (a session is about 200 bytes).
const MAX_COOKIE_BYTES: usize = 2048;

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// The principal's name (recorded as who acted).
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "r")]
    pub role: Role,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    pub expires: i64,
    /// Random per sign-in: the CSRF token is derived from it.
    #[serde(rename = "x")]
    pub nonce: String,
}

/// Signs and checks sessions with one key.
pub struct Sessions {
    key: Vec<u8>,
    ttl: std::time::Duration,
    secure: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(***)")
    }
}

impl Sessions {
    /// `key`: at least 32 bytes; `secure`: the listener is HTTPS (the cookie gets `Secure`).
    pub fn new(key: &[u8], ttl: std::time::Duration, secure: bool) -> anyhow::Result<Sessions> {
        if key.len() < 32 {
            anyhow::bail!("console.session_secret is {} bytes: give it at least 32 (e.g. `openssl rand -hex 32`)", key.len());
        }
        Ok(Sessions {
            key: key.to_vec(),
            ttl,
            secure,
        })
    }

    fn mac(&self, what: &str, data: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(what.as_bytes());
        m.update(b"\0");
        m.update(data);
        m
    }

    /// A new session for `name` with `role` and its cookie value; `nonce` is random per call.
    pub fn issue(&self, name: &str, role: Role, now: i64, nonce: &str) -> (Session, String) {
        let s = Session {
            name: name.to_owned(),
            role,
            expires: now + self.ttl.as_secs() as i64,
            nonce: nonce.to_owned(),
        };
        let body = hex::encode(serde_json::to_vec(&s).unwrap_or_default());
        let sig = hex::encode(self.mac("session", body.as_bytes()).finalize().into_bytes());
        (s, format!("{body}.{sig}"))
    }

    /// The session a cookie value stands for, when its signature is right and it has not
    /// expired at `now`.
    pub fn verify(&self, value: &str, now: i64) -> Option<Session> {
        if value.len() > MAX_COOKIE_BYTES {
            return None;
        }
        let (body, sig) = value.split_once('.')?;
        let sig = hex::decode(sig).ok()?;
        self.mac("session", body.as_bytes())
            .verify_slice(&sig)
            .ok()?;
        let s: Session = serde_json::from_slice(&hex::decode(body).ok()?).ok()?;
        (s.expires > now).then_some(s)
    }

    /// The CSRF token of the forms shown to `nonce`'s session (`anonymous` without one).
    pub fn csrf(&self, nonce: &str) -> String {
        hex::encode(&self.mac("csrf", nonce.as_bytes()).finalize().into_bytes()[..16])
    }

    /// Whether `token` is the CSRF token of `nonce`'s session (constant time).
    pub fn csrf_ok(&self, nonce: &str, token: &str) -> bool {
        let want = self.csrf(nonce);
        want.len() == token.len()
            && want
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }

    /// The `Set-Cookie` value that stores a session.
    pub fn set_cookie(&self, value: &str) -> String {
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.ttl.as_secs(),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes it (sign-out).
    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_expire_and_carry_a_csrf_token() {
        let s = Sessions::new(&[7u8; 32], std::time::Duration::from_secs(60), false).unwrap();
        let (sess, v) = s.issue("oncall", Role::Operator, 1000, "n1");
        assert_eq!(s.verify(&v, 1001), Some(sess.clone()));
        assert_eq!(s.verify(&v, 1060), None, "expired");
        let forged = v.replacen('7', "8", 1);
        assert_eq!(s.verify(&forged, 1001), None);
        let other = Sessions::new(&[8u8; 32], std::time::Duration::from_secs(60), false).unwrap();
        assert_eq!(other.verify(&v, 1001), None, "another key");
        let t = s.csrf("n1");
        assert!(s.csrf_ok("n1", &t));
        assert!(!s.csrf_ok("n2", &t));
        assert!(!s.csrf_ok("n1", ""));
        assert!(Sessions::new(b"short", std::time::Duration::from_secs(1), false).is_err());
        assert!(s.set_cookie(&v).contains("HttpOnly; SameSite=Strict"));
    }
}
