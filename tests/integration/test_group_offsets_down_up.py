"""Committed consumer-group offsets survive `amq cluster down` + `amq cluster up` (the CLI, in subprocesses).

test_groups.py covers a broker kill -9; this is the orderly stop of every process, SeaweedFS included,
and a fresh start from the cluster directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from automq_cli.cluster import pid_alive, read_state, stop_cluster
from tests.integration.cluster_fixture import unique

ck = pytest.importorskip("confluent_kafka")
admin_mod = pytest.importorskip("confluent_kafka.admin")

PARTITIONS = 3


def amq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMQ_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", "cluster", *args], capture_output=True, text=True, env=env,
        timeout=180,
    )  # fmt: skip


def consumer(bs: str, group: str) -> Any:
    return ck.Consumer(
        {"bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
         "session.timeout.ms": 6000, "heartbeat.interval.ms": 300}
    )  # fmt: skip


def poll_values(c: Any, want: int, timeout: float = 60) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m.value())
    return got


def produce(bs: str, topic: str, start: int, count: int) -> None:
    p = ck.Producer({"bootstrap.servers": bs})
    for i in range(start, start + count):
        p.produce(topic, value=b"v%d" % i, partition=i % PARTITIONS)
    assert p.flush(30) == 0


def test_committed_offsets_survive_cluster_down_and_up(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    topic, group = unique("t"), unique("g")
    up = amq(home, "up", "--dir", str(data), "--port", "0")
    assert up.returncode == 0, up.stderr
    states: list[dict[str, Any]] = [json.loads((home / "cluster.json").read_text())]
    try:
        bs = states[0]["bootstrap"]
        admin = admin_mod.AdminClient({"bootstrap.servers": bs})
        admin.create_topics([admin_mod.NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=30)
        produce(bs, topic, 0, 30)
        c = consumer(bs, group)
        c.subscribe([topic])
        assert len(poll_values(c, 30)) == 30
        c.commit(asynchronous=False)
        c.close()

        down = amq(home, "down")
        assert down.returncode == 0, down.stderr
        assert not [n for n, pid in states[0]["pids"].items() if pid_alive(pid, n)]
        up2 = amq(home, "up", "--dir", str(data), "--port", "0")
        assert up2.returncode == 0, up2.stderr
        states.append(json.loads((home / "cluster.json").read_text()))
        bs = states[1]["bootstrap"]

        c = consumer(bs, group)
        committed = c.committed([ck.TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
        assert [tp.offset for tp in committed] == [10] * PARTITIONS
        # The group resumes after its commits: only records produced after the restart arrive.
        produce(bs, topic, 30, 6)
        c.subscribe([topic])
        got = poll_values(c, 6)
        got += poll_values(c, 1, timeout=2)  # anything extra (a replay) would show up here
        c.close()
        assert sorted(got) == sorted(b"v%d" % i for i in range(30, 36))
    finally:
        state = read_state(home)
        if state is not None:
            stop_cluster(state, timeout=20)  # stops exactly the pids `up` recorded
        for st in states:
            assert not [n for n, pid in st["pids"].items() if pid_alive(pid, n)]
