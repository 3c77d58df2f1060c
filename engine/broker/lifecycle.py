"""What a broker does for the lifecycle of its partitions' data (docs/storage.md).

Every storage.lifecycle_interval_s, for each partition this broker leads (open or not):
  - retention (cleanup.policy has delete): retention.ms / retention.bytes, else the broker's
    log.retention.*, move the stream's start offset; ranges wholly below it go;
  - log compaction (cleanup.policy has compact, log_cleaner.py), which also moves the data
    into stream objects; otherwise the merging of the stream's small stream objects.
One broker (the live broker with the lowest id) also sweeps: streams of deleted topics are
forgotten, due stream-set objects are split into stream objects, and (in a loop of its own)
garbage collection deletes unreferenced objects when their grace period ends. Two brokers that
both think they sweep only repeat work that is idempotent or compare-and-swap.

Nothing here is state: every decision is made again from the controller's metadata and the
storage metadata on each pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.broker.log_cleaner import KeyCleaner
from engine.storage.compact.compactor import plan_compaction
from engine.storage.compact.retention import retention_point
from engine.storage.errors import FencedError

if TYPE_CHECKING:
    from engine.broker.broker import Broker
    from engine.broker.image import PartitionInfo, TopicInfo
    from engine.storage.engine import StorageEngine
    from engine.storage.metadata.interface import RangeInfo, StreamMeta

log = logging.getLogger(__name__)
#: A pass over the led partitions gives the event loop a turn this often.
_YIELD_EVERY = 500


@dataclass
class _StreamView:
    """Metadata and ranges of a set of streams, read at once (one pass's view)."""

    metas: dict[int, StreamMeta]
    ranges: dict[int, list[RangeInfo]]

    @staticmethod
    async def read(storage: StorageEngine, wanted: set[int]) -> _StreamView:
        metas = {m.stream_id: m for m in await storage.metadata.list_streams() if m.stream_id in wanted}
        holding = [o.object_id for o in await storage.metadata.list_objects() if wanted.intersection(o.streams)]
        ranges: dict[int, list[RangeInfo]] = {}
        for r in await storage.metadata.object_ranges(holding):
            if r.stream_id in wanted:
                ranges.setdefault(r.stream_id, []).append(r)
        for rs in ranges.values():
            rs.sort(key=lambda r: r.start_offset)
        return _StreamView(metas, ranges)


class Lifecycle:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def run(self) -> None:
        """Three loops: this broker's partitions and, on the sweeping broker, the cluster-wide
        compaction and garbage collection, so none waits for another's long pass: an unreferenced
        object is deleted when its grace period ends, not after a compaction pass."""
        await asyncio.gather(self._loop(self.run_partitions), self._loop(self.run_sweep), self._gc_loop())

    async def _loop(self, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            storage = self.broker.storage
            interval = storage.config.lifecycle_interval_s if storage is not None else 1.0
            await asyncio.sleep(interval)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("object lifecycle pass failed; the next pass tries again")

    async def _gc_loop(self) -> None:
        """Garbage collection every lifecycle_interval_s, and sooner when the last pass saw an
        object whose grace period ends before that, though not more often than four times per
        grace period (the bucket is listed for leftovers at most every lifecycle_interval_s)."""
        while True:
            storage = self.broker.storage
            interval = storage.config.lifecycle_interval_s if storage is not None else 1.0
            due = storage.gc.next_due if storage is not None else None
            if due is not None and storage is not None:
                interval = min(interval, max(storage.config.gc_grace_s / 4, due - time.time()))
            await asyncio.sleep(interval)
            try:
                await self.run_gc()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("garbage collection pass failed; the next pass tries again")

    async def run_gc(self) -> None:
        storage = self.broker.storage
        if storage is None or self.broker.handed_off or not self._sweeps():
            return
        await storage.gc.run_once(strays=False)

    async def run_sweep(self) -> None:
        storage = self.broker.storage
        if storage is None or self.broker.handed_off or not self._sweeps():
            return
        await self.forget_deleted_streams(storage)
        # Compacted topics' streams leave stream-set objects through their log cleaner.
        cleaned = {p.stream_id for t in self.broker.image.topics.values()
                   if "compact" in t.config("cleanup.policy") for p in t.partitions}  # fmt: skip
        await storage.compactor.compact_stream_sets(cleaned, int(time.time() * 1000))

    async def run_partitions(self) -> None:
        storage = self.broker.storage
        if storage is None or self.broker.handed_off:
            return
        now_ms = int(time.time() * 1000)
        me = self.broker.node_id
        led = [(t, p) for t in list(self.broker.image.topics.values()) for p in t.partitions if p.leader == me]
        if not led:
            return
        # What every led stream looks like, in three reads for the whole pass instead of two
        # queries per partition per job: at 20,000 partitions those were a third of the broker's
        # CPU (BENCHMARKS.md). The view only says which streams may have work; the work itself
        # reads the stream again, so a view a commit made stale delays work by one pass at most.
        view = await _StreamView.read(storage, {p.stream_id for _, p in led})
        for i, (topic, p) in enumerate(led):
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a long pass must not hold acknowledgements back
            policy = {x.strip() for x in topic.config("cleanup.policy").split(",")}
            with contextlib.suppress(FencedError):  # moved meanwhile: its new leader does it
                if "delete" in policy and self._retention_due(view, topic, p.stream_id, now_ms):
                    await self._retain(storage, topic, p, now_ms)
                if "compact" in policy:
                    # Log compaction rewrites into stream objects too: no second compaction.
                    cleaner = KeyCleaner(now_ms, int(topic.config("delete.retention.ms")))
                    ratio = float(topic.config("min.cleanable.dirty.ratio"))
                    if await storage.filter_stream(p.stream_id, cleaner, ratio, now_ms) is not None:
                        log.info("%s-%d: compacted, %d of %d records kept", topic.name, p.index,
                                 cleaner.records_out, cleaner.records_in)  # fmt: skip
                else:
                    span = self._merge_span(topic, policy)
                    if plan_compaction(view.ranges.get(p.stream_id, []), storage.config, span):
                        await storage.compactor.compact_stream(p.stream_id, span)

    def _retention_due(self, view: _StreamView, topic: TopicInfo, stream_id: int, now_ms: int) -> bool:
        max_ms, max_bytes = self._retention(topic)
        meta = view.metas.get(stream_id)
        if meta is None or (max_ms < 0 and max_bytes < 0):
            return False
        return retention_point(view.ranges.get(stream_id, []), meta.start_offset, now_ms, max_ms, max_bytes) > (
            meta.start_offset
        )

    def _retention(self, topic: TopicInfo) -> tuple[int, int]:
        cfg = self.broker.config
        max_ms = int(topic.configs.get("retention.ms", cfg.log_retention_ms))
        max_bytes = int(topic.configs.get("retention.bytes", cfg.log_retention_bytes))
        return max_ms, max_bytes

    def _merge_span(self, topic: TopicInfo, policy: set[str]) -> int | None:
        """Merged stream objects hold at most a tenth of retention.ms of data, so retention,
        which deletes whole objects, keeps at most about 10 % more than asked."""
        max_ms = int(topic.configs.get("retention.ms", self.broker.config.log_retention_ms))
        return max_ms // 10 if "delete" in policy and max_ms >= 0 else None

    def _sweeps(self) -> bool:
        live = self.broker.live_brokers()
        return bool(live) and live[0].id == self.broker.node_id

    async def _retain(self, storage: StorageEngine, topic: TopicInfo, p: PartitionInfo, now_ms: int) -> None:
        max_ms, max_bytes = self._retention(topic)
        if max_ms < 0 and max_bytes < 0:
            return
        meta = await storage.metadata.get_stream(p.stream_id)
        if meta is None:
            return
        ranges = await storage.metadata.stream_ranges(p.stream_id)
        new_start = retention_point(ranges, meta.start_offset, now_ms, max_ms, max_bytes)
        if new_start <= meta.start_offset:
            return
        await trim(storage, p.stream_id, meta.epoch, new_start)
        log.info("%s-%d: retention moved the start offset to %d", topic.name, p.index, new_start)

    async def forget_deleted_streams(self, storage: StorageEngine) -> int:
        image = self.broker.image
        named = {p.stream_id for t in image.topics.values() for p in t.partitions}
        gone = [s.stream_id for s in await storage.metadata.list_streams()
                if s.stream_id <= image.max_stream_id and s.stream_id not in named]  # fmt: skip
        for sid in gone:
            await storage.metadata.delete_stream(sid)
        if gone:
            log.info("forgot %d streams of deleted topics; their objects go after the grace period", len(gone))
        return len(gone)


async def trim(storage: StorageEngine, stream_id: int, epoch: int, new_start: int) -> None:
    """Move a stream's start offset, through the open stream if this broker has it open."""
    stream = storage.streams.get(stream_id)
    if stream is not None and not stream.closed:
        await stream.trim(new_start)
    else:
        await storage.trim_stream(stream_id, epoch, new_start)
