"""`amq broker start|stop|kill N`: one broker of the local cluster, for trials of failover and restarts;
`amq broker start --node-id N --controllers ...`: a broker of a cluster on several hosts (docs/deploy.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from automq_cli.cluster.launch import NOT_RUNNING, ClusterError, start_broker
from automq_cli.cluster.processes import controller_alive, kill_pid, pid_alive, port_free, terminate_pid
from automq_cli.cluster.state import amq_home, broker_entry, broker_ids, find_state, write_state

app = typer.Typer(
    name="broker",
    help="Stop, kill or start one broker of the local amq cluster, or run a broker on this host.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DirOption = Annotated[
    str | None,
    typer.Option("--dir", "--data-dir", help="The cluster's directory (as given to `amq cluster up`)."),
]
BrokerId = Annotated[int, typer.Argument(help="The broker's id (0, 1, ...; see `amq cluster status`).")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"amq broker: error: {message}", err=True)
    return typer.Exit(code)


def _broker(node_id: int, dir: str | None) -> tuple[Path, dict[str, Any], dict[str, Any], int | None, bool]:
    """(home, state, the broker's entry, its pid, alive) or a one-line error."""
    home = amq_home()
    state = find_state(home, dir)
    if state is None:
        raise _fail(NOT_RUNNING + (f" in {dir}" if dir else ""))
    entry = broker_entry(state, node_id)
    if entry is None:
        ids = ", ".join(str(i) for i in broker_ids(state)) or "none"
        raise _fail(f"no broker {node_id} in this cluster (brokers: {ids})")
    name = f"broker-{node_id}"
    pid = (state.get("pids") or {}).get(name, entry.get("pid"))
    alive = isinstance(pid, int) and pid_alive(pid, name)
    return home, state, entry, pid if isinstance(pid, int) else None, alive


def _where(dir: str | None) -> str:
    return f" --dir {dir}" if dir else ""


@app.command()
def stop(
    node_id: BrokerId,
    dir: DirOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the controlled shutdown before SIGKILL.")
    ] = 30.0,
) -> None:
    """SIGTERM: a controlled shutdown (the broker hands off its partitions, then exits)."""
    _, _, _, pid, alive = _broker(node_id, dir)
    if not alive or pid is None:
        raise _fail(f"broker {node_id} is not running; start it with `amq broker start {node_id}{_where(dir)}`")
    t0 = time.monotonic()
    outcome = terminate_pid(pid, f"broker-{node_id}", timeout=timeout)
    took = time.monotonic() - t0
    if outcome == "killed":
        typer.echo(f"broker {node_id} (pid {pid}) did not stop within {timeout:g}s; killed it with SIGKILL "
                   f"after {took:.2f}s")  # fmt: skip
    else:
        typer.echo(f"broker {node_id} (pid {pid}) stopped in {took:.2f}s")


@app.command()
def kill(node_id: BrokerId, dir: DirOption = None) -> None:
    """SIGKILL (kill -9): a crash, for failover trials."""
    _, _, _, pid, alive = _broker(node_id, dir)
    if not alive or pid is None:
        raise _fail(f"broker {node_id} is not running; start it with `amq broker start {node_id}{_where(dir)}`")
    kill_pid(pid)
    if pid_alive(pid, f"broker-{node_id}"):
        raise _fail(f"broker {node_id} (pid {pid}) is still alive after SIGKILL")
    typer.echo(f"broker {node_id} (pid {pid}) killed with SIGKILL")


Opt = typer.Option


@app.command()
def start(
    ctx: typer.Context,
    node_id: Annotated[
        int | None,
        typer.Argument(
            help="Local cluster: the broker to start again from its saved config. Leave it out for a broker "
            "of a cluster on several hosts (--node-id, --controllers ...).",
            show_default=False,
        ),
    ] = None,
    dir: Annotated[
        str | None,
        Opt("--dir", "--data-dir", help="Local cluster: its directory (as given to `amq cluster up`). "
            "Otherwise: this broker's data directory (default ~/.amq/broker-N)."),
    ] = None,
    timeout: Annotated[float, Opt("--timeout", help="Local cluster: seconds to wait until it answers.")] = 90.0,
    config: Annotated[str | None, Opt("--config", help="YAML file of broker settings; flags win over it.")] = None,
    broker_id: Annotated[int | None, Opt("--node-id", help="This broker's id, unique in the cluster.")] = None,
    controllers: Annotated[str | None, Opt("--controllers", help="h1:port,h2:port: every controller.")] = None,
    zone: Annotated[str | None, Opt("--zone", help="This host's zone (az1, us-east-1a ...).")] = None,
    wal: Annotated[str | None, Opt("--wal", help="WAL kind: file, nfs or s3 (default file).")] = None,
    wal_dir: Annotated[
        str | None, Opt("--wal-dir", help="nfs: the shared directory every broker mounts; file: a local one.")
    ] = None,
    s3_endpoint: Annotated[
        str | None, Opt("--s3-endpoint", help="https://s3.us-east-1.amazonaws.com, MinIO ...")
    ] = None,
    s3_bucket: Annotated[str | None, Opt("--s3-bucket", help="The bucket (it must exist) (default amq).")] = None,
    access_key: Annotated[
        str | None, Opt("--access-key", envvar="AWS_ACCESS_KEY_ID", show_envvar=True, show_default=False)
    ] = None,
    secret_key: Annotated[
        str | None, Opt("--secret-key", envvar="AWS_SECRET_ACCESS_KEY", show_envvar=True, show_default=False)
    ] = None,
    region: Annotated[str | None, Opt("--region", help="S3 region (default us-east-1).")] = None,
    s3_prefix: Annotated[
        str | None, Opt("--s3-prefix", help="Key prefix in the bucket, the same on every broker (default none).")
    ] = None,
    advertise: Annotated[
        str | None, Opt("--advertise", help="host[:port] clients and other brokers reach this broker at.")
    ] = None,
    listen: Annotated[
        str | None, Opt("--listen", help="Address to bind (default 127.0.0.1); 0.0.0.0 needs --advertise.")
    ] = None,
    port: Annotated[int | None, Opt("--port", help="Kafka port (default 9092); 0 = any free port.")] = None,
    metrics_port: Annotated[
        int | None, Opt("--metrics-port", help="HTTP /metrics port; 0 = any free port, -1 = off.")
    ] = None,
    metadata: Annotated[
        str | None,
        Opt("--metadata", envvar="AMQ_METADATA", show_default=False,
            help="postgresql://user:password@host:port/db, shared by every broker ($AMQ_METADATA keeps the "
            "password out of ps)."),
    ] = None,
    controller_timeout: Annotated[
        float, Opt("--controller-timeout", help="Seconds to wait for a controller to answer at start.")
    ] = 30.0,
    ready_file: Annotated[
        str | None, Opt("--ready-file", help="Once serving, write {port, metrics_port, pid} here as JSON.")
    ] = None,
) -> None:  # fmt: skip
    """Start broker N of the local cluster again, or run a broker for a cluster on several hosts.

    `amq broker start N`: broker N of the local cluster, from its saved config, on the same port.
    `amq broker start --node-id N --controllers ... --zone ... --metadata ... --s3-endpoint ...`
    (or --config broker.yaml): a broker of a cluster on several hosts, in the foreground until
    SIGTERM (systemd runs it; docs/deploy.md).
    """
    # By name: typer may bring its own copy of click, whose enum is not click.core's.
    host_flags = [
        p.opts[0] for p in ctx.command.params
        if p.name not in ("node_id", "dir", "timeout", "controller_timeout")
        and getattr(ctx.get_parameter_source(p.name or ""), "name", "") == "COMMANDLINE"
    ]  # fmt: skip
    if node_id is not None:
        if host_flags:
            raise _fail(
                f"`amq broker start {node_id}` starts broker {node_id} of the local cluster again, which takes "
                f"no {host_flags[0]}; for a broker of a cluster on several hosts leave {node_id} out and give "
                f"--node-id {node_id} --controllers ... (docs/deploy.md)"
            )
        _restart_local(node_id, dir, timeout)
        return
    if not host_flags:
        raise _fail(
            "which broker? `amq broker start N` starts broker N of the local cluster again; "
            "`amq broker start --node-id N --controllers h1:p,h2:p --zone Z ...` (or --config FILE) runs a broker "
            "of a cluster on several hosts (docs/deploy.md)"
        )
    flags: dict[str, Any] = {
        "node_id": broker_id, "controller": controllers, "zone": zone, "host": listen, "port": port,
        "metrics_port": metrics_port, "storage_metadata_path": metadata, "data_dir": dir,
    }  # fmt: skip
    s3_flags = {"endpoint": s3_endpoint, "bucket": s3_bucket, "access_key": access_key, "secret_key": secret_key,
                "region": region, "prefix": s3_prefix}  # fmt: skip
    wal_flags = {"kind": wal, "path": wal_dir}
    from automq_cli.hosts import HostError

    try:
        cfg = host_broker_config(config, flags, s3_flags, wal_flags, advertise)
        _preflight(cfg, controller_timeout)
    except HostError as e:
        raise _fail(str(e)) from None
    _serve(cfg, ready_file)


def host_broker_config(
    path: str | None, flags: dict[str, Any], s3_flags: dict[str, Any], wal_flags: dict[str, Any], advertise: str | None
) -> Any:
    """The file's settings under the flags given, with what a broker on its own host must name
    (no default could be right on every host) checked before anything starts."""
    from automq_cli.hosts import HostError, parse_advertise
    from engine.broker.config import BrokerConfig, BrokerConfigError, S3Settings, check_fields
    from engine.storage.config import StorageConfig, WalConfig

    try:
        raw = BrokerConfig.load_raw(path) if path else {}
    except FileNotFoundError:
        raise HostError(f"--config {path}: no such file") from None
    except OSError as e:
        raise HostError(f"--config {path}: {e.strerror}") from None
    except BrokerConfigError as e:
        raise HostError(str(e)) from None
    raw = {str(k).replace(".", "_").replace("-", "_"): v for k, v in raw.items()}
    raw.update({k: v for k, v in flags.items() if v is not None})
    s3 = raw.setdefault("s3", {}) if isinstance(raw.get("s3", {}), dict) else {}
    s3.update({k: v for k, v in s3_flags.items() if v is not None})
    storage = raw.setdefault("storage", {}) if isinstance(raw.get("storage", {}), dict) else {}
    wal = storage.setdefault("wal", {}) if isinstance(storage.get("wal", {}), dict) else {}
    wal.update({k: v for k, v in wal_flags.items() if v is not None})
    if advertise is not None:
        raw["advertised_host"], raw["advertised_port"] = parse_advertise(advertise)
    # A misspelt key first: it is often why something looks missing.
    try:
        check_fields(BrokerConfig, {k: v for k, v in raw.items() if k not in ("s3", "storage")}, "broker settings")
        check_fields(S3Settings, s3, "s3 settings")
        check_fields(StorageConfig, {k: v for k, v in storage.items() if k != "wal"}, "storage settings")
        check_fields(WalConfig, wal, "storage.wal settings")
    except BrokerConfigError as e:
        raise HostError(str(e)) from None
    what = "in the config file" if path else ""
    missing = [
        flag for key, flag in (("node_id", "--node-id N"), ("controller", "--controllers h1:p,h2:p"),
                               ("zone", "--zone Z"), ("storage_metadata_path", "--metadata postgresql://..."))
        if raw.get(key) in (None, "")
    ]  # fmt: skip
    if missing:
        keys = {"--node-id N": "node_id", "--controllers h1:p,h2:p": "controller", "--zone Z": "zone",
                "--metadata postgresql://...": "storage_metadata_path"}  # fmt: skip
        raise HostError(
            f"a broker on its own host needs {', '.join(missing)} "
            f"({what or 'in a --config file'}: {', '.join(keys[m] for m in missing)})"
        )
    node = raw["node_id"]
    if not isinstance(node, int) or isinstance(node, bool) or node < 0:
        raise HostError(f"node_id must be a whole number, 0 or more, not {node!r}")
    kind = wal.get("kind", "file")
    if kind == "nfs" and not wal.get("path"):
        raise HostError("--wal nfs needs --wal-dir: the directory on the shared file system (NFS, EFS) "
                        "every broker mounts")  # fmt: skip
    if kind == "s3" and wal_flags.get("path"):
        raise HostError("--wal s3 keeps the WAL in the bucket: --wal-dir does not apply")
    if not raw.get("data_dir"):
        from automq_cli.cluster.state import amq_home

        raw["data_dir"] = str(amq_home() / f"broker-{node}")
    if kind == "file" and not wal.get("path"):
        wal["path"] = str(Path(raw["data_dir"]) / "wal")
    # One WAL per broker (an nfs directory holds every broker's): named after the broker, unless the file says.
    wal.setdefault("wal_id", f"broker-{node}")
    storage.setdefault("owner", f"broker-{node}")
    if not s3.get("endpoint"):
        raise HostError("--s3-endpoint is needed: https://s3.<region>.amazonaws.com for AWS, or MinIO's URL")
    try:
        cfg = BrokerConfig.from_dict(raw)
    except BrokerConfigError as e:
        raise HostError(str(e)) from None
    from engine.controller.config import WILDCARDS

    if cfg.host.strip() in WILDCARDS and cfg.advertised.strip() in WILDCARDS:
        raise HostError(f"--listen {cfg.host or '(empty)'} binds every address: say which one clients reach "
                        "with --advertise host[:port]")  # fmt: skip
    return cfg


def _preflight(cfg: Any, controller_timeout: float) -> None:
    from automq_cli.hosts import check_controllers, check_metadata, check_s3, check_wal_dir

    check_wal_dir(cfg.storage.wal.kind, cfg.storage.wal.path)
    try:
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from automq_cli.hosts import HostError

        raise HostError(f"cannot use {cfg.data_dir} as the broker's directory: {e.strerror}") from None
    check_metadata(cfg.storage_metadata_path)
    check_s3(cfg.s3)
    check_controllers(cfg.controller, controller_timeout)


def _serve(cfg: Any, ready_file: str | None) -> None:
    import logging

    from automq_cli.hosts import write_ready
    from engine.broker.__main__ import serve
    from engine.broker.errors import BrokerError
    from engine.controller.rpc import RpcError
    from engine.postgres import PgError
    from engine.storage.errors import StorageError
    from engine.storage.objects.store import ObjectStoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(broker: Any) -> None:
        typer.echo(f"broker {cfg.node_id} (zone {cfg.zone}) serving Kafka on {cfg.host}:{broker.port}, "
                   f"advertised as {broker.host}:{broker.advertised_port}; controllers {cfg.controller}")  # fmt: skip
        if ready_file:
            write_ready(ready_file, {"port": broker.port, "metrics_port": broker.metrics_port})

    try:
        serve(cfg, on_ready=ready)
    except OSError as e:
        raise _fail(f"cannot serve on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    except (RpcError, PgError, BrokerError, ObjectStoreError, StorageError) as e:
        raise _fail(f"the broker stopped: {e}") from None
    except Exception as e:
        # A bug, not bad input: its traceback goes to the log (the journal), the summary last.
        logging.getLogger("amq.broker").error("the broker failed", exc_info=True)
        raise _fail(f"the broker stopped: {type(e).__name__}: {e}") from None


def _restart_local(node_id: int, dir: str | None, timeout: float) -> None:
    """Start the broker again from its saved config, on the same port; return once it answers."""
    home, state, entry, pid, alive = _broker(node_id, dir)
    if alive:
        raise _fail(f"broker {node_id} is already running (pid {pid}, 127.0.0.1:{entry.get('port')})")
    if not controller_alive(state.get("pids") or {}):
        raise _fail(f"the cluster's controller is not running; start the cluster with `amq cluster up{_where(dir)}`")
    port = entry.get("port")
    if isinstance(port, int) and port and not port_free(port):
        raise _fail(f"port {port} of broker {node_id} is in use by another program")
    t0 = time.monotonic()
    try:
        info = start_broker(state, node_id, timeout=timeout)
    except ClusterError as e:
        write_state(state, home, claim_home=False)  # the pid of the failed start is recorded, and dead
        raise _fail(str(e)) from None
    write_state(state, home, claim_home=False)
    typer.echo(f"broker {node_id} is up at 127.0.0.1:{info['port']} (pid {entry['pid']}, zone {entry.get('zone')}) "
               f"after {time.monotonic() - t0:.2f}s")  # fmt: skip
