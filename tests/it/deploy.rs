//! Checks the deployment files (deploy/k8s, deploy/nats, deploy/compose.yaml, the Dockerfile)
//! against whale itself, so that a manifest cannot ship a subcommand, flag, stage or `WHALE_*`
//! variable that does not exist, a reference to a missing object, or a whale.toml that does not
//! load. Nothing here needs Docker or a Kubernetes cluster: YAML is parsed, command lines are
//! checked against the real binary's `--help`, and the config goes through `Config::load_with_env`.
//! nats-server (on PATH in CI, from deploy/install.sh) checks the NATS config with `-t`.

mod checks;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use checks::*;

fn report(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn manifests_parse_and_reference_existing_objects() {
    let k8s = load_dir("deploy/k8s");
    let mut problems = k8s_problems(&k8s);
    problems.extend(kustomize_problems(&k8s));
    problems.extend(keda_problems(&k8s));
    report(problems);
    load_dir("deploy/nats");
    compose_doc();
}

#[test]
fn every_whale_command_line_exists() {
    let cli = Cli::new();
    let mut invs = k8s_invocations(&load_dir("deploy/k8s"));
    invs.extend(compose_invocations(&compose_doc()));
    let file = "deploy/docker/Dockerfile";
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut problems = Vec::new();
    match dockerfile_invocation(file, &text) {
        Ok(inv) => invs.push(inv),
        Err(e) => problems.push(e),
    }
    for guide in [
        "docs/operations.md",
        "deploy/k8s/README.md",
        "deploy/nats/README.md",
        "deploy/st2-packs/README.md",
    ] {
        let text = std::fs::read_to_string(root().join(guide)).unwrap();
        invs.extend(markdown_invocations(guide, &text));
    }
    assert!(
        invs.len() > 20,
        "found only {} whale command lines: {invs:#?}",
        invs.len()
    );
    problems.extend(coverage_problems(&invs, "deploy/k8s"));
    problems.extend(coverage_problems(&invs, "deploy/compose.yaml"));
    problems.extend(invs.iter().flat_map(|i| cli.check(i)));
    report(problems);
}

#[test]
fn every_whale_variable_is_known_and_the_shipped_config_loads() {
    let k8s = load_dir("deploy/k8s");
    let toml_text = shipped_config(&k8s);
    let k8s_invs = k8s_invocations(&k8s);
    let compose = compose_doc();
    // Every whale container of the manifests loads the shipped file with its own environment
    // (the Secret's placeholders stand in for the real values).
    let mut problems = config_problems(&k8s_invs, &toml_text);
    // The compose stack configures whale by environment only: that must load too.
    for inv in compose_invocations(&compose) {
        let env = inv.env.clone();
        match whale_kernel::Config::load_with_env(None, &move |k| env.get(k).cloned()) {
            Err(e) => problems.push(format!("{}: {e:#}", inv.at)),
            Ok(cfg) if !auth_configured(&cfg) => problems.push(format!(
                "{}: no auth configured on {}: `whale run` refuses to listen there",
                inv.at, cfg.http.addr
            )),
            Ok(_) => {}
        }
    }
    let mut holders = k8s_invs;
    holders.extend(compose_services_env(&compose));
    problems.extend(env_problems(&holders, &named_env_vars(&toml_text)));
    report(problems);
}

#[test]
fn nats_config_is_accepted_by_nats_server() {
    let conf = root().join("deploy/nats/nats.conf");
    let check = |conf: &Path| {
        Command::new("nats-server")
            .args(["-c", conf.to_str().unwrap(), "-t"])
            .env("SERVER_NAME", "nats-0")
            .env("NATS_WHALE_PASSWORD", "dummy")
            .env("NATS_PRODUCER_PASSWORD", "dummy")
            .env("NATS_TAP_PASSWORD", "dummy")
            .output()
    };
    let out = match check(&conf) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: nats-server is not on PATH ({e}); deploy/install.sh installs it");
            return;
        }
    };
    assert!(
        out.status.success(),
        "nats-server -t refuses deploy/nats/nats.conf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And -t does refuse a broken file, so the check above means something.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&conf)
            .unwrap()
            .replace("cluster {", "cluster {{"),
    )
    .unwrap();
    assert!(
        !check(&bad).unwrap().status.success(),
        "nats-server -t accepted a broken config"
    );
}

/// The checks above must be able to fail: a deliberately wrong manifest through the same functions.
#[test]
fn the_checks_catch_a_bad_manifest() {
    let bad = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: whale-oops }
spec:
  template:
    metadata: { labels: { app: oops } }
    spec:
      containers:
        - name: whale
          image: registry.example.com/whale:1
          args: ["run", "--stages", "validate,bogus", "--frobnicate"]
          env:
            - { name: WHALE_NOT_A_VARIABLE, value: "1" }
          envFrom:
            - secretRef: { name: missing-secret }
          volumeMounts:
            - { name: config, mountPath: /etc/whale }
        - name: setup
          image: whale
          command: ["whale", "stup"]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: { name: whale-gone }
spec:
  scaleTargetRef: { apiVersion: apps/v1, kind: Deployment, name: whale-gone }
---
kind: Service
metadata: {}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: { name: whale-oops }
spec:
  scaleTargetRef: { name: whale-oops }
  triggers:
    - type: nats-jetstream
      metadata: { stream: WHALE_PIPE, consumer: validate }
"#;
    let docs = parse_docs("bad.yaml", bad).unwrap();
    let problems = k8s_problems(&docs).join("\n");
    for want in [
        "targets Deployment \"whale-gone\"",
        "Secret \"missing-secret\"",
        "mounts volume \"config\"",
        "(document 2): no apiVersion",
        "no metadata.name",
        "selector matches no pod",
    ] {
        assert!(problems.contains(want), "not reported: {want}\n{problems}");
    }
    let cli = Cli::new();
    let invs = k8s_invocations(&docs);
    let problems: Vec<String> = invs.iter().flat_map(|i| cli.check(i)).collect();
    let problems = problems.join("\n");
    for want in [
        "has no flag --frobnicate",
        "--stages \"bogus\" is not a stage",
        "has no subcommand \"stup\"",
    ] {
        assert!(problems.contains(want), "not reported: {want}\n{problems}");
    }
    assert!(!problems.contains("\"validate\" is not"), "{problems}");
    let keda = keda_problems(&docs).join("\n");
    assert!(keda.contains("consumer WHALE_PIPE/validate"), "{keda}");
    let coverage = coverage_problems(&invs, "bad.yaml").join("\n");
    assert!(coverage.contains("runs stage match"), "{coverage}");
    let env = env_problems(&invs, &BTreeSet::from(["ST2_X_KEY".to_owned()])).join("\n");
    assert!(env.contains("sets WHALE_NOT_A_VARIABLE"), "{env}");
    // A config naming a variable the container does not get, or keeping one replica.
    let missing = config_problems(
        &invs,
        "[clusters.x]\nurl = \"http://x\"\napi_key_env = \"ST2_X_KEY\"\n",
    )
    .join("\n");
    assert!(
        missing.contains("$ST2_X_KEY, which is not set"),
        "{missing}"
    );
    let one = config_problems(&invs, "[http]\naddr = \"0.0.0.0:8080\"\n").join("\n");
    assert!(one.contains("nats.replicas is 1"), "{one}");
    // Issue 13: a pod listening on 0.0.0.0 without any token would not start.
    let open = config_problems(
        &invs,
        "[nats]\nreplicas = 3\n[http]\naddr = \"0.0.0.0:8080\"\n",
    )
    .join("\n");
    assert!(open.contains("no auth configured"), "{open}");
    // A parse error names the file and the document.
    let err = parse_docs("broken.yaml", "a: 1\n---\nb: [1, 2\n").unwrap_err();
    assert!(err.contains("broken.yaml (document 1)"), "{err}");
    // A Dockerfile whose entrypoint is not whale is refused.
    assert!(dockerfile_invocation("Dockerfile", "FROM x\nENTRYPOINT [\"sh\"]\n").is_err());
}
