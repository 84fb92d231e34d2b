//! Issue 17, the operator console, in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, fantoccini) against `whale run --stages all` with real NATS, Redis and the
//! StackStorm emulator. Signs in, searches an event, opens its trace, approves a pending task
//! and sees the execution appear, retries it, switches to Chinese; a viewer is refused an
//! operator action and a form without its CSRF token is refused. Every page is saved as a
//! screenshot under `.whale/artifacts/console/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use whale_kernel::auth::{hash_token, Role};
use whale_kernel::testkit::RedisServer;

use crate::harness::*;

const TOKENS: [(&str, Role, &str); 4] = [
    ("alertmanager", Role::Producer, "producer-token-console-01"),
    ("dashboard", Role::Viewer, "viewer-token-console-01"),
    ("oncall-op", Role::Operator, "operator-token-console-01"),
    ("platform-admin", Role::Admin, "admin-token-console-01"),
];

fn token(role: Role) -> &'static str {
    TOKENS.iter().find(|t| t.1 == role).map(|t| t.2).unwrap()
}

const RULE: &str = r#"name: console-cleanup
description: Clean temp files, after an operator approves
on: [vm.disk_usage]
when:
  - { path: .detail.env, eq: prod }
action: ops.clean_disk
params:
  host: "{{ .detail.host }}"
  note: "{{ .detail.usage_pct }}% on {{ .detail.host }}"
approval: { required: true, timeout: 30m }
"#;

/// `chromedriver` on a free port; killed on drop. A machine without it fails the test with the
/// command that installs it.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let found = Command::new("chromedriver").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success())
                && Command::new("chromium")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
            "chromium and chromedriver are needed for the console's browser tests: \
             `sudo apt-get install -y chromium chromium-driver` (deploy/install.sh does it)"
        );
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self, lang: &str) -> Client {
        // fantoccini's connector is built with rustls; chromedriver is plain HTTP on loopback.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            "--window-size=1280,900", format!("--lang={lang}")],
                   "prefs": {"intl.accept_languages": lang}}),
        );
        let mut last = None;
        for _ in 0..50 {
            match ClientBuilder::rustls()
                .expect("rustls")
                .capabilities(caps.clone())
                .connect(&self.url)
                .await
            {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cannot start chromium through chromedriver: {last:?}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn artifacts() -> PathBuf {
    let d = repo().join(".whale/artifacts/console");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element matching `css`. Parts of the console refresh themselves: an
/// element found can be replaced before its text is read (a stale element reference), and then
/// it is found again.
async fn text_of(b: &Client, css: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let el = b
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
        match el.text().await {
            Ok(t) => return t,
            Err(e)
                if e.to_string().contains("stale element")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("cannot read the text of {css}: {e}"),
        }
    }
}

/// Clicks the first element `at` finds.
async fn click(b: &Client, at: Locator<'_>) {
    b.find(at).await.unwrap().click().await.unwrap();
}

/// Fills a form of the page the way a user does: types each text into its field, then clicks
/// the `submit` button.
async fn submit_form(b: &Client, fields: &[(Locator<'_>, &str)], submit: Locator<'_>) {
    for (field, text) in fields {
        b.find(*field).await.unwrap().send_keys(text).await.unwrap();
    }
    click(b, submit).await;
}

/// The session's CSRF token, from the first form of the page.
async fn csrf_of_page(b: &Client) -> String {
    b.find(Locator::Css("input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap()
}

async fn sign_in(b: &Client, base: &str, tok: &str) {
    b.goto(&format!("{base}/ui/")).await.unwrap();
    let url = b.current_url().await.unwrap();
    assert_eq!(
        url.path(),
        "/ui/sign-in",
        "an unauthenticated browser is sent to sign-in"
    );
    submit_form(b, &[(Locator::Id("token"), tok)], Locator::Id("sign-in")).await;
    b.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("principal"))
        .await
        .expect("signed in");
}

/// Polls `url` in the browser until `css` is on the page.
async fn reload_until(b: &Client, url: &str, css: &str) -> bool {
    for _ in 0..60 {
        b.goto(url).await.unwrap();
        if b.find(Locator::Css(css)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Submits a form built in the page (as a forged or replayed request would be): `csrf` is put
/// in only when given.
async fn post_form(b: &Client, action: &str, csrf: Option<&str>) {
    b.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
         if (arguments[1] !== null) { const i = document.createElement('input'); i.type = 'hidden';
           i.name = 'csrf'; i.value = arguments[1]; f.appendChild(i); }
         document.body.appendChild(f); f.submit();",
        vec![json!(action), json!(csrf)],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let driver = Driver::start();
    let redis = RedisServer::start();
    let st2 = Emulator::start(&["--any-action"]);
    let dir = tempfile::tempdir().unwrap();
    let mut env = console_env(dir.path());
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("console.yaml"), RULE).unwrap();
    env.set("WHALE_REDIS_URL", &redis.url());
    env.set("WHALE_ST2_URL", &st2.url);
    env.set("WHALE_ST2_API_KEY", "k");
    env.set(
        "WHALE_INDEX_DIR",
        dir.path().join("index").to_str().unwrap(),
    );
    env.prepare();
    env.ok(&["rules", "apply", rules.to_str().unwrap()]);
    let _w = env.run("all");
    let base = env.http("");
    let base = base.trim_end_matches('/').to_owned();

    // A matching event (held for approval), posted as the producer.
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("{base}/v1/events"))
            .header("authorization", format!("Bearer {}", token(Role::Producer)))
            .json(&body)
            .send()
    };
    let r = post(
        json!({"event_type": "vm.disk_usage", "source": "prometheus/node",
        "detail": {"host": "web-12", "usage_pct": 93, "env": "prod", "app": "shop",
                   "mounts": [{"path": "/data", "usage_pct": 93}]}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let event_id = accepted["ids"][0]
        .as_str()
        .or_else(|| accepted["id"].as_str())
        .unwrap_or_else(|| panic!("no event id in {accepted}"))
        .to_owned();

    // Sign in as the operator.
    let b = driver.browser("en").await;
    b.goto(&format!("{base}/ui/sign-in")).await.unwrap();
    shot(&b, "sign-in").await;
    sign_in(&b, &base, token(Role::Operator)).await;
    assert!(text_of(&b, "#principal").await.contains("oncall-op"));
    assert!(
        text_of(&b, "#backlog").await.contains("validate"),
        "the overview shows each stage's backlog"
    );
    b.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#live[data-updated] #backlog"))
        .await
        .expect("the overview refreshes over SSE");
    shot(&b, "overview").await;

    // Search the event, open its trace.
    let search = format!("{base}/ui/events?q=detail.host:web-12");
    assert!(
        reload_until(&b, &search, "#hits a.trace").await,
        "the event is never found by the console's search"
    );
    let total = text_of(&b, "#total").await;
    assert!(total.starts_with("1 "), "one event on web-12: {total}");
    b.goto(&format!("{base}/ui/events")).await.unwrap();
    submit_form(
        &b,
        &[(Locator::Id("q"), "detail.host:web-12")],
        Locator::Id("search"),
    )
    .await;
    // The unfiltered page lists the event too: wait for the search's own page.
    let mut searched = false;
    for _ in 0..100 {
        let url = b.current_url().await.unwrap();
        if url.query().is_some_and(|q| q.contains("q=detail.host")) {
            searched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(searched, "the search form did not submit");
    assert_eq!(text_of(&b, "#hits a.trace").await, event_id);
    b.goto(&format!("{base}/ui/events?q=*&kind=event,rejected"))
        .await
        .unwrap();
    shot(&b, "events").await;
    b.goto(&search).await.unwrap();
    click(&b, Locator::Css("#hits a.trace")).await;
    assert!(
        reload_until(
            &b,
            &format!("{base}/ui/trace/{event_id}"),
            "li.step[data-kind=approval]"
        )
        .await,
        "the trace never shows the approval step"
    );
    let timeline = text_of(&b, "#timeline").await;
    assert!(
        timeline.contains("event") && timeline.contains("console-cleanup"),
        "{timeline}"
    );

    // Approve the pending task with a reason; its execution appears.
    b.goto(&format!("{base}/ui/approvals")).await.unwrap();
    let reason = Locator::Css("article.approval input[name=reason]");
    b.wait()
        .at_most(Duration::from_secs(20))
        .for_element(reason)
        .await
        .unwrap();
    shot(&b, "approvals").await;
    submit_form(
        &b,
        &[(reason, "disk is full, go")],
        Locator::Css("article.approval button.approve"),
    )
    .await;
    let note = text_of(&b, "#message").await;
    assert!(note.contains("approved"), "{note}");
    assert!(
        reload_until(&b, &format!("{base}/ui/executions"), "#executions tbody tr").await,
        "the approved task's execution never appears"
    );
    let row = text_of(&b, "#executions tbody tr").await;
    assert!(
        row.contains("console-cleanup") && row.contains("ops.clean_disk"),
        "{row}"
    );
    shot(&b, "executions").await;

    // Retry it.
    click(&b, Locator::Css("#executions tbody tr td a")).await;
    let first = text_of(&b, "#exec-id").await;
    shot(&b, "execution").await;
    click(&b, Locator::Id("exec-retry")).await;
    let note = text_of(&b, "#message").await;
    assert!(note.contains("retry → "), "{note}");
    assert!(
        !note.ends_with(&first),
        "the retry is a new execution: {note}"
    );

    // The trace now goes on through the approval to the execution.
    let trace = format!("{base}/ui/trace/{event_id}");
    assert!(
        reload_until(&b, &trace, "li.step[data-kind=dispatched]").await,
        "the trace never shows the dispatch"
    );
    shot(&b, "trace").await;

    // The audit trail names the signed-in principal for both actions.
    b.goto(&format!("{base}/ui/audit")).await.unwrap();
    let audit = text_of(&b, "#audit").await;
    assert!(
        audit.contains("approval.approve") && audit.contains("exec.retry"),
        "{audit}"
    );
    assert!(audit.contains("oncall-op"), "{audit}");
    shot(&b, "audit").await;
    b.goto(&format!("{base}/ui/dead-letters")).await.unwrap();
    shot(&b, "dead-letters").await;
    b.goto(&format!("{base}/ui/rules")).await.unwrap();
    assert!(text_of(&b, "#rules-version").await.len() > 10);
    submit_form(
        &b,
        &[(Locator::Id("try-event"), &event_id)],
        Locator::Id("try-run"),
    )
    .await;
    let tried = text_of(&b, "#try-result").await;
    assert!(
        tried.contains("console-cleanup") && tried.contains("matched") && tried.contains("web-12"),
        "{tried}"
    );
    shot(&b, "rules").await;

    // A backtest of the active set over the last hour: the event was read, the rule would
    // match it and did fire (the same report as `whale replay --dry-run`).
    b.find(Locator::Id("bt-from"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    submit_form(&b, &[(Locator::Id("bt-from"), "1h")], Locator::Id("bt-run")).await;
    let examined: u64 = text_of(&b, "#bt-events").await.parse().unwrap();
    assert!(
        examined >= 1,
        "the backtest read the posted event: {examined}"
    );
    assert!(
        b.find(Locator::Id("bt-limited")).await.is_err(),
        "{examined} events are under console.backtest_max_events"
    );
    let would = text_of(&b, "#bt-rules tr[data-rule=console-cleanup] td.would").await;
    let fired = text_of(&b, "#bt-rules tr[data-rule=console-cleanup] td.fired").await;
    assert_eq!(
        (would.as_str(), fired.as_str()),
        ("1", "1"),
        "would match / fired"
    );
    eprintln!("console: backtest examined {examined} events; console-cleanup would {would}, fired {fired}");
    shot(&b, "rules-backtest").await;
    // An operator may not roll back (admin only).
    let csrf = csrf_of_page(&b).await;
    let cookie = b.get_named_cookie("whale_session").await.unwrap();
    let r = rollback_form(&base, cookie.value(), &csrf, "whatever").await;
    assert_eq!(r.status(), 403, "an operator is refused the rollback");
    assert!(r.text().await.unwrap().contains("admin"));

    // CSRF: the operator's own session, a form without the token → refused, nothing done.
    let exec_path = format!("/ui/executions/{}", first);
    post_form(&b, &format!("{exec_path}/cancel"), None).await;
    assert!(
        text_of(&b, "#message").await.contains("CSRF"),
        "a form without its CSRF token is refused"
    );
    let cookie = b.get_named_cookie("whale_session").await.unwrap();
    let cookie = format!("whale_session={}", cookie.value());
    let cancel = |origin: &str, body: &str| {
        form(
            &reqwest::Client::new(),
            format!("{base}{exec_path}/cancel"),
            origin,
            Some(&cookie),
            body.into(),
        )
        .send()
    };
    let r = cancel(&base, "csrf=").await.unwrap();
    assert_eq!(r.status(), 403, "no CSRF token");
    let r = cancel("http://evil.example", "csrf=x").await.unwrap();
    assert_eq!(r.status(), 403, "a foreign Origin");

    // Chinese UI.
    b.goto(&format!("{base}/ui/")).await.unwrap();
    click(&b, Locator::Css("header .who a[lang]")).await;
    let nav = text_of(&b, "header nav").await;
    assert!(nav.contains("事件") && nav.contains("审批"), "{nav}");
    shot(&b, "overview-zh").await;

    // Sign out; a viewer sees no action buttons and is refused an operator action.
    b.execute(
        "document.querySelector('header form button').click()",
        vec![],
    )
    .await
    .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    sign_in(&b, &base, token(Role::Viewer)).await;
    b.goto(&format!("{base}{exec_path}")).await.unwrap();
    text_of(&b, "#exec-id").await;
    assert!(
        b.find(Locator::Id("exec-retry")).await.is_err(),
        "a viewer gets no retry button"
    );
    let csrf = csrf_of_page(&b).await;
    post_form(&b, &format!("{exec_path}/retry"), Some(&csrf)).await;
    let refusal = text_of(&b, "#refusal").await;
    assert!(
        refusal.contains("dashboard") && refusal.contains("operator"),
        "{refusal}"
    );
    let viewer_cookie = b.get_named_cookie("whale_session").await.unwrap();
    let r = rollback_form(&base, viewer_cookie.value(), &csrf, "whatever").await;
    assert_eq!(r.status(), 403, "a viewer is refused the rollback");
    b.goto(&format!("{base}/ui/rules")).await.unwrap();
    assert!(
        b.find(Locator::Css("button.rollback")).await.is_err(),
        "a viewer gets no rollback button"
    );

    // A second version, applied from a git checkout; the admin sees the history, the diff, and
    // rolls back to the first version in the browser.
    let v1 = active_version(&base).await;
    std::fs::write(rules.join("extra.yaml"), EXTRA_RULE).unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=Console Test",
            "-c",
            "user.email=console@example.com",
            "commit",
            "-q",
            "-m",
            "add console-extra",
        ],
    ] {
        let ok = Command::new("git")
            .arg("-C")
            .arg(&rules)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "git {args:?}");
    }
    env.ok(&["rules", "apply", rules.to_str().unwrap()]);
    let v2 = active_version(&base).await;
    assert_ne!(v1, v2);
    b.delete_all_cookies().await.unwrap();
    sign_in(&b, &base, token(Role::Admin)).await;
    b.goto(&format!("{base}/ui/rules")).await.unwrap();
    let history = text_of(&b, "#rules-history").await;
    assert!(
        history.contains(&v1) && history.contains(&v2) && history.contains("Console Test"),
        "the history names both versions and the git author: {history}"
    );
    shot(&b, "rules-history").await;
    click(&b, Locator::Id("diff-run")).await;
    let diff = text_of(&b, "#rules-diff").await;
    assert!(
        diff.contains("extra.yaml") && diff.contains("+name: console-extra"),
        "{diff}"
    );
    shot(&b, "rules-diff").await;
    b.goto(&format!("{base}/ui/rules")).await.unwrap();
    click(
        &b,
        Locator::Css(&format!(
            "#rules-history tr[data-version='{v1}'] button.rollback"
        )),
    )
    .await;
    let note = text_of(&b, "#message").await;
    assert!(note.contains(&v1), "{note}");
    assert!(text_of(&b, "#rules-version").await.contains(&v1));
    shot(&b, "rules-rolled-back").await;
    assert_eq!(active_version(&base).await, v1, "the route agrees");
    let cli = env.ok(&["rules", "history", "--json"]);
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(cli[0]["version"], v1.as_str(), "the CLI agrees: {cli}");
    assert_eq!(cli[0]["action"], "rollback");
    assert_eq!(cli[0]["by"], "platform-admin");
    b.goto(&format!("{base}/ui/audit?action=rules.rollback"))
        .await
        .unwrap();
    let audit = text_of(&b, "#audit").await;
    assert!(
        audit.contains("rules.rollback") && audit.contains("platform-admin"),
        "{audit}"
    );
    eprintln!("console: rolled back {v2} -> {v1} in the browser as platform-admin");
    b.close().await.unwrap();
    let created = st2.created().await;
    assert_eq!(
        created, 2,
        "the approved execution and one retry, nothing from refused forms"
    );
    eprintln!("console: screenshots in {}", artifacts().display());
}

const EXTRA_RULE: &str = r#"name: console-extra
description: A second version's rule
on: [vm.disk_usage]
when:
  - { path: .detail.env, eq: staging }
action: ops.notify
params:
  host: "{{ .detail.host }}"
"#;

/// The active rule-set version, as `GET /v1/rules` gives it.
async fn active_version(base: &str) -> String {
    let v: Value = reqwest::Client::new()
        .get(format!("{base}/v1/rules"))
        .header("authorization", format!("Bearer {}", token(Role::Viewer)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned()
}

/// The rollback form posted with a session cookie and the console's own origin.
async fn rollback_form(base: &str, cookie: &str, csrf: &str, version: &str) -> reqwest::Response {
    form(
        &reqwest::Client::new(),
        format!("{base}/ui/rules/rollback"),
        base,
        Some(&format!("whale_session={cookie}")),
        format!("csrf={csrf}&version={version}"),
    )
    .send()
    .await
    .unwrap()
}

/// A console form posted without a browser, as one on `origin` would send it: `body`
/// urlencoded, with the session `cookie` (`whale_session=…`) when there is one.
fn form(
    http: &reqwest::Client,
    url: String,
    origin: &str,
    cookie: Option<&str>,
    body: String,
) -> reqwest::RequestBuilder {
    let req = http
        .post(url)
        .header("origin", origin)
        .header("content-type", "application/x-www-form-urlencoded");
    match cookie {
        Some(c) => req.header("cookie", c),
        None => req,
    }
    .body(body)
}

/// The sign-in form with `tok`, sent from `origin`, asking to go on to `next`.
fn sign_in_form(
    http: &reqwest::Client,
    base: &str,
    origin: &str,
    tok: &str,
    next: &str,
) -> reqwest::RequestBuilder {
    form(
        http,
        format!("{base}/ui/sign-in"),
        origin,
        None,
        format!("token={tok}&next={next}"),
    )
}

/// A client that hands redirects back instead of following them: the console answers a
/// sign-in, and a request without a session, with one.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The session a sign-in set: `whale_session=…`, the cookie header a later request sends.
fn session_cookie(r: &reqwest::Response) -> String {
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// `url` fetched with the session `cookie` (`whale_session=…`).
async fn get_with(http: &reqwest::Client, url: String, cookie: &str) -> reqwest::Response {
    http.get(url).header("cookie", cookie).send().await.unwrap()
}

/// The CSRF token in a console page's forms.
fn csrf_in(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the page's forms")
        .to_owned()
}

/// An environment whose `whale.toml`, in `dir`, has the test's four tokens.
fn console_env(dir: &std::path::Path) -> Env {
    write_config(dir);
    let mut env = Env::new();
    env.set("WHALE_CONFIG", dir.join("whale.toml").to_str().unwrap());
    env
}

/// `whale.toml` in `dir` with the test's four tokens.
fn write_config(dir: &std::path::Path) {
    let mut toml = String::new();
    for (name, role, t) in TOKENS {
        toml.push_str(&format!(
            "[[auth.tokens]]\nname = \"{name}\"\nrole = \"{}\"\nsha256 = \"{}\"\n",
            role.as_str(),
            hex(&hash_token(t))
        ));
    }
    std::fs::write(dir.join("whale.toml"), toml).unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Issue 17 "sessions work with several `whale run` processes": a cookie signed in on one
/// process is accepted by another (the key is shared through KV), forms there still need the
/// session's CSRF token and the console's own origin, and the page whose data lives in a stage
/// the process does not run (the embedded index) says so. A producer token cannot sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_on_every_process_and_forms_need_csrf_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = console_env(dir.path());
    env.set(
        "WHALE_INDEX_DIR",
        dir.path().join("index").to_str().unwrap(),
    );
    env.prepare();
    let _a = env.run("index,approve");
    let b_port = free_port();
    let _b = env.spawn_on("approve", b_port, &dir.path().join("b.log"), &[]);
    assert!(
        ready(b_port, Duration::from_secs(30)).await,
        "the second whale run never got ready"
    );
    let a = env.http("").trim_end_matches('/').to_owned();
    let b = format!("http://127.0.0.1:{b_port}");
    let http = no_redirects();
    let sign_in = |tok: &'static str, origin: String| {
        sign_in_form(&http, &a, &origin, tok, "/ui/approvals").send()
    };
    let r = sign_in(token(Role::Producer), a.clone()).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/sign-in?failed=1"));
    assert!(
        r.headers().get("set-cookie").is_none(),
        "a producer gets no session"
    );
    let r = sign_in(token(Role::Operator), "http://evil.example".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "sign-in from a foreign page");
    let r = sign_in(token(Role::Operator), a.clone()).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/approvals");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = session_cookie(&r);

    // The other process accepts the session.
    let page = get_with(&http, format!("{b}/ui/approvals"), &cookie).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("oncall-op"),
        "the page names the signed-in principal"
    );
    let csrf = csrf_in(&html);
    // Its Events page says the embedded index is in another process.
    let events = get_with(&http, format!("{b}/ui/events"), &cookie).await;
    assert_eq!(events.status(), 200);
    assert!(events
        .text()
        .await
        .unwrap()
        .contains("the embedded index lives in the process that runs the index stage"));
    let ours = get_with(&http, format!("{a}/ui/events"), &cookie).await;
    assert!(
        ours.text().await.unwrap().contains("id=\"total\""),
        "the index's own process searches"
    );

    let post = |origin: &str, body: String| {
        form(
            &http,
            format!("{b}/ui/approvals/t-none/approve"),
            origin,
            Some(&cookie),
            body,
        )
        .send()
    };
    let r = post(&b, "reason=x".into()).await.unwrap();
    assert_eq!(r.status(), 403, "no CSRF token");
    assert!(r.text().await.unwrap().contains("CSRF"));
    let r = post("http://evil.example", format!("csrf={csrf}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a foreign origin");
    let r = post(&b, format!("csrf={csrf}&reason=x")).await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "with the token the action runs (and finds no such approval)"
    );
    assert!(r.text().await.unwrap().contains("t-none"));
    // A forged cookie is no session.
    let forged = cookie.replacen('7', "8", 1).replacen('a', "b", 1);
    let r = get_with(&http, format!("{b}/ui/"), &forged).await;
    assert_eq!(r.status(), 303);
}

/// Issue 17: a sign-in is an audit record, accepted or refused (the principal, or `unknown
/// token`; never the token), and so is a sign-out; a token removed from the config ends its
/// sessions at the next `whale run` (the session's principal is checked on every request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_audited_and_a_removed_token_ends_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let env = console_env(dir.path());
    env.prepare();
    let w = env.run("approve");
    let base = env.http("").trim_end_matches('/').to_owned();
    let http = no_redirects();
    let sign_in = |tok: &str| sign_in_form(&http, &base, &base, tok, "/ui/").send();
    let r = sign_in("not-a-known-token-xyz").await.unwrap();
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/sign-in?failed=1"));
    let r = sign_in(token(Role::Producer)).await.unwrap();
    assert!(r.headers().get("set-cookie").is_none());
    let op = session_cookie(&sign_in(token(Role::Operator)).await.unwrap());
    let viewer = session_cookie(&sign_in(token(Role::Viewer)).await.unwrap());
    // The operator signs out (with its CSRF token).
    let page = get_with(&http, format!("{base}/ui/"), &op).await;
    let csrf = csrf_in(&page.text().await.unwrap());
    // A form of the console posted with `session`, the token above and the console's origin.
    let post = |path: &str, session: &str| {
        form(
            &http,
            format!("{base}{path}"),
            &base,
            Some(session),
            format!("csrf={csrf}"),
        )
        .send()
    };
    let r = post("/ui/sign-out", &op).await.unwrap();
    assert_eq!(r.status(), 303);

    let audit = |action: &'static str| {
        let url = format!("{base}/v1/audit?action={action}");
        let http = http.clone();
        async move {
            let r = http
                .get(url)
                .header("authorization", format!("Bearer {}", token(Role::Admin)))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let body = audit("console.sign_in").await;
    for (_, _, t) in TOKENS {
        assert!(!body.contains(t), "a token in the audit trail: {body}");
    }
    assert!(!body.contains("not-a-known-token-xyz"), "{body}");
    let records: Vec<Value> = match serde_json::from_str::<Value>(&body).unwrap() {
        Value::Array(a) => a,
        v => v["records"].as_array().cloned().unwrap_or_default(),
    };
    let seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["who"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("unknown token", "refused"),
        ("alertmanager", "refused"),
        ("oncall-op", "ok"),
        ("dashboard", "ok"),
    ] {
        assert!(
            seen.iter().any(|(w, o)| (w.as_str(), o.as_str()) == want),
            "no sign-in record {want:?} in {seen:?}"
        );
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    let out = audit("console.sign_out").await;
    assert!(out.contains("oncall-op"), "{out}");
    eprintln!("console: sign-in records {seen:?}");

    // A fresh operator session, then the operator's token leaves the config.
    let op = session_cookie(&sign_in(token(Role::Operator)).await.unwrap());
    let get = |c: String| {
        http.get(format!("{base}/ui/approvals"))
            .header("cookie", c)
            .send()
    };
    assert_eq!(get(op.clone()).await.unwrap().status(), 200);
    drop(w);
    let kept: String = std::fs::read_to_string(dir.path().join("whale.toml"))
        .unwrap()
        .split("[[auth.tokens]]")
        .filter(|e| !e.trim().is_empty() && !e.contains("\"oncall-op\""))
        .map(|e| format!("[[auth.tokens]]{e}"))
        .collect();
    assert!(!kept.contains("oncall-op"));
    std::fs::write(dir.path().join("whale.toml"), kept).unwrap();
    let _w = env.run("approve");
    let r = get(op.clone()).await.unwrap();
    assert_eq!(r.status(), 303, "the removed token's session is gone");
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/sign-in"));
    let r = post("/ui/approvals/t-none/approve", &op).await.unwrap();
    assert_eq!(r.status(), 401, "its forms are refused");
    assert_eq!(
        get(viewer).await.unwrap().status(),
        200,
        "a session of a token still configured goes on"
    );
}
