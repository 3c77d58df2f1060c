"""Controller failover on PostgreSQL: real PostgreSQL, two controller processes, three brokers.

kill -9 of the leading controller under idempotent acks=all load: the standby takes the
lease and leads within 5 s, the brokers keep producing and fetching meanwhile, a topic is
created and a partition moved through the new leader, and every acknowledged record is read
back once, in order. A leader paused past its lease (SIGSTOP) leads no more when it wakes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from automq_cli.cluster import kill_pid
from engine.controller import api
from engine.controller.rpc import NOT_LEADER, ControllerClient, RpcError, parse_addresses, request_sync
from tests.integration.cluster_fixture import LocalCluster, start_local_cluster, unique
from tests.integration.cluster_load import (
    GroupReader,
    check_exactly_once_in_order,
    create_topic,
    leaders,
    loaded_topic,
    read_back,
    three_zones,
    wait_until,
)


def controllers(cluster: LocalCluster) -> dict[str, tuple[str, int]]:
    """name -> (address, pid), in the order the cluster started them."""
    pids = cluster.state["pids"]
    names = sorted((n for n in pids if n.startswith("controller")), key=lambda n: (len(n), n))
    return dict(zip(names, ((a, pids[n]) for n, a in zip(names, cluster.state["controller"].split(","), strict=True)),
                    strict=True))  # fmt: skip


def ask(address: str, req: Any) -> Any:
    """One call to exactly this controller (the client does not follow it to the leader)."""

    async def run() -> Any:
        client = ControllerClient(parse_addresses(address), follow=False)
        try:
            return await client.request(req, timeout=2.0)
        finally:
            await client.close()

    return asyncio.run(run())


def leads(address: str) -> bool:
    """Asked alone, this controller answers as the leader (a standby says NOT_LEADER)."""
    try:
        ask(address, api.Ping())
        return True
    except RpcError:
        return False


def the_leader(cluster: LocalCluster) -> str:
    found = [n for n, (a, _) in controllers(cluster).items() if leads(a)]
    assert len(found) == 1, f"controllers answering as leader: {found}"
    return found[0]


def leaders_of_topics(cluster: LocalCluster) -> set[str]:
    return set(AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(timeout=10).topics)


def test_kill_9_of_the_leading_controller_under_load(tmp_path: Path) -> None:
    with three_zones(tmp_path, "nfs", metadata="postgres", controllers=2) as cluster:
        topic, load = loaded_topic(cluster, "ctl")
        reader = GroupReader(cluster.bootstrap, topic, unique("g")).start()
        wait_until(lambda: len(reader.seen) > 500, 30, "the group to consume")
        old = the_leader(cluster)
        (standby,) = [n for n in controllers(cluster) if n != old]
        standby_address = controllers(cluster)[standby][0]
        acked, seen = load.total, len(reader.seen)
        killed_at = time.monotonic()
        kill_pid(controllers(cluster)[old][1])
        wait_until(lambda: leads(standby_address), 10, "the standby to lead")
        took = time.monotonic() - killed_at
        print(f"controller failover: {took:.2f}s")
        assert took < 5.0, f"the standby led {took:.2f}s after the kill"
        # During the gap the brokers kept serving the partitions they lead.
        assert load.total - acked > 500 and len(reader.seen) - seen > 500
        assert max(load.gaps_after(killed_at).values()) < 2.0, load.gaps_after(killed_at)
        # The new leader creates topics and moves partitions.
        fresh = unique("after")
        create_topic(cluster, fresh, 3)
        assert len(leaders(cluster.bootstrap, fresh)) == 3
        lead = leaders(cluster.bootstrap, topic)[0]
        target = (lead + 1) % 3
        out = cluster.amq("reassign", "--topic", topic, "--partition", "0", "--to", str(target))
        assert out.returncode == 0, out.stderr
        wait_until(lambda: leaders(cluster.bootstrap, topic)[0] == target, 30, "partition 0 to move")
        time.sleep(1.0)  # produce to it on its new leader too
        load.finish()
        reader.finish()
        assert not load.errors, load.errors[:5]
        status = request_sync(cluster.state["controller"], api.Status(), timeout=5)
        assert all(b.state == "running" for b in status.brokers), "a broker was fenced during the controller gap"
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))


def test_a_paused_leader_leads_no_more_when_it_wakes(tmp_path: Path) -> None:
    with three_zones(tmp_path, "nfs", metadata="postgres", controllers=2, lease_ttl_s=1.0) as cluster:
        old = the_leader(cluster)
        pid = controllers(cluster)[old][1]
        os.kill(pid, signal.SIGSTOP)
        try:
            (standby,) = [n for n in controllers(cluster) if n != old]
            wait_until(lambda: leads(controllers(cluster)[standby][0]), 10, "the standby to lead")
            # A request the broker had sent to the paused leader fails retriably (as a Kafka
            # client sees a request timeout); sent again, it goes to the new leader.
            name = unique("while-paused")
            for attempt in range(3):
                try:
                    create_topic(cluster, name, 1)
                    break
                except KafkaException as e:
                    code = e.args[0].code()
                    if code == KafkaError.TOPIC_ALREADY_EXISTS:
                        break
                    assert code == KafkaError.REQUEST_TIMED_OUT and attempt < 2, e
            # Every broker learns of the topic from the controller; the one asked may not have yet.
            wait_until(lambda: name in leaders_of_topics(cluster), 10, "the brokers to know the new topic")
        finally:
            os.kill(pid, signal.SIGCONT)
        # Woken, it finds its lease gone: it answers as a standby, naming the new leader.
        wait_until(lambda: not leads(controllers(cluster)[old][0]), 5, "the old leader to stand down")

        def refuses_naming_the_leader() -> bool:
            try:
                ask(controllers(cluster)[old][0], api.CreateTopics([{"name": "x"}]))
                raise AssertionError("the old leader accepted a write")
            except RpcError as e:
                assert e.code == NOT_LEADER, e
                return e.leader == controllers(cluster)[standby][0]

        wait_until(refuses_naming_the_leader, 5, "the old leader to name the new one")
        assert "x" not in leaders_of_topics(cluster)
        assert the_leader(cluster) == standby
        log = (Path(cluster.state["dir"]) / "logs" / f"{old}.log").read_text()
        assert "stops leading" in log


def test_a_killed_controller_started_again_stands_by_then_leads(tmp_path: Path) -> None:
    """`amq controller kill|start NAME`: back on its old address (the brokers know only those), it
    waits as the standby, and leads when the other one dies in turn."""
    cluster = start_local_cluster(tmp_path, brokers=1, metadata="postgres", controllers=2, lease_ttl_s=1.0)
    try:
        old = the_leader(cluster)
        (standby,) = [n for n in controllers(cluster) if n != old]
        out = cluster.amq("controller", "kill", old)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: leads(controllers(cluster)[standby][0]), 10, "the standby to lead")
        out = cluster.amq("controller", "start", old)
        assert out.returncode == 0, out.stderr
        assert f"{old} is up at {controllers(cluster)[old][0]}" in out.stdout, out.stdout
        cluster.reload()
        assert the_leader(cluster) == standby, "the controller started again took the lease from a live leader"
        out = cluster.amq("controller", "start", old)
        assert out.returncode != 0 and "already running" in out.stderr, out.stderr
        kill_pid(controllers(cluster)[standby][1])
        wait_until(lambda: leads(controllers(cluster)[old][0]), 10, "the restarted controller to lead")
        # The broker follows it there: a topic is created through it.
        name = unique("after-restart")
        wait_until(lambda: _created(cluster, name), 20, "a topic to be created through the restarted controller")
    finally:
        cluster.stop()


def _created(cluster: LocalCluster, name: str) -> bool:
    try:
        create_topic(cluster, name, 1)
        return True
    except KafkaException as e:
        return e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
