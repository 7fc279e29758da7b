#!/usr/bin/env python3
"""Chart of a scripts/soak.sh run: RSS and open descriptors of every process over time.

  scripts/soak-chart.py CSV OUT.svg

CSV is the run's samples.csv (t_seconds,process,pid,rss_kib,fds,threads,tasks); the
failovers.csv beside it, when there is one, marks each kill with a vertical line
labelled with the killed origin. One line per role (origin-1 …, edge-1 …, the load
generators dashed); a restarted origin's line breaks where it was killed. Standard
library only.
"""
import csv, os, sys

COLORS = {"origin-1": "#1f5fbf", "origin-2": "#2c7a2c", "origin-3": "#8e44ad",
          "edge-1": "#c0392b", "edge-2": "#d68910", "loader-fanout": "#555555", "loader-so": "#999999"}


def load(path):
    series = {}  # process -> [(pid, t, rss_mib, fds)]
    with open(path) as f:
        for row in csv.DictReader(f):
            series.setdefault(row["process"], []).append(
                (int(row["pid"]), int(row["t_seconds"]), int(row["rss_kib"]) / 1024, int(row["fds"])))
    return series


def segments(points):
    """Points split where the pid changes (a restart), each [(t, rss, fds)]."""
    out, last = [], None
    for pid, t, rss, fds in points:
        if pid != last:
            out.append([])
            last = pid
        out[-1].append((t, rss, fds))
    return out


def nice_top(v):
    """The smallest of 1, 2, 2.5, 5 × 10^n at or above v."""
    for exp in range(0, 10):
        for step in (1, 2, 2.5, 5):
            if step * 10 ** exp >= v:
                return step * 10 ** exp
    return v


def chart(series, failovers, title):
    W, H, PW, PH, ML, MT = 1000, 490, 400, 320, 70, 50
    t_max = max(t for pts in series.values() for _, t, _, _ in pts) or 1
    # The load generators keep every latency sample (their RSS grows by design, to GBs):
    # the RSS panel shows the servers alone, on their own scale.
    panels = [("RSS, MiB (servers; the load generators' is in summary.txt)", 1, False), ("open descriptors", 2, True)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<text x="{W / 2}" y="{H - 44}" text-anchor="middle" fill="#c0392b">dashed red line: an origin '
             'SIGKILLed (o2: origin-2), restarted a few seconds later; a break in a line: that origin\'s restart</text>']
    names = sorted(series, key=lambda p: (p.startswith("loader"), p))
    for pi, (label, idx, loaders) in enumerate(panels):
        x0 = ML + pi * (PW + 110)
        drawn = [n for n in names if loaders or not n.startswith("loader")]
        top = nice_top(max(p[idx + 1] for n in drawn for p in series[n]) * 1.05)
        px = lambda t, x0=x0: x0 + PW * t / t_max
        py = lambda v, top=top: MT + PH - PH * v / top
        parts.append(f'<text x="{x0 + PW / 2}" y="{MT - 12}" text-anchor="middle">{label}</text>')
        parts.append(f'<rect x="{x0}" y="{MT}" width="{PW}" height="{PH}" fill="none" stroke="#888"/>')
        for i in range(6):
            v = top * i / 5
            parts.append(f'<line x1="{x0}" y1="{py(v)}" x2="{x0 + PW}" y2="{py(v)}" stroke="#eee"/>')
            parts.append(f'<text x="{x0 - 6}" y="{py(v) + 4}" text-anchor="end">{v:,.4g}</text>')
        minutes = t_max / 60
        step = next(s for s in (1, 2, 5, 10, 15, 30, 60) if minutes / s <= 10)
        m = 0
        while m * 60 <= t_max:
            parts.append(f'<text x="{px(m * 60)}" y="{MT + PH + 18}" text-anchor="middle">{m}</text>')
            m += step
        parts.append(f'<text x="{x0 + PW / 2}" y="{MT + PH + 36}" text-anchor="middle">minutes</text>')
        for f in failovers:
            t = int(f["t_seconds"])
            parts.append(f'<line x1="{px(t)}" y1="{MT}" x2="{px(t)}" y2="{MT + PH}" stroke="#c0392b" '
                         'stroke-dasharray="3 3" stroke-opacity="0.6"/>')
            who = f["process"].replace("origin-", "o")
            parts.append(f'<text x="{px(t) + 2}" y="{MT + 11}" font-size="10" fill="#c0392b">{who}</text>')
        for name in drawn:
            color = COLORS.get(name, "#333")
            dash = ' stroke-dasharray="6 4"' if name.startswith("loader") else ""
            for seg in segments(series[name]):
                d = " ".join(f"{px(p[0]):.1f},{py(p[idx]):.1f}" for p in seg)
                parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
    lx, ly = ML, H - 22
    for name in names:
        dash = ' stroke-dasharray="6 4"' if name.startswith("loader") else ""
        parts.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{COLORS.get(name, "#333")}" '
                     f'stroke-width="2"{dash}/>')
        parts.append(f'<text x="{lx + 28}" y="{ly + 4}">{name}</text>')
        lx += 125
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().split("\n\n")[1])
    path, out = sys.argv[1], sys.argv[2]
    series = load(path)
    if not series:
        sys.exit("soak-chart: no samples in " + path)
    failovers = []
    fpath = os.path.join(os.path.dirname(os.path.abspath(path)), "failovers.csv")
    if os.path.exists(fpath):
        with open(fpath) as f:
            failovers = [r for r in csv.DictReader(f) if r.get("process", "none") != "none"]
    t_max = max(t for pts in series.values() for _, t, _, _ in pts)
    title = f"raftcast soak: every process's RSS and descriptors, {t_max / 60:.0f} min, sampled every 10 s"
    with open(out, "w") as f:
        f.write(chart(series, failovers, title))


if __name__ == "__main__":
    main()
