//! whale rules: the rule file format, compiling a directory of rules into a [`RuleSet`],
//! matching events, rendering tasks, and testing rules offline. Pure library: the only I/O is
//! [`RuleSet::load_dir`] reading rule files.
//!
//! # Use
//!
//! - [`RuleSet::load_dir`] / [`RuleSet::compile`]: parse and compile every rule, or refuse the
//!   set with every error ([`RuleErrors`]); [`RuleSet::version`] is a hash of the sources.
//! - [`RuleSet::match_event`]: the match stage's hot path, the rules an event matches (sharing
//!   path lookups between rules, skipping rules by their equality tests: see "Matching
//!   index"); [`RuleSet::rules_for`]: the rules listening to a type.
//! - [`CompiledRule::evaluate`] (why not), [`CompiledRule::render`] (the task).
//! - [`test_events`] and [`format_human`]: `whale rules test`.
//!
//! # Rule files
//!
//! Rules are YAML files in a directory (`pipelines/*.yaml` and `*.yml`, read in file name
//! order). A file holds one rule (a mapping), a list of rules (a sequence), or several YAML
//! documents separated by `---`, each one rule or a list. Unknown fields are refused.
//!
//! ```yaml
//! name: disk-full-cleanup                   # required; unique in the set; [A-Za-z0-9_.-]+
//! description: Clean temp files when a production VM disk passes 90%
//! enabled: true                             # default true; disabled rules are checked, never run
//! on: [vm.disk_usage]                       # event types: exact, or globs (vm.*); one or a list
//! for_each: .detail.alerts[]                # optional: once per output, bound as $item (below)
//! when:                                     # every step must pass (an empty list always matches)
//!   - { path: .detail.env, eq: prod }
//!   - { path: .detail.usage_pct, gt: 90 }
//!   - { path: .detail.host, regex: '^web-\d+$' }
//!   - jq: '.detail.mounts | any(.path == "/data")'
//! action: ops.clean_disk                    # StackStorm action ref, pack.action
//! params:                                   # every string is a template (see below)
//!   host: "{{ .detail.host }}"
//!   messages: "{{ .detail.msg }}"           # a lone {{ expr }} keeps the JSON type: an array here
//!   note: "{{ .detail.usage_pct }}% on {{ .detail.host }}"   # mixed text: a string
//!   default2: [1, 2, 3]                     # literals pass through
//! throttle:
//!   key: "{{ .detail.app }}_{{ .detail.host }}"  # default: the rule name (one bucket)
//!   limit: 1                                # tasks allowed ...
//!   per: 10m                                # ... per period (10s, 10m, 1h, 1h30m, or seconds)
//!   burst: 0                                # extra tasks allowed at once (default 0)
//!   mode: rate                              # rate (token bucket) | once_within
//!   fail_open: false                        # dispatch when the throttle store is down
//! route: "{{ .labels.biz // \"default\" }}"  # StackStorm cluster; must render to a string
//! approval: { required: true, timeout: 30m, channel: oncall }
//! notify: [oncall]                          # channels told about the result
//! result_event: false                       # publish the execution result as an event
//! ```
//!
//! Rules and templates see the whole event envelope: `.id`, `.event_type`, `.source`, `.time`,
//! `.detail.*`, `.labels.*`.
//!
//! # Steps
//!
//! - `{path: P, <operator>: operand}`: `P` is a simple path: `.detail.host`, `.labels.biz`,
//!   `.detail.items[0].name`, `.detail["odd key"]`, `.items[-1]`; evaluated natively.
//! - `{jq: 'predicate'}`: passes iff the first output is neither `false` nor `null` (no output
//!   is false). An error counts as false and is reported in [`Evaluation::jq_errors`].
//! - `{any: [steps]}` (at least one passes), `{all: [steps]}` (every one passes),
//!   `{not: step}` or `{not: [steps]}` (not all of them pass). Groups nest.
//!
//! A missing field makes every comparison false (explicit `null` is a present value); only
//! `exists`/`not_exists` look at absence. Numbers compare as numbers (`1` equals `1.0`). A
//! value of another type than the operand — `"90"` against `90`, a number against a string
//! pattern — makes the step false and is counted in [`Evaluation::type_mismatches`].
//!
//! | operator | operand | passes when the value ... |
//! |---|---|---|
//! | `eq`, `ne` | any JSON value | equals / differs (same type required) |
//! | `gt`, `ge`, `lt`, `le` | number or string | compares so (numbers numerically, strings by code point) |
//! | `in`, `not_in` | list | equals one / none of the list |
//! | `contains`, `not_contains` | value | string: has the substring; array: has an equal element |
//! | `starts_with`/`prefix`, `ends_with`/`suffix` | string | string with that prefix / suffix |
//! | `regex`, `iregex` | regex (Rust syntax) | matches anywhere (anchor with `^...$`); `iregex` ignores case |
//! | `exists`, `not_exists` | `true`/`false` | is present / absent |
//! | `numeric` (alias `range`) | `[">=", 0, "<", 100]` | number satisfying every (comparison, bound) pair; comparisons `>`, `>=`, `<`, `<=`, `=` |
//! | `between` | `[low, high]` | number with low <= value <= high |
//! | `anything_but` | value, list, `{prefix: s}` or `{suffix: s}` | is present and none of those (EventBridge anything-but) |
//! | `cidr` | `"10.0.0.0/8"` or a list; IPv4 and IPv6 | string IP address inside one of the networks (a bare IP means that address) |
//! | `equals_ignore_case` | string | string equal ignoring case (Unicode) |
//! | `wildcard` | `"web-*.prod"` | string matching the pattern; `*` matches any run of characters, nothing else is special |
//!
//! # Matching index
//!
//! Within an event type with at least 8 listening rules, [`RuleSet::match_event`] skips the
//! rules whose equality test the event fails. Each rule is indexed on at most one *anchor*: a
//! top-level `when` step `{path: <event path>, eq: c}` or `{path: <event path>, in: [c, ...]}`
//! whose constants are strings, booleans or `null`, or `{path: <event path>, starts_with: p}`
//! with `p` not empty (for these, the evaluator's equality is plain same-type equality, so
//! "the event's value is a constant of the anchor, or has its prefix" is exactly "the step
//! passes"); of several it takes the one shared with the fewest rules of the type.
//! Numbers (`1` equals `1.0`), arrays, objects, `equals_ignore_case`, patterns, steps inside
//! `any`/`not`, `$item` paths and rules with `for_each` are never anchors; rules without one
//! are evaluated for every event. Per event, each indexed path is looked up once, the rules
//! its value selects are merged with the unindexed ones and evaluated in load order by the
//! same code as before: the matches, their order, `for_each` elements and refusals are those
//! of the linear evaluation ([`RuleSet::match_event_linear`], the reference of the tests and
//! benchmarks). [`Matches::counts`] then covers the rules evaluated
//! ([`Matches::candidates`]), not the skipped ones. "Why not" ([`CompiledRule::evaluate`])
//! evaluates one rule linearly, whether the index skipped it or not.
//!
//! # Templates and jq
//!
//! Templates are `{{ jq }}` inside strings (see `whale_expr`): a string that is one lone
//! `{{ expr }}` renders to the value with its JSON type; mixed text renders to a string
//! (strings inserted as they are, other values as compact JSON). An expression that yields no
//! value, several values ("wrap it in [ ] to get an array") or an error fails the render with
//! the rule, the field and the reason. jq in rules is checked when the set loads: recursion,
//! loops, `reduce`/`foreach`, `env`/`$ENV`, I/O and side-effect builtins are refused, regexes
//! must be literals, and every run is metered, so a rule cannot hang or crash a worker.
//!
//! # Fan-out
//!
//! `for_each: <jq>` runs the rule once per output of the expression (at most a bound per event,
//! [`DEFAULT_MAX_ITEMS`] unless configured; over it the rule fires for none and
//! [`Matches::refused`] says why). The output is bound as `$item` in `jq:` steps and
//! templates, and `{path: $item.a.b, ...}` steps look into it. [`RuleSet::match_event`] reports
//! such rules per element in [`Matches::fanned`]; [`CompiledRule::elements`] explains each one;
//! [`item_key`] is the content hash task ids are derived from. `$item` outside a rule with
//! `for_each` refuses the set. Full semantics: `pipelines/README.md`.
//!
//! # Errors
//!
//! A set with any error is refused whole. [`RuleErrors`] lists every problem as
//! `file:line: rule "name": what is wrong`, e.g.
//! `pipelines/disk.yaml:7: rule "disk-full-cleanup": when[0]: unknown operator "eqq" (expected one of eq, ne, ...)`.
//! Duplicate names are reported with both locations.

mod compile;
mod error;
mod eval;
mod fanout;
mod index;
mod ops;
mod parse;
mod render;
mod report;
mod rule;
mod ruleset;
mod step;

pub use error::{RuleError, RuleErrors};
pub use fanout::{bind, item_key, Element, ForEachError, DEFAULT_MAX_ITEMS};
pub use ops::OPERATORS;
pub use parse::{FileLimits, ParsedFile};
pub use render::{Approval, RenderError, RenderedTask, RenderedThrottle, ThrottleMode};
pub use report::{
    format_human, test_events, test_events_with, ElementReport, EventReport, RuleReport,
};
pub use rule::{CompiledRule, Evaluation};
pub use ruleset::{Matches, RuleSet, RuleSource};
pub use step::{Counts, StepFailure};
pub use whale_expr::Input;
/// The time limit of one jq predicate or template run, for every rule set compiled afterwards
/// in this process (`whale run` sets it from `rules.eval_time_limit`).
pub use whale_expr::{default_eval_time, set_default_eval_time};
