"""`amq cluster` and `amq broker` without processes: bad input, zone layout, state files, the port check."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from automq_cli import broker as broker_cli
from automq_cli import cluster as cluster_pkg
from automq_cli.cluster import (
    ClusterError,
    ClusterOptions,
    find_state,
    launch,
    parse_zones,
    plan,
    port_free,
    write_state,
)
from automq_cli.cluster.state import DIR_STATE_FILE, refresh_bootstrap, remove_state

amq_app = typer.Typer()
amq_app.add_typer(cluster_pkg.app, name="cluster")
amq_app.add_typer(broker_cli.app, name="broker")
runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("AMQ_HOME", str(h))
    return h


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any attempt to start a process (SeaweedFS, controller, broker) is recorded instead."""
    started: list[str] = []

    def no_spawn(args: list[str], log: Path) -> Any:
        started.append(" ".join(args))
        raise AssertionError("a process was started")

    def no_s3(self: Any, *a: Any, **k: Any) -> Any:
        started.append("seaweedfs")
        raise AssertionError("SeaweedFS was started")

    from engine.devtools.s3server import EmbeddedS3

    monkeypatch.setattr(launch, "spawn", no_spawn)
    monkeypatch.setattr(EmbeddedS3, "start", no_s3)
    return started


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def one_error_line(result: Any, prefix: str) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


# ---- up: bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--brokers", "0"], "--brokers must be at least 1"),
        (["--zones", "5", "--brokers", "3"], "each zone needs at least one broker"),
        (["--zones", "0"], "--zones must be at least 1"),
        (["--zones", "a,b,a"], "names zone 'a' twice"),
        (["--zones", "a,,b"], "a zone name is empty"),
        (["--wal", "floppy"], "--wal must be file, nfs or s3"),
        (["--session-timeout", "0"], "--session-timeout must be more than 0"),
        (["--port", "70000"], "is not a TCP port"),
        (["--controllers", "2"], "several controllers share their state in PostgreSQL"),
        (["--controllers", "0"], "--controllers must be at least 1"),
        (["--metadata", "mysql://u:hunter2@h/db"], "--metadata takes `postgres` or a postgresql:// URL"),
    ],
)
def test_up_bad_input_is_one_line_and_starts_nothing(
    tmp_path: Path, home: Path, nothing_starts: list[str], args: list[str], message: str
) -> None:
    data = tmp_path / "data"
    r = runner.invoke(amq_app, ["cluster", "up", "--dir", str(data), "--port", "0", *args])
    line = one_error_line(r, "amq cluster: error: ")
    assert message in line
    assert nothing_starts == []
    assert not (home / "cluster.json").exists() and not data.exists()


def test_up_with_an_unusable_config_file_starts_nothing(tmp_path: Path, home: Path, nothing_starts: list[str]) -> None:
    bad = tmp_path / "broker.yaml"
    bad.write_text("no_such_setting: 1\n")
    r = runner.invoke(amq_app, ["cluster", "up", "--dir", str(tmp_path / "d"), "--config", str(bad)])
    assert "unknown broker settings" in one_error_line(r, "amq cluster: error: ")
    assert nothing_starts == [] and not (tmp_path / "d").exists()


# ---- zones and brokers ----------------------------------------------------------------------


def test_zones_by_count_or_name() -> None:
    assert parse_zones("3") == ["az1", "az2", "az3"]
    assert parse_zones(2) == ["az1", "az2"]
    assert parse_zones("us-east-1a, us-east-1b") == ["us-east-1a", "us-east-1b"]
    for bad in ("0", "-1", "a,a", "", "a b"):
        with pytest.raises(ClusterError):
            parse_zones(bad)


def test_layout_puts_broker_i_in_zone_i_mod_z() -> None:
    assert plan(ClusterOptions()).broker_zones == ["az1"]  # the default: one broker, one zone
    assert plan(ClusterOptions(zones=["az1", "az2", "az3"])).broker_zones == ["az1", "az2", "az3"]
    six = plan(ClusterOptions(zones=parse_zones("3"), brokers=6))
    assert six.broker_zones == ["az1", "az2", "az3", "az1", "az2", "az3"] and six.brokers == 6
    assert plan(ClusterOptions(brokers=2)).broker_zones == ["az1", "az1"]


def test_broker_configs_own_their_wal(tmp_path: Path) -> None:
    from engine.broker.config import S3Settings

    for kind, wal_path in (("file", tmp_path / "broker-2" / "wal"), ("nfs", tmp_path / "shared-wal")):
        cfg = launch.broker_config(
            ClusterOptions(wal=kind), tmp_path, "127.0.0.1:1", S3Settings("http://s3"), node_id=2, zone="az3", port=5
        )
        assert (cfg.node_id, cfg.zone, cfg.port) == (2, "az3", 5)
        assert cfg.storage.owner == "broker-2" and cfg.storage.wal.wal_id == "broker-2"
        assert Path(cfg.storage.wal.path) == wal_path and cfg.storage.wal.kind == kind
        assert Path(cfg.storage_metadata_path) == tmp_path / "metadata.db"


# ---- state files ----------------------------------------------------------------------------


def fake_state(directory: Path, brokers: int = 3) -> dict[str, Any]:
    dead = _dead_pid()
    state: dict[str, Any] = {
        "dir": str(directory),
        "pids": {"s3": dead, "controller": dead, **{f"broker-{i}": dead for i in range(brokers)}},
        "s3_endpoint": "http://127.0.0.1:1",
        "controller": "127.0.0.1:1",
        "wal_kind": "file",
        "zones": ["az1", "az2", "az3"],
        "brokers": [
            {
                "id": i,
                "zone": f"az{i % 3 + 1}",
                "config": str(directory / f"broker-{i}" / "broker.json"),
                "log": str(directory / "logs" / f"broker-{i}.log"),
                "pid": dead,
                "port": 40000 + i,
                "metrics_port": None,
            }
            for i in range(brokers)
        ],
    }
    refresh_bootstrap(state)
    return state


def test_state_is_found_by_home_and_by_directory(tmp_path: Path, home: Path) -> None:
    state = fake_state(tmp_path / "data")
    assert state["bootstrap"] == "127.0.0.1:40000,127.0.0.1:40001,127.0.0.1:40002"
    assert state["bootstrap_by_zone"] == {"az1": "127.0.0.1:40000", "az2": "127.0.0.1:40001", "az3": "127.0.0.1:40002"}
    write_state(state, home)
    assert json.loads((tmp_path / "data" / DIR_STATE_FILE).read_text()) == state
    assert find_state(home) == state == find_state(tmp_path / "other-home", tmp_path / "data")
    assert find_state(home, tmp_path / "elsewhere") is None
    # Another cluster's directory does not take over the home's state.
    other = fake_state(tmp_path / "other")
    write_state(other, home, claim_home=False)
    assert find_state(home) == state and find_state(home, tmp_path / "other") == other
    remove_state(home, tmp_path / "other")
    assert find_state(home, tmp_path / "other") is None and find_state(home) == state
    remove_state(home)
    assert find_state(home) is None and find_state(home, tmp_path / "data") is None


def test_perf_target_reads_the_same_state(tmp_path: Path, home: Path) -> None:
    from automq_cli.perf.target import load_cluster_state, resolve_target

    write_state(fake_state(tmp_path / "data"), home)
    t = load_cluster_state()
    assert t.bootstrap == "127.0.0.1:40000,127.0.0.1:40001,127.0.0.1:40002"
    assert [b.zone for b in t.brokers] == ["az1", "az2", "az3"] and t.zones == ["az1", "az2", "az3"]
    # --bootstrap naming one broker of the local cluster is that cluster.
    assert resolve_target("127.0.0.1:40001").state_file == str(home / "cluster.json")
    assert resolve_target("127.0.0.1:9").state_file is None


# ---- broker commands ------------------------------------------------------------------------


def test_broker_commands_refuse_bad_targets(tmp_path: Path, home: Path, nothing_starts: list[str]) -> None:
    r = runner.invoke(amq_app, ["broker", "stop", "1"])
    assert "no local amq cluster is running" in one_error_line(r, "amq broker: error: ")
    write_state(fake_state(tmp_path / "data"), home)
    r = runner.invoke(amq_app, ["broker", "stop", "9"])
    assert one_error_line(r, "amq broker: error: ").endswith("no broker 9 in this cluster (brokers: 0, 1, 2)")
    for verb in ("stop", "kill"):
        r = runner.invoke(amq_app, ["broker", verb, "1"])
        assert "broker 1 is not running" in one_error_line(r, "amq broker: error: ")
    r = runner.invoke(amq_app, ["broker", "start", "1", "--dir", str(tmp_path / "data")])
    assert "controller is not running" in one_error_line(r, "amq broker: error: ")
    r = runner.invoke(amq_app, ["broker", "start", "1", "--dir", str(tmp_path / "nowhere")])
    assert "no local amq cluster is running" in one_error_line(r, "amq broker: error: ")
    assert nothing_starts == []


def test_status_of_a_dead_cluster_shows_everything_stopped(tmp_path: Path, home: Path) -> None:
    write_state(fake_state(tmp_path / "data"), home)
    r = runner.invoke(amq_app, ["cluster", "status", "--json", "--dir", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert [(b["id"], b["zone"], b["state"]) for b in info["brokers"]] == [
        (0, "az1", "stopped"), (1, "az2", "stopped"), (2, "az3", "stopped")
    ]  # fmt: skip
    assert info["controller"]["alive"] is False and info["kafka_ready"] is False
    r = runner.invoke(amq_app, ["cluster", "status"])
    assert r.exit_code == 0 and "zone az3" in r.stdout and "stopped" in r.stdout


def test_status_combines_the_controller_view(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from automq_cli.cluster import status as status_mod

    state = fake_state(tmp_path / "data")
    monkeypatch.setattr(status_mod, "pid_alive", lambda pid, name=None: name != "broker-1")
    monkeypatch.setattr(status_mod, "api_versions_ok", lambda host, port, timeout=2.0: port != 40001)
    monkeypatch.setattr(status_mod, "rss_bytes", lambda pid: 1 << 20)
    monkeypatch.setattr(status_mod, "_controller_status", lambda address: {
        "cluster_id": "c", "brokers": [
            {"id": 0, "zone": "az1", "alive": True, "state": "running", "partitions_led": 4,
             "wal": {"kind": "file", "path": "/x", "wal_id": "broker-0"}},
            {"id": 1, "zone": "az2", "alive": False, "state": "fenced"},
            {"id": 2, "zone": "az3", "alive": False},  # an older controller: no state field
        ],
        "wal_takeovers": [{"wal_id": "broker-1", "from_broker": 1, "to_broker": None, "state": "waiting",
                           "reason": "its WAL is on a zonal volume"}],
    })  # fmt: skip
    info = cluster_pkg.cluster_status(state)
    assert [(b["state"], b["partitions_led"]) for b in info["brokers"]] == [
        ("running", 4), ("stopped", None), ("fenced", None)
    ]  # fmt: skip
    assert info["waiting"] == ["partitions of broker 1 wait for it to come back: its WAL is on a zonal volume"]


# ---- the port check -------------------------------------------------------------------------


def test_port_check_ignores_time_wait_but_not_a_listener() -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_free(port)
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    server.close()
    conn.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    client.recv(1)
    client.close()
    ss = subprocess.run(["ss", "-tan", f"sport = :{port}"], capture_output=True, text=True, check=False)
    if ss.returncode == 0:
        assert "TIME-WAIT" in ss.stdout, ss.stdout
    assert port_free(port)
