//! (being written) chaos tests for issue 8.
