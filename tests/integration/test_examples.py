"""Every program in examples/ runs against the session's cluster and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cluster_fixture import LocalCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["confluent", "kafka_python", "aiokafka"])
def test_example_round_trip(broker_cluster: LocalCluster, name: str) -> None:
    script = EXAMPLES / f"produce_consume_{name}.py"
    r = subprocess.run(
        [sys.executable, str(script), "--bootstrap", broker_cluster.bootstrap, "-n", "50"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "produced 50, consumed 50" in lines[0] and lines[0].endswith("OK"), r.stdout
