#!/usr/bin/env bash
# The long VOD failover run (issue 16; docs/recording.md, docs/vod.md), nightly-style:
# three origins and an edge with a VOD cache; ffmpeg publishes a 20 s source looped
# for a minute into a recorded stream while its owner origin is SIGKILLed twice
# (about 15 s and 35 s in, each restarted once the stream has moved); then the
# recording is played through the edge as /vod/{id}.flv, as HLS VOD and over RTMP
# (rtmpdump from rtmp://EDGE/vod/{id}) and checked
# against the source: every video frame once, in order, with increasing timestamps.
# It is the #[ignore]d test of tests/recording.rs; the file's short test (one SIGKILL,
# a planned move, a holder lost with its disk) runs in CI. Prints the frames, the
# pieces (owner, holders, frames, timestamps) and the segments. About 70 s once
# the debug test binary is built. Needs ffmpeg and rtmpdump (scripts/install-deps.sh).
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in ffmpeg rtmpdump; do
  command -v "$tool" >/dev/null || { echo "vod-failover: $tool missing; run scripts/install-deps.sh" >&2; exit 1; }
done
started=$(date +%s)
cargo test --locked --test recording -- --ignored --nocapture \
  a_minute_recorded_across_two_owner_sigkills_plays_whole_through_an_edge
echo "vod-failover: took $(($(date +%s) - started)) s"
