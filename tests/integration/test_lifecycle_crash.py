"""kill -9 at every step of compaction and garbage collection loses nothing and leaves nothing behind.

The broker crashes itself at a named step (AMQ_CRASH_AT, engine/storage/crash.py) exactly as
kill -9 would; it is then restarted without it. After each crash every acknowledged record
reads back, `amq storage verify` passes, and after the last restart plus the grace period the
bucket (listed with boto3) holds exactly the objects the metadata references.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from automq_cli.cluster import pid_alive
from tests.integration.cluster_fixture import LocalCluster
from tests.integration.lifecycle_helpers import s3_objects, start_lifecycle_cluster, wait_for

POINTS = ["compact.before_upload", "compact.after_upload", "compact.after_commit", "gc.during_delete"]
TOPIC = "crashy"
PARTITIONS = 2


def amq_storage(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", "storage", *args, "--dir", str(cluster.home.parent / "data")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "AMQ_HOME": str(cluster.home)},
    )  # fmt: skip


def produce_uploads(cluster: LocalCluster, acked: dict[int, list[bytes]], uploads: int, start: int) -> None:
    """Up to `uploads` uploads' worth of records; stops when the broker has crashed. Only
    acknowledged records are recorded: the crash may come at any moment of this."""
    pid = cluster.broker_pid()
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5, "message.timeout.ms": 8000})  # fmt: skip

    def done(err: object, msg: object) -> None:
        if err is None:
            acked[msg.partition()].append(msg.value())  # type: ignore[attr-defined]

    for u in range(uploads):
        if not pid_alive(pid):
            break
        for i in range(200):
            p.produce(TOPIC, value=f"{start + u}:{i}".encode() * 20, partition=i % PARTITIONS, on_delivery=done)
        p.flush(30)
        time.sleep(0.7)  # one upload each (upload_interval_s is 0.5 s here)


def read_back(cluster: LocalCluster, partition: int) -> list[bytes]:
    """Every record of the partition, from 0 to its high watermark."""
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        _, hi = c.get_watermark_offsets(TopicPartition(TOPIC, partition), timeout=30, cached=False)
        c.assign([TopicPartition(TOPIC, partition, 0)])
        out: list[bytes] = []
        last = -1
        deadline = time.monotonic() + 60
        while last < hi - 1 and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                assert m.error() is None, m.error()
                out.append(m.value())
                last = m.offset()
        return out
    finally:
        c.close()


def check_durable(got: list[bytes], acked: list[bytes]) -> None:
    """Every acknowledged record is there, in order, once. Records whose acknowledgement the crash
    swallowed may be there too (durable before the crash), also once."""
    assert len(set(got)) == len(got), "a record was read twice"
    it = iter(got)
    missing = [v for v in acked if not any(v == g for g in it)]
    assert not missing, f"{len(missing)} acknowledged records lost, first {missing[0]!r}"


def test_kill_9_at_each_compaction_and_gc_step(tmp_path: Path) -> None:
    cluster = start_lifecycle_cluster(tmp_path, compaction_min_ranges=3, stream_set_max_age_s=1e9,
                                      max_stream_set_objects=2)
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(30)
        acked: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
        for n, point in enumerate(POINTS):
            cluster.kill_broker()
            os.environ["AMQ_CRASH_AT"] = point
            try:
                cluster.restart_broker()
                pid = cluster.broker_pid()
                produce_uploads(cluster, acked, 3, start=n * 10)
                wait_for(f"the broker to crash at {point}", lambda pid=pid: not pid_alive(pid), timeout=30)
                assert sum(map(len, acked.values())) > 0
            finally:
                del os.environ["AMQ_CRASH_AT"]
            assert f"crash point {point}" in cluster.broker_log.read_text()
            cluster.restart_broker()
            for p in range(PARTITIONS):
                check_durable(read_back(cluster, p), acked[p])
            res = amq_storage(cluster, "verify")
            assert res.returncode == 0, (point, res.stdout, res.stderr)
        # After the last start plus the grace period (and the timeout for uploads that never
        # committed), the bucket holds exactly the referenced objects.
        def settled() -> bool:
            listed = amq_storage(cluster, "objects", "--json")
            referenced = {o["key"] for o in json.loads(listed.stdout) if o["state"] == "committed"}
            return {k.rsplit("/", 2)[-2] + "/" + k.rsplit("/", 1)[-1] for k in s3_objects(cluster)} == referenced

        wait_for("leftovers to be collected", settled, timeout=30)
        final = json.loads(amq_storage(cluster, "verify", "--json").stdout)
        assert final["ok"] and final["unreferenced"] == 0 and final["unknown_in_s3"] == 0, final
        # Compaction did its work in the end: each partition is in far fewer objects than uploads.
        for p in range(PARTITIONS):
            res = amq_storage(cluster, "stream", TOPIC, str(p), "--json")
            ranges = json.loads(res.stdout)["ranges"]
            assert len({r["key"] for r in ranges}) < 3 * len(POINTS), ranges
        for p in range(PARTITIONS):
            check_durable(read_back(cluster, p), acked[p])
    finally:
        os.environ.pop("AMQ_CRASH_AT", None)
        cluster.stop()
