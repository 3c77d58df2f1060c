"""cleanup.policy=compact on a real cluster: 100k records over 1k keys with tombstones.

After compaction a consumer from the start sees the latest value of every live key once, no
deleted key, offsets increasing (with gaps); the group coordinator's __consumer_offsets keeps
working on its compacted streams.
"""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.cluster_fixture import LocalCluster
from tests.integration.lifecycle_helpers import start_lifecycle_cluster, wait_for

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
