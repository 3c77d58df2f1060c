"""Compaction: a stream's data moves out of stream-set objects (and small stream objects) into
stream objects of bounded size, so the number of objects a stream is spread over stays bounded.

For one stream at a time: plan runs of consecutive small ranges, read each run's batches
through a reader of its own (the broker's block cache is for consumers), PUT them as one
stream object, then swap the ranges in one metadata transaction (compare-and-swap: if
retention or another compactor changed any of them meanwhile, nothing changes and the new
object is unreferenced). A stream-set object whose last range moved out becomes unreferenced
in that same transaction; garbage collection deletes it after the grace period.

Memory: one run (at most compaction_object_bytes) and the object built from it. Bandwidth:
compaction_bytes_per_s. It runs as a task beside the append path and shares nothing with it
but the event loop, where it yields between blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol

from engine.storage.cache import BlockCache
from engine.storage.config import StorageConfig
from engine.storage.crash import crash_point
from engine.storage.errors import StorageError
from engine.storage.metadata.interface import MetadataStore, ObjectCommit, RangeInfo
from engine.storage.objects.format import Batch
from engine.storage.objects.reader import ObjectReader
from engine.storage.objects.store import ObjectStore
from engine.storage.uploader import UploadStats, put_object

log = logging.getLogger(__name__)

STREAM_SET = "stream-set"


def plan_compaction(ranges: list[RangeInfo], config: StorageConfig, now_ms: int) -> list[list[RangeInfo]]:
    """Runs of ranges to rewrite, each into one stream object.

    A range is small if it sits in a stream-set object or in a stream object under half the
    target size. Consecutive small ranges form runs of at most the target size; a run is
    rewritten when it has compaction_min_ranges ranges, or holds data that has been in a
    stream-set object for stream_set_max_age_s (so every stream-set object is freed in time).
    """
    target = config.compaction_object_bytes
    max_age_ms = config.stream_set_max_age_s * 1000
    runs: list[list[RangeInfo]] = []
    run: list[RangeInfo] = []
    size = 0

    def close() -> None:
        nonlocal run, size
        if run and _due(run, config.compaction_min_ranges, now_ms - max_age_ms):
            runs.append(run)
        run, size = [], 0

    for r in ranges:
        small = r.kind == STREAM_SET or r.size < target // 2
        contiguous = not run or run[-1].end_offset == r.start_offset
        if not small or not contiguous or (run and size + r.size > target):
            close()
        if small:
            run.append(r)
            size += r.size
    close()
    return runs


def _due(run: list[RangeInfo], min_ranges: int, stale_before_ms: int) -> bool:
    if len(run) >= min_ranges:
        return True
    return any(r.kind == STREAM_SET and r.data_ms < stale_before_ms for r in run)


@dataclass
class CompactionStats:
    runs: int = 0
    ranges_in: int = 0
    objects_out: int = 0
    bytes_read: int = 0
    conflicts: int = 0
    seconds: float = 0.0


class _Throttle:
    """At most `rate` bytes per second on average, measured from the first byte."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._started = time.monotonic()
        self._bytes = 0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        self._bytes += n
        ahead = self._bytes / self.rate - (time.monotonic() - self._started)
        if ahead > 0:
            await asyncio.sleep(ahead)


class Compactor:
    def __init__(
        self, config: StorageConfig, store: ObjectStore, metadata: MetadataStore, upload_stats: UploadStats
    ) -> None:
        self.config = config
        self.store = store
        self.metadata = metadata
        self.upload_stats = upload_stats
        self.stats = CompactionStats()
        # Its own small cache: compaction reads each block once and must not evict consumers' blocks.
        self._reader = ObjectReader(store, metadata, BlockCache(4 << 20), readahead_blocks=2)
        self._throttle = _Throttle(config.compaction_bytes_per_s)
        self._lock = asyncio.Lock()
        self.enabled = True

    async def compact_stream(self, stream_id: int, now_ms: int | None = None) -> int:
        """Compact one stream if its ranges call for it; returns the number of stream objects written."""
        if not self.enabled:
            return 0
        async with self._lock:  # one run at a time per engine bounds memory and bandwidth
            meta = await self.metadata.get_stream(stream_id)
            if meta is None:
                return 0
            ranges = await self.metadata.stream_ranges(stream_id)
            now = int(time.time() * 1000) if now_ms is None else now_ms
            written = 0
            for run in plan_compaction(ranges, self.config, now):
                if await self._rewrite(stream_id, meta.epoch, run):
                    written += 1
            return written

    async def _read(self, stream_id: int, run: list[RangeInfo]) -> AsyncIterator[tuple[Batch, RangeInfo]]:
        """The run's batches in offset order (gaps allowed: a compacted topic's), throttled, each with its range."""
        start, end = run[0].start_offset, run[-1].end_offset
        pos = start
        i = 0
        while pos < end:
            chunk = await self._reader.read(stream_id, pos, 1 << 20, end)
            if not chunk:
                break
            for b in chunk:
                if b.base_offset < pos:
                    raise StorageError(f"stream {stream_id}: compaction found batch at {b.base_offset} below {pos}")
                while run[i].end_offset <= b.base_offset:
                    i += 1
                yield b, run[i]
                pos = b.end_offset
            n = sum(len(b.payload) for b in chunk)
            self.stats.bytes_read += n
            await self._throttle.take(n)
        if pos != end:
            raise StorageError(f"stream {stream_id}: compaction read up to {pos}, the ranges end at {end}")

    async def _put(self, stream_id: int, epoch: int, batches: list[Batch], data_ms: int) -> ObjectCommit:
        commit = await put_object(
            self.store, self.metadata, self.config, self.upload_stats, "stream", [(stream_id, epoch, batches)],
            data_ms=data_ms,
        )  # fmt: skip
        await self._throttle.take(commit.size)
        return commit

    async def _swap(self, stream_id: int, run: list[RangeInfo], commits: list[ObjectCommit], started: float) -> bool:
        crash_point("compact.after_upload")
        ok = await self.metadata.replace_ranges(stream_id, run, commits)
        crash_point("compact.after_commit")
        self.stats.seconds += time.monotonic() - started
        if not ok:
            self.stats.conflicts += 1
            log.info("stream %d: ranges changed during compaction; its %d new objects are unreferenced",
                     stream_id, len(commits))  # fmt: skip
            return False
        self.stats.runs += 1
        self.stats.ranges_in += len(run)
        self.stats.objects_out += len(commits)
        return True

    async def _rewrite(self, stream_id: int, epoch: int, run: list[RangeInfo]) -> bool:
        started = time.monotonic()
        batches = [b async for b, _ in self._read(stream_id, run)]
        crash_point("compact.before_upload")
        commit = await self._put(stream_id, epoch, batches, max(r.data_ms for r in run))
        return await self._swap(stream_id, run, [commit], started)

    async def filter_stream(self, stream_id: int, keep: RecordFilter, min_dirty_ratio: float, now_ms: int) -> bool:
        """Rewrite the whole stream through `keep` (log compaction of a Kafka topic, say), once
        the bytes not yet rewritten (in stream-set objects) are at least min_dirty_ratio of it,
        or have sat there for stream_set_max_age_s. Two passes over the data (`keep` first sees
        every batch, then decides), so memory holds one output object, not the stream.
        """
        async with self._lock:
            meta = await self.metadata.get_stream(stream_id)
            if meta is None:
                return False
            ranges = [r for r in await self.metadata.stream_ranges(stream_id) if r.end_offset > meta.start_offset]
            dirty = [r for r in ranges if r.kind == STREAM_SET]
            total = sum(r.size for r in ranges)
            stale = any(r.data_ms < now_ms - self.config.stream_set_max_age_s * 1000 for r in dirty)
            if not dirty or not (stale or sum(r.size for r in dirty) >= min_dirty_ratio * total):
                return False
            started = time.monotonic()
            async for b, _ in self._read(stream_id, ranges):
                keep.observe(b)
            crash_point("compact.before_upload")
            commits: list[ObjectCommit] = []
            out: list[Batch] = []
            size = 0
            newest = 0
            last_end = ranges[-1].end_offset
            async for b, r in self._read(stream_id, ranges):
                kept = keep.rewrite(b, r.data_ms, last=b.end_offset == last_end)
                newest = max(newest, r.data_ms)
                if kept is None:
                    continue
                out.append(kept)
                size += len(kept.payload)
                if size >= self.config.compaction_object_bytes:
                    commits.append(await self._put(stream_id, meta.epoch, out, newest))
                    out, size, newest = [], 0, 0
            if out:
                commits.append(await self._put(stream_id, meta.epoch, out, newest))
            if not commits:
                raise StorageError(f"stream {stream_id}: the record filter dropped the last batch")
            commits = _cover(commits, ranges[0].start_offset, last_end)
            return await self._swap(stream_id, ranges, commits, started)

    async def close(self) -> None:
        await self._reader.close()


class RecordFilter(Protocol):
    """What filter_stream rewrites a stream through; storage does not read records, its caller does."""

    def observe(self, batch: Batch) -> None:
        """First pass: every batch, in offset order."""
        ...

    def rewrite(self, batch: Batch, data_ms: int, last: bool) -> Batch | None:
        """Second pass: the batch to keep instead (same offsets or fewer records), or None to drop it.
        `data_ms`: when it was uploaded. `last`: the stream's last committed batch, which must
        be kept (a stream's committed end is where its last object's last batch ends)."""
        ...


def _cover(commits: list[ObjectCommit], start: int, end: int) -> list[ObjectCommit]:
    """Stretch the objects' ranges to cover [start, end) without holes: batches dropped before an
    object's first kept batch leave offsets that no batch holds, and they belong to that object."""
    out: list[ObjectCommit] = []
    pos = start
    for i, c in enumerate(commits):
        (r,) = c.ranges
        stop = end if i == len(commits) - 1 else r.end_offset
        out.append(replace(c, ranges=(replace(r, start_offset=pos, end_offset=stop),)))
        pos = stop
    return out
