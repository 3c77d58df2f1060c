"""Caches of the read path.

LogCache: the most recent appends of every stream, first in first out, bounded
by bytes. Tailing reads are served from it. An entry leaves it only after it
is in S3, so the cache never loses data the WAL has not handed to S3 yet.

BlockCache: blocks fetched from objects, least recently used first out, for
catch-up reads that fall below the log cache.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from engine.storage.objects.format import Batch


@dataclass(slots=True, eq=False)
class CacheEntry:
    stream_id: int
    batch: Batch
    wal_end: int = -1  # WAL position after this record, once durable
    uploaded: bool = False
    # Never upload it again: its stream was fenced, or release_streams uploaded it ahead of WAL order.
    dropped: bool = False
    # Relayed by a zone proxy: the WAL holds only this reference (relay.RefRecord), the bytes are
    # in the proxy's relay object until this entry is in S3.
    ref: object = None
    wal_frame: int = 0  # bytes of the WAL frame (header included) once written


@dataclass
class StreamCache:
    """One stream's cached entries in offset order; entries leave only from the front."""

    entries: list[CacheEntry] = field(default_factory=list)
    head: int = 0

    def first_offset(self) -> int | None:
        return self.entries[self.head].batch.base_offset if self.head < len(self.entries) else None

    def pop_front(self) -> None:
        # Let go of the payload now: the list is compacted only now and then, and until then an
        # evicted entry would keep its bytes alive (up to 256 of them per stream).
        self.entries[self.head] = _EVICTED
        self.head += 1
        if self.head > 256 and self.head * 2 > len(self.entries):
            del self.entries[: self.head]
            self.head = 0

    def read(self, offset: int, max_bytes: int, visible_end: int) -> list[Batch]:
        """Batches holding `offset` onwards below `visible_end`; at least one if any.

        Nothing when the cache starts after `offset`: a broker that leads a stream again
        caches only what it appended since, and the offsets before that are in S3.
        """
        bases = _BaseView(self.entries)
        i = max(self.head, bisect.bisect_right(bases, offset, lo=self.head) - 1)
        out: list[Batch] = []
        size = 0
        while i < len(self.entries):
            b = self.entries[i].batch
            if b.end_offset > visible_end or (not out and b.base_offset > offset):
                break
            if b.end_offset > offset:
                if out and size + len(b.payload) > max_bytes:
                    break
                out.append(b)
                size += len(b.payload)
            i += 1
        return out


_EVICTED = CacheEntry(-1, Batch(-1, 1, b""))


class _BaseView:
    """Lets bisect search entries by base offset without building a list."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[CacheEntry]) -> None:
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> int:
        return self.entries[i].batch.base_offset


class LogCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._fifo: deque[CacheEntry] = deque()
        self.streams: dict[int, StreamCache] = {}

    def add(self, entry: CacheEntry) -> None:
        self.streams.setdefault(entry.stream_id, StreamCache()).entries.append(entry)
        self._fifo.append(entry)
        self.size += len(entry.batch.payload)
        self.evict()

    def evict(self) -> None:
        fifo = self._fifo
        while self.size > self.max_bytes and fifo and (fifo[0].uploaded or fifo[0].dropped):
            entry = fifo.popleft()
            self.size -= len(entry.batch.payload)
            sc = self.streams.get(entry.stream_id)
            # A stream forgotten and opened again has a new StreamCache that never held this entry.
            if sc is not None and sc.head < len(sc.entries) and sc.entries[sc.head] is entry:
                sc.pop_front()

    def forget_uploaded(self, stream_id: int, below: int) -> None:
        """Stop serving the stream's uploaded entries below `below` (their objects were rewritten,
        say by log compaction, and S3 has the newer truth); their bytes leave with the FIFO."""
        sc = self.streams.get(stream_id)
        while sc is not None and sc.head < len(sc.entries):
            e = sc.entries[sc.head]
            if not e.uploaded or e.batch.end_offset > below:
                break
            sc.pop_front()

    def forget_stream(self, stream_id: int) -> None:
        """Stop serving a stream from the cache; its bytes leave with the FIFO."""
        sc = self.streams.pop(stream_id, None)
        if sc is not None:
            for e in sc.entries[sc.head :]:
                e.dropped = True


class BlockCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._blocks: OrderedDict[tuple[str, int], tuple[list[Batch], int]] = OrderedDict()

    def get(self, key: tuple[str, int]) -> list[Batch] | None:
        found = self._blocks.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._blocks.move_to_end(key)
        return found[0]

    def clear(self) -> None:
        self._blocks.clear()
        self.size = 0

    def put(self, key: tuple[str, int], batches: list[Batch], size: int) -> None:
        if key in self._blocks:
            return
        self._blocks[key] = (batches, size)
        self.size += size
        while self.size > self.max_bytes and len(self._blocks) > 1:
            _, (_, old) = self._blocks.popitem(last=False)
            self.size -= old
