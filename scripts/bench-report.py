#!/usr/bin/env python3
"""Table and chart of a scripts/bench-compare.sh run, from the JSON it left in DIR/runs.

  scripts/bench-report.py DIR [--markdown FILE] [--svg FILE]
  scripts/bench-report.py --hops BEFORE AFTER   # hop latency between two /metrics scrapes, as JSON

Prints the tables (markdown) on stdout; every ratio is raftcast / nginx-rtmp (or
raftcast / etcd) from the same run. No network, standard library only.
"""
import argparse, glob, json, math, os, sys

SERVERS = ["nginx-rtmp", "rc-1e1o", "rc-3o2e"]
COLORS = {"nginx-rtmp": "#2c7a2c", "rc-1e1o": "#1f5fbf", "rc-3o2e": "#c0392b"}


def load(dirname):
    media, so = [], []
    for path in sorted(glob.glob(os.path.join(dirname, "runs", "*.json"))):
        if path.endswith(".independent.json"):
            continue
        with open(path) as f:
            r = json.load(f)
        (so if "so_target" in r else media).append(r)
    machine = {}
    mpath = os.path.join(dirname, "machine.json")
    if os.path.exists(mpath):
        with open(mpath) as f:
            machine = json.load(f)
    return machine, media, so


def fnum(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float) and v != v:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def figures(run):
    """The numbers of one media run that the table and chart show."""
    rep = run["report"]
    if rep.get("failed"):
        return None
    procs = rep.get("processes", [])
    front = run["player_facing_processes"]
    gb = rep["bytes_delivered"] / 1e9
    cpu_all = sum(p["cpu_seconds"] for p in procs)
    cpu_front = sum(p["cpu_seconds"] for p in procs[:front])
    seconds = rep["seconds"]
    base = run.get("rss_kib_baseline") or []
    rss_front = sum(p["rss_kib"] - (base[i] or 0) for i, p in enumerate(procs[:front]) if i < len(base))
    lat = rep.get("latency") or {}
    audio = rep.get("audio_latency") or {}
    ttff = rep.get("time_to_first_frame") or {}
    keeping = rep["players_keeping_up"]
    front_cores = cpu_front / seconds if seconds else 0
    return {
        "egress_mbit": rep["egress_mbit_per_sec"],
        "cpu_pct_all": cpu_all / seconds * 100 if seconds else None,
        "cpu_pct_front": front_cores * 100,
        "cpu_gb_all": cpu_all / gb if gb else None,
        "cpu_gb_front": cpu_front / gb if gb else None,
        "keeping": keeping,
        "players": rep["players"],
        "lagging": rep["players_lagging"],
        "failed": rep["players_failed"],
        "lost": rep["frames_lost"],
        "p50": lat.get("p50_ms"),
        "p99": lat.get("p99_ms"),
        "max": lat.get("max_ms"),
        "audio_p50": audio.get("p50_ms"),
        "audio_p99": audio.get("p99_ms"),
        "ttff50": ttff.get("p50_ms"),
        "ttff99": ttff.get("p99_ms"),
        "rss_per_player": rss_front / rep["players"] if rep["players"] else None,
        "players_per_core": keeping / front_cores if front_cores > 0 else None,
        "load": run.get("load_before", ""),
        "errors": rep.get("errors", [])[:3],
    }


def media_tables(media):
    by = {(r["kbps"], r["players"], r["server"]): r for r in media}
    keys = sorted({(r["kbps"], r["players"]) for r in media})
    paths = {}
    for r in media:
        paths.setdefault(r["server"], r["path"])
    out = []
    out.append("Paths:\n")
    for s in SERVERS:
        if s in paths:
            out.append(f"- **{s}**: {paths[s]}")
    out.append("")
    out.append("| kbit/s | players | server | egress Mbit/s | server CPU % | CPU s/GB, all server processes (×nginx) "
               "| CPU s/GB, player-facing process (×nginx) | keeping up (lagging/failed, frames lost) "
               "| players per core, extrapolated (×nginx) | video p50 / p99 ms (p99 ×nginx) "
               "| audio p50 / p99 ms (p99 ×nginx) | TTFF p50 ms "
               "| RSS KiB per player (×nginx) | load before |")
    out.append("|" + "---|" * 14)
    for kbps, players in keys:
        ref = by.get((kbps, players, "nginx-rtmp"))
        ref = figures(ref) if ref else None
        for s in SERVERS:
            run = by.get((kbps, players, s))
            if not run:
                continue
            f = figures(run)
            if f is None:
                out.append(f"| {kbps} | {players} | {s} | run failed |" + " |" * 10)
                continue

            def rx(key, digits=2):
                if s == "nginx-rtmp" or ref is None:
                    return ""
                r = ratio(f[key], ref[key])
                return f" (**{fnum(r, digits)}×**)" if r is not None else ""

            out.append(
                f"| {kbps} | {players} | {s} | {fnum(f['egress_mbit'], 0)} | {fnum(f['cpu_pct_all'], 0)} "
                f"| {fnum(f['cpu_gb_all'], 2)}{rx('cpu_gb_all')} | {fnum(f['cpu_gb_front'], 2)}{rx('cpu_gb_front')} "
                f"| {f['keeping']}/{f['players']} ({f['lagging']}/{f['failed']}, {f['lost']}) "
                f"| {fnum(f['players_per_core'], 0)}{rx('players_per_core')} "
                f"| {fnum(f['p50'], 1)} / {fnum(f['p99'], 1)}{rx('p99')} "
                f"| {fnum(f['audio_p50'], 1)} / {fnum(f['audio_p99'], 1)}{rx('audio_p99')} | {fnum(f['ttff50'], 1)} "
                f"| {fnum(f['rss_per_player'], 1)}{rx('rss_per_player')} | {f['load']} |")
    return "\n".join(out)


def so_table(so):
    by = {(r["so_target"], r["concurrency"]): r for r in so}
    out = ["| clients | system | writes/s (×etcd) | p50 ms | p99 ms (×etcd) | errors | load before |",
           "|---|---|---|---|---|---|---|"]
    for conc in sorted({r["concurrency"] for r in so}):
        ref = by.get(("etcd", conc), {}).get("report", {})
        for t in ("etcd", "raftcast"):
            run = by.get((t, conc))
            if not run:
                continue
            rep = run["report"]
            if rep.get("failed"):
                out.append(f"| {conc} | {t} | run failed | | | | |")
                continue
            lat = rep.get("latency") or {}
            rw = rp = ""
            if t != "etcd" and ref and not ref.get("failed"):
                r1 = ratio(rep["writes_per_sec"], ref["writes_per_sec"])
                r2 = ratio(lat.get("p99_ms"), (ref.get("latency") or {}).get("p99_ms"))
                rw = f" (**{fnum(r1, 2)}×**)" if r1 else ""
                rp = f" (**{fnum(r2, 2)}×**)" if r2 else ""
            out.append(f"| {conc} | {t} | {fnum(rep['writes_per_sec'], 0)}{rw} | {fnum(lat.get('p50_ms'), 2)} "
                       f"| {fnum(lat.get('p99_ms'), 2)}{rp} | {rep['errors']} | {run.get('load_before', '')} |")
    return "\n".join(out)


def svg_chart(media, machine):
    """Two panels: server CPU-seconds per GB and p99 latency against players."""
    series = {}
    for r in media:
        f = figures(r)
        if f:
            series.setdefault((r["server"], r["kbps"]), []).append((r["players"], f))
    xs = sorted({r["players"] for r in media})
    if not xs:
        return None
    W, H, PW, PH, ML, MT = 980, 430, 380, 300, 70, 50
    panels = [("server CPU-seconds per GB delivered (all server processes)", "cpu_gb_all", False),
              ("publish → play latency p99, ms (log scale)", "p99", True)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>']
    loads = [float(r["load_before"].split()[0]) for r in media if r.get("load_before")]
    load = f", load {min(loads):.0f}–{max(loads):.0f}" if loads else ""
    title = f"raftcast vs nginx-rtmp, loopback, {machine.get('nproc', '?')} cores{load} ({machine.get('date', '')})"
    parts.append(f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>')
    for pi, (label, key, log) in enumerate(panels):
        x0 = ML + pi * (PW + 110)
        vals = [f[key] for pts in series.values() for _, f in pts if f[key] is not None and f[key] > 0]
        if log:
            lo = math.floor(math.log10(min(vals))) if vals else 0
            hi = math.ceil(math.log10(max(vals))) if vals else 1
            hi = max(hi, lo + 1)
            frac = lambda v, lo=lo, hi=hi: (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo)
            ticks = [10 ** e for e in range(lo, hi + 1)]
        else:
            top = max(vals) * 1.1 if vals else 1
            frac = lambda v, top=top: v / top
            ticks = [top * i / 5 for i in range(6)]
        parts.append(f'<text x="{x0 + PW / 2}" y="{MT - 12}" text-anchor="middle">{label}</text>')
        parts.append(f'<rect x="{x0}" y="{MT}" width="{PW}" height="{PH}" fill="none" stroke="#888"/>')
        for v in ticks:
            y = MT + PH - PH * frac(v)
            parts.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + PW}" y2="{y}" stroke="#eee"/>')
            text = f"{v:,.0f}" if log and v >= 1 else f"{v:.3g}"
            parts.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{text}</text>')

        def px(players):
            return x0 + 20 + (PW - 40) * (xs.index(players) / max(1, len(xs) - 1))

        for xv in xs:
            parts.append(f'<text x="{px(xv)}" y="{MT + PH + 18}" text-anchor="middle">{xv}</text>')
        parts.append(f'<text x="{x0 + PW / 2}" y="{MT + PH + 36}" text-anchor="middle">players</text>')
        for (server, kbps), pts in sorted(series.items()):
            pts = sorted((p, f[key]) for p, f in pts if f[key] is not None and f[key] > 0)
            if not pts:
                continue
            dash = "" if kbps == min(k for _, k in series) else ' stroke-dasharray="6 4"'
            d = " ".join(f"{px(p)},{MT + PH - PH * frac(v)}" for p, v in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{COLORS.get(server, "#555")}" stroke-width="2"{dash}/>')
            for p, v in pts:
                parts.append(f'<circle cx="{px(p)}" cy="{MT + PH - PH * frac(v)}" r="3" fill="{COLORS.get(server, "#555")}"/>')
    ly = H - 30
    lx = ML
    for server in SERVERS:
        for kbps in sorted({k for _, k in series}):
            if (server, kbps) not in series:
                continue
            dash = "" if kbps == min(k for _, k in series) else ' stroke-dasharray="6 4"'
            parts.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{COLORS[server]}" stroke-width="2"{dash}/>')
            parts.append(f'<text x="{lx + 28}" y="{ly + 4}">{server} {kbps} kbit/s</text>')
            lx += 150
    parts.append("</svg>")
    return "\n".join(parts)


HOP_SERIES = {"edge_hop_seconds": "hop", "raftcast_link_hop_seconds": None}


def hop_buckets(path):
    """Cumulative bucket counts per hop, summed over every process scraped into `path`."""
    hops = {}
    with open(path) as f:
        for line in f:
            if "_bucket{" not in line:
                continue
            series, value = line.rsplit(" ", 1)
            name, labels = series.split("_bucket{", 1)
            labels = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(","))
            labels = {k: v.strip('"') for k, v in labels.items()}
            if name not in HOP_SERIES:
                continue
            hop = labels.get("hop", "relay") if HOP_SERIES[name] else "relay"
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            b = hops.setdefault(hop, {})
            b[le] = b.get(le, 0) + float(value)
    return hops


def quantile(buckets, q):
    """histogram_quantile: linear within the bucket holding the q-th wait, in ms."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound * 1e3
            width = count - prev_count
            frac = (rank - prev_count) / width if width else 1.0
            return (prev_bound + (bound - prev_bound) * frac) * 1e3
        prev_bound, prev_count = bound, count
    return None


def hops_between(before, after):
    b, a = hop_buckets(before), hop_buckets(after)
    out = {}
    for hop, buckets in a.items():
        delta = {le: n - b.get(hop, {}).get(le, 0) for le, n in buckets.items()}
        count = delta.get(math.inf, 0)
        if count > 0:
            out[hop] = {"frames": int(count), "p50_ms": quantile(delta, 0.5), "p99_ms": quantile(delta, 0.99)}
    return out


def hop_table(media):
    rows = [r for r in media if r.get("hops")]
    if not rows:
        return ""
    lines = ["| kbit/s | players | server | ingest p50 / p99 ms | origin relay p50 / p99 ms | delivery p50 / p99 ms (merge window included) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["kbps"], r["players"], r["server"])):
        h = r["hops"]
        cell = lambda k: f"{fnum((h.get(k) or {}).get('p50_ms'), 2)} / {fnum((h.get(k) or {}).get('p99_ms'), 2)}"
        lines.append(f"| {r['kbps']} | {r['players']} | {r['server']} | {cell('ingest')} | {cell('relay')} | {cell('delivery')} |")
    return "\n".join(lines) + "\n"


def independent(dirname):
    """scripts/rtmp-players.py's reports (runs/indep-SERVER.independent.json), by server."""
    out = {}
    for path in sorted(glob.glob(os.path.join(dirname, "runs", "indep-*.independent.json"))):
        with open(path) as f:
            out[os.path.basename(path)[len("indep-"):-len(".independent.json")]] = json.load(f)
    return out


def independent_table(reports):
    lines = ["| server | players | keeping up (failed, frames lost) | video p50 / p99 ms (p99 ×nginx) | audio p50 / p99 ms (p99 ×nginx) | "
             "CPU s/GB, player-facing process (×nginx) | RSS KiB per player (×nginx) |",
             "|---|---|---|---|---|---|---|"]
    base = reports.get("nginx-rtmp") or {}

    def get(r, *keys):
        for k in keys:
            if isinstance(r, dict):
                r = r.get(k)
            elif isinstance(r, list) and isinstance(k, int) and k < len(r):
                r = r[k]
            else:
                return None
        return r

    for server, r in reports.items():
        if r.get("failed"):
            lines.append(f"| {server} | failed | | | | | |")
            continue
        p99, bp99 = get(r, "latency", "p99_ms"), get(base, "latency", "p99_ms")
        ap99, bap99 = get(r, "audio_latency", "p99_ms"), get(base, "audio_latency", "p99_ms")
        cpu, bcpu = get(r, "processes", 0, "cpu_seconds_per_gb"), get(base, "processes", 0, "cpu_seconds_per_gb")
        rss, brss = get(r, "processes", 0, "rss_kib_per_player"), get(base, "processes", 0, "rss_kib_per_player")
        mark = lambda a, b: "" if server == "nginx-rtmp" or ratio(a, b) is None else f" (**{ratio(a, b):.2f}×**)"
        lines.append(
            f"| {server} | {r.get('players')} | {r.get('players_keeping_up')}/{r.get('players')} "
            f"({r.get('players_failed')}, {r.get('frames_lost')}) | {fnum(get(r, 'latency', 'p50_ms'))} / {fnum(p99)}{mark(p99, bp99)} | "
            f"{fnum(get(r, 'audio_latency', 'p50_ms'))} / {fnum(ap99)}{mark(ap99, bap99)} | "
            f"{fnum(cpu, 2)}{mark(cpu, bcpu)} | {fnum(rss)}{mark(rss, brss)} |")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--hops":
        json.dump(hops_between(sys.argv[2], sys.argv[3]), sys.stdout)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--markdown")
    ap.add_argument("--svg")
    a = ap.parse_args()
    machine, media, so = load(a.dir)
    text = []
    if machine:
        text.append(f"Machine: {machine.get('nproc')} cores, {machine.get('cpu')}, kernel {machine.get('kernel')}; "
                    f"nginx {machine.get('nginx')}, etcd {machine.get('etcd')}; {machine.get('date')}; "
                    f"{machine.get('duration_s')} s measured per media run.\n")
    if media:
        text.append(media_tables(media))
        hops = hop_table(media)
        if hops:
            text.append("\nTime frames spend in each raftcast hop (edge and origin /metrics, same runs):\n")
            text.append(hops)
    indep = independent(a.dir)
    if indep:
        text.append("\nThe same servers through scripts/rtmp-players.py (a player sharing no code with raftcast), "
                    "600 kbit/s, after the runs above:\n")
        text.append(independent_table(indep))
    if so:
        text.append("\nShared-object writes (durable on both), same tool and concurrency:\n")
        text.append(so_table(so))
    errs = [(r["server"], r["kbps"], r["players"], e) for r in media for e in (r["report"].get("errors") or [])[:2]]
    if errs:
        text.append("\nFirst errors per run:\n")
        text.extend(f"- {s} {k} kbit/s {p} players: {e}" for s, k, p, e in errs)
    out = "\n".join(text) + "\n"
    sys.stdout.write(out)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(out)
    if a.svg and media:
        svg = svg_chart(media, machine)
        if svg:
            with open(a.svg, "w") as f:
                f.write(svg)


if __name__ == "__main__":
    main()
