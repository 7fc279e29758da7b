#!/usr/bin/env bash
# Rolling restart (or upgrade) of the cluster scripts/bootstrap.sh started, one process
# at a time, waiting for health between steps (issue 17):
#
#   scripts/rolling-restart.sh [--binary NEW] [--edge-grace SECS] [--only origins|edges]
#                              [--edges "2 3"]
#
# Every origin in turn: `ctl drain N` (its streams move to the other origins by planned
# moves and no new stream is placed on it), wait until it owns no stream, SIGTERM it,
# start it again (with NEW when given), wait until every voter answers and names the
# same leader (`ctl wait`) and until every edge's media link to it is back (at most
# 5 s: an edge that never linked to it does not come), `ctl undrain N`. Then every
# edge in turn: `ctl edges drain` (its /health answers 503, so HAProxy sends it
# nothing new; RTMP clients that advertised the reconnect capability are asked to
# reconnect; HLS clients move with their next request), wait until it exits, or SIGTERM it after --edge-grace seconds
# (default 30) when clients that cannot reconnect are left (ffmpeg, rtmpdump: they are
# cut), start it again, wait until it is healthy (and up in HAProxy's view with
# RAFTCAST_LB=1; bootstrap.sh start waits for that).
#
# --edges restarts only the edges listed (e.g. not the one a publisher that cannot
# reconnect is on).
#
# Uses the same environment as scripts/bootstrap.sh (RAFTCAST_DATA_DIR, the port bases,
# RAFTCAST_ORIGINS, RAFTCAST_EDGES, RAFTCAST_LB...). With --binary, the new binary is
# what every restarted process runs (RAFTCAST_BIN for bootstrap.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NEW="" GRACE=30 ONLY="" ONLY_EDGES=""
while (($#)); do
  case "$1" in
    --binary) NEW=$(readlink -f "$2"); shift 2 ;;
    --edge-grace) GRACE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --edges) ONLY_EDGES=$2; shift 2 ;;
    *) echo "usage: $0 [--binary NEW] [--edge-grace SECS] [--only origins|edges] [--edges \"2 3\"]" >&2; exit 2 ;;
  esac
done
[[ -z "$NEW" || -x "$NEW" ]] || { echo "rolling-restart: $NEW is not executable" >&2; exit 2; }

DATA=${RAFTCAST_DATA_DIR:-./data}
HTTP_BASE=${RAFTCAST_HTTP_BASE:-8100}
EDGE_HTTP_BASE=${RAFTCAST_EDGE_HTTP_BASE:-8080}
read -ra ORIGINS <<<"$(seq 1 "${RAFTCAST_ORIGINS:-3}" | tr '\n' ' ')"
read -ra EDGES <<<"$(seq 1 "${RAFTCAST_EDGES:-2}" | tr '\n' ' ')"
[[ -n "$ONLY_EDGES" ]] && read -ra EDGES <<<"$ONLY_EDGES"
origin_list() { local a=() i; for i in "${ORIGINS[@]}"; do a+=("127.0.0.1:$((HTTP_BASE + i))"); done; (IFS=,; echo "${a[*]}"); }

log() { echo "rolling-restart $(date +%T): $*"; }
die() { echo "rolling-restart: $*" >&2; exit 1; }

# The binary ctl runs from: the running cluster's (the old one) until it is replaced.
CTL_BIN=${RAFTCAST_BIN:-$ROOT/target/release/raftcast}
[[ -x "$CTL_BIN" ]] || die "no raftcast binary at $CTL_BIN (set RAFTCAST_BIN)"
ctl() {
  local tls=()
  if [[ -f "$DATA/tls/peer/ca.pem" ]]; then
    tls=(--peer-tls-ca "$DATA/tls/peer/ca.pem" --peer-tls-cert "$DATA/tls/peer/ctl.pem" --peer-tls-key "$DATA/tls/peer/ctl-key.pem")
  fi
  "$CTL_BIN" ctl --origin "$(origin_list)" --token-file "$DATA/admin-token" "${tls[@]}" "$@"
}
bootstrap() {
  if [[ -n "$NEW" ]]; then RAFTCAST_BIN=$NEW "$ROOT/scripts/bootstrap.sh" "$@"; else "$ROOT/scripts/bootstrap.sh" "$@"; fi
}
pid_of() { cat "$DATA/pids/$1.pid" 2>/dev/null; }

# Waits up to $2 seconds for process $1 to exit; then SIGKILL.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "pid $pid still running after $2 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      return
    fi
    sleep 0.2
  done
}

# How many live streams origin $1 owns.
owned_by() {
  ctl --json streams | python3 -c "import json,sys; print(sum(1 for s in json.load(sys.stdin)['streams'] if s.get('owner') == $1))"
}

# Edge links open on origin $1 now (its raftcast_link_connections), empty if it does not answer.
links_on() {
  local tls=() scheme=http
  if [[ -f "$DATA/tls/peer/ca.pem" ]]; then
    tls=(--cacert "$DATA/tls/peer/ca.pem" --cert "$DATA/tls/peer/ctl.pem" --key "$DATA/tls/peer/ctl-key.pem")
    scheme=https
  fi
  curl -fsS --max-time 2 "${tls[@]}" -H "Authorization: Bearer $(cat "$DATA/admin-token")" \
    "$scheme://127.0.0.1:$((HTTP_BASE + $1))/metrics" 2>/dev/null |
    awk '$1 == "raftcast_link_connections" { print int($2) }'
}

# Waits until origin $1 has a media link from every edge, at most 5 s. Streams placed
# on it before an edge's link is back would wait for that edge's reconnect.
wait_links() {
  local i=$1 want=${RAFTCAST_EDGES:-2} deadline=$((SECONDS + 5)) links=""
  until links=$(links_on "$i") && [[ -n "$links" ]] && ((links >= want)); do
    if ((SECONDS >= deadline)); then
      log "origin-$i: ${links:-no} edge links of $want after 5 s; undraining anyway"
      return
    fi
    sleep 0.2
  done
  log "origin-$i: $links edge links back"
}

restart_origin() {
  local i=$1 pid left deadline
  log "origin-$i: drain"
  ctl drain "$i" >/dev/null
  deadline=$((SECONDS + 60))
  while left=$(owned_by "$i") && ((left > 0)); do
    ((SECONDS < deadline)) || die "origin-$i still owns $left stream(s) after 60 s of draining"
    sleep 0.5
  done
  pid=$(pid_of "origin-$i") || die "origin-$i is not running"
  log "origin-$i: owns no stream; SIGTERM (pid $pid)"
  kill -TERM "$pid"
  wait_exit "$pid" 30
  log "origin-$i: start${NEW:+ ($NEW)}"
  bootstrap start >/dev/null
  ctl wait --voters "${#ORIGINS[@]}" --timeout-secs 60 >/dev/null || die "the cluster did not come back with every voter"
  wait_links "$i"
  ctl undrain "$i" >/dev/null
  log "origin-$i: back, undrained"
}

restart_edge() {
  local i=$1 pid addr="127.0.0.1:$((EDGE_HTTP_BASE + i))"
  pid=$(pid_of "edge-$i") || die "edge-$i is not running"
  log "edge-$i: drain (up to $GRACE s for its clients to leave)"
  if ! ctl edges drain "$addr" --wait --wait-secs "$GRACE"; then
    log "edge-$i: clients left after $GRACE s; SIGTERM"
    kill -TERM "$pid" 2>/dev/null || true
  fi
  wait_exit "$pid" 30
  log "edge-$i: start${NEW:+ ($NEW)}"
  bootstrap start >/dev/null
  [[ "$(curl -fsS --max-time 5 "http://$addr/health" || true)" == ok ]] || die "edge-$i is not healthy after its start"
  log "edge-$i: back, healthy"
}

started=$SECONDS
if [[ "$ONLY" != edges ]]; then
  for i in "${ORIGINS[@]}"; do restart_origin "$i"; done
fi
if [[ "$ONLY" != origins ]]; then
  for i in "${EDGES[@]}"; do restart_edge "$i"; done
fi
log "done in $((SECONDS - started)) s"
