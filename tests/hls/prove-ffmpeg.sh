#!/usr/bin/env bash
# Proves the HLS harness on a stand-in for the edges: ffmpeg's own HLS (fMP4, 1 s
# segments, program date time) written into a folder, served by two static HTTP
# servers ("edge A" and "edge B", python3 http.server) behind HAProxy with the
# retry settings of scripts/bootstrap.sh. Then, at the same time:
#   - check-playlists.mjs on A, B and HAProxy: every playlist valid, no reload going
#     backwards, same segment lists, byte-identical segments;
#   - play.mjs (hls.js in headless Chromium) through HAProxy;
#   - record.mjs (ffmpeg framemd5) through HAProxy, compared with the source;
#   and SIGKILLs edge A in the middle. Exits 1 when any of them fails.
#
#   tests/hls/prove-ffmpeg.sh [SECONDS]        (default 40; loopback ports from 28000)
#
# What the stand-in cannot prove: ffmpeg 5.1 writes no LL-HLS (no parts, preload
# hints, blocking reloads, PART-TARGET), so play.mjs runs hls.js's low-latency mode on
# a plain playlist and the LL rules are proven only on lib/rules.test.mjs's fixtures;
# the two "edges" serve one folder, so identical bytes are by construction here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECS=${1:-40}
BASE=${PROVE_PORT_BASE:-28000}
A=127.0.0.1:$((BASE + 1)) B=127.0.0.1:$((BASE + 2)) LB=127.0.0.1:$BASE
WORK=$(mktemp -d /tmp/hls-prove.XXXXXX)
mkdir -p "$WORK/hls"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The source: a test pattern with a running clock (every frame distinct), 30 fps,
# a keyframe each second, written both as FLV (the reference) and as HLS.
ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=30 -f lavfi -i sine=frequency=440 \
  -map 0:v -map 1:a -c:v libx264 -preset ultrafast -tune zerolatency -g 30 -c:a aac -flags +global_header \
  -t $((SECS + 25)) -f tee \
  "[f=flv]$WORK/source.flv|[f=hls:hls_time=1:hls_segment_type=fmp4:hls_list_size=10:hls_flags=program_date_time+delete_segments+independent_segments]$WORK/hls/index.m3u8" \
  >"$WORK/ffmpeg.log" 2>&1 &
PIDS+=($!)
serve() { python3 -m http.server --bind 127.0.0.1 --directory "$WORK/hls" "${1#*:}" >"$WORK/$2.log" 2>&1 & PIDS+=($!); echo $!; }
A_PID=$(serve "$A" edge-a)
serve "$B" edge-b >/dev/null
cat >"$WORK/haproxy.cfg" <<CFG
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1
    default-server check inter 500ms fastinter 250ms rise 2 fall 2 observe layer4 error-limit 1 on-error mark-down
frontend http
    bind $LB
    default_backend edges
backend edges
    balance roundrobin
    option httpchk GET /index.m3u8
    retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected 502 503 504
    http-request disable-l7-retry unless METH_GET || METH_HEAD
    server a $A
    server b $B
CFG
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)

deadline=$((SECONDS + 20))
until curl -fsS "http://$LB/index.m3u8" 2>/dev/null | grep -q '^#EXTINF'; do
  (( SECONDS < deadline )) || { echo "no playlist through HAProxy; see $WORK" >&2; exit 1; }
  sleep 0.2
done

node "$HERE/check-playlists.mjs" --edge "http://$A/index.m3u8" --edge "http://$B/index.m3u8" \
  --seconds $((SECS / 2 - 2)) --pdt --min-segments 5 --out "$WORK/check.json" >/dev/null &
CHECK=$!
node "$HERE/play.mjs" "http://$LB/index.m3u8" "$SECS" --max-stall-ms 2000 --out "$WORK/play.json" >/dev/null &
PLAY=$!
node "$HERE/record.mjs" "http://$LB/index.m3u8" "$SECS" --source "$WORK/source.flv" --out "$WORK/record" >"$WORK/record.json" &
RECORD=$!

# Half-way: edge A dies (SIGKILL) while the player and the recorder go through HAProxy.
sleep $((SECS / 2))
kill -KILL "$A_PID"
echo "killed edge A (pid $A_PID) at $(date -u +%H:%M:%S.%3N)"

fail=0
wait $CHECK || { echo "check-playlists FAILED"; fail=1; }
wait $PLAY || { echo "play FAILED"; fail=1; }
wait $RECORD || { echo "record FAILED"; fail=1; }
node -e '
const fs = require("fs"), w = process.argv[1];
const read = (f) => { try { return JSON.parse(fs.readFileSync(w + f)); } catch { return { ok: false, errors: ["no report"], fatal_errors: [], stalls: [] }; } };
const c = read("/check.json"), p = read("/play.json"), r = read("/record.json");
console.log(JSON.stringify({
  check: { ok: c.ok, playlists: c.playlists, segments_compared: c.segments_compared, errors: c.errors.slice(0, 5) },
  play: { ok: p.ok, fatal: p.fatal_errors.length, longest_stall_ms: p.longest_stall_ms, stalls: p.stalls, latency_ms: p.latency_ms, responses: p.responses },
  record: { ok: r.ok, source: r.source, recorded: r.recorded, start: r.start, end: r.end, missing: r.missing, repeated: r.repeated, foreign: r.foreign, first_problem: r.firstProblem },
}, null, 2));' "$WORK"
echo "artifacts: $WORK"
exit $fail
