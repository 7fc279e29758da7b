#!/usr/bin/env python3
"""Many RTMP players against any RTMP server, written apart from raftcast: a second
load client beside `raftcast bench fanout`, so the figures do not rest on the project's
own client alone. Python 3.11 standard library only; it shares no code with the server.

    scripts/rtmp-players.py --url rtmp://127.0.0.1:1935/live/bench-0 \\
        --players 200 --procs 2 --ramp 100 --warmup 2 --duration 20 [--watch-pid PID]...

Each player speaks RTMP from the specification up: the simple handshake (C0/C1/C2; any
S1/S2 is accepted), chunk streams (header types 0-3, extended timestamps, the server's
Set Chunk Size and Abort), Acknowledgements as the server's Window Acknowledgement Size
asks, Ping Responses to its Ping Requests, a Window Acknowledgement Size answering Set
Peer Bandwidth, and AMF0 commands: `connect` (app, tcUrl, flashVer, ...), `createStream`
(waiting for its `_result` and the stream id), `play` (start -2000, as ffmpeg sends),
then a Set Buffer Length of 3 s. An `_error`, or an `onStatus` of level "error" or code
NetStream.Play.StreamNotFound / NetStream.Play.Failed, ends that player with an error;
so does anything it cannot parse, and nothing else does.

Method. The players are spread round-robin over --procs worker processes, each an
asyncio loop, so one interpreter's CPU does not cap the count; player i starts at
i / --ramp seconds. The measured window opens --warmup seconds after the last player
started and lasts --duration seconds. In it:

- bytes: audio and video message payloads the players received (as fanout counts);
- frames: each video and audio body of `raftcast bench`'s synthetic stream starts with
  a stamp (after 5 bytes of AVC header / 2 of AAC header: b"RCSQ", sequence u64 BE,
  send time in microseconds since the Unix epoch u64 BE; src/bench/synth.rs). A video
  sequence number skipped is a frame lost, one at or below the newest seen is out of
  order;
- latency: wall clock at arrival minus the stamped send time, for video and separately
  audio frames that arrived in the window and were sent after the player asked to play
  (the server's cached GOP is older: it measures the cache, not the path);
- time to first frame: from sending `play` to the first video frame that is not a
  sequence header (every frame the player received, in the window or not);
- a player keeps up when it did not fail, lost no video frame and saw none out of order
  in the window, received stamped video in it, and its own video p99 is <= --lag-ms;
- --watch-pid: CPU seconds (utime + stime from /proc/PID/stat) over the window, as a
  share of one core and per GB delivered, and RSS (/proc/PID/status) before and at the
  end, as `raftcast bench fanout` reports them;
- workers: each worker's own CPU share over the window and how late its event loop
  ran a 100 ms timer (p99, max). A worker near 100 % CPU, or with a loop lag near the
  latencies measured, is the limit, not the server: add --procs or players lag.

Limits. Arrival times are taken once per socket read, after the event loop got round
to the socket: a busy worker adds its own delay to every latency (see `workers`). The
send time is the publisher's wall clock read once plus its monotonic clock, the arrival
time this machine's wall clock: both processes must run on the same machine, and the
figures are off by however far NTP slews the wall clock during the run (well under a
millisecond per second). A stream without stamps (a file published by ffmpeg) still
counts bytes, frames and time to first frame; latency, loss and keeping up are then
null. Only one stream per run (--url); no RTMPS, RTMPT or AMF3 commands (an AMF3
command's AMF0 body is read).

Prints one JSON report on stdout; progress on stderr. Exit status 0 whenever it ran.
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import queue as queue_module
import resource
import struct
import sys
import time
import urllib.parse
from array import array

MAGIC = b"RCSQ"
HANDSHAKE_SIZE = 1536
SETUP_TIMEOUT = 15.0  # seconds to connect, shake hands and get `play` going

# Message types.
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, AMF3_DATA, AMF3_COMMAND, AMF0_DATA, AMF0_COMMAND, AGGREGATE = 8, 9, 15, 17, 18, 20, 22
# User control events.
STREAM_BEGIN, STREAM_EOF, SET_BUFFER_LENGTH, PING_REQUEST, PING_RESPONSE = 0, 1, 3, 6, 7
# Chunk stream ids this client sends on.
CSID_CONTROL, CSID_COMMAND, CSID_STREAM = 2, 3, 8

FATAL_PLAY_CODES = {"NetStream.Play.StreamNotFound", "NetStream.Play.Failed"}


class ProtocolError(Exception):
    """The server sent something this player cannot go on with."""


# --- AMF0 ------------------------------------------------------------------------------

def amf0_encode(value):
    if value is None:
        return b"\x05"
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, (int, float)):
        return b"\x00" + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) < 0x10000:
            return b"\x02" + struct.pack(">H", len(raw)) + raw
        return b"\x0c" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, dict):
        out = bytearray(b"\x03")
        for key, item in value.items():
            raw = key.encode()
            out += struct.pack(">H", len(raw)) + raw + amf0_encode(item)
        return bytes(out + b"\x00\x00\x09")
    raise TypeError(f"no AMF0 encoding for {type(value).__name__}")


class Amf0Unsupported(Exception):
    """An AMF0 marker this reader does not follow (AVM+ switch, unknown)."""


class Amf0Reader:
    def __init__(self, data):
        self.data, self.pos = bytes(data), 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ProtocolError("AMF0 value runs past the message")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def string(self, long=False):
        n = struct.unpack(">I" if long else ">H", self.take(4 if long else 2))[0]
        return self.take(n).decode("utf-8", "replace")

    def pairs(self):
        out = {}
        while True:
            key = self.string()
            if key == "" and self.data[self.pos:self.pos + 1] == b"\x09":
                self.pos += 1
                return out
            out[key] = self.value()

    def value(self):
        marker = self.take(1)[0]
        if marker == 0x00:
            return struct.unpack(">d", self.take(8))[0]
        if marker == 0x01:
            return self.take(1)[0] != 0
        if marker == 0x02:
            return self.string()
        if marker == 0x03:
            return self.pairs()
        if marker in (0x05, 0x06, 0x0D):  # null, undefined, unsupported
            return None
        if marker == 0x07:  # reference: not followed
            self.take(2)
            return None
        if marker == 0x08:  # ECMA array: a count (not to be trusted), then pairs
            self.take(4)
            return self.pairs()
        if marker == 0x0A:
            n = struct.unpack(">I", self.take(4))[0]
            return [self.value() for _ in range(n)]
        if marker == 0x0B:  # date: ms, then a time zone
            ms = struct.unpack(">d", self.take(8))[0]
            self.take(2)
            return ms
        if marker in (0x0C, 0x0F):  # long string, XML document
            return self.string(long=True)
        if marker == 0x10:  # typed object: class name, then pairs
            self.string()
            return self.pairs()
        raise Amf0Unsupported(f"AMF0 marker 0x{marker:02x}")

    def values(self):
        out = []
        try:
            while self.pos < len(self.data):
                out.append(self.value())
        except Amf0Unsupported:
            pass  # keep what came before it
        return out


# --- chunk streams ------------------------------------------------------------------------

class ChunkStream:
    """What the last header on one chunk stream said, and the message being assembled."""
    __slots__ = ("timestamp", "delta", "length", "type_id", "stream_id", "extended", "payload")

    def __init__(self):
        self.timestamp = self.delta = self.length = self.type_id = self.stream_id = 0
        self.extended = None  # the last type 0/1/2 header's extended timestamp
        self.payload = None  # bytearray while a message is incomplete


def chunk_message(csid, type_id, stream_id, payload, chunk_size=128, timestamp=0):
    """One message as chunks: a type-0 header, then type-3 headers every chunk_size."""
    out = bytearray()
    out.append(csid)  # csid < 64: one-byte basic header, type 0
    out += timestamp.to_bytes(3, "big") + len(payload).to_bytes(3, "big")
    out.append(type_id)
    out += stream_id.to_bytes(4, "little")
    for at in range(0, len(payload), chunk_size):
        if at:
            out.append(0xC0 | csid)
        out += payload[at:at + chunk_size]
    return bytes(out)


def user_control(event, *words):
    return chunk_message(CSID_CONTROL, USER_CONTROL, 0, struct.pack(">H", event) + b"".join(
        struct.pack(">I", w) for w in words))


class RtmpReader:
    """Parses the server's chunk stream; answers protocol control messages itself
    (through `send`) and returns the other messages as (type, stream id, payload)."""

    def __init__(self, send):
        self.send = send
        self.buf = bytearray()
        self.chunk_size = 128
        self.streams = {}
        self.received = 0  # bytes after the handshake, for Acknowledgements
        self.ack_window = 0
        self.acked = 0
        self.announced_window = None

    def feed(self, data):
        self.received += len(data)
        buf = self.buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        while pos < end:
            start = pos
            b0 = buf[pos]
            fmt, csid = b0 >> 6, b0 & 0x3F
            pos += 1
            if csid == 0:
                if pos + 1 > end:
                    pos = start
                    break
                csid = 64 + buf[pos]
                pos += 1
            elif csid == 1:
                if pos + 2 > end:
                    pos = start
                    break
                csid = 64 + buf[pos] + buf[pos + 1] * 256
                pos += 2
            st = self.streams.get(csid)
            if st is None:
                if fmt != 0:
                    raise ProtocolError(f"chunk stream {csid} opens with a type-{fmt} header")
                st = self.streams[csid] = ChunkStream()
            # Read the header into locals; commit only once the whole chunk is here.
            timestamp, delta, length, type_id, stream_id, extended = (
                st.timestamp, st.delta, st.length, st.type_id, st.stream_id, st.extended)
            new_message = st.payload is None
            if fmt < 3:
                size = (11, 7, 3)[fmt]
                if pos + size > end:
                    pos = start
                    break
                field = int.from_bytes(buf[pos:pos + 3], "big")
                if fmt <= 1:
                    length = int.from_bytes(buf[pos + 3:pos + 6], "big")
                    type_id = buf[pos + 6]
                if fmt == 0:
                    stream_id = int.from_bytes(buf[pos + 7:pos + 11], "little")
                pos += size
                extended = None
                if field == 0xFFFFFF:
                    if pos + 4 > end:
                        pos = start
                        break
                    field = extended = int.from_bytes(buf[pos:pos + 4], "big")
                    pos += 4
                if fmt == 0:
                    timestamp, delta = field, 0
                else:
                    delta = field
                    timestamp = (timestamp + delta) & 0xFFFFFFFF
                new_message = True  # a new header abandons a message in progress
            else:
                if extended is not None:
                    # The specification repeats the extended timestamp in type-3 chunks;
                    # some peers do not: take it only when it is the same value.
                    if pos + 4 > end:
                        pos = start
                        break
                    if int.from_bytes(buf[pos:pos + 4], "big") == extended:
                        pos += 4
                if new_message:
                    timestamp = (timestamp + delta) & 0xFFFFFFFF
            have = 0 if new_message else len(st.payload)
            take = min(self.chunk_size, length - have)
            if pos + take > end:
                pos = start
                break
            st.timestamp, st.delta, st.length, st.type_id, st.stream_id, st.extended = (
                timestamp, delta, length, type_id, stream_id, extended)
            piece = buf[pos:pos + take]
            pos += take
            if new_message:
                st.payload = piece
            else:
                st.payload += piece
            if len(st.payload) >= length:
                payload, st.payload = bytes(st.payload), None
                if not self.control(type_id, payload):
                    out.append((type_id, stream_id, payload))
        del buf[:pos]
        if self.ack_window and self.received - self.acked >= self.ack_window:
            self.acked = self.received
            self.send(chunk_message(CSID_CONTROL, ACK, 0, struct.pack(">I", self.received & 0xFFFFFFFF)))
        return out

    def control(self, type_id, payload):
        """Handles a protocol control message: true when it was one (and is done with)."""
        if type_id == SET_CHUNK_SIZE:
            size = self.word(payload) & 0x7FFFFFFF
            if size < 1:
                raise ProtocolError("Set Chunk Size 0")
            self.chunk_size = size
        elif type_id == ABORT:
            st = self.streams.get(self.word(payload))
            if st is not None:
                st.payload = None
        elif type_id == ACK:
            pass
        elif type_id == WINDOW_ACK_SIZE:
            self.ack_window = self.word(payload)
        elif type_id == SET_PEER_BANDWIDTH:
            size = self.word(payload)
            if size != self.announced_window:
                self.announced_window = size
                self.send(chunk_message(CSID_CONTROL, WINDOW_ACK_SIZE, 0, struct.pack(">I", size)))
        elif type_id == USER_CONTROL:
            if len(payload) < 2:
                raise ProtocolError("short user control message")
            event = struct.unpack(">H", payload[:2])[0]
            if event == PING_REQUEST:
                self.send(user_control(PING_RESPONSE, self.word(payload[2:])))
            return event != STREAM_EOF  # the player hears of the stream's end
        else:
            return False
        return True

    @staticmethod
    def word(payload):
        if len(payload) < 4:
            raise ProtocolError("short protocol control message")
        return struct.unpack(">I", payload[:4])[0]


# --- one player ------------------------------------------------------------------------

def now_us():
    return time.time_ns() // 1000


class PlayerResult:
    """What one player saw; latencies in ms, of frames in the window only."""

    def __init__(self):
        self.error = None
        self.playing = False
        self.ttff_ms = None
        self.bytes = 0
        self.video_frames = self.audio_frames = 0
        self.lost = self.out_of_order = 0
        self.stamped = False
        self.video_ms = array("d")
        self.audio_ms = array("d")

    def to_dict(self):
        return dict(self.__dict__)


class Player:
    def __init__(self, cfg, index, result):
        self.cfg, self.index, self.r = cfg, index, result
        self.writer = None
        self.rtmp = None  # the chunk reader, once the handshake is done
        self.stream_id = None
        self.pending = []  # messages read with a command's answer, not yet handled
        self.asked_us = None
        self.last_video = self.last_audio = None

    def send(self, data):
        self.writer.write(data)

    def command(self, csid, stream_id, *values):
        self.send(chunk_message(csid, AMF0_COMMAND, stream_id, b"".join(amf0_encode(v) for v in values)))

    async def run(self):
        cfg = self.cfg
        local = None
        if cfg["loopback_sources"]:
            n = self.index // cfg["loopback_sources"]
            local = (f"127.{1 + n // 62500 % 250}.{n // 250 % 250}.{1 + n % 250}", 0)
        reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(cfg["host"], cfg["port"], local_addr=local), SETUP_TIMEOUT)
        try:
            await asyncio.wait_for(self.setup(reader), SETUP_TIMEOUT)
            await self.receive(reader)
        finally:
            self.writer.close()

    async def setup(self, reader):
        """Handshake, connect, createStream, play: returns once `play` is sent."""
        c1 = struct.pack(">II", int(time.time()) & 0xFFFFFFFF, 0) + os.urandom(HANDSHAKE_SIZE - 8)
        self.send(b"\x03" + c1)
        s0s1 = await reader.readexactly(1 + HANDSHAKE_SIZE)
        if s0s1[0] != 3:
            raise ProtocolError(f"S0 asks for RTMP version {s0s1[0]}")
        self.send(s0s1[1:])  # C2 echoes S1
        await reader.readexactly(HANDSHAKE_SIZE)  # S2: any
        self.rtmp = RtmpReader(self.send)
        cfg = self.cfg
        self.command(CSID_COMMAND, 0, "connect", 1, {
            "app": cfg["app"], "flashVer": "LNX 9,0,124,2", "tcUrl": cfg["tc_url"], "fpad": False,
            "capabilities": 15, "audioCodecs": 4071, "videoCodecs": 252, "videoFunction": 1,
            "objectEncoding": 0})
        await self.writer.drain()
        await self.wait_result(reader, 1, "connect")
        self.command(CSID_COMMAND, 0, "createStream", 2, None)
        values = await self.wait_result(reader, 2, "createStream")
        sid = next((v for v in values[3:] if isinstance(v, float)), None)
        if sid is None or sid != int(sid) or not 0 < sid < 2**31:
            raise ProtocolError(f"createStream answered {values!r}")
        self.stream_id = int(sid)
        self.command(CSID_STREAM, self.stream_id, "play", 0, None, cfg["name"], -2000)
        self.send(user_control(SET_BUFFER_LENGTH, self.stream_id, 3000))
        self.asked_us = now_us()
        await self.writer.drain()

    async def wait_result(self, reader, transaction, what):
        """Reads until the `_result` of `transaction`; an `_error` for it fails. What
        came after the answer in the same read waits in `pending`."""
        while True:
            while self.pending:
                type_id, _sid, payload = self.pending.pop(0)
                values = self.decode_command(type_id, payload)
                if not values or len(values) < 2:
                    continue
                if values[1] == transaction and values[0] == "_result":
                    return values
                if values[1] == transaction and values[0] == "_error":
                    raise ProtocolError(f"{what} refused: {describe(values)}")
                self.status(values)
            data = await reader.read(65536)
            if not data:
                raise ProtocolError(f"the server closed the connection before {what} was answered")
            self.pending = self.rtmp.feed(data)

    @staticmethod
    def decode_command(type_id, payload):
        if type_id == AMF3_COMMAND:
            payload = payload[1:]  # a format byte, then AMF0
        elif type_id != AMF0_COMMAND:
            return None
        return Amf0Reader(payload).values()

    def status(self, values):
        """Fails on an onStatus that ends the play."""
        if values and values[0] == "onStatus":
            info = next((v for v in values[2:] if isinstance(v, dict)), {})
            if info.get("level") == "error" or info.get("code") in FATAL_PLAY_CODES:
                raise ProtocolError(f"onStatus {describe(values)}")
            if info.get("code") == "NetStream.Play.Start":
                self.r.playing = True
        elif values and values[0] == "_error":
            raise ProtocolError(f"_error: {describe(values)}")

    async def receive(self, reader):
        """Plays until cancelled (the end of the window)."""
        messages, at = self.pending, now_us()
        self.pending = []
        while True:
            for type_id, _sid, payload in messages:
                if type_id == VIDEO or type_id == AUDIO:
                    self.media(type_id, payload, at)
                elif type_id == AGGREGATE:
                    for sub_type, body in flv_tags(payload):
                        self.media(sub_type, body, at)
                elif type_id == USER_CONTROL:
                    pass  # StreamEOF: the publisher left; frames may come again
                else:
                    values = self.decode_command(type_id, payload)
                    if values:
                        self.status(values)
            data = await reader.read(65536)
            if not data:
                raise ProtocolError("the server closed the connection")
            at = now_us()
            messages = self.rtmp.feed(data)

    def media(self, type_id, body, at):
        r, cfg = self.r, self.cfg
        in_window = cfg["from_us"] <= at < cfg["to_us"]
        if in_window:
            r.bytes += len(body)
        if len(body) < 2:
            return
        if type_id == VIDEO:
            if body[0] & 0x0F == 7 and body[1] == 0:
                return  # AVC sequence header
            if body[0] >> 4 == 5:
                return  # video info / command frame
            if r.ttff_ms is None:
                r.ttff_ms = (at - self.asked_us) / 1000
                r.playing = True
            if in_window:
                r.video_frames += 1
            if body[0] & 0x0F != 7 or not body.startswith(MAGIC, 5) or len(body) < 25:
                return
            seq, sent = struct.unpack_from(">QQ", body, 9)
            r.stamped = True
            last = self.last_video
            if last is not None:
                if seq <= last:
                    if in_window:
                        r.out_of_order += 1
                    return
                if in_window:
                    r.lost += seq - last - 1
            self.last_video = seq
            if in_window and sent >= self.asked_us:
                r.video_ms.append((at - sent) / 1000)
        elif type_id == AUDIO:
            if body[0] >> 4 == 10 and body[1] == 0:
                return  # AAC sequence header
            if in_window:
                r.audio_frames += 1
            if body[0] >> 4 != 10 or not body.startswith(MAGIC, 2) or len(body) < 22:
                return
            seq, sent = struct.unpack_from(">QQ", body, 6)
            if self.last_audio is not None and seq <= self.last_audio:
                return
            self.last_audio = seq
            if in_window and sent >= self.asked_us:
                r.audio_ms.append((at - sent) / 1000)


def flv_tags(payload):
    """(type, body) of the FLV tags in an aggregate message."""
    at = 0
    while at + 11 <= len(payload):
        tag_type = payload[at] & 0x1F
        size = int.from_bytes(payload[at + 1:at + 4], "big")
        if at + 11 + size > len(payload):
            raise ProtocolError("aggregate message: a tag runs past the end")
        yield tag_type, payload[at + 11:at + 11 + size]
        at += 11 + size + 4  # the tag, then its previous-tag-size


def describe(values):
    info = next((v for v in values[2:] if isinstance(v, dict)), None)
    if info:
        return " ".join(str(info[k]) for k in ("code", "description") if info.get(k))
    return repr(values[2:])[:200]


# --- a worker process ----------------------------------------------------------------------

async def worker_main(cfg, indices):
    loop = asyncio.get_running_loop()
    wall_to_loop = loop.time() - time.time()  # loop time of a wall-clock instant
    results = {i: PlayerResult() for i in indices}
    tasks = []

    async def one(i):
        await asyncio.sleep(max(0.0, cfg["t0"] + i / cfg["ramp"] + wall_to_loop - loop.time()))
        player = Player(cfg, i, results[i])
        try:
            await player.run()
        except asyncio.TimeoutError:
            results[i].error = f"no answer within {SETUP_TIMEOUT:.0f} s (TCP, handshake, connect, createStream)"
        except Exception as e:  # ends this player only
            results[i].error = f"{type(e).__name__}: {e}"

    for i in indices:
        tasks.append(asyncio.create_task(one(i)))

    # Own CPU and event-loop lag over the window.
    lags, cpu = array("d"), {}
    from_loop = cfg["from_us"] / 1e6 + wall_to_loop
    to_loop = cfg["to_us"] / 1e6 + wall_to_loop
    next_progress = loop.time() + 5
    while loop.time() < to_loop:
        due = loop.time() + 0.1
        await asyncio.sleep(0.1)
        late = loop.time() - due
        if from_loop <= loop.time() < to_loop:
            cpu.setdefault("from", time.process_time())
            lags.append(late * 1000)
        if loop.time() >= next_progress:
            next_progress += 5
            playing = sum(1 for r in results.values() if r.playing and r.error is None)
            failed = sum(1 for r in results.values() if r.error is not None)
            print(f"worker {os.getpid()}: {playing} playing, {failed} failed of {len(indices)}",
                  file=sys.stderr, flush=True)
    cpu["to"] = time.process_time()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    seconds = (cfg["to_us"] - cfg["from_us"]) / 1e6
    lags = sorted(lags)
    return {
        "pid": os.getpid(),
        "players": len(indices),
        "cpu_percent": round((cpu["to"] - cpu.get("from", cpu["to"])) / seconds * 100, 1),
        "loop_lag_p99_ms": round(pick(lags, 0.99), 1) if lags else None,
        "loop_lag_max_ms": round(lags[-1], 1) if lags else None,
        "results": [results[i].to_dict() for i in indices],
    }


def worker(cfg, indices, queue):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        queue.put(asyncio.run(worker_main(cfg, indices)))
    except BaseException as e:  # the parent must hear from every worker
        queue.put({"pid": os.getpid(), "crashed": f"{type(e).__name__}: {e}", "players": len(indices)})


# --- the report ---------------------------------------------------------------------------

def pick(sorted_values, q):
    return sorted_values[round((len(sorted_values) - 1) * q)]


def summary(values):
    """p50/p90/p99/max in ms (as `raftcast bench`'s Latency), or None."""
    if not values:
        return None
    v = sorted(values)
    return {k: round(pick(v, q), 3) for k, q in
            (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("max_ms", 1.0))}


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def parse_url(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "rtmp" or not u.hostname:
        raise SystemExit(f"--url must be rtmp://host[:port]/app/name, not {url!r}")
    app, _, name = u.path.lstrip("/").partition("/")
    if not app or not name:
        raise SystemExit(f"--url needs an application and a stream name: {url!r}")
    if u.query:
        name += "?" + u.query
    port = u.port or 1935
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return u.hostname, port, app, name, f"rtmp://{host}:{port}/{app}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="rtmp://host:port/app/name")
    p.add_argument("--players", type=int, default=100)
    p.add_argument("--procs", type=int, default=max(1, os.cpu_count() or 1),
                   help="worker processes the players are spread over [cores]")
    p.add_argument("--ramp", type=float, default=100.0, help="players started per second")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after the last start before measuring")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    p.add_argument("--watch-pid", type=int, action="append", default=[], dest="watch_pids",
                   help="server process whose CPU and RSS to sample (repeatable)")
    p.add_argument("--lag-ms", type=float, default=1000.0, help="a player whose p99 exceeds this lags")
    p.add_argument("--loopback-sources", type=int, default=0, metavar="N",
                   help="connect from a different 127.x.y.z every N players (a loopback "
                        "server's per-address caps); 0: the system's choice")
    a = p.parse_args()
    if a.players < 1 or a.procs < 1 or a.ramp <= 0 or a.duration <= 0 or a.warmup < 0:
        p.error("--players, --procs, --ramp and --duration must be positive, --warmup not negative")
    host, port, app, name, tc_url = parse_url(a.url)
    procs = min(a.procs, a.players)

    rss_before = {pid: proc_rss_kib(pid) for pid in a.watch_pids}
    t0 = time.time() + 0.5  # the workers' start-up
    from_s = t0 + a.players / a.ramp + a.warmup
    to_s = from_s + a.duration
    cfg = {"host": host, "port": port, "app": app, "name": name, "tc_url": tc_url,
           "t0": t0, "ramp": a.ramp, "from_us": int(from_s * 1e6), "to_us": int(to_s * 1e6),
           "loopback_sources": a.loopback_sources}
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=worker, args=(cfg, list(range(w, a.players, procs)), queue), daemon=True)
               for w in range(procs)]
    for w in workers:
        w.start()
    print(f"{a.players} players over {procs} processes; measuring from {from_s - time.time():.1f} s "
          f"for {a.duration:.0f} s", file=sys.stderr, flush=True)

    time.sleep(max(0.0, from_s - time.time()))
    cpu_before = {pid: proc_cpu(pid) for pid in a.watch_pids}
    time.sleep(max(0.0, to_s - time.time()))
    cpu_after = {pid: proc_cpu(pid) for pid in a.watch_pids}
    rss_after = {pid: proc_rss_kib(pid) for pid in a.watch_pids}

    reports = []
    for _ in workers:
        try:
            reports.append(queue.get(timeout=60 + a.players / 100))
        except queue_module.Empty:
            break
    for w in workers:
        w.join(timeout=10)
    missing = len(workers) - len(reports)
    if missing:
        reports.append({"pid": None, "crashed": f"{missing} worker(s) never reported",
                        "players": a.players - sum(rep["players"] for rep in reports)})

    players = [r for rep in reports for r in rep.get("results", [])]
    crashed = [rep for rep in reports if "crashed" in rep]
    failed = [r for r in players if r["error"] is not None]
    stamped = any(r["stamped"] for r in players)
    video, audio, ttff = [], [], []
    keeping_up = 0
    for r in players:
        ttff.extend([r["ttff_ms"]] if r["ttff_ms"] is not None else [])
        if r["error"] is not None:
            continue
        video.extend(r["video_ms"])
        audio.extend(r["audio_ms"])
        own = summary(r["video_ms"])
        if own and own["p99_ms"] <= a.lag_ms and r["lost"] == 0 and r["out_of_order"] == 0:
            keeping_up += 1
    bytes_delivered = sum(r["bytes"] for r in players)
    gb = bytes_delivered / 1e9
    processes = []
    for pid in a.watch_pids:
        b, e = cpu_before[pid], cpu_after[pid]
        cpu = None if b is None or e is None else round(e - b, 3)
        processes.append({
            "pid": pid,
            "cpu_seconds": cpu,
            "cpu_seconds_per_gb": round(cpu / gb, 3) if cpu is not None and gb > 0 else None,
            "cpu_percent": round(cpu / a.duration * 100, 1) if cpu is not None else None,
            "rss_kib": rss_after[pid],
            "rss_kib_before": rss_before[pid],
            "rss_kib_per_player": round(rss_after[pid] / a.players, 1) if rss_after[pid] else None,
        })
    first_error = next((r["error"] for r in failed), None)
    if crashed:
        first_error = first_error or f"worker: {crashed[0]['crashed']}"
    report = {
        "workload": "rtmp-players.py",
        "url": a.url,
        "players": a.players,
        "procs": procs,
        "seconds": a.duration,
        "players_failed": len(failed) + sum(rep["players"] for rep in crashed),
        "first_error": first_error,
        "players_keeping_up": keeping_up if stamped else None,
        "players_lagging": len(players) - len(failed) - keeping_up if stamped else None,
        "stamped": stamped,
        "frames_lost": sum(r["lost"] for r in players) if stamped else None,
        "frames_out_of_order": sum(r["out_of_order"] for r in players) if stamped else None,
        "video_frames": sum(r["video_frames"] for r in players),
        "audio_frames": sum(r["audio_frames"] for r in players),
        "bytes_delivered": bytes_delivered,
        "egress_mbit_per_sec": round(bytes_delivered * 8 / 1e6 / a.duration, 3),
        "latency": summary(video),
        "audio_latency": summary(audio),
        "time_to_first_frame": summary(ttff),
        "processes": processes,
        "workers": [{k: rep.get(k) for k in ("pid", "players", "cpu_percent", "loop_lag_p99_ms",
                                             "loop_lag_max_ms", "crashed") if k in rep} for rep in reports],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
