//! Integration tests of whale-expr: filters, hostile programs, templates.

mod filter;
mod fuzz;
mod hostile;
mod quick;
mod template;
mod time;

use serde_json::{json, Value};
use whale_expr::{Filter, Input};

/// The example event (docs/contract.md "Event envelope"), with the fields the example rule reads.
pub fn event() -> Value {
    json!({
        "id": "01JDX3Q5M7",
        "event_type": "vm.disk_usage",
        "source": "prometheus/alertmanager",
        "time": "2026-11-28T01:00:00Z",
        "detail": {
            "host": "web-12", "usage_pct": 93, "env": "prod", "app": "shop",
            "mounts": [{"path": "/data"}, {"path": "/"}],
            "msg": ["disk almost full", "cleanup advised"]
        },
        "labels": {"biz": "trade"}
    })
}

/// Run `src` on the example event.
pub fn run(src: &str) -> Result<Vec<Value>, String> {
    let f = Filter::compile(src).map_err(|e| format!("compile: {e}"))?;
    f.run(&Input::new(event())).map_err(|e| format!("run: {e}"))
}

/// A normal filter still compiles and runs on this thread.
pub fn still_works() {
    assert_eq!(
        run(".detail.mounts | any(.path == \"/data\")").unwrap(),
        vec![json!(true)]
    );
    assert_eq!(
        run("[.detail.msg[] | length]").unwrap(),
        vec![json!([16, 15])]
    );
}
