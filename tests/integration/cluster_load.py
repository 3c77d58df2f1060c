"""Load and checks shared by the cluster trials (failover, reassignment, scaling).

An idempotent acks=all producer (Load) and a committing group member (GroupReader) run
against a LocalCluster; read_back + check_exactly_once_in_order then check every
acknowledged record: read back once, in order within its partition, nothing lost.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from engine.controller import api
from engine.controller.rpc import request_sync
from tests.integration.cluster_fixture import LocalCluster, start_local_cluster, unique

PARTITIONS = 12
SESSION_S = 3.0
#: Errors Kafka's clients classify as retriable (RetriableException) that a moving coordinator gives.
RETRIABLE = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
             KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD, KafkaError._TIMED_OUT,
             KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._NO_OFFSET}  # fmt: skip


@dataclass
class Load:
    """An idempotent acks=all producer spreading sequence numbers over the partitions."""

    bootstrap: str
    topic: str
    acked: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # partition -> (offset, seq)
    ack_times: dict[int, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: Spaces after each record's sequence number, to make the load heavier in bytes.
    pad: int = 0

    def start(self) -> Load:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 5, "message.timeout.ms": 120_000})  # fmt: skip

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
                return
            self.acked.setdefault(msg.partition(), []).append((msg.offset(), int(msg.value())))
            self.ack_times.setdefault(msg.partition(), []).append(time.monotonic())

        while not self.stop.is_set():
            for _ in range(20):
                p.produce(self.topic, value=b"%d" % self.sent + b" " * self.pad, partition=self.sent % PARTITIONS,
                          on_delivery=on_delivery)  # fmt: skip
                self.sent += 1
            p.poll(0.005)
        assert p.flush(120) == 0

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(150)
        assert not self.thread.is_alive(), "the producer did not finish"

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.acked.values())

    def gaps_after(self, t: float) -> dict[int, float]:
        """Per partition, the longest time without an acknowledgement after `t`."""
        out = {}
        for part, times in self.ack_times.items():
            later = [x for x in times if x >= t - 1.0]
            out[part] = max((b - a for a, b in itertools.pairwise(later)), default=0.0)
        return out


@dataclass
class GroupReader:
    """A consumer group member that commits as it goes; remembers what it saw and committed."""

    bootstrap: str
    topic: str
    group: str
    seen: list[int] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> GroupReader:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "session.timeout.ms": 10_000})  # fmt: skip
        c.subscribe([self.topic])
        try:
            while not self.stop.is_set():
                msgs = c.consume(2000, 0.2)
                for m in msgs:
                    if m.error() is None:
                        self.seen.append(int(m.value()))
                if msgs:
                    try:
                        for tp in c.commit(asynchronous=False) or []:
                            if tp.error is None and tp.offset >= 0:
                                self.committed[tp.partition] = max(self.committed.get(tp.partition, 0), tp.offset)
                    except KafkaException as e:
                        # A coordinator that moved answers retriable errors; the next commit carries the offsets.
                        err = e.args[0]
                        if not err.retriable() and err.code() not in RETRIABLE:
                            self.errors.append(str(err))
        finally:
            c.close()

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)


def read_back(bootstrap: str, topic: str) -> dict[int, list[tuple[int, int]]]:
    """Every record of every partition, from offset 0, as (offset, seq)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("verify"), "enable.auto.commit": False})
    out: dict[int, list[tuple[int, int]]] = {}
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(PARTITIONS)}
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 90
        while sum(len(v) for v in out.values()) < sum(ends.values()) and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                assert m.error() is None, m.error()
                out.setdefault(m.partition(), []).append((m.offset(), int(m.value())))
    finally:
        c.close()
    return out


def check_exactly_once_in_order(load: Load, got: dict[int, list[tuple[int, int]]]) -> None:
    for part, recs in got.items():
        offsets = [o for o, _ in recs]
        assert offsets == sorted(set(offsets)), f"partition {part}: offsets repeat or go back"
        seqs = [s for _, s in recs]
        assert seqs == sorted(seqs), f"partition {part}: records out of order"
        assert len(seqs) == len(set(seqs)), f"partition {part}: duplicated records"
    for part, recs in load.acked.items():
        have = dict(got.get(part, []))
        missing = [(o, s) for o, s in recs if have.get(o) != s]
        assert not missing, f"partition {part}: {len(missing)} acknowledged records lost, e.g. {missing[:3]}"


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
