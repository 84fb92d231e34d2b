//! OIDC/JWT bearer tokens (`[auth.oidc]`): an identity provider's signed tokens become whale
//! principals named `oidc:<name>`, with a role mapped from a claim. Signatures are checked
//! against a local JWKS file that is re-read when it changes, so rotating the provider's keys
//! needs no restart. Refusals say what is wrong with the token, never the token itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{Principal, Role};

/// `[auth.oidc]`: who issues the tokens, for whom, with which keys, and how claims become a
/// whale principal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The provider's issuer URL, compared exactly with the token's `iss`.
    pub issuer: String,
    /// The audience whale is registered under (the client id), required in the token's `aud`.
    pub audience: String,
    /// A JWKS file (the provider's `jwks_uri` document, e.g. fetched by a sidecar or mounted
    /// from a Secret). Re-read when it changes: key rotation needs no restart.
    pub jwks_file: PathBuf,
    /// Signature algorithms accepted (asymmetric only): ES256, ES384, RS256, RS384, RS512,
    /// PS256, PS384, PS512, EdDSA.
    pub algorithms: Vec<String>,
    /// The claim holding the caller's groups or roles: a string or an array of strings; a
    /// dotted path reaches into objects (`realm_access.roles` for Keycloak).
    pub role_claim: String,
    /// Claim value → whale role. A caller with several mapped values gets the strongest
    /// (admin, operator, viewer, producer); one with none is refused (403).
    pub roles: BTreeMap<String, Role>,
    /// The claim naming the caller, recorded as `oidc:<value>` (e.g. `preferred_username`).
    pub name_claim: String,
    /// Allowed clock difference with the provider for `exp` and `nbf`.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub leeway: Duration,
    /// Longest bearer token accepted as a JWT (bytes); a longer one is refused (401) unread.
    pub max_token_bytes: usize,
    /// Largest JWKS file read (bytes); a larger one is refused at start and ignored on reload.
    pub max_jwks_bytes: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: PathBuf::new(),
            algorithms: vec!["ES256".into(), "RS256".into()],
            role_claim: "groups".into(),
            roles: BTreeMap::new(),
            name_claim: "sub".into(),
            leeway: Duration::from_secs(60),
            max_token_bytes: 8 * 1024,
            max_jwks_bytes: 1024 * 1024,
        }
    }
}

/// Why a token was refused: the message for the 401 answer (never contains the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// A verifier for one `[auth.oidc]` configuration.
pub struct Oidc {
    cfg: OidcConfig,
    algorithms: Vec<Algorithm>,
    keys: Mutex<Keys>,
}

struct Keys {
    /// (modification time, length, inode) of the JWKS file these keys were read from.
    stamp: Option<(SystemTime, u64, u64)>,
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid` (usable only by tokens without one, when there is exactly one).
    anonymous: Vec<Key>,
}

#[derive(Clone)]
struct Key {
    decoding: Arc<DecodingKey>,
    /// The key's own `alg`, when the JWKS states it.
    alg: Option<Algorithm>,
    /// EC keys: the curve, which fixes the algorithm.
    curve: Option<EllipticCurve>,
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

impl Oidc {
    /// Checks the configuration and reads the JWKS file; errors say which key to fix.
    pub fn new(cfg: &OidcConfig) -> anyhow::Result<Oidc> {
        if cfg.issuer.trim().is_empty() {
            bail!("auth.oidc.issuer is empty: set it to the provider's issuer URL (the `iss` of its tokens)");
        }
        if cfg.audience.trim().is_empty() {
            bail!("auth.oidc.audience is empty: set it to whale's client id at the provider (the `aud` of its tokens)");
        }
        if cfg.jwks_file.as_os_str().is_empty() {
            bail!("auth.oidc.jwks_file is not set: point it at the provider's JWKS document");
        }
        if cfg.roles.is_empty() {
            bail!(
                "auth.oidc.roles is empty: map values of the `{}` claim to whale roles, e.g. roles = {{ \"sre\" = \"operator\" }}",
                cfg.role_claim
            );
        }
        if cfg.name_claim.is_empty() || cfg.role_claim.is_empty() {
            bail!("auth.oidc.name_claim and auth.oidc.role_claim must name claims");
        }
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            let alg: Algorithm = a.parse().ok().filter(|x| ASYMMETRIC.contains(x)).with_context(|| {
                format!("auth.oidc.algorithms: {a:?} is not accepted (use ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512 or EdDSA; shared-secret HS* algorithms are refused)")
            })?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            bail!("auth.oidc.algorithms is empty: list at least one, e.g. [\"ES256\", \"RS256\"]");
        }
        let (keys, skipped) = read_jwks(&cfg.jwks_file, cfg.max_jwks_bytes)?;
        for s in skipped {
            tracing::warn!(jwks = %cfg.jwks_file.display(), "{s}");
        }
        if keys.by_kid.is_empty() && keys.anonymous.is_empty() {
            bail!(
                "auth.oidc.jwks_file {} has no usable key (EC, RSA or OKP public keys)",
                cfg.jwks_file.display()
            );
        }
        Ok(Oidc {
            cfg: cfg.clone(),
            algorithms,
            keys: Mutex::new(keys),
        })
    }

    /// Whether `token` looks like a JWT (three base64url parts), i.e. is for this verifier.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    }

    /// The principal a JWT stands for. `Ok` with `role: None` is a valid token whose claims
    /// map to no role (the caller answers 403); `Err` is a token that is not valid (401).
    pub fn principal(&self, token: &str) -> Result<Principal, Refused> {
        let refuse = |m: String| Err(Refused(m));
        if token.len() > self.cfg.max_token_bytes {
            return refuse(format!(
                "the bearer token is {} bytes, more than auth.oidc.max_token_bytes ({})",
                token.len(),
                self.cfg.max_token_bytes
            ));
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => {
                return refuse(
                    "the bearer token is not a valid JWT: its header cannot be read".into(),
                )
            }
        };
        if !self.algorithms.contains(&header.alg) {
            return refuse(format!(
                "the token is signed with {:?}, which auth.oidc.algorithms does not allow ({})",
                header.alg,
                self.cfg.algorithms.join(", ")
            ));
        }
        let kid = header.kid.as_deref();
        let key = match self.key(kid) {
            Some(k) => k,
            None => {
                return refuse(match kid {
                    Some(k) => format!(
                        "the token's key id {:?} is not in the JWKS (auth.oidc.jwks_file): the provider rotated its keys and the file is stale, or the token is from another issuer",
                        clip(k)
                    ),
                    None => "the token has no key id (kid) and the JWKS does not hold exactly one key without one".into(),
                })
            }
        };
        if key.alg.is_some_and(|a| a != header.alg) || !curve_fits(key.curve.as_ref(), header.alg) {
            return refuse(format!(
                "the token is signed with {:?}, but its key {:?} is for another algorithm",
                header.alg,
                clip(kid.unwrap_or(""))
            ));
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = match jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &key.decoding,
            &v,
        ) {
            Ok(d) => d,
            Err(e) => return refuse(self.why(e.kind())),
        };
        let claims = Value::Object(data.claims);
        let name = match claim(&claims, &self.cfg.name_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return refuse(format!(
                    "the token has no `{}` claim (auth.oidc.name_claim) to name the caller",
                    self.cfg.name_claim
                ))
            }
        };
        if name.len() > 256 || name.chars().any(char::is_control) {
            return refuse(format!(
                "the token's `{}` claim is not a usable name (over 256 bytes or control characters)",
                self.cfg.name_claim
            ));
        }
        let values: Vec<&str> = match claim(&claims, &self.cfg.role_claim) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let role = values
            .iter()
            .filter_map(|v| self.cfg.roles.get(*v).copied())
            .max_by_key(|r| strength(*r));
        Ok(Principal {
            name: format!("oidc:{name}"),
            role,
        })
    }

    /// The reason for a refused token, from the validation error.
    fn why(&self, kind: &ErrorKind) -> String {
        match kind {
            ErrorKind::InvalidSignature => {
                "the token's signature does not verify against its key in the JWKS".into()
            }
            ErrorKind::ExpiredSignature => format!(
                "the token has expired (its exp is in the past, beyond auth.oidc.leeway of {}s): get a new one",
                self.cfg.leeway.as_secs()
            ),
            ErrorKind::ImmatureSignature => format!(
                "the token is not valid yet (its nbf is in the future, beyond auth.oidc.leeway of {}s)",
                self.cfg.leeway.as_secs()
            ),
            ErrorKind::InvalidIssuer => format!(
                "the token's issuer (iss) is not auth.oidc.issuer ({})",
                self.cfg.issuer
            ),
            ErrorKind::InvalidAudience => format!(
                "the token's audience (aud) does not include auth.oidc.audience ({})",
                self.cfg.audience
            ),
            ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
            ErrorKind::InvalidClaimFormat(c) => format!("the token's `{c}` claim has the wrong type"),
            ErrorKind::InvalidAlgorithm => "the token's algorithm does not fit its key".into(),
            _ => "the bearer token is not a well-formed JWT".into(),
        }
    }

    /// The key for `kid`, re-reading the JWKS file first when it changed.
    fn key(&self, kid: Option<&str>) -> Option<Key> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = stamp(&self.cfg.jwks_file);
        if stamp.is_some() && stamp != keys.stamp {
            match read_jwks(&self.cfg.jwks_file, self.cfg.max_jwks_bytes) {
                Ok((fresh, skipped)) => {
                    for s in skipped {
                        tracing::warn!(jwks = %self.cfg.jwks_file.display(), "{s}");
                    }
                    tracing::info!(
                        jwks = %self.cfg.jwks_file.display(),
                        keys = fresh.by_kid.len() + fresh.anonymous.len(),
                        "OIDC: JWKS file changed, keys reloaded"
                    );
                    *keys = fresh;
                }
                Err(e) => {
                    // Keep the keys we have; try again when the file changes once more.
                    tracing::warn!("OIDC: keeping the previous keys: {e:#}");
                    keys.stamp = stamp;
                }
            }
        }
        match kid {
            Some(k) => keys.by_kid.get(k).cloned(),
            None if keys.by_kid.is_empty() && keys.anonymous.len() == 1 => {
                keys.anonymous.first().cloned()
            }
            None => None,
        }
    }
}

/// admin > operator > viewer > producer, for callers mapped to several roles.
fn strength(r: Role) -> u8 {
    match r {
        Role::Producer => 0,
        Role::Viewer => 1,
        Role::Operator => 2,
        Role::Admin => 3,
    }
}

fn curve_fits(curve: Option<&EllipticCurve>, alg: Algorithm) -> bool {
    match curve {
        None => true,
        Some(EllipticCurve::P256) => alg == Algorithm::ES256,
        Some(EllipticCurve::P384) => alg == Algorithm::ES384,
        Some(EllipticCurve::Ed25519) => alg == Algorithm::EdDSA,
        Some(_) => false,
    }
}

/// A claim by dotted path.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// An attacker-chosen string cut for a message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reads a JWKS file: the usable public keys, and a note for each key skipped.
fn read_jwks(path: &Path, max_bytes: u64) -> anyhow::Result<(Keys, Vec<String>)> {
    let stamp = stamp(path);
    let size = stamp.map_or(0, |s| s.1);
    if size > max_bytes {
        bail!(
            "auth.oidc.jwks_file {} is {size} bytes, more than auth.oidc.max_jwks_bytes ({max_bytes})",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read auth.oidc.jwks_file {}: write the provider's JWKS there (its jwks_uri document)",
            path.display()
        )
    })?;
    let doc: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "auth.oidc.jwks_file {} is not JSON: it must be a JWKS document {{\"keys\": [...]}}",
            path.display()
        )
    })?;
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        bail!(
            "auth.oidc.jwks_file {} has no \"keys\" array: it must be a JWKS document",
            path.display()
        );
    };
    let mut keys = Keys {
        stamp,
        by_kid: HashMap::new(),
        anonymous: Vec::new(),
    };
    let mut skipped = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(raw.clone()) {
            Ok(k) => k,
            Err(_) => {
                skipped.push(format!("JWKS key #{i} skipped: not a key whale can read"));
                continue;
            }
        };
        let curve = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) => Some(p.curve.clone()),
            AlgorithmParameters::OctetKeyPair(p) => Some(p.curve.clone()),
            AlgorithmParameters::RSA(_) => None,
            _ => {
                skipped.push(format!(
                    "JWKS key #{i} skipped: only EC, RSA and OKP public keys are used (not shared secrets)"
                ));
                continue;
            }
        };
        let decoding = match DecodingKey::from_jwk(&jwk) {
            Ok(d) => d,
            Err(_) => {
                skipped.push(format!("JWKS key #{i} skipped: its parameters are invalid"));
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            skipped.push(format!(
                "JWKS key #{i} skipped: it is for encryption (use: enc)"
            ));
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(a) => Some(a),
                Err(_) => {
                    skipped.push(format!(
                        "JWKS key #{i} skipped: its alg {a} is not a signature algorithm"
                    ));
                    continue;
                }
            },
        };
        let key = Key {
            decoding: Arc::new(decoding),
            alg,
            curve,
        };
        match jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid, key);
            }
            None => keys.anonymous.push(key),
        }
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_by_dotted_path() {
        let c = serde_json::json!({"realm_access": {"roles": ["sre"]}, "a.b": 1});
        assert_eq!(
            claim(&c, "realm_access.roles"),
            Some(&serde_json::json!(["sre"]))
        );
        assert_eq!(claim(&c, "a.b"), Some(&serde_json::json!(1)));
        assert_eq!(claim(&c, "nope.x"), None);
    }

    #[test]
    fn only_jwt_shaped_tokens_are_sent_to_the_verifier() {
        assert!(Oidc::looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!Oidc::looks_like_jwt("operator-token-0123456789"));
        assert!(!Oidc::looks_like_jwt("a.b"));
    }

    #[test]
    fn symmetric_algorithms_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
        let mut cfg = OidcConfig {
            issuer: "https://idp".into(),
            audience: "whale".into(),
            jwks_file: jwks,
            ..Default::default()
        };
        cfg.roles.insert("sre".into(), Role::Operator);
        cfg.algorithms = vec!["HS256".into()];
        let e = Oidc::new(&cfg).err().unwrap().to_string();
        assert!(e.contains("HS*"), "{e}");
        cfg.algorithms = vec!["ES256".into()];
        let e = format!("{:#}", Oidc::new(&cfg).err().unwrap());
        assert!(e.contains("no usable key"), "{e}");
    }
}
