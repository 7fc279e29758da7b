#!/usr/bin/env bash
# VOD through the edges (issue 16; docs/vod.md): time to first byte from a cold and a
# warm edge cache, and the cache's throughput, on a throw-away bootstrap cluster.
#
# ffmpeg publishes SECONDS of a 1280x720 30 fps test pattern (about KBPS kbit/s of
# H.264, keyframe every 2 s, plus AAC) through edge-1 into a recorded app; once the
# recording is finished, each edge is asked for it:
#   flv cold   GET /vod/{id}.flv on edge-1: the edge fetches the whole file from an
#              origin first, then sends it
#   flv warm   the same again: from edge-1's disk cache
#   hls cold   GET /vod/{id}/index.m3u8 on edge-2 (its cache is cold), then init.mp4
#              and segment 0: a player's first picture
#   hls warm   the same again on edge-2 (file cached, index in memory)
#   rtmp cold  rtmpdump plays rtmp://edge-3/vod/{id} (its cache is cold) until it has
#              the first 0.1 s of media: connect, handshake, play, the edge's fetch,
#              the first frames
#   rtmp warm  the same again on edge-3
# Prints time to first byte, total time and throughput for each; ffmpeg decodes the
# HLS VOD and the file and their video frames are compared (framemd5).
#
#   scripts/vod-figures.sh [SECONDS] [KBPS]     (default 60 2500)
#
# Needs a release build and ffmpeg (scripts/install-deps.sh). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60} kbps=${2:-2500}
bin=${RAFTCAST_BIN:-$PWD/target/release/raftcast}
[[ -x "$bin" ]] || { echo "vod-figures: no $bin; cargo build --release -p raftcast" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "vod-figures: ffmpeg missing; run scripts/install-deps.sh" >&2; exit 1; }
data=$(mktemp -d /tmp/vod-figures.XXXXXX)
export RAFTCAST_BIN=$bin RAFTCAST_DATA_DIR=$data RAFTCAST_EDGES=3
export RAFTCAST_HTTP_BASE=28100 RAFTCAST_MEDIA_BASE=28200 RAFTCAST_RTMP_BASE=28300
export RAFTCAST_EDGE_HTTP_BASE=28400 RAFTCAST_AGENT_BASE=28450
cleanup() { scripts/bootstrap.sh stop >/dev/null 2>&1 || true; rm -rf "$data"; }
trap cleanup EXIT
scripts/bootstrap.sh start >/dev/null
ctl() { "$bin" ctl --origin 127.0.0.1:28101,127.0.0.1:28102,127.0.0.1:28103 --token-file "$data/admin-token" "$@"; }
ctl record vodfig on >/dev/null

echo "publishing $secs s at about $kbps kbit/s through edge-1" >&2
ffmpeg -v error -re -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=44100" \
  -t "$secs" -c:v libx264 -preset veryfast -tune zerolatency -b:v "${kbps}k" -maxrate "${kbps}k" -bufsize "${kbps}k" \
  -g 60 -c:a aac -b:a 96k -f flv "rtmp://127.0.0.1:28301/vodfig/clip"

id=""
for _ in $(seq 100); do
  id=$(ctl --json recordings 2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin)["recordings"]:
    if r["app"] == "vodfig" and r.get("finished"):
        print(r["id"])' || true)
  [[ -n "$id" ]] && break
  sleep 0.2
done
[[ -n "$id" ]] || { echo "vod-figures: the recording did not finish" >&2; exit 1; }

# TTFB, total, bytes, bytes/s of one GET; retried while the edge answers 409 (the
# publisher's claim going away after the last piece finished).
get() {
  local url=$1 out
  for _ in $(seq 50); do
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_starttransfer} %{time_total} %{size_download} %{speed_download}' "$url")
    [[ ${out%% *} == 409 ]] || break
    sleep 0.2
  done
  [[ ${out%% *} == 200 ]] || { echo "vod-figures: GET $url: $out" >&2; exit 1; }
  echo "${out#* }"
}
row() { # label ttfb total bytes speed
  awk -v l="$1" -v a="$2" -v b="$3" -v c="$4" -v d="$5" \
    'BEGIN { printf "%-10s  first byte %7.1f ms  total %7.1f ms  %6.1f MB  %7.1f MB/s\n", l, a*1000, b*1000, c/1e6, d/1e6 }'
}
e1=http://127.0.0.1:28401 e2=http://127.0.0.1:28402
row "flv cold" $(get "$e1/vod/$id.flv")
row "flv warm" $(get "$e1/vod/$id.flv")
for pass in cold warm; do
  read -r t1 _ _ _ < <(get "$e2/vod/$id/index.m3u8")
  read -r _ t2 _ _ < <(get "$e2/vod/$id/init.mp4")
  read -r _ t3 b3 _ < <(get "$e2/vod/$id/0.m4s")
  awk -v l="hls $pass" -v a="$t1" -v b="$t2" -v c="$t3" -v d="$b3" \
    'BEGIN { printf "%-10s  playlist %7.1f ms, + init %5.1f ms, + segment 0 %5.1f ms (%.0f KB): first picture after %7.1f ms\n", l, a*1000, b*1000, c*1000, d/1e3, (a+b+c)*1000 }'
done
command -v rtmpdump >/dev/null || { echo "vod-figures: rtmpdump missing; run scripts/install-deps.sh" >&2; exit 1; }
for pass in cold warm; do
  t0=$(date +%s.%N)
  rtmpdump -q -r "rtmp://127.0.0.1:28303/vod/$id" --stop 0.1 -o /dev/null || true
  t1=$(date +%s.%N)
  awk -v l="rtmp $pass" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-10s  rtmpdump, connect to the first 0.1 s of media: %7.1f ms\n", l, (b-a)*1000 }'
done
frames() { ffmpeg -v error -i "$1" -map 0:v -f framemd5 - | grep -v '^#' | awk -F, '{ print $NF }'; }
if cmp -s <(frames "$e1/vod/$id.flv") <(frames "$e2/vod/$id/index.m3u8"); then
  echo "HLS VOD decodes to the same $(frames "$e1/vod/$id.flv" | wc -l) video frames as the file"
else
  echo "vod-figures: HLS VOD and the file decode to different video frames" >&2; exit 1
fi
