#!/usr/bin/env python3
"""Issue 13's memory figures: what HLS costs an edge per stream, and per 1,000 LL-HLS clients.

Usage (from the repository root): scripts/hls-memory.py [--streams 4] [--clients 1000] [--seconds 20]

Builds the release binary if needed (nice), starts three origins and two edges with
scripts/bootstrap.sh in a temporary data dir on ports 27100-27410 (HLS idle time 5 s),
encodes a 30 s test clip once (1280x720, 30 fps, 2.5 Mbit/s H.264 + AAC, GOP 2 s) and
publishes it N times through edge-1 with ffmpeg -stream_loop -c copy (no encoder
running). On edge-2 (the relay side), reading /proc/PID/status (VmRSS), /proc/PID/fd and
/metrics:

1. per stream: each stream gets an RTMP player on edge-2 (ffmpeg -c copy -f null), then
   an HLS reader (a plain playlist reload every second); RSS and edge_hls_window_bytes +
   edge_relay_window_bytes once the windows are full (default window: 6 segments of 2 s),
   divided by N; then after the readers stop, once HLS is retired (--hls-idle-ms);
2. per 1,000 LL-HLS clients on one stream, on edge-2 restarted (fresh allocator), with
   the stream packaged and its window full before the baseline: each client does what
   hls.js does in
   low-latency mode, on one keep-alive connection: a blocking playlist reload for the
   preload hint's part (_HLS_msn/_HLS_part), then that part, and again; RSS and
   descriptors of edge-2 before and while they run, and the requests answered.

Needs ffmpeg and curl. Prints the figures; `stop`s the cluster on exit."""
import argparse, asyncio, os, re, resource, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RAFTCAST_BIN", os.path.join(ROOT, "target/release/raftcast"))
PORTS = dict(RAFTCAST_HTTP_BASE="27100", RAFTCAST_MEDIA_BASE="27200", RAFTCAST_RTMP_BASE="27300",
             RAFTCAST_EDGE_HTTP_BASE="27400")
EDGE1_RTMP, EDGE2_RTMP, EDGE2_HTTP = "127.0.0.1:27301", "127.0.0.1:27302", ("127.0.0.1", 27402)


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics():
    return urllib.request.urlopen(f"http://{EDGE2_HTTP[0]}:{EDGE2_HTTP[1]}/metrics", timeout=5).read().decode()


def metric(name, text=None):
    for line in (text or metrics()).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def footprint():
    text = metrics()
    return {k: metric(k, text) for k in
            ("edge_hls_streams", "edge_hls_window_bytes", "edge_relay_hls_windows", "edge_relay_window_bytes")}


def wait(what, check, timeout=60, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    sys.exit(f"hls-memory: timed out waiting for {what}")


def get(path):
    try:
        with urllib.request.urlopen(f"http://{EDGE2_HTTP[0]}:{EDGE2_HTTP[1]}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return None, b""


class LlClient:
    """One hls.js-like LL-HLS client on one keep-alive connection."""

    def __init__(self, path):
        self.path, self.requests, self.errors = path, 0, 0

    async def request(self, r, w, target):
        w.write(f"GET {target} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
        await w.drain()
        status = int((await r.readline()).split()[1])
        length = 0
        while (line := await r.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await r.readexactly(length)
        self.requests += 1
        if status != 200:
            self.errors += 1
        return status, body

    async def run(self, stop):
        r, w = await asyncio.open_connection(*EDGE2_HTTP)
        _, body = await self.request(r, w, f"{self.path}/index.m3u8")
        while not stop.is_set():
            hint = re.search(rb'PRELOAD-HINT:TYPE=PART,URI="part-(\d+)\.(\d+)\.m4s"', body)
            if not hint:
                await asyncio.sleep(0.25)
                _, body = await self.request(r, w, f"{self.path}/index.m3u8")
                continue
            msn, part = hint.group(1).decode(), hint.group(2).decode()
            # The blocking reload for the hinted part, then the part itself.
            _, body = await self.request(r, w, f"{self.path}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}")
            await self.request(r, w, f"{self.path}/part-{msn}.{part}.m4s")
        w.close()


async def ll_clients(n, seconds, pid):
    stop = asyncio.Event()
    clients = [LlClient("/live/mem0") for _ in range(n)]
    tasks = []
    for start in range(0, n, 200):
        tasks += [asyncio.create_task(c.run(stop)) for c in clients[start:start + 200]]
        await asyncio.sleep(0.2)
    await asyncio.sleep(5)  # settle
    before_req = sum(c.requests for c in clients)
    samples = []
    t0 = time.time()
    while time.time() - t0 < seconds:
        await asyncio.sleep(1)
        samples.append((rss_kib(pid), fds(pid), metric("edge_hls_waiting")))
    rate = (sum(c.requests for c in clients) - before_req) / (time.time() - t0)
    stop.set()
    await asyncio.wait(tasks, timeout=15)
    for t in tasks:
        t.cancel()
    errors = sum(c.errors for c in clients)
    return samples, rate, errors, sum(c.requests for c in clients)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    if not os.path.exists(BIN):
        subprocess.run(["nice", "-n", "19", "cargo", "build", "--release", "--bin", "raftcast"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="hls-memory.")
    env = dict(os.environ, RAFTCAST_BIN=BIN, RAFTCAST_DATA_DIR=os.path.join(work, "data"), **PORTS,
               RAFTCAST_EDGE_HLS_IDLE_MS="5000", RAFTCAST_EDGE_HTTP_MAX_CONNECTIONS_PER_ADDRESS="4096",
               RAFTCAST_EDGE_MAX_LONG_REQUESTS_PER_ADDRESS="4096", RUST_LOG="warn")
    env.pop("RAFTCAST_ADMIN_TOKEN", None)
    env.pop("RAFTCAST_CLUSTER_SECRET", None)
    bootstrap = os.path.join(ROOT, "scripts/bootstrap.sh")
    procs = []
    try:
        clip = os.path.join(work, "clip.flv")
        subprocess.run(["nice", "-n", "19", "ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                        "-t", "30", "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2500k", "-maxrate", "2500k",
                        "-bufsize", "2500k", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
                        "-c:a", "aac", "-b:a", "128k", "-f", "flv", clip], check=True)
        subprocess.run([bootstrap, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        pid = int(open(os.path.join(work, "data/pids/edge-2.pid")).read())
        base = (rss_kib(pid), fds(pid))
        n = args.streams
        for i in range(n):
            procs.append(subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", clip,
                                           "-c", "copy", "-f", "flv", f"rtmp://{EDGE1_RTMP}/live/mem{i}"]))
        time.sleep(3)
        for i in range(n):
            procs.append(subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-rw_timeout", "10000000", "-i",
                                           f"rtmp://{EDGE2_RTMP}/live/mem{i}", "-c", "copy", "-f", "null", "-"]))
        time.sleep(20)  # the players' relays settle
        relayed = (rss_kib(pid), fds(pid), footprint())
        # HLS readers on every stream, long enough to fill the default window (6 x 2 s).
        stop_readers = time.time() + 25
        while time.time() < stop_readers:
            for i in range(n):
                get(f"/live/mem{i}/index.m3u8")
            time.sleep(1)
        hls = (rss_kib(pid), fds(pid), footprint())
        wait("HLS to be retired on edge-2", lambda: footprint()["edge_hls_streams"] == 0, timeout=30)
        time.sleep(2)
        retired = (rss_kib(pid), fds(pid), footprint())
        print(f"edge-2 RSS KiB / fds / HLS footprint, {n} streams of 2.5 Mbit/s, 2 s segments, default window:")
        print(f"  idle:                          {base[0]} KiB, {base[1]} fds")
        print(f"  relaying to RTMP players only: {relayed[0]} KiB, {relayed[1]} fds, {relayed[2]}")
        print(f"  + HLS on every stream:         {hls[0]} KiB, {hls[1]} fds, {hls[2]}")
        print(f"  HLS retired (idle):            {retired[0]} KiB, {retired[1]} fds, {retired[2]}")
        f = hls[2]
        print(f"per HLS stream: RSS +{(hls[0] - relayed[0]) / n:.0f} KiB, "
              f"edge_hls_window_bytes {f['edge_hls_window_bytes'] / n / 1024:.0f} KiB, "
              f"edge_relay_window_bytes {f['edge_relay_window_bytes'] / n / 1024:.0f} KiB")

        # 1,000 LL-HLS clients on stream mem0, on a fresh edge-2 (the allocator keeps
        # pages the windows above freed, which would hide what the clients take): the
        # RTMP players go, edge-2 is restarted, one stream is packaged and its window
        # filled before the baseline.
        for p in procs[n:]:
            p.terminate()
            p.wait()
        os.kill(pid, 9)
        wait("edge-2 to exit", lambda: not os.path.exists(f"/proc/{pid}") or
             open(f"/proc/{pid}/stat").read().split()[2] == "Z", timeout=10)
        subprocess.run([bootstrap, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        pid = int(open(os.path.join(work, "data/pids/edge-2.pid")).read())
        fresh = (rss_kib(pid), fds(pid))
        fill = time.time() + 20
        while time.time() < fill:
            get("/live/mem0/index.m3u8")
            time.sleep(1)
        before = (rss_kib(pid), fds(pid))
        print(f"fresh edge-2: {fresh[0]} KiB, {fresh[1]} fds; packaging one stream (window full): "
              f"{before[0]} KiB, {before[1]} fds")
        samples, rate, errors, total = asyncio.run(ll_clients(args.clients, args.seconds, pid))
        peak_rss = max(s[0] for s in samples)
        mean_rss = sum(s[0] for s in samples) / len(samples)
        peak_fds = max(s[1] for s in samples)
        waiting = max(s[2] or 0 for s in samples)
        print(f"{args.clients} LL-HLS clients (blocking reload + part) on one stream for {args.seconds} s:")
        print(f"  before: {before[0]} KiB, {before[1]} fds; during: mean {mean_rss:.0f} KiB, peak {peak_rss} KiB, "
              f"{peak_fds} fds; edge_hls_waiting peak {waiting:.0f}")
        print(f"  {rate:.0f} requests/s answered, {errors} of {total} not 200")
        print(f"per 1,000 clients: RSS +{(mean_rss - before[0]) * 1000 / args.clients / 1024:.1f} MiB (mean), "
              f"+{(peak_rss - before[0]) * 1000 / args.clients / 1024:.1f} MiB (peak), "
              f"+{(peak_fds - before[1]) * 1000 / args.clients:.0f} fds")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        subprocess.run([bootstrap, "stop"], env=env, stdout=subprocess.DEVNULL)


main()
