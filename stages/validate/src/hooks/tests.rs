use super::*;
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!(
        "{}/../../tests/fixtures/hooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::parse(
        "2026-12-02T05:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

fn hook(name: &str) -> Hook {
    Hook::from_config(&HookConfig::builtin(name)).unwrap()
}

fn generic(jq: &str) -> Hook {
    let mut c = HookConfig::builtin("zabbix");
    c.jq = Some(jq.into());
    Hook::from_config(&c).unwrap()
}

fn convert(h: &Hook, body: &[u8]) -> Result<Vec<Envelope>, HookError> {
    h.convert(body, &Limits::default(), now())
}

#[test]
fn alertmanager_v4_is_one_event_per_alert_with_the_group_context() {
    let evs = convert(&hook("alertmanager"), &fixture("alertmanager-v4.json")).unwrap();
    assert_eq!(evs.len(), 3);
    let instances: Vec<_> = evs
        .iter()
        .map(|e| e.detail["labels"]["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["web-12:9100", "web-13:9100", "web-14:9100"]);
    let statuses: Vec<_> = evs
        .iter()
        .map(|e| e.detail["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["firing", "firing", "resolved"]);
    for e in &evs {
        assert_eq!(e.event_type, "prometheus.alert");
        assert_eq!(e.source, "http://alertmanager:9093");
        assert_eq!(e.detail["receiver"], "whale");
        assert_eq!(e.detail["groupKey"], "{}:{alertname=\"HostDiskFull\"}");
        assert_eq!(
            e.detail["groupLabels"],
            json!({"alertname": "HostDiskFull"})
        );
        assert_eq!(e.detail["commonLabels"]["severity"], "critical");
        assert_eq!(e.detail["groupStatus"], "firing");
        assert_eq!(e.labels["hook"], "alertmanager");
        assert!(e.id.starts_with("am-") && e.id.len() == 35, "{}", e.id);
    }
    assert_eq!(
        evs[0].detail["annotations"]["summary"],
        "Disk almost full on web-12"
    );
    assert_eq!(evs[0].detail["fingerprint"], "a1b2c3d4e5f60718");
    // Firing: the alert's start; resolved: its end.
    assert_eq!(evs[0].time, "2026-12-02T04:00:00.123456789Z");
    assert_eq!(evs[2].time, "2026-12-02T04:02:00Z");
    let ids: std::collections::BTreeSet<_> = evs.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), 3, "distinct ids");
}

#[test]
fn alertmanager_ids_are_stable_across_renotifications_and_change_on_resolution() {
    let h = hook("alertmanager");
    let body = fixture("alertmanager-v4.json");
    let a = convert(&h, &body).unwrap();
    let b = h
        .convert(&body, &Limits::default(), now() + time::Duration::hours(1))
        .unwrap();
    assert_eq!(
        a.iter().map(|e| &e.id).collect::<Vec<_>>(),
        b.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["alerts"][0]["status"] = json!("resolved");
    v["alerts"][0]["endsAt"] = json!("2026-12-02T04:40:00Z");
    let c = convert(&h, v.to_string().as_bytes()).unwrap();
    assert_ne!(c[0].id, a[0].id, "resolution is a new event");
    assert_eq!(c[1].id, a[1].id);
}

#[test]
fn alertmanager_errors_name_the_alert_and_the_field() {
    let h = hook("alertmanager");
    let mut v: Value = serde_json::from_slice(&fixture("alertmanager-v4.json")).unwrap();
    v["alerts"][1]["labels"]["instance"] = json!(13);
    v["alerts"][2]["status"] = json!("pending");
    v["alerts"][0].as_object_mut().unwrap().remove("startsAt");
    let e = convert(&h, v.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    let got: Vec<_> = e.reasons.iter().map(|r| r.pointer.as_str()).collect();
    assert_eq!(
        got,
        [
            "/alerts/0/startsAt",
            "/alerts/1/labels/instance",
            "/alerts/2/status"
        ]
    );
    assert!(e.reasons[2].message.contains("\"pending\""), "{e}");

    let e = convert(&h, br#"{"version":"4","status":"firing"}"#).unwrap_err();
    assert_eq!(e.reasons[0].pointer, "/alerts");
    assert!(e.reasons[0].message.starts_with("missing"), "{e}");
    let e = convert(&h, br#"{"version":"3","alerts":[]}"#).unwrap_err();
    assert_eq!(e.reasons[0].pointer, "/version");
    let e = convert(&h, br#"[1,2]"#).unwrap_err();
    assert!(
        e.reasons[0].message.contains("JSON object, got an array"),
        "{e}"
    );
}

#[test]
fn hostile_bodies_get_a_clear_4xx() {
    let mut c = HookConfig::builtin("alertmanager");
    c.max_body_bytes = 1000;
    c.max_items = 2;
    let h = Hook::from_config(&c).unwrap();
    // Too large.
    let e = convert(&h, &vec![b' '; 1001]).unwrap_err();
    assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(e.message.contains("at most 1000"), "{e}");
    // Too deep.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let e = convert(&h, deep.as_bytes()).unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert!(e.reasons[0].message.contains("deep"), "{e}");
    // Not JSON.
    let e = convert(&h, b"{\"alerts\": [").unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    // Too many alerts.
    let alert = json!({"status":"firing","labels":{},"startsAt":"2026-12-02T04:00:00Z"});
    let body = json!({"version":"4","alerts":[alert, alert, alert]}).to_string();
    let e = convert(&h, body.as_bytes()).unwrap_err();
    assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        e.message.contains("3 events") && e.message.contains("at most 2"),
        "{e}"
    );
    // An emitted event over events.max_bytes.
    let big = "x".repeat(600);
    let body = json!({"version":"4","alerts":[{"status":"firing","labels":{"a":big},"startsAt":"2026-12-02T04:00:00Z"}]});
    let e = h
        .convert(
            body.to_string().as_bytes(),
            &Limits {
                max_bytes: 500,
                max_depth: 64,
            },
            now(),
        )
        .unwrap_err();
    assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(e.reasons[0].pointer, "/alerts/0");
}

#[test]
fn alerts_without_fingerprint_get_one_from_their_labels() {
    let h = hook("alertmanager");
    let body = json!({"version":"4","groupKey":"g","alerts":[
        {"status":"firing","labels":{"b":"2","a":"1"},"startsAt":"2026-12-02T04:00:00Z"},
        {"status":"firing","labels":{"a":"1","b":"3"},"startsAt":"2026-12-02T04:00:00Z"}]});
    let evs = convert(&h, body.to_string().as_bytes()).unwrap();
    let fp0 = evs[0].detail["fingerprint"].as_str().unwrap();
    assert_eq!(fp0.len(), 16);
    assert_ne!(fp0, evs[1].detail["fingerprint"].as_str().unwrap());
    assert_ne!(evs[0].id, evs[1].id);
    assert_eq!(evs[0].source, "hook/alertmanager");
    assert_eq!(evs[0].time, "2026-12-02T04:00:00Z");
}

#[test]
fn grafana_alerts_carry_values_and_group_title() {
    let evs = convert(&hook("grafana"), &fixture("grafana.json")).unwrap();
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e.event_type, "grafana.alert");
    assert!(e.id.starts_with("gf-"));
    assert_eq!(e.source, "http://grafana:3000/");
    assert_eq!(e.detail["labels"]["instance"], "db-1:9100");
    assert_eq!(e.detail["values"]["B"], 93.5);
    assert_eq!(e.detail["title"], "[FIRING:1] High CPU Infra (db-1:9100)");
    assert_eq!(e.detail["orgId"], 1);
    assert_eq!(e.detail["state"], "alerting");
    assert_eq!(e.detail["status"], "firing");
}

#[test]
fn cloudevents_structured_and_batch() {
    let h = hook("cloudevents");
    let one = convert(&h, &fixture("cloudevents.json")).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, "A234-1234-1234");
    assert_eq!(one[0].event_type, "com.github.pull_request.opened");
    assert_eq!(one[0].source, "https://github.com/cloudevents/spec/pull");
    assert_eq!(one[0].detail, json!({"pull": 123, "title": "Add hooks"}));
    assert_eq!(one[0].labels["comexampleextension1"], "value");
    assert_eq!(one[0].labels["hook"], "cloudevents");
    let batch = convert(&h, &fixture("cloudevents-batch.json")).unwrap();
    assert_eq!(
        batch.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["ce-batch-1", "ce-batch-2"]
    );
    assert_eq!(batch[1].detail["usage_pct"], 91);
    let e = convert(
        &h,
        br#"[{"specversion":"1.0","type":"a","source":"s","id":"1"}, {"type":"b"}, 3]"#,
    )
    .unwrap_err();
    let got: Vec<_> = e.reasons.iter().map(|r| r.pointer.as_str()).collect();
    assert_eq!(got, ["/1", "/2"]);
    let e = convert(&h, br#"{"specversion":"0.3","type":"a"}"#).unwrap_err();
    assert_eq!(e.reasons[0].pointer, "/specversion");
}

#[test]
fn generic_jq_maps_a_zabbix_body() {
    let h = generic(
        r#"{event_type: "zabbix.problem", id: ("zbx-" + .event_id + "-" + .event_value),
            time: .event_time, source: "zabbix",
            detail: {host, trigger, severity: .event_severity,
                     status: (if .event_value == "1" then "problem" else "ok" end)}}"#,
    );
    let evs = convert(&h, &fixture("zabbix.json")).unwrap();
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e.id, "zbx-48211-1");
    assert_eq!(e.event_type, "zabbix.problem");
    assert_eq!(e.time, "2026-12-02T04:30:00Z");
    assert_eq!(
        e.detail,
        json!({"host": "web-12", "trigger": "Free disk space is less than 5% on volume /",
               "severity": "High", "status": "problem"})
    );
}

#[test]
fn generic_arrays_fan_out_and_ids_default_to_a_digest() {
    let h = generic(r#"[.items[] | {event_type: "k8s.event", detail: .}]"#);
    let body = br#"{"items":[{"reason":"BackOff"},{"reason":"OOMKilled"}]}"#;
    let a = convert(&h, body).unwrap();
    assert_eq!(a.len(), 2);
    assert!(a[0].id.starts_with("hk-"));
    assert_ne!(a[0].id, a[1].id);
    assert_eq!(a[0].source, "hook/zabbix");
    let b = convert(&h, body).unwrap();
    assert_eq!(a[0].id, b[0].id, "a retried body is the same event");
    // Nothing: a filter that selects nothing is not an error.
    let none =
        generic(r#"select(.object_kind == "push") | {event_type: "gitlab.push", detail: .}"#);
    assert!(convert(&none, br#"{"object_kind":"note"}"#)
        .unwrap()
        .is_empty());
}

#[test]
fn generic_errors_say_which_output_and_what() {
    let h = generic(r#".[] | if . == 1 then 5 else {detail: .} end"#);
    let e = convert(&h, br#"[1, {"a": 1}]"#).unwrap_err();
    let got: Vec<_> = e.reasons.iter().map(|r| r.pointer.as_str()).collect();
    assert_eq!(got, ["output 0", "output 1 /event_type"], "{e}");
    let h = generic(".a.b");
    let e = convert(&h, br#"{"a": 5}"#).unwrap_err();
    assert!(e.message.contains("jq mapping failed"), "{e}");
    // The item limit holds for mappings too.
    let mut c = HookConfig::builtin("fan");
    c.jq = Some(r#"range(0; 10) | {event_type: "x", detail: {i: .}}"#.into());
    c.max_items = 3;
    let e = convert(&Hook::from_config(&c).unwrap(), b"{}").unwrap_err();
    assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn config_errors_name_the_hook() {
    let mut c = HookConfig::builtin("zabbix");
    let e = Hook::from_config(&c).unwrap_err().to_string();
    assert!(e.contains("\"zabbix\"") && e.contains("jq"), "{e}");
    c.jq = Some("def f: f; f".into());
    let e = format!("{:#}", Hook::from_config(&c).unwrap_err());
    assert!(e.contains("does not compile"), "{e}");
    c.adapter = Some("nagios".into());
    let e = Hook::from_config(&c).unwrap_err().to_string();
    assert!(e.contains("unknown adapter"), "{e}");
    let c = HookConfig::builtin("a/b");
    assert!(Hook::from_config(&c).is_err());
    let mut cfg = Config {
        hooks: vec![
            HookConfig::builtin("grafana"),
            HookConfig::builtin("grafana"),
        ],
        ..Config::default()
    };
    assert!(Hooks::from_config(&cfg)
        .unwrap_err()
        .to_string()
        .contains("twice"));
    cfg.hooks.pop();
    cfg.hooks[0].tokens = vec!["grafana-prod".into()];
    let hooks = Hooks::from_config(&cfg).unwrap();
    assert_eq!(hooks.names(), ["alertmanager", "cloudevents", "grafana"]);
    let g = hooks.get("grafana").unwrap();
    assert!(g.allows(Some("grafana-prod")) && !g.allows(Some("alertmanager")) && g.allows(None));
}

fn delivery(subject: &str, payload: Vec<u8>) -> whale_kernel::Delivery {
    whale_kernel::Delivery::new(subject, payload, &[], 1, 7, now())
}

fn validate(allow_unknown_types: bool) -> crate::Validate {
    crate::Validate {
        registry: crate::Registry::default(),
        limits: Limits::default(),
        allow_unknown_types,
        hooks: std::sync::Arc::new(Hooks::from_config(&Config::default()).unwrap()),
    }
}

#[test]
fn raw_payloads_on_nats_go_through_the_named_hook() {
    let v = validate(true);
    let d = delivery(
        "whale.in.hook.alertmanager",
        fixture("alertmanager-v4.json"),
    );
    let out = v.from_hook("alertmanager", &d);
    assert_eq!(out.len(), 3);
    let http = convert(&hook("alertmanager"), &fixture("alertmanager-v4.json")).unwrap();
    for (a, b) in out.iter().zip(&http) {
        assert_eq!(a.as_ref().unwrap().id, b.id, "same ids as over HTTP");
    }
    // A bad payload is one rejection of type hook.<name> with the adapter's reasons.
    let d = delivery("whale.in.hook.alertmanager", br#"{"version":"4"}"#.to_vec());
    let out = v.from_hook("alertmanager", &d);
    let rej = out[0].as_ref().unwrap_err();
    assert_eq!(rej.event_type.as_deref(), Some("hook.alertmanager"));
    assert_eq!(rej.reasons[1].pointer, "/alerts");
    assert_eq!(rej.raw.as_deref(), Some(r#"{"version":"4"}"#));
    let out = v.from_hook("nagios", &delivery("whale.in.hook.nagios", b"{}".to_vec()));
    assert!(out[0].as_ref().unwrap_err().reasons[0]
        .message
        .contains("no hook named \"nagios\""));
    // Without a schema (and unknown types refused) each event is rejected on its own.
    let v = validate(false);
    let d = delivery("whale.in.hook.grafana", fixture("grafana.json"));
    let rej = v.from_hook("grafana", &d).remove(0).unwrap_err();
    assert_eq!(rej.event_type.as_deref(), Some("grafana.alert"));
    assert!(rej.id.unwrap().starts_with("gf-"));
}

#[test]
fn no_adapter_or_producer_may_emit_a_hook_type() {
    // A mapping that yields `hook.<name>` would be read back as that hook's raw payload.
    let h = generic(r#"{event_type: "hook.alertmanager", detail: {}}"#);
    let e = convert(&h, b"{}").unwrap_err();
    assert_eq!(e.reasons.len(), 1, "{e}");
    assert!(e.reasons[0].pointer.ends_with("/event_type"), "{e}");
    assert!(
        e.reasons[0].message.contains("POST /v1/hooks/alertmanager"),
        "{e}"
    );
    // The same at HTTP/CLI ingest: a producer cannot go round a hook's adapter and its tokens.
    let limits = Limits::default();
    let r = crate::ingest::prepare_one(
        br#"{"event_type": "hook.alertmanager", "detail": {"alerts": []}}"#,
        &limits,
        None,
        "http",
    )
    .unwrap_err();
    assert_eq!(r[0].pointer, "/event_type");
    assert!(
        r[0].message.contains("reserved for webhook payloads"),
        "{r:?}"
    );
    assert!(crate::ingest::prepare_one(
        br#"{"event_type": "hooks.ok", "detail": {}}"#,
        &limits,
        None,
        "http"
    )
    .is_ok());
}
