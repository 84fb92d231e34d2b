//! Matching benchmark: 10, 100, 1,000 and 10,000 rules over 100 event types, single thread.
//! Prints rule set load+compile time (wall) and events per CPU-second of the benchmark thread
//! for matching (events parsed beforehand) and for parse+match (JSON bytes in). Run with
//! `cargo bench -p whale-rules --bench match` (`BENCH_SIZES=1000` for one size,
//! `BENCH_ONE_TYPE=1000,10000` for the one-type sizes, `BENCH_COMPILE=10000,50000` for the
//! compile-by-layout sizes, `BENCH_SECS=3` per measurement; an empty list skips a table).
//! Every figure is printed beside the linear evaluation of the same set in the same run
//! ([`RuleSet::match_event_linear`], no equality index): the reference.
//!
//! The rule mix: every rule compares paths (eq, gt, in, starts_with...); about 15% add a regex
//! step and 15% a jq predicate (a third of those share their source with another rule); every
//! rule has templated params, a throttle key and a route. Events carry a random type out of
//! 100, so each event meets about rules/100 rules.
//!
//! The one-type shape (issue 16): 1,000 or 10,000 rules on one event type, each
//! `env == prod`, `usage_pct > 90`, `app == appK` (they differ by `app`); events carry a random
//! env, usage and app, so each one is tested by one rule's app (about 3% match).

use std::hint::black_box;
use std::time::{Duration, Instant};
use whale_rules::{Input, RuleSet, RuleSource};

const TYPES: usize = 100;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rule_yaml(i: usize, rng: &mut Rng) -> String {
    let t = i % TYPES;
    let env = ["prod", "staging", "dev"][rng.below(3) as usize];
    let threshold = 50 + rng.below(45);
    let mut when = format!(
        "    - {{path: .detail.env, eq: {env}}}\n    - {{path: .detail.usage_pct, gt: {threshold}}}\n"
    );
    match rng.below(20) {
        0..=2 => when.push_str(&format!(
            "    - {{path: .detail.host, regex: '^web-{}\\d+$'}}\n",
            rng.below(3)
        )),
        3..=5 => {
            let k = if rng.below(3) == 0 { 0 } else { i };
            when.push_str(&format!(
                "    - jq: '.detail.mounts | any(.path == \"/data{k}\" or .free_pct < 5)'\n"
            ))
        }
        6..=9 => {
            when.push_str("    - {path: .detail.region, in: [eu-west-1, us-east-1, ap-south-1]}\n")
        }
        10..=12 => when.push_str("    - {path: .detail.host, starts_with: web-}\n"),
        13 => when.push_str("    - {path: .detail.ip, cidr: [10.0.0.0/8, 192.168.0.0/16]}\n"),
        _ => {}
    }
    let on = if i.is_multiple_of(97) {
        format!("svc{t}.*")
    } else {
        format!("svc{t}.alert")
    };
    format!(
        "- name: rule-{i}\n  on: [{on}]\n  when:\n{when}  action: ops.act{}\n  params:\n    host: \"{{{{ .detail.host }}}}\"\n    \
         note: \"{{{{ .detail.usage_pct }}}}% on {{{{ .detail.host }}}}\"\n    level: {}\n  \
         throttle: {{key: \"{{{{ .detail.host }}}}\", limit: 1, per: 10m}}\n  route: \"{{{{ .labels.biz // \\\"default\\\" }}}}\"\n",
        i % 7,
        rng.below(5)
    )
}

fn sources(n: usize) -> Vec<RuleSource> {
    let mut rng = Rng(0x9e3779b97f4a7c15 ^ n as u64);
    let per_file = 10;
    (0..n.div_ceil(per_file))
        .map(|f| {
            let text: String = (f * per_file..((f + 1) * per_file).min(n))
                .map(|i| rule_yaml(i, &mut rng))
                .collect();
            RuleSource {
                path: format!("pipelines/gen-{f:04}.yaml"),
                text,
            }
        })
        .collect()
}

fn events(count: usize) -> Vec<serde_json::Value> {
    let mut rng = Rng(42);
    (0..count)
        .map(|i| {
            let t = rng.below(TYPES as u64);
            let env = ["prod", "staging", "dev"][rng.below(3) as usize];
            let region = ["eu-west-1", "us-east-1", "ap-south-1", "sa-east-1"][rng.below(4) as usize];
            serde_json::json!({
                "id": format!("01JDX3Q5M7{i:08}"),
                "event_type": format!("svc{t}.alert"),
                "source": "prometheus/alertmanager",
                "time": "2026-11-28T01:00:00Z",
                "detail": {
                    "host": format!("web-{}{}", rng.below(3), rng.below(100)),
                    "usage_pct": rng.below(100),
                    "env": env,
                    "region": region,
                    "ip": format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.below(256)),
                    "mounts": [{"path": "/", "free_pct": rng.below(50)}, {"path": format!("/data{}", rng.below(1000)), "free_pct": rng.below(50)}],
                },
                "labels": {"biz": "trade"}
            })
        })
        .collect()
}

/// CPU time used by this thread, in seconds (Linux; 10 ms resolution). On a machine shared
/// with other work, items per CPU-second is the per-core figure; wall time is not.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Run `f` over `n` items repeatedly for at least `min`; items per CPU-second (per wall
/// second where CPU time is not available).
fn throughput(n: usize, min: Duration, mut f: impl FnMut() -> u64) -> f64 {
    let (start, cpu_start) = (Instant::now(), thread_cpu_seconds());
    let (mut rounds, mut checksum) = (0u64, 0u64);
    while start.elapsed() < min || rounds == 0 {
        checksum = checksum.wrapping_add(f());
        rounds += 1;
    }
    black_box(checksum);
    let secs = match (cpu_start, thread_cpu_seconds()) {
        (Some(a), Some(b)) if b - a >= 0.5 => b - a,
        _ => start.elapsed().as_secs_f64(),
    };
    (n as u64 * rounds) as f64 / secs
}

fn one_type_sources(n: usize) -> Vec<RuleSource> {
    let per_file = 100;
    (0..n.div_ceil(per_file))
        .map(|f| {
            let text: String = (f * per_file..((f + 1) * per_file).min(n))
                .map(|k| {
                    format!(
                        "- name: disk-{k}\n  on: [vm.disk_usage]\n  when:\n    - {{path: .detail.env, eq: prod}}\n    \
                         - {{path: .detail.usage_pct, gt: 90}}\n    - {{path: .detail.app, eq: app{k}}}\n  \
                         action: ops.clean_disk\n  params:\n    host: \"{{{{ .detail.host }}}}\"\n"
                    )
                })
                .collect();
            RuleSource {
                path: format!("pipelines/one-{f:04}.yaml"),
                text,
            }
        })
        .collect()
}

fn one_type_events(count: usize, apps: usize) -> Vec<serde_json::Value> {
    let mut rng = Rng(7);
    (0..count)
        .map(|i| {
            let env = ["prod", "staging", "dev"][rng.below(3) as usize];
            serde_json::json!({
                "id": format!("01JDX3Q5M7{i:08}"),
                "event_type": "vm.disk_usage",
                "source": "prometheus/alertmanager",
                "time": "2026-11-28T01:00:00Z",
                "detail": {
                    "host": format!("web-{}", rng.below(100)),
                    "usage_pct": rng.below(100),
                    "env": env,
                    "app": format!("app{}", rng.below(apps as u64)),
                },
                "labels": {"biz": "trade"}
            })
        })
        .collect()
}

/// Match-only and parse+match rates of `set` over `evs`, indexed or linear.
fn rates(
    set: &RuleSet,
    evs: &[serde_json::Value],
    linear: bool,
    min: Duration,
) -> (f64, f64, f64, f64) {
    let one = |input: &Input| {
        if linear {
            set.match_event_linear(input)
        } else {
            set.match_event(input)
        }
    };
    let inputs: Vec<Input> = evs.iter().cloned().map(Input::new).collect();
    let bytes: Vec<Vec<u8>> = evs
        .iter()
        .map(|e| serde_json::to_vec(e).expect("json"))
        .collect();
    let (mut met, mut matched) = (0u64, 0u64);
    for input in &inputs {
        let m = one(input);
        met += m.candidates as u64;
        matched += m.matched.len() as u64;
    }
    let match_rate = throughput(inputs.len(), min, || {
        let mut hits = 0u64;
        for input in &inputs {
            hits += black_box(one(input)).matched.len() as u64;
        }
        hits
    });
    let parse_rate = throughput(bytes.len(), min, || {
        let mut hits = 0u64;
        for b in &bytes {
            let input = Input::new(serde_json::from_slice(b).expect("json"));
            hits += black_box(one(&input)).matched.len() as u64;
        }
        hits
    });
    (
        match_rate,
        parse_rate,
        met as f64 / evs.len() as f64,
        matched as f64 / evs.len() as f64,
    )
}

/// Compile time of large sets by file layout (issue 16: it was quadratic in the rules of one
/// file), beside the same run's reference: parsing the same YAML bytes into plain values
/// (serde_yaml_ng, no rules), which is linear by construction.
fn compile_by_layout(sizes: &[usize]) {
    if sizes.is_empty() {
        return;
    }
    println!();
    println!("compile time by file layout (same rules; reference: YAML parse of the same bytes)");
    println!(
        "{:>7} {:>14} {:>9} {:>14} {:>16} {:>8}",
        "rules", "layout", "MB", "compile ms", "yaml parse ms", "ratio"
    );
    for &n in sizes {
        let many = sources(n);
        let one = vec![RuleSource {
            path: "pipelines/all.yaml".into(),
            text: many.iter().map(|s| s.text.as_str()).collect(),
        }];
        for (layout, srcs) in [("one file", &one), ("10 per file", &many)] {
            let bytes: usize = srcs.iter().map(|s| s.text.len()).sum();
            let start = Instant::now();
            let set = RuleSet::compile(srcs).expect("generated rules compile");
            let compile = start.elapsed();
            black_box(&set);
            let start = Instant::now();
            for s in srcs.iter() {
                let v: serde_yaml_ng::Value =
                    serde_yaml_ng::from_str(&s.text).expect("generated YAML parses");
                black_box(v);
            }
            let yaml = start.elapsed();
            println!(
                "{:>7} {:>14} {:>9.1} {:>14.0} {:>16.0} {:>8.1}",
                n,
                layout,
                bytes as f64 / 1e6,
                compile.as_secs_f64() * 1e3,
                yaml.as_secs_f64() * 1e3,
                compile.as_secs_f64() / yaml.as_secs_f64().max(1e-9)
            );
        }
    }
}

fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    let min = Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let evs = events(20_000);
    println!(
        "whale-rules match benchmark: {} events over {TYPES} event types, single thread",
        evs.len()
    );
    println!(
        "{:>7} {:>14} {:>12} {:>8} {:>14} {:>18} {:>12} {:>10} | {:>16} {:>18} {:>12}",
        "rules",
        "load+compile",
        "(cpu)",
        "filters",
        "match ev/s",
        "parse+match ev/s",
        "rules/event",
        "matches/ev",
        "linear match/s",
        "linear parse+m/s",
        "rules/event"
    );
    // BENCH_SIZES=1000 runs one size only
    for n in sizes("BENCH_SIZES", &[10, 100, 1_000, 10_000]) {
        let srcs = sources(n);
        let (start, cpu_start) = (Instant::now(), thread_cpu_seconds());
        let set = RuleSet::compile(&srcs).expect("generated rules compile");
        let load = start.elapsed();
        let load_cpu = cpu_start.zip(thread_cpu_seconds()).map(|(a, b)| b - a);

        let (match_rate, parse_rate, met, matched) = rates(&set, &evs, false, min);
        // the linear reference on a slice small enough to finish quickly
        let ref_evs = &evs[..(20_000_000 / n.max(1)).clamp(1000, evs.len())];
        let (lin_match, lin_parse, lin_met, _) = rates(&set, ref_evs, true, min);
        println!(
            "{:>7} {:>12.1}ms {:>10}ms {:>8} {:>14.0} {:>18.0} {:>12.1} {:>10.2} | {:>16.0} {:>18.0} {:>12.1}",
            n,
            load.as_secs_f64() * 1e3,
            load_cpu.map_or("?".into(), |c| format!("{:.0}", c * 1e3)),
            set.filters_compiled(),
            match_rate,
            parse_rate,
            met,
            matched,
            lin_match,
            lin_parse,
            lin_met
        );
    }

    println!();
    println!("one event type, each rule env == prod, usage_pct > 90, app == appK (issue 16)");
    println!(
        "{:>7} {:>14} {:>14} {:>18} {:>12} {:>10} | {:>16} {:>18} {:>12}",
        "rules",
        "load+compile",
        "match ev/s",
        "parse+match ev/s",
        "rules/event",
        "matches/ev",
        "linear match/s",
        "linear parse+m/s",
        "rules/event"
    );
    for n in sizes("BENCH_ONE_TYPE", &[1_000, 10_000]) {
        let srcs = one_type_sources(n);
        let start = Instant::now();
        let set = RuleSet::compile(&srcs).expect("generated rules compile");
        let load = start.elapsed();
        let evs = one_type_events(20_000, n);
        let (match_rate, parse_rate, met, matched) = rates(&set, &evs, false, min);
        let ref_evs = &evs[..(20_000_000 / n.max(1)).clamp(1000, evs.len())];
        let (lin_match, lin_parse, lin_met, _) = rates(&set, ref_evs, true, min);
        println!(
            "{:>7} {:>12.1}ms {:>14.0} {:>18.0} {:>12.1} {:>10.3} | {:>16.0} {:>18.0} {:>12.1}",
            n,
            load.as_secs_f64() * 1e3,
            match_rate,
            parse_rate,
            met,
            matched,
            lin_match,
            lin_parse,
            lin_met
        );
    }

    compile_by_layout(&sizes("BENCH_COMPILE", &[10_000, 50_000]));
}
