"""Metadata on SQLite vs PostgreSQL: the calls a broker makes, a broker's produce throughput,
controller failover.

    python benchmarks/metadata.py [--ops 400] [--streams 100] [--url postgresql://...]
    python benchmarks/metadata.py --part produce [--runs 3] [--records 200000]
    python benchmarks/metadata.py --part failover [--kills 10]

--part calls (the default): the storage metadata calls, timed one by one (below).
--part produce: one local one-broker cluster with SQLite metadata and one with `--metadata
postgres`, both up for the whole run; the same idempotent acks=all librdkafka producer of
--records x 1 KiB records (linger.ms=5, to a new 8-partition topic each run) against each in
turn, sqlite, postgres, sqlite, ..., so that noise on the machine hits both; records/s and MiB/s
of each run (first produce to last acknowledgement), the medians and their ratio.
--part failover: a local cluster with `--metadata postgres --controllers 2` (one broker, file
WAL, default lease of 3 s) under a light idempotent acks=all load; --kills times: find the
leader, kill -9 it, time until the standby answers as leader and until a CreateTopics through the
broker succeeds, then start the killed one again (`amq controller start NAME`'s function) as the
new standby. At the end every acknowledged record is read back.

The pattern is the uploader's and the WAL's:
- commit: `next_object_id` then `commit_objects` of one stream-set object holding a range of
  each of `--streams` streams (an upload of a busy broker), as the uploader does per upload;
- open_stream: a new owner reopens a stream at a higher epoch (failover, a move);
- refresh_epochs: after every WAL sync, before acknowledging (nothing changed: the usual case).

Each backend runs the same sequence in this process, one call at a time, on this machine's
disk: SQLite in a temp file, PostgreSQL in a private server (engine/devtools/pgserver.py,
fsync on, 127.0.0.1) unless --url names one. ops/s = calls / their summed time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.storage.metadata import open_metadata_store  # noqa: E402
from engine.storage.metadata.interface import ObjectCommit, StreamRange  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t0)
    return out


async def run_backend(where: str, ops: int, streams: int) -> dict[str, list[float]]:
    store = open_metadata_store(where)
    try:
        ids = list(range(1, streams + 1))
        for s in ids:
            await store.open_stream(s, 1)
        ends = dict.fromkeys(ids, 0)

        async def commit(_: int) -> None:
            oid = await store.next_object_id()
            ranges = tuple(StreamRange(s, 1, ends[s], ends[s] + 50) for s in ids)
            await store.commit_objects([ObjectCommit(oid, f"bench/{oid}", 4 << 20, "stream-set", ranges,
                                                     range_sizes=tuple(40_000 for _ in ids))])  # fmt: skip
            for s in ids:
                ends[s] += 50

        async def refresh(_: int) -> None:
            store.refresh_epochs()
            store.current_epochs(ids)

        epochs = dict.fromkeys(ids, 1)

        async def reopen(i: int) -> None:
            s = ids[i % len(ids)]
            epochs[s] += 1
            await store.open_stream(s, epochs[s])

        await timed(20, commit)  # warm-up: connections, caches, statement plans
        results = {
            f"commit ({streams} ranges)": await timed(ops, commit),
            "open_stream (new epoch)": await timed(ops, reopen),
            "refresh_epochs (no change)": await timed(ops * 5, refresh),
        }
        return results
    finally:
        await store.close()


def report(name: str, results: dict[str, list[float]]) -> list[str]:
    rows = []
    for op, lat in results.items():
        rows.append(f"| {name} | {op} | {len(lat) / sum(lat):,.0f} | {statistics.median(lat) * 1000:.2f} | "
                    f"{pct(lat, 0.99) * 1000:.2f} |")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["calls", "produce", "failover"], default="calls")
    ap.add_argument("--ops", type=int, default=400, help="calls: calls per pattern (refresh_epochs: 5x)")
    ap.add_argument("--streams", type=int, default=100, help="calls: stream ranges per committed object")
    ap.add_argument("--url", default="", help="calls: an existing PostgreSQL database (amq metadata init)")
    ap.add_argument("--runs", type=int, default=3, help="produce: runs per backend, alternating")
    ap.add_argument("--records", type=int, default=200_000, help="produce: records of 1 KiB per run")
    ap.add_argument("--kills", type=int, default=10, help="failover: kill -9 of the leading controller")
    ap.add_argument("--rate", type=int, default=500, help="failover: records/s of the load meanwhile")
    args = ap.parse_args()
    if args.part == "produce":
        sys.exit(produce_part(args))
    if args.part == "failover":
        sys.exit(failover_part(args))

    from engine.devtools.pgserver import PostgresServer
    from engine.postgres import migrate

    tmp = Path(tempfile.mkdtemp(prefix="amq-mdbench-"))
    server = None
    try:
        url = args.url
        if not url:
            # A directory of its own: when run as root the server runs as another user (pgserver.py).
            pg_dir = Path(tempfile.mkdtemp(prefix="amq-mdbench-pg-"))
            server = PostgresServer(pg_dir, durable=True)
            info = server.start()
            url = info.url()
            migrate(url, init=True)
        rows = report("SQLite", asyncio.run(run_backend(str(tmp / "metadata.db"), args.ops, args.streams)))
        rows += report("PostgreSQL", asyncio.run(run_backend(url, args.ops, args.streams)))
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{args.ops} calls per pattern, {args.streams} streams")  # fmt: skip
    print("| backend | call | ops/s | p50 ms | p99 ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(r)


# ---------------------------------------------------------------- produce throughput of one broker

PRODUCE_PARTITIONS = 8
RECORD = 1024


def _cluster(root: Path, name: str, **options: Any) -> tuple[dict[str, Any], Path]:
    from automq_cli.cluster import ClusterOptions, start_cluster

    opts = ClusterOptions(dir=str(root / name / "data"), port=0, brokers=1, auto_balance=False, **options)
    home = root / name / "home"
    return start_cluster(opts, home=home), home


def _stop(state: dict[str, Any]) -> None:
    from automq_cli.cluster import stop_cluster

    stop_cluster(state, timeout=20)
    # As root, PostgreSQL's data may live outside the cluster directory (launch._postgres_dir).
    if state.get("postgres_dir"):
        shutil.rmtree(state["postgres_dir"], ignore_errors=True)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (PostgreSQL's backends)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        except psutil.Error:
            continue
    return total


def produce_once(bootstrap: str, topic: str, records: int) -> tuple[float, int]:
    """(seconds from the first produce to the last acknowledgement, delivery errors)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    errors = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal errors
        errors += err is not None

    # Connections, metadata and the idempotent producer id outside the clock.
    for part in range(PRODUCE_PARTITIONS):
        p.produce(topic, b"warm", partition=part)
    p.flush(60)
    payload = os.urandom(RECORD)
    t0 = time.perf_counter()
    for i in range(records):
        while True:
            try:
                p.produce(topic, payload, partition=i % PRODUCE_PARTITIONS, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.005)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(300)
    took = time.perf_counter() - t0
    return took, errors + left


def _new_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # held: its handle must outlive the future
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def produce_part(args: argparse.Namespace) -> int:
    from benchmarks.report import provenance

    root = Path(tempfile.mkdtemp(prefix="amq-mdbench-produce-"))
    clusters: dict[str, dict[str, Any]] = {}
    rows: list[tuple[str, int, float, float, float, float, float, int]] = []
    try:
        clusters["SQLite"], _ = _cluster(root, "sqlite")
        clusters["PostgreSQL"], _ = _cluster(root, "postgres", metadata="postgres")
        print("| run | backend | records/s | MiB/s | broker CPU s | PostgreSQL CPU s | producer CPU s | errors |",
              flush=True)  # fmt: skip
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
        for run in range(args.runs):
            for name, state in clusters.items():
                bootstrap = str(state["bootstrap"])
                topic = f"bench-{name.lower()}-{run}"
                _new_topic(bootstrap, topic, PRODUCE_PARTITIONS)
                broker = [int(state["pids"]["broker-0"])]
                pg = [int(state["pids"]["postgres"])] if "postgres" in state["pids"] else []
                cpu0 = (_cpu_seconds(broker), _cpu_seconds(pg), time.process_time())
                took, errors = produce_once(bootstrap, topic, args.records)
                cpu = (_cpu_seconds(broker) - cpu0[0], _cpu_seconds(pg) - cpu0[1], time.process_time() - cpu0[2])
                rps = args.records / took
                rows.append((name, run + 1, rps, rps * RECORD / (1 << 20), *cpu, errors))
                print(f"| {run + 1} | {name} | {rps:,.0f} | {rps * RECORD / (1 << 20):.1f} | {cpu[0]:.1f} | "
                      f"{cpu[1]:.1f} | {cpu[2]:.1f} | {errors} |", flush=True)  # fmt: skip
                # What the broker's WAL holds goes to S3 after the run; let it, before the other backend's turn.
                time.sleep(3)
    finally:
        for state in clusters.values():
            _stop(state)
        shutil.rmtree(root, ignore_errors=True)
    med = {n: statistics.median(r[2] for r in rows if r[0] == n) for n in clusters}
    print()
    print(*provenance("benchmarks/metadata.py"), sep="\n")
    print(f"- {args.records:,} records of {RECORD} B per run, {PRODUCE_PARTITIONS} partitions, {args.runs} runs each")
    print("| backend | median records/s | median MiB/s |")
    print("| --- | ---: | ---: |")
    for n, v in med.items():
        print(f"| {n} | {v:,.0f} | {v * RECORD / (1 << 20):.1f} |")
    ratio = med["PostgreSQL"] / med["SQLite"]
    print(f"PostgreSQL / SQLite (medians): {ratio:.3f} (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    return 1 if any(r[7] for r in rows) else 0


# ---------------------------------------------------------------- controller failover


def _controllers(state: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """name -> (address, pid)."""
    from automq_cli.cluster.launch import controller_names

    names = controller_names(state)
    return {n: (a, int(state["pids"][n])) for n, a in zip(names, str(state["controller"]).split(","), strict=True)}


def _leads(address: str) -> bool:
    """Asked alone (not following to the leader), this controller answers as the leader."""
    from engine.controller import api
    from engine.controller.rpc import ControllerClient, RpcError, parse_addresses

    async def ask() -> bool:
        client = ControllerClient(parse_addresses(address), follow=False)
        try:
            await client.request(api.Ping(), timeout=1.0)
            return True
        except (RpcError, OSError, TimeoutError):
            return False
        finally:
            await client.close()

    return asyncio.run(ask())


def _create_topic(bootstrap: str, topic: str) -> bool:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.create_topics([NewTopic(topic, 1, 1)], request_timeout=5)[topic].result(10)
        return True
    except KafkaException as e:
        return bool(e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS)


def failover_part(args: argparse.Namespace) -> int:
    from automq_cli.cluster import kill_pid, write_state
    from automq_cli.cluster.launch import start_controller
    from benchmarks.failover import PARTITIONS, Load, read_back, verify
    from benchmarks.report import provenance

    root = Path(tempfile.mkdtemp(prefix="amq-mdbench-failover-"))
    state: dict[str, Any] = {}
    lead_s: list[float] = []
    served_s: list[float] = []
    try:
        state, home = _cluster(root, "pg", metadata="postgres", controllers=2)
        bootstrap = str(state["bootstrap"])
        _new_topic(bootstrap, "load", PARTITIONS)
        load = Load(bootstrap, "load", rate=args.rate).start()
        time.sleep(3)
        print("| kill | killed | standby leads (s) | CreateTopics through the broker (s) | longest produce wait "
              "(s) | restarted as standby (s) |", flush=True)  # fmt: skip
        print("| ---: | --- | ---: | ---: | ---: | ---: |", flush=True)
        for k in range(args.kills):
            ctl = _controllers(state)
            leaders = [n for n, (a, _) in ctl.items() if _leads(a)]
            if len(leaders) != 1:
                raise SystemExit(f"kill {k + 1}: controllers answering as leader: {leaders}")
            old = leaders[0]
            (standby,) = [n for n in ctl if n != old]
            t0 = time.monotonic()
            kill_pid(ctl[old][1])
            while not _leads(ctl[standby][0]):
                if time.monotonic() - t0 > 30:
                    raise SystemExit(f"kill {k + 1}: the standby did not lead within 30 s")
                time.sleep(0.02)
            lead_s.append(time.monotonic() - t0)
            while not _create_topic(bootstrap, f"after-kill-{k + 1}"):
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"kill {k + 1}: no CreateTopics through the broker within 60 s")
                time.sleep(0.05)
            served_s.append(time.monotonic() - t0)
            waits = [w for ws in load.waits.values() for sent, w in ws if sent >= t0 - 1]
            r0 = time.monotonic()
            start_controller(state, old)
            write_state(state, home)
            restarted = time.monotonic() - r0
            if _leads(ctl[old][0]):
                raise SystemExit(f"kill {k + 1}: the restarted {old} took the lease from a live leader")
            print(f"| {k + 1} | {old} | {lead_s[-1]:.2f} | {served_s[-1]:.2f} | {max(waits, default=0):.2f} | "
                  f"{restarted:.2f} |", flush=True)  # fmt: skip
            time.sleep(1.5)  # the restarted standby settles (connects, reads the lease) before the next kill
        load.finish()
        lost, dup, reordered = verify(load, read_back(bootstrap, "load"))
    finally:
        if state:
            _stop(state)
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(*provenance("benchmarks/metadata.py"), sep="\n")
    for what, values in (("standby leads", lead_s), ("CreateTopics through the broker", served_s)):
        print(f"- {what}: p50 {statistics.median(values):.2f} s, max {max(values):.2f} s over {len(values)} kills")
    print(f"- load: {load.total:,} records acknowledged, {lost} lost, {dup} duplicated, {reordered} partitions "
          f"out of order, {len(load.errors)} client errors")  # fmt: skip
    return 1 if lost or dup or reordered else 0


if __name__ == "__main__":
    main()
