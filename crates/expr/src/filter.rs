//! [`Filter`]: a jq program checked, rewritten with metering, compiled once by jaq, then run on
//! any number of [`Input`]s with the limits of [`Limits`].

use crate::budget::{self, D};
use crate::quick::Q;
use crate::value::Output;
use crate::{scan, EvalError, ExprError, Input, Limits};
use jaq_core::load::parse::{Def, Parser};
use jaq_core::load::{Arena, File, Lexer, Loader};
use jaq_core::{Compiler, Ctx, Exn, ValT as _, Vars};
use jaq_json::Val;
use serde_json::Value;
use std::fmt::{self, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Instant;

/// A compiled jq program. Cheap to share (`Arc<Filter>`); `run` may be called from many threads.
pub struct Filter {
    src: String,
    program: String,
    filter: jaq_core::Filter<D>,
    /// The same program for the native evaluator, when it is inside its subset.
    quick: Option<Q>,
    limits: Limits,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("src", &self.src)
            .finish_non_exhaustive()
    }
}

/// jaq's prelude (core, std and json definitions plus ours), parsed once per process.
fn prelude() -> &'static [Def<&'static str>] {
    static PRELUDE: OnceLock<Vec<Def<&'static str>>> = OnceLock::new();
    PRELUDE.get_or_init(|| {
        let ours =
            jaq_core::load::parse(budget::DEFS, |p| p.defs()).expect("whale jq definitions parse");
        jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .chain(ours)
            .collect()
    })
}

fn funs() -> impl Iterator<Item = jaq_core::native::Fun<D>> {
    let jaq = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    jaq.filter(|(name, _, _)| !budget::REMOVED_NATIVES.contains(name))
        .chain(budget::natives())
}

impl Filter {
    /// Compile `src` with the default [`Limits`].
    pub fn compile(src: &str) -> Result<Filter, ExprError> {
        Self::compile_with(src, &Limits::default())
    }

    /// Check, rewrite and compile `src` with the given limits.
    pub fn compile_with(src: &str, limits: &Limits) -> Result<Filter, ExprError> {
        Self::compile_inner(src, limits, true)
    }

    /// Compile without the native fast path: every run goes through jaq (for tests that
    /// compare both).
    #[doc(hidden)]
    pub fn compile_jaq_only(src: &str) -> Result<Filter, ExprError> {
        Self::compile_inner(src, &Limits::default(), false)
    }

    fn compile_inner(src: &str, limits: &Limits, fast: bool) -> Result<Filter, ExprError> {
        scan::check_source(src, limits)?;
        let tokens = Lexer::new(src).lex().map_err(|errs| {
            let (expect, at) = &errs[0];
            ExprError::at_slice(
                src,
                at,
                format!("syntax error: expected {}", expect.as_str()),
            )
        })?;
        scan::check_tokens(src, &tokens, limits)?;
        let term = Parser::new(&tokens).parse(|p| p.term()).map_err(|errs| {
            let (expect, found) = &errs[0];
            match found {
                Some(tok) => {
                    let shown: String = tok.0.chars().take(20).collect();
                    let msg = format!(
                        "syntax error: expected {}, found `{shown}`",
                        expect.as_str()
                    );
                    ExprError::at_slice(src, tok.0, msg)
                }
                None => ExprError::new(format!(
                    "syntax error: unexpected end of program, expected {}",
                    expect.as_str()
                )),
            }
        })?;
        let program = crate::rewrite::rewrite(src, &term, limits)?;
        let filter = compile_program(src, &program)?;
        let quick = if fast {
            crate::quick::compile(&term)
        } else {
            None
        };
        Ok(Filter {
            src: src.to_owned(),
            program,
            filter,
            quick,
            limits: limits.clone(),
        })
    }

    /// The program as written.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// The program as compiled, with the metering calls (for debugging).
    pub fn instrumented(&self) -> &str {
        &self.program
    }

    /// True if runs go through jaq; false if the native evaluator handles this program.
    pub fn uses_jaq(&self) -> bool {
        self.quick.is_none()
    }

    /// Run on `input` and return every output (at most [`Limits::max_outputs`]).
    pub fn run(&self, input: &Input) -> Result<Vec<Value>, EvalError> {
        if let Some(q) = &self.quick {
            input.check_depth()?;
            let out = q.eval(input.value()).map_err(EvalError::Jq)?;
            crate::value::check_output(&out, &self.limits)?;
            return Ok(vec![out.into_owned()]);
        }
        let (max, limits) = (self.limits.max_outputs, &self.limits);
        self.with_outputs(input, |outputs| {
            let mut conv = Output::new(limits);
            let mut values = Vec::new();
            for out in outputs {
                if values.len() == max {
                    return Err(EvalError::TooManyOutputs(max));
                }
                values.push(conv.convert(&out.map_err(exn_error)?)?);
            }
            Ok(values)
        })
    }

    /// Run on `input` as a predicate: true iff the first output is neither `false` nor `null`.
    /// No output is false; an error is returned as an error.
    pub fn test(&self, input: &Input) -> Result<bool, EvalError> {
        if let Some(q) = &self.quick {
            input.check_depth()?;
            return q
                .eval(input.value())
                .map(|v| crate::quick::truthy(&v))
                .map_err(EvalError::Jq);
        }
        self.with_outputs(input, |outputs| match outputs.next() {
            None => Ok(false),
            Some(out) => Ok(out.map_err(exn_error)?.as_bool()),
        })
    }

    fn with_outputs<R>(
        &self,
        input: &Input,
        f: impl FnOnce(&mut dyn Iterator<Item = Result<Val, Exn<'_, Val>>>) -> Result<R, EvalError>,
    ) -> Result<R, EvalError> {
        let val = input.val()?.clone();
        let deadline = self
            .limits
            .max_eval_time
            .and_then(|t| Instant::now().checked_add(t));
        budget::reset(self.limits.fuel, deadline);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let ctx = Ctx::<D>::new(&self.filter.lut, Vars::new([input.item_val()]));
            let mut outputs = self.filter.id.run((ctx, val));
            f(&mut outputs)
        }));
        let exhausted = budget::exhausted();
        let timed_out = budget::timed_out();
        budget::reset(u64::MAX, None);
        match result {
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(EvalError::Internal(msg))
            }
            Ok(_) if timed_out => Err(EvalError::Time(
                self.limits.max_eval_time.unwrap_or_default(),
            )),
            Ok(_) if exhausted => Err(EvalError::Budget(self.limits.fuel)),
            Ok(r) => r,
        }
    }
}

/// The one global variable of every program: the `for_each` element ([`Input::with_item`]).
pub const ITEM_VAR: &str = "$item";

fn compile_program(src: &str, program: &str) -> Result<jaq_core::Filter<D>, ExprError> {
    let arena = Arena::default();
    let defs = prelude().iter().cloned();
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: program,
                path: (),
            },
        )
        .map_err(|errs| {
            ExprError::new(format!(
                "internal error: rewritten program does not parse ({} errors)",
                errs.len()
            ))
        })?;
    Compiler::default()
        .with_funs(funs())
        .with_global_vars([ITEM_VAR])
        .compile(modules)
        .map_err(|errs| {
            let Some((name, undefined)) = errs.iter().flat_map(|(_, e)| e.iter()).next() else {
                return ExprError::new("compile error");
            };
            let what = match undefined {
                jaq_core::compile::Undefined::Filter(arity) => format!("function `{name}/{arity}`"),
                other => format!("{} `{name}`", other.as_str()),
            };
            let msg = format!("undefined {what}");
            match src.find(name) {
                Some(at) => ExprError::at(src, at, msg),
                None => ExprError::new(msg),
            }
        })
}

/// The message of a jq error, shortened: error values may be huge.
fn exn_error(e: Exn<'_, Val>) -> EvalError {
    match e.get_err() {
        Ok(err) => {
            let mut text = bounded_display(&err);
            if let Some(stripped) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                text = stripped.to_owned();
            }
            EvalError::Jq(text)
        }
        Err(_) => EvalError::Internal("unexpected control flow (halt or break)".into()),
    }
}

/// Display at most 300 characters of a value or error (the value may be a huge shared tree).
pub(crate) fn bounded_display(v: &impl fmt::Display) -> String {
    struct Cap(String);
    impl fmt::Write for Cap {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.0.len() >= 300 {
                    self.0.push('…');
                    return Err(fmt::Error);
                }
                self.0.push(c);
            }
            Ok(())
        }
    }
    let mut cap = Cap(String::new());
    let _ = write!(cap, "{v}");
    cap.0
}
