"""`amq chaos`: faults on demand on the local cluster (docs/chaos.md).

amq chaos kill broker 1 | controller | s3
amq chaos pause broker 1 --for 10s
amq chaos object-store --latency-ms 200 | --error-rate 0.2 | --down 30s | --clear
amq chaos zone-down az2 [--for 30s]
amq chaos wal-tear 1 [--mode tail|last]
amq chaos trials --count 20 [--seed 7] [--faults kill,pause,s3,zone,tear] [--wal nfs|s3] [--json out.json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from automq_cli.chaos.faults import (
    FaultError,
    parse_duration,
    set_s3_faults,
    stamp,
    target_name,
)
from automq_cli.chaos.faults import (
    kill as kill_process,
)
from automq_cli.chaos.faults import (
    pause as pause_process,
)
from automq_cli.chaos.faults import (
    wal_tear as tear_wal,
)
from automq_cli.chaos.faults import (
    zone_down as kill_zone,
)
from automq_cli.cluster.launch import NOT_RUNNING, ClusterError, start_brokers
from automq_cli.cluster.state import amq_home, find_state, write_state

app = typer.Typer(
    name="chaos",
    help="Inject faults into the local amq cluster: kill, pause, S3 faults, a zone down, a torn WAL; trials.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DirOption = Annotated[
    str | None,
    typer.Option("--dir", "--data-dir", help="The cluster's directory (as given to `amq cluster up`)."),
]
Target = Annotated[str, typer.Argument(help="broker, controller or s3 (the SeaweedFS process).")]
Node = Annotated[int | None, typer.Argument(help="With broker: its id.", show_default=False)]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"amq chaos: error: {message}", err=True)
    return typer.Exit(code)


def _state(dir: str | None) -> dict[str, Any]:
    state = find_state(amq_home(), dir)
    if state is None:
        raise _fail(NOT_RUNNING + (f" in {dir}" if dir else ""))
    return state


@app.command()
def kill(target: Target, node: Node = None, dir: DirOption = None) -> None:
    """SIGKILL a process of the cluster, as a crash would."""
    state = _state(dir)
    try:
        typer.echo(kill_process(state, target_name(target, node, state)))
    except FaultError as e:
        raise _fail(str(e)) from None


@app.command()
def pause(
    target: Target,
    node: Node = None,
    for_: Annotated[str, typer.Option("--for", help="How long: 10s, 500ms, 2m.")] = "10s",
    dir: DirOption = None,
) -> None:
    """SIGSTOP a process (a hung VM, a long GC pause), SIGCONT it after --for."""
    state = _state(dir)
    try:
        seconds = parse_duration(for_)
        typer.echo(pause_process(state, target_name(target, node, state), seconds, say=typer.echo))
    except FaultError as e:
        raise _fail(str(e)) from None


@app.command("object-store")
def object_store(
    latency_ms: Annotated[float | None, typer.Option("--latency-ms", help="Added to every S3 request.")] = None,
    error_rate: Annotated[
        float | None, typer.Option("--error-rate", help="0..1: answer 500 / 503 / SlowDown instead.")
    ] = None,
    hang_rate: Annotated[float | None, typer.Option("--hang-rate", help="0..1: never answer.")] = None,
    torn_rate: Annotated[float | None, typer.Option("--torn-rate", help="0..1: half an answer, then close.")] = None,
    down: Annotated[str | None, typer.Option("--down", help="A full outage for this long: 30s, 2m.")] = None,
    down_mode: Annotated[
        str | None, typer.Option("--down-mode", help="refuse (connections refused, default) or 503.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="For the proxy's random draws.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every S3 fault first.")] = False,
    dir: DirOption = None,
) -> None:
    """Switch the S3 fault proxy's faults (the cluster must run with `amq cluster up --s3-faults`)."""
    state = _state(dir)
    try:
        down_s = parse_duration(down) if down is not None else None
        changes = {"latency_ms": latency_ms, "error_rate": error_rate, "hang_rate": hang_rate,
                   "torn_rate": torn_rate, "down_mode": down_mode, "seed": seed}  # fmt: skip
        if not clear and down_s is None and all(v is None for v in changes.values()):
            raise FaultError("nothing to change: give --latency-ms, --error-rate, --hang-rate, --torn-rate, "
                             "--down or --clear")  # fmt: skip
        typer.echo(set_s3_faults(state, clear=clear, down_s=down_s, **changes))
    except FaultError as e:
        raise _fail(str(e)) from None


# The S3 name, kept for whoever typed it first.
app.command("s3", hidden=True)(object_store)


@app.command("zone-down")
def zone_down(
    zone: Annotated[str, typer.Argument(help="The zone (see `amq cluster status`).")],
    for_: Annotated[
        str | None, typer.Option("--for", help="Start the zone's brokers again after this long (10s, 2m).")
    ] = None,
    dir: DirOption = None,
) -> None:
    """SIGKILL every broker of a zone (a zone outage); with --for, start them again afterwards."""
    state = _state(dir)
    try:
        seconds = parse_duration(for_) if for_ is not None else None
        killed, line = kill_zone(state, zone)
        typer.echo(line)
        if seconds is None:
            return
        time.sleep(seconds)
        start_brokers(state, killed)
        write_state(state, amq_home(), claim_home=False)
        typer.echo(f"{stamp()} zone {zone} up: started broker(s) {', '.join(map(str, killed))} again")
    except FaultError as e:
        raise _fail(str(e)) from None
    except ClusterError as e:
        raise _fail(f"could not start zone {zone} again: {e}") from None


@app.command("wal-tear")
def wal_tear(
    node: Annotated[int, typer.Argument(help="The broker whose WAL to damage; it must be stopped.")],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="tail: a half-written frame after the last one (a crash mid-write); "
            "last: cut the last frame in half (loses its records).",
        ),
    ] = "tail",
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    dir: DirOption = None,
) -> None:
    """Tear a stopped broker's WAL tail mid-frame (file and nfs WALs)."""
    state = _state(dir)
    try:
        typer.echo(tear_wal(state, node, mode, seed))
    except FaultError as e:
        raise _fail(str(e)) from None


@app.command()
def trials(
    count: Annotated[int, typer.Option("--count", help="How many faults to inject, one after the other.")] = 10,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Decides the faults; printed so a run can be repeated.")
    ] = None,
    faults: Annotated[
        str | None,
        typer.Option(
            "--faults", help="Fault kinds to draw from: kill,pause,s3,zone,tear (default: all the WAL allows)."
        ),
    ] = None,
    wal: Annotated[str, typer.Option("--wal", help="nfs or s3 (or file: no zone router).")] = "nfs",
    brokers: Annotated[int, typer.Option("--brokers", help="Brokers, in up to 3 zones.")] = 3,
    rate: Annotated[float, typer.Option("--rate", help="Records per second per producer (3 producers).")] = 300.0,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the report here.")] = None,
    dir: Annotated[
        str | None, typer.Option("--dir", help="An empty directory for the cluster (default: a temp dir).")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the cluster directory (logs) afterwards.")] = False,
) -> None:
    """Randomized faults under idempotent acks=all load, then every acknowledged record checked.

    Starts a cluster of its own; exits 2 if a record was lost, duplicated, reordered or moved,
    or the cluster did not recover, printing the seed that reproduces the run."""
    import random

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from automq_cli.chaos.trials import (
        Trial,
        TrialsOptions,
        check_options,
        default_faults,
        parse_fault_kinds,
        render,
        run_trials,
    )
    from automq_cli.cluster.launch import ClusterError

    try:
        kinds = parse_fault_kinds(faults if faults is not None else default_faults(wal), wal)
        opts = TrialsOptions(count=count, seed=seed if seed is not None else random.randrange(1 << 31),
                             faults=kinds, wal=wal, brokers=brokers, rate=rate, dir=dir, keep=keep)  # fmt: skip
        check_options(opts)
        if json_out is not None and not Path(json_out).expanduser().resolve().parent.is_dir():
            raise FaultError(f"--json {json_out}: no such directory")
    except FaultError as e:
        raise _fail(str(e)) from None

    err = Console(stderr=True)
    err.print(f"seed {opts.seed}: {count} trials of {','.join(kinds)} on the {wal} WAL, {brokers} brokers")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:  # fmt: skip
        task = progress.add_task("starting the cluster", total=count)

        def say(line: str) -> None:
            progress.update(task, description=line)

        def advance(trial: Trial) -> None:
            rec = "did not recover" if trial.recovery_s is None else f"recovered in {trial.recovery_s:.1f} s"
            progress.console.print(f"trial {trial.index + 1}/{count}: {trial.what}: {rec}, "
                                   f"max gap {trial.max_gap_s:.1f} s, {trial.acked} acked")  # fmt: skip
            progress.update(task, advance=1, description="trials")

        try:
            report = run_trials(opts, say, advance)
        except (FaultError, ClusterError) as e:
            raise _fail(f"{e} (seed {opts.seed})") from None
    out = Console()
    # Piped output gets rich's 80 columns, which folds the table; a file can take it wide.
    render(report, out if out.is_terminal else Console(width=150))
    if json_out is not None:
        Path(json_out).expanduser().write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if not report.ok:
        kept = f" (cluster logs kept in {report.cluster_dir})" if report.cluster_dir else ""
        typer.echo(f"amq chaos: VIOLATIONS with seed {opts.seed}; reproduce: {report.command}{kept}", err=True)
        raise typer.Exit(2)
