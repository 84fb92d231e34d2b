//! The checking functions behind tests/it/deploy.rs, apart from the tests so that both the
//! shipped files and a deliberately wrong manifest go through the same code. Each returns the
//! problems it found as `file (document n): what is wrong` lines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_yaml_ng::Value;
use whale_kernel::config::{Config, ENV_VARS};
use whale_kernel::subjects;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One YAML document of one file.
#[derive(Debug)]
pub struct Doc {
    pub file: String,
    pub index: usize,
    pub value: Value,
}

impl Doc {
    pub fn at(&self) -> String {
        format!("{} (document {})", self.file, self.index)
    }
    pub fn str(&self, path: &[&str]) -> Option<&str> {
        get(&self.value, path).and_then(Value::as_str)
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

/// Every document of a (multi-document) YAML text, merge keys (`<<: *anchor`) applied; empty
/// documents are skipped but keep their index. A parse error names the file and document.
pub fn parse_docs(file: &str, text: &str) -> Result<Vec<Doc>, String> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut value = <Value as serde::Deserialize>::deserialize(de)
            .map_err(|e| format!("{file} (document {index}): YAML does not parse: {e}"))?;
        value
            .apply_merge()
            .map_err(|e| format!("{file} (document {index}): bad merge key: {e}"))?;
        if !value.is_null() {
            out.push(Doc {
                file: file.to_owned(),
                index,
                value,
            });
        }
    }
    Ok(out)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Parses every YAML file under `dir` (relative to the repository root).
pub fn load_dir(dir: &str) -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&root().join(dir), &mut files);
    assert!(!files.is_empty(), "no YAML under {dir}");
    files.iter().flat_map(|p| load_file(p)).collect()
}

fn load_file(p: &Path) -> Vec<Doc> {
    let rel = p.strip_prefix(root()).unwrap_or(p).display().to_string();
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{rel}: {e}"));
    parse_docs(&rel, &text).unwrap_or_else(|e| panic!("{e}"))
}

// ---- Kubernetes shape and references ---------------------------------------------------------

/// The pod spec of a workload, if the document is one.
fn pod_spec(d: &Doc) -> Option<&Value> {
    match d.str(&["kind"])? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            get(&d.value, &["spec", "template", "spec"])
        }
        "CronJob" => get(
            &d.value,
            &["spec", "jobTemplate", "spec", "template", "spec"],
        ),
        _ => None,
    }
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    seq(pod.get("initContainers"))
        .iter()
        .chain(seq(pod.get("containers")))
}

/// Shape (apiVersion, kind, metadata.name) and cross references of Kubernetes manifests.
pub fn k8s_problems(docs: &[Doc]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut objects: BTreeSet<(String, String)> = BTreeSet::new();
    for d in docs {
        let kind = d.str(&["kind"]).unwrap_or_default();
        if kind == "Kustomization" {
            continue;
        }
        for field in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
            if d.str(field).is_none_or(str::is_empty) {
                problems.push(format!("{}: no {}", d.at(), field.join(".")));
            }
        }
        objects.insert((
            kind.to_owned(),
            d.str(&["metadata", "name"]).unwrap_or_default().to_owned(),
        ));
    }
    let has = |kind: &str, name: &str| objects.contains(&(kind.to_owned(), name.to_owned()));
    let data_keys = |kind: &str, name: &str| -> BTreeSet<String> {
        docs.iter()
            .filter(|d| {
                d.str(&["kind"]) == Some(kind) && d.str(&["metadata", "name"]) == Some(name)
            })
            .flat_map(|d| ["data", "stringData"].map(|k| d.value.get(k)))
            .flatten()
            .filter_map(Value::as_mapping)
            .flat_map(|m| m.keys().filter_map(Value::as_str).map(str::to_owned))
            .collect()
    };
    for d in docs {
        let kind = d.str(&["kind"]).unwrap_or_default();
        if matches!(kind, "HorizontalPodAutoscaler" | "ScaledObject") {
            let target_kind = d
                .str(&["spec", "scaleTargetRef", "kind"])
                .unwrap_or("Deployment");
            let target = d
                .str(&["spec", "scaleTargetRef", "name"])
                .unwrap_or_default();
            if !has(target_kind, target) {
                problems.push(format!(
                    "{}: {kind} targets {target_kind} {target:?}, which is not in the manifests",
                    d.at()
                ));
            }
        }
        if kind == "Service" {
            let sel = d.value.get("spec").and_then(|s| s.get("selector"));
            let matched = docs.iter().filter_map(pod_labels).any(|labels| {
                sel.and_then(Value::as_mapping)
                    .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
            });
            if !matched {
                problems.push(format!(
                    "{}: Service selector matches no pod template",
                    d.at()
                ));
            }
        }
        let Some(pod) = pod_spec(d) else { continue };
        let volumes: BTreeSet<&str> = seq(pod.get("volumes"))
            .iter()
            .filter_map(|v| v.get("name")?.as_str())
            .collect();
        for v in seq(pod.get("volumes")) {
            if let Some(n) = get(v, &["configMap", "name"]).and_then(Value::as_str) {
                if !has("ConfigMap", n) {
                    problems.push(format!(
                        "{}: volume uses ConfigMap {n:?}, which is not in the manifests",
                        d.at()
                    ));
                }
            }
            if let Some(n) = get(v, &["secret", "secretName"]).and_then(Value::as_str) {
                if !has("Secret", n) {
                    problems.push(format!(
                        "{}: volume uses Secret {n:?}, which is not in the manifests",
                        d.at()
                    ));
                }
            }
        }
        for c in containers(pod) {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
            for m in seq(c.get("volumeMounts")) {
                let n = m.get("name").and_then(Value::as_str).unwrap_or_default();
                if !volumes.contains(n) {
                    problems.push(format!(
                        "{}: container {cname} mounts volume {n:?}, which the pod does not declare",
                        d.at()
                    ));
                }
            }
            for from in seq(c.get("envFrom")) {
                for (key, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
                    if let Some(n) = get(from, &[key, "name"]).and_then(Value::as_str) {
                        if !has(kind, n) {
                            problems.push(format!("{}: container {cname} loads {kind} {n:?}, which is not in the manifests", d.at()));
                        }
                    }
                }
            }
            for e in seq(c.get("env")) {
                for (key, kind) in [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")] {
                    let Some(r) = get(e, &["valueFrom", key]) else {
                        continue;
                    };
                    let n = r.get("name").and_then(Value::as_str).unwrap_or_default();
                    let k = r.get("key").and_then(Value::as_str).unwrap_or_default();
                    if !data_keys(kind, n).contains(k) {
                        problems.push(format!("{}: container {cname} reads key {k:?} of {kind} {n:?}, which is not in the manifests", d.at()));
                    }
                }
            }
        }
    }
    problems
}

fn pod_labels(d: &Doc) -> Option<&serde_yaml_ng::Mapping> {
    pod_spec(d)?;
    get(&d.value, &["spec", "template", "metadata", "labels"])?.as_mapping()
}

/// The environment a container gets: `env` values and every key of its envFrom objects.
fn container_env(docs: &[Doc], c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let lookup = |kind: &str, name: &str| {
        docs.iter()
            .filter(|d| {
                d.str(&["kind"]) == Some(kind) && d.str(&["metadata", "name"]) == Some(name)
            })
            .flat_map(|d| ["data", "stringData"].map(|k| d.value.get(k)))
            .flatten()
            .filter_map(Value::as_mapping)
            .flat_map(|m| m.iter())
            .filter_map(|(k, v)| {
                Some((
                    k.as_str()?.to_owned(),
                    v.as_str().unwrap_or("dummy").to_owned(),
                ))
            })
            .collect::<Vec<_>>()
    };
    for from in seq(c.get("envFrom")) {
        for (key, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            if let Some(n) = get(from, &[key, "name"]).and_then(Value::as_str) {
                env.extend(lookup(kind, n));
            }
        }
    }
    for e in seq(c.get("env")) {
        let Some(name) = e.get("name").and_then(Value::as_str) else {
            continue;
        };
        let value = e.get("value").and_then(Value::as_str).unwrap_or("dummy");
        env.insert(name.to_owned(), value.to_owned());
    }
    env
}

// ---- whale command lines ------------------------------------------------------------------------

/// One `whale` command line found in a deployment file: the arguments after the program name.
#[derive(Debug)]
pub struct Invocation {
    pub at: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        Value::Sequence(s) => Some(
            s.iter()
                .map(|x| x.as_str().map(str::to_owned).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    }
}

fn is_whale(program: &str) -> bool {
    Path::new(program).file_name().is_some_and(|n| n == "whale")
}

/// The image's ENTRYPOINT is `whale`: a container of the whale image without `command` runs it.
fn is_whale_image(image: &str) -> bool {
    let name = image.rsplit('/').next().unwrap_or(image);
    name == "whale" || name.starts_with("whale:") || name.starts_with("whale@")
}

pub fn k8s_invocations(docs: &[Doc]) -> Vec<Invocation> {
    let mut out = Vec::new();
    for d in docs {
        let Some(pod) = pod_spec(d) else { continue };
        for c in containers(pod) {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let args = strings(c.get("args")).unwrap_or_default();
            let argv = match strings(c.get("command")) {
                Some(cmd) if cmd.first().is_some_and(|p| is_whale(p)) => {
                    [&cmd[1..], &args[..]].concat()
                }
                Some(_) => continue,
                None if is_whale_image(image) => args,
                None => continue,
            };
            out.push(Invocation {
                at: format!("{} container {cname}", d.at()),
                args: argv,
                env: container_env(docs, c),
            });
        }
    }
    out
}

fn compose_env(svc: &Value) -> BTreeMap<String, String> {
    match svc.get("environment") {
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                Some((k.as_str()?.to_owned(), v))
            })
            .collect(),
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Services of the whale image (by name or built from deploy/docker/Dockerfile) and services
/// whose entrypoint or command starts with `whale`.
pub fn compose_invocations(doc: &Doc) -> Vec<Invocation> {
    let mut out = Vec::new();
    let Some(services) = doc.value.get("services").and_then(Value::as_mapping) else {
        return out;
    };
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        let image = svc.get("image").and_then(Value::as_str).unwrap_or_default();
        let built = get(svc, &["build", "dockerfile"])
            .and_then(Value::as_str)
            .is_some_and(|f| f.ends_with("deploy/docker/Dockerfile"));
        let command = strings(svc.get("command"));
        let argv = match strings(svc.get("entrypoint")) {
            Some(ep) if ep.first().is_some_and(|p| is_whale(p)) => {
                [&ep[1..], &command.unwrap_or_default()[..]].concat()
            }
            Some(_) => continue,
            None if is_whale_image(image) || built => command.unwrap_or_default(),
            None => match command {
                Some(cmd) if cmd.first().is_some_and(|p| is_whale(p)) => cmd[1..].to_vec(),
                _ => continue,
            },
        };
        out.push(Invocation {
            at: format!("{} service {name}", doc.at()),
            args: argv,
            env: compose_env(svc),
        });
    }
    out
}

/// ENTRYPOINT and CMD of a Dockerfile (JSON form); the ENTRYPOINT must be whale.
pub fn dockerfile_invocation(file: &str, text: &str) -> Result<Invocation, String> {
    let json = |word: &str| -> Option<Vec<String>> {
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with(word))?;
        serde_json::from_str(line.trim_start()[word.len()..].trim()).ok()
    };
    let entry = json("ENTRYPOINT")
        .ok_or_else(|| format!("{file}: no ENTRYPOINT [\"whale\"] in JSON form"))?;
    if !entry.first().is_some_and(|p| is_whale(p)) {
        return Err(format!("{file}: ENTRYPOINT is {entry:?}, not whale"));
    }
    Ok(Invocation {
        at: file.to_owned(),
        args: [&entry[1..], &json("CMD").unwrap_or_default()[..]].concat(),
        env: BTreeMap::new(),
    })
}

/// The real binary's command tree, read from `--help` (cached), and its stage list.
pub struct Cli {
    help: Mutex<HashMap<Vec<String>, String>>,
    stages: Vec<String>,
}

impl Cli {
    pub fn new() -> Cli {
        // `--stages` is checked before anything connects: the refusal lists every stage.
        let out = whale(&["run", "--stages", "no-such-stage"]);
        let list = out.split("known stages: ").nth(1).unwrap_or_else(|| {
            panic!("whale run --stages no-such-stage did not list the stages: {out}")
        });
        let list = list.split(" (or all)").next().unwrap_or_default();
        let stages = list
            .split(',')
            .map(|s| s.trim().to_owned())
            .chain(["all".to_owned()])
            .collect();
        Cli {
            help: Mutex::default(),
            stages,
        }
    }

    fn help(&self, path: &[String]) -> String {
        let mut cache = self.help.lock().unwrap();
        cache
            .entry(path.to_vec())
            .or_insert_with(|| {
                let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
                args.push("--help");
                whale(&args)
            })
            .clone()
    }

    /// Problems with one command line: unknown subcommand, flag or stage.
    pub fn check(&self, inv: &Invocation) -> Vec<String> {
        let mut problems = Vec::new();
        let mut path: Vec<String> = Vec::new();
        let mut rest = inv.args.iter().peekable();
        loop {
            let subs = subcommands(&self.help(&path));
            match rest.peek() {
                Some(a) if subs.contains(*a) => path.push(rest.next().unwrap().clone()),
                Some(a) if !subs.is_empty() && !a.starts_with('-') => {
                    problems.push(format!(
                        "{}: `whale {}` has no subcommand {a:?} (known: {})",
                        inv.at,
                        path.join(" "),
                        subs.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                    return problems;
                }
                None if !subs.is_empty() => {
                    problems.push(format!(
                        "{}: `whale {}` needs a subcommand",
                        inv.at,
                        path.join(" ")
                    ));
                    return problems;
                }
                _ => break,
            }
        }
        let help = self.help(&path);
        let words: BTreeSet<&str> = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
            .collect();
        let cmd = format!("whale {}", path.join(" "));
        let args: Vec<&String> = rest.collect();
        for (i, a) in args.iter().enumerate() {
            if !a.starts_with('-') || *a == "-" {
                if let Some(p) = a.strip_prefix("/opt/whale/") {
                    if !root().join(p).exists() {
                        problems.push(format!("{}: `{cmd}` reads {a}, but the image's /opt/whale/{p} comes from {p}/, which does not exist", inv.at));
                    }
                }
                continue;
            }
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (a.as_str(), None),
            };
            if !words.contains(flag) {
                problems.push(format!("{}: `{cmd}` has no flag {flag}", inv.at));
                continue;
            }
            if flag == "--stages" {
                let value = inline
                    .or_else(|| args.get(i + 1).map(|s| s.to_string()))
                    .unwrap_or_default();
                // `<stage>` in a guide is a placeholder, not a value.
                for s in value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.starts_with('<'))
                {
                    if !self.stages.iter().any(|k| k == s) {
                        problems.push(format!(
                            "{}: `{cmd}` --stages {s:?} is not a stage (known: {})",
                            inv.at,
                            self.stages.join(", ")
                        ));
                    }
                }
            }
        }
        problems
    }
}

/// Subcommand names listed under "Commands:" in a clap help text.
fn subcommands(help: &str) -> BTreeSet<String> {
    let Some(section) = help.split("Commands:\n").nth(1) else {
        return BTreeSet::new();
    };
    section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// Runs the real binary in an empty directory with no WHALE_* environment; stdout + stderr.
fn whale(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_whale"));
    c.args(args).current_dir(dir.path());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WHALE_")) {
        c.env_remove(k);
    }
    let out = c.output().expect("run whale");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- environment and config ---------------------------------------------------------------------

/// Every `*_env` value in a whale.toml: variables the file itself names.
pub fn named_env_vars(toml_text: &str) -> BTreeSet<String> {
    fn walk(v: &toml::Value, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    match (k.ends_with("_env"), v) {
                        (true, toml::Value::String(s)) => {
                            out.insert(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(
        &toml::Value::Table(toml::from_str(toml_text).expect("whale.toml parses")),
        &mut out,
    );
    out
}

/// `WHALE_*` variables whale does not read (not in ENV_VARS, not named by the config).
pub fn env_problems(invs: &[Invocation], named: &BTreeSet<String>) -> Vec<String> {
    invs.iter()
        .flat_map(|inv| inv.env.keys().map(move |k| (inv, k)))
        .filter(|(_, k)| k.starts_with("WHALE_") && !ENV_VARS.contains(&k.as_str()) && !named.contains(*k))
        .map(|(inv, k)| format!("{}: sets {k}, which whale does not read (not in whale_kernel::config::ENV_VARS nor a *_env of whale.toml)", inv.at))
        .collect()
}

/// The shipped whale.toml: the `whale-config` ConfigMap.
pub fn shipped_config(docs: &[Doc]) -> String {
    docs.iter()
        .find(|d| {
            d.str(&["kind"]) == Some("ConfigMap")
                && d.str(&["metadata", "name"]) == Some("whale-config")
        })
        .and_then(|d| d.str(&["data", "whale.toml"]))
        .expect("deploy/k8s has the whale-config ConfigMap with whale.toml")
        .to_owned()
}

pub fn compose_doc() -> Doc {
    let mut docs = load_file(&root().join("deploy/compose.yaml"));
    assert_eq!(docs.len(), 1, "deploy/compose.yaml is one document");
    docs.remove(0)
}

/// `resources` of every kustomization.yaml exist.
pub fn kustomize_problems(docs: &[Doc]) -> Vec<String> {
    let mut problems = Vec::new();
    for d in docs
        .iter()
        .filter(|d| d.str(&["kind"]) == Some("Kustomization"))
    {
        let dir = root().join(&d.file).parent().unwrap().to_owned();
        for r in seq(d.value.get("resources")) {
            let r = r.as_str().unwrap_or_default();
            if !dir.join(r).exists() {
                problems.push(format!("{}: resource {r} does not exist", d.at()));
            }
        }
    }
    problems
}

/// Each ScaledObject trigger watches a consumer of a stage its Deployment runs (subjects.rs).
pub fn keda_problems(docs: &[Doc]) -> Vec<String> {
    let runs: HashMap<String, Vec<String>> = docs
        .iter()
        .filter(|d| d.str(&["kind"]) == Some("Deployment"))
        .map(|d| {
            let stages = k8s_invocations(std::slice::from_ref(d))
                .iter()
                .flat_map(|i| {
                    i.args
                        .iter()
                        .skip_while(|a| *a != "--stages")
                        .nth(1)
                        .cloned()
                })
                .flat_map(|s| s.split(',').map(str::to_owned).collect::<Vec<_>>())
                .collect();
            (
                d.str(&["metadata", "name"]).unwrap_or_default().to_owned(),
                stages,
            )
        })
        .collect();
    let mut problems = Vec::new();
    for d in docs
        .iter()
        .filter(|d| d.str(&["kind"]) == Some("ScaledObject"))
    {
        let target = d
            .str(&["spec", "scaleTargetRef", "name"])
            .unwrap_or_default();
        let inputs: Vec<_> = runs
            .get(target)
            .into_iter()
            .flatten()
            .flat_map(|s| subjects::stage_inputs(s))
            .collect();
        for t in seq(get(&d.value, &["spec", "triggers"])) {
            let stream = get(t, &["metadata", "stream"])
                .and_then(Value::as_str)
                .unwrap_or_default();
            let consumer = get(t, &["metadata", "consumer"])
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !inputs
                .iter()
                .any(|i| i.stream == stream && i.consumer == consumer)
            {
                problems.push(format!(
                    "{}: trigger on consumer {stream}/{consumer}, which is not an input of the stages {target} runs",
                    d.at()
                ));
            }
        }
    }
    problems
}

/// Every stage with a JetStream input runs in some `whale run` of `origin`.
pub fn coverage_problems(invs: &[Invocation], origin: &str) -> Vec<String> {
    subjects::STAGES
        .iter()
        .filter(|stage| {
            !invs.iter().any(|i| {
                i.at.starts_with(origin)
                    && i.args.first().is_some_and(|a| a == "run")
                    && i.args.iter().any(|a| a.split(',').any(|s| s == **stage))
            })
        })
        .map(|stage| format!("{origin}: no `whale run` runs stage {stage}"))
        .collect()
}

/// The shipped whale.toml loads with each container's environment, with 3 replicas and an HTTP
/// address other pods can reach.
pub fn config_problems(invs: &[Invocation], toml_text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("whale.toml");
    std::fs::write(&path, toml_text).unwrap();
    let mut problems = Vec::new();
    for inv in invs {
        let env = inv.env.clone();
        match Config::load_with_env(Some(&path), &move |k| env.get(k).cloned()) {
            Err(e) => problems.push(format!(
                "{}: the shipped whale.toml does not load with this container's environment: {e:#}",
                inv.at
            )),
            Ok(cfg) if cfg.nats.replicas != 3 => problems.push(format!(
                "{}: nats.replicas is {}; streams must be replicated on the 3 NATS nodes",
                inv.at, cfg.nats.replicas
            )),
            Ok(cfg) if !cfg.http.addr.starts_with("0.0.0.0:") => problems.push(format!(
                "{}: http.addr {} is not reachable from other pods (probes, Services)",
                inv.at, cfg.http.addr
            )),
            Ok(cfg) if !auth_configured(&cfg) => problems.push(format!(
                "{}: no auth configured (WHALE_HTTP_TOKEN, [[auth.tokens]] or auth.tokens_file) on {}: \
                 `whale run` refuses to listen there",
                inv.at, cfg.http.addr
            )),
            Ok(_) => {}
        }
    }
    problems
}

/// Whether `whale run` with this config has principals (else it refuses non-loopback).
pub fn auth_configured(cfg: &Config) -> bool {
    whale_kernel::auth::Auth::from_config(cfg).is_ok_and(|a| a.enabled())
}

/// Every service of the compose file as an environment holder (for the WHALE_* check).
pub fn compose_services_env(doc: &Doc) -> Vec<Invocation> {
    doc.value
        .get("services")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .map(|(name, svc)| Invocation {
            at: format!("{} service {}", doc.at(), name.as_str().unwrap_or("?")),
            args: vec![],
            env: compose_env(svc),
        })
        .collect()
}

/// `whale ...` command lines quoted in a Markdown guide (inline code spans, `&&` chains).
pub fn markdown_invocations(file: &str, text: &str) -> Vec<Invocation> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // Inline spans are between odd and even backticks; code lines are the whole line.
        let spans: Vec<&str> = if line.starts_with("```") {
            vec![]
        } else {
            line.split('`').skip(1).step_by(2).collect()
        };
        for part in spans.iter().flat_map(|s| s.split("&&")) {
            let words: Vec<String> = part.split_whitespace().map(str::to_owned).collect();
            if words.first().is_some_and(|w| w == "whale") && words.len() > 1 {
                out.push(Invocation {
                    at: format!("{file}:{}", n + 1),
                    args: words[1..].to_vec(),
                    env: BTreeMap::new(),
                });
            }
        }
    }
    out
}
