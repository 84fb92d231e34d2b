//! The actions the emulator knows, read from a YAML file, and the runner types StackStorm ships:
//! what `GET /actions/{ref}` and `GET /runnertypes` answer, and what each execution will do.

use crate::runners::{runner_parameters, RUNNERS};
use crate::util::stable_id;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One action as written in the actions file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// `pack.name`.
    #[serde(rename = "ref")]
    pub r#ref: String,
    /// StackStorm runner; `orquesta` for workflows (which can be paused and resumed).
    #[serde(default = "default_runner")]
    pub runner_type: String,
    #[serde(default)]
    pub description: String,
    /// Parameter schema, as in a StackStorm action metadata file.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    /// What every execution of this action does.
    #[serde(default)]
    pub outcome: Outcome,
}

fn default_runner() -> String {
    "local-shell-cmd".into()
}

/// One parameter's schema.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// JSON type: string, integer, number, boolean, object, array, null.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The scripted end of an execution.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// succeeded, failed or timeout.
    #[serde(default = "default_status")]
    pub status: String,
    /// Time spent `running`.
    #[serde(default = "default_duration")]
    pub duration_ms: u64,
    /// The execution's `result`; when absent one is made in the runner's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Text streamed as stdout while running (one output event per line).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

fn default_status() -> String {
    "succeeded".into()
}

fn default_duration() -> u64 {
    100
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            status: default_status(),
            duration_ms: default_duration(),
            result: None,
            output: String::new(),
        }
    }
}

/// A user who may buy tokens with a password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub password: String,
}

/// The actions file: a list of actions, or `{users: [...], actions: [...]}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsFile {
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
}

impl ActionsFile {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading actions file {}", path.display()))?;
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("parsing {} as YAML", path.display()))?;
        let file: ActionsFile = if doc.is_sequence() {
            ActionsFile {
                users: Vec::new(),
                actions: serde_yaml_ng::from_value(doc)
                    .with_context(|| format!("{}: bad action list", path.display()))?,
            }
        } else {
            serde_yaml_ng::from_value(doc).with_context(|| {
                format!(
                    "{}: expected a list of actions or {{users, actions}}",
                    path.display()
                )
            })?
        };
        for a in &file.actions {
            a.check()
                .with_context(|| format!("{}: action {}", path.display(), a.r#ref))?;
        }
        Ok(file)
    }
}

impl ActionSpec {
    /// A permissive action for `--any-action`.
    pub fn any(action_ref: &str) -> Self {
        Self {
            r#ref: action_ref.to_owned(),
            runner_type: default_runner(),
            description: "accepted by --any-action".into(),
            parameters: BTreeMap::new(),
            outcome: Outcome::default(),
        }
    }

    /// Rejects what StackStorm would not register.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.pack().is_empty() || self.name().is_empty() {
            bail!("ref must be pack.name");
        }
        if runner_parameters(&self.runner_type).is_none() {
            bail!(
                "unknown runner_type {:?} (known: {})",
                self.runner_type,
                RUNNERS.join(", ")
            );
        }
        if !["succeeded", "failed", "timeout"].contains(&self.outcome.status.as_str()) {
            bail!("outcome.status must be succeeded, failed or timeout");
        }
        Ok(())
    }

    pub fn pack(&self) -> &str {
        self.r#ref.split_once('.').map_or("", |(p, _)| p)
    }

    pub fn name(&self) -> &str {
        self.r#ref.split_once('.').map_or("", |(_, n)| n)
    }

    pub fn is_workflow(&self) -> bool {
        matches!(self.runner_type.as_str(), "orquesta" | "action-chain")
    }

    /// The Action document (`GET /actions/{ref}`, and `action` inside an execution).
    pub fn doc(&self) -> Value {
        let entry_point = match self.runner_type.as_str() {
            "orquesta" | "action-chain" => format!("workflows/{}.yaml", self.name()),
            "local-shell-cmd" | "remote-shell-cmd" | "noop" | "http-request" => String::new(),
            _ => format!("{}.py", self.name()),
        };
        json!({
            "id": stable_id(&format!("action:{}", self.r#ref)),
            "uid": format!("action:{}:{}", self.pack(), self.name()),
            "ref": self.r#ref,
            "name": self.name(),
            "pack": self.pack(),
            "description": self.description,
            "enabled": true,
            "entry_point": entry_point,
            "runner_type": self.runner_type,
            "parameters": serde_json::to_value(&self.parameters).unwrap_or_default(),
            "output_schema": {},
            "notify": {},
            "tags": [],
            "metadata_file": format!("actions/{}.yaml", self.name()),
        })
    }
}
