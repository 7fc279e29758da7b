#!/usr/bin/env python3
"""Summary of a scripts/soak.sh run: did any process's memory, descriptors or tasks grow?

  scripts/soak-report.py DIR [--warmup SECONDS]

Reads DIR/samples.csv, DIR/failovers.csv and the load generators' reports (fanout.json,
so.json) and prints, for every process life (a role such as origin-2 and one pid: a
restarted origin is a new life), its RSS, descriptors and tokio tasks after warm-up and
at its end, and the verdict. Standard library only.

The rules (docs/soak.md):
- Warm-up is a sixth of the run (5 min of 30) unless --warmup says otherwise, counted
  from the start of each life: a restarted origin gets its own warm-up after its restart.
- "After warm-up" is the median of the first three samples (30 s) at or after the
  warm-up; "end" is the median of the life's last three samples. Medians of three keep
  one busy moment (a failover, a scrape) from deciding the verdict.
- A life is judged only when it lasted at least 1.5 warm-ups (a warm-up and half as much
  again to watch: in a 30-minute run, an origin restarted at 5 min and killed again at
  15 is judged, one killed at 5 min is not); shorter ones are listed, not judged.
- PASS: RSS grew less than 10 %, and descriptors and tasks did not grow, meaning end <=
  after-warm-up + max(5, 2 %): the slack absorbs a connection or a request in flight
  when sampled, not a leak of one per player or per failover.
- At rest: the cluster is sampled once before the load and once after it has ended
  (idle.csv). For every process that lived through the run (not restarted), descriptors
  and tasks at rest after must be at most before + the same slack: the players stay
  connected all run, so something left behind per connection shows only once they
  are gone. RSS at rest is listed, not judged (the allocator keeps freed pages).
- Descriptors and tasks are judged within the last role: when an origin took or gave up
  a role (owner or leader) after its warm-up, its counts are compared from the first
  three samples 60 s after that change (when 3 minutes of the life remain after it;
  otherwise from warm-up, noted). Taking a role brings its tasks and connections (the
  leader replicates to two followers, the owner relays to both edges): a step, once. A
  leak climbs within a role too, and a life that keeps its role is judged from warm-up.
- Roles: an origin that becomes the stream's owner (it relays the media to both edges)
  or the leader (it replicates to two followers) steps up in RSS and tasks then, which the
  rule above counts as growth. So every life also shows its roles (roles.csv) and its
  drift between kills: the RSS change within each stretch between two kills, from
  min(60 s, warm-up) after the kill to the next kill, summed. A step at a failover is
  left out of the drift; a leak, which climbs between failovers, is not. The drift is
  reported, not judged.
- The load generators are listed, not judged: `bench fanout` and `bench so` keep every
  latency sample, so their memory grows with the run by design.
"""
import argparse, csv, json, os, statistics, sys

RSS_GROWTH_MAX = 0.10
COUNT_SLACK_ABS, COUNT_SLACK_REL = 5, 0.02
JUDGED_SPAN = 1.5  # warm-ups a life must last to be judged
ROLE_SETTLE = 60  # s after an origin's role change before its counts are sampled again
ROLE_SPAN_MIN = 180  # s of a life that must remain after that for the counts to rebase


def slack(base):
    return max(COUNT_SLACK_ABS, COUNT_SLACK_REL * base)


def load_samples(path):
    lives = {}  # (process, pid) -> [row], in file order
    if not os.path.exists(path):
        return lives
    with open(path) as f:
        for row in csv.DictReader(f):
            r = {"t": int(row["t_seconds"]), "rss": int(row["rss_kib"]), "fds": int(row["fds"]),
                 "threads": int(row["threads"]),
                 "tasks": int(row["tasks"]) if row["tasks"] not in ("", None) else None}
            lives.setdefault((row["process"], int(row["pid"])), []).append(r)
    return lives


def median3(rows, key):
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def role_at(proc, roles, t):
    """(owner?, leader?) of `proc` at the last roles.csv sample at or before t."""
    cur = (False, False)
    for r in roles:
        if r["t"] > t:
            break
        cur = (r["owner"] == proc, r["leader"] == proc)
    return cur


def count_base(proc, after, roles):
    """The rows descriptors and tasks are judged from, and a note when they moved: the
    first three after warm-up, or, when the origin took or gave up a role after that
    (owner or leader), the first three from ROLE_SETTLE s after its last change, if at
    least ROLE_SPAN_MIN s of the life remain to watch. A role brings its own tasks and
    connections (the leader replicates to two followers), a step that is not a leak; a
    leak still climbs within the last role's stretch and fails there."""
    if not roles or not proc.startswith("origin"):
        return after[:3], None
    last_change, prev = None, role_at(proc, roles, after[0]["t"])
    for r in after[1:]:
        cur = role_at(proc, roles, r["t"])
        if cur != prev:
            last_change, prev = r["t"], cur
    if last_change is None:
        return after[:3], None
    rebased = [r for r in after if r["t"] >= last_change + ROLE_SETTLE]
    name = " and ".join(n for n, held in zip(("owner", "leader"), prev) if held) or "follower"
    if not rebased or rebased[-1]["t"] - rebased[0]["t"] < ROLE_SPAN_MIN:
        return after[:3], f"counts from warm-up: {name} from {last_change} s, too late to rebase"
    return rebased[:3], f"counts from {rebased[0]['t']} s: {name} from {last_change} s"


def judge(rows, warmup, started_at_zero, proc="", roles=()):
    """(after-warm-up rows, end rows, verdict or None, reasons, count-base rows, note) of
    one life."""
    start = 0 if started_at_zero else rows[0]["t"]
    after = [r for r in rows if r["t"] >= start + warmup]
    if not after:
        return None, rows[-3:], None, ["no sample after warm-up"], None, None
    base, end = after[:3], after[-3:]
    counts, note = count_base(proc, after, roles)
    if rows[-1]["t"] - start < JUDGED_SPAN * warmup:
        return base, end, None, [f"lasted {rows[-1]['t'] - start} s, under {JUDGED_SPAN} warm-ups"], counts, note
    reasons = []
    rss0, rss1 = median3(base, "rss"), median3(end, "rss")
    if rss1 > rss0 * (1 + RSS_GROWTH_MAX):
        reasons.append(f"RSS +{(rss1 / rss0 - 1) * 100:.1f} %")
    for key in ("fds", "tasks"):
        a, b = median3(counts, key), median3(end, key)
        if a is not None and b is not None and b > a + slack(a):
            reasons.append(f"{key} {a:.0f} -> {b:.0f}")
    return base, end, ("FAIL" if reasons else "PASS"), reasons, counts, note


def drift(rows, kills, warmup):
    """RSS change (KiB) summed over the stretches between kills, each from settling after
    its kill to the next kill, from the end of warm-up on; None when no stretch has two
    samples."""
    settle = min(60, warmup)
    start = rows[0]["t"] if rows[0]["t"] > 10 else 0
    bounds = [start + warmup] + [k + settle for k in kills if k + settle > start + warmup]
    total, any_stretch = 0, False
    for i, lo in enumerate(bounds):
        hi = next((k for k in kills if k >= lo), None)
        stretch = [r for r in rows if r["t"] >= lo and (hi is None or r["t"] < hi)]
        if len(stretch) >= 2:
            k = min(3, len(stretch) // 2)  # medians of 3 when the stretch holds 6 samples
            total += median3(stretch[-k:], "rss") - median3(stretch[:k], "rss")
            any_stretch = True
    return total if any_stretch else None


def roles_of(proc, rows, roles):
    """'owner 70-170, leader 130-170': the sampled times the process held each role."""
    if not roles or not proc.startswith("origin"):
        return ""
    t0, t1 = rows[0]["t"], rows[-1]["t"]
    out = []
    for role in ("owner", "leader"):
        spans, cur = [], None
        for r in roles:
            if not t0 <= r["t"] <= t1:
                continue
            if r[role] == proc:
                cur = [r["t"], r["t"]] if cur is None else [cur[0], r["t"]]
            elif cur is not None:
                spans.append(cur)
                cur = None
        if cur is not None:
            spans.append(cur)
        if spans:
            out.append(role + " " + ",".join(f"{a}-{b}" for a, b in spans))
    return "; ".join(out) or "follower"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--warmup", type=float, help="seconds [a sixth of the run]")
    a = ap.parse_args()
    lives = load_samples(os.path.join(a.dir, "samples.csv"))
    if not lives:
        sys.exit("soak-report: no samples")
    t_end = max(r["t"] for rows in lives.values() for r in rows)
    warmup = a.warmup if a.warmup is not None else round(t_end / 6)
    failovers = []
    fpath = os.path.join(a.dir, "failovers.csv")
    if os.path.exists(fpath):
        with open(fpath) as f:
            failovers = list(csv.DictReader(f))
    kills = sorted(int(f["t_seconds"]) for f in failovers if f["process"] != "none")
    roles = []
    rpath = os.path.join(a.dir, "roles.csv")
    if os.path.exists(rpath):
        with open(rpath) as f:
            roles = [dict(r, t=int(r["t_seconds"])) for r in csv.DictReader(f)]

    print(f"soak: {t_end} s sampled every 10 s; warm-up {warmup:.0f} s from each process's start")
    print("PASS per process: RSS growth < 10 % and descriptors and tasks not growing (end <= after warm-up, "
          f"or {ROLE_SETTLE} s after an origin's last role change, + max({COUNT_SLACK_ABS}, {COUNT_SLACK_REL:.0%})), "
          f"medians of 3 samples; a life shorter than {JUDGED_SPAN} "
          "warm-ups is not judged.\ndrift: RSS change between kills only (steps at a failover, e.g. a role "
          "taken over, left out), not judged; [roles]: when an origin owned the stream or led")
    print()
    head = (f"{'process':<14} {'pid':>8} {'from-to s':>11}  {'RSS MiB warm→end':>17} {'growth':>7} {'drift':>7}  "
            f"{'fds':>11}  {'tasks':>13}  {'thr':>7}  verdict")
    print(head)
    print("-" * len(head))
    verdicts = []
    order = sorted(lives, key=lambda k: (k[0].startswith("loader"), k[0], lives[k][0]["t"]))
    for proc, pid in order:
        rows = lives[(proc, pid)]
        loader = proc.startswith("loader")
        base, end, verdict, reasons, counts, note = judge(rows, warmup, rows[0]["t"] <= 10, proc, roles)
        if loader:
            verdict, reasons = None, ["load generator, not judged"]
        span = f"{rows[0]['t']}-{rows[-1]['t']}"
        if base:
            r0, r1 = median3(base, "rss"), median3(end, "rss")
            rss = f"{r0 / 1024:7.1f} → {r1 / 1024:7.1f}"
            growth = f"{(r1 / r0 - 1) * 100:+.1f}%"
            d = drift(rows, kills, warmup)
            dr = "-" if d is None else f"{d / r0 * 100:+.1f}%"
            fds = f"{fmt(median3(counts, 'fds'))} → {fmt(median3(end, 'fds'))}"
            tasks = f"{fmt(median3(counts, 'tasks'))} → {fmt(median3(end, 'tasks'))}"
            thr = f"{fmt(median3(base, 'threads'))}→{fmt(median3(end, 'threads'))}"
        else:
            rss, growth, dr, fds, tasks, thr = f"{'-':>17}", "-", "-", "-", "-", "-"
        text = verdict or "n/a"
        if reasons:
            text += " (" + "; ".join(reasons) + ")"
        held = roles_of(proc, rows, roles)
        if held:
            text += f" [{held}]"
        if note and not loader:
            text += f" ({note})"
        print(f"{proc:<14} {pid:>8} {span:>11}  {rss:>17} {growth:>7} {dr:>7}  {fds:>11}  {tasks:>13}  {thr:>7}  {text}")
        if verdict:
            verdicts.append(verdict)

    idle = load_samples(os.path.join(a.dir, "idle.csv"))
    rest = [(proc, pid, rows) for (proc, pid), rows in sorted(idle.items()) if len(rows) >= 2]
    if rest:
        print()
        print("at rest, before the load → after it (processes that lived through the run):")
        for proc, pid, rows in rest:
            before, after = rows[0], rows[-1]
            grown = [f"{key} {before[key]} -> {after[key]}" for key in ("fds", "tasks")
                     if before[key] is not None and after[key] is not None and after[key] > before[key] + slack(before[key])]
            verdict = "FAIL (" + "; ".join(grown) + ")" if grown else "PASS"
            verdicts.append(verdict[:4])
            print(f"  {proc:<9} pid {pid}: fds {before['fds']} → {after['fds']}, tasks {fmt(before['tasks'])} → "
                  f"{fmt(after['tasks'])}, threads {before['threads']} → {after['threads']}, RSS "
                  f"{before['rss'] / 1024:.1f} → {after['rss'] / 1024:.1f} MiB (not judged)  {verdict}")

    print()
    if failovers:
        print("failovers (who owns the stream and who leads once the killed origin is back):")
        for f in failovers:
            if f["process"] == "none":
                print(f"  {f['t_seconds']:>5} s: no {f['kind']} found to kill")
                continue
            print(f"  {f['t_seconds']:>5} s: killed {f['process']} (the {f['kind']}), back in "
                  f"{f['restart_seconds'] or '?'} s; then owner {f.get('owner_after') or '?'}, "
                  f"leader {f.get('leader_after') or '?'}")
    else:
        print("failovers: none")

    def report(name):
        try:
            with open(os.path.join(a.dir, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    fan = report("fanout.json")
    if fan:
        lat, gap = fan.get("latency") or {}, fan.get("longest_gap") or {}
        print(f"fanout: {fan['players']} players over {fan['seconds']:.0f} s, keeping up {fan['players_keeping_up']}, "
              f"lagging {fan['players_lagging']}, failed {fan['players_failed']}; frames lost {fan['frames_lost']}, "
              f"out of order {fan['frames_out_of_order']}; video p50/p99 {fmt(lat.get('p50_ms'), 1)}/"
              f"{fmt(lat.get('p99_ms'), 1)} ms; longest gap per player p50/max {fmt(gap.get('p50_ms'))}/"
              f"{fmt(gap.get('max_ms'))} ms; publishers keeping up {fan['publishers_keeping_up']}/"
              f"{fan['publishers_keeping_up'] + fan['publishers_lagging'] + fan['publishers_failed']}")
        for e in fan.get("errors", [])[:5]:
            print(f"  fanout error: {e}")
    else:
        print("fanout: no report (see fanout.log)")
    so = report("so.json")
    if so:
        lat = so.get("latency") or {}
        print(f"shared objects: {so['writes']} writes committed ({so['writes_per_sec']:.1f}/s of {so.get('rate')}), "
              f"{so['errors']} failed, {so['overloaded']} refused as overloaded; p50/p99/max "
              f"{fmt(lat.get('p50_ms'), 1)}/{fmt(lat.get('p99_ms'), 1)}/{fmt(lat.get('max_ms'))} ms")
    else:
        print("shared objects: no report (see so.log)")
    judged = len(verdicts)
    overall = "PASS" if judged and all(v == "PASS" for v in verdicts) else "FAIL"
    if not judged:
        overall = f"NOT JUDGED (no process lived {JUDGED_SPAN} warm-ups)"
    print(f"\nsoak verdict: {overall} ({verdicts.count('PASS')} of {judged} checks passed: process lives, "
          "then at rest)")


if __name__ == "__main__":
    main()
