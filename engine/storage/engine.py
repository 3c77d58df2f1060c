"""The storage engine: streams on one WAL, uploaded together into stream-set objects.

    append -> WAL (durable) -> ack;  the entry also sits in the log cache
    uploader: the durable prefix of all streams' entries -> ONE stream-set object
              (plus a stream object per very large stream) -> commit -> trim WAL

Entries are uploaded strictly in WAL order, so trimming the WAL to the end of
the last uploaded entry never drops data that is not in S3, and the number of
PUTs per upload does not depend on how many streams wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from engine.storage.cache import BlockCache, CacheEntry, LogCache
from engine.storage.config import StorageConfig, WalConfig
from engine.storage.errors import FencedError, StorageError, WalCorrupt
from engine.storage.metadata import MetadataStore, ObjectCommit, StreamRange
from engine.storage.objects import Batch, build_object, build_object_async
from engine.storage.objectstore import ObjectStore, ObjectStoreError
from engine.storage.reader import ObjectReader
from engine.storage.stream import Stream
from engine.storage.wal.base import Done, Wal, WalRecord
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


@dataclass
class UploadStats:
    uploads: int = 0
    objects: int = 0
    stream_objects: int = 0
    bytes: int = 0
    failures: int = 0


class StorageEngine:
    def __init__(self, config: StorageConfig, store: ObjectStore, metadata: MetadataStore) -> None:
        self.config = config
        self.store = store
        self.metadata = metadata
        self.log_cache = LogCache(config.log_cache_bytes)
        self.block_cache = BlockCache(config.block_cache_bytes)
        self.reader = ObjectReader(store, metadata, self.block_cache, config.readahead_blocks)
        self.wal: Wal = make_wal(config.wal, config.owner, store, metadata)
        self.upload_stats = UploadStats()
        self.streams: dict[int, Stream] = {}
        # Entries in WAL order that are not in S3 yet; the uploader takes a durable prefix.
        self._pending: deque[CacheEntry] = deque()
        self._durable_bytes = 0  # bytes of the durable prefix waiting for upload
        self._seq = 0  # entries submitted
        self._taken_seq = 0  # entries handed to an upload
        self._committed_seq = 0  # entries whose upload is committed
        self._flush_target = 0
        self._oldest_durable_at: float | None = None
        self._wake = asyncio.Event()
        self._committed = asyncio.Condition()
        self._uploader: asyncio.Task[None] | None = None
        self._upload_slots = asyncio.Semaphore(config.uploads_in_flight)
        self._last_commit: asyncio.Future[None] | None = None
        self._uploads: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        records = await self.wal.open()
        end = await self._recover(records)
        if end is not None:
            await self.wal.trim(end)
        self._uploader = asyncio.get_running_loop().create_task(self._upload_loop())

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
        for task in [self._uploader, *self._uploads]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.wal.close()
        await self.reader.close()

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
        sid = stream.stream_id
        if any(e.stream_id == sid and not e.dropped for e in self._pending):
            await self.flush()
        stream.mark_closed()
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self.log_cache.forget_stream(stream.stream_id)

    async def release_streams(self, stream_ids: Collection[int]) -> dict[int, int]:
        """Upload what the WAL holds for these streams now, ahead of the rest of the WAL, so that
        another owner can open them; returns the bytes uploaded per stream (never its size).

        Their appends must have finished. The entries stay in the WAL order for trimming: the
        uploader skips their bytes later but trims the WAL past them only after this commit.
        """
        ids = set(stream_ids)
        by_stream: dict[int, list[CacheEntry]] = defaultdict(list)
        for e in self._pending:
            if e.stream_id in ids and not e.dropped:
                if e.wal_end < 0:
                    raise StorageError(f"stream {e.stream_id} has appends in flight")
                by_stream[e.stream_id].append(e)
        previous = self._last_commit
        if not by_stream:
            if previous is not None:
                await previous  # earlier uploads may hold these streams' data: committed first
            return {}
        for entries in by_stream.values():
            for e in entries:
                e.dropped = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_commit = done
        try:
            commits = await self._put_objects(by_stream)
            if previous is not None:
                await previous
            await self._commit(commits, by_stream)
            for sid, entries in by_stream.items():
                stream = self.streams.get(sid)
                if stream is not None:
                    stream.committed_offset = max(stream.committed_offset, entries[-1].batch.end_offset)
        finally:
            done.set_result(None)
        return {sid: sum(len(e.batch.payload) for e in entries) for sid, entries in by_stream.items()}

    # --- the append path (called by Stream) --------------------------------------------------

    def submit(self, entry: CacheEntry, record: WalRecord, done: Done) -> None:
        if self._closed:
            raise StorageError("the storage engine is closed")
        self._seq += 1
        self._pending.append(entry)
        self.log_cache.add(entry)
        self.wal.append(record, done)

    def entry_done(self, entry: CacheEntry) -> None:
        """An entry became durable (or failed): the durable prefix may have grown."""
        if entry.wal_end >= 0:
            self._durable_bytes += len(entry.batch.payload)
            if self._oldest_durable_at is None:
                self._oldest_durable_at = time.monotonic()
        if self._durable_bytes >= self.config.upload_bytes:
            self._wake.set()

    # --- uploads ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Upload and commit everything appended so far."""
        target = self._seq
        if self._committed_seq >= target:
            return
        self.wal.write_now()
        self._flush_target = max(self._flush_target, target)
        self._wake.set()
        async with self._committed:
            await self._committed.wait_for(lambda: self._committed_seq >= target or self._closed)

    def _ready(self) -> bool:
        head = self._pending[0] if self._pending else None
        if head is None or (head.wal_end < 0 and not head.dropped):
            return False
        if self._flush_target > self._taken_seq or self._durable_bytes >= self.config.upload_bytes:
            return True
        started = self._oldest_durable_at
        return started is not None and time.monotonic() - started >= self.config.upload_interval_s

    async def _upload_loop(self) -> None:
        tick = min(0.05, self.config.upload_interval_s / 4)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)
            self._wake.clear()
            while self._ready():
                await self._upload_slots.acquire()
                taken = self._take()
                if not taken:
                    self._upload_slots.release()
                    break
                previous = self._last_commit
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._last_commit = done
                task = asyncio.get_running_loop().create_task(self._upload(taken, previous, done))
                self._uploads.add(task)
                task.add_done_callback(self._upload_finished)

    def _upload_finished(self, task: asyncio.Task[None]) -> None:
        self._uploads.discard(task)
        self._upload_slots.release()

    def _take(self) -> list[CacheEntry]:
        taken: list[CacheEntry] = []
        size = 0
        pending = self._pending
        while pending and (pending[0].wal_end >= 0 or pending[0].dropped) and size < self.config.max_object_bytes:
            e = pending.popleft()
            taken.append(e)
            if e.wal_end >= 0:
                size += len(e.batch.payload)
        self._durable_bytes -= size
        self._taken_seq += len(taken)
        self._oldest_durable_at = time.monotonic() if pending and pending[0].wal_end >= 0 else None
        return taken

    async def _upload(
        self, taken: list[CacheEntry], previous: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> None:
        try:
            by_stream: dict[int, list[CacheEntry]] = defaultdict(list)
            for e in taken:
                if not e.dropped:
                    by_stream[e.stream_id].append(e)
            commits = await self._put_objects(by_stream)
            if previous is not None:
                await previous  # commits go in WAL order
            await self._commit(commits, by_stream)
            for e in taken:
                e.uploaded = True
            for sid, entries in by_stream.items():
                stream = self.streams.get(sid)
                if stream is not None and not entries[0].dropped:
                    stream.committed_offset = max(stream.committed_offset, entries[-1].batch.end_offset)
            self.log_cache.evict()
            wal_end = max((e.wal_end for e in taken), default=-1)
            if wal_end >= 0:
                await self.wal.trim(wal_end)
            self._committed_seq += len(taken)
            async with self._committed:
                self._committed.notify_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only a bug gets here (S3 errors are retried, fenced streams dropped): say so loudly.
            log.exception("upload failed; its data stays in the WAL for recovery")
            raise
        finally:
            if not done.done():
                done.set_result(None)

    async def _put_objects(self, by_stream: dict[int, list[CacheEntry]]) -> list[ObjectCommit]:
        """Build and PUT one stream-set object, plus a stream object per stream over the threshold."""
        groups: list[tuple[str, list[int]]] = []
        small: list[int] = []
        for sid, entries in by_stream.items():
            if sum(len(e.batch.payload) for e in entries) >= self.config.stream_object_bytes:
                groups.append(("stream", [sid]))
            else:
                small.append(sid)
        if small:
            groups.insert(0, ("stream-set", small))
        commits: list[ObjectCommit] = []
        puts = []
        for kind, sids in groups:
            object_id = await self.metadata.next_object_id()
            key = f"objects/{object_id:012d}"
            streams = [(sid, [e.batch for e in by_stream[sid]]) for sid in sids]
            built = await build_object_async(streams, self.config.block_size)
            ranges = tuple(
                StreamRange(
                    sid,
                    self._epoch_of(sid),
                    by_stream[sid][0].batch.base_offset,
                    by_stream[sid][-1].batch.end_offset,
                )
                for sid in sids
            )
            commits.append(ObjectCommit(object_id, key, len(built.body), kind, ranges))
            puts.append(self._put_retrying(key, built.body))
            self.upload_stats.objects += 1
            self.upload_stats.stream_objects += kind == "stream"
            self.upload_stats.bytes += len(built.body)
        await asyncio.gather(*puts)
        self.upload_stats.uploads += 1
        return commits

    def _epoch_of(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StorageError(f"stream {stream_id} has pending data but is not open")
        return stream.epoch

    async def _put_retrying(self, key: str, body: bytes) -> None:
        while True:
            try:
                await self.store.put(key, body)
                return
            except ObjectStoreError as e:
                # The data stays in the WAL; when the WAL fills, appends wait. Nothing is lost.
                self.upload_stats.failures += 1
                log.warning("upload of %s failed, retrying: %s", key, e)
                await asyncio.sleep(self.config.upload_retry_s)

    async def _commit(self, commits: list[ObjectCommit], by_stream: dict[int, list[CacheEntry]]) -> None:
        while commits:
            try:
                await self.metadata.commit_objects(commits)
                return
            except FencedError as e:
                # Another owner opened some of these streams: their data must not become visible.
                ids = {r.stream_id for c in commits for r in c.ranges}
                self.metadata.refresh_epochs()
                epochs = self.metadata.current_epochs(ids)
                fenced = {r.stream_id for c in commits for r in c.ranges if epochs[r.stream_id] != r.epoch}
                if not fenced:
                    raise
                for sid in fenced:
                    for entry in by_stream.get(sid, []):
                        entry.dropped = True
                    stream = self.streams.get(sid)
                    if stream is not None:
                        stream.fence(FencedError(str(e)))
                commits = [
                    ObjectCommit(c.object_id, c.key, c.size, c.kind, rs)
                    for c in commits
                    if (rs := tuple(r for r in c.ranges if r.stream_id not in fenced))
                ]

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
                kept.append(Batch(r.base_offset, r.record_count, r.payload))
                expected = r.base_offset + r.record_count
            if kept:
                batches[sid] = (epoch, kept)
        await self._upload_recovered(batches)
        return max(r.position + r.frame_size for r in records)

    async def _upload_recovered(self, batches: dict[int, tuple[int, list[Batch]]]) -> None:
        # Bounded objects, so recovering a large WAL does not build one huge object in memory.
        chunk: list[tuple[int, list[Batch]]] = []
        size = 0

        async def put_chunk() -> None:
            nonlocal chunk, size
            if not chunk:
                return
            object_id = await self.metadata.next_object_id()
            key = f"objects/{object_id:012d}"
            built = build_object(((sid, bs) for sid, bs in chunk), self.config.block_size)
            await self._put_retrying(key, built.body)
            ranges = tuple(StreamRange(sid, batches[sid][0], bs[0].base_offset, bs[-1].end_offset) for sid, bs in chunk)
            await self.metadata.commit_objects([ObjectCommit(object_id, key, len(built.body), "stream-set", ranges)])
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
            "uploads": self.upload_stats.uploads,
            "objects_uploaded": self.upload_stats.objects,
            "stream_objects_uploaded": self.upload_stats.stream_objects,
            "upload_failures": self.upload_stats.failures,
        }
