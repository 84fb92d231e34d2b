//! The schema registry: event-type JSON Schemas (draft-07, 2020-12, ...) stored in a KV bucket by
//! `whale schemas apply DIR`, and a live view of it that running validate workers keep current
//! by watching the bucket — a new schema takes effect without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use whale_kernel::setup::Change;
use whale_kernel::{envelope, kv, subjects, Nats};

/// What the KV bucket stores per event type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSchema {
    pub event_type: String,
    /// Increases by one each time the schema's content changes.
    pub version: u64,
    /// sha-like digest of the schema's canonical JSON, to skip unchanged applies.
    pub digest: String,
    pub schema: Value,
}

/// A compiled schema.
pub struct Compiled {
    pub version: u64,
    pub validator: jsonschema::Validator,
}

/// Compiles a schema, with an error that says what is wrong.
pub fn compile(schema: &Value) -> anyhow::Result<jsonschema::Validator> {
    jsonschema::validator_for(schema).map_err(|e| anyhow::anyhow!("invalid JSON Schema: {e}"))
}

/// A schema file found in a directory.
#[derive(Debug)]
pub struct SchemaFile {
    pub path: PathBuf,
    pub event_type: String,
    pub schema: Value,
}

/// Reads `DIR/*.json` (the file stem is the event type, e.g. `vm.disk_usage.json`), checking
/// each is a valid schema. Every problem is reported, with the file.
/// Files over `limits.max_bytes` or nested deeper than `limits.max_depth` are refused (`[api]`
/// `max_schema_bytes`, `max_schema_depth`).
pub fn read_dir(dir: &Path, limits: &envelope::Limits) -> anyhow::Result<Vec<SchemaFile>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read schema directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let r = (|| -> anyhow::Result<SchemaFile> {
            if !envelope::is_valid_event_type(&stem) {
                bail!("{stem:?} is not a valid event type; name the file <event_type>.json, e.g. vm.disk_usage.json");
            }
            let schema = read_bounded(&path, limits)?;
            compile(&schema)?;
            Ok(SchemaFile {
                path: path.clone(),
                event_type: stem,
                schema,
            })
        })();
        match r {
            Ok(f) => files.push(f),
            Err(e) => errors.push(format!("{}: {e:#}", path.display())),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} schema file(s) refused, nothing applied:\n  {}",
            errors.len(),
            errors.join("\n  ")
        );
    }
    if files.is_empty() {
        bail!("no schema files (*.json) in {}", dir.display());
    }
    Ok(files)
}

/// Reads one schema file within `limits`: never more than the size limit is read (a FIFO or
/// a huge file cannot exhaust memory), and the depth is checked before anything walks it.
fn read_bounded(path: &Path, limits: &envelope::Limits) -> anyhow::Result<Value> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    std::fs::File::open(path)?
        .take(limits.max_bytes as u64 + 1)
        .read_to_end(&mut raw)?;
    if raw.len() > limits.max_bytes {
        bail!(
            "the file is over {} bytes, the limit for a schema (api.max_schema_bytes)",
            limits.max_bytes
        );
    }
    let schema: Value = serde_json::from_slice(&raw).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            anyhow::anyhow!(
                "the schema nests deeper than {} levels (api.max_schema_depth)",
                limits.max_depth
            )
        } else {
            anyhow::Error::new(e).context("not JSON")
        }
    })?;
    let depth = envelope::depth(&schema);
    if depth > limits.max_depth {
        bail!(
            "the schema nests {depth} levels deep; the limit is {} (api.max_schema_depth)",
            limits.max_depth
        );
    }
    Ok(schema)
}

/// One line of `whale schemas apply`.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub event_type: String,
    pub version: u64,
    pub change: Change,
}

/// Stores every schema of `dir` in the bucket; only changed ones get a new version.
pub async fn apply_dir(
    nats: &Nats,
    dir: &Path,
    limits: &envelope::Limits,
) -> anyhow::Result<Vec<Applied>> {
    let files = read_dir(dir, limits)?;
    let mut out = Vec::new();
    for f in files {
        let digest = digest(&f.schema);
        let prev: Option<StoredSchema> = kv::get(nats, subjects::KV_SCHEMAS, &f.event_type)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (version, change) = match &prev {
            Some(p) if p.digest == digest => (p.version, Change::Unchanged),
            Some(p) => (p.version + 1, Change::Updated),
            None => (1, Change::Created),
        };
        if change != Change::Unchanged {
            let stored = StoredSchema {
                event_type: f.event_type.clone(),
                version,
                digest,
                schema: f.schema,
            };
            kv::put(
                nats,
                subjects::KV_SCHEMAS,
                &f.event_type,
                serde_json::to_vec(&stored)?,
            )
            .await
            .with_context(|| format!("cannot store schema {}", f.event_type))?;
        }
        out.push(Applied {
            event_type: f.event_type,
            version,
            change,
        });
    }
    Ok(out)
}

fn digest(v: &Value) -> String {
    // serde_json's map is ordered by key, so this is canonical enough for change detection.
    whale_kernel::digest(&[&v.to_string()])[..16].to_owned()
}

/// The live view of the registry.
#[derive(Clone, Default)]
pub struct Registry {
    map: Arc<RwLock<HashMap<String, Arc<Compiled>>>>,
}

impl Registry {
    pub fn get(&self, event_type: &str) -> Option<Arc<Compiled>> {
        self.map.read().unwrap().get(event_type).cloned()
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let mut map = self.map.write().unwrap();
        let Some(bytes) = value else {
            map.remove(key);
            tracing::info!(event_type = key, "schema removed");
            return;
        };
        match serde_json::from_slice::<StoredSchema>(bytes)
            .map_err(anyhow::Error::from)
            .and_then(|s| Ok((s.version, compile(&s.schema)?)))
        {
            Ok((version, validator)) => {
                tracing::info!(event_type = key, version, "schema loaded");
                map.insert(key.to_owned(), Arc::new(Compiled { version, validator }));
            }
            // A bad entry (written by hand) keeps the previous good schema.
            Err(e) => tracing::error!(event_type = key, "schema entry ignored: {e:#}"),
        }
    }

    /// Loads every schema, then keeps the view current in a background task. Returns once the
    /// initial load is complete, so no event is judged against a half-loaded registry.
    pub async fn load_and_watch(nats: &Nats) -> anyhow::Result<Registry> {
        let reg = Registry::default();
        let bg = reg.clone();
        whale_kernel::kv::watch_bucket(nats, subjects::KV_SCHEMAS, move |k, v| bg.apply(k, v))
            .await?;
        Ok(reg)
    }
}
