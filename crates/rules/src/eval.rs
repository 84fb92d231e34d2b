//! The per-event evaluation context: counters, and a small memo of path lookups shared by every
//! rule that looks at the same event. Rules of one event type mostly test the same few paths
//! (`.detail.env`, `.detail.usage_pct`), so with the memo each path is looked up once per event
//! instead of once per rule.

use crate::step::Counts;
use std::collections::HashMap;
use whale_expr::path::{Lookup, SimplePath};
use whale_expr::Input;

/// Assigns one id per distinct path of a rule set.
#[derive(Default)]
pub(crate) struct Paths(HashMap<SimplePath, u32>);

impl Paths {
    pub fn id(&mut self, p: &SimplePath) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(p.clone()).or_insert(next)
    }
}

const MEMO: usize = 16;

pub(crate) struct Cx<'a> {
    pub input: &'a Input,
    pub counts: Counts,
    memo: [(u32, Option<Lookup<'a>>); MEMO],
    len: usize,
}

impl<'a> Cx<'a> {
    pub fn new(input: &'a Input) -> Self {
        Cx {
            input,
            counts: Counts::default(),
            memo: [(0, None); MEMO],
            len: 0,
        }
    }

    /// Look `path` (with id `id`) up in the event, once per event.
    pub fn lookup(&mut self, id: u32, path: &SimplePath) -> Lookup<'a> {
        if let Some((_, Some(l))) = self.memo[..self.len].iter().find(|(i, _)| *i == id) {
            return *l;
        }
        let l = path.lookup(self.input.value());
        if self.len < MEMO {
            self.memo[self.len] = (id, Some(l));
            self.len += 1;
        }
        l
    }
}
