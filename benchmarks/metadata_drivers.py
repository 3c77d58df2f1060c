#!/usr/bin/env python3
"""psycopg 3 vs asyncpg on amq's commit pattern, in one run against one private PostgreSQL server.

The pattern is the uploader's commit of one stream-set object holding a range of each of
`--streams` streams (engine/storage/metadata/postgres.py commit_objects): lock the streams'
rows in id order (SELECT ... FOR UPDATE), mark the prepared object committed, insert its
ranges, move the streams' ends, commit. psycopg runs it through PostgresMetadataStore itself
(a blocking connection in a worker thread, as amq does); asyncpg runs the same statements on
the event loop with its own connection. Both against the same server (fsync on, 127.0.0.1),
alternating rounds so noise hits both.

    python3 benchmarks/metadata_drivers.py [--ops 300] [--streams 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from engine.devtools.pgserver import PostgresServer  # noqa: E402
from engine.postgres import migrate  # noqa: E402
from engine.storage.metadata import open_metadata_store  # noqa: E402
from engine.storage.metadata.interface import ObjectCommit, StreamRange  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


class Streams:
    """Stream ids of one driver's share (disjoint, so the drivers never wait on each other's locks)."""

    def __init__(self, first: int, n: int) -> None:
        self.ids = list(range(first, first + n))
        self.ends = dict.fromkeys(self.ids, 0)

    def ranges(self) -> tuple[StreamRange, ...]:
        out = tuple(StreamRange(s, 1, self.ends[s], self.ends[s] + 50) for s in self.ids)
        for s in self.ids:
            self.ends[s] += 50
        return out


async def psycopg_round(store: object, streams: Streams, ops: int) -> list[float]:
    times = []
    for _ in range(ops):
        t0 = time.perf_counter()
        oid = await store.next_object_id()  # type: ignore[attr-defined]
        ranges = streams.ranges()
        await store.commit_objects(  # type: ignore[attr-defined]
            [ObjectCommit(oid, f"bench/{oid}", 4 << 20, "stream-set", ranges, range_sizes=(40_000,) * len(ranges))]
        )
        times.append(time.perf_counter() - t0)
    return times


async def asyncpg_round(conn: asyncpg.Connection, store: object, streams: Streams, ops: int) -> list[float]:
    times = []
    for _ in range(ops):
        t0 = time.perf_counter()
        oid = await store.next_object_id()  # type: ignore[attr-defined]  # the same id allocation
        t1 = time.perf_counter()
        ranges = streams.ranges()
        ids = [r.stream_id for r in ranges]
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT stream_id, epoch, end_offset FROM streams WHERE stream_id = ANY($1::bigint[]) "
                "ORDER BY stream_id FOR UPDATE",
                ids,
            )
            assert len(rows) == len(ids)
            done = await conn.execute(
                "UPDATE objects SET key=$1, size=$2, kind=$3, state='committed', crc=0 "
                "WHERE object_id=$4 AND state='prepared'",
                f"bench/{oid}", 4 << 20, "stream-set", oid,
            )  # fmt: skip
            assert done.endswith(" 1"), done
            now = int(time.time() * 1000)
            await conn.executemany(
                "INSERT INTO object_ranges (stream_id, start_offset, end_offset, object_id, size, data_ms) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                [(r.stream_id, r.start_offset, r.end_offset, oid, 40_000, now) for r in ranges],
            )
            await conn.executemany(
                "UPDATE streams SET end_offset=$1 WHERE stream_id=$2", [(r.end_offset, r.stream_id) for r in ranges]
            )
        # Only the commit transaction is compared; the id allocation is the same call for both.
        times.append(time.perf_counter() - t1 + (t1 - t0))
    return times


async def run(url: str, ops: int, n: int, rounds: int) -> dict[str, list[float]]:
    store = open_metadata_store(url)
    a, b = Streams(1, n), Streams(100_001, n)
    for s in a.ids + b.ids:
        await store.open_stream(s, 1)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    results: dict[str, list[float]] = {"psycopg 3 (PostgresMetadataStore)": [], "asyncpg (same statements)": []}
    try:
        await psycopg_round(store, a, 10)  # warm-up: connections, plans
        await asyncpg_round(conn, store, b, 10)
        for _ in range(rounds):
            results["psycopg 3 (PostgresMetadataStore)"] += await psycopg_round(store, a, ops)
            results["asyncpg (same statements)"] += await asyncpg_round(conn, store, b, ops)
    finally:
        await conn.close()
        await store.close()  # type: ignore[attr-defined]
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=300)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pg_dir = Path(tempfile.mkdtemp(prefix="amq-drivers-pg-"))
    server = PostgresServer(pg_dir, durable=True)
    try:
        url = server.start().url()
        migrate(url, init=True)
        results = asyncio.run(run(url, args.ops, args.streams, args.rounds))
    finally:
        server.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
    print(f"commit of one object with {args.streams} stream ranges, {args.ops} x {args.rounds} per driver")
    print("| driver | commits/s | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in results.items():
        print(f"| {name} | {len(t) / sum(t):,.0f} | {pct(t, 0.5) * 1000:.2f} | {pct(t, 0.99) * 1000:.2f} |")


if __name__ == "__main__":
    main()
