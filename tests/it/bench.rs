//! `whale-bench pipeline` (the `whale-bench` package, beside `whale`) runs the real pipeline end
//! to end (its own servers and emulator) and reports complete, consistent figures in `--json`;
//! the figures themselves are measured, never asserted (they depend on the machine). The product
//! binary has no `bench` command.

use std::process::Command;

use crate::harness::*;

/// `whale-bench` with `args`, found beside the `whale` under test (see [`sibling_binary`]).
fn whale_bench(args: &[&str]) -> Command {
    let mut c = Command::new(sibling_binary("whale-bench"));
    c.args(args).env_remove("WHALE_CONFIG").current_dir(repo());
    c
}

fn bench(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["pipeline", "--json"];
    all.extend_from_slice(args);
    json_of(&all)
}

/// Runs `whale-bench args` (which must include `--json`); it must succeed and print JSON.
fn json_of(args: &[&str]) -> serde_json::Value {
    let out = whale_bench(args).output().expect("run whale-bench");
    assert!(
        out.status.success(),
        "whale-bench {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "whale-bench --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn check(r: &serde_json::Value, events: u64, expected: u64) {
    assert_eq!(r["complete"], true, "{r:#}");
    assert_eq!(r["published"], events, "{r:#}");
    assert_eq!(r["expected_executions"], expected, "{r:#}");
    assert_eq!(
        r["executions"], expected,
        "every matching event is one execution: {r:#}"
    );
    assert_eq!(r["latency_samples"], expected, "{r:#}");
    for k in [
        "events_per_s",
        "p50_ms",
        "p99_ms",
        "jetstream_bound_per_s",
        "efficiency",
    ] {
        assert!(
            r[k].as_f64().is_some_and(|v| v > 0.0),
            "{k} missing or zero: {r:#}"
        );
    }
    assert!(r["p50_ms"].as_f64() <= r["p99_ms"].as_f64());
    // The reference is measured before and after the pipeline; the bound is their mean.
    let bound_at = |when: &str| {
        let b = r[when]["jetstream_bound_per_s"].as_f64();
        assert!(b.is_some_and(|b| b > 0.0), "{when}: {r:#}");
        b.unwrap()
    };
    let mean = (bound_at("reference_before") + bound_at("reference_after")) / 2.0;
    for when in ["reference_before", "reference_after"] {
        for k in [
            "raw_publish_per_s",
            "raw_publish_record_per_s",
            "raw_consume_ack_per_s",
            "raw_consume_ack_queue_per_s",
            "raw_consume_ordered_per_s",
        ] {
            assert!(
                r[when][k].as_f64().is_some_and(|v| v > 0.0),
                "{when}.{k}: {r:#}"
            );
        }
    }
    let bound = r["jetstream_bound_per_s"].as_f64().unwrap();
    assert!(
        (bound - mean).abs() <= 1.0,
        "{bound} is not the mean {mean}: {r:#}"
    );
    // Counted on the server: at least ingest + accepted per event, and validate + match + index.
    assert!(
        r["js_publishes_per_event"].as_f64().unwrap() >= 2.0,
        "{r:#}"
    );
    assert!(r["js_consumes_per_event"].as_f64().unwrap() >= 3.0, "{r:#}");
    // The bound prices each delivery by how it is read: validate's and match's with an ack (their
    // durable consumers), the embedded index's in order without one (its own readers). Every
    // event is read once each way at least.
    let per = |k: &str| r[k].as_f64().unwrap();
    assert!(per("js_acked_consumes_per_event") >= 2.0, "{r:#}");
    assert!(per("js_unacked_consumes_per_event") >= 1.0, "{r:#}");
    // validate's reads come from the ingest work queue, where each ack also removes the message:
    // they are priced at the raw rate of that (below), the others at a plain consume+ack.
    let queue = per("js_acked_queue_consumes_per_event");
    assert!(
        queue >= 1.0 && queue <= per("js_acked_consumes_per_event") - 1.0,
        "{r:#}"
    );
    // Publishes are priced by the messages they carry: the events the bench publishes (and the
    // execution_finished events feedback publishes) to WHALE_INGEST as ingest messages, every
    // other one as a record (the envelope with the headers records carry).
    let ingest = per("js_ingest_publishes_per_event");
    assert!(
        ingest >= 1.0 && ingest <= per("js_publishes_per_event") - 1.0,
        "{r:#}"
    );
    for when in ["reference_before", "reference_after"] {
        let rate = |k: &str| r[when][k].as_f64().unwrap();
        let priced = 1.0
            / (ingest / rate("raw_publish_per_s")
                + (per("js_publishes_per_event") - ingest) / rate("raw_publish_record_per_s")
                + (per("js_acked_consumes_per_event") - queue) / rate("raw_consume_ack_per_s")
                + queue / rate("raw_consume_ack_queue_per_s")
                + per("js_unacked_consumes_per_event") / rate("raw_consume_ordered_per_s"));
        let bound = bound_at(when);
        // The counts per event are printed to two decimals, so allow a little.
        assert!(
            (priced - bound).abs() <= bound * 0.02,
            "{when}: {priced} priced from the printed rates, {bound} printed: {r:#}"
        );
    }
    assert!(
        (per("js_acked_consumes_per_event") + per("js_unacked_consumes_per_event")
            - per("js_consumes_per_event"))
        .abs()
            <= 0.011,
        "{r:#}"
    );
    let hops = r["hops_ms"].as_array().unwrap();
    assert_eq!(hops.len(), 5, "{r:#}");
    assert!(hops.iter().all(|h| h["n"] == expected), "{r:#}");
    let procs = r["processes"].as_array().unwrap();
    for name in ["nats-server", "redis-server", "st2-emulator"] {
        assert!(procs.iter().any(|p| p["process"] == name), "{name}: {r:#}");
    }
}

#[test]
fn pipeline_bench_one_process_at_a_fixed_rate() {
    let r = bench(&[
        "--events",
        "3000",
        "--rate",
        "1000",
        "--match-fraction",
        "0.1",
        "--rules",
        "200",
        "--types",
        "20",
    ]);
    check(&r, 3000, 300);
    assert_eq!(r["procs"], "one");
}

#[test]
fn pipeline_bench_split_with_two_validate_copies() {
    let r = bench(&[
        "--events",
        "2000",
        "--match-fraction",
        "0.05",
        "--rules",
        "100",
        "--types",
        "10",
        "--procs",
        "split",
        "--copies",
        "validate=2",
    ]);
    check(&r, 2000, 100);
    let procs = r["processes"].as_array().unwrap();
    for name in [
        "validate#1",
        "validate#2",
        "index#1",
        "match#1",
        "dispatch#1",
        "feedback#1",
    ] {
        assert!(procs.iter().any(|p| p["process"] == name), "{name}: {r:#}");
    }
}

#[test]
fn pipeline_bench_refuses_bad_options_clearly() {
    let out = whale_bench(&["pipeline", "--copies", "nosuch=2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    let out = whale_bench(&["pipeline", "--rules", "10", "--types", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rules"));
    let out = whale_bench(&["pipeline", "--stages", "validate,nosuch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown stage \"nosuch\""));
}

#[test]
fn the_product_binary_has_no_bench_command() {
    let out = Env::new().whale(&["bench", "pipeline"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand 'bench'"));
}

/// `whale-bench scale` works through the whole backlog in each of its three rounds (1 process,
/// 2 processes, 1 process with 2 loops) and prints its in-process reference beside them.
#[test]
fn scale_bench_works_through_the_backlog_in_every_round() {
    for shape in ["jq", "regex"] {
        let args = [
            "scale", "--json", "--shape", shape, "--rules", "20", "--types", "2", "--events", "300",
        ];
        let r = json_of(&args);
        assert!(
            r["rule_shape"].as_str().unwrap().starts_with(shape),
            "{r:#}"
        );
        let rounds = r["rounds"].as_array().unwrap();
        let shapes: Vec<(u64, u64)> = rounds
            .iter()
            .map(|x| {
                (
                    x["processes"].as_u64().unwrap(),
                    x["loops_per_process"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(shapes, [(1, 1), (2, 1), (1, 2)], "{r:#}");
        for round in rounds {
            assert_eq!(round["events"], 300, "the whole backlog: {r:#}");
            assert!(round["events_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
            assert_eq!(
                round["per_process"].as_array().unwrap().len() as u64,
                round["processes"].as_u64().unwrap(),
                "{r:#}"
            );
        }
        for k in ["scale_factor", "concurrency_scale_factor"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r:#}");
        }
        let re = &r["in_process_reference"];
        assert_eq!(re["threads"], 2, "{r:#}");
        for k in [
            "one_thread_events_per_s",
            "shared_set_events_per_s",
            "own_sets_events_per_s",
        ] {
            assert!(re[k].as_f64().unwrap() > 0.0, "{k}: {r:#}");
        }
    }
}

/// `whale-bench validate` moves every event through and measures its raw reference before and
/// after the stage runs, the bound being the mean of both (as the pipeline bench does).
#[test]
fn validate_bench_measures_its_reference_before_and_after() {
    let r = json_of(&["validate", "--json", "--events", "2000"]);
    assert_eq!(r["events"], 2000, "{r:#}");
    assert!(r["validate_events_per_s"].as_f64().unwrap() > 0.0, "{r:#}");
    let bound_at = |when: &str| r[when]["jetstream_bound_per_s"].as_f64().unwrap();
    let mean = (bound_at("reference_before") + bound_at("reference_after")) / 2.0;
    assert!(bound_at("reference_before") > 0.0 && bound_at("reference_after") > 0.0);
    assert!(
        (r["jetstream_bound_per_s"].as_f64().unwrap() - mean).abs() <= 1.0,
        "{r:#}"
    );
    // validate reads the ingest work queue and publishes records: its bound is one such
    // consume+ack and one publish of a record.
    for when in ["reference_before", "reference_after"] {
        let rate = |k: &str| r[when][k].as_f64().unwrap();
        let priced = 1.0
            / (1.0 / rate("raw_publish_record_per_s") + 1.0 / rate("raw_consume_ack_queue_per_s"));
        assert!(
            (priced - bound_at(when)).abs() <= 1.0,
            "{when}: {priced} priced, {} printed: {r:#}",
            bound_at(when)
        );
    }
}
