"""The zone ledger on a real 3-zone cluster: clients that name their zone are counted byte by byte.

With the zone router off (--no-zone-router, the baseline) clients talk to each partition's
leader: a producer and a consumer in each zone, over 12 partitions led in all three zones,
send about two thirds of their bytes across zones. The ledger must count exactly the bytes
the clients moved. tests/integration/test_zone_router.py has the same clients with the router on.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.cluster_fixture import unique
from tests.integration.cluster_load import PARTITIONS, create_topic, leaders, three_zones, wait_until

RECORDS = 600
VALUE = 1000


def test_ledger_counts_cross_zone_bytes_of_clients_that_name_their_zone(tmp_path: Path) -> None:
    with three_zones(tmp_path, "nfs", zone_router=False) as cluster:
        topic = unique("zl")
        create_topic(cluster, topic, PARTITIONS)
        assert {cluster.broker_zone(b) for b in set(leaders(cluster.bootstrap, topic).values())} == {
            "az1",
            "az2",
            "az3",
        }
        for zone in ("az1", "az2", "az3"):
            p = Producer({"bootstrap.servers": cluster.bootstrap, "client.id": f"app&automq_az={zone}",
                          "linger.ms": 5, "compression.type": "none"})  # fmt: skip
            for i in range(RECORDS):
                p.produce(topic, value=b"x" * VALUE, partition=i % PARTITIONS)
            assert p.flush(30) == 0
        produced = 3 * RECORDS * VALUE
        for zone in ("az1", "az2", "az3"):
            c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": unique("g"), "client.rack": zone,
                          "enable.auto.commit": False})  # fmt: skip
            c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
            got = 0
            deadline = time.monotonic() + 30
            while got < 3 * RECORDS and time.monotonic() < deadline:
                got += sum(1 for m in c.consume(1000, 0.5) if m.error() is None)
            c.close()
            assert got == 3 * RECORDS

        def ledger() -> dict[str, object]:
            out = cluster.amq("cluster", "traffic", "--json")
            assert out.returncode == 0, out.stderr
            result: dict[str, object] = json.loads(out.stdout)
            return result

        # Record batches carry ~60 bytes of headers per batch: the data bytes are a little more than the values.
        moved = produced + 3 * produced  # produced once, fetched by each zone's consumer
        wait_until(lambda: int(ledger()["data_bytes"]) >= moved, 10, "the ledger to count every byte")  # type: ignore[call-overload]
        info = ledger()
        assert info["brokers_read"] == 3 and not info["errors"]
        data = int(info["data_bytes_known_zones"])  # type: ignore[call-overload]
        assert data == info["data_bytes"], "a client that named its zone was counted as unknown"
        assert moved <= data < moved * 1.05
        # Without the zone router, each zone's clients reach the leaders of the other two zones.
        # (Metadata: clients that name their zone get real leaders, so the cross-zone share shows.)
        assert 55 <= float(info["cross_zone_percent"]) <= 78, info  # type: ignore[arg-type]
        rows = info["rows"]
        assert any(r["kind"] == "storage" and r["dst"] == "s3" for r in rows)  # type: ignore[attr-defined, index]
        text = cluster.amq("cluster", "traffic").stdout
        assert "cross-zone data" in text and "az1" in text
        url = cluster.metrics_urls[0].replace("/metrics", "/metrics/prometheus")
        with urllib.request.urlopen(url, timeout=5) as resp:
            prom = resp.read().decode()
        assert 'amq_zone_traffic_bytes_total{src="az' in prom and 'kind="client"' in prom
        req = urllib.request.Request(cluster.metrics_urls[0], headers={"Accept": "text/plain;version=0.0.4"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.read().decode().startswith("# HELP amq_zone_traffic_bytes_total")
        m = json.loads(urllib.request.urlopen(cluster.metrics_urls[0], timeout=5).read())
        assert m["cross_zone_bytes"] > 0


def test_perf_spreads_clients_over_zones_and_reports_the_ledger(tmp_path: Path) -> None:
    with three_zones(tmp_path, "nfs") as cluster:
        out_json = tmp_path / "perf.json"
        out = cluster.amq(
            "perf", "run", "--zones", "az1,az2,az3", "--rate", "2000", "--record-size", "1KiB", "--duration", "3s",
            "--warmup", "1s", "--partitions", "12", "--producers", "3", "--consumers", "3",
            "--json-out", str(out_json), timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        cluster_result = json.loads(out_json.read_text())["cluster"]
        rows = cluster_result["zone_traffic"]
        assert {r["src"] for r in rows if r["kind"] == "client"} >= {"az1", "az2", "az3"}
        assert not any("unknown" in (r["src"], r["dst"]) for r in rows), rows
        # The zone router is on: every worker names its zone and talks only to brokers of it.
        assert cluster_result["cross_zone_percent"] <= 1, cluster_result
        assert "% of data bytes between known zones" in out.stdout
        bad = cluster.amq("perf", "run", "--zones", "az1,mars", "--duration", "1s")
        assert bad.returncode != 0 and "no zone mars" in bad.stderr
