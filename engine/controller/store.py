"""The controller's durable tables behind one small interface: SQLite (the default) or PostgreSQL.

ControllerState keeps everything in memory and writes each change through in one
transaction (`begin` ... `commit`). The rows are plain tuples in the column order
of the tables; state.py owns their meaning.

On PostgreSQL the store may hold a leader lease (engine/controller/lease.py): every
transaction then starts by reading the lease row with FOR SHARE and checking that
its epoch is still the one this controller won. A controller that lost the lease
(paused past its expiry, cut off) therefore writes nothing; a standby taking the
lease waits for a transaction under way to finish, so none straddles the handover.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import psycopg


class NotLeader(Exception):
    """This controller's lease was taken over: it must not write (nor answer) any more."""


@dataclass
class Loaded:
    meta: dict[str, str] = field(default_factory=dict)
    #: (id, zone, host, port, epoch, state, wal json)
    brokers: list[tuple[Any, ...]] = field(default_factory=list)
    #: (id, body json)
    takeovers: list[tuple[int, str]] = field(default_factory=list)
    #: (name, id, internal, replication_factor, configs json)
    topics: list[tuple[Any, ...]] = field(default_factory=list)
    #: (topic, idx, leader, leader_epoch, stream_id, target, move_id, snapshot_end), by topic and idx
    partitions: list[tuple[Any, ...]] = field(default_factory=list)
    #: (topic, idx, msgpack body)
    snapshots: list[tuple[str, int, bytes]] = field(default_factory=list)


class ControllerStore(Protocol):
    def load(self) -> Loaded: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def save_meta(self, rows: list[tuple[str, str]]) -> None: ...
    #: (id, zone, host, port, epoch, alive, state, wal json)
    def save_broker(self, row: tuple[Any, ...]) -> None: ...
    def delete_broker(self, broker_id: int) -> None: ...
    def save_takeover(self, takeover_id: int, body: str) -> None: ...
    def delete_takeover(self, takeover_id: int) -> None: ...
    def save_topic(self, row: tuple[Any, ...], partitions: list[tuple[Any, ...]]) -> None: ...
    def delete_topic(self, name: str) -> None: ...
    def save_snapshot(self, topic: str, idx: int, body: bytes) -> None: ...
    def close(self) -> None: ...


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS brokers (
    id INTEGER PRIMARY KEY, zone TEXT NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL,
    epoch INTEGER NOT NULL, alive INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY, id TEXT NOT NULL, internal INTEGER NOT NULL,
    replication_factor INTEGER NOT NULL, configs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL, idx INTEGER NOT NULL, leader INTEGER NOT NULL,
    leader_epoch INTEGER NOT NULL, stream_id INTEGER NOT NULL, PRIMARY KEY (topic, idx)
);
CREATE TABLE IF NOT EXISTS wal_takeovers (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partition_snapshots (
    topic TEXT NOT NULL, idx INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (topic, idx)
);
"""
# Columns added after the first release; added to older files on open.
_BROKER_COLUMNS = {"state": "TEXT NOT NULL DEFAULT 'running'", "wal": "TEXT NOT NULL DEFAULT '{}'"}
_PARTITION_COLUMNS = {
    "target": "INTEGER NOT NULL DEFAULT -1",
    "move_id": "INTEGER NOT NULL DEFAULT -1",
    "snapshot_end": "INTEGER NOT NULL DEFAULT -1",
}
_PARTITION_SELECT = (
    "SELECT topic, idx, leader, leader_epoch, stream_id, target, move_id, snapshot_end FROM {} ORDER BY topic, idx"
)


class SqliteControllerStore:
    """controller.db next to the controller: one process, one machine."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SQLITE_SCHEMA)
        for table, columns in (("brokers", _BROKER_COLUMNS), ("partitions", _PARTITION_COLUMNS)):
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for column, decl in columns.items():
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def load(self) -> Loaded:
        db = self.db
        return Loaded(
            meta=dict(db.execute("SELECT key, value FROM meta").fetchall()),
            brokers=db.execute("SELECT id, zone, host, port, epoch, state, wal FROM brokers").fetchall(),
            takeovers=db.execute("SELECT id, body FROM wal_takeovers").fetchall(),
            topics=db.execute("SELECT name, id, internal, replication_factor, configs FROM topics").fetchall(),
            partitions=db.execute(_PARTITION_SELECT.format("partitions")).fetchall(),
            snapshots=db.execute("SELECT topic, idx, body FROM partition_snapshots").fetchall(),
        )

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        self.db.execute("ROLLBACK")

    def save_meta(self, rows: list[tuple[str, str]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows)

    def save_broker(self, row: tuple[Any, ...]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO brokers (id, zone, host, port, epoch, alive, state, wal) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    def delete_broker(self, broker_id: int) -> None:
        self.db.execute("DELETE FROM brokers WHERE id=?", (broker_id,))

    def save_takeover(self, takeover_id: int, body: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO wal_takeovers VALUES (?, ?)", (takeover_id, body))

    def delete_takeover(self, takeover_id: int) -> None:
        self.db.execute("DELETE FROM wal_takeovers WHERE id=?", (takeover_id,))

    def save_topic(self, row: tuple[Any, ...], partitions: list[tuple[Any, ...]]) -> None:
        self.db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?, ?, ?, ?)", row)
        self.db.execute("DELETE FROM partitions WHERE topic=?", (row[0],))
        self.db.executemany(
            "INSERT INTO partitions (topic, idx, leader, leader_epoch, stream_id, target, move_id, snapshot_end) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            partitions,
        )

    def delete_topic(self, name: str) -> None:
        for table, column in (("topics", "name"), ("partitions", "topic"), ("partition_snapshots", "topic")):
            self.db.execute(f"DELETE FROM {table} WHERE {column}=?", (name,))

    def save_snapshot(self, topic: str, idx: int, body: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO partition_snapshots VALUES (?, ?, ?)", (topic, idx, body))

    def close(self) -> None:
        self.db.close()


class PostgresControllerStore:
    """The controller's tables in the cluster's PostgreSQL database (schema: engine/postgres.py).

    `lease_epoch`: when set, every transaction checks that the lease is still at that epoch.
    """

    def __init__(self, url: str, lease_epoch: int | None = None) -> None:
        from engine.postgres import check_schema, connect

        self.url = url
        self.lease_epoch = lease_epoch
        self.conn: psycopg.Connection[Any] = connect(url)
        try:
            check_schema(self.conn, url)
        except BaseException:
            self.conn.close()
            raise

    def _execute(self, sql: str, params: Any = ()) -> Any:
        import psycopg

        from engine.postgres import PgError, describe

        try:
            return self.conn.execute(sql, params)  # type: ignore[arg-type]
        except psycopg.OperationalError as e:
            raise PgError(f"metadata database: {describe(self.url, e)}") from None

    def load(self) -> Loaded:
        q = self._execute
        return Loaded(
            meta=dict(q("SELECT key, value FROM controller_meta").fetchall()),
            brokers=q("SELECT id, zone, host, port, epoch, state, wal FROM brokers").fetchall(),
            takeovers=q("SELECT id, body FROM wal_takeovers").fetchall(),
            topics=q("SELECT name, id, internal, replication_factor, configs FROM topics").fetchall(),
            partitions=q(_PARTITION_SELECT.format("partitions")).fetchall(),
            snapshots=[(t, i, bytes(b)) for t, i, b in q("SELECT topic, idx, body FROM partition_snapshots")],
        )

    def begin(self) -> None:
        if self.conn.broken or self.conn.closed:
            from engine.postgres import connect

            self.conn = connect(self.url)
        self._execute("BEGIN")
        if self.lease_epoch is not None:
            row = self._execute("SELECT epoch, holder FROM controller_lease WHERE id = 1 FOR SHARE").fetchone()
            if row is None or int(row[0]) != self.lease_epoch:
                self._execute("ROLLBACK")
                holder = row[1] if row else "nobody"
                raise NotLeader(f"the controller lease moved to epoch {row[0] if row else '?'} ({holder})")

    def commit(self) -> None:
        self._execute("COMMIT")

    def rollback(self) -> None:
        if not self.conn.broken and not self.conn.closed:
            self._execute("ROLLBACK")

    def save_meta(self, rows: list[tuple[str, str]]) -> None:
        self.conn.cursor().executemany(
            "INSERT INTO controller_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", rows
        )

    def save_broker(self, row: tuple[Any, ...]) -> None:
        self._execute(
            "INSERT INTO brokers (id, zone, host, port, epoch, alive, state, wal) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET zone=EXCLUDED.zone, host=EXCLUDED.host, port=EXCLUDED.port, "
            "epoch=EXCLUDED.epoch, alive=EXCLUDED.alive, state=EXCLUDED.state, wal=EXCLUDED.wal",
            row,
        )

    def delete_broker(self, broker_id: int) -> None:
        self._execute("DELETE FROM brokers WHERE id=%s", (broker_id,))

    def save_takeover(self, takeover_id: int, body: str) -> None:
        self._execute(
            "INSERT INTO wal_takeovers VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
            (takeover_id, body),
        )

    def delete_takeover(self, takeover_id: int) -> None:
        self._execute("DELETE FROM wal_takeovers WHERE id=%s", (takeover_id,))

    def save_topic(self, row: tuple[Any, ...], partitions: list[tuple[Any, ...]]) -> None:
        self._execute(
            "INSERT INTO topics VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET id=EXCLUDED.id, "
            "internal=EXCLUDED.internal, replication_factor=EXCLUDED.replication_factor, configs=EXCLUDED.configs",
            row,
        )
        self._execute("DELETE FROM partitions WHERE topic=%s", (row[0],))
        if partitions:
            self.conn.cursor().executemany(
                "INSERT INTO partitions (topic, idx, leader, leader_epoch, stream_id, target, move_id, snapshot_end) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                partitions,
            )

    def delete_topic(self, name: str) -> None:
        for table, column in (("topics", "name"), ("partitions", "topic"), ("partition_snapshots", "topic")):
            self._execute(f"DELETE FROM {table} WHERE {column}=%s", (name,))

    def save_snapshot(self, topic: str, idx: int, body: bytes) -> None:
        self._execute(
            "INSERT INTO partition_snapshots VALUES (%s, %s, %s) "
            "ON CONFLICT (topic, idx) DO UPDATE SET body=EXCLUDED.body",
            (topic, idx, body),
        )

    def close(self) -> None:
        self.conn.close()


def open_controller_store(where: str | Path, lease_epoch: int | None = None) -> ControllerStore:
    """A postgresql:// URL opens the PostgreSQL store; anything else is the SQLite file's path."""
    from engine.postgres import is_postgres_url

    if isinstance(where, str) and is_postgres_url(where):
        return PostgresControllerStore(where, lease_epoch)
    return SqliteControllerStore(where)
