//! `{{ }}` templates: types, mixed text, errors, structures.

use super::event;
use serde_json::json;
use whale_expr::{Compiler, Input, Template, TemplateValue};

fn render(t: &str) -> Result<serde_json::Value, String> {
    let t = Template::compile(t).map_err(|e| e.to_string())?;
    t.render(&Input::new(event())).map_err(|e| e.to_string())
}

#[test]
fn lone_expression_keeps_its_type() {
    assert_eq!(render("{{ .detail.host }}"), Ok(json!("web-12")));
    assert_eq!(
        render("{{ .detail.msg }}"),
        Ok(json!(["disk almost full", "cleanup advised"]))
    );
    assert_eq!(render("  {{ .detail.usage_pct }} "), Ok(json!(93)));
    assert_eq!(render("{{ .labels }}"), Ok(json!({"biz": "trade"})));
    assert_eq!(render("{{ {a: 1} }}"), Ok(json!({"a": 1})));
    assert_eq!(
        render("{{ .labels.biz // \"default\" }}"),
        Ok(json!("trade"))
    );
    assert_eq!(
        render("{{ .labels.team // \"default\" }}"),
        Ok(json!("default"))
    );
}

#[test]
fn mixed_text_is_a_string() {
    assert_eq!(
        render("{{ .detail.usage_pct }}% on {{ .detail.host }}"),
        Ok(json!("93% on web-12"))
    );
    assert_eq!(
        render("msgs={{ .detail.msg }}"),
        Ok(json!("msgs=[\"disk almost full\",\"cleanup advised\"]"))
    );
    assert_eq!(
        render("{{ .detail.app }}_{{ .detail.host }}"),
        Ok(json!("shop_web-12"))
    );
    assert_eq!(render("no templates here"), Ok(json!("no templates here")));
    assert_eq!(render("{{ \"}}\" }}!"), Ok(json!("}}!")));
}

#[test]
fn render_errors_say_why() {
    assert_eq!(
        render("{{ empty }}").unwrap_err(),
        "{{ empty }} yields no value"
    );
    assert_eq!(
        render("{{ .detail.msg[] }}").unwrap_err(),
        "{{ .detail.msg[] }} yields 2 values; wrap it in [ ] to get an array"
    );
    let e = render("{{ .detail.host.x }}").unwrap_err();
    assert!(
        e.starts_with("{{ .detail.host.x }} failed: cannot follow path .detail.host.x"),
        "{e}"
    );
    let e = render("{{ error(\"nope\") }}").unwrap_err();
    assert_eq!(e, "{{ error(\"nope\") }} failed: nope");
    assert!(Template::compile("{{ .a ")
        .unwrap_err()
        .to_string()
        .contains("never closed"));
    let e = Template::compile("x {{ repeat(1) }}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("in {{ repeat(1) }}: `repeat` is not allowed"),
        "{e}"
    );
}

#[test]
fn template_values_walk_structures() {
    let params = json!({
        "host": "{{ .detail.host }}",
        "messages": "{{ .detail.msg }}",
        "note": "{{ .detail.usage_pct }}% on {{ .detail.host }}",
        "default1": "ok",
        "default2": [1, 2, 3],
        "nested": {"list": ["{{ .labels.biz }}", 2]}
    });
    let t = TemplateValue::compile(&params).unwrap();
    let out = t.render(&Input::new(event())).unwrap();
    assert_eq!(
        out,
        json!({
            "host": "web-12",
            "messages": ["disk almost full", "cleanup advised"],
            "note": "93% on web-12",
            "default1": "ok",
            "default2": [1, 2, 3],
            "nested": {"list": ["trade", 2]}
        })
    );
    assert!(TemplateValue::compile(&json!({"a": [1, "x"]}))
        .unwrap()
        .is_literal());
    let bad = TemplateValue::compile(&json!({"a": {"b": ["{{ env }}"]}})).unwrap_err();
    assert_eq!(bad.path, "a.b[0]");
    let t = TemplateValue::compile(&json!({"a": ["{{ .detail.msg[] }}"]})).unwrap();
    let e = t.render(&Input::new(event())).unwrap_err();
    assert_eq!(e.path, "a[0]");
}

#[test]
fn identical_sources_compile_once() {
    let mut c = Compiler::new();
    for _ in 0..3 {
        c.template("{{ .detail.msg | length }} and {{ .detail.host | ascii_upcase }}")
            .unwrap();
    }
    c.template("{{ .detail.host }} {{ .labels.biz // \"x\" }}")
        .unwrap();
    assert_eq!(
        c.filters_compiled(),
        2,
        "simple paths need no filter; repeats are cached"
    );
}
