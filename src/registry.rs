//! The stage registry: every stage name `whale run --stages` accepts, what it needs, and how to
//! build it — in one place, like Loki's `-target` list. `all` runs every stage in one process.

use std::sync::Arc;

use anyhow::bail;
use whale_kernel::{Config, Nats, Stage};

/// Every stage, in pipeline order. `ingest` is the HTTP ingest endpoint; the rest are
/// JetStream workers.
pub const STAGES: &[(&str, &str)] = &[
    ("ingest", "HTTP POST /v1/events → whale.in.<type>"),
    ("validate", "whale.in.> → whale.events.<type> | whale.rejected.<type>"),
    ("index", "events, rejections, pipeline records → OpenSearch | embedded index"),
    ("match", "whale.events.> → whale.pipe.matched (one per event and matching rule)"),
    ("render", "whale.pipe.matched → whale.pipe.task | whale.pipe.render_failed"),
    ("throttle", "whale.pipe.task → admitted | throttled (Redis token bucket)"),
    ("dispatch", "whale.pipe.admitted.<cluster> → StackStorm executions"),
    ("approve", "whale.pipe.approval → held until approved (link, CLI, /v1/approvals) → admitted | decision"),
    ("feedback", "whale.pipe.dispatched → result, execution_finished event, chat notifications; /v1/executions"),
];

/// Parses `--stages` (comma list or `all`); unknown names are refused with the known list.
pub fn parse(list: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            return Ok(STAGES.iter().map(|(n, _)| *n).collect());
        }
        match STAGES.iter().find(|(n, _)| *n == name) {
            Some((n, _)) if !out.contains(n) => out.push(*n),
            Some(_) => {}
            None => bail!(
                "unknown stage {name:?}; known stages: {} (or all)",
                STAGES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    if out.is_empty() {
        bail!("no stages given: use --stages all or a comma list");
    }
    Ok(out)
}

/// Builds a JetStream stage. `ingest` has no worker (it is HTTP only) and returns None.
pub async fn build(
    name: &str,
    nats: &Nats,
    cfg: &Config,
) -> anyhow::Result<Option<Arc<dyn Stage>>> {
    Ok(match name {
        "ingest" => None,
        "validate" => {
            whale_validate::metrics::init();
            Some(Arc::new(whale_validate::Validate {
                registry: whale_validate::Registry::load_and_watch(nats).await?,
                limits: cfg.events.limits(),
                allow_unknown_types: cfg.events.allow_unknown_types,
                hooks: Arc::new(whale_validate::hooks::Hooks::from_config(cfg)?),
            }))
        }
        "match" => Some(Arc::new(whale_match::Match {
            rules: crate::rules_store::live(nats).await?,
            max_items: cfg.rules.max_for_each_items,
        })),
        "render" => Some(Arc::new(whale_render::Render {
            rules: crate::rules_store::live(nats).await?,
        })),
        // Connects to Redis lazily: the worker starts while Redis is down, and its tasks wait.
        "throttle" => Some(Arc::new(whale_throttle::ThrottleStage::from_config(cfg)?)),
        "dispatch" => Some(Arc::new(whale_dispatch::Dispatch::start(nats, cfg).await?)),
        "approve" => Some(Arc::new(whale_approve::Approve::build(nats, cfg).await?)),
        "feedback" => Some(Arc::new(whale_feedback::Feedback::build(nats, cfg).await?)),
        "index" => Some(whale_index::build(cfg)? as Arc<dyn Stage>),
        other => bail!("stage {other:?} has no constructor"),
    })
}
