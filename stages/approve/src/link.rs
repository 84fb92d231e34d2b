//! Approve and deny links: `{public_url}/v1/approvals/{task_id}/{approve|deny}?exp=UNIX&sig=HEX`
//! where `sig` = HMAC-SHA256(secret, "whale-approval-v1\n{task_id}\n{action}\n{exp}\n{nonce}").
//!
//! - *signed*: changing the id, the action or the expiry breaks the signature (checked in
//!   constant time); the secret comes from `WHALE_APPROVAL_SECRET` and never leaves the server;
//! - *expiring*: `exp` is part of what is signed;
//! - *single use*: the nonce is drawn when the approval is created and kept with it, and the
//!   first decision moves the approval out of `pending`, so every later use of any link is
//!   refused (and links of an older approval of the same task do not verify).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use whale_kernel::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// The signature does not match what the server signed (tampered or not ours).
    BadSignature,
    /// The link is past its expiry.
    Expired,
}

fn mac(secret: &Secret, task_id: &str, action: &str, exp: i64, nonce: &str) -> HmacSha256 {
    let mut m =
        HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
    m.update(format!("whale-approval-v1\n{task_id}\n{action}\n{exp}\n{nonce}").as_bytes());
    m
}

/// The signature of one link.
pub fn sign(secret: &Secret, task_id: &str, action: &str, exp: i64, nonce: &str) -> String {
    hex::encode(
        mac(secret, task_id, action, exp, nonce)
            .finalize()
            .into_bytes(),
    )
}

/// The full link.
pub fn url(
    base: &str,
    secret: &Secret,
    task_id: &str,
    action: &str,
    exp: i64,
    nonce: &str,
) -> String {
    let sig = sign(secret, task_id, action, exp, nonce);
    format!(
        "{}/v1/approvals/{task_id}/{action}?exp={exp}&sig={sig}",
        base.trim_end_matches('/')
    )
}

/// The fewest bytes a link-signing secret may have (`openssl rand -hex 32` gives 64).
pub const MIN_SECRET_BYTES: usize = 32;

/// Words that mark a secret copied from an example or a template, not generated.
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "replaceme",
    "placeholder",
    "example",
    "secret",
    "password",
    "xxxxxxxx",
];

/// Refuses a secret anyone could guess: shorter than [`MIN_SECRET_BYTES`], made of a handful of
/// distinct characters, or a placeholder (`changeme`, `secret`, `password`, `example`, the value
/// shipped in deploy/k8s, ...). `var` names the variable in the message; the value never appears.
pub fn check_secret(var: &str, secret: &Secret) -> anyhow::Result<()> {
    let s = secret.expose();
    let how = format!(
        "make one with `openssl rand -hex 32` and set ${var} to it (or unset ${var} to send approval messages without links)"
    );
    if s.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "${var} is too weak to sign approval links: {} bytes, at least {MIN_SECRET_BYTES} are needed; {how}",
            s.len()
        );
    }
    let plain: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if let Some(word) = PLACEHOLDERS.iter().find(|w| plain.contains(*w)) {
        anyhow::bail!(
            "${var} looks like a placeholder (it contains {word:?}), not a generated secret; {how}"
        );
    }
    let distinct = s.bytes().collect::<std::collections::BTreeSet<_>>().len();
    if distinct < 8 {
        anyhow::bail!(
            "${var} is too weak to sign approval links: only {distinct} distinct characters; {how}"
        );
    }
    Ok(())
}

/// Checks a link's signature, then its expiry (`now` in unix seconds).
pub fn verify(
    secret: &Secret,
    task_id: &str,
    action: &str,
    exp: i64,
    nonce: &str,
    sig: &str,
    now: i64,
) -> Result<(), LinkError> {
    let given = hex::decode(sig).map_err(|_| LinkError::BadSignature)?;
    mac(secret, task_id, action, exp, nonce)
        .verify_slice(&given)
        .map_err(|_| LinkError::BadSignature)?;
    if now > exp {
        return Err(LinkError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_and_placeholder_secrets_are_refused() {
        let refused = |s: &str| {
            check_secret("WHALE_APPROVAL_SECRET", &Secret::new(s))
                .expect_err(s)
                .to_string()
        };
        for s in [
            "",
            "k",
            "approval-test-secret",
            "CHANGE-ME-approval-link-signing-secret",
            "changeme-changeme-changeme-changeme",
            "my-approval-link-SECRET-for-production",
            "password1234567890password1234567890",
            "https://example.com/approval/signing/key/1",
            "00000000000000000000000000000000000000000000",
            "abababababababababababababababababababababab",
        ] {
            let e = refused(s);
            assert!(
                e.contains("openssl rand -hex 32") && e.contains("$WHALE_APPROVAL_SECRET"),
                "{e}"
            );
            assert!(
                s.len() < 4 || !e.contains(s),
                "the message shows the secret: {e}"
            );
        }
        assert!(refused("short").contains("5 bytes, at least 32"));
        for s in [
            "9f2c4e7a1b3d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8",
            "Zq3v9XkL2pR8sT4wY6uB1nM5cD7fG0hJ",
        ] {
            assert!(
                check_secret("WHALE_APPROVAL_SECRET", &Secret::new(s)).is_ok(),
                "{s}"
            );
        }
    }

    #[test]
    fn links_verify_only_as_signed() {
        let s = Secret::new("k");
        let sig = sign(&s, "t-1", "approve", 100, "n");
        assert_eq!(verify(&s, "t-1", "approve", 100, "n", &sig, 50), Ok(()));
        assert_eq!(
            verify(&s, "t-1", "approve", 100, "n", &sig, 101),
            Err(LinkError::Expired)
        );
        for (id, action, exp, nonce) in [
            ("t-2", "approve", 100, "n"),
            ("t-1", "deny", 100, "n"),
            ("t-1", "approve", 999, "n"),
            ("t-1", "approve", 100, "m"),
        ] {
            assert_eq!(
                verify(&s, id, action, exp, nonce, &sig, 50),
                Err(LinkError::BadSignature)
            );
        }
        assert_eq!(
            verify(&Secret::new("other"), "t-1", "approve", 100, "n", &sig, 50),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&s, "t-1", "approve", 100, "n", "zz", 50),
            Err(LinkError::BadSignature)
        );
        let u = url("http://w/", &s, "t-1", "deny", 100, "n");
        assert!(
            u.starts_with("http://w/v1/approvals/t-1/deny?exp=100&sig="),
            "{u}"
        );
    }
}
