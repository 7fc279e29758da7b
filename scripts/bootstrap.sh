#!/usr/bin/env bash
# Start, stop or inspect a raftcast cluster on loopback: three origins and two edges.
#
#   scripts/bootstrap.sh start    build if needed, start what is not running, init once, wait for a leader,
#                                 print the publish and play URLs
#   scripts/bootstrap.sh stop     stop exactly the processes this script started
#   scripts/bootstrap.sh status   processes and the cluster's view of itself
#
# With RAFTCAST_LB=1, start also runs HAProxy in front of the edges (config generated
# into $RAFTCAST_DATA_DIR/haproxy.cfg; every setting is explained in docs/hls.md,
# "Load balancer"): HTTP on 127.0.0.1:$RAFTCAST_EDGE_HTTP_BASE (8080) round-robin over
# the edges' HTTP ports, RTMP on 127.0.0.1:$RAFTCAST_RTMP_BASE (1934) over their RTMP
# ports. HAProxy connects to the edges from 127.0.0.2 and prefixes each connection with
# a PROXY v2 header, which the edges accept from that address only
# (--proxy-protocol-from 127.0.0.2), so their per-address caps count real clients.
# stop and status include it whenever it runs. RTMPT requests are round-robin too, with
# no stickiness: every edge gets --rtmpt-peers (the HTTP addresses of all edges, in
# order, its own included), an edge forwards a tunnel request to the edge holding its
# session, and the session outlives that edge (docs/rtmpt.md).
#
# Everything lives under $RAFTCAST_DATA_DIR (default ./data): one folder per node,
# logs/, pids/, and the generated secrets cluster-secret and admin-token (mode 0600).
#
# Environment:
#   RAFTCAST_DATA_DIR    data root                         [./data]
#   RAFTCAST_BIN         raftcast binary to run            [target/release/raftcast, built if needed]
#   RAFTCAST_HTTP_BASE   origin N serves HTTP on BASE+N    [8100]
#   RAFTCAST_MEDIA_BASE  origin N serves media on BASE+N   [9100]
#   RAFTCAST_RTMP_BASE   edge-N serves RTMP on BASE+N      [1934]
#   RAFTCAST_EDGE_HTTP_BASE  edge-N serves HTTP on BASE+N  [8080]
#   RAFTCAST_WAIT_SECS   how long start waits for a leader [30]
#   RAFTCAST_ORIGINS     how many origins                  [3]
#   RAFTCAST_EDGES       how many edges                    [2]
#   RAFTCAST_LB          1: also run HAProxy in front of the edges [0]
#   RAFTCAST_LB_STATS    HAProxy's stats page address      [127.0.0.1:EDGE_HTTP_BASE+400]
#   RAFTCAST_TLS         1: also RTMPS and HTTPS (HTTP/2) on the edges, with a
#                        throw-away CA made under $RAFTCAST_DATA_DIR/tls/ [0]
#   RAFTCAST_AGENT_BASE  with RAFTCAST_LB=1, edge-N answers HAProxy's agent checks
#                        on BASE+N                         [EDGE_HTTP_BASE+450]
#   RAFTCAST_RTMPS_BASE  edge-N serves RTMPS on BASE+N     [1944]
#   RAFTCAST_HTTPS_BASE  edge-N serves HTTPS on BASE+N     [8442]
#   RAFTCAST_PEER_TLS    1: mutual TLS between all members (Raft RPC, the origins' HTTP
#                        API, the media links), with a throw-away cluster CA and one
#                        certificate per node (and one for ctl) made under
#                        $RAFTCAST_DATA_DIR/tls/peer/; sticky: a data dir started with it
#                        keeps it [0]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${RAFTCAST_DATA_DIR:-./data}
HTTP_BASE=${RAFTCAST_HTTP_BASE:-8100}
MEDIA_BASE=${RAFTCAST_MEDIA_BASE:-9100}
RTMP_BASE=${RAFTCAST_RTMP_BASE:-1934}
EDGE_HTTP_BASE=${RAFTCAST_EDGE_HTTP_BASE:-8080}
WAIT_SECS=${RAFTCAST_WAIT_SECS:-30}
read -ra ORIGINS <<<"$(seq 1 "${RAFTCAST_ORIGINS:-3}" | tr '\n' ' ')"
read -ra EDGES <<<"$(seq 1 "${RAFTCAST_EDGES:-2}" | tr '\n' ' ')"
LB=${RAFTCAST_LB:-0}
TLS=${RAFTCAST_TLS:-0}
PEER_TLS=${RAFTCAST_PEER_TLS:-0}
[[ -f "${RAFTCAST_DATA_DIR:-./data}/tls/peer/ca.pem" ]] && PEER_TLS=1
RTMPS_BASE=${RAFTCAST_RTMPS_BASE:-1944}
HTTPS_BASE=${RAFTCAST_HTTPS_BASE:-8442}
# The address HAProxy connects to the edges from: the one address the edges trust to
# send PROXY headers. Clients on 127.0.0.1 still reach the edges directly.
LB_SOURCE=127.0.0.2
LB_STATS=${RAFTCAST_LB_STATS:-127.0.0.1:$((EDGE_HTTP_BASE + 400))}
AGENT_BASE=${RAFTCAST_AGENT_BASE:-$((EDGE_HTTP_BASE + 450))}

die() { echo "bootstrap: $*" >&2; exit 1; }

binary() {
  if [[ -n "${RAFTCAST_BIN:-}" ]]; then
    [[ -x "$RAFTCAST_BIN" ]] || die "RAFTCAST_BIN=$RAFTCAST_BIN is not executable"
    echo "$RAFTCAST_BIN"
    return
  fi
  command -v cargo >/dev/null || die "cargo not found; install Rust or set RAFTCAST_BIN"
  # A no-op when the release binary is up to date.
  (cd "$ROOT" && cargo build --release --quiet --bin raftcast) >&2 || die "cargo build --release failed"
  echo "$ROOT/target/release/raftcast"
}

http_addr() { echo "127.0.0.1:$((HTTP_BASE + $1))"; }
media_addr() { echo "127.0.0.1:$((MEDIA_BASE + $1))"; }
rtmp_addr() { echo "127.0.0.1:$((RTMP_BASE + $1))"; }
edge_http_addr() { echo "127.0.0.1:$((EDGE_HTTP_BASE + $1))"; }
rtmps_addr() { echo "127.0.0.1:$((RTMPS_BASE + $1))"; }
https_addr() { echo "127.0.0.1:$((HTTPS_BASE + $1))"; }
agent_addr() { echo "127.0.0.1:$((AGENT_BASE + $1))"; }
# Every process this script runs, origins first.
names() { for i in "${ORIGINS[@]}"; do echo "origin-$i"; done; for i in "${EDGES[@]}"; do echo "edge-$i"; done; }
origin_list() { local a=(); for i in "${ORIGINS[@]}"; do a+=("$(http_addr "$i")"); done; (IFS=,; echo "${a[*]}"); }
# Every edge's HTTP address, edge-1 first: each edge's --rtmpt-peers. The same list, in
# the same order, on every edge (a session id starts with its holder's index in it).
edge_http_list() { local a=(); for i in "${EDGES[@]}"; do a+=("$(edge_http_addr "$i")"); done; (IFS=,; echo "${a[*]}"); }

# The pid in $1's pid file, if that process is alive and is the node we started.
live_pid() {
  local file="$DATA/pids/$1.pid" pid
  [[ -f "$file" ]] || return 1
  pid=$(<"$file")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: the process must be ours. Its arguments are matched,
  # not the binary's name, so a RAFTCAST_BIN under any name is found.
  local want cmdline
  case "$1" in
    origin-*) want=" origin --id ${1#origin-} " ;;
    edge-*) want=" edge --id $1 " ;;
    haproxy) want=" -f $DATA/haproxy.cfg " ;;
  esac
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *"$want"* ]] || return 1
  echo "$pid"
}

# Whether a process this run just started is still there: only its pid, not its
# arguments (live_pid), since between the fork and the exec of the binary the
# process still has the shell's (a loaded machine stretches that window).
started_alive() {
  local file="$DATA/pids/$1.pid"
  [[ -f "$file" ]] && kill -0 "$(<"$file")" 2>/dev/null
}

secret_file() {
  local f="$DATA/$1"
  if [[ ! -s "$f" ]]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f")
  fi
  chmod 600 "$f"
}

# A throw-away CA and one certificate for every edge (127.0.0.1 and localhost) in
# $DATA/tls/: ca.pem (give it to clients), edge.pem (the chain), keys 0600. Kept across
# restarts; delete the folder for new ones. The edges reload edge.pem/edge-key.pem when
# they change (or on SIGHUP).
tls_files() {
  local dir="$DATA/tls"
  command -v openssl >/dev/null || die "RAFTCAST_TLS=1 needs openssl (scripts/install-deps.sh)"
  [[ -f "$dir/edge.pem" && -f "$dir/edge-key.pem" && -f "$dir/ca.pem" ]] && return
  mkdir -p "$dir"
  chmod 700 "$dir"
  (
    umask 077
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/CN=raftcast bootstrap CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=raftcast edge" \
      -keyout edge-key.pem -out edge.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >edge.ext
    openssl x509 -req -in edge.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
      -extfile edge.ext -out edge.pem 2>/dev/null
    rm -f edge.csr edge.ext
    chmod 644 ca.pem edge.pem
  ) || die "could not make the TLS certificates in $dir"
  echo "made a throw-away CA and edge certificate in $dir"
}

# A throw-away cluster CA in $DATA/tls/peer/ (apart from the clients' CA: it vouches for
# members, not for public names) and a certificate for every node and for ctl, each
# usable as server and client, naming 127.0.0.1 and localhost. Keys 0600; kept across
# restarts (a node that is added later gets its certificate at its first start).
peer_tls_files() {
  local dir="$DATA/tls/peer" name
  command -v openssl >/dev/null || die "RAFTCAST_PEER_TLS=1 needs openssl (scripts/install-deps.sh)"
  mkdir -p "$dir"
  chmod 700 "$DATA/tls" "$dir"
  (
    umask 077
    cd "$dir"
    if [[ ! -f ca.pem || ! -f ca-key.pem ]]; then
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=raftcast bootstrap cluster CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
      echo "made a throw-away cluster CA in $dir" >&2
    fi
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >node.ext
    for name in $(names) ctl; do
      [[ -f "$name.pem" && -f "$name-key.pem" ]] && continue
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=raftcast $name" \
        -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
        -extfile node.ext -out "$name.pem" 2>/dev/null
      rm -f "$name.csr"
    done
    rm -f node.ext
    chmod 644 ca.pem
  ) || die "could not make the cluster TLS certificates in $dir"
}

# The --peer-tls-* flags of node $1 (origin-N, edge-N or ctl), when peer TLS is on.
peer_tls_flags() {
  [[ "$PEER_TLS" == 1 ]] || return 0
  local dir="$DATA/tls/peer"
  echo "--peer-tls-ca $dir/ca.pem --peer-tls-cert $dir/$1.pem --peer-tls-key $dir/$1-key.pem"
}

ctl() {
  # shellcheck disable=SC2046 # the flags are paths without spaces under $DATA
  "$BIN" ctl --origin "$(origin_list)" --token-file "$DATA/admin-token" $(peer_tls_flags ctl) "$@"
}

start() {
  mkdir -p "$DATA/logs" "$DATA/pids"
  DATA=$(cd "$DATA" && pwd)
  secret_file cluster-secret
  secret_file admin-token
  [[ "$TLS" == 1 ]] && tls_files
  [[ "$PEER_TLS" == 1 ]] && peer_tls_files
  BIN=$(binary)
  local started=0
  for i in "${ORIGINS[@]}"; do
    local name="origin-$i"
    if pid=$(live_pid "$name"); then
      echo "$name already running (pid $pid)"
      continue
    fi
    # The media library (VOD `lib-NAME`: `NAME.flv` here; docs/vod.md).
    mkdir -p "$DATA/$name/media"
    setsid "$BIN" origin --id "$i" \
      --http "$(http_addr "$i")" --media "$(media_addr "$i")" \
      --data-dir "$DATA/$name" --media-dir "$DATA/$name/media" \
      --cluster-secret-file "$DATA/cluster-secret" --admin-token-file "$DATA/admin-token" \
      $(peer_tls_flags "$name") </dev/null >>"$DATA/logs/$name.log" 2>&1 &
    echo $! >"$DATA/pids/$name.pid"
    echo "started $name (pid $!) http=$(http_addr "$i") media=$(media_addr "$i")"
    started=$((started + 1))
  done
  if [[ ! -f "$DATA/initialized" ]]; then
    local nodes=() deadline=$((SECONDS + WAIT_SECS))
    for i in "${ORIGINS[@]}"; do nodes+=(--node "$i=$(http_addr "$i"),$(media_addr "$i")"); done
    # The first origin may still be binding its port.
    # shellcheck disable=SC2046
    until out=$("$BIN" ctl --origin "$(http_addr 1)" --token-file "$DATA/admin-token" $(peer_tls_flags ctl) \
      init "${nodes[@]}" 2>&1); do
      # An origin that exited (a port in use, a bad data dir) explains itself in its log;
      # another process on its port would answer "unauthorized" below.
      for i in "${ORIGINS[@]}"; do
        started_alive "origin-$i" \
          || die "origin-$i exited: $(tail -n 1 "$DATA/logs/origin-$i.log" 2>/dev/null)"
      done
      (( SECONDS < deadline )) || die "could not initialize the cluster ($out); see $DATA/logs/origin-1.log"
      sleep 0.3
    done
    echo "$out"
    touch "$DATA/initialized"
  fi
  ctl wait --voters "${#ORIGINS[@]}" --timeout-secs "$WAIT_SECS" >/dev/null \
    || die "no leader with ${#ORIGINS[@]} voters after ${WAIT_SECS}s; see $DATA/logs/"
  for i in "${EDGES[@]}"; do
    local name="edge-$i"
    if pid=$(live_pid "$name"); then
      echo "$name already running (pid $pid)"
      continue
    fi
    local proxy=()
    local agent=()
    [[ "$LB" == 1 ]] && proxy=(--proxy-protocol-from "$LB_SOURCE") && agent=(--agent "$(agent_addr "$i")")
    local tls=() listening=""
    if [[ "$TLS" == 1 ]]; then
      tls=(--rtmps "$(rtmps_addr "$i")" --https "$(https_addr "$i")"
        --tls-cert "$DATA/tls/edge.pem" --tls-key "$DATA/tls/edge-key.pem")
      listening=" rtmps=$(rtmps_addr "$i") https=$(https_addr "$i")"
    fi
    mkdir -p "$DATA/$name/vod-cache"
    # RAFTCAST_RTMPT_SHARED=0: RTMPT sessions live and die with their edge (the
    # benchmarks' baseline; scripts/bench-rtmpt.sh).
    local shared=(--rtmpt-peers "$(edge_http_list)")
    [[ "${RAFTCAST_RTMPT_SHARED:-1}" == 0 ]] && shared=()
    setsid "$BIN" edge --id "$name" \
      --rtmp "$(rtmp_addr "$i")" --http "$(edge_http_addr "$i")" --origins "$(origin_list)" "${agent[@]}" \
      --cluster-secret-file "$DATA/cluster-secret" --www "$ROOT/examples/webcast" "${proxy[@]}" "${tls[@]}" \
      --vod-cache-dir "$DATA/$name/vod-cache" "${shared[@]}" \
      $(peer_tls_flags "$name") </dev/null >>"$DATA/logs/$name.log" 2>&1 &
    echo $! >"$DATA/pids/$name.pid"
    echo "started $name (pid $!) rtmp=$(rtmp_addr "$i") http=$(edge_http_addr "$i")$listening"
  done
  for i in "${EDGES[@]}"; do
    local deadline=$((SECONDS + WAIT_SECS))
    until curl -fsS "http://$(edge_http_addr "$i")/health" >/dev/null 2>&1; do
      # An edge that exited (a flag it does not know, a port in use) says why in its log.
      started_alive "edge-$i" || die "edge-$i exited: $(tail -n 3 "$DATA/logs/edge-$i.log" 2>/dev/null)"
      (( SECONDS < deadline )) || die "edge-$i does not answer on $(edge_http_addr "$i"); see $DATA/logs/edge-$i.log"
      sleep 0.2
    done
  done
  if [[ "$LB" == 1 ]]; then start_haproxy; fi
  echo
  ctl status
  local pub play2 flv last=${EDGES[${#EDGES[@]}-1]}
  pub="rtmp://$(rtmp_addr 1)/live/test"
  play2="rtmp://$(rtmp_addr "$last")/live/test"
  flv="http://$(edge_http_addr "$last")/live/test.flv"
  echo
  echo "publish: $pub"
  echo "play:    $play2   (or rtmp://$(rtmp_addr 1)/live/test)"
  echo "http-flv: $flv"
  echo
  echo "# publish a test pattern through edge-1:"
  echo "ffmpeg -nostdin -re -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 \\"
  echo "  -c:v libx264 -preset ultrafast -tune zerolatency -g 60 -c:a aac -f flv $pub"
  echo "# watch it through edge-$last:"
  echo "ffplay -rw_timeout 5000000 $play2"
  # The webcast page writes its chat and poll with a token for exactly that stream's
  # objects (webcast/live/test/…); without one the page is read-only.
  local webcast_token
  webcast_token=$(ctl tokens sign --object-prefix webcast/live/test/ --write --persistent \
    --subject webcast-live-test --ttl 86400) || die "could not sign a webcast token"
  echo "# or open the interactive webcast page (examples/webcast) in a browser (its write token"
  echo "# is valid for 24 h; sign another with: ctl tokens sign --object-prefix webcast/live/test/ --write):"
  echo "http://$(edge_http_addr 1)/webcast/?stream=live/test&token=$webcast_token"
  if [[ "$LB" == 1 ]]; then
    echo
    echo "# through HAProxy (any edge, no stickiness):"
    echo "publish: rtmp://$(rtmp_addr 0)/live/test"
    echo "hls:     http://$(edge_http_addr 0)/live/test/index.m3u8"
    echo "rtmpt:   rtmpt://$(edge_http_addr 0)/live/test (round-robin too; a session outlives the edge that opened it)"
    echo "page:    http://$(edge_http_addr 0)/webcast/?stream=live/test&token=$webcast_token"
    echo "haproxy: $DATA/haproxy.cfg, stats at http://$LB_STATS/"
  fi
  if [[ "$TLS" == 1 ]]; then
    echo
    echo "# over TLS (CA: $DATA/tls/ca.pem; ffmpeg/ffplay take -tls_verify 1 -ca_file CA):"
    echo "publish: rtmps://$(rtmps_addr 1)/live/test"
    echo "play:    rtmps://$(rtmps_addr "$last")/live/test"
    echo "hls:     https://$(https_addr "$last")/live/test/index.m3u8   (HTTP/2; curl --cacert CA)"
    echo "page:    https://localhost:$((HTTPS_BASE + 1))/webcast/?stream=live/test&token=$webcast_token"
  fi
  echo
  echo "logs:    $DATA/logs/"
  echo "secrets: $DATA/cluster-secret, $DATA/admin-token"
  echo "admin:   $BIN ctl --origin $(origin_list) $(peer_tls_flags ctl) status"
  echo "streams: $BIN ctl --origin $(origin_list) $(peer_tls_flags ctl) streams"
  if [[ "$PEER_TLS" == 1 ]]; then
    echo "members: mutual TLS with the cluster CA $DATA/tls/peer/ca.pem (ctl's certificate: ctl.pem)"
  fi
}

# Writes $DATA/haproxy.cfg. Why each setting is there: docs/hls.md, "Load balancer".
haproxy_config() {
  local http_servers="" rtmp_servers="" i
  for i in "${EDGES[@]}"; do
    # The agent (docs/hls.md, "Load balancer"): the edge's weight from its own load.
    local agent="agent-check agent-port $((AGENT_BASE + i)) agent-inter 1s"
    http_servers+="    server edge-$i $(edge_http_addr "$i") $agent"$'\n'
    # RTMP servers are checked on their edge's HTTP /health; a check to another port
    # sends no PROXY header unless told to (check-send-proxy), and the edge closes a
    # connection from 127.0.0.2 without one.
    rtmp_servers+="    server edge-$i $(rtmp_addr "$i") port $((EDGE_HTTP_BASE + i)) check-send-proxy $agent"$'\n'
  done
  cat <<CFG
# Generated by scripts/bootstrap.sh at every start. docs/hls.md ("Load balancer")
# explains every setting.
global
    log stderr format raw local0 info
    hard-stop-after 5s
    # HAProxy writes header names in lower case; librtmp (rtmpdump's RTMPT) finds the
    # reply's length only as "Content-Length" (see h1-case-adjust-bogus-client below).
    h1-case-adjust content-length Content-Length
    # L7 retries (edges_http below) replay a request only if all of it fits in one buffer
    # (tune.bufsize, 16 KiB by default). An RTMPT /send carries what ffmpeg buffered, ten
    # RTMP messages while publishing: a few KB, up to a few hundred KB with a keyframe (a
    # 1080p keyframe at 6-8 Mb/s is 200-500 KB). 512 KiB holds that, so a publisher's
    # /send that meets a dying edge is replayed on another; a bigger one (the edges take
    # up to 2 MiB) still passes, it is only not retried. Memory: a buffer comes from
    # HAProxy's pool only while a transfer has bytes in it and goes back when it drains, so
    # this costs per active transfer, not per connection: up to 1.5 MiB for one busy both
    # ways (request, response, the retry copy), 1.5 GB at worst for 1000 at once against
    # 48 MB with 16 KiB buffers. HAProxy's manual says to lower maxconn by the same factor
    # when memory is tight.
    tune.bufsize 524288

defaults
    log global
    option dontlognull
    timeout connect 300ms
    timeout client 60s
    timeout server 60s
    timeout client-fin 5s
    timeout server-fin 5s
    timeout tunnel 1h
    timeout queue 1s
    retries 3
    option redispatch 1
    default-server source $LB_SOURCE send-proxy-v2 weight 100 check inter 500ms fastinter 250ms downinter 1s rise 2 fall 2 observe layer4 error-limit 1 on-error fastinter

frontend http
    mode http
    bind $(edge_http_addr 0)
    option httplog
    option h1-case-adjust-bogus-client
    timeout http-request 10s
    timeout http-keep-alive 10s
    default_backend edges_http

backend edges_http
    mode http
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host haproxy
    http-check expect status 200
    retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected 502 503 504
    # Replaying a request that reached an edge (every retry-on reason but conn-failure) is
    # for requests that are safe to repeat: GET, HEAD, and RTMPT's /send, /idle and /close
    # POSTs, idempotent by (session, seq): an edge answers a repeated seq with the last
    # reply and never writes its body twice, whichever edge holds the session by then
    # (docs/rtmpt.md). Not /open (a repeat opens a second session), nor other POSTs/PUTs.
    # RTMPT has no stickiness: any edge forwards a request to the edge holding its session,
    # and when that edge dies the request (replayed here) reaches its successor.
    acl rtmpt_tunnel path_reg ^/(send|idle|close)/[^/]+/[0-9]+\$
    http-request disable-l7-retry unless METH_GET || METH_HEAD || METH_POST rtmpt_tunnel
    # A request is replayable only if it was whole in the buffer when first sent: hold a
    # tunnel POST until its body is in (or the buffer is full), rather than pass the head
    # on ahead of a body still arriving (ffmpeg writes the two separately; without this
    # line such a /send or /idle was not retried). A body not in after 10 s (as for a head,
    # timeout http-request) gets HAProxy's 408: a publisher that slow cannot keep up live.
    http-request wait-for-body time 10s if METH_POST rtmpt_tunnel
$http_servers
frontend rtmp
    mode tcp
    bind $(rtmp_addr 0)
    option tcplog
    timeout client 1h
    default_backend edges_rtmp

backend edges_rtmp
    mode tcp
    balance leastconn
    timeout server 1h
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host haproxy
    http-check expect status 200
$rtmp_servers
listen stats
    mode http
    bind $LB_STATS
    stats enable
    stats uri /
    stats refresh 2s
    no log
CFG
}

start_haproxy() {
  command -v haproxy >/dev/null || die "haproxy not found: run scripts/install-deps.sh (Debian haproxy)"
  haproxy_config >"$DATA/haproxy.cfg"
  haproxy -c -q -f "$DATA/haproxy.cfg" || die "haproxy rejects $DATA/haproxy.cfg"
  if pid=$(live_pid haproxy); then
    # A running HAProxy keeps the config it started with; stop and start to change it.
    echo "haproxy already running (pid $pid)"
    return
  fi
  setsid haproxy -db -f "$DATA/haproxy.cfg" </dev/null >>"$DATA/logs/haproxy.log" 2>&1 &
  echo $! >"$DATA/pids/haproxy.pid"
  echo "started haproxy (pid $!) http=$(edge_http_addr 0) rtmp=$(rtmp_addr 0) stats=$LB_STATS"
  local deadline=$((SECONDS + WAIT_SECS))
  # Every edge up in HAProxy's own view (its health checks passed), not only listening.
  until [[ $(haproxy_up edges_http) -eq ${#EDGES[@]} && $(haproxy_up edges_rtmp) -eq ${#EDGES[@]} ]]; do
    started_alive haproxy || die "haproxy exited: $(tail -n 3 "$DATA/logs/haproxy.log")"
    (( SECONDS < deadline )) || die "HAProxy does not see every edge up; see http://$LB_STATS/ and $DATA/logs/haproxy.log"
    sleep 0.2
  done
}

# How many servers of backend $1 HAProxy counts as UP (from its stats CSV).
haproxy_up() {
  curl -fsS "http://$LB_STATS/;csv" 2>/dev/null \
    | awk -F, -v b="$1" '$1 == b && $2 != "BACKEND" && $18 ~ /^UP/ { n++ } END { print n + 0 }'
}

# Sends SIGTERM to the named processes and waits for them (SIGKILL after 10 s).
stop_group() {
  local pids=() name pid
  for name in "$@"; do
    if pid=$(live_pid "$name"); then
      kill -TERM "$pid" && pids+=("$pid") && echo "stopping $name (pid $pid)"
    fi
    rm -f "$DATA/pids/$name.pid"
  done
  local deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if (( SECONDS >= deadline )); then
        echo "pid $pid ignored SIGTERM for 10s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  done
}

stop() {
  [[ -d "$DATA/pids" ]] || { echo "nothing to stop"; return; }
  # The balancer first (no new clients), then edges, so publishers' claims are
  # released while the origins still serve.
  stop_group haproxy
  stop_group $(names | grep '^edge-')
  stop_group $(names | grep '^origin-')
  echo "stopped"
}

status() {
  local name
  for name in $(names); do
    if pid=$(live_pid "$name"); then echo "$name running (pid $pid)"; else echo "$name not running"; fi
  done
  if pid=$(live_pid haproxy); then
    echo "haproxy running (pid $pid): http=$(edge_http_addr 0) rtmp=$(rtmp_addr 0) stats=http://$LB_STATS/"
    curl -fsS "http://$LB_STATS/;csv" 2>/dev/null \
      | awk -F, '$1 ~ /^edges_/ && $2 != "BACKEND" { printf "  %-11s %-7s %s\n", $1, $2, $18 }'
  elif [[ "$LB" == 1 ]]; then
    echo "haproxy not running"
  fi
  if [[ -f "$DATA/admin-token" ]]; then
    BIN=$(binary)
    echo
    ctl status || true
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
