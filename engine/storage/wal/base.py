"""What every WAL kind shares: the record frame and the interface.

A frame is a fixed header and the payload:

    magic u32 | payload length u32 | crc32c u32 | position u64 | wal epoch u64
    | stream id u64 | stream epoch u64 | base offset u64 | record count u32 | kind u32 | payload

The CRC covers everything after itself, so a torn or corrupt frame is never
replayed. `position` is the frame's logical place in the WAL (it only grows)
and `wal epoch` the owner generation that wrote it; recovery stops at the
first frame whose position is not the expected one or whose epoch goes
backwards, which is how stale frames of an earlier lap or an earlier
incarnation are told apart from live ones.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import crc32c

from engine.util.histogram import BYTES, Histogram, now

MAGIC = 0xA3171A1F
HEADER = struct.Struct("<IIIQQQQQII")
HEADER_SIZE = HEADER.size
_AFTER_CRC = 12  # magic, length and crc come first

KIND_DATA = 1
KIND_PAD = 2  # the rest of the ring's lap is unused: continue at the next lap
# The payload is a reference to bytes in shared storage (a zone proxy's relay object,
# engine/storage/relay.py), not the bytes: recovery reads them from there.
KIND_REF = 3

MAX_PAYLOAD = 1 << 30


@dataclass(slots=True)
class WalRecord:
    stream_id: int
    stream_epoch: int
    base_offset: int
    record_count: int
    payload: bytes
    position: int = -1  # assigned by the WAL when written
    kind: int = KIND_DATA
    #: KIND_REF only: a relay file the proxy wrote without an fdatasync (engine/storage/relay.py).
    #: The WAL makes it durable before this record, so no REF is ever durable before its bytes.
    sync_path: str | None = None

    @property
    def frame_size(self) -> int:
        return HEADER_SIZE + len(self.payload)


def encode_header(rec: WalRecord, position: int, wal_epoch: int, kind: int | None = None) -> bytes:
    """The frame's header; the payload follows it unchanged (written without a copy)."""
    head = HEADER.pack(
        MAGIC,
        len(rec.payload),
        0,
        position,
        wal_epoch,
        rec.stream_id,
        rec.stream_epoch,
        rec.base_offset,
        rec.record_count,
        rec.kind if kind is None else kind,
    )
    crc = crc32c.crc32c(rec.payload, crc32c.crc32c(head[_AFTER_CRC:]))
    return head[:8] + struct.pack("<I", crc) + head[_AFTER_CRC:]


def encode_frame(rec: WalRecord, position: int, wal_epoch: int, kind: int | None = None) -> bytes:
    return encode_header(rec, position, wal_epoch, kind) + rec.payload


def pad_frame(position: int, wal_epoch: int) -> bytes:
    return encode_frame(WalRecord(0, 0, 0, 0, b""), position, wal_epoch, KIND_PAD)


@dataclass(slots=True)
class DecodedFrame:
    record: WalRecord
    wal_epoch: int
    kind: int
    size: int


def decode_frame(buf: bytes | memoryview, at: int, expected_position: int) -> DecodedFrame | None:
    """Decode the frame at buf[at:], or None if it is torn, corrupt or not the expected one."""
    if len(buf) - at < HEADER_SIZE:
        return None
    magic, length, crc, position, wal_epoch, stream_id, stream_epoch, base, count, kind = HEADER.unpack_from(buf, at)
    if magic != MAGIC or position != expected_position or length > MAX_PAYLOAD:
        return None
    end = at + HEADER_SIZE + length
    if end > len(buf):
        return None
    view = memoryview(buf)
    if crc32c.crc32c(view[at + HEADER_SIZE : end], crc32c.crc32c(view[at + _AFTER_CRC : at + HEADER_SIZE])) != crc:
        return None
    payload = bytes(view[at + HEADER_SIZE : end])
    rec = WalRecord(stream_id, stream_epoch, base, count, payload, position, kind)
    return DecodedFrame(rec, wal_epoch, kind, HEADER_SIZE + length)


@dataclass
class WalStats:
    bytes_written: int = 0
    records_written: int = 0
    syncs: int = 0
    full_waits: int = 0
    #: Per group made durable (fdatasync of the ring; the PUT of an s3 WAL object): how long it
    #: took and how many bytes it held. Observed on the event loop (engine/util/histogram.py).
    sync_seconds: Histogram = field(default_factory=Histogram)
    group_bytes: Histogram = field(default_factory=lambda: Histogram(BYTES))
    #: Per group holding REF records to relay files the proxy did not sync: those files' fdatasync.
    relay_sync_seconds: Histogram = field(default_factory=Histogram)

    def synced(self, seconds: float, nbytes: int) -> None:
        self.sync_seconds.observe(seconds)
        self.group_bytes.observe(nbytes)


def sync_relay_files(records: Iterable[WalRecord]) -> float | None:
    """fdatasync each relay file the records name (once per file), before they are written; the
    seconds it took (None: no file named).

    Each path is opened here: a writeback error that happened before the open would not be
    reported to this descriptor, but the proxy wrote the bytes moments ago and nothing else
    syncs them (the kernel's periodic writeback leaves data this young alone unless memory is short).
    """
    paths = {r.sync_path for r in records if r.sync_path is not None}
    if not paths:
        return None
    started = now()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    return now() - started


# Called on the event loop once a record is durable (end position, None) or failed (-1, error).
Done = Callable[[int, BaseException | None], None]


class Wal(Protocol):
    """A write-ahead log owned by one broker at a time.

    append() calls `done`, in append order, once the record is durable;
    trim(position) says everything before `position` is safely in S3.
    """

    stats: WalStats

    async def open(self) -> list[WalRecord]:
        """Take ownership (fencing any older owner) and return the records still in the WAL."""
        ...

    def append(self, record: WalRecord, done: Done) -> None: ...

    def write_now(self) -> None:
        """Write what waits for a batch now (a flush must not wait out the batching interval)."""
        ...

    async def trim(self, position: int) -> None: ...

    def used_bytes(self) -> int: ...

    async def close(self) -> None: ...
