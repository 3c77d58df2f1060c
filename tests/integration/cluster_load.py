"""Load and checks shared by the cluster trials (failover, reassignment, scaling).

The load and the checks live in engine/devtools/workload.py (`amq chaos trials` uses them too);
this module re-exports them and adds what only the tests need: clusters in three zones, a loaded
topic, leaders, the coordinator and the controller's status.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from engine.controller import api
from engine.controller.rpc import request_sync
from engine.devtools.workload import (
    PARTITIONS,
    RETRIABLE,
    GroupReader,
    Load,
    Record,
    Verdict,
    check_exactly_once_in_order,
    read_back,
    read_records,
    verify,
)
from tests.integration.cluster_fixture import LocalCluster, start_local_cluster, unique

__all__ = [
    "PARTITIONS",
    "RETRIABLE",
    "SESSION_S",
    "GroupReader",
    "Load",
    "LocalCluster",
    "Record",
    "Verdict",
    "check_exactly_once_in_order",
    "controller_status",
    "coordinator_of",
    "create_topic",
    "leaders",
    "loaded_topic",
    "read_back",
    "read_records",
    "three_zones",
    "unique",
    "verify",
    "wait_until",
]

SESSION_S = 3.0


@contextlib.contextmanager
def three_zones(tmp_path: Path, wal: str, brokers: int = 3, **options: Any) -> Iterator[LocalCluster]:
    """A cluster of `brokers` in az1..az3 (broker i in zone i % 3), stopped by pid afterwards.

    The auto-balancer is off unless asked for: these trials check where failover and moves put
    partitions, and a balancer round in between would move them again (tests/integration/test_scale.py
    covers the balancer)."""
    options.setdefault("auto_balance", False)
    cluster = start_local_cluster(tmp_path, brokers=brokers, zones=3, wal=wal, session_timeout=SESSION_S, **options)
    try:
        yield cluster
    finally:
        cluster.stop()


def loaded_topic(cluster: LocalCluster, prefix: str, acked: int = 2000) -> tuple[str, Load]:
    """A new 12-partition topic under a running Load that has `acked` records acknowledged."""
    topic = unique(prefix)
    create_topic(cluster, topic, PARTITIONS)
    load = Load(cluster.bootstrap, topic).start()
    wait_until(lambda: load.total > acked, 30, "produce to start")
    return topic, load


def create_topic(cluster: LocalCluster, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "tests&automq_route=leader"})
    md = admin.list_topics(topic, timeout=10).topics[topic].partitions
    return {p: md[p].leader for p in md}


def coordinator_of(bootstrap: str, group: str) -> int:
    a = AdminClient({"bootstrap.servers": bootstrap})
    (desc,) = a.describe_consumer_groups([group]).values()
    return int(desc.result(10).coordinator.id)


def controller_status(cluster: LocalCluster) -> api.StatusResult:
    return request_sync(cluster.state["controller"], api.Status())


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
