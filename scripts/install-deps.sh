#!/usr/bin/env bash
# Installs what the tests and scripts need on Debian, if it is missing. Idempotent;
# a no-op when everything is present. Run as root or with sudo available.
set -euo pipefail

# Debian packages the test suite and scripts use:
#   util-linux  setsid (scripts/bootstrap.sh detaches the nodes with it)
#   procps      kill/pgrep used by scripts
#   python3     scripts/bench-origin.py (figures, not the tests)
#   curl        scripts/bootstrap.sh waits for the edges' /health; HTTP/2 over TLS in tests/tls.rs
#   openssl     the throw-away CA of RAFTCAST_TLS=1 scripts/bootstrap.sh and tests/tls.rs
#   ffmpeg      real publisher and players (ffmpeg, ffprobe) in tests/edge.rs
#   rtmpdump    a librtmp player in tests/edge.rs
#   chromium    headless browser for tests/webcast.rs (examples/webcast/test/chat.mjs)
#   fonts-noto-color-emoji  the page's reaction buttons in its screenshots
#   nodejs npm  only when no `node` is on PATH: runs chat.mjs and installs its packages
#   iproute2    network namespaces, veths and the bridge of the chaos harness
#   nftables    the chaos harness's partitions, one-way drops and packet loss
#   iptables    (nf_tables backend) for poking at the same rules by hand
#   libfaketime the chaos harness's wall-clock skew (LD_PRELOAD), and faketime(1)
#   haproxy     the load balancer RAFTCAST_LB=1 scripts/bootstrap.sh runs in front of the edges
#   nginx       serves the same HLS segment files statically in scripts/bench-hls.sh
#   wrk         the HTTP load client of scripts/bench-hls.sh
PACKAGES=(util-linux procps python3 curl openssl ffmpeg rtmpdump chromium fonts-noto-color-emoji iproute2 nftables iptables libfaketime faketime haproxy nginx wrk)
command -v node >/dev/null || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# npm packages of the webcast example (player libraries, playwright-core) and of the HLS
# harness in tests/hls (hls.js, m3u8-parser, playwright-core), each reinstalled when its
# package-lock.json changed since the last install.
for dir in examples/webcast tests/hls; do
  pkg="$(dirname "$0")/../$dir"
  stamp="$pkg/node_modules/.raftcast-lock-sha256"
  lock_sum=$(sha256sum "$pkg/package-lock.json" | cut -d' ' -f1)
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_sum" ]]; then
    echo "installing $dir/node_modules (npm ci)"
    (cd "$pkg" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sum" >"$stamp"
  fi
done

# Rust components CI checks with.
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

# A current FFmpeg (tests/tools/requirements.txt: a static 9.0.2 build from PyPI,
# pinned by hash) for what Debian's 5.1 cannot do: seek an fMP4 HLS playlist. Reinstalled
# when the requirements change.
tools="$(dirname "$0")/../tests/tools"
stamp="$tools/python/.raftcast-requirements-sha256"
req_sum=$(sha256sum "$tools/requirements.txt" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$req_sum" || ! -x "$tools/bin/ffmpeg" ]]; then
  echo "installing tests/tools/python (pip, a static FFmpeg)"
  rm -rf "$tools/python" "$tools/bin"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --require-hashes \
    --target "$tools/python" -r "$tools/requirements.txt"
  mkdir -p "$tools/bin"
  bin=$(ls "$tools"/python/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-*)
  chmod +x "$bin"
  ln -sf "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" "$tools/bin/ffmpeg"
  "$tools/bin/ffmpeg" -hide_banner -version | sed -n 1p
  echo "$req_sum" >"$stamp"
fi
