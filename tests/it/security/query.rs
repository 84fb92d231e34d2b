//! Security regressions (query): filled in by the hardening work.
