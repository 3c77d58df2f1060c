"""Garbage collection: objects nobody refers to are deleted from S3 after a grace period.

Three sources, in one pass:
  1. prepared objects whose upload never committed (the uploader or compactor died, or took
     longer than prepared_timeout_s) become unreferenced;
  2. unreferenced objects (compacted away, below retention, of a deleted stream, or given up
     in 1) that have been so for gc_grace_s are deleted from S3, then forgotten;
  3. keys under objects/ in S3 that the metadata does not know at all (left by a crash
     between a DELETE and forgetting the row, or by an older version) and are older than
     the grace period are deleted.

The metadata change that stops referencing an object always commits before the DELETE, and
the grace period lets reads that resolved the old ranges just before finish their GETs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from engine.storage.config import StorageConfig
from engine.storage.crash import crash_point
from engine.storage.metadata.interface import UNREFERENCED, MetadataStore
from engine.storage.objects.format import OBJECT_PREFIX
from engine.storage.objects.store import ObjectStore

log = logging.getLogger(__name__)

_DELETE_CHUNK = 100


@dataclass
class GcStats:
    passes: int = 0
    given_up: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    leftovers: int = 0


class GarbageCollector:
    def __init__(self, config: StorageConfig, store: ObjectStore, metadata: MetadataStore) -> None:
        self.config = config
        self.store = store
        self.metadata = metadata
        self.stats = GcStats()

    async def run_once(self, now: float | None = None) -> int:
        """One pass; returns the number of objects deleted from S3."""
        now = time.time() if now is None else now
        grace_ms = int(self.config.gc_grace_s * 1000)
        now_ms = int(now * 1000)
        self.stats.passes += 1
        self.stats.given_up += await self.metadata.give_up_prepared(now_ms - int(self.config.prepared_timeout_s * 1000))
        # Listed before the metadata is read: a key created after the listing is not in it, and
        # every key's row exists before its PUT, so an unknown listed key is never a live upload.
        listed = await self.store.list(OBJECT_PREFIX)
        records = await self.metadata.list_objects()
        due = [o for o in records if o.state == UNREFERENCED and o.unreferenced_ms <= now_ms - grace_ms]
        deleted = 0
        for i in range(0, len(due), _DELETE_CHUNK):
            chunk = due[i : i + _DELETE_CHUNK]
            await self.store.delete([o.key for o in chunk])
            crash_point("gc.during_delete")
            await self.metadata.forget_objects([o.object_id for o in chunk])
            deleted += len(chunk)
            self.stats.deleted_bytes += sum(o.size for o in chunk)
        known = {o.key for o in records}
        # S3 reports LastModified in whole seconds (rounded down): one more second keeps the grace.
        stray_before = now - self.config.gc_grace_s - 1.0
        strays = [i.key for i in listed if i.key not in known and i.modified <= stray_before]
        if strays:
            log.info("deleting %d objects the metadata does not know (left by a crash)", len(strays))
            await self.store.delete(strays)
            self.stats.leftovers += len(strays)
            deleted += len(strays)
        self.stats.deleted += deleted
        return deleted
