//! Unit tests of envelope normalization: every accepted shape and every refusal reason.

use super::*;
use serde_json::json;

fn defaults() -> Defaults<'static> {
    Defaults {
        event_type: None,
        id: "assigned".into(),
        time: OffsetDateTime::from_unix_timestamp(1_764_291_600).unwrap(),
        source: "test",
    }
}

#[test]
fn fills_in_id_time_source_and_decodes_a_string_detail() {
    let v = json!({"event_type": "dmesg.error", "detail": "{\"msg\": [\"a\"], \"code\": \"1\"}"});
    let e = normalize(v, &defaults()).unwrap();
    assert_eq!(e.id, "assigned");
    assert_eq!(e.source, "test");
    assert_eq!(e.time, "2025-11-28T01:00:00Z");
    assert_eq!(e.detail, json!({"msg": ["a"], "code": "1"}));
}

#[test]
fn time_is_normalized_to_utc() {
    let v = json!({"event_type": "t", "time": "2026-11-28T09:00:00+08:00"});
    assert_eq!(
        normalize(v, &defaults()).unwrap().time,
        "2026-11-28T01:00:00Z"
    );
}

#[test]
fn cloudevents_structured_maps_type_data_and_extensions() {
    let v = json!({"specversion": "1.0", "type": "vm.disk_usage", "source": "/a", "id": "x1",
                   "time": "2026-11-28T01:00:00Z", "data": {"host": "h"}, "biz": "trade", "subject": "s"});
    let e = normalize(v, &defaults()).unwrap();
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str(), e.source.as_str()),
        ("vm.disk_usage", "x1", "/a")
    );
    assert_eq!(e.detail, json!({"host": "h"}));
    assert_eq!(e.labels["biz"], "trade");
    assert_eq!(e.labels["ce_subject"], "s");
    let bad = json!({"specversion": "0.3", "type": "t"});
    assert!(normalize(bad, &defaults()).unwrap_err()[0]
        .message
        .contains("CloudEvents 1.0"));
}

#[test]
fn cloudevents_binary_mode_text_data_stays_text() {
    let h = [
        ("ce-specversion", "1.0"),
        ("ce-type", "generic"),
        ("ce-id", "b1"),
        ("ce-source", "/s"),
    ];
    let v = cloudevent_from_binary(
        h.into_iter(),
        Some("text/plain"),
        b"hello",
        &Limits::default(),
    )
    .unwrap();
    let e = normalize(v, &defaults()).unwrap();
    assert_eq!(e.detail, json!("hello"));
    assert_eq!(e.id, "b1");
}

#[test]
fn every_problem_is_reported_with_its_pointer() {
    let v = json!({"event_type": "bad type!", "id": 5, "time": "yesterday", "labels": {"a": 1}, "extra": true, "detail": "{"});
    let reasons = normalize(v, &defaults()).unwrap_err();
    let pointers: Vec<&str> = reasons.iter().map(|r| r.pointer.as_str()).collect();
    for p in [
        "/extra",
        "/event_type",
        "/id",
        "/time",
        "/detail",
        "/labels/a",
    ] {
        assert!(pointers.contains(&p), "{p} missing from {pointers:?}");
    }
}

#[test]
fn subject_type_fills_in_and_must_agree() {
    let d = Defaults {
        event_type: Some("generic"),
        ..defaults()
    };
    assert_eq!(
        normalize(json!({"detail": {}}), &d).unwrap().event_type,
        "generic"
    );
    let err = normalize(json!({"event_type": "other"}), &d).unwrap_err();
    assert!(err[0].message.contains("does not match"), "{err:?}");
    assert!(normalize(json!({}), &defaults()).unwrap_err()[0]
        .message
        .contains("missing"));
}

#[test]
fn limits_size_utf8_syntax_and_depth() {
    let l = Limits {
        max_bytes: 100,
        max_depth: 3,
    };
    assert!(parse_bytes(&[b' '; 101], &l)
        .unwrap_err()
        .message
        .contains("limit is 100"));
    assert!(parse_bytes(b"\"\xff\"", &l)
        .unwrap_err()
        .message
        .contains("UTF-8"));
    assert!(parse_bytes(b"{", &l)
        .unwrap_err()
        .message
        .contains("malformed JSON"));
    let r = parse_bytes(b"[[[[1]]]]", &l).unwrap_err();
    assert!(r.message.contains("deeper than 3 levels"), "{r:?}");
    assert_eq!(r.pointer, "/0/0/0");
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let l = Limits {
        max_bytes: 1 << 20,
        max_depth: 64,
    };
    assert!(parse_bytes(deep.as_bytes(), &l)
        .unwrap_err()
        .message
        .contains("nests deeper"));
}

#[test]
fn deterministic_ids_are_stable_and_distinct() {
    let t = OffsetDateTime::from_unix_timestamp(1_764_291_600).unwrap();
    assert_eq!(deterministic_id(t, 7), deterministic_id(t, 7));
    assert_ne!(deterministic_id(t, 7), deterministic_id(t, 8));
    assert_eq!(deterministic_id(t, 7).len(), 26);
}

#[test]
fn event_types_are_subject_safe() {
    for ok in ["vm.disk_usage", "a", "alertmanager.alert", "x-y.z_1"] {
        assert!(is_valid_event_type(ok), "{ok}");
    }
    for bad in ["", "a..b", "a.*", "a b", "a.>", ".a", "a."] {
        assert!(!is_valid_event_type(bad), "{bad}");
    }
}

/// Finding 12: duplicate keys are refused (two parsers could disagree on which one wins), with
/// the pointer of the duplicate, at any depth.
#[test]
fn duplicate_keys_are_refused_with_their_pointer() {
    let l = Limits::default();
    let r = parse_bytes(br#"{"id":"a","id":"b"}"#, &l).unwrap_err();
    assert_eq!(r.pointer, "/id");
    assert!(r.message.contains("duplicate key"), "{r:?}");
    let r = parse_bytes(br#"{"detail":{"x":[{"k~/":1,"k~/":2}]}}"#, &l).unwrap_err();
    assert_eq!(r.pointer, "/detail/x/0/k~0~1");
    assert!(parse_bytes(br#"{"a":{"k":1},"b":{"k":2}}"#, &l).is_ok());
}

/// Finding 4: a string detail gets the limits of the event it sits in (depth counted from the
/// event, duplicate keys, size), refused with a pointer under /detail.
#[test]
fn a_string_detail_gets_the_same_limits() {
    let l = Limits::default();
    let deep = "[".repeat(120) + &"]".repeat(120);
    let v = json!({"event_type": "generic", "detail": deep});
    let r = normalize_with(v, &defaults(), &l, StringDetail::Decode).unwrap_err();
    assert!(r[0].pointer.starts_with("/detail"), "{r:?}");
    assert!(r[0].message.contains("deeper than 63"), "{r:?}");
    // 63 levels inside the detail + the event itself = 64: accepted.
    let ok = "[".repeat(63) + &"]".repeat(63);
    let v = json!({"event_type": "generic", "detail": ok});
    assert!(normalize_with(v, &defaults(), &l, StringDetail::Decode).is_ok());
    let v = json!({"event_type": "generic", "detail": "{\"a\":{\"b\":1,\"b\":2}}"});
    let r = normalize_with(v, &defaults(), &l, StringDetail::Decode).unwrap_err();
    assert_eq!(r[0].pointer, "/detail/a/b");
    let small = Limits {
        max_bytes: 10,
        max_depth: 64,
    };
    let v = json!({"event_type": "generic", "detail": "[1,2,3,4,5,6,7]"});
    let r = normalize_with(v, &defaults(), &small, StringDetail::Decode).unwrap_err();
    assert!(r[0].message.contains("limit is 10"), "{r:?}");
}

/// Finding 5: an envelope whale already normalized keeps a string detail as it is (CloudEvents
/// text data), and a producer's string detail is still decoded.
#[test]
fn a_normalized_string_detail_is_not_decoded_again() {
    let l = Limits::default();
    let v = json!({"event_type": "generic", "detail": "{\"a\":1}"});
    let kept = normalize_with(v.clone(), &defaults(), &l, StringDetail::Keep).unwrap();
    assert_eq!(kept.detail, json!("{\"a\":1}"));
    let decoded = normalize_with(v, &defaults(), &l, StringDetail::Decode).unwrap();
    assert_eq!(decoded.detail, json!({"a": 1}));
    let v = json!({"event_type": "generic", "detail": "plain text, not JSON"});
    assert!(normalize_with(v.clone(), &defaults(), &l, StringDetail::Keep).is_ok());
    assert!(normalize_with(v, &defaults(), &l, StringDetail::Decode).is_err());
}

#[path = "fuzz.rs"]
mod fuzz;
