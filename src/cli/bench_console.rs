//! `whale bench console`: the operator console's page weight (bytes of a first view: the HTML
//! and the assets it loads) and each page's response time with `--events` (default 100,000)
//! events in a private embedded index, beside the JSON route that serves the same data in the
//! same run (the reference). A private nats-server and a temp index; nothing else is touched.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use whale_index::doc::Doc;
use whale_kernel::auth::{hash_token, Auth, Role, TokenEntry};
use whale_kernel::testkit::NatsServer;
use whale_kernel::{http, setup, Config};

#[derive(clap::Args)]
pub struct Args {
    /// Events stored in the embedded index before measuring.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Requests per page (the median and the slowest are printed).
    #[arg(long, default_value_t = 20)]
    requests: usize,
}

const TOKEN: &str = "bench-console-admin-token";

fn doc(i: usize, now: OffsetDateTime) -> Doc {
    let time = now - time::Duration::seconds(i as i64);
    let id = format!("01BENCH{i:019}");
    let detail = json!({"host": format!("web-{}", i % 100), "usage_pct": 50 + (i % 50), "env": "prod",
                        "message": format!("disk almost full on web-{}", i % 100)});
    let event_type = [
        "vm.disk_usage",
        "prometheus.alert",
        "dmesg.error",
        "generic",
    ][i % 4];
    Doc {
        id: format!("event:{id}"),
        kind: if i.is_multiple_of(50) {
            "rejected"
        } else {
            "event"
        }
        .into(),
        event_id: Some(id.clone()),
        event_type: Some(event_type.into()),
        source: Some(format!("bench/{}", i % 7)),
        rule: None,
        task_id: None,
        cluster: None,
        status: None,
        execution_id: None,
        subject: format!("whale.events.{event_type}"),
        time,
        seen: time,
        detail: Some(detail.clone()),
        labels: Some(json!({"biz": "trade"})),
        record: json!({"id": id, "event_type": event_type, "detail": detail}),
        index_error: None,
    }
}

pub async fn run(mut cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let server = NatsServer::start();
    let dir = tempfile::tempdir()?;
    cfg.nats.urls = vec![server.url()];
    cfg.index.dir = dir.path().join("index");
    cfg.index.opensearch_url = None;
    cfg.auth.tokens = vec![TokenEntry {
        name: "bench".into(),
        role: Role::Admin,
        sha256: hex::encode(hash_token(TOKEN)),
    }];
    let nats = super::connect(&cfg, "bench console").await?;
    setup::setup(&nats, &cfg).await?;

    let backend = whale_index::writer(&cfg)?;
    let now = OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut i = 0;
    while i < a.events {
        let end = (i + 5000).min(a.events);
        backend
            .write((i..end).map(|k| doc(k, now)).collect())
            .await?;
        i = end;
    }
    backend.refresh().await?;
    eprintln!(
        "indexed {} events in {:.1}s",
        a.events,
        started.elapsed().as_secs_f64()
    );

    let cfg = Arc::new(cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let auth = Auth::from_config(&cfg)?;
    let auth = Arc::new(auth.with_sessions(crate::console::sessions(&nats, &cfg).await?));
    let mut router = http::base_router(whale_kernel::Health::default(), Some(nats.clone()));
    router = router.merge(whale_kernel::audit::router(nats.clone(), cfg.clone()));
    router = router.merge(whale_index::http::router(cfg.clone(), backend.clone()));
    router = router.merge(whale_feedback::http::router(&nats, cfg.clone()).await?);
    router = router.merge(whale_approve::http::router(&nats, cfg.clone()).await?);
    router = router.merge(whale_dispatch::http::router(&nats, cfg.clone()).await?);
    router = router.merge(
        crate::console::router(
            &nats,
            cfg.clone(),
            auth.clone(),
            &["index"],
            stop_rx.clone(),
        )
        .await?,
    );
    let router = whale_kernel::auth::layer(router, auth);
    let router = http::harden(router, cfg.http.request_timeout);
    let (addr, task) = http::serve("127.0.0.1:0", router, stop_rx).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder().build()?;
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let t = Instant::now();
            let r = client
                .get(&url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .send()
                .await?;
            let status = r.status();
            let bytes = r.bytes().await?.len();
            anyhow::ensure!(status.is_success(), "GET {url}: {status}");
            Ok::<_, anyhow::Error>((t.elapsed(), bytes))
        }
    };
    let measure = async |path: &str| -> anyhow::Result<(Duration, Duration, usize)> {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..a.requests.max(1) {
            let (t, b) = get(path.to_owned()).await?;
            times.push(t);
            bytes = b;
        }
        times.sort();
        Ok((
            times[times.len() / 2],
            *times.last().unwrap_or(&Duration::ZERO),
            bytes,
        ))
    };

    // Page weight of a first view: the page, its stylesheet and its script (no images, fonts
    // or other requests).
    let (_, _, css) = measure("/ui/assets/console.css").await?;
    let (_, _, js) = measure("/ui/assets/console.js").await?;
    println!("\npage weight of a first view (HTML + console.css {css} B + console.js {js} B; uncompressed):");
    let pages: [(&str, &str); 8] = [
        ("/ui/", "/v1/events?q=kind:rejected&limit=5&kind=rejected"),
        ("/ui/events", "/v1/events?q=*&limit=1000"),
        (
            "/ui/events?q=detail.host:web-7&from=24h",
            "/v1/events?q=detail.host:web-7&from=24h&limit=1000",
        ),
        (
            "/ui/trace/01BENCH0000000000000000042",
            "/v1/events?q=event_id:01BENCH0000000000000000042&kind=all",
        ),
        ("/ui/executions", "/v1/executions"),
        ("/ui/approvals", "/v1/approvals"),
        ("/ui/dead-letters", "/v1/dead-letters"),
        ("/ui/audit", "/v1/audit?limit=200"),
    ];
    let mut rows = Vec::new();
    for (page, reference) in pages {
        let (med, max, html) = measure(page).await?;
        let (rmed, rmax, rbytes) = measure(reference).await?;
        println!("  {page:<48} {:>8} B", html + css + js);
        rows.push((page, med, max, reference, rmed, rmax, rbytes));
    }
    let (med, max, html) = measure("/ui/rules").await?;
    println!("  {:<48} {:>8} B", "/ui/rules", html + css + js);
    println!(
        "\nresponse times with {} events in the embedded index ({} requests each; median / slowest):",
        a.events, a.requests
    );
    println!(
        "  {:<48} {:>9} {:>9}   reference (same data as JSON)",
        "page", "median", "slowest"
    );
    for (page, med, max, reference, rmed, rmax, rbytes) in rows {
        println!(
            "  {page:<48} {:>7.1}ms {:>7.1}ms   {reference}: {:.1}ms / {:.1}ms, {rbytes} B",
            med.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            rmed.as_secs_f64() * 1e3,
            rmax.as_secs_f64() * 1e3,
        );
    }
    println!(
        "  {:<48} {:>7.1}ms {:>7.1}ms   (no JSON route: rules are read from KV)",
        "/ui/rules",
        med.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    let _ = stop_tx.send(true);
    let _ = task.await;
    Ok(ExitCode::SUCCESS)
}
