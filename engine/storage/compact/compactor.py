"""Compaction: stream-set objects are split into stream objects, and a stream's small stream
objects are merged, so the number of objects a stream is spread over stays bounded.

Two jobs, both ending in one metadata compare-and-swap per stream (replace_ranges: if
retention, a deleted topic or another compactor changed any of the ranges meanwhile, nothing
changes and the new object is unreferenced):

- compact_stream_sets (one broker does it for the cluster): stream-set objects older than
  stream_set_max_age_s, and the oldest beyond max_stream_set_objects, are read whole (one GET
  each), in groups of at most compaction_object_bytes, and each stream's data in the group
  becomes one stream object. A stream-set object whose last range moved out becomes
  unreferenced in that same transaction; garbage collection deletes it after the grace period.
- compact_stream (the stream's leader): runs of compaction_min_ranges small stream objects of
  one stream (under half of compaction_object_bytes each) are merged into one.

filter_stream rewrites a whole stream through a record filter (log compaction of a Kafka
topic: engine/broker/log_cleaner.py); the storage layer itself never reads records.

Memory: one group or run (at most compaction_object_bytes, or one larger object) and the
objects built from it. Bandwidth: compaction_bytes_per_s. It runs as tasks beside the append
path and shares nothing with it but the event loop, where it yields between blocks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol

from engine.storage.cache import BlockCache
from engine.storage.config import StorageConfig
from engine.storage.crash import crash_point
from engine.storage.errors import OffsetOutOfRange, StorageError
from engine.storage.metadata.interface import COMMITTED, MetadataStore, ObjectCommit, ObjectRecord, RangeInfo
from engine.storage.objects.format import Batch, IndexEntry, parse_block, parse_footer, parse_index
from engine.storage.objects.reader import ObjectReader
from engine.storage.objects.store import NoSuchKey, ObjectStore
from engine.storage.uploader import UploadStats, put_object

log = logging.getLogger(__name__)

STREAM_SET = "stream-set"


def plan_compaction(
    ranges: list[RangeInfo], config: StorageConfig, max_span_ms: int | None = None
) -> list[list[RangeInfo]]:
    """Runs of a stream's small stream objects to merge, each into one stream object.

    Small: under half the target size. Size-tiered, so data is rewritten O(log) times, not once
    per merge: a stream object's tier is its size in powers of compaction_min_ranges above 64 KiB,
    and compaction_min_ranges consecutive small objects of one tier (at most the target size
    together) make a run. A stream is then spread over at most about compaction_min_ranges
    objects per tier. Data in stream-set objects is left to compact_stream_sets.

    max_span_ms: a run holds data uploaded within at most this long, so retention (which
    deletes whole objects, once their newest data expired) keeps little expired data.
    """
    target = config.compaction_object_bytes
    fan = max(2, config.compaction_min_ranges)
    runs: list[list[RangeInfo]] = []
    run: list[RangeInfo] = []
    size = 0

    def tier(r: RangeInfo) -> int:
        return int(math.log(max(r.size, _TIER_BASE) / _TIER_BASE, fan))

    for r in ranges:
        small = r.kind != STREAM_SET and r.size < target // 2
        fits = bool(run) and run[-1].end_offset == r.start_offset and tier(run[-1]) == tier(r)
        if fits and max_span_ms is not None:
            fits = r.data_ms - run[0].data_ms <= max_span_ms
        if not small or not fits or size + r.size > target:
            run, size = [], 0
        if small:
            run.append(r)
            size += r.size
            if len(run) == fan:
                runs.append(run)
                run, size = [], 0
    return runs


_TIER_BASE = 64 << 10


def plan_stream_sets(objects: list[ObjectRecord], skip: set[int], config: StorageConfig, now_ms: int) -> list[int]:
    """Ids of the stream-set objects to split next (oldest first, at most about the target bytes).

    Due: older than stream_set_max_age_s, or, once there are more than max_stream_set_objects,
    the oldest down to half of that: splitting many at once gives each stream one bigger
    stream object instead of many small ones to merge later.
    An object holding only streams in `skip` (whose owner rewrites them itself) is not touched.
    """
    sets = sorted((o for o in objects if o.kind == STREAM_SET and o.state == COMMITTED), key=lambda o: o.object_id)
    excess = len(sets) - config.max_stream_set_objects // 2 if len(sets) > config.max_stream_set_objects else 0
    stale_before = now_ms - config.stream_set_max_age_s * 1000
    due = [o for i, o in enumerate(sets) if (i < excess or o.created_ms < stale_before) and set(o.streams) - skip]
    group: list[int] = []
    size = 0
    for o in due:
        if group and size + o.size > config.compaction_object_bytes:
            break
        group.append(o.object_id)
        size += o.size
    return group


def contiguous_runs(ranges: list[RangeInfo]) -> list[list[RangeInfo]]:
    runs: list[list[RangeInfo]] = []
    for r in sorted(ranges, key=lambda r: r.start_offset):
        if runs and runs[-1][-1].end_offset == r.start_offset:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


@dataclass
class CompactionStats:
    runs: int = 0
    ranges_in: int = 0
    objects_out: int = 0
    bytes_read: int = 0
    conflicts: int = 0
    seconds: float = 0.0


#: Stream objects one compaction group PUTs at the same time.
COMPACTION_PUTS_IN_FLIGHT = 2


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

    async def compact_stream(self, stream_id: int, max_span_ms: int | None = None) -> int:
        """Merge the stream's small stream objects if they call for it; returns stream objects written.
        max_span_ms: see plan_compaction."""
        if not self.enabled:
            return 0
        async with self._lock:  # one job at a time per engine bounds memory and bandwidth
            meta = await self.metadata.get_stream(stream_id)
            if meta is None:
                return 0
            written = 0
            for run in plan_compaction(await self.metadata.stream_ranges(stream_id), self.config, max_span_ms):
                if await self._rewrite(stream_id, meta.epoch, run):
                    written += 1
            return written

    async def compact_stream_sets(self, skip: set[int] | None = None, now_ms: int | None = None) -> int:
        """Split the next group of due stream-set objects into stream objects; returns how many
        stream-set objects were read. `skip`: streams to leave where they are."""
        if not self.enabled:
            return 0
        skip = skip or set()
        async with self._lock:
            now = int(time.time() * 1000) if now_ms is None else now_ms
            group = plan_stream_sets(await self.metadata.list_objects([COMMITTED]), skip, self.config, now)
            if not group:
                return 0
            started = time.monotonic()
            ranges = [r for r in await self.metadata.object_ranges(group) if r.stream_id not in skip]
            keys = {r.object_id: r.key for r in ranges}
            try:
                got = await asyncio.gather(*(self._get_whole(k) for k in keys.values()))
                bodies = dict(zip(keys, got, strict=True))
            except NoSuchKey:
                # Retention or a deleted topic took an object of the group since it was planned
                # (and its grace period ran out): the next pass plans again.
                self.stats.conflicts += 1
                return 0
            epochs = {s.stream_id: s.epoch for s in await self.metadata.list_streams()}
            by_stream: dict[int, list[RangeInfo]] = {}
            for r in ranges:
                by_stream.setdefault(r.stream_id, []).append(r)
            crash_point("compact.before_upload")
            # A stream not in `epochs` was deleted meanwhile: its ranges went with it.
            runs = [(sid, run) for sid, rs in by_stream.items() if sid in epochs for run in contiguous_runs(rs)]
            # Parsing a group is CPU work. It runs on the event loop, one range at a time: in a
            # thread it held the GIL for whole switch intervals, and the loop, which gives the
            # GIL up at every syscall, waited that long to get it back each time.
            indexes = {oid: _index_of(body) for oid, body in bodies.items()}
            batches: list[list[Batch]] = []
            for _, run in runs:
                got: list[Batch] = []
                for r in run:
                    got.extend(_batches_in(bodies[r.object_id], indexes[r.object_id], r))
                    await asyncio.sleep(0)
                batches.append(got)
            jobs = [(sid, run, bs) for (sid, run), bs in zip(runs, batches, strict=True)]
            # A group splits into one object per stream (a hundred, say): PUT all at once, they
            # reach the S3 server as one burst (and build on the event loop all at once); a few
            # at a time, the throttle spreads them out.
            puts = asyncio.Semaphore(COMPACTION_PUTS_IN_FLIGHT)

            async def put(sid: int, run: list[RangeInfo], bs: list[Batch]) -> ObjectCommit:
                async with puts:
                    return await self._put(sid, epochs[sid], bs, max(r.data_ms for r in run))

            commits = await asyncio.gather(*(put(sid, run, bs) for sid, run, bs in jobs))
            for (sid, run, _), commit in zip(jobs, commits, strict=True):
                await self._swap(sid, run, [commit])
            self.stats.seconds += time.monotonic() - started
            return len(group)

    async def _get_whole(self, key: str) -> bytes:
        body = await self.store.get(key)
        self.stats.bytes_read += len(body)
        await self._throttle.take(len(body))
        return body

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
                if b.base_offset >= end:
                    break  # the reader reads whole ranges: this one is past the run
                if b.base_offset < pos:
                    raise StorageError(f"stream {stream_id}: compaction found batch at {b.base_offset} below {pos}")
                while run[i].end_offset <= b.base_offset:
                    i += 1
                yield b, run[i]
                pos = b.end_offset
            n = sum(len(b.payload) for b in chunk if b.base_offset < end)
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

    async def _swap(self, stream_id: int, run: list[RangeInfo], commits: list[ObjectCommit]) -> bool:
        crash_point("compact.after_upload")
        ok = await self.metadata.replace_ranges(stream_id, run, commits)
        crash_point("compact.after_commit")
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
        try:
            batches = [b async for b, _ in self._read(stream_id, run)]
        except OffsetOutOfRange:
            self.stats.conflicts += 1  # retention moved the start past the run meanwhile
            return False
        crash_point("compact.before_upload")
        commit = await self._put(stream_id, epoch, batches, max(r.data_ms for r in run))
        ok = await self._swap(stream_id, run, [commit])
        self.stats.seconds += time.monotonic() - started
        return ok

    async def filter_stream(
        self, stream_id: int, keep: RecordFilter, min_dirty_ratio: float, now_ms: int
    ) -> int | None:
        """Rewrite the stream through `keep` (log compaction of a Kafka topic, say), once the bytes
        not yet rewritten (in stream-set objects) are at least min_dirty_ratio of it, or have sat
        there for stream_set_max_age_s; data younger than compaction_min_lag_s is left as it is.
        Two passes over the data (`keep` first sees every batch, then decides), so memory holds
        one output object, not the stream. Returns the end of the prefix it rewrote, or None when
        it rewrote nothing (nothing due, or the ranges changed meanwhile).
        """
        async with self._lock:
            meta = await self.metadata.get_stream(stream_id)
            if meta is None:
                return None
            ranges = [r for r in await self.metadata.stream_ranges(stream_id) if r.end_offset > meta.start_offset]
            # Only the prefix older than the lag: the young tail is left as it is (see the config).
            cutoff = now_ms - self.config.compaction_min_lag_s * 1000
            ranges = ranges[: next((i for i, r in enumerate(ranges) if r.data_ms > cutoff), len(ranges))]
            if not ranges:
                return None
            dirty = [r for r in ranges if r.kind == STREAM_SET]
            total = sum(r.size for r in ranges)
            stale = any(r.data_ms < now_ms - self.config.stream_set_max_age_s * 1000 for r in dirty)
            if not dirty or not (stale or sum(r.size for r in dirty) >= min_dirty_ratio * total):
                return None
            started = time.monotonic()
            try:
                async for b, _ in self._read(stream_id, ranges):
                    keep.observe(b)
            except OffsetOutOfRange:
                self.stats.conflicts += 1  # retention moved the start past these ranges meanwhile
                return None
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
            ok = await self._swap(stream_id, ranges, commits)
            self.stats.seconds += time.monotonic() - started
            return last_end if ok else None

    async def close(self) -> None:
        await self._reader.close()


class RecordFilter(Protocol):
    """What filter_stream rewrites a stream through; storage does not read records, its caller does."""

    def observe(self, batch: Batch) -> None:
        """First pass: every batch, in offset order."""
        ...

    def rewrite(self, batch: Batch, data_ms: int, last: bool) -> Batch | None:
        """Second pass: the batch to keep instead (same offsets or fewer records), or None to drop it.
        `data_ms`: when it was uploaded. `last`: the last batch being rewritten (the stream's last
        committed batch, unless the lag left a young tail), which must be kept: the rewritten
        ranges end where it ends."""
        ...


def _index_of(body: bytes) -> list[IndexEntry]:
    """A whole object's index, parsed once for all the ranges taken out of it."""
    index_pos, index_size = parse_footer(body)
    return parse_index(memoryview(body)[index_pos : index_pos + index_size])


def _batches_in(body: bytes, index: list[IndexEntry], r: RangeInfo) -> list[Batch]:
    """The batches of range `r` in a whole object's bytes (`index`: the object's, _index_of)."""
    out: list[Batch] = []
    for e in index:
        if e.stream_id == r.stream_id and e.end_offset > r.start_offset and e.start_offset < r.end_offset:
            out.extend(b for b in parse_block(memoryview(body)[e.position : e.position + e.size])
                       if b.base_offset >= r.start_offset and b.end_offset <= r.end_offset)  # fmt: skip
    if not out or out[0].base_offset != r.start_offset or out[-1].end_offset != r.end_offset:
        raise StorageError(f"{r.key}: stream {r.stream_id} [{r.start_offset}, {r.end_offset}) is not in the object")
    return out


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
