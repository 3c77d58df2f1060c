"""`amq cluster up|down|status`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from automq_cli.cluster.launch import NOT_RUNNING, ClusterError, ClusterOptions, parse_zones, plan, start_cluster
from automq_cli.cluster.launch import stop_cluster as _stop_cluster
from automq_cli.cluster.state import amq_home, find_state, load_settings, remove_state
from automq_cli.cluster.status import cluster_status

app = typer.Typer(
    name="cluster",
    help="Start, stop and inspect the local amq cluster (SeaweedFS + controller + brokers in zones).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_err = Console(stderr=True)
_out = Console(soft_wrap=True, highlight=False)

DirOption = Annotated[
    str | None,
    typer.Option("--dir", "--data-dir", help="The cluster's directory (as given to `up`). Default: $AMQ_HOME's."),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"amq cluster: error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def up(
    dir: Annotated[
        str | None,
        typer.Option("--dir", "--data-dir", help="Cluster directory (data and logs). Default: $AMQ_HOME/data."),
    ] = None,
    brokers: Annotated[int | None, typer.Option("--brokers", help="Number of brokers. Default: one per zone.")] = None,
    zones: Annotated[
        str | None,
        typer.Option("--zones", help="Zones: a count (3 = az1,az2,az3) or names (a,b,c). Broker i is in zone i % Z."),
    ] = None,
    wal: Annotated[str | None, typer.Option("--wal", help="WAL kind: file, nfs or s3. Default: file.")] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="Broker 0's Kafka port, the others the next free ones; 0 = any. Default: 9092."),
    ] = None,
    session_timeout: Annotated[
        float | None,
        typer.Option("--session-timeout", help="Seconds without heartbeats before a broker is fenced. Default: 3."),
    ] = None,
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
    auto_balance: Annotated[
        bool | None,
        typer.Option("--auto-balance/--no-auto-balance", help="Move partitions to even brokers' load. Default: on."),
    ] = None,
    zone_router: Annotated[
        bool | None,
        typer.Option(
            "--zone-router/--no-zone-router",
            help="Clients talk only to brokers of their own zone; data reaches leaders through shared storage "
            "(nfs and s3 WALs). Default: on.",
        ),
    ] = None,
    zone_latency_ms: Annotated[
        int | None,
        typer.Option(
            "--zone-latency-ms",
            help="Simulated latency (ms each way) between zones: requests of clients in another zone and "
            "broker-to-broker messages across zones wait twice this long. Default: 0.",
        ),
    ] = None,
    autoscale: Annotated[
        str | None, typer.Option("--autoscale", help="MIN:MAX: add and remove brokers with the load (e.g. 1:4).")
    ] = None,
    target_mibps: Annotated[
        float | None, typer.Option("--target-mibps", help="With --autoscale: MiB/s (in + out) per broker to aim at.")
    ] = None,
    metadata: Annotated[
        str | None,
        typer.Option(
            "--metadata",
            help="Cluster metadata: `postgres` (a private PostgreSQL server in the cluster directory) or a "
            "postgresql:// URL of an existing server. Default: SQLite files.",
        ),
    ] = None,
    controllers: Annotated[
        int | None,
        typer.Option("--controllers", help="Controller processes (more than 1 needs --metadata). Default: 1."),
    ] = None,
    s3_faults: Annotated[
        bool | None,
        typer.Option(
            "--s3-faults/--no-s3-faults",
            help="Put the S3 fault proxy between brokers and S3, for `amq chaos object-store` (docs/chaos.md). "
            "Default: off.",
        ),
    ] = None,
) -> None:
    """Start SeaweedFS, the controller and the brokers in the background; return once clients can connect."""
    home = amq_home()
    directory = Path(dir or home / "data").expanduser()
    saved = load_settings(directory.resolve()) if directory.exists() else {}
    opts = ClusterOptions(**{k: v for k, v in saved.items() if k in ClusterOptions.__dataclass_fields__})
    opts.dir = str(directory)
    if config and not Path(config).is_file():
        raise _fail(f"--config {config}: no such file")
    given = {"wal": wal, "port": port, "s3_endpoint": s3_endpoint, "s3_bucket": s3_bucket, "access_key": access_key,
             "secret_key": secret_key, "region": region, "num_partitions": num_partitions,
             "session_timeout": session_timeout, "brokers": brokers, "auto_balance": auto_balance,
             "zone_router": zone_router, "zone_latency_ms": zone_latency_ms, "autoscale": autoscale,
             "target_mibps": target_mibps,
             "metadata": metadata, "controllers": controllers, "s3_faults": s3_faults,
             "broker_config": str(Path(config).resolve()) if config else None}  # fmt: skip
    for k, v in given.items():
        if v is not None:
            setattr(opts, k, v)
    if port is None and not saved:
        opts.port = 9092
    try:
        if zones is not None:
            opts.zones = parse_zones(zones)
            if brokers is None:
                opts.brokers = None  # --zones alone: one broker per zone
        plan(opts)  # every bad option is reported before anything starts
        with _err.status("starting the cluster") as status:
            state = start_cluster(opts, home, progress=lambda m: status.update(m))
    except ClusterError as e:
        raise _fail(str(e)) from None
    n = len(state["brokers"])
    _out.print(f"amq cluster is up: bootstrap [bold]{state['bootstrap']}[/bold]")
    if len(state.get("bootstrap_by_zone") or {}) > 1:
        for zone, addresses in state["bootstrap_by_zone"].items():
            _out.print(f"  zone {zone}: {addresses}")
    z = len(state["zones"])
    _out.print(f"  {n} broker{'s' if n != 1 else ''} in {z} zone{'s' if z != 1 else ''} ({', '.join(state['zones'])}); "
               f"WAL: {state['wal_kind']}; S3: {state['s3_endpoint']}")  # fmt: skip
    if state.get("s3_proxy"):
        _out.print(f"  S3 fault proxy: brokers reach S3 through {state['s3_proxy']} (`amq chaos object-store --help`)")
    if state.get("metadata"):
        ctl = state["controller"].split(",")
        _out.print(f"  metadata: {state['metadata']}; controllers: {', '.join(ctl)}")
    if z > 1:
        if state["wal_kind"] == "file":
            _out.print("  zone router: off: the file WAL is each broker's own disk, nothing is shared to relay "
                       "through, so clients reach leaders in other zones (use --wal nfs or s3)")  # fmt: skip
        elif opts.zone_router:
            _out.print("  zone router: on: clients that name their zone (client.id automq_az=<zone>) talk only "
                       "to brokers of it")  # fmt: skip
        else:
            _out.print("  zone router: off (--no-zone-router)")
    _out.print(f"  data and logs: {state['dir']} (logs in {state['logs']})")
    _out.print(f"  metrics: {', '.join(state.get('metrics', []))}")
    stop_hint = "amq cluster down" + (f" --dir {state['dir']}" if dir else "")
    _out.print(f"  stop it with `{stop_hint}`; inspect it with `amq cluster status`")


@app.command()
def down(
    dir: DirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait after SIGTERM before SIGKILL.")] = 30.0,
) -> None:
    """Stop every process `amq cluster up` started (data is kept)."""
    home = amq_home()
    state = find_state(home, dir)
    if state is None:
        typer.echo(NOT_RUNNING + (f" in {dir}" if dir else ""), err=True)
        return
    with _err.status("stopping the cluster") as status:
        stopped = _stop_cluster(state, timeout=timeout, progress=lambda m: status.update(m))
    remove_state(home, state.get("dir") if dir else None)
    what = ", ".join(stopped) if stopped else "nothing was running"
    _out.print(f"amq cluster is down ({what}); data kept in {state.get('dir')}")


def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


_STATE_STYLE = {"running": "green", "stopped": "red", "fenced": "yellow", "shutting down": "yellow"}


def _rates(b: dict[str, Any]) -> str:
    if b.get("bytes_in_per_s") is None:
        return "-"
    return (f"{b['bytes_in_per_s'] / 2**20:.1f}/{b['bytes_out_per_s'] / 2**20:.1f}"
            f" ({b.get('requests_per_s') or 0:.0f} req/s)")  # fmt: skip


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


@app.command()
def status(
    dir: DirOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Brokers by zone, the controller, S3, bootstrap addresses and WAL use of the local cluster."""
    import json

    state = find_state(amq_home(), dir)
    if state is None:
        raise _fail(NOT_RUNNING + (f" in {dir}" if dir else ""))
    info = cluster_status(state)
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    _out.print(f"amq cluster in {info['dir']}: WAL {info['wal_kind']}, zones {', '.join(info['zones'])}")
    for zone in info["zones"]:
        # The zone is the table's title; the address must never be cut short.
        table = Table(title=f"zone {zone}", title_justify="left")
        width = max((len(str(b["address"] or "-")) for b in info["brokers"]), default=1)
        table.add_column("broker", justify="right")
        table.add_column("address", no_wrap=True, min_width=width)
        for col, justify in (
            ("state", "left"),
            ("partitions led", "right"),
            ("MiB/s in/out (req/s)", "right"),
            ("WAL", "left"),
            ("pid", "right"),
            ("RSS", "right"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]  # fmt: skip
        for b in (b for b in info["brokers"] if b["zone"] == zone):
            style = _STATE_STYLE.get(b["state"], "yellow")
            table.add_row(
                str(b["id"]), _dash(b["address"]), f"[{style}]{b['state']}[/{style}]",
                _dash(b["partitions_led"]) + (" (draining)" if b.get("draining") else ""), _rates(b),
                _dash(b["wal_kind"]), _dash(b["pid"]), _fmt_bytes(b["rss_bytes"]),
            )  # fmt: skip
        _out.print(table)
    ctl = info["controller"]
    cs = ctl["status"]
    line = f"controller: {_dash(ctl['address'])}, pid {_dash(ctl['pid'])}, {'alive' if ctl['alive'] else 'NOT running'}"
    if "error" in cs:
        line += f" ({cs['error']})" if ctl["alive"] else ""
    else:
        alive = sum(1 for b in cs.get("brokers") or [] if b.get("alive"))
        line += (f"; cluster {_dash(cs.get('cluster_id'))}, {alive}/{len(cs.get('brokers') or [])} brokers alive, "
                 f"{_dash(cs.get('topics'))} topics, {_dash(cs.get('partitions'))} partitions"
                 f" ({_dash(cs.get('offline_partitions'))} offline)")  # fmt: skip
    _out.print(line)
    s3 = info["s3"]
    if s3["embedded"]:
        s3_alive = "alive" if s3["alive"] else "NOT running"
        _out.print(f"S3: {_dash(s3['endpoint'])} (SeaweedFS, pid {s3['pid']}, {s3_alive})")
    else:
        _out.print(f"S3: {_dash(s3['endpoint'])} (external)")
    _out.print(f"bootstrap: {_dash(info['bootstrap'])} ({'answering' if info['kafka_ready'] else 'NOT answering'})")
    if len(info["bootstrap_by_zone"]) > 1:
        for zone, addresses in info["bootstrap_by_zone"].items():
            _out.print(f"  zone {zone}: {addresses}")
        st = info.get("storage") or {}
        if st.get("zone_router"):
            _out.print(f"zone router: on; {st.get('relayed_batches', 0):,} batches relayed through zone proxies, "
                       f"{st.get('relay_objects_kept', 0)} relay objects kept (docs/zones.md)")  # fmt: skip
        elif "zone_router" in st:
            _out.print("zone router: off (file WAL or --no-zone-router): clients reach leaders in other zones")
    for line in info["waiting"]:
        _out.print(f"[yellow]{line}[/yellow]")
    if "error" not in cs:
        moving = cs.get("moves_in_progress") or 0
        _out.print(
            f"auto-balancer: {'on' if cs.get('auto_balance') else 'off (--no-auto-balance)'}"
            + (f"; {moving} moves under way" if moving else "")
        )
        for line in (cs.get("balancer") or [])[-5:]:
            _out.print(f"  {line}")
    scaler = info.get("autoscaler")
    if scaler:
        pol = scaler.get("policy") or {}
        alive = "running" if scaler.get("alive") else "NOT running"
        _out.print(f"autoscaler: {pol.get('min_brokers')}:{pol.get('max_brokers')} brokers, target "
                   f"{pol.get('target_mibps')} MiB/s per broker ({alive})")  # fmt: skip
        for line in (scaler.get("decisions") or [])[-5:]:
            _out.print(f"  {line}")
    st = info.get("storage")
    if st:
        _out.print(
            f"WAL in use {_fmt_bytes(st.get('wal_used_bytes'))}, written {_fmt_bytes(st.get('wal_bytes_written'))}; "
            f"uploaded {_fmt_bytes(st.get('s3_put_bytes'))} in {_dash(st.get('objects_uploaded'))} objects; "
            f"{_dash(st.get('partitions_open'))} partitions open, {_dash(st.get('connections_active'))} connections"
        )


@app.command()
def balance(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and the spread it leads to; move nothing.")
    ] = False,
    dir: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Even out partitions and traffic over the brokers now (the auto-balancer does this on its own)."""
    from automq_cli.scale import balance as run_balance

    run_balance(dry_run, dir, as_json)


@app.command()
def traffic(
    dir: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        float | None, typer.Option("--watch", help="Refresh every this many seconds (Ctrl-C to stop).")
    ] = None,
) -> None:
    """Bytes between zones, by kind, as the brokers counted them (the zone ledger, docs/zones.md)."""
    import json

    from automq_cli.cluster.traffic import collect, render

    state = find_state(amq_home(), dir)
    if state is None:
        raise _fail(NOT_RUNNING + (f" in {dir}" if dir else ""))
    if watch is not None and not watch > 0:
        raise _fail(f"--watch must be more than 0 seconds, got {watch}")
    if as_json:
        typer.echo(json.dumps(collect(state), indent=2))
        return
    if watch is None:
        _out.print(render(collect(state)))
        return
    import time

    from rich.live import Live

    with Live(render(collect(state)), console=_out, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(watch)
                live.update(render(collect(state)))
        except KeyboardInterrupt:
            pass
