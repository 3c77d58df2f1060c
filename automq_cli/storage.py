"""`amq storage objects|stream|usage|verify`: what is in the bucket, and why.

Reads what the local cluster publishes: the storage metadata file (opened read-only), the
controller's metadata (RPC, for topic -> stream), the brokers' /metrics (S3 calls so far) and
the bucket itself (S3 API). Nothing of a running broker is imported into it.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="storage",
    help="Inspect the cluster's objects in S3: list, per stream, usage, verify.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_out = Console()

DirOpt = Annotated[
    str | None, typer.Option("--dir", help="The cluster's directory. Default: the cluster of `amq cluster up`.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class StorageCliError(Exception):
    """One line for the user; the command prints it and exits non-zero."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"amq storage: error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _errors() -> Iterator[None]:
    from engine.controller.rpc import ControllerUnavailable, RpcError
    from engine.postgres import PgError
    from engine.storage.errors import StorageError
    from engine.storage.objects.store import ObjectStoreError

    try:
        yield
    except StorageCliError as e:
        _fail(str(e))
    except ControllerUnavailable as e:
        _fail(f"the controller does not answer ({e}); is the cluster running? (`amq cluster status`)")
    except PgError as e:
        _fail(str(e))
    except (RpcError, StorageError, ObjectStoreError, OSError) as e:
        _fail(" ".join(str(e).split()) or type(e).__name__)


@dataclass
class Cluster:
    state: dict[str, Any]
    metadata_path: str  # an SQLite file or a postgresql:// URL
    s3: dict[str, Any]

    @property
    def controller(self) -> str:
        return str(self.state["controller"])


def _cluster(directory: str | None) -> Cluster:
    from automq_cli.cluster.state import find_state

    state = find_state(directory=directory)
    if state is None:
        where = f"in {directory}" if directory else "(no $AMQ_HOME/cluster.json)"
        raise StorageCliError(f"no local cluster found {where}: start one with `amq cluster up`, or pass --dir")
    brokers = state.get("brokers") or []
    if not brokers:
        raise StorageCliError("the cluster state lists no brokers")
    try:
        cfg = json.loads(Path(brokers[0]["config"]).read_text())
    except (OSError, ValueError, KeyError) as e:
        raise StorageCliError(f"cannot read broker 0's config: {e}") from None
    return Cluster(state, str(cfg["storage_metadata_path"]), dict(cfg["s3"]))


# --- gathering ------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything the commands show, read once."""

    objects: list[Any]  # ObjectRecord
    streams: dict[int, Any]  # stream id -> StreamMeta
    ranges: dict[int, list[Any]]  # stream id -> [RangeInfo]
    names: dict[int, tuple[str, int]]  # stream id -> (topic, partition)


async def _controller_topics(address: str) -> dict[str, list[int]]:
    """topic -> stream id of each partition, from the controller."""
    from engine.controller import api
    from engine.controller.rpc import ControllerClient

    client = ControllerClient.from_address(address)
    try:
        changes = await client.request(api.Metadata(since=0), timeout=5)
    finally:
        await client.close()
    snap = changes.snapshot or {}
    return {
        t["name"]: [int(p["stream_id"]) for p in sorted(t.get("partitions") or [], key=lambda p: p["index"])]
        for t in snap.get("topics") or []
    }


async def _gather(cluster: Cluster) -> Snapshot:
    from engine.storage.metadata import open_metadata_store

    topics = await _controller_topics(cluster.controller)
    md = open_metadata_store(cluster.metadata_path, read_only=True)
    try:
        objects = await md.list_objects()
        streams = {s.stream_id: s for s in await md.list_streams()}
        ranges = {sid: await md.stream_ranges(sid) for sid in streams}
    finally:
        await md.close()
    names = {sid: (t, i) for t, sids in topics.items() for i, sid in enumerate(sids)}
    return Snapshot(objects, streams, ranges, names)


async def _committed_keys(cluster: Cluster) -> set[str]:
    from engine.storage.metadata.interface import COMMITTED
    from engine.storage.metadata.sqlite import SqliteMetadataStore

    md = SqliteMetadataStore(cluster.metadata_path, read_only=True)
    try:
        return {o.key for o in await md.list_objects([COMMITTED])}
    finally:
        await md.close()


def _name(snap: Snapshot, sid: int) -> str:
    found = snap.names.get(sid)
    return f"{found[0]}-{found[1]}" if found else f"stream {sid}"


def _age(ms: int) -> str:
    s = max(0.0, time.time() - ms / 1000)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _emit(rows: list[dict[str, Any]], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r[c]) for c in columns))
    _out.print(table)


# --- commands ---------------------------------------------------------------------------------


@app.command()
def objects(
    topic: Annotated[str | None, typer.Option("--topic", "-t", help="Only objects holding this topic's data.")] = None,
    directory: DirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every object the metadata knows: key, kind, size, streams, age, state."""
    with _errors():
        snap = asyncio.run(_gather(_cluster(directory)))
        if topic is not None and topic not in {t for t, _ in snap.names.values()}:
            raise StorageCliError(f"topic {topic!r} does not exist")
        rows = []
        for o in snap.objects:
            held = [_name(snap, sid) for sid in o.streams]
            if topic is not None and not any(snap.names.get(sid, ("",))[0] == topic for sid in o.streams):
                continue
            rows.append({"key": o.key, "kind": o.kind or "-", "size": o.size, "streams": ", ".join(held) or "-",
                         "age": _age(o.created_ms), "state": o.state})  # fmt: skip
        _emit(rows, ["key", "kind", "size", "streams", "age", "state"], as_json, f"{len(rows)} objects")


@app.command()
def stream(
    topic: Annotated[str, typer.Argument(help="Topic name.")],
    partition: Annotated[int, typer.Argument(help="Partition index.")],
    directory: DirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A partition's stream: its offset ranges and the objects holding them."""
    with _errors():
        cluster = _cluster(directory)
        snap = asyncio.run(_gather(cluster))
        sid = next((s for s, (t, i) in snap.names.items() if t == topic and i == partition), None)
        if sid is None:
            if topic in {t for t, _ in snap.names.values()}:
                raise StorageCliError(f"topic {topic!r} has no partition {partition}")
            raise StorageCliError(f"topic {topic!r} does not exist")
        meta = snap.streams.get(sid)
        state = {o.object_id: o.state for o in snap.objects}
        rows = [{"start": r.start_offset, "end": r.end_offset, "bytes": r.size, "key": r.key, "kind": r.kind,
                 "state": state.get(r.object_id, "?")} for r in snap.ranges.get(sid, [])]  # fmt: skip
        if as_json:
            info = {"topic": topic, "partition": partition, "stream_id": sid,
                    "start_offset": meta.start_offset if meta else 0, "end_offset": meta.end_offset if meta else 0,
                    "ranges": rows}  # fmt: skip
            typer.echo(json.dumps(info, indent=2))
            return
        span = f"[{meta.start_offset}, {meta.end_offset})" if meta else "(nothing written yet)"
        title = f"{topic}-{partition}: stream {sid}, offsets {span} in S3, {len({r['key'] for r in rows})} objects"
        _emit(rows, ["start", "end", "bytes", "key", "kind", "state"], False, title)


def _s3_calls(state: dict[str, Any]) -> dict[str, int] | None:
    keys = ("s3_put_requests", "s3_get_requests", "s3_list_requests", "s3_delete_requests")
    total = dict.fromkeys(keys, 0)
    answered = False
    for url in state.get("metrics") or []:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                data = json.loads(r.read())
        except (OSError, ValueError):
            continue
        answered = True
        for k in keys:
            total[k] += int(data.get(k, 0))
    return total if answered else None


@app.command()
def usage(directory: DirOpt = None, as_json: JsonOpt = False) -> None:
    """Bytes and objects per topic, bytes waiting for deletion, S3 calls so far."""
    from engine.storage.metadata.interface import UNREFERENCED

    with _errors():
        cluster = _cluster(directory)
        snap = asyncio.run(_gather(cluster))
        per_topic: dict[str, dict[str, Any]] = defaultdict(lambda: {"bytes": 0, "objects": set()})
        for sid, ranges in snap.ranges.items():
            topic = snap.names.get(sid, (f"(deleted stream {sid})", 0))[0]
            for r in ranges:
                per_topic[topic]["bytes"] += r.size
                per_topic[topic]["objects"].add(r.key)
        waiting = [o for o in snap.objects if o.state == UNREFERENCED]
        stored = sum(o.size for o in snap.objects)
        out = {
            "topics": {t: {"bytes": v["bytes"], "objects": len(v["objects"])} for t, v in sorted(per_topic.items())},
            "objects": len(snap.objects),
            "stored_bytes": stored,
            "waiting_for_deletion": {"objects": len(waiting), "bytes": sum(o.size for o in waiting)},
            "s3_calls": _s3_calls(cluster.state),
        }
        if as_json:
            typer.echo(json.dumps(out, indent=2))
            return
        rows = [{"topic": t, "bytes": _bytes(v["bytes"]), "objects": v["objects"]} for t, v in out["topics"].items()]
        _emit(rows, ["topic", "bytes", "objects"], False, "data by topic (an object can hold several topics)")
        _out.print(f"objects: {len(snap.objects)}, stored: {_bytes(stored)}; waiting for deletion: "
                   f"{len(waiting)} objects, {_bytes(out['waiting_for_deletion']['bytes'])}")  # fmt: skip
        calls = out["s3_calls"]
        _out.print("S3 calls so far: " + (", ".join(f"{k[3:-9]} {v}" for k, v in calls.items()) if calls
                                           else "n/a (no broker answered on /metrics)"))  # fmt: skip


async def _verify(cluster: Cluster) -> tuple[list[str], dict[str, int]]:
    import crc32c

    from engine.storage.metadata.interface import COMMITTED, ObjectRecord
    from engine.storage.objects.format import OBJECT_PREFIX
    from engine.storage.objects.store import NoSuchKey, ObjectStoreConfig, make_object_store

    snap = await _gather(cluster)
    s3 = cluster.s3
    # boto3, not obstore: a short-lived process exits cleanly with it (obstore's runtime aborted
    # now and then at interpreter exit, seen as exit status -6 after a complete run).
    store = make_object_store(ObjectStoreConfig(endpoint=s3["endpoint"], bucket=s3["bucket"],
                                                access_key=s3["access_key"], secret_key=s3["secret_key"],
                                                region=s3["region"], prefix=s3["prefix"]), client="boto3")  # fmt: skip
    problems: list[str] = []
    try:
        listed = {i.key: i.size for i in await store.list(OBJECT_PREFIX)}
        committed = [o for o in snap.objects if o.state == COMMITTED]
        missing: list[ObjectRecord] = []
        for o in committed:
            if o.key not in listed:
                missing.append(o)
                continue
            if listed[o.key] != o.size:
                problems.append(f"{o.key}: {listed[o.key]} bytes in S3, the metadata says {o.size}")
                continue
            if o.crc:
                try:
                    body = await store.get(o.key)
                except NoSuchKey:
                    missing.append(o)
                    continue
                if crc32c.crc32c(body) != o.crc:
                    problems.append(f"{o.key}: CRC32C mismatch")
        # On a running cluster compaction or retention may have replaced an object, and garbage
        # collection deleted it, since the metadata was read: missing is what it still references.
        if missing:
            still = await _committed_keys(cluster)
            for o in (o for o in missing if o.key in still):
                names = ", ".join(_name(snap, s) for s in o.streams)
                problems.append(f"{o.key}: referenced ({names}) but not in S3")
        for sid, ranges in snap.ranges.items():
            meta = snap.streams[sid]
            live = [r for r in ranges if r.end_offset > meta.start_offset]
            pos = meta.start_offset
            for r in live:
                if r.start_offset > pos:
                    problems.append(f"{_name(snap, sid)}: offsets [{pos}, {r.start_offset}) are in no object")
                pos = max(pos, r.end_offset)
            if pos < meta.end_offset:
                problems.append(f"{_name(snap, sid)}: offsets [{pos}, {meta.end_offset}) are in no object")
        known = {o.key for o in snap.objects}
        counts = {"objects": len(committed), "streams": len(snap.streams),
                  "unreferenced": sum(o.state != COMMITTED for o in snap.objects),
                  "unknown_in_s3": sum(k not in known for k in listed)}  # fmt: skip
    finally:
        await store.close()
    return problems, counts


@app.command()
def verify(directory: DirOpt = None, as_json: JsonOpt = False) -> None:
    """Every referenced object exists with its size and CRC, and every stream's offsets are in objects."""
    with _errors():
        problems, counts = asyncio.run(_verify(_cluster(directory)))
    if as_json:
        typer.echo(json.dumps({"ok": not problems, "problems": problems, **counts}, indent=2))
    else:
        for p in problems:
            typer.echo(f"MISMATCH {p}")
        verdict = "OK" if not problems else f"{len(problems)} problems"
        typer.echo(f"verified {counts['objects']} referenced objects over {counts['streams']} streams: {verdict} "
                   f"({counts['unreferenced']} unreferenced waiting for deletion, "
                   f"{counts['unknown_in_s3']} unknown keys in S3 for garbage collection)")  # fmt: skip
    if problems:
        raise typer.Exit(1)
