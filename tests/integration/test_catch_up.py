"""A consumer catching up on a cold backlog (10x the caches) while producers keep writing.

The backlog is older than anything the log cache and block cache can hold, so the consumer's
reads come from S3 objects (ranged GETs, readahead) at the same time as appends are being
acknowledged. Every record of the backlog and of the live tail must arrive once, in order.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.lifecycle_helpers import start_lifecycle_cluster

PARTITIONS = 4
VALUE = 1024
CACHE = 2 << 20  # log cache and block cache each; the backlog is ten times both together


def _metrics(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url, timeout=5) as r:
        data: dict[str, int] = json.loads(r.read())
        return data


def _produce(bootstrap: str, topic: str, start: int, count: int, acked: list[int], rate: float = 0.0) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    errors: list[str] = []

    def done(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked.append(int.from_bytes(msg.value()[:8], "big"))  # type: ignore[attr-defined]

    began = time.monotonic()
    for n in range(start, start + count):
        p.produce(topic, n.to_bytes(8, "big") + b"x" * (VALUE - 8), key=str(n % PARTITIONS).encode(),
                  partition=n % PARTITIONS, on_delivery=done)  # fmt: skip
        p.poll(0)
        if rate and (ahead := (n - start) / rate - (time.monotonic() - began)) > 0:
            time.sleep(ahead)
    assert p.flush(60) == 0
    assert not errors, errors[:3]


def test_cold_backlog_arrives_in_order_while_producers_run(tmp_path: Path) -> None:
    cluster = start_lifecycle_cluster(
        tmp_path, log_cache_bytes=CACHE, block_cache_bytes=CACHE, compaction_min_lag_s=30.0
    )
    try:
        topic = "catch-up"
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        backlog = 10 * 2 * CACHE // VALUE  # 40,960 records, 40 MiB
        acked: list[int] = []
        _produce(cluster.bootstrap, topic, 0, backlog, acked)
        assert len(acked) == backlog
        metrics_url = cluster.state["metrics"][0]
        before = _metrics(metrics_url)
        deadline = time.monotonic() + 30
        while _metrics(metrics_url).get("s3_put_bytes", 0) < backlog * VALUE and time.monotonic() < deadline:
            time.sleep(0.2)  # the backlog is in S3 (and, at 4 MiB of caches, mostly only there)

        live = 4_000
        live_acked: list[int] = []
        producer = threading.Thread(
            target=_produce, args=(cluster.bootstrap, topic, backlog, live, live_acked, 1_000.0), daemon=True
        )
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "catch-up", "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "fetch.max.bytes": 4 << 20})  # fmt: skip
        c.subscribe([topic])
        seen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        offsets: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        producer.start()
        total = backlog + live
        deadline = time.monotonic() + 120
        got = 0
        while got < total and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                assert m.error() is None, m.error()
                seen[m.partition()].append(int.from_bytes(m.value()[:8], "big"))
                offsets[m.partition()].append(m.offset())
                got += 1
        c.close()
        producer.join(60)
        assert not producer.is_alive()
        assert len(live_acked) == live
        for p in range(PARTITIONS):
            # Record n went to partition n % 4: each partition holds exactly its numbers, in order.
            assert seen[p] == list(range(p, total, PARTITIONS)), f"partition {p}"
            assert offsets[p] == list(range(len(offsets[p]))), f"partition {p} offsets"
        after = _metrics(metrics_url)
        # The backlog was read from S3, not from memory: at least its bytes came back by GET.
        assert after.get("s3_get_bytes", 0) - before.get("s3_get_bytes", 0) >= backlog * VALUE * 0.8
    finally:
        cluster.stop()
