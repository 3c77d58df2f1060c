"""Crash and restart: kill -9 under idempotent acks=all load, and the `amq cluster` commands end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from automq_cli.cluster import pid_alive
from engine.devtools.s3server import EmbeddedS3
from tests.integration.cluster_fixture import start_local_cluster, unique

PARTITIONS = 4


def consume_all(bootstrap: str, topic: str, partition: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        c.assign([TopicPartition(topic, partition, lo)])
        out: list[int] = []
        deadline = time.monotonic() + 60
        while len(out) < hi - lo and time.monotonic() < deadline:
            for m in c.consume(10_000, timeout=1):
                assert m.error() is None, m.error()
                out.append(int(m.value()))
        return out
    finally:
        c.close()


def test_kill_9_under_idempotent_acks_all_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    cluster = start_local_cluster(tmp_path)
    try:
        topic = "acceptance"
        a = AdminClient({"bootstrap.servers": cluster.bootstrap})
        a.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        acked: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        failed: list[object] = []

        def on_delivery(err: object, msg: object) -> None:
            if err is not None:
                failed.append(err)
            else:
                acked[msg.partition()].append(int(msg.value()))  # type: ignore[attr-defined]

        producer = Producer(
            {
                "bootstrap.servers": cluster.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "message.timeout.ms": 120_000,
                "reconnect.backoff.max.ms": 200,
            }
        )
        stop = threading.Event()
        sent = [0]

        def load() -> None:
            i = 0
            while not stop.is_set():
                try:
                    producer.produce(topic, value=str(i).encode(), key=str(i % 64).encode(), on_delivery=on_delivery)
                    i += 1
                except BufferError:
                    producer.poll(0.05)
                    continue
                if i % 50 == 0:
                    producer.poll(0)
                    time.sleep(0.002)
            sent[0] = i

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(2.5)
            before_kill = sum(len(v) for v in acked.values())
            cluster.kill_broker()
            time.sleep(0.5)
            cluster.restart_broker()
            time.sleep(2.5)
        finally:
            stop.set()
            t.join()
        assert producer.flush(120) == 0
        assert not failed, failed[:3]
        assert before_kill > 0 and sum(len(v) for v in acked.values()) == sent[0]
        for p in range(PARTITIONS):
            got = consume_all(cluster.bootstrap, topic, p)
            # Exactly once: every acknowledged record, nothing twice, in the order acknowledged.
            assert len(got) == len(set(got)), f"partition {p}: duplicates"
            assert got == acked[p], f"partition {p}: consumed records differ from acknowledged ones"
    finally:
        cluster.stop()


def amq(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMQ_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", "cluster", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_cli_up_status_down_up_keeps_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = tmp_path / "cluster"
    up = amq(home, "up", "--dir", str(data), "--port", "0")
    assert up.returncode == 0, up.stderr
    state = json.loads((home / "cluster.json").read_text())
    try:
        assert state["bootstrap"] in up.stdout and str(data) in up.stdout
        assert set(state["pids"]) == {"s3", "controller", "broker-0"}
        assert state["wal_kind"] == "file" and state["metrics"][0].startswith("http://127.0.0.1:")
        again = amq(home, "up", "--dir", str(data))
        assert again.returncode != 0 and "already running" in again.stderr
        assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
        status = amq(home, "status", "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["kafka_ready"] and all(p["alive"] for p in info["processes"])
        p = Producer({"bootstrap.servers": state["bootstrap"]})
        for i in range(10):
            p.produce("kept", value=str(i).encode())
        assert p.flush(30) == 0
        down = amq(home, "down")
        assert down.returncode == 0, down.stderr
        assert not (home / "cluster.json").exists()
        assert not [n for n, pid in state["pids"].items() if pid_alive(pid, n)]
        up2 = amq(home, "up", "--dir", str(data))
        assert up2.returncode == 0, up2.stderr
        state = json.loads((home / "cluster.json").read_text())
        assert consume_all(state["bootstrap"], "kept", 0) == list(range(10))
    finally:
        amq(home, "down")
        for name, pid in state["pids"].items():
            assert not pid_alive(pid, name)


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = amq(home, "up", "--dir", str(tmp_path / "c"), "--port", str(busy))
    assert r.returncode == 1 and f"port {busy} is in use" in r.stderr
    r2 = amq(home, "up", "--dir", str(tmp_path / "c"), "--wal", "floppy")
    r3 = amq(home, "status")
    for res in (r, r2, r3):
        assert res.returncode != 0
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--wal" in r2.stderr and "no local amq cluster" in r3.stderr
    assert not (home / "cluster.json").exists()


@pytest.mark.parametrize("wal", ["s3"])
def test_s3_wal_cluster_round_trip(tmp_path: Path, wal: str) -> None:
    cluster = start_local_cluster(tmp_path, wal=wal)
    try:
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        for i in range(20):
            p.produce("s3wal", value=str(i).encode())
        assert p.flush(30) == 0
        assert consume_all(cluster.bootstrap, "s3wal", 0) == list(range(20))
    finally:
        cluster.stop()


def test_external_s3_endpoint(tmp_path: Path, s3_server: EmbeddedS3) -> None:
    ep = s3_server.endpoint
    cluster = start_local_cluster(
        tmp_path,
        s3_endpoint=ep.url,
        access_key=ep.access_key,
        secret_key=ep.secret_key,
        s3_bucket=ep.bucket,
        s3_prefix=f"{unique('ext')}/",
    )
    try:
        assert "s3" not in cluster.state["pids"]  # nothing embedded was started
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        for i in range(5):
            p.produce("ext", value=str(i).encode())
        assert p.flush(30) == 0
        assert consume_all(cluster.bootstrap, "ext", 0) == list(range(5))
    finally:
        cluster.stop()
    home = tmp_path / "h2"
    wrong = amq(
        home,
        "up",
        "--dir",
        str(tmp_path / "c2"),
        "--port",
        "0",
        "--s3-endpoint",
        ep.url,
        "--access-key",
        "nobody",
        "--secret-key",
        "wrong",
        "--s3-bucket",
        ep.bucket,
    )
    dead = amq(home, "up", "--dir", str(tmp_path / "c3"), "--port", "0", "--s3-endpoint", "http://127.0.0.1:9")
    for res, words in ((wrong, "refused the credentials"), (dead, "unreachable")):
        assert res.returncode == 1 and words in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (home / "cluster.json").exists()
