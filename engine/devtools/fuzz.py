"""Fuzzed Kafka request frames: valid requests of every API we decode, mutated, and random bytes.

Seeded and pure (no sockets): `FrameFuzzer(seed).frame()` gives the next frame (with its
size prefix) and the kind of damage done to it. The same generator feeds the in-process
codec fuzz test (tests/unit/test_protocol_fuzz.py) and the live-broker fuzzer
(benchmarks/fuzz.py, `run_live`), so a failing frame is reproduced by its seed and index.

Why not hypothesis here: a million frames must be generated in minutes; hypothesis's
shrinking and database are worth it in the unit test, which uses its own strategies too.
"""

from __future__ import annotations

import random
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import messages
from engine.protocol.apis import SUPPORTED_APIS, ApiKey
from engine.protocol.codec import encode_request
from engine.protocol.headers import RequestHeader
from engine.protocol.records import Compression, Record, build_batch, compress
from engine.protocol.schema import FieldSpec, StructSpec, attr_name, load_message

#: Integers that break code: bounds, signs, off-by-ones, lengths that claim the whole frame.
INTERESTING_INTS = (0, 1, -1, 2, 127, 128, 255, 256, 0x7FFF, -0x8000, 0xFFFF, 0x7FFFFFFF, -0x80000000,
                    0x7FFFFFFE, 2**63 - 1, -(2**63), 1 << 20, 100 << 20)  # fmt: skip
_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
#: APIs that change cluster state (topics, configs, partitions, groups, data). A live fuzz run
#: leaves them out by default: random names and counts would create thousands of topics, and the
#: run's RSS would then measure metadata growth, not leaks. They are fuzzed in-process always.
STATE_CHANGING = frozenset({ApiKey.CREATE_TOPICS, ApiKey.DELETE_TOPICS, ApiKey.DELETE_RECORDS,
                            ApiKey.ALTER_CONFIGS, ApiKey.INCREMENTAL_ALTER_CONFIGS, ApiKey.CREATE_PARTITIONS,
                            ApiKey.ALTER_PARTITION_REASSIGNMENTS, ApiKey.DELETE_GROUPS})  # fmt: skip
#: Decompressed size of the compression bombs (a few KiB on the wire).
BOMB_BYTES = 1 << 30


def _bomb(codec: Compression, size: int = BOMB_BYTES) -> bytes:
    """Compressed zeros in pieces: compressing 1 GiB at once would itself need the 1 GiB."""
    import cramjam

    chunk = bytes(16 << 20)
    if codec == Compression.GZIP:
        # gzip members concatenate; one compressed 16 MiB member repeated is a valid stream.
        return compress(codec, chunk) * (size // len(chunk))
    if codec == Compression.ZSTD:
        c = cramjam.zstd.Compressor()
        for _ in range(size // len(chunk)):
            c.compress(chunk)
        return bytes(c.finish())
    c4 = cramjam.lz4.Compressor()
    for _ in range(size // len(chunk)):
        c4.compress(chunk)
    return bytes(c4.finish())


_BOMBS: dict[Compression, bytes] = {}


def bomb(codec: Compression) -> bytes:
    if codec not in _BOMBS:
        _BOMBS[codec] = _bomb(codec)
    return _BOMBS[codec]


def bomb_batch(codec: Compression, record_count: int = 1) -> bytes:
    """A v2 batch with a valid CRC whose payload inflates to BOMB_BYTES."""
    from crc32c import crc32c

    from engine.protocol.records import CRC_OFFSET, HEADER, HEADER_SIZE, LOG_OVERHEAD, UINT32

    payload = bomb(codec)
    out = bytearray(HEADER_SIZE)
    HEADER.pack_into(out, 0, 0, HEADER_SIZE - LOG_OVERHEAD + len(payload), -1, 2, 0, int(codec),
                     record_count - 1, 0, 0, -1, -1, -1, record_count)  # fmt: skip
    out += payload
    UINT32.pack_into(out, CRC_OFFSET, crc32c(memoryview(out)[21:]))
    return bytes(out)


@dataclass
class FrameFuzzer:
    """Frames for every request type amq decodes, valid and damaged, from one seed."""

    seed: int = 0
    #: Topics the produce/fetch frames name, so some reach the partition code behind the codec.
    topics: list[str] = field(default_factory=lambda: ["fuzz"])
    apis: list[int] = field(default_factory=lambda: sorted(SUPPORTED_APIS))
    #: Frames larger than this are cut (a live run must not spend its time on 100 MiB frames).
    max_frame: int = 1 << 20
    #: Include compression bombs (each ~4 MiB with lz4): on for the codec, optional live.
    bombs: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.cases = [(k, v) for k in self.apis for v in range(SUPPORTED_APIS[k].min_version,
                                                                 SUPPORTED_APIS[k].max_version + 1)]  # fmt: skip
        self.count = 0
        self._mutators: list[tuple[str, Callable[[bytearray], bytearray]]] = [
            ("bitflip", self._bitflip), ("truncate", self._truncate), ("int-field", self._int_field),
            ("size-prefix", self._size_prefix), ("splice", self._splice), ("insert", self._insert),
            ("delete", self._delete), ("varint", self._varint), ("repeat", self._repeat),
        ]  # fmt: skip

    # -- values ---------------------------------------------------------------------------------

    def _int(self, t: str) -> int:
        lo, hi = _INT_RANGES[t]
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randint(max(lo, -1), min(hi, 64))
        if r < 0.8:
            return max(lo, min(hi, self.rng.choice(INTERESTING_INTS)))
        return self.rng.randint(lo, hi)

    def _string(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(self.topics)
        if r < 0.8:
            return "".join(self.rng.choices("abcdefghij-._", k=self.rng.randint(0, 12)))
        return "".join(chr(self.rng.choice((0, 0x7F, 0xE9, 0x2603, 0x1F600, 0xFFFD))) for _ in range(3))

    def records(self) -> bytes:
        """One or two record batches: valid, or damaged in the ways brokers trip over."""
        rng = self.rng
        n = rng.randint(1, 5)
        recs = [Record(key=rng.randbytes(rng.randint(0, 8)) if rng.random() < 0.7 else None,
                       value=rng.randbytes(rng.randint(0, 64)), headers=[("h", b"v")] if rng.random() < 0.2 else [])
                for _ in range(n)]  # fmt: skip
        codec = rng.choice(list(Compression))
        pid = rng.choice((-1, rng.randint(0, 1000)))
        batch = bytearray(build_batch(recs, compression=codec, producer_id=pid, producer_epoch=0 if pid >= 0 else -1,
                                      base_sequence=rng.randint(0, 10) if pid >= 0 else -1))  # fmt: skip
        r = rng.random()
        if r < 0.1 and self.bombs:
            return bomb_batch(rng.choice((Compression.GZIP, Compression.ZSTD, Compression.LZ4)), rng.randint(1, 3))
        if r < 0.3:
            return bytes(batch)
        if r < 0.5:  # damage inside the records, then a CRC that matches: only record parsing can tell
            from crc32c import crc32c

            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(61, len(batch)) if len(batch) > 61 else 60
                batch[i] ^= 1 << rng.randrange(8)
            struct.pack_into(">I", batch, 17, crc32c(memoryview(batch)[21:]))
            return bytes(batch)
        if r < 0.65:  # header fields: length, count, magic, attributes
            off, fmt = rng.choice(((8, ">i"), (57, ">i"), (23, ">i"), (16, ">b"), (21, ">h")))
            lo, hi = {">i": (-(2**31), 2**31 - 1), ">b": (-128, 127), ">h": (-(2**15), 2**15 - 1)}[fmt]
            struct.pack_into(fmt, batch, off, max(lo, min(hi, rng.choice(INTERESTING_INTS))))
            return bytes(batch)
        if r < 0.8:
            return bytes(self._mutate(batch)[1])
        return bytes(batch) + bytes(batch[: rng.randint(0, len(batch))])

    def _value(self, f: FieldSpec) -> Any:
        t = f.type
        if t in _INT_RANGES:
            return self._int(t)
        if t == "bool":
            return self.rng.random() < 0.5
        if t == "float64":
            return self.rng.choice((0.0, 1.5, -1.0, float("inf")))
        if t == "string":
            return self._string()
        if t == "bytes":
            return self.rng.randbytes(self.rng.randint(0, 32))
        if t == "records":
            return self.records()
        if t == "uuid":
            return uuid.UUID(int=self.rng.getrandbits(128)) if self.rng.random() < 0.5 else uuid.UUID(int=0)
        raise AssertionError(t)

    def _struct(self, top: type, spec: StructSpec, cls: type, version: int, flexible: bool, depth: int) -> Any:
        kwargs: dict[str, Any] = {}
        names = set(getattr(cls, "__dataclass_fields__", {}))
        for f in spec.fields:
            if version not in f.versions or attr_name(f) not in names:
                continue
            if f.tagged.lo >= 0 and (not flexible or self.rng.random() < 0.7):
                continue
            nullable = version in f.nullable
            if nullable and self.rng.random() < 0.1:
                kwargs[attr_name(f)] = None
                continue
            if f.struct is not None:
                sub = getattr(top, f.struct.name)
                if f.is_array:
                    n = self.rng.choice((0, 1, 1, 2, 3)) if depth < 4 else 0
                    kwargs[attr_name(f)] = [self._struct(top, f.struct, sub, version, flexible, depth + 1)
                                            for _ in range(n)]  # fmt: skip
                else:
                    kwargs[attr_name(f)] = self._struct(top, f.struct, sub, version, flexible, depth + 1)
            elif f.is_array:
                kwargs[attr_name(f)] = [self._value(f) for _ in range(self.rng.randint(0, 4))]
            else:
                kwargs[attr_name(f)] = self._value(f)
        return cls(**kwargs)

    def request(self, api_key: int, version: int) -> Any:
        name = f"{SUPPORTED_APIS[api_key].name}Request"
        spec = load_message(name)
        top = getattr(messages, name)
        return self._struct(top, spec.root, top, version, version in spec.flexible, 0)

    def valid_frame(self) -> tuple[int, int, bytes]:
        api_key, version = self.rng.choice(self.cases)
        body = self.request(api_key, version)
        client = self.rng.choice(("fuzz", None, "", "fuzz&automq_az=az2", "x" * 300))
        if int(api_key) == ApiKey.PRODUCE and getattr(body, "acks", 0) == 0:
            body.acks = -1  # acks=0 gets no answer; the driver would wait for one
        frame = encode_request(RequestHeader(api_key, version, self.rng.randint(0, 2**31 - 1), client), body)
        return api_key, version, frame

    # -- damage ---------------------------------------------------------------------------------

    def _bitflip(self, b: bytearray) -> bytearray:
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(b))
            b[i] ^= 1 << self.rng.randrange(8)
        return b

    def _truncate(self, b: bytearray) -> bytearray:
        # Keep the size prefix honest, so the broker sees a whole frame that ends too soon.
        cut = self.rng.randint(4, len(b))
        out = b[:cut]
        struct.pack_into(">i", out, 0, len(out) - 4)
        return out

    def _int_field(self, b: bytearray) -> bytearray:
        fmt = self.rng.choice((">i", ">h", ">q", ">b"))
        size = struct.calcsize(fmt)
        if len(b) <= 4 + size:
            return b
        i = self.rng.randrange(4, len(b) - size)
        lo, hi = {">i": (-(2**31), 2**31 - 1), ">h": (-(2**15), 2**15 - 1), ">q": (-(2**63), 2**63 - 1),
                  ">b": (-128, 127)}[fmt]  # fmt: skip
        struct.pack_into(fmt, b, i, max(lo, min(hi, self.rng.choice(INTERESTING_INTS))))
        return b

    def _size_prefix(self, b: bytearray) -> bytearray:
        # Claims more (or less) than follows: the broker must not allocate what is claimed.
        struct.pack_into(">i", b, 0, self.rng.choice((len(b) + 1, len(b) - 5, 0x7FFFFFFF, -1, 100 << 20, 8, 0)))
        return b

    def _splice(self, b: bytearray) -> bytearray:
        i = self.rng.randrange(4, len(b)) if len(b) > 4 else 4
        out = b[:i] + self.rng.randbytes(self.rng.randint(1, 64)) + b[i:]
        struct.pack_into(">i", out, 0, len(out) - 4)
        return out

    def _insert(self, b: bytearray) -> bytearray:
        i = self.rng.randrange(4, len(b)) if len(b) > 4 else 4
        out = b[:i] + bytes([self.rng.choice((0, 0xFF, 0x80, 0x7F))]) * self.rng.randint(1, 16) + b[i:]
        struct.pack_into(">i", out, 0, len(out) - 4)
        return out

    def _delete(self, b: bytearray) -> bytearray:
        if len(b) <= 5:
            return b
        i = self.rng.randrange(4, len(b) - 1)
        out = b[:i] + b[i + self.rng.randint(1, min(16, len(b) - i)) :]
        struct.pack_into(">i", out, 0, len(out) - 4)
        return out

    def _varint(self, b: bytearray) -> bytearray:
        # An over-long or huge unsigned varint where a compact length or count is read.
        i = self.rng.randrange(4, len(b)) if len(b) > 4 else 4
        v = self.rng.choice((b"\xff" * 10, b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x01", b"\xfe\xff\x03"))
        out = b[:i] + v + b[i + 1 :]
        struct.pack_into(">i", out, 0, len(out) - 4)
        return out

    def _repeat(self, b: bytearray) -> bytearray:
        # A region copied many times: many array elements (or nested structs) from a few bytes.
        if len(b) <= 14:
            return b
        i = self.rng.randrange(14, len(b))
        j = min(len(b), i + self.rng.randint(1, 32))
        out = b[:j] + b[i:j] * self.rng.randint(2, 2000) + b[j:]
        struct.pack_into(">i", out, 0, len(out) - 4)
        return out

    def _mutate(self, b: bytearray) -> tuple[str, bytearray]:
        names = []
        for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
            name, fn = self.rng.choice(self._mutators)
            if len(b) < 5:
                break
            b = fn(b)
            names.append(name)
        return "+".join(names) or "none", b

    def random_bytes(self) -> bytes:
        body = self.rng.randbytes(self.rng.randint(0, 256))
        if self.rng.random() < 0.5 and len(body) >= 4:
            # A known api key and version at the front, so the bytes get past the header check.
            key, ver = self.rng.choice(self.cases)
            body = struct.pack(">hhi", key, ver, 1) + body[8:]
        return struct.pack(">i", len(body)) + body

    def frame(self) -> tuple[str, bytes]:
        """The next frame, size prefix included, and how it was made."""
        self.count += 1
        r = self.rng.random()
        if r < 0.1:
            return "random", self.random_bytes()
        api_key, version, data = self.valid_frame()
        what = f"{SUPPORTED_APIS[api_key].name}v{version}"
        if len(data) > self.max_frame:
            data = data[: self.max_frame]
            struct.pack_into(">i", data := bytearray(data), 0, len(data) - 4)
        if r < 0.3:
            return f"valid {what}", bytes(data)
        how, out = self._mutate(bytearray(data))
        return f"{how} {what}", bytes(out)


# -- against a live broker --------------------------------------------------------------------


@dataclass
class LiveReport:
    frames: int = 0
    answered: int = 0
    closed: int = 0
    #: Neither an answer nor a close within the wait (long polls: Fetch, JoinGroup with big timeouts).
    unanswered: int = 0
    #: Frames whose size prefix claims more than was sent: the connection is dropped after them.
    incomplete: int = 0
    unanswered_kinds: dict[str, int] = field(default_factory=dict)
    #: The broker process died, or a health probe on a separate connection got no answer.
    crashes: int = 0
    health_probes: int = 0
    #: Requests that decoded but whose handler raised (the broker's `requests_failed`).
    handler_errors: int = 0
    seconds: float = 0.0
    rss_before: int | None = None
    rss_after: int | None = None
    rss_max: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "kinds"}
        out["frames_per_s"] = round(self.frames_per_s, 1)
        return out


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def _metric(url: str | None, name: str) -> int:
    if not url:
        return 0
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(json.loads(r.read()).get(name, 0))
    except (OSError, ValueError):
        return 0


async def _health(host: str, port: int, timeout: float) -> bool:
    """ApiVersions and Metadata on a fresh connection, as any other client would ask."""
    import asyncio

    from engine.protocol.codec import decode_response
    from engine.protocol.messages import ApiVersionsRequest, MetadataRequest

    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        for cid, (key, ver, body) in enumerate(
            ((ApiKey.API_VERSIONS, 3, ApiVersionsRequest("health", "1")), (ApiKey.METADATA, 9, MetadataRequest([])))
        ):
            w.write(encode_request(RequestHeader(key, ver, cid, "health"), body))
            head = await asyncio.wait_for(r.readexactly(4), timeout)
            got_cid, res = decode_response(key, ver, await r.readexactly(struct.unpack(">i", head)[0]))
            if got_cid != cid or (key == ApiKey.API_VERSIONS and getattr(res, "error_code", -1) != 0):
                return False
        return True
    except (OSError, TimeoutError, ValueError, struct.error, asyncio.IncompleteReadError):
        return False
    finally:
        w.close()


async def run_live(
    host: str,
    port: int,
    frames: int,
    *,
    seed: int = 0,
    pid: int | None = None,
    metrics_url: str | None = None,
    connections: int = 16,
    wait_s: float = 1.0,
    probe_every: int = 2000,
    fuzzer: FrameFuzzer | None = None,
    progress: Callable[[LiveReport], None] | None = None,
) -> LiveReport:
    """Send `frames` fuzzed frames over `connections` connections, one frame in flight on each.

    A connection stays open while the broker answers; after a close (the broker's answer to a
    bad frame) or `wait_s` without an answer it is reopened. Every `probe_every` frames a fresh
    connection asks ApiVersions and Metadata, and the broker's pid must still be alive."""
    import asyncio

    fz = fuzzer or FrameFuzzer(seed)
    rep = LiveReport(rss_before=_rss(pid))
    rep.rss_max = rep.rss_before
    failed_before = _metric(metrics_url, "requests_failed")
    started = time.perf_counter()
    left = frames
    lock = asyncio.Lock()

    async def probe() -> None:
        rep.health_probes += 1
        alive = pid is None or _rss(pid) is not None
        if not alive or not await _health(host, port, 10.0):
            rep.crashes += 1
            rep.failures.append(f"after frame {rep.frames}: broker {'died' if not alive else 'did not answer'}")
        rss = _rss(pid)
        if rss is not None:
            rep.rss_max = max(rep.rss_max or 0, rss)

    async def worker() -> None:
        nonlocal left
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            async with lock:
                if left <= 0 or rep.crashes:
                    break
                left -= 1
                rep.frames += 1
                what, data = fz.frame()
                kind = what.split(" ", 1)[0]
                rep.kinds[kind] = rep.kinds.get(kind, 0) + 1
                if rep.frames % probe_every == 0:
                    await probe()
                    if progress is not None:
                        rep.seconds = time.perf_counter() - started
                        progress(rep)
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                reader, writer = conn
                writer.write(data)
                if len(data) < 4 or struct.unpack_from(">i", data)[0] > len(data) - 4:
                    # A frame that claims more than follows: the broker rightly waits for the rest.
                    rep.incomplete += 1
                    conn = _drop(conn)
                    continue
                head = await asyncio.wait_for(reader.readexactly(4), wait_s)
                (n,) = struct.unpack(">i", head)
                await asyncio.wait_for(reader.readexactly(n), wait_s)
                rep.answered += 1
            except (asyncio.IncompleteReadError, ConnectionError):
                rep.closed += 1
                conn = _drop(conn)
            except TimeoutError:
                rep.unanswered += 1
                api = what.rsplit(" ", 1)[-1]
                rep.unanswered_kinds[api] = rep.unanswered_kinds.get(api, 0) + 1
                conn = _drop(conn)
            except OSError as e:
                rep.failures.append(f"frame {rep.frames}: cannot connect: {e}")
                rep.crashes += 1
                conn = _drop(conn)
        _drop(conn)

    await asyncio.gather(*(worker() for _ in range(connections)))
    await probe()
    rep.seconds = time.perf_counter() - started
    rep.rss_after = _rss(pid)
    rep.handler_errors = _metric(metrics_url, "requests_failed") - failed_before
    return rep


def clients_work(bootstrap: str, topic: str = "fuzz-after") -> str | None:
    """A producer and a consumer round trip; None if it worked, else what failed."""

    from confluent_kafka import Consumer, Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    acked: list[int] = []
    for i in range(100):
        p.produce(topic, b"%d" % i, on_delivery=lambda err, m: acked.append(m.offset()) if err is None else None)
    if p.flush(30) or len(acked) != 100:
        return f"producer: {len(acked)} of 100 acknowledged"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"fuzz-after-{time.time_ns()}",
                  "auto.offset.reset": "earliest"})  # fmt: skip
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < 100 and time.monotonic() < deadline:
        got += [m.value() for m in c.consume(100, 1.0) if m.error() is None]
    c.close()
    return None if sorted(got, key=int) == [b"%d" % i for i in range(100)] else f"consumer read {len(got)} of 100"


def _drop(conn: Any) -> None:
    if conn is not None:
        conn[1].transport.abort()
