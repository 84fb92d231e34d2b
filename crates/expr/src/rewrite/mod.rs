//! The safety check and the metering rewrite, in one walk over jaq's syntax tree.
//!
//! The walk refuses what cannot be bounded (user `def`s and so recursion, `reduce`/`foreach`,
//! builtins outside the allow-list, `$ENV`, non-literal regexes, huge literal ranges, trees
//! deeper than the limit) and prints the program back as jq text with calls to the metering
//! natives of `budget.rs` inserted wherever work can multiply. The printed program is what
//! jaq compiles; it is fully parenthesised, so printing cannot change precedence.

use crate::builtins;
use crate::{ExprError, Limits};
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::ops::Math;
use jaq_core::path::{Opt, Part, Path};
use std::fmt::Write as _;
use syntax::{
    first_slice, flatten_comma, is_scalar_literal, math_native, push_escaped, static_index,
};

mod call;
mod syntax;

pub(crate) use syntax::string_literal;

type T<'s> = Term<&'s str>;
type R = Result<(), ExprError>;

pub(crate) fn rewrite(src: &str, term: &T<'_>, limits: &Limits) -> Result<String, ExprError> {
    let mut w = Rewriter {
        src,
        limits,
        out: String::with_capacity(src.len() * 3),
        vars: 0,
        in_update: 0,
    };
    w.term(term, 0)?;
    Ok(w.out)
}

struct Rewriter<'s, 'l> {
    src: &'s str,
    limits: &'l Limits,
    out: String,
    vars: usize,
    /// > 0 while printing the target paths of an assignment or `del`
    in_update: usize,
}

impl<'s> Rewriter<'s, '_> {
    fn push(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn err_at(&self, part: &str, msg: impl Into<String>) -> ExprError {
        ExprError::at_slice(self.src, part, msg)
    }

    fn fresh_var(&mut self) -> String {
        self.vars += 1;
        format!("$__whale_{}", self.vars)
    }

    fn term(&mut self, t: &T<'s>, depth: usize) -> R {
        if depth > self.limits.max_ast_depth {
            return Err(ExprError::new(format!(
                "expression is nested more than {} levels deep; split it into simpler steps",
                self.limits.max_ast_depth
            )));
        }
        let d = depth + 1;
        match t {
            Term::Id => self.push("."),
            Term::Recurse => self.push("(.. | __whale_tick)"),
            Term::Num(n) => {
                self.push(" ");
                self.push(n);
                self.push(" ");
            }
            Term::Str(fmt, parts) => self.string(*fmt, parts, d)?,
            Term::Arr(None) => self.push("[]"),
            Term::Arr(Some(x)) => self.wrap("[", x, "]", d)?,
            Term::Obj(entries) => {
                self.push("{");
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    match (k, v) {
                        (Term::Var(x), None) => self.var(x)?,
                        (Term::Str(fmt, parts), None) => self.string(*fmt, parts, d)?,
                        (k, None) => self.wrap("(", k, ")", d)?,
                        (k, Some(v)) => {
                            self.wrap("(", k, "): ", d)?;
                            self.wrap("(", v, ")", d)?;
                        }
                    }
                }
                self.push("}");
            }
            Term::Neg(x) => self.wrap("(-(", x, "))", d)?,
            Term::BinOp(l, op, r) => self.binop(l, op, r, d)?,
            Term::Label(x, body) => {
                self.push("(label ");
                self.var(x)?;
                self.wrap(" | ", body, ")", d)?;
            }
            Term::Break(x) => {
                self.push(" break ");
                self.var(x)?;
                self.push(" ");
            }
            Term::Fold(kw, ..) => {
                return Err(self.err_at(
                    kw,
                    format!(
                        "`{kw}` is not allowed in rule expressions (loops can build unbounded \
                         values); use map, add, any, all, group_by or min_by/max_by"
                    ),
                ))
            }
            Term::TryCatch(body, catch) => {
                self.wrap("(try (", body, ")", d)?;
                if let Some(c) = catch {
                    self.wrap(" catch (", c, ")", d)?;
                }
                self.push(")");
            }
            Term::IfThenElse(branches, otherwise) => {
                for (i, (cond, then)) in branches.iter().enumerate() {
                    self.push(if i == 0 { "(if (" } else { " elif (" });
                    self.term(cond, d)?;
                    self.wrap(") then (", then, ")", d)?;
                }
                if let Some(e) = otherwise {
                    self.wrap(" else (", e, ")", d)?;
                }
                self.push(" end)");
            }
            Term::Def(defs, _) => {
                let name = defs.first().map_or("", |def| def.name);
                return Err(self.err_at(
                    name,
                    "function definitions (`def`) are not allowed in rule expressions \
                     (recursion cannot be bounded)",
                ));
            }
            Term::Call(name, args) => self.call(name, args, d)?,
            Term::Var(x) => self.var(x)?,
            Term::Path(base, path) => self.path(base, path, d)?,
        }
        Ok(())
    }

    fn wrap(&mut self, open: &str, t: &T<'s>, close: &str, depth: usize) -> R {
        self.push(open);
        self.term(t, depth)?;
        self.push(close);
        Ok(())
    }

    fn var(&mut self, x: &str) -> R {
        if x == "$ENV" {
            return Err(self.err_at(
                x,
                format!(
                    "`$ENV` is not allowed: {}",
                    builtins::refusal("env").unwrap_or_default()
                ),
            ));
        }
        if x.starts_with("$__whale") {
            return Err(self.err_at(x, "variable names starting with `$__whale` are reserved"));
        }
        self.push(x);
        Ok(())
    }

    fn string(&mut self, fmt: Option<&'s str>, parts: &[StrPart<&'s str, T<'s>>], d: usize) -> R {
        if let Some(f) = fmt {
            if !builtins::FORMATS.contains(&f) {
                return Err(self.err_at(f, format!("unknown or disallowed format `{f}`")));
            }
            self.push(f);
            self.push(" ");
        }
        self.push("\"");
        for part in parts {
            match part {
                StrPart::Str(s) => self.push(s),
                StrPart::Char(c) => push_escaped(&mut self.out, *c),
                // interpolation turns the value into text: a walk over the whole value
                StrPart::Term(t) => self.wrap("\\((", t, ") | __whale_deep)", d)?,
            }
        }
        self.push("\"");
        Ok(())
    }

    fn binop(&mut self, l: &T<'s>, op: &BinaryOp<&'s str>, r: &T<'s>, d: usize) -> R {
        match op {
            BinaryOp::Pipe(None) => self.infix(l, " | ", r, d),
            BinaryOp::Pipe(Some(p)) => {
                self.wrap("((", l, ") as ", d)?;
                self.pattern(p, d)?;
                self.wrap(" | (", r, "))", d)
            }
            BinaryOp::Comma => {
                // every output of a comma chain is charged: `(0,0)|(0,0)|...` is exponential
                let mut items = Vec::new();
                flatten_comma(l, &mut items);
                flatten_comma(r, &mut items);
                self.push("((");
                for (i, item) in items.into_iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.wrap("(", item, ")", d)?;
                }
                self.push(") | __whale_tick)");
                Ok(())
            }
            BinaryOp::Alt => self.infix(l, " // ", r, d),
            BinaryOp::Or => self.infix(l, " or ", r, d),
            BinaryOp::And => self.infix(l, " and ", r, d),
            BinaryOp::Math(Math::Rem) => self.infix(l, " % ", r, d),
            BinaryOp::Math(m) => {
                self.push(math_native(m));
                self.wrap("((", l, "); ", d)?;
                self.wrap("(", r, "))", d)
            }
            BinaryOp::Cmp(c) => {
                // comparing two values walks both; a literal on either side makes it cheap
                let cheap = is_scalar_literal(l) || is_scalar_literal(r);
                let (open, close) = if cheap {
                    ("(", ")")
                } else {
                    ("((", ") | __whale_deep)")
                };
                self.push("(");
                self.wrap(open, l, close, d)?;
                write!(self.out, " {} ", c.as_str()).ok();
                self.wrap(open, r, close, d)?;
                self.push(")");
                Ok(())
            }
            BinaryOp::Assign => self.update(l, " = ", r, d),
            BinaryOp::Update => self.update(l, " |= ", r, d),
            BinaryOp::UpdateAlt => self.update(l, " //= ", r, d),
            BinaryOp::UpdateMath(m) => {
                // `l op= r` is `r as $x | l |= . op $x`
                let x = self.fresh_var();
                self.wrap("((", r, &format!(") as {x} | "), d)?;
                self.target("(__whale_upd | ", l, "", d)?;
                match m {
                    Math::Rem => write!(self.out, ") |= (. % {x}))"),
                    m => write!(self.out, ") |= {}(.; {x}))", math_native(m)),
                }
                .ok();
                Ok(())
            }
        }
    }

    fn infix(&mut self, l: &T<'s>, op: &str, r: &T<'s>, d: usize) -> R {
        self.wrap("((", l, ")", d)?;
        self.push(op);
        self.wrap("(", r, "))", d)
    }

    /// Updates charge the whole value they update (it may be copied).
    fn update(&mut self, l: &T<'s>, op: &str, r: &T<'s>, d: usize) -> R {
        self.target("((__whale_upd | ", l, ")", d)?;
        self.push(op);
        self.wrap("(", r, "))", d)
    }

    /// Print the target paths of an update. Each index is applied as a separate update, which
    /// may move or copy the whole container, so an index must not be a generator there.
    fn target(&mut self, open: &str, t: &T<'s>, close: &str, d: usize) -> R {
        self.in_update += 1;
        let r = self.wrap(open, t, close, d);
        self.in_update -= 1;
        r
    }

    fn check_index(&self, i: &T<'s>) -> R {
        if self.in_update == 0 || static_index(i) {
            return Ok(());
        }
        let at = first_slice(i).unwrap_or("");
        Err(self.err_at(
            at,
            "in the target of an assignment or `del`, an index must be a literal, a $variable \
             or a simple path (bind computed indices first: `... as $i | del(.[$i])`)",
        ))
    }

    fn pattern(&mut self, p: &Pattern<&'s str>, d: usize) -> R {
        match p {
            Pattern::Var(x) => self.var(x)?,
            Pattern::Arr(items) => {
                self.push("[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.pattern(item, d + 1)?;
                }
                self.push("]");
            }
            Pattern::Obj(entries) => {
                self.push("{");
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.wrap("(", k, "): ", d + 1)?;
                    self.pattern(v, d + 1)?;
                }
                self.push("}");
            }
        }
        Ok(())
    }

    fn path(&mut self, base: &T<'s>, path: &Path<T<'s>>, d: usize) -> R {
        // each `[]` becomes `(... [] | __whale_tick)`, so open those parentheses first
        let iterations = path
            .0
            .iter()
            .filter(|(p, _)| matches!(p, Part::Range(None, None)))
            .count();
        self.push(&"(".repeat(iterations));
        if matches!(base, Term::Id) {
            self.push(".");
        } else {
            self.wrap("(", base, ")", d)?;
        }
        for (part, opt) in &path.0 {
            match part {
                Part::Index(i) => {
                    self.check_index(i)?;
                    self.wrap("[(", i, ")]", d)?
                }
                Part::Range(None, None) => self.push("[]"),
                Part::Range(from, to) => {
                    for bound in [from, to].into_iter().flatten() {
                        self.check_index(bound)?;
                    }
                    self.push("[");
                    if let Some(f) = from {
                        self.wrap("(", f, ")", d)?;
                    }
                    self.push(":");
                    if let Some(t) = to {
                        self.wrap("(", t, ")", d)?;
                    }
                    self.push("]");
                }
            }
            if matches!(opt, Opt::Optional) {
                self.push("?");
            }
            if matches!(part, Part::Range(None, None)) {
                self.push(" | __whale_tick)");
            }
        }
        Ok(())
    }
}
