//! Rule files: several rules per file, indexing by type, versions, and bad files refused with
//! file, line and rule.

use super::{compile, from_parsed, DESIGN_EXAMPLE};
use whale_rules::{ParsedFile, RuleSet, RuleSource};

#[test]
fn list_and_multi_document_files() {
    let list = "- name: a\n  on: t1\n  action: p.a\n- name: b\n  on: [t1, t2]\n  action: p.b\n";
    let docs = "name: c\non: t2\naction: p.c\n---\n- name: d\n  on: 't*'\n  action: p.d\n  enabled: true\n---\n# nothing\n";
    let disabled = "name: e\non: t1\naction: p.e\nenabled: false\n";
    let set = compile(&[("a.yaml", list), ("b.yaml", docs), ("c.yml", disabled)]).unwrap();
    assert_eq!(set.len(), 5);
    let names = |t: &str| {
        set.rules_for(t)
            .iter()
            .map(|r| r.name().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("t1"), ["a", "b", "d"]);
    assert_eq!(names("t2"), ["b", "c", "d"]);
    assert_eq!(
        names("t3"),
        ["d"],
        "glob rules listen to types no rule names exactly"
    );
    assert_eq!(names("x"), Vec::<String>::new());
    assert_eq!(set.get("d").unwrap().line(), Some(5));
    assert_eq!(set.get("b").unwrap().line(), Some(4));
}

#[test]
fn match_event_returns_matching_rules_and_counts() {
    let rules = "- {name: a, on: t, action: p.a, when: [{path: .detail.n, gt: 1}]}\n\
                 - {name: b, on: t, action: p.b, when: [{path: .detail.n, gt: 5}]}\n\
                 - {name: c, on: 't*', action: p.c, when: [{path: .detail.n, eq: x}]}\n\
                 - {name: d, on: u, action: p.d}\n";
    let set = compile(&[("a.yaml", rules)]).unwrap();
    let input = whale_rules::Input::new(super::envelope("t", serde_json::json!({"n": 3})));
    let m = set.match_event(&input);
    let names: Vec<_> = m.matched.iter().map(|r| r.name()).collect();
    assert_eq!(
        (names, m.evaluated, m.counts.type_mismatches),
        (vec!["a"], 3, 1)
    );
}

#[test]
fn version_is_a_content_hash() {
    let a = compile(&[("a.yaml", DESIGN_EXAMPLE)]).unwrap();
    let b = compile(&[("a.yaml", DESIGN_EXAMPLE)]).unwrap();
    let c = compile(&[("a.yaml", &DESIGN_EXAMPLE.replace("limit: 1", "limit: 2"))]).unwrap();
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
    assert_eq!(a.version().len(), 12);
    assert_eq!(a.sources()[0].path, "a.yaml");
}

#[test]
fn load_dir_reads_yaml_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.yml"), "name: b\non: t\naction: p.b\n").unwrap();
    std::fs::write(dir.path().join("a.yaml"), "name: a\non: t\naction: p.a\n").unwrap();
    std::fs::write(dir.path().join("README.md"), "not a rule").unwrap();
    let set = RuleSet::load_dir(dir.path()).unwrap();
    let names: Vec<_> = set.rules().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(set.sources()[0].path.ends_with("a.yaml"));
    let e = RuleSet::load_dir(dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

/// `text` is refused, and the message is exactly `want`.
fn refused(text: &str, want: &str) {
    let e = compile(&[("pipelines/bad.yaml", text)]).unwrap_err();
    assert_eq!(e, want);
}

#[test]
fn bad_files_are_refused_with_file_line_and_rule() {
    refused(
        "name: x\non: [t\n",
        "pipelines/bad.yaml:3: rule \"x\": did not find expected ',' or ']', while parsing a flow sequence at \
         line 2 column 5 (inside { } and [ ], quote values that contain [ ] { } or commas, e.g. paths with indices)",
    );
    refused(
        "name: disk\non: t\naction: p.a\nthrotle: {limit: 1, per: 1m}\n",
        "pipelines/bad.yaml:4: rule \"disk\": unknown field `throtle`, expected one of `name`, `description`, `enabled`, `on`, `for_each`, `when`, `action`, `params`, `throttle`, `route`, `approval`, `notify`, `result_event` (check the spelling; see the rule format)",
    );
    refused(
        "name: disk\non: t\naction: p.a\nthrottle: {limit: 1, per: 1m, brust: 2}\n",
        "pipelines/bad.yaml:4: rule \"disk\": throttle: unknown field `brust`, expected one of `key`, `limit`, `per`, `burst`, `mode`, `fail_open` (check the spelling; see the rule format)",
    );
    let e = compile(&[("pipelines/bad.yaml", "name: disk\non: t\naction: p.a\nwhen:\n  - {path: .a, gt: 1}\n  - {path: .detail.env, eqq: prod}\n")]).unwrap_err();
    assert!(e.starts_with("pipelines/bad.yaml:6: rule \"disk\": when[1]: unknown operator \"eqq\" (expected one of eq, ne, gt,"), "{e}");
    refused(
        "name: disk\non: t\naction: p.a\nwhen:\n  - {path: .h, regex: '^web-(\\d+$'}\n",
        "pipelines/bad.yaml:5: rule \"disk\": when[0]: `regex`: invalid regular expression \"^web-(\\\\d+$\": regex parse error:\n    ^web-(\\d+$\n         ^\nerror: unclosed group",
    );
    let e = compile(&[(
        "pipelines/bad.yaml",
        "name: disk\non: t\naction: p.a\nwhen:\n  - jq: '.detail | map('\n",
    )])
    .unwrap_err();
    assert!(
        e.starts_with("pipelines/bad.yaml:5: rule \"disk\": when[0]: jq: syntax error"),
        "{e}"
    );
    refused(
        "name: disk\non: t\naction: p.a\nwhen:\n  - any:\n    - jq: 'last(repeat(1))'\n",
        "pipelines/bad.yaml:6: rule \"disk\": when[0].any[0]: jq: `repeat` is not allowed in rule expressions: it can loop forever (at column 6)",
    );
    refused(
        "name: disk\non: t\naction: p.a\nparams:\n  host: '{{ def f: f; f }}'\n",
        "pipelines/bad.yaml:5: rule \"disk\": params.host: in {{ def f: f; f }}: function definitions (`def`) are not allowed in rule expressions (recursion cannot be bounded) (at column 5)",
    );
    refused(
        "name: disk\non: t\naction: p.a\nroute: '{{ $ENV.KEY }}'\n",
        "pipelines/bad.yaml:4: rule \"disk\": route: in {{ $ENV.KEY }}: `$ENV` is not allowed: it would expose the worker's environment, which holds secrets (at column 1)",
    );
    refused(
        "name: disk\non: t\naction: cleanup\nthrottle: {limit: 0, per: soon}\n",
        "pipelines/bad.yaml:3: rule \"disk\": `action` must be a StackStorm action ref `pack.action`, got \"cleanup\"\n\
         pipelines/bad.yaml:4: rule \"disk\": `throttle.limit` must be at least 1\n\
         pipelines/bad.yaml:4: rule \"disk\": throttle.per: invalid duration \"soon\": expected number at 0 (write e.g. 10s, 10m, 1h)\n\
         pipelines/bad.yaml:4: rule \"disk\": `throttle.per` must be longer than zero",
    );
    refused("name: 'bad name'\non: t\naction: p.a\n", "pipelines/bad.yaml:1: rule \"bad name\": `name` must be 1 to 128 characters of A-Z a-z 0-9 _ . -");
    let e = compile(&[(
        "pipelines/bad.yaml",
        "name: d\non: t\naction: p.a\nwhen:\n  - {path: 'map(.x)', eq: 1}\n",
    )])
    .unwrap_err();
    assert!(
        e.contains(":5: rule \"d\": when[0]: `path` must be a simple path"),
        "{e}"
    );
    let e = compile(&[(
        "pipelines/bad.yaml",
        "name: d\non: t\naction: p.a\nwhen:\n  - {path: .a, eq: 1, ne: 2}\n",
    )])
    .unwrap_err();
    assert!(
        e.contains(
            ":5: rule \"d\": when[0]: a path step needs exactly one operator, found 2 (eq, ne)"
        ),
        "{e}"
    );
}

#[test]
fn duplicate_names_name_both_files() {
    let e = compile(&[
        ("pipelines/a.yaml", DESIGN_EXAMPLE),
        ("pipelines/b.yaml", &format!("# copy\n{DESIGN_EXAMPLE}")),
    ])
    .unwrap_err();
    assert_eq!(
        e,
        "pipelines/b.yaml:2: rule \"disk-full-cleanup\": duplicate rule name; also defined at pipelines/a.yaml:1 (names must be unique)"
    );
}

#[test]
fn every_error_is_reported_and_the_set_refused() {
    let sources = vec![
        RuleSource {
            path: "a.yaml".into(),
            text: "name: a\non: t\naction: p.a\nwhen: [{path: .x, eqq: 1}]\n".into(),
        },
        RuleSource {
            path: "b.yaml".into(),
            text: "name: b\non: t\naction: p.b\n".into(),
        },
        RuleSource {
            path: "c.yaml".into(),
            text: "name: c\non: t\naction: p.c\nwhen: [{jq: 'env'}]\n".into(),
        },
    ];
    let e = RuleSet::compile(&sources).unwrap_err();
    let files: Vec<_> = e.errors().iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files, ["a.yaml", "c.yaml"]);
    assert_eq!(e.errors()[1].rule.as_deref(), Some("c"));
}

/// The parsed form the store keeps (so that workers do not read the YAML again) compiles to
/// the same set: names, files, lines, version, jq filters, matches, "why not" and tasks.
#[test]
fn the_parsed_form_compiles_to_the_same_set() {
    let list = "- name: a\n  on: t1\n  action: p.a\n  when:\n    - {path: .detail.n, gt: 0.1}\n    - jq: '.detail.tags | any(. == \"x\")'\n- name: b\n  on: [t1, 't*']\n  action: p.b\n  for_each: .detail.items[]\n  when: [{path: $item.k, eq: x}]\n";
    let docs = "name: c\non: t1\naction: p.c\nenabled: false\nresult_event: true\n---\n# nothing\n";
    let set = compile(&[
        ("a.yaml", DESIGN_EXAMPLE),
        ("b.yaml", list),
        ("c.yaml", docs),
    ])
    .unwrap();
    let again = from_parsed(&set);
    assert!(again.parsed_json().is_none());
    let shown = |s: &RuleSet| {
        s.rules()
            .iter()
            .map(|r| {
                (
                    r.name().to_owned(),
                    r.file().to_owned(),
                    r.line(),
                    r.enabled(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shown(&again), shown(&set));
    assert_eq!(
        (again.version(), again.filters_compiled()),
        (set.version(), set.filters_compiled())
    );
    assert_eq!(set.get("b").unwrap().line(), Some(7));
    let events = [
        (
            "vm.disk_usage",
            serde_json::json!({"env": "prod", "usage_pct": 95, "host": "web-1", "app": "shop", "mounts": [{"path": "/data"}]}),
        ),
        (
            "t1",
            serde_json::json!({"n": 0.2, "tags": ["x"], "items": [{"k": "x"}, {"k": "y"}]}),
        ),
        ("t1", serde_json::json!({"n": 0.1, "tags": []})),
    ];
    for (t, detail) in events {
        let input = whale_rules::Input::new(super::envelope(t, detail));
        let (m, n) = (set.match_event(&input), again.match_event(&input));
        let names = |m: &whale_rules::Matches| {
            let mut v: Vec<String> = m.matched.iter().map(|r| r.name().to_owned()).collect();
            v.extend(m.fanned.iter().map(|(r, e)| format!("{}{e:?}", r.name())));
            v
        };
        assert_eq!(names(&n), names(&m));
        for (a, b) in set.rules().iter().zip(again.rules()) {
            assert_eq!(a.evaluate(&input), b.evaluate(&input));
            assert_eq!(
                a.render(&input).map_err(|e| e.to_string()),
                b.render(&input).map_err(|e| e.to_string())
            );
        }
    }
}

/// Numbers read back exactly as the YAML held them (the JSON float round trip).
#[test]
fn the_parsed_form_keeps_every_number_exactly() {
    let text = "name: n\non: t\naction: p.a\nwhen:\n  - {path: .detail.a, gt: 0.30000000000000004}\n  - {path: .detail.b, lt: 1.7976931348623157e308}\n  - {path: .detail.c, ge: 5e-324}\n  - {path: .detail.d, between: [-0.1, 18446744073709551615]}\n  - {path: .detail.e, in: [-9223372036854775808, 2.5e-8, .inf]}\n";
    let set = compile(&[("n.yaml", text)]).unwrap();
    let json = &set.parsed_json().unwrap()[0];
    let back: ParsedFile = serde_json::from_str(json).unwrap();
    assert_eq!(&serde_json::to_string(&back).unwrap(), json);
    assert!(json.contains("0.30000000000000004"), "{json}");
    assert!(json.contains("5e-324"), "{json}");
    assert!(json.contains("18446744073709551615"), "{json}");
}

/// A parsed form is checked as the text is: sizes, then every compile error with file, line
/// and rule (the line kept in the form).
#[test]
fn the_parsed_form_is_refused_as_the_text_is() {
    let text = "- name: ok\n  on: t\n  action: p.a\n- name: bad\n  on: t\n  action: p.b\n  when:\n    - {path: .detail.a, eqq: 1}\n";
    let sources = [RuleSource {
        path: "pipelines/bad.yaml".into(),
        text: text.into(),
    }];
    let from_text = RuleSet::compile(&sources).unwrap_err().to_string();
    assert!(
        from_text.contains("pipelines/bad.yaml:8: rule \"bad\": when[0]: unknown operator \"eqq\""),
        "{from_text}"
    );
    let parsed: ParsedFile = serde_json::from_str(
        r#"[[1, {"name": "ok", "on": "t", "action": "p.a"}], [4, {"name": "bad", "on": "t", "action": "p.b", "when": [{"path": ".detail.a", "eqq": 1}]}]]"#,
    )
    .unwrap();
    let from_form = RuleSet::compile_parsed(&sources, vec![parsed]).unwrap_err();
    assert_eq!(from_form.to_string(), from_text);

    let steps: Vec<serde_json::Value> = (0..300)
        .map(|_| serde_json::json!({"path": ".detail.a", "eq": 1}))
        .collect();
    let big = serde_json::json!([[1, {"name": "big", "on": "t", "action": "p.a", "when": steps}]]);
    let parsed: ParsedFile = serde_json::from_value(big).unwrap();
    let refused = RuleSet::compile_parsed(&sources, vec![parsed])
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(
            "pipelines/bad.yaml:1: rule \"big\": `when` has 300 steps, over the limit of 256"
        ),
        "{refused}"
    );
    // unknown fields are refused when the form is read, as in the text
    assert!(serde_json::from_str::<ParsedFile>(
        r#"[[1, {"name": "x", "on": "t", "action": "p.a", "wehn": []}]]"#
    )
    .is_err());
}
