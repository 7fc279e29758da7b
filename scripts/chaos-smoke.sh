#!/usr/bin/env bash
# The chaos smoke run CI does: builds the binaries, then runs every named schedule of
# raftcast-chaos briefly (network namespaces when root, else loopback, which the harness
# announces loudly), including `overload`: every attack of issue 12 at smoke size, in
# three groups, each followed by the recovery checks (the full abuse suite is
# scripts/abuse-suite.sh, nightly, on release binaries). Output under
# ${RAFTCAST_CHAOS_OUT:-<target>/chaos-smoke}.
#
# RAFTCAST_CHAOS_PROFILE picks the build: `dev` (default) reuses what `scripts/test.sh`
# just built, so CI pays a link, not a second build of the crate graph (the release
# build alone took 418 s of CI's 35 minutes in session 29; the smoke itself took 219 s
# on release binaries and 224 s on dev ones, every schedule passing); debug assertions
# and overflow checks stay on under the faults. `release` runs the binaries operators
# ship.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
target=${CARGO_TARGET_DIR:-target}
profile=${RAFTCAST_CHAOS_PROFILE:-dev}
case "$profile" in
  dev) dir=debug ;;
  release) dir=release ;;
  *)
    echo "RAFTCAST_CHAOS_PROFILE must be dev or release, not '$profile'" >&2
    exit 2
    ;;
esac
started=$(date +%s)
cargo build --profile "$profile" --locked -p raftcast -p raftcast-chaos
built=$(date +%s)
echo "chaos: $profile build took $((built - started)) s"
out=${RAFTCAST_CHAOS_OUT:-$target/chaos-smoke}
status=0
"$target/$dir/raftcast-chaos" smoke --out "$out" --bin "$target/$dir/raftcast" || status=$?
echo "chaos: smoke took $(($(date +%s) - built)) s on $profile binaries (report: $out/report.json)"
exit "$status"
