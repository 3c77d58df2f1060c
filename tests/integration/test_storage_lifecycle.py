"""Object lifecycle on the real S3 server: compaction, retention, stream deletion, garbage collection.

Objects are counted with a boto3 listing of the bucket, never through our metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import boto3
import pytest

from engine.storage.compact.retention import retention_point
from engine.storage.engine import StorageEngine
from engine.storage.errors import OffsetOutOfRange
from engine.storage.metadata.interface import UNREFERENCED, ObjectRange
from engine.storage.metadata.sqlite import SqliteMetadataStore
from engine.storage.objects.store import ObjectStoreConfig, make_object_store
from engine.storage.stream import Stream
from tests.integration.storage_helpers import make_engine, payload, stop_engine, storage_config


def s3_keys(s3: ObjectStoreConfig) -> dict[str, int]:
    """Every object under this test's prefix (key without prefix -> size), by the S3 API."""
    client = boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
    )  # fmt: skip
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=s3.prefix + "objects/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(s3.prefix) :]] = int(o["Size"])
    return out


async def fill(engine: StorageEngine, streams: list[Stream], rounds: int, size: int = 2000) -> dict[int, str]:
    """`rounds` uploads, each a stream-set object holding every stream; returns a digest per stream."""
    for r in range(rounds):
        futs = [s.append(payload(s.stream_id, r * 10 + i, size), 2) for s in streams for i in range(3)]
        await asyncio.gather(*futs)
        await engine.flush()
    return {s.stream_id: await digest(s) for s in streams}


async def digest(stream: Stream, start: int | None = None) -> str:
    h = hashlib.sha256()
    offset = stream.start_offset if start is None else start
    while offset < stream.end_offset:
        batches = await stream.read(offset, 256 << 10)
        assert batches
        for b in batches:
            h.update(b.base_offset.to_bytes(8, "big") + bytes(b.payload))
            offset = b.end_offset
    return h.hexdigest()


def cold(engine: StorageEngine) -> None:
    """Empty the caches so every read goes to S3."""
    engine.log_cache.max_bytes = 0
    engine.log_cache.evict()
    engine.block_cache.clear()


def test_compaction_keeps_bytes_and_frees_stream_set_objects(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    async def main() -> None:
        engine = await make_engine(data_dir, s3_config, "file", compaction_min_ranges=4, gc_grace_s=0.5,
                                   max_stream_set_objects=0, compaction_object_bytes=40_000)  # fmt: skip
        streams = [await engine.open_stream(sid, 1) for sid in range(1, 6)]
        before = await fill(engine, streams, rounds=8)
        cold(engine)
        assert {s.stream_id: await digest(s) for s in streams} == before
        uploaded = s3_keys(s3_config)
        assert len(uploaded) == 8  # one stream-set object per upload
        # Split in groups of at most 40 kB (one ~30 kB object each): each stream gets a stream object.
        split = 0
        while n := await engine.compactor.compact_stream_sets():
            split += n
            cold(engine)
            # Reads during and after: the stream objects serve them, the old objects still exist.
            assert {s.stream_id: await digest(s) for s in streams} == before
        assert split == 8
        for s in streams:
            ranges = await engine.metadata.stream_ranges(s.stream_id)
            assert {r.kind for r in ranges} == {"stream"} and len(ranges) == 8
            # 8 ranges of 6 kB, one size tier: two runs of four.
            assert await engine.compactor.compact_stream(s.stream_id) == 2
            assert await engine.compactor.compact_stream(s.stream_id) == 0
            ranges = await engine.metadata.stream_ranges(s.stream_id)
            assert ranges[0].start_offset == 0 and ranges[-1].end_offset == s.end_offset
            assert len({r.object_id for r in ranges}) == 2
            assert await digest(s) == before[s.stream_id]
        # Every stream moved out of the stream-set objects: all eight are unreferenced (with the
        # merged stream objects), still in S3.
        records = await engine.metadata.list_objects()
        assert set(uploaded) <= {o.key for o in records if o.state == UNREFERENCED}
        assert set(uploaded) <= set(s3_keys(s3_config))
        # What is still inside its grace period stays, and the collector knows when it falls due.
        await engine.gc.run_once()
        waiting = [o.unreferenced_ms for o in await engine.metadata.list_objects([UNREFERENCED])]
        assert waiting and engine.gc.next_due == pytest.approx(min(waiting) / 1000 + 0.5)
        await asyncio.sleep(max(waiting) / 1000 + 0.5 - time.time() + 0.1)
        await engine.gc.run_once(strays=False)
        assert engine.gc.stats.deleted >= 8 and engine.gc.next_due is None
        left = s3_keys(s3_config)
        assert not set(left) & set(uploaded)
        referenced = {r.key for s in streams for r in await engine.metadata.stream_ranges(s.stream_id)}
        assert set(left) == referenced
        cold(engine)
        assert {s.stream_id: await digest(s) for s in streams} == before
        # Nothing left to do: a second pass writes nothing.
        assert [await engine.compactor.compact_stream(s.stream_id) for s in streams] == [0] * 5
        assert await engine.compactor.compact_stream_sets() == 0
        await stop_engine(engine)
        # A restart reads the same bytes from the stream objects.
        engine = await make_engine(data_dir, s3_config, "file")
        again = [await engine.open_stream(sid, 2) for sid in range(1, 6)]
        assert {s.stream_id: await digest(s) for s in again} == before
        await stop_engine(engine)

    asyncio.run(main())


def test_compaction_loses_the_race_with_retention_and_changes_nothing(
    data_dir: Path, s3_config: ObjectStoreConfig
) -> None:
    async def main() -> None:
        engine = await make_engine(data_dir, s3_config, "file", compaction_min_ranges=2, gc_grace_s=0.0)
        stream = await engine.open_stream(1, 1)
        await fill(engine, [stream], rounds=4)
        ranges = await engine.metadata.stream_ranges(1)
        run = ranges[:2]
        # Retention moves the start past the first range after the compactor planned the run.
        await stream.trim(ranges[0].end_offset)
        from engine.storage.uploader import put_object

        batches = [b for b in await stream.read(ranges[1].start_offset, 1 << 20) if b.end_offset <= run[-1].end_offset]
        commit = await put_object(engine.store, engine.metadata, engine.config, engine.upload_stats, "stream",
                                  [(1, 1, batches)])  # fmt: skip
        assert not await engine.metadata.replace_ranges(1, run, [commit])
        after = await engine.metadata.stream_ranges(1)
        assert [r.object_id for r in after] == [r.object_id for r in ranges[1:]]
        unreferenced = {o.key for o in await engine.metadata.list_objects([UNREFERENCED])}
        assert unreferenced == {ranges[0].key, commit.key}
        await engine.gc.run_once()
        assert set(s3_keys(s3_config)) == {r.key for r in after}
        await stop_engine(engine)

    asyncio.run(main())


def test_retention_by_size_and_age_deletes_objects(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    async def main() -> None:
        engine = await make_engine(data_dir, s3_config, "file", gc_grace_s=0.0)
        stream = await engine.open_stream(1, 1)
        await fill(engine, [stream], rounds=6, size=1000)
        ranges = await engine.metadata.stream_ranges(1)
        assert len(s3_keys(s3_config)) == 6
        per_range = ranges[0].size
        assert per_range == 3000
        now = int(time.time() * 1000)
        # Keep at least two ranges' worth: four ranges go.
        point = retention_point(ranges, stream.start_offset, now, -1, 2 * per_range)
        assert point == ranges[3].end_offset
        await stream.trim(point)
        await engine.gc.run_once()
        assert sorted(s3_keys(s3_config)) == sorted(r.key for r in ranges[4:])
        # Age: everything is older than 0 ms except nothing; with a limit of an hour nothing goes.
        assert retention_point(ranges[4:], point, now, 3_600_000, -1) == point
        assert retention_point(ranges[4:], point, now + 10, 0, -1) == stream.end_offset
        await stream.trim(stream.end_offset)
        await engine.gc.run_once()
        assert s3_keys(s3_config) == {}
        assert stream.start_offset == stream.end_offset == 36
        await stop_engine(engine)

    asyncio.run(main())


def test_deleted_stream_and_crash_leftovers_are_collected(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    async def main() -> None:
        engine = await make_engine(data_dir, s3_config, "file", gc_grace_s=0.3, prepared_timeout_s=0.3)
        a, b = await engine.open_stream(1, 1), await engine.open_stream(2, 1)
        await fill(engine, [a], rounds=2)
        kept = (await fill(engine, [b], rounds=1))[2]
        # An upload that died between its PUT and its commit, and a key nobody knows.
        oid = await engine.metadata.next_object_id()
        await engine.store.put(f"objects/{oid:012d}", b"uploaded, never committed")
        await engine.store.put("objects/999999999999", b"from before")
        await engine.close_stream(a)
        await engine.metadata.delete_stream(1)
        assert len(s3_keys(s3_config)) == 5
        await engine.gc.run_once()  # inside the grace period: nothing goes
        assert len(s3_keys(s3_config)) == 5
        await asyncio.sleep(0.4)
        await engine.gc.run_once()  # a's objects; the prepared one is given up now
        await asyncio.sleep(1.4)  # the unknown key's age is known to the second only
        await engine.gc.run_once()
        left = s3_keys(s3_config)
        assert sorted(left) == sorted(r.key for r in await engine.metadata.stream_ranges(2))
        cold(engine)
        assert await digest(b) == kept
        await stop_engine(engine)

    asyncio.run(main())


class RacingMetadata(SqliteMetadataStore):
    """The real metadata store; `race` runs once, right after a find_objects for `race_at` (stream,
    offset) resolved its ranges: what compaction, retention and garbage collection can do between
    a read's resolving and its GETs. (Keyed by offset: readahead resolves other offsets meanwhile.)"""

    race: Callable[[], Awaitable[None]] | None = None
    race_at: tuple[int, int] = (-1, -1)
    race_first = False  # run it before resolving instead

    async def find_objects(self, stream_id: int, offset: int, limit: int = 16) -> list[ObjectRange]:
        race = self.race if (stream_id, offset) == self.race_at else None
        if race is not None and self.race_first:
            self.race = None
            await race()
        found = await super().find_objects(stream_id, offset, limit)
        if race is not None and not self.race_first:
            self.race = None
            await race()
        return found


async def racing_engine(data_dir: Path, s3: ObjectStoreConfig, **overrides: object) -> StorageEngine:
    metadata = RacingMetadata(data_dir / "metadata.db")
    engine = StorageEngine(storage_config(data_dir, "file", **overrides), make_object_store(s3), metadata)
    await engine.start()
    return engine


def test_a_read_whose_objects_are_deleted_under_it_resolves_again(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    """No grace period at all: the objects a read resolved are compacted away and deleted before
    its first GET. The read resolves again and returns the same bytes from the new objects;
    after retention moved the start past it, it gets OffsetOutOfRange, as a later read would."""

    async def main() -> None:
        engine = await racing_engine(data_dir, s3_config, gc_grace_s=0.0, max_stream_set_objects=0)
        metadata = engine.metadata
        assert isinstance(metadata, RacingMetadata)
        streams = [await engine.open_stream(sid, 1) for sid in (1, 2)]
        before = await fill(engine, streams, rounds=4)
        old = {r.key for r in await metadata.stream_ranges(1)}

        async def compact_and_collect() -> None:
            while await engine.compactor.compact_stream_sets():
                pass
            await engine.gc.run_once()

        cold(engine)
        metadata.race, metadata.race_at = compact_and_collect, (1, 0)
        assert await digest(streams[0]) == before[1]
        assert metadata.race is None, "the race did not run"
        assert not old & set(s3_keys(s3_config)), "the objects the read resolved first are still there"
        # Retention: the start moves past the read's offset and the objects go before its GET.
        stream = streams[1]
        await fill(engine, [stream], rounds=2)
        ranges = await metadata.stream_ranges(2)
        assert ranges[0].kind == "stream" and len(ranges) == 3

        async def retain_and_collect() -> None:
            await stream.trim(ranges[-1].start_offset)
            await engine.gc.run_once()

        cold(engine)
        metadata.race, metadata.race_at = retain_and_collect, (2, 0)
        with pytest.raises(OffsetOutOfRange):
            await stream.read(0, 1 << 20)
        assert metadata.race is None
        assert await digest(stream) == await digest(stream, ranges[-1].start_offset)
        # Retention moves the start after the stream checked the offset, before the read resolves
        # it: no range holds the offset any more, and the read says so rather than skip ahead.
        await fill(engine, [stream], rounds=1)
        ranges = await metadata.stream_ranges(2)

        async def retain() -> None:
            await stream.trim(ranges[-1].start_offset)

        cold(engine)
        offset = stream.start_offset
        metadata.race, metadata.race_at, metadata.race_first = retain, (2, offset), True
        with pytest.raises(OffsetOutOfRange):
            await stream.read(offset, 1 << 20)
        assert metadata.race is None
        await stop_engine(engine)

    asyncio.run(main())
