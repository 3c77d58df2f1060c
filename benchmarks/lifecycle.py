#!/usr/bin/env python3
"""Object lifecycle under steady load: objects per stream, stored vs live bytes, compaction cost.

One local cluster (one broker, file WAL, SeaweedFS) per phase, 100 partitions, a steady
librdkafka producer (acks=all). Time is accelerated 20x: uploads every 0.1 s instead of 2 s,
stream-set data compacted after 15 s instead of 300 s, garbage collection grace 0.5 s instead
of 10 s, so `--seconds 180` is an hour of uploads at the default settings (1,800 uploads).
retention.ms keeps each partition's data to the last 60 s (20 minutes, accelerated), so
live data is bounded and what stays in the bucket can be compared with it.

Phase "on": compaction as configured; phase "off": compaction disabled (garbage collection
and retention still run). Every few seconds the script samples, from the storage metadata,
the most objects any stream is spread over, and with boto3 the bytes in the bucket. At the
end (after one grace period without load) it reports stored / live bytes, compaction
throughput next to the S3 GET bandwidth measured in the same run, and publish latency.

    python3 benchmarks/lifecycle.py                 # results into BENCHMARKS.md
    python3 benchmarks/lifecycle.py --seconds 30 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from automq_cli.cluster import ClusterOptions, start_cluster, stop_cluster
from benchmarks.report import provenance, write_section
from engine.devtools.s3server import EmbeddedS3

PARTITIONS = 100
BEGIN, END = "<!-- lifecycle:begin -->", "<!-- lifecycle:end -->"
ACCELERATED = {"upload_interval_s": 0.1, "stream_set_max_age_s": 15.0, "gc_grace_s": 0.5, "lifecycle_interval_s": 1.0}
RETENTION_MS = 90_000
MiB = 1 << 20


@dataclass
class Sample:
    """Bytes at one moment: in the bucket (boto3), and by state in the storage metadata."""

    at: float
    stored: int  # objects/ in the bucket
    live: int  # payload of the ranges at or above each stream's start offset
    committed: int  # objects referenced by ranges (payload + object format)
    unreferenced: int  # replaced or expired, waiting for garbage collection
    prepared: int  # ids taken by uploads and compactions not committed yet

    @property
    def ratio(self) -> float:
        return self.stored / max(1, self.live)


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    produced: int = 0
    max_objects_per_stream: int = 0
    samples: list[Sample] = field(default_factory=list)
    end: dict[str, Any] = field(default_factory=dict)

    @property
    def worst(self) -> Sample | None:
        """The sample with the highest stored / live after warm-up."""
        return max(self.samples, key=lambda x: x.ratio, default=None)


def s3_client(cfg: dict[str, Any]) -> Any:
    s3 = cfg["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
                        aws_secret_access_key=s3["secret_key"], region_name=s3["region"])  # fmt: skip


def bucket_bytes(client: Any, cfg: dict[str, Any]) -> tuple[int, int]:
    """(objects, bytes) of stream-set and stream objects in the bucket, by the S3 API."""
    s3 = cfg["s3"]
    n = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=s3["prefix"] + "objects/"):
        for o in page.get("Contents", []):
            n += 1
            size += int(o["Size"])
    return n, size


def live(metadata: Path) -> tuple[int, int]:
    """(most objects one stream's readable data is spread over, live payload bytes), from the metadata."""
    db = sqlite3.connect(f"{metadata.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT r.stream_id, COUNT(DISTINCT r.object_id), SUM(r.size) FROM object_ranges r "
            "JOIN streams s ON s.stream_id = r.stream_id WHERE r.end_offset > s.start_offset GROUP BY r.stream_id"
        ).fetchall()
    finally:
        db.close()
    return max((r[1] for r in rows), default=0), sum(r[2] or 0 for r in rows)


def object_bytes(metadata: Path) -> dict[str, int]:
    """Bytes of objects by state, from the metadata (what the bucket should hold)."""
    db = sqlite3.connect(f"{metadata.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return {
            f"{state}_bytes": int(n) for state, n in db.execute("SELECT state, SUM(size) FROM objects GROUP BY state")
        }
    finally:
        db.close()


def get_bandwidth(client: Any, cfg: dict[str, Any]) -> float:
    """MiB/s of ranged 512 KiB GETs (what compaction and catch-up reads do), 4 threads, from a 32 MiB object."""
    s3 = cfg["s3"]
    key = s3["prefix"] + "bench/get-bandwidth"
    client.put_object(Bucket=s3["bucket"], Key=key, Body=b"\x07" * (32 * MiB))
    ranges = [(i, i + 512 * 1024 - 1) for i in range(0, 32 * MiB, 512 * 1024)] * 4

    def get(r: tuple[int, int]) -> int:
        return len(client.get_object(Bucket=s3["bucket"], Key=key, Range=f"bytes={r[0]}-{r[1]}")["Body"].read())

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(get, ranges))
    elapsed = time.monotonic() - started
    client.delete_object(Bucket=s3["bucket"], Key=key)
    return total / MiB / elapsed


def metrics(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def run_phase(
    name: str, root: Path, seconds: float, rate: int, size: int, compaction: bool, s3_dir: Path | None = None
) -> Phase:
    storage = dict(ACCELERATED)
    if not compaction:
        storage.update(compaction_min_ranges=10**9, stream_set_max_age_s=1e12, max_stream_set_objects=10**9)
    settings = root / name / "broker.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text(yaml.safe_dump({"storage": storage}))
    opts = ClusterOptions(dir=str(root / name / "data"), port=0, wal_capacity=256 << 20,
                          upload_interval_s=ACCELERATED["upload_interval_s"], broker_config=str(settings))  # fmt: skip
    with contextlib.ExitStack() as cleanup:
        if s3_dir is not None:
            # The S3 server's files on another file system: in production S3 is not on the broker's
            # disk, and here its writeback otherwise stalls the WAL's fdatasync (ext4 journal).
            s3 = EmbeddedS3(Path(tempfile.mkdtemp(prefix=f"lifecycle-{name}-", dir=s3_dir)))
            cleanup.callback(shutil.rmtree, s3.directory, ignore_errors=True)
            cleanup.callback(s3.stop)
            ep = s3.start(timeout=60)
            opts.s3_endpoint, opts.s3_bucket, opts.access_key, opts.secret_key = (
                ep.url, ep.bucket, ep.access_key, ep.secret_key)  # fmt: skip
        state = start_cluster(opts, home=root / name / "home")
        cleanup.callback(stop_cluster, state, timeout=30)
        phase = Phase(name)
        cfg = json.loads(Path(state["brokers"][0]["config"]).read_text())
        client = s3_client(cfg)
        metadata = Path(cfg["storage_metadata_path"])
        bootstrap = state["bootstrap"]
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("steady", PARTITIONS, 1, config={"retention.ms": str(RETENTION_MS)})])[
            "steady"
        ].result(30)
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(phase, client, cfg, metadata, stop), daemon=True)
        sampler.start()
        produce(phase, bootstrap, seconds, rate, size)
        stop.set()
        sampler.join()
        # One grace period and two passes without load: what compaction replaced is gone, while
        # retention has taken only the few seconds of data that aged meanwhile.
        time.sleep(ACCELERATED["gc_grace_s"] + 2 * ACCELERATED["lifecycle_interval_s"])
        objects, stored = bucket_bytes(client, cfg)
        most, live_bytes = live(metadata)
        m = metrics(state["metrics"][0])
        phase.end = {"objects": objects, "stored": stored, "live": live_bytes, "most": most,
                     "get_mib_s": get_bandwidth(client, cfg), **object_bytes(metadata), **m}  # fmt: skip
    return phase


def sample(phase: Phase, client: Any, cfg: dict[str, Any], metadata: Path, stop: threading.Event) -> None:
    warm = time.monotonic() + RETENTION_MS / 1000 + 10  # ratios mean little before retention starts
    started = time.monotonic()
    while not stop.wait(3.0):
        most, live_bytes = live(metadata)
        phase.max_objects_per_stream = max(phase.max_objects_per_stream, most)
        if time.monotonic() > warm and live_bytes:
            states = object_bytes(metadata)
            _, stored = bucket_bytes(client, cfg)
            phase.samples.append(Sample(
                time.monotonic() - started, stored, live_bytes, states.get("committed_bytes", 0),
                states.get("unreferenced_bytes", 0), states.get("prepared_bytes", 0),
            ))  # fmt: skip


def produce(phase: Phase, bootstrap: str, seconds: float, rate: int, size: int) -> None:
    """The load, in a process of its own: the sampler's bucket listings (boto3 parsing about 2,000
    keys with compaction on, a third of that off) hold this process's GIL for tens of ms, and a
    producer sharing the GIL counted that wait as publish latency, more in the phase with more
    objects."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_produce, args=(results, bootstrap, seconds, rate, size), daemon=True)
    proc.start()
    produced, errors, latencies = results.get(timeout=seconds + 120)
    proc.join(30)
    phase.produced, phase.errors = produced, errors
    phase.latencies.extend(array("d", latencies))


def _produce(results: Any, bootstrap: str, seconds: float, rate: int, size: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "enable.idempotence": True})
    value = b"x" * size
    sent: dict[int, float] = {}  # record number (its value's last 8 bytes) -> when it was produced
    latencies = array("d")
    errors = 0

    def done(err: Any, msg: Any) -> None:
        nonlocal errors
        sent_at = sent.pop(int.from_bytes(msg.value()[-8:], "big"))
        if err is not None:
            errors += 1
            return
        latencies.append(time.monotonic() - sent_at)

    started = time.monotonic()
    n = 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate)
        while n < due:
            v = value[:-8] + n.to_bytes(8, "big")
            sent[n] = time.monotonic()
            p.produce("steady", v, partition=n % PARTITIONS, on_delivery=done)
            n += 1
        p.poll(0.002)
    p.flush(60)
    results.put((n, errors, latencies.tobytes()))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))] if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0, help="load per phase (180 = an hour accelerated 20x)")
    ap.add_argument("--rate", type=int, default=2000, help="records/s offered")
    ap.add_argument("--size", type=int, default=1024, help="record value bytes")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    ap.add_argument("--only-on", action="store_true", help="skip the compaction-off phase (implies --no-write)")
    ap.add_argument("--samples", type=Path, help="write every stored/live sample here (JSON)")
    ap.add_argument("--s3-dir", type=Path, help="the S3 server's files here (e.g. /dev/shm), not beside the WAL")
    args = ap.parse_args()
    names = ("on",) if args.only_on else ("on", "off")
    with tempfile.TemporaryDirectory(prefix="amq-lifecycle-") as tmp:
        phases = [run_phase(name, Path(tmp), args.seconds, args.rate, args.size, compaction=name == "on",
                            s3_dir=args.s3_dir) for name in names]  # fmt: skip
    if args.samples is not None:
        args.samples.write_text(json.dumps({p.name: [vars(x) for x in p.samples] for p in phases}, indent=1))
    rows = report(phases if len(phases) == 2 else [*phases, phases[0]])
    print("\n".join(rows))
    if not args.no_write and not args.only_on:
        write_report(args, rows)
    return 0 if all(p.errors == 0 for p in phases) else 1


def worst(p: Phase, part: str) -> str:
    """The highest stored / live sample, or one of its parts as a fraction of live bytes."""
    w = p.worst
    if w is None:
        return "-"
    share = {
        "ratio": w.ratio,
        "unreferenced": w.unreferenced / w.live,
        "format": (w.committed - w.live) / w.live,
        "rest": (w.stored - w.committed - w.unreferenced) / w.live,
    }[part]
    return f"{share:.3f}" if part == "ratio" else f"{share:+.3f}"


def report(phases: list[Phase]) -> list[str]:
    on, off = phases
    rows = ["| figure | compaction on | compaction off |", "| --- | ---: | ---: |"]

    def row(label: str, f: Any) -> None:
        rows.append(f"| {label} | {f(on)} | {f(off)} |")

    row("records produced (acknowledged)", lambda p: f"{p.produced:,} ({p.produced - p.errors:,})")
    row("most objects one stream is spread over (max of samples)", lambda p: f"{p.max_objects_per_stream}")
    row("most objects one stream is spread over (end)", lambda p: f"{p.end['most']}")
    row("objects in the bucket (end)", lambda p: f"{p.end['objects']:,}")
    row("S3 bytes stored / live bytes (end)", lambda p: f"{p.end['stored'] / max(1, p.end['live']):.3f}")
    row("S3 bytes written / bytes produced", lambda p: f"{p.end['s3_put_bytes'] / max(1, p.end['produce_bytes']):.2f}")
    row("S3 bytes stored / live bytes during load (max of samples after warm-up)", lambda p: worst(p, "ratio"))
    row("S3 bytes stored / live bytes during load (mean of samples)",
        lambda p: f"{sum(x.ratio for x in p.samples) / max(1, len(p.samples)):.3f}")  # fmt: skip
    row("at the max: unreferenced, waiting for GC / live", lambda p: worst(p, "unreferenced"))
    row("at the max: committed objects beyond live payload / live", lambda p: worst(p, "format"))
    row("at the max: prepared, and bucket bytes the metadata does not count / live", lambda p: worst(p, "rest"))
    row("uploads", lambda p: f"{p.end['uploads']:,}")
    row("compaction runs / ranges in", lambda p: f"{p.end['compaction_runs']:,} / {p.end['compaction_ranges_in']:,}")
    row("compaction read (MiB)", lambda p: f"{p.end['compaction_bytes_read'] / MiB:.1f}")

    def speed(p: Phase) -> str:
        busy = p.end["compaction_ms"] / 1000
        if not busy:
            return "-"
        mib_s = p.end["compaction_bytes_read"] / MiB / busy
        return f"{mib_s:.1f} MiB/s = {mib_s / p.end['get_mib_s']:.0%} of GET bandwidth"

    row("compaction throughput while compacting", speed)
    row("S3 GET bandwidth measured in this run (MiB/s)", lambda p: f"{p.end['get_mib_s']:.0f}")
    row("objects deleted by GC", lambda p: f"{p.end['gc_objects_deleted']:,}")
    row("S3 requests PUT / GET / DELETE", lambda p: f"{p.end['s3_put_requests']:,} / {p.end['s3_get_requests']:,} / "
        f"{p.end['s3_delete_requests']:,}")  # fmt: skip
    for q in (0.5, 0.99, 0.999):
        row(f"publish p{q * 100:g} (ms)", lambda p, q=q: f"{pct(p.latencies, q) * 1000:.1f}")

    def hist(p: Phase, key: str) -> str:
        h = p.end.get("latency", {}).get(key)
        return "-" if not h or not h.get("count") else f"{h['p99_ms']:.1f} / {h['max_ms']:.0f}"

    # The broker's own histograms (docs/perf.md), over the whole phase: where a publish tail comes from.
    for key, label in (("produce_durable", "produce: append to durable"), ("wal_sync", "WAL group sync"),
                       ("loop_lag", "event-loop lag")):  # fmt: skip
        row(f"broker {label} p99 / max (ms)", lambda p, key=key: hist(p, key))
    p99_on, p99_off = pct(on.latencies, 0.99), pct(off.latencies, 0.99)
    rows.append("")
    rows.append(f"Publish p99 with compaction on is {(p99_on / p99_off - 1) * 100:+.0f} % against off (goal: < +25 %).")
    return rows


def write_report(args: argparse.Namespace, rows: list[str]) -> None:
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    body = [
        "## Object lifecycle: compaction, retention, garbage collection under steady load",
        "",
        *provenance("benchmarks/lifecycle.py"),
        f"- One broker (file WAL) on SeaweedFS, a 100-partition topic with retention.ms={RETENTION_MS}, an "
        f"idempotent acks=all librdkafka producer at {args.rate:,} records/s of {args.size} B round robin for "
        f"{args.seconds:g} s per phase. Accelerated 20x: {ACCELERATED}; at the default 2 s upload interval the "
        "same number of uploads takes 20 times as long (180 s here = an hour). Phase off: compaction disabled, "
        "retention and garbage collection on. Objects per stream from the storage metadata; bucket bytes listed "
        "with boto3; live bytes = payload of the ranges at or above each stream's start offset, sampled every 3 s "
        "once retention has started deleting. End figures one grace period and two lifecycle passes after the load "
        "stopped. Compaction is throttled to storage.compaction_bytes_per_s (32 MiB/s); merged stream objects "
        "hold at most a tenth of retention.ms of data."
        + (
            f" The S3 server's files on {args.s3_dir} (another file system than the WAL's)."
            if args.s3_dir
            else " The S3 server's files on the same disk as the WAL."
        ),
        "",
        *rows,
        "",
    ]
    write_section(path, BEGIN, END, body)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
