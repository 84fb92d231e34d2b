//! Every operator: passes, fails, missing fields, type mismatches, unicode, numbers as strings.

use super::step;
use serde_json::json;

const PASS: (bool, u32) = (true, 0);
const FAIL: (bool, u32) = (false, 0);
const MISMATCH: (bool, u32) = (false, 1);

fn check(s: &str, detail: serde_json::Value, want: (bool, u32)) {
    assert_eq!(step(s, detail.clone()), want, "{s} on {detail}");
}

#[test]
fn equality() {
    check(
        "{path: .detail.env, eq: prod}",
        json!({"env": "prod"}),
        PASS,
    );
    check("{path: .detail.env, eq: prod}", json!({"env": "dev"}), FAIL);
    check("{path: .detail.env, eq: prod}", json!({}), FAIL);
    check("{path: .detail.env, eq: prod}", json!({"env": 1}), MISMATCH);
    check("{path: .detail.n, eq: 1}", json!({"n": 1.0}), PASS);
    check("{path: .detail.n, eq: 90}", json!({"n": "90"}), MISMATCH);
    check("{path: .detail.n, eq: null}", json!({"n": null}), PASS);
    check(
        "{path: .detail.t, eq: [1, {a: 2}]}",
        json!({"t": [1.0, {"a": 2}]}),
        PASS,
    );
    check("{path: .detail.env, ne: prod}", json!({"env": "dev"}), PASS);
    check(
        "{path: .detail.env, ne: prod}",
        json!({"env": "prod"}),
        FAIL,
    );
    check("{path: .detail.env, ne: prod}", json!({}), FAIL);
    check("{path: .detail.env, ne: prod}", json!({"env": 3}), MISMATCH);
    check(
        "{path: .detail.name, eq: 'café ☕'}",
        json!({"name": "café ☕"}),
        PASS,
    );
}

#[test]
fn ordering() {
    check("{path: .detail.u, gt: 90}", json!({"u": 93}), PASS);
    check("{path: .detail.u, gt: 90}", json!({"u": 90}), FAIL);
    check("{path: .detail.u, ge: 90}", json!({"u": 90.0}), PASS);
    check("{path: .detail.u, lt: 90}", json!({"u": 89.5}), PASS);
    check("{path: .detail.u, le: 90}", json!({"u": 91}), FAIL);
    check("{path: .detail.u, gt: 90}", json!({"u": "93"}), MISMATCH);
    check("{path: .detail.u, gt: 90}", json!({}), FAIL);
    check("{path: .detail.u, gt: 90}", json!({"u": null}), MISMATCH);
    check(
        "{path: .detail.u, gt: 18446744073709551614}",
        json!({"u": u64::MAX}),
        PASS,
    );
    check("{path: .detail.v, ge: '2.0'}", json!({"v": "2.1"}), PASS);
    check("{path: .detail.v, lt: 'é'}", json!({"v": "z"}), PASS);
}

#[test]
fn membership() {
    check(
        "{path: .detail.env, in: [prod, staging]}",
        json!({"env": "staging"}),
        PASS,
    );
    check(
        "{path: .detail.env, in: [prod, staging]}",
        json!({"env": "dev"}),
        FAIL,
    );
    check("{path: .detail.env, in: [prod, staging]}", json!({}), FAIL);
    check(
        "{path: .detail.code, in: [1, 2]}",
        json!({"code": "1"}),
        MISMATCH,
    );
    check(
        "{path: .detail.code, in: [1, 2]}",
        json!({"code": 2.0}),
        PASS,
    );
    check(
        "{path: .detail.env, not_in: [prod]}",
        json!({"env": "dev"}),
        PASS,
    );
    check(
        "{path: .detail.env, not_in: [prod]}",
        json!({"env": "prod"}),
        FAIL,
    );
    check("{path: .detail.env, not_in: [prod]}", json!({}), FAIL);
    check(
        "{path: .detail.env, not_in: [prod]}",
        json!({"env": false}),
        MISMATCH,
    );
}

#[test]
fn containment() {
    check(
        "{path: .detail.msg, contains: full}",
        json!({"msg": "disk full"}),
        PASS,
    );
    check(
        "{path: .detail.msg, contains: full}",
        json!({"msg": "disk ok"}),
        FAIL,
    );
    check(
        "{path: .detail.tags, contains: red}",
        json!({"tags": ["blue", "red"]}),
        PASS,
    );
    check(
        "{path: .detail.tags, contains: 2}",
        json!({"tags": [1, 2.0]}),
        PASS,
    );
    check("{path: .detail.msg, contains: full}", json!({}), FAIL);
    check(
        "{path: .detail.msg, contains: full}",
        json!({"msg": 5}),
        MISMATCH,
    );
    check(
        "{path: .detail.msg, contains: 'ü'}",
        json!({"msg": "Grüße"}),
        PASS,
    );
    check(
        "{path: .detail.msg, not_contains: full}",
        json!({"msg": "disk ok"}),
        PASS,
    );
    check(
        "{path: .detail.tags, not_contains: red}",
        json!({"tags": ["red"]}),
        FAIL,
    );
    check("{path: .detail.msg, not_contains: full}", json!({}), FAIL);
    check(
        "{path: .detail.msg, not_contains: full}",
        json!({"msg": {}}),
        MISMATCH,
    );
}

#[test]
fn prefixes_and_suffixes() {
    for op in ["starts_with", "prefix"] {
        check(
            &format!("{{path: .detail.h, {op}: web-}}"),
            json!({"h": "web-12"}),
            PASS,
        );
        check(
            &format!("{{path: .detail.h, {op}: web-}}"),
            json!({"h": "db-1"}),
            FAIL,
        );
        check(&format!("{{path: .detail.h, {op}: web-}}"), json!({}), FAIL);
        check(
            &format!("{{path: .detail.h, {op}: '1'}}"),
            json!({"h": 12}),
            MISMATCH,
        );
    }
    for op in ["ends_with", "suffix"] {
        check(
            &format!("{{path: .detail.h, {op}: .prod}}"),
            json!({"h": "web.prod"}),
            PASS,
        );
        check(
            &format!("{{path: .detail.h, {op}: .prod}}"),
            json!({"h": "web.dev"}),
            FAIL,
        );
    }
    // multi-byte characters: prefixes are whole characters, never half of one
    check(
        "{path: .detail.h, starts_with: 'é'}",
        json!({"h": "été"}),
        PASS,
    );
    check(
        "{path: .detail.h, starts_with: 'e'}",
        json!({"h": "été"}),
        FAIL,
    );
    check(
        "{path: .detail.h, ends_with: '日本'}",
        json!({"h": "こんにちは日本"}),
        PASS,
    );
}

#[test]
fn regexes() {
    check(
        "{path: .detail.host, regex: '^web-\\d+$'}",
        json!({"host": "web-12"}),
        PASS,
    );
    check(
        "{path: .detail.host, regex: '^web-\\d+$'}",
        json!({"host": "web-x"}),
        FAIL,
    );
    check(
        "{path: .detail.host, regex: 'web'}",
        json!({"host": "my-web-1"}),
        PASS,
    );
    check("{path: .detail.host, regex: '^web'}", json!({}), FAIL);
    check(
        "{path: .detail.host, regex: '^1'}",
        json!({"host": 12}),
        MISMATCH,
    );
    check(
        "{path: .detail.host, iregex: '^WEB-'}",
        json!({"host": "web-1"}),
        PASS,
    );
    check(
        "{path: .detail.host, iregex: '^ÉTÉ$'}",
        json!({"host": "été"}),
        PASS,
    );
    check(
        "{path: .detail.host, regex: '^\\w+$'}",
        json!({"host": "日本"}),
        PASS,
    );
}

#[test]
fn existence() {
    check("{path: .detail.x, exists: true}", json!({"x": 1}), PASS);
    check("{path: .detail.x, exists: true}", json!({"x": null}), PASS);
    check("{path: .detail.x, exists: true}", json!({}), FAIL);
    check("{path: .detail.x, exists: false}", json!({}), PASS);
    check("{path: .detail.x, not_exists: true}", json!({}), PASS);
    check("{path: .detail.x, not_exists: true}", json!({"x": 0}), FAIL);
    check(
        "{path: .detail.x.y, not_exists: true}",
        json!({"x": "str"}),
        PASS,
    );
    check(
        "{path: '.detail[\"odd key\"]', exists: true}",
        json!({"odd key": 1}),
        PASS,
    );
    check(
        "{path: '.detail.items[1].name', exists: true}",
        json!({"items": [{}, {"name": "a"}]}),
        PASS,
    );
    check(
        "{path: '.detail.items[-1].name', eq: a}",
        json!({"items": [{}, {"name": "a"}]}),
        PASS,
    );
}

#[test]
fn numeric_ranges() {
    for s in [
        "{path: .detail.u, numeric: ['>=', 0, '<', 100]}",
        "{path: .detail.u, range: ['>=', 0, '<', 100]}",
    ] {
        check(s, json!({"u": 0}), PASS);
        check(s, json!({"u": 99.9}), PASS);
        check(s, json!({"u": 100}), FAIL);
        check(s, json!({"u": -1}), FAIL);
        check(s, json!({}), FAIL);
        check(s, json!({"u": "50"}), MISMATCH);
    }
    check(
        "{path: .detail.u, numeric: ['=', 5]}",
        json!({"u": 5.0}),
        PASS,
    );
    check(
        "{path: .detail.u, between: [10, 20]}",
        json!({"u": 10}),
        PASS,
    );
    check(
        "{path: .detail.u, between: [10, 20]}",
        json!({"u": 20}),
        PASS,
    );
    check(
        "{path: .detail.u, between: [10, 20]}",
        json!({"u": 20.5}),
        FAIL,
    );
    check(
        "{path: .detail.u, between: [10, 20]}",
        json!({"u": true}),
        MISMATCH,
    );
}

#[test]
fn anything_but() {
    check(
        "{path: .detail.state, anything_but: stopped}",
        json!({"state": "running"}),
        PASS,
    );
    check(
        "{path: .detail.state, anything_but: stopped}",
        json!({"state": "stopped"}),
        FAIL,
    );
    check(
        "{path: .detail.state, anything_but: [stopped, terminated]}",
        json!({"state": "terminated"}),
        FAIL,
    );
    check(
        "{path: .detail.state, anything_but: [stopped]}",
        json!({}),
        FAIL,
    );
    check(
        "{path: .detail.state, anything_but: [stopped]}",
        json!({"state": 3}),
        MISMATCH,
    );
    check(
        "{path: .detail.code, anything_but: [200, 204]}",
        json!({"code": 500}),
        PASS,
    );
    check(
        "{path: .detail.h, anything_but: {prefix: test-}}",
        json!({"h": "web-1"}),
        PASS,
    );
    check(
        "{path: .detail.h, anything_but: {prefix: test-}}",
        json!({"h": "test-1"}),
        FAIL,
    );
    check(
        "{path: .detail.h, anything_but: {suffix: .tmp}}",
        json!({"h": "a.tmp"}),
        FAIL,
    );
}

#[test]
fn cidr() {
    check(
        "{path: .detail.ip, cidr: 10.0.0.0/8}",
        json!({"ip": "10.1.2.3"}),
        PASS,
    );
    check(
        "{path: .detail.ip, cidr: 10.0.0.0/8}",
        json!({"ip": "11.1.2.3"}),
        FAIL,
    );
    check(
        "{path: .detail.ip, cidr: [192.168.0.0/16, '2001:db8::/32']}",
        json!({"ip": "2001:db8::1"}),
        PASS,
    );
    check(
        "{path: .detail.ip, cidr: '2001:db8::/32'}",
        json!({"ip": "2001:db9::1"}),
        FAIL,
    );
    check(
        "{path: .detail.ip, cidr: 10.0.0.0/8}",
        json!({"ip": "::ffff:10.0.0.1"}),
        PASS,
    );
    check(
        "{path: .detail.ip, cidr: 10.1.2.3}",
        json!({"ip": "10.1.2.3"}),
        PASS,
    );
    check("{path: .detail.ip, cidr: 10.0.0.0/8}", json!({}), FAIL);
    check(
        "{path: .detail.ip, cidr: 10.0.0.0/8}",
        json!({"ip": "not-an-ip"}),
        MISMATCH,
    );
    check(
        "{path: .detail.ip, cidr: 10.0.0.0/8}",
        json!({"ip": 167772161}),
        MISMATCH,
    );
}

#[test]
fn case_and_wildcards() {
    check(
        "{path: .detail.env, equals_ignore_case: PROD}",
        json!({"env": "prod"}),
        PASS,
    );
    check(
        "{path: .detail.env, equals_ignore_case: 'ÉTÉ'}",
        json!({"env": "été"}),
        PASS,
    );
    check(
        "{path: .detail.env, equals_ignore_case: PROD}",
        json!({"env": "production"}),
        FAIL,
    );
    check(
        "{path: .detail.env, equals_ignore_case: PROD}",
        json!({"env": 1}),
        MISMATCH,
    );
    check(
        "{path: .detail.h, wildcard: 'web-*.prod'}",
        json!({"h": "web-12.prod"}),
        PASS,
    );
    check(
        "{path: .detail.h, wildcard: 'web-*.prod'}",
        json!({"h": "web-12.prodx"}),
        FAIL,
    );
    check(
        "{path: .detail.h, wildcard: 'a?c'}",
        json!({"h": "abc"}),
        FAIL,
    );
    check(
        "{path: .detail.h, wildcard: 'a?c'}",
        json!({"h": "a?c"}),
        PASS,
    );
    check(
        "{path: .detail.h, wildcard: '*日*'}",
        json!({"h": "今日は"}),
        PASS,
    );
    check("{path: .detail.h, wildcard: '*'}", json!({}), FAIL);
}

#[test]
fn groups_and_jq() {
    let any = "{any: [{path: .detail.env, eq: prod}, {path: .detail.env, eq: staging}]}";
    check(any, json!({"env": "staging"}), PASS);
    check(any, json!({"env": "dev"}), FAIL);
    let all = "{all: [{path: .detail.a, eq: 1}, {path: .detail.b, eq: 2}]}";
    check(all, json!({"a": 1, "b": 2}), PASS);
    check(all, json!({"a": 1}), FAIL);
    check(
        "{not: {path: .detail.env, eq: prod}}",
        json!({"env": "dev"}),
        PASS,
    );
    check(
        "{not: [{path: .detail.a, eq: 1}, {path: .detail.b, eq: 2}]}",
        json!({"a": 1, "b": 3}),
        PASS,
    );
    check(
        "{not: {path: .detail.env, eq: prod}}",
        json!({"env": "prod"}),
        FAIL,
    );
    check(
        "{any: [{all: [{path: .detail.a, eq: 1}]}, {not: {path: .detail.b, exists: true}}]}",
        json!({}),
        PASS,
    );
    check(
        "{jq: '.detail.mounts | any(.path == \"/data\")'}",
        json!({"mounts": [{"path": "/data"}]}),
        PASS,
    );
    check("{jq: '.detail.n > 1'}", json!({"n": 0}), FAIL);
    check("{jq: '.detail.flag'}", json!({}), FAIL);
    check("{jq: 'empty'}", json!({}), FAIL);
    // a jq error is false and counted
    let set = super::compile(&[(
        "t.yaml",
        "name: t\non: e\naction: a.b\nwhen: [{jq: '.detail.h.x'}]\n",
    )])
    .unwrap();
    let ev = set.rules()[0].evaluate(&whale_rules::Input::new(super::envelope(
        "e",
        json!({"h": "s"}),
    )));
    assert_eq!((ev.matched, ev.jq_errors), (false, 1));
    assert!(ev
        .failed
        .unwrap()
        .reason
        .starts_with("the predicate failed: "));
}
