#!/usr/bin/env bash
# A/B of two raftcast binaries on the same fanout workload, runs interleaved so both
# see the same background load: each binary gets its own one-origin, one-edge cluster
# (publisher and players on the edge: edge -> origin -> edge).
#
#   scripts/bench-ab.sh BIN_A BIN_B [--players N] [--kbps "600 2500"] [--rounds R] [--duration S]
#                       [--a-env VAR=VALUE]... [--b-env VAR=VALUE]... [--pin]
#
# --pin puts each edge (every thread) on the last core and the origins and the load tool on
# the others: the edge's figures at saturation are then those of one core.
#
# --a-env/--b-env set environment for one side's cluster only, to compare settings of
# one binary, e.g. --a-env RAFTCAST_EDGE_WRITE_MERGE_MS=0 --b-env RAFTCAST_EDGE_WRITE_MERGE_MS=20.
#
# --so "1 32" runs shared-object writes instead of fanout: each binary gets a three-origin
# cluster and `bench so` at each concurrency for --duration seconds; the line shows
# writes/s, latency and the three origins' CPU per write (from /proc, client excluded).
#
# Prints one line per run (edge and origin CPU per GB, latency) and writes the reports
# under a new /tmp/raftcast-ab.* directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -ge 2 ]] || { echo "usage: $0 BIN_A BIN_B [--players N] [--kbps \"600 2500\"] [--rounds R] [--duration S]" >&2; exit 2; }
A=$(readlink -f "$1") B=$(readlink -f "$2"); shift 2
PLAYERS=500 KBPS="600 2500" ROUNDS=3 DURATION=15 SO="" PIN=0
A_ENV=() B_ENV=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --players) PLAYERS=$2; shift ;;
    --kbps) KBPS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --a-env) A_ENV+=("$2"); shift ;;
    --b-env) B_ENV+=("$2"); shift ;;
    --so) SO=$2; shift ;;
    --pin) PIN=1 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=$(mktemp -d /tmp/raftcast-ab.XXXXXX)
ulimit -n 65536 2>/dev/null || true
# Copies, so a rebuild during the run changes nothing (and `ps` shows which side is which).
mkdir -p "$OUT/bin-a" "$OUT/bin-b"
cp "$A" "$OUT/bin-a/raftcast" && cp "$B" "$OUT/bin-b/raftcast"
A=$OUT/bin-a/raftcast B=$OUT/bin-b/raftcast

ORIGINS=1
[[ -n $SO ]] && ORIGINS=3
# The load tool opens every player from 127.0.0.1: the edges' per-address caps are
# raised (a binary without these settings ignores them).
cluster_env() { # label base
  echo RAFTCAST_DATA_DIR="$OUT/$1" RAFTCAST_ORIGINS=$ORIGINS RAFTCAST_EDGES=1 RAFTCAST_HTTP_BASE=$(($2 + 100)) \
    RAFTCAST_MEDIA_BASE=$(($2 + 200)) RAFTCAST_RTMP_BASE=$(($2 + 300)) RAFTCAST_EDGE_HTTP_BASE=$(($2 + 400)) \
    RAFTCAST_EDGE_MAX_CONNECTIONS=20000 RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=20000 \
    RAFTCAST_EDGE_MAX_HANDSHAKES=20000 RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS=20000 \
    RAFTCAST_EDGE_MAX_UNSTARTED=20000 RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS=20000 \
    RAFTCAST_EDGE_MAX_PUBLISHES_PER_ADDRESS=20000
}
stop_all() {
  env $(cluster_env a 24000) RAFTCAST_BIN="$A" "$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true
  env $(cluster_env b 25000) RAFTCAST_BIN="$B" "$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true
}
trap stop_all EXIT
env $(cluster_env a 24000) "${A_ENV[@]}" RAFTCAST_BIN="$A" "$ROOT/scripts/bootstrap.sh" start >"$OUT/a.log" 2>&1
env $(cluster_env b 25000) "${B_ENV[@]}" RAFTCAST_BIN="$B" "$ROOT/scripts/bootstrap.sh" start >"$OUT/b.log" 2>&1
LOAD_CPUS="" LOAD=()
if ((PIN)); then
  last=$(($(nproc) - 1))
  ((last > 0)) || { echo "--pin needs two cores" >&2; exit 2; }
  LOAD_CPUS="0-$((last - 1))"
  for side in a b; do
    taskset -a -p -c "$last" "$(cat "$OUT/$side/pids/edge-1.pid")" >/dev/null
    for pid in $(cat "$OUT/$side"/pids/origin-*.pid); do taskset -a -p -c "$LOAD_CPUS" "$pid" >/dev/null; done
  done
  LOAD=(taskset -c "$LOAD_CPUS")
  echo "pinned: edges on core $last, origins and the load tool on $LOAD_CPUS"
fi
echo "A: $A ${A_ENV[*]}"
echo "B: $B ${B_ENV[*]}"
echo "reports: $OUT"
cpu_ticks() { # side: utime + stime of its origins, in clock ticks
  local total=0 pid
  for pid in $(cat "$OUT/$1"/pids/origin-*.pid); do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  echo "$total"
}
if [[ -n $SO ]]; then
  hz=$(getconf CLK_TCK)
  for round in $(seq 1 "$ROUNDS"); do
    for conc in $SO; do
      for side in a b; do
        base=24000; [[ $side == b ]] && base=25000
        origins=127.0.0.1:$((base + 101)),127.0.0.1:$((base + 102)),127.0.0.1:$((base + 103))
        load=$(cut -d' ' -f1 /proc/loadavg) before=$(cpu_ticks "$side")
        "$A" bench so --origins "$origins" --token-file "$OUT/$side/admin-token" --concurrency "$conc" \
          --duration "$DURATION" >"$OUT/$side-so$conc-$round.json" 2>/dev/null || true
        cpu=$(( $(cpu_ticks "$side") - before ))
        jq -r --arg side "$side" --arg round "$round" --arg load "$load" --argjson cpu "$cpu" --argjson hz "$hz" \
          '"\($side | ascii_upcase) round \($round) so \(.concurrency) clients: \(.writes_per_sec | floor) writes/s, p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, errors \(.errors), origins \($cpu / $hz * 1000 / ([.writes, 1] | max) * 1000 | round / 1000) ms CPU/write, load \($load)"' \
          "$OUT/$side-so$conc-$round.json" || echo "$side round $round so $conc: no report"
      done
    done
  done
  exit 0
fi
for round in $(seq 1 "$ROUNDS"); do
  for kbps in $KBPS; do
    for side in a b; do
      base=24000; [[ $side == b ]] && base=25000
      rtmp=127.0.0.1:$((base + 301))
      edge=$(cat "$OUT/$side/pids/edge-1.pid") origin=$(cat "$OUT/$side/pids/origin-1.pid")
      load=$(cut -d' ' -f1 /proc/loadavg)
      "${LOAD[@]}" "$A" bench fanout --publish "$rtmp" --play "$rtmp" --players "$PLAYERS" --kbps "$kbps" --duration "$DURATION" \
        --name "ab$round-$kbps" --watch-pid "$edge" --watch-pid "$origin" >"$OUT/$side-$kbps-$round.json" 2>/dev/null
      jq -r --arg side "$side" --arg round "$round" --arg load "$load" \
        '"\($side | ascii_upcase) round \($round) \(.kbps) kbit/s \(.players) players: edge \(.processes[0].cpu_seconds_per_gb * 100 | round / 100) s/GB (\(.processes[0].cpu_percent | round) % core), origin \(.processes[1].cpu_seconds_per_gb * 100 | round / 100) s/GB, keeping up \(.players_keeping_up), lost \(.frames_lost), p50 \((.latency.p50_ms // -1) * 10 | round / 10) ms, p99 \((.latency.p99_ms // -1) * 10 | round / 10) ms, audio p50 \((.audio_latency.p50_ms // -1) * 10 | round / 10) ms, p99 \((.audio_latency.p99_ms // -1) * 10 | round / 10) ms, load \($load)"' \
        "$OUT/$side-$kbps-$round.json" || echo "$side round $round $kbps kbit/s: no report"
    done
  done
done
