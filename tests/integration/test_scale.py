"""Scaling out and in, and the auto-balancer, on real processes under idempotent acks=all load.

Scale out 1 -> 3 brokers: the new brokers get their share of the partitions by metadata;
scale in 3 -> 2: every partition moves off the drained broker, which then stops and leaves.
The auto-balancer: every partition on broker 0 of 3 (what AutoMQ's users saw after restarts)
is spread within the bounds and then left alone. Every acknowledged record is checked.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from engine.controller import api
from engine.controller.rpc import request_sync
from tests.integration.cluster_fixture import start_local_cluster, unique
from tests.integration.cluster_load import (
    PARTITIONS,
    GroupReader,
    Load,
    check_exactly_once_in_order,
    controller_status,
    create_topic,
    leaders,
    read_back,
    wait_until,
)


def test_scale_out_and_in_under_load(tmp_path: Path) -> None:
    cluster = start_local_cluster(tmp_path, brokers=1, wal="nfs")
    try:
        topic, group = unique("sc"), unique("g")
        create_topic(cluster, topic, PARTITIONS)
        load = Load(cluster.bootstrap, topic).start()
        reader = GroupReader(cluster.bootstrap, topic, group).start()
        wait_until(lambda: reader.committed and load.total > 2000, 60, "the group to consume and commit")

        out = cluster.amq("scale", "out", "--brokers", "2", "--json")
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout)
        assert res["added"] == [1, 2] and res["partitions_moved"] > 0
        led = {int(b): n for b, n in res["partitions_led"].items()}
        assert max(led.values()) - min(led.values()) <= 2, led  # counts within +-1 of the mean
        cluster.reload()
        assert set(leaders(cluster.bootstrap, topic).values()) == {0, 1, 2}
        time.sleep(2)

        out = cluster.amq("scale", "in", "--broker", "2", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["removed"] == 2
        cluster.reload()
        assert cluster.broker_ids == [0, 1]
        assert set(leaders(cluster.bootstrap, topic).values()) <= {0, 1}
        status = controller_status(cluster)
        assert [b.id for b in status.brokers] == [0, 1] and status.offline_partitions == 0
        time.sleep(2)
        load.finish()
        wait_until(lambda: set(reader.seen) >= {s for v in load.acked.values() for _, s in v}, 60, "the group")
        reader.finish()
        assert not load.errors, load.errors[:5]
        assert not reader.errors, reader.errors[:5]
        assert len(reader.seen) == len(set(reader.seen)), "the group re-read records"
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))

        # Bad input: one line, non-zero exit.
        for args, words in ((("scale", "in", "--broker", "7"), "no broker 7"),
                            (("scale", "out", "--brokers", "0"), "between 1 and 16")):  # fmt: skip
            out = cluster.amq(*args)
            assert out.returncode != 0 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out
    finally:
        cluster.stop()


def test_balancer_spreads_partitions_all_on_one_broker_then_leaves_them(tmp_path: Path) -> None:
    # Short cooldown so "left alone" is not just the cooldown holding the partitions still.
    cluster = start_local_cluster(tmp_path, brokers=3, wal="nfs", auto_balance=False)
    try:
        topic = unique("bal")
        create_topic(cluster, topic, 30)
        moves = [(topic, p, 0) for p, b in leaders(cluster.bootstrap, topic).items() if b != 0]
        res = request_sync(cluster.state["controller"], api.Reassign(moves))
        assert all(not r[2] for r in res.results), res
        wait_until(lambda: set(leaders(cluster.bootstrap, topic).values()) == {0}, 30, "everything on broker 0")
        load = Load(cluster.bootstrap, topic).start()

        dry = cluster.amq("cluster", "balance", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["moves"] and plan["started"] == []
        assert set(leaders(cluster.bootstrap, topic).values()) == {0}, "a dry run moved something"

        started = time.monotonic()
        out = cluster.amq("cluster", "balance", "--json")
        assert out.returncode == 0, out.stderr
        took = time.monotonic() - started
        counts = Counter(leaders(cluster.bootstrap, topic).values())
        status = controller_status(cluster)
        total = Counter({b.id: b.partitions_led for b in status.brokers})
        assert max(total.values()) - min(total.values()) <= 2, total
        assert set(counts) == {0, 1, 2}, counts
        assert took < 30

        # Settled: planning again moves nothing.
        again = json.loads(cluster.amq("cluster", "balance", "--dry-run", "--json").stdout)
        assert again["moves"] == [] and again["balanced"], again
        before = leaders(cluster.bootstrap, topic)
        time.sleep(3)
        assert leaders(cluster.bootstrap, topic) == before
        load.finish()
        assert not load.errors, load.errors[:5]
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))
    finally:
        cluster.stop()


def test_auto_balancer_is_on_by_default_and_evens_out_a_skewed_cluster(tmp_path: Path) -> None:
    cluster = start_local_cluster(
        tmp_path, brokers=3, wal="nfs", extra_broker={"load_report_interval_ms": 1000}, balance_interval_s=1.0
    )
    try:
        topic = unique("auto")
        create_topic(cluster, topic, 24)
        moves = [(topic, p, 0) for p, b in leaders(cluster.bootstrap, topic).items() if b != 0]
        request_sync(cluster.state["controller"], api.Reassign(moves))
        started = time.monotonic()

        def even() -> bool:
            counts = Counter(leaders(cluster.bootstrap, topic).values())
            balanced = len(counts) == 3 and max(counts.values()) - min(counts.values()) <= 2
            return balanced and any("balancer" in line for line in controller_status(cluster).balancer)

        # The reassignment to broker 0 completes first (the balancer waits for moves under way).
        wait_until(even, 30, "the auto-balancer to spread the partitions")
        assert time.monotonic() - started < 30
        assert controller_status(cluster).auto_balance
        before = leaders(cluster.bootstrap, topic)
        time.sleep(4)
        assert leaders(cluster.bootstrap, topic) == before, "the balancer moved partitions of a balanced cluster"
        out = cluster.amq("cluster", "status")
        assert "auto-balancer: on" in out.stdout, out.stdout
    finally:
        cluster.stop()


def test_autoscaler_adds_a_broker_under_load_and_removes_it_when_idle(tmp_path: Path) -> None:
    cluster = start_local_cluster(
        tmp_path, brokers=1, wal="nfs", autoscale="1:2", target_mibps=0.5, autoscale_interval_s=1.0,
        extra_broker={"load_report_interval_ms": 1000}, balance_interval_s=1.0,
    )  # fmt: skip
    try:
        topic = unique("as")
        create_topic(cluster, topic, PARTITIONS)
        load = Load(cluster.bootstrap, topic, pad=1000).start()

        def brokers() -> list[int]:
            return sorted(b.id for b in controller_status(cluster).brokers if b.alive)

        wait_until(lambda: brokers() == [0, 1], 60, "the autoscaler to add a broker")
        cluster.reload()
        wait_until(lambda: set(leaders(cluster.bootstrap, topic).values()) == {0, 1}, 30, "partitions on the new one")
        load.finish()
        assert not load.errors, load.errors[:5]
        wait_until(lambda: brokers() == [0], 60, "the autoscaler to remove the idle broker")
        out = cluster.amq("cluster", "status")
        assert "autoscaler: 1:2 brokers" in out.stdout and "scale out: added broker 1" in out.stdout, out.stdout
        assert "scale in: removed broker 1" in out.stdout, out.stdout
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))
    finally:
        cluster.stop()
