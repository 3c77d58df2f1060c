#!/usr/bin/env python3
"""Side-by-side benchmark: the same workloads against amq and Tansu-on-S3, one run, one machine.

Both systems store data on the same SeaweedFS server (one bucket each) and
are driven by the same client (`amq perf run`, librdkafka) with the same
settings. The table (each figure for both systems and the ratio amq/Tansu)
replaces this script's own section of BENCHMARKS.md, with the date, the
machine and the exact command.

    python3 benchmarks/side_by_side.py                               # amq (`amq cluster up`) and Tansu
    python3 benchmarks/side_by_side.py --peers tansu                 # Tansu only
    python3 benchmarks/side_by_side.py --amq-bootstrap 127.0.0.1:9092 --amq-cluster-state ~/.amq/cluster.json

Runs (each `--duration` long after `--warmup`, each on a freshly started
broker with its own bucket): max-throughput; the same at half of amq's max
rate (half of Tansu's when amq is absent); steady-state at 1,000/s;
lowest-latency; catch-up-read. Runs that fall short of the offered rate are
flagged (their latencies are client queueing). The S3 server's PUT bandwidth
is measured in the same run, as the yardstick for the throughput goal.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import machine, write_section  # noqa: E402
from tests.peers import S3Config, S3Server, Tansu  # noqa: E402

BEGIN = "<!-- side-by-side:begin -->"
END = "<!-- side-by-side:end -->"
MIB = 1024 * 1024
GIB = 1024 * MIB
SYSTEMS = ("amq", "tansu")


@dataclass
class System:
    name: str
    bootstrap: str
    pids: list[int] = field(default_factory=list)
    perf_env: dict[str, str] = field(default_factory=dict)
    perf_args: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


# ---- S3 yardstick ------------------------------------------------------------------------------


def s3_put_bandwidth(s3: S3Config, seconds: float = 6.0, object_mib: int = 8, threads: int = 4) -> float:
    """MiB/s the S3 server accepts for large PUTs from 4 threads (what an ideal uploader could reach)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=threads * 2),
    )
    body = os.urandom(object_mib * MIB)
    deadline = time.monotonic() + seconds
    keys: list[str] = []

    def worker(i: int) -> int:
        n = 0
        while time.monotonic() < deadline:
            key = f"put-bandwidth/{i}/{n}"
            client.put_object(Bucket=s3.bucket, Key=key, Body=body)
            keys.append(key)
            n += 1
        return n

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        puts = sum(pool.map(worker, range(threads)))
    elapsed = time.monotonic() - start
    for i in range(0, len(keys), 1000):
        with contextlib.suppress(Exception):
            client.delete_objects(Bucket=s3.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})
    return puts * object_mib / elapsed


# ---- systems under test ------------------------------------------------------------------------


@contextlib.contextmanager
def tansu_on_s3(server: S3Server, workdir: Path, run_key: str) -> Iterator[System]:
    bucket = server.create_bucket(f"tansu-{run_key}")
    tansu = Tansu(workdir / f"tansu-{run_key}", s3=bucket).start(timeout=60)
    try:
        assert tansu.pid is not None
        yield System("tansu", tansu.bootstrap, [tansu.pid])
    finally:
        tansu.stop()


def _amq(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def amq_cluster(args: argparse.Namespace, server: S3Server, workdir: Path, run_key: str) -> Iterator[System]:
    """An amq cluster: the one named by --amq-bootstrap, or one `amq cluster up` starts on the same S3."""
    if args.amq_bootstrap:
        perf_args = ["--bootstrap", args.amq_bootstrap]
        if args.amq_cluster_state:
            perf_args += ["--cluster-state", str(args.amq_cluster_state)]
        yield System("amq", args.amq_bootstrap, perf_args=perf_args)
        return
    if _amq("cluster", "--help").returncode != 0:
        raise SystemExit("`amq cluster` is not available yet: pass --amq-bootstrap or use --peers tansu")
    home = workdir / f"amq-home-{run_key}"
    home.mkdir(parents=True, exist_ok=True)
    env = {"AMQ_HOME": str(home)}
    bucket = server.create_bucket(f"amq-{run_key}")
    up = _amq(
        "cluster", "up", "--port", "0",
        "--s3-endpoint", bucket.url,
        "--access-key", bucket.access_key,
        "--secret-key", bucket.secret_key,
        "--region", bucket.region,
        "--s3-bucket", bucket.bucket,
        env=env,
    )  # fmt: skip
    if up.returncode != 0:
        raise SystemExit(f"`amq cluster up` failed: {up.stderr.strip()[-500:]}")
    try:
        state = json.loads((home / "cluster.json").read_text())
        # No --bootstrap: `amq perf` reads cluster.json, so the cluster's own counters are recorded.
        yield System("amq", state["bootstrap"], perf_env=env)
    finally:
        _amq("cluster", "down", env=env)


# ---- runs --------------------------------------------------------------------------------------


@dataclass
class Run:
    key: str  # column/section name
    workload: str  # template name
    extra: list[str] = field(default_factory=list)


def perf(system: System, run: Run, args: argparse.Namespace, out_dir: Path) -> dict[str, Any] | None:
    out = out_dir / f"{system.name}-{run.key}.json"
    cmd = [
        sys.executable, "-m", "automq_cli.main", "perf", "run", run.workload,
        "--duration", args.duration, "--warmup", args.warmup,
        "--json-out", str(out), "--name", run.key,
        *system.perf_args, *run.extra,
    ]  # fmt: skip
    if "--bootstrap" not in system.perf_args and not system.perf_env:
        cmd += ["--bootstrap", system.bootstrap]
    for pid in system.pids:
        cmd += ["--broker-pid", str(pid)]
    print(f"\n=== {system.name}: {run.key} ===\n$ {shlex.join(cmd[1:])}", flush=True)
    # The previous run leaves GiBs of dirty pages behind (SeaweedFS does not fsync); written back
    # during this run they would stall its WAL fsyncs for seconds and measure the previous run.
    os.sync()
    time.sleep(2)
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **system.perf_env}, timeout=args.run_timeout)
    if proc.returncode != 0 or not out.exists():
        system.failures[run.key] = f"exit {proc.returncode}"
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    system.results[run.key] = result
    return result


# ---- the table ---------------------------------------------------------------------------------


def _get(result: dict[str, Any] | None, path: str) -> float | None:
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


# (label, JSON path, unit, higher_is_better)
FIGURES: list[tuple[str, str, str, bool]] = [
    ("offered rate", "workload.producerRate", "msg/s", True),
    ("produce", "produce.mib_per_s", "MiB/s", True),
    ("produce", "produce.msg_per_s", "msg/s", True),
    ("consume", "consume.mib_per_s", "MiB/s", True),
    ("publish p50", "publish_latency_ms.p50", "ms", False),
    ("publish p99", "publish_latency_ms.p99", "ms", False),
    ("publish p99.9", "publish_latency_ms.p999", "ms", False),
    ("end-to-end p50", "e2e_latency_ms.p50", "ms", False),
    ("end-to-end p99", "e2e_latency_ms.p99", "ms", False),
    ("catch-up read", "catch_up.read_mib_per_s", "MiB/s", True),
    ("publish p99 before catch-up", "catch_up.publish_latency_ms_before.p99", "ms", False),
    ("publish p99 during catch-up", "catch_up.publish_latency_ms_during.p99", "ms", False),
    ("broker CPU", "cluster.broker_cpu_percent", "% of a core", False),
    ("broker peak RSS", "cluster.broker_rss_bytes", "MiB", False),
    ("S3 PUTs", "cluster.s3.put", "requests", False),
    ("errors", "produce.errors", "", False),
]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MiB" and value > 10 * MIB:
        value = value / MIB
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"


def render_table(runs: list[Run], systems: dict[str, System]) -> list[str]:
    lines = ["| workload | figure | amq | Tansu-on-S3 | amq / Tansu |", "| --- | --- | ---: | ---: | ---: |"]
    for run in runs:
        for label, path, unit, _better in FIGURES:
            a = _get(systems["amq"].results.get(run.key), path) if "amq" in systems else None
            t = _get(systems["tansu"].results.get(run.key), path) if "tansu" in systems else None
            if a is None and t is None:
                continue
            if path == "workload.producerRate":
                # 0 means unthrottled: no offered rate to show.
                a, t = (a or None), (t or None)
            if path == "cluster.broker_rss_bytes":
                a = a / MIB if a is not None else None
                t = t / MIB if t is not None else None
            ratio = f"{a / t:.2f}x" if a is not None and t else "-"
            lines.append(
                f"| {run.key} | {label} ({unit}) | {_fmt(a, unit)} | {_fmt(t, unit)} | {ratio} |".replace(" ()", "")
            )
    return lines


def goals(systems: dict[str, System], s3_put_mib_s: float) -> list[str]:
    amq = systems.get("amq")
    if amq is None or "max-throughput" not in amq.results:
        return ["- Goals not evaluated: the amq broker was not part of this run (`--peers tansu`)."]
    out = []
    a_max = _get(amq.results["max-throughput"], "produce.mib_per_s") or 0.0
    t_max = _get(systems["tansu"].results.get("max-throughput"), "produce.mib_per_s") if "tansu" in systems else None
    if t_max:
        ok = a_max >= 1.5 * t_max
        out.append(
            f"- {'MET' if ok else 'NOT MET'}: amq max produce {a_max:.1f} MiB/s "
            f"vs 1.5 x Tansu = {1.5 * t_max:.1f} MiB/s"
        )
    ok = a_max >= 0.8 * s3_put_mib_s
    out.append(
        f"- {'MET' if ok else 'NOT MET'}: amq max produce {a_max:.1f} MiB/s "
        f"vs 80 % of S3 PUT = {0.8 * s3_put_mib_s:.1f} MiB/s"
    )
    half = amq.results.get("half-max")
    if half:
        p99 = _get(half, "publish_latency_ms.p99") or float("inf")
        e2e = _get(half, "e2e_latency_ms.p99") or float("inf")
        wal = (half.get("cluster") or {}).get("wal_kind")
        out.append(f"- {'MET' if p99 <= 5 else 'NOT MET'}: publish p99 {p99:.2f} ms at half max (<= 5 ms; WAL {wal})")
        out.append(f"- {'MET' if e2e <= 10 else 'NOT MET'}: end-to-end p99 {e2e:.2f} ms at half max (<= 10 ms)")
    rss = [_get(r, "cluster.broker_rss_bytes") for r in amq.results.values()]
    peak = max((r for r in rss if r is not None), default=None)
    if peak is not None:
        out.append(f"- {'MET' if peak <= GIB else 'NOT MET'}: broker peak RSS {peak / MIB:.0f} MiB (<= 1024 MiB)")
    return out


def latency_goals(systems: dict[str, System], s3_put_mib_s: float) -> list[str]:
    amq = systems.get("amq")
    if amq is None:
        return ["- Not evaluated: amq was not part of this run."]
    out = []
    cu = amq.results.get("catch-up-read")
    if cu:
        before = _get(cu, "catch_up.publish_latency_ms_before.p99")
        during = _get(cu, "catch_up.publish_latency_ms_during.p99")
        read = _get(cu, "catch_up.read_mib_per_s") or 0.0
        backlog = _get(cu, "catch_up.backlog_bytes") or 0.0
        if before and during is not None:
            ok = during <= 1.25 * before
            out.append(f"- {'MET' if ok else 'NOT MET'}: publish p99 during catch-up {during:.1f} ms vs before "
                       f"{before:.1f} ms ({during / before:.2f}x; <= 1.25x), backlog {backlog / MIB:,.0f} MiB")  # fmt: skip
        t_read = (
            _get(systems["tansu"].results.get("catch-up-read"), "catch_up.read_mib_per_s")
            if "tansu" in systems
            else None
        )
        if t_read:
            ok = read >= 2 * t_read
            out.append(
                f"- {'MET' if ok else 'NOT MET'}: catch-up read {read:.1f} MiB/s vs 2 x Tansu = {2 * t_read:.1f}"
            )
    half = amq.results.get("half-max")
    if half:
        p99 = _get(half, "publish_latency_ms.p99") or float("inf")
        e2e = _get(half, "e2e_latency_ms.p99") or float("inf")
        out.append(f"- {'MET' if p99 <= 15 else 'NOT MET'}: publish p99 {p99:.1f} ms at half max (<= 15 ms)")
        out.append(f"- {'MET' if e2e <= 20 else 'NOT MET'}: end-to-end p99 {e2e:.1f} ms at half max (<= 20 ms)")
    top = amq.results.get("max-throughput")
    if top:
        produced = _get(top, "produce.mib_per_s") or 0.0
        consumed = _get(top, "consume.mib_per_s") or 0.0
        ok = produced >= 0.85 * s3_put_mib_s
        out.append(f"- {'MET' if ok else 'NOT MET'}: max produce {produced:.1f} MiB/s vs 85 % of S3 PUT = "
                   f"{0.85 * s3_put_mib_s:.1f}")  # fmt: skip
        ok = consumed >= 0.95 * produced
        out.append(f"- {'MET' if ok else 'NOT MET'}: at max, consume {consumed:.1f} vs 0.95 x produce = "
                   f"{0.95 * produced:.1f} MiB/s")  # fmt: skip
    return out


#: The broker's own histograms over each amq run's measured window (docs/perf.md): (column, key, quantile).
BROKER_COLUMNS = [
    ("produce total p50", "produce_total", "p50_ms"),
    ("produce total p99", "produce_total", "p99_ms"),
    ("produce append p99", "produce_append", "p99_ms"),
    ("produce durable p99", "produce_durable", "p99_ms"),
    ("WAL sync p50", "wal_sync", "p50_ms"),
    ("WAL sync p99", "wal_sync", "p99_ms"),
    ("loop lag p99", "loop_lag", "p99_ms"),
    ("fetch read p99", "fetch_read", "p99_ms"),
    ("S3 PUT p99", "s3_put", "p99_ms"),
]


def render_broker_latency(runs: list[Run], systems: dict[str, System]) -> list[str]:
    """Where amq's time went, per run, from the broker's histograms (the highest over brokers)."""
    amq = systems.get("amq")
    if amq is None:
        return []
    rows = []
    for run in runs:
        brokers = ((amq.results.get(run.key) or {}).get("cluster") or {}).get("broker_latency") or []
        if not brokers:
            continue
        cells = []
        for _, key, q in BROKER_COLUMNS:
            values = [b["latency"].get(key, {}).get(q) for b in brokers]
            known = [v for v in values if v is not None]
            cells.append(f"{max(known):.2f}" if known else "-")
        rows.append(f"| {run.key} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "amq broker histograms over each run's measured window (ms; bucket-interpolated, so a p99 is within "
        'its bucket\'s bounds; docs/perf.md "Where time goes"):',
        "",
        "| workload | " + " | ".join(c for c, _, _ in BROKER_COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in BROKER_COLUMNS) + " |",
        *rows,
    ]


def overload_notes(runs: list[Run], systems: dict[str, System]) -> list[str]:
    """Runs where a system fell short of the offered rate: their latencies are client queueing time."""
    notes = []
    for run in runs:
        for system in systems.values():
            result = system.results.get(run.key)
            offered = _get(result, "workload.producerRate")
            achieved = _get(result, "produce.msg_per_s")
            if offered and achieved is not None and achieved < 0.9 * offered:
                notes.append(
                    f"- {system.name} {run.key}: offered {offered:,.0f} msg/s, acknowledged {achieved:,.0f} "
                    "(overloaded: its latencies are mostly time spent queued in the client)."
                )
    return (["", "Runs that could not keep up:", *notes]) if notes else []


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", default="amq,tansu", help="comma-separated systems to run: amq, tansu")
    p.add_argument("--amq-bootstrap", help="a running amq cluster to benchmark (instead of starting one)")
    p.add_argument("--amq-cluster-state", type=Path, help="its cluster.json, for metrics and broker pids")
    p.add_argument(
        "--amq-start",
        action="store_true",
        help="start amq with `amq cluster up` on the same S3, one fresh cluster per run (the default "
        "without --amq-bootstrap)",
    )
    p.add_argument("--duration", default="20s", help="measured window per run (default 20s)")
    p.add_argument("--warmup", default="5s", help="warmup per run (default 5s)")
    p.add_argument("--backlog", default="128MiB", help="catch-up backlog (default 128MiB)")
    p.add_argument(
        "--workloads",
        default="max-throughput,half-max,steady-1k,lowest-latency,catch-up-read",
        help="runs, in order (half-max needs max-throughput first; steady-<N>[k] = steady-state at N[,000]/s)",
    )
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file to update")
    p.add_argument("--results-dir", type=Path, help="keep every run's JSON here (default: a temp dir)")
    p.add_argument(
        "--s3-dir",
        type=Path,
        help="the S3 server's files here (e.g. /dev/shm) instead of beside the WAL: on one disk the S3 "
        "server's writeback also stalls the WAL's fdatasync, which S3 in production does not",
    )
    p.add_argument("--run-timeout", type=float, default=900, help="seconds one perf run may take")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        p.error(f"--peers takes {', '.join(SYSTEMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the S3 server and brokers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python3 " + shlex.join(["benchmarks/side_by_side.py", *(sys.argv[1:] if argv is None else argv)])
    workdir = Path(tempfile.mkdtemp(prefix="amq-bench-"))
    out_dir = args.results_dir or workdir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    runs: list[Run] = []
    s3_root = Path(tempfile.mkdtemp(prefix="amq-bench-s3-", dir=args.s3_dir)) if args.s3_dir else workdir / "s3"
    server = S3Server(s3_root, bucket="bench")
    try:
        s3 = server.start()
        print(f"S3 server (SeaweedFS) on {s3.url}; measuring its PUT bandwidth", flush=True)
        put_bw = s3_put_bandwidth(s3)
        print(f"S3 PUT bandwidth: {put_bw:.1f} MiB/s", flush=True)
        systems: dict[str, System] = {}
        # One system at a time, so they never compete for the 2 cores; and a fresh
        # broker (fresh bucket) for every run, so a run never pays for the previous
        # one's backlog still draining to S3.
        for name in [s for s in SYSTEMS if s in args.systems]:
            systems[name] = System(name, "")

            def start(run_key: str, name: str = name) -> contextlib.AbstractContextManager[System]:
                if name == "amq":
                    return amq_cluster(args, server, workdir, run_key)
                return tansu_on_s3(server, workdir, run_key)

            runs = run_all(systems[name], start, args, systems, out_dir)
    finally:
        server.stop()
        if args.s3_dir:
            shutil.rmtree(s3_root, ignore_errors=True)
    body = [
        "## Side by side: amq vs Tansu-on-S3",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        "- Both systems on the same SeaweedFS (`weed mini`, loopback), one bucket each, "
        "one system at a time; "
        f"client: `amq perf run` (librdkafka {_librdkafka()}), same settings for both; each run "
        f"{args.warmup} warmup + {args.duration} measured.",
        f"- S3 server PUT bandwidth in this run: {put_bw:.1f} MiB/s (8 MiB objects, 4 threads); its files "
        + (f"in {args.s3_dir} (not on the WAL's disk)." if args.s3_dir else "on the WAL's disk."),
        "- Workloads: templates/workloads/*.yaml; half-max = the max-throughput workload throttled to half "
        "of " + ("amq's" if "amq" in systems else "Tansu's") + " max rate (the latency goal's run); "
        "steady-1k = steady-state (1:4 fan-out) at 1,000 records/s.",
        "",
        *render_table(runs, systems),
        "",
        "Goals (issue 5):",
        *goals(systems, put_bw),
        "",
        "Goals (issue 16, latency under mixed load):",
        *latency_goals(systems, put_bw),
        *render_broker_latency(runs, systems),
    ]
    body += overload_notes(runs, systems)
    for system in systems.values():
        for key, why in system.failures.items():
            body.append(f"- {system.name} {key} did not complete ({why}).")
    body.append("")
    write_section(args.out, BEGIN, END, body)
    print(f"\nwrote {args.out}")
    if not args.results_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not any(s.failures for s in systems.values()) else 1


def _librdkafka() -> str:
    from confluent_kafka import libversion

    return str(libversion()[0])


def run_all(
    system: System,
    start: Any,
    args: argparse.Namespace,
    systems: dict[str, System],
    out_dir: Path,
) -> list[Run]:
    """Every workload against one system; `start(run_key)` gives a fresh instance of it per run."""
    runs: list[Run] = []
    for key in [k.strip() for k in args.workloads.split(",") if k.strip()]:
        if key == "half-max":
            # The max-throughput shape at half of amq's max rate (amq runs first), so both systems
            # get the same offered load.
            ref = systems.get("amq") if "amq" in systems and "max-throughput" in systems["amq"].results else system
            max_rate = _get(ref.results.get("max-throughput"), "produce.msg_per_s")
            if not max_rate:
                print("skipping half-max: no max-throughput result to halve", flush=True)
                continue
            run = Run(key, "max-throughput", ["--rate", str(int(max_rate / 2))])
        elif key.startswith("steady-") and key[7:].rstrip("k").isdigit():
            # A fixed offered load (steady-100 = 100/s, steady-2k = 2,000/s), low enough for both
            # systems to sustain, so their latencies compare like with like.
            rate = int(key[7:].rstrip("k")) * (1000 if key.endswith("k") else 1)
            run = Run(key, "steady-state", ["--rate", str(rate)])
        elif key == "catch-up-read":
            run = Run(key, key, ["--backlog", args.backlog])
        else:
            run = Run(key, key)
        runs.append(run)
        with start(key) as live:
            result = perf(live, run, args, out_dir)
        if result is not None:
            system.results[key] = result
        else:
            system.failures[key] = live.failures.get(key, "failed")
    return runs


if __name__ == "__main__":
    sys.exit(main())
