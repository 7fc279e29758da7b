#!/usr/bin/env bash
# Planned moves and an origin drain under load (issue 17), on a fresh bootstrap cluster
# behind HAProxy (three origins, two edges, RAFTCAST_LB=1): N streams published through
# edge-1 by `raftcast bench publish` (KBPS of video plus ~64 kbit/s of audio each, a
# keyframe every 2 s), one RTMP player per stream on each edge, and one HLS follower per
# stream through HAProxy's HTTP port, round-robin, no stickiness (scripts/hls-follow.py).
#
# Three windows of the same load, one after the other, in the same run:
#   quiet  nothing moves: the floor (with no move, the longest gap between two frames
#          at a player comes from the edges' write merge and the machine)
#   moved  every stream is moved once with `ctl streams move` (one every MOVE_EVERY
#          seconds, to the least loaded other origin), then the origin owning the most
#          streams is drained (`ctl drain N`, until it owns none) and undrained
#   rolling  `scripts/rolling-restart.sh --only origins`: every origin in turn drained,
#          SIGTERMed, started again and undrained, under the same load
#   edges  `scripts/rolling-restart.sh --only edges --edges 2`: edge-2 (the players'
#          edge, not the publisher's) drained, restarted and checked; its RTMP players
#          advertise the reconnect capability and reconnect through HAProxy's RTMP port
#          when asked (`raftcast bench --reconnect-via`), the others must not notice
#   killed KILL_STREAMS streams (30 by default); the origin owning the most is
#          SIGKILLed: its streams fail over, and the survivors must end with at most
#          1.5 times the streams of each other (all streams have the same bitrate)
# For each window: RTMP frames lost and out of order, players and publishers cut off,
# the longest gap between two video frames at each player (p50/p99/max over players),
# latency; HLS frames lost and out of order, segments skipped, failed requests and the
# longest wait between two new segments. Exit status 1 when any window lost,
# duplicated or reordered a frame, or cut a client off, or the kill left the survivors
# more than 1.5 times apart.
#
#   scripts/moves-under-load.sh [--streams 20] [--kill-streams 30] [--kbps 600]
#                               [--quiet-seconds 20] [--move-every 1] [--out DIR]
#                               [--windows "quiet moved rolling edges killed"]
#
# Needs a release build (built when missing), haproxy, python3, curl
# (scripts/install-deps.sh). About 2 minutes with the defaults. Not part of CI: it
# loads both cores for its whole run; the numbers are in docs/failover.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=20 KILL_N=30 KBPS=600 QUIET=20 EVERY=1 OUT="" WINDOWS="quiet moved rolling edges killed"
while (($#)); do
  case "$1" in
    --streams) N=$2; shift 2 ;;
    --kill-streams) KILL_N=$2; shift 2 ;;
    --kbps) KBPS=$2; shift 2 ;;
    --quiet-seconds) QUIET=$2; shift 2 ;;
    --move-every) EVERY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --windows) WINDOWS=$2; shift 2 ;;
    *) echo "usage: $0 [--streams N] [--kill-streams N] [--kbps K] [--quiet-seconds S] [--move-every S] [--out DIR] [--windows LIST]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d /tmp/raftcast-moves.XXXXXX)}
mkdir -p "$OUT"
BIN=${RAFTCAST_BIN:-$ROOT/target/release/raftcast}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release -p raftcast)
for tool in haproxy python3 curl; do
  command -v "$tool" >/dev/null || { echo "moves-under-load: $tool missing; run scripts/install-deps.sh" >&2; exit 1; }
done

export RAFTCAST_DATA_DIR=$OUT/cluster RAFTCAST_BIN=$BIN RAFTCAST_LB=1
# Every client is on 127.0.0.1: raise the edges' per-address caps for the run.
MOST=$((N > KILL_N ? N : KILL_N))
export RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=$((4 * MOST + 100)) RAFTCAST_EDGE_MAX_PUBLISHES_PER_ADDRESS=$((MOST + 100))
rm -rf "$RAFTCAST_DATA_DIR"
"$ROOT/scripts/bootstrap.sh" start >"$OUT/bootstrap.log"
trap '"$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true' EXIT
ctl() { "$BIN" ctl --origin 127.0.0.1:8101,127.0.0.1:8102,127.0.0.1:8103 --token-file "$RAFTCAST_DATA_DIR/admin-token" "$@"; }
log() { echo "moves-under-load $(date +%T): $*" >&2; }

# Owners of the live streams named $1-*: "origin count" lines, most streams first.
owners() {
  ctl --json streams | python3 -c "
import collections, json, sys
c = collections.Counter(s['owner'] for s in json.load(sys.stdin)['streams'] if s['name'].startswith('$1-'))
for o, n in c.most_common(): print(o, n)"
}

# Runs one window: bench publish and the HLS followers for streams $1-0..$1-($4-1),
# for $2 seconds of measurement; $3 is what to do meanwhile (a function name, or "true").
window() {
  local name=$1 secs=$2 action=$3 n=$4 bench hls names
  names=$(seq 0 $((n - 1)) | sed "s/^/$name-/" | paste -sd,)
  "$BIN" bench publish --publish 127.0.0.1:1935 --play 127.0.0.1:1935 --play 127.0.0.1:1936 \
    --publishers "$n" --players-per-stream 2 --name "$name" --kbps "$KBPS" --fps 30 --gop 60 \
    --publisher-ramp 20 --ramp 40 --duration "$secs" --reconnect-via 127.0.0.1:1934 \
    >"$OUT/$name.json" 2>"$OUT/$name.log" &
  bench=$!
  # The bench measures from about 4 s on (publishers, then players, then 0.5 s).
  python3 "$ROOT/scripts/hls-follow.py" --base http://127.0.0.1:8080 --names "$names" \
    --seconds "$((secs + 6))" --out "$OUT/$name-hls.json" >/dev/null &
  hls=$!
  sleep 6
  "$action" "$name"
  local status=0
  wait "$bench" || status=$?
  wait "$hls" || true
  return "$status"
}

move_all() {
  local name=$1 i started=$SECONDS
  for i in $(seq 0 $((N - 1))); do
    ctl streams move "live/$name-$i" >>"$OUT/moves.log" 2>&1 || log "move of live/$name-$i failed (see moves.log)"
    sleep "$EVERY"
  done
  log "moved $N streams in $((SECONDS - started)) s; owners now: $(owners "$name" | tr '\n' ' ')"
  local busiest
  busiest=$(owners "$name" | head -1 | cut -d' ' -f1)
  log "draining origin $busiest"
  started=$SECONDS
  ctl drain "$busiest" --wait --wait-secs 60 >>"$OUT/moves.log" 2>&1 || log "drain of origin $busiest did not finish (see moves.log)"
  log "origin $busiest drained in $((SECONDS - started)) s; owners now: $(owners "$name" | tr '\n' ' ')"
  ctl status >>"$OUT/status.log" 2>&1
  ctl undrain "$busiest" >>"$OUT/moves.log" 2>&1
  sleep 4
}

rolling_origins() {
  local started=$SECONDS
  RAFTCAST_BIN=$BIN "$ROOT/scripts/rolling-restart.sh" --only origins >"$OUT/rolling.log" 2>&1 \
    || log "rolling restart failed (see rolling.log)"
  log "rolling restart of the origins took $((SECONDS - started)) s; owners now: $(owners "$1" | tr '\n' ' ')"
}

restart_edge2() {
  local started=$SECONDS
  RAFTCAST_BIN=$BIN "$ROOT/scripts/rolling-restart.sh" --only edges --edges 2 --edge-grace 20 >"$OUT/edges.log" 2>&1 \
    || log "edge restart failed (see edges.log)"
  log "edge-2 restarted in $((SECONDS - started)) s"
}

kill_busiest() {
  local name=$1 busiest leader pid
  busiest=$(owners "$name" | head -1 | cut -d' ' -f1)
  leader=$(ctl --json status | python3 -c "import json,sys; print(json.load(sys.stdin)['cluster'].get('leader_id'))")
  pid=$(cat "$RAFTCAST_DATA_DIR/pids/origin-$busiest.pid")
  log "owners before: $(owners "$name" | tr '\n' ' '); SIGKILL origin $busiest (the leader is $leader)"
  echo "$busiest $leader" >"$OUT/killed"
  kill -KILL "$pid"
  sleep 15
  owners "$name" >"$OUT/survivors"
  ctl status >>"$OUT/status.log" 2>&1 || true
  log "owners 15 s after: $(tr '\n' ' ' <"$OUT/survivors")"
}

wanted() { [[ " $WINDOWS " == *" $1 "* ]]; }
log "cluster up (HAProxy on 127.0.0.1:1934 and :8080); windows: $WINDOWS"
if wanted quiet; then
  log "quiet window, $QUIET s"
  window quiet "$QUIET" true "$N" || true
fi
if wanted moved; then
  log "moves window, $((N * EVERY + 20)) s"
  window moved "$((N * EVERY + 20))" move_all "$N" || true
fi
if wanted rolling; then
  log "rolling window, 60 s"
  window rolling 60 rolling_origins "$N" || true
fi
if wanted edges; then
  log "edge restart window, 45 s"
  window edges 45 restart_edge2 "$N" || true
fi
if wanted killed; then
  log "kill window, 30 s"
  window killed 30 kill_busiest "$KILL_N" || true
fi

python3 - "$OUT" $WINDOWS <<'EOF'
import json, sys
out = sys.argv[1]
bad = False
for name in sys.argv[2:]:
    d = json.load(open(f"{out}/{name}.json"))
    h = json.load(open(f"{out}/{name}-hls.json"))["total"]
    g, l = d.get("longest_gap") or {}, d.get("latency") or {}
    print(f"{name}: {d['streams']} streams, {d['players']} RTMP players")
    print(f"  RTMP: frames lost {d['frames_lost']}, out of order {d['frames_out_of_order']}, "
          f"players cut off {d['players_failed']}, publishers cut off {d['publishers_failed']}")
    print(f"  RTMP longest gap between two frames per player: p50 {g.get('p50_ms', 0):.0f}, "
          f"p99 {g.get('p99_ms', 0):.0f}, max {g.get('max_ms', 0):.0f} ms; "
          f"latency p50/p99/max {l.get('p50_ms', 0):.0f}/{l.get('p99_ms', 0):.0f}/{l.get('max_ms', 0):.0f} ms")
    print(f"  HLS: {h['segments']} segments, {h['frames']} frames, lost {h['lost']}, out of order {h['out_of_order']}, "
          f"segments skipped {h['skipped_segments']}, failed requests {h['failed_requests']}, "
          f"streams without frames {h['streams_without_frames']}, longest wait for a segment {h['longest_wait_s']} s")
    for a in d["players_by_address"]:
        gap = a["longest_gap_ms"]
        print(f"  players at {a['addr']}: {a['players']}, cut off {a['failed']}, reconnected {a['reconnected']}, "
              f"lost {a['frames_lost']}, out of order {a['frames_out_of_order']}, "
              f"longest gap {gap if gap is None else round(gap)} ms")
    if d["errors"]:
        print(f"  errors: {d['errors'][:3]}")
    bad |= bool(d["frames_lost"] or d["frames_out_of_order"] or d["players_failed"] or d["publishers_failed"]
                or h["lost"] or h["out_of_order"] or h["skipped_segments"] or h["failed_requests"]
                or h["streams_without_frames"])
if "killed" in sys.argv[2:]:
    killed, leader = open(f"{out}/killed").read().split()
    counts = [int(line.split()[1]) for line in open(f"{out}/survivors") if line.strip()]
    owners = [line.split()[0] for line in open(f"{out}/survivors") if line.strip()]
    spread = max(counts) / max(min(counts), 1) if len(counts) == 2 else float("inf")
    print(f"killed origin {killed} (leader {leader}): survivors {dict(zip(owners, counts))}, "
          f"ratio {spread:.2f} (at most 1.5)")
    bad |= killed in owners or spread > 1.5
print(f"reports in {out}")
sys.exit(1 if bad else 0)
EOF
