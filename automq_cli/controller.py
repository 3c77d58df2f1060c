"""`amq controller start`: a controller for a cluster on several hosts, in the foreground (systemd runs it);
`amq controller start|kill NAME`: one controller of the local cluster, for trials of controller failover."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from automq_cli.hosts import HostError, check_metadata, write_ready

app = typer.Typer(
    name="controller",
    help="Run a controller of a cluster on several hosts (docs/deploy.md), or kill and start one of the local "
    "cluster's controllers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"amq controller: error: {message}", err=True)
    return typer.Exit(code)


LOCAL_NAME = "controller, controller-1, ... (see `amq cluster status`)"


def _local(name: str, dir: str | None) -> tuple[Path, dict[str, Any], int | None, bool]:
    """(home, state, the controller's pid, alive) of the local cluster, or a one-line error."""
    from automq_cli.cluster.launch import NOT_RUNNING, controller_names
    from automq_cli.cluster.processes import pid_alive
    from automq_cli.cluster.state import amq_home, find_state

    home = amq_home()
    state = find_state(home, dir)
    if state is None:
        raise _fail(NOT_RUNNING + (f" in {dir}" if dir else ""))
    names = controller_names(state)
    if name not in names:
        raise _fail(f"no {name} in this cluster (controllers: {', '.join(names) or 'none'})")
    pid = (state.get("pids") or {}).get(name)
    alive = isinstance(pid, int) and pid_alive(pid, name)
    return home, state, pid if isinstance(pid, int) else None, alive


@app.command()
def kill(
    name: Annotated[str, typer.Argument(help=f"The local cluster's controller: {LOCAL_NAME}.")],
    dir: Annotated[
        str | None, typer.Option("--dir", "--data-dir", help="The cluster's directory (as given to `amq cluster up`).")
    ] = None,
) -> None:
    """SIGKILL (kill -9) of one controller of the local cluster: a crash, for failover trials."""
    from automq_cli.cluster.processes import kill_pid, pid_alive

    _, _, pid, alive = _local(name, dir)
    if not alive or pid is None:
        raise _fail(f"the {name} is not running; start it with `amq controller start {name}`")
    kill_pid(pid)
    if pid_alive(pid, name):
        raise _fail(f"the {name} (pid {pid}) is still alive after SIGKILL")
    typer.echo(f"{name} (pid {pid}) killed with SIGKILL")


def _restart_local(name: str, dir: str | None, timeout: float) -> None:
    from automq_cli.cluster.launch import ClusterError, start_controller
    from automq_cli.cluster.state import write_state

    home, state, pid, alive = _local(name, dir)
    if alive:
        raise _fail(f"the {name} is already running (pid {pid})")
    t0 = time.monotonic()
    try:
        address = start_controller(state, name, timeout=timeout)
    except ClusterError as e:
        write_state(state, home, claim_home=False)  # the pid of a failed start is recorded, and dead
        raise _fail(str(e)) from None
    write_state(state, home, claim_home=False)
    typer.echo(f"{name} is up at {address} (pid {state['pids'][name]}) after {time.monotonic() - t0:.2f}s")


@app.command()
def start(
    name: Annotated[
        str | None,
        typer.Argument(
            help=f"Local cluster: the controller to start again ({LOCAL_NAME}), on its old address. "
            "Leave it out for a controller of a cluster on several hosts.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="YAML file of controller settings; flags win over it.")
    ] = None,
    metadata: Annotated[
        str | None,
        typer.Option(
            "--metadata",
            envvar="AMQ_METADATA",
            show_default=False,
            help="postgresql://user:password@host:port/db shared by every controller and broker "
            "($AMQ_METADATA keeps the password out of ps). Without it: SQLite in --dir, one controller.",
        ),
    ] = None,
    dir: Annotated[
        str | None,
        typer.Option(
            "--dir",
            help="Local cluster (with NAME): its directory. Otherwise: the directory for "
            "controller.db (SQLite) (default ~/.amq/controller).",
        ),
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="Address to bind (default 127.0.0.1); 0.0.0.0 needs --advertise.")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="RPC port (default 9093); 0 = any free port.")] = None,
    advertise: Annotated[
        str | None, typer.Option("--advertise", help="host:port brokers and the other controllers reach this one at.")
    ] = None,
    lease_ttl_ms: Annotated[
        int | None, typer.Option("--lease-ttl-ms", help="A leader silent this long loses the lease (default 3000).")
    ] = None,
    session_timeout_ms: Annotated[
        int | None, typer.Option("--session-timeout-ms", help="A broker silent this long is fenced (default 3000).")
    ] = None,
    ready_file: Annotated[
        str | None,
        typer.Option("--ready-file", help="Once listening, write {port, address, pid} here as JSON (for scripts)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Local cluster: seconds to wait until it listens.")
    ] = 60.0,
) -> None:
    """Run a controller until SIGTERM. Several on one PostgreSQL database: one leads, the others stand by.

    `amq controller start NAME`: start a killed controller of the local cluster again, in the
    background, on its old address (a standby if another one leads).
    """
    if name is not None:
        given = {"--config": config, "--metadata": metadata, "--listen": listen, "--port": port,
                 "--advertise": advertise, "--lease-ttl-ms": lease_ttl_ms,
                 "--session-timeout-ms": session_timeout_ms, "--ready-file": ready_file}  # fmt: skip
        # --metadata may come from $AMQ_METADATA, set for a host's controller: not a reason to refuse.
        extra = [flag for flag, v in given.items() if v is not None and flag != "--metadata"]
        if extra:
            raise _fail(f"`amq controller start {name}` starts a controller of the local cluster again with its "
                        f"saved settings, which takes no {extra[0]}")  # fmt: skip
        _restart_local(name, dir, timeout)
        return
    from engine.controller.__main__ import serve
    from engine.controller.config import ControllerConfig, ControllerConfigError
    from engine.postgres import PgError, redact

    raw: dict[str, Any] = {}
    try:
        if config:
            raw = {str(k).replace("-", "_"): v for k, v in ControllerConfig.load(config).items()}
        flags = {"metadata": metadata, "dir": dir, "listen": listen, "port": port, "advertise": advertise,
                 "lease_ttl_ms": lease_ttl_ms, "session_timeout_ms": session_timeout_ms}  # fmt: skip
        raw.update({k: v for k, v in flags.items() if v is not None})
        if not raw.get("dir"):
            from automq_cli.cluster.state import amq_home

            raw["dir"] = str(amq_home() / "controller")
        cfg = ControllerConfig.from_dict(raw)
    except ControllerConfigError as e:
        raise _fail(str(e)) from None
    try:
        Path(cfg.dir).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(f"cannot use {cfg.dir} as the controller's directory: {e.strerror}") from None
    if cfg.metadata:
        try:
            check_metadata(cfg.metadata)
        except HostError as e:
            raise _fail(str(e)) from None

    def listening(server: Any) -> None:
        where = redact(cfg.metadata) if cfg.metadata else f"SQLite in {cfg.dir}"
        typer.echo(f"controller listening on {cfg.listen}:{server.port} (brokers reach it at {server.address}); "
                   f"metadata: {where}")  # fmt: skip
        if ready_file:
            write_ready(ready_file, {"port": server.port, "address": server.address})

    try:
        serve(cfg, on_listening=listening)
    except OSError as e:
        raise _fail(f"cannot serve on {cfg.listen}:{cfg.port}: {e.strerror or e}") from None
    except PgError as e:
        raise _fail(str(e)) from None
    except Exception as e:
        # A bug, not bad input: its traceback goes to the log (the journal), the summary last.
        logging.getLogger("amq.controller").error("the controller failed", exc_info=True)
        raise _fail(f"the controller stopped: {type(e).__name__}: {e}") from None
