"""`amq perf`: OpenMessaging-Benchmark-style performance runs against any Kafka-compatible cluster."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from automq_cli.perf.errors import PerfError

app = typer.Typer(
    help="Measure throughput and latency of a Kafka-compatible cluster with OMB-style workloads.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DEFAULT_CATCH_UP_BACKLOG = "256MiB"  # laptop scale; OMB's catch-up workloads use hundreds of GB


def templates_dir() -> Path:
    # The repository's templates/ sits beside the package (editable installs and checkouts).
    return Path(__file__).resolve().parents[2] / "templates" / "workloads"


def _resolve_workload_path(arg: str) -> Path:
    path = Path(arg).expanduser()
    if path.exists() or path.suffix in (".yaml", ".yml") or os.sep in arg:
        return path
    for candidate in (templates_dir() / f"{arg}.yaml", templates_dir() / f"{arg}.yml"):
        if candidate.exists():
            return candidate
    return path


def _kv(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise PerfError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _writable(path: Path | None, flag: str) -> None:
    if path is not None and not path.expanduser().resolve().parent.is_dir():
        raise PerfError(f"{flag}: directory {str(path.expanduser().resolve().parent)!r} does not exist")


def _fail(message: str, code: int = 1) -> typer.Exit:
    # One line, never wrapped or decorated, so scripts and people can read it alike.
    sys.stderr.write(f"amq perf: {' '.join(message.split())}\n")
    sys.stderr.flush()
    return typer.Exit(code)


@app.command("run")
def run(
    workload_file: Annotated[
        str | None,
        typer.Argument(
            metavar="WORKLOAD",
            help="OMB workload YAML, or a template name from templates/workloads (e.g. steady-state).",
            show_default=False,
        ),
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option("--bootstrap", "-b", help="Kafka bootstrap host:port. Default: the local amq cluster."),
    ] = None,
    rate: Annotated[str | None, typer.Option(help="Total producer rate in msg/s (e.g. 20k); 0 = unlimited.")] = None,
    record_size: Annotated[str | None, typer.Option("--record-size", help="Record size, e.g. 1KiB, 64KiB.")] = None,
    duration: Annotated[str | None, typer.Option(help="Measured duration, e.g. 10s, 2m.")] = None,
    warmup: Annotated[str | None, typer.Option(help="Warmup before measuring, e.g. 5s; 0 to skip.")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions per topic.")] = None,
    topics: Annotated[int | None, typer.Option(help="Number of topics.")] = None,
    producers: Annotated[int | None, typer.Option(help="Producer processes per topic.")] = None,
    subscriptions: Annotated[int | None, typer.Option(help="Subscriptions (consumer groups) per topic.")] = None,
    consumers: Annotated[int | None, typer.Option(help="Consumer processes per subscription.")] = None,
    acks: Annotated[str | None, typer.Option(help="Producer acks: 0, 1 or all.")] = None,
    producer_config: Annotated[
        list[str] | None,
        typer.Option("--producer-config", "-P", help="librdkafka producer KEY=VALUE (repeatable)."),
    ] = None,
    consumer_config: Annotated[
        list[str] | None,
        typer.Option("--consumer-config", "-C", help="librdkafka consumer KEY=VALUE (repeatable)."),
    ] = None,
    topic_config: Annotated[
        list[str] | None, typer.Option("--topic-config", "-T", help="Topic config KEY=VALUE (repeatable).")
    ] = None,
    replication_factor: Annotated[int | None, typer.Option(help="Replication factor of created topics.")] = None,
    catch_up: Annotated[
        bool,
        typer.Option("--catch-up", help=f"Catch-up read mode (backlog {DEFAULT_CATCH_UP_BACKLOG} by default)."),
    ] = False,
    backlog: Annotated[
        str | None,
        typer.Option(help="Backlog to build in catch-up mode, e.g. 256MiB, 1GiB (implies --catch-up)."),
    ] = None,
    interval: Annotated[str, typer.Option(help="Reporting interval.")] = "1s",
    keep_topics: Annotated[bool, typer.Option("--keep-topics", help="Do not delete the topics at the end.")] = False,
    topic_prefix: Annotated[str, typer.Option(help="Prefix of created topic and group names.")] = "amq-perf",
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Write the JSON result here.")] = None,
    chart_out: Annotated[Path | None, typer.Option("--chart-out", help="Write a PNG chart here.")] = None,
    cluster_state: Annotated[
        Path | None,
        typer.Option("--cluster-state", help="Cluster state file. Default: $AMQ_HOME/cluster.json."),
    ] = None,
    metrics_url: Annotated[
        list[str] | None, typer.Option("--metrics-url", help="Extra JSON counters URL (repeatable).")
    ] = None,
    broker_pid: Annotated[
        list[int] | None, typer.Option("--broker-pid", help="Broker pid to sample CPU/RSS of (repeatable).")
    ] = None,
    connect_timeout: Annotated[str, typer.Option(help="Give up on an unreachable bootstrap after this.")] = "10s",
    drain_timeout: Annotated[str, typer.Option(help="How long consumers may take to read the rest.")] = "30s",
    name: Annotated[str | None, typer.Option(help="Name recorded in the result.")] = None,
    zones: Annotated[
        str | None,
        typer.Option("--zones", help="Spread clients over these zones (a,b,c); each names its zone (automq_az=)."),
    ] = None,
) -> None:
    """Run a workload: producers and consumers in separate processes, live figures, a summary."""
    from rich.console import Console

    # soft_wrap: summary lines stay whole in logs instead of wrapping at 80 columns.
    console = Console(soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 140  # logs: room for the latency table instead of rich's 80-column default
    try:
        from automq_cli.perf.chart import require_matplotlib, write_chart
        from automq_cli.perf.display import make_display, render_summary
        from automq_cli.perf.runner import Runner, RunOptions
        from automq_cli.perf.target import resolve_target
        from automq_cli.perf.units import parse_count, parse_duration, parse_size
        from automq_cli.perf.workload import Workload, load_workload

        warnings: list[str] = []
        if workload_file:
            workload, warnings = load_workload(_resolve_workload_path(workload_file))
        else:
            workload = Workload()
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if rate is not None:
            changes["producer_rate"] = parse_count(rate, "--rate")
        if record_size is not None:
            changes["message_size"] = parse_size(record_size, "--record-size")
        if duration is not None:
            changes["test_duration_s"] = parse_duration(duration, "--duration")
        if warmup is not None:
            changes["warmup_duration_s"] = parse_duration(warmup, "--warmup")
        for key, value in (
            ("partitions_per_topic", partitions),
            ("topics", topics),
            ("producers_per_topic", producers),
            ("subscriptions_per_topic", subscriptions),
            ("consumer_per_subscription", consumers),
            ("replication_factor", replication_factor),
        ):
            if value is not None:
                changes[key] = value
        prod_conf = {**workload.producer_config, **_kv(producer_config, "--producer-config")}
        if acks is not None:
            prod_conf["acks"] = acks
        changes["producer_config"] = prod_conf
        changes["consumer_config"] = {**workload.consumer_config, **_kv(consumer_config, "--consumer-config")}
        changes["topic_config"] = {**workload.topic_config, **_kv(topic_config, "--topic-config")}
        if backlog is not None:
            changes["consumer_backlog_size_bytes"] = parse_size(backlog, "--backlog")
            if changes["consumer_backlog_size_bytes"] <= 0:
                raise PerfError("--backlog must be positive")
        elif catch_up and not workload.catch_up:
            changes["consumer_backlog_size_bytes"] = parse_size(DEFAULT_CATCH_UP_BACKLOG)
        workload = workload.replace(**changes)
        workload.validate()
        interval_s = parse_duration(interval, "--interval")
        if interval_s < 0.1:
            raise PerfError("--interval must be at least 100ms")
        connect_s = parse_duration(connect_timeout, "--connect-timeout")
        drain_s = parse_duration(drain_timeout, "--drain-timeout")
        if connect_s <= 0 or drain_s < 0:
            raise PerfError("--connect-timeout must be positive and --drain-timeout not negative")
        _writable(json_out, "--json-out")
        _writable(chart_out, "--chart-out")
        if chart_out is not None:
            require_matplotlib()
        target = resolve_target(bootstrap, cluster_state, metrics_url, broker_pid)
        for warning in warnings:
            sys.stderr.write(f"amq perf: warning: {warning}\n")
        options = RunOptions(
            workload=workload,
            target=target,
            interval_s=interval_s,
            keep_topics=keep_topics,
            topic_prefix=topic_prefix,
            connect_timeout_s=connect_s,
            drain_timeout_s=drain_s,
            command="amq " + shlex.join(sys.argv[1:]),
            zones=_zones(zones, target),
        )
        display = make_display(console)
        try:
            result = Runner(options, display).run()
        finally:
            display.close()
        render_summary(result, console)
        if json_out is not None:
            try:
                json_out.expanduser().write_text(json.dumps(result, indent=2) + "\n")
            except OSError as exc:
                raise PerfError(f"cannot write {str(json_out)!r}: {exc.strerror}") from None
            console.print(f"result: {json_out}")
        if chart_out is not None:
            write_chart(result, chart_out.expanduser())
            console.print(f"chart: {chart_out}")
    except PerfError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; worker processes stopped and topics deleted", 130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("AMQ_PERF_DEBUG"):
            raise
        raise _fail(f"internal error: {type(exc).__name__}: {exc} (set AMQ_PERF_DEBUG=1 for the traceback)") from None


@app.command("workloads")
def workloads() -> None:
    """List the workload templates and what each models."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    table.add_column("name")
    table.add_column("models")
    for path in sorted(templates_dir().glob("*.yaml")):
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        table.add_row(path.stem, first)
    Console().print(table)


def _zones(spec: str | None, target: Any) -> list[str]:
    """--zones a,b,c: checked against the cluster's zones when the cluster is known."""
    if spec is None:
        return []
    zones = [z.strip() for z in spec.split(",") if z.strip()]
    if not zones:
        raise PerfError("--zones: name at least one zone, like az1,az2,az3")
    unknown = [z for z in zones if target.zones and z not in target.zones]
    if unknown:
        raise PerfError(f"--zones: the cluster has no zone {unknown[0]} (zones: {', '.join(target.zones)})")
    return zones
