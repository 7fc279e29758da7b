#!/usr/bin/env bash
# The edge's load window over time: a one-origin, one-edge cluster with the edge pinned
# to the last core (every thread) and the origin and the load tool on the other, N
# `bench fanout` players at 600 kbit/s, and every second the edge's CPU sample and its
# write merge window from /metrics. Shows whether the window settles or oscillates
# (docs/media-plane.md, "Merged writes"; BENCHMARKS.md, session 25).
#
#   scripts/load-window.sh [PLAYERS]          (default 2000)
#
# Prints "second cpu_permille window_us" per second, then the fanout report's summary.
# Environment: RAFTCAST_BIN (default target/release/raftcast, built when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# small_cluster_start: the one-origin cluster these measurements run on.
source "$ROOT/scripts/lib/small-cluster.sh"
N=${1:-2000}
BIN=${RAFTCAST_BIN:-$ROOT/target/release/raftcast}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release)
last=$(($(nproc) - 1))
((last > 0)) || { echo "needs two cores" >&2; exit 2; }
DATA=$(mktemp -d /tmp/raftcast-window.XXXXXX)
small_cluster_start "$DATA" "$BIN"
edge=$(cat "$DATA/pids/edge-1.pid") origin=$(cat "$DATA/pids/origin-1.pid")
taskset -a -p -c "$last" "$edge" >/dev/null
taskset -a -p -c "0-$((last - 1))" "$origin" >/dev/null
taskset -c "0-$((last - 1))" "$BIN" bench fanout --publish 127.0.0.1:27301 --play 127.0.0.1:27301 --players "$N" \
  --kbps 600 --duration 40 --ramp 500 --name window --watch-pid "$edge" >"$DATA/fanout.json" 2>"$DATA/fanout.log" &
for i in $(seq 1 50); do
  m=$(curl -s 127.0.0.1:27401/metrics || true)
  echo "$i $(awk '/^edge_load_cpu_permille/ { print $2 }' <<<"$m") $(awk '/^edge_write_merge_window_microseconds/ { print $2 }' <<<"$m")"
  sleep 1
done
wait
jq -c '{players_keeping_up, frames_lost, p99_ms: .latency.p99_ms, edge_s_per_gb: .processes[0].cpu_seconds_per_gb}' "$DATA/fanout.json"
