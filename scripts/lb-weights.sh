#!/usr/bin/env bash
# HAProxy's server weights following the edges' load (issue 17; docs/hls.md, "The
# agent"). Starts a throw-away bootstrap cluster with RAFTCAST_LB=1 on its own ports,
# loads edge-1 alone with `raftcast bench fanout` (publisher and players on edge-1's
# own RTMP port, not through the balancer), and meanwhile:
#   - prints both edges' weights as HAProxy's stats socket/page shows them, every second;
#   - sends GETs through the balancer and counts which edge answered them.
# Then the same with no load, for comparison. Prints one table; needs a release build.
#   scripts/lb-weights.sh [PLAYERS] [KBPS] [SECONDS]     (default 300 2500 20)
set -euo pipefail
cd "$(dirname "$0")/.."
players=${1:-300} kbps=${2:-2500} secs=${3:-20}
bin=${RAFTCAST_BIN:-$PWD/target/release/raftcast}
[[ -x "$bin" ]] || { echo "lb-weights: no $bin; cargo build --release -p raftcast" >&2; exit 1; }
data=$(mktemp -d /tmp/lb-weights.XXXXXX)
export RAFTCAST_BIN=$bin RAFTCAST_DATA_DIR=$data RAFTCAST_LB=1 RAFTCAST_EDGES=2
export RAFTCAST_HTTP_BASE=26100 RAFTCAST_MEDIA_BASE=26200 RAFTCAST_RTMP_BASE=26300
export RAFTCAST_EDGE_HTTP_BASE=26400 RAFTCAST_LB_STATS=127.0.0.1:26490 RAFTCAST_AGENT_BASE=26450
cleanup() { scripts/bootstrap.sh stop >/dev/null 2>&1 || true; rm -rf "$data"; }
trap cleanup EXIT
scripts/bootstrap.sh start >/dev/null

# "edge-1 edge-2" weights and answered-request totals from HAProxy's CSV stats.
stats() {
  curl -s "http://$RAFTCAST_LB_STATS/;csv" | awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 == "edges_http" && $2 ~ /^edge-/ { printf "%s %s %s ", $2, $col["weight"], $col["stot"] }'
  echo
}
# GETs through the balancer for $1 seconds, 20 at a time.
requests() {
  local until=$((SECONDS + $1))
  while ((SECONDS < until)); do
    for _ in $(seq 20); do curl -s -o /dev/null "http://127.0.0.1:26400/webcast/app.js" & done
    wait
  done
}
# Samples weights every second for $1 seconds, printing them; returns the request split.
phase() {
  local label=$1 n=$2 before after
  before=$(stats)
  requests "$n" &
  local req=$!
  for _ in $(seq "$n"); do
    sleep 1
    read -r _ w1 _ _ w2 _ <<<"$(stats)"
    echo "$label  edge-1 weight $w1  edge-2 weight $w2"
  done
  wait "$req"
  after=$(stats)
  read -r _ _ a1 _ _ a2 <<<"$before"
  read -r _ _ b1 _ _ b2 <<<"$after"
  echo "$label  requests answered: edge-1 $((b1 - a1)), edge-2 $((b2 - a2))"
}

sleep 3
phase idle 8
edge1_rtmp=127.0.0.1:$((RAFTCAST_RTMP_BASE + 1))
"$bin" bench fanout --publish "$edge1_rtmp" --play "$edge1_rtmp" --players "$players" --kbps "$kbps" \
  --duration "$secs" --ramp 200 >"$data/fanout.json" 2>"$data/fanout.log" &
fanout=$!
sleep $((players / 200 + 4))
phase "loaded ($players players of $kbps kbit/s on edge-1)" $((secs - 6))
wait "$fanout" || true
sleep 8
phase after 6
