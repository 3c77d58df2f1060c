"""A stream: the ordered, offset-addressed log behind one Kafka partition.

Offsets are handed out when append() is called, in call order; the append's
future resolves once the WAL says the batch is durable (and this owner was not
fenced meanwhile). Readers see only durable data: `end_offset` is the first
offset not yet acknowledged.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from engine.storage.cache import CacheEntry, StreamCache
from engine.storage.errors import FencedError, OffsetOutOfRange, StorageError, StreamClosed
from engine.storage.metadata.interface import StreamMeta
from engine.storage.objects.format import Batch
from engine.storage.relay import RefRecord
from engine.storage.wal.base import KIND_REF, Done, WalRecord


class StreamHost(Protocol):
    """What a stream needs from the engine it lives in (StorageEngine; tests may bring their own)."""

    def stream_cache(self, stream_id: int) -> StreamCache:
        """The stream's part of the log cache: its appends not yet evicted."""
        ...

    def submit(self, entry: CacheEntry, record: WalRecord, done: Done) -> None:
        """Write `record` to the WAL; `done` is called once it is durable (or failed)."""
        ...

    def entry_done(self, entry: CacheEntry) -> None: ...

    def current_epoch(self, stream_id: int) -> int:
        """The stream's epoch as the metadata last said; cheap (called for every acknowledgement)."""
        ...

    async def read_objects(self, stream_id: int, offset: int, max_bytes: int, end: int) -> list[Batch]:
        """Committed batches from S3, from the one holding `offset`, below `end`."""
        ...

    async def trim_stream(self, stream_id: int, epoch: int, new_start: int) -> None: ...

    async def close_stream(self, stream: Stream) -> None: ...


class Stream:
    def __init__(self, engine: StreamHost, meta: StreamMeta) -> None:
        self._engine = engine
        self.stream_id = meta.stream_id
        self.epoch = meta.epoch
        self.start_offset = meta.start_offset
        # The engine recovers and uploads its WAL before any stream opens, so the committed end is the end.
        self.committed_offset = meta.end_offset
        self.next_offset = meta.end_offset
        self.end_offset = meta.end_offset
        self._error: StorageError | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._cache = engine.stream_cache(self.stream_id)

    @property
    def closed(self) -> bool:
        """Takes no more appends (closed, fenced or failed)."""
        return self._error is not None

    @property
    def fenced(self) -> bool:
        return isinstance(self._error, FencedError)

    def append(
        self, payload: bytes, record_count: int, ref: RefRecord | None = None, sync_path: str | None = None
    ) -> asyncio.Future[int]:
        """Append a batch of `record_count` records; resolves to its base offset once durable.

        With `ref` the bytes are in a relay object: the WAL gets only the reference, readers and
        the uploader get `payload` from the log cache. `sync_path`: the relay file is not durable
        yet, and the WAL syncs it before the reference (engine/storage/wal/base.py).
        """
        if record_count <= 0:
            raise ValueError("a batch holds at least one record")
        if self._error is not None:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            fut.set_exception(self._error)
            return fut
        base = self.next_offset
        self.next_offset += record_count
        entry = CacheEntry(self.stream_id, Batch(base, record_count, payload), ref=ref)
        if ref is None:
            record = WalRecord(self.stream_id, self.epoch, base, record_count, payload)
        else:
            record = WalRecord(
                self.stream_id, self.epoch, base, record_count, ref.encode(), kind=KIND_REF, sync_path=sync_path
            )
        entry.wal_frame = record.frame_size
        result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._engine.submit(
            entry,
            record,
            lambda end, err: self._on_durable(end, err, entry, result),
        )
        return result

    def _on_durable(self, end: int, err: BaseException | None, entry: CacheEntry, result: asyncio.Future[int]) -> None:
        if err is None and self._error is None:
            current = self._engine.current_epoch(self.stream_id)
            if current != self.epoch:
                err = FencedError(f"stream {self.stream_id}: epoch {self.epoch} was fenced by epoch {current}")
        if err is None and self._error is not None:
            err = self._error
        if err is not None:
            # Offsets after a failed append would leave a hole: the stream takes no more appends.
            if self._error is None:
                self._error = err if isinstance(err, StorageError) else StorageError(str(err))
            entry.dropped = True
            self._engine.entry_done(entry)
            if not result.done():
                result.set_exception(self._error)
            return
        entry.wal_end = end
        self.end_offset = entry.batch.end_offset
        self._engine.entry_done(entry)
        if not result.done():
            result.set_result(entry.batch.base_offset)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def add_data_waiter(self, fut: asyncio.Future[None]) -> None:
        """Resolve `fut` when new data becomes readable (or the stream stops taking data).

        One future can wait on many streams: a long-polling fetch needs no task per partition.
        """
        if self._error is not None:
            if not fut.done():
                fut.set_result(None)
            return
        if len(self._waiters) > 64:
            # Fetches that timed out leave their futures behind on quiet streams.
            self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(fut)

    async def read(self, offset: int, max_bytes: int = 1 << 20) -> list[Batch]:
        """Durable batches from the one holding `offset`; at least one if any, then up to max_bytes."""
        if offset < self.start_offset or offset > self.end_offset:
            raise OffsetOutOfRange(self.stream_id, offset, self.start_offset, self.end_offset)
        if offset == self.end_offset:
            return []
        out: list[Batch] = []
        first_cached = self._cache.first_offset()
        if first_cached is None or offset < first_cached:
            out = await self._engine.read_objects(self.stream_id, offset, max_bytes, self.committed_offset)
            size = sum(len(b.payload) for b in out)
            if out:
                offset = out[-1].end_offset
            if size >= max_bytes or offset >= self.end_offset:
                return out
            max_bytes -= size
        more = self._cache.read(offset, max_bytes, self.end_offset)
        if not out:
            return more
        return out + [b for b in more if b.base_offset >= offset] if more else out

    async def trim(self, new_start: int) -> None:
        """Make offsets below new_start unreadable (Kafka's DeleteRecords)."""
        if new_start > self.end_offset:
            raise OffsetOutOfRange(self.stream_id, new_start, self.start_offset, self.end_offset)
        if new_start <= self.start_offset:
            return
        await self._engine.trim_stream(self.stream_id, self.epoch, new_start)
        self.start_offset = new_start

    async def close(self) -> None:
        """Upload what the WAL holds for this stream, commit it, and let go of the stream."""
        if isinstance(self._error, StreamClosed):
            return
        await self._engine.close_stream(self)

    def mark_closed(self) -> None:
        if self._error is None:
            self._error = StreamClosed(f"stream {self.stream_id} is closed")
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    def fence(self, err: FencedError) -> None:
        if self._error is None or not isinstance(self._error, FencedError):
            self._error = err
