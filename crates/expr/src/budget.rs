//! The evaluation budget ("fuel") and the native filters that charge it.
//!
//! jaq has no fuel and no timeout, and a thread cannot be stopped from outside. So the rewriter
//! (`rewrite.rs`) threads calls to the natives below through every place where work can
//! multiply: each output of `.[]`, `..`, `,` and generator builtins, each call of a closure
//! argument, each byte or element that a builtin walks or builds, each root of an update.
//! The budget lives in a thread-local counter that `Filter::run` sets before a run; once it is
//! spent every further charge fails, so even a `try` that catches the error only gets to the next
//! charge, and the run is reported as over budget whatever it caught.
//!
//! The budget is also one of time: [`reset`] takes a deadline, and every 256th charge (and every
//! 4096th node of a deep walk) compares the clock with it. Past the deadline the fuel is set to
//! spent, so the run stops at its next charge exactly as if the steps had run out, and
//! [`timed_out`] tells the caller which of the two limits it hit. Work between two charges is
//! bounded by the fuel, so a run overshoots its deadline by at most that much.
//!
//! It also holds the replacements for builtins whose jaq version is unsafe: `fromjson` (jaq's
//! parser recurses without a depth limit) and `getpath` (an unbounded path builds an unbounded
//! deep value), and the checked arithmetic (`"x" * 1e10` allocates 10 GB in one step).

use jaq_core::box_iter::box_once;
use jaq_core::native::{v, Fun};
use jaq_core::{Error, Exn, Native, ValX, ValXs};
use jaq_json::{Num, Val};
use std::cell::Cell;
use std::time::Instant;

/// The data type our filters run on.
pub(crate) type D = jaq_core::data::JustLut<Val>;

thread_local! {
    static FUEL: Cell<i64> = const { Cell::new(i64::MAX) };
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static TIMED_OUT: Cell<bool> = const { Cell::new(false) };
    static CHARGES: Cell<u32> = const { Cell::new(0) };
}

pub(crate) const EXHAUSTED: &str = "evaluation budget exhausted";

/// Charges between two looks at the clock (a look costs about 25 ns; a charge a few).
const CLOCK_EVERY: u32 = 256;
/// Nodes of a deep walk between two looks at the clock.
const CLOCK_EVERY_NODES: u32 = 4096;

/// Give the current thread `fuel` units and until `deadline` (none: no time limit) for the
/// next run.
pub(crate) fn reset(fuel: u64, deadline: Option<Instant>) {
    FUEL.set(i64::try_from(fuel).unwrap_or(i64::MAX));
    DEADLINE.set(deadline);
    TIMED_OUT.set(false);
    CHARGES.set(0);
}

/// True if the last run was stopped by its deadline (rather than by its fuel).
pub(crate) fn timed_out() -> bool {
    TIMED_OUT.get()
}

/// Past the deadline: spend the fuel so that this and every further charge fails.
fn past_deadline() -> bool {
    match DEADLINE.get() {
        Some(d) if Instant::now() >= d => {
            TIMED_OUT.set(true);
            FUEL.set(-1);
            true
        }
        _ => false,
    }
}

/// Counts one charge; every [`CLOCK_EVERY`]th looks at the clock.
fn clock_due() -> bool {
    let n = CHARGES.get().wrapping_add(1);
    CHARGES.set(n);
    n.is_multiple_of(CLOCK_EVERY)
}

/// True if a charge failed since the last [`reset`].
pub(crate) fn exhausted() -> bool {
    FUEL.get() < 0
}

fn err<'a>(msg: impl ToString) -> Exn<'a, Val> {
    Exn::from(Error::str(msg))
}

/// Charge `units`; fails once the budget is spent.
pub(crate) fn charge<'a>(units: u64) -> Result<(), Exn<'a, Val>> {
    let left = FUEL
        .get()
        .saturating_sub(i64::try_from(units).unwrap_or(i64::MAX));
    FUEL.set(left);
    if left < 0 || (clock_due() && past_deadline()) {
        Err(err(EXHAUSTED))
    } else {
        Ok(())
    }
}

/// Size of the top level of a value: bytes of a string, elements of an array or object.
pub(crate) fn shallow(v: &Val) -> u64 {
    match v {
        Val::TStr(b) | Val::BStr(b) => b.len() as u64,
        Val::Arr(a) => a.len() as u64,
        Val::Obj(o) => o.len() as u64,
        Val::Num(n) => num_bits(n) / 64,
        Val::Null | Val::Bool(_) => 0,
    }
}

fn num_bits(n: &Num) -> u64 {
    match n {
        Num::BigInt(i) => i.bits(),
        Num::Dec(s) => 4 * s.len() as u64,
        Num::Int(_) | Num::Float(_) => 64,
    }
}

/// Charge the whole tree of `v`, counting shared subtrees every time they occur (that is what a
/// walk over the value costs). Stops as soon as the budget is spent.
pub(crate) fn charge_deep<'a>(v: &Val) -> Result<(), Exn<'a, Val>> {
    let mut left = FUEL.get();
    let mut stack = vec![v];
    let mut nodes = 0u32;
    while let Some(v) = stack.pop() {
        left = left.saturating_sub(1 + i64::try_from(shallow(v)).unwrap_or(i64::MAX));
        nodes = nodes.wrapping_add(1);
        if left < 0 || (nodes.is_multiple_of(CLOCK_EVERY_NODES) && past_deadline()) {
            FUEL.set(left.min(-1));
            return Err(err(EXHAUSTED));
        }
        match v {
            Val::Arr(a) => stack.extend(a.iter()),
            Val::Obj(o) => stack.extend(o.iter().flat_map(|(k, v)| [k, v])),
            _ => {}
        }
    }
    FUEL.set(left);
    if clock_due() && past_deadline() {
        return Err(err(EXHAUSTED));
    }
    Ok(())
}

fn once<'a>(r: Result<Val, Exn<'a, Val>>) -> ValXs<'a, Val> {
    box_once(r)
}

fn tick<'a>(v: Val) -> ValX<'a, Val> {
    charge(1 + shallow(&v))?;
    Ok(v)
}

fn deep<'a>(v: Val) -> ValX<'a, Val> {
    charge_deep(&v)?;
    Ok(v)
}

fn add<'a>(l: Val, r: Val) -> ValX<'a, Val> {
    tick((l + r)?)
}

fn sub<'a>(l: Val, r: Val) -> ValX<'a, Val> {
    if let (Val::Arr(a), Val::Arr(b)) = (&l, &r) {
        // array difference compares every pair of elements
        charge((a.len() as u64).saturating_mul(b.len() as u64))?;
        charge_deep(&l)?;
        charge_deep(&r)?;
    }
    tick((l - r)?)
}

fn mul<'a>(l: Val, r: Val) -> ValX<'a, Val> {
    match (&l, &r) {
        (Val::TStr(s) | Val::BStr(s), Val::Num(n)) | (Val::Num(n), Val::TStr(s) | Val::BStr(s)) => {
            let times = match n {
                Num::Int(i) => u64::try_from(*i).unwrap_or(0),
                Num::BigInt(_) => u64::MAX,
                Num::Float(_) | Num::Dec(_) => 0,
            };
            // charge the result before it is allocated
            charge((s.len() as u64).saturating_mul(times))?;
        }
        (Val::Num(x), Val::Num(y)) => {
            let (bx, by) = (num_bits(x), num_bits(y));
            if bx + by > 1 << 16 {
                return Err(err(
                    "number too large: the product would have more than 65536 bits",
                ));
            }
            charge((bx / 64 + 1) * (by / 64 + 1))?;
        }
        (Val::Obj(_), Val::Obj(_)) => {
            charge_deep(&l)?;
            charge_deep(&r)?;
        }
        _ => {}
    }
    tick((l * r)?)
}

fn div<'a>(l: Val, r: Val) -> ValX<'a, Val> {
    charge(shallow(&l))?;
    tick((l / r)?)
}

/// `fromjson` with serde_json's nesting limit (128) instead of jaq's unbounded recursion.
fn fromjson<'a>(v: Val) -> ValX<'a, Val> {
    let bytes: &[u8] = match &v {
        Val::TStr(b) | Val::BStr(b) => b,
        _ => return Err(Exn::from(Error::typ(v, "string"))),
    };
    charge(bytes.len() as u64)?;
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(json) => Ok(crate::value::to_val(&json)),
        Err(e) => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned();
            Err(err(format!("cannot parse {text:?} as JSON: {e}")))
        }
    }
}

macro_rules! binary {
    ($f:expr) => {
        Native::new(|mut cv| {
            let r = cv.0.pop_var();
            let l = cv.0.pop_var();
            once($f(l, r))
        })
    };
}

/// The metering natives, and the replacement for `fromjson`.
pub(crate) fn natives() -> impl Iterator<Item = Fun<D>> {
    // identity filters that charge, usable in value, path and update position
    let tick_native = Native::<D>::new(|cv| once(tick(cv.1)))
        .with_paths(|cv| box_once(charge(1 + shallow(&cv.1 .0)).map(|()| cv.1)))
        .with_update(|cv, f| match charge(1 + shallow(&cv.1)) {
            Ok(()) => f(cv.1),
            Err(e) => box_once(Err(e)),
        });
    let deep_native = Native::<D>::new(|cv| once(deep(cv.1)))
        .with_paths(|cv| box_once(charge_deep(&cv.1 .0).map(|()| cv.1)))
        .with_update(|cv, f| match charge_deep(&cv.1) {
            Ok(()) => f(cv.1),
            Err(e) => box_once(Err(e)),
        });
    // free in value and path position; charges the whole root when it is updated
    let update_native = Native::<D>::new(|cv| once(Ok(cv.1)))
        .with_paths(|cv| box_once(Ok(cv.1)))
        .with_update(|cv, f| match charge_deep(&cv.1) {
            Ok(()) => f(cv.1),
            Err(e) => box_once(Err(e)),
        });
    // charge `weight` units per byte of the input string (a regex search is O(m * n))
    let regex_native = Native::<D>::new(|mut cv| {
        let weight = cv.0.pop_var();
        let w = match weight {
            Val::Num(Num::Int(w)) => u64::try_from(w).unwrap_or(1),
            _ => 1,
        };
        let cost = (1 + shallow(&cv.1)).saturating_mul(w);
        once(charge(cost).map(|()| cv.1))
    });
    // charge both sides of `contains`, `inside`, `indices`: the product for two arrays
    let pair_native = Native::<D>::new(|mut cv| {
        let other = cv.0.pop_var();
        let r = (|| {
            if let (Val::Arr(a), Val::Arr(b)) = (&cv.1, &other) {
                charge((a.len() as u64).saturating_mul(b.len() as u64))?;
            }
            charge_deep(&cv.1)?;
            charge_deep(&other)?;
            Ok(cv.1)
        })();
        once(r)
    });
    [
        ("__whale_tick", v(0), tick_native),
        ("__whale_deep", v(0), deep_native),
        ("__whale_upd", v(0), update_native),
        ("__whale_regex", v(1), regex_native),
        ("__whale_pair", v(1), pair_native),
        ("__whale_add", v(2), binary!(add)),
        ("__whale_sub", v(2), binary!(sub)),
        ("__whale_mul", v(2), binary!(mul)),
        ("__whale_div", v(2), binary!(div)),
        ("fromjson", v(0), Native::new(|cv| once(fromjson(cv.1)))),
    ]
    .into_iter()
}

/// jaq natives that are removed outright (defence in depth: the allow-list already refuses them).
pub(crate) const REMOVED_NATIVES: &[&str] = &["fromjson", "env", "input", "inputs"];

/// Definitions that replace jaq's, appended to the prelude.
pub(crate) const DEFS: &str = r#"
def getpath($path):
  if ($path | length) > 64 then error("getpath: a path may have at most 64 elements")
  else reduce $path[] as $p (.; .[$p]) end;
def setpath($path; $x): getpath($path) = $x;
"#;
