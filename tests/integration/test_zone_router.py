"""The zone router on a real 3-zone cluster: clients reach only brokers of their own zone.

3 zones x 1 broker, 12 partitions led in all zones. A producer in each zone (idempotent,
acks=all, naming its zone in client.id) writes to every partition, a consumer in each zone
reads every partition: every record arrives once and in order, and the ledger says the
data bytes that crossed zones are at most 1 % of the bytes produced plus consumed. The
data reaches leaders in other zones through shared storage (relay objects), never as a
second WAL write: the WAL bytes written stay about the bytes produced.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.cluster_fixture import unique
from tests.integration.cluster_load import PARTITIONS, create_topic, leaders, three_zones, wait_until

RECORDS = 300
VALUE = 1000
ZONES = ("az1", "az2", "az3")


def _produce(bootstrap: str, topic: str, zone: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "client.id": f"app&automq_az={zone}", "linger.ms": 5,
                  "enable.idempotence": True, "acks": "all", "compression.type": "none"})  # fmt: skip
    errors: list[object] = []
    for i in range(RECORDS):
        p.produce(topic, value=f"{zone}-{i:06d}".encode().ljust(VALUE, b"."), partition=i % PARTITIONS,
                  on_delivery=lambda err, _m: errors.append(err) if err else None)  # fmt: skip
    assert p.flush(60) == 0
    assert not errors, errors[:3]


def _consume(bootstrap: str, topic: str, zone: str) -> dict[int, list[tuple[int, bytes]]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("g"), "client.id": f"reader&automq_az={zone}",
                  "client.rack": zone, "enable.auto.commit": False})  # fmt: skip
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 60
    while sum(len(v) for v in got.values()) < len(ZONES) * RECORDS and time.monotonic() < deadline:
        for m in c.consume(1000, 0.5):
            assert m.error() is None, m.error()
            got[m.partition()].append((m.offset(), m.value()[:20]))
    c.close()
    return got


def _ledger(cluster) -> dict[str, object]:  # type: ignore[no-untyped-def]
    out = cluster.amq("cluster", "traffic", "--json")
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("wal", ["nfs", "s3"])
def test_clients_stay_in_their_zone_and_every_record_arrives_once_in_order(tmp_path: Path, wal: str) -> None:
    with three_zones(tmp_path, wal) as cluster:
        topic = unique("zr")
        create_topic(cluster, topic, PARTITIONS)
        assert {cluster.broker_zone(b) for b in set(leaders(cluster.bootstrap, topic).values())} == set(ZONES)
        for zone in ZONES:
            _produce(cluster.bootstrap, topic, zone)
        produced = len(ZONES) * RECORDS * VALUE
        for zone in ZONES:
            got = _consume(cluster.bootstrap, topic, zone)
            for p, recs in got.items():
                offsets = [o for o, _ in recs]
                assert offsets == list(range(len(recs))), f"partition {p}: offsets {offsets[:10]}..."
            values = sorted(v for recs in got.values() for _, v in recs)
            assert len(values) == len(set(values)) == len(ZONES) * RECORDS
        moved = produced + len(ZONES) * produced
        wait_until(lambda: int(_ledger(cluster)["data_bytes"]) >= moved, 10, "the ledger to count every byte")  # type: ignore[call-overload]
        info = _ledger(cluster)
        print("ledger", {k: v for k, v in info.items() if k != "rows"})
        assert float(info["cross_zone_percent"]) <= 1.0, info  # type: ignore[arg-type]
        metrics = [json.loads(urllib.request.urlopen(u, timeout=5).read()) for u in cluster.metrics_urls]
        relayed = sum(m.get("relayed_appends", 0) for m in metrics)
        assert relayed > 0, "nothing went through a zone proxy"
        # No double write: the WAL tier got each produced byte once (relay objects or WALs), plus
        # frame headers and the small references the leaders wrote for relayed batches.
        wal_bytes = sum(m["wal_bytes_written"] + m.get("relay_bytes_written", 0) for m in metrics)
        print("wal", wal_bytes, produced, relayed)
        assert produced <= wal_bytes < produced * 1.25, (wal_bytes, produced)
