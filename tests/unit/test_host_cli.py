"""`amq controller start` and `amq broker start --node-id ...` on bad input: one line, exit != 0,
no traceback, no password; and the line between them and `amq broker start N` (local cluster)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from automq_cli import broker as broker_cli
from automq_cli import controller as controller_cli
from automq_cli.hosts import HostError, parse_advertise
from engine.devtools.s3server import EmbeddedS3

runner = CliRunner()
app = typer.Typer()
app.add_typer(broker_cli.app, name="broker")
app.add_typer(controller_cli.app, name="controller")


def fails(args: list[str], *expect: str) -> str:
    r = runner.invoke(app, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code not in (0, None), r.output
    assert "Traceback" not in r.output, r.output
    # typer.Exit surfaces as SystemExit; anything else escaped the command's error handling.
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(lines) == 1, r.output
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQ_HOME", str(tmp_path / "home"))
    for var in ("AMQ_METADATA", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)


def host(tmp_path: Path, *extra: str) -> list[str]:
    """A broker command complete but for what a test leaves out or adds."""
    return ["broker", "start", "--node-id", "1", "--controllers", "127.0.0.1:9", "--zone", "az1",
            "--metadata", str(tmp_path / "metadata.db"), "--s3-endpoint", "http://127.0.0.1:9",
            "--dir", str(tmp_path / "b"), *extra]  # fmt: skip


def test_which_broker_is_asked_for() -> None:
    fails(["broker", "start"], "which broker?", "--node-id")
    fails(["broker", "start", "2", "--zone", "az1"], "local cluster", "--node-id 2")


def test_a_broker_names_what_no_default_could_guess(tmp_path: Path) -> None:
    fails(["broker", "start", "--node-id", "1"], "--controllers", "--zone", "--metadata")
    fails(host(tmp_path, "--wal", "nfs"), "--wal nfs needs --wal-dir")
    fails(host(tmp_path, "--wal", "nfs", "--wal-dir", str(tmp_path / "no-mount")), "does not exist", "mount")
    fails(host(tmp_path, "--wal", "tape"), "file, nfs or s3")
    fails(host(tmp_path, "--listen", "0.0.0.0"), "--advertise")
    fails(host(tmp_path, "--advertise", "0.0.0.0:9092"), "connect to")
    fails(host(tmp_path, "--controllers", "ctl1"), "not host:port")


def test_broker_yaml_errors_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "broker.yaml"
    cfg.write_text("node_id: 1\nzone: az1\nzonee: az2\n")
    fails(["broker", "start", "--config", str(cfg)], "unknown broker settings: zonee")
    cfg.write_text("node_id: 1\ns3: {endpont: http://x}\n")
    fails(["broker", "start", "--config", str(cfg)], "unknown s3 settings: endpont")
    cfg.write_text("node_id: [1\n")
    fails(["broker", "start", "--config", str(cfg)], "not valid YAML")
    cfg.write_text("port: nine\n")
    fails(host(tmp_path, "--config", str(cfg)), "port must be an integer")
    fails(["broker", "start", "--config", str(tmp_path / "missing.yaml")], "no such file")


def test_metadata_urls_are_checked_without_showing_the_password(tmp_path: Path) -> None:
    bad = host(tmp_path, "--metadata", "mysql://amq:hunter2@db:3306/amq")
    assert "hunter2" not in fails(bad, "postgresql://", "***")
    down = f"postgresql://amq:hunter2@127.0.0.1:{closed_port()}/amq"
    assert "hunter2" not in fails(host(tmp_path, "--metadata", down), "amq:***@")
    assert "hunter2" not in fails(["controller", "start", "--metadata", down, "--dir", str(tmp_path)], "amq:***@")


def test_unreachable_s3_and_controllers(tmp_path: Path, s3_server: EmbeddedS3) -> None:
    fails(host(tmp_path, "--s3-endpoint", f"http://127.0.0.1:{closed_port()}"), "unreachable")
    ep = s3_server.endpoint
    s3 = ["--s3-endpoint", ep.url, "--access-key", ep.access_key, "--secret-key", ep.secret_key]
    fails(host(tmp_path, *s3, "--s3-bucket", "no-such-bucket"), "does not exist")
    fails(host(tmp_path, *s3, "--secret-key", "wrong"), "refused the credentials")
    dead = f"127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}"
    fails(host(tmp_path, *s3, "--s3-bucket", ep.bucket, "--controllers", dead, "--controller-timeout", "1"),
          "no controller at", dead)  # fmt: skip


def test_controller_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "controller.yaml"
    cfg.write_text("listen: 127.0.0.1\nleader_lease_ms: 100\n")
    fails(["controller", "start", "--config", str(cfg)], "unknown controller settings: leader_lease_ms")
    cfg.write_text("port: true\n")
    fails(["controller", "start", "--config", str(cfg)], "port")
    fails(["controller", "start", "--listen", "0.0.0.0", "--dir", str(tmp_path)], "advertise")
    fails(["controller", "start", "--metadata", "/var/lib/amq.db"], "postgresql://")
    # A port that is taken: one line too, not a traceback from the event loop. In a process of
    # its own, since serving installs uvloop's event loop policy for the whole process.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cmd = [sys.executable, "-m", "automq_cli.main", "controller", "start", "--dir", str(tmp_path),
               "--port", str(s.getsockname()[1])]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("amq controller: error: cannot serve on 127.0.0.1:")


def test_parse_advertise() -> None:
    assert parse_advertise("b1.internal:9092") == ("b1.internal", 9092)
    assert parse_advertise("10.0.1.5") == ("10.0.1.5", 0)
    assert parse_advertise("[fd00::5]:19092") == ("fd00::5", 19092)
    for bad in ("b1:http", "b1:70000", "[fd00::5", ":9092", "0.0.0.0"):
        with pytest.raises(HostError):
            parse_advertise(bad)


def test_the_three_host_templates_are_valid() -> None:
    """templates/three-hosts: each host a controller and a broker, in a zone of its own, all on the
    same controllers and shared WAL; the YAML loads as `amq ... start --config` loads it."""
    from automq_cli.broker import host_broker_config
    from engine.controller.config import ControllerConfig

    root = Path(__file__).resolve().parents[2] / "templates" / "three-hosts"
    hosts = sorted(root.glob("host*"))
    assert len(hosts) == 3
    url = {"storage_metadata_path": "postgresql://amq:x@db:5432/amq"}  # from amq.env in a deployment
    brokers = [host_broker_config(str(h / "broker.yaml"), url, {}, {}, None) for h in hosts]
    controllers = [ControllerConfig.from_dict(ControllerConfig.load(h / "controller.yaml")) for h in hosts]
    assert len({b.node_id for b in brokers}) == len({b.zone for b in brokers}) == 3
    assert {b.controller for b in brokers} == {",".join(c.advertise for c in controllers)}
    assert {(b.storage.wal.kind, b.storage.wal.path) for b in brokers} == {("nfs", "/mnt/amq-wal")}
    assert len({b.storage.wal.wal_id for b in brokers}) == 3
    assert all(b.host != "127.0.0.1" and b.advertised_host for b in brokers)
    units = (root.parent / "systemd").glob("*.service")
    assert {u.name for u in units} == {"amq-controller.service", "amq-broker.service"}
    assert "/mnt/amq-wal" in (root.parent / "systemd" / "amq-broker.service").read_text()


def _local_cluster_state(tmp_path: Path, addresses: list[str], **extra: object) -> None:
    """A cluster's state file as `amq cluster up` writes it, its controllers not running."""
    from automq_cli.cluster.state import write_state

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited and reaped: nothing runs under it (or not a controller)
    names = ["controller" if i == 0 else f"controller-{i}" for i in range(len(addresses))]
    state = {"dir": str(tmp_path / "data"), "controller": ",".join(addresses), "pids": dict.fromkeys(names, pid),
             "brokers": [], **extra}  # fmt: skip
    (tmp_path / "data").mkdir(exist_ok=True)
    write_state(state, tmp_path / "home")


def test_controller_of_the_local_cluster(tmp_path: Path) -> None:
    fails(["controller", "start", "controller-1"], "no local amq cluster is running")
    fails(["controller", "kill", "controller-1"], "no local amq cluster is running")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        flags = ["--lease-ttl-ms", "3000"]
        _local_cluster_state(tmp_path, ["127.0.0.1:9", f"127.0.0.1:{taken}"], controller_flags=flags)
        fails(["controller", "start", "controller-7"], "no controller-7 in this cluster",
              "controllers: controller, controller-1")  # fmt: skip
        fails(["controller", "kill", "controller-1"], "the controller-1 is not running", "amq controller start")
        # Its saved settings, not flags: the brokers know it by its old address and settings.
        fails(["controller", "start", "controller-1", "--port", "5"], "takes no --port")
        fails(["controller", "start", "controller-1", "--dir", str(tmp_path / "data")], f"port {taken} is in use")
    _local_cluster_state(tmp_path, ["127.0.0.1:9", "127.0.0.1:10"])
    fails(["controller", "start", "controller-1"], "started by an older amq", "amq cluster down")


def test_the_metadata_url_of_a_restarted_controller(tmp_path: Path) -> None:
    """The state file keeps the URL redacted; the controller needs it whole, from a broker's config."""
    from automq_cli.cluster.launch import _metadata_url

    config = tmp_path / "broker.json"
    url = "postgresql://amq:hunter2@127.0.0.1:5432/amq"
    config.write_text(f'{{"storage_metadata_path": "{url}"}}')
    assert _metadata_url({"brokers": [{"config": str(config)}]}) == url
    config.write_text(f'{{"storage_metadata_path": "{tmp_path / "metadata.db"}"}}')
    assert _metadata_url({"brokers": [{"config": str(config)}]}) == ""  # SQLite: a controller of its own file
    assert _metadata_url({"brokers": [{"config": str(tmp_path / "gone.json")}]}) == ""
