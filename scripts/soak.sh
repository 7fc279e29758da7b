#!/usr/bin/env bash
# Issue 19's soak: the bootstrap cluster (3 origins, 2 edges) under steady load for a long
# time, an origin SIGKILLed and restarted every few minutes, and every process's RSS,
# descriptors, threads and tokio tasks sampled every 10 s. Flat curves after warm-up mean
# no leak; docs/soak.md says how to read the output and what PASS means.
#
#   scripts/soak.sh [--minutes M] [--players N] [--so-rate R] [--failover-every S]
#                   [--down-secs D] [--kbps K] [--out DIR]
#
#   --minutes M         length of the run                                 [30]
#   --players N         `bench fanout` players of one stream, split over both edges [500]
#   --so-rate R         shared-object writes per second (`bench so --rate`) [100]
#   --failover-every S  SIGKILL an origin every S seconds, alternately the stream's
#                       owner and the Raft leader (0: never)              [300]
#   --down-secs D       how long a killed origin stays down before it is restarted
#                       (long enough for the cluster to act on its death) [5]
#   --kbps K            the stream's video bitrate                        [600]
#   --out DIR           where everything goes                             [a new /tmp/raftcast-soak.*]
#
# One publisher on edge-1; players alternate between edge-1 and edge-2. The shared-object
# writers (8 clients) spread over the three origins. A killed origin is restarted the way
# bootstrap.sh starts it (`bootstrap.sh start` starts what is not running) and rejoins
# from its data.
#
# Output in DIR: samples.csv (t_seconds,process,pid,rss_kib,fds,threads,tasks), idle.csv
# (the same, of the cluster at rest before and after the load), roles.csv (who owns the
# stream and who leads, every 10 s), failovers.csv, fanout.json and so.json (the load
# generators' reports, their progress in *.log), the cluster's data and logs under
# cluster/, summary.txt (scripts/soak-report.py) and soak.svg (scripts/soak-chart.py).
#
# Environment: RAFTCAST_BIN (default target/release/raftcast, built when missing; copied
# into DIR so a rebuild during the run changes nothing). Ports: origins 32101-32103
# (HTTP) and 32201-32203 (media), edges 32301-32302 (RTMP) and 32401-32402 (HTTP): apart
# from the other scripts' (21xxx-28xxx), and above the pool the tests draw free ports
# from (20000-31999, `bench::free_loopback_range`) and below the kernel's ephemeral
# range (32768-), so no test or client takes a killed origin's port while it is down.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MINUTES=30 PLAYERS=500 SO_RATE=100 FAILOVER_EVERY=300 DOWN_SECS=5 KBPS=600 OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) MINUTES=$2; shift ;;
    --players) PLAYERS=$2; shift ;;
    --so-rate) SO_RATE=$2; shift ;;
    --failover-every) FAILOVER_EVERY=$2; shift ;;
    --down-secs) DOWN_SECS=$2; shift ;;
    --kbps) KBPS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown flag $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
SECONDS_TOTAL=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
((SECONDS_TOTAL >= 60)) || { echo "soak: --minutes must give at least 60 s" >&2; exit 2; }
SAMPLE_EVERY=10
SO_CLIENTS=8
IDLE_SETTLE=15 # seconds after the load before the at-rest sample

if [[ -z $OUT ]]; then OUT=$(mktemp -d /tmp/raftcast-soak.XXXXXX); else mkdir -p "$OUT"; fi
OUT=$(cd "$OUT" && pwd)
BIN=${RAFTCAST_BIN:-$ROOT/target/release/raftcast}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --bin raftcast)
mkdir -p "$OUT/bin"
cp "$BIN" "$OUT/bin/raftcast"
BIN=$OUT/bin/raftcast
DATA=$OUT/cluster

HTTP_BASE=32100 MEDIA_BASE=32200 RTMP_BASE=32300 EDGE_HTTP_BASE=32400
# The load tool opens every player from 127.0.0.1: the edges' per-address caps are raised.
export RAFTCAST_DATA_DIR=$DATA RAFTCAST_ORIGINS=3 RAFTCAST_EDGES=2 RAFTCAST_BIN=$BIN \
  RAFTCAST_HTTP_BASE=$HTTP_BASE RAFTCAST_MEDIA_BASE=$MEDIA_BASE RAFTCAST_RTMP_BASE=$RTMP_BASE \
  RAFTCAST_EDGE_HTTP_BASE=$EDGE_HTTP_BASE \
  RAFTCAST_EDGE_MAX_CONNECTIONS=20000 RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=20000 \
  RAFTCAST_EDGE_MAX_HANDSHAKES=20000 RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS=20000 \
  RAFTCAST_EDGE_MAX_UNSTARTED=20000 RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS=20000 \
  RAFTCAST_EDGE_MAX_PUBLISHES_PER_ADDRESS=20000
ulimit -n 20000 2>/dev/null || echo "soak: could not raise the descriptor limit to 20000 ($(ulimit -n))" >&2
ORIGINS=127.0.0.1:$((HTTP_BASE + 1)),127.0.0.1:$((HTTP_BASE + 2)),127.0.0.1:$((HTTP_BASE + 3))
ROLES=(origin-1 origin-2 origin-3 edge-1 edge-2)
STREAM=soak-0 # `bench fanout --name soak`: its one stream is live/soak-0

LOADERS=() FAILOVERS=""
# The failover loop is told to stop, not killed: killed in the middle of a restart it
# would leave `bootstrap.sh start` running after the cluster was stopped.
stop_failovers() {
  [[ -n $FAILOVERS ]] || return 0
  touch "$OUT/.stop"
  wait "$FAILOVERS" 2>/dev/null || true
  FAILOVERS=""
}
cleanup() {
  local pid
  stop_failovers
  for pid in "${LOADERS[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$ROOT/scripts/bootstrap.sh" stop >>"$OUT/bootstrap.log" 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ctl() { "$BIN" ctl --origin "$ORIGINS" --token-file "$DATA/admin-token" "$@"; }
pid_of() { cat "$DATA/pids/$1.pid" 2>/dev/null || true; }
alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# One sample of every process: RSS, descriptors, threads from /proc; tasks from /metrics
# (the gauge the edges and origins export; empty for the load generators).
tasks() { # role
  local port metric auth=()
  case "$1" in
    origin-*) port=$((HTTP_BASE + ${1#origin-})) metric=raftcast_tokio_alive_tasks
      auth=(-H "Authorization: Bearer $(cat "$DATA/admin-token")") ;;
    edge-*) port=$((EDGE_HTTP_BASE + ${1#edge-})) metric=edge_tokio_alive_tasks ;;
    *) return 0 ;;
  esac
  curl -fsS --max-time 2 "${auth[@]}" "http://127.0.0.1:$port/metrics" 2>/dev/null \
    | awk -v m="$metric" '$1 == m { print $2 }' || true
}
sample() { # csv t role pid
  local rss threads fds
  alive "$4" || return 0
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$4/status" 2>/dev/null) || return 0
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$4/status" 2>/dev/null) || return 0
  fds=$(find "/proc/$4/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) || return 0
  # A process killed while it was read leaves no line rather than a partial one.
  if [[ -n $rss ]] && alive "$4"; then echo "$2,$3,$4,$rss,$fds,$threads,$(tasks "$3")" >>"$1"; fi
}
servers() { # csv t: one sample of every cluster process
  local role
  for role in "${ROLES[@]}"; do sample "$1" "$2" "$role" "$(pid_of "$role")"; done
}
HEADER="t_seconds,process,pid,rss_kib,fds,threads,tasks"

echo "soak: ${MINUTES} min, $PLAYERS players at $KBPS kbit/s, $SO_RATE shared-object writes/s," \
  "an origin killed every ${FAILOVER_EVERY}s (down ${DOWN_SECS}s); output in $OUT"
"$ROOT/scripts/bootstrap.sh" start >"$OUT/bootstrap.log" 2>&1 \
  || { tail -n 5 "$OUT/bootstrap.log" >&2; exit 1; }
# The cluster at rest before the load, to compare with at rest after it (idle.csv): with
# the same players connected all along, a descriptor or task left behind per connection
# shows only once they are gone. A few seconds of both loads first: an edge opens its
# links to the origins at its first stream and keeps them (+3 descriptors, +7 tasks),
# which is not a leak, so "before" is taken with them open.
echo "soak: a few seconds of load to open the edges' links, then the cluster at rest"
"$BIN" bench fanout --publish 127.0.0.1:$((RTMP_BASE + 1)) \
  --play 127.0.0.1:$((RTMP_BASE + 1)),127.0.0.1:$((RTMP_BASE + 2)) --players 4 --kbps "$KBPS" \
  --duration 3 --name soak-touch >"$OUT/touch-fanout.json" 2>"$OUT/touch-fanout.log" || true
"$BIN" bench so --origins "$ORIGINS" --token-file "$DATA/admin-token" --concurrency 3 --writes 30 \
  >"$OUT/touch-so.json" 2>"$OUT/touch-so.log" || true
sleep "$IDLE_SETTLE"
echo "$HEADER" >"$OUT/idle.csv"
servers "$OUT/idle.csv" 0

START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
# The load generators run for the whole soak: fanout measures from its last player's
# start (about 2 s plus the ramp) to the end, so its window is shortened by that much.
RAMP=200
FANOUT_SECS=$(awk -v t="$SECONDS_TOTAL" -v n="$PLAYERS" -v r="$RAMP" 'BEGIN { printf "%.1f", t - 2.5 - n / r }')
"$BIN" bench fanout --publish 127.0.0.1:$((RTMP_BASE + 1)) \
  --play 127.0.0.1:$((RTMP_BASE + 1)),127.0.0.1:$((RTMP_BASE + 2)) --players "$PLAYERS" --kbps "$KBPS" \
  --ramp "$RAMP" --duration "$FANOUT_SECS" --name soak \
  --watch-pid "$(pid_of edge-1)" --watch-pid "$(pid_of edge-2)" >"$OUT/fanout.json" 2>"$OUT/fanout.log" &
FANOUT=$!
LOADERS+=("$FANOUT")
"$BIN" bench so --origins "$ORIGINS" --token-file "$DATA/admin-token" --concurrency "$SO_CLIENTS" \
  --rate "$SO_RATE" --duration "$SECONDS_TOTAL" >"$OUT/so.json" 2>"$OUT/so.log" &
SO=$!
LOADERS+=("$SO")

# The origin the cluster names for a role: the owner of the soak's stream or the leader.
origin_in_role() {
  local id=""
  case "$1" in
    owner) id=$(ctl streams --json 2>/dev/null | jq -r --arg s "$STREAM" '.streams[] | select(.name == $s) | .owner' | head -n 1) ;;
    leader) id=$(ctl status --json 2>/dev/null | jq -r '.cluster.leader_id // empty') ;;
  esac
  [[ $id =~ ^[1-3]$ ]] && echo "origin-$id"
}

# Every FAILOVER_EVERY seconds, alternately the owner and the leader: SIGKILL, DOWN_SECS
# down, restart. One line per kill in failovers.csv, with who owns the stream and who
# leads once the killed origin is back (a role taken over shows in that origin's curves).
failovers() {
  local n=0 kind name pid at t0 started
  while :; do
    n=$((n + 1))
    at=$((n * FAILOVER_EVERY))
    ((at < SECONDS_TOTAL - SAMPLE_EVERY)) || return 0
    while (($(elapsed) < at)); do
      [[ -e $OUT/.stop ]] && return 0
      sleep 1
    done
    kind=owner; ((n % 2 == 0)) && kind=leader
    name=$(origin_in_role "$kind") || name=""
    pid=$(pid_of "${name:-none}")
    if ! alive "$pid"; then
      echo "soak: t=$(elapsed)s no $kind found to kill" >&2
      echo "$(elapsed),$kind,none,,,,," >>"$OUT/failovers.csv"
      continue
    fi
    t0=$(elapsed)
    kill -KILL "$pid" || true
    echo "soak: t=${t0}s killed $name (pid $pid, the $kind)"
    sleep "$DOWN_SECS"
    [[ -e $OUT/.stop ]] && return 0
    started=$SECONDS
    "$ROOT/scripts/bootstrap.sh" start >>"$OUT/bootstrap.log" 2>&1 || echo "soak: restarting $name failed" >&2
    echo "$t0,$kind,$name,$pid,$(pid_of "$name"),$((SECONDS - started)),$(origin_in_role owner),$(origin_in_role leader)" \
      >>"$OUT/failovers.csv"
    echo "soak: t=$(elapsed)s restarted $name (pid $(pid_of "$name"), $((SECONDS - started)) s to rejoin)"
  done
}
echo "t_seconds,kind,process,pid,restarted_pid,restart_seconds,owner_after,leader_after" >"$OUT/failovers.csv"
rm -f "$OUT/.stop"
if ((FAILOVER_EVERY > 0)); then
  failovers &
  FAILOVERS=$!
fi

# Samples while the load runs (its last one a sample before the end, so that no
# process is caught with its players leaving).
echo "$HEADER" >"$OUT/samples.csv"
echo "t_seconds,owner,leader" >"$OUT/roles.csv"
for ((next = 0; next < SECONDS_TOTAL; next += SAMPLE_EVERY)); do
  while (($(elapsed) < next)); do sleep 1; done
  t=$(elapsed)
  servers "$OUT/samples.csv" "$t"
  echo "$t,$(origin_in_role owner),$(origin_in_role leader)" >>"$OUT/roles.csv"
  sample "$OUT/samples.csv" "$t" loader-fanout "$FANOUT"
  sample "$OUT/samples.csv" "$t" loader-so "$SO"
  alive "$FANOUT" || alive "$SO" || { echo "soak: both load generators ended at ${t}s" >&2; break; }
done
stop_failovers
echo "soak: waiting for the load generators' reports"
wait "$FANOUT" || echo "soak: bench fanout failed (see $OUT/fanout.log)" >&2
wait "$SO" || echo "soak: bench so failed (see $OUT/so.log)" >&2
LOADERS=()
# At rest again: players, publisher and writers gone, claims released.
sleep "$IDLE_SETTLE"
servers "$OUT/idle.csv" "$(elapsed)"
"$ROOT/scripts/bootstrap.sh" stop >>"$OUT/bootstrap.log" 2>&1 || true

python3 "$ROOT/scripts/soak-report.py" "$OUT" | tee "$OUT/summary.txt"
python3 "$ROOT/scripts/soak-chart.py" "$OUT/samples.csv" "$OUT/soak.svg"
echo "chart: $OUT/soak.svg"
