"""Latency histograms on a real broker's metrics endpoint, under a real client's produce and fetch
(docs/perf.md, "Where time goes: latency histograms")."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.cluster_fixture import LocalCluster, unique
from tests.integration.cluster_load import create_topic, wait_until
from tests.prometheus_text import check_histograms, parse_histograms

RECORDS = 3000
PARTITIONS = 3


def _json(cluster: LocalCluster) -> dict[str, Any]:
    with urllib.request.urlopen(cluster.metrics_url, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _count(m: dict[str, Any], key: str) -> int:
    return int(m["latency"][key]["count"])


def test_produce_fetch_and_wal_histograms_count_what_the_clients_did(broker_cluster: LocalCluster) -> None:
    topic = unique("lat")
    create_topic(broker_cluster, topic, PARTITIONS)
    before = _json(broker_cluster)
    p = Producer({"bootstrap.servers": broker_cluster.bootstrap, "acks": "all", "linger.ms": 2})
    for i in range(RECORDS):
        p.produce(topic, value=b"v" * 200, partition=i % PARTITIONS)
        if i % 500 == 0:
            p.flush(30)  # several produce requests, not one
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": broker_cluster.bootstrap, "group.id": unique("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(topic, n, 0) for n in range(PARTITIONS)])
    got = 0
    deadline = time.monotonic() + 30
    while got < RECORDS and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(1000, 0.5) if m.error() is None)
    c.close()
    assert got == RECORDS
    after = _json(broker_cluster)

    # The flat counters are still there and flat; the histograms are objects beside them.
    assert isinstance(after["requests_produce"], int) and isinstance(after["wal_syncs"], int)
    produced = after["requests_produce"] - before.get("requests_produce", 0)
    assert produced >= 6
    for phase in ("decode", "append", "durable", "total"):
        assert _count(after, f"produce_{phase}") - _count(before, f"produce_{phase}") == produced, phase
    # Each request's decode, append and durable phases lie inside its total, one after the other.
    sums = {ph: after["latency"][f"produce_{ph}"]["sum_s"] - before["latency"][f"produce_{ph}"]["sum_s"]
            for ph in ("decode", "append", "durable", "total")}  # fmt: skip
    assert sums["total"] + 1e-5 >= sums["decode"] + sums["append"] + sums["durable"] > 0, sums
    durable = after["latency"]["produce_durable"]
    assert 0 < durable["p50_ms"] <= durable["p99_ms"] <= durable["max_ms"]

    fetched = _count(after, "fetch_total") - _count(before, "fetch_total")
    assert 0 < fetched <= after["requests_fetch"] - before.get("requests_fetch", 0)
    assert _count(after, "fetch_read") - _count(before, "fetch_read") == fetched
    syncs = _count(after, "wal_sync") - _count(before, "wal_sync")
    assert 0 < syncs <= after["wal_syncs"] - before["wal_syncs"]
    assert after["sizes"]["wal_group_bytes"]["sum_bytes"] - before["sizes"]["wal_group_bytes"]["sum_bytes"] >= (
        RECORDS * 200
    )
    # The probe wakes every 100 ms; produce and consume here can take less than that.
    lag_before = _count(before, "loop_lag")
    wait_until(lambda: _count(_json(broker_cluster), "loop_lag") > lag_before, 5, "a loop-lag sample")
    # What the WAL holds goes to S3 every 0.5 s here: each PUT (small, so no multipart) is timed.
    wait_until(lambda: _json(broker_cluster)["objects_uploaded"] > before["objects_uploaded"], 20, "an upload")
    uploaded = _json(broker_cluster)
    puts = _count(uploaded, "s3_put") - _count(before, "s3_put")
    assert puts >= 1 and puts == uploaded["s3_put_requests"] - before["s3_put_requests"]

    url = broker_cluster.metrics_url.replace("/metrics", "/metrics/prometheus")
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    assert text.startswith("# HELP amq_zone_traffic_bytes_total")  # the counters still come first
    parsed = parse_histograms(text)
    check_histograms(parsed)
    names = {metric for metric, _ in parsed}
    assert names == {
        "amq_produce_latency_seconds", "amq_fetch_latency_seconds", "amq_loop_lag_seconds",
        "amq_wal_sync_seconds", "amq_wal_group_bytes", "amq_s3_request_seconds",
    }, names  # fmt: skip
    total = next(h for (metric, labels), h in parsed.items()
                 if metric == "amq_produce_latency_seconds" and 'phase="total"' in labels)  # fmt: skip
    assert total["count"] >= _count(after, "produce_total")
