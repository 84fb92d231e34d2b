//! The stage table: every stage `whale run --stages` accepts — its name, what it does, and how
//! it is built (worker, HTTP routes, readiness probes) — in one place, like Loki's `-target`
//! list. `all` runs every stage in one process. A stage's JetStream inputs are
//! `whale_kernel::subjects::stage_inputs(name)` (what `whale setup` and `whale status` read);
//! the tests below keep the two in step.
//!
//! Adding a stage = one [`StageDef`] in [`STAGES`] (and, when it consumes JetStream, its inputs
//! in `subjects::stage_inputs` and its name in `subjects::STAGES`).

use std::sync::Arc;

use anyhow::bail;
use futures::future::BoxFuture;
use whale_kernel::health::Probe;
use whale_kernel::http::Router;
use whale_kernel::subjects::{self, Input};
use whale_kernel::{Config, Nats, Stage};

/// What one stage adds to a `whale run` process.
#[derive(Default)]
pub struct Parts {
    /// Its JetStream worker, run on each of its inputs; None for an HTTP-only stage.
    pub worker: Option<Arc<dyn Stage>>,
    /// Its HTTP routes (each needs a row in `whale_kernel::auth::POLICIES`).
    pub router: Option<Router>,
    /// Readiness probes (`/readyz`) by name.
    pub probes: Vec<(&'static str, Probe)>,
}

/// What a stage's constructor gets: the connection and the configuration.
#[derive(Clone)]
pub struct Ctx {
    pub nats: Nats,
    pub cfg: Arc<Config>,
    /// The process's one live rule set (match and render compile it once between them).
    pub rules: crate::rules_store::SharedRules,
}

type Build = fn(Ctx) -> BoxFuture<'static, anyhow::Result<Parts>>;

/// One stage.
pub struct StageDef {
    /// The name `--stages` takes, and the one metrics, logs and health use.
    pub name: &'static str,
    /// One line: what it reads and what it writes.
    pub about: &'static str,
    /// Builds its worker, routes and probes.
    pub build: Build,
}

impl StageDef {
    /// Where its worker reads from (empty for an HTTP-only stage).
    pub fn inputs(&self) -> Vec<Input> {
        subjects::stage_inputs(self.name)
    }
}

/// Every stage, in pipeline order. `ingest` is the HTTP ingest endpoint; the rest are
/// JetStream workers.
pub const STAGES: &[StageDef] = &[
    StageDef {
        name: "ingest",
        about: "HTTP POST /v1/events → whale.in.<type>",
        build: ingest,
    },
    StageDef {
        name: "validate",
        about: "whale.in.> → whale.events.<type> | whale.rejected.<type>",
        build: validate,
    },
    StageDef {
        name: "index",
        about: "events, rejections, pipeline records → OpenSearch | embedded index",
        build: index,
    },
    StageDef {
        name: "match",
        about: "whale.events.> → whale.pipe.matched (one per event and matching rule)",
        build: matcher,
    },
    StageDef {
        name: "render",
        about: "whale.pipe.matched → whale.pipe.task | whale.pipe.render_failed",
        build: render,
    },
    StageDef {
        name: "throttle",
        about: "whale.pipe.task → admitted | throttled (Redis token bucket)",
        build: throttle,
    },
    StageDef {
        name: "dispatch",
        about: "whale.pipe.admitted.<cluster> → StackStorm executions",
        build: dispatch,
    },
    StageDef {
        name: "approve",
        about: "whale.pipe.approval → held until approved (link, CLI, /v1/approvals) → admitted | decision",
        build: approve,
    },
    StageDef {
        name: "feedback",
        about: "whale.pipe.dispatched → result, execution_finished event, chat notifications; /v1/executions",
        build: feedback,
    },
];

fn ingest(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        Ok(Parts {
            router: Some(whale_validate::ingest::router(c.nats, c.cfg)?),
            ..Parts::default()
        })
    })
}

fn validate(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        let cfg = &c.cfg;
        whale_validate::metrics::init();
        Ok(worker(whale_validate::Validate {
            registry: whale_validate::Registry::load_and_watch(&c.nats).await?,
            limits: cfg.events.limits(),
            allow_unknown_types: cfg.events.allow_unknown_types,
            hooks: Arc::new(whale_validate::hooks::Hooks::from_config(cfg)?),
        }))
    })
}

fn index(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        // The search routes and the stage share one writer (tantivy allows one per directory).
        let backend = whale_index::open_writer(&c.cfg)?;
        let router = whale_index::http::router(c.cfg.clone(), backend.clone());
        Ok(Parts {
            worker: Some(whale_index::build(&c.cfg, backend) as Arc<dyn Stage>),
            router: Some(router),
            ..Parts::default()
        })
    })
}

fn matcher(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        Ok(worker(whale_match::Match {
            rules: c.rules.live(&c.nats).await?,
            max_items: c.cfg.rules.max_for_each_items,
        }))
    })
}

fn render(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        Ok(worker(whale_render::Render {
            rules: c.rules.live(&c.nats).await?,
        }))
    })
}

fn throttle(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        // Every task waits while Redis is down: the process is not ready then.
        let limiter = whale_throttle::Limiter::from_config(&c.cfg.redis)?;
        let redis: Probe = Arc::new(move || {
            let l = limiter.clone();
            Box::pin(async move { l.ping().await })
        });
        // Connects to Redis lazily: the worker starts while Redis is down, and its tasks wait.
        let stage = whale_throttle::ThrottleStage::from_config(&c.cfg)?;
        Ok(Parts {
            probes: vec![("redis", redis)],
            ..worker(stage)
        })
    })
}

fn dispatch(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        let router = whale_dispatch::http::router(&c.nats, c.cfg.clone()).await?;
        let stage = whale_dispatch::Dispatch::start(&c.nats, &c.cfg).await?;
        Ok(with_router(worker(stage), router))
    })
}

fn approve(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        let router = whale_approve::http::router(&c.nats, c.cfg.clone()).await?;
        let stage = whale_approve::Approve::build(&c.nats, &c.cfg).await?;
        Ok(with_router(worker(stage), router))
    })
}

fn feedback(c: Ctx) -> BoxFuture<'static, anyhow::Result<Parts>> {
    Box::pin(async move {
        let router = whale_feedback::http::router(&c.nats, c.cfg.clone()).await?;
        let stage = whale_feedback::Feedback::build(&c.nats, &c.cfg).await?;
        Ok(with_router(worker(stage), router))
    })
}

fn worker(stage: impl Stage) -> Parts {
    Parts {
        worker: Some(Arc::new(stage)),
        ..Parts::default()
    }
}

fn with_router(parts: Parts, router: Router) -> Parts {
    Parts {
        router: Some(router),
        ..parts
    }
}

/// The stage called `name`.
pub fn get(name: &str) -> Option<&'static StageDef> {
    STAGES.iter().find(|s| s.name == name)
}

/// Parses `--stages` (comma list or `all`); unknown names are refused with the known list.
pub fn parse(list: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            return Ok(STAGES.iter().map(|s| s.name).collect());
        }
        match get(name) {
            Some(s) if !out.contains(&s.name) => out.push(s.name),
            Some(_) => {}
            None => bail!(
                "unknown stage {name:?}; known stages: {} (or all)",
                STAGES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if out.is_empty() {
        bail!("no stages given: use --stages all or a comma list");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table and the kernel agree: every stage with JetStream inputs (what `whale setup`
    /// creates consumers for and `whale status` reports) is in the table, and every stage in
    /// the table either has inputs or is the HTTP-only `ingest`.
    #[test]
    fn the_table_and_the_kernels_subjects_agree() {
        for name in subjects::STAGES {
            assert!(
                get(name).is_some(),
                "subjects::STAGES has {name:?} but registry::STAGES does not: add its StageDef"
            );
        }
        for s in STAGES {
            let consumes = subjects::STAGES.contains(&s.name);
            assert_eq!(
                consumes,
                !s.inputs().is_empty(),
                "{}: a stage is in subjects::STAGES exactly when it has inputs in \
                 subjects::stage_inputs",
                s.name
            );
            assert_eq!(consumes, s.name != "ingest", "{}", s.name);
        }
        let mut consumers: Vec<&str> = STAGES
            .iter()
            .flat_map(|s| s.inputs())
            .map(|i| i.consumer)
            .collect();
        let n = consumers.len();
        consumers.sort();
        consumers.dedup();
        assert_eq!(consumers.len(), n, "durable consumer names are unique");
    }

    #[test]
    fn names_are_unique_and_parse() {
        let mut names: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(parse("all").unwrap(), names);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), STAGES.len());
        assert_eq!(parse("match, index,match").unwrap(), ["match", "index"]);
        let err = parse("nope").unwrap_err().to_string();
        assert!(err.contains("known stages: ingest, validate"), "{err}");
    }
}
