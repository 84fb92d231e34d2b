//! The allow-list of jq builtins a rule may call, and how each call is metered.
//!
//! An allow-list rather than a deny-list: a builtin that a future jaq adds is refused until
//! someone reads what it does. Every entry says what the call costs so that the rewriter can
//! charge the evaluation budget before the work is done (see `budget.rs`). Builtins that can
//! loop forever, read the environment, print, stop the process or blow up as a product of
//! their inputs are refused with a reason.

/// What to charge before a builtin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pre {
    /// Constant-time builtins.
    None,
    /// One unit per byte of a string or element of an array/object (top level).
    Shallow,
    /// The whole input tree, counting shared subtrees every time they occur.
    Deep,
}

/// How the closure arguments of a builtin are metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clos {
    /// The arguments are called once per call (or are plain values).
    None,
    /// Each call of an argument and each of its outputs is charged.
    Tick,
    /// Like `Tick`, but outputs are sort keys, compared deeply: charge them deeply.
    Key,
    /// The argument is a path expression whose targets are updated (`del(f)`).
    Update,
}

/// Calls that need more than a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    /// `range`: literal bounds are checked against the span limit.
    Range,
    /// Regex builtins: argument `re` must be a string literal, `flags` too when present.
    Regex {
        re: usize,
        flags: Option<usize>,
    },
    /// `contains`, `inside`, `indices`, ...: cost is a product of input and argument sizes.
    Pair,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub pre: Pre,
    /// Charge every output (generators and builtins that build new values).
    pub post: bool,
    pub clos: Clos,
    pub special: Special,
}

const fn spec(pre: Pre, post: bool, clos: Clos) -> Spec {
    Spec {
        pre,
        post,
        clos,
        special: Special::None,
    }
}

const CHEAP: Spec = spec(Pre::None, false, Clos::None);
const SHALLOW: Spec = spec(Pre::Shallow, false, Clos::None);
const SHALLOW_NEW: Spec = spec(Pre::Shallow, true, Clos::None);
const DEEP: Spec = spec(Pre::Deep, false, Clos::None);
const DEEP_NEW: Spec = spec(Pre::Deep, true, Clos::None);
const GENERATOR: Spec = spec(Pre::None, true, Clos::None);
const CLOSURES: Spec = spec(Pre::None, true, Clos::Tick);
const RANGE: Spec = Spec {
    pre: Pre::None,
    post: true,
    clos: Clos::None,
    special: Special::Range,
};
const PAIR: Spec = Spec {
    pre: Pre::None,
    post: false,
    clos: Clos::None,
    special: Special::Pair,
};

const fn regex(re: usize, flags: Option<usize>, clos: Clos) -> Spec {
    Spec {
        pre: Pre::None,
        post: true,
        clos,
        special: Special::Regex { re, flags },
    }
}

/// Constant-time builtins of arity 0.
const CHEAP0: &[&str] = &[
    "empty",
    "error",
    "not",
    "true",
    "false",
    "null",
    "nan",
    "infinite",
    "isboolean",
    "isnumber",
    "isstring",
    "isarray",
    "isobject",
    "isnan",
    "isinfinite",
    "isfinite",
    "isnormal",
    "type",
    "values",
    "nulls",
    "booleans",
    "numbers",
    "finites",
    "normals",
    "strings",
    "arrays",
    "objects",
    "iterables",
    "scalars",
    "first",
    "last",
    "abs",
    "floor",
    "ceil",
    "round",
    "utf8bytelength",
    "now",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cbrt",
    "cos",
    "cosh",
    "erf",
    "erfc",
    "exp",
    "exp10",
    "exp2",
    "expm1",
    "fabs",
    "frexp",
    "ilogb",
    "j0",
    "j1",
    "lgamma",
    "log",
    "log10",
    "log1p",
    "log2",
    "modf",
    "nearbyint",
    "rint",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "tgamma",
    "trunc",
    "y0",
    "y1",
    "logb",
    "significand",
    "pow10",
    "gamma",
];
/// Constant-time builtins of arity 2 (numeric).
const CHEAP2: &[&str] = &[
    "atan2",
    "copysign",
    "fdim",
    "fmax",
    "fmin",
    "fmod",
    "hypot",
    "jn",
    "ldexp",
    "nextafter",
    "pow",
    "remainder",
    "scalbln",
    "yn",
    "drem",
    "nexttoward",
    "scalb",
];

/// Look up a builtin by name and arity.
pub(crate) fn lookup(name: &str, arity: usize) -> Option<Spec> {
    if arity == 0 && CHEAP0.contains(&name) || arity == 2 && CHEAP2.contains(&name) {
        return Some(CHEAP);
    }
    Some(match (name, arity) {
        ("error" | "select" | "has" | "in" | "nth", 1) | ("fma", 3) => CHEAP,
        ("length" | "any" | "all" | "mktime" | "gmtime" | "localtime", 0) => SHALLOW,
        ("todate" | "fromdate" | "todateiso8601" | "fromdateiso8601", 0) => SHALLOW,
        ("startswith" | "endswith" | "getpath" | "strftime" | "strflocaltime" | "strptime", 1) => {
            SHALLOW
        }
        (
            "ascii_downcase" | "ascii_upcase" | "explode" | "implode" | "trim" | "ltrim" | "rtrim"
            | "keys" | "keys_unsorted" | "to_entries" | "from_entries" | "reverse" | "tonumber"
            | "toboolean" | "fromjson",
            0,
        ) => SHALLOW_NEW,
        ("ltrimstr" | "rtrimstr" | "split", 1) => SHALLOW_NEW,
        ("tostring" | "tojson" | "sort" | "unique" | "min" | "max" | "flatten" | "add", 0) => {
            DEEP_NEW
        }
        ("@text" | "@json" | "@html" | "@htmld" | "@uri" | "@urid" | "@sh" | "@base64", 0) => {
            DEEP_NEW
        }
        ("@base64d", 0) | ("flatten" | "join", 1) | ("setpath", 2) => DEEP_NEW,
        ("bsearch", 1) => DEEP,
        ("paths" | "recurse", 0) => GENERATOR,
        ("range", 1..=3) => RANGE,
        ("map" | "with_entries", 1) => spec(Pre::Shallow, true, Clos::Tick),
        ("map_values" | "walk" | "pick", 1) => spec(Pre::Deep, true, Clos::Tick),
        ("add" | "paths" | "path" | "first" | "last" | "isempty" | "any" | "all", 1) => CLOSURES,
        ("limit" | "skip" | "nth" | "any" | "all", 2) => CLOSURES,
        ("sort_by" | "group_by" | "unique_by" | "min_by" | "max_by", 1) => {
            spec(Pre::Shallow, true, Clos::Key)
        }
        ("del", 1) => spec(Pre::None, false, Clos::Update),
        ("contains" | "inside" | "indices" | "index" | "rindex", 1) => PAIR,
        ("test" | "match" | "capture" | "scan" | "splits", 1) => regex(0, None, Clos::None),
        ("test" | "match" | "capture" | "scan" | "splits" | "split", 2) => {
            regex(0, Some(1), Clos::None)
        }
        ("sub" | "gsub", 2) => regex(0, None, Clos::Tick),
        ("sub" | "gsub", 3) => regex(0, Some(2), Clos::Tick),
        _ => return None,
    })
}

/// Why a known builtin is refused, if it is one of those.
pub(crate) fn refusal(name: &str) -> Option<&'static str> {
    Some(match name {
        "repeat" | "while" | "until" => "it can loop forever",
        "recurse" => {
            "with an argument it can loop forever (use `..` or `recurse` without arguments)"
        }
        "input" | "inputs" => "a rule sees exactly one event",
        "env" | "$ENV" => "it would expose the worker's environment, which holds secrets",
        "halt" | "halt_error" => "it would stop the worker",
        "debug" | "stderr" | "input_filename" | "input_line_number" | "get_search_list" => {
            "it has side effects or reads the worker's state"
        }
        "combinations" | "transpose" => {
            "its cost grows as the product of its input sizes, which cannot be bounded"
        }
        "delpaths" => "its cost cannot be bounded (use del(...))",
        "getpath_" | "splits_" | "matches" | "split_matches" | "split_" | "key_values"
        | "path_value" | "error_empty" | "debug_empty" | "stderr_empty" | "min_by_or_empty"
        | "max_by_or_empty" | "escape_sh" | "escape_html" | "unescape_html" | "encode_uri"
        | "decode_uri" | "encode_base64" | "decode_base64" | "capture_of_match" | "scan_"
        | "totype" | "tobytes" => "it is an internal helper of the jq library",
        _ => return None,
    })
}

/// Formats allowed in front of a string literal (`@base64 "..."`).
pub(crate) const FORMATS: &[&str] = &[
    "@text", "@json", "@html", "@htmld", "@uri", "@urid", "@sh", "@base64", "@base64d",
];
