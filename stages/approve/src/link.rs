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
