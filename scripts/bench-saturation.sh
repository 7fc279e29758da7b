#!/usr/bin/env bash
# Saturation search (issue 19): how many players one core of the player-facing process
# keeps up with, for nginx-rtmp and raftcast, from one load tool in one run, and the
# ratio raftcast / nginx-rtmp.
#
#   scripts/bench-saturation.sh [--ladder "1000 2000 3000 4000 6000 8000 12000"] [--kbps 600]
#       [--duration 15] [--ramp 500] [--servers "nginx-rtmp rc-1e1o"] [--load-limit 90] [--out DIR]
#
# Servers (each on its own 29xxx ports and data dir under DIR):
#   nginx-rtmp  scripts/lib/nginx-rtmp.sh, the nginx of bench-compare.sh (one worker), with
#               worker_connections raised to what the ladder needs
#   rc-1e1o     raftcast, one origin + one edge (scripts/bootstrap.sh), publisher and players
#               on the edge (edge -> origin -> edge), the edge's per-address caps raised
# Pinning (taskset, like bench-ab.sh --pin): the player-facing process (nginx's worker; the
# raftcast edge, every thread) on the last core; the load tool (`raftcast bench fanout`),
# nginx's idle master and the raftcast origin on the other core(s).
#
# Steps: player counts ascending, servers interleaved at each step (background load hits
# both alike). Each step is one publisher at --kbps and N players on a fresh stream,
# players joining at --ramp per second, then --duration seconds measured. A step passes
# when at least 99 % of the players keep up (bench fanout's players_keeping_up: no frame
# lost, own p99 latency <= 1 s) and no frame is lost; a server stops climbing at its first
# step that does not pass. Between steps the script waits (up to 30 s) for the server's
# core to go quiet.
#
# The load tool's own CPU is read from /proc/PID/stat over the measured window (bench
# fanout reports only the watched servers'), and its cores' busy share from /proc/stat.
# When the tool used >= --load-limit % of its cores, or those cores were >= 95 % busy in
# all (the origin and nginx's master share them), the step is marked "load tool
# saturated": if it did not pass, that is not counted as the server's failure, the climb
# stops and the server's figure is a lower bound.
#
# taskset keeps the servers and the load tool apart, not other processes off their cores:
# each step records how busy the machine was in the second before it, and each pinned
# core's busy share over the window beside the pinned process's own CPU (the difference
# is the kernel's loopback work not charged to the process, or someone else's). Steps
# that started on a machine more than 15 % busy are named under the table.
#
# Output in DIR (default a new /tmp/raftcast-saturation.*): runs/SERVER-N.json per step
# (verdict, CPU figures, the fanout report), table.md (the table and one line per
# server: "saturation: N players kept up on one core (next step M failed: reason)",
# then the ratio), also printed on stdout. Progress on stderr.
#
# File descriptors: each player is one socket in the load tool and one in the server, so
# `ulimit -n` is raised to the hard limit and steps that would not fit (players + 256)
# are dropped from the ladder, with a note. Needs two cores or more; jq, nginx with
# libnginx-mod-rtmp (installed with apt-get when missing). Environment: RAFTCAST_BIN
# (default: cargo build --release, honouring CARGO_TARGET_DIR).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LADDER="1000 2000 3000 4000 6000 8000 12000" KBPS=600 DURATION=15 RAMP=500
SERVERS="nginx-rtmp rc-1e1o" LOAD_LIMIT=90 OUT=""
usage() {
  echo "usage: $0 [--ladder \"N ...\"] [--kbps K] [--duration S] [--ramp R] [--servers \"nginx-rtmp rc-1e1o\"] [--load-limit PCT] [--out DIR]" >&2
  exit 2
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ladder) LADDER=$2; shift ;;
    --kbps) KBPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --ramp) RAMP=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --load-limit) LOAD_LIMIT=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) usage ;;
  esac
  shift
done
for s in $SERVERS; do [[ $s == nginx-rtmp || $s == rc-1e1o ]] || usage; done

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
# nginx_rtmp_start, nginx_rtmp_stop, NGINX_PID, NGINX_WORKER.
source "$ROOT/scripts/lib/nginx-rtmp.sh"
# bench_install, bench_binary: packages, the binary and the output folder.
source "$ROOT/scripts/lib/bench-setup.sh"

# --- cores, files, ports --------------------------------------------------------------
LAST=$(($(nproc) - 1))
((LAST > 0)) || die "needs two cores or more (one for the server, the rest for the load)"
LOAD_CPUS="0-$((LAST - 1))" LOAD_CORES=$LAST
LOAD=(taskset -c "$LOAD_CPUS")

HARD=$(ulimit -Hn)
[[ $HARD == unlimited ]] && HARD=65536
NOFILE=$((HARD < 65536 ? HARD : 65536))
ulimit -n "$NOFILE" || die "cannot raise ulimit -n to $NOFILE"
read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
EPHEMERAL=$((PORT_HI - PORT_LO + 1))
# Players' sockets plus the publisher, listeners, the edge's link, logs: 256 to spare.
MAX_PLAYERS=$((NOFILE - 256))
((EPHEMERAL - 1000 < MAX_PLAYERS)) && MAX_PLAYERS=$((EPHEMERAL - 1000))
STEPS=() DROPPED=()
for n in $(tr ' ' '\n' <<<"$LADDER" | grep -v '^$' | sort -n -u); do
  if ((n <= MAX_PLAYERS)); then STEPS+=("$n"); else DROPPED+=("$n"); fi
done
((${#STEPS[@]})) || die "no step of the ladder fits in $MAX_PLAYERS players (ulimit -n $NOFILE)"
LADDER_NOTE=""
if ((${#DROPPED[@]})); then
  LADDER_NOTE="ladder capped at $MAX_PLAYERS players (ulimit -Hn $HARD, $EPHEMERAL ephemeral ports): dropped ${DROPPED[*]}"
  log "$LADDER_NOTE"
fi

NGINX_RTMP=29935
# rc-1e1o: origin 1 on 29101 (HTTP) / 29201 (media), edge-1 RTMP 29301, HTTP 29401.
RC_RTMP=127.0.0.1:29301

# --- packages and binary --------------------------------------------------------------
need=()
command -v jq >/dev/null || need+=(jq)
if [[ " $SERVERS " == *" nginx-rtmp "* ]]; then
  command -v nginx >/dev/null || need+=(nginx)
  [[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ]] || need+=(libnginx-mod-rtmp)
fi
bench_install "${need[@]}"
bench_binary saturation
log "results in $OUT; steps ${STEPS[*]} players at $KBPS kbit/s, ${DURATION} s each"

RC_ENV=(RAFTCAST_DATA_DIR="$OUT/rc-1e1o" RAFTCAST_ORIGINS=1 RAFTCAST_EDGES=1
  RAFTCAST_HTTP_BASE=29100 RAFTCAST_MEDIA_BASE=29200 RAFTCAST_RTMP_BASE=29300 RAFTCAST_EDGE_HTTP_BASE=29400
  RAFTCAST_EDGE_MAX_CONNECTIONS="$NOFILE" RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS="$NOFILE"
  RAFTCAST_EDGE_MAX_HANDSHAKES="$NOFILE" RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS="$NOFILE"
  RAFTCAST_EDGE_MAX_UNSTARTED="$NOFILE" RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS="$NOFILE"
  RAFTCAST_EDGE_MAX_PUBLISHES_PER_ADDRESS="$NOFILE")

TOOL="" VERDICT="" BUSY_BEFORE=0
cleanup() {
  set +e
  [[ -n "$TOOL" ]] && kill -TERM "$TOOL" 2>/dev/null && wait "$TOOL" 2>/dev/null
  nginx_rtmp_stop
  [[ -f "$OUT/rc-1e1o/pids/origin-1.pid" ]] && env "${RC_ENV[@]}" "$ROOT/scripts/bootstrap.sh" stop >>"$OUT/logs/bootstrap.log" 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- servers, pinned --------------------------------------------------------------------
declare -A FRONT=() BACK=() ADDR=()
for s in $SERVERS; do
  case $s in
    nginx-rtmp)
      nginx_rtmp_start "$OUT/nginx" "$NGINX_RTMP" "$OUT/logs/nginx.log" $((NOFILE - 128)) "$NOFILE" \
        || die "nginx-rtmp did not start"
      FRONT[$s]=$NGINX_WORKER BACK[$s]=$NGINX_PID ADDR[$s]=127.0.0.1:$NGINX_RTMP ;;
    rc-1e1o)
      env "${RC_ENV[@]}" "$ROOT/scripts/bootstrap.sh" start >>"$OUT/logs/bootstrap.log" 2>&1 \
        || die "bootstrap failed; see $OUT/logs/bootstrap.log"
      FRONT[$s]=$(cat "$OUT/rc-1e1o/pids/edge-1.pid") BACK[$s]=$(cat "$OUT/rc-1e1o/pids/origin-1.pid") ADDR[$s]=$RC_RTMP ;;
  esac
  taskset -a -p -c "$LAST" "${FRONT[$s]}" >/dev/null
  taskset -a -p -c "$LOAD_CPUS" "${BACK[$s]}" >/dev/null
  log "$s: player-facing pid ${FRONT[$s]} on core $LAST, pid ${BACK[$s]} on $LOAD_CPUS, rtmp ${ADDR[$s]}"
done
log "the load tool runs on $LOAD_CPUS"

{
  echo "{"
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"nproc\": $(nproc),"
  echo "  \"cpu\": \"$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)\","
  echo "  \"kernel\": \"$(uname -r)\","
  echo "  \"server_core\": $LAST, \"load_cpus\": \"$LOAD_CPUS\", \"nofile\": $NOFILE,"
  echo "  \"ladder\": [$(IFS=,; echo "${STEPS[*]}")], \"ladder_note\": \"$LADDER_NOTE\","
  echo "  \"kbps\": $KBPS, \"duration_s\": $DURATION, \"ramp\": $RAMP, \"load_limit_percent\": $LOAD_LIMIT"
  echo "}"
} >"$OUT/machine.json"

# --- measuring --------------------------------------------------------------------------
HZ=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo ""; }
# Busy and total jiffies of cores $1..$2 (user..steal, so guest time is not counted twice).
jiffies() {
  awk -v lo="$1" -v hi="$2" '$1 ~ /^cpu[0-9]+$/ { n = substr($1, 4) + 0
    if (n >= lo && n <= hi) { t = 0; for (i = 2; i <= 9; i++) t += $i; busy += t - $5 - $6; total += t } }
    END { print busy, total }' /proc/stat
}

# Waits until the process $1 uses under 5 % of a core over a second, at most 30 s: the
# previous step's players are gone before the next step starts. Sets BUSY_BEFORE, how
# busy all cores were in that last second: other processes on the machine, which
# taskset does not keep off the pinned cores.
settle() {
  local deadline=$((SECONDS + 30)) a b j0 j1
  while :; do
    j0=$(jiffies 0 "$LAST"); a=$(ticks "$1"); sleep 1; b=$(ticks "$1"); j1=$(jiffies 0 "$LAST")
    BUSY_BEFORE=$(awk -v a="$j0" -v b="$j1" 'BEGIN { split(a, x, " "); split(b, y, " ")
      printf "%.1f", (y[2] > x[2]) ? (y[1] - x[1]) / (y[2] - x[2]) * 100 : 0 }')
    [[ -n $a && -n $b ]] || return 0
    (((b - a) * 100 < 5 * HZ)) && return 0
    ((SECONDS < deadline)) || { log "  $1 still busy after 30 s"; return 0; }
  done
}

# One step: server, players. Writes runs/SERVER-N.json and sets VERDICT (pass, fail,
# load, error). Not run in a subshell, so that cleanup sees TOOL.
step() {
  local server=$1 players=$2 front=${FRONT[$1]} back=${BACK[$1]}
  local name="$server-$players" rep="$OUT/logs/$server-$players.report.json" prog="$OUT/logs/$server-$players.progress"
  settle "$front"
  local load_before; load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  log "$name: $players players at $KBPS kbit/s, load $load_before"
  "${LOAD[@]}" "$BIN" bench fanout --publish "${ADDR[$server]}" --play "${ADDR[$server]}" --players "$players" \
    --kbps "$KBPS" --duration "$DURATION" --ramp "$RAMP" --name "sat-$name" --watch-pid "$front" --watch-pid "$back" \
    >"$rep" 2>"$prog" &
  TOOL=$!
  # Samples over the measured window: from the tool's first "measuring" line (other
  # lines, e.g. players' gaps, come between), for DURATION - 1 s (the window's end is
  # not printed; the tool's wrap-up is left out).
  local first=() last=() now measuring=0
  while kill -0 "$TOOL" 2>/dev/null; do
    ((measuring)) || ! grep -q -m 1 '^measuring' "$prog" 2>/dev/null || measuring=1
    if ((measuring)); then
      read -r -a now <<<"$EPOCHREALTIME $(ticks "$TOOL" | sed 's/^$/-/') $(jiffies 0 $((LAST - 1))) $(jiffies "$LAST" "$LAST")"
      if [[ ${now[1]} == - ]]; then
        :
      elif ((${#first[@]} == 0)); then
        first=("${now[@]}")
      elif awk -v a="${first[0]}" -v b="${now[0]}" -v d="$DURATION" 'BEGIN { exit !(b - a <= d - 1) }'; then
        last=("${now[@]}")
      fi
    fi
    sleep 0.5
  done
  local ok=1
  wait "$TOOL" || ok=0
  TOOL=""
  if ! ((ok)) || ! jq -e .players "$rep" >/dev/null 2>&1; then
    jq -n --arg e "$(tail -n 1 "$prog" 2>/dev/null)" '{failed: true, error: $e}' >"$rep"
  fi
  local tool_pct=null load_busy=null server_busy=null
  if ((${#last[@]})); then
    read -r tool_pct load_busy server_busy < <(awk -v hz="$HZ" -v n="$LOAD_CORES" \
      -v t0="${first[0]}" -v t1="${last[0]}" -v c0="${first[1]}" -v c1="${last[1]}" \
      -v lb0="${first[2]}" -v lt0="${first[3]}" -v lb1="${last[2]}" -v lt1="${last[3]}" \
      -v sb0="${first[4]}" -v st0="${first[5]}" -v sb1="${last[4]}" -v st1="${last[5]}" \
      'BEGIN { printf "%.1f %.1f %.1f\n", (c1 - c0) / hz / (t1 - t0) * 100,
        (lb1 - lb0) / (lt1 - lt0) * 100, (sb1 - sb0) / (st1 - st0) * 100 }')
  fi
  jq -n --arg server "$server" --argjson players "$players" --argjson kbps "$KBPS" --argjson duration "$DURATION" \
    --argjson ramp "$RAMP" --arg load_before "$load_before" --argjson busy_before "$BUSY_BEFORE" --arg load_after "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --argjson tool "$tool_pct" --argjson load_busy "$load_busy" --argjson server_busy "$server_busy" \
    --argjson cores "$LOAD_CORES" --argjson limit "$LOAD_LIMIT" --slurpfile report "$rep" '
    $report[0] as $r
    | (if $r.failed then null else $r.players_keeping_up * 100 / $r.players end) as $keep
    | (($tool != null and $tool >= $limit * $cores) or ($load_busy != null and $load_busy >= 95)) as $load_sat
    | (if $r.failed then "error"
       elif $keep >= 99 and $r.frames_lost == 0 then "pass"
       elif $load_sat then "load"
       else "fail" end) as $v
    | {server: $server, players: $players, kbps: $kbps, duration_s: $duration, ramp: $ramp,
       verdict: $v,
       reason: ((if $r.failed then "bench failed: \($r.error)"
         else [(if $keep < 99 then "\($keep * 10 | floor / 10) % keeping up" else empty end),
               (if $r.frames_lost > 0 then "\($r.frames_lost) frames lost" else empty end)] | join(", ") end)
         + (if $load_sat then "; load tool \($tool // "?") % of its core(s), those cores \($load_busy // "?") % busy" else "" end)),
       keeping_up_percent: $keep, load_tool_saturated: $load_sat,
       server_cpu_percent: (if $r.failed then null else $r.processes[0].cpu_percent end),
       load_tool_cpu_percent: $tool, load_cores_busy_percent: $load_busy, server_core_busy_percent: $server_busy,
       machine_busy_before_percent: $busy_before, load_before: $load_before, load_after: $load_after, report: $r}' >"$OUT/runs/$name.json"
  rm -f "$rep"
  jq -r '"  \(.verdict): keeping up \(.report.players_keeping_up // "-")/\(.players), lost \(.report.frames_lost // "-"), p50 \(.report.latency.p50_ms // "-" | if type == "number" then . * 10 | round / 10 else . end) ms, p99 \(.report.latency.p99_ms // "-" | if type == "number" then . * 10 | round / 10 else . end) ms, server \(.server_cpu_percent // "-" | if type == "number" then round else . end) %, load tool \(.load_tool_cpu_percent // "-") %, load cores \(.load_cores_busy_percent // "-") % \(.reason)"' \
    "$OUT/runs/$name.json" >&2
  VERDICT=$(jq -r .verdict "$OUT/runs/$name.json")
}

declare -A STOPPED=()
RUNS=()
for players in "${STEPS[@]}"; do
  for s in $SERVERS; do
    [[ -n ${STOPPED[$s]:-} ]] && continue
    step "$s" "$players"
    RUNS+=("$OUT/runs/$s-$players.json")
    [[ $VERDICT == pass ]] || STOPPED[$s]=$players
  done
done

# --- table and summary --------------------------------------------------------------------
{
  echo "| server | players | keeping up | frames lost | p50 / p99 ms | server core % (core busy %) | load tool core % (cores busy %) | machine busy before % | verdict |"
  echo "|---|---|---|---|---|---|---|---|---|"
  jq -r 'def n: if . == null then "–" elif type == "number" then (. * 10 | round / 10 | tostring) else tostring end;
    "| \(.server) | \(.players) | \(.report.players_keeping_up // "–")/\(.players) (\(.keeping_up_percent | n) %) | \(.report.frames_lost // "–") | \(.report.latency.p50_ms | n) / \(.report.latency.p99_ms | n) | \(.server_cpu_percent | n) (\(.server_core_busy_percent | n)) | \(.load_tool_cpu_percent | n) (\(.load_cores_busy_percent | n)) | \(.machine_busy_before_percent | n) | \(
      if .verdict == "pass" then (if .load_tool_saturated then "ok (load tool saturated)" else "ok" end)
      elif .verdict == "load" then "load tool saturated (\(.reason)): not a server failure"
      elif .verdict == "error" then "error: \(.reason)"
      else "failed: \(.reason)" end) |"' "${RUNS[@]}"
  echo
  [[ -n $LADDER_NOTE ]] && echo "Note: $LADDER_NOTE." && echo
  busy=$(jq -r 'select(.machine_busy_before_percent > 15) | "\(.server)-\(.players) (\(.machine_busy_before_percent) %)"' "${RUNS[@]}" | paste -sd, - | sed 's/,/, /g')
  [[ -n $busy ]] && echo "Note: other processes kept the machine busy before $busy: the figures are not those of a quiet machine." && echo
  jq -s -r --arg servers "$SERVERS" '
    def line($s):
      [.[] | select(.server == $s)] as $runs
      | ([$runs[] | select(.verdict == "pass") | .players] | max) as $ok
      | ([$runs[] | select(.verdict != "pass")] | first) as $bad
      | {server: $s, players: ($ok // 0),
         bound: (if $bad == null or $bad.verdict == "load" then "lower" else "exact" end),
         text: ("\($s) saturation: " + (
           if $bad == null then "\($ok) players kept up on one core (the ladder ended: at least \($ok))"
           elif $ok == null and $bad.verdict == "load" then "unknown (the first step, \($bad.players), was load tool saturated: \($bad.reason))"
           elif $ok == null then "fewer than \($bad.players) players on one core (the first step failed: \($bad.reason))"
           elif $bad.verdict == "load" then "at least \($ok) players kept up on one core (next step \($bad.players): load tool saturated, \($bad.reason); not a server failure)"
           else "\($ok) players kept up on one core (next step \($bad.players) failed: \($bad.reason))" end))};
    . as $all | [$servers | split(" ")[] | select(. != "") | . as $s | $all | line($s)] as $lines
    | ($lines[] | .text),
      ([$lines[] | select(.server == "rc-1e1o")][0] as $rc | [$lines[] | select(.server == "nginx-rtmp")][0] as $ng
       | if $rc == null or $ng == null then empty
         elif $ng.players == 0 or $rc.players == 0 then "ratio raftcast / nginx-rtmp: undetermined (a server passed no step)"
         else "ratio raftcast / nginx-rtmp: " + (
           if $rc.bound == $ng.bound and $rc.bound == "exact" then ""
           elif $rc.bound == "lower" and $ng.bound == "exact" then ">= "
           elif $rc.bound == "exact" and $ng.bound == "lower" then "<= "
           else "~" end)
           + "\($rc.players * 100 / $ng.players | round / 100) (\($rc.players) / \($ng.players) players, one core each"
           + (if $rc.bound == "lower" and $ng.bound == "lower" then "; both lower bounds" else "" end) + ")"
         end)' "${RUNS[@]}"
} >"$OUT/table.md"
cat "$OUT/table.md"
log "table: $OUT/table.md   runs: $OUT/runs/"
