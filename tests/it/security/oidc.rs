//! Issue 13 "OIDC/JWT bearer tokens checked against a JWKS", against the real `whale run` and a
//! real nats-server: tokens signed at test time with fresh EC P-256 keys, a JWKS file written
//! by the test; valid, expired, foreign and forged tokens, a token without a mapped role, and
//! key rotation by rewriting the JWKS file while whale runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::*;

const ISSUER: &str = "https://idp.test/realms/ops";
const AUDIENCE: &str = "whale";

/// A signing key of the test identity provider.
struct IdpKey {
    kid: String,
    pair: rcgen::KeyPair,
}

impl IdpKey {
    fn new(kid: &str) -> IdpKey {
        IdpKey {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    /// The public key as a JWK (EC P-256: x and y from the uncompressed point).
    fn jwk(&self) -> Value {
        let raw = self.pair.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
        })
    }

    /// A token signed by this key, with header `kid` (normally its own).
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        let key = EncodingKey::from_ec_pem(self.pair.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }
}

fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(user: &str, groups: &[&str]) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": format!("uid-{user}"),
        "preferred_username": user, "groups": groups,
        "iat": now(), "exp": now() + 600,
    })
}

/// An RSA signing key made with `openssl genpkey` (rcgen makes no RSA keys): its PEM and JWK.
fn rsa_key(dir: &std::path::Path, kid: &str) -> (String, Value) {
    let pem = dir.join(format!("{kid}.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl on PATH (apt-get install openssl) makes the test's RSA key");
    assert!(st.success(), "openssl genpkey");
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-modulus", "-noout", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text
        .trim()
        .strip_prefix("Modulus=")
        .expect("openssl rsa -modulus");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    // openssl's default public exponent is 65537.
    let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": b64url(&n), "e": "AQAB"});
    (std::fs::read_to_string(&pem).unwrap(), jwk)
}

fn sign_rsa(pem: &str, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn write_jwks(path: &std::path::Path, keys: &[&IdpKey], extra: &[&Value]) {
    let mut all: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
    all.extend(extra.iter().map(|v| (*v).clone()));
    let doc = json!({ "keys": all });
    // Write then rename, as a Secret mount or a sidecar replaces the file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Issue 13 OIDC: a valid operator token approves and is recorded as `oidc:<name>`; a viewer
/// token reads but may not decide (403); a token whose groups map to no role gets 403;
/// expired, wrong audience, wrong issuer, bad signature and unknown kid get 401 with the reason
/// and without the token; rewriting the JWKS file rotates keys without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_are_verified_against_the_jwks_and_mapped_to_roles() {
    let k1 = IdpKey::new("k1");
    let k2 = IdpKey::new("k2");
    let forger = IdpKey::new("k1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (rsa_pem, rsa_jwk) = rsa_key(dir.path(), "r1");
    write_jwks(&jwks, &[&k1], &[&rsa_jwk]);
    let cfg = dir.path().join("whale.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth.oidc]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = {:?}\n\
             algorithms = [\"ES256\", \"RS256\"]\nrole_claim = \"groups\"\n\
             name_claim = \"preferred_username\"\nleeway = \"5s\"\n\
             roles = {{ \"sre\" = \"operator\", \"dashboards\" = \"viewer\" }}\n",
            jwks.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut env = Env::new();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.prepare();
    let log = dir.path().join("whale.log");
    let _w = env.run_logged("approve", &log).await;

    let http = reqwest::Client::new();
    let get = |token: String| {
        let url = env.http("/v1/approvals");
        let http = http.clone();
        async move {
            let r = http
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let operator = k1.sign("k1", &claims("alice", &["staff", "sre"]));
    let viewer = k1.sign("k1", &claims("bob", &["dashboards"]));
    let nobody = k1.sign("k1", &claims("carol", &["staff"]));
    assert_eq!(get(operator.clone()).await.0, 200, "operator token reads");
    assert_eq!(get(viewer.clone()).await.0, 200, "viewer token reads");
    let rs256 = sign_rsa(&rsa_pem, Algorithm::RS256, "r1", &claims("dave", &["sre"]));
    assert_eq!(
        get(rs256).await.0,
        200,
        "an RS256 token of the RSA key reads"
    );
    let (code, body) = get(nobody.clone()).await;
    assert_eq!(code, 403, "a valid token with no mapped group: {body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("oidc:carol") && msg.contains("no whale role"),
        "{msg}"
    );

    // Each way a token can be wrong: 401, the reason, never the token.
    let mut expired = claims("alice", &["sre"]);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims("alice", &["sre"]);
    wrong_aud["aud"] = json!("grafana");
    let mut wrong_iss = claims("alice", &["sre"]);
    wrong_iss["iss"] = json!("https://evil.test");
    let mut not_yet = claims("alice", &["sre"]);
    not_yet["nbf"] = json!(now() + 3600);
    let cases = [
        ("expired", k1.sign("k1", &expired), "expired"),
        ("wrong audience", k1.sign("k1", &wrong_aud), "audience"),
        ("wrong issuer", k1.sign("k1", &wrong_iss), "issuer"),
        ("not yet valid", k1.sign("k1", &not_yet), "not valid yet"),
        (
            "bad signature",
            forger.sign("k1", &claims("alice", &["sre"])),
            "signature does not verify",
        ),
        (
            "PS256 not allowed",
            sign_rsa(&rsa_pem, Algorithm::PS256, "r1", &claims("alice", &["sre"])),
            "which auth.oidc.algorithms does not allow",
        ),
        (
            "unknown kid",
            k2.sign("k2", &claims("alice", &["sre"])),
            "key id \"k2\" is not in the JWKS",
        ),
    ];
    eprintln!("{:<18} {:<5} reason", "token", "code");
    for (what, token, reason) in &cases {
        let (code, body) = get(token.clone()).await;
        let msg = body["error"].as_str().unwrap_or_default();
        eprintln!("{what:<18} {code:<5} {msg}");
        assert_eq!(code, 401, "{what}: {body}");
        assert!(msg.contains(reason), "{what}: {msg}");
        let sig = token.rsplit('.').next().unwrap();
        assert!(
            !body.to_string().contains(sig),
            "{what}: the answer echoes the token"
        );
    }
    let (code, body) = get(format!("{operator}{}", "A".repeat(9000))).await;
    assert_eq!(code, 401, "an oversized token: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("max_token_bytes"),
        "{body}"
    );

    // A held task: the viewer may not decide it, the operator does and is recorded.
    let nats = env.connect().await;
    let mut t = crate::feedback::task("t-oidc", "disk-full-cleanup", "ops.clean_disk", &[], false);
    t["approval"] = json!({"timeout_ms": 600_000});
    crate::approvals::hold_task(&nats, &t).await;
    let pending = eventually(Duration::from_secs(30), || async {
        http.get(env.http("/v1/approvals/t-oidc"))
            .bearer_auth(&viewer)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(pending, "the approval was stored");
    let decide = |token: &str| {
        http.post(env.http("/v1/approvals"))
            .bearer_auth(token)
            .json(&json!({"id": "t-oidc", "decision": "approve"}))
            .send()
    };
    let r = decide(&viewer).await.unwrap();
    assert_eq!(r.status(), 403, "a viewer token may not approve");
    let r = decide(&operator).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let a: Value = http
        .get(env.http("/v1/approvals/t-oidc"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["decided_by"], "oidc:alice", "{a}");

    // Rotation: the provider now signs with k2 only; whale keeps running.
    write_jwks(&jwks, &[&k2], &[]);
    let rotated = k2.sign("k2", &claims("alice", &["sre"]));
    assert_eq!(get(rotated).await.0, 200, "a token of the new key");
    let (code, body) = get(operator.clone()).await;
    assert_eq!(code, 401, "a token of the retired key: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("\"k1\" is not in the JWKS"),
        "{body}"
    );

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("JWKS file changed, keys reloaded"), "{text}");
    for (_, token, _) in &cases {
        assert!(
            !text.contains(token.rsplit('.').next().unwrap()),
            "a token in the log"
        );
    }
    assert!(
        !text.contains(operator.rsplit('.').next().unwrap()),
        "a token in the log"
    );
}

/// A broken `[auth.oidc]` stops `whale run` at start with the key to fix (a missing JWKS file,
/// a shared-secret algorithm), instead of serving with auth that cannot work.
#[test]
fn a_broken_oidc_configuration_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new();
    let cases = [
        (
            format!(
                "jwks_file = {:?}\nroles = {{ \"sre\" = \"operator\" }}\n",
                dir.path().join("missing.json")
            ),
            "cannot read auth.oidc.jwks_file",
        ),
        (
            format!(
                "jwks_file = {:?}\nalgorithms = [\"HS256\"]\nroles = {{ \"sre\" = \"operator\" }}\n",
                dir.path().join("missing.json")
            ),
            "shared-secret HS* algorithms are refused",
        ),
        (
            format!("jwks_file = {:?}\n", dir.path().join("missing.json")),
            "auth.oidc.roles is empty",
        ),
    ];
    for (i, (extra, expected)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("whale-{i}.toml"));
        std::fs::write(
            &cfg,
            format!("[auth.oidc]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{extra}"),
        )
        .unwrap();
        let out = env
            .whale(&["run", "--stages", "ingest"])
            .env("WHALE_CONFIG", &cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started");
        assert!(err.contains(expected), "case {i}: {err}");
    }
    let out = env
        .whale(&["run", "--stages", "ingest"])
        .env("WHALE_HTTP_TLS_CERT_FILE", dir.path().join("c.pem"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("set both http.tls_cert_file and http.tls_key_file"),
        "{err}"
    );
}
