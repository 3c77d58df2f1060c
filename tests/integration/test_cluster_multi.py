"""`amq cluster up --brokers 3 --zones 3`, `amq broker kill|start|stop` and `amq cluster status|down --dir`.

The CLI runs in subprocesses, as users run it; every process it starts is checked to be gone by pid.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from automq_cli.cluster import api_versions_ok, kill_pid, pid_alive, stop_cluster
from automq_cli.cluster.state import find_state
from tests.peers import free_port


def amq(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMQ_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def status(home: Path, data: Path) -> dict[str, Any]:
    r = amq(home, "cluster", "status", "--json", "--dir", str(data))
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def states_by_id(info: dict[str, Any]) -> dict[int, str]:
    return {b["id"]: b["state"] for b in info["brokers"]}


def all_pids(states: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(n, p) for st in states for n, p in st["pids"].items()}


def test_three_brokers_in_three_zones(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    up = amq(home, "cluster", "up", "--brokers", "3", "--zones", "3", "--wal", "nfs", "--port", "0", "--dir", str(data))
    assert up.returncode == 0, up.stderr
    states = [json.loads((data / "cluster-state.json").read_text())]
    try:
        state = states[0]
        assert json.loads((home / "cluster.json").read_text()) == state
        assert set(state["pids"]) == {"s3", "controller", "broker-0", "broker-1", "broker-2"}
        assert [(b["id"], b["zone"]) for b in state["brokers"]] == [(0, "az1"), (1, "az2"), (2, "az3")]
        ports = {b["id"]: b["port"] for b in state["brokers"]}
        assert state["bootstrap"] == ",".join(f"127.0.0.1:{ports[i]}" for i in range(3))
        assert state["bootstrap_by_zone"] == {f"az{i + 1}": f"127.0.0.1:{ports[i]}" for i in range(3)}
        assert state["bootstrap"] in up.stdout and "az3" in up.stdout and "nfs" in up.stdout
        for i in range(3):
            assert pid_alive(state["pids"][f"broker-{i}"], f"broker-{i}")
            assert api_versions_ok("127.0.0.1", ports[i])
            cfg = json.loads(Path(state["brokers"][i]["config"]).read_text())
            assert (cfg["node_id"], cfg["zone"], cfg["storage"]["owner"]) == (i, f"az{i + 1}", f"broker-{i}")
            assert cfg["storage"]["wal"]["path"] == str(data / "shared-wal")
        # One WAL per broker, and the zone router's relay objects (docs/zones.md) beside them.
        shared = sorted(p.name for p in (data / "shared-wal").iterdir())
        assert shared == ["broker-0", "broker-1", "broker-2", "relay"]
        md = AdminClient({"bootstrap.servers": state["bootstrap"]}).list_topics(timeout=30)
        assert sorted(md.brokers) == [0, 1, 2]
        assert {b.port for b in md.brokers.values()} == set(ports.values())

        info = status(home, data)
        assert [(b["id"], b["zone"]) for b in info["brokers"]] == [(0, "az1"), (1, "az2"), (2, "az3")]
        assert states_by_id(info) == {0: "running", 1: "running", 2: "running"}
        assert info["zones"] == ["az1", "az2", "az3"] and info["controller"]["alive"]
        text = amq(home, "cluster", "status", "--dir", str(data))
        assert text.returncode == 0 and "zone az2" in text.stdout and state["bootstrap"] in text.stdout

        # kill -9 one broker: status shows it stopped, the others keep running
        killed = amq(home, "broker", "kill", "1", "--dir", str(data))
        assert killed.returncode == 0 and "SIGKILL" in killed.stdout, killed.stderr
        assert not pid_alive(state["pids"]["broker-1"], "broker-1")
        assert states_by_id(status(home, data)) == {0: "running", 1: "stopped", 2: "running"}
        again = amq(home, "broker", "kill", "1", "--dir", str(data))
        assert again.returncode != 0 and "broker 1 is not running" in again.stderr

        # start it again: the same port, a new pid, recorded in both state files
        started = amq(home, "broker", "start", "1", "--dir", str(data))
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{ports[1]}" in started.stdout
        states.append(json.loads((data / "cluster-state.json").read_text()))
        assert json.loads((home / "cluster.json").read_text()) == states[-1]
        new_pid = states[-1]["pids"]["broker-1"]
        assert new_pid != state["pids"]["broker-1"] and pid_alive(new_pid, "broker-1")
        assert {b["id"]: b["port"] for b in states[-1]["brokers"]} == ports
        assert api_versions_ok("127.0.0.1", ports[1])
        assert amq(home, "broker", "start", "1", "--dir", str(data)).returncode != 0  # already running

        # a controlled stop (SIGTERM) of another
        stopped = amq(home, "broker", "stop", "2", "--dir", str(data), "--timeout", "20")
        assert stopped.returncode == 0 and "stopped in" in stopped.stdout, stopped.stderr
        assert not pid_alive(state["pids"]["broker-2"], "broker-2")
        assert states_by_id(status(home, data))[2] == "stopped"

        down = amq(home, "cluster", "down", "--dir", str(data))
        assert down.returncode == 0, down.stderr
        assert not [np for np in all_pids(states) if pid_alive(np[1], np[0])]
        assert not (home / "cluster.json").exists() and not (data / "cluster-state.json").exists()
    finally:
        leftover = find_state(home, data)
        if leftover is not None:
            stop_cluster(leftover, timeout=20)
        assert not [np for np in all_pids(states) if pid_alive(np[1], np[0])]


def test_up_right_after_down_on_a_port_in_time_wait(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    port = free_port()
    states: list[dict[str, Any]] = []
    try:
        up = amq(home, "cluster", "up", "--dir", str(data), "--port", str(port))
        assert up.returncode == 0, up.stderr
        states.append(json.loads((home / "cluster.json").read_text()))
        assert states[0]["bootstrap"] == f"127.0.0.1:{port}"
        client = socket.create_connection(("127.0.0.1", port))
        down = amq(home, "cluster", "down")
        assert down.returncode == 0, down.stderr
        client.close()  # after the broker closed its end: the broker's side of the connection is in TIME_WAIT
        ss = subprocess.run(["ss", "-tan", f"sport = :{port}"], capture_output=True, text=True, check=False)
        if ss.returncode == 0:
            assert "TIME-WAIT" in ss.stdout, ss.stdout
        t0 = time.monotonic()
        up2 = amq(home, "cluster", "up", "--dir", str(data), "--port", str(port))
        took = time.monotonic() - t0
        assert up2.returncode == 0, up2.stderr
        states.append(json.loads((home / "cluster.json").read_text()))
        assert states[1]["bootstrap"] == f"127.0.0.1:{port}" and api_versions_ok("127.0.0.1", port)
        assert took < 30, took  # no waiting out TIME_WAIT (60 s)
        # A crash of every process (kill -9), then `up` again on the same port.
        client = socket.create_connection(("127.0.0.1", port))
        for name, pid in states[1]["pids"].items():
            kill_pid(pid)
            assert not pid_alive(pid, name)
        client.close()
        t0 = time.monotonic()
        up3 = amq(home, "cluster", "up", "--dir", str(data), "--port", str(port))
        took = time.monotonic() - t0
        assert up3.returncode == 0, up3.stderr
        states.append(json.loads((home / "cluster.json").read_text()))
        assert api_versions_ok("127.0.0.1", port)
        assert took < 30, took
    finally:
        leftover = find_state(home, data)
        if leftover is not None:
            stop_cluster(leftover, timeout=20)
        assert not [np for np in all_pids(states) if pid_alive(np[1], np[0])]
