"""Unit tests of the object lifecycle's pure parts and of the metadata stores' state changes (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.storage.compact.compactor import plan_compaction, plan_stream_sets
from engine.storage.compact.retention import retention_point
from engine.storage.config import StorageConfig
from engine.storage.errors import FencedError
from engine.storage.metadata import open_metadata_store
from engine.storage.metadata.interface import (
    COMMITTED,
    PREPARED,
    UNREFERENCED,
    MetadataStore,
    ObjectCommit,
    ObjectGone,
    ObjectRecord,
    RangeInfo,
    StreamRange,
)
from engine.storage.metadata.sqlite import SqliteMetadataStore
from engine.storage.objects.format import object_key

MiB = 1 << 20


def rng(start: int, end: int, size: int, kind: str = "stream", data_ms: int = 1000, oid: int = 0) -> RangeInfo:
    return RangeInfo(1, start, end, size, data_ms, oid or start + 1, object_key(oid or start + 1), kind, size)


def test_plan_waits_for_enough_small_stream_objects() -> None:
    cfg = StorageConfig(compaction_object_bytes=8 * MiB, compaction_min_ranges=3)
    two = [rng(0, 10, MiB), rng(10, 20, MiB)]
    assert plan_compaction(two, cfg) == []
    three = [*two, rng(20, 30, MiB)]
    assert plan_compaction(three, cfg) == [three]
    # Data in stream-set objects is split by compact_stream_sets, not merged per stream.
    assert plan_compaction([rng(0, 10, MiB, kind="stream-set"), *three[1:]], cfg) == []


def test_plan_bounds_runs_and_skips_big_stream_objects() -> None:
    cfg = StorageConfig(compaction_object_bytes=4 * MiB, compaction_min_ranges=2)
    ranges = [
        rng(0, 10, 3 * MiB),  # at least half the target: left alone
        rng(10, 20, MiB), rng(20, 30, MiB), rng(30, 40, MiB), rng(40, 50, MiB),  # 4 MiB: one run
        rng(50, 60, MiB), rng(60, 70, MiB),  # the next run
    ]  # fmt: skip
    runs = plan_compaction(ranges, cfg)
    assert [[r.start_offset for r in run] for run in runs] == [[10, 20], [30, 40], [50, 60]]
    assert all(sum(r.size for r in run) <= cfg.compaction_object_bytes for run in runs)


def test_plan_merges_within_a_size_tier() -> None:
    cfg = StorageConfig(compaction_object_bytes=64 * MiB, compaction_min_ranges=4)
    # Three 1 MiB objects and then fresh 100 kB ones: the big ones wait for a fourth of their size.
    ranges = [rng(i * 10, i * 10 + 10, MiB) for i in range(3)]
    ranges += [rng(30 + i * 10, 40 + i * 10, 100_000) for i in range(4)]
    assert [[r.start_offset for r in run] for run in plan_compaction(ranges, cfg)] == [[30, 40, 50, 60]]


def test_plan_keeps_merged_objects_within_a_time_span() -> None:
    cfg = StorageConfig(compaction_object_bytes=64 * MiB, compaction_min_ranges=2)
    ranges = [rng(0, 10, 100, data_ms=0), rng(10, 20, 100, data_ms=5000), rng(20, 30, 100, data_ms=6000)]
    assert [[r.start_offset for r in run] for run in plan_compaction(ranges, cfg, max_span_ms=2000)] == [[10, 20]]
    assert [[r.start_offset for r in run] for run in plan_compaction(ranges, cfg)] == [[0, 10]]


def test_plan_never_joins_ranges_across_a_gap() -> None:
    cfg = StorageConfig(compaction_min_ranges=2)
    assert plan_compaction([rng(0, 10, 100), rng(20, 30, 100)], cfg) == []


def obj(oid: int, created_ms: int, streams: tuple[int, ...] = (1, 2), size: int = MiB) -> ObjectRecord:
    return ObjectRecord(oid, object_key(oid), size, "stream-set", COMMITTED, 0, created_ms, 0, streams)


def test_stream_set_objects_are_split_when_old_or_too_many() -> None:
    cfg = StorageConfig(stream_set_max_age_s=60, max_stream_set_objects=3, compaction_object_bytes=2 * MiB)
    young = [obj(i, created_ms=100_000) for i in range(1, 4)]
    assert plan_stream_sets(young, set(), cfg, now_ms=110_000) == []
    # Too many: the oldest go, down to half the limit, whatever their age (within the target bytes).
    assert plan_stream_sets([*young, obj(4, 100_000)], set(), cfg, now_ms=110_000) == [1, 2]
    # All old: the oldest group of at most the target bytes.
    assert plan_stream_sets(young, set(), cfg, now_ms=200_000) == [1, 2]
    # Objects holding only skipped streams (a compacted topic's) are left to their log cleaner.
    only_skipped = [obj(1, 0, streams=(7,)), obj(2, 0, streams=(7, 8))]
    assert plan_stream_sets(only_skipped, {7}, cfg, now_ms=200_000) == [2]


def test_retention_point_by_bytes_and_age() -> None:
    ranges = [rng(0, 10, 100, data_ms=1000), rng(10, 20, 100, data_ms=2000), rng(20, 30, 100, data_ms=3000)]
    assert retention_point(ranges, 0, now_ms=3500, max_age_ms=-1, max_bytes=-1) == 0
    assert retention_point(ranges, 0, now_ms=3500, max_age_ms=-1, max_bytes=200) == 10
    assert retention_point(ranges, 0, now_ms=3500, max_age_ms=-1, max_bytes=0) == 30
    assert retention_point(ranges, 0, now_ms=3500, max_age_ms=1000, max_bytes=-1) == 20
    # The start never moves back, and a range partly below the start still counts whole.
    assert retention_point(ranges, 15, now_ms=3500, max_age_ms=-1, max_bytes=150) == 15
    assert retention_point(ranges, 15, now_ms=3500, max_age_ms=-1, max_bytes=100) == 20
    assert retention_point(ranges, 25, now_ms=0, max_age_ms=1, max_bytes=-1) == 25


def commit(store: MetadataStore, oid: int, start: int, end: int, kind: str = "stream-set") -> ObjectCommit:
    c = ObjectCommit(oid, object_key(oid), 100, kind, (StreamRange(1, 1, start, end),), crc=7, range_sizes=(90,))
    asyncio.run(store.commit_objects([c]))
    return c


@pytest.fixture
def store(metadata_spec: str) -> Iterator[MetadataStore]:
    s = open_metadata_store(metadata_spec)
    asyncio.run(s.open_stream(1, 1))
    yield s
    asyncio.run(s.close())


def states(store: MetadataStore) -> dict[int, str]:
    return {o.object_id: o.state for o in asyncio.run(store.list_objects())}


def test_objects_go_prepared_committed_unreferenced_forgotten(store: MetadataStore) -> None:
    a, b = asyncio.run(store.next_object_id()), asyncio.run(store.next_object_id())
    assert states(store) == {a: PREPARED, b: PREPARED}
    commit(store, a, 0, 10)
    commit(store, b, 10, 20)
    assert states(store) == {a: COMMITTED, b: COMMITTED}
    asyncio.run(store.trim_stream(1, 1, 12))  # a wholly below the start, b not
    assert states(store) == {a: UNREFERENCED, b: COMMITTED}
    asyncio.run(store.forget_objects([a, b]))  # only unreferenced objects are forgotten
    assert states(store) == {b: COMMITTED}
    [info] = asyncio.run(store.stream_ranges(1))
    assert (info.object_id, info.size, info.start_offset) == (b, 90, 10)


def test_replace_ranges_is_compare_and_swap(store: MetadataStore) -> None:
    ids = [asyncio.run(store.next_object_id()) for _ in range(4)]
    commit(store, ids[0], 0, 10)
    commit(store, ids[1], 10, 20)
    old = asyncio.run(store.stream_ranges(1))
    new = ObjectCommit(ids[2], object_key(ids[2]), 200, "stream", (StreamRange(1, 1, 0, 20),), range_sizes=(180,))
    assert asyncio.run(store.replace_ranges(1, old, [new]))
    assert states(store) == {ids[0]: UNREFERENCED, ids[1]: UNREFERENCED, ids[2]: COMMITTED, ids[3]: PREPARED}
    # A second compactor that planned on the old ranges loses, and its object is unreferenced.
    late = ObjectCommit(ids[3], object_key(ids[3]), 200, "stream", (StreamRange(1, 1, 0, 20),), range_sizes=(180,))
    assert not asyncio.run(store.replace_ranges(1, old, [late]))
    assert states(store)[ids[3]] == UNREFERENCED
    assert [(r.object_id, r.start_offset, r.end_offset) for r in asyncio.run(store.stream_ranges(1))] == [
        (ids[2], 0, 20)
    ]


def test_a_given_up_upload_cannot_commit(store: MetadataStore) -> None:
    oid = asyncio.run(store.next_object_id())
    assert asyncio.run(store.give_up_prepared(older_than_ms=2**62)) == 1
    with pytest.raises(ObjectGone):
        commit(store, oid, 0, 10)


def test_a_deleted_stream_fences_its_uploads(store: MetadataStore) -> None:
    a = asyncio.run(store.next_object_id())
    commit(store, a, 0, 10)
    asyncio.run(store.delete_stream(1))
    assert states(store) == {a: UNREFERENCED}
    b = asyncio.run(store.next_object_id())
    with pytest.raises(FencedError):
        commit(store, b, 10, 20)


def test_docs_list_exactly_the_configs_amq_does_not_act_on() -> None:
    from engine.controller.configs import TOPIC_CONFIGS, unenforced

    text = (Path(__file__).resolve().parents[2] / "docs" / "broker.md").read_text()
    listed = text.split("<!-- unenforced:begin -->", 1)[1].split("<!-- unenforced:end -->", 1)[0]
    names = {n.strip(" `.\n") for n in listed.replace("\n", " ").split(",")}
    assert names == set(unenforced())
    assert all("Accepted for compatibility" in TOPIC_CONFIGS[n].documentation for n in names)
    assert "Accepted" not in TOPIC_CONFIGS["retention.ms"].documentation


def test_a_store_written_before_the_lifecycle_gains_its_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE objects (object_id INTEGER PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL, "
        "kind TEXT NOT NULL, state TEXT NOT NULL);"
        "CREATE TABLE object_ranges (stream_id INTEGER NOT NULL, start_offset INTEGER NOT NULL, "
        "end_offset INTEGER NOT NULL, object_id INTEGER NOT NULL, PRIMARY KEY (stream_id, start_offset));"
        "INSERT INTO objects VALUES (1, 'objects/000000000001', 10, 'stream-set', 'committed');"
    )
    old.commit()
    old.close()
    stores = [SqliteMetadataStore(path), SqliteMetadataStore(path)]  # the second finds them added
    [o] = asyncio.run(stores[0].list_objects())
    assert (o.state, o.crc, o.created_ms) == (COMMITTED, 0, 0)
    for s in stores:
        asyncio.run(s.close())
