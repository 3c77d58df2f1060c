"""Processes started by hand, as on hosts of their own: two `amq controller start` on one
PostgreSQL database, two `amq broker start --node-id N --controllers ...` on an NFS-style shared
WAL directory and the embedded S3, one from flags and one from a YAML file. Real Kafka clients
produce and consume through them, and keep doing so after the leading controller stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from confluent_kafka.admin import AdminClient

from engine.controller import api
from engine.controller.rpc import ControllerClient, RpcError, parse_addresses
from engine.devtools.s3server import EmbeddedS3
from tests.integration.cluster_fixture import unique
from tests.integration.cluster_load import (
    PARTITIONS,
    GroupReader,
    Load,
    check_exactly_once_in_order,
    read_back,
    wait_until,
)
from tests.integration.host_processes import HostProcess, amq_process


def leads(address: str) -> bool:
    """Asked alone (not following a NOT_LEADER), this controller answers as the leader."""

    async def ping() -> None:
        client = ControllerClient(parse_addresses(address), follow=False)
        try:
            await client.request(api.Ping(), timeout=2.0)
        finally:
            await client.close()

    try:
        asyncio.run(ping())
        return True
    except RpcError:
        return False


def create(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: a collected client fails its futures
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def test_controllers_and_brokers_started_by_hand_serve_kafka_clients(
    tmp_path: Path, s3_server: EmbeddedS3, pg_url: str
) -> None:
    ep = s3_server.endpoint
    prefix = f"{unique('hosts')}/"
    shared_wal = tmp_path / "shared-wal"  # the NFS mount every broker host has
    shared_wal.mkdir()
    # The database URL (and its password) goes by environment, as the systemd units do it.
    env = {"AMQ_METADATA": pg_url}
    procs: list[HostProcess] = []
    try:
        ctl0 = amq_process("controller-0", ["controller", "start", "--dir", str(tmp_path / "ctl0"), "--port", "0"],
                           tmp_path, env)  # fmt: skip
        procs.append(ctl0)
        ctl1_yaml = tmp_path / "controller-1.yaml"
        ctl1_yaml.write_text(yaml.safe_dump({"dir": str(tmp_path / "ctl1"), "listen": "127.0.0.1", "port": 0}))
        ctl1 = amq_process("controller-1", ["controller", "start", "--config", str(ctl1_yaml)], tmp_path, env)
        procs.append(ctl1)
        addresses = [f"127.0.0.1:{c.wait_ready()['port']}" for c in (ctl0, ctl1)]
        controllers = ",".join(addresses)

        b0 = amq_process(
            "broker-0",
            ["broker", "start", "--node-id", "0", "--controllers", controllers, "--zone", "az1",
             "--wal", "nfs", "--wal-dir", str(shared_wal), "--s3-endpoint", ep.url, "--s3-bucket", ep.bucket,
             "--access-key", ep.access_key, "--secret-key", ep.secret_key, "--s3-prefix", prefix,
             "--port", "0", "--advertise", "127.0.0.1", "--dir", str(tmp_path / "b0")],
            tmp_path, env,
        )  # fmt: skip
        procs.append(b0)
        b1_yaml = tmp_path / "broker-1.yaml"
        b1_yaml.write_text(yaml.safe_dump({
            "node_id": 1, "zone": "az9", "controller": controllers, "port": 0, "data_dir": str(tmp_path / "b1"),
            "s3": {"endpoint": ep.url, "bucket": ep.bucket, "access_key": ep.access_key,
                   "secret_key": ep.secret_key, "prefix": prefix},
            "storage": {"wal": {"kind": "nfs", "path": str(shared_wal)}},
        }))  # fmt: skip
        # A flag wins over the file: this broker is in az2.
        b1 = amq_process("broker-1", ["broker", "start", "--config", str(b1_yaml), "--zone", "az2"], tmp_path, env)
        procs.append(b1)
        bootstrap = ",".join(f"127.0.0.1:{b.wait_ready()['port']}" for b in (b0, b1))

        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: a collected client fails its futures
        nodes = admin.describe_cluster().result(10).nodes
        assert {n.id: n.rack for n in nodes} == {0: "az1", 1: "az2"}
        assert {"broker-0", "broker-1"} <= {p.name for p in shared_wal.iterdir()}  # one WAL each

        topic = unique("by-hand")
        create(bootstrap, topic, PARTITIONS)
        load = Load(bootstrap, topic).start()
        reader = GroupReader(bootstrap, topic, unique("g")).start()
        wait_until(lambda: load.total > 1000 and len(reader.seen) > 500, 30, "produce and consume")

        # The leading controller stops: the brokers follow the other one of their list.
        (leader,) = [c for c, a in zip((ctl0, ctl1), addresses, strict=True) if leads(a)]
        (standby_address,) = [a for c, a in zip((ctl0, ctl1), addresses, strict=True) if c is not leader]
        assert leader.stop() == 0, leader.tail()
        wait_until(lambda: leads(standby_address), 10, "the standby to lead")
        acked = load.total
        later = unique("after")
        create(bootstrap, later, 2)
        wait_until(lambda: load.total > acked + 500, 30, "produce to go on")
        load.finish()
        reader.finish()
        assert not load.errors, load.errors[:5]
        assert not reader.errors, reader.errors[:5]
        check_exactly_once_in_order(load, read_back(bootstrap, topic))
        assert set(load.acked) == set(range(PARTITIONS))
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(later, timeout=10).topics[later].partitions
        assert sorted(md) == [0, 1] and all(p.leader in (0, 1) for p in md.values())

        for b in (b1, b0):
            assert b.stop() == 0, b.tail()
        for p in procs:
            p.stop()
            assert "Traceback" not in p.log.read_text(errors="replace"), f"{p.name}: {p.tail(20)}"
    finally:
        for p in reversed(procs):
            p.stop(timeout=10)
