#!/usr/bin/env bash
# The nightly abuse suite (issue 12): builds the release binaries, then runs every
# attack of raftcast-chaos alone at the issue's size (abuse-<attack>), then the 64 KiB
# write flood sustained for 5 minutes while a follower is stopped for a minute and must
# catch up during it (flood-catchup). Not part of CI: the smoke runs the short
# `overload` schedule instead (scripts/chaos-smoke.sh). About 25-40 minutes.
# Output under ${RAFTCAST_ABUSE_OUT:-<target>/abuse-suite}; one schedule only with
#   scripts/abuse-suite.sh abuse-rtmp-drip
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
target=${CARGO_TARGET_DIR:-target}
started=$(date +%s)
cargo build --release --locked -p raftcast -p raftcast-chaos
built=$(date +%s)
echo "abuse: release build took $((built - started)) s"
# Copied aside so a rebuild during the run cannot change them under it.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
cp "$target/release/raftcast" "$target/release/raftcast-chaos" "$bin/"
out=${RAFTCAST_ABUSE_OUT:-$target/abuse-suite}
status=0
if (($#)); then
  for s in "$@"; do
    "$bin/raftcast-chaos" run --schedule "$s" --out "$out/$s" --bin "$bin/raftcast" || status=$?
  done
else
  "$bin/raftcast-chaos" suite --out "$out" --bin "$bin/raftcast" || status=$?
fi
echo "abuse: suite took $(($(date +%s) - built)) s (report: $out/report.json)"
exit "$status"
