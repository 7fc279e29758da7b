#!/usr/bin/env bash
# What recording costs the origins (issue 16; docs/recording.md, "Measured"): the same
# publishing load twice on one throw-away bootstrap cluster (three origins, one edge),
# once with recording off and once with `ctl record live on`, and the origins' CPU
# seconds in each.
#
# ffmpeg publishes STREAMS copies of a pre-encoded file (a 1280x720 30 fps lavfi test
# pattern with noise, H.264 at about 2.5 Mbit/s with a keyframe every 2 s, plus AAC,
# made once) through edge-1 with `-re -stream_loop -1 -c copy`, for SECONDS. For each
# run it prints:
#   - origin CPU: utime + stime of every origin process (/proc/PID/stat), summed,
#     from just before the publishers start to SETTLE seconds after they stop (so the
#     pieces' finishing and their copies to a second origin are in the recorded run);
#   - written: raftcast_recording_written_bytes_total summed over the origins (the
#     owners' piece writes), and the growth of their recordings/ directories (du:
#     replicas included, so about twice the written bytes once every piece is copied);
# then the figure: extra origin CPU seconds per GB written, and the ratio of origin CPU
# with recording to without.
#
#   scripts/recording-overhead.sh [STREAMS] [SECONDS]      (default 4 60)
#
# Builds the release binary first (`cargo build --release`, into $CARGO_TARGET_DIR when
# set, else target/), unless RAFTCAST_BIN names one. The cluster lives under a new
# /tmp/recording-overhead.* directory, removed at the end, on ports 300 above
# bootstrap.sh's defaults (a default cluster may run beside it); RAFTCAST_HTTP_BASE,
# RAFTCAST_MEDIA_BASE, RAFTCAST_RTMP_BASE and RAFTCAST_EDGE_HTTP_BASE move them.
# RAFTCAST_SETTLE_SECS (default 10). Needs ffmpeg and curl (scripts/install-deps.sh).
# A benchmark, not a test: not part of CI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STREAMS=${1:-4} DURATION=${2:-60}
SETTLE=${RAFTCAST_SETTLE_SECS:-10}
[[ $STREAMS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [STREAMS] [SECONDS]" >&2; exit 2; }
die() { echo "recording-overhead: $*" >&2; exit 1; }
for tool in ffmpeg curl; do command -v "$tool" >/dev/null || die "needs $tool (scripts/install-deps.sh)"; done

if [[ -n ${RAFTCAST_BIN:-} ]]; then
  BIN=$RAFTCAST_BIN
else
  (cd "$ROOT" && cargo build --release --quiet --bin raftcast) || die "cargo build --release failed"
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/raftcast
fi
[[ -x $BIN ]] || die "no binary at $BIN"

OUT=$(mktemp -d /tmp/recording-overhead.XXXXXX)
HTTP_BASE=${RAFTCAST_HTTP_BASE:-8400} MEDIA_BASE=${RAFTCAST_MEDIA_BASE:-9400}
RTMP_BASE=${RAFTCAST_RTMP_BASE:-2234} EDGE_HTTP_BASE=${RAFTCAST_EDGE_HTTP_BASE:-8380}
export RAFTCAST_BIN=$BIN RAFTCAST_DATA_DIR=$OUT/cluster RAFTCAST_ORIGINS=3 RAFTCAST_EDGES=1 RAFTCAST_LB=0 \
  RAFTCAST_HTTP_BASE=$HTTP_BASE RAFTCAST_MEDIA_BASE=$MEDIA_BASE RAFTCAST_RTMP_BASE=$RTMP_BASE \
  RAFTCAST_EDGE_HTTP_BASE=$EDGE_HTTP_BASE
ORIGINS=(1 2 3)
PUBLISHERS=()
cleanup() {
  local pid
  for pid in "${PUBLISHERS[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT

# Refuse ports something already listens on (another cluster), rather than measure it.
for port in $((HTTP_BASE + 1)) $((HTTP_BASE + 2)) $((HTTP_BASE + 3)) $((MEDIA_BASE + 1)) $((MEDIA_BASE + 2)) \
  $((MEDIA_BASE + 3)) $((RTMP_BASE + 1)) $((EDGE_HTTP_BASE + 1)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "127.0.0.1:$port is in use; move the port bases"; fi
done

echo "encoding the source (20 s, 1280x720 30 fps, ~2.5 Mbit/s)" >&2
SOURCE=$OUT/source.flv
# Temporal noise, or the encoder would need far less than the bit rate for a test pattern.
ffmpeg -nostdin -v error -f lavfi -i "testsrc=size=1280x720:rate=30,noise=alls=8:allf=t+u" \
  -f lavfi -i "sine=frequency=440:sample_rate=44100" \
  -t 20 -c:v libx264 -preset veryfast -b:v 2400k -maxrate 2400k -bufsize 4800k -g 60 -pix_fmt yuv420p \
  -c:a aac -b:a 96k -f flv "$SOURCE" || die "could not encode the source"
echo "source: $(stat -c %s "$SOURCE" | awk '{ printf "%.0f", $1 * 8 / 20 / 1000 }') kbit/s" >&2

"$ROOT/scripts/bootstrap.sh" start >"$OUT/bootstrap.log" 2>&1 || { cat "$OUT/bootstrap.log" >&2; die "bootstrap failed"; }
DATA=$OUT/cluster
TOKEN=$(<"$DATA/admin-token")
ctl() { "$BIN" ctl --origin "127.0.0.1:$((HTTP_BASE + 1)),127.0.0.1:$((HTTP_BASE + 2)),127.0.0.1:$((HTTP_BASE + 3))" \
  --token-file "$DATA/admin-token" "$@"; }
TICK=$(getconf CLK_TCK)

# utime + stime of every origin, in seconds (fields 14 and 15 of /proc/PID/stat, counted
# after the ")" that ends the command name).
origin_cpu() {
  local i pid total=0 ticks
  for i in "${ORIGINS[@]}"; do
    pid=$(<"$DATA/pids/origin-$i.pid")
    ticks=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }') || die "origin-$i (pid $pid) is gone"
    total=$((total + ticks))
  done
  awk -v t="$total" -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz }'
}
# raftcast_recording_written_bytes_total summed over the origins.
written() {
  local i total=0 v
  for i in "${ORIGINS[@]}"; do
    v=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$((HTTP_BASE + i))/metrics" \
      | awk '$1 == "raftcast_recording_written_bytes_total" { printf "%.0f", $2 }') || die "no metrics from origin-$i"
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
# Bytes under the origins' recordings/ directories (pieces and replicas).
on_disk() {
  local i total=0 v
  for i in "${ORIGINS[@]}"; do
    v=0
    [[ -d $DATA/origin-$i/recordings ]] && v=$(du -sb "$DATA/origin-$i/recordings" | cut -f1)
    total=$((total + v))
  done
  echo "$total"
}

# One run: publishes live/$1-1..N for SECONDS, prints its line, sets CPU and WRITTEN.
run() {
  local label=$1 cpu0 written0 disk0 cpu1 written1 disk1 n pid t0 t1
  written0=$(written) disk0=$(on_disk) t0=$(date +%s.%N) cpu0=$(origin_cpu)
  PUBLISHERS=()
  for n in $(seq 1 "$STREAMS"); do
    ffmpeg -nostdin -v error -re -stream_loop -1 -i "$SOURCE" -c copy -f flv \
      "rtmp://127.0.0.1:$((RTMP_BASE + 1))/live/$label-$n" >>"$OUT/ffmpeg-$label.log" 2>&1 &
    PUBLISHERS+=($!)
  done
  sleep "$DURATION"
  for pid in "${PUBLISHERS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a publisher of the $label run exited early: $(tail -n 3 "$OUT/ffmpeg-$label.log")"
  done
  for pid in "${PUBLISHERS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PUBLISHERS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PUBLISHERS=()
  sleep "$SETTLE"
  cpu1=$(origin_cpu) t1=$(date +%s.%N) written1=$(written) disk1=$(on_disk)
  CPU=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
  WRITTEN=$((written1 - written0))
  awk -v l="$label" -v c="$CPU" -v w="$WRITTEN" -v d="$((disk1 - disk0))" -v s="$STREAMS" -v t="$DURATION" \
    -v wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    'BEGIN { printf "%-13s %d streams x %d s: origin CPU %6.2f s (%4.1f %% of a core over %.0f s), written %7.1f MB, recordings/ +%7.1f MB\n",
             l, s, t, c, c / wall * 100, wall, w / 1e6, d / 1e6 }'
}

run recording-off
CPU_OFF=$CPU
ctl record live on >/dev/null
run recording-on
CPU_ON=$CPU WRITTEN_ON=$WRITTEN
(( WRITTEN_ON > 0 )) || die "nothing was recorded"
# Every recording of the on run finished and copied within the settle time?
replicated=$(ctl --json recordings | grep -o '"replicated": *true' | wc -l) || true
(( replicated >= STREAMS )) || echo "note: $replicated of $STREAMS recordings replicated when CPU was read" >&2
awk -v on="$CPU_ON" -v off="$CPU_OFF" -v w="$WRITTEN_ON" 'BEGIN {
  printf "recording: %+.2f origin CPU s for %.3f GB written: %.1f CPU s per GB; origin CPU with/without: %.2fx\n",
         on - off, w / 1e9, (on - off) / (w / 1e9), (off > 0 ? on / off : 0) }'
