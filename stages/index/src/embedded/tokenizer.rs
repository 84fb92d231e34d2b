//! The embedded index's free-text tokenizer, `whale_text`: tantivy's `default` (split on anything
//! that is not a letter or digit, lowercase, drop long tokens) plus overlapping bigrams for runs of
//! Chinese, Japanese and Korean characters, which carry no spaces between words. `磁盘空间不足`
//! is indexed as `磁盘 盘空 空间 间不 不足` at consecutive positions, so the query `磁盘` (one
//! bigram) or `空间不足` (a phrase of three) finds the sentence, and a word that is not in it does
//! not. A lone CJK character stays a unigram. This is what Lucene's `cjk_bigram` filter does, so
//! the OpenSearch backend (template.rs) matches the same words.
//!
//! Bigrams rather than a dictionary segmenter (jieba): no dictionary to ship or load, every
//! language at once, and a word the dictionary lacks (a host or product name in Chinese) is still
//! found; the cost is one extra term per CJK character, measured in `benches/index.rs`.

use std::iter::Peekable;
use std::str::CharIndices;

use tantivy::tokenizer::{
    LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the `text` field's indexing options refer to.
pub const NAME: &str = "whale_text";

/// Longest token kept, in bytes (as tantivy's `default`).
const MAX_TOKEN: usize = 40;

/// The analyzer registered as [`NAME`].
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(CjkTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN))
        .filter(LowerCaser)
        .build()
}

/// Han (with CJK radicals, iteration marks and compatibility ideographs), Hiragana, Katakana
/// (full and half width) and Hangul: the scripts written without spaces between words.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x2E80..=0x2FDF
        | 0x3005..=0x3007
        | 0x3021..=0x3029
        | 0x3038..=0x303B
        | 0x3040..=0x30FF
        | 0x3131..=0x318E
        | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA960..=0xA97F
        | 0xAC00..=0xD7FF
        | 0xF900..=0xFAFF
        | 0xFF66..=0xFF9F
        | 0xFFA0..=0xFFDC
        | 0x1100..=0x11FF
        | 0x20000..=0x3FFFF)
}

#[derive(Clone, Default)]
pub struct CjkTokenizer {
    token: Token,
}

pub struct CjkTokenStream<'a> {
    text: &'a str,
    chars: Peekable<CharIndices<'a>>,
    /// Inside a CJK run: where the last emitted bigram's second character starts.
    run: Option<usize>,
    token: &'a mut Token,
}

impl Tokenizer for CjkTokenizer {
    type TokenStream<'a> = CjkTokenStream<'a>;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> CjkTokenStream<'a> {
        self.token.reset();
        CjkTokenStream {
            text,
            chars: text.char_indices().peekable(),
            run: None,
            token: &mut self.token,
        }
    }
}

impl CjkTokenStream<'_> {
    fn emit(&mut self, from: usize, to: usize) -> bool {
        self.token.text.clear();
        self.token.text.push_str(&self.text[from..to]);
        self.token.offset_from = from;
        self.token.offset_to = to;
        self.token.position = self.token.position.wrapping_add(1);
        true
    }

    /// The CJK character right after the cursor, if any: (start, end).
    fn next_cjk(&mut self) -> Option<(usize, usize)> {
        match self.chars.peek() {
            Some(&(i, c)) if is_cjk(c) && c.is_alphanumeric() => Some((i, i + c.len_utf8())),
            _ => None,
        }
    }
}

impl TokenStream for CjkTokenStream<'_> {
    fn advance(&mut self) -> bool {
        if let Some(prev) = self.run.take() {
            // Continue the run: the previous bigram's second character and the next one.
            if let Some((i, end)) = self.next_cjk() {
                self.chars.next();
                self.run = Some(i);
                return self.emit(prev, end);
            }
        }
        while let Some((from, c)) = self.chars.next() {
            if !c.is_alphanumeric() {
                continue;
            }
            if is_cjk(c) {
                let end = from + c.len_utf8();
                return match self.next_cjk() {
                    Some((i, to)) => {
                        self.chars.next();
                        self.run = Some(i);
                        self.emit(from, to)
                    }
                    None => self.emit(from, end),
                };
            }
            let mut to = from + c.len_utf8();
            while let Some(&(i, c)) = self.chars.peek() {
                if !c.is_alphanumeric() || is_cjk(c) {
                    break;
                }
                to = i + c.len_utf8();
                self.chars.next();
            }
            return self.emit(from, to);
        }
        false
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<(usize, String)> {
        let mut a = analyzer();
        let mut s = a.token_stream(text);
        let mut out = Vec::new();
        while let Some(t) = s.next() {
            out.push((t.position, t.text.clone()));
        }
        out
    }

    fn words(text: &str) -> Vec<String> {
        tokens(text).into_iter().map(|(_, t)| t).collect()
    }

    #[test]
    fn latin_text_as_the_default_tokenizer() {
        let mut d = tantivy::tokenizer::TokenizerManager::default()
            .get("default")
            .unwrap();
        for text in [
            "Disk almost full on /var",
            "kernel: Oops, BUG at mm/slab.c — web-12 93% Ünïcode ΑΒΓ",
            "",
            "   ",
            "a_b c3po x".repeat(3).as_str(),
        ] {
            let mut s = d.token_stream(text);
            let mut want = Vec::new();
            while let Some(t) = s.next() {
                want.push((t.position, t.text.clone()));
            }
            assert_eq!(tokens(text), want, "{text:?}");
        }
    }

    #[test]
    fn cjk_runs_become_bigrams() {
        assert_eq!(
            words("磁盘空间不足，服务器即将停止服务"),
            [
                "磁盘", "盘空", "空间", "间不", "不足", "服务", "务器", "器即", "即将", "将停",
                "停止", "止服", "服务"
            ]
        );
        // Positions are consecutive, so a longer word is a phrase of its bigrams.
        let t = tokens("服务器");
        assert_eq!(t, [(0, "服务".into()), (1, "务器".into())]);
        assert_eq!(words("磁"), ["磁"]);
        assert_eq!(
            words("Nginx服务器 CPU使用率95%"),
            ["nginx", "服务", "务器", "cpu", "使用", "用率", "95"]
        );
        assert_eq!(
            words("ディスク容量が不足"),
            ["ディ", "ィス", "スク", "ク容", "容量", "量が", "が不", "不足"]
        );
        assert_eq!(words("디스크 공간 부족"), ["디스", "스크", "공간", "부족"]);
    }
}
