//! Security regressions (state): filled in by the hardening work.
