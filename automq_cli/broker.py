"""`amq broker start|stop|kill N`: one broker of the local cluster, for trials of failover and restarts."""

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
    help="Stop, kill or start one broker of the local amq cluster.",
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


@app.command()
def start(
    node_id: BrokerId,
    dir: DirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait until it answers.")] = 90.0,
) -> None:
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
