#!/usr/bin/env bash
# RTMPT against RTMP on one edge, measured in one run (issue 18's figures; docs/rtmpt.md,
# "Measured"). Starts a throw-away bootstrap cluster on its own ports; ffmpeg publishes
# a 30 fps H.264 + AAC test stream (about 600 kbit/s) through edge-1; then PLAYERS
# ffmpeg players (`-c copy -f null`) play it from edge-2, first over RTMP, then over
# RTMPT, each for SECONDS after a warm-up. For each it prints edge-2's CPU seconds
# (utime + stime from /proc), the bytes it handed to the kernel (`wchar` in
# /proc/PID/io: every write and send, whatever the protocol), CPU seconds per GB, and
# for RTMPT the tunnel requests per second per session; then the RTMPT/RTMP ratio.
# The players run on the same machine and cost CPU of their own; only the edge's is
# counted. Needs a release build (cargo build --release -p raftcast) and ffmpeg.
#   scripts/bench-rtmpt.sh [PLAYERS] [SECONDS]     (default 100 30)
set -euo pipefail
cd "$(dirname "$0")/.."
players=${1:-100} secs=${2:-30} warmup=5
bin=${RAFTCAST_BIN:-$PWD/target/release/raftcast}
[[ -x "$bin" ]] || { echo "bench-rtmpt: no $bin; cargo build --release -p raftcast" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "bench-rtmpt: ffmpeg missing: scripts/install-deps.sh" >&2; exit 1; }
data=$(mktemp -d /tmp/bench-rtmpt.XXXXXX)
export RAFTCAST_BIN=$bin RAFTCAST_DATA_DIR=$data RAFTCAST_EDGES=2
export RAFTCAST_HTTP_BASE=27100 RAFTCAST_MEDIA_BASE=27200 RAFTCAST_RTMP_BASE=27300
export RAFTCAST_EDGE_HTTP_BASE=27400
# Every player comes from 127.0.0.1: the per-address caps, which stop one abusive
# address (docs/rtmpt.md, "Bounds"; docs/media-plane.md), would otherwise refuse all but the first 32 RTMPT sessions.
cap=$((2 * players + 16))
export RAFTCAST_EDGE_MAX_RTMPT_SESSIONS_PER_ADDRESS=$cap RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=$cap
export RAFTCAST_EDGE_HTTP_MAX_CONNECTIONS_PER_ADDRESS=$cap RAFTCAST_EDGE_MAX_LONG_REQUESTS_PER_ADDRESS=$cap
export RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS=$cap RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS=$cap
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/bootstrap.sh stop >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT
scripts/bootstrap.sh start >/dev/null
edge1=$(cat "$data/pids/edge-1.pid") edge2=$(cat "$data/pids/edge-2.pid")
rtmp_url=rtmp://127.0.0.1:$((RAFTCAST_RTMP_BASE + 2))/live/bench
rtmpt_url=rtmpt://127.0.0.1:$((RAFTCAST_EDGE_HTTP_BASE + 2))/live/bench
metrics=http://127.0.0.1:$((RAFTCAST_EDGE_HTTP_BASE + 2))/metrics

total=$((2 * (secs + warmup) + 30))
ffmpeg -nostdin -loglevel error -re -f lavfi -i "testsrc=size=640x360:rate=30" -f lavfi -i "sine=frequency=440" \
  -t "$total" -c:v libx264 -preset ultrafast -tune zerolatency -g 60 -b:v 520k -maxrate 520k -bufsize 520k \
  -pix_fmt yuv420p -c:a aac -b:a 64k -f flv "rtmp://127.0.0.1:$((RAFTCAST_RTMP_BASE + 1))/live/bench" \
  2>"$data/publisher.log" &
pids+=($!)
sleep 3

cpu_ticks() { awk '{print $14 + $15}' "/proc/${1:-$edge2}/stat"; }
wchar() { awk '/^wchar/ {print $2}' "/proc/$edge2/io"; }
tunnel_requests() {
  curl -s "$metrics" | awk '/^edge_rtmpt_requests_total/ {n += $2} END {print n + 0}'
}
# Bytes of journal steps edge-2 sent its buddy (edge-1) to protect its sessions.
replica_bytes() {
  curl -s "$metrics" | awk '/^edge_rtmpt_replica_bytes_total/ {n += $2} END {print n + 0}'
}
hz=$(getconf CLK_TCK)

# phase NAME URL: PLAYERS players for warm-up + SECONDS; prints one line.
phase() {
  local name=$1 url=$2 players_pids=() c0 c1 w0 w1 r0 r1 b0 b1 k0 k1 alive
  for _ in $(seq "$players"); do
    ffmpeg -nostdin -loglevel error -i "$url" -c copy -f null - 2>>"$data/players-$name.log" &
    players_pids+=($!)
  done
  sleep "$warmup"
  c0=$(cpu_ticks) w0=$(wchar) r0=$(tunnel_requests) b0=$(cpu_ticks "$edge1") k0=$(replica_bytes)
  sleep "$secs"
  c1=$(cpu_ticks) w1=$(wchar) r1=$(tunnel_requests) b1=$(cpu_ticks "$edge1") k1=$(replica_bytes)
  # What edge-1 holds as edge-2's sessions' buddy (to stderr, beside the line).
  curl -s "http://127.0.0.1:$((RAFTCAST_EDGE_HTTP_BASE + 1))/metrics" |
    awk '/^edge_rtmpt_replicas / {n = $2} /^edge_rtmpt_replica_journal_bytes / {b = $2}
      END { if (n > 0) printf "  buddy holds %d replicas, %.0f journal bytes each\n", n, b / n }' >&2
  alive=0
  for p in "${players_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
  for p in "${players_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${players_pids[@]}" 2>/dev/null || true
  awk -v n="$name" -v c=$((c1 - c0)) -v hz="$hz" -v w=$((w1 - w0)) -v r=$((r1 - r0)) -v p="$players" \
    -v a="$alive" -v s="$secs" -v b=$((b1 - b0)) -v k=$((k1 - k0)) 'BEGIN {
      cpu = c / hz; gb = w / 1e9
      printf "%-6s players %d (alive at the end %d)  edge CPU %.2f s  out %.3f GB  %.2f CPU s/GB  %.0f kbit/s per player",
        n, p, a, cpu, gb, (gb > 0 ? cpu / gb : 0), w * 8 / 1000 / s / p
      if (r > 0) printf "  %.1f requests/s per session", r / s / p
      printf "  edge-1 (publisher%s) CPU %.2f s", (k > 0 ? ", buddy" : ""), b / hz
      if (k > 0) printf "  replica steps %.0f bytes/s per session", k / s / p
      printf "\n"
    }'
  sleep 2
}

rtmp=$(phase rtmp "$rtmp_url")
echo "$rtmp"
rtmpt=$(phase rtmpt "$rtmpt_url")
echo "$rtmpt"
per_gb() { sed -E 's/.* ([0-9.]+) CPU s\/GB.*/\1/' <<<"$1"; }
awk -v a="$(per_gb "$rtmpt")" -v b="$(per_gb "$rtmp")" \
  'BEGIN { if (b > 0) printf "rtmpt/rtmp CPU per GB: %.2fx\n", a / b }'
