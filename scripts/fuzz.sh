#!/usr/bin/env bash
# Fuzzes the decoding of client-controlled bytes (fuzz/fuzz_targets/decode.rs) for a bounded
# time: scripts/fuzz.sh [SECONDS] (default 120). Needs cargo-fuzz; the toolchain here is
# stable, so RUSTC_BOOTSTRAP lets cargo-fuzz use the sanitizer flags it needs.
# A crash leaves its input in fuzz/artifacts/decode/: add it to tests/fuzz_regressions.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# An unoptimised build (--dev): on two cores it builds in minutes where the optimised one
# takes half an hour, and decoding small inputs is fast either way. FUZZ_RELEASE=1 optimises.
profile=(--dev)
[ "${FUZZ_RELEASE:-}" = 1 ] && profile=()
RUSTC_BOOTSTRAP=1 cargo fuzz run "${profile[@]}" decode -- -max_total_time="$seconds" \
  -rss_limit_mb=4096
