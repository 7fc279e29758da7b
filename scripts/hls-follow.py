#!/usr/bin/env python3
"""Follows live HLS streams of `raftcast bench publish` as a player does, and checks
that every video frame arrives once and in order.

    scripts/hls-follow.py --base http://127.0.0.1:8080 --app live \\
        --names bench-0,bench-1 --seconds 60 [--out report.json]

For each stream, one thread reloads the media playlist every 200 ms (plain HLS
polling, through whatever --base is: HAProxy round-robin in scripts/moves-under-load.sh),
fetches every segment once, from the first one listed on, and reads the samples of
one track of each: the init segment (`EXT-X-MAP`) names the video track (the audio
one when there is none), each fragment's `trun` gives its samples' sizes, and every
synthetic sample starts with the stamp `raftcast bench` writes (b"RCSQ", sequence,
send time; src/bench/synth.rs).

Printed as JSON, per stream and in total: segments, frames, frames lost (gaps
in the sequence, within and across segments), frames out of order or twice, segment
numbers skipped, requests that failed (status and count), and the longest wait from
one new segment being listed to the next (against the playlist's target duration).
Exit status 1 when any frame was lost, duplicated or reordered, any segment skipped,
or any request failed.
"""
import argparse, json, struct, sys, threading, time, urllib.error, urllib.request
from urllib.parse import urljoin

MAGIC = b"RCSQ"


def boxes(data, start=0, end=None):
    """(type, payload start, payload end) of the ISO BMFF boxes in data[start:end]."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        head = 8
        if size == 1:
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
            head = 16
        elif size == 0:
            size = end - at
        if size < head or at + size > end:
            raise ValueError(f"box {kind!r} at {at} overruns")
        yield kind.decode("latin-1"), at + head, at + size
        at += size


def child(data, start, end, kind):
    for k, s, e in boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def stamped_track(init):
    """(track id, handler) of the track to follow in an init segment: the video track,
    else the audio one. (The edge packages no video for the bench's synthetic H.264,
    whose parameter sets are not a real encoder's; its audio samples carry the same
    stamps, one sequence per track.)"""
    moov = child(init, 0, len(init), "moov")
    if moov is None:
        raise ValueError("no moov in the init segment")
    tracks = {}
    for kind, s, e in boxes(init, *moov):
        if kind != "trak":
            continue
        tkhd, mdia = child(init, s, e, "tkhd"), child(init, s, e, "mdia")
        if not tkhd or not mdia:
            continue
        hdlr = child(init, *mdia, "hdlr")
        if not hdlr:
            continue
        version = init[tkhd[0]]
        at = tkhd[0] + (4 + 16 if version == 1 else 4 + 8)
        tracks[init[hdlr[0] + 8:hdlr[0] + 12].decode("latin-1")] = struct.unpack(">I", init[at:at + 4])[0]
    for handler in ("vide", "soun"):
        if handler in tracks:
            return tracks[handler], handler
    raise ValueError("no video or audio track in the init segment")


def stamps(segment, track):
    """The (sequence, sent µs) of every sample of `track` in a media segment."""
    out = []
    moof_start = None
    for kind, s, e in boxes(segment):
        if kind == "moof":
            moof_start = s - 8
            for tk, ts, te in boxes(segment, s, e):
                if tk != "traf":
                    continue
                tfhd = child(segment, ts, te, "tfhd")
                flags = int.from_bytes(segment[tfhd[0] + 1:tfhd[0] + 4], "big")
                track_id = struct.unpack(">I", segment[tfhd[0] + 4:tfhd[0] + 8])[0]
                if track_id != track:
                    continue
                at = tfhd[0] + 8
                base = moof_start
                if flags & 0x1:
                    base = struct.unpack(">Q", segment[at:at + 8])[0]
                    at += 8
                at += 4 if flags & 0x2 else 0
                at += 4 if flags & 0x8 else 0
                default_size = struct.unpack(">I", segment[at:at + 4])[0] if flags & 0x10 else None
                for rk, rs, re in boxes(segment, ts, te):
                    if rk != "trun":
                        continue
                    tr_flags = int.from_bytes(segment[rs + 1:rs + 4], "big")
                    count = struct.unpack(">I", segment[rs + 4:rs + 8])[0]
                    at = rs + 8
                    offset = 0
                    if tr_flags & 0x1:
                        offset = struct.unpack(">i", segment[at:at + 4])[0]
                        at += 4
                    at += 4 if tr_flags & 0x4 else 0
                    data_at = base + offset
                    for _ in range(count):
                        at += 4 if tr_flags & 0x100 else 0
                        if tr_flags & 0x200:
                            size = struct.unpack(">I", segment[at:at + 4])[0]
                            at += 4
                        else:
                            size = default_size
                        at += 4 if tr_flags & 0x400 else 0
                        at += 4 if tr_flags & 0x800 else 0
                        sample = segment[data_at:data_at + 20]
                        if sample[:4] == MAGIC:
                            out.append(struct.unpack(">QQ", sample[4:20]))
                        data_at += size
    return out


def playlist(text):
    """(target duration s, media sequence, [(msn, uri)], map uri) of a media playlist."""
    target, sequence, segments, init = None, 0, [], None
    msn = None
    for line in text.splitlines():
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
            msn = sequence
        elif line.startswith("#EXT-X-MAP:"):
            init = line.split('URI="', 1)[1].split('"', 1)[0]
        elif line and not line.startswith("#"):
            segments.append((msn, line))
            msn += 1
    return target, sequence, segments, init


class Follower(threading.Thread):
    def __init__(self, base, app, name, until):
        super().__init__(daemon=True)
        self.url = f"{base}/{app}/{name}/index.m3u8"
        self.name, self.until = name, until
        self.inits = {}
        self.started = False  # failures before the first playlist with segments are waits
        self.r = dict(stream=name, segments=0, frames=0, lost=0, out_of_order=0, skipped_segments=0,
                      failed_requests={}, longest_wait_s=0.0, target_s=None, first_msn=None, last_msn=None)

    def get(self, url):
        try:
            with urllib.request.urlopen(url, timeout=5) as res:
                return res.read()
        except urllib.error.HTTPError as e:
            key = f"{e.code}"
        except Exception as e:  # reset, refused, timeout
            key = type(e).__name__
        if self.started:
            self.r["failed_requests"][key] = self.r["failed_requests"].get(key, 0) + 1
        return None

    def run(self):
        last_seq, next_msn, last_new = None, None, None
        while time.time() < self.until:
            body = self.get(self.url)
            if body is None:
                time.sleep(0.2)
                continue
            target, _, segments, init = playlist(body.decode())
            if not segments or init is None:
                time.sleep(0.2)
                continue
            self.r["target_s"] = target
            self.started = True
            if next_msn is None:
                next_msn = segments[0][0]
                self.r["first_msn"] = next_msn
            for msn, uri in segments:
                if msn < next_msn:
                    continue
                if msn > next_msn:
                    self.r["skipped_segments"] += msn - next_msn
                init_url = urljoin(self.url, init)
                if init_url not in self.inits:
                    data = self.get(init_url)
                    if data is None:
                        break
                    self.inits[init_url], self.r["track"] = stamped_track(data)
                data = self.get(urljoin(self.url, uri))
                if data is None:
                    break  # retried at the next reload
                now = time.time()
                if last_new is not None:
                    self.r["longest_wait_s"] = max(self.r["longest_wait_s"], round(now - last_new, 3))
                last_new = now
                for seq, _sent in stamps(data, self.inits[init_url]):
                    if last_seq is not None and seq <= last_seq:
                        self.r["out_of_order"] += 1
                        continue
                    if last_seq is not None:
                        self.r["lost"] += seq - last_seq - 1
                    last_seq = seq
                    self.r["frames"] += 1
                self.r["segments"] += 1
                self.r["last_msn"] = msn
                next_msn = msn + 1
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="http://127.0.0.1:8080")
    ap.add_argument("--app", default="live")
    ap.add_argument("--names", required=True, help="comma-separated stream names")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--out")
    a = ap.parse_args()
    until = time.time() + a.seconds
    followers = [Follower(a.base, a.app, n, until) for n in a.names.split(",") if n]
    for f in followers:
        f.start()
    for f in followers:
        f.join()
    streams = [f.r for f in followers]
    total = {k: sum(s[k] for s in streams) for k in ("segments", "frames", "lost", "out_of_order", "skipped_segments")}
    total["failed_requests"] = sum(sum(s["failed_requests"].values()) for s in streams)
    total["longest_wait_s"] = max((s["longest_wait_s"] for s in streams), default=0.0)
    total["streams_without_frames"] = sum(1 for s in streams if s["frames"] == 0)
    report = dict(total=total, streams=streams)
    text = json.dumps(report, indent=1)
    if a.out:
        open(a.out, "w").write(text)
    print(json.dumps(total))
    bad = total["lost"] or total["out_of_order"] or total["skipped_segments"] or total["failed_requests"] \
        or total["streams_without_frames"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
