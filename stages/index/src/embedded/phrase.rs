//! A phrase query whose scorer may be asked about a document it has already passed. tantivy
//! 0.27's `PhraseScorer::seek_danger` asserts (in debug builds) that it never is, but a NOT over
//! a phrase asks exactly that: `Exclude` checks the other clauses' first documents against it.
//! So `kind:event AND NOT "disk full"` could panic a debug build's search, and `query_fuzz`
//! found such a query. The wrapper answers with `DocSet`'s default `seek_danger`, which handles
//! a document already passed; everything else is the phrase's own.

use tantivy::query::{EnableScoring, Explanation, PhraseQuery, Query, Scorer, Weight};
use tantivy::{DocId, DocSet, Score, SegmentReader, Term};

/// [`PhraseQuery`] with a scorer that tolerates look-ups behind it.
#[derive(Clone, Debug)]
pub(crate) struct Phrase(pub(crate) PhraseQuery);

impl Query for Phrase {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(PhraseWeight(self.0.weight(scoring)?)))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor)
    }
}

struct PhraseWeight(Box<dyn Weight>);

impl Weight for PhraseWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(PhraseScorer(self.0.scorer(reader, boost)?)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }
}

struct PhraseScorer(Box<dyn Scorer>);

impl DocSet for PhraseScorer {
    fn advance(&mut self) -> DocId {
        self.0.advance()
    }

    /// Stays where it is when `target` is not ahead (the inner scorer asserts that it is).
    fn seek(&mut self, target: DocId) -> DocId {
        let doc = self.0.doc();
        if target <= doc {
            return doc;
        }
        self.0.seek(target)
    }

    fn doc(&self) -> DocId {
        self.0.doc()
    }

    fn size_hint(&self) -> u32 {
        self.0.size_hint()
    }

    fn cost(&self) -> u64 {
        self.0.cost()
    }
}

impl Scorer for PhraseScorer {
    fn score(&mut self) -> Score {
        self.0.score()
    }
}
