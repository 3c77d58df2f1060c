"""The storage engine: streams on one WAL, uploaded together into stream-set objects.

    append -> WAL (durable) -> ack;  the entry also sits in the log cache
    uploader (uploader.py): the durable prefix of all streams' entries -> ONE stream-set
              object (plus a stream object per very large stream) -> commit -> trim WAL
    compactor, garbage collector (compact/): stream-set objects -> stream objects;
              unreferenced objects deleted after a grace period

The engine is the host of its streams (stream.StreamHost) and recovers a WAL
(its own at start, a dead owner's on takeover) into S3.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

from engine.storage.cache import BlockCache, CacheEntry, LogCache, StreamCache
from engine.storage.compact.compactor import Compactor, RecordFilter
from engine.storage.compact.gc import GarbageCollector
from engine.storage.config import StorageConfig, WalConfig
from engine.storage.errors import FencedError, StorageError, WalCorrupt
from engine.storage.metadata.interface import MetadataStore, ObjectCommit, StreamRange
from engine.storage.objects.format import Batch, build_object, object_key
from engine.storage.objects.reader import ObjectReader
from engine.storage.objects.store import ObjectStore
from engine.storage.relay import Location, Materialize, RefRecord, RelayUnavailable, SharedReader
from engine.storage.stream import Stream
from engine.storage.uploader import Uploader, body_crc, put_retrying
from engine.storage.wal.base import KIND_REF, Done, Wal, WalRecord
from engine.storage.wal.ring import RingWal
from engine.storage.wal.s3 import S3Wal

log = logging.getLogger(__name__)


def make_wal(config: WalConfig, owner: str, store: ObjectStore, metadata: MetadataStore) -> Wal:
    async def next_epoch(current: int) -> int:
        while True:
            epoch = await metadata.acquire_wal(config.wal_id, owner)
            if epoch > current:
                return epoch

    async def still_owner(epoch: int) -> bool:
        found = await metadata.wal_owner(config.wal_id)
        return found is not None and found.epoch == epoch

    if config.kind == "file":
        return RingWal(config.path, config.capacity, owner, after_sync=metadata.refresh_epochs)
    if config.kind == "nfs":
        return RingWal(
            Path(config.path) / config.wal_id,
            config.capacity,
            owner,
            next_epoch=next_epoch,
            check_owner=True,
            after_sync=metadata.refresh_epochs,
        )
    if config.kind == "s3":
        return S3Wal(
            store,
            config.wal_id,
            owner,
            next_epoch=next_epoch,
            still_owner=still_owner,
            batch_interval_s=config.s3_batch_interval_s,
            batch_bytes=config.s3_batch_bytes,
            after_sync=metadata.refresh_epochs,
        )
    raise StorageError(f"unknown WAL kind {config.kind!r}: use file, nfs or s3")


class StorageEngine:
    def __init__(self, config: StorageConfig, store: ObjectStore, metadata: MetadataStore) -> None:
        self.config = config
        self.store = store
        self.metadata = metadata
        self.log_cache = LogCache(config.log_cache_bytes)
        self.block_cache = BlockCache(config.block_cache_bytes)
        self.reader = ObjectReader(store, metadata, self.block_cache, config.readahead_blocks)
        self.wal: Wal = make_wal(config.wal, config.owner, store, metadata)
        self.streams: dict[int, Stream] = {}
        self.uploader = Uploader(config, store, metadata, self.wal, self.log_cache, self.streams)
        self.upload_stats = self.uploader.stats
        self.compactor = Compactor(config, store, metadata, self.upload_stats)
        self.gc = GarbageCollector(config, store, metadata)
        # Relayed bytes (zone router) and other brokers' WAL frames, read from shared storage.
        self.shared = SharedReader(config.wal.kind, store, config.wal.path if config.wal.kind == "nfs" else None)
        #: Set by the broker: redoes a leader's changes to relayed bytes when a WAL is recovered.
        self.materialize: Materialize | None = None
        self.refs_recovered = 0
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        records = await self.wal.open()
        end = await self._recover(records)
        if end is not None:
            await self.wal.trim(end)
        self.uploader.start()

    async def close(self, flush: bool = True) -> None:
        """Stop; with flush=False nothing is uploaded (the WAL keeps it, as after a crash)."""
        if self._closed:
            return
        if flush:
            await self.flush()
        self._closed = True
        for s in self.streams.values():
            s.mark_closed()
        # Without a flush, uploads in flight are abandoned as a crash would abandon them.
        await self.uploader.stop()
        await self.wal.close()
        await self.reader.close()
        await self.compactor.close()
        self.shared.close()

    # --- streams ---------------------------------------------------------------------------

    async def open_stream(self, stream_id: int, epoch: int) -> Stream:
        """Open (creating if new) a stream at `epoch`, fencing any owner at an older epoch."""
        existing = self.streams.get(stream_id)
        if existing is not None and existing.epoch == epoch and not existing.fenced:
            return existing
        meta = await self.metadata.open_stream(stream_id, epoch)
        if existing is not None:
            existing.fence(FencedError(f"stream {stream_id} was reopened at epoch {epoch}"))
            self.log_cache.forget_stream(stream_id)
        stream = Stream(self, meta)
        self.streams[stream_id] = stream
        return stream

    async def close_stream(self, stream: Stream) -> None:
        if self.uploader.has_pending(stream.stream_id):
            await self.flush()
        stream.mark_closed()
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self.log_cache.forget_stream(stream.stream_id)

    async def release_streams(self, stream_ids: Collection[int]) -> dict[int, int]:
        """Upload what the WAL holds for these streams now, ahead of the rest of the WAL, so that
        another owner can open them (Uploader.release_streams); bytes uploaded per stream."""
        return await self.uploader.release_streams(stream_ids)

    async def filter_stream(
        self, stream_id: int, keep: RecordFilter, min_dirty_ratio: float, now_ms: int
    ) -> int | None:
        """Compactor.filter_stream, and the log cache no longer serves what it rewrote; the young
        tail it left alone (compaction_min_lag_s) stays in the cache for tailing readers."""
        end = await self.compactor.filter_stream(stream_id, keep, min_dirty_ratio, now_ms)
        if end is not None:
            self.log_cache.forget_uploaded(stream_id, end)
        return end

    # --- what a Stream needs from its host (stream.StreamHost) --------------------------------

    def stream_cache(self, stream_id: int) -> StreamCache:
        return self.log_cache.streams.setdefault(stream_id, StreamCache())

    def submit(self, entry: CacheEntry, record: WalRecord, done: Done) -> None:
        if self._closed:
            raise StorageError("the storage engine is closed")
        self.uploader.submit(entry, record, done)

    def entry_done(self, entry: CacheEntry) -> None:
        self.uploader.entry_done(entry)

    def current_epoch(self, stream_id: int) -> int:
        return self.metadata.current_epochs((stream_id,))[stream_id]

    async def read_objects(self, stream_id: int, offset: int, max_bytes: int, end: int) -> list[Batch]:
        return await self.reader.read(stream_id, offset, max_bytes, end)

    async def trim_stream(self, stream_id: int, epoch: int, new_start: int) -> None:
        await self.metadata.trim_stream(stream_id, epoch, new_start)

    async def flush(self) -> None:
        """Upload and commit everything appended so far."""
        await self.uploader.flush()

    def locate(self, entry: CacheEntry) -> tuple[Location, RefRecord | None] | None:
        """Where another broker can read a durable entry in shared storage (the zone router)."""
        rec = entry.ref
        if isinstance(rec, RefRecord):
            ref = rec.ref
            return Location("relay", ref.key, ref.offset, ref.length, crc=ref.crc), rec
        if entry.wal_end < 0:
            return None
        pos = entry.wal_end - entry.wal_frame
        wal = self.wal
        if isinstance(wal, RingWal) and self.config.wal.kind == "nfs":
            key = f"{self.config.wal.wal_id}/wal.ring"
            return Location("ring", key, pos % wal.capacity, entry.wal_frame, pos), None
        if isinstance(wal, S3Wal):
            found = wal.locate(pos)
            if found is not None:
                return Location("s3wal", found[0], found[1], entry.wal_frame, pos), None
        return None

    # --- recovery --------------------------------------------------------------------------

    async def _recover(self, records: list[WalRecord], fenced: dict[int, tuple[int, int]] | None = None) -> int | None:
        """Upload what a WAL holds beyond each stream's committed end; return the WAL end it covers.

        `fenced` (a takeover): stream id -> (epoch the WAL's owner held, epoch we fenced it at).
        Records of those streams written at the held epoch or later are the owner's and are
        uploaded at the new epoch; for every other stream only records at its current epoch count.
        """
        if not records:
            return None
        fenced = fenced or {}
        by_stream: dict[int, list[WalRecord]] = defaultdict(list)
        for r in records:
            by_stream[r.stream_id].append(r)
        batches: dict[int, tuple[int, list[Batch]]] = {}
        for sid, recs in by_stream.items():
            meta = await self.metadata.get_stream(sid)
            if meta is None:
                continue
            held, epoch = fenced.get(sid, (meta.epoch, meta.epoch))
            expected = meta.end_offset
            kept: list[Batch] = []
            for r in recs:
                if r.stream_epoch < held:
                    continue  # written by an owner that was fenced, or already handed over
                if r.base_offset < expected:
                    continue  # already in an object
                if r.base_offset != expected:
                    raise WalCorrupt(f"stream {sid}: WAL record at offset {r.base_offset}, expected {expected}")
                payload = r.payload if r.kind != KIND_REF else await self._resolve_ref(r)
                kept.append(Batch(r.base_offset, r.record_count, payload))
                expected = r.base_offset + r.record_count
            if kept:
                batches[sid] = (epoch, kept)
        await self._upload_recovered(batches)
        return max(r.position + r.frame_size for r in records)

    async def _resolve_ref(self, r: WalRecord) -> bytes:
        """The bytes a REF record stands for, as the leader appended them."""
        rec = RefRecord.decode(r.payload)
        if self.materialize is None:
            raise StorageError(f"stream {r.stream_id}: the WAL holds relayed batches and nothing can read them")
        try:
            raw = await self.shared.read_ref(rec.ref)
        except RelayUnavailable as e:
            # The relay horizon keeps a relay object until every WAL that refers to it is recovered.
            raise WalCorrupt(f"stream {r.stream_id} offset {r.base_offset}: relayed bytes missing: {e}") from e
        self.refs_recovered += 1
        return self.materialize(raw, r.base_offset, rec)

    async def _upload_recovered(self, batches: dict[int, tuple[int, list[Batch]]]) -> None:
        # Bounded objects, so recovering a large WAL does not build one huge object in memory.
        chunk: list[tuple[int, list[Batch]]] = []
        size = 0

        async def put_chunk() -> None:
            nonlocal chunk, size
            if not chunk:
                return
            object_id = await self.metadata.next_object_id()
            key = object_key(object_id)
            built = build_object(((sid, bs) for sid, bs in chunk), self.config.block_size)
            await put_retrying(self.store, key, built.body, self.config.upload_retry_s, self.upload_stats)
            ranges = tuple(StreamRange(sid, batches[sid][0], bs[0].base_offset, bs[-1].end_offset) for sid, bs in chunk)
            sizes = tuple(sum(len(b.payload) for b in bs) for _, bs in chunk)
            commit = ObjectCommit(
                object_id, key, len(built.body), "stream-set", ranges, await body_crc(built.body), sizes
            )
            await self.metadata.commit_objects([commit])
            self.upload_stats.objects += 1
            self.upload_stats.bytes += len(built.body)
            chunk, size = [], 0

        for sid, (_, bs) in batches.items():
            part: list[Batch] = []
            for b in bs:
                part.append(b)
                size += len(b.payload)
                if size >= self.config.max_object_bytes:
                    chunk.append((sid, part))
                    part = []
                    await put_chunk()
            if part:
                chunk.append((sid, part))
        await put_chunk()

    async def take_over_wal(self, wal: WalConfig, streams: dict[int, int] | None = None) -> tuple[int, dict[int, int]]:
        """Upload another owner's WAL into S3, fencing that owner first.

        `streams`: stream id -> the epoch the owner held it at (the controller knows which
        streams a dead broker led). Each is opened at a newer epoch BEFORE the WAL is read, so a
        write the old owner acknowledges must have been durable before the fence, and is read
        here; the `nfs` and `s3` kinds are also fenced at the WAL by its owner epoch. Returns
        (records read, stream id -> epoch it was fenced at).
        """
        fenced: dict[int, tuple[int, int]] = {}
        for sid, held in (streams or {}).items():
            meta = await self.metadata.get_stream(sid)
            if meta is None:
                continue  # never written: nothing to fence or recover
            new = max(meta.epoch, held) + 1
            await self.metadata.open_stream(sid, new)
            fenced[sid] = (held, new)
        other = make_wal(wal, self.config.owner, self.store, self.metadata)
        records = await other.open()
        try:
            # Streams with data in this WAL that the controller did not list are fenced too.
            for sid in {r.stream_id for r in records} - set(fenced):
                meta = await self.metadata.get_stream(sid)
                if meta is not None and any(r.stream_epoch >= meta.epoch for r in records if r.stream_id == sid):
                    await self.metadata.open_stream(sid, meta.epoch + 1)
                    fenced[sid] = (meta.epoch, meta.epoch + 1)
            end = await self._recover(records, fenced)
            if end is not None:
                await other.trim(end)
        finally:
            await other.close()
        return len(records), {sid: new for sid, (_, new) in fenced.items()}

    # --- metrics ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        s3 = self.store.stats.snapshot()
        return {
            "s3_put_requests": s3["put"],
            "s3_put_bytes": s3["put_bytes"],
            "s3_get_requests": s3["get"],
            "s3_get_bytes": s3["get_bytes"],
            "s3_list_requests": s3["list"],
            "s3_delete_requests": s3["delete"],
            "wal_bytes_written": self.wal.stats.bytes_written,
            "wal_syncs": self.wal.stats.syncs,
            "wal_full_waits": self.wal.stats.full_waits,
            "wal_used_bytes": self.wal.used_bytes(),
            "log_cache_bytes": self.log_cache.size,
            "block_cache_bytes": self.block_cache.size,
            "block_cache_hits": self.block_cache.hits,
            "block_cache_misses": self.block_cache.misses,
            "reads_resolved_again": self.reader.resolved_again,
            "uploads": self.upload_stats.uploads,
            "objects_uploaded": self.upload_stats.objects,
            "stream_objects_uploaded": self.upload_stats.stream_objects,
            "upload_failures": self.upload_stats.failures,
            "compaction_runs": self.compactor.stats.runs,
            "compaction_ranges_in": self.compactor.stats.ranges_in,
            "compaction_bytes_read": self.compactor.stats.bytes_read,
            "compaction_ms": int(self.compactor.stats.seconds * 1000),
            "compaction_conflicts": self.compactor.stats.conflicts,
            "gc_objects_deleted": self.gc.stats.deleted,
            "gc_bytes_deleted": self.gc.stats.deleted_bytes,
            "gc_leftovers_deleted": self.gc.stats.leftovers,
            "wal_refs_recovered": self.refs_recovered,
            "shared_reads": self.shared.reads,
            "shared_read_bytes": self.shared.bytes_read,
        }
