//! Reading rule files: YAML text to raw rule structs, one file holding one rule, a list of
//! rules, or several `---` documents. Unknown fields are refused here (serde's
//! `deny_unknown_fields`), with the line serde_yaml reports; everything that needs more than
//! the shape of the data is checked later, in `compile.rs`.
//!
//! Size is checked here too, before anything is compiled ([`FileLimits`]): bytes per file,
//! rules per file, steps per rule, nesting of `when` and `params`, length of every string (each
//! may be a template). serde_yaml_ng itself refuses YAML nested deeper than 128 levels and
//! alias expansion bombs ("billion laughs"); the tests in `tests/it/limits.rs` hold both.

use crate::error::RuleError;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The size limits of one rule file. Rule files are written by operators, so these guard
/// against mistakes and generated files gone wrong rather than attackers; they keep compiling
/// and matching a rule set cheap and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLimits {
    /// Largest rule file, in bytes.
    pub max_file_bytes: usize,
    /// Most rules in one file (over all its `---` documents).
    pub max_rules_per_file: usize,
    /// Most steps in one rule's `when`, counting the steps inside `any`/`all`/`not`.
    pub max_steps_per_rule: usize,
    /// Deepest nesting of a value inside `when` or `params` (a list or mapping is one level).
    pub max_depth: usize,
    /// Longest string anywhere in a rule (templates, jq text, operands), in bytes. jq programs
    /// have their own, lower limit (4 KiB) when they are compiled.
    pub max_string_bytes: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            // Generated sets (one rule per host or service) come as one big file as often as
            // many small ones; compiling is linear in the rules, so one file may hold a whole
            // large set. The store splits files into chunks below NATS's message limit.
            max_file_bytes: 32 << 20,
            max_rules_per_file: 50_000,
            max_steps_per_rule: 256,
            max_depth: 32,
            max_string_bytes: 16 << 10,
        }
    }
}

/// A rule as written in the file. It also serializes (to JSON, defaults left out), for the
/// parsed form the store keeps beside the text ([`ParsedFile`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    pub on: OneOrMany,
    /// jq: one run of the rule per output, the output bound as `$item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<serde_json::Value>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<RawThrottle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<RawApproval>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub result_event: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `on: vm.disk_usage` or `on: [vm.disk_usage, vm.*]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged, expecting = "an event type or a list of event types")]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThrottle {
    #[serde(default)]
    pub key: Option<String>,
    pub limit: u64,
    pub per: DurationSpec,
    #[serde(default)]
    pub burst: u64,
    #[serde(default)]
    pub mode: crate::ThrottleMode,
    #[serde(default)]
    pub fail_open: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApproval {
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    #[serde(default)]
    pub channel: Option<String>,
}

/// `10m`, `1h30m`, `45s` (humantime), or a number of seconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "a duration such as 10s, 10m, 1h, or a number of seconds"
)]
pub(crate) enum DurationSpec {
    Seconds(u64),
    Text(String),
}

impl DurationSpec {
    pub fn to_duration(&self) -> Result<Duration, String> {
        match self {
            DurationSpec::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationSpec::Text(t) => humantime::parse_duration(t.trim())
                .map_err(|e| format!("invalid duration {t:?}: {e} (write e.g. 10s, 10m, 1h)")),
        }
    }
}

/// The rules of one YAML document: a mapping is one rule, a sequence is a list of rules.
struct Doc(Vec<RawRule>);

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule (a mapping with name, on, action, ...) or a list of rules")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Doc, A::Error> {
                RawRule::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|r| Doc(vec![r]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Doc, A::Error> {
                Vec::<RawRule>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Doc)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
                Ok(Doc(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
                Ok(Doc(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A parsed rule and the 1-based line where its `name` is written.
pub(crate) struct Located {
    pub rule: RawRule,
    pub line: Option<usize>,
}

/// The rules of one file as read from its YAML (shape and sizes checked, nothing compiled),
/// each with the line of its `name`. The store keeps it as JSON beside the file's text
/// ([`crate::RuleSet::parsed_json`]) so that a worker compiles a stored set without parsing
/// the YAML again ([`crate::RuleSet::compile_parsed`]): reading YAML was two thirds of
/// compiling a large set, reading JSON is a fraction of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParsedFile(Vec<(Option<usize>, RawRule)>);

impl ParsedFile {
    /// The rules, their sizes checked again against `limits` (the form may come from anywhere
    /// the store's readers can write).
    pub(crate) fn into_located(
        self,
        path: &str,
        limits: &FileLimits,
    ) -> Result<Vec<Located>, RuleError> {
        let refuse = |line: Option<usize>, rule: &str, message: String| RuleError {
            file: path.to_owned(),
            line,
            rule: Some(rule.to_owned()),
            message,
        };
        if let Some((line, rule)) = self.0.get(limits.max_rules_per_file) {
            return Err(refuse(
                *line,
                &rule.name,
                format!(
                    "more than {} rules in one file (the limit of rules per file): split it into several files",
                    limits.max_rules_per_file
                ),
            ));
        }
        self.0
            .into_iter()
            .map(|(line, rule)| {
                check_size(&rule, limits).map_err(|m| refuse(line, &rule.name, m))?;
                Ok(Located { rule, line })
            })
            .collect()
    }
}

/// The JSON of a file's parsed rules, in the form [`ParsedFile`] reads (written from
/// references: nothing is copied).
pub(crate) fn parsed_json(rules: &[Located]) -> Result<String, serde_json::Error> {
    let pairs: Vec<(Option<usize>, &RawRule)> = rules.iter().map(|l| (l.line, &l.rule)).collect();
    serde_json::to_string(&pairs)
}

/// Parse every document of a file. Stops at the first YAML or shape error (serde cannot
/// resynchronise inside a document).
pub(crate) fn parse_file(path: &str, text: &str) -> Result<Vec<Located>, RuleError> {
    parse_file_with(path, text, &FileLimits::default())
}

/// [`parse_file`] with explicit limits.
pub(crate) fn parse_file_with(
    path: &str,
    text: &str,
    limits: &FileLimits,
) -> Result<Vec<Located>, RuleError> {
    let refuse = |line: Option<usize>, rule: Option<&str>, message: String| RuleError {
        file: path.to_owned(),
        line,
        rule: rule.map(str::to_owned),
        message,
    };
    if text.len() > limits.max_file_bytes {
        return Err(refuse(
            None,
            None,
            format!(
                "the file is {} bytes, over the limit of {} bytes per rule file: split it into several files",
                text.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let mut out = Vec::new();
    let lines = Lines::new(text);
    let mut names = NameLines::default();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let Doc(rules) = Doc::deserialize(doc).map_err(|e| yaml_error(path, text, &e))?;
        for rule in rules {
            let line = names.find(&lines, &rule.name);
            if out.len() == limits.max_rules_per_file {
                return Err(refuse(
                    line,
                    Some(&rule.name),
                    format!(
                        "more than {} rules in one file (the limit of rules per file): split it into several files",
                        limits.max_rules_per_file
                    ),
                ));
            }
            check_size(&rule, limits).map_err(|m| refuse(line, Some(&rule.name), m))?;
            out.push(Located { rule, line });
        }
    }
    Ok(out)
}

/// Steps, nesting and string lengths of one rule against `limits`.
fn check_size(rule: &RawRule, limits: &FileLimits) -> Result<(), String> {
    let mut steps = 0usize;
    for step in &rule.when {
        count_steps(step, &mut steps);
    }
    if steps > limits.max_steps_per_rule {
        return Err(format!(
            "`when` has {steps} steps, over the limit of {} steps per rule: split the rule or simplify it",
            limits.max_steps_per_rule
        ));
    }
    let params = rule.params.iter();
    for (field, v) in rule
        .when
        .iter()
        .map(|v| ("when", v))
        .chain(params.map(|v| ("params", v)))
    {
        if let Some(depth) = too_deep(v, limits.max_depth) {
            return Err(format!(
                "`{field}` is nested {depth} levels deep, over the limit of {}: flatten it",
                limits.max_depth
            ));
        }
    }
    let mut strings: Vec<(&str, &str)> = vec![("name", &rule.name), ("action", &rule.action)];
    strings.extend(rule.description.as_deref().map(|s| ("description", s)));
    strings.extend(rule.route.as_deref().map(|s| ("route", s)));
    strings.extend(rule.for_each.as_deref().map(|s| ("for_each", s)));
    strings.extend(
        rule.throttle
            .as_ref()
            .and_then(|t| t.key.as_deref())
            .map(|s| ("throttle.key", s)),
    );
    let mut nested = Vec::new();
    for (field, v) in rule
        .when
        .iter()
        .map(|v| ("when", v))
        .chain(rule.params.iter().map(|v| ("params", v)))
    {
        collect_strings(v, field, &mut nested);
    }
    for (field, s) in strings.into_iter().chain(nested) {
        if s.len() > limits.max_string_bytes {
            return Err(format!(
                "a string in `{field}` is {} bytes, over the limit of {} bytes per string (templates and jq included): shorten it",
                s.len(),
                limits.max_string_bytes
            ));
        }
    }
    Ok(())
}

/// Counts a step and the steps inside its `any`, `all` and `not`.
fn count_steps(step: &serde_json::Value, n: &mut usize) {
    *n += 1;
    if let serde_json::Value::Object(o) = step {
        for key in ["any", "all", "not"] {
            match o.get(key) {
                Some(serde_json::Value::Array(inner)) => {
                    inner.iter().for_each(|s| count_steps(s, n));
                }
                Some(inner @ serde_json::Value::Object(_)) => count_steps(inner, n),
                _ => {}
            }
        }
    }
}

/// The depth of `v` if it is over `max` (iterative: the value may be deep).
fn too_deep(v: &serde_json::Value, max: usize) -> Option<usize> {
    let mut stack = vec![(v, 1usize)];
    let mut deepest = 0;
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    (deepest > max).then_some(deepest)
}

/// Every string (keys included) inside `v`.
fn collect_strings<'a>(
    v: &'a serde_json::Value,
    field: &'static str,
    out: &mut Vec<(&'static str, &'a str)>,
) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => out.push((field, s)),
            serde_json::Value::Array(a) => stack.extend(a.iter()),
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    out.push((field, k));
                    stack.push(x);
                }
            }
            _ => {}
        }
    }
}

fn yaml_error(path: &str, text: &str, e: &serde_yaml_ng::Error) -> RuleError {
    let line = e.location().map(|l| l.line());
    let mut message = e.to_string();
    // the line is reported in front; drop serde_yaml's " at line N column M" when it is the same
    if let Some(l) = line {
        let marker = format!(" at line {l} column ");
        if let Some(at) = message.find(&marker) {
            let end = message[at + marker.len()..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(message.len(), |i| at + marker.len() + i);
            message.replace_range(at..end, "");
        }
    }
    let hint = if message.contains("unknown field") {
        " (check the spelling; see the rule format)"
    } else if message.contains("did not find expected ','") {
        " (inside { } and [ ], quote values that contain [ ] { } or commas, e.g. paths with indices)"
    } else {
        ""
    };
    let rule = line.and_then(|l| rule_name_before(text, l));
    RuleError {
        file: path.to_owned(),
        line,
        rule,
        message: format!("{message}{hint}"),
    }
}

/// The value of the nearest `name:` at or above `line` (for errors before a rule is parsed).
fn rule_name_before(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    lines.iter().rev().find_map(|l| {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        let v = t.strip_prefix("name:")?.trim();
        let v = v.split(" #").next().unwrap_or(v).trim();
        Some(v.trim_matches(|c| c == '"' || c == '\'').to_owned()).filter(|v| !v.is_empty())
    })
}

/// The lines of a rule file, split once: line lookups index into them instead of walking the
/// text from its start for every rule (which made a file of many rules compile in quadratic
/// time).
pub(crate) struct Lines<'a>(Vec<&'a str>);

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Lines<'a> {
        Lines(text.lines().collect())
    }

    /// The first line at or after `from` (1-based) that contains `needle`.
    pub(crate) fn find(&self, from: usize, needle: &str) -> Option<usize> {
        if needle.is_empty() {
            return None;
        }
        let first = needle.lines().next().unwrap_or(needle).trim();
        let start = from.saturating_sub(1).min(self.0.len());
        self.0[start..]
            .iter()
            .position(|l| l.contains(first))
            .map(|i| start + i + 1)
    }
}

/// Finds the line of each rule's `name:` in a file, remembering the lines already given to a
/// rule. Rules come in file order, so the search starts after the last line found (linear over
/// the file); only a name written before that (never in a well-formed file) is looked for from
/// the top.
#[derive(Default)]
struct NameLines {
    next: usize,
    used: std::collections::HashSet<usize>,
}

impl NameLines {
    fn find(&mut self, lines: &Lines<'_>, name: &str) -> Option<usize> {
        let line = self
            .search(lines, name, self.next)
            .or_else(|| self.search(lines, name, 0))?;
        self.used.insert(line);
        self.next = self.next.max(line);
        Some(line)
    }

    /// The first line after index `from` (0-based) holding `name: <name>` not used yet.
    fn search(&self, lines: &Lines<'_>, name: &str, from: usize) -> Option<usize> {
        lines.0.iter().enumerate().skip(from).find_map(|(i, l)| {
            let n = i + 1;
            let at = l.find("name:")?;
            let rest = l[at + 5..].trim_start().trim_start_matches(['"', '\'']);
            let ok = rest.starts_with(name)
                && !rest[name.len()..]
                    .starts_with(|c: char| c.is_alphanumeric() || "_.-".contains(c));
            (ok && !self.used.contains(&n)).then_some(n)
        })
    }
}
