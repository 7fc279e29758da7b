# shellcheck shell=bash
# nginx-rtmp as the benchmarks run it, for scripts to source (bench-compare.sh,
# bench-saturation.sh): one worker, chunk_size 4096, `application live { live on; }`,
# in the foreground under the caller's shell, so the caller owns its pid.
#
#   nginx_rtmp_start DIR PORT LOG [WORKER_CONNECTIONS [RLIMIT_NOFILE]]
#       writes DIR/nginx.conf, starts nginx (logs in DIR/logs/, its stdout and stderr
#       appended to LOG), waits until its worker exists and 127.0.0.1:PORT accepts;
#       sets NGINX_PID (the master) and NGINX_WORKER. Defaults: 8192 connections, 16384
#       files. On failure prints why on stderr and returns 1 (NGINX_PID may be set:
#       call nginx_rtmp_stop).
#   nginx_rtmp_stop
#       stops the nginx nginx_rtmp_start started, if any, and waits for it.
#
# Knows nothing of raftcast or of the caller's output layout beyond DIR and LOG.

NGINX_PID="" NGINX_WORKER=""

nginx_rtmp_start() {
  local dir=$1 port=$2 log=$3 connections=${4:-8192} nofile=${5:-16384}
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
worker_processes 1;
worker_rlimit_nofile $nofile;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections $connections; }
rtmp {
    server {
        listen 127.0.0.1:$port;
        chunk_size 4096;
        application live { live on; }
    }
}
EOF
  if ! nginx -t -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" >>"$log" 2>&1; then
    echo "nginx -t failed; see $log" >&2
    return 1
  fi
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" </dev/null >>"$log" 2>&1 &
  NGINX_PID=$!
  local deadline=$((SECONDS + 10))
  until NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1) && [[ -n "$NGINX_WORKER" ]] \
    && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      echo "nginx did not start; see $log" >&2
      return 1
    fi
    sleep 0.2
  done
}

nginx_rtmp_stop() {
  [[ -n "$NGINX_PID" ]] || return 0
  kill -TERM "$NGINX_PID" 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
  NGINX_PID="" NGINX_WORKER=""
}
