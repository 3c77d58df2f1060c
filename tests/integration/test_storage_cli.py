"""`amq storage` end to end: the real CLI in a subprocess against the session's cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.cluster_fixture import LocalCluster, unique
from tests.integration.lifecycle_helpers import wait_for


def amq_storage(home: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", "storage", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "AMQ_HOME": str(home), "COLUMNS": "200"},
    )  # fmt: skip


def as_json(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_storage_objects_stream_usage_verify(broker_cluster: LocalCluster) -> None:
    c, topic = broker_cluster, unique("inspect")
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": c.bootstrap})
    for i in range(100):
        p.produce(topic, value=b"x" * 100, partition=i % 2)
    assert p.flush(30) == 0

    def in_s3() -> bool:
        return as_json(amq_storage(c.home, "stream", topic, "0", "--json"))["end_offset"] == 50

    wait_for("the upload", in_s3)
    s = as_json(amq_storage(c.home, "stream", topic, "0", "--json"))
    assert s["start_offset"] == 0 and s["ranges"][0]["start"] == 0 and s["ranges"][-1]["end"] == 50
    assert all(r["state"] == "committed" and r["bytes"] > 5000 / len(s["ranges"]) for r in s["ranges"])
    objs = as_json(amq_storage(c.home, "objects", "--topic", topic, "--json"))
    assert {r["key"] for r in s["ranges"]} <= {o["key"] for o in objs}
    assert all(f"{topic}-0" in o["streams"] or f"{topic}-1" in o["streams"] for o in objs)
    usage = as_json(amq_storage(c.home, "usage", "--json"))
    assert usage["topics"][topic]["bytes"] >= 2 * 50 * 100 and usage["topics"][topic]["objects"] >= 1
    assert usage["s3_calls"]["s3_put_requests"] >= 1
    verified = as_json(amq_storage(c.home, "verify", "--json"))
    assert verified["ok"] and verified["objects"] >= 1, verified
    table = amq_storage(c.home, "stream", topic, "1")
    assert table.returncode == 0 and "objects/" in table.stdout

    one_line_error(amq_storage(c.home, "stream", "nosuchtopic", "0"), "does not exist")
    one_line_error(amq_storage(c.home, "stream", topic, "7"), "no partition 7")
    one_line_error(amq_storage(c.home, "objects", "--topic", "nosuchtopic"), "does not exist")


def test_storage_without_a_cluster(tmp_path: Path) -> None:
    for cmd in (["objects"], ["usage"], ["verify"], ["stream", "t", "0"]):
        one_line_error(amq_storage(tmp_path, *cmd), "no local cluster")
