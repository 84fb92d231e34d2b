//! Cheap checks that run before jaq's lexer and parser see a program. jaq's lexer, parser,
//! compiler and interpreter are recursive: a program such as `[[[[...]]]]` nested 100,000 deep
//! or `- - - - ... 1` would overflow the stack and abort the process before any other check
//! could run. These scans bound the program length, the bracket nesting and the number of
//! tokens that make the parser recurse, using no recursion themselves.

use crate::{ExprError, Limits};
use jaq_core::load::lex::{StrPart, Tok, Token};

/// Refuse programs that are too long or nested too deeply for the recursive parser.
pub(crate) fn check_source(src: &str, limits: &Limits) -> Result<(), ExprError> {
    if src.len() > limits.max_program_bytes {
        return Err(ExprError::new(format!(
            "program is {} bytes long; the limit is {} (move logic into several steps)",
            src.len(),
            limits.max_program_bytes
        )));
    }
    if src.trim().is_empty() {
        return Err(ExprError::new("program is empty"));
    }
    #[derive(PartialEq)]
    enum Open {
        Bracket,
        Interpolation,
        Str,
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut depth = 0usize;
    let mut chars = src.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if stack.last() == Some(&Open::Str) {
            match c {
                '\\' => {
                    if let Some((_, '(')) = chars.next() {
                        stack.push(Open::Interpolation);
                        depth += 1;
                    }
                }
                '"' => {
                    stack.pop();
                }
                _ => {}
            }
        } else {
            match c {
                '#' => {
                    for (_, c) in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                '"' => stack.push(Open::Str),
                '(' | '[' | '{' => {
                    stack.push(Open::Bracket);
                    depth += 1;
                }
                ')' | ']' | '}' => {
                    if matches!(stack.last(), Some(Open::Bracket | Open::Interpolation)) {
                        stack.pop();
                        depth -= 1;
                    }
                }
                _ => {}
            }
            if depth > limits.max_bracket_depth {
                return Err(ExprError::at(
                    src,
                    i,
                    format!(
                        "brackets are nested more than {} deep",
                        limits.max_bracket_depth
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Tokens after which jaq's parser recurses without an enclosing bracket.
const NESTING: &[&str] = &[
    "|", "as", "if", "elif", "try", "catch", "reduce", "foreach", "label", "def", "-", "=", "|=",
    "+=", "-=", "*=", "/=", "%=", "//=", "?",
];

/// Refuse programs with more nesting tokens than allowed (bounds parser recursion).
pub(crate) fn check_tokens(
    src: &str,
    tokens: &[Token<&str>],
    limits: &Limits,
) -> Result<(), ExprError> {
    let mut count = 0usize;
    let mut todo: Vec<&[Token<&str>]> = vec![tokens];
    while let Some(list) = todo.pop() {
        for Token(s, tok) in list {
            match tok {
                Tok::Block(inner) => todo.push(inner),
                Tok::Str(parts) => {
                    for part in parts {
                        if let StrPart::Term(Token(_, Tok::Block(inner))) = part {
                            todo.push(inner);
                        }
                    }
                }
                _ if NESTING.contains(s) => {
                    count += 1;
                    if count > limits.max_nesting_tokens {
                        return Err(ExprError::at_slice(
                            src,
                            s,
                            format!(
                                "program has more than {} operators that nest (`|`, `as`, `if`, \
                                 `-`, ...); split it into simpler steps",
                                limits.max_nesting_tokens
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}
