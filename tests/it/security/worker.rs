//! Security regressions (worker): filled in by the hardening work.
