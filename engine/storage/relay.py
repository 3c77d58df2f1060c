"""The relay: batches a zone proxy made durable in shared storage for a leader in another zone.

The zone router (docs/zones.md) lets a client produce to a broker of its own zone for a
partition led in another zone. That broker (the partition's zone proxy) writes the
client's batches into a relay object in shared storage and sends the leader only a
`RelayRef` (where the bytes are, their CRC); the leader reads them from shared storage,
gives them offsets and writes only a small reference into its own WAL (kind REF). So the
bytes cross no zone boundary and are written once to the WAL tier, once to S3 objects.

Relay objects are immutable and named by the proxy's clock (`relay/<wal id>/<ms>-<seq>`):
an S3 object with the `s3` WAL, a file beside the `nfs` WALs with the `nfs` WAL. A leader
accepts a reference only while the object is younger than ACCEPT_WINDOW_MS, and until the
data is in S3 it reports the oldest relay object its WAL still needs. The controller turns
these reports into a horizon (docs/zones.md), and a proxy deletes its relay objects older
than the horizon: every reference to them is then uploaded, refused or impossible.

Locations: where a leader's durable tail can be read by another broker of any zone without
asking the leader for the bytes: a relay object, a frame of an `nfs` WAL ring, or a frame of
an `s3` WAL object. A frame is read with its header and checked (position and CRC), so a
frame that was overwritten by a later lap of the ring reads as gone, never as other data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import crc32c
import msgspec

from engine.storage.objects.store import ObjectStore, ObjectStoreError
from engine.storage.wal.base import decode_frame
from engine.util.histogram import Histogram

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A leader refuses a reference to a relay object older than this (by the object's name).
ACCEPT_WINDOW_MS = 15_000
#: A proxy deletes a relay object only this long after the horizon passed it (clock skew).
DELETE_MARGIN_MS = 5_000
_MAX_GROUP_BYTES = 16 << 20
_INLINE_READ_MAX = 1 << 20
#: Files a SharedReader keeps open, and for how long one may stay open unused.
_OPEN_FILES = 32
_OPEN_IDLE_S = 10.0
#: Largest read a reference may ask for (a produce request's batches for one partition).
MAX_RELAY_READ = 128 << 20
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.=-]*"
_RELAY_KEY = re.compile(rf"relay/{_NAME}/\d{{13}}-\d{{8}}")
_FRAME_KEY = re.compile(rf"(?:{_NAME}/wal\.ring|wal/{_NAME}/\d{{10}}-\d{{20}})")
#: The `nfs` relay appends to a segment file for this long (or this many bytes), then starts the
#: next: one fdatasync per group commit, a directory sync only per segment. Much shorter than
#: ACCEPT_WINDOW_MS, which counts from the segment's creation (its name).
SEGMENT_MS = 1_000
# Preallocated (as the WAL ring is), so that an fdatasync of a write inside it has no file size to
# commit: measured here under another process's fsyncs, p50 0.32-0.36 ms against 0.41-0.44 appending.
SEGMENT_BYTES = 8 << 20


class RelayRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a relayed batch's bytes are: `key` in the shared storage, [offset, offset+length)."""

    key: str
    offset: int
    length: int
    crc: int

    @property
    def created_ms(self) -> int:
        return relay_created_ms(self.key)


class RefRecord(msgspec.Struct, frozen=True, array_like=True):
    """A WAL record of kind REF: the relayed bytes and how the leader changed them.

    The relay object keeps the batches as the client sent them; the leader gave them offsets
    (the record's base offset), its leader epoch and, for LogAppendTime topics, the append
    time. Recovery reads the bytes and makes the same changes again.
    """

    ref: RelayRef
    leader_epoch: int
    log_append_time: int = -1

    def encode(self) -> bytes:
        return _REF_ENCODER.encode(self)

    @staticmethod
    def decode(data: bytes) -> RefRecord:
        return _REF_DECODER.decode(data)


_REF_ENCODER = msgspec.msgpack.Encoder()
_REF_DECODER = msgspec.msgpack.Decoder(RefRecord)

#: Gives relayed bytes their offsets etc. as the leader did (the broker supplies it: it is Kafka's format).
Materialize = Callable[[bytes, int, RefRecord], bytes]


class Location(msgspec.Struct, frozen=True, array_like=True):
    """Bytes of a durable tail entry in shared storage (see the module docstring).

    kind "relay": `ref` holds the client's batches as sent; the reader gives them the entry's
    offsets, leader epoch and append time. kind "ring"/"s3wal": a WAL frame at `offset` of `key`
    (`length` bytes, header included) whose logical position is `position`.
    """

    kind: str
    key: str
    offset: int
    length: int
    position: int = -1
    crc: int = 0


class RelayUnavailable(Exception):
    """The bytes are no longer where the reference says (uploaded and trimmed, or deleted)."""


def relay_created_ms(key: str) -> int:
    try:
        return int(key.rsplit("/", 1)[-1].split("-", 1)[0])
    except ValueError:
        return 0


class InlineGate:
    """Whether small reads and relay writes of a shared file system stay on the loop's thread.

    On a fast one an operation costs less than the two thread hops that would carry it (p99 3-6 ms
    each way on a busy host, BENCHMARKS.md); a slow one (a remote NFS) would stall the loop, so
    while the moving average of inline operations is over `bar_s` the next thousand go to a
    thread, then the loop tries again. One sample counts for at most 10 ms: a single stall (a GIL
    wait, the CPU taken away, an fdatasync's tail: p99 5-10 ms here) is not a slow file system
    (profiled: a quarter of a zones.py run's relay reads had gone through threads after such
    stalls), while one slow at every operation still crosses the bar within a few dozen.
    """

    def __init__(self, bar_s: float = 0.002) -> None:
        self.bar_s = bar_s
        self.average_s = 0.0
        self._in_thread = 0

    @property
    def inline(self) -> bool:
        return self._in_thread <= 0

    def took(self, seconds: float) -> None:
        """An operation done on the loop took `seconds`."""
        self.average_s = 0.95 * self.average_s + 0.05 * min(seconds, 0.010)
        if self.average_s > self.bar_s:
            self._in_thread = 1000

    def threaded(self) -> None:
        """An operation went to a thread instead."""
        self._in_thread -= 1


class SharedReader:
    """Reads relay objects and WAL frames of any broker from shared storage."""

    def __init__(self, kind: str, store: ObjectStore, nfs_root: str | None) -> None:
        self.kind = kind
        self.store = store
        self.root = Path(nfs_root) if nfs_root else None
        # Paths as strings joined by hand: pathlib cost more than the read (a profiled zones.py run).
        self._prefix = os.path.join(nfs_root, "") if nfs_root else ""
        self.bytes_read = 0
        self.reads = 0
        self.gate = InlineGate()
        # Open files by path, least recently used first: an open per read cost more than the read
        # (and, under other processes' fsyncs, often pushed reads into threads).
        self._fds: OrderedDict[str, tuple[int, float]] = OrderedDict()

    async def read_ref(self, ref: RelayRef) -> bytes:
        now = self.read_ref_now(ref)
        if now is not None:
            return now
        return self._checked_ref(ref, await self._read(ref.key, ref.offset, ref.length))

    def read_ref_now(self, ref: RelayRef) -> bytes | None:
        """read_ref without waiting, when the read can be done on the loop (a fast `nfs`); else None.
        Each await of a task costs a turn of the event loop, and a relayed batch is read on the
        produce path."""
        if not _RELAY_KEY.fullmatch(ref.key) or ref.offset < 0 or not 0 < ref.length <= MAX_RELAY_READ:
            # References arrive over the network: never a path outside the relay objects.
            raise RelayUnavailable(f"not a relay reference: {ref.key!r}@{ref.offset}+{ref.length}")
        body = self._read_now(ref.key, ref.offset, ref.length)
        return None if body is None else self._checked_ref(ref, body)

    def relay_path(self, ref: RelayRef) -> str:
        """The file of an `nfs` relay reference (for the WAL to sync), checked as reads are."""
        if self.kind != "nfs" or self.root is None:
            raise RelayUnavailable("only an nfs relay can be synced by the leader")
        if not _RELAY_KEY.fullmatch(ref.key):
            raise RelayUnavailable(f"not a relay reference: {ref.key!r}")
        return self._prefix + ref.key

    @staticmethod
    def _checked_ref(ref: RelayRef, body: bytes) -> bytes:
        if len(body) != ref.length or crc32c.crc32c(body) != ref.crc:
            raise RelayUnavailable(f"relay {ref.key}@{ref.offset}: not the bytes the proxy wrote")
        return body

    async def read_frame(self, loc: Location) -> bytes:
        """The payload of the WAL frame at `loc`, or RelayUnavailable if it is gone or overwritten."""
        now = self.read_frame_now(loc)
        if now is not None:
            return now
        return self._frame_payload(loc, await self._read(loc.key, loc.offset, loc.length))

    def read_frame_now(self, loc: Location) -> bytes | None:
        """read_frame without waiting, when the read can be done on the loop; else None."""
        if not _FRAME_KEY.fullmatch(loc.key) or loc.offset < 0 or not 0 < loc.length <= MAX_RELAY_READ:
            raise RelayUnavailable(f"not a WAL frame location: {loc.key!r}@{loc.offset}+{loc.length}")
        body = self._read_now(loc.key, loc.offset, loc.length)
        return None if body is None else self._frame_payload(loc, body)

    @staticmethod
    def _frame_payload(loc: Location, body: bytes) -> bytes:
        frame = decode_frame(body, 0, loc.position)
        if frame is None:
            raise RelayUnavailable(f"WAL frame {loc.key}@{loc.offset} (position {loc.position}) is gone")
        return frame.record.payload

    def _read_now(self, key: str, offset: int, length: int) -> bytes | None:
        """The bytes, read on the loop, when the file system is fast and the read small; else None."""
        if self.kind == "s3" or length > _INLINE_READ_MAX or not self.gate.inline:
            return None
        assert self.root is not None
        path = self._prefix + key
        start = time.perf_counter()
        try:
            body = self._pread_cached(path, offset, length)
        except OSError as e:
            raise RelayUnavailable(f"{path}: {e}") from e
        self.gate.took(time.perf_counter() - start)
        self.reads += 1
        self.bytes_read += len(body)
        return body

    async def _pread(self, path: str, offset: int, length: int) -> bytes:
        """A read _read_now left (large, or while the gate sends reads to a thread), in a thread."""
        self.gate.threaded()
        return await asyncio.to_thread(_pread, path, offset, length)

    def _pread_cached(self, path: str, offset: int, length: int) -> bytes:
        now_s = time.monotonic()
        fd = self._fd_for(path, now_s)
        if os.fstat(fd).st_nlink == 0:
            # Deleted (or replaced by a new file of the same name) since it was opened: what is
            # there now is the truth, and FileNotFoundError if nothing is.
            self._drop_fd(path)
            fd = self._fd_for(path, now_s)
        return os.pread(fd, length, offset)

    def _fd_for(self, path: str, now_s: float) -> int:
        got = self._fds.get(path)
        if got is not None:
            self._fds[path] = (got[0], now_s)
            self._fds.move_to_end(path)
            return got[0]
        fd = os.open(path, os.O_RDONLY)
        self._fds[path] = (fd, now_s)
        # Keep few, and none idle for long: a deleted relay object's space is freed only on close.
        while len(self._fds) > _OPEN_FILES or next(iter(self._fds.values()))[1] < now_s - _OPEN_IDLE_S:
            self._drop_fd(next(iter(self._fds)))
        return fd

    def _drop_fd(self, path: str) -> None:
        got = self._fds.pop(path, None)
        if got is not None:
            with contextlib.suppress(OSError):
                os.close(got[0])

    def close(self) -> None:
        while self._fds:
            self._drop_fd(next(iter(self._fds)))

    async def _read(self, key: str, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.kind == "s3":
            try:
                body = await self.store.get(key, offset, offset + length)
            except ObjectStoreError as e:
                raise RelayUnavailable(f"{key}: {e}") from e
        else:
            assert self.root is not None
            path = self._prefix + key
            try:
                body = await self._pread(path, offset, length)
            except OSError as e:
                raise RelayUnavailable(f"{path}: {e}") from e
        self.bytes_read += len(body)
        return body


def _pread(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


class Relayed(NamedTuple):
    """A relay write's references, in order, and whether the proxy made them durable: if not, the
    leader's WAL syncs the file before the references (RelayLog.leader_syncs)."""

    refs: list[RelayRef]
    durable: bool


#: Payloads waiting for a relay write, and the future of their references.
_Waiting = tuple[list[bytes], "asyncio.Future[Relayed]"]


class RelayLog:
    """This broker's relay objects: group commit of relayed batches, deletion by horizon."""

    def __init__(self, kind: str, store: ObjectStore, nfs_root: str | None, wal_id: str) -> None:
        self.kind = kind
        self.store = store
        self.root = Path(nfs_root) if nfs_root else None
        self.prefix = f"relay/{wal_id}/"
        self._queue: list[_Waiting] = []
        self._writing = False
        self._seq = itertools.count()
        self._written: list[tuple[int, str]] = []  # (created ms, key) of objects not yet deleted
        self._segment: tuple[str, int, int] | None = None  # nfs: (key, fd, size) of the open segment
        self._writer: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.gate = InlineGate()
        self.bytes_written = 0
        #: nfs: the fdatasync of each group commit (the s3 kind's PUTs are in the store's stats).
        self.sync_seconds = Histogram()
        self.objects_written = 0
        self.objects_deleted = 0
        self._closed = False
        #: nfs on a local file system (every broker of the host sees one page cache): the proxy
        #: writes without an fdatasync and the leader's WAL syncs the file before its REF record,
        #: so the two syncs of a relayed batch overlap instead of following one another. On a
        #: remote file system another host sees the bytes only after the writer flushes them.
        self.leader_syncs = False

    async def open(self) -> None:
        """Find the objects an earlier incarnation left, so the horizon deletes them too."""
        if self.kind == "s3":
            keys = [o.key for o in await self.store.list(self.prefix)]
        else:
            assert self.root is not None
            d = self.root / self.prefix
            d.mkdir(parents=True, exist_ok=True)
            keys = [self.prefix + p.name for p in d.iterdir() if not p.name.endswith(".tmp")]
            self.leader_syncs = local_file_system(d)
        self._written = sorted((relay_created_ms(k), k) for k in keys)

    def write(self, payloads: list[bytes]) -> asyncio.Future[Relayed]:
        """Make `payloads` durable in one relay object (with whatever else waits); refs in order.

        Futures resolve in call order, so references reach leaders in the order clients sent.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Relayed] = loop.create_future()
        if self._closed:
            fut.set_exception(ObjectStoreError("the relay is closed"))
            return fut
        self._queue.append((payloads, fut))
        if not self._writing:
            self._start_writing()
        return fut

    def _start_writing(self) -> None:
        self._writing = True
        loop = asyncio.get_running_loop()
        if self.kind == "nfs" and self.gate.inline:
            # After the requests this turn of the loop reads: they join the group commit.
            loop.call_soon(self._write_inline)
        else:
            self._task = loop.create_task(self._write_loop())

    def _take_group(self) -> tuple[list[_Waiting], list[bytes], int]:
        group: list[_Waiting] = []
        size = 0
        while self._queue and (not group or size < _MAX_GROUP_BYTES):
            item = self._queue.pop(0)
            group.append(item)
            size += sum(len(p) for p in item[0])
        return group, [p for payloads, _ in group for p in payloads], size

    def _written_as(self, group: list[_Waiting], size: int, written: tuple[str, int, bool] | Exception) -> None:
        if isinstance(written, Exception):
            err = written if isinstance(written, ObjectStoreError) else ObjectStoreError(str(written))
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(err)
            return
        key, at, durable = written
        self.bytes_written += size
        for payloads, fut in group:
            refs = []
            for p in payloads:
                refs.append(RelayRef(key, at, len(p), crc32c.crc32c(p)))
                at += len(p)
            if not fut.done():
                fut.set_result(Relayed(refs, durable))

    def _write_inline(self) -> None:
        """nfs: the group commit on the loop's thread while the gate says so (InlineGate): the
        write of a preallocated file, and its fdatasync unless the leader's WAL does that."""
        started = time.perf_counter()
        try:
            group, parts, size = self._take_group()
            if self._closed:  # closed since the write was queued
                self._written_as(group, size, ObjectStoreError("the relay is closed"))
                return
            try:
                key, at, synced = self._put_nfs(parts, size, sync=not self.leader_syncs)
                if synced is not None:
                    self.sync_seconds.observe(synced)
                written: tuple[str, int, bool] | Exception = (key, at, synced is not None)
            except OSError as e:
                written = e
            self._written_as(group, size, written)
        finally:
            self.gate.took(time.perf_counter() - started)
            self._writing = False
            if self._queue:  # more than one group's bytes were waiting
                self._start_writing()

    async def _write_loop(self) -> None:
        try:
            while self._queue:
                group, parts, size = self._take_group()
                try:
                    written: tuple[str, int, bool] | Exception = await self._put(parts, size)
                except (OSError, ObjectStoreError) as e:
                    written = e
                self._written_as(group, size, written)
        finally:
            self._writing = False

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        # A thread of its own: relay writes are on the produce path and must not queue behind other
        # work in the loop's default executor.
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay")
        return await asyncio.get_running_loop().run_in_executor(self._writer, lambda: fn(*args))

    def _new_key(self) -> tuple[int, str]:
        created = int(time.time() * 1000)
        return created, f"{self.prefix}{created:013d}-{next(self._seq):08d}"

    async def _put(self, parts: list[bytes], size: int) -> tuple[str, int, bool]:
        """Write `parts` durably; (key, offset of the first byte, True)."""
        if self.kind == "s3":
            created, key = self._new_key()
            await self.store.put(key, b"".join(parts))
            self._written.append((created, key))
            self.objects_written += 1
            return key, 0, True
        self.gate.threaded()
        key, at, synced = await self._in_writer(self._put_nfs, parts, size)
        assert synced is not None
        self.sync_seconds.observe(synced)  # on the loop: histograms take no lock
        return key, at, True

    def _put_nfs(self, parts: list[bytes], size: int, sync: bool = True) -> tuple[str, int, float | None]:
        """Append `parts` to the open segment (a new one when it is old or full), with an fdatasync
        if `sync`: key, offset of the first byte, the fdatasync's seconds (None: not synced). On the
        loop or in the writer thread, never both at once (`_writing`)."""
        assert self.root is not None
        seg = self._segment
        full = seg is not None and seg[2] > 0 and seg[2] + size > SEGMENT_BYTES
        if seg is not None and (relay_created_ms(seg[0]) + SEGMENT_MS < time.time() * 1000 or full):
            os.close(seg[1])
            seg = self._segment = None
        if seg is None:
            created, key = self._new_key()
            fd = _create_durably(self.root / key)
            seg = (key, fd, 0)
            self._segment = seg
            self._written.append((created, key))
            self.objects_written += 1
        key, fd, at = seg
        try:
            synced: float | None = None
            if sync:
                synced = _append_durably(fd, parts, at)
            else:
                _append(fd, parts, at)
        except OSError:
            # The segment is given up: its torn tail is never referenced, the next write starts another.
            self._segment = None
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self._segment = (key, fd, at + size)
        return key, at, synced

    async def delete_before(self, horizon_ms: int) -> int:
        """Delete relay objects created before `horizon_ms - DELETE_MARGIN_MS`."""
        cut = horizon_ms - DELETE_MARGIN_MS
        seg = self._segment
        if seg is not None and not self._writing and relay_created_ms(seg[0]) + SEGMENT_MS < time.time() * 1000:
            # No write will go to it any more (the next starts a new segment): close it, so that
            # a quiet relay's last segment goes too.
            self._segment = None
            with contextlib.suppress(OSError):
                os.close(seg[1])
        current = self._segment[0] if self._segment is not None else None
        old = [k for ms, k in self._written if ms < cut and k != current]
        if not old:
            return 0
        try:
            if self.kind == "s3":
                await self.store.delete(old)
            else:
                assert self.root is not None
                root = self.root
                await asyncio.to_thread(lambda: [_unlink(root / k) for k in old])
        except (OSError, ObjectStoreError) as e:
            log.warning("could not delete %d relay objects: %s", len(old), e)
            return 0
        gone = set(old)
        self._written = [(ms, k) for ms, k in self._written if k not in gone]
        self.objects_deleted += len(old)
        return len(old)

    @property
    def objects_kept(self) -> int:
        return len(self._written)

    def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.shutdown(wait=False)
        if self._segment is not None:
            with contextlib.suppress(OSError):
                os.close(self._segment[1])
            self._segment = None


#: File systems whose pages every process of the host shares (no client-side cache of a server).
_LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "bcachefs"})


def local_file_system(path: Path, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether `path` is on a local file system (by the longest mount point above it)."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, line.split(" - ", 1)[1].split()[0]
    except OSError:
        return False
    return fstype in _LOCAL_FS


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _create_durably(path: Path) -> int:
    """A new, empty segment whose directory entry survives a crash."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with contextlib.suppress(OSError):  # a file system without fallocate still works, only slower
        os.posix_fallocate(fd, 0, SEGMENT_BYTES)
    os.fsync(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return fd


def _append(fd: int, parts: list[bytes], at: int) -> None:
    view = memoryview(b"".join(parts))
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def _append_durably(fd: int, parts: list[bytes], at: int) -> float:
    """Write and fdatasync; the seconds the fdatasync took."""
    _append(fd, parts, at)
    started = time.perf_counter()
    os.fdatasync(fd)
    return time.perf_counter() - started
