#!/usr/bin/env bash
# raftcast side by side with nginx-rtmp (media) and etcd (shared-object writes), on
# loopback, with one load tool (`raftcast bench`), in one run. Prints a table of
# ratios and writes a chart; see BENCHMARKS.md for the method and the latest figures.
#
#   scripts/bench-compare.sh [--quick] [--out DIR] [--no-etcd] [--no-media] [--no-saturation]
#
#   --quick     100 and 500 players, 5 s per run, one etcd concurrency (under 3 minutes)
#               (full: 100, 500 and 2,000 players, 20 s per run, 1, 8 and 32 etcd clients)
#
# After the fanout runs, nginx-rtmp and rc-1e1o are measured once more with
# scripts/rtmp-players.py, a player that shares no code with raftcast (400 players at
# 600 kbit/s; 200 with --quick); its reports are runs/indep-*.independent.json and a
# table of its own in table.md.
# The full run ends with scripts/bench-saturation.sh (players kept up on one core of
# the player-facing process, nginx-rtmp against rc-1e1o, pinned) into DIR/saturation;
# its table is appended to table.md. --quick and --no-saturation skip it.
#   --out DIR   where reports, logs, the table and the chart go [a new /tmp/raftcast-compare.*]
#
# Servers, each on its own ports and data dir under DIR:
#   nginx-rtmp   one worker (plus its idle master), publisher and players on the same nginx
#   rc-1e1o      raftcast, one origin + one edge: publisher and players on the edge,
#                every frame goes edge -> origin -> edge
#   rc-3o2e      scripts/bootstrap.sh's cluster (3 origins, 2 edges): publisher on edge-1,
#                players on edge-2, every frame goes edge-1 -> owner origin -> edge-2
#   etcd         three members (etcd-server), default durability (WAL fsync), against the
#                rc-3o2e origins for shared-object writes
#
# Installs nginx, libnginx-mod-rtmp, etcd-server and etcd-client with apt-get when
# missing. Environment: RAFTCAST_BIN (default: cargo build --release, honouring
# CARGO_TARGET_DIR).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0 OUT="" ETCD=1 MEDIA=1 SATURATION=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --no-etcd) ETCD=0 ;;
    --no-media) MEDIA=0 ;;
    --no-saturation) SATURATION=0 ;;
    *) echo "usage: $0 [--quick] [--out DIR] [--no-etcd] [--no-media] [--no-saturation]" >&2; exit 2 ;;
  esac
  shift
done

if (( QUICK )); then
  PLAYERS=(100 500) KBPS=(600 2500) DURATION=5 RAMP=500 SO_CONC=(32) SO_SECS=4 INDEP_PLAYERS=200
else
  PLAYERS=(100 500 2000) KBPS=(600 2500) DURATION=20 RAMP=500 SO_CONC=(1 8 32) SO_SECS=10 INDEP_PLAYERS=400
fi

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
# nginx_rtmp_start, nginx_rtmp_stop, NGINX_PID: the nginx-rtmp every benchmark runs.
source "$ROOT/scripts/lib/nginx-rtmp.sh"
# bench_install, bench_binary: packages, the binary and the output folder.
source "$ROOT/scripts/lib/bench-setup.sh"

# --- packages -------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
[[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ]] || need+=(libnginx-mod-rtmp)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
bench_install "${need[@]}"

# --- binary ---------------------------------------------------------------------------
bench_binary compare
log "results in $OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- ports ----------------------------------------------------------------------------
NGINX_RTMP=21935
# The load tool opens every player from 127.0.0.1: raise the edges' per-address caps
# (real clients come from many addresses; the defaults are 128 connections, handshakes
# and not-yet-playing sessions per address, 1000 handshakes and 2000 such sessions in
# all, 10000 connections).
LOAD_CAPS=(RAFTCAST_EDGE_MAX_CONNECTIONS=20000 RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=20000
  RAFTCAST_EDGE_MAX_HANDSHAKES=20000 RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS=20000
  RAFTCAST_EDGE_MAX_UNSTARTED=20000 RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS=20000
  RAFTCAST_EDGE_MAX_PUBLISHES_PER_ADDRESS=20000)
# rc-1e1o: origin 1 on 21101 (HTTP) / 21201 (media), edge-1 RTMP 21301, HTTP 21401.
SINGLE_ENV=(RAFTCAST_DATA_DIR="$OUT/rc-1e1o" RAFTCAST_ORIGINS=1 RAFTCAST_EDGES=1
  RAFTCAST_HTTP_BASE=21100 RAFTCAST_MEDIA_BASE=21200 RAFTCAST_RTMP_BASE=21300 RAFTCAST_EDGE_HTTP_BASE=21400 "${LOAD_CAPS[@]}")
# rc-3o2e: origins 22101-3 / 22201-3, edges RTMP 22301-2, HTTP 22401-2.
FULL_ENV=(RAFTCAST_DATA_DIR="$OUT/rc-3o2e" RAFTCAST_ORIGINS=3 RAFTCAST_EDGES=2
  RAFTCAST_HTTP_BASE=22100 RAFTCAST_MEDIA_BASE=22200 RAFTCAST_RTMP_BASE=22300 RAFTCAST_EDGE_HTTP_BASE=22400 "${LOAD_CAPS[@]}")
ETCD_CLIENT_BASE=23790 ETCD_PEER_BASE=23890

ETCD_PIDS=()
cleanup() {
  set +e
  if [[ -n "$NGINX_PID" ]]; then kill -TERM "$NGINX_PID" 2>/dev/null; fi
  for p in "${ETCD_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  env "${SINGLE_ENV[@]}" "$ROOT/scripts/bootstrap.sh" stop >>"$OUT/logs/bootstrap.log" 2>&1
  env "${FULL_ENV[@]}" "$ROOT/scripts/bootstrap.sh" stop >>"$OUT/logs/bootstrap.log" 2>&1
  if [[ -n "$NGINX_PID" ]]; then wait "$NGINX_PID" 2>/dev/null; fi
  for p in "${ETCD_PIDS[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

pidof_node() { cat "$1/pids/$2.pid"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# --- machine --------------------------------------------------------------------------
{
  echo "{"
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"nproc\": $(nproc),"
  echo "  \"cpu\": \"$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)\","
  echo "  \"kernel\": \"$(uname -r)\","
  echo "  \"nginx\": \"$(nginx -v 2>&1 | sed 's/.*nginx\///')\","
  echo "  \"etcd\": \"$(etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}')\","
  echo "  \"quick\": $QUICK,"
  echo "  \"duration_s\": $DURATION"
  echo "}"
} >"$OUT/machine.json"

# --- media ----------------------------------------------------------------------------
start_nginx() {
  nginx_rtmp_start "$OUT/nginx" "$NGINX_RTMP" "$OUT/logs/nginx.log" || die "nginx-rtmp did not start"
  log "nginx-rtmp: master $NGINX_PID, worker $NGINX_WORKER, rtmp 127.0.0.1:$NGINX_RTMP"
}

start_raftcast() {
  env "$@" "$ROOT/scripts/bootstrap.sh" start >>"$OUT/logs/bootstrap.log" 2>&1 || die "bootstrap failed; see $OUT/logs/bootstrap.log"
}

# Where each raftcast setup exposes its hop histograms (edges, then origins), and the
# admin token its origins want.
declare -A HOP_URLS=(
  [rc-1e1o]="http://127.0.0.1:21401/metrics http://127.0.0.1:21101/metrics"
  [rc-3o2e]="http://127.0.0.1:22401/metrics http://127.0.0.1:22402/metrics http://127.0.0.1:22101/metrics http://127.0.0.1:22102/metrics http://127.0.0.1:22103/metrics"
)
scrape_hops() { # server file
  local url token=$OUT/$1/admin-token
  : >"$2"
  for url in ${HOP_URLS[$1]:-}; do
    curl -s --max-time 5 -H "authorization: Bearer $(cat "$token" 2>/dev/null)" "$url" \
      | grep -E '^(edge_hop_seconds|raftcast_link_hop_seconds)_bucket' >>"$2" || true
  done
}

# One fanout run: server name, path description, publish address, play address,
# players, kbps, pids (player-facing first), count of player-facing pids.
fanout() {
  local server=$1 path=$2 pub=$3 play=$4 players=$5 kbps=$6 front=$7; shift 7
  local pids=("$@") watch=() base=()
  for p in "${pids[@]}"; do watch+=(--watch-pid "$p"); base+=("$(jq -r --arg p "$p" '.[$p]' "$OUT/baseline-rss.json")"); done
  local name="$server-$kbps-$players"
  local load_before load_after
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  log "$name: $players players at $kbps kbit/s ($path), load $load_before"
  # Hop latency covers the whole bench run (ramp included), as /metrics counts it.
  scrape_hops "$server" "$OUT/logs/$name.hops-before"
  if ! "$BIN" bench fanout --publish "$pub" --play "$play" --players "$players" --kbps "$kbps" \
    --duration "$DURATION" --ramp "$RAMP" --name "r$kbps-$players" "${watch[@]}" \
    >"$OUT/runs/$name.report.json" 2>"$OUT/logs/$name.progress"; then
    log "$name: bench failed: $(tail -1 "$OUT/logs/$name.progress")"
    echo '{"failed": true}' >"$OUT/runs/$name.report.json"
  fi
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  scrape_hops "$server" "$OUT/logs/$name.hops-after"
  local hops
  hops=$(python3 "$ROOT/scripts/bench-report.py" --hops "$OUT/logs/$name.hops-before" "$OUT/logs/$name.hops-after" || echo '{}')
  jq -n --arg server "$server" --arg path "$path" --argjson players "$players" --argjson kbps "$kbps" \
    --argjson front "$front" --arg load_before "$load_before" --arg load_after "$load_after" \
    --argjson baseline "[$(IFS=,; echo "${base[*]}")]" --argjson hops "$hops" \
    --slurpfile report "$OUT/runs/$name.report.json" \
    '{server: $server, path: $path, players: $players, kbps: $kbps, player_facing_processes: $front,
      rss_kib_baseline: $baseline, load_before: $load_before, load_after: $load_after, hops: $hops,
      report: $report[0]}' \
    >"$OUT/runs/$name.json"
  rm "$OUT/runs/$name.report.json"
  jq -r '.report | "  keeping up \(.players_keeping_up)/\(.players), lost \(.frames_lost), p50 \(.latency.p50_ms // "-") ms, p99 \(.latency.p99_ms // "-") ms, cpu \([.processes[].cpu_percent] | add | floor) %"' \
    "$OUT/runs/$name.json" >&2 || true
}

if (( MEDIA )) || (( ETCD )); then
  log "starting raftcast rc-3o2e (3 origins, 2 edges)"
  start_raftcast "${FULL_ENV[@]}"
  FULL_EDGE1=$(pidof_node "$OUT/rc-3o2e" edge-1) FULL_EDGE2=$(pidof_node "$OUT/rc-3o2e" edge-2)
  FULL_ORIGINS=($(pidof_node "$OUT/rc-3o2e" origin-1) $(pidof_node "$OUT/rc-3o2e" origin-2) $(pidof_node "$OUT/rc-3o2e" origin-3))
fi

if (( MEDIA )); then
  start_nginx
  log "starting raftcast rc-1e1o (1 origin, 1 edge)"
  start_raftcast "${SINGLE_ENV[@]}"
  SINGLE_EDGE=$(pidof_node "$OUT/rc-1e1o" edge-1) SINGLE_ORIGIN=$(pidof_node "$OUT/rc-1e1o" origin-1)
  sleep 1
  # RSS of every server process before any load, for memory per player.
  {
    echo "{"
    for p in "$NGINX_WORKER" "$NGINX_PID" "$SINGLE_EDGE" "$SINGLE_ORIGIN" "$FULL_EDGE2" "$FULL_EDGE1" "${FULL_ORIGINS[@]}"; do
      echo "\"$p\": $(rss_kib "$p"),"
    done
    echo "\"_\": 0 }"
  } >"$OUT/baseline-rss.json"

  # Player counts outermost and ascending, servers interleaved: each server's memory
  # high-water mark grows with the run, and background load hits all three alike.
  for players in "${PLAYERS[@]}"; do
    for kbps in "${KBPS[@]}"; do
      fanout nginx-rtmp "nginx-rtmp, 1 worker: publisher and players on the same nginx" \
        "127.0.0.1:$NGINX_RTMP" "127.0.0.1:$NGINX_RTMP" "$players" "$kbps" 2 "$NGINX_WORKER" "$NGINX_PID"
      fanout rc-1e1o "raftcast, publisher and players on one edge: edge -> origin -> edge" \
        127.0.0.1:21301 127.0.0.1:21301 "$players" "$kbps" 1 "$SINGLE_EDGE" "$SINGLE_ORIGIN"
      fanout rc-3o2e "raftcast bootstrap cluster: publisher on edge-1, players on edge-2: edge-1 -> origin -> edge-2" \
        127.0.0.1:22301 127.0.0.1:22302 "$players" "$kbps" 1 "$FULL_EDGE2" "$FULL_EDGE1" "${FULL_ORIGINS[@]}"
    done
  done
  # The same servers through a load client that shares no code with raftcast
  # (scripts/rtmp-players.py, Python's standard library): `bench fanout` only publishes.
  for server in nginx-rtmp rc-1e1o; do
    case $server in
      nginx-rtmp) addr=127.0.0.1:$NGINX_RTMP watch=(--watch-pid "$NGINX_WORKER") ;;
      rc-1e1o) addr=127.0.0.1:21301 watch=(--watch-pid "$SINGLE_EDGE") ;;
    esac
    name="indep-$server"
    log "$name: $INDEP_PLAYERS independent players at 600 kbit/s, load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BIN" bench fanout --publish "$addr" --players 0 --kbps 600 --duration $((DURATION + INDEP_PLAYERS / RAMP + 15)) \
      --name "$name" >/dev/null 2>>"$OUT/logs/$name.progress" &
    pub=$!
    sleep 3
    python3 "$ROOT/scripts/rtmp-players.py" --url "rtmp://$addr/live/$name-0" --players "$INDEP_PLAYERS" --procs 1 \
      --ramp "$RAMP" --warmup 3 --duration "$DURATION" "${watch[@]}" >"$OUT/runs/$name.independent.json" \
      2>>"$OUT/logs/$name.progress" || echo '{"failed": true}' >"$OUT/runs/$name.independent.json"
    wait "$pub" || true
    jq -r '"  keeping up \(.players_keeping_up)/\(.players), lost \(.frames_lost), video p50 \(.latency.p50_ms // "-") ms, p99 \(.latency.p99_ms // "-") ms, server \(.processes[0].cpu_seconds_per_gb // "-") s/GB"' \
      "$OUT/runs/$name.independent.json" >&2 || true
  done
  nginx_rtmp_stop
  env "${SINGLE_ENV[@]}" "$ROOT/scripts/bootstrap.sh" stop >>"$OUT/logs/bootstrap.log" 2>&1
fi

# --- shared objects -------------------------------------------------------------------
start_etcd() {
  local cluster="" i
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((ETCD_PEER_BASE + i))"; done
  for i in 1 2 3; do
    local c="http://127.0.0.1:$((ETCD_CLIENT_BASE + i))" p="http://127.0.0.1:$((ETCD_PEER_BASE + i))"
    etcd --name "e$i" --data-dir "$OUT/etcd/e$i" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
      --initial-cluster "$cluster" --initial-cluster-token raftcast-bench --initial-cluster-state new \
      </dev/null >>"$OUT/logs/etcd-$i.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  ETCD_ENDPOINTS=$(for i in 1 2 3; do echo -n "127.0.0.1:$((ETCD_CLIENT_BASE + i)),"; done | sed 's/,$//')
  local deadline=$((SECONDS + 30))
  until ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1; do
    (( SECONDS < deadline )) || die "etcd did not become healthy; see $OUT/logs/etcd-*.log"
    sleep 0.3
  done
  log "etcd: 3 members on $ETCD_ENDPOINTS (pids ${ETCD_PIDS[*]})"
}

so_run() {
  local target=$1 conc=$2 endpoints=$3; shift 3
  local name="so-$target-c$conc" load_before
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  log "$name: $conc clients, load $load_before"
  # A short warm-up (connections, caches, first elections settled), then the measured run.
  "$BIN" bench so --target "$target" --origins "$endpoints" --concurrency "$conc" --duration 2 "$@" \
    >/dev/null 2>>"$OUT/logs/$name.progress" || true
  if ! "$BIN" bench so --target "$target" --origins "$endpoints" --concurrency "$conc" --duration "$SO_SECS" "$@" \
    >"$OUT/runs/$name.report.json" 2>>"$OUT/logs/$name.progress"; then
    echo '{"failed": true}' >"$OUT/runs/$name.report.json"
  fi
  jq -n --arg target "$target" --argjson concurrency "$conc" --arg load_before "$load_before" \
    --arg load_after "$(cut -d' ' -f1-3 /proc/loadavg)" --slurpfile report "$OUT/runs/$name.report.json" \
    '{so_target: $target, concurrency: $concurrency, load_before: $load_before, load_after: $load_after, report: $report[0]}' \
    >"$OUT/runs/$name.json"
  rm "$OUT/runs/$name.report.json"
  jq -r '.report | "  \(.writes_per_sec | floor) writes/s, p50 \(.latency.p50_ms) ms, p99 \(.latency.p99_ms) ms, errors \(.errors)"' \
    "$OUT/runs/$name.json" >&2 || true
}

if (( ETCD )); then
  start_etcd
  RC_ORIGINS=127.0.0.1:22101,127.0.0.1:22102,127.0.0.1:22103
  for conc in "${SO_CONC[@]}"; do
    so_run etcd "$conc" "$ETCD_ENDPOINTS"
    so_run raftcast "$conc" "$RC_ORIGINS" --token-file "$OUT/rc-3o2e/admin-token"
  done
fi

# --- saturation -----------------------------------------------------------------------
if (( MEDIA && SATURATION && ! QUICK )); then
  log "saturation search (scripts/bench-saturation.sh) into $OUT/saturation"
  RAFTCAST_BIN=$BIN "$ROOT/scripts/bench-saturation.sh" --out "$OUT/saturation" >/dev/null \
    2>>"$OUT/logs/saturation.progress" || log "saturation search failed; see $OUT/logs/saturation.progress"
fi

# --- table and chart ------------------------------------------------------------------
python3 "$ROOT/scripts/bench-report.py" "$OUT" --markdown "$OUT/table.md" --svg "$OUT/chart.svg"
if [[ -f "$OUT/saturation/table.md" ]]; then
  { echo; echo "Saturation, the same binary in the same run (scripts/bench-saturation.sh):"; echo
    cat "$OUT/saturation/table.md"; } >>"$OUT/table.md"
fi
log "table: $OUT/table.md   chart: $OUT/chart.svg"
