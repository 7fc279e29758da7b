#!/usr/bin/env bash
# The chaos smoke run CI does: builds the release binaries, then runs every named
# schedule of raftcast-chaos briefly (network namespaces when root, else loopback, which
# the harness announces loudly), including `overload`: every attack of issue 12 at smoke
# size, in three groups, each followed by the recovery checks (the full abuse suite is
# scripts/abuse-suite.sh, nightly). Output under ${RAFTCAST_CHAOS_OUT:-<target>/chaos-smoke}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
target=${CARGO_TARGET_DIR:-target}
started=$(date +%s)
cargo build --release --locked -p raftcast -p raftcast-chaos
built=$(date +%s)
echo "chaos: release build took $((built - started)) s"
out=${RAFTCAST_CHAOS_OUT:-$target/chaos-smoke}
status=0
"$target/release/raftcast-chaos" smoke --out "$out" --bin "$target/release/raftcast" || status=$?
echo "chaos: smoke took $(($(date +%s) - built)) s (report: $out/report.json)"
exit "$status"
