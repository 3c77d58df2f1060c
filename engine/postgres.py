"""PostgreSQL as amq's metadata database: connections, the versioned schema, one-line errors.

One database holds both layers' durable state: the storage metadata (streams,
objects, WAL owners; engine/storage/metadata/postgres.py) and the controller's
(brokers, topics, partitions, the leader lease; engine/controller/store.py).
amq creates and migrates it (`amq metadata init|migrate`); a process that finds
an older schema refuses to start (it never migrates behind the operator's back),
and one that finds a newer schema refuses too (its code would not know the tables).

Sessions run at READ COMMITTED with explicit row locks (docs/deploy.md says why)
and synchronous_commit=on whatever the server's default: a commit that returned
is on the server's disk, which the WAL trim and garbage collection rely on.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg


class PgError(Exception):
    """A metadata database problem, worded for one line of output (no password in it)."""


#: Each entry takes the schema from the previous version to this one; never edit a released one.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "storage metadata and controller state",
        """
CREATE TABLE streams (
    stream_id BIGINT PRIMARY KEY, epoch BIGINT NOT NULL,
    start_offset BIGINT NOT NULL, end_offset BIGINT NOT NULL
);
CREATE TABLE objects (
    object_id BIGINT PRIMARY KEY, key TEXT NOT NULL, size BIGINT NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, crc BIGINT NOT NULL DEFAULT 0, created_ms BIGINT NOT NULL DEFAULT 0,
    unreferenced_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX objects_by_state ON objects (state);
CREATE TABLE object_ranges (
    stream_id BIGINT NOT NULL, start_offset BIGINT NOT NULL, end_offset BIGINT NOT NULL,
    object_id BIGINT NOT NULL, size BIGINT NOT NULL DEFAULT 0, data_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (stream_id, start_offset)
);
CREATE INDEX object_ranges_by_object ON object_ranges (object_id);
CREATE TABLE wal_owners (wal_id TEXT PRIMARY KEY, owner TEXT NOT NULL, epoch BIGINT NOT NULL);
CREATE SEQUENCE object_ids;
-- Bumped by every change of a stream's epoch: brokers re-read epochs only when it moved.
CREATE TABLE epoch_changes (id INT PRIMARY KEY, n BIGINT NOT NULL);
INSERT INTO epoch_changes VALUES (1, 0);

CREATE TABLE controller_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE brokers (
    id INT PRIMARY KEY, zone TEXT NOT NULL, host TEXT NOT NULL, port INT NOT NULL, epoch BIGINT NOT NULL,
    alive INT NOT NULL, state TEXT NOT NULL, wal TEXT NOT NULL
);
CREATE TABLE topics (
    name TEXT PRIMARY KEY, id TEXT NOT NULL, internal INT NOT NULL, replication_factor INT NOT NULL,
    configs TEXT NOT NULL
);
CREATE TABLE partitions (
    topic TEXT NOT NULL, idx INT NOT NULL, leader INT NOT NULL, leader_epoch BIGINT NOT NULL,
    stream_id BIGINT NOT NULL, target INT NOT NULL, move_id BIGINT NOT NULL, snapshot_end BIGINT NOT NULL,
    PRIMARY KEY (topic, idx)
);
CREATE TABLE wal_takeovers (id BIGINT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE partition_snapshots (topic TEXT NOT NULL, idx INT NOT NULL, body BYTEA NOT NULL, PRIMARY KEY (topic, idx));
-- One row: who leads the controllers, at which epoch, until when (the server's clock).
CREATE TABLE controller_lease (
    id INT PRIMARY KEY, holder TEXT NOT NULL, address TEXT NOT NULL, epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO controller_lease VALUES (1, '', '', 0, 'epoch');
""",
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
#: pg_advisory_xact_lock key: two `amq metadata migrate` at once run one after the other.
_MIGRATE_LOCK = 0x616D71


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL with its password replaced: safe to print and log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://(unparsable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def describe(url: str, e: BaseException) -> str:
    """One line about a failed connection or query, without the password."""
    text = " ".join(str(e).split()) or type(e).__name__
    pw = _password(url)
    if pw:
        text = text.replace(pw, "***")
    text = re.sub(r"password=\S+", "password=***", text)
    return text


def connect(url: str, *, autocommit: bool = True, timeout: float = 5.0) -> psycopg.Connection[Any]:
    """A session at READ COMMITTED with synchronous commits; PgError on any failure."""
    if not is_postgres_url(url):
        raise PgError(f"not a PostgreSQL URL (postgresql://user:password@host:port/database): {redact(url)!r}")
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        raise PgError("psycopg is not installed: pip install 'psycopg[binary]'") from None
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout)))
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.execute("SET synchronous_commit = on")
    except psycopg.Error as e:
        raise PgError(f"cannot use the metadata database {redact(url)}: {describe(url, e)}") from None
    except ValueError as e:  # a malformed URL or option
        raise PgError(f"bad metadata database URL {redact(url)}: {describe(url, e)}") from None
    return conn


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """0 when amq never initialized this database."""
    row = conn.execute("SELECT to_regclass('amq_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT version FROM amq_schema").fetchone()
    return int(got[0]) if got else 0


def check_schema(conn: psycopg.Connection[Any], url: str) -> None:
    """Refuse a database whose schema is not exactly the one this code knows."""
    have = schema_version(conn)
    if have == SCHEMA_VERSION:
        return
    where = redact(url)
    if have == 0:
        raise PgError(f"the metadata database {where} has no amq schema: run `amq metadata init --metadata URL`")
    if have > SCHEMA_VERSION:
        raise PgError(
            f"the metadata database {where} has schema version {have}, newer than this amq knows "
            f"({SCHEMA_VERSION}): upgrade amq"
        )
    raise PgError(
        f"the metadata database {where} has schema version {have}, older than this amq's ({SCHEMA_VERSION}): "
        "run `amq metadata migrate --metadata URL`"
    )


def migrate(url: str, *, init: bool = False) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION in one transaction. Returns (before, after).

    `init` refuses a database that already holds a schema, so a typo in a URL does not
    quietly adopt someone else's cluster.
    """
    import psycopg

    conn = connect(url)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            before = schema_version(conn)
            if init and before:
                raise PgError(f"the metadata database {redact(url)} is already initialized (schema version {before})")
            if before > SCHEMA_VERSION:
                check_schema(conn, url)
            if before == 0:
                conn.execute("CREATE TABLE amq_schema (version INT NOT NULL)")
                conn.execute("INSERT INTO amq_schema VALUES (0)")
            for version, _, sql in MIGRATIONS:
                if version > before:
                    conn.execute(sql)  # type: ignore[arg-type]
                    conn.execute("UPDATE amq_schema SET version = %s", (version,))
        return before, SCHEMA_VERSION
    except psycopg.Error as e:
        raise PgError(f"migrating {redact(url)} failed: {describe(url, e)}") from None
    finally:
        conn.close()
