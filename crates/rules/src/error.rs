//! Errors found while loading a rule set. Each names the file, the line where known, the rule,
//! and what to change; a set with any error is refused whole, so all of them are collected.

use std::fmt;

/// One problem in one rule file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleError {
    /// The file, as given in [`crate::RuleSource::path`].
    pub file: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// The rule's name, where known.
    pub rule: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule {rule:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RuleError {}

/// Every problem found in a rule set (never empty).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleErrors(pub Vec<RuleError>);

impl RuleErrors {
    /// The errors, in file order.
    pub fn errors(&self) -> &[RuleError] {
        &self.0
    }
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

impl From<RuleError> for RuleErrors {
    fn from(e: RuleError) -> Self {
        RuleErrors(vec![e])
    }
}
