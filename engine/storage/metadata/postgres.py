"""PostgreSQL implementation of MetadataStore: every broker of a cluster on one database.

Isolation: READ COMMITTED with explicit row locks, not SERIALIZABLE. Every fencing
rule is a compare on one row followed by a write that depends on it (a commit
checks its stream's epoch and end offset, then moves the end; an open checks and
raises the epoch), so each such transaction takes `SELECT ... FOR UPDATE` on that
row first: transactions on the same stream run one after the other, the second
seeing what the first committed, and transactions on different streams never
wait for each other or abort. An object losing its last range locks the object's
row before it looks for other ranges, so two trims of one stream-set object
cannot both think the other still holds it. Locks are taken in id order; a
deadlock PostgreSQL still detects, or a serialization failure, reruns the
transaction. SERIALIZABLE would catch the same races, but by aborting
transactions (including false positives on shared index pages) that every caller
would have to retry.

Writes run on one thread with one connection, like the SQLite store. Epochs for
the per-acknowledgement check are re-read on the caller's thread over a second
connection, only when another process moved the `epoch_changes` counter (every
change of a stream's epoch bumps it in the same transaction; this store knows
the values its own transactions produced, epochs.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg.errors

from engine.postgres import PgError, check_schema, connect, describe, redact
from engine.storage.errors import FencedError, StorageError
from engine.storage.metadata.epochs import EpochCache
from engine.storage.metadata.interface import (
    COMMITTED,
    PREPARED,
    UNREFERENCED,
    ObjectCommit,
    ObjectGone,
    ObjectRange,
    ObjectRecord,
    RangeInfo,
    StreamMeta,
    WalOwner,
)
from engine.storage.objects.format import object_key

T = TypeVar("T")
Conn = psycopg.Connection[Any]
#: Reruns of a transaction that lost a deadlock or a serialization check.
_RETRIES = 8
_COUNTER = "SELECT n FROM epoch_changes WHERE id = 1"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unreference_orphans(c: Conn, object_ids: Iterable[int]) -> None:
    """Objects among these that no range refers to any more start their grace period."""
    now = _now_ms()
    for oid in sorted(set(object_ids)):
        # The lock makes a concurrent transaction dropping another range of this object wait,
        # so one of the two sees the object empty.
        c.execute("SELECT 1 FROM objects WHERE object_id=%s FOR UPDATE", (oid,))
        if c.execute("SELECT 1 FROM object_ranges WHERE object_id=%s LIMIT 1", (oid,)).fetchone() is None:
            c.execute(
                "UPDATE objects SET state=%s, unreferenced_ms=%s WHERE object_id=%s AND state<>%s",
                (UNREFERENCED, now, oid, UNREFERENCED),
            )


def _bump_epochs(c: Conn) -> int:
    """Count a change of a stream's epoch; the value is this transaction's (the row stays locked
    until it commits, so values follow commit order)."""
    row = c.execute("UPDATE epoch_changes SET n = n + 1 WHERE id = 1 RETURNING n").fetchone()
    assert row is not None
    return int(row[0])


class PostgresMetadataStore:
    def __init__(self, url: str, read_only: bool = False) -> None:
        """read_only: for inspecting a running cluster's metadata (`amq storage`); writes fail."""
        self.url = url
        self.read_only = read_only
        self._writer = connect(url)
        try:
            check_schema(self._writer, url)
            if read_only:
                self._writer.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            self._reader = connect(url)
            self._cache = EpochCache()
            # Nothing cached yet, so the cache is current at today's value.
            self._cache.seen = int(self._reader_query(_COUNTER)[0][0])
        except BaseException:
            self._writer.close()
            if hasattr(self, "_reader"):
                self._reader.close()
            raise
        self._reader_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata")

    def __repr__(self) -> str:
        return f"PostgresMetadataStore({redact(self.url)})"

    async def _run(self, fn: Callable[[Conn], T], after: Callable[[T], None] | None = None) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._tx, fn, after)

    def _tx(self, fn: Callable[[Conn], T], after: Callable[[T], None] | None = None) -> T:
        """Run fn in a transaction, again if it lost a deadlock. `after` (for transactions that may
        change epochs) runs once it committed, under the epoch cache's commit lock taken before
        COMMIT (epochs.py says why)."""
        for attempt in range(_RETRIES):
            try:
                if self._writer.closed or self._writer.broken:
                    self._writer = connect(self.url)
                if after is None:
                    with self._writer.transaction():
                        return fn(self._writer)
                locked = False
                try:
                    with self._writer.transaction():
                        result = fn(self._writer)
                        self._cache.commit_lock.acquire()
                        locked = True
                    after(result)
                    return result
                finally:
                    if locked:
                        self._cache.commit_lock.release()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise StorageError("metadata transaction kept losing to concurrent ones") from None
                time.sleep(0.001 * (attempt + 1))
            except psycopg.OperationalError as e:
                # The connection broke: the outcome of a COMMIT in flight is unknown, so this call
                # fails (as a crash would) and the next one reconnects.
                raise StorageError(f"metadata database: {describe(self.url, e)}") from None
            except PgError as e:
                raise StorageError(str(e)) from None
        raise AssertionError("unreachable")

    # --- streams ---------------------------------------------------------------------------

    async def open_stream(self, stream_id: int, epoch: int) -> StreamMeta:
        def tx(c: Conn) -> tuple[StreamMeta, list[int]]:
            created = c.execute(
                "INSERT INTO streams VALUES (%s, %s, 0, 0) ON CONFLICT (stream_id) DO NOTHING RETURNING 1",
                (stream_id, epoch),
            ).fetchone()
            if created is not None:
                return StreamMeta(stream_id, epoch, 0, 0), [_bump_epochs(c)]
            row = c.execute(
                "SELECT epoch, start_offset, end_offset FROM streams WHERE stream_id=%s FOR UPDATE", (stream_id,)
            ).fetchone()
            if row is None:  # deleted between the two statements: as if it never existed
                c.execute("INSERT INTO streams VALUES (%s, %s, 0, 0)", (stream_id, epoch))
                return StreamMeta(stream_id, epoch, 0, 0), [_bump_epochs(c)]
            if epoch < row[0]:
                raise FencedError(f"stream {stream_id}: epoch {epoch} is older than the current epoch {row[0]}")
            bumps: list[int] = []
            if epoch != row[0]:
                c.execute("UPDATE streams SET epoch=%s WHERE stream_id=%s", (epoch, stream_id))
                bumps.append(_bump_epochs(c))
            return StreamMeta(stream_id, epoch, row[1], row[2]), bumps

        def after(result: tuple[StreamMeta, list[int]]) -> None:
            meta, bumps = result
            self._cache.epochs[stream_id] = meta.epoch
            self._cache.record_own(bumps)

        meta, _ = await self._run(tx, after)
        return meta

    async def get_stream(self, stream_id: int) -> StreamMeta | None:
        def tx(c: Conn) -> StreamMeta | None:
            row = c.execute(
                "SELECT epoch, start_offset, end_offset FROM streams WHERE stream_id=%s", (stream_id,)
            ).fetchone()
            return None if row is None else StreamMeta(stream_id, row[0], row[1], row[2])

        return await self._run(tx)

    def refresh_epochs(self) -> None:
        """Re-read cached epochs if another process changed a stream's epoch since the last look
        (one round trip otherwise, also after this store's own opens). Called by the WAL after
        each sync, off the event loop."""
        cache = self._cache
        with self._reader_lock:
            try:
                n = int(self._reader_query(_COUNTER)[0][0])
                if cache.covered(n):
                    return
                with cache.commit_lock:
                    # An own transaction that had committed when n was read has recorded its
                    # values by now: what is still unknown was another process's.
                    if not cache.covered(n):
                        self._reread_epochs()
            except psycopg.Error as e:
                # Unknown epochs acknowledge nothing: the WAL fails this sync's appends, clients retry.
                raise StorageError(f"metadata database: {describe(self.url, e)}") from None

    def _reread_epochs(self) -> None:
        """Every cached epoch and the counter, in one statement (one snapshot). Holding the reader
        and commit locks."""
        rows = self._reader_query(
            "SELECT e.n, s.stream_id, s.epoch FROM epoch_changes e "
            "LEFT JOIN streams s ON s.stream_id = ANY(%s) WHERE e.id = 1",
            (list(self._cache.epochs),),
        )
        self._cache.replace({int(s): int(e) for _, s, e in rows if s is not None}, int(rows[0][0]))

    def _reader_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._reader.closed or self._reader.broken:
            try:
                self._reader = connect(self.url)
            except PgError as e:
                raise StorageError(str(e)) from None
        return self._reader.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def current_epochs(self, stream_ids: Iterable[int]) -> dict[int, int]:
        epochs = self._cache.epochs
        out: dict[int, int] = {}
        for s in stream_ids:
            e = epochs.get(s)
            if e is None:
                # Query and insert under the reader lock, so a refresh cannot swap the dictionary
                # in between and keep a value read before a change it has already accounted for.
                # setdefault: an own open that landed meanwhile is newer than this read.
                with self._reader_lock:
                    rows = self._reader_query("SELECT epoch FROM streams WHERE stream_id=%s", (s,))
                    e = self._cache.epochs.setdefault(s, -1 if not rows else int(rows[0][0]))
            out[s] = e
        return out

    async def trim_stream(self, stream_id: int, epoch: int, new_start: int) -> None:
        def tx(c: Conn) -> None:
            row = c.execute(
                "SELECT epoch, start_offset FROM streams WHERE stream_id=%s FOR UPDATE", (stream_id,)
            ).fetchone()
            if row is None:
                raise StorageError(f"stream {stream_id} does not exist")
            if row[0] != epoch:
                raise FencedError(f"stream {stream_id}: epoch {epoch} is not the current epoch {row[0]}")
            if new_start > row[1]:
                c.execute("UPDATE streams SET start_offset=%s WHERE stream_id=%s", (new_start, stream_id))
                gone = c.execute(
                    "DELETE FROM object_ranges WHERE stream_id=%s AND end_offset<=%s RETURNING object_id",
                    (stream_id, new_start),
                ).fetchall()
                _unreference_orphans(c, (oid for (oid,) in gone))

        await self._run(tx)

    async def stream_ranges(self, stream_id: int) -> list[RangeInfo]:
        def tx(c: Conn) -> list[RangeInfo]:
            rows = c.execute(
                "SELECT r.start_offset, r.end_offset, r.size, r.data_ms, o.object_id, o.key, o.kind, o.size "
                "FROM object_ranges r JOIN objects o ON o.object_id = r.object_id "
                "WHERE r.stream_id=%s ORDER BY r.start_offset",
                (stream_id,),
            ).fetchall()
            return [RangeInfo(stream_id, *row) for row in rows]

        return await self._run(tx)

    async def object_ranges(self, object_ids: Sequence[int]) -> list[RangeInfo]:
        def tx(c: Conn) -> list[RangeInfo]:
            rows = c.execute(
                "SELECT r.stream_id, r.start_offset, r.end_offset, r.size, r.data_ms, o.object_id, o.key, o.kind, "
                "o.size FROM object_ranges r JOIN objects o ON o.object_id = r.object_id "
                "WHERE r.object_id = ANY(%s) ORDER BY r.object_id, r.stream_id, r.start_offset",
                (list(object_ids),),
            ).fetchall()
            return [RangeInfo(*row) for row in rows]

        return await self._run(tx)

    async def replace_ranges(self, stream_id: int, old: Sequence[RangeInfo], new: Sequence[ObjectCommit]) -> bool:
        def tx(c: Conn) -> bool:
            for r in sorted(old, key=lambda r: r.start_offset):
                found = c.execute(
                    "SELECT object_id, end_offset FROM object_ranges WHERE stream_id=%s AND start_offset=%s FOR UPDATE",
                    (stream_id, r.start_offset),
                ).fetchone()
                if found is None or tuple(found) != (r.object_id, r.end_offset):
                    c.execute(
                        "UPDATE objects SET state=%s, unreferenced_ms=%s WHERE object_id = ANY(%s)",
                        (UNREFERENCED, _now_ms(), [n.object_id for n in new]),
                    )
                    return False
            c.execute(
                "DELETE FROM object_ranges WHERE stream_id=%s AND start_offset = ANY(%s)",
                (stream_id, [r.start_offset for r in old]),
            )
            for n in new:
                self._insert_object(c, n)
            _unreference_orphans(c, (r.object_id for r in old))
            return True

        return await self._run(tx)

    async def delete_stream(self, stream_id: int) -> None:
        def tx(c: Conn) -> int:
            # The stream's row goes first: a commit racing this one either finished before (its
            # ranges are deleted below) or finds no stream and is fenced.
            c.execute("DELETE FROM streams WHERE stream_id=%s", (stream_id,))
            bump = _bump_epochs(c)
            rows = c.execute("DELETE FROM object_ranges WHERE stream_id=%s RETURNING object_id", (stream_id,))
            _unreference_orphans(c, [oid for (oid,) in rows.fetchall()])
            return bump

        def after(bump: int) -> None:
            # As a re-read would: gone from the cache, so a lookup finds no stream (-1).
            self._cache.epochs.pop(stream_id, None)
            self._cache.record_own([bump])

        await self._run(tx, after)

    async def list_streams(self) -> list[StreamMeta]:
        def tx(c: Conn) -> list[StreamMeta]:
            rows = c.execute("SELECT stream_id, epoch, start_offset, end_offset FROM streams ORDER BY stream_id")
            return [StreamMeta(*row) for row in rows.fetchall()]

        return await self._run(tx)

    async def list_objects(self, states: Sequence[str] = ()) -> list[ObjectRecord]:
        def tx(c: Conn) -> list[ObjectRecord]:
            select = "SELECT object_id, key, size, kind, state, crc, created_ms, unreferenced_ms FROM objects"
            if states:
                rows = c.execute(f"{select} WHERE state = ANY(%s) ORDER BY object_id", (list(states),)).fetchall()
            else:
                rows = c.execute(f"{select} ORDER BY object_id").fetchall()
            streams: dict[int, list[int]] = {}
            for oid, sid in c.execute("SELECT DISTINCT object_id, stream_id FROM object_ranges ORDER BY stream_id"):
                streams.setdefault(oid, []).append(sid)
            return [ObjectRecord(*row, streams=tuple(streams.get(row[0], ()))) for row in rows]

        return await self._run(tx)

    async def give_up_prepared(self, older_than_ms: int) -> int:
        def tx(c: Conn) -> int:
            cur = c.execute(
                "UPDATE objects SET state=%s, unreferenced_ms=%s WHERE state=%s AND created_ms<%s",
                (UNREFERENCED, _now_ms(), PREPARED, older_than_ms),
            )
            return cur.rowcount

        return await self._run(tx)

    async def forget_objects(self, object_ids: Sequence[int]) -> None:
        def tx(c: Conn) -> None:
            c.execute("DELETE FROM objects WHERE object_id = ANY(%s) AND state=%s", (list(object_ids), UNREFERENCED))

        await self._run(tx)

    # --- objects ---------------------------------------------------------------------------

    async def next_object_id(self) -> int:
        def tx(c: Conn) -> int:
            row = c.execute("SELECT nextval('object_ids')").fetchone()
            assert row is not None
            value = int(row[0])
            c.execute(
                "INSERT INTO objects (object_id, key, size, kind, state, created_ms) VALUES (%s, %s, 0, '', %s, %s)",
                (value, object_key(value), PREPARED, _now_ms()),
            )
            return value

        return await self._run(tx)

    async def commit_objects(self, objects: Sequence[ObjectCommit]) -> None:
        def tx(c: Conn) -> None:
            ranges = sorted((r for obj in objects for r in obj.ranges), key=lambda r: (r.stream_id, r.start_offset))
            ids = sorted({r.stream_id for r in ranges})
            # Locked in id order before anything is written: an open at a higher epoch either
            # committed before (and this commit is fenced) or waits until this one committed.
            rows = c.execute(
                "SELECT stream_id, epoch, end_offset FROM streams WHERE stream_id = ANY(%s) ORDER BY stream_id "
                "FOR UPDATE",
                (ids,),
            ).fetchall()
            streams = {int(s): (int(e), int(end)) for s, e, end in rows}
            for obj in objects:
                self._insert_object(c, obj)
            ends: dict[int, int] = {}
            for obj in objects:
                for r in obj.ranges:
                    found = streams.get(r.stream_id)
                    if found is None:
                        # Deleted with its topic: its data must not come back, like a fenced owner's.
                        raise FencedError(f"stream {r.stream_id} does not exist")
                    epoch, end = found[0], ends.get(r.stream_id, found[1])
                    if epoch != r.epoch:
                        raise FencedError(f"stream {r.stream_id}: epoch {r.epoch} was fenced by epoch {epoch}")
                    if end != r.start_offset:
                        raise StorageError(
                            f"stream {r.stream_id}: object range starts at {r.start_offset}, "
                            f"but the stream's committed end is {end}"
                        )
                    ends[r.stream_id] = r.end_offset
            if ends:
                c.cursor().executemany(
                    "UPDATE streams SET end_offset=%s WHERE stream_id=%s", [(e, s) for s, e in ends.items()]
                )

        await self._run(tx)

    @staticmethod
    def _insert_object(c: Conn, obj: ObjectCommit) -> None:
        cur = c.execute(
            "UPDATE objects SET key=%s, size=%s, kind=%s, state=%s, crc=%s WHERE object_id=%s AND state=%s",
            (obj.key, obj.size, obj.kind, COMMITTED, obj.crc, obj.object_id, PREPARED),
        )
        if cur.rowcount != 1:
            raise ObjectGone(f"object {obj.object_id} is not prepared any more (its upload took too long)")
        data_ms = obj.data_ms or _now_ms()
        sizes = obj.range_sizes or (0,) * len(obj.ranges)
        c.cursor().executemany(
            "INSERT INTO object_ranges (stream_id, start_offset, end_offset, object_id, size, data_ms) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (r.stream_id, r.start_offset, r.end_offset, obj.object_id, n, data_ms)
                for r, n in zip(obj.ranges, sizes, strict=True)
            ],
        )

    async def find_objects(self, stream_id: int, offset: int, limit: int = 16) -> list[ObjectRange]:
        def tx(c: Conn) -> list[ObjectRange]:
            rows = c.execute(
                "SELECT o.object_id, o.key, o.size, r.start_offset, r.end_offset FROM object_ranges r "
                "JOIN objects o ON o.object_id = r.object_id "
                "WHERE r.stream_id=%s AND r.end_offset > %s ORDER BY r.start_offset LIMIT %s",
                (stream_id, offset, limit),
            ).fetchall()
            return [ObjectRange(oid, key, size, stream_id, s, e) for oid, key, size, s, e in rows]

        return await self._run(tx)

    # --- WAL ownership ---------------------------------------------------------------------

    async def acquire_wal(self, wal_id: str, owner: str) -> int:
        def tx(c: Conn) -> int:
            # One statement: two owners acquiring at once get distinct epochs, the later one wins.
            row = c.execute(
                "INSERT INTO wal_owners VALUES (%s, %s, 1) ON CONFLICT (wal_id) "
                "DO UPDATE SET owner = EXCLUDED.owner, epoch = wal_owners.epoch + 1 RETURNING epoch",
                (wal_id, owner),
            ).fetchone()
            assert row is not None
            return int(row[0])

        return await self._run(tx)

    async def wal_owner(self, wal_id: str) -> WalOwner | None:
        def tx(c: Conn) -> WalOwner | None:
            row = c.execute("SELECT owner, epoch FROM wal_owners WHERE wal_id=%s", (wal_id,)).fetchone()
            return None if row is None else WalOwner(wal_id, row[0], row[1])

        return await self._run(tx)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._writer.close()
        self._reader.close()
