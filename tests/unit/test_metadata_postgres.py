"""Storage metadata on a real PostgreSQL server: fencing races, the versioned schema, bad URLs.

The race tests make two owners' transactions truly concurrent: a third session holds the
stream's row lock until both are waiting on it, then lets go. Without the row locks the
store takes, the owner that read the row first would still write after the other's fence.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from engine.devtools.pgserver import PostgresServer
from engine.postgres import SCHEMA_VERSION, PgError, check_schema, connect, migrate
from engine.storage.errors import FencedError
from engine.storage.metadata.interface import MetadataStore, ObjectCommit, StreamRange
from engine.storage.metadata.postgres import PostgresMetadataStore
from engine.storage.objects.format import object_key


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def one_range(store: MetadataStore, epoch: int, start: int, end: int) -> ObjectCommit:
    oid = run(store.next_object_id())
    return ObjectCommit(oid, object_key(oid), 10, "stream-set", (StreamRange(1, epoch, start, end),), range_sizes=(9,))


def test_a_fenced_owner_cannot_commit_and_sees_the_fence(two: tuple[MetadataStore, MetadataStore]) -> None:
    a, b = two
    run(a.open_stream(1, 1))
    run(a.commit_objects([one_range(a, 1, 0, 10)]))
    late = one_range(a, 1, 10, 20)
    assert run(b.open_stream(1, 2)).end_offset == 10
    with pytest.raises(FencedError):
        run(a.commit_objects([late]))
    a.refresh_epochs()
    assert a.current_epochs([1]) == {1: 2}
    with pytest.raises(FencedError):
        run(a.open_stream(1, 1))  # an older owner cannot take it back either
    assert run(b.get_stream(1)).end_offset == 10  # type: ignore[union-attr]


def test_two_owners_acquiring_one_wal_get_distinct_epochs(two: tuple[MetadataStore, MetadataStore]) -> None:
    a, b = two
    got: list[tuple[str, int]] = []
    lock = threading.Lock()

    def acquire(store: MetadataStore, name: str) -> None:
        epoch = run(store.acquire_wal("w", name))
        with lock:
            got.append((name, epoch))

    threads = [threading.Thread(target=acquire, args=(s, n)) for s, n in ((a, "a"), (b, "b")) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e for _, e in got) == list(range(1, 11))
    owner = run(a.wal_owner("w"))
    assert owner is not None and (owner.owner, owner.epoch) in got and owner.epoch == 10


def _while_row_locked(url: str, actions: list[Callable[[], Any]]) -> list[Any]:
    """Run `actions` on threads while another session holds stream 1's row lock; release it once
    every action waits on that lock. Returns each action's result or exception."""
    results: list[Any] = [None] * len(actions)

    def call(i: int) -> None:
        try:
            results[i] = actions[i]()
        except Exception as e:
            results[i] = e

    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
        holder.execute("SELECT 1 FROM streams WHERE stream_id = 1 FOR UPDATE")
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(actions))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            if row and row[0] >= len(actions):
                break
            time.sleep(0.005)
        else:
            pytest.fail("the owners' transactions never waited on the stream's row lock")
        holder.rollback()
        for t in threads:
            t.join(10)
    return results


@pytest.mark.parametrize("round_", range(4))
def test_commit_racing_a_fence_is_either_before_it_or_refused(pg_url: str, round_: int) -> None:
    a, b = PostgresMetadataStore(pg_url), PostgresMetadataStore(pg_url)
    try:
        run(a.open_stream(1, 1))
        run(a.commit_objects([one_range(a, 1, 0, 10)]))
        late = one_range(a, 1, 10, 20)
        committed, opened = _while_row_locked(
            pg_url, [lambda: run(a.commit_objects([late])), lambda: run(b.open_stream(1, 2))]
        )
        assert not isinstance(opened, Exception), opened
        if committed is None:
            # The commit came first: the new owner must start after it, or it would overwrite it.
            assert opened.end_offset == 20
        else:
            assert isinstance(committed, FencedError), committed
            assert opened.end_offset == 10
        assert run(b.get_stream(1)).end_offset == opened.end_offset  # type: ignore[union-attr]
    finally:
        run(a.close())
        run(b.close())


@pytest.mark.parametrize("round_", range(4))
def test_two_owners_opening_one_stream_never_lower_its_epoch(pg_url: str, round_: int) -> None:
    a, b = PostgresMetadataStore(pg_url), PostgresMetadataStore(pg_url)
    try:
        run(a.open_stream(1, 1))
        low, high = _while_row_locked(pg_url, [lambda: run(a.open_stream(1, 2)), lambda: run(b.open_stream(1, 3))])
        assert not isinstance(high, Exception), high
        assert low is None or not isinstance(low, Exception) or isinstance(low, FencedError)
        assert run(a.get_stream(1)).epoch == 3  # type: ignore[union-attr]
    finally:
        run(a.close())
        run(b.close())


def test_schema_versions_are_checked(pg_server: PostgresServer) -> None:
    url = pg_server.ensure_database("schema_check")
    try:
        with pytest.raises(PgError, match="no amq schema: run `amq metadata init"):
            PostgresMetadataStore(url)
        assert migrate(url, init=True) == (0, SCHEMA_VERSION)
        assert migrate(url) == (SCHEMA_VERSION, SCHEMA_VERSION)
        with pytest.raises(PgError, match="already initialized"):
            migrate(url, init=True)
        conn = connect(url)
        conn.execute("UPDATE amq_schema SET version = %s", (SCHEMA_VERSION + 1,))
        with pytest.raises(PgError, match="newer than this amq knows"):
            check_schema(conn, url)
        with pytest.raises(PgError, match="newer"):
            migrate(url)
        conn.close()
    finally:
        pg_server.drop_database("schema_check")


def amq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_cli_init_migrate_and_bad_urls_give_one_line(pg_server: PostgresServer) -> None:
    assert pg_server.info is not None
    url = pg_server.ensure_database("cli_check")
    password = pg_server.info.password
    try:
        out = amq("metadata", "init", "--metadata", url)
        assert out.returncode == 0, out.stderr
        assert f"schema version {SCHEMA_VERSION}" in out.stdout and password not in out.stdout
        assert "nothing to do" in amq("metadata", "migrate", "--metadata", url).stdout
        bad = {
            "wrong password": url.replace(password, "not-the-password"),
            "unreachable": f"postgresql://amq:{password}@127.0.0.1:1/amq",
            "not a URL": "mysql://x",
        }
        for why, value in bad.items():
            out = amq("metadata", "migrate", "--metadata", value)
            assert out.returncode == 1, why
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("amq metadata: error:"), (why, out.stderr)
            assert "Traceback" not in out.stderr and password not in out.stderr + out.stdout, why
        assert "password authentication failed" in amq("metadata", "status", "--metadata", bad["wrong password"]).stderr
    finally:
        pg_server.drop_database("cli_check")
