#!/usr/bin/env bash
# An edge's memory per RTMP player: starts a one-origin, one-edge cluster (release
# binary), reads the edge's RSS and jemalloc's allocated/resident bytes (/metrics), then
# again with N `bench fanout` players of one 600 kbit/s stream, and prints the growth per
# player. Issue 19 compares it with nginx-rtmp's (`scripts/bench-compare.sh` measures
# nginx's the same way: RSS growth over the players).
#
#   scripts/edge-memory.sh [PLAYERS] [--kbps K]      (default 500 players, 600 kbit/s)
#
# Environment: RAFTCAST_BIN (default target/release/raftcast, built when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# small_cluster_start: the one-origin cluster these measurements run on.
source "$ROOT/scripts/lib/small-cluster.sh"
N=500 KBPS=600
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kbps) KBPS=$2; shift ;;
    *) N=$1 ;;
  esac
  shift
done
BIN=${RAFTCAST_BIN:-$ROOT/target/release/raftcast}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release)
DATA=$(mktemp -d /tmp/raftcast-memory.XXXXXX)
small_cluster_start "$DATA" "$BIN"
edge=$(cat "$DATA/pids/edge-1.pid")
sample() { # RSS KiB, allocated KiB, resident KiB
  local m
  m=$(curl -s 127.0.0.1:27401/metrics)
  echo "$(awk '/VmRSS/ { print $2 }' "/proc/$edge/status")" \
    "$(awk '/^edge_heap_allocated_bytes/ { printf "%d", $2 / 1024 }' <<<"$m")" \
    "$(awk '/^edge_heap_resident_bytes/ { printf "%d", $2 / 1024 }' <<<"$m")"
}
sleep 1
read -r rss0 alloc0 res0 <<<"$(sample)"
"$BIN" bench fanout --publish 127.0.0.1:27301 --play 127.0.0.1:27301 --players "$N" --kbps "$KBPS" --duration 20 \
  --ramp 500 --name memory --watch-pid "$edge" >"$DATA/fanout.json" 2>"$DATA/fanout.log" &
sleep 18
read -r rss1 alloc1 res1 <<<"$(sample)"
wait
echo "edge with $N players at $KBPS kbit/s: RSS $rss0 -> $rss1 KiB, heap allocated ${alloc0:-?} -> ${alloc1:-?} KiB, resident ${res0:-?} -> ${res1:-?} KiB"
awk -v n="$N" -v r0="$rss0" -v r1="$rss1" -v a0="${alloc0:-0}" -v a1="${alloc1:-0}" \
  'BEGIN { printf "per player: RSS %.1f KiB, heap allocated %.1f KiB\n", (r1 - r0) / n, (a1 - a0) / n }'
jq -c '{players_keeping_up, frames_lost}' "$DATA/fanout.json"
