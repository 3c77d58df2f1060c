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
    body: bytearray
    index: list[IndexEntry]


def build_object(streams: Iterable[tuple[int, list[Batch]]], block_size: int = DEFAULT_BLOCK_SIZE) -> BuiltObject:
    """Lay out blocks, index and footer. Copies batch by batch into one buffer, so that when run
    in a worker thread the event loop gets the interpreter back between copies."""
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
    index_bytes = b"".join(
        INDEX_ENTRY.pack(e.stream_id, e.start_offset, e.end_offset, e.position, e.size) for e in index
    )
    body = bytearray(pos + len(index_bytes) + FOOTER.size)
    for at, block in layout:
        for b in block:
            BATCH_HEADER.pack_into(body, at, b.base_offset, b.record_count, len(b.payload))
            at += BATCH_HEADER.size
            body[at : at + len(b.payload)] = b.payload
            at += len(b.payload)
    body[pos : pos + len(index_bytes)] = index_bytes
    FOOTER.pack_into(body, pos + len(index_bytes), pos, len(index_bytes), VERSION, MAGIC)
    return BuiltObject(body, index)


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
