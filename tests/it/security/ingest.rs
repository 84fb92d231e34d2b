//! Security regressions (ingest): filled in by the hardening work.
