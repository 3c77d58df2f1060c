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
from typing import TYPE_CHECKING

from engine.broker.log_cleaner import KeyCleaner
from engine.storage.compact.retention import retention_point
from engine.storage.errors import FencedError

if TYPE_CHECKING:
    from engine.broker.broker import Broker
    from engine.broker.image import PartitionInfo, TopicInfo
    from engine.storage.engine import StorageEngine

log = logging.getLogger(__name__)


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
        for topic in list(self.broker.image.topics.values()):
            policy = {p.strip() for p in topic.config("cleanup.policy").split(",")}
            for p in topic.partitions:
                if p.leader != self.broker.node_id:
                    continue
                with contextlib.suppress(FencedError):  # moved meanwhile: its new leader does it
                    if "delete" in policy:
                        await self._retain(storage, topic, p, now_ms)
                    if "compact" in policy:
                        # Log compaction rewrites into stream objects too: no second compaction.
                        cleaner = KeyCleaner(now_ms, int(topic.config("delete.retention.ms")))
                        ratio = float(topic.config("min.cleanable.dirty.ratio"))
                        if await storage.filter_stream(p.stream_id, cleaner, ratio, now_ms) is not None:
                            log.info("%s-%d: compacted, %d of %d records kept", topic.name, p.index,
                                     cleaner.records_out, cleaner.records_in)  # fmt: skip
                    else:
                        await storage.compactor.compact_stream(p.stream_id, self._merge_span(topic, policy))

    def _merge_span(self, topic: TopicInfo, policy: set[str]) -> int | None:
        """Merged stream objects hold at most a tenth of retention.ms of data, so retention,
        which deletes whole objects, keeps at most about 10 % more than asked."""
        max_ms = int(topic.configs.get("retention.ms", self.broker.config.log_retention_ms))
        return max_ms // 10 if "delete" in policy and max_ms >= 0 else None

    def _sweeps(self) -> bool:
        live = self.broker.live_brokers()
        return bool(live) and live[0].id == self.broker.node_id

    async def _retain(self, storage: StorageEngine, topic: TopicInfo, p: PartitionInfo, now_ms: int) -> None:
        cfg = self.broker.config
        max_ms = int(topic.configs.get("retention.ms", cfg.log_retention_ms))
        max_bytes = int(topic.configs.get("retention.bytes", cfg.log_retention_bytes))
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
