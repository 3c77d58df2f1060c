"""Retention, DeleteRecords and topic deletion remove data from S3 (objects counted with boto3).

One cluster, phases in turn, each ending with an empty bucket, so object counts belong to one topic.
Compaction is held off (huge thresholds) so the counts are about retention alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from tests.integration.cluster_fixture import LocalCluster
from tests.integration.lifecycle_helpers import s3_objects, start_lifecycle_cluster, wait_for

NO_COMPACTION = {"compaction_min_ranges": 10_000, "stream_set_max_age_s": 1e9, "max_stream_set_objects": 10_000}


def produce_uploads(cluster: LocalCluster, topic: str, uploads: int, per_upload: int = 20, count: bool = True) -> int:
    """`uploads` separate uploads of `per_upload` records; returns the records produced.

    count=False when retention may delete objects meanwhile: then each upload is given time instead."""
    p = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 0})
    before = len(s3_objects(cluster))
    for u in range(uploads):
        for i in range(per_upload):
            p.produce(topic, value=f"{u}-{i}".encode() * 50, key=str(i).encode())
        assert p.flush(30) == 0
        if count:
            wait_for("an upload", lambda n=before + u + 1: len(s3_objects(cluster)) >= n)
        else:
            time.sleep(1.0)
    return uploads * per_upload


def watermarks(cluster: LocalCluster, topic: str) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "wm", "enable.auto.commit": False})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        return int(lo), int(hi)
    finally:
        c.close()


def consume_from(cluster: LocalCluster, topic: str, offset: int, count: int) -> list[int]:
    """Offsets read from `offset` (out of range: reset to earliest), `count` of them."""
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "unused", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})  # fmt: skip
    try:
        c.assign([TopicPartition(topic, 0, offset)])
        out: list[int] = []
        deadline = time.monotonic() + 30
        while len(out) < count and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                assert m.error() is None, m.error()
                out.append(m.offset())
        return out
    finally:
        c.close()


def test_retention_delete_records_and_topic_deletion_empty_the_bucket(tmp_path: Path) -> None:
    cluster = start_lifecycle_cluster(tmp_path, **NO_COMPACTION)
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})

        def create(name: str, **configs: str) -> None:
            admin.create_topics([NewTopic(name, 1, 1, config=configs)])[name].result(30)

        # --- retention.ms: every object goes once its data is older than 1.5 s ---
        create("by-time", **{"retention.ms": "1500"})
        n = produce_uploads(cluster, "by-time", 3, count=False)
        wait_for("retention by time to empty the bucket", lambda: s3_objects(cluster) == {})
        assert watermarks(cluster, "by-time") == (n, n)
        # A consumer asking for offset 0 is reset to the new start and sees only new records.
        p = Producer({"bootstrap.servers": cluster.bootstrap})
        p.produce("by-time", b"after")
        p.flush(10)
        got = consume_from(cluster, "by-time", 0, 1)
        assert got and got[0] >= n
        admin.delete_topics(["by-time"])["by-time"].result(30)
        wait_for("the deleted topic's objects to go", lambda: s3_objects(cluster) == {})

        # --- retention.bytes: the newest ranges holding at least that much stay ---
        create("by-size")
        n = produce_uploads(cluster, "by-size", 6)
        per_upload = max(s3_objects(cluster).values())
        assert len(s3_objects(cluster)) == 6
        # Two objects' worth: the ranges' payload is a little less than their objects, so three stay.
        cfg = ConfigResource("topic", "by-size")
        cfg.add_incremental_config(
            ConfigEntry("retention.bytes", str(2 * per_upload), incremental_operation=AlterConfigOpType.SET)
        )
        admin.incremental_alter_configs([cfg])[cfg].result(30)
        wait_for("retention by size", lambda: len(s3_objects(cluster)) == 3)
        time.sleep(1.0)  # and it stops there: the newest ranges are not deleted
        assert len(s3_objects(cluster)) == 3, (per_upload, s3_objects(cluster))
        lo, hi = watermarks(cluster, "by-size")
        assert hi == n and 0 < lo < n and lo % 20 == 0
        assert consume_from(cluster, "by-size", OFFSET_BEGINNING, hi - lo) == list(range(lo, hi))

        # --- DeleteRecords: objects wholly below the new start go; ListOffsets(earliest) moves ---
        create("trimmed")
        base = len(s3_objects(cluster))
        n = produce_uploads(cluster, "trimmed", 4)
        assert len(s3_objects(cluster)) == base + 4
        res = admin.delete_records([TopicPartition("trimmed", 0, 50)])
        assert res[TopicPartition("trimmed", 0, 50)].result(30).low_watermark == 50
        assert watermarks(cluster, "trimmed") == (50, n)
        # Offsets 0-39 were in two whole objects; 40-59 is partly kept.
        wait_for("objects below the start to go", lambda: len(s3_objects(cluster)) == base + 2)
        assert consume_from(cluster, "trimmed", OFFSET_BEGINNING, n - 50) == list(range(50, n))

        # --- topic deletion: nothing stays; a new topic of the same name starts empty ---
        for name in ("by-size", "trimmed"):
            admin.delete_topics([name])[name].result(30)
        wait_for("deleted topics' objects to go", lambda: s3_objects(cluster) == {})
        time.sleep(0.5)
        create("trimmed")
        assert watermarks(cluster, "trimmed") == (0, 0)
    finally:
        cluster.stop()
