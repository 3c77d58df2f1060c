"""Storage metadata on SQLite vs PostgreSQL: the calls a broker makes, timed one by one.

    python benchmarks/metadata.py [--ops 400] [--streams 100] [--url postgresql://...]

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
    ap.add_argument("--ops", type=int, default=400, help="calls per pattern (refresh_epochs: 5x)")
    ap.add_argument("--streams", type=int, default=100, help="stream ranges per committed object")
    ap.add_argument("--url", default="", help="an existing PostgreSQL database (initialized by amq metadata init)")
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
