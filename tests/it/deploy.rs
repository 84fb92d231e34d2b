//! (being written) deploy tests for issue 8.
