"""refresh_epochs on both metadata stores: O(1) after this store's own changes, exact after anyone else's.

The WAL refreshes after every sync, before it acknowledges, so a refresh must see an epoch that
another broker raised before the refresh started (the durability rule: a stream taken over
acknowledges nothing after the next sync), while this broker's own opens, uploads and
compactions must not make it re-read every cached epoch (a broker opening thousands of
partitions paid O(partitions) per open).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.storage.metadata.interface import ObjectCommit, StreamRange
from engine.storage.metadata.sqlite import SqliteMetadataStore
from engine.storage.objects.format import object_key


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def count_rereads(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list that counts the store's full re-reads of its cached epochs."""
    calls = [0]
    reread = store._reread_epochs

    def counting() -> None:
        calls[0] += 1
        reread()

    monkeypatch.setattr(store, "_reread_epochs", counting)
    return calls


def in_db(store: Any) -> dict[int, int]:
    return {m.stream_id: m.epoch for m in run(store.list_streams())}


def upload(store: Any, stream_id: int, epoch: int, start: int, end: int) -> None:
    oid = run(store.next_object_id())
    ranges = (StreamRange(stream_id, epoch, start, end),)
    run(store.commit_objects([ObjectCommit(oid, object_key(oid), 10, "stream-set", ranges, range_sizes=(9,))]))


def test_own_opens_uploads_compactions_and_deletes_do_not_reread(
    two: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two
    rereads = count_rereads(a, monkeypatch)
    for s in range(200):
        run(a.open_stream(s, 1))
        a.refresh_epochs()
    for s in range(200, 300):  # several own changes between two refreshes
        run(a.open_stream(s, 1))
    a.refresh_epochs()
    for s in range(0, 300, 7):  # this broker leads them again, at a new epoch
        run(a.open_stream(s, 2))
    run(a.open_stream(1, 1))  # the same epoch: no change
    a.refresh_epochs()
    upload(a, 1, 1, 0, 10)
    upload(a, 1, 1, 10, 20)
    a.refresh_epochs()
    old = run(a.stream_ranges(1))
    oid = run(a.next_object_id())
    merged = ObjectCommit(oid, object_key(oid), 20, "stream", (StreamRange(1, 1, 0, 20),), range_sizes=(18,))
    assert run(a.replace_ranges(1, old, [merged]))
    run(a.trim_stream(1, 1, 10))
    a.refresh_epochs()
    run(a.delete_stream(5))
    a.refresh_epochs()
    assert rereads == [0]
    db = in_db(a)
    assert a.current_epochs(range(300)) == {s: db.get(s, -1) for s in range(300)}
    assert a.current_epochs([5, 7]) == {5: -1, 7: 2}


def test_another_store_raising_an_epoch_is_seen_by_the_next_refresh(
    two: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    rereads = count_rereads(a, monkeypatch)
    for s in range(1, 6):
        run(a.open_stream(s, 1))
    a.refresh_epochs()
    assert rereads == [0]

    run(b.open_stream(2, 2))  # another broker takes stream 2 over
    a.refresh_epochs()
    assert a.current_epochs([2]) == {2: 2} and rereads == [1]

    # Own and foreign changes interleaved between two refreshes, in every order: the foreign one
    # must not hide behind ours.
    epoch, new = 2, 100
    for pattern in (("own", "foreign", "own"), ("foreign", "own"), ("own", "foreign"), ("own", "own", "foreign")):
        before = rereads[0]
        for who in pattern:
            if who == "own":
                run(a.open_stream(new, 1))
                new += 1
            else:
                epoch += 1
                run(b.open_stream(3, epoch))
        a.refresh_epochs()
        assert a.current_epochs([3]) == {3: epoch}, pattern
        assert rereads[0] == before + 1, pattern

    run(b.delete_stream(4))  # its topic was deleted by another broker
    a.refresh_epochs()
    assert a.current_epochs([4]) == {4: -1}

    assert a.current_epochs([99]) == {99: -1}  # looked up before it exists
    run(b.open_stream(99, 6))
    a.refresh_epochs()
    assert a.current_epochs([99]) == {99: 6}

    settled = rereads[0]
    a.refresh_epochs()
    a.refresh_epochs()
    assert rereads[0] == settled  # nothing changed since
    assert a.current_epochs(range(1, 6)) == {1: 1, 2: 2, 3: epoch, 4: -1, 5: 1}


def test_a_refresh_during_an_own_commit_waits_for_it_instead_of_rereading(
    two: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The own transaction committed (its counter value is visible) but has not recorded the value
    as its own yet: the refresh must neither take it for another process's nor skip past it."""
    a, _ = two
    rereads = count_rereads(a, monkeypatch)
    run(a.open_stream(1, 1))
    a.refresh_epochs()
    entered, go = threading.Event(), threading.Event()
    record = a._cache.record_own

    def slow_record(values: Any) -> None:
        entered.set()
        assert go.wait(10)
        record(values)

    monkeypatch.setattr(a._cache, "record_own", slow_record)
    opener = threading.Thread(target=lambda: run(a.open_stream(1, 2)))
    opener.start()
    assert entered.wait(10)
    refresher = threading.Thread(target=a.refresh_epochs)
    refresher.start()
    time.sleep(0.2)
    assert refresher.is_alive()  # waiting for the commit to be recorded
    go.set()
    opener.join(10)
    refresher.join(10)
    assert not refresher.is_alive()
    assert rereads == [0]
    assert a.current_epochs([1]) == {1: 2}


def test_refreshes_racing_own_and_foreign_changes_never_miss_a_foreign_epoch(two: tuple[Any, Any]) -> None:
    """Our broker opens and re-leads streams while another raises the epochs of others; after every
    refresh, each foreign raise that had committed before the refresh began is in the cache."""
    a, b = two
    ours, theirs = range(0, 20), range(20, 40)
    for s in range(40):
        run(a.open_stream(s, 1))
    a.refresh_epochs()
    committed = dict.fromkeys(theirs, 1)  # written once b's commit returned
    stop = threading.Event()
    errors: list[str] = []
    refreshes = [0]

    def owner() -> None:
        loop = asyncio.new_event_loop()
        epoch, new = 1, 1000
        while not stop.is_set():
            epoch += 1
            loop.run_until_complete(a.open_stream(ours[epoch % len(ours)], epoch))
            loop.run_until_complete(a.open_stream(new, 1))
            new += 1
        loop.close()

    def foreign() -> None:
        loop = asyncio.new_event_loop()
        epoch = 1
        while not stop.is_set():
            epoch += 1
            s = theirs[epoch % len(theirs)]
            loop.run_until_complete(b.open_stream(s, epoch))
            committed[s] = epoch
            time.sleep(0.002)
        loop.close()

    def refresher() -> None:
        while not stop.is_set():
            before = dict(committed)
            a.refresh_epochs()
            refreshes[0] += 1
            now = a.current_epochs(theirs)
            errors.extend(f"stream {s}: cached {now[s]} after {e} committed" for s, e in before.items() if now[s] < e)

    threads = [threading.Thread(target=f) for f in (owner, foreign, refresher)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert refreshes[0] > 10
    a.refresh_epochs()
    db = in_db(a)
    assert a.current_epochs(db) == db


def test_an_sqlite_file_from_before_the_epoch_counter_opens_and_counts(tmp_path: Path) -> None:
    """A file an older amq wrote has streams but no epoch_changes: the store adds the counter and
    its triggers on open, and a write by an older amq (no counter in its code) still moves it."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE streams (stream_id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, "
        "start_offset INTEGER NOT NULL, end_offset INTEGER NOT NULL);"
        "INSERT INTO streams VALUES (1, 3, 0, 10), (2, 1, 0, 0);"
    )
    old.commit()
    a, b = SqliteMetadataStore(path), SqliteMetadataStore(path)  # the second finds the counter there
    try:
        assert a.current_epochs([1, 2]) == {1: 3, 2: 1}
        assert run(a.open_stream(1, 4)).end_offset == 10
        run(b.open_stream(2, 2))
        a.refresh_epochs()
        assert a.current_epochs([1, 2]) == {1: 4, 2: 2}
        old.execute("UPDATE streams SET epoch = 9 WHERE stream_id = 1")  # as an older amq would
        old.commit()
        a.refresh_epochs()
        assert a.current_epochs([1]) == {1: 9}
    finally:
        old.close()
        run(a.close())
        run(b.close())
