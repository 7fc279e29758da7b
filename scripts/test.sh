#!/usr/bin/env bash
# The test command: installs missing dependencies, then runs every test of the
# workspace (unit tests, openraft's storage suite, crash and corruption tests, and the
# integration tests that drive real origin processes and scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked "$@"
