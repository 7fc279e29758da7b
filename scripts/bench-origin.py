#!/usr/bin/env python3
"""Figures of the origin cluster on this machine, measured on a fresh three-origin
cluster started by scripts/bootstrap.sh (release build).

  scripts/bench-origin.py failover [--kills 10]   leader SIGKILL -> new leader (from the nodes' logs)
  scripts/bench-origin.py busy [--seconds 60]     elections while both cores are saturated
  scripts/bench-origin.py writes                  shared-object writes/s and latency at 1 and 32 clients
  scripts/bench-origin.py growth [--count 100000] RSS and data-dir size after N writes
  scripts/bench-origin.py all

Uses its own data dir and ports (RAFTCAST_HTTP_BASE 18100, media 19100) so it never
touches a development cluster. Prints a table and, with --json FILE, writes the figures.
"""
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RAFTCAST_BIN", os.path.join(ROOT, "target/release/raftcast"))
DATA = os.environ.get("RAFTCAST_BENCH_DIR", "/tmp/raftcast-bench-origin")
HTTP_BASE = 18100
ENV = dict(os.environ, RAFTCAST_DATA_DIR=DATA, RAFTCAST_BIN=BIN,
           RAFTCAST_HTTP_BASE=str(HTTP_BASE), RAFTCAST_MEDIA_BASE="19100")
ORIGINS = ",".join(f"127.0.0.1:{HTTP_BASE + i}" for i in (1, 2, 3))


def sh(*args, check=True):
    return subprocess.run(args, env=ENV, check=check, capture_output=True, text=True)


def bootstrap(action):
    r = sh(os.path.join(ROOT, "scripts/bootstrap.sh"), action, check=False)
    if r.returncode != 0:
        sys.exit(f"bootstrap {action} failed:\n{r.stdout}{r.stderr}")


def fresh_cluster():
    if os.path.exists(os.path.join(DATA, "pids")):
        bootstrap("stop")
    shutil.rmtree(DATA, ignore_errors=True)
    bootstrap("start")


def ctl(*args):
    r = sh(BIN, "ctl", "--json", "--origin", ORIGINS, "--token-file", os.path.join(DATA, "admin-token"), *args)
    return json.loads(r.stdout)


def pid(node):
    with open(os.path.join(DATA, "pids", f"origin-{node}.pid")) as f:
        return int(f.read())


def metric(node, name):
    import urllib.request
    with open(os.path.join(DATA, "admin-token")) as f:
        token = f.read().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{HTTP_BASE + node}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(req, timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


ROLE = re.compile(r"^(\S+Z) .*raft role node\.id=(\d+) leader=Some\((\d+)\) state=Leader term=(\d+)")


def leader_elected_at(node, after_term):
    """Timestamp at which `node` logged itself leader of a term above after_term."""
    with open(os.path.join(DATA, "logs", f"origin-{node}.log")) as f:
        for line in f:
            m = ROLE.match(line)
            if m and int(m.group(2)) == node and int(m.group(4)) > after_term:
                return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    return None


def failover(kills):
    fresh_cluster()
    times = []
    for k in range(kills):
        s = ctl("status")["cluster"]
        leader, term = s["leader_id"], s["term"]
        killed_at = time.time()
        os.kill(pid(leader), signal.SIGKILL)
        elected = None
        deadline = time.time() + 15
        while elected is None and time.time() < deadline:
            time.sleep(0.05)
            for n in (1, 2, 3):
                if n != leader:
                    t = leader_elected_at(n, term)
                    if t is not None:
                        elected = (n, t)
        if elected is None:
            sys.exit(f"kill {k + 1}: no new leader within 15 s")
        ms = (elected[1] - killed_at) * 1000
        times.append(ms)
        print(f"  kill {k + 1:2}: leader {leader} (term {term}) -> node {elected[0]} after {ms:.0f} ms", flush=True)
        bootstrap("start")  # restarts the victim, waits for three voters that agree
        time.sleep(1.0)
    return {"kills": kills, "median_ms": statistics.median(times), "max_ms": max(times), "min_ms": min(times),
            "all_ms": [round(t) for t in times]}


def so_bench(concurrency, seconds=None, writes=None):
    args = [BIN, "bench", "so", "--origins", ORIGINS, "--token-file", os.path.join(DATA, "admin-token"),
            "--concurrency", str(concurrency)]
    args += ["--duration", str(seconds or 3600)]
    if writes:
        args += ["--writes", str(writes)]
    r = subprocess.run(args, env=ENV, check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def busy(seconds):
    fresh_cluster()
    terms = [metric(n, "raftcast_raft_term") for n in (1, 2, 3)]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        load = so_bench(32, seconds=seconds)
    finally:
        for h in hogs:
            h.kill()
    after = [metric(n, "raftcast_raft_term") for n in (1, 2, 3)]
    elections = int(max(after) - max(terms))
    return {"seconds": seconds, "cpu_hogs": len(hogs), "so_writes_per_sec": round(load["writes_per_sec"]),
            "so_p99_ms": round(load["latency"]["p99_ms"], 1), "elections": elections}


def writes():
    fresh_cluster()
    out = {}
    for c in (1, 32):
        so_bench(c, seconds=2)  # warm up connections and caches
        r = so_bench(c, seconds=15)
        out[f"c{c}"] = {"writes_per_sec": round(r["writes_per_sec"]), "p50_ms": round(r["latency"]["p50_ms"], 2),
                        "p99_ms": round(r["latency"]["p99_ms"], 2), "errors": r["errors"]}
    return out


def rss_kib(p):
    with open(f"/proc/{p}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def growth(count):
    fresh_cluster()
    before = {n: rss_kib(pid(n)) for n in (1, 2, 3)}
    r = so_bench(32, writes=count)
    time.sleep(2)
    out = {"writes": r["writes"], "errors": r["errors"], "nodes": {}}
    for n in (1, 2, 3):
        out["nodes"][n] = {"rss_mib_before": round(before[n] / 1024, 1), "rss_mib_after": round(rss_kib(pid(n)) / 1024, 1),
                           "data_dir_mib": round(du(os.path.join(DATA, f"origin-{n}")) / 2**20, 1),
                           "snapshot_index": metric(n, "raftcast_raft_snapshot_index")}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["failover", "busy", "writes", "growth", "all"])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "--bin", "raftcast"], cwd=ROOT, check=True)
    figures = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}}
    try:
        if a.what in ("failover", "all"):
            print("leader failover:")
            figures["failover"] = failover(a.kills)
            f = figures["failover"]
            print(f"  median {f['median_ms']:.0f} ms, worst {f['max_ms']:.0f} ms over {f['kills']} kills")
        if a.what in ("busy", "all"):
            figures["busy"] = b = busy(a.seconds)
            print(f"busy machine: {b['elections']} elections in {b['seconds']} s with {b['cpu_hogs']} CPU hogs "
                  f"and 32 writers ({b['so_writes_per_sec']} writes/s, p99 {b['so_p99_ms']} ms)")
        if a.what in ("writes", "all"):
            figures["writes"] = w = writes()
            for c, r in w.items():
                print(f"shared-object writes, {c[1:]:>2} clients: {r['writes_per_sec']:>6} writes/s  "
                      f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  errors {r['errors']}")
        if a.what in ("growth", "all"):
            figures["growth"] = g = growth(a.count)
            print(f"after {g['writes']} writes ({g['errors']} errors):")
            for n, v in g["nodes"].items():
                print(f"  origin-{n}: RSS {v['rss_mib_before']} -> {v['rss_mib_after']} MiB, data dir {v['data_dir_mib']} MiB, "
                      f"snapshot at {v['snapshot_index']:.0f}")
    finally:
        bootstrap("stop")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
