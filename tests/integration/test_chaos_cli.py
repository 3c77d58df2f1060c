"""`amq chaos` against a running cluster under idempotent acks=all load: each fault says what it
did, bad input is one line and a non-zero exit, and every acknowledged record is read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.cluster_load import (
    check_exactly_once_in_order,
    loaded_topic,
    read_back,
    three_zones,
    wait_until,
)


def _amq(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMQ_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "automq_cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def test_bad_input_is_one_line_and_non_zero(tmp_path: Path) -> None:
    for args in (["kill", "broker", "1"], ["s3", "--clear"], ["pause", "controller", "--for", "x"]):
        r = _amq(tmp_path / "none", "chaos", *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("amq chaos: error:"), r.stderr


def test_chaos_commands_under_load_lose_nothing(tmp_path: Path) -> None:
    with three_zones(tmp_path, "nfs", s3_faults=True) as cluster:
        topic, load = loaded_topic(cluster, "chaos-cli")

        def amq_ok(*args: str) -> str:
            r = cluster.amq("chaos", *args)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
            print(r.stdout.strip())
            return r.stdout

        def amq_fails(*args: str, says: str) -> None:
            r = cluster.amq("chaos", *args)
            assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)

        amq_fails("kill", "broker", "7", says="no broker 7")
        amq_fails("kill", "database", says="cannot target")
        amq_fails("object-store", "--error-rate", "2", says="between 0 and 1")
        amq_fails("zone-down", "az9", says="no zone 'az9'")
        amq_fails("wal-tear", "0", says="is running")

        out = amq_ok("pause", "broker", "1", "--for", "1s")
        assert "SIGSTOP" in out and "SIGCONT" in out
        assert "latency 20 ms" in amq_ok("object-store", "--latency-ms", "20", "--error-rate", "0.1")
        assert "no faults" in amq_ok("s3", "--clear")

        mark = load.total
        assert "killed broker(s) 2" in amq_ok("zone-down", "az3", "--for", "2s")
        cluster.reload()
        wait_until(lambda: load.total > mark + 2000, 60, "produce after the zone came back")

        assert "killed broker-1" in amq_ok("kill", "broker", "1")
        assert "after the last intact frame" in amq_ok("wal-tear", "1", "--seed", "3")
        r = cluster.amq("broker", "start", "1")
        assert r.returncode == 0, r.stderr
        cluster.reload()
        mark = load.total
        wait_until(lambda: load.total > mark + 2000, 60, "produce after broker 1 came back")

        load.finish()
        assert not load.errors, load.errors[:3]
        check_exactly_once_in_order(load, read_back(cluster.bootstrap, topic))
