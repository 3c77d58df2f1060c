"""`amq cluster up|down|status`: a local cluster of SeaweedFS, one controller and one broker.

Every component is a background process of its own (new session, log file in the
cluster directory), so `up` returns once clients can connect and the cluster lives
on. `$AMQ_HOME/cluster.json` records what runs (pids, ports; docs/perf.md); `down`
stops exactly those pids. The launcher functions are used by the tests too, so tests
start clusters the way users do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="cluster",
    help="Start, stop and inspect the local amq cluster (SeaweedFS + controller + broker).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_err = Console(stderr=True)
_out = Console()

STATE_FILE = "cluster.json"
SETTINGS_FILE = "cluster-settings.json"
NOT_RUNNING = "no local amq cluster is running; start one with `amq cluster up`"


class ClusterError(Exception):
    """One line for the user; the CLI prints it and exits non-zero."""


def amq_home() -> Path:
    return Path(os.environ.get("AMQ_HOME") or Path.home() / ".amq").expanduser()


# --- options and state ---------------------------------------------------------------------


@dataclass
class ClusterOptions:
    dir: str = ""
    wal: str = "file"
    port: int = 9092
    controller_port: int = 0
    metrics_port: int = 0
    s3_endpoint: str = ""
    s3_bucket: str = "amq"
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    s3_prefix: str = ""
    zone: str = "az1"
    #: None: the broker config file's value, else Kafka's default of 1.
    num_partitions: int | None = None
    #: YAML/JSON file of broker settings (BrokerConfig fields); the launcher's own settings win.
    broker_config: str = ""
    wal_capacity: int = 256 << 20
    upload_interval_s: float = 2.0
    extra_broker: dict[str, Any] = field(default_factory=dict)


def _repo_env() -> dict[str, str]:
    import engine

    root = str(Path(engine.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    # Brokers churn through MiB-sized buffers on many threads. glibc's defaults (an arena per
    # thread, an mmap threshold that rises after frees) keep freed buffers in fragmented
    # heaps: RSS grew to 2.4 GiB at 75 MiB/s. A fixed threshold sends big buffers to mmap,
    # which returns them to the OS on free; two arenas bound the rest.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env


def read_state(home: Path | None = None) -> dict[str, Any] | None:
    path = (home or amq_home()) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(state: dict[str, Any], home: Path | None = None) -> Path:
    home = home or amq_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove_state(home: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        ((home or amq_home()) / STATE_FILE).unlink()


# --- processes -----------------------------------------------------------------------------

_MARKERS = {"s3": "weed", "controller": "engine.controller", "broker": "engine.broker"}


def _role(name: str) -> str:
    return "broker" if name.startswith("broker") else name


def pid_alive(pid: int, name: str | None = None) -> bool:
    """Alive, not a zombie, and (when `name` is given) still the program we started."""
    import psutil

    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if name is not None:
            return _MARKERS[_role(name)] in " ".join(p.cmdline())
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_pid(pid: int, name: str | None = None, timeout: float = 20.0) -> bool:
    """SIGTERM the process group, SIGKILL after `timeout`; True if something was stopped."""
    if not pid_alive(pid, name):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(100):
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    return True


def kill_pid(pid: int) -> None:
    """SIGKILL, as a crash would (tests)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(200):
        if not pid_alive(pid):
            return
        time.sleep(0.025)


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=_repo_env(),
        )  # fmt: skip


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def api_versions_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """A real Kafka round trip: ApiVersions v0 answered with error code 0."""
    from engine.protocol import ApiKey, RequestHeader, decode_response, encode_request
    from engine.protocol.messages import ApiVersionsRequest

    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(encode_request(RequestHeader(ApiKey.API_VERSIONS, 0, 1, "amq-cli"), ApiVersionsRequest()))
            head = _recv(s, 4)
            (n,) = struct.unpack(">i", head)
            _, body = decode_response(ApiKey.API_VERSIONS, 0, _recv(s, n))
            return getattr(body, "error_code", -1) == 0
    except (OSError, ValueError, struct.error):
        return False


def _recv(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)


# --- up ------------------------------------------------------------------------------------

Progress = Callable[[str], None]


def _load_settings(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / SETTINGS_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _check_external_s3(opts: ClusterOptions) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=opts.s3_endpoint,
        aws_access_key_id=opts.access_key or None,
        aws_secret_access_key=opts.secret_key or None,
        region_name=opts.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=3, read_timeout=5),
    )
    try:
        client.head_bucket(Bucket=opts.s3_bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            try:
                client.create_bucket(Bucket=opts.s3_bucket)
                return
            except (ClientError, BotoCoreError) as e2:
                raise ClusterError(f"cannot create bucket {opts.s3_bucket!r} at {opts.s3_endpoint}: {e2}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise ClusterError(f"S3 at {opts.s3_endpoint} refused the credentials ({code})") from None
        raise ClusterError(f"S3 at {opts.s3_endpoint} answered {code or e}") from None
    except BotoCoreError as e:
        raise ClusterError(f"S3 endpoint {opts.s3_endpoint} is unreachable: {e}") from None


def check_not_running(home: Path) -> None:
    state = read_state(home)
    if state is None:
        return
    alive = [n for n, pid in (state.get("pids") or {}).items() if isinstance(pid, int) and pid_alive(pid, n)]
    if alive:
        raise ClusterError(
            f"a cluster is already running (bootstrap {state.get('bootstrap')}, dir {state.get('dir')}); "
            "stop it with `amq cluster down`"
        )
    remove_state(home)  # left by a crash: nothing of it runs any more


def start_cluster(
    opts: ClusterOptions, home: Path | None = None, progress: Progress | None = None, timeout: float = 90.0
) -> dict[str, Any]:
    """Start SeaweedFS (unless external S3), the controller and one broker; write cluster.json."""
    from engine.broker.config import S3Settings
    from engine.storage.s3server import EmbeddedS3, S3ServerError

    say = progress or (lambda _m: None)
    home = home or amq_home()
    check_not_running(home)
    directory = Path(opts.dir or home / "data").expanduser().resolve()
    if opts.wal not in ("file", "nfs", "s3"):
        raise ClusterError(f"--wal must be file, nfs or s3, not {opts.wal!r}")
    if not 0 <= opts.port <= 65535:
        raise ClusterError(f"--port {opts.port} is not a TCP port")
    if opts.port and not port_free(opts.port):
        raise ClusterError(f"port {opts.port} is in use; pick another with --port (0 = any free port)")
    if opts.s3_endpoint:
        say(f"checking S3 at {opts.s3_endpoint}")
        _check_external_s3(opts)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClusterError(f"cannot use {directory} as the cluster directory: {e.strerror}") from None
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    pids: dict[str, int] = {}
    state: dict[str, Any] = {"dir": str(directory), "pids": pids}

    def fail(message: str) -> ClusterError:
        for name, pid in reversed(list(pids.items())):
            stop_pid(pid, name, timeout=10)
        return ClusterError(message)

    # S3
    if opts.s3_endpoint:
        s3 = S3Settings(opts.s3_endpoint, opts.s3_bucket, opts.access_key, opts.secret_key, opts.region, opts.s3_prefix)
    else:
        say("starting SeaweedFS (embedded S3)")
        server = EmbeddedS3(directory / "s3")
        try:
            ep = server.start(timeout=60)
        except S3ServerError as e:
            raise fail(f"SeaweedFS did not start: {e}") from None
        assert server.pid is not None
        pids["s3"] = server.pid
        server.proc = None  # it outlives this process; `down` stops it by pid
        s3 = S3Settings(ep.url, ep.bucket, ep.access_key, ep.secret_key, ep.region, opts.s3_prefix)
    state["s3_endpoint"] = s3.endpoint

    # controller
    say("starting the controller")
    port_file = directory / "controller" / "port"
    port_file.parent.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        port_file.unlink()
    ctl = _spawn(
        [sys.executable, "-m", "engine.controller", "--dir", str(directory / "controller"),
         "--port", str(opts.controller_port), "--port-file", str(port_file)],
        logs / "controller.log",
    )  # fmt: skip
    pids["controller"] = ctl.pid
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if ctl.poll() is not None:
            raise fail(f"the controller exited with code {ctl.returncode}: {_tail(logs / 'controller.log')}")
        if time.monotonic() > deadline:
            raise fail(f"the controller did not start; see {logs / 'controller.log'}")
        time.sleep(0.05)
    controller = f"127.0.0.1:{int(port_file.read_text())}"
    state["controller"] = controller

    # broker
    wal_dir = directory / ("shared-wal" if opts.wal == "nfs" else "broker-0/wal")
    try:
        broker_cfg = _broker_config(opts, directory, controller, s3, wal_dir)
    except (OSError, ValueError) as e:
        raise fail(f"broker settings: {e}") from None
    (directory / "broker-0").mkdir(exist_ok=True)
    config_path = directory / "broker-0" / "broker.json"
    broker_cfg.save(config_path)
    state.update(
        {
            "wal_kind": opts.wal,
            "zones": [broker_cfg.zone],
            "brokers": [
                {"id": 0, "zone": broker_cfg.zone, "config": str(config_path), "log": str(logs / "broker-0.log")}
            ],
        }
    )
    say("starting the broker (recovering its WAL, registering with the controller)")
    try:
        info = start_broker(state, 0, timeout=timeout)
    except ClusterError as e:
        raise fail(str(e)) from None
    state["bootstrap"] = f"127.0.0.1:{info['port']}"
    state["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    state["logs"] = str(logs)
    (directory / SETTINGS_FILE).write_text(json.dumps(asdict(opts), indent=2) + "\n")
    write_state(state, home)
    return state


def _broker_config(opts: ClusterOptions, directory: Path, controller: str, s3: Any, wal_dir: Path) -> Any:
    """The settings file (if any) under what the launcher decides: ports, paths, S3, WAL kind."""
    from engine.broker.config import BrokerConfig

    base: dict[str, Any] = {}
    if opts.broker_config:
        base = BrokerConfig.load(opts.broker_config).to_dict()
    storage = base.setdefault("storage", {})
    wal = storage.setdefault("wal", {})
    wal.update({"kind": opts.wal, "path": str(wal_dir), "wal_id": "broker-0"})
    wal.setdefault("capacity", opts.wal_capacity)
    storage["owner"] = "broker-0"
    storage.setdefault("upload_interval_s", opts.upload_interval_s)
    base.update(
        node_id=0, port=opts.port, controller=controller, metrics_port=opts.metrics_port,
        data_dir=str(directory / "broker-0"), storage_metadata_path=str(directory / "metadata.db"),
        s3=asdict(s3),
    )  # fmt: skip
    base.setdefault("zone", opts.zone)
    if opts.num_partitions is not None:
        base["num_partitions"] = opts.num_partitions
    base.update(opts.extra_broker)
    return BrokerConfig.from_dict(base)


def start_broker(state: dict[str, Any], node_id: int = 0, timeout: float = 90.0) -> dict[str, Any]:
    """Start (or restart) one broker from its saved config; wait until it answers ApiVersions."""
    entry = next(b for b in state["brokers"] if b["id"] == node_id)
    ready = Path(entry["config"]).with_name("ready.json")
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    log = Path(entry["log"])
    proc = _spawn([sys.executable, "-m", "engine.broker", "--config", entry["config"], "--ready-file", str(ready)], log)
    name = f"broker-{node_id}"
    state["pids"][name] = proc.pid
    entry["pid"] = proc.pid
    deadline = time.monotonic() + timeout
    info: dict[str, Any] | None = None
    while True:
        if proc.poll() is not None:
            raise ClusterError(f"the broker exited with code {proc.returncode}: {_tail(log)}")
        if info is None and ready.exists():
            info = json.loads(ready.read_text())
        if info is not None and api_versions_ok("127.0.0.1", int(info["port"])):
            break
        if time.monotonic() > deadline:
            stop_pid(proc.pid, name)
            raise ClusterError(f"the broker did not answer within {timeout:.0f}s; see {log}")
        time.sleep(0.05)
    entry["port"] = int(info["port"])
    entry["metrics_port"] = info.get("metrics_port")
    # A restart must come back on the same ports, or clients (and cluster.json) lose it.
    config_path = Path(entry["config"])
    cfg = json.loads(config_path.read_text())
    if cfg.get("port") != entry["port"] or (info.get("metrics_port") and cfg.get("metrics_port") == 0):
        cfg["port"] = entry["port"]
        cfg["metrics_port"] = info.get("metrics_port") or cfg.get("metrics_port", 0)
        config_path.write_text(json.dumps(cfg, indent=2) + "\n")
    if info.get("metrics_port"):
        state["metrics"] = [f"http://127.0.0.1:{b['metrics_port']}/metrics" for b in state["brokers"]
                            if b.get("metrics_port")]  # fmt: skip
    return info


def stop_cluster(state: dict[str, Any], timeout: float = 30.0, progress: Progress | None = None) -> list[str]:
    """Stop brokers first (they upload what their WAL holds), then the controller, then S3."""
    say = progress or (lambda _m: None)
    pids: dict[str, int] = state.get("pids") or {}
    order = sorted(pids, key=lambda n: (0 if n.startswith("broker") else 1 if n == "controller" else 2, n))
    stopped = []
    for name in order:
        pid = pids[name]
        if isinstance(pid, int) and pid_alive(pid, name):
            say(f"stopping {name} (pid {pid})")
            stop_pid(pid, name, timeout=timeout)
            stopped.append(name)
    return stopped


# --- status --------------------------------------------------------------------------------


def cluster_status(state: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    from engine.controller.rpc import RpcError, call_sync

    out: dict[str, Any] = {
        "bootstrap": state.get("bootstrap"),
        "dir": state.get("dir"),
        "wal_kind": state.get("wal_kind"),
        "processes": [],
    }
    for name, pid in (state.get("pids") or {}).items():
        out["processes"].append({"name": name, "pid": pid, "alive": pid_alive(pid, name)})
    if state.get("bootstrap"):
        host, _, port = str(state["bootstrap"]).rpartition(":")
        out["kafka_ready"] = api_versions_ok(host, int(port), timeout=1.0)
    metrics = {}
    for url in state.get("metrics") or []:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                metrics = json.loads(r.read())
        except (OSError, ValueError):
            metrics = {}
    if metrics:
        out["storage"] = {k: metrics.get(k) for k in ("wal_used_bytes", "wal_bytes_written", "s3_put_bytes",
                                                        "objects_uploaded", "uploads", "partitions_open",
                                                        "connections_active")}  # fmt: skip
    if state.get("controller"):
        try:
            out["controller"] = call_sync(state["controller"], "status", timeout=2.0)
        except (RpcError, OSError) as e:
            out["controller"] = {"error": str(e)}
    return out


# --- commands ------------------------------------------------------------------------------


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"amq cluster: error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def up(
    dir: Annotated[
        str | None,
        typer.Option("--dir", "--data-dir", help="Cluster directory (data and logs). Default: $AMQ_HOME/data."),
    ] = None,
    wal: Annotated[str | None, typer.Option("--wal", help="WAL kind: file, nfs or s3. Default: file.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Kafka port; 0 = any free port. Default: 9092.")] = None,
    s3_endpoint: Annotated[
        str | None, typer.Option("--s3-endpoint", help="External S3 (MinIO, AWS) instead of the embedded SeaweedFS.")
    ] = None,
    s3_bucket: Annotated[str | None, typer.Option("--s3-bucket", help="Bucket (external S3). Default: amq.")] = None,
    access_key: Annotated[str | None, typer.Option("--access-key", help="S3 access key (external S3).")] = None,
    secret_key: Annotated[str | None, typer.Option("--secret-key", help="S3 secret key (external S3).")] = None,
    region: Annotated[str | None, typer.Option("--region", help="S3 region (external S3).")] = None,
    num_partitions: Annotated[
        int | None, typer.Option("--num-partitions", help="Partitions of auto-created topics.")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="YAML/JSON broker settings (engine/broker/config.py); flags win over it."),
    ] = None,
) -> None:
    """Start SeaweedFS, the controller and one broker in the background; return once clients can connect."""
    home = amq_home()
    directory = Path(dir or home / "data").expanduser()
    saved = _load_settings(directory.resolve()) if directory.exists() else {}
    opts = ClusterOptions(**{k: v for k, v in saved.items() if k in ClusterOptions.__dataclass_fields__})
    opts.dir = str(directory)
    given = {"wal": wal, "port": port, "s3_endpoint": s3_endpoint, "s3_bucket": s3_bucket, "access_key": access_key,
             "secret_key": secret_key, "region": region, "num_partitions": num_partitions,
             "broker_config": str(Path(config).resolve()) if config else None}  # fmt: skip
    for k, v in given.items():
        if v is not None:
            setattr(opts, k, v)
    if port is None and not saved:
        opts.port = 9092
    if opts.num_partitions is not None and opts.num_partitions < 1:
        raise _fail(f"--num-partitions must be at least 1, got {opts.num_partitions}")
    if config and not Path(config).is_file():
        raise _fail(f"--config {config}: no such file")
    try:
        with _err.status("starting the cluster") as status:
            state = start_cluster(opts, home, progress=lambda m: status.update(m))
    except ClusterError as e:
        raise _fail(str(e)) from None
    _out.print(f"amq cluster is up: bootstrap [bold]{state['bootstrap']}[/bold]", highlight=False)
    _out.print(f"  data and logs: {state['dir']} (logs in {state['logs']})", highlight=False)
    metrics = ", ".join(state.get("metrics", []))
    _out.print(f"  WAL: {state['wal_kind']}, S3: {state['s3_endpoint']}, metrics: {metrics}", highlight=False)
    _out.print("  stop it with `amq cluster down`", highlight=False)


@app.command()
def down(
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
) -> None:
    """Stop every process `amq cluster up` started (data is kept)."""
    home = amq_home()
    state = read_state(home)
    if state is None:
        typer.echo(NOT_RUNNING, err=True)
        return
    with _err.status("stopping the cluster") as status:
        stopped = stop_cluster(state, timeout=timeout, progress=lambda m: status.update(m))
    remove_state(home)
    what = ", ".join(stopped) if stopped else "nothing was running"
    _out.print(f"amq cluster is down ({what}); data kept in {state.get('dir')}", highlight=False)


@app.command()
def status(json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """Processes, ports, WAL use, uploads and topics of the local cluster."""
    state = read_state()
    if state is None:
        raise _fail(NOT_RUNNING)
    info = cluster_status(state)
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"amq cluster: {info['bootstrap']}  ({info['dir']})")
    table.add_column("process")
    table.add_column("pid", justify="right")
    table.add_column("state")
    for p in info["processes"]:
        table.add_row(p["name"], str(p["pid"]), "[green]running[/green]" if p["alive"] else "[red]stopped[/red]")
    _out.print(table)
    _out.print(f"Kafka: {'answering' if info.get('kafka_ready') else 'NOT answering'} on {info['bootstrap']}; "
               f"WAL kind {info['wal_kind']}", highlight=False)  # fmt: skip
    st = info.get("storage")
    if st:
        _out.print(
            f"WAL in use {st['wal_used_bytes']} B, written {st['wal_bytes_written']} B; uploaded "
            f"{st['s3_put_bytes']} B in {st['objects_uploaded']} objects; {st['partitions_open']} partitions open, "
            f"{st['connections_active']} connections",
            highlight=False,
        )
    ctl = info.get("controller") or {}
    if "error" in ctl:
        _out.print(f"controller: {ctl['error']}", highlight=False)
    elif ctl:
        alive = sum(1 for b in ctl.get("brokers", []) if b.get("alive"))
        _out.print(f"controller: cluster {ctl['cluster_id']}, {alive}/{len(ctl.get('brokers', []))} brokers alive, "
                   f"{ctl['topics']} topics, {ctl['partitions']} partitions", highlight=False)  # fmt: skip
