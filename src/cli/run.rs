//! `whale run --stages all|validate,...`: runs the chosen stages in this process, serves HTTP
//! (metrics, health, ingest), and on SIGTERM/SIGINT stops fetching, finishes in-flight work
//! and exits.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use whale_kernel::{http, worker, Config, Health};

use crate::registry;

#[derive(clap::Args)]
pub struct Args {
    /// Stages to run: `all` or a comma list (ingest, validate, ...).
    #[arg(long, default_value = "all")]
    stages: String,
    /// Worker loops per stage input in this process (more copies of the same consumer).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Listen on a non-loopback address with no auth configured (every route open to anyone
    /// who reaches the port). Logged as a warning on start.
    #[arg(long)]
    insecure_no_auth: bool,
}

pub async fn run(cfg: Config, a: Args) -> anyhow::Result<ExitCode> {
    let names = registry::parse(&a.stages)?;
    let auth = whale_kernel::auth::Auth::from_config(&cfg)?;
    if !auth.enabled() {
        if whale_kernel::auth::is_loopback(&cfg.http.addr) {
            tracing::info!("no auth configured: every HTTP route is open, on loopback only");
        } else if a.insecure_no_auth {
            tracing::warn!(
                http = %cfg.http.addr,
                "--insecure-no-auth: listening on a non-loopback address with NO authentication; \
                 anyone who reaches this port can post events, approve tasks and act on executions"
            );
        } else {
            anyhow::bail!(
                "refusing to listen on {} (http.addr / WHALE_HTTP_ADDR) with no auth configured: \
                 anyone reaching it could approve tasks and re-run executions. Configure tokens \
                 ([[auth.tokens]], auth.tokens_file or WHALE_HTTP_TOKEN; see docs/security.md), \
                 listen on 127.0.0.1, or pass --insecure-no-auth",
                cfg.http.addr
            );
        }
    }
    // Before any rule set is compiled: every jq predicate and template gets this time limit.
    whale_rules::set_default_eval_time(Some(cfg.rules.eval_time_limit).filter(|d| !d.is_zero()));
    let nats = super::connect(&cfg, &format!("run {}", names.join(","))).await?;
    let auth = Arc::new(auth.with_sessions(crate::console::sessions(&nats, &cfg).await?));
    whale_kernel::auth::Auth::watch_tokens_file(&auth);
    let cfg = Arc::new(cfg);
    let health = Health::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut router = http::base_router(health.clone(), Some(nats.clone()));
    // The audit trail is read from its stream: any `whale run` serves it, whatever its stages.
    router = router.merge(whale_kernel::audit::router(nats.clone(), cfg.clone()));
    // So are the rule-set versions (KV): `/v1/rules`, history, diff, rollback.
    router = router.merge(crate::rules_api::router(nats.clone(), cfg.clone()));
    let mut loops = JoinSet::new();
    let ctx = registry::Ctx {
        nats: nats.clone(),
        cfg: cfg.clone(),
        rules: crate::rules_store::SharedRules::new(),
    };
    for name in &names {
        let def = registry::get(name).context("a parsed stage name is in the table")?;
        tracing::debug!(stage = def.name, "starting: {}", def.about);
        let parts = (def.build)(ctx.clone())
            .await
            .with_context(|| format!("cannot start stage {name}"))?;
        if let Some(r) = parts.router {
            router = router.merge(r);
        }
        for (probe, check) in parts.probes {
            health.add_probe(probe, check);
        }
        let Some(stage) = parts.worker else {
            continue;
        };
        // A stage that keeps its own place reads each input once (copies would each read all).
        let copies = match stage.options().own_position {
            true => 1,
            false => a.concurrency.max(1),
        };
        for input in def.inputs() {
            for _ in 0..copies {
                health.register(input.consumer);
                loops.spawn(worker::run(
                    nats.clone(),
                    stage.clone(),
                    input.clone(),
                    stage.options(),
                    health.clone(),
                    stop_rx.clone(),
                ));
            }
        }
    }
    // The operator console (src/console): after the stages, whose parts it reads.
    router = router.merge(
        crate::console::router(&nats, cfg.clone(), auth.clone(), &names, stop_rx.clone()).await?,
    );
    let router = whale_kernel::auth::layer(router, auth);
    let router = http::harden(router, cfg.http.request_timeout);
    let (addr, http_task) = match (&cfg.http.tls_cert_file, &cfg.http.tls_key_file) {
        (None, None) => http::serve(&cfg.http.addr, router, stop_rx.clone()).await?,
        (Some(cert), Some(key)) => {
            whale_kernel::tls::serve(&cfg.http.addr, cert, key, router, stop_rx.clone()).await?
        }
        _ => anyhow::bail!(
            "set both http.tls_cert_file and http.tls_key_file (WHALE_HTTP_TLS_CERT_FILE, \
             WHALE_HTTP_TLS_KEY_FILE) to serve HTTPS, or neither"
        ),
    };
    let scheme = if cfg.http.tls_cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(stages = %names.join(","), http = %addr, scheme, "whale running");
    let mut failed = None;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("stopping: finishing in-flight messages"),
        Some(r) = loops.join_next() => {
            failed = Some(match r {
                Ok(Ok(())) => anyhow::anyhow!("a stage loop ended unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a stage loop panicked: {e}"),
            });
        }
    }
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(r) = loops.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::error!("stage loop: {e:#}");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!("some stages did not finish within 30s; their messages will be redelivered");
    }
    let _ = http_task.await;
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
