"""Reassignment by metadata under idempotent acks=all load and a committing consumer group.

Every partition (and the group's __consumer_offsets partition) moves around three brokers
several times, by `amq reassign` (a Kafka plan file and the simple form) and by
kafka-python's admin client. Each acknowledged record is read back once and in order; the
group neither loses nor re-reads a record; each new leader opened from the old leader's
snapshot, and the bytes uploaded per move were the stream's WAL tail, not its size.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from engine.broker.broker import java_string_hashcode
from engine.controller import api
from engine.controller.rpc import request_sync
from tests.integration.cluster_fixture import LocalCluster, unique
from tests.integration.cluster_load import (
    PARTITIONS,
    GroupReader,
    Load,
    check_exactly_once_in_order,
    controller_status,
    create_topic,
    leaders,
    read_back,
    three_zones,
    wait_until,
)

OFFSETS = "__consumer_offsets"


def _plan(tmp_path: Path, topic: str, partition: int, to: int) -> Path:
    path = tmp_path / f"plan-{partition}.json"
    path.write_text(
        json.dumps({"version": 1, "partitions": [{"topic": topic, "partition": partition, "replicas": [to]}]})
    )
    return path


def moves_of(cluster: LocalCluster) -> list[api.MoveRecord]:
    return request_sync(cluster.state["controller"], api.ListMoves()).moves


def offsets_partition(cluster: LocalCluster, group: str) -> int:
    n = len(leaders(cluster.bootstrap, OFFSETS))
    return abs(java_string_hashcode(group)) % n


@pytest.mark.parametrize("wal", ["nfs", "s3"])
def test_reassign_under_load_loses_and_repeats_nothing(tmp_path: Path, wal: str) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.structs import TopicPartition

    # three_zones leaves the auto-balancer off: every move here is the test's own.
    with three_zones(tmp_path, wal) as cluster:
        topic, group = unique("ra"), unique("g")
        create_topic(cluster, topic, PARTITIONS)
        load = Load(cluster.bootstrap, topic).start()
        reader = GroupReader(cluster.bootstrap, topic, group).start()
        wait_until(lambda: reader.committed and load.total > 2000, 60, "the group to consume and commit")
        coord = offsets_partition(cluster, group)
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        try:
            for round_ in range(3):
                lead = leaders(cluster.bootstrap, topic)
                nxt = {p: (b + 1) % 3 for p, b in lead.items()}
                coord_to = (leaders(cluster.bootstrap, OFFSETS)[coord] + 1) % 3
                if round_ == 0:
                    plan = tmp_path / "plan.json"
                    entries = [{"topic": topic, "partition": p, "replicas": [b]} for p, b in nxt.items()]
                    entries.append({"topic": OFFSETS, "partition": coord, "replicas": [coord_to]})
                    plan.write_text(json.dumps({"version": 1, "partitions": entries}))
                    out = cluster.amq("reassign", "--execute", "--reassignment-json-file", str(plan))
                    assert out.returncode == 0, out.stderr
                    assert "Save this to use as the --reassignment-json-file option during rollback" in out.stdout
                    verify = cluster.amq("reassign", "--verify", "--reassignment-json-file", str(plan))
                    assert verify.returncode == 0 and "is completed" in verify.stdout, verify.stdout + verify.stderr
                elif round_ == 1:
                    for b in range(3):
                        mine = [p for p, t in nxt.items() if t == b]
                        out = cluster.amq("reassign", "--topic", topic, "--partition", ",".join(map(str, mine)),
                                  "--to", str(b), "--json")  # fmt: skip
                        assert out.returncode == 0, out.stderr
                        assert json.loads(out.stdout)["moved"] == len(mine)
                    out = cluster.amq("reassign", "--topic", OFFSETS, "--partition", str(coord), "--to", str(coord_to))
                    assert out.returncode == 0, out.stderr
                else:
                    wanted = {TopicPartition(topic, p): [b] for p, b in nxt.items()}
                    wanted[TopicPartition(OFFSETS, coord)] = [coord_to]
                    result = admin.alter_partition_reassignments(wanted)
                    assert all(v is None for v in result.values()), result
                    wait_until(lambda want=nxt: leaders(cluster.bootstrap, topic) == want, 30, "kafka-python's moves")
                assert leaders(cluster.bootstrap, topic) == nxt
                time.sleep(1.5)
            # One partition back and forth 20 times: its stream ends up in more objects than one read
            # of the reader covers, and the new leader's cache starts after them (a read must not skip).
            for _ in range(20):
                lead = leaders(cluster.bootstrap, topic)[0]
                out = cluster.amq("reassign", "--topic", topic, "--partition", "0", "--to", str((lead + 1) % 3))
                assert out.returncode == 0, out.stderr
        finally:
            admin.close()
        time.sleep(1)
        load.finish()
        wait_until(lambda: set(reader.seen) >= {s for v in load.acked.values() for _, s in v}, 60, "the group")
        reader.finish()
        assert not load.errors, load.errors[:5]
        assert not reader.errors, reader.errors[:5]
        assert len(reader.seen) == len(set(reader.seen)), "the group re-read records after a move"
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))
        # The auto-balancer may even things out too (cause "balancer"); the test's own moves are "reassign".
        moves = [m for m in moves_of(cluster) if m.topic == topic and m.cause == "reassign"]
        assert len(moves) == 3 * PARTITIONS + 20 and all(m.state == "done" for m in moves), moves
        # Partitions under load open from the old leader's snapshot; a move uploads the WAL tail only.
        assert all(m.from_snapshot for m in moves)
        assert max(m.uploaded_bytes for m in moves) < 8 << 20
        assert controller_status(cluster).offline_partitions == 0


def test_reassign_refuses_bad_input_and_a_dead_leader(tmp_path: Path) -> None:
    # A file WAL in a zone without another broker: the dead broker's partitions wait for it.
    with three_zones(tmp_path, "file") as cluster:
        topic = unique("bad")
        create_topic(cluster, topic, 6)
        before = leaders(cluster.bootstrap, topic)

        def refused(*args: str, plan: object | None = None, raw: str | None = None) -> str:
            if plan is not None or raw is not None:
                path = tmp_path / "plan.json"
                path.write_text(raw if raw is not None else json.dumps(plan))
                args = (*args, "--reassignment-json-file", str(path))
            out = cluster.amq("reassign", *args)
            assert out.returncode != 0, out.stdout
            assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
            return out.stderr

        entry = {"topic": topic, "partition": 0, "replicas": [1]}
        assert "not valid JSON" in refused("--execute", raw='{"version": 1, "partitions": [')
        assert "exactly one" in refused("--execute", plan={"partitions": [{**entry, "replicas": [1, 2]}]})
        assert "broker 9 is unknown" in refused("--execute", plan={"partitions": [{**entry, "replicas": [9]}]})
        assert "does not exist" in refused("--execute", plan={"partitions": [{**entry, "topic": "nosuch"}]})
        # One bad entry among good ones: nothing moves.
        good = [{"topic": topic, "partition": p, "replicas": [(b + 1) % 3]} for p, b in before.items()]
        assert "has no partition 77" in refused("--execute", plan={"partitions": [*good, {**entry, "partition": 77}]})
        assert "no partition 6" in refused("--topic", topic, "--partition", "2-6", "--to", "1")
        assert leaders(cluster.bootstrap, topic) == before
        assert not moves_of(cluster)

        # --generate proposes a round robin over the listed brokers; --cancel with nothing under way says so.
        topics_file = tmp_path / "topics.json"
        topics_file.write_text(json.dumps({"version": 1, "topics": [{"topic": topic}]}))
        gen = cluster.amq("reassign", "--generate", "--topics-to-move-json-file", str(topics_file),
                          "--broker-list", "1,2", "--json")  # fmt: skip
        assert gen.returncode == 0, gen.stderr
        proposed = json.loads(gen.stdout)["proposed"]["partitions"]
        assert [e["replicas"] for e in proposed] == [[1], [2], [1], [2], [1], [2]]
        plan = tmp_path / "cancel.json"
        plan.write_text(json.dumps({"version": 1, "partitions": [{**entry, "partition": 1}]}))
        out = cluster.amq("reassign", "--cancel", "--reassignment-json-file", str(plan))
        assert out.returncode == 0 and "None of the plan's reassignments is in progress" in out.stdout, out

        # A move whose old leader cannot release (paused) is under way until cancelled.
        paused = before[2]
        target = (paused + 1) % 3
        os.kill(cluster.broker_pid(paused), signal.SIGSTOP)
        try:
            ctl = cluster.state["controller"]
            res = request_sync(ctl, api.Reassign([(topic, 2, target)]))
            assert res.results[0][2] == "" and res.moves
            listed = cluster.amq(
                "reassign", "--verify", "--reassignment-json-file", str(_plan(tmp_path, topic, 2, target))
            )
            assert listed.returncode == 1 and "still in progress" in listed.stdout, listed
            res = request_sync(ctl, api.Reassign([(topic, 2, -1)]))
            assert res.results[0][2] == ""
        finally:
            os.kill(cluster.broker_pid(paused), signal.SIGCONT)
        (move,) = [m for m in moves_of(cluster) if m.partition == 2]
        assert move.state == "cancelled", move
        wait_until(lambda: leaders(cluster.bootstrap, topic)[2] == paused, 10, "the partition to stay")

        victim = before[0]
        cluster.kill_broker(victim)
        wait_until(lambda: controller_status(cluster).brokers[victim].state == "fenced", 30, "the broker to be fenced")
        target = (victim + 1) % 3
        err = refused("--topic", topic, "--partition", "0", "--to", str(target))
        assert f"leader, broker {victim}, is not running" in err, err
        alive = next(p for p, b in before.items() if b != victim)
        err = refused("--topic", topic, "--partition", str(alive), "--to", str(victim))
        assert f"broker {victim} is not running (it is fenced)" in err, err
