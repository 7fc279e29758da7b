#!/usr/bin/env python3
"""5,000 concurrent waiting HLS requests against one edge: RSS and descriptors.

Usage (from the repository root, after `cargo build`): scripts/hls-waiters.py [N] [EXTRA].
Starts an edge with no reachable origin and `--hls-max-waiting N`, opens N requests for a
stream that has no segment (each waits, holding its permits) from loopback addresses, 60
each, then EXTRA more (refused with 429), and prints the edge's RSS and descriptors."""
import asyncio, os, subprocess, sys, time, urllib.request

EDGE = os.environ.get("RAFTCAST_BIN", "target/debug/raftcast")
HTTP = ("127.0.0.1", 18381)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
EXTRA = int(sys.argv[2]) if len(sys.argv) > 2 else 500

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])  # KiB

def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))

def metric(name):
    text = urllib.request.urlopen(f"http://{HTTP[0]}:{HTTP[1]}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return line
    return None

async def open_waiter(i, results):
    src = f"127.0.{1 + i // 60 // 250}.{2 + (i // 60) % 250}"  # 60 per address (cap 64)
    r, w = await asyncio.open_connection(*HTTP, local_addr=(src, 0))
    w.write(b"GET /live/waiting/index.m3u8 HTTP/1.1\r\nHost: edge\r\n\r\n")
    await w.drain()
    results.append((r, w))

async def main():
    env = dict(os.environ, RAFTCAST_CLUSTER_SECRET="0123456789abcdef0123", RUST_LOG="warn")
    edge = subprocess.Popen([EDGE, "edge", "--id", "m1", "--rtmp", "127.0.0.1:18380", "--http", f"{HTTP[0]}:{HTTP[1]}",
                             "--origins", "127.0.0.1:9", "--play-wait-ms", "120000", "--hls-max-waiting", str(N)],
                            env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                metric("edge_hls_waiting"); break
            except OSError:
                time.sleep(0.1)
        before = (rss(edge.pid), fds(edge.pid))
        conns = []
        for start in range(0, N, 500):
            await asyncio.gather(*(open_waiter(i, conns) for i in range(start, min(N, start + 500))))
        deadline = time.time() + 30
        while metric("edge_hls_waiting") != f"edge_hls_waiting {N}" and time.time() < deadline:
            await asyncio.sleep(0.2)
        during = (rss(edge.pid), fds(edge.pid))
        print("waiting:", metric("edge_hls_waiting"))
        extra = []
        await asyncio.gather(*(open_waiter(N + i, extra) for i in range(EXTRA)))
        statuses = {}
        for r, w in extra:
            line = await asyncio.wait_for(r.readline(), 10)
            statuses[line.split()[1].decode()] = statuses.get(line.split()[1].decode(), 0) + 1
        print(f"{EXTRA} more requests while {N} wait:", statuses)
        print("refused:", [l for l in urllib.request.urlopen(f"http://{HTTP[0]}:{HTTP[1]}/metrics").read().decode().splitlines() if 'hls_waiting' in l and 'refused' in l])
        for r, w in conns + extra:
            w.close()
        deadline = time.time() + 30
        while metric("edge_hls_waiting") != "edge_hls_waiting 0" and time.time() < deadline:
            await asyncio.sleep(0.2)
        after = (rss(edge.pid), fds(edge.pid))
        print(f"edge RSS KiB / fds: before {before}, with {N} waiting {during}, after closing {after}")
        print(f"per waiting request: {(during[0] - before[0]) / N:.1f} KiB, {(during[1] - before[1]) / N:.2f} fds")
    finally:
        edge.terminate()
        edge.wait()

asyncio.run(main())
