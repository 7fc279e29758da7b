#!/usr/bin/env bash
# HLS segment delivery from one core: an edge against nginx serving the same segment
# files statically, same run, same client (wrk), and the ratios.
#
#   scripts/bench-hls.sh [--edge-url PLAYLIST_URL] [--edge-pid PID] [--seconds 10]
#                        [--connections 32] [--segments 8]
#
# Without --edge-url only the nginx half runs, on segments ffmpeg makes (fMP4, 2 s,
# about 2.5 Mbit/s). With it, the segments the edge's playlist lists at the start are
# downloaded, nginx serves those very files under the same paths, and wrk requests
# them round-robin from each server in turn (edge first; a short run, so they stay in
# the edge's window: non-2xx answers are counted and printed). The server under test
# is pinned to CPU 1 (`taskset`, every thread), wrk to CPU 0.
#
# Printed per server: requests/s, MB/s, CPU seconds of the server process (utime +
# stime from /proc, all threads) and CPU seconds per GB delivered; then edge/nginx
# ratios. The edge's pid comes from --edge-pid or from the listener of the URL's port.
# Needs wrk, nginx, ffmpeg, curl, taskset (scripts/install-deps.sh).
set -euo pipefail

EDGE_URL="" EDGE_PID="" SECS=10 CONNS=32 NSEG=8
while (($#)); do
  case "$1" in
    --edge-url) EDGE_URL=$2; shift 2 ;;
    --edge-pid) EDGE_PID=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --segments) NSEG=$2; shift 2 ;;
    *) echo "usage: $0 [--edge-url PLAYLIST_URL] [--edge-pid PID] [--seconds N] [--connections N] [--segments N]" >&2; exit 2 ;;
  esac
done
for tool in wrk nginx ffmpeg curl taskset; do
  command -v "$tool" >/dev/null || { echo "bench-hls: $tool missing; run scripts/install-deps.sh" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/bench-hls.XXXXXX)
NGINX_PORT=${BENCH_HLS_NGINX_PORT:-28180}
NGINX_PID=""
cleanup() { [[ -n "$NGINX_PID" ]] && kill "$NGINX_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# The files: the edge's own segments, or ffmpeg's.
PATHS=()
if [[ -n "$EDGE_URL" ]]; then
  playlist=$(curl -fsS --max-time 5 "$EDGE_URL") || { echo "bench-hls: cannot fetch $EDGE_URL" >&2; exit 1; }
  base=${EDGE_URL%/*}
  path_base=/${base#*://*/}
  mapfile -t uris < <(grep -v '^#' <<<"$playlist" | grep . | tail -n "$NSEG")
  ((${#uris[@]})) || { echo "bench-hls: no segments in $EDGE_URL" >&2; exit 1; }
  mkdir -p "$WORK/root$path_base"
  for u in "${uris[@]}"; do
    curl -fsS --max-time 10 -o "$WORK/root$path_base/$u" "$base/$u"
    PATHS+=("$path_base/$u")
  done
  if [[ -z "$EDGE_PID" ]]; then
    port=${base#*://*:}; port=${port%%/*}
    EDGE_PID=$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  fi
  [[ "$EDGE_PID" =~ ^[0-9]+$ ]] || { echo "bench-hls: no edge pid; pass --edge-pid" >&2; exit 1; }
else
  mkdir -p "$WORK/root/live/bench"
  ffmpeg -nostdin -loglevel error -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \
    -t $((NSEG * 2)) -c:v libx264 -preset veryfast -b:v 2500k -maxrate 2500k -bufsize 5000k -g 60 -c:a aac \
    -f hls -hls_time 2 -hls_segment_type fmp4 -hls_list_size 0 \
    -hls_segment_filename "$WORK/root/live/bench/seg-%d.m4s" "$WORK/root/live/bench/index.m3u8"
  for f in "$WORK"/root/live/bench/seg-*.m4s; do PATHS+=("/live/bench/${f##*/}"); done
fi
bytes_total=$(cat "${PATHS[@]/#/$WORK/root}" | wc -c)
echo "segments: ${#PATHS[@]} files, $((bytes_total / ${#PATHS[@]} / 1024)) KiB on average; wrk -c$CONNS for ${SECS}s per server"

# wrk requests the paths round-robin and prints its totals as one JSON line.
{
  echo 'local paths = {'
  for p in "${PATHS[@]}"; do echo "  \"$p\","; done
  cat <<'LUA'
}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests":%d,"bytes":%d,"duration_us":%d,"non2xx":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
LUA
} >"$WORK/rotate.lua"

cat >"$WORK/nginx.conf" <<CFG
# One process (no master), one worker connection loop: the same single core the edge gets.
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types { video/iso.segment m4s; video/mp4 mp4; application/vnd.apple.mpegurl m3u8; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/root;
        add_header Cache-Control "max-age=31536000, immutable";
    }
}
CFG

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# run NAME PID BASE_URL: prints "NAME req/s MB/s cpu_s cpu_s_per_GB non2xx"
run() {
  local name=$1 pid=$2 url=$3 before after out mask
  mask=$(taskset -p "$pid" | awk '{ print $NF }')
  taskset -acp 1 "$pid" >/dev/null
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$WORK/rotate.lua" "$url" | grep '^{')
  after=$(cpu_ticks "$pid")
  taskset -ap "$mask" "$pid" >/dev/null # the edge goes back to every core it had
  python3 - "$name" "$out" "$before" "$after" "$HZ" <<'PY'
import json, sys
name, out, before, after, hz = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
secs = out["duration_us"] / 1e6
cpu = (after - before) / hz
gb = out["bytes"] / 1e9
print(json.dumps({"server": name, "req_s": out["requests"] / secs, "mb_s": out["bytes"] / secs / 1e6,
                  "cpu_s": cpu, "cpu_s_per_gb": cpu / gb if gb else None, "non2xx": out["non2xx"],
                  "errors": out["errors"], "p50_ms": out["p50_us"] / 1e3, "p99_ms": out["p99_us"] / 1e3}))
PY
}

results=()
if [[ -n "$EDGE_URL" ]]; then
  origin=${EDGE_URL%%/${EDGE_URL#*://*/}}
  results+=("$(run edge "$EDGE_PID" "$origin")")
fi
nginx -c "$WORK/nginx.conf" &
NGINX_PID=$!
deadline=$((SECONDS + 10))
until curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT${PATHS[0]}" 2>/dev/null; do
  ((SECONDS < deadline)) || { echo "bench-hls: nginx did not start; see $WORK/nginx-error.log" >&2; exit 1; }
  sleep 0.1
done
results+=("$(run nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT")")

python3 - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:]]
print(f"{'server':8} {'req/s':>9} {'MB/s':>8} {'CPU s':>7} {'CPU s/GB':>9} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>8}")
for r in rows:
    per = f"{r['cpu_s_per_gb']:.2f}" if r['cpu_s_per_gb'] else "-"
    print(f"{r['server']:8} {r['req_s']:9.0f} {r['mb_s']:8.1f} {r['cpu_s']:7.2f} {per:>9} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['non2xx']:8d}")
by = {r["server"]: r for r in rows}
if "edge" in by and "nginx" in by:
    e, n = by["edge"], by["nginx"]
    print(f"edge/nginx: requests/s x{e['req_s'] / n['req_s']:.2f}, CPU per GB x{(e['cpu_s_per_gb'] or 0) / (n['cpu_s_per_gb'] or 1):.2f}")
print(json.dumps(rows))
PY
echo "work dir: $WORK"
