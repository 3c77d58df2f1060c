"""The `file` and `nfs` WALs: a preallocated file used as a ring, with group commit.

Layout of a WAL directory:
    wal.header  owner, epoch and ring size; replaced atomically (write, fsync, rename) on every open
    wal.ring    the ring of frames (see base.py), preallocated to its full size
    wal.trim    the position below which everything is in S3; a hint that shortens recovery

One writer thread takes every append queued since its last write, writes them
with one pwrite per contiguous region and makes them durable with one
fdatasync, then resolves their futures in order (group commit). When the ring
has no room, the writer waits for trim() instead of overwriting data that is
not yet in S3 (backpressure).

The `nfs` kind is the same ring in a directory every broker can reach. Its
header records the owner; a second broker that takes the WAL over replaces the
header with a higher epoch. After every fsync the writer checks that the header
is still its own, so an owner that was taken over never acknowledges a write
the new owner might not have recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.storage.errors import FencedError, StorageError, WalCorrupt
from engine.storage.wal.base import (
    HEADER_SIZE,
    KIND_PAD,
    Done,
    WalRecord,
    WalStats,
    decode_frame,
    encode_header,
    pad_frame,
    sync_relay_files,
)
from engine.util.histogram import now

_SCAN_CHUNK = 8 << 20
_LENGTH = struct.Struct("<I")
_MAX_GROUP_BYTES = 8 << 20

Pending = tuple[WalRecord, Done]
_IOV_MAX = 1024


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class RingWal:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        capacity: int,
        owner: str,
        *,
        next_epoch: Callable[[int], Awaitable[int]] | None = None,
        check_owner: bool = False,
        after_sync: Callable[[], None] | None = None,
    ) -> None:
        """`next_epoch(current)` returns the epoch to open at (the nfs kind asks the metadata store)."""
        if capacity < 1 << 20:
            raise StorageError("the WAL must be at least 1 MiB")
        self.directory = Path(directory)
        self.capacity = capacity
        self.owner = owner
        self._next_epoch = next_epoch
        self._check_owner = check_owner
        self._after_sync = after_sync
        self.stats = WalStats()
        self.epoch = 0
        self._fd = -1
        self._header_ino = 0
        self._write_pos = 0
        self._trim_pos = 0
        self._persisted_trim = 0
        self._queue: list[Pending] = []
        self._cond = threading.Condition()
        self._closing = False
        self._fenced: FencedError | None = None
        self._failed: StorageError | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- open and recovery -----------------------------------------------------------------

    @property
    def header_path(self) -> Path:
        return self.directory / "wal.header"

    def _read_header(self) -> dict[str, object] | None:
        try:
            return dict(json.loads(self.header_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:
            raise WalCorrupt(f"unreadable WAL header {self.header_path}: {e}") from e

    async def open(self) -> list[WalRecord]:
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        header = self._read_header()
        ring = self.directory / "wal.ring"
        if header is None:
            fd = os.open(ring, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, self.capacity)
                os.fsync(fd)
            finally:
                os.close(fd)
            current = 0
        else:
            # The ring's size is fixed at creation; positions would not map otherwise.
            self.capacity = int(header["capacity"])  # type: ignore[call-overload]
            current = int(header["epoch"])  # type: ignore[call-overload]
        epoch = current + 1 if self._next_epoch is None else await self._next_epoch(current)
        if epoch <= current:
            raise FencedError(f"WAL {self.directory}: epoch {epoch} is not newer than the header's {current}")
        self.epoch = epoch
        # The new header goes down before the ring is read: an older owner that fsyncs after this
        # point sees the change and does not acknowledge, and anything it acknowledged before is
        # already in the ring for the scan below.
        _write_atomically(
            self.header_path,
            json.dumps({"owner": self.owner, "epoch": epoch, "capacity": self.capacity, "version": 1}).encode(),
        )
        self._header_ino = os.stat(self.header_path).st_ino
        self._fd = os.open(ring, os.O_RDWR)
        trim = 0
        with contextlib.suppress(FileNotFoundError, ValueError):
            trim = int((self.directory / "wal.trim").read_text())
        records, end = await asyncio.to_thread(self._scan, trim)
        self._trim_pos = self._persisted_trim = trim
        self._write_pos = end
        self._thread = threading.Thread(target=self._writer, name=f"wal-{self.directory.name}", daemon=True)
        self._thread.start()
        return records

    def _phys(self, pos: int) -> int:
        return pos % self.capacity

    def _scan(self, start: int) -> tuple[list[WalRecord], int]:
        records: list[WalRecord] = []
        pos = start
        last_epoch = 0
        buf = b""
        buf_start = -1  # logical position of buf[0]
        while pos - start < self.capacity:
            lap_left = self.capacity - self._phys(pos)
            if lap_left < HEADER_SIZE:
                pos += lap_left
                continue
            at = pos - buf_start
            if buf_start < 0 or at < 0 or at + HEADER_SIZE > len(buf):
                buf = os.pread(self._fd, min(_SCAN_CHUNK, lap_left), self._phys(pos))
                buf_start, at = pos, 0
            (length,) = _LENGTH.unpack_from(buf, at + 4)
            if at + HEADER_SIZE + length > len(buf):
                if HEADER_SIZE + length > lap_left:
                    break  # garbage length: the tail of the log
                buf = os.pread(self._fd, max(HEADER_SIZE + length, min(_SCAN_CHUNK, lap_left)), self._phys(pos))
                buf_start, at = pos, 0
            frame = decode_frame(buf, at, pos)
            if frame is None or frame.wal_epoch < last_epoch or frame.wal_epoch >= self.epoch:
                break
            last_epoch = frame.wal_epoch
            if frame.kind == KIND_PAD:
                pos += lap_left
                continue
            records.append(frame.record)
            pos += frame.size
        return records, pos

    # --- appends ---------------------------------------------------------------------------

    def append(self, record: WalRecord, done: Done) -> None:
        if self._failed is not None:
            done(-1, self._failed)
            return
        if record.frame_size + HEADER_SIZE > self.capacity:
            done(-1, StorageError(f"a {record.frame_size}-byte record does not fit a {self.capacity}-byte WAL"))
            return
        with self._cond:
            if self._closing:
                done(-1, StorageError("the WAL is closed"))
                return
            self._queue.append((record, done))
            self._cond.notify_all()
        self.stats.records_written += 1

    def write_now(self) -> None:
        """Nothing waits here: the writer thread takes every append as soon as it is free."""

    def used_bytes(self) -> int:
        return self._write_pos - self._trim_pos

    async def trim(self, position: int) -> None:
        with self._cond:
            if position > self._trim_pos:
                self._trim_pos = min(position, self._write_pos)
                self._cond.notify_all()

    def _take_group(self) -> list[Pending] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            # A group must fit the ring with room to spare, or it could wait for space forever.
            limit = min(_MAX_GROUP_BYTES, self.capacity // 4)
            size = 0
            n = 0
            for rec, _ in self._queue:
                size += rec.frame_size
                n += 1
                if size >= limit:
                    break
            group, self._queue = self._queue[:n], self._queue[n:]
            return group

    def _needed(self, pos: int, group: list[Pending]) -> int:
        end = pos
        for rec, _ in group:
            lap_left = self.capacity - self._phys(end)
            if rec.frame_size > lap_left:
                end += lap_left
            end += rec.frame_size
        return end - pos

    def _writer(self) -> None:
        while True:
            group = self._take_group()
            if group is None:
                return
            try:
                ends, synced = self._write_group(group)
            except BaseException as e:
                # Every waiter must hear of the failure, and no later append may succeed: after a
                # failed write or fsync the ring's tail is unknown (fsync errors are not retryable).
                err = e if isinstance(e, StorageError) else StorageError(f"WAL write failed: {e}")
                self._fenced = err if isinstance(err, FencedError) else self._fenced
                self._failed = err
                self._complete(group, None, err)
                continue
            self._complete(group, ends, None, synced)

    def _write_group(self, group: list[Pending]) -> tuple[list[int], tuple[float, int, float | None]]:
        """Write and sync one group: the end position of each record, and (fdatasync seconds, bytes)."""
        need = self._needed(self._write_pos, group)
        with self._cond:
            if self._write_pos + need - self._trim_pos > self.capacity:
                self.stats.full_waits += 1
            while self._write_pos + need - self._trim_pos > self.capacity:
                if self._closing:
                    raise StorageError("the WAL closed while waiting for space")
                self._cond.wait(0.5)
            trim = self._trim_pos
        if self._failed is not None:
            raise self._failed
        pos = self._write_pos
        relay_s = sync_relay_files(rec for rec, _ in group)  # before the REF records that point to them
        # Headers and payloads go to the kernel as one iovec list per contiguous region: no copies.
        regions: list[tuple[int, list[bytes]]] = []
        chunk: list[bytes] = []
        chunk_start = self._phys(pos)
        ends: list[int] = []
        for rec, _ in group:
            lap_left = self.capacity - self._phys(pos)
            if rec.frame_size > lap_left:
                if lap_left >= HEADER_SIZE:
                    chunk.append(pad_frame(pos, self.epoch))
                regions.append((chunk_start, chunk))
                pos += lap_left
                chunk, chunk_start = [], 0
            rec.position = pos
            chunk.append(encode_header(rec, pos, self.epoch))
            chunk.append(rec.payload)
            pos += rec.frame_size
            ends.append(pos)
        regions.append((chunk_start, chunk))
        written = 0
        for offset, parts in regions:
            for i in range(0, len(parts), _IOV_MAX):
                iov = parts[i : i + _IOV_MAX]
                n = os.pwritev(self._fd, iov, offset)
                want = sum(len(b) for b in iov)
                if n != want:
                    raise StorageError(f"short WAL write: {n} of {want} bytes")
                offset += n
                written += n
        started = now()
        os.fdatasync(self._fd)
        synced = (now() - started, written, relay_s)
        self.stats.syncs += 1
        self.stats.bytes_written += written
        if self._check_owner and os.stat(self.header_path).st_ino != self._header_ino:
            raise FencedError(f"WAL {self.directory} was taken over by another owner")
        if self._after_sync is not None:
            self._after_sync()
        self._write_pos = pos
        if trim - self._persisted_trim >= self.capacity // 8:
            self._persist_trim(trim)
        return ends, synced

    def _persist_trim(self, trim: int) -> None:
        if self._check_owner and os.stat(self.header_path).st_ino != self._header_ino:
            return  # a new owner reads the trim hint; never move it under them
        _write_atomically(self.directory / "wal.trim", str(trim).encode())
        self._persisted_trim = trim

    def _complete(
        self,
        group: list[Pending],
        ends: list[int] | None,
        err: BaseException | None,
        synced: tuple[float, int, float | None] | None = None,
    ) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def resolve() -> None:
            if synced is not None:
                self.stats.synced(synced[0], synced[1])  # on the loop: histograms take no lock
                if synced[2] is not None:
                    self.stats.relay_sync_seconds.observe(synced[2])
            for i, (_, done) in enumerate(group):
                if err is not None:
                    done(-1, err)
                elif ends is not None:
                    done(ends[i], None)

        loop.call_soon_threadsafe(resolve)

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                if not self._fenced and self._trim_pos > self._persisted_trim:
                    self._persist_trim(self._trim_pos)
            os.close(self._fd)
            self._fd = -1
