"""Storage engine benchmark: every figure the storage issue asks for, measured in one run.

    python benchmarks/storage_bench.py [--mib 512] [--write-md]

Each comparison runs side by side in this process against the same disk and the
same SeaweedFS server, and is reported as a ratio: the machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.devtools.s3server import EmbeddedS3  # noqa: E402
from engine.storage.config import StorageConfig, WalConfig  # noqa: E402
from engine.storage.engine import StorageEngine  # noqa: E402
from engine.storage.metadata.sqlite import SqliteMetadataStore  # noqa: E402
from engine.storage.objects.store import ObjectStoreConfig, make_object_store  # noqa: E402

MiB = 1 << 20


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def disk_baseline(path: Path, total: int) -> float:
    """Sequential writes with an fdatasync every MiB into a preallocated file: MiB/s."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, total)
    chunk = os.urandom(MiB)
    start = time.perf_counter()
    for off in range(0, total, MiB):
        os.pwrite(fd, chunk, off)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    path.unlink()
    return total / MiB / elapsed


async def new_engine(tmp: Path, s3: ObjectStoreConfig, name: str, **kw: object) -> StorageEngine:
    d = tmp / name
    cfg = StorageConfig(wal=WalConfig(kind="file", path=str(d / "wal"), capacity=1 << 30))
    cfg = replace(cfg, **kw)  # type: ignore[arg-type]
    engine = StorageEngine(cfg, make_object_store(replace(s3, prefix=f"{name}/")), SqliteMetadataStore(d / "meta.db"))
    await engine.start()
    return engine


async def stop(engine: StorageEngine, flush: bool = True) -> None:
    await engine.close(flush=flush)
    await engine.metadata.close()
    await engine.store.close()


async def wal_throughput(tmp: Path, s3: ObjectStoreConfig, total: int) -> float:
    """64 KiB appends, 128 in flight, uploads held back: the WAL path alone, MiB/s."""
    engine = await new_engine(tmp, s3, "walbw", upload_bytes=1 << 40, upload_interval_s=3600)
    stream = await engine.open_stream(1, 1)
    batch = os.urandom(64 << 10)
    window = asyncio.Semaphore(128)

    async def one() -> None:
        async with window:
            await stream.append(batch, 1)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total // len(batch))))
    elapsed = time.perf_counter() - start
    await stop(engine, flush=False)
    return total / MiB / elapsed


async def paced_latency(engine: StorageEngine, stream_id: int, seconds: float, rate: float, size: int) -> list[float]:
    """Append `size`-byte batches at `rate` bytes/s; latency of each in ms."""
    # Earlier phases leave GiBs of dirty pages (the S3 server does not fsync): write them back
    # first, or their writeback lands in this phase's fsyncs and measures the previous phase.
    await asyncio.to_thread(os.sync)
    stream = await engine.open_stream(stream_id, 1)
    batch = os.urandom(size)
    interval = size / rate
    lat: list[float] = []
    tasks = []

    async def one() -> None:
        t0 = time.perf_counter()
        await stream.append(batch, 1)
        lat.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    n = int(seconds / interval)
    for i in range(n):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    return lat


async def s3_put_baseline(s3: ObjectStoreConfig, client: str, size: int, count: int, parallel: int) -> float:
    store = make_object_store(replace(s3, prefix=f"baseline-{client}/"), client)
    body = os.urandom(size)
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with sem:
            await store.put(f"obj-{i}", body)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    await store.close()
    return size * count / MiB / elapsed


async def s3_get_rate(s3: ObjectStoreConfig, client: str, n: int) -> float:
    """Ranged GETs of one 512 KiB block each (the read path's unit): MiB/s."""
    store = make_object_store(replace(s3, prefix=f"baseline-{client}/"), client)
    block = 512 << 10
    start = time.perf_counter()
    for i in range(n):
        off = (i * block) % (32 * MiB)
        await store.get("obj-0", off, off + block)
    elapsed = time.perf_counter() - start
    await store.close()
    return n * block / MiB / elapsed


async def uploader_throughput(tmp: Path, s3: ObjectStoreConfig, total: int) -> tuple[float, int]:
    """Fill the WAL with uploads held back, then let the uploader drain it: MiB/s of S3 writes."""
    engine = await new_engine(tmp, s3, "upl", upload_bytes=1 << 40, upload_interval_s=3600)
    streams = [await engine.open_stream(i, 1) for i in range(16)]
    batch = os.urandom(64 << 10)
    futs = [streams[i % 16].append(batch, 1) for i in range(total // len(batch))]
    await asyncio.gather(*futs)
    before = engine.store.stats.snapshot()
    start = time.perf_counter()
    await engine.flush()
    elapsed = time.perf_counter() - start
    after = engine.store.stats.snapshot()
    await stop(engine)
    return (after["put_bytes"] - before["put_bytes"]) / MiB / elapsed, after["put"] - before["put"]


async def put_count(tmp: Path, s3: ObjectStoreConfig, streams: int, total: int) -> int:
    """S3 PUTs needed to upload `total` bytes spread over `streams` streams."""
    engine = await new_engine(tmp, s3, f"puts{streams}", upload_bytes=8 * MiB, upload_interval_s=3600)
    handles = [await engine.open_stream(i, 1) for i in range(streams)]
    batch = os.urandom(4 << 10)
    before = engine.store.stats.put
    window = asyncio.Semaphore(512)

    async def one(i: int) -> None:
        async with window:
            await handles[i % streams].append(batch, 1)

    await asyncio.gather(*(one(i) for i in range(total // len(batch))))
    await engine.flush()
    puts = engine.store.stats.put - before
    await stop(engine)
    return puts


async def wal_only_latency(tmp: Path, s3: ObjectStoreConfig, seconds: float) -> dict[str, float]:
    """Append latency at 20 MiB/s on the WAL path alone (uploads held back)."""
    engine = await new_engine(tmp, s3, "walonly", upload_bytes=1 << 40, upload_interval_s=3600)
    lat = await paced_latency(engine, 1, seconds, 20 * MiB, 64 << 10)
    await stop(engine, flush=False)
    return {"p50_wal_only_ms": statistics.median(lat), "p99_wal_only_ms": pct(lat, 0.99)}


async def catch_up_effect(tmp: Path, s3: ObjectStoreConfig, backlog: int, seconds: float) -> dict[str, float]:
    """Append p99 at 20 MiB/s alone, then with a catch-up reader draining a cold backlog from S3."""
    engine = await new_engine(tmp, s3, "catchup")
    old = await engine.open_stream(100, 1)
    batch = os.urandom(64 << 10)
    await asyncio.gather(*(old.append(batch, 1) for _ in range(backlog // len(batch))))
    await engine.flush()
    engine.log_cache.max_bytes = 0
    engine.log_cache.evict()
    engine.log_cache.max_bytes = 256 * MiB
    alone = await paced_latency(engine, 1, seconds, 20 * MiB, 64 << 10)
    read_bytes = 0
    stop_reading = False

    async def reader() -> None:
        nonlocal read_bytes
        offset = 0
        while not stop_reading and offset < old.end_offset:
            for b in await old.read(offset, 1 * MiB):
                read_bytes += len(b.payload)
                offset = b.end_offset
            if offset >= old.end_offset:
                offset = 0  # keep the reader busy for the whole measurement
                engine.block_cache._blocks.clear()
                engine.block_cache.size = 0

    task = asyncio.ensure_future(reader())
    start = time.perf_counter()
    with_reader = await paced_latency(engine, 2, seconds, 20 * MiB, 64 << 10)
    stop_reading = True
    await task
    read_rate = read_bytes / MiB / (time.perf_counter() - start)
    await stop(engine)
    return {
        "p50_alone_ms": statistics.median(alone),
        "p99_alone_ms": pct(alone, 0.99),
        "p50_with_reader_ms": statistics.median(with_reader),
        "p99_with_reader_ms": pct(with_reader, 0.99),
        "catch_up_read_mib_s": read_rate,
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    total = args.mib * MiB
    with tempfile.TemporaryDirectory(dir=args.dir) as tmpname:
        tmp = Path(tmpname)
        server = EmbeddedS3(tmp / "s3")
        ep = server.start()
        try:
            s3 = ObjectStoreConfig(ep.url, ep.bucket, ep.access_key, ep.secret_key)
            r: dict[str, object] = {}
            # Alternate the two and take medians: the disk's speed drifts with whatever else runs.
            disk, wal = [], []
            for i in range(args.rounds):
                print(f"disk vs WAL, round {i + 1}/{args.rounds} ...", flush=True)
                disk.append(disk_baseline(tmp / "disk.bin", total))
                wal.append(await wal_throughput(tmp / f"wal{i}", s3, total))
            r["disk_mib_s"] = statistics.median(disk)
            r["wal_append_mib_s"] = statistics.median(wal)
            r["wal_vs_disk_ratio_per_round"] = [round(w / d, 2) for w, d in zip(wal, disk, strict=True)]
            print("S3: PUT and GET baselines for both clients ...", flush=True)
            up_total = args.upload_mib * MiB
            for client in ("boto3", "obstore"):
                r[f"s3_put_64mib_x2_{client}_mib_s"] = await s3_put_baseline(
                    s3, client, 64 * MiB, up_total // (64 * MiB), 2
                )
                r[f"s3_get_512kib_{client}_mib_s"] = await s3_get_rate(s3, client, 200)
            print("uploader: drain the WAL into S3 ...", flush=True)
            r["uploader_mib_s"], r["uploader_puts"] = await uploader_throughput(tmp, s3, up_total)
            client = s3.client
            r["uploader_vs_put_ratio"] = float(r["uploader_mib_s"]) / float(r[f"s3_put_64mib_x2_{client}_mib_s"])  # type: ignore[arg-type]
            print("PUT count: 10 vs 1000 streams ...", flush=True)
            r["puts_10_streams"] = await put_count(tmp, s3, 10, 64 * MiB)
            r["puts_1000_streams"] = await put_count(tmp, s3, 1000, 64 * MiB)
            print("append latency at 20 MiB/s, without and with a catch-up reader ...", flush=True)
            r.update(await wal_only_latency(tmp, s3, args.seconds))
            r.update(await catch_up_effect(tmp, s3, args.backlog_mib * MiB, args.seconds))
            r["wal_vs_disk_ratio"] = float(r["wal_append_mib_s"]) / float(r["disk_mib_s"])  # type: ignore[arg-type]
            r["put_count_ratio_1000_vs_10"] = int(r["puts_1000_streams"]) / int(r["puts_10_streams"])  # type: ignore[call-overload]
            return r
        finally:
            server.stop()


def markdown(r: dict[str, object], command: str) -> str:
    f = {k: (f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in r.items()}
    return f"""## Storage engine ({time.strftime("%Y-%m-%d")})

Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; SeaweedFS `weed mini` on loopback.
Command: `{command}`

| what | measured | goal |
|---|---|---|
| disk: sequential writes, fdatasync every MiB (median) | {f["disk_mib_s"]} MiB/s | baseline |
| file WAL: 64 KiB appends, 128 in flight (median) | {f["wal_append_mib_s"]} MiB/s = **{f["wal_vs_disk_ratio"]} x disk** (rounds: {f["wal_vs_disk_ratio_per_round"]}) | >= 0.5 x disk |
| append latency at 20 MiB/s (64 KiB batches), WAL path alone | p50 {f["p50_wal_only_ms"]} ms, **p99 {f["p99_wal_only_ms"]} ms** | p99 <= 2 ms |
| same, with uploads running (the S3 server writes to the same disk) | p50 {f["p50_alone_ms"]} ms, p99 {f["p99_alone_ms"]} ms | - |
| same, with a catch-up reader draining a cold backlog from S3 | p50 {f["p50_with_reader_ms"]} ms, p99 {f["p99_with_reader_ms"]} ms; reader {f["catch_up_read_mib_s"]} MiB/s | appends not slowed |
| S3 PUT, 64 MiB objects, 2 in flight (boto3 / obstore) | {f["s3_put_64mib_x2_boto3_mib_s"]} / {f["s3_put_64mib_x2_obstore_mib_s"]} MiB/s | baseline |
| uploader draining the WAL into stream-set objects | {f["uploader_mib_s"]} MiB/s = **{f["uploader_vs_put_ratio"]} x PUT** ({f["uploader_puts"]} PUTs) | >= 0.8 x PUT |
| S3 PUTs for 64 MiB over 10 / 1000 streams | {f["puts_10_streams"]} / {f["puts_1000_streams"]} = **{f["put_count_ratio_1000_vs_10"]}** | within 20 % |
| S3 ranged GET of 512 KiB blocks (boto3 / obstore) | {f["s3_get_512kib_boto3_mib_s"]} / {f["s3_get_512kib_obstore_mib_s"]} MiB/s | client choice |
"""


def write_section(md_path: Path, section: str, marker: str) -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section}{end}\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    md_path.write_text(text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512, help="bytes for the disk and WAL bandwidth runs")
    ap.add_argument("--upload-mib", type=int, default=256, help="bytes for the S3 PUT and uploader runs")
    ap.add_argument("--backlog-mib", type=int, default=128, help="cold backlog for the catch-up reader")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating disk/WAL rounds (medians are reported)")
    ap.add_argument("--dir", default=None, help="where to put the WAL and S3 data (default: system temp)")
    ap.add_argument("--write-md", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(main(args))
    print(json.dumps(result, indent=2))
    command = "python benchmarks/storage_bench.py " + " ".join(sys.argv[1:])
    print(markdown(result, command.strip()))
    if args.write_md:
        write_section(ROOT / "BENCHMARKS.md", markdown(result, command.strip()), "storage")
