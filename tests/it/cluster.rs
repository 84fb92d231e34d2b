//! (being written) cluster tests for issue 8.
