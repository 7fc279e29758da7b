#!/usr/bin/env bash
# A jemalloc heap profile of an edge under `bench fanout` players: what the players
# (and the stream) hold, by allocation site. Builds the release binary with the
# `heap-profiling` feature into its own target dir, starts a one-origin cluster with
# one edge (publisher and players on it) or two (--players-edge: publisher on edge-1,
# players and the profile on edge-2), dumps the edge's heap before the players and
# 25 s into them (`prof.dump` through gdb), and prints `jeprof --text --cum` of the
# difference. Used for docs/media-plane.md's and BENCHMARKS.md's memory figures
# (session 26).
#
#   scripts/heap-profile.sh [PLAYERS] [--kbps K] [--players-edge]   (default 500, 600)
#
# Needs gdb and jeprof (Debian: gdb, libjemalloc-dev; installed when missing).
# Environment: HEAP_PROFILE_TARGET (default /tmp/raftcast-heap-target).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# small_cluster_start: the one-origin cluster these measurements run on.
source "$ROOT/scripts/lib/small-cluster.sh"
N=500 KBPS=600 EDGES=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kbps) KBPS=$2; shift ;;
    --players-edge) EDGES=2 ;;
    *) N=$1 ;;
  esac
  shift
done
if ! command -v gdb >/dev/null || ! command -v jeprof >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdb libjemalloc-dev >/dev/null
fi
TARGET=${HEAP_PROFILE_TARGET:-/tmp/raftcast-heap-target}
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --features heap-profiling)
BIN=$TARGET/release/raftcast
DATA=$(mktemp -d /tmp/raftcast-heap.XXXXXX)
mkdir -p "$DATA/jeprof"
export _RJEM_MALLOC_CONF=prof:true,lg_prof_sample:12,prof_prefix:$DATA/jeprof/p
small_cluster_start "$DATA" "$BIN" "$EDGES"
edge=$(cat "$DATA/pids/edge-$EDGES.pid")
dump() { gdb -p "$edge" -batch -ex 'call (int)_rjem_mallctl("prof.dump", 0, 0, 0, 0)' >/dev/null 2>&1; }
sleep 2
dump
"$BIN" bench fanout --publish 127.0.0.1:27301 --play "127.0.0.1:$((27300 + EDGES))" --players "$N" \
  --kbps "$KBPS" --duration 30 --name heap --watch-pid "$edge" >"$DATA/fanout.json" 2>"$DATA/fanout.log" &
sleep 25
dump
wait
jq -c '{players_keeping_up, frames_lost}' "$DATA/fanout.json"
dumps=("$DATA"/jeprof/*.heap) # p.PID.0.m0.heap, then p.PID.1.m1.heap
jeprof --text --cum --base="${dumps[0]}" "$BIN" "${dumps[-1]}" 2>/dev/null \
  | grep -E "Total|raftcast::|Cell::new|hashbrown|reserve_inner" | head -40
echo "profiles: $DATA/jeprof (jeprof --text --cum --focus=NAME --base=FIRST $BIN LAST)"
