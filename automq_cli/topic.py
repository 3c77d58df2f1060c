"""`amq topic create|list|describe|alter|delete`: topic administration over the Kafka protocol.

Everything goes through confluent_kafka's AdminClient, so these commands work against any
Kafka-compatible cluster and exercise the broker's admin APIs the way other tools do; nothing
of the broker is imported. The bootstrap defaults to the local cluster's `$AMQ_HOME/cluster.json`
(read by automq_cli.perf.target, the one place that knows its format).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="topic",
    help="Create, list, describe, alter and delete topics (Kafka protocol).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_out = Console()

#: Seconds an admin request may take. An unreachable bootstrap must fail well within ~10 s.
TIMEOUT_S = 6.0

BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", "-b", help="host:port of a broker. Default: the local cluster (`amq cluster up`)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ConfigOpt = Annotated[
    list[str] | None, typer.Option("--config", "-c", help="Topic config KEY=VALUE (repeatable).", show_default=False)
]


class TopicError(Exception):
    """One line for the user; the command prints it and exits non-zero."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"amq topic: error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and exit 1 (never a traceback)."""
    from confluent_kafka import KafkaException

    try:
        yield
    except TopicError as e:
        _fail(str(e))
    except KafkaException as e:
        _fail(_kafka_message(e))
    except TimeoutError:
        _fail(f"the broker did not answer within {TIMEOUT_S + 2:.0f}s")


def _kafka_message(e: BaseException) -> str:
    err = e.args[0] if e.args else None
    text = err.str() if hasattr(err, "str") else str(e)
    # librdkafka's messages can carry a newline (broker-side detail); keep the promise of one line.
    return " ".join(str(text).split())


def _bootstrap(bootstrap: str | None) -> str:
    from automq_cli.perf.errors import PerfError
    from automq_cli.perf.target import resolve_target

    try:
        return resolve_target(bootstrap).bootstrap
    except PerfError as e:
        raise TopicError(str(e)) from None


def _admin(bootstrap: str | None) -> tuple[Any, Any]:
    """An AdminClient plus the cluster metadata; fetching metadata first proves the bootstrap answers."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bs = _bootstrap(bootstrap)
    quiet = logging.getLogger("amq.topic.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False  # librdkafka's connection-refused chatter would break the one-line promise
    admin = AdminClient(
        {
            "bootstrap.servers": bs,
            # Real leaders, not this zone's proxies (docs/zones.md): `amq topic describe` shows where data is led.
            "client.id": "amq-cli&automq_route=leader",
            "socket.connection.setup.timeout.ms": int(TIMEOUT_S * 1000),
            "error_cb": lambda _err: None,
            "logger": quiet,
        }
    )
    try:
        md = admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as e:
        raise TopicError(f"cannot reach a broker at {bs} ({_kafka_message(e)})") from None
    return admin, md


def _result(future: Any) -> Any:
    return future.result(timeout=TIMEOUT_S + 2)


def _parse_configs(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TopicError(f"--config {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def _topic(md: Any, name: str) -> Any:
    t = md.topics.get(name)
    if t is None or (t.error is not None and t.error.code() != 0):
        raise TopicError(f"topic {name!r} does not exist")
    return t


def _partitions(raw: str | None) -> int | None:
    # Parsed here rather than by click: its usage errors are a multi-line box, not one line.
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise TopicError(f"--partitions must be a whole number, got {raw!r}") from None
    if n < 1:
        raise TopicError(f"--partitions must be at least 1, got {n}")
    return n


# --- commands ------------------------------------------------------------------------------


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    partitions_arg: Annotated[
        str | None,
        typer.Option("--partitions", "-p", metavar="N", help="Partition count. Default: the broker's num.partitions."),
    ] = None,
    config: ConfigOpt = None,
    if_not_exists: Annotated[bool, typer.Option("--if-not-exists", help="Succeed if the topic exists.")] = False,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Create a topic."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    with _errors():
        partitions = _partitions(partitions_arg)
        configs = _parse_configs(config)
        admin, _md = _admin(bootstrap)
        # -1 lets the broker apply its own defaults (num.partitions, default.replication.factor).
        new = NewTopic(name, num_partitions=partitions or -1, replication_factor=-1, config=configs)
        try:
            _result(admin.create_topics([new], request_timeout=TIMEOUT_S)[name])
        except KafkaException as e:
            if if_not_exists and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                _out.print(f"topic {name} already exists", highlight=False)
                return
            raise
    _out.print(f"created topic {name}", highlight=False)


@app.command("list")
def list_(json_out: JsonOpt = False, bootstrap: BootstrapOpt = None) -> None:
    """List topics with their partition counts."""
    with _errors():
        _admin_client, md = _admin(bootstrap)
    rows = sorted((name, len(t.partitions)) for name, t in md.topics.items() if not name.startswith("__"))
    if json_out:
        typer.echo(json.dumps([{"name": n, "partitions": p} for n, p in rows], indent=2))
        return
    table = Table(title=f"topics ({len(rows)})")
    table.add_column("name")
    table.add_column("partitions", justify="right")
    for n, p in rows:
        table.add_row(n, str(p))
    _out.print(table)


def describe_topic(admin: Any, md: Any, name: str, all_configs: bool) -> dict[str, Any]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import ConfigResource, OffsetSpec, ResourceType

    t = _topic(md, name)
    tps = [TopicPartition(name, p) for p in sorted(t.partitions)]
    earliest = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=TIMEOUT_S)
    latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=TIMEOUT_S)
    partitions = []
    for tp in tps:
        p = t.partitions[tp.partition]
        partitions.append(
            {
                "partition": tp.partition,
                "leader": p.leader,
                "replicas": list(p.replicas),
                "isr": list(p.isrs),
                "log_start_offset": _result(earliest[tp]).offset,
                "high_watermark": _result(latest[tp]).offset,
            }
        )
    resource = ConfigResource(ResourceType.TOPIC, name)
    entries = _result(admin.describe_configs([resource], request_timeout=TIMEOUT_S)[resource])
    from engine.controller.configs import TOPIC_CONFIGS

    configs = {
        k: {"value": e.value, "default": bool(e.is_default), "source": _source_name(e.source),
            # Known from amq's own table (pure data); other clusters' keys are marked unknown (None).
            "enforced": TOPIC_CONFIGS[k].enforced if k in TOPIC_CONFIGS else None}
        for k, e in sorted(entries.items())
        if all_configs or not e.is_default
    }  # fmt: skip
    return {"name": name, "partitions": partitions, "configs": configs}


def _source_name(source: Any) -> str:
    from confluent_kafka.admin import ConfigSource

    try:
        return ConfigSource(int(source)).name.lower()
    except (TypeError, ValueError):
        return str(source)


@app.command()
def describe(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    all_configs: Annotated[bool, typer.Option("--all-configs", help="Show defaults too, not only overrides.")] = False,
    json_out: JsonOpt = False,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Partitions (leader, offsets) and configs of a topic."""
    with _errors():
        admin, md = _admin(bootstrap)
        info = describe_topic(admin, md, name, all_configs)
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"topic {name}: {len(info['partitions'])} partitions")
    for col in ("partition", "leader", "replicas", "isr", "log start", "high watermark"):
        table.add_column(col, justify="right")
    for p in info["partitions"]:
        table.add_row(
            str(p["partition"]), str(p["leader"]), ",".join(map(str, p["replicas"])), ",".join(map(str, p["isr"])),
            str(p["log_start_offset"]), str(p["high_watermark"]),
        )  # fmt: skip
    _out.print(table)
    configs = Table(title="configs" + ("" if all_configs else " (non-default; --all-configs for all)"))
    configs.add_column("name")
    configs.add_column("value")
    configs.add_column("default")
    configs.add_column("acted on")
    for k, c in info["configs"].items():
        acted = {True: "yes", False: "no (accepted, no effect)", None: "?"}[c.get("enforced")]
        configs.add_row(k, str(c["value"]), "yes" if c["default"] else "", acted)
    _out.print(configs)


@app.command()
def alter(
    name: Annotated[str, typer.Argument(help="Topic name.")],
    partitions_arg: Annotated[
        str | None, typer.Option("--partitions", "-p", metavar="N", help="New (larger) partition count.")
    ] = None,
    config: ConfigOpt = None,
    delete_config: Annotated[
        list[str] | None,
        typer.Option("--delete-config", help="Config KEY to reset to its default (repeatable).", show_default=False),
    ] = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Increase partitions and/or set or delete topic configs (incremental)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType

    done: list[str] = []
    with _errors():
        partitions = _partitions(partitions_arg)
        configs = _parse_configs(config)
        if partitions is None and not configs and not delete_config:
            raise TopicError("nothing to alter: give --partitions, --config or --delete-config")
        admin, md = _admin(bootstrap)
        current = len(_topic(md, name).partitions)
        if partitions is not None and partitions <= current:
            # Kafka can only add partitions; say so before the broker's terser INVALID_PARTITIONS.
            raise TopicError(f"--partitions {partitions}: topic {name!r} already has {current}; it can only grow")
        if configs or delete_config:
            ops = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()]
            ops += [ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE) for k in delete_config or []]
            resource = ConfigResource(ResourceType.TOPIC, name, incremental_configs=ops)
            _result(admin.incremental_alter_configs([resource], request_timeout=TIMEOUT_S)[resource])
            done.append("configs")
        if partitions is not None:
            _result(admin.create_partitions([NewPartitions(name, partitions)], request_timeout=TIMEOUT_S)[name])
            done.append(f"partitions {current} -> {partitions}")
    _out.print(f"altered topic {name}: {', '.join(done)}", highlight=False)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Topic names.")],
    if_exists: Annotated[bool, typer.Option("--if-exists", help="Skip topics that do not exist.")] = False,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Delete topics."""
    with _errors():
        admin, md = _admin(bootstrap)
        missing = [n for n in names if n not in md.topics]
        if missing and not if_exists:
            # Checked up front so that a typo deletes nothing rather than some of the list.
            raise TopicError(f"topic {missing[0]!r} does not exist")
        present = [n for n in names if n not in missing]
        if present:
            futures = admin.delete_topics(present, request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S)
            for n in present:
                _result(futures[n])
    for n in present:
        _out.print(f"deleted topic {n}", highlight=False)
    for n in missing:
        _out.print(f"topic {n} does not exist (skipped)", highlight=False)
