"""Object format shared by stream-set objects and stream objects.

    [data blocks][index][footer]

A data block holds consecutive batches of one stream, each as
`base offset u64 | record count u32 | length u32 | bytes`, and is at most about
`block_size` bytes so that a read fetches one bounded range. The index has one
entry per block: `stream id | start offset | end offset | position | size`.
The footer (fixed size, at the very end) says where the index is. A reader
fetches footer and index with one ranged GET of the object's tail, then only
the blocks it needs.
"""

from __future__ import annotations

import asyncio
import ctypes
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from engine.storage.errors import StorageError

BATCH_HEADER = struct.Struct("<QII")
INDEX_ENTRY = struct.Struct("<QQQQI")
FOOTER = struct.Struct("<QIIQ")
MAGIC = 0x414D512D4F424A31  # "AMQ-OBJ1"
VERSION = 1
DEFAULT_BLOCK_SIZE = 512 << 10
#: Every stream-set object and stream object lives under this prefix (the WAL's objects do not).
OBJECT_PREFIX = "objects/"


def object_key(object_id: int) -> str:
    return f"{OBJECT_PREFIX}{object_id:012d}"


@dataclass(slots=True)
class Batch:
    """Opaque bytes holding `record_count` records starting at `base_offset`."""

    base_offset: int
    record_count: int
    payload: bytes

    @property
    def end_offset(self) -> int:
        return self.base_offset + self.record_count


@dataclass(frozen=True, slots=True)
class IndexEntry:
    stream_id: int
    start_offset: int
    end_offset: int
    position: int
    size: int


@dataclass(frozen=True)
class BuiltObject:
    body: bytes
    index: list[IndexEntry]


def _layout(
    streams: Iterable[tuple[int, list[Batch]]], block_size: int
) -> tuple[list[tuple[int, list[Batch]]], list[IndexEntry], int]:
    layout: list[tuple[int, list[Batch]]] = []
    index: list[IndexEntry] = []
    pos = 0
    for stream_id, batches in streams:
        block: list[Batch] = []
        block_len = 0
        for b in batches:
            if block and block_len + BATCH_HEADER.size + len(b.payload) > block_size:
                index.append(IndexEntry(stream_id, block[0].base_offset, block[-1].end_offset, pos, block_len))
                layout.append((pos, block))
                pos += block_len
                block, block_len = [], 0
            block.append(b)
            block_len += BATCH_HEADER.size + len(b.payload)
        if block:
            index.append(IndexEntry(stream_id, block[0].base_offset, block[-1].end_offset, pos, block_len))
            layout.append((pos, block))
            pos += block_len
    return layout, index, pos


class _ObjectBuffer:
    """A `bytes` object filled in place before anyone else sees it.

    obstore hands a `bytes` body to S3 without copying it, while a bytearray or
    memoryview costs a copy of the whole object under the interpreter lock (about
    4 ms for 32 MiB here, stalling every WAL acknowledgement behind it). bytes(n)
    is calloc'ed (free), and filling it with memmove can pause between blocks.
    The buffer is never hashed or shared until it is complete.
    """

    def __init__(self, size: int) -> None:
        self.body = bytes(size)
        self._addr = ctypes.cast(ctypes.c_char_p(self.body), ctypes.c_void_p).value or 0

    def write(self, at: int, data: bytes | memoryview) -> None:
        n = len(data)
        if at < 0 or at + n > len(self.body):
            raise StorageError("object layout overflow")
        ctypes.memmove(self._addr + at, bytes(data) if isinstance(data, memoryview) else data, n)

    def fill_block(self, at: int, block: list[Batch]) -> None:
        if len(block) > 1:
            # One memmove per block: with thousands of streams, batches are small and a ctypes
            # call per header and per payload cost more than copying the block once more.
            parts: list[bytes | memoryview] = []
            for b in block:
                parts.append(BATCH_HEADER.pack(b.base_offset, b.record_count, len(b.payload)))
                parts.append(b.payload)
            self.write(at, b"".join(parts))
            return
        for b in block:
            self.write(at, BATCH_HEADER.pack(b.base_offset, b.record_count, len(b.payload)))
            at += BATCH_HEADER.size
            self.write(at, b.payload)
            at += len(b.payload)

    def finish(self, index: list[IndexEntry], pos: int) -> None:
        index_bytes = b"".join(
            INDEX_ENTRY.pack(e.stream_id, e.start_offset, e.end_offset, e.position, e.size) for e in index
        )
        self.write(pos, index_bytes)
        self.write(pos + len(index_bytes), FOOTER.pack(pos, len(index_bytes), VERSION, MAGIC))


def build_object(streams: Iterable[tuple[int, list[Batch]]], block_size: int = DEFAULT_BLOCK_SIZE) -> BuiltObject:
    layout, index, pos = _layout(streams, block_size)
    buf = _ObjectBuffer(pos + len(index) * INDEX_ENTRY.size + FOOTER.size)
    for at, block in layout:
        buf.fill_block(at, block)
    buf.finish(index, pos)
    return BuiltObject(buf.body, index)


async def build_object_async(
    streams: Iterable[tuple[int, list[Batch]]], block_size: int = DEFAULT_BLOCK_SIZE, step: int = 1 << 20
) -> BuiltObject:
    """build_object on the event loop, pausing every `step` bytes so appends are acknowledged meanwhile."""
    layout, index, pos = _layout(streams, block_size)
    buf = _ObjectBuffer(pos + len(index) * INDEX_ENTRY.size + FOOTER.size)
    copied = 0
    for at, block in layout:
        buf.fill_block(at, block)
        copied += sum(len(b.payload) for b in block)
        if copied >= step:
            copied = 0
            await asyncio.sleep(0)
    buf.finish(index, pos)
    return BuiltObject(buf.body, index)


def parse_footer(tail: bytes) -> tuple[int, int]:
    """(index position, index size) from the last FOOTER.size bytes of an object."""
    if len(tail) < FOOTER.size:
        raise StorageError("object too short for a footer")
    index_pos, index_size, version, magic = FOOTER.unpack_from(tail, len(tail) - FOOTER.size)
    if magic != MAGIC or version != VERSION:
        raise StorageError("not an amq object (bad footer)")
    return index_pos, index_size


def parse_index(data: bytes | memoryview) -> list[IndexEntry]:
    if len(data) % INDEX_ENTRY.size:
        raise StorageError("corrupt object index")
    return [IndexEntry(*t) for t in INDEX_ENTRY.iter_unpack(data)]


def parse_block(data: bytes | memoryview) -> list[Batch]:
    out: list[Batch] = []
    view = memoryview(data)
    at = 0
    while at < len(view):
        base, count, length = BATCH_HEADER.unpack_from(view, at)
        at += BATCH_HEADER.size
        if at + length > len(view):
            raise StorageError("corrupt object block")
        out.append(Batch(base, count, bytes(view[at : at + length])))
        at += length
    return out
