"""`amq reassign`: move partitions between brokers by metadata (docs/reassign.md).

Two ways in, one mechanism (Kafka's AlterPartitionReassignments, so Kafka's own admin
clients can do the same):

    amq reassign --topic t --partition 0-5 --to 2 [--timeline]
    amq reassign --generate --topics-to-move-json-file f --broker-list 1,2
    amq reassign --execute|--verify|--cancel --reassignment-json-file plan.json

Plans use kafka-reassign-partitions.sh's JSON. amq keeps one copy of each partition, in
shared storage, so every replica list names exactly one broker: the new leader. A plan is
checked whole before anything moves; a bad entry moves nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

WAIT_S = 30.0


class ReassignError(Exception):
    """One line for the user; exit 1."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"amq reassign: error: {message}", err=True)
    raise typer.Exit(1)


@dataclass
class Cluster:
    """What Metadata says: brokers and each partition's leader."""

    brokers: set[int]
    leaders: dict[tuple[str, int], int]
    topics: dict[str, int]  # name -> partition count


def _metadata(wire: Any, topics: list[str]) -> Cluster:
    """Metadata of the named topics (by name: a listing of all topics leaves internal ones out)."""
    from engine.protocol.messages import MetadataRequest

    names = [MetadataRequest.MetadataRequestTopic(name=n) for n in sorted(set(topics))]
    md = wire.request(MetadataRequest(topics=names, allow_auto_topic_creation=False), 4)
    found = [t for t in md.topics if t.error_code == 0]
    leaders = {(t.name, p.partition_index): p.leader_id for t in found for p in t.partitions}
    return Cluster({b.node_id for b in md.brokers}, leaders, {t.name: len(t.partitions) for t in found})


def _plan_topics(path: str | None) -> list[str]:
    """The topic names a plan file mentions (checked properly by _read_plan)."""
    if path is None:
        return []
    data = _read_json(path, "the reassignment plan")
    entries = data.get("partitions") if isinstance(data, dict) else None
    return [e["topic"] for e in entries or [] if isinstance(e, dict) and isinstance(e.get("topic"), str)]


def _partition_spec(spec: str, count: int, topic: str) -> list[int]:
    """'3', '0-5', '1,4,7' -> partition indexes of a topic with `count` partitions."""
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ReassignError(f"--partition {spec!r}: expected N, N-M or a comma-separated list") from None
        if first > last or first < 0:
            raise ReassignError(f"--partition {spec!r}: {part.strip()!r} is not a range of partitions")
        out.extend(range(first, last + 1))
    missing = [i for i in out if i >= count]
    if missing:
        raise ReassignError(f"topic {topic} has {count} partitions (0-{count - 1}): no partition {missing[0]}")
    return sorted(set(out))


def _plan_json(moves: list[tuple[str, int, int]]) -> str:
    parts = [{"topic": t, "partition": p, "replicas": [b], "log_dirs": ["any"]} for t, p, b in moves]
    return json.dumps({"version": 1, "partitions": parts}, separators=(",", ":"))


def _read_json(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as e:
        raise ReassignError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReassignError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _read_plan(path: str, cluster: Cluster) -> list[tuple[str, int, int]]:
    """A kafka-reassign-partitions.sh plan, checked against the cluster; any problem is an error."""
    data = _read_json(path, "the reassignment plan")
    entries = data.get("partitions") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ReassignError(f'{path}: expected {{"version": 1, "partitions": [...]}}')
    moves: list[tuple[str, int, int]] = []
    seen: set[tuple[str, int]] = set()
    for n, e in enumerate(entries):
        where = f"{path}: partitions[{n}]"
        if not isinstance(e, dict):
            raise ReassignError(f"{where}: expected an object with topic, partition and replicas")
        topic, index, replicas = e.get("topic"), e.get("partition"), e.get("replicas")
        if not isinstance(topic, str) or not isinstance(index, int) or isinstance(index, bool):
            raise ReassignError(f"{where}: needs a string topic and an integer partition")
        if not isinstance(replicas, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in replicas):
            raise ReassignError(f"{where} ({topic}-{index}): replicas must be a list of broker ids")
        if len(replicas) != 1:
            raise ReassignError(
                f"{where} ({topic}-{index}): replicas {replicas} name {len(replicas)} brokers; amq keeps one copy "
                "of each partition, in shared storage, so name exactly one (the new leader)"
            )
        if topic not in cluster.topics:
            raise ReassignError(f"{where}: topic {topic!r} does not exist")
        if not 0 <= index < cluster.topics[topic]:
            raise ReassignError(f"{where}: topic {topic} has no partition {index} (it has {cluster.topics[topic]})")
        if replicas[0] not in cluster.brokers:
            known = ", ".join(str(b) for b in sorted(cluster.brokers))
            raise ReassignError(f"{where} ({topic}-{index}): broker {replicas[0]} is unknown (brokers: {known})")
        if (topic, index) in seen:
            raise ReassignError(f"{where}: {topic}-{index} appears twice")
        seen.add((topic, index))
        moves.append((topic, index, replicas[0]))
    if not moves:
        raise ReassignError(f"{path}: the plan lists no partitions")
    return moves


def _alter(wire: Any, moves: list[tuple[str, int, int]]) -> None:
    """AlterPartitionReassignments; target -1 cancels. Any refused move is an error (and moved nothing)."""
    from engine.protocol import ErrorCode
    from engine.protocol.messages import AlterPartitionReassignmentsRequest as Req

    by_topic: dict[str, list[Any]] = {}
    for topic, index, target in moves:
        replicas = None if target < 0 else [target]
        by_topic.setdefault(topic, []).append(Req.ReassignablePartition(index, replicas))
    req = Req(timeout_ms=int(WAIT_S * 1000), topics=[Req.ReassignableTopic(t, ps) for t, ps in by_topic.items()])
    res = wire.request(req, 0)
    if res.error_code:
        raise ReassignError(f"{ErrorCode(res.error_code).name}: {res.error_message or 'refused'}")
    refused = [
        (t.name, p.partition_index, p.error_code, p.error_message)
        for t in res.responses
        for p in t.partitions
        if p.error_code
    ]
    # The first refusal is the cause; the others only say they were not started because of it.
    refused.sort(key=lambda r: r[2] == ErrorCode.INVALID_REQUEST and "not started" in (r[3] or ""))
    if refused:
        topic, index, code, message = refused[0]
        raise ReassignError(f"{topic}-{index}: {ErrorCode(code).name}: {message or ''}".rstrip(": "))


def _in_progress(wire: Any) -> set[tuple[str, int]]:
    from engine.protocol.messages import ListPartitionReassignmentsRequest

    res = wire.request(ListPartitionReassignmentsRequest(topics=None), 0)
    return {(t.name, p.partition_index) for t in res.topics for p in t.partitions}


def _wait(wire: Any, moves: list[tuple[str, int, int]], progress: bool) -> float:
    """Until every move is done (the new leader in Metadata); returns the seconds it took."""
    from rich.progress import Progress

    started = time.monotonic()
    wanted = {(t, p): b for t, p, b in moves}
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("moving partitions", total=len(wanted))
        while True:
            moving = _in_progress(wire)
            leaders = _metadata(wire, [t for t, _ in wanted]).leaders
            done = [k for k, b in wanted.items() if k not in moving and leaders.get(k) == b]
            bar.update(task, completed=len(done))
            if len(done) == len(wanted):
                return time.monotonic() - started
            if time.monotonic() - started > WAIT_S:
                late = sorted(f"{t}-{p}" for (t, p) in wanted if (t, p) not in done)
                raise ReassignError(f"not done after {WAIT_S:.0f}s: {', '.join(late[:10])}")
            time.sleep(0.05)


def _controller(dir: str | None, controller: str | None) -> str | None:
    if controller:
        return controller
    from automq_cli.cluster.state import amq_home, find_state

    state = find_state(amq_home(), dir)
    address = (state or {}).get("controller")
    return str(address) if address else None


def _timeline(address: str | None, moves: list[tuple[str, int, int]], since_ms: int) -> list[dict[str, Any]]:
    """The controller's record of these moves, once each new leader has reported."""
    from engine.controller import api
    from engine.controller.rpc import ControllerUnavailable, RpcError, request_sync

    if address is None:
        raise ReassignError(
            "--timeline needs the controller's address: run on the cluster's machine or pass --controller"
        )
    wanted = {(t, p) for t, p, _ in moves}
    deadline = time.monotonic() + 5.0
    while True:
        try:
            records = request_sync(address, api.ListMoves()).moves
        except (ControllerUnavailable, RpcError) as e:
            raise ReassignError(f"controller {address}: {e}") from None
        latest: dict[tuple[str, int], api.MoveRecord] = {}
        for m in records:
            if (m.topic, m.partition) in wanted and m.requested_ms >= since_ms - 1000:
                latest[(m.topic, m.partition)] = m
        # The first produce after the move is reported when it happens: wait a moment for it.
        complete = all(m.first_append_ms or m.state in ("cancelled", "failed") for m in latest.values())
        if (len(latest) == len(wanted) and complete) or time.monotonic() > deadline:
            return [_phases(m) for _, m in sorted(latest.items())]
        time.sleep(0.1)


def _phases(m: Any) -> dict[str, Any]:
    def gap(a: int, b: int) -> int | None:
        return b - a if a and b else None

    return {
        "topic": m.topic,
        "partition": m.partition,
        "from": m.source,
        "to": m.target,
        "state": m.state,
        "fence_ms": gap(m.requested_ms, m.drained_ms),
        "upload_ms": gap(m.drained_ms, m.released_ms),
        "switch_ms": gap(m.released_ms, m.moved_ms),
        "open_ms": gap(m.moved_ms, m.opened_ms),
        "first_produce_ms": gap(m.opened_ms, m.first_append_ms),
        "total_ms": gap(m.requested_ms, m.first_append_ms or m.opened_ms),
        "uploaded_bytes": m.uploaded_bytes,
        "from_snapshot": m.from_snapshot,
        "reason": m.reason,
    }


def _print_timeline(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Move timeline (ms)")
    for col in ("partition", "fence", "upload", "switch", "open", "1st produce", "total", "uploaded", "snapshot"):
        table.add_column(col, justify="left" if col == "partition" else "right")

    def ms(v: int | None) -> str:
        return "-" if v is None else str(v)

    for r in rows:
        table.add_row(
            f"{r['topic']}-{r['partition']} {r['from']}→{r['to']}", ms(r["fence_ms"]), ms(r["upload_ms"]),
            ms(r["switch_ms"]), ms(r["open_ms"]), ms(r["first_produce_ms"]), ms(r["total_ms"]),
            f"{r['uploaded_bytes']:,} B", "yes" if r["from_snapshot"] else "no",
        )  # fmt: skip
    Console(width=max(100, Console().width)).print(table)
    for r in rows:
        if r["reason"]:
            typer.echo(f"{r['topic']}-{r['partition']}: {r['state']}: {r['reason']}")


def reassign(
    topic: Annotated[str | None, typer.Option("--topic", help="The topic whose partitions move.")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="N, N-M or N,M,... (with --topic).")] = None,
    all_partitions: Annotated[bool, typer.Option("--all", help="Every partition of --topic.")] = False,
    to: Annotated[int | None, typer.Option("--to", help="The broker that leads them next.")] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Propose a plan (Kafka's format).")] = False,
    execute: Annotated[bool, typer.Option("--execute", help="Apply a plan file.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Check that a plan file's moves are done.")] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Cancel a plan file's moves still under way.")] = False,
    topics_file: Annotated[
        str | None, typer.Option("--topics-to-move-json-file", help='{"topics": [{"topic": "t"}], "version": 1}')
    ] = None,
    broker_list: Annotated[str | None, typer.Option("--broker-list", help="Brokers to spread over: 1,2")] = None,
    plan_file: Annotated[str | None, typer.Option("--reassignment-json-file", help="A plan (Kafka's format).")] = None,
    timeline: Annotated[bool, typer.Option("--timeline", help="Per partition: each phase of the move in ms.")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the moves started.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="host:port[,...]; default: local cluster")
    ] = None,
    controller: Annotated[
        str | None, typer.Option("--controller", help="Controller host:port (for --timeline).")
    ] = None,
    dir: Annotated[str | None, typer.Option("--dir", help="The local cluster's directory.")] = None,
) -> None:
    """Move partitions to other brokers (metadata only: no data is copied)."""
    from automq_cli.kafka_wire import KafkaWire, WireError
    from automq_cli.perf.errors import PerfError
    from automq_cli.perf.target import resolve_target

    modes = [m for m, on in (("--generate", generate), ("--execute", execute), ("--verify", verify),
                             ("--cancel", cancel)) if on]  # fmt: skip
    try:
        if len(modes) > 1:
            raise ReassignError(f"choose one of {', '.join(modes)}")
        if not modes and topic is None:
            raise ReassignError("say what to move: --topic T --partition N --to B, or --execute with a plan file")
        try:
            bs = resolve_target(bootstrap).bootstrap
        except PerfError as e:
            raise ReassignError(str(e)) from None
        with KafkaWire(bs) as wire:
            if generate:
                names = [e["topic"] for e in _topics_to_move(topics_file)]
            else:
                names = [topic] if topic is not None else _plan_topics(plan_file)
            cluster = _metadata(wire, names)
            if generate:
                _generate(cluster, topics_file, broker_list, as_json)
                return
            if verify or cancel:
                if plan_file is None:
                    raise ReassignError(f"{modes[0]} needs --reassignment-json-file")
                plan = _read_plan(plan_file, cluster)
                (_verify if verify else _cancel)(wire, cluster, plan, as_json)
                return
            if execute:
                if plan_file is None:
                    raise ReassignError("--execute needs --reassignment-json-file")
                moves = _read_plan(plan_file, cluster)
            else:
                moves = _simple_moves(cluster, topic, partition, all_partitions, to)
            _move(wire, cluster, moves, execute, timeline, no_wait, as_json, _controller(dir, controller))
    except (ReassignError, WireError) as e:
        _fail(str(e))


def _simple_moves(
    cluster: Cluster, topic: str | None, partition: str | None, all_partitions: bool, to: int | None
) -> list[tuple[str, int, int]]:
    assert topic is not None
    if topic not in cluster.topics:
        raise ReassignError(f"topic {topic!r} does not exist")
    if to is None:
        raise ReassignError("--to B: the broker that leads the partitions next")
    if to not in cluster.brokers:
        raise ReassignError(f"broker {to} is unknown (brokers: {', '.join(str(b) for b in sorted(cluster.brokers))})")
    if all_partitions == (partition is not None):
        raise ReassignError("give either --partition N[-M] or --all")
    count = cluster.topics[topic]
    indexes = list(range(count)) if all_partitions else _partition_spec(partition or "", count, topic)
    return [(topic, i, to) for i in indexes]


def _move(
    wire: Any, cluster: Cluster, moves: list[tuple[str, int, int]], plan_mode: bool, timeline: bool, no_wait: bool,
    as_json: bool, controller: str | None,
) -> None:  # fmt: skip
    current = [(t, p, cluster.leaders.get((t, p), -1)) for t, p, _ in moves]
    if plan_mode and not as_json:
        typer.echo("Current partition replica assignment\n")
        typer.echo(_plan_json(current))
        typer.echo("\nSave this to use as the --reassignment-json-file option during rollback")
    since_ms = int(time.time() * 1000)
    _alter(wire, moves)
    names = ",".join(f"{t}-{p}" for t, p, _ in moves)
    if plan_mode and not as_json:
        typer.echo(f"Successfully started partition reassignments for {names}")
    if no_wait:
        if as_json:
            typer.echo(json.dumps({"started": [{"topic": t, "partition": p, "to": b} for t, p, b in moves]}))
        return
    took = _wait(wire, moves, progress=not as_json)
    real = [m for m, (_, _, was) in zip(moves, current, strict=True) if m[2] != was]
    stayed = len(moves) - len(real)
    rows = _timeline(controller, real, since_ms) if timeline and real else []
    if as_json:
        out: dict[str, Any] = {
            "moved": len(real),
            "unchanged": stayed,
            "seconds": round(took, 3),
            "rollback": json.loads(_plan_json(current)),
        }
        if timeline:
            out["timeline"] = rows
        typer.echo(json.dumps(out, indent=2))
        return
    if timeline:
        _print_timeline(rows)
    moved = len(real)
    typer.echo(
        f"Moved {moved} partition{'s' * (moved != 1)} in {took:.2f} s"
        + (f" ({stayed} already there)" if stayed else "")
    )


def _generate(cluster: Cluster, topics_file: str | None, broker_list: str | None, as_json: bool) -> None:
    if broker_list is None:
        raise ReassignError("--generate needs --topics-to-move-json-file and --broker-list")
    entries = _topics_to_move(topics_file)
    try:
        brokers = [int(b) for b in broker_list.split(",") if b.strip()]
    except ValueError:
        raise ReassignError(f"--broker-list {broker_list!r}: expected broker ids like 1,2") from None
    unknown = [b for b in brokers if b not in cluster.brokers]
    if unknown or not brokers:
        raise ReassignError(f"--broker-list: unknown brokers {unknown} (brokers: {sorted(cluster.brokers)})")
    current: list[tuple[str, int, int]] = []
    for e in entries:
        name = e["topic"]
        if name not in cluster.topics:
            raise ReassignError(f"{topics_file}: topic {name!r} does not exist")
        current += [(name, i, cluster.leaders.get((name, i), -1)) for i in range(cluster.topics[name])]
    # Round robin over the listed brokers, as kafka-reassign-partitions.sh does, starting where it keeps most.
    proposed = [(t, p, brokers[n % len(brokers)]) for n, (t, p, _) in enumerate(current)]
    if as_json:
        typer.echo(
            json.dumps({"current": json.loads(_plan_json(current)), "proposed": json.loads(_plan_json(proposed))})
        )
        return
    typer.echo("Current partition replica assignment")
    typer.echo(_plan_json(current))
    typer.echo("\nProposed partition reassignment configuration")
    typer.echo(_plan_json(proposed))


def _topics_to_move(topics_file: str | None) -> list[dict[str, Any]]:
    if topics_file is None:
        raise ReassignError("--generate needs --topics-to-move-json-file and --broker-list")
    data = _read_json(topics_file, "the topics file")
    entries = data.get("topics") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("topic"), str)
                                                for e in entries):  # fmt: skip
        raise ReassignError(f'{topics_file}: expected {{"topics": [{{"topic": "name"}}, ...], "version": 1}}')
    return entries


def _verify(wire: Any, cluster: Cluster, plan: list[tuple[str, int, int]], as_json: bool) -> None:
    moving = _in_progress(wire)
    states = []
    for t, p, b in plan:
        if (t, p) in moving:
            states.append((t, p, "in progress", f"Reassignment of partition {t}-{p} is still in progress."))
        elif cluster.leaders.get((t, p)) == b:
            states.append((t, p, "complete", f"Reassignment of partition {t}-{p} is completed."))
        else:
            now = cluster.leaders.get((t, p))
            states.append((t, p, "not done", f"Reassignment of partition {t}-{p} is not done: broker {now} leads it."))
    if as_json:
        typer.echo(json.dumps([{"topic": t, "partition": p, "state": s} for t, p, s, _ in states]))
    else:
        typer.echo("Status of partition reassignment:")
        for *_, line in states:
            typer.echo(line)
    if any(s != "complete" for _, _, s, _ in states):
        raise typer.Exit(1)


def _cancel(wire: Any, cluster: Cluster, plan: list[tuple[str, int, int]], as_json: bool) -> None:
    moving = _in_progress(wire)
    doomed = [(t, p, -1) for t, p, _ in plan if (t, p) in moving]
    if doomed:
        _alter(wire, doomed)
    names = ",".join(f"{t}-{p}" for t, p, _ in doomed)
    if as_json:
        typer.echo(json.dumps({"cancelled": [{"topic": t, "partition": p} for t, p, _ in doomed]}))
    elif doomed:
        typer.echo(f"Successfully cancelled partition reassignments for: {names}")
    else:
        typer.echo("None of the plan's reassignments is in progress (amq moves finish within a second).")
