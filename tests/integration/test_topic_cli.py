"""`amq topic` end to end: the real CLI in a subprocess against the session's cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.integration.cluster_fixture import LocalCluster, unique

pytest.importorskip("confluent_kafka")


def amq_topic(cluster: LocalCluster | None, *args: str, home: str | None = None) -> subprocess.CompletedProcess[str]:
    # AMQ_HOME of the fixture's cluster: the default bootstrap comes from its cluster.json.
    env = {**os.environ, "AMQ_HOME": home or str(cluster.home if cluster else "/nonexistent"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", "topic", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def describe(cluster: LocalCluster, topic: str, *extra: str) -> dict[str, Any]:
    return json.loads(ok(amq_topic(cluster, "describe", topic, "--json", *extra)))


def test_topic_create_list_describe_alter_delete(broker_cluster: LocalCluster) -> None:
    from confluent_kafka import Producer

    c, topic = broker_cluster, unique("cli")
    ok(amq_topic(c, "create", topic, "--partitions", "3", "--config", "retention.ms=3600000"))
    listed = json.loads(ok(amq_topic(c, "list", "--json")))
    assert {"name": topic, "partitions": 3} in listed
    assert topic in ok(amq_topic(c, "list"))  # the rich table

    p = Producer({"bootstrap.servers": c.bootstrap})
    for i in range(9):
        p.produce(topic, value=b"v%d" % i, partition=i % 3)
    assert p.flush(30) == 0
    info = describe(c, topic)
    assert [q["partition"] for q in info["partitions"]] == [0, 1, 2]
    assert all(q["leader"] == 0 and q["log_start_offset"] == 0 for q in info["partitions"])
    assert [q["high_watermark"] for q in info["partitions"]] == [3, 3, 3]
    assert info["configs"] == {
        "retention.ms": {"value": "3600000", "default": False, "source": "dynamic_topic_config", "enforced": True}
    }
    every = describe(c, topic, "--all-configs")["configs"]
    assert every["retention.bytes"]["enforced"] and every["cleanup.policy"]["enforced"]
    assert not every["segment.bytes"]["enforced"] and not every["flush.ms"]["enforced"]
    assert "no effect" in ok(amq_topic(c, "describe", topic, "--all-configs"))
    assert "high watermark" in ok(amq_topic(c, "describe", topic))

    # --bootstrap overrides the state file (here: one that names no cluster).
    ok(amq_topic(None, "alter", topic, "--partitions", "5", "--config", "cleanup.policy=compact",
                 "--delete-config", "retention.ms", "--bootstrap", c.bootstrap))  # fmt: skip
    info = describe(c, topic)
    assert len(info["partitions"]) == 5
    assert set(info["configs"]) == {"cleanup.policy"} and info["configs"]["cleanup.policy"]["value"] == "compact"

    one_line_error(amq_topic(c, "create", topic), "already exists")
    ok(amq_topic(c, "create", topic, "--if-not-exists"))
    ok(amq_topic(c, "delete", topic))
    deadline = time.monotonic() + 15
    while topic in ok(amq_topic(c, "list")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert topic not in ok(amq_topic(c, "list"))
    one_line_error(amq_topic(c, "delete", topic), "does not exist")
    ok(amq_topic(c, "delete", topic, "--if-exists"))


def test_topic_bad_input_is_one_line_and_touches_nothing(broker_cluster: LocalCluster) -> None:
    c, topic, missing = broker_cluster, unique("bad"), unique("missing")
    ok(amq_topic(c, "create", topic, "--partitions", "2"))
    one_line_error(amq_topic(c, "describe", missing), "does not exist")
    one_line_error(amq_topic(c, "alter", missing, "--partitions", "4"), "does not exist")
    one_line_error(amq_topic(c, "create", unique("bad"), "--partitions", "0"), "--partitions")
    one_line_error(amq_topic(c, "create", unique("bad"), "--partitions", "-3"), "--partitions")
    one_line_error(amq_topic(c, "create", unique("bad"), "--partitions", "abc"), "whole number")
    one_line_error(amq_topic(c, "alter", topic, "--partitions", "1"), "can only grow")
    one_line_error(amq_topic(c, "create", unique("bad"), "--config", "no.such.config=1"), "no.such.config")
    one_line_error(amq_topic(c, "alter", topic, "--config", "no.such.config=1"), "no.such.config")
    one_line_error(amq_topic(c, "create", unique("bad"), "--config", "novalue"), "KEY=VALUE")
    # Kafka's INVALID_CONFIG, with the broker's message.
    one_line_error(amq_topic(c, "create", unique("bad"), "--config", "retention.ms=-5"),
                   "retention.ms", "must be at least -1")  # fmt: skip
    one_line_error(amq_topic(c, "create", unique("bad"), "--config", "cleanup.policy=foo"),
                   "cleanup.policy", "delete, compact")  # fmt: skip
    one_line_error(amq_topic(c, "alter", topic, "--config", "compression.type=gzip"), "no recompression")
    one_line_error(amq_topic(c, "delete", topic, missing), "does not exist")
    info = describe(c, topic)  # nothing of the above changed the topic
    assert len(info["partitions"]) == 2 and info["configs"] == {}
    ok(amq_topic(c, "delete", topic))


def test_topic_without_cluster_or_with_unreachable_bootstrap(tmp_path: Any) -> None:
    one_line_error(amq_topic(None, "list", home=str(tmp_path)), "no local amq cluster")
    start = time.monotonic()
    # Port 1 on loopback: nothing listens, so the connection is refused on every retry.
    one_line_error(amq_topic(None, "list", "--bootstrap", "127.0.0.1:1", home=str(tmp_path)), "cannot reach")
    assert time.monotonic() - start < 15
