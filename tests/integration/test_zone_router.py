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
from confluent_kafka.admin import AdminClient

from tests.integration.cluster_fixture import unique
from tests.integration.cluster_load import (
    PARTITIONS,
    GroupReader,
    Load,
    check_exactly_once_in_order,
    create_topic,
    leaders,
    read_back,
    three_zones,
    wait_until,
)

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
        assert float(info["cross_zone_percent"]) <= 1.0, info  # type: ignore[arg-type]
        metrics = [json.loads(urllib.request.urlopen(u, timeout=5).read()) for u in cluster.metrics_urls]
        relayed = sum(m.get("relayed_appends", 0) for m in metrics)
        assert relayed > 0, "nothing went through a zone proxy"
        # No double write: the WAL tier got each produced byte once (relay objects or WALs), plus
        # frame headers and the small references the leaders wrote for relayed batches.
        wal_bytes = sum(m["wal_bytes_written"] + m.get("relay_bytes_written", 0) for m in metrics)
        assert produced <= wal_bytes < produced * 1.25, (wal_bytes, produced)
        status = cluster.amq("cluster", "status")
        assert "zone router: on" in status.stdout and "batches relayed" in status.stdout, status.stdout

        # Relay objects go once every WAL that refers to them is in S3 (the controller's horizon:
        # 15 s accept window + 5 s margin), and not before: everything above was read back first.
        def relay_objects_kept() -> int:
            ms = [json.loads(urllib.request.urlopen(u, timeout=5).read()) for u in cluster.metrics_urls]
            assert sum(m.get("relay_objects_written", 0) for m in ms) > 0
            return sum(m.get("relay_objects_kept", 0) for m in ms)

        wait_until(lambda: relay_objects_kept() == 0, 60, "the relay objects to be deleted behind the horizon")


def _shown_leaders(bootstrap: str, topic: str, zone: str) -> set[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": f"check&automq_az={zone}"})
    return {p.leader for p in admin.list_topics(topic, timeout=10).topics[topic].partitions.values()}


def test_kill_9_of_a_zone_proxy_moves_its_clients_to_the_other_broker_of_the_zone(tmp_path: Path) -> None:
    with three_zones(tmp_path, "nfs", brokers=6) as cluster:
        az1 = [b for b in cluster.broker_ids if cluster.broker_zone(b) == "az1"]
        assert len(az1) == 2
        topic, group = unique("zk"), unique("g")
        create_topic(cluster, topic, PARTITIONS)
        assert _shown_leaders(cluster.bootstrap, topic, "az1") == set(az1), "az1's clients see both az1 brokers"
        load = Load(cluster.bootstrap, topic, client_id="load&automq_az=az1").start()
        reader = GroupReader(cluster.bootstrap, topic, group, client_id="reader&automq_az=az1").start()
        wait_until(lambda: reader.committed and load.total > 2000, 60, "the group to consume and commit")
        victim = az1[1]
        killed_at = time.monotonic()
        cluster.kill_broker(victim)
        wait_until(lambda: _shown_leaders(cluster.bootstrap, topic, "az1") == {az1[0]}, 30,
                   "az1's clients to be sent to the surviving az1 broker")  # fmt: skip
        wait_until(lambda: all(load.ack_times.get(p, [0])[-1] > killed_at + 0.5 for p in range(PARTITIONS)), 60,
                   "every partition to take writes again")  # fmt: skip
        # A leader in another zone: its WAL holds references to az1's relay objects, which the
        # survivor that takes the WAL over must resolve.
        leader = next(b for b in leaders(cluster.bootstrap, topic).values() if cluster.broker_zone(b) == "az2")
        killed_at = time.monotonic()
        cluster.kill_broker(leader)
        wait_until(lambda: all(load.ack_times.get(p, [0])[-1] > killed_at + 0.5 for p in range(PARTITIONS)), 60,
                   "every partition to take writes again")  # fmt: skip
        load.finish()
        wait_until(lambda: set(reader.seen) >= {s for v in load.acked.values() for _, s in v}, 60,
                   "the group to catch up")  # fmt: skip
        reader.finish()
        assert not load.errors, load.errors[:5]
        assert not reader.errors, reader.errors[:5]
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))


def test_zone_latency_delays_only_what_crosses_zones(tmp_path: Path) -> None:
    """--zone-latency-ms 100: a request of a client in another zone waits 2 x 100 ms, one in the zone does not."""
    with three_zones(tmp_path, "nfs", zone_router=False, zone_latency_ms=100) as cluster:
        topic = unique("zl")
        create_topic(cluster, topic, 1)
        leader_zone = cluster.broker_zone(leaders(cluster.bootstrap, topic)[0])
        other = next(z for z in ZONES if z != leader_zone)
        took = {}
        for zone in (leader_zone, other):
            p = Producer({"bootstrap.servers": cluster.bootstrap, "client.id": f"lat&automq_az={zone}", "acks": "all"})
            p.produce(topic, b"warm")
            assert p.flush(30) == 0
            start = time.monotonic()
            p.produce(topic, b"x")
            assert p.flush(30) == 0
            took[zone] = time.monotonic() - start
        assert took[other] >= 0.2, took
        assert took[leader_zone] < took[other], took
        bad = cluster.amq("cluster", "up", "--zone-latency-ms", "-1", "--dir", str(tmp_path / "other"))
        assert bad.returncode != 0 and "--zone-latency-ms" in bad.stderr
