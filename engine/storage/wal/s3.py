"""The `s3` WAL: frames batched into WAL objects written straight to S3.

No extra component, at the price of latency: an append is durable once the PUT
of the WAL object that holds it succeeded. A batch goes up when it reaches
`batch_bytes` or when its oldest append has waited `batch_interval_s`. PUTs
may overlap, but appends are acknowledged in order. trim() deletes WAL objects
whose frames are all in stream-set objects.

Keys: wal/<wal id>/<epoch, 10 digits>-<first position, 20 digits>, so a
listing returns them in write order and tells which owner wrote them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Callable

from engine.storage.errors import FencedError, StorageError
from engine.storage.objects.store import ObjectStore, ObjectStoreError
from engine.storage.wal.base import Done, WalRecord, WalStats, decode_frame, encode_frame
from engine.util.histogram import now

log = logging.getLogger(__name__)

Pending = tuple[WalRecord, Done]


class S3Wal:
    def __init__(
        self,
        store: ObjectStore,
        wal_id: str,
        owner: str,
        *,
        next_epoch: Callable[[int], Awaitable[int]] | None = None,
        still_owner: Callable[[int], Awaitable[bool]] | None = None,
        batch_interval_s: float = 0.25,
        batch_bytes: int = 8 << 20,
        max_inflight: int = 4,
        retry_backoff_s: float = 0.5,
        after_sync: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.prefix = f"wal/{wal_id}/"
        self.owner = owner
        self._next_epoch = next_epoch
        self._still_owner = still_owner
        self.batch_interval_s = batch_interval_s
        self.batch_bytes = batch_bytes
        self.retry_backoff_s = retry_backoff_s
        self._after_sync = after_sync
        self.stats = WalStats()
        self.epoch = 0
        self._pos = 0
        self._trim_pos = 0
        self._buffer: list[Pending] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushed_at = float("-inf")  # loop time of the last batch written
        self._inflight = asyncio.Semaphore(max_inflight)
        self._last_flush: asyncio.Task[None] | None = None
        self._objects: list[tuple[str, int]] = []  # (key, end position), in write order
        self._failed: StorageError | None = None
        self._closing = False

    async def open(self) -> list[WalRecord]:
        listed = await self.store.list(self.prefix)
        keys = sorted(o.key for o in listed)
        current = max((int(k[len(self.prefix) :].split("-")[0]) for k in keys), default=0)
        epoch = current + 1 if self._next_epoch is None else await self._next_epoch(current)
        if epoch <= current:
            raise FencedError(f"WAL {self.prefix}: epoch {epoch} is not newer than {current}")
        self.epoch = epoch
        records: list[WalRecord] = []
        for key in sorted(keys, key=lambda k: int(k.rsplit("-", 1)[1])):
            start = int(key.rsplit("-", 1)[1])
            body = await self.store.get(key)
            at, pos = 0, start
            while at < len(body):
                frame = decode_frame(body, at, pos)
                if frame is None:
                    raise StorageError(f"WAL object {key} is corrupt at byte {at}")
                records.append(frame.record)
                at += frame.size
                pos += frame.size
            self._objects.append((key, pos))
            self._pos = max(self._pos, pos)
        return records

    def append(self, record: WalRecord, done: Done) -> None:
        loop = asyncio.get_running_loop()
        if self._failed is not None:
            done(-1, self._failed)
            return
        if self._closing:
            done(-1, StorageError("the WAL is closed"))
            return
        if record.sync_path is not None:
            # s3 relays are PUT before they are referenced: a file to sync means a misconfiguration.
            done(-1, StorageError("an s3 WAL cannot make a relay file durable"))
            return
        self._buffer.append((record, done))
        self._buffered += record.frame_size
        self.stats.records_written += 1
        if self._buffered >= self.batch_bytes:
            self._flush()
        elif self._timer is None:
            # At most one batch per interval, as before; but the first append after a quiet
            # interval goes out at once instead of waiting a whole interval for company.
            wait = self._flushed_at + self.batch_interval_s - loop.time()
            if wait <= 0:
                self._flush()
            else:
                self._timer = loop.call_later(wait, self._flush)

    def write_now(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        self._flushed_at = asyncio.get_running_loop().time()
        group, self._buffer, self._buffered = self._buffer, [], 0
        start = self._pos
        parts: list[bytes] = []
        ends: list[int] = []
        for rec, _ in group:
            rec.position = self._pos
            parts.append(encode_frame(rec, self._pos, self.epoch))
            self._pos += rec.frame_size
            ends.append(self._pos)
        key = f"{self.prefix}{self.epoch:010d}-{start:020d}"
        previous = self._last_flush
        self._last_flush = asyncio.get_running_loop().create_task(
            self._put(key, b"".join(parts), group, ends, previous)
        )

    async def _put(
        self, key: str, body: bytes, group: list[Pending], ends: list[int], previous: asyncio.Task[None] | None
    ) -> None:
        err: StorageError | None = None
        async with self._inflight:
            started = now()  # the group's durable write: its PUT, retries included
            while True:
                try:
                    await self.store.put(key, body)
                    break
                except ObjectStoreError as e:
                    if self._closing:
                        err = StorageError(f"WAL object {key} not written: {e}")
                        break
                    # Not durable yet, so not acknowledged: keep trying until S3 is back.
                    log.warning("WAL PUT %s failed, retrying: %s", key, e)
                    await asyncio.sleep(self.retry_backoff_s)
            put_s = now() - started
        if err is None and self._still_owner is not None and not await self._still_owner(self.epoch):
            err = FencedError(f"WAL {self.prefix} was taken over by another owner")
            self._failed = err
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        if err is None and self._after_sync is not None:
            self._after_sync()
        if err is None:
            self.stats.bytes_written += len(body)
            self.stats.syncs += 1
            self.stats.synced(put_s, len(body))
            self._objects.append((key, ends[-1]))
        for i, (_, done) in enumerate(group):
            if err is not None:
                done(-1, err)
            else:
                done(ends[i], None)

    def locate(self, position: int) -> tuple[str, int] | None:
        """(WAL object key, byte offset in it) of the frame at `position`, if the object is still there."""
        i = bisect.bisect_right(self._objects, position, key=lambda o: o[1])
        if i >= len(self._objects):
            return None
        key = self._objects[i][0]
        start = int(key.rsplit("-", 1)[1])
        return (key, position - start) if start <= position else None

    def used_bytes(self) -> int:
        return self._pos - self._trim_pos

    async def trim(self, position: int) -> None:
        self._trim_pos = max(self._trim_pos, position)
        done = [key for key, end in self._objects if end <= self._trim_pos]
        if not done:
            return
        self._objects = [(k, e) for k, e in self._objects if e > self._trim_pos]
        try:
            await self.store.delete(done)
        except ObjectStoreError as e:
            # Harmless: recovery skips frames whose offsets are already committed.
            log.warning("could not delete trimmed WAL objects: %s", e)

    async def close(self) -> None:
        self._flush()
        self._closing = True
        if self._last_flush is not None:
            with contextlib.suppress(BaseException):
                await self._last_flush
