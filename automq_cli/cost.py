"""`amq cost`: a monthly estimate for amq (by WAL kind) and Apache Kafka (RF 3), side by side.

Inputs come, in rising precedence, from the built-in default, a scenario file
(--scenario, templates/cost/*.yaml), a measured run (--from-run) and flags.
The model lives in engine/cost; this module only merges inputs and prints.
Every value flag is read as text and parsed by engine/cost, so a bad value is
one `amq cost: error: ...` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from engine.cost.errors import CostError
from engine.cost.inputs import DEFAULT_SCENARIO, build_inputs, list_scenarios, load_scenario, parse_profile
from engine.cost.model import LINE_KEYS, LINE_LABELS, Comparison, Estimate, Measured, compare, to_dict
from engine.cost.pricing import load_pricing, parse_overrides
from engine.cost.run import Run, load_run
from engine.cost.units import parse_rate_mib_s

app = typer.Typer(
    name="cost",
    help="Monthly cost of amq (S3, block-volume or FSx WAL) against Apache Kafka RF 3, line by line.",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)

_Opt = typer.Option


def _fail(message: str) -> typer.Exit:
    typer.echo(f"amq cost: error: {message}", err=True)
    return typer.Exit(2)


def _fraction(text: str, what: str) -> float:
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise CostError(f"{what} wants a fraction like 0.5 or 50%, got {text!r}") from None
    if not 0 <= value < 1:
        raise CostError(f"{what} must be in [0, 1) (0.5 = half the capacity kept free), got {text!r}")
    return value


def _profile_arg(text: str) -> list[str] | str:
    """A comma-separated list, or a YAML file holding a list (or a mapping with `profile:`)."""
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") or (path.exists() and "," not in text):
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise CostError(f"cannot read profile file {text!r}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise CostError(f"profile file {text!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if isinstance(data, dict):
            data = data.get("profile", data.get("workload", {}).get("profile"))
        if not isinstance(data, list):
            raise CostError(f"profile file {text!r} must hold a list of hourly write rates")
        return [str(v) for v in data]
    return text


def _assumptions(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CostError(f"--assume wants KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _apply_run(
    spec: dict[str, Any], run: Run, scale_to: str | None, flags: dict[str, Any]
) -> tuple[Measured, list[str]]:
    """Put the run's workload into the spec; return what was measured and notes saying what was not."""
    notes: list[str] = []
    work = spec.setdefault("workload", {})
    target = parse_rate_mib_s(scale_to, "--scale-to") if scale_to else run.produce_mib_s
    if target <= 0:
        raise CostError("--scale-to must be above 0")
    factor = target / run.produce_mib_s
    work.pop("profile", None)
    work.pop("write", None)
    work["write"] = target
    if flags["read"] is None and flags["fanout"] is None:
        work.pop("read", None)
        work["read_fanout"] = run.read_fanout
    if flags["zones"] is None and run.zones is not None:
        work["zones"] = run.zones
    if flags["wal"] is None and run.wal_kind is not None:
        spec.setdefault("amq", {})["wal"] = run.wal_kind
    spec["title"] = f"Measured run {Path(run.path).name}, priced at {target:,.0f} MiB/s written"
    notes.append(f"from run {run.path}: {run.produce_mib_s:,.2f} MiB/s produced, {run.consume_mib_s:,.2f} MiB/s "
                 f"consumed over {run.duration_s:,.0f} s, scaled ×{factor:,.4g} to {target:,.1f} MiB/s written")
    measured = run.measured
    zones = int(work.get("zones", 3))
    if measured.cross_zone_bytes_per_byte is not None and run.zones is not None and run.zones != zones:
        notes.append(f"the run had {run.zones} zone(s), the estimate {zones}: its cross-zone bytes do not carry "
                     f"over, so cross-zone traffic comes from the model's assumptions")
        measured = Measured(measured.source, measured.wal_kind, measured.s3_put_per_mib, measured.s3_get_per_mib,
                            measured.s3_list_per_mib, None)
    if run.missing:
        notes.append(f"not in the run: {', '.join(run.missing)}; those lines use the model's assumptions")
    if run.broker_cpu_percent is not None:
        notes.append(f"run broker CPU {run.broker_cpu_percent:.0f} %"
                     + (f", RSS {run.broker_rss_bytes / 2**20:,.0f} MiB" if run.broker_rss_bytes else "")
                     + " (shown, not priced: compute is sized from the instance's network)")
    return measured, notes


def _build_spec(scenario: str | None, flags: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(load_scenario(scenario) if scenario else DEFAULT_SCENARIO)
    if any(value not in (None, False, []) for key, value in flags.items() if key not in ("pricing", "price")):
        # The title describes the file's inputs; once flags change them it would mislead.
        spec["title"] = f"{spec['title']} (changed by flags)" if scenario and spec.get("title") else ""
    work = spec.setdefault("workload", {})
    amq = spec.setdefault("amq", {})
    kafka = spec.setdefault("kafka", {})
    if flags["profile"] is not None:
        if flags["write"] is not None:
            raise CostError("give either --write or --profile, not both (the profile's peak is the write rate)")
        work.pop("write", None)
        work["profile"] = _profile_arg(flags["profile"])
    elif flags["write"] is not None:
        write = parse_rate_mib_s(flags["write"], "--write")
        if work.get("profile") is not None:
            # Keep the scenario's daily shape, scaled so its peak is the stated rate.
            shape = parse_profile(work["profile"])
            peak = max(shape)
            work["profile"] = [v * write / peak if peak else write for v in shape]
        else:
            work["write"] = write
    if flags["read"] is not None and flags["fanout"] is not None:
        raise CostError("give either --read or --fanout, not both")
    if flags["read"] is not None:
        work.pop("read_fanout", None)
        work["read"] = flags["read"]
    if flags["fanout"] is not None:
        work.pop("read", None)
        work["read_fanout"] = flags["fanout"]
    for flag, key in (("retention", "retention"), ("zones", "zones"), ("partitions", "partitions")):
        if flags[flag] is not None:
            work[key] = flags[flag]
    if flags["wal"] is not None:
        amq["wal"] = flags["wal"]
    if flags["instance"] is not None:
        amq["instance_type"] = flags["instance"]
    if flags["instances"] is not None:
        amq["instances"] = flags["instances"]
    if flags["kafka_instance"] is not None:
        kafka["instance_type"] = flags["kafka_instance"]
    if flags["kafka_instances"] is not None:
        kafka["instances"] = flags["kafka_instances"]
    if flags["over_provisioning"] is not None:
        value = _fraction(flags["over_provisioning"], "--over-provisioning")
        amq["over_provisioning"] = value
        kafka["over_provisioning"] = value
    if flags["kafka_over_provisioning"] is not None:
        kafka["over_provisioning"] = _fraction(flags["kafka_over_provisioning"], "--kafka-over-provisioning")
    if flags["rack_aware"]:
        kafka["rack_aware_fetch"] = True
    assumptions = dict(amq.get("assumptions") or {})
    assumptions.update(_assumptions(flags["assume"]))
    if flags["no_zone_routing"]:
        assumptions["zone_routing"] = False
    amq["assumptions"] = assumptions
    if flags["pricing"] is not None:
        spec["pricing"] = flags["pricing"]
    prices = dict(spec.get("prices") or {})
    prices.update(parse_overrides(flags["price"]))
    spec["prices"] = prices
    return spec


def _console() -> Console:
    console = Console()
    # Piped output gets rich's 80 columns, which folds every quantity; a file or
    # a pager can take a wide table.
    return console if console.is_terminal else Console(width=150)


def _usd(x: float) -> str:
    if x == 0:
        return "$0"
    return f"${x:,.0f}" if abs(x) >= 1000 else f"${x:,.2f}"


def _visible(e: Estimate, key: str) -> bool:
    line = e.line(key)
    return not (key == "block_throughput" and line.usd == 0)


def _system_table(c: Comparison, e: Estimate) -> Table:
    table = Table(title=f"{e.title}: {_usd(e.total)} per month", title_justify="left", title_style="bold",
                  expand=False, show_lines=False)
    table.add_column("Line", no_wrap=True)
    table.add_column("Quantity", overflow="fold")
    table.add_column("Price", overflow="fold")
    table.add_column("USD / month", justify="right", no_wrap=True)
    for line in e.lines:
        if _visible(e, line.key):
            table.add_row(line.label, line.quantity, line.price, _usd(line.usd))
    table.add_row("[bold]Total[/bold]", "", "", f"[bold]{_usd(e.total)}[/bold]")
    if e.system != "kafka":
        s = c.saving(e)
        ratio = "∞" if math.isinf(s.ratio) else f"{s.ratio:,.1f}×"
        table.add_row("Saving vs Kafka", f"{s.percent:.1f} % (Kafka costs {ratio})", "", _usd(s.usd))
    return table


def _side_by_side(c: Comparison) -> Table:
    systems = [*c.amq, c.kafka]
    table = Table(title="Monthly cost, side by side (USD)", title_justify="left", title_style="bold")
    table.add_column("Line", no_wrap=True)
    for e in systems:
        table.add_column(e.title, justify="right", no_wrap=True)
    for key in LINE_KEYS:
        if key == "block_throughput" and all(e.line(key).usd == 0 for e in systems):
            continue
        table.add_row(LINE_LABELS[key], *[_usd(e.line(key).usd) for e in systems])
    table.add_row("[bold]Total[/bold]", *[f"[bold]{_usd(e.total)}[/bold]" for e in systems])
    savings = [c.saving(e) for e in c.amq]
    table.add_row("Saving vs Kafka", *[f"{s.percent:.1f} %" for s in savings], "—")
    table.add_row("Kafka costs", *["∞" if math.isinf(s.ratio) else f"{s.ratio:,.1f}×" for s in savings], "1×")
    return table


def _workload_line(c: Comparison, title: str) -> str:
    w = c.workload
    write = f"{w.peak_write:,.0f} MiB/s" if w.profile is None else \
        f"{w.peak_write:,.0f} MiB/s peak, {w.mean_write:,.1f} mean over the day"
    retention = f"{w.retention_hours / 24:g} days" if w.retention_hours % 24 == 0 else f"{w.retention_hours:g} h"
    head = f"[bold]{title}[/bold]\n" if title else ""
    return (f"{head}write {write}; read {w.peak_read:,.0f} MiB/s (fan-out {w.read_fanout:g}); retention "
            f"{retention}; {w.zones} zone(s); pricing {c.pricing}")


def _render(c: Comparison, title: str, brief: bool, console: Console) -> None:
    console.print(_workload_line(c, title))
    for note in c.notes:
        console.print(f"[dim]· {note}[/dim]")
    if not brief:
        for e in (*c.amq, c.kafka):
            console.print()
            console.print(_system_table(c, e))
            for note in e.notes:
                console.print(f"[dim]  · {note}[/dim]", overflow="fold")
    console.print()
    console.print(_side_by_side(c))


def _scenarios(console: Console) -> None:
    table = Table(title="Published scenarios (amq cost --scenario NAME)", title_justify="left")
    table.add_column("Name", no_wrap=True)
    table.add_column("Title")
    for path in list_scenarios():
        try:
            title = str(load_scenario(str(path)).get("title", ""))
        except CostError as exc:
            title = f"(unreadable: {exc})"
        table.add_row(path.stem, title)
    console.print(table)


@app.callback(invoke_without_command=True)
def cost(
    ctx: typer.Context,
    scenario: Annotated[
        str | None,
        _Opt("--scenario", "-s", metavar="NAME", help="Scenario NAME in templates/cost/ or a YAML path."),
    ] = None,
    write: Annotated[
        str | None,
        _Opt("--write", "-w", metavar="RATE", help="Write throughput, e.g. 100MiB/s, 1GiB/s (bare = MiB/s)."),
    ] = None,
    read: Annotated[str | None, _Opt("--read", metavar="RATE", help="Read throughput (instead of --fanout).")] = None,
    fanout: Annotated[
        str | None,
        _Opt("--fanout", metavar="X", help="Read fan-out: MiB read per MiB written (default 1)."),
    ] = None,
    retention: Annotated[
        str | None,
        _Opt("--retention", "-r", metavar="DURATION", help="Retention, e.g. 24h, 3d, 1w."),
    ] = None,
    zones: Annotated[str | None, _Opt("--zones", "-z", metavar="N", help="Availability zones (default 3).")] = None,
    wal: Annotated[
        str | None,
        _Opt("--wal", metavar="KIND", help="amq WAL kind: s3, file, nfs or all (default all)."),
    ] = None,
    instance: Annotated[
        str | None,
        _Opt("--instance", metavar="TYPE", help="amq broker instance type (default m7g.large)."),
    ] = None,
    instances: Annotated[
        str | None,
        _Opt("--instances", metavar="N|auto", help="amq broker count, or 'auto' to size it."),
    ] = None,
    kafka_instance: Annotated[
        str | None,
        _Opt("--kafka-instance", metavar="TYPE", help="Kafka broker instance type."),
    ] = None,
    kafka_instances: Annotated[
        str | None,
        _Opt("--kafka-instances", metavar="N|auto", help="Kafka broker count or 'auto'."),
    ] = None,
    over_provisioning: Annotated[
        str | None,
        _Opt("--over-provisioning", metavar="FRACTION", help="Capacity kept free, both systems: 0.5 or 50%."),
    ] = None,
    kafka_over_provisioning: Annotated[
        str | None,
        _Opt("--kafka-over-provisioning", metavar="FRACTION", help="Same, Kafka only (0.2 = 80% disk watermark)."),
    ] = None,
    profile: Annotated[
        str | None,
        _Opt(
            "--profile", metavar="RATES|FILE",
            help="Hourly write rates over a day: '24,24,...,1GiB/s' or a YAML file.",
        ),
    ] = None,
    partitions: Annotated[
        str | None,
        _Opt("--partitions", metavar="N", help="Partition count (for AKU sizing)."),
    ] = None,
    rack_aware: Annotated[
        bool,
        _Opt("--rack-aware", help="Kafka consumers fetch from their own zone (KIP-392)."),
    ] = False,
    no_zone_routing: Annotated[
        bool,
        _Opt("--no-zone-routing", help="amq clients do not name their zone."),
    ] = False,
    assume: Annotated[
        list[str] | None,
        _Opt("--assume", metavar="KEY=VALUE", help="Model assumption KEY=VALUE, e.g. upload_object_mib=16."),
    ] = None,
    pricing: Annotated[
        str | None,
        _Opt("--pricing", metavar="NAME|FILE", help="Pricing table: NAME in templates/pricing/ or a YAML path."),
    ] = None,
    price: Annotated[
        list[str] | None,
        _Opt(
            "--price", metavar="KEY=VALUE",
            help="Override a price KEY=VALUE, e.g. s3_standard.usd_per_1000_put=0.0055.",
        ),
    ] = None,
    from_run: Annotated[
        str | None,
        _Opt("--from-run", metavar="FILE", help="Price a measured `amq perf` result JSON."),
    ] = None,
    scale_to: Annotated[
        str | None,
        _Opt("--scale-to", metavar="RATE", help="With --from-run: target write throughput, e.g. 1GiB/s."),
    ] = None,
    as_json: Annotated[bool, _Opt("--json", help="Print JSON instead of tables.")] = False,
    brief: Annotated[bool, _Opt("--brief", help="Print only the side-by-side table.")] = False,
) -> None:
    """Estimate a month of amq and of Apache Kafka for the same workload, with the saving.

    With no options: 100 MiB/s in and out, 3 days, 3 zones, every amq WAL kind.
    """
    if ctx.invoked_subcommand is not None:
        return
    flags: dict[str, Any] = {
        "write": write, "read": read, "fanout": fanout, "retention": retention, "zones": zones, "wal": wal,
        "instance": instance, "instances": instances, "kafka_instance": kafka_instance,
        "kafka_instances": kafka_instances, "over_provisioning": over_provisioning,
        "kafka_over_provisioning": kafka_over_provisioning, "profile": profile, "partitions": partitions,
        "rack_aware": rack_aware, "no_zone_routing": no_zone_routing, "assume": assume or [],
        "pricing": pricing, "price": price or [],
    }
    try:
        if scale_to is not None and from_run is None:
            raise CostError("--scale-to needs --from-run (to scale a measured run)")
        if from_run is not None and (write is not None or profile is not None):
            raise CostError("with --from-run, give the target as --scale-to, not --write or --profile")
        spec = _build_spec(scenario, flags)
        measured: Measured | None = None
        notes: list[str] = []
        if from_run is not None:
            run = load_run(from_run)
            measured, notes = _apply_run(spec, run, scale_to, flags)
        inputs = build_inputs(spec)
        prices = load_pricing(inputs.pricing, inputs.price_overrides)
        comparison = compare(inputs.workload, inputs.amq, inputs.kafka, prices, measured,
                             notes=[*inputs.notes, *notes])
    except CostError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out = to_dict(comparison)
        out["title"] = inputs.title
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    _render(comparison, inputs.title, brief, _console())


@app.command("scenarios")
def scenarios() -> None:
    """List the published scenarios in templates/cost/."""
    _scenarios(_console())
