"""Garbage collection: objects nobody refers to are deleted from S3 after a grace period.

Three sources, in one pass:
  1. prepared objects whose upload never committed (the uploader or compactor died, or took
     longer than prepared_timeout_s) become unreferenced;
  2. unreferenced objects (compacted away, below retention, of a deleted stream, or given up
     in 1) that have been so for gc_grace_s are deleted from S3, then forgotten;
  3. keys under objects/ in S3 that the metadata does not know at all (left by a crash
     between a DELETE and forgetting the row, or by an older version) and are older than
     the grace period are deleted.

The metadata change that stops referencing an object always commits before the DELETE. The
grace period lets most reads that resolved the old ranges just before finish their GETs; one
that does not gets a 404 and resolves again (objects/reader.py), so no read depends on it.
Listing the bucket for 3 is the expensive part (a LIST per 1,000 keys): it runs at most every
lifecycle_interval_s, while deletions that fall due run as soon as a pass comes.
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
        #: When the next unreferenced object the last pass saw falls due (time.time()), if any.
        self.next_due: float | None = None
        self._listed_at = float("-inf")

    async def run_once(self, now: float | None = None, strays: bool = True) -> int:
        """One pass; returns the number of objects deleted from S3. strays=False leaves out the
        bucket listing (source 3) unless lifecycle_interval_s has passed since the last one."""
        now = time.time() if now is None else now
        grace_ms = int(self.config.gc_grace_s * 1000)
        now_ms = int(now * 1000)
        self.stats.passes += 1
        self.stats.given_up += await self.metadata.give_up_prepared(now_ms - int(self.config.prepared_timeout_s * 1000))
        list_strays = strays or now - self._listed_at >= self.config.lifecycle_interval_s
        # Listed before the metadata is read: a key created after the listing is not in it, and
        # every key's row exists before its PUT, so an unknown listed key is never a live upload.
        listed = await self.store.list(OBJECT_PREFIX) if list_strays else []
        if list_strays:
            self._listed_at = now
        # Leftovers need every key the metadata knows; deletions only the unreferenced objects.
        records = await self.metadata.list_objects(() if list_strays else (UNREFERENCED,))
        waiting = [o.unreferenced_ms for o in records if o.state == UNREFERENCED]
        due = [o for o in records if o.state == UNREFERENCED and o.unreferenced_ms <= now_ms - grace_ms]
        later = [ms for ms in waiting if ms > now_ms - grace_ms]
        self.next_due = (min(later) + grace_ms) / 1000 if later else None
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
        unknown = [i.key for i in listed if i.key not in known and i.modified <= stray_before]
        if unknown:
            log.info("deleting %d objects the metadata does not know (left by a crash)", len(unknown))
            await self.store.delete(unknown)
            self.stats.leftovers += len(unknown)
            deleted += len(unknown)
        self.stats.deleted += deleted
        return deleted
