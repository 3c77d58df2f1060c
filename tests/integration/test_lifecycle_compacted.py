"""cleanup.policy=compact on a real cluster: 100k records over 1k keys with tombstones.

After compaction a consumer from the start sees the latest value of every live key once, no
deleted key, offsets increasing (with gaps); the group coordinator's __consumer_offsets keeps
working on its compacted streams. Below the cluster, the storage engine answers a read at every
offset of a compacted stream, gaps included, from the log cache and from objects.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from engine.broker.groups.coordinator import partition_for
from engine.broker.log_cleaner import KeyCleaner
from engine.protocol.records import Record, build_batch, decode_records
from engine.storage.engine import StorageEngine
from engine.storage.objects.format import Batch
from engine.storage.objects.store import ObjectStoreConfig
from engine.storage.stream import Stream
from tests.integration.cluster_fixture import LocalCluster
from tests.integration.lifecycle_helpers import start_lifecycle_cluster, wait_for
from tests.integration.storage_helpers import make_engine, stop_engine

KEYS = 1000
RECORDS = 100_000
DELETED = range(0, KEYS, 10)  # every tenth key ends with a tombstone


def read_all(cluster: LocalCluster, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        c.assign([TopicPartition(topic, 0, lo)])
        out: list[tuple[int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 60
        while (not out or out[-1][0] < hi - 1) and time.monotonic() < deadline:
            for m in c.consume(10_000, timeout=0.5):
                assert m.error() is None, m.error()
                out.append((m.offset(), m.key(), m.value()))
        return out
    finally:
        c.close()


def test_compacted_topic_keeps_the_latest_value_per_key(tmp_path: Path) -> None:
    cluster = start_lifecycle_cluster(tmp_path)
    try:
        topic = "compacted"
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        configs = {"cleanup.policy": "compact", "delete.retention.ms": "0", "min.cleanable.dirty.ratio": "0.1"}
        admin.create_topics([NewTopic(topic, 1, 1, config=configs)])[topic].result(30)
        p = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 20, "batch.num.messages": 2000,
                      "enable.idempotence": True, "compression.type": "lz4"})  # fmt: skip
        latest: dict[bytes, bytes] = {}
        for i in range(RECORDS):
            key = b"k%04d" % (i % KEYS)
            value = b"v%06d" % i
            p.produce(topic, key=key, value=value)
            latest[key] = value
            if i % 20_000 == 0:
                assert p.flush(60) == 0
        for k in DELETED:
            key = b"k%04d" % k
            p.produce(topic, key=key, value=None)
            del latest[key]
        assert p.flush(60) == 0
        end = RECORDS + len(DELETED)

        def compacted() -> bool:
            got = read_all(cluster, topic)
            return len(got) == len(latest) + 1 or len(got) == len(latest)

        wait_for("compaction", compacted, timeout=60)
        got = read_all(cluster, topic)
        offsets = [o for o, _, _ in got]
        assert offsets == sorted(set(offsets)) and offsets[-1] == end - 1
        seen = {k: v for _, k, v in got}
        # Every live key once, with its latest value; no deleted key, except that the stream's very
        # last record (a tombstone here) is kept to mark where the stream ends.
        last_key = b"k%04d" % DELETED[-1]
        assert {k: v for k, v in seen.items() if k != last_key} == latest
        assert len(got) - (last_key in seen) == len(latest)
        # The partition still takes and serves writes after compaction, at the next offset.
        p.produce(topic, key=b"k0001", value=b"after")
        assert p.flush(30) == 0
        assert read_all(cluster, topic)[-1] == (end, b"k0001", b"after")

        # Consumer groups live in __consumer_offsets (compacted): commits still read back.
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "g1", "enable.auto.commit": False})
        for n in range(30):
            c.commit(offsets=[TopicPartition(topic, 0, n + 1)], asynchronous=False)
        c.close()
        time.sleep(2.0)  # several lifecycle passes over the group's partition
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "g1"})
        [tp] = c.committed([TopicPartition(topic, 0)], timeout=10)
        c.close()
        assert tp.offset == 30
    finally:
        cluster.stop()


def test_groups_keep_their_offsets_while_their_partition_is_compacted(tmp_path: Path) -> None:
    """The log cleaner (no lag) rewrites a group's __consumer_offsets partition while members join,
    commit and leave; committed offsets read back, and again after kill -9 (the coordinator
    replays the compacted partition, gaps and all), and consumption resumes from them."""
    cluster = start_lifecycle_cluster(tmp_path)
    try:
        bs, topic, group = cluster.bootstrap, "orders", "readers"
        admin = AdminClient({"bootstrap.servers": bs})
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
        p = Producer({"bootstrap.servers": bs, "linger.ms": 5})
        index = partition_for(group, 50)
        log = cluster.broker_log

        def cleaned() -> int:
            return log.read_text().count(f"__consumer_offsets-{index}: compacted")

        def member() -> Consumer:
            c = Consumer({"bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "earliest",
                          "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
                          "partition.assignment.strategy": "range"})  # fmt: skip
            c.subscribe([topic])
            return c

        members: list[Consumer] = []
        done = [0, 0, 0]  # per partition: the offset committed after each record consumed
        for r in range(3):
            for i in range(100 * r, 100 * (r + 1)):
                p.produce(topic, key=b"%d" % i, value=b"v%d" % i, partition=i % 3)
            assert p.flush(30) == 0
            members.append(member())
            before = cleaned()
            # Each round a join (the group's record) and a hundred commits (offset records), while
            # the cleaner rewrites the partition at least once.
            deadline = time.monotonic() + 60
            while cleaned() <= before or sum(done) < 100 * (r + 1):
                assert time.monotonic() < deadline, f"round {r}: {sum(done)} committed, {cleaned() - before} cleanings"
                for c in members:
                    m = c.poll(0.05)
                    if m is None or m.error() is not None:
                        continue
                    try:
                        c.commit(message=m, asynchronous=False)
                    except KafkaException:
                        continue  # a rebalance took the partition: its next owner reads the record again
                    done[m.partition()] = max(done[m.partition()], m.offset() + 1)
        parts = [TopicPartition(topic, n) for n in range(3)]
        assert [tp.offset for tp in members[0].committed(parts, timeout=10)] == done == [100, 100, 100]
        for c in members:
            c.close()
        cluster.kill_broker()
        cluster.restart_broker()
        c = member()
        try:
            assert [tp.offset for tp in c.committed(parts, timeout=30)] == done
            # Consumption resumes where the group left off: only records produced after it.
            for i in range(300, 330):
                p.produce(topic, key=b"%d" % i, value=b"v%d" % i, partition=i % 3)
            assert p.flush(30) == 0
            rest: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(rest) < 30:
                assert time.monotonic() < deadline, f"{len(rest)} of 30 records after the restart"
                m = c.poll(0.1)
                if m is not None and m.error() is None:
                    rest.append(m.value())
            assert sorted(rest) == sorted(b"v%d" % i for i in range(300, 330))
        finally:
            c.close()
    finally:
        cluster.stop()


# -- reads across the gaps log compaction leaves (the storage engine on the real S3 server) --------------

Kv = tuple[bytes, bytes | None]


def kafka_appends(seed: int, count: int) -> list[list[list[Kv]]]:
    """`count` appends, each one or two Kafka batches of one to three records over 24 keys (a few
    tombstones): most batches lose every record to a later one (a gap), some lose a few, and some
    appends lose only their second Kafka batch (the stored batch then ends early)."""
    rng = random.Random(seed)
    return [
        [[(b"k%d" % rng.randrange(24), None if rng.random() < 0.1 else b"v%d.%d" % (i, j))
          for j in range(rng.randint(1, 3))] for _ in range(rng.choice((1, 1, 2)))]
        for i in range(count)
    ]  # fmt: skip


async def append_kafka(stream: Stream, kbs: list[list[Kv]]) -> dict[int, Record]:
    """One stream append of Kafka batches at their true offsets; its records by offset."""
    base = stream.next_offset
    payload = b""
    records: dict[int, Record] = {}
    for kb in kbs:
        first = base + len(records)
        payload += build_batch([Record(k, v) for k, v in kb], base_offset=first, now_ms=1000)
        records.update({first + j: Record(k, v, offset=first + j) for j, (k, v) in enumerate(kb)})
    await stream.append(payload, len(records))
    return records


async def stored_batches(stream: Stream, end: int) -> list[Batch]:
    out: list[Batch] = []
    offset = stream.start_offset
    while offset < end:
        got = await stream.read(offset, 1 << 20)
        out.extend(got)
        offset = got[-1].end_offset
    return out


def check_read(offset: int, got: list[Batch], written: dict[int, Record], kept: list[int], done: bool) -> None:
    """A read at `offset` neither skips a kept record nor invents one; once compaction is done, what
    it returns from `offset` on is exactly the kept records."""
    assert got, f"read at {offset}: nothing, below the end"
    assert got[0].end_offset > offset, f"read at {offset}: the first batch ends at {got[0].end_offset}"
    assert all(b.base_offset >= a.end_offset for a, b in itertools.pairwise(got)), f"read at {offset}"
    records = [r for b in got for r in decode_records(b.payload)]
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets)) and offsets[-1] >= offset
    assert all((r.key, r.value) == (written[r.offset].key, written[r.offset].value) for r in records)
    expected = [o for o in kept if offset <= o <= offsets[-1]]
    returned = [o for o in offsets if o >= offset]
    if done:
        assert returned == expected, f"read at {offset}: {returned} instead of {expected}"
    else:
        assert not set(expected) - set(returned), f"read at {offset} skipped {set(expected) - set(returned)}"


def cold(engine: StorageEngine) -> None:
    engine.log_cache.max_bytes = 0
    engine.log_cache.evict()
    engine.block_cache.clear()


def test_reads_from_every_offset_of_a_log_compacted_stream(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    """Log compaction drops whole batches (gaps) and shortens others. A read at any offset, in a gap
    or not, returns the next kept records (never nothing below the end, never an error): during
    the compaction, from the log cache and from objects after it, cold, and after a restart."""

    async def main() -> None:
        # Small objects: the compacted stream spans several, with gaps at their edges too.
        engine = await make_engine(data_dir, s3_config, "file", compaction_min_lag_s=0.0,
                                   compaction_object_bytes=300, gc_grace_s=60.0)  # fmt: skip
        stream = await engine.open_stream(1, 1)
        written: dict[int, Record] = {}
        appends: list[tuple[int, int]] = []
        for kbs in kafka_appends(13, 120):
            records = await append_kafka(stream, kbs)
            written.update(records)
            appends.append((min(records), max(records) + 1))
        await engine.flush()
        end = stream.end_offset
        latest = {r.key: o for o, r in written.items()}
        # The cleaner's rule: each key's last record, tombstones dropped (delete.retention.ms 0),
        # and the stream's very last record stays whatever it is.
        kept = sorted(o for o in latest.values() if written[o].value is not None or o == end - 1)

        async def read_everywhere(done: bool) -> None:
            for offset in range(stream.start_offset, end):
                check_read(offset, list(await stream.read(offset, 2000)), written, kept, done)
                await asyncio.sleep(0)

        stop = asyncio.Event()

        async def reader() -> int:
            passes = 0
            while not stop.is_set():
                await read_everywhere(done=False)
                passes += 1
                await asyncio.sleep(0)  # reads served by the cache never yield: let the compaction run
            return passes

        # A clock past every upload: with delete.retention.ms 0 every tombstone has expired (one
        # uploaded in the very millisecond of `now` would not have).
        now = 1 + max(r.data_ms for r in await engine.metadata.stream_ranges(1))
        during = asyncio.create_task(reader())
        assert await engine.filter_stream(1, KeyCleaner(now, 0), 0.0, now) == end
        stop.set()
        assert await during >= 1
        ranges = await engine.metadata.stream_ranges(1)
        assert len(ranges) >= 3 and {r.kind for r in ranges} == {"stream"}
        # What the test is about is there: gaps between batches, and batches that end before the
        # append they came from ended.
        stored = await stored_batches(stream, end)
        assert any(b.base_offset > a.end_offset for a, b in itertools.pairwise(stored))
        ends = {o: e for b, e in appends for o in range(b, e)}
        assert any(b.end_offset < ends[b.base_offset] for b in stored)
        await read_everywhere(done=True)
        # A tail appended after the compaction is served by the log cache, the rest by objects.
        for kbs in kafka_appends(14, 10):
            tail = await append_kafka(stream, kbs)
            written.update(tail)
            kept.extend(tail)
        end = stream.end_offset
        assert engine.log_cache.streams[1].first_offset() is not None
        await read_everywhere(done=True)
        await engine.flush()
        cold(engine)
        await read_everywhere(done=True)
        await stop_engine(engine)
        engine = await make_engine(data_dir, s3_config, "file")
        stream = await engine.open_stream(1, 2)
        assert stream.end_offset == end
        await read_everywhere(done=True)
        await stop_engine(engine)

    asyncio.run(main())


def test_log_compaction_leaves_the_young_tail_in_the_log_cache(data_dir: Path, s3_config: ObjectStoreConfig) -> None:
    """Data younger than compaction_min_lag_s is not rewritten, and tailing readers keep being
    served it from memory: only the rewritten prefix leaves the log cache."""

    async def main() -> None:
        engine = await make_engine(data_dir, s3_config, "file", compaction_min_lag_s=30.0, gc_grace_s=60.0)
        stream = await engine.open_stream(1, 1)
        written: dict[int, Record] = {}
        for seed in (21, 22, 23):
            for kbs in kafka_appends(seed, 10):
                written.update(await append_kafka(stream, kbs))
            await engine.flush()
            await asyncio.sleep(0.01)  # each upload a different millisecond
        ranges = await engine.metadata.stream_ranges(1)
        young = ranges[-1]
        # A clock at which only the last upload is younger than the lag.
        now = young.data_ms + 30_000 - 1
        end = await engine.filter_stream(1, KeyCleaner(now, 0), 0.0, now)
        assert end == young.start_offset
        after = await engine.metadata.stream_ranges(1)
        assert after[-1].object_id == young.object_id and after[-2].kind == "stream"
        assert engine.log_cache.streams[1].first_offset() == young.start_offset
        gets = engine.store.stats.snapshot()["get"]
        got = await stream.read(young.start_offset, 1 << 20)
        assert [r.offset for b in got for r in decode_records(b.payload)] == list(
            range(young.start_offset, stream.end_offset)
        )
        assert engine.store.stats.snapshot()["get"] == gets, "the young tail was read from S3"
        await stop_engine(engine)

    asyncio.run(main())
