#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the servers and tools the tests need
# (deploy/install.sh), checks formatting and lints, then runs every test of the workspace. The
# tests start their own servers on free ports with temporary directories and stop them after.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

./deploy/install.sh
export WHALE_ST2_CLI="$ROOT/.whale/tools/bin/st2"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build (every binary: the tests run whale-bench and the emulator beside whale)"
cargo build --workspace --bins --quiet
echo "== cargo test"
mkdir -p "$ROOT/.whale"
# `|| status=...`: under `set -e` a failing run would end the script before the summary line.
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$ROOT/.whale/test.log" || status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "whale: %d passed, %d failed\n", p, f }' "$ROOT/.whale/test.log"
exit "$status"
