#!/usr/bin/env python3
"""The latency RTMPT adds over RTMP, measured per frame (docs/rtmpt.md, "Measured").

Two ffmpeg players read the same live stream at once, one over rtmp:// and one over
rtmpt://, each remuxing to FLV on its stdout with no buffering; this script reads both
FLV streams, notes the wall-clock time each video tag arrives, and for every video
timestamp both received prints how much later it came over RTMPT. ffmpeg runs on both
sides, so its own delays cancel; what is left is the tunnel's: the poll round trips,
the idle hold, the reply batching.

    scripts/rtmpt-latency.py RTMP_URL RTMPT_URL [SECONDS]

Prints the median, p90, p99 and max of the added latency, in ms, and the frame count.
"""

import os
import selectors
import subprocess
import sys
import time


def player(url):
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", url, "-c", "copy",
           "-flush_packets", "1", "-f", "flv", "-"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)


class FlvTags:
    """Incremental FLV parser: yields (tag type, timestamp) as tags complete."""

    def __init__(self):
        self.buf = bytearray()
        self.header_done = False

    def feed(self, data):
        self.buf += data
        out = []
        if not self.header_done:
            if len(self.buf) < 13:
                return out
            offset = int.from_bytes(self.buf[5:9], "big")
            del self.buf[:offset + 4]
            self.header_done = True
        while len(self.buf) >= 11:
            size = int.from_bytes(self.buf[1:4], "big")
            if len(self.buf) < 11 + size + 4:
                break
            kind = self.buf[0] & 0x1F
            ts = int.from_bytes(self.buf[4:7], "big") | (self.buf[7] << 24)
            out.append((kind, ts))
            del self.buf[:11 + size + 4]
        return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rtmp_url, rtmpt_url = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20
    procs = {"rtmp": player(rtmp_url), "rtmpt": player(rtmpt_url)}
    parsers = {name: FlvTags() for name in procs}
    arrivals = {name: {} for name in procs}
    sel = selectors.DefaultSelector()
    for name, proc in procs.items():
        os.set_blocking(proc.stdout.fileno(), False)
        sel.register(proc.stdout, selectors.EVENT_READ, name)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for key, _ in sel.select(timeout=0.5):
                name = key.data
                data = key.fileobj.read1(1 << 16) if hasattr(key.fileobj, "read1") else key.fileobj.read(1 << 16)
                now = time.monotonic()
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                for kind, ts in parsers[name].feed(data):
                    if kind == 9:
                        arrivals[name].setdefault(ts, now)
    finally:
        for proc in procs.values():
            proc.kill()
    common = sorted(set(arrivals["rtmp"]) & set(arrivals["rtmpt"]))
    # The first seconds are the GOP each player starts with, delivered at once.
    common = common[len(common) // 5:]
    if len(common) < 10:
        sys.exit(f"rtmpt-latency: only {len(common)} frames reached both players")
    added = sorted((arrivals["rtmpt"][ts] - arrivals["rtmp"][ts]) * 1000 for ts in common)

    def pct(p):
        return added[min(len(added) - 1, int(p / 100 * len(added)))]

    print(f"frames compared: {len(added)}")
    print(f"rtmpt added latency ms: median {pct(50):.1f} p90 {pct(90):.1f} p99 {pct(99):.1f} "
          f"max {added[-1]:.1f} min {added[0]:.1f}")


if __name__ == "__main__":
    main()
