"""Start and stop a local cluster: SeaweedFS, controllers (and PostgreSQL) and N brokers in Z zones.

Every component is a background process of its own (new session, log file in the cluster
directory), so `up` returns once clients can connect and the cluster lives on. The state
file (state.py) records what runs; `down` stops exactly those pids. The tests start
clusters with these functions too, the way users do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from automq_cli.cluster.processes import (
    api_versions_ok,
    controller_alive,
    free_ports_from,
    pid_alive,
    port_free,
    spawn,
    stop_pid,
    stop_postgres,
    tail,
    terminate_pids,
)
from automq_cli.cluster.state import (
    amq_home,
    broker_entry,
    dir_state_path,
    load_state_file,
    read_state,
    refresh_bootstrap,
    remove_state,
    save_settings,
    write_state,
)

NOT_RUNNING = "no local amq cluster is running; start one with `amq cluster up`"
WAL_KINDS = ("file", "nfs", "s3")
_ZONE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Progress = Callable[[str], None]


class ClusterError(Exception):
    """One line for the user; the CLI prints it and exits non-zero."""


@dataclass
class ClusterOptions:
    dir: str = ""
    wal: str = "file"
    #: Broker 0's Kafka port; the others take the next free ports after it. 0 = any free port for all.
    port: int = 9092
    controller_port: int = 0
    metrics_port: int = 0
    s3_endpoint: str = ""
    s3_bucket: str = "amq"
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    s3_prefix: str = ""
    #: The zone when `zones` is empty (one zone).
    zone: str = "az1"
    #: Zone names; broker i is in zones[i % len(zones)]. Empty: [zone].
    zones: list[str] = field(default_factory=list)
    #: None: one broker per zone.
    brokers: int | None = None
    #: Seconds without a heartbeat before the controller fences a broker.
    session_timeout: float = 3.0
    #: The controller's auto-balancer (docs/reassign.md); False: partitions move only when asked.
    auto_balance: bool = True
    #: Seconds between the auto-balancer's rounds.
    balance_interval_s: float = 5.0
    #: The zone router (docs/zones.md): clients talk to brokers of their own zone. Acted on with
    #: the nfs and s3 WALs; the file WAL has nothing shared to relay through.
    zone_router: bool = True
    #: Simulated latency (ms each way) between zones, for trials that show what the router saves.
    zone_latency_ms: int = 0
    #: "MIN:MAX": run the local autoscaler (automq_cli/autoscaler.py) between these broker counts.
    autoscale: str = ""
    #: The autoscaler's target: MiB/s (in + out) per broker.
    target_mibps: float = 0.0
    autoscale_interval_s: float = 5.0
    #: `amq scale out --zone`: broker id (as a string, for JSON) -> its zone, where not zones[i % Z].
    zone_of: dict[str, str] = field(default_factory=dict)
    #: `amq scale in`: brokers drained and stopped for good; `up` does not start them again.
    removed: list[int] = field(default_factory=list)
    #: None: the broker config file's value, else Kafka's default of 1.
    num_partitions: int | None = None
    #: YAML/JSON file of broker settings (BrokerConfig fields); the launcher's own settings win.
    broker_config: str = ""
    wal_capacity: int = 256 << 20
    upload_interval_s: float = 2.0
    extra_broker: dict[str, Any] = field(default_factory=dict)
    #: Cluster metadata: "" (SQLite files in the cluster directory), "postgres" (a private
    #: PostgreSQL server in it) or a postgresql:// URL of an existing server.
    metadata: str = ""
    #: Controller processes; more than one needs PostgreSQL (one leads, the others stand by).
    controllers: int = 1
    #: The controllers' leader lease (PostgreSQL): a standby takes over this long after a leader died.
    lease_ttl_s: float = 3.0
    #: Put the S3 fault proxy (engine/devtools/s3proxy.py) between the brokers and S3, so
    #: `amq chaos object-store` can add latency, errors and outages while the cluster runs (docs/chaos.md).
    s3_faults: bool = False


@dataclass
class Layout:
    """What `up` will start, decided before anything starts."""

    zones: list[str]
    #: Zone of broker i.
    broker_zones: list[str]

    @property
    def brokers(self) -> int:
        return len(self.broker_zones)


def parse_zones(spec: str | int | list[str]) -> list[str]:
    """`3` -> az1, az2, az3; `a,b,c` -> those names."""
    if isinstance(spec, list):
        names = [str(z).strip() for z in spec]
    else:
        text = str(spec).strip()
        if re.fullmatch(r"-?\d+", text):
            n = int(text)
            if n < 1:
                raise ClusterError(f"--zones must be at least 1, got {n}")
            if n > 64:
                raise ClusterError(f"--zones {n} is too many (at most 64)")
            return [f"az{i + 1}" for i in range(n)]
        names = [z.strip() for z in text.split(",")]
    if not names or any(not z for z in names):
        raise ClusterError(f"--zones {spec!r}: a zone name is empty")
    for z in names:
        if not _ZONE_NAME.match(z):
            raise ClusterError(f"--zones: {z!r} is not a zone name (letters, digits, '.', '_', '-')")
    seen: set[str] = set()
    for z in names:
        if z in seen:
            raise ClusterError(f"--zones names zone {z!r} twice")
        seen.add(z)
    return names


def _config_zone(opts: ClusterOptions) -> str | None:
    if not opts.broker_config:
        return None
    raw = _load_broker_settings(opts)
    zone = raw.get("zone")
    return str(zone) if zone else None


def _load_broker_settings(opts: ClusterOptions) -> dict[str, Any]:
    from engine.broker.config import BrokerConfig, BrokerConfigError

    if not opts.broker_config:
        return {}
    try:
        return BrokerConfig.load(opts.broker_config).to_dict()
    except FileNotFoundError:
        raise ClusterError(f"--config {opts.broker_config}: no such file") from None
    except (OSError, BrokerConfigError) as e:
        raise ClusterError(f"broker settings: {e}") from None


def plan(opts: ClusterOptions) -> Layout:
    """Check the options; every error here is raised before anything starts."""
    if opts.wal not in WAL_KINDS:
        raise ClusterError(f"--wal must be file, nfs or s3, not {opts.wal!r}")
    if not 0 <= opts.port <= 65535:
        raise ClusterError(f"--port {opts.port} is not a TCP port")
    if not opts.session_timeout > 0:
        raise ClusterError(f"--session-timeout must be more than 0 seconds, got {opts.session_timeout}")
    if opts.num_partitions is not None and opts.num_partitions < 1:
        raise ClusterError(f"--num-partitions must be at least 1, got {opts.num_partitions}")
    zones = parse_zones(opts.zones) if opts.zones else [_config_zone(opts) or opts.zone]
    count = len(zones) if opts.brokers is None else opts.brokers
    if count < 1:
        raise ClusterError(f"--brokers must be at least 1, got {count}")
    if count > 64:
        raise ClusterError(f"--brokers {count} is too many for one machine (at most 64)")
    if count < len(zones):
        raise ClusterError(
            f"--zones gives {len(zones)} zones but --brokers is {count}: each zone needs at least one broker"
        )
    if opts.port and opts.port + count - 1 > 65535:
        raise ClusterError(f"--port {opts.port} leaves no room for {count} brokers")
    if not 0 <= opts.zone_latency_ms <= 10_000:
        raise ClusterError(f"--zone-latency-ms must be between 0 and 10000, got {opts.zone_latency_ms}")
    if opts.autoscale:
        from automq_cli.autoscaler import parse_range

        try:
            low, high = parse_range(opts.autoscale)
        except ValueError as e:
            raise ClusterError(str(e)) from None
        if not opts.target_mibps > 0:
            raise ClusterError("--autoscale needs --target-mibps: the MiB/s per broker to scale at")
        live = count - len(opts.removed)
        if not low <= live <= high:
            raise ClusterError(
                f"--autoscale {opts.autoscale}: the cluster starts with {live} brokers, outside that range"
            )
    _load_broker_settings(opts)  # a bad settings file fails now, not after SeaweedFS started
    return Layout(zones=zones, broker_zones=[opts.zone_of.get(str(i), zones[i % len(zones)]) for i in range(count)])


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


def running_processes(state: dict[str, Any]) -> list[str]:
    return [n for n, pid in (state.get("pids") or {}).items() if isinstance(pid, int) and pid_alive(pid, n)]


def check_not_running(home: Path, directory: Path | None = None) -> None:
    """Refuse a second cluster for this home or this directory; forget states a crash left."""
    candidates: list[tuple[str, dict[str, Any]]] = []
    home_state = read_state(home)
    if home_state is not None:
        candidates.append(("home", home_state))
    if directory is not None:
        with contextlib.suppress(OSError, ValueError):
            candidates.append(("dir", load_state_file(dir_state_path(directory))))
    for where, state in candidates:
        if running_processes(state):
            raise ClusterError(
                f"a cluster is already running (bootstrap {state.get('bootstrap')}, dir {state.get('dir')}); "
                "stop it with `amq cluster down`" + (f" --dir {state.get('dir')}" if where == "dir" else "")
            )
    # Left by a crash: nothing of them runs any more.
    if home_state is not None:
        remove_state(home)
    if directory is not None:
        remove_state(home, directory)


def start_cluster(
    opts: ClusterOptions, home: Path | None = None, progress: Progress | None = None, timeout: float = 90.0
) -> dict[str, Any]:
    """Start SeaweedFS (unless external S3), the controller and the brokers; write the state files."""
    from engine.broker.config import S3Settings
    from engine.devtools.pgserver import PgServerError, PostgresServer
    from engine.devtools.s3server import EmbeddedS3, S3ServerError
    from engine.postgres import PgError, migrate, redact

    if opts.controllers < 1:
        raise ClusterError("--controllers must be at least 1")
    if opts.controllers > 1 and not opts.metadata:
        raise ClusterError("several controllers share their state in PostgreSQL: add --metadata postgres")
    if opts.metadata and opts.metadata != "postgres" and not opts.metadata.startswith(("postgresql://", "postgres://")):
        raise ClusterError(f"--metadata takes `postgres` or a postgresql:// URL, not {redact(opts.metadata)!r}")

    say = progress or (lambda _m: None)
    home = home or amq_home()
    layout = plan(opts)
    directory = Path(opts.dir or home / "data").expanduser().resolve()
    check_not_running(home, directory)
    if opts.port and not port_free(opts.port):
        raise ClusterError(f"port {opts.port} is in use; pick another with --port (0 = any free port)")
    try:
        ports = free_ports_from(opts.port, layout.brokers) if opts.port else [0] * layout.brokers
    except OSError as e:
        raise ClusterError(str(e)) from None
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
        terminate_pids({n: p for n, p in pids.items() if n.startswith("broker")}, timeout=10)
        for name in sorted(pids, key=lambda n: (not n.startswith("controller"), n)):
            if name == "postgres":
                stop_postgres(pids[name], timeout=10)
            elif not name.startswith("broker"):
                stop_pid(pids[name], name, timeout=10)
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
    if opts.s3_faults:
        say("starting the S3 fault proxy")
        try:
            proxy_url = _start_s3_proxy(s3.endpoint, directory, logs, pids, timeout)
        except ClusterError as e:
            raise fail(str(e)) from None
        # Brokers go through the proxy; tools (`amq storage`) keep the real endpoint in s3_endpoint.
        s3 = S3Settings(proxy_url, s3.bucket, s3.access_key, s3.secret_key, s3.region, s3.prefix)
        state["s3_proxy"] = proxy_url
        state["s3_faults"] = str(directory / S3_FAULTS_FILE)

    # metadata database
    metadata = ""
    if opts.metadata == "postgres":
        say("starting PostgreSQL (cluster metadata)")
        pg_dir = _postgres_dir(directory)
        state["postgres_dir"] = str(pg_dir)
        pg = PostgresServer(pg_dir)
        try:
            info = pg.start(timeout=60)
        except PgServerError as e:
            raise fail(f"PostgreSQL did not start: {e}") from None
        pids["postgres"] = info.pid
        pg.proc = None  # it outlives this process; `down` stops it by pid
        metadata = info.url()
    elif opts.metadata:
        metadata = opts.metadata
    if metadata:
        try:
            migrate(metadata)
        except PgError as e:
            raise fail(str(e)) from None
        state["metadata"] = redact(metadata)

    # controllers
    say("starting the controller" if opts.controllers == 1 else f"starting {opts.controllers} controllers")
    flags = controller_flags(opts)
    # Kept so that `amq controller start NAME` can start a killed controller again as it was.
    state["controller_flags"] = flags
    addresses = []
    for i in range(opts.controllers):
        name = "controller" if i == 0 else f"controller-{i}"
        proc = _spawn_controller(state, name, opts.controller_port if i == 0 else 0, metadata)
        try:
            port = _controller_port(proc, name, directory, timeout)
        except ClusterError as e:
            raise fail(str(e)) from None
        addresses.append(f"127.0.0.1:{port}")
    controller = ",".join(addresses)
    state["controller"] = controller

    # brokers
    entries: list[dict[str, Any]] = []
    for node_id, zone in enumerate(layout.broker_zones):
        if node_id in opts.removed:
            continue
        try:
            cfg = broker_config(opts, directory, controller, s3, node_id, zone, ports[node_id], metadata)
        except (OSError, ValueError) as e:
            raise fail(f"broker settings: {e}") from None
        broker_dir = directory / f"broker-{node_id}"
        broker_dir.mkdir(exist_ok=True)
        if opts.wal == "nfs":
            Path(cfg.storage.wal.path).mkdir(parents=True, exist_ok=True)
        config_path = broker_dir / "broker.json"
        cfg.save(config_path)
        entries.append(
            {"id": node_id, "zone": zone, "config": str(config_path), "log": str(logs / f"broker-{node_id}.log")}
        )
    state.update({"wal_kind": opts.wal, "zones": layout.zones, "brokers": entries})
    what = "the broker" if layout.brokers == 1 else f"{layout.brokers} brokers"
    say(f"starting {what} (recovering WALs, registering with the controller)")
    try:
        start_brokers(state, [e["id"] for e in entries], timeout=timeout)
    except ClusterError as e:
        raise fail(str(e)) from None
    refresh_bootstrap(state)
    if opts.autoscale:
        say("starting the autoscaler")
        scaler = spawn(
            [sys.executable, "-m", "automq_cli.autoscaler", "--dir", str(directory), "--home", str(home),
             "--range", opts.autoscale, "--target-mibps", str(opts.target_mibps),
             "--interval-s", str(opts.autoscale_interval_s)],
            logs / "autoscaler.log",
        )  # fmt: skip
        pids["autoscaler"] = scaler.pid
    state["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    state["logs"] = str(logs)
    save_settings(directory, asdict(opts))
    write_state(state, home)
    return state


S3_FAULTS_FILE = "s3-faults.json"


def _start_s3_proxy(upstream: str, directory: Path, logs: Path, pids: dict[str, int], timeout: float) -> str:
    port_file = directory / "s3-proxy.port"
    with contextlib.suppress(FileNotFoundError):
        port_file.unlink()
    control = directory / S3_FAULTS_FILE
    from engine.devtools.s3proxy import Faults, write_faults

    write_faults(control, Faults())  # a new cluster starts without faults
    proc = spawn(
        [sys.executable, "-m", "engine.devtools.s3proxy", "--upstream", upstream, "--control", str(control),
         "--port-file", str(port_file)],
        logs / "s3-proxy.log",
    )  # fmt: skip
    pids["s3-proxy"] = proc.pid
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None:
            raise ClusterError(f"the S3 fault proxy exited with code {proc.returncode}: {tail(logs / 's3-proxy.log')}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the S3 fault proxy did not start; see {logs / 's3-proxy.log'}")
        time.sleep(0.05)
    return f"http://127.0.0.1:{int(port_file.read_text())}"


def controller_flags(opts: ClusterOptions) -> list[str]:
    """The controller's settings as flags, the same for every controller of the cluster."""
    return [
        "--session-timeout-ms", str(max(1, round(opts.session_timeout * 1000))),
        "--balance-interval-ms", str(max(50, round(opts.balance_interval_s * 1000))),
        "--lease-ttl-ms", str(max(100, round(opts.lease_ttl_s * 1000))),
        *([] if opts.auto_balance else ["--no-auto-balance"]),
    ]  # fmt: skip


def _spawn_controller(state: dict[str, Any], name: str, port: int, metadata: str) -> subprocess.Popen[bytes]:
    directory = Path(state["dir"])
    port_file = directory / name / "port"
    port_file.parent.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        port_file.unlink()
    # The URL (and its password) goes by environment, not argv, which `ps` shows to every user.
    proc = spawn(
        [sys.executable, "-m", "engine.controller", "--dir", str(directory / name), "--port", str(port),
         "--port-file", str(port_file), *state.get("controller_flags", [])],
        directory / "logs" / f"{name}.log", env={"AMQ_METADATA": metadata},
    )  # fmt: skip
    state.setdefault("pids", {})[name] = proc.pid
    return proc


def _controller_port(proc: subprocess.Popen[bytes], name: str, directory: Path, timeout: float) -> int:
    """The port the controller bound, once it listens; ClusterError if it exits or takes too long."""
    port_file = directory / name / "port"
    log = directory / "logs" / f"{name}.log"
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise ClusterError(f"the {name} exited with code {proc.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the {name} did not start; see {log}")
        time.sleep(0.05)
    return int(port_file.read_text())


def controller_names(state: dict[str, Any]) -> list[str]:
    """The cluster's controllers in the order of their addresses in state["controller"]."""
    count = len([a for a in str(state.get("controller") or "").split(",") if a])
    return ["controller" if i == 0 else f"controller-{i}" for i in range(count)]


def _metadata_url(state: dict[str, Any]) -> str:
    """The full PostgreSQL URL ("" with SQLite): the state file keeps it redacted, so it comes from a
    broker's config, which needs it anyway (the cluster directory is amq's own)."""
    for entry in state.get("brokers") or []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            path = str(json.loads(Path(entry["config"]).read_text()).get("storage_metadata_path") or "")
            return path if path.startswith(("postgresql://", "postgres://")) else ""
    return ""


def start_controller(state: dict[str, Any], name: str, timeout: float = 60.0) -> str:
    """Start a stopped (killed) controller of the local cluster again, on its old address, so that
    the brokers, which know every controller's address, reach it; returns that address.

    With PostgreSQL it comes back as a standby (another one holds the lease) or takes the lease
    if none does. The caller writes the state file.
    """
    names = controller_names(state)
    if name not in names:
        raise ClusterError(f"no {name} in this cluster (controllers: {', '.join(names) or 'none'})")
    if "controller_flags" not in state:
        raise ClusterError("this cluster was started by an older amq; restart it with `amq cluster down` and `up`")
    pid = (state.get("pids") or {}).get(name)
    if isinstance(pid, int) and pid_alive(pid, name):
        raise ClusterError(f"the {name} is running (pid {pid})")
    address = str(state["controller"]).split(",")[names.index(name)]
    port = int(address.rsplit(":", 1)[1])
    if not port_free(port):
        raise ClusterError(f"the {name}'s port {port} is in use by another process")
    proc = _spawn_controller(state, name, port, _metadata_url(state))
    try:
        _controller_port(proc, name, Path(state["dir"]), timeout)
    except ClusterError:
        stop_pid(proc.pid, name, timeout=10)
        raise
    return address


def wal_path(kind: str, directory: Path, node_id: int) -> Path:
    """file: the broker's own (zonal) volume; nfs: the one shared directory (the WAL is <path>/broker-N)."""
    if kind == "nfs":
        return directory / "shared-wal"
    return directory / f"broker-{node_id}" / "wal"


def broker_config(
    opts: ClusterOptions, directory: Path, controller: str, s3: Any, node_id: int = 0, zone: str | None = None,
    port: int | None = None, metadata: str = "",
) -> Any:  # fmt: skip
    """The settings file (if any) under what the launcher decides: ids, zone, ports, paths, S3, WAL."""
    from engine.broker.config import BrokerConfig

    base = _load_broker_settings(opts)
    name = f"broker-{node_id}"
    storage = base.setdefault("storage", {})
    wal = storage.setdefault("wal", {})
    wal.update({"kind": opts.wal, "path": str(wal_path(opts.wal, directory, node_id)), "wal_id": name})
    wal.setdefault("capacity", opts.wal_capacity)
    storage["owner"] = name
    storage.setdefault("upload_interval_s", opts.upload_interval_s)
    base.update(
        node_id=node_id, port=opts.port if port is None else port, controller=controller,
        metrics_port=opts.metrics_port, data_dir=str(directory / name),
        storage_metadata_path=metadata or str(directory / "metadata.db"), s3=asdict(s3),
    )  # fmt: skip
    if zone is not None:
        base["zone"] = zone
    else:
        base.setdefault("zone", opts.zone)
    if opts.num_partitions is not None:
        base["num_partitions"] = opts.num_partitions
    base["zone_router"] = opts.zone_router
    base["zone_latency_ms"] = opts.zone_latency_ms
    base.update(opts.extra_broker)
    return BrokerConfig.from_dict(base)


def _spawn_broker(state: dict[str, Any], node_id: int) -> subprocess.Popen[bytes]:
    entry = broker_entry(state, node_id)
    if entry is None:
        raise ClusterError(f"no broker {node_id} in this cluster")
    ready = Path(entry["config"]).with_name("ready.json")
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    args = [sys.executable, "-m", "engine.broker", "--config", entry["config"], "--ready-file", str(ready)]
    proc = spawn(args, Path(entry["log"]))
    state.setdefault("pids", {})[f"broker-{node_id}"] = proc.pid
    entry["pid"] = proc.pid
    return proc


def _broker_ready(state: dict[str, Any], node_id: int, info: dict[str, Any]) -> None:
    """Record the bound ports; a restart must come back on them, or clients (and the state) lose it."""
    entry = broker_entry(state, node_id)
    assert entry is not None
    entry["port"] = int(info["port"])
    entry["metrics_port"] = info.get("metrics_port")
    config_path = Path(entry["config"])
    cfg = json.loads(config_path.read_text())
    if cfg.get("port") != entry["port"] or (info.get("metrics_port") and cfg.get("metrics_port") == 0):
        cfg["port"] = entry["port"]
        cfg["metrics_port"] = info.get("metrics_port") or cfg.get("metrics_port", 0)
        config_path.write_text(json.dumps(cfg, indent=2) + "\n")


def start_brokers(state: dict[str, Any], node_ids: list[int], timeout: float = 90.0) -> dict[int, dict[str, Any]]:
    """Start brokers from their saved configs, all at once; wait until each answers ApiVersions.

    On failure the brokers started here are stopped and ClusterError names the first problem.
    """
    procs = {n: _spawn_broker(state, n) for n in node_ids}
    infos: dict[int, dict[str, Any]] = {}
    ready_infos: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    problem: str | None = None
    while True:
        for n, proc in procs.items():
            entry = broker_entry(state, n)
            if n in ready_infos or entry is None:
                continue
            if proc.poll() is not None:
                problem = f"broker {n} exited with code {proc.returncode}: {tail(Path(entry['log']))}"
                break
            ready = Path(entry["config"]).with_name("ready.json")
            if n not in infos and ready.exists():
                with contextlib.suppress(OSError, ValueError):
                    infos[n] = json.loads(ready.read_text())
            if n in infos and api_versions_ok("127.0.0.1", int(infos[n]["port"])):
                ready_infos[n] = infos[n]
        if problem is not None or len(ready_infos) == len(procs):
            break
        if time.monotonic() > deadline:
            late = [n for n in procs if n not in ready_infos]
            log = (broker_entry(state, late[0]) or {}).get("log")
            problem = f"broker {late[0]} did not answer within {timeout:.0f}s; see {log}"
            break
        time.sleep(0.05)
    if problem is not None:
        terminate_pids({f"broker-{n}": p.pid for n, p in procs.items()}, timeout=10)
        raise ClusterError(problem)
    for n, info in ready_infos.items():
        _broker_ready(state, n, info)
    refresh_bootstrap(state)
    return ready_infos


def start_broker(state: dict[str, Any], node_id: int = 0, timeout: float = 90.0) -> dict[str, Any]:
    """Start (or restart) one broker from its saved config; wait until it answers ApiVersions."""
    return start_brokers(state, [node_id], timeout=timeout)[node_id]


def stop_cluster(state: dict[str, Any], timeout: float = 30.0, progress: Progress | None = None) -> list[str]:
    """Stop the brokers (all at once; they upload what their WAL holds), then the controller, then S3."""
    say = progress or (lambda _m: None)
    pids: dict[str, int] = {n: p for n, p in (state.get("pids") or {}).items() if isinstance(p, int)}
    stopped: list[str] = []
    scaler = pids.pop("autoscaler", None)
    if scaler is not None and pid_alive(scaler, "autoscaler"):
        # First, or it would answer the brokers' stopping by starting new ones.
        say("stopping the autoscaler")
        stop_pid(scaler, "autoscaler", timeout=timeout)
        stopped.append("autoscaler")
    brokers = {n: p for n, p in pids.items() if n.startswith("broker") and pid_alive(p, n)}
    if brokers and state.get("controller") and controller_alive(pids):
        # Brokers stopping together keep their partitions (each leads them again on `up`) instead
        # of handing them to each other one after the other.
        from engine.controller import api
        from engine.controller.rpc import RpcError, request_sync

        try:
            request_sync(str(state["controller"]), api.ClusterShutdown(), timeout=3.0)
        except (RpcError, OSError) as e:
            say(f"the controller did not answer ({e}); brokers hand their partitions to each other")
    if brokers:
        say(f"stopping {', '.join(sorted(brokers))}")
        terminate_pids(brokers, timeout=timeout)
        stopped += sorted(brokers, key=lambda n: (len(n), n))
    for name in sorted((n for n in pids if not n.startswith("broker")), key=lambda n: (n != "controller", n)):
        pid = pids[name]
        if pid_alive(pid, name):
            say(f"stopping {name} (pid {pid})")
            if name == "postgres":
                stop_postgres(pid, timeout=timeout)
            else:
                stop_pid(pid, name, timeout=timeout)
            stopped.append(name)
    return stopped


def _postgres_dir(directory: Path) -> Path:
    """<cluster>/postgres, unless amq runs as root and PostgreSQL (which runs as another user)
    could not reach it: then a directory of its own under /tmp, named in <cluster>/postgres.path
    so the next `up` finds the same data."""
    wanted = directory / "postgres"
    if os.geteuid() != 0 or all(os.stat(p).st_mode & 0o001 for p in [directory, *directory.parents]):
        return wanted
    pointer = directory / "postgres.path"
    if pointer.exists() and Path(pointer.read_text().strip()).is_dir():
        return Path(pointer.read_text().strip())
    chosen = Path(tempfile.mkdtemp(prefix="amq-pg-"))
    pointer.write_text(f"{chosen}\n")
    return chosen
