# shellcheck shell=bash
# The one-origin cluster the edge measurements run on (edge-memory.sh, heap-profile.sh,
# load-window.sh), for scripts to source. Uses the caller's ROOT.
#
#   small_cluster_start DATA BIN [EDGES]
#       exports bootstrap.sh's settings for a cluster of one origin and EDGES edges
#       (default 1) in DATA, on ports 27100-27499 (edge-N's RTMP at 127.0.0.1:2730N,
#       its HTTP at 127.0.0.1:2740N), with the edges' per-address caps raised (every
#       `bench fanout` player comes from 127.0.0.1); raises the descriptor limit,
#       stops the cluster on exit, and starts it (its output in DATA/bootstrap.log).
#       Anything else the processes need (e.g. _RJEM_MALLOC_CONF) is exported first.

small_cluster_start() {
  local data=$1 bin=$2 edges=${3:-1}
  export RAFTCAST_DATA_DIR=$data RAFTCAST_ORIGINS=1 RAFTCAST_EDGES=$edges RAFTCAST_HTTP_BASE=27100 \
    RAFTCAST_MEDIA_BASE=27200 RAFTCAST_RTMP_BASE=27300 RAFTCAST_EDGE_HTTP_BASE=27400 RAFTCAST_BIN=$bin \
    RAFTCAST_EDGE_MAX_CONNECTIONS=20000 RAFTCAST_EDGE_MAX_CONNECTIONS_PER_ADDRESS=20000 \
    RAFTCAST_EDGE_MAX_HANDSHAKES=20000 RAFTCAST_EDGE_MAX_HANDSHAKES_PER_ADDRESS=20000 \
    RAFTCAST_EDGE_MAX_UNSTARTED=20000 RAFTCAST_EDGE_MAX_UNSTARTED_PER_ADDRESS=20000
  ulimit -n 20000 2>/dev/null || true
  trap '"$ROOT/scripts/bootstrap.sh" stop >/dev/null 2>&1 || true' EXIT
  "$ROOT/scripts/bootstrap.sh" start >"$data/bootstrap.log" 2>&1
}
