//! The runner types StackStorm ships, as far as the emulator needs them: their own parameters
//! (allowed on every action of that runner) and the RunnerType document the CLI reads.

use crate::util::stable_id;
use serde_json::{json, Map, Value};

/// Runner types the emulator knows.
pub const RUNNERS: &[&str] = &[
    "local-shell-cmd",
    "local-shell-script",
    "remote-shell-cmd",
    "remote-shell-script",
    "python-script",
    "http-request",
    "orquesta",
    "action-chain",
    "noop",
    "inquirer",
];

/// A runner's own parameters (a subset of StackStorm's, same names and types).
pub fn runner_parameters(runner: &str) -> Option<Value> {
    let shell = json!({
        "cwd": {"type": "string"}, "env": {"type": "object"},
        "kwarg_op": {"type": "string", "default": "--"},
        "sudo": {"type": "boolean", "default": false},
        "sudo_password": {"type": "string", "secret": true},
        "timeout": {"type": "integer", "default": 60},
    });
    let mut p = match runner {
        "local-shell-cmd" | "local-shell-script" => shell,
        "remote-shell-cmd" | "remote-shell-script" => {
            let mut s = shell;
            s["hosts"] = json!({"type": "string", "required": true});
            s["username"] = json!({"type": "string"});
            s["port"] = json!({"type": "integer", "default": 22});
            s["parallel"] = json!({"type": "boolean", "default": true});
            s
        }
        "python-script" => json!({
            "env": {"type": "object"}, "timeout": {"type": "integer", "default": 600},
            "debug": {"type": "boolean", "default": false}, "log_level": {"type": "string", "default": "DEBUG"},
        }),
        "http-request" => json!({
            "url": {"type": "string", "required": true}, "headers": {"type": "object"},
            "cookies": {"type": "object"}, "allow_redirects": {"type": "boolean", "default": false},
            "verify_ssl_cert": {"type": "boolean", "default": true},
        }),
        "action-chain" => json!({
            "skip_notify": {"type": "array", "default": []},
            "display_published": {"type": "boolean", "default": true},
        }),
        "inquirer" => json!({
            "schema": {"type": "object"}, "roles": {"type": "array", "default": []},
            "users": {"type": "array", "default": []}, "route": {"type": "string", "default": ""},
            "ttl": {"type": "integer", "default": 1440},
        }),
        "orquesta" | "noop" => json!({}),
        _ => return None,
    };
    if runner == "local-shell-cmd" || runner == "remote-shell-cmd" {
        p["cmd"] = json!({"type": "string"});
    }
    Some(p)
}

/// The RunnerType document.
pub fn runner_doc(runner: &str) -> Option<Value> {
    let params = runner_parameters(runner)?;
    let (package, output_key) = match runner {
        "local-shell-cmd" | "local-shell-script" => ("local_runner", "stdout"),
        "remote-shell-cmd" | "remote-shell-script" => ("remote_runner", "stdout"),
        "python-script" => ("python_runner", "result"),
        "http-request" => ("http_runner", "body"),
        "orquesta" => ("orquesta_runner", "output"),
        "action-chain" => ("action_chain_runner", "published"),
        "inquirer" => ("inquirer_runner", "response"),
        _ => ("noop_runner", "stdout"),
    };
    Some(json!({
        "id": stable_id(&format!("runner:{runner}")),
        "uid": format!("runner_type:{runner}"),
        "name": runner,
        "description": format!("The {runner} runner (emulated)"),
        "enabled": true,
        "runner_package": package,
        "runner_module": package,
        "runner_parameters": params,
        "output_key": output_key,
        "output_schema": {},
    }))
}

/// Runner parameters as a map (for validation).
pub fn runner_param_map(runner: &str) -> Map<String, Value> {
    match runner_parameters(runner) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}
