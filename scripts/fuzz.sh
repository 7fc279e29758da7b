#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with cargo fuzz on the
# nightly toolchain, installing cargo-fuzz if it is missing. A crash fails the run;
# its input is left in fuzz/artifacts/<target>/ — copy it to fuzz/regressions/<target>/
# so tests/fuzz_regressions.rs replays it in every test run.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# RAFTCAST_FUZZ_SANITIZER picks cargo fuzz's sanitizer (default `address`). CI passes
# `none`: the workspace forbids `unsafe`, so AddressSanitizer only guards the
# dependencies' unsafe code, and building everything with it cost CI a third of the
# fuzz build's time (see .ci/run); the nightly-style run here keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
SANITIZER=${RAFTCAST_FUZZ_SANITIZER:-address}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
mapfile -t targets < <(if (($#)); then printf '%s\n' "$@"; else cargo +nightly fuzz list; fi)
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  # Seed the corpus with the regression inputs (known-interesting shapes).
  [[ -d "fuzz/regressions/$t" ]] && cp -n fuzz/regressions/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
  echo "fuzzing $t for ${SECONDS_EACH}s (sanitizer: $SANITIZER)"
  cargo +nightly fuzz run -s "$SANITIZER" "$t" "fuzz/corpus/$t" -- -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=2048
done
