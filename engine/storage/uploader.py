"""The uploader: the durable prefix of every stream's appends -> ONE stream-set object -> commit -> trim WAL.

Entries are uploaded strictly in WAL order, so trimming the WAL to the end of
the last uploaded entry never drops data that is not in S3, and the number of
PUTs per upload does not depend on how many streams wrote. A stream with a lot
of data in one upload gets a stream object of its own beside the stream-set object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import crc32c

from engine.storage.cache import CacheEntry, LogCache
from engine.storage.config import StorageConfig
from engine.storage.errors import FencedError, StorageError
from engine.storage.metadata.interface import MetadataStore, ObjectCommit, ObjectGone, StreamRange
from engine.storage.objects.format import Batch, build_object_async, object_key
from engine.storage.objects.store import ObjectStore, ObjectStoreError
from engine.storage.wal.base import Done, Wal, WalRecord

if TYPE_CHECKING:
    from engine.storage.stream import Stream

log = logging.getLogger(__name__)


@dataclass
class UploadStats:
    uploads: int = 0
    objects: int = 0
    stream_objects: int = 0
    bytes: int = 0
    failures: int = 0


async def put_retrying(store: ObjectStore, key: str, body: bytes, retry_s: float, stats: UploadStats) -> None:
    while True:
        try:
            await store.put(key, body)
            return
        except ObjectStoreError as e:
            # The data stays in the WAL (or the old objects); when the WAL fills, appends wait. Nothing is lost.
            stats.failures += 1
            log.warning("upload of %s failed, retrying: %s", key, e)
            await asyncio.sleep(retry_s)


async def body_crc(body: bytes) -> int:
    # Off the event loop: a 32 MiB object takes milliseconds, which acknowledgements must not wait for.
    return await asyncio.to_thread(crc32c.crc32c, body)


async def put_object(
    store: ObjectStore,
    metadata: MetadataStore,
    config: StorageConfig,
    stats: UploadStats,
    kind: str,
    streams: list[tuple[int, int, list[Batch]]],
    data_ms: int = 0,
) -> ObjectCommit:
    """Build and PUT one object of (stream id, epoch, batches); the commit that would make it visible."""
    object_id = await metadata.next_object_id()
    key = object_key(object_id)
    built = await build_object_async(((sid, bs) for sid, _, bs in streams), config.block_size)
    await put_retrying(store, key, built.body, config.upload_retry_s, stats)
    stats.objects += 1
    stats.stream_objects += kind == "stream"
    stats.bytes += len(built.body)
    return ObjectCommit(
        object_id,
        key,
        len(built.body),
        kind,
        tuple(StreamRange(sid, epoch, bs[0].base_offset, bs[-1].end_offset) for sid, epoch, bs in streams),
        crc=await body_crc(built.body),
        range_sizes=tuple(sum(len(b.payload) for b in bs) for _, _, bs in streams),
        data_ms=data_ms,
    )


class Uploader:
    """Takes appends in WAL order and uploads their durable prefix; see the module docstring."""

    def __init__(
        self,
        config: StorageConfig,
        store: ObjectStore,
        metadata: MetadataStore,
        wal: Wal,
        log_cache: LogCache,
        streams: Mapping[int, Stream],
    ) -> None:
        self.config = config
        self.store = store
        self.metadata = metadata
        self.wal = wal
        self.log_cache = log_cache
        self.streams = streams
        self.stats = UploadStats()
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
        self._loop_task: asyncio.Task[None] | None = None
        self._upload_slots = asyncio.Semaphore(config.uploads_in_flight)
        self._last_commit: asyncio.Future[None] | None = None
        self._uploads: set[asyncio.Task[None]] = set()
        self._closed = False
        # Relayed entries (zone router) until the WAL is trimmed past them: their relay objects
        # must stay until then (relay_floor).
        self._relayed: deque[CacheEntry] = deque()
        self._trimmed = -1

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._upload_loop())

    async def stop(self) -> None:
        """Abandon uploads in flight, as a crash would: the WAL still holds their data."""
        self._closed = True
        async with self._committed:
            self._committed.notify_all()
        for task in [self._loop_task, *self._uploads]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- the append path -------------------------------------------------------------------

    def submit(self, entry: CacheEntry, record: WalRecord, done: Done) -> None:
        self._seq += 1
        self._pending.append(entry)
        if entry.ref is not None:
            self._relayed.append(entry)
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

    def oldest_relay_ms(self) -> int | None:
        """Creation time of the oldest relay object the WAL still refers to, or None."""
        relayed = self._relayed
        while relayed and (0 <= relayed[0].wal_end <= self._trimmed or (relayed[0].wal_end < 0 and relayed[0].dropped)):
            relayed.popleft()
        return min((e.ref.ref.created_ms for e in relayed), default=None)  # type: ignore[attr-defined]

    def has_pending(self, stream_id: int) -> bool:
        """Whether the stream has appends not uploaded yet."""
        return any(e.stream_id == stream_id and not e.dropped for e in self._pending)

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
            await self._put_and_commit(by_stream, previous)
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
                self._trimmed = max(self._trimmed, wal_end)
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
            await self._put_and_commit(by_stream, previous)
            for sid, entries in by_stream.items():
                stream = self.streams.get(sid)
                if stream is not None:
                    stream.committed_offset = max(stream.committed_offset, entries[-1].batch.end_offset)
        finally:
            done.set_result(None)
        return {sid: sum(len(e.batch.payload) for e in entries) for sid, entries in by_stream.items()}

    async def _put_and_commit(
        self, by_stream: dict[int, list[CacheEntry]], previous: asyncio.Future[None] | None
    ) -> None:
        """PUT the objects, then commit them after the upload before (commits go in WAL order)."""
        commits = await self._put_objects(by_stream)
        if previous is not None:
            await previous
        while True:
            try:
                await self._commit(commits, by_stream)
                return
            except ObjectGone:
                # Garbage collection gave the objects up (the PUTs outlasted its timeout): again.
                log.warning("an upload took longer than storage.prepared_timeout_s; uploading it again")
                # Fenced meanwhile (their entries dropped by _commit): not again.
                by_stream = {s: es for s, es in by_stream.items() if s in self.streams and not self.streams[s].fenced}
                commits = await self._put_objects(by_stream)

    async def _put_objects(self, by_stream: dict[int, list[CacheEntry]]) -> list[ObjectCommit]:
        """One stream-set object, plus a stream object per stream over the threshold, PUT in parallel."""
        groups: list[tuple[str, list[int]]] = []
        small: list[int] = []
        for sid, entries in by_stream.items():
            if sum(len(e.batch.payload) for e in entries) >= self.config.stream_object_bytes:
                groups.append(("stream", [sid]))
            else:
                small.append(sid)
        if small:
            groups.insert(0, ("stream-set", small))
        puts = [
            put_object(
                self.store,
                self.metadata,
                self.config,
                self.stats,
                kind,
                [(sid, self._epoch_of(sid), [e.batch for e in by_stream[sid]]) for sid in sids],
            )
            for kind, sids in groups
        ]
        commits = list(await asyncio.gather(*puts))
        self.stats.uploads += 1
        return commits

    def _epoch_of(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StorageError(f"stream {stream_id} has pending data but is not open")
        return stream.epoch

    async def _commit(self, commits: list[ObjectCommit], by_stream: dict[int, list[CacheEntry]]) -> None:
        while commits:
            try:
                await self.metadata.commit_objects(commits)
                return
            except FencedError as e:
                # Another owner opened some of these streams (or their topic was deleted): their
                # data must not become visible.
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
                    ObjectCommit(c.object_id, c.key, c.size, c.kind, rs, c.crc, sizes, c.data_ms)
                    for c in commits
                    if (
                        kept := [
                            (r, n)
                            for r, n in zip(c.ranges, c.range_sizes, strict=True)
                            if r.stream_id not in fenced
                        ]
                    )
                    for rs, sizes in [(tuple(r for r, _ in kept), tuple(n for _, n in kept))]
                ]
