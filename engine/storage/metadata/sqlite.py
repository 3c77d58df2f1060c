"""SQLite implementation of MetadataStore: one file, shared by every process of a local cluster.

Writes run on one thread with synchronous=FULL, so a returned commit is on
disk. refresh_epochs() runs on the caller's thread with its own connection and
re-reads epochs only when another process changed one (epochs.py): triggers on
`streams` bump the `epoch_changes` counter, so every writer of the file bumps
it, including an older amq that does not know it. `PRAGMA data_version` tells
first whether anything at all was committed, which keeps the per-group-commit
check at a few microseconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    object_id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    crc INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL DEFAULT 0,
    unreferenced_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS object_ranges (
    stream_id INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    object_id INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    data_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream_id, start_offset)
);
CREATE TABLE IF NOT EXISTS wal_owners (
    wal_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS object_ranges_by_object ON object_ranges (object_id);
-- Bumped by every change of a stream's epoch (a stream created, raised, deleted), so brokers
-- re-read epochs only when one moved. Triggers rather than the store's code: every writer of
-- the file bumps it, also an amq from before the counter, and a store from before it gains
-- table and triggers on open (IF NOT EXISTS).
CREATE TABLE IF NOT EXISTS epoch_changes (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO epoch_changes VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS streams_created AFTER INSERT ON streams
BEGIN UPDATE epoch_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS streams_epoch_changed AFTER UPDATE OF epoch ON streams WHEN NEW.epoch IS NOT OLD.epoch
BEGIN UPDATE epoch_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS streams_deleted AFTER DELETE ON streams
BEGIN UPDATE epoch_changes SET n = n + 1 WHERE id = 1; END;
"""

# Columns added after the first release (the schema above has them); a store written by an
# older version gains them on open.
_ADDED_COLUMNS = {
    "objects": {"crc": "INTEGER NOT NULL DEFAULT 0", "created_ms": "INTEGER NOT NULL DEFAULT 0",
                "unreferenced_ms": "INTEGER NOT NULL DEFAULT 0"},
    "object_ranges": {"size": "INTEGER NOT NULL DEFAULT 0", "data_ms": "INTEGER NOT NULL DEFAULT 0"},
}  # fmt: skip


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unreference_orphans(c: sqlite3.Connection, object_ids: Iterable[int]) -> None:
    """Objects among these that no range refers to any more start their grace period."""
    now = _now_ms()
    for oid in set(object_ids):
        if c.execute("SELECT 1 FROM object_ranges WHERE object_id=? LIMIT 1", (oid,)).fetchone() is None:
            c.execute(
                "UPDATE objects SET state=?, unreferenced_ms=? WHERE object_id=? AND state<>?",
                (UNREFERENCED, now, oid, UNREFERENCED),
            )


def _epoch_changes(c: sqlite3.Connection) -> int:
    value: int = c.execute("SELECT n FROM epoch_changes WHERE id = 1").fetchone()[0]
    return value


def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0, isolation_level=None,
                               check_same_thread=False)  # fmt: skip
        conn.execute("PRAGMA busy_timeout=30000")
        return conn
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SqliteMetadataStore:
    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        """read_only: for inspecting a running cluster's metadata (`amq storage`); writes fail."""
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise StorageError(f"no storage metadata at {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(self.path, read_only)
        if not read_only:
            self._writer.executescript(_SCHEMA)
            # Brokers of a cluster open one file at once: the upgrade runs in one of them only.
            self._tx(self._add_columns)
        self._reader = _connect(self.path, read_only)
        self._reader_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata")
        self._seen_version = -1
        self._cache = EpochCache()
        if not read_only:  # (an inspector never refreshes, and an old file has no counter yet)
            # Nothing cached yet, so the cache is current at today's value.
            self._cache.seen = _epoch_changes(self._reader)

    @staticmethod
    def _add_columns(c: sqlite3.Connection) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
            for column, decl in columns.items():
                if column not in have:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    async def _run(self, fn: Callable[[sqlite3.Connection], T], after: Callable[[T], None] | None = None) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._tx, fn, after)

    def _tx(self, fn: Callable[[sqlite3.Connection], T], after: Callable[[T], None] | None = None) -> T:
        """Run fn in a write transaction. `after` (for transactions that may change epochs) runs once
        it committed, under the epoch cache's commit lock taken before COMMIT (epochs.py says why)."""
        conn = self._writer
        conn.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if after is None:
            conn.execute("COMMIT")
            return result
        with self._cache.commit_lock:
            conn.execute("COMMIT")
            after(result)
        return result

    # --- streams ---------------------------------------------------------------------------

    async def open_stream(self, stream_id: int, epoch: int) -> StreamMeta:
        def tx(c: sqlite3.Connection) -> tuple[StreamMeta, range]:
            # The triggers bump the counter; the values between before and after are ours (this
            # transaction holds the file's write lock).
            before = _epoch_changes(c)
            row = c.execute(
                "SELECT epoch, start_offset, end_offset FROM streams WHERE stream_id=?", (stream_id,)
            ).fetchone()
            if row is None:
                c.execute("INSERT INTO streams VALUES (?, ?, 0, 0)", (stream_id, epoch))
                meta = StreamMeta(stream_id, epoch, 0, 0)
            elif epoch < row[0]:
                raise FencedError(f"stream {stream_id}: epoch {epoch} is older than the current epoch {row[0]}")
            else:
                c.execute("UPDATE streams SET epoch=? WHERE stream_id=?", (epoch, stream_id))
                meta = StreamMeta(stream_id, epoch, row[1], row[2])
            return meta, range(before + 1, _epoch_changes(c) + 1)

        def after(result: tuple[StreamMeta, range]) -> None:
            meta, bumps = result
            self._cache.epochs[stream_id] = meta.epoch
            self._cache.record_own(bumps)

        meta, _ = await self._run(tx, after)
        return meta

    async def get_stream(self, stream_id: int) -> StreamMeta | None:
        def tx(c: sqlite3.Connection) -> StreamMeta | None:
            row = c.execute(
                "SELECT epoch, start_offset, end_offset FROM streams WHERE stream_id=?", (stream_id,)
            ).fetchone()
            return None if row is None else StreamMeta(stream_id, row[0], row[1], row[2])

        return await self._run(tx)

    def refresh_epochs(self) -> None:
        """Bring cached epochs up to date: a full re-read only when another process changed one.

        Called by the WAL after each fsync, off the event loop, so that current_epochs()
        (on the loop, for every acknowledgement) is a dictionary lookup. `PRAGMA data_version`
        moves whenever any other connection committed, this store's writer included (uploads,
        opens); the `epoch_changes` counter then tells whether an epoch moved, and whether only
        this store moved it (epochs.py).
        """
        cache = self._cache
        with self._reader_lock:
            version = self._reader.execute("PRAGMA data_version").fetchone()[0]
            if version == self._seen_version:
                return
            n = _epoch_changes(self._reader)
            if not cache.covered(n):
                with cache.commit_lock:
                    # An own transaction that had committed when n was read has recorded its
                    # values by now: what is still unknown was another process's.
                    if not cache.covered(n):
                        self._reread_epochs()
            self._seen_version = version

    def _reread_epochs(self) -> None:
        """Every cached epoch and the counter, in one read snapshot. Holding the reader and commit locks."""
        ids = list(self._cache.epochs)
        fresh: dict[int, int] = {}
        self._reader.execute("BEGIN")
        try:
            n = _epoch_changes(self._reader)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                rows = self._reader.execute(
                    f"SELECT stream_id, epoch FROM streams WHERE stream_id IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                fresh.update(rows)
        finally:
            self._reader.execute("COMMIT")
        self._cache.replace(fresh, n)

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
                    row = self._reader.execute("SELECT epoch FROM streams WHERE stream_id=?", (s,)).fetchone()
                    e = self._cache.epochs.setdefault(s, -1 if row is None else int(row[0]))
            out[s] = e
        return out

    async def trim_stream(self, stream_id: int, epoch: int, new_start: int) -> None:
        def tx(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT epoch, start_offset FROM streams WHERE stream_id=?", (stream_id,)).fetchone()
            if row is None:
                raise StorageError(f"stream {stream_id} does not exist")
            if row[0] != epoch:
                raise FencedError(f"stream {stream_id}: epoch {epoch} is not the current epoch {row[0]}")
            if new_start > row[1]:
                c.execute("UPDATE streams SET start_offset=? WHERE stream_id=?", (new_start, stream_id))
                below = "FROM object_ranges WHERE stream_id=? AND end_offset<=?"
                gone = [oid for (oid,) in c.execute(f"SELECT object_id {below}", (stream_id, new_start))]
                c.execute(f"DELETE {below}", (stream_id, new_start))
                _unreference_orphans(c, gone)

        await self._run(tx)

    async def stream_ranges(self, stream_id: int) -> list[RangeInfo]:
        def tx(c: sqlite3.Connection) -> list[RangeInfo]:
            rows = c.execute(
                "SELECT r.start_offset, r.end_offset, r.size, r.data_ms, o.object_id, o.key, o.kind, o.size "
                "FROM object_ranges r JOIN objects o ON o.object_id = r.object_id "
                "WHERE r.stream_id=? ORDER BY r.start_offset",
                (stream_id,),
            ).fetchall()
            return [RangeInfo(stream_id, *row) for row in rows]

        return await self._run(tx)

    async def object_ranges(self, object_ids: Sequence[int]) -> list[RangeInfo]:
        def tx(c: sqlite3.Connection) -> list[RangeInfo]:
            out: list[RangeInfo] = []
            for oid in object_ids:
                rows = c.execute(
                    "SELECT r.stream_id, r.start_offset, r.end_offset, r.size, r.data_ms, o.object_id, o.key, o.kind, "
                    "o.size FROM object_ranges r JOIN objects o ON o.object_id = r.object_id WHERE r.object_id=?",
                    (oid,),
                ).fetchall()
                out.extend(RangeInfo(*row) for row in rows)
            return out

        return await self._run(tx)

    async def replace_ranges(self, stream_id: int, old: Sequence[RangeInfo], new: Sequence[ObjectCommit]) -> bool:
        def tx(c: sqlite3.Connection) -> bool:
            for r in old:
                found = c.execute(
                    "SELECT object_id, end_offset FROM object_ranges WHERE stream_id=? AND start_offset=?",
                    (stream_id, r.start_offset),
                ).fetchone()
                if found is None or tuple(found) != (r.object_id, r.end_offset):
                    c.executemany(
                        "UPDATE objects SET state=?, unreferenced_ms=? WHERE object_id=?",
                        [(UNREFERENCED, _now_ms(), n.object_id) for n in new],
                    )
                    return False
            for r in old:
                c.execute("DELETE FROM object_ranges WHERE stream_id=? AND start_offset=?", (stream_id, r.start_offset))
            for n in new:
                self._insert_object(c, n)
            _unreference_orphans(c, (r.object_id for r in old))
            return True

        return await self._run(tx)

    async def delete_stream(self, stream_id: int) -> None:
        def tx(c: sqlite3.Connection) -> range:
            before = _epoch_changes(c)
            rows = c.execute("SELECT object_id FROM object_ranges WHERE stream_id=?", (stream_id,))
            objects = [oid for (oid,) in rows]
            c.execute("DELETE FROM object_ranges WHERE stream_id=?", (stream_id,))
            c.execute("DELETE FROM streams WHERE stream_id=?", (stream_id,))
            _unreference_orphans(c, objects)
            return range(before + 1, _epoch_changes(c) + 1)

        def after(bumps: range) -> None:
            # As a re-read would: gone from the cache, so a lookup finds no stream (-1).
            self._cache.epochs.pop(stream_id, None)
            self._cache.record_own(bumps)

        await self._run(tx, after)

    async def list_streams(self) -> list[StreamMeta]:
        def tx(c: sqlite3.Connection) -> list[StreamMeta]:
            rows = c.execute("SELECT stream_id, epoch, start_offset, end_offset FROM streams ORDER BY stream_id")
            return [StreamMeta(*row) for row in rows]

        return await self._run(tx)

    async def list_objects(self, states: Sequence[str] = ()) -> list[ObjectRecord]:
        def tx(c: sqlite3.Connection) -> list[ObjectRecord]:
            marks = ",".join("?" * len(states))
            where = f" WHERE state IN ({marks})" if states else ""
            rows = c.execute(
                "SELECT object_id, key, size, kind, state, crc, created_ms, unreferenced_ms FROM objects"
                f"{where} ORDER BY object_id",
                tuple(states),
            ).fetchall()
            # Only the selected objects' ranges: garbage collection asks for the few unreferenced
            # ones many times a minute, and every range of the store is a lot to scan for that.
            ranges = "SELECT DISTINCT r.object_id, r.stream_id FROM object_ranges r"
            if states:
                ranges += f" JOIN objects o ON o.object_id = r.object_id WHERE o.state IN ({marks})"
            streams: dict[int, list[int]] = {}
            for oid, sid in c.execute(f"{ranges} ORDER BY r.stream_id", tuple(states)):
                streams.setdefault(oid, []).append(sid)
            return [ObjectRecord(*row, streams=tuple(streams.get(row[0], ()))) for row in rows]

        return await self._run(tx)

    async def give_up_prepared(self, older_than_ms: int) -> int:
        def tx(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE objects SET state=?, unreferenced_ms=? WHERE state=? AND created_ms<?",
                (UNREFERENCED, _now_ms(), PREPARED, older_than_ms),
            )
            return cur.rowcount

        return await self._run(tx)

    async def forget_objects(self, object_ids: Sequence[int]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.executemany(
                "DELETE FROM objects WHERE object_id=? AND state=?", [(oid, UNREFERENCED) for oid in object_ids]
            )

        await self._run(tx)

    # --- objects ---------------------------------------------------------------------------

    async def next_object_id(self) -> int:
        def tx(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO counters VALUES ('object_id', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1")
            value: int = c.execute("SELECT value FROM counters WHERE name='object_id'").fetchone()[0]
            c.execute(
                "INSERT INTO objects (object_id, key, size, kind, state, created_ms) VALUES (?, ?, 0, '', ?, ?)",
                (value, object_key(value), PREPARED, _now_ms()),
            )
            return value

        return await self._run(tx)

    async def commit_objects(self, objects: Sequence[ObjectCommit]) -> None:
        def tx(c: sqlite3.Connection) -> None:
            for obj in objects:
                self._insert_object(c, obj)
                for r in obj.ranges:
                    row = c.execute(
                        "SELECT epoch, end_offset FROM streams WHERE stream_id=?", (r.stream_id,)
                    ).fetchone()
                    if row is None:
                        # Deleted with its topic: its data must not come back, like a fenced owner's.
                        raise FencedError(f"stream {r.stream_id} does not exist")
                    if row[0] != r.epoch:
                        raise FencedError(f"stream {r.stream_id}: epoch {r.epoch} was fenced by epoch {row[0]}")
                    if row[1] != r.start_offset:
                        raise StorageError(
                            f"stream {r.stream_id}: object range starts at {r.start_offset}, "
                            f"but the stream's committed end is {row[1]}"
                        )
                    c.execute("UPDATE streams SET end_offset=? WHERE stream_id=?", (r.end_offset, r.stream_id))

        await self._run(tx)

    @staticmethod
    def _insert_object(c: sqlite3.Connection, obj: ObjectCommit) -> None:
        cur = c.execute(
            "UPDATE objects SET key=?, size=?, kind=?, state=?, crc=? WHERE object_id=? AND state=?",
            (obj.key, obj.size, obj.kind, COMMITTED, obj.crc, obj.object_id, PREPARED),
        )
        if cur.rowcount != 1:
            raise ObjectGone(f"object {obj.object_id} is not prepared any more (its upload took too long)")
        data_ms = obj.data_ms or _now_ms()
        sizes = obj.range_sizes or (0,) * len(obj.ranges)
        c.executemany(
            "INSERT INTO object_ranges (stream_id, start_offset, end_offset, object_id, size, data_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (r.stream_id, r.start_offset, r.end_offset, obj.object_id, n, data_ms)
                for r, n in zip(obj.ranges, sizes, strict=True)
            ],
        )

    async def find_objects(self, stream_id: int, offset: int, limit: int = 16) -> list[ObjectRange]:
        def tx(c: sqlite3.Connection) -> list[ObjectRange]:
            rows = c.execute(
                "SELECT o.object_id, o.key, o.size, r.start_offset, r.end_offset FROM object_ranges r "
                "JOIN objects o ON o.object_id = r.object_id "
                "WHERE r.stream_id=? AND r.end_offset > ? ORDER BY r.start_offset LIMIT ?",
                (stream_id, offset, limit),
            ).fetchall()
            return [ObjectRange(oid, key, size, stream_id, s, e) for oid, key, size, s, e in rows]

        return await self._run(tx)

    # --- WAL ownership ---------------------------------------------------------------------

    async def acquire_wal(self, wal_id: str, owner: str) -> int:
        def tx(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT epoch FROM wal_owners WHERE wal_id=?", (wal_id,)).fetchone()
            epoch = 1 if row is None else row[0] + 1
            c.execute(
                "INSERT INTO wal_owners VALUES (?, ?, ?) ON CONFLICT(wal_id) DO UPDATE SET owner=?, epoch=?",
                (wal_id, owner, epoch, owner, epoch),
            )
            return epoch

        return await self._run(tx)

    async def wal_owner(self, wal_id: str) -> WalOwner | None:
        def tx(c: sqlite3.Connection) -> WalOwner | None:
            row = c.execute("SELECT owner, epoch FROM wal_owners WHERE wal_id=?", (wal_id,)).fetchone()
            return None if row is None else WalOwner(wal_id, row[0], row[1])

        return await self._run(tx)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._writer.close()
        self._reader.close()
