//! Small questions about jaq syntax trees (is this a literal? where in the source is it?) and
//! printing helpers, used by the rewriter.

use super::T;
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Term};
use jaq_core::ops::Math;
use jaq_core::path::Part;
use std::fmt::Write as _;

pub(super) fn math_native(m: &Math) -> &'static str {
    match m {
        Math::Add => "__whale_add",
        Math::Sub => "__whale_sub",
        Math::Mul => "__whale_mul",
        Math::Div => "__whale_div",
        Math::Rem => "__whale_rem",
    }
}

pub(super) fn flatten_comma<'a, 's>(t: &'a T<'s>, out: &mut Vec<&'a T<'s>>) {
    match t {
        Term::BinOp(l, BinaryOp::Comma, r) => {
            flatten_comma(l, out);
            flatten_comma(r, out);
        }
        t => out.push(t),
    }
}

pub(super) fn is_scalar_literal(t: &T<'_>) -> bool {
    match t {
        Term::Num(_) => true,
        Term::Neg(x) => matches!(**x, Term::Num(_)),
        Term::Str(None, parts) => parts.iter().all(|p| !matches!(p, StrPart::Term(_))),
        Term::Call(name, args) => args.is_empty() && matches!(*name, "true" | "false" | "null"),
        _ => false,
    }
}

/// Indices that yield one value without iterating: literals, variables, simple paths.
pub(super) fn static_index(t: &T<'_>) -> bool {
    match t {
        Term::Id | Term::Num(_) | Term::Var(_) => true,
        Term::Neg(x) => matches!(**x, Term::Num(_)),
        Term::Str(None, _) => string_literal(t).is_some(),
        Term::BinOp(l, BinaryOp::Comma, r) => static_index(l) && static_index(r),
        Term::Path(base, path) => {
            matches!(**base, Term::Id | Term::Var(_))
                && path
                    .0
                    .iter()
                    .all(|(p, _)| matches!(p, Part::Index(i) if static_index(i)))
        }
        _ => false,
    }
}

/// Some source slice inside `t`, to point an error at.
pub(super) fn first_slice<'s>(t: &T<'s>) -> Option<&'s str> {
    match t {
        Term::Num(s) | Term::Var(s) | Term::Call(s, _) | Term::Break(s) | Term::Label(s, _) => {
            Some(s)
        }
        Term::Fold(s, ..) => Some(s),
        Term::Neg(x) | Term::TryCatch(x, _) | Term::Arr(Some(x)) => first_slice(x),
        Term::BinOp(l, _, r) => first_slice(l).or_else(|| first_slice(r)),
        Term::Path(b, p) => first_slice(b).or_else(|| {
            p.0.iter().find_map(|(part, _)| match part {
                Part::Index(i) => first_slice(i),
                Part::Range(f, t) => f
                    .as_ref()
                    .and_then(first_slice)
                    .or_else(|| t.as_ref().and_then(first_slice)),
            })
        }),
        Term::Str(_, parts) => parts.iter().find_map(|p| match p {
            StrPart::Str(s) => Some(*s),
            _ => None,
        }),
        _ => None,
    }
}

pub(super) fn number_literal(t: &T<'_>) -> Option<f64> {
    match t {
        Term::Num(n) => n.parse().ok(),
        Term::Neg(x) => number_literal(x).map(|n| -n),
        _ => None,
    }
}

/// The value of a string literal without interpolation or format.
pub(crate) fn string_literal(t: &T<'_>) -> Option<String> {
    let Term::Str(None, parts) = t else {
        return None;
    };
    let mut s = String::new();
    for part in parts {
        match part {
            StrPart::Str(x) => s.push_str(x),
            StrPart::Char(c) => s.push(*c),
            StrPart::Term(_) => return None,
        }
    }
    Some(s)
}

pub(super) fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            write!(out, "\\u{:04x}", c as u32).ok();
        }
        c => out.push(c),
    }
}
