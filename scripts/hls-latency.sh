#!/usr/bin/env bash
# LL-HLS and plain HLS latency against the part target, measured by the player issue 13
# names: hls.js in headless Chromium (tests/hls/play.mjs), through HAProxy with no
# stickiness, on the bootstrap cluster (three origins, two edges), ffmpeg publishing a
# 30 fps test pattern with a 1 s GOP through edge-1.
#
#   scripts/hls-latency.sh [--parts "250 500 1000"] [--seconds 30] [--segment-ms 1000]
#
# For each part target: a fresh cluster (RAFTCAST_EDGE_HLS_PART_MS on every edge), then
# hls.js in low-latency mode for SECONDS, then hls.js with low-latency mode off (plain
# HLS: whole segments, no blocking reloads) for SECONDS, one after the other. Latency is
# the publisher's wall clock against the playhead's program date time, sampled every
# 100 ms (play.mjs). Both players catch up like a low-latency player would
# (maxLiveSyncPlaybackRate 1.25), so a slow start does not stay in the figure.
#
# Prints one line per run and writes play.mjs's reports under a new
# /tmp/raftcast-hls-latency.* directory. Uses the release binary (built if needed) and
# what scripts/install-deps.sh installs (ffmpeg, haproxy, chromium, tests/hls npm).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS="250 500 1000" SECS=30 SEGMENT_MS=1000
while (($#)); do
  case "$1" in
    --parts) PARTS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --segment-ms) SEGMENT_MS=$2; shift 2 ;;
    *) echo "usage: $0 [--parts \"250 500 1000\"] [--seconds N] [--segment-ms N]" >&2; exit 2 ;;
  esac
done
OUT=$(mktemp -d /tmp/raftcast-hls-latency.XXXXXX)
(cd "$ROOT" && cargo build --release --quiet --bin raftcast)
BIN="$ROOT/target/release/raftcast"
# A port range of its own, away from the bootstrap defaults (a cluster may be running).
BASE=${RAFTCAST_HLS_LATENCY_BASE:-26300}
export RAFTCAST_BIN="$BIN" RAFTCAST_DATA_DIR="$OUT/data" RAFTCAST_LB=1
export RAFTCAST_HTTP_BASE=$BASE RAFTCAST_MEDIA_BASE=$((BASE + 10)) RAFTCAST_RTMP_BASE=$((BASE + 4))
export RAFTCAST_EDGE_HTTP_BASE=$((BASE + 14)) RAFTCAST_LB_STATS=127.0.0.1:$((BASE + 19))
export RAFTCAST_EDGE_HLS_SEGMENT_MS=$SEGMENT_MS
unset RAFTCAST_ADMIN_TOKEN RAFTCAST_CLUSTER_SECRET
LB_HTTP=$((BASE + 14)) EDGE1_RTMP=$((BASE + 5))

ffmpeg_pid=""
cleanup() {
  [[ -n "$ffmpeg_pid" ]] && kill "$ffmpeg_pid" 2>/dev/null || true
  "$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "hls.js (tests/hls), ${SECS} s per run, ${SEGMENT_MS} ms segments, 1 s GOP; reports: $OUT"
printf '%-10s %-12s %9s %9s %9s %9s %8s\n' part_ms mode p50_ms p95_ms first_ms stall_ms samples
for part in $PARTS; do
  rm -rf "$OUT/data"
  RAFTCAST_EDGE_HLS_PART_MS=$part "$ROOT/scripts/bootstrap.sh" start >"$OUT/start-$part.log" 2>&1 \
    || { echo "bootstrap start failed: $OUT/start-$part.log" >&2; exit 1; }
  ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=30 \
    -f lavfi -i sine=frequency=440 -map 0:v -map 1:a \
    -c:v libx264 -preset ultrafast -tune zerolatency -g 30 -pix_fmt yuv420p -flags +global_header -c:a aac \
    -f flv "rtmp://127.0.0.1:$EDGE1_RTMP/live/latency" </dev/null &
  ffmpeg_pid=$!
  url="http://127.0.0.1:$LB_HTTP/live/latency/index.m3u8"
  for _ in $(seq 150); do
    [[ $(curl -fsS --max-time 5 "$url" 2>/dev/null | grep -c '#EXTINF') -ge 3 ]] && break
    sleep 0.2
  done
  for mode in ll plain; do
    flags=(--catch-up 1.25)
    [[ $mode == plain ]] && flags+=(--plain)
    report="$OUT/play-$part-$mode.json"
    (cd "$ROOT/tests/hls" && node play.mjs "$url" "$SECS" "${flags[@]}" >"$report") || true
    python3 - "$report" "$part" "$mode" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print(f"{sys.argv[2]:<10} {sys.argv[3]:<12} {l['p50']!s:>9} {l['p95']!s:>9} {l['first']!s:>9} {r['longest_stall_ms']:>9} {l['samples']:>8}"
      + ("" if not r["fatal_errors"] else f"  fatal: {r['fatal_errors'][0]['details']}"))
PY
  done
  kill "$ffmpeg_pid" 2>/dev/null || true
  wait "$ffmpeg_pid" 2>/dev/null || true
  ffmpeg_pid=""
  "$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1
done
