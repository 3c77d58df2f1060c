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
from dataclasses import dataclass

from engine.storage.cache import BlockCache
from engine.storage.config import StorageConfig
from engine.storage.crash import crash_point
from engine.storage.errors import StorageError
from engine.storage.metadata.interface import MetadataStore, RangeInfo
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

    async def _rewrite(self, stream_id: int, epoch: int, run: list[RangeInfo]) -> bool:
        started = time.monotonic()
        start, end = run[0].start_offset, run[-1].end_offset
        batches: list[Batch] = []
        pos = start
        while pos < end:
            chunk = await self._reader.read(stream_id, pos, 1 << 20, end)
            if not chunk:
                break
            for b in chunk:
                if b.base_offset != pos:
                    raise StorageError(f"stream {stream_id}: compaction found batch at {b.base_offset}, expected {pos}")
                batches.append(b)
                pos = b.end_offset
            n = sum(len(b.payload) for b in chunk)
            self.stats.bytes_read += n
            await self._throttle.take(n)
        if pos != end:
            raise StorageError(f"stream {stream_id}: compaction read up to {pos}, the ranges end at {end}")
        crash_point("compact.before_upload")
        commit = await put_object(
            self.store,
            self.metadata,
            self.config,
            self.upload_stats,
            "stream",
            [(stream_id, epoch, batches)],
            data_ms=max(r.data_ms for r in run),
        )
        await self._throttle.take(commit.size)
        crash_point("compact.after_upload")
        ok = await self.metadata.replace_ranges(stream_id, run, commit)
        crash_point("compact.after_commit")
        self.stats.seconds += time.monotonic() - started
        if not ok:
            self.stats.conflicts += 1
            log.info("stream %d: ranges changed during compaction; %s is unreferenced", stream_id, commit.key)
            return False
        self.stats.runs += 1
        self.stats.ranges_in += len(run)
        self.stats.objects_out += 1
        return True

    async def close(self) -> None:
        await self._reader.close()
