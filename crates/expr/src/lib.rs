//! jq expressions and `{{ }}` templates for whale rules, on jaq 3, made safe to run on events
//! that anyone can send with rules that many people write.
//!
//! - [`Filter`]: a jq program, compiled once, run on any number of [`Input`]s. An [`Input`] is
//!   an event converted to jaq's value type once and shared by every rule that looks at it.
//! - [`Compiler`] / [`Expr`]: expressions for a whole rule set, each distinct source compiled
//!   once; simple paths (`.detail.host`, `.labels.biz // "default"`) skip jaq entirely.
//! - [`Template`] / [`TemplateValue`]: strings with `{{ jq }}` parts, and JSON structures of
//!   them. A lone `{{ expr }}` keeps the JSON type of its value; mixed text is a string.
//! - [`path::SimplePath`]: the native path evaluator, also used by rule steps.
//! - `$item`: the one global variable of every program ([`ITEM_VAR`]), bound by
//!   [`Input::with_item`] to a rule's `for_each` element (`null` when none is bound).
//!
//! Programs made only of paths, literals, comparisons, `and`/`or`/`not`, `//`, `if`,
//! `any`/`all`, `length`, `type`, `has`, `startswith`/`endswith` and `ascii_downcase`/
//! `ascii_upcase` (the usual rule predicates) are evaluated natively on `serde_json::Value`,
//! 10 to 50 times faster than jaq, with jaq's semantics (a differential test checks both agree);
//! everything else runs on jaq.
//!
//! # Safety
//!
//! jaq has no fuel: `def f: 1+f; f` overflows the stack and aborts the process, and
//! `last(repeat(1))` spins forever. A rule expression therefore goes through three gates:
//!
//! 1. **Refused at compile time**: programs over 4 KiB, brackets nested over 32, more than 128
//!    nesting operators or a syntax tree over 96 deep (the parser, compiler and interpreter
//!    recurse); `def` (recursion), `reduce`/`foreach` (unbounded loops that can build
//!    arbitrarily deep values), any builtin outside an allow-list of ones known to terminate
//!    (so `repeat`, `while`, `until`, `recurse(f)`, `input(s)`, `env`/`$ENV`, `halt`,
//!    `debug`, `stderr`, `input_filename`, `combinations`, `transpose`, `delpaths` are
//!    refused with a reason), regex builtins whose pattern or flags are not string literals or
//!    that compile to more than 64 KiB, and `range` with literal bounds spanning more than
//!    100,000 values or a zero step.
//! 2. **Metered at run time**: the accepted program is rewritten so that every output of
//!    `.[]`, `..`, `,` and generator builtins, every closure call, and every byte or element a
//!    builtin walks, copies or builds is charged to a per-run budget (default 1,000,000 units) and
//!    the clock is checked against a per-run deadline (default 100 ms, [`set_default_eval_time`]);
//!    string repetition and big-number products are charged *before* they allocate, updates
//!    charge the value they may copy. A spent budget fails the run, even inside `try`.
//! 3. **Bounded outputs**: at most 1,000 outputs and 1 MiB of JSON per run, values nested at
//!    most 128 deep (input and output), `fromjson` parsed by serde_json (depth 128), error
//!    messages cut at 300 characters, and interpreter panics contained.
//!
//! See [`Limits`] for every number.

mod budget;
mod builtins;
mod compiler;
mod error;
mod filter;
mod limits;
pub mod path;
mod quick;
mod regex;
mod rewrite;
mod scan;
mod template;
mod template_value;
mod value;

pub use compiler::{Compiler, Expr};
pub use error::{EvalError, ExprError};
pub use filter::{Filter, ITEM_VAR};
pub use limits::{default_eval_time, set_default_eval_time, Limits};
pub use template::{RenderError, Template};
pub use template_value::{TemplateError, TemplateValue};
pub use value::Input;
