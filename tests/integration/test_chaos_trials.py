"""`amq chaos trials`: a short randomized run (a zone down, S3 errors, a killed broker with a torn
WAL) on its own cluster must find every acknowledged record once and in order, and recover."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from automq_cli.cluster.launch import stop_cluster
from automq_cli.cluster.processes import terminate_pids
from automq_cli.cluster.state import DIR_STATE_FILE


def _amq(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMQ_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "automq_cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip


def _stop_leftovers(directory: Path) -> None:
    """If the run was cut short, stop what it started, by the pids in its state file."""
    state_file = directory / "data" / DIR_STATE_FILE
    if state_file.exists():
        state = json.loads(state_file.read_text())
        stop_cluster(state, timeout=10)
        terminate_pids({n: p for n, p in (state.get("pids") or {}).items() if isinstance(p, int)}, timeout=5)


def test_bad_input_is_one_line_and_non_zero(tmp_path: Path) -> None:
    cases = {
        ("--count", "0"): "--count must be at least 1",
        ("--faults", "kill,flood"): "unknown fault 'flood'",
        ("--wal", "s3", "--faults", "tear"): "the s3 WAL has none to tear",
        ("--wal", "disk"): "--wal must be nfs, s3 or file",
        ("--json", str(tmp_path / "no" / "such" / "r.json")): "no such directory",
    }
    for args, says in cases.items():
        r = _amq(tmp_path, "chaos", "trials", *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("amq chaos: error:") and says in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_three_trials_on_nfs_lose_nothing(tmp_path: Path) -> None:
    directory, report = tmp_path / "trials", tmp_path / "report.json"
    try:
        # Seed 38 draws a zone down, S3 errors, and a kill -9 with a torn WAL tail.
        r = _amq(tmp_path / "home", "chaos", "trials", "--count", "3", "--seed", "38", "--wal", "nfs",
                 "--dir", str(directory), "--json", str(report), timeout=240)  # fmt: skip
    finally:
        _stop_leftovers(directory)
    print(r.stdout, r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(report.read_text())
    assert out["ok"] and not out["failures"], out["failures"]
    assert out["violations"] == {"lost": 0, "duplicated": 0, "reordered": 0, "offset_missing": 0,
                                 "offset_changed": 0}  # fmt: skip
    assert [t["kind"] for t in out["trials"]] == ["zone", "s3", "tear"]
    assert all(t["recovery_s"] is not None and t["acked"] > 0 for t in out["trials"])
    assert out["acked"] > 3000 and out["read"] >= out["acked"] and out["group_consumed"] > 0
    # The zone-aware producers' writes to leaders in other zones went through the router's relay.
    assert out["router"]["relayed_batches"] > 0, out["router"]
    assert "tore broker 1's WAL" in " ".join(out["trials"][2]["lines"])
    assert "fault" in r.stdout and "zone" in r.stdout and "seed 38" in r.stderr
