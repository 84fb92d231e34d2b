//! [`RuleSet`]: every rule of a directory, compiled together (identical jq sources compiled
//! once), refused whole if anything is wrong, versioned by a hash of its sources, and indexed by
//! event type so that an event only meets the rules that listen to it, and within a type by
//! the rules' equality tests (see `index.rs`) so that it only meets the rules it may match.

use crate::compile::compile_rule;
use crate::eval::{Cx, Paths};
use crate::index::Index;
use crate::parse::{parse_file, parsed_json, FileLimits, Lines, ParsedFile};
use crate::rule::CompiledRule;
use crate::step::Counts;
use crate::{ForEachError, RuleError, RuleErrors};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use whale_expr::{Compiler, Input};

/// One rule file: where it came from (used in error messages) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSource {
    /// Path as shown to people, e.g. `pipelines/disk.yaml`.
    pub path: String,
    /// The YAML text.
    pub text: String,
}

type Rules = Arc<[Arc<CompiledRule>]>;

/// The rules listening to one event type, in load order, and what the match path needs to
/// skip the ones an event cannot match.
struct Listening {
    rules: Rules,
    /// Positions of the rules with `for_each`.
    fanning: Vec<u32>,
    /// `None`: every rule is evaluated (few rules, or none with an equality test to index).
    index: Option<Index>,
}

impl Listening {
    fn new(rules: Rules) -> Arc<Listening> {
        let fanning = (0..rules.len() as u32)
            .filter(|i| rules[*i as usize].for_each.is_some())
            .collect();
        let index = Index::build(&rules);
        Arc::new(Listening {
            rules,
            fanning,
            index,
        })
    }
}

/// A `for_each` element and its position among the outputs of the expression.
pub type Indexed = (usize, Value);

/// The result of [`RuleSet::match_event`].
#[derive(Debug, Clone)]
pub struct Matches {
    /// The rules without `for_each` whose steps all passed, in load order.
    pub matched: Vec<Arc<CompiledRule>>,
    /// The rules with `for_each` and, for each, the elements whose steps all passed (index
    /// among the outputs of `for_each`, element), in load order; rules with no passing
    /// element are left out.
    pub fanned: Vec<(Arc<CompiledRule>, Vec<Indexed>)>,
    /// Rules whose `for_each` yielded more elements than allowed: they fire for none of them,
    /// and the caller records why ([`ForEachError::is_over_limit`]).
    pub refused: Vec<ForEachError>,
    /// How many rules listened to the event type.
    pub evaluated: usize,
    /// How many of them were evaluated: the index of the type skips the rules whose equality
    /// test the event fails (equal to `evaluated` when matching linearly).
    pub candidates: usize,
    /// Type mismatches and jq errors over all evaluations.
    pub counts: Counts,
}

/// At most this many event types matched only by globs are remembered.
const GLOB_CACHE_MAX: usize = 10_000;

/// A compiled, indexed set of rules.
pub struct RuleSet {
    rules: Vec<Arc<CompiledRule>>,
    by_type: HashMap<String, Arc<Listening>>,
    globs: Vec<(globset::GlobMatcher, usize)>,
    glob_cache: RwLock<HashMap<String, Arc<Listening>>>,
    empty: Arc<Listening>,
    version: String,
    sources: Vec<RuleSource>,
    /// The JSON of each source's parsed rules ([`ParsedFile`]), when compiled from the YAML.
    parsed: Option<Vec<String>>,
    filters_compiled: usize,
    /// Some rule has `for_each` (else the match path skips looking for them).
    fan_out: bool,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("version", &self.version)
            .field("rules", &self.rules.len())
            .finish()
    }
}

fn is_glob(t: &str) -> bool {
    t.contains(['*', '?', '['])
}

impl RuleSet {
    /// Parse and compile every source. Any error refuses the whole set; all errors found are
    /// returned.
    pub fn compile(sources: &[RuleSource]) -> Result<RuleSet, RuleErrors> {
        Self::build(sources, None)
    }

    /// [`RuleSet::compile`] from the parsed form of every source (one per source, in order, as
    /// [`RuleSet::parsed_json`] wrote them): the YAML is not read again. Sizes are checked again
    /// and everything else is compiled and refused exactly as from the text (errors name the
    /// same files and lines); the version is still the hash of the sources. With a count that
    /// does not match the sources, the sources are parsed instead.
    pub fn compile_parsed(
        sources: &[RuleSource],
        parsed: Vec<ParsedFile>,
    ) -> Result<RuleSet, RuleErrors> {
        if parsed.len() != sources.len() {
            return Self::compile(sources);
        }
        Self::build(sources, Some(parsed))
    }

    fn build(
        sources: &[RuleSource],
        given: Option<Vec<ParsedFile>>,
    ) -> Result<RuleSet, RuleErrors> {
        let limits = FileLimits::default();
        // the parsed form is written when the YAML is read here (for the store), not when given
        let mut json = given.is_none().then(|| Vec::with_capacity(sources.len()));
        let mut given = given.map(Vec::into_iter);
        let mut compiler = Compiler::new();
        let mut paths = Paths::default();
        let mut errors = Vec::new();
        let mut rules: Vec<Arc<CompiledRule>> = Vec::new();
        let mut seen: HashMap<String, (String, Option<usize>)> = HashMap::new();
        for src in sources {
            let parsed = match given.as_mut() {
                Some(files) => files
                    .next()
                    .unwrap_or_default()
                    .into_located(&src.path, &limits),
                None => parse_file(&src.path, &src.text),
            };
            let parsed = match parsed {
                Ok(p) => p,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(files) = json.as_mut() {
                // cannot fail for these types; without it the store keeps the text alone
                match parsed_json(&parsed) {
                    Ok(j) => files.push(j),
                    Err(_) => json = None,
                }
            }
            let lines = Lines::new(&src.text);
            for loc in parsed {
                let (name, line) = (loc.rule.name.clone(), loc.line);
                if let Some((file, first)) = seen.get(&name) {
                    let at = first
                        .map(|l| format!("{file}:{l}"))
                        .unwrap_or_else(|| file.clone());
                    errors.push(RuleError {
                        file: src.path.clone(),
                        line,
                        rule: Some(name.clone()),
                        message: format!(
                            "duplicate rule name; also defined at {at} (names must be unique)"
                        ),
                    });
                } else {
                    seen.insert(name, (src.path.clone(), line));
                }
                match compile_rule(loc, &src.path, &lines, &mut compiler, &mut paths) {
                    Ok(rule) => rules.push(Arc::new(rule)),
                    Err(errs) => errors.extend(errs),
                }
            }
        }
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        let mut set = Self::index(rules, sources.to_vec(), compiler.filters_compiled());
        set.parsed = json;
        Ok(set)
    }

    /// Read `*.yaml` and `*.yml` in `dir` (not recursively), in file name order, and compile.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<RuleSet, RuleErrors> {
        let dir = dir.as_ref();
        let io_err = |file: &Path, e: std::io::Error| RuleError {
            file: file.display().to_string(),
            line: None,
            rule: None,
            message: format!("cannot read: {e}"),
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        paths.sort();
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            match std::fs::read_to_string(&p) {
                Ok(text) => sources.push(RuleSource {
                    path: p.display().to_string(),
                    text,
                }),
                Err(e) => errors.push(io_err(&p, e)),
            }
        }
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        Self::compile(&sources)
    }

    fn index(
        rules: Vec<Arc<CompiledRule>>,
        sources: Vec<RuleSource>,
        filters_compiled: usize,
    ) -> RuleSet {
        let mut globs = Vec::new();
        let mut exact: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.enabled()) {
            for t in rule.event_types() {
                if is_glob(t) {
                    if let Ok(g) = globset::Glob::new(t) {
                        globs.push((g.compile_matcher(), i));
                    }
                } else {
                    let list = exact.entry(t).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
        }
        let by_type = exact
            .into_iter()
            .map(|(t, mut list)| {
                list.extend(globs.iter().filter(|(g, _)| g.is_match(t)).map(|(_, j)| *j));
                list.sort_unstable();
                list.dedup();
                let rules: Vec<_> = list.into_iter().map(|i| rules[i].clone()).collect();
                (t.to_owned(), Listening::new(Rules::from(rules)))
            })
            .collect();
        RuleSet {
            by_type,
            globs,
            glob_cache: RwLock::new(HashMap::new()),
            empty: Listening::new(Arc::from(Vec::new())),
            version: version(&sources),
            sources,
            parsed: None,
            filters_compiled,
            fan_out: rules.iter().any(|r| r.for_each.is_some()),
            rules,
        }
    }

    /// Enabled rules listening to `event_type` only through globs, in load order.
    fn glob_rules(&self, event_type: &str) -> Rules {
        let mut list: Vec<usize> = self
            .globs
            .iter()
            .filter(|(g, _)| g.is_match(event_type))
            .map(|(_, i)| *i)
            .collect();
        list.sort_unstable();
        list.dedup();
        list.into_iter().map(|i| self.rules[i].clone()).collect()
    }

    /// The enabled rules that listen to `event_type` (exactly or by glob), in load order.
    /// Cheap: a lookup and a reference count.
    pub fn rules_for(&self, event_type: &str) -> Arc<[Arc<CompiledRule>]> {
        self.listening(event_type).rules.clone()
    }

    fn listening(&self, event_type: &str) -> Arc<Listening> {
        if let Some(rules) = self.by_type.get(event_type) {
            return rules.clone();
        }
        if self.globs.is_empty() {
            return self.empty.clone();
        }
        if let Some(rules) = self
            .glob_cache
            .read()
            .ok()
            .and_then(|c| c.get(event_type).cloned())
        {
            return rules;
        }
        let rules = Listening::new(self.glob_rules(event_type));
        if let Ok(mut cache) = self.glob_cache.write() {
            if cache.len() < GLOB_CACHE_MAX {
                cache.insert(event_type.to_owned(), rules.clone());
            }
        }
        rules
    }

    /// The hot path of the match stage: the enabled rules listening to the event's
    /// `event_type` whose steps all pass, in load order. Path lookups are shared between the
    /// rules, and the counters of all evaluations are summed.
    pub fn match_event(&self, input: &Input) -> Matches {
        self.match_event_with(input, crate::DEFAULT_MAX_ITEMS)
    }

    /// [`RuleSet::match_event`] with a bound on the elements of one `for_each`. A rule with
    /// `for_each` is evaluated once per element with `$item` bound; an error of the
    /// expression counts as a jq error (the rule does not match), more elements than
    /// `max_items` refuses the rule for this event ([`Matches::refused`]).
    pub fn match_event_with(&self, input: &Input, max_items: usize) -> Matches {
        self.match_with(input, max_items, true)
    }

    /// [`RuleSet::match_event`] evaluating every rule listening to the event's type, without
    /// the equality index: the reference the index is tested and benchmarked against. Same
    /// matches in the same order; only [`Matches::counts`] and [`Matches::candidates`] can
    /// differ (they cover the rules evaluated).
    pub fn match_event_linear(&self, input: &Input) -> Matches {
        self.match_with(input, crate::DEFAULT_MAX_ITEMS, false)
    }

    /// [`RuleSet::match_event_linear`] with a bound on the elements of one `for_each`.
    pub fn match_event_linear_with(&self, input: &Input, max_items: usize) -> Matches {
        self.match_with(input, max_items, false)
    }

    fn match_with(&self, input: &Input, max_items: usize, indexed: bool) -> Matches {
        let event_type = input
            .value()
            .get("event_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        let listening = self.listening(event_type);
        let rules = &listening.rules;
        let mut cx = Cx::new(input);
        let (matched, candidates) = match listening.index.as_ref().filter(|_| indexed) {
            Some(index) => {
                let mut positions = Vec::new();
                index.candidates(&mut cx, &mut positions);
                let matched = positions
                    .iter()
                    .map(|i| &rules[*i as usize])
                    .filter(|r| r.for_each.is_none() && r.matches_in(&mut cx))
                    .cloned()
                    .collect();
                (matched, positions.len())
            }
            None => {
                let matched = rules
                    .iter()
                    .filter(|r| r.for_each.is_none() && r.matches_in(&mut cx))
                    .cloned()
                    .collect();
                (matched, rules.len())
            }
        };
        let mut counts = cx.counts;
        let (mut fanned, mut refused) = (Vec::new(), Vec::new());
        // a set without `for_each` rules (the common case) does not look for them
        let fanning = if self.fan_out {
            &listening.fanning[..]
        } else {
            &[]
        };
        for rule in fanning.iter().map(|i| &rules[*i as usize]) {
            let items = match rule.items(input, max_items) {
                Ok(items) => items.unwrap_or_default(),
                Err(e) if e.is_over_limit() => {
                    refused.push(e);
                    continue;
                }
                Err(_) => {
                    counts.jq_errors += 1;
                    continue;
                }
            };
            let mut hits = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let (ok, c) = rule.matches(&crate::bind(input, &item));
                counts.type_mismatches += c.type_mismatches;
                counts.jq_errors += c.jq_errors;
                if ok {
                    hits.push((i, item));
                }
            }
            if !hits.is_empty() {
                fanned.push((rule.clone(), hits));
            }
        }
        Matches {
            matched,
            fanned,
            refused,
            evaluated: rules.len(),
            candidates,
            counts,
        }
    }

    /// Every rule, enabled or not, in load order.
    pub fn rules(&self) -> &[Arc<CompiledRule>] {
        &self.rules
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledRule>> {
        self.rules.iter().find(|r| r.name() == name)
    }

    /// Number of rules (enabled or not).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if the set has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// A content hash of the sources (12 hex digits of SHA-256 over paths and texts).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The sources the set was compiled from.
    pub fn sources(&self) -> &[RuleSource] {
        &self.sources
    }

    /// The JSON of each source's parsed rules (in the order of [`RuleSet::sources`]), for the
    /// store to keep beside the text and [`RuleSet::compile_parsed`] to read back; `None` for a
    /// set compiled from parsed forms.
    pub fn parsed_json(&self) -> Option<&[String]> {
        self.parsed.as_deref()
    }

    /// How many distinct jq filters were compiled for this set.
    pub fn filters_compiled(&self) -> usize {
        self.filters_compiled
    }
}

fn version(sources: &[RuleSource]) -> String {
    let mut sorted: Vec<&RuleSource> = sources.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Sha256::new();
    for s in sorted {
        h.update(s.path.as_bytes());
        h.update([0]);
        h.update(s.text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..12].to_owned()
}
