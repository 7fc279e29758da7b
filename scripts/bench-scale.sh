#!/usr/bin/env bash
# The control plane at scale (issue 15): N publishers through edge-1, each with one
# player on edge-2, on a fresh bootstrap cluster (three origins, two edges), with
# `raftcast bench publish`. Prints what the bench reports (publishers and players live,
# latency, time to first frame, errors) and what the redesign must change: the TCP
# connections each edge holds to the origins' HTTP ports (one long-poll per stream
# before the claims feed) and to their media ports (one link per origin), the origins'
# waiting stream watches and their claims feeds (one per edge since session 11). CPU
# and RSS of every process come from the bench's --watch-pid.
#
#   scripts/bench-scale.sh [--publishers 2000] [--kbps 30] [--fps 10] [--no-audio]
#                          [--seconds 60] [--ramp 100] [--out DIR]
#
# --no-audio --fps 1 makes each stream about 1 kbit/s: many such streams measure the
# control plane (claims, feeds, links, per-stream state) rather than media throughput.
# The edges' per-address caps are raised for the run (every client is 127.0.0.1).
# The report is DIR/publish-N.json (default DIR: a new /tmp/raftcast-scale.*).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=2000 KBPS=30 FPS=10 AUDIO=() SECS=60 RAMP=100 OUT=""
while (($#)); do
  case "$1" in
    --publishers) N=$2; shift 2 ;;
    --kbps) KBPS=$2; shift 2 ;;
    --fps) FPS=$2; shift 2 ;;
    --no-audio) AUDIO=(--no-audio); shift ;;
    --seconds) SECS=$2; shift 2 ;;
    --ramp) RAMP=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--publishers N] [--kbps K] [--fps F] [--no-audio] [--seconds S] [--ramp PER_SECOND] [--out DIR]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d /tmp/raftcast-scale.XXXXXX)}
mkdir -p "$OUT"
BIN=${RAFTCAST_BIN:-$ROOT/target/release/raftcast}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release -p raftcast)
command -v ss >/dev/null || { echo "bench-scale: needs ss (iproute2; scripts/install-deps.sh)" >&2; exit 1; }

export RAFTCAST_DATA_DIR=$OUT/cluster RAFTCAST_BIN=$BIN
export RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=$((4 * N + 100)) RAFTCAST_EDGE_MAX_PUBLISHES_PER_ADDRESS=$((N + 100)) \
  RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS=1000 RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS=$((N + 100)) \
  RAFTCAST_EDGE_MAX_UNSTARTED=$((2 * N + 100)) RAFTCAST_EDGE_MAX_CONNECTIONS=$((2 * N + 1000))
# Every client is a socket here and on an edge: 10,000 streams are 40,000 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
rm -rf "$RAFTCAST_DATA_DIR"
"$ROOT/scripts/bootstrap.sh" start >/dev/null
trap '"$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true' EXIT
PIDS=$RAFTCAST_DATA_DIR/pids
watch=()
for n in edge-1 edge-2 origin-1 origin-2 origin-3; do watch+=(--watch-pid "$(cat "$PIDS/$n.pid")"); done

# Established connections of process $1 to local ports matching $2.
conns_to() { ss -tnp state established 2>/dev/null | awk -v p="pid=$1," '$0 ~ p {print $4}' | grep -cE ":($2)\$" || true; }
sample() {
  for e in 1 2; do
    local p
    p=$(cat "$PIDS/edge-$e.pid")
    echo "  edge-$e: $(conns_to "$p" '810[1-3]') connections to origin HTTP ports," \
      "$(conns_to "$p" '910[1-3]') to origin media ports, $(ls "/proc/$p/fd" | wc -l) descriptors"
  done
  local token
  token=$(cat "$RAFTCAST_DATA_DIR/admin-token")
  for i in 1 2 3; do
    echo "  origin-$i: $(curl -s -H "Authorization: Bearer $token" "127.0.0.1:810$i/metrics" |
      grep -E '^raftcast_(stream_watches|link_claim_feeds|link_publishers|link_subscriptions) ' | tr '\n' ' ')"
  done
}

echo "idle:"; sample
"$BIN" bench publish --publish 127.0.0.1:1935 --play 127.0.0.1:1936 --publishers "$N" --players-per-stream 1 \
  --kbps "$KBPS" --fps "$FPS" --gop $((2 * FPS)) "${AUDIO[@]}" --duration "$SECS" --publisher-ramp "$RAMP" --ramp "$((2 * RAMP))" "${watch[@]}" \
  >"$OUT/publish-$N.json" 2>"$OUT/publish-$N.log" &
bench=$!
# Sample in the middle of the measured hold (after the ramp).
sleep "$(( N / RAMP + SECS / 2 ))"
echo "during the hold:"; sample
status=0; wait "$bench" || status=$?
python3 - "$OUT/publish-$N.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"publishers {d['streams']}: keeping up {d['publishers_keeping_up']}, lagging {d['publishers_lagging']}, failed {d['publishers_failed']}")
print(f"players {d['players']}: keeping up {d['players_keeping_up']}, lagging {d['players_lagging']}, failed {d['players_failed']}, frames lost {d['frames_lost']}")
l, t = d['latency'], d['time_to_first_frame']
print(f"latency p50/p99 {l['p50_ms']:.0f}/{l['p99_ms']:.0f} ms; time to first frame p50/p99 {t['p50_ms']:.0f}/{t['p99_ms']:.0f} ms")
names = ['edge-1', 'edge-2', 'origin-1', 'origin-2', 'origin-3']
for name, p in zip(names, d['processes']):
    per = (p['rss_kib'] - p['rss_kib_before']) / max(d['streams'], 1)
    print(f"{name}: {p['cpu_percent']:.0f} % of a core, RSS {p['rss_kib_before'] // 1024} -> {p['rss_kib'] // 1024} MiB ({per:.0f} KiB per stream)")
errs = d['errors']
if errs:
    print(f"errors ({len(errs)} kept), first: {errs[0]}")
EOF
echo "report: $OUT/publish-$N.json"
exit "$status"
