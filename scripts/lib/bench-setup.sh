# shellcheck shell=bash
# What every comparison benchmark does before it measures, for scripts to source
# (bench-compare.sh, bench-saturation.sh). Uses the caller's ROOT, log and die.
#
#   bench_install PACKAGE...
#       installs the Debian packages given (none: nothing) with apt-get, updating the
#       index once if the first attempt fails.
#   bench_binary NAME
#       the release binary (RAFTCAST_BIN, else `cargo build --release`, honouring
#       CARGO_TARGET_DIR), and OUT (default a new /tmp/raftcast-NAME.*, made absolute)
#       with runs/, logs/ and bin/; copies the binary to OUT/bin (a rebuild during the
#       run changes nothing) and sets BIN and RAFTCAST_BIN (exported) to the copy.

bench_install() {
  (($#)) || return 0
  log "installing $*"
  local sudo=""
  ((EUID == 0)) || sudo=sudo
  $sudo apt-get install -y "$@" >&2 || { $sudo apt-get update >&2 && $sudo apt-get install -y "$@" >&2; } \
    || die "apt-get install $* failed"
}

bench_binary() {
  if [[ -z "${RAFTCAST_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin raftcast) || die "cargo build --release failed"
    RAFTCAST_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/raftcast"
  fi
  [[ -x "$RAFTCAST_BIN" ]] || die "$RAFTCAST_BIN is not executable"
  OUT=${OUT:-$(mktemp -d "/tmp/raftcast-$1.XXXXXX")}
  mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/bin"
  OUT=$(cd "$OUT" && pwd)
  cp "$RAFTCAST_BIN" "$OUT/bin/raftcast"
  BIN=$OUT/bin/raftcast
  export RAFTCAST_BIN=$BIN
}
