"""Consumer groups against a real cluster, with real clients: confluent-kafka, kafka-python, aiokafka.

The tests share the session's `broker_cluster` (tests/integration/cluster_fixture.py),
each with its own topic and group; the kill -9 test starts a cluster of its own.
Timeouts are short (session 6 s, heartbeat 300 ms) so a rebalance takes about a second.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster_fixture import LocalCluster, start_local_cluster, unique

ck = pytest.importorskip("confluent_kafka")
admin_mod = pytest.importorskip("confluent_kafka.admin")

SESSION_MS = 6000
HEARTBEAT_MS = 300


def create_topic(bs: str, topic: str, partitions: int) -> None:
    admin = admin_mod.AdminClient({"bootstrap.servers": bs})
    for f in admin.create_topics([admin_mod.NewTopic(topic, partitions, 1)]).values():
        f.result(timeout=30)


def produce(bs: str, topic: str, partitions: int, count: int, start: int = 0) -> None:
    p = ck.Producer({"bootstrap.servers": bs, "linger.ms": 5})
    for i in range(start, start + count):
        p.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=i % partitions)
    assert p.flush(30) == 0


def ck_consumer(bs: str, group: str, topic: str, strategy: str = "range", **extra: Any) -> Any:
    c = ck.Consumer(
        {
            "bootstrap.servers": bs,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "partition.assignment.strategy": strategy,
            **extra,
        }
    )
    c.subscribe([topic])
    return c


def poll_until(pollers: list[Callable[[], Any]], done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for poll in pollers:
            poll()
        if done():
            return
    raise AssertionError("condition not reached in time")


def ck_parts(c: Any) -> list[int]:
    return sorted(tp.partition for tp in c.assignment())


def balanced(assignments: list[list[int]], partitions: int) -> bool:
    flat = sorted(p for a in assignments for p in a)
    sizes = {len(a) for a in assignments}
    return flat == list(range(partitions)) and max(sizes) - min(sizes) <= 1 and min(sizes) > 0


# -- confluent-kafka (librdkafka) ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_confluent_three_members_rebalance_on_join_and_leave(broker_cluster: LocalCluster, strategy: str) -> None:
    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 6)
    consumers: list[Any] = []
    for _ in range(3):
        consumers.append(ck_consumer(bs, group, topic, strategy))
        poll_until(
            [lambda c=c: c.poll(0.05) for c in consumers],
            lambda: balanced([ck_parts(c) for c in consumers], 6),
        )
    assert [len(ck_parts(c)) for c in consumers] == [2, 2, 2]
    # Every record is consumed once by the stable group.
    produce(bs, topic, 6, 60)
    seen: list[bytes] = []

    def poll(c: Any) -> None:
        m = c.poll(0.05)
        if m is not None and not m.error():
            seen.append(m.value())

    poll_until([lambda c=c: poll(c) for c in consumers], lambda: len(seen) >= 60)
    assert sorted(seen) == sorted(b"v%d" % i for i in range(60))
    # A member leaves (LeaveGroup on close): the other two take over its partitions.
    consumers.pop(1).close()
    poll_until([lambda c=c: c.poll(0.05) for c in consumers], lambda: balanced([ck_parts(c) for c in consumers], 6))
    assert sorted(len(ck_parts(c)) for c in consumers) == [3, 3]
    for c in consumers:
        c.close()


def test_confluent_commits_and_committed_offsets(broker_cluster: LocalCluster) -> None:
    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 2)
    produce(bs, topic, 2, 10)
    c = ck_consumer(bs, group, topic)
    got: list[Any] = []

    def poll() -> None:
        m = c.poll(0.05)
        if m is not None and not m.error():
            got.append(m)

    poll_until([poll], lambda: len(got) >= 10)
    c.commit(asynchronous=False)
    committed = c.committed([ck.TopicPartition(topic, 0), ck.TopicPartition(topic, 1)], timeout=10)
    assert [tp.offset for tp in committed] == [5, 5]
    # Explicit offsets with metadata.
    c.commit(offsets=[ck.TopicPartition(topic, 0, 3, "meta")], asynchronous=False)
    tp0 = c.committed([ck.TopicPartition(topic, 0)], timeout=10)[0]
    assert tp0.offset == 3 and tp0.metadata == "meta"
    c.close()
    admin = admin_mod.AdminClient({"bootstrap.servers": bs})
    listed = admin.list_consumer_groups().result(timeout=10)
    states = {g.group_id: g.state for g in listed.valid}
    assert states.get(group) == ck.ConsumerGroupState.EMPTY
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    assert desc.state == ck.ConsumerGroupState.EMPTY and desc.members == []
    admin.delete_consumer_groups([group])[group].result(timeout=10)
    listed = admin.list_consumer_groups().result(timeout=10)
    assert group not in {g.group_id for g in listed.valid}


def test_confluent_assign_based_consumer_commits_with_generation_minus_one(broker_cluster: LocalCluster) -> None:
    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 1)
    produce(bs, topic, 1, 5)
    c = ck.Consumer({"bootstrap.servers": bs, "group.id": group, "enable.auto.commit": False})
    c.assign([ck.TopicPartition(topic, 0, 0)])
    msgs: list[Any] = []
    poll_until([lambda: msgs.append(c.poll(0.05))], lambda: sum(1 for m in msgs if m and not m.error()) >= 5)
    c.commit(offsets=[ck.TopicPartition(topic, 0, 5)], asynchronous=False)
    assert c.committed([ck.TopicPartition(topic, 0)], timeout=10)[0].offset == 5
    c.close()


def test_confluent_static_member_restart_without_rebalance(broker_cluster: LocalCluster) -> None:
    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 4)
    assigns: dict[str, int] = {"i1": 0, "i2": 0}

    def counter(name: str) -> Callable[[Any, Any], None]:
        def on_assign(_c: Any, _parts: Any) -> None:
            assigns[name] += 1

        return on_assign

    def static(instance: str) -> Any:
        c = ck.Consumer(
            {
                "bootstrap.servers": bs,
                "group.id": group,
                "group.instance.id": instance,
                "session.timeout.ms": SESSION_MS,
                "heartbeat.interval.ms": HEARTBEAT_MS,
                "partition.assignment.strategy": "range",
            }
        )
        c.subscribe([topic], on_assign=counter(instance))
        return c

    c1 = static("i1")
    poll_until([lambda: c1.poll(0.05)], lambda: len(ck_parts(c1)) == 4)
    c2 = static("i2")
    poll_until([lambda: c1.poll(0.05), lambda: c2.poll(0.05)], lambda: balanced([ck_parts(c1), ck_parts(c2)], 4))
    before = (ck_parts(c1), ck_parts(c2))
    c1_assigns = assigns["i1"]
    # A static member closes without LeaveGroup and comes back within its session timeout.
    c2.close()
    c2 = static("i2")
    poll_until([lambda: c1.poll(0.05), lambda: c2.poll(0.05)], lambda: bool(ck_parts(c2)))
    for _ in range(10):  # a rebalance, if one had started, would show within a few heartbeats
        c1.poll(0.1)
        c2.poll(0.1)
    assert (ck_parts(c1), ck_parts(c2)) == before
    assert assigns["i1"] == c1_assigns, "the other member went through a rebalance"
    admin = admin_mod.AdminClient({"bootstrap.servers": bs})
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    assert desc.state == ck.ConsumerGroupState.STABLE
    assert sorted(m.group_instance_id for m in desc.members) == ["i1", "i2"]
    c1.close()
    c2.close()


# -- kafka-python ---------------------------------------------------------------------------------


def test_kafka_python_group_roundrobin_and_commit(broker_cluster: LocalCluster) -> None:
    kafka = pytest.importorskip("kafka")
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 4)
    produce(bs, topic, 4, 40)

    def consumer() -> Any:
        return kafka.KafkaConsumer(
            topic,
            bootstrap_servers=bs,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            partition_assignment_strategy=[RoundRobinPartitionAssignor],
        )

    a, b = consumer(), consumer()
    seen: list[bytes] = []

    def poll(c: Any) -> None:
        for records in c.poll(timeout_ms=50).values():
            seen.extend(r.value for r in records)

    def parts(c: Any) -> list[int]:
        return sorted(tp.partition for tp in c.assignment())

    poll_until([lambda: poll(a), lambda: poll(b)], lambda: balanced([parts(a), parts(b)], 4) and len(seen) >= 40)
    assert sorted(set(seen)) == sorted(b"v%d" % i for i in range(40))
    a.commit()
    b.commit()
    b.close()
    poll_until([lambda: poll(a)], lambda: parts(a) == [0, 1, 2, 3])
    tp = kafka.TopicPartition(topic, 0)
    assert a.committed(tp) == 10
    a.close()


# -- aiokafka -------------------------------------------------------------------------------------


def test_aiokafka_group_range_join_leave_and_commit(broker_cluster: LocalCluster) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 4)
    produce(bs, topic, 4, 20)

    async def main() -> None:
        def consumer() -> Any:
            return aiokafka.AIOKafkaConsumer(
                topic,
                bootstrap_servers=bs,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                session_timeout_ms=SESSION_MS,
                heartbeat_interval_ms=HEARTBEAT_MS,
                partition_assignment_strategy=(RangePartitionAssignor,),
            )

        def parts(c: Any) -> list[int]:
            return sorted(tp.partition for tp in c.assignment())

        async def until(cond: Callable[[], bool], consumers: list[Any]) -> None:
            deadline = time.monotonic() + 30
            while not cond():
                assert time.monotonic() < deadline, "condition not reached in time"
                for c in consumers:
                    await c.getmany(timeout_ms=50)

        a = consumer()
        await a.start()
        await until(lambda: parts(a) == [0, 1, 2, 3], [a])
        b = consumer()
        await b.start()
        await until(lambda: balanced([parts(a), parts(b)], 4), [a, b])
        assert (parts(a), parts(b)) in (([0, 1], [2, 3]), ([2, 3], [0, 1]))
        tp = aiokafka.TopicPartition(topic, parts(b)[0])
        await b.commit({tp: 3})
        assert await b.committed(tp) == 3
        await b.stop()
        await until(lambda: parts(a) == [0, 1, 2, 3], [a])
        assert await a.committed(tp) == 3
        await a.stop()

    asyncio.run(main())


# -- all three clients in one group ---------------------------------------------------------------


class PolledConsumer:
    """A synchronous consumer (confluent-kafka, kafka-python) polled from a thread of its own, as an
    application polls it. One thread must not drive a synchronous client and aiokafka: aiokafka's
    getmany() waits out its own rebalance whatever its timeout, and that rebalance waits for the
    synchronous client to rejoin, which it does only from poll() (see
    test_a_rebalance_waits_for_a_member_nobody_polls). Only this thread touches the consumer, its
    assignment included: confluent-kafka's assignment() called from a second thread while poll()
    serves a rebalance was seen to hang."""

    def __init__(self, make: Callable[[], Any], poll: Callable[[Any], Any], parts: Callable[[Any], list[int]]) -> None:
        self.parts: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()

        def run() -> None:
            try:
                c = make()
                try:
                    while not self._stop.is_set():
                        poll(c)
                        self.parts = parts(c)
                finally:
                    c.close()
            except BaseException as e:  # the test's thread reports it
                self.error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def check(self) -> list[int]:
        if self.error is not None:
            raise AssertionError(f"consumer thread failed: {self.error!r}") from self.error
        return self.parts

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "consumer thread did not stop"


def test_a_rebalance_waits_for_a_member_nobody_polls(broker_cluster: LocalCluster) -> None:
    """The hang of the three-client test, reproduced. librdkafka joins from its own thread as soon
    as it subscribes, so a confluent-kafka member can be stable alone before aiokafka joins. The
    rebalance aiokafka's join starts waits for that member to rejoin (up to its rebalance timeout,
    max.poll.interval.ms, 300 s, as Kafka's coordinator waits), librdkafka rejoins only from poll(),
    and aiokafka's start() (like getmany(), whatever its timeout) waits for its assignment: one
    thread driving both waits five minutes. Polled from a thread of its own, the member rejoins and
    both get their share at once."""
    aiokafka = pytest.importorskip("aiokafka")
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor as AioRange

    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 6)
    member = ck_consumer(bs, group, topic, "range")
    poll_until([lambda: member.poll(0.05)], lambda: ck_parts(member) == list(range(6)))
    c1: PolledConsumer | None = None

    async def main() -> None:
        nonlocal c1
        c3 = aiokafka.AIOKafkaConsumer(
            topic, bootstrap_servers=bs, group_id=group, session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=HEARTBEAT_MS, partition_assignment_strategy=(AioRange,),
        )  # fmt: skip
        starting = asyncio.ensure_future(c3.start())
        try:
            done, _ = await asyncio.wait([starting], timeout=5)
            assert not done, "the group rebalanced without its stable member rejoining"
            # From here on only the member's own thread touches it.
            c1 = PolledConsumer(lambda: member, lambda c: c.poll(0.05), ck_parts)
            await asyncio.wait_for(starting, 30)
            deadline = time.monotonic() + 30
            while not balanced([c1.check(), sorted(t.partition for t in c3.assignment())], 6):
                assert time.monotonic() < deadline, "no balanced assignment with the member polled"
                await asyncio.wait_for(c3.getmany(timeout_ms=30), 30)
        finally:
            await c3.stop()

    try:
        asyncio.run(main())
    finally:
        if c1 is not None:
            c1.close()
        else:
            member.close()


def test_three_different_clients_share_one_group(broker_cluster: LocalCluster) -> None:
    kafka = pytest.importorskip("kafka")
    aiokafka = pytest.importorskip("aiokafka")
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor as AioRange
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    bs, topic, group = broker_cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 6)
    three_clients_share_one_group(bs, topic, group, kafka, aiokafka, RangePartitionAssignor, AioRange)


def three_clients_share_one_group(
    bs: str, topic: str, group: str, kafka: Any, aiokafka: Any, kp_range: Any, aio_range: Any
) -> None:
    """confluent-kafka, kafka-python and aiokafka in one group of a 6-partition topic get two
    partitions each. The order is the one that once hung: confluent-kafka stable alone first,
    then aiokafka, then kafka-python (each synchronous client in a thread of its own)."""
    c1 = PolledConsumer(lambda: ck_consumer(bs, group, topic, "range"), lambda c: c.poll(0.03), ck_parts)
    c2: PolledConsumer | None = None
    try:
        deadline = time.monotonic() + 30
        while c1.check() != list(range(6)):
            assert time.monotonic() < deadline, "the first member got no assignment"
            time.sleep(0.03)

        async def main() -> None:
            nonlocal c2
            c3 = aiokafka.AIOKafkaConsumer(
                topic, bootstrap_servers=bs, group_id=group, session_timeout_ms=SESSION_MS,
                heartbeat_interval_ms=HEARTBEAT_MS, partition_assignment_strategy=(aio_range,),
            )  # fmt: skip
            await c3.start()
            try:
                c2 = PolledConsumer(
                    lambda: kafka.KafkaConsumer(
                        topic, bootstrap_servers=bs, group_id=group, session_timeout_ms=SESSION_MS,
                        heartbeat_interval_ms=HEARTBEAT_MS, partition_assignment_strategy=[kp_range],
                    ),
                    lambda c: c.poll(timeout_ms=30),
                    lambda c: sorted(t.partition for t in c.assignment()),
                )  # fmt: skip

                def assignments() -> list[list[int]]:
                    assert c2 is not None
                    return [c1.check(), c2.check(), sorted(t.partition for t in c3.assignment())]

                deadline = time.monotonic() + 40
                while not balanced(assignments(), 6):
                    assert time.monotonic() < deadline, f"no balanced assignment: {assignments()}"
                    await asyncio.wait_for(c3.getmany(timeout_ms=30), 40)
                assert [len(a) for a in assignments()] == [2, 2, 2]
            finally:
                await c3.stop()

        asyncio.run(main())
    finally:
        c1.close()
        if c2 is not None:
            c2.close()


# -- durability (a cluster of its own, since the broker gets killed) ------------------------------------------------


def test_committed_offsets_survive_broker_kill_9(tmp_path: Path) -> None:
    own = start_local_cluster(tmp_path)
    try:
        committed_offsets_survive_kill_9(own)
    finally:
        own.stop()


def committed_offsets_survive_kill_9(cluster: LocalCluster) -> None:
    bs, topic, group = cluster.bootstrap, unique("t"), unique("g")
    create_topic(bs, topic, 3)
    produce(bs, topic, 3, 30)
    c = ck_consumer(bs, group, topic)
    n = 0

    def poll() -> None:
        nonlocal n
        m = c.poll(0.05)
        if m is not None and not m.error():
            n += 1

    poll_until([poll], lambda: n >= 30)
    c.commit(asynchronous=False)
    c.close()
    # A simple (assign-based) group's commit too.
    simple = unique("simple")
    s = ck.Consumer({"bootstrap.servers": bs, "group.id": simple})
    s.commit(offsets=[ck.TopicPartition(topic, 1, 7)], asynchronous=False)
    s.close()

    cluster.kill_broker()
    cluster.restart_broker()

    c = ck_consumer(bs, group, topic)
    committed = c.committed([ck.TopicPartition(topic, p) for p in range(3)], timeout=30)
    assert [tp.offset for tp in committed] == [10, 10, 10]
    # Consumption resumes where the group left off: only the new records arrive.
    produce(bs, topic, 3, 6, start=30)
    got: list[bytes] = []

    def poll2() -> None:
        m = c.poll(0.05)
        if m is not None and not m.error():
            got.append(m.value())

    poll_until([poll2], lambda: len(got) >= 6)
    for _ in range(5):
        poll2()
    assert sorted(got) == sorted(b"v%d" % i for i in range(30, 36))
    c.close()
    s = ck.Consumer({"bootstrap.servers": bs, "group.id": simple})
    assert s.committed([ck.TopicPartition(topic, 1)], timeout=30)[0].offset == 7
    s.close()
