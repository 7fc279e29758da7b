#!/usr/bin/env bash
# What TLS costs an edge: the same fanout workload played over RTMP and over RTMPS from
# one edge, in interleaved rounds so both see the same background load. A one-origin,
# one-edge bootstrap cluster with RAFTCAST_TLS=1 (its throw-away CA); the publisher
# uses plain RTMP, players alternate between the edge's RTMP and RTMPS ports. The edge
# is pinned to CPU 1 and the load tool to CPU 0 (when there are two CPUs or more).
#
#   scripts/bench-tls.sh [BIN] [--players N] [--kbps K] [--rounds R] [--duration S]
#
# Prints one line per run (edge CPU seconds per GB delivered, % of a core, latency) and
# the RTMPS/RTMP ratio of CPU per GB over all rounds; reports stay under a new
# /tmp/raftcast-tls.* directory. Handshakes per second are measured separately (see
# docs/tls.md: openssl s_time against the edge's RTMPS port).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release/raftcast
if [[ $# -gt 0 && $1 != --* ]]; then BIN=$(readlink -f "$1"); shift; fi
PLAYERS=500 KBPS=600 ROUNDS=2 DURATION=15
while [[ $# -gt 0 ]]; do
  case "$1" in
    --players) PLAYERS=$2; shift ;;
    --kbps) KBPS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -x $BIN ]] || { echo "no binary at $BIN: cargo build --release -p raftcast" >&2; exit 2; }
for tool in jq taskset openssl; do command -v "$tool" >/dev/null || { echo "needs $tool (scripts/install-deps.sh)" >&2; exit 2; }; done
OUT=$(mktemp -d /tmp/raftcast-tls.XXXXXX)
ulimit -n 65536 2>/dev/null || true
cp "$BIN" "$OUT/raftcast" && BIN=$OUT/raftcast
BASE=26000
export RAFTCAST_BIN=$BIN RAFTCAST_DATA_DIR=$OUT/cluster RAFTCAST_TLS=1 RAFTCAST_ORIGINS=1 RAFTCAST_EDGES=1 \
  RAFTCAST_HTTP_BASE=$((BASE + 100)) RAFTCAST_MEDIA_BASE=$((BASE + 200)) RAFTCAST_RTMP_BASE=$((BASE + 300)) \
  RAFTCAST_EDGE_HTTP_BASE=$((BASE + 400)) RAFTCAST_RTMPS_BASE=$((BASE + 500)) RAFTCAST_HTTPS_BASE=$((BASE + 600)) \
  RAFTCAST_EDGE_MAX_CONNECTIONS=20000 RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=20000 \
  RAFTCAST_EDGE_MAX_HANDSHAKES=20000 RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS=20000 \
  RAFTCAST_EDGE_MAX_UNSTARTED=20000 RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS=20000
trap '"$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true' EXIT
"$ROOT/scripts/bootstrap.sh" start >"$OUT/bootstrap.log" 2>&1 || { cat "$OUT/bootstrap.log" >&2; exit 1; }
edge=$(cat "$OUT/cluster/pids/edge-1.pid")
rtmp=127.0.0.1:$((BASE + 301)) rtmps=127.0.0.1:$((BASE + 501))
LOAD=()
if [[ $(nproc) -ge 2 ]]; then
  taskset -acp 1 "$edge" >/dev/null
  LOAD=(taskset -c 0)
fi
declare -A sum=([rtmp]=0 [rtmps]=0)
for round in $(seq 1 "$ROUNDS"); do
  for side in rtmp rtmps; do
    args=(--publish "$rtmp" --play "$rtmp")
    [[ $side == rtmps ]] && args=(--publish "$rtmp" --play "$rtmps" --play-tls-ca "$OUT/cluster/tls/ca.pem")
    report=$OUT/$side-$round.json
    "${LOAD[@]}" "$BIN" bench fanout "${args[@]}" --players "$PLAYERS" --kbps "$KBPS" --duration "$DURATION" \
      --name "tls$round-$side" --watch-pid "$edge" >"$report" 2>"$OUT/$side-$round.log"
    jq -r --arg side "$side" --arg round "$round" \
      '"\($side | ascii_upcase) round \($round): \(.players) players at \(.kbps) kbit/s, edge \(.processes[0].cpu_seconds_per_gb * 100 | round / 100) s/GB (\(.processes[0].cpu_percent | round) % core), keeping up \(.players_keeping_up), lost \(.frames_lost), p50 \((.latency.p50_ms // -1) * 10 | round / 10) ms, p99 \((.latency.p99_ms // -1) * 10 | round / 10) ms"' \
      "$report"
    sum[$side]=$(jq -r --arg s "${sum[$side]}" '($s | tonumber) + .processes[0].cpu_seconds_per_gb' "$report")
  done
done
jq -rn --arg a "${sum[rtmp]}" --arg b "${sum[rtmps]}" --arg r "$ROUNDS" \
  '"edge CPU per GB delivered, mean of \($r) rounds: RTMP \(($a | tonumber) / ($r | tonumber) * 100 | round / 100) s, RTMPS \(($b | tonumber) / ($r | tonumber) * 100 | round / 100) s: RTMPS/RTMP \(($b | tonumber) / ($a | tonumber) * 100 | round / 100)x"'
echo "reports: $OUT"
