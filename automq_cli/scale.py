"""`amq scale out|in` and `amq cluster balance`: brokers come and go, partitions follow by metadata.

scale out starts new brokers and asks the controller's balancer for a plan that gives them
their share; scale in asks for a plan that moves everything off a broker (drained: nothing
is placed on it meanwhile), waits until it leads nothing, stops it and removes it from the
cluster. Both show progress and end with one line: time taken and partitions moved.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from automq_cli.cluster.launch import NOT_RUNNING, ClusterError, ClusterOptions, broker_config, start_brokers
from automq_cli.cluster.processes import controller_alive, terminate_pid
from automq_cli.cluster.state import amq_home, broker_entry, find_state, load_settings, save_settings, write_state

app = typer.Typer(
    name="scale",
    help="Add brokers to the local cluster or drain and remove one (partitions move by metadata).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DirOption = Annotated[
    str | None,
    typer.Option("--dir", "--data-dir", help="The cluster's directory (as given to `amq cluster up`)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
WAIT_S = 120.0


class ScaleError(Exception):
    """One line for the user; exit 1."""


def _fail(noun: str, message: str) -> typer.Exit:
    typer.echo(f"amq {noun}: error: {message}", err=True)
    return typer.Exit(1)


def _cluster(dir: str | None) -> dict[str, Any]:
    state = find_state(amq_home(), dir)
    if state is None or not state.get("controller"):
        raise ScaleError(NOT_RUNNING + (f" in {dir}" if dir else ""))
    if not controller_alive(state.get("pids") or {}):
        raise ScaleError("the cluster's controller is not running; start it with `amq cluster up`")
    return state


def _rpc(state: dict[str, Any], req: Any, timeout: float = 10.0) -> Any:
    from engine.controller.rpc import ControllerUnavailable, RpcError, request_sync

    try:
        return request_sync(str(state["controller"]), req, timeout=timeout)
    except RpcError as e:
        raise ScaleError(str(e)) from None
    except ControllerUnavailable as e:
        raise ScaleError(f"the controller at {state['controller']} does not answer ({e})") from None


def _status(state: dict[str, Any]) -> Any:
    from engine.controller import api

    return _rpc(state, api.Status())


def _balance(state: dict[str, Any], dry_run: bool, exclude: list[int] | None = None, max_moves: int = 0) -> Any:
    """The balancer's plan (started unless dry_run); waits out moves already under way first."""
    from engine.controller import api

    deadline = time.monotonic() + 30
    while True:
        try:
            return _rpc(state, api.Balance(dry_run=dry_run, exclude=exclude or [], max_moves=max_moves))
        except ScaleError as e:
            if "not now" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _progress(disable: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), transient=True, disable=disable,
    )  # fmt: skip


@app.command("out")
def scale_out(
    brokers: Annotated[int, typer.Option("--brokers", help="How many brokers to add.")] = 1,
    zone: Annotated[str | None, typer.Option("--zone", help="Their zone. Default: the zones take turns.")] = None,
    dir: DirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start new brokers; the balancer gives them their share of the partitions."""
    try:
        if not 1 <= brokers <= 16:
            raise ScaleError(f"--brokers must be between 1 and 16, got {brokers}")
        if zone is not None and not zone.strip():
            raise ScaleError("--zone must name a zone")
        state = _cluster(dir)
        started = time.monotonic()
        new = add_brokers(state, brokers, zone)
        registered = time.monotonic()
        moved = spread(state, new, as_json)
        took = time.monotonic() - started
        share = time.monotonic() - registered
        status = _status(state)
        led = {b.id: b.partitions_led for b in status.brokers}
        if as_json:
            typer.echo(json.dumps({"added": new, "partitions_moved": moved, "seconds": round(took, 3),
                                   "seconds_after_register": round(share, 3), "partitions_led": led}))  # fmt: skip
        else:
            names = ", ".join(str(n) for n in new)
            typer.echo(
                f"Added broker{'s' * (len(new) > 1)} {names} in {took:.1f} s; {moved} partitions moved to "
                f"{'them' if len(new) > 1 else 'it'} {share:.1f} s after they registered "
                f"(partitions led: {', '.join(f'{b}: {n}' for b, n in sorted(led.items()))})"
            )
    except (ScaleError, ClusterError) as e:
        raise _fail("scale", str(e)) from None


def add_brokers(state: dict[str, Any], count: int, zone: str | None) -> list[int]:
    from engine.broker.config import S3Settings

    directory = Path(state["dir"])
    opts = ClusterOptions(
        **{k: v for k, v in load_settings(directory).items() if k in ClusterOptions.__dataclass_fields__}
    )
    opts.dir = str(directory)
    zones: list[str] = list(state.get("zones") or [opts.zone])
    entries = state.setdefault("brokers", [])
    first = max([int(e["id"]) for e in entries] + opts.removed + [-1]) + 1
    template = json.loads(Path(entries[0]["config"]).read_text()) if entries else {}
    s3 = S3Settings(**template.get("s3", {}))
    new = list(range(first, first + count))
    logs = Path(state.get("logs") or directory / "logs")
    for node_id in new:
        z = zone or zones[node_id % len(zones)]
        metadata = str(template.get("storage_metadata_path") or "")
        cfg = broker_config(opts, directory, str(state["controller"]), s3, node_id, z, port=0,
                            metadata=metadata if metadata.startswith("postgres") else "")  # fmt: skip
        broker_dir = directory / f"broker-{node_id}"
        broker_dir.mkdir(exist_ok=True)
        config_path = broker_dir / "broker.json"
        cfg.save(config_path)
        entries.append(
            {"id": node_id, "zone": z, "config": str(config_path), "log": str(logs / f"broker-{node_id}.log")}
        )
        opts.zone_of[str(node_id)] = z
        if z not in zones:
            zones.append(z)
    state["zones"] = zones
    opts.brokers = first + count
    try:
        start_brokers(state, new)
    except ClusterError:
        state["brokers"] = [e for e in entries if e["id"] not in new]
        raise
    save_settings(directory, asdict(opts))
    write_state(state, claim_home=False)
    return new


def spread(state: dict[str, Any], new: list[int], as_json: bool) -> int:
    """Plan and apply until the balancer has nothing more to move; returns partitions moved."""
    moved = 0
    with _progress(as_json) as bar:
        task = bar.add_task("giving the new brokers their share", total=None)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            res = _balance(state, dry_run=False, max_moves=100_000)
            moved += len(res.started)
            bar.update(task, total=moved or 1, completed=moved)
            if not res.moves:
                break
            _wait_moves(state)
    return moved


def _wait_moves(state: dict[str, Any]) -> None:
    deadline = time.monotonic() + WAIT_S
    while _status(state).moves_in_progress:
        if time.monotonic() > deadline:
            raise ScaleError(f"moves still under way after {WAIT_S:.0f}s")
        time.sleep(0.05)


@app.command("in")
def scale_in(
    broker: Annotated[int, typer.Option("--broker", help="The broker to drain and remove.")],
    dir: DirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move every partition off a broker (metadata only), then stop it and remove it from the cluster."""
    try:
        state = _cluster(dir)
        status = _status(state)
        me = next((b for b in status.brokers if b.id == broker), None)
        if me is None:
            raise ScaleError(
                f"no broker {broker} in this cluster (brokers: {', '.join(str(b.id) for b in status.brokers)})"
            )
        others = [b for b in status.brokers if b.id != broker and b.alive]
        if not others:
            raise ScaleError(f"broker {broker} is the only running broker: nothing could take its partitions")
        started = time.monotonic()
        moved, drained = drain_and_remove(state, broker, me.partitions_led, progress=not as_json)
        took = time.monotonic() - started
        if as_json:
            typer.echo(json.dumps({"removed": broker, "partitions_moved": moved, "drained_seconds": round(drained, 3),
                                   "seconds": round(took, 3)}))  # fmt: skip
        else:
            typer.echo(
                f"Removed broker {broker} in {took:.1f} s: {moved} partitions moved off it by metadata in "
                f"{drained:.1f} s, then it stopped"
            )
    except (ScaleError, ClusterError) as e:
        raise _fail("scale", str(e)) from None


def drain_and_remove(state: dict[str, Any], broker: int, total: int, progress: bool = False) -> tuple[int, float]:
    """Move every partition off `broker` by metadata, stop it, and remove it from the cluster.

    Returns (partitions moved, seconds until it led nothing)."""
    from engine.controller import api

    started = time.monotonic()
    moved = 0
    with _progress(not progress) as bar:
        task = bar.add_task(f"draining broker {broker}", total=max(total, 1))
        deadline = time.monotonic() + WAIT_S
        while True:
            res = _balance(state, dry_run=False, exclude=[broker], max_moves=100_000)
            moved += len(res.started)
            while True:
                status = _status(state)
                left = next((b.partitions_led for b in status.brokers if b.id == broker), 0)
                bar.update(task, completed=total - left)
                if not status.moves_in_progress:
                    break
                time.sleep(0.05)
            if left == 0:
                break
            if time.monotonic() > deadline:
                raise ScaleError(f"broker {broker} still leads {left} partitions after {WAIT_S:.0f}s")
    drained = time.monotonic() - started
    entry = broker_entry(state, broker)
    pid = (entry or {}).get("pid")
    if isinstance(pid, int):
        terminate_pid(pid, f"broker-{broker}", timeout=30)
    deadline = time.monotonic() + 15
    while next((b.state for b in _status(state).brokers if b.id == broker), "shutdown") not in ("shutdown", "fenced"):
        if time.monotonic() > deadline:
            raise ScaleError(f"broker {broker} did not stop")
        time.sleep(0.1)
    _rpc(state, api.ForgetBroker(broker))
    _remove_broker(state, broker)
    return moved, drained


def _remove_broker(state: dict[str, Any], broker: int) -> None:
    from automq_cli.cluster.state import refresh_bootstrap

    directory = Path(state["dir"])
    settings = load_settings(directory)
    settings["removed"] = sorted(set(settings.get("removed") or []) | {broker})
    save_settings(directory, settings)
    state["brokers"] = [e for e in state.get("brokers") or [] if e.get("id") != broker]
    (state.get("pids") or {}).pop(f"broker-{broker}", None)
    refresh_bootstrap(state)
    write_state(state, claim_home=False)


def balance(dry_run: bool, dir: str | None, as_json: bool) -> None:
    """`amq cluster balance [--dry-run]`: the balancer's plan now, and the spread it leads to."""
    try:
        state = _cluster(dir)
        started = time.monotonic()
        res = _balance(state, dry_run=dry_run, max_moves=100_000)
        if not dry_run and res.started:
            with _progress(as_json) as bar:
                bar.add_task(f"moving {len(res.started)} partitions", total=None)
                _wait_moves(state)
        took = time.monotonic() - started
        if as_json:
            from msgspec import to_builtins

            typer.echo(json.dumps({**to_builtins(res), "seconds": round(took, 3)}))
            return
        _print_plan(res, dry_run)
        if dry_run:
            typer.echo(f"Dry run: {len(res.moves)} moves planned in {res.plan_ms:.0f} ms; nothing moved.")
        else:
            typer.echo(f"Moved {len(res.started)} partitions in {took:.2f} s.")
    except ScaleError as e:
        raise _fail("cluster", str(e)) from None


def _print_plan(res: Any, dry_run: bool) -> None:
    table = Table(title="Spread per broker")
    for col in ("broker", "partitions now", "MiB/s now", "partitions after", "MiB/s after"):
        table.add_column(col, justify="right")
    after = {b.broker: b for b in res.after}
    for b in res.before:
        a = after.get(b.broker, b)
        table.add_row(str(b.broker), str(b.partitions), f"{b.bytes_per_s / 2**20:.2f}", str(a.partitions),
                      f"{a.bytes_per_s / 2**20:.2f}")  # fmt: skip
    Console().print(table)
    typer.echo(
        f"max/mean throughput {res.max_over_mean_before:.2f} -> {res.max_over_mean_after:.2f}; "
        f"{'within bounds' if res.balanced else 'not within bounds: ' + (res.reason or 'see the plan')}"
    )
    for m in res.moves[:20] if dry_run else []:
        typer.echo(f"  {m.topic}-{m.partition}: broker {m.source} -> {m.target}")
    if dry_run and len(res.moves) > 20:
        typer.echo(f"  ... and {len(res.moves) - 20} more")
