//! Calls to builtins: the allow-list check, the literal checks of `range` and regex builtins,
//! and the metering wrapped around each call (see `builtins.rs` for what each call costs).

use super::syntax::{number_literal, string_literal};
use super::{Rewriter, R, T};
use crate::builtins::{self, Clos, Pre, Special};
use crate::ExprError;
use jaq_core::load::parse::Term;
use std::fmt::Write as _;

impl<'s> Rewriter<'s, '_> {
    pub(super) fn call(&mut self, name: &'s str, args: &[T<'s>], d: usize) -> R {
        let Some(spec) = builtins::lookup(name, args.len()) else {
            let why = match builtins::refusal(name) {
                Some(why) => format!("`{name}` is not allowed in rule expressions: {why}"),
                None => format!(
                    "unknown or disallowed function `{name}/{}` (rule expressions may call the \
                     jq builtins listed in the rule format documentation)",
                    args.len()
                ),
            };
            return Err(self.err_at(name, why));
        };
        self.push("(");
        match spec.pre {
            Pre::None => {}
            Pre::Shallow => self.push("__whale_tick | "),
            Pre::Deep => self.push("__whale_deep | "),
        }
        match spec.special {
            Special::None => {}
            Special::Range => self.check_range(name, args)?,
            Special::Regex { re, flags } => {
                let weight = self.check_regex(name, &args[re], flags.map(|f| &args[f]))?;
                write!(self.out, "__whale_regex({weight}) | ").ok();
            }
            Special::Pair => {
                // `contains(b)` is `b as $x | contains($x)`; charge both sides first
                let x = self.fresh_var();
                self.wrap(
                    "((",
                    &args[0],
                    &format!(") as {x} | __whale_pair({x}) | {name}({x})))"),
                    d,
                )?;
                return Ok(());
            }
        }
        self.push(name);
        if !args.is_empty() {
            let (open, close) = match spec.clos {
                Clos::None => ("(", ")"),
                Clos::Tick => ("(__whale_tick | ", " | __whale_tick)"),
                Clos::Key => ("(__whale_tick | ", " | __whale_deep)"),
                Clos::Update => ("(__whale_upd | ", ")"),
            };
            self.push("(");
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    self.push("; ");
                }
                if spec.clos == Clos::Update {
                    self.target(open, a, close, d)?;
                } else {
                    self.wrap(open, a, close, d)?;
                }
            }
            self.push(")");
        }
        if spec.post {
            self.push(" | __whale_tick");
        }
        self.push(")");
        Ok(())
    }

    /// `range` with literal bounds: refuse a span over the limit, and a zero step.
    fn check_range(&self, name: &str, args: &[T<'s>]) -> R {
        let nums: Option<Vec<f64>> = args.iter().map(number_literal).collect();
        let Some(nums) = nums else { return Ok(()) };
        let (from, to, by) = match nums[..] {
            [to] => (0.0, to, 1.0),
            [from, to] => (from, to, 1.0),
            [from, to, by] => (from, to, by),
            _ => return Ok(()),
        };
        if by == 0.0 {
            return Err(self.err_at(name, "`range` with a step of 0 never ends"));
        }
        let span = ((to - from) / by).ceil();
        if span > self.limits.max_range_span as f64 {
            return Err(self.err_at(
                name,
                format!(
                    "`range` would yield {span} values; the limit is {}",
                    self.limits.max_range_span
                ),
            ));
        }
        Ok(())
    }

    /// Regex builtins need a literal pattern (and flags) that compiles within the size limit.
    /// Returns the charge per input byte, derived from the compiled size.
    fn check_regex(&self, name: &str, re: &T<'s>, flags: Option<&T<'s>>) -> Result<u64, ExprError> {
        let Some(pattern) = string_literal(re) else {
            return Err(self.err_at(
                name,
                format!("the regular expression of `{name}` must be a string literal"),
            ));
        };
        if pattern.len() > self.limits.max_regex_bytes {
            return Err(self.err_at(
                name,
                format!(
                    "regular expression is longer than {} bytes",
                    self.limits.max_regex_bytes
                ),
            ));
        }
        let flags = match flags {
            None => String::new(),
            Some(Term::Call("null", args)) if args.is_empty() => String::new(),
            Some(f) => string_literal(f).ok_or_else(|| {
                self.err_at(
                    name,
                    format!("the flags of `{name}` must be a string literal"),
                )
            })?,
        };
        crate::regex::weight(&pattern, &flags, self.limits.max_regex_program_bytes)
            .map_err(|e| self.err_at(name, e))
    }
}
