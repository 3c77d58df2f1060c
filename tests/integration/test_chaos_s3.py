"""The S3 fault proxy between brokers and SeaweedFS: outages, errors and latency under an
idempotent acks=all load lose nothing acknowledged (docs/chaos.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from automq_cli.chaos.faults import set_s3_faults
from tests.integration.cluster_fixture import start_local_cluster
from tests.integration.cluster_load import (
    PARTITIONS,
    Load,
    check_exactly_once_in_order,
    create_topic,
    read_back,
    unique,
    wait_until,
)


def _proxy_stats(state: dict) -> dict:
    return json.loads(Path(str(state["s3_faults"]) + ".stats.json").read_text())


def test_s3_down_then_errors_under_load_loses_nothing(tmp_path: Path) -> None:
    cluster = start_local_cluster(tmp_path, wal="s3", s3_faults=True)
    try:
        state = cluster.state
        assert state["s3_proxy"] != state["s3_endpoint"]
        topic = unique("s3faults")
        create_topic(cluster, topic, PARTITIONS)
        load = Load(cluster.bootstrap, topic).start()
        wait_until(lambda: load.total > 2000, 30, "produce to start")

        # A full outage: the s3 WAL cannot make anything durable, so acknowledgements stop.
        print(set_s3_faults(state, down_s=10))
        time.sleep(1.0)  # WAL objects already in flight may still land
        during = load.total
        time.sleep(7.0)
        stalled = load.total - during
        wait_until(lambda: load.total > during + 2000, 60, "produce to resume after the outage")
        assert stalled < 200, f"{stalled} records acknowledged while S3 was down"

        # Errors (500/503/SlowDown) and latency: slower, never lost.
        print(set_s3_faults(state, error_rate=0.3, latency_ms=30, seed=1))
        time.sleep(1.0)
        mark = load.total
        wait_until(lambda: _proxy_stats(state)["errors"] > 3, 30, "the proxy to answer with errors")
        wait_until(lambda: load.total > mark + 1000, 60, "produce through S3 errors")
        print(set_s3_faults(state, clear=True))
        stats = _proxy_stats(state)
        # The outage shows in the acknowledgements above; `refused` counts only requests that raced
        # the listener's close (most clients see a refused connect and never reach the proxy).
        assert stats["errors"] > 0 and stats["by_status"].get("200", 0) > 0, stats
        load.finish()
        assert not load.errors, load.errors[:3]
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))
    finally:
        cluster.stop()
