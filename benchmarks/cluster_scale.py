#!/usr/bin/env python3
"""Cluster scaling benchmark: the same workloads against a 1-broker and a 3-broker amq cluster, one run.

Each run gets a fresh cluster, started by `amq cluster up --brokers N --zones Z --wal W --dir <tmp>
--port 0` with an AMQ_HOME of its own in a temp directory (the user's cluster is never touched), and
stopped by `amq cluster down --dir <tmp>` afterwards, also when the run fails. The client is
`amq perf run` (librdkafka), which reads the cluster's state file for its bootstrap (every broker),
metrics URLs and broker pids.

    python3 benchmarks/cluster_scale.py                                   # 20s + 5s warmup per run
    python3 benchmarks/cluster_scale.py --duration 5s --warmup 2s --no-write
    python3 benchmarks/cluster_scale.py --wal s3 --brokers 3 --zones 3

Runs, in order: max-throughput on 1 broker, then at half of that max rate (half-max); the same two
on the larger cluster (half-max offers the same rate: half of the 1-broker max). Besides the perf
figures, the script samples CPU while each run measures: the whole machine, the load generator
(`amq perf` and its producer/consumer processes), SeaweedFS and the controller, so the table shows
where the cores went. The markdown table (figure | 1 broker | N brokers | N/1) replaces this script's
section of BENCHMARKS.md (markers `<!-- cluster-scale:begin -->` / `<!-- cluster-scale:end -->`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import machine, write_section

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- cluster-scale:begin -->"
END = "<!-- cluster-scale:end -->"
MIB = 1024 * 1024
WORKLOADS = ("max-throughput", "half-max")
# An interval line of `amq perf run` in a pipe: "    3.0s measure  produce ...".
INTERVAL_LINE = re.compile(r"^\s*\d+(?:\.\d+)?s\s+([a-z][a-z-]*)\s")


@dataclass
class Cluster:
    brokers: int
    zones: int
    home: Path
    directory: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"AMQ_HOME": str(self.home)}

    def pid(self, name: str) -> int | None:
        pid = (self.state.get("pids") or {}).get(name)
        return pid if isinstance(pid, int) else None


@dataclass
class Size:
    """One cluster size: its results by workload, and what failed."""

    brokers: int
    zones: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.brokers} broker" + ("s" if self.brokers > 1 else "")


# ---- clusters ----------------------------------------------------------------------------------


def _amq(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automq_cli.main", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def amq_cluster(brokers: int, zones: int, wal: str, workdir: Path, key: str) -> Iterator[Cluster]:
    """A fresh cluster in its own temp directory and AMQ_HOME; always `amq cluster down --dir` after."""
    base = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=workdir))
    cluster = Cluster(brokers, zones, base / "home", base / "data")
    cluster.home.mkdir()
    up_args = ["--brokers", str(brokers), "--zones", str(zones), "--wal", wal]
    up_args += ["--dir", str(cluster.directory), "--port", "0"]
    print(f"\n$ AMQ_HOME={cluster.home} amq cluster up {shlex.join(up_args)}", flush=True)
    try:
        up = _amq("cluster", "up", *up_args, env=cluster.env)
        if up.returncode != 0:
            raise RuntimeError(f"`amq cluster up` failed: {(up.stderr or up.stdout).strip()[-500:]}")
        cluster.state = json.loads((cluster.directory / "cluster-state.json").read_text())
        print(f"up: bootstrap {cluster.state.get('bootstrap')}", flush=True)
        yield cluster
    finally:
        down = _amq("cluster", "down", "--dir", str(cluster.directory), env=cluster.env, timeout=120)
        if down.returncode != 0:
            print(f"warning: `amq cluster down` failed: {(down.stderr or down.stdout).strip()[-300:]}", flush=True)
        shutil.rmtree(base, ignore_errors=True)


# ---- CPU while a run measures ------------------------------------------------------------------


def _proc_cpu(pid: int | None, tree: bool = False) -> float:
    """CPU seconds of a process (and, with tree, of its live descendants); 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if tree else [])]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _cpu_snapshot(perf_pid: int, cluster: Cluster) -> dict[str, float]:
    sys_times = psutil.cpu_times()
    idle = sys_times.idle + getattr(sys_times, "iowait", 0.0)
    return {
        "t": time.monotonic(),
        "machine_busy": sum(sys_times) - idle,
        "loadgen": _proc_cpu(perf_pid, tree=True),
        "s3": _proc_cpu(cluster.pid("s3"), tree=True),
        "controller": _proc_cpu(cluster.pid("controller")),
    }


def _cpu_window(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
    """% of one core per component, and the machine's busy share (% of all cores)."""
    wall = max(end["t"] - start["t"], 1e-9)
    pct = {k: (end[k] - start[k]) / wall * 100.0 for k in ("machine_busy", "loadgen", "s3", "controller")}
    cores = os.cpu_count() or 1
    return {
        "machine_busy_percent": pct["machine_busy"] / cores,  # of all cores
        "machine_cpu_percent": pct["machine_busy"],  # % of one core, for subtraction below
        "loadgen_cpu_percent": pct["loadgen"],
        "s3_cpu_percent": pct["s3"],
        "controller_cpu_percent": pct["controller"],
    }


# ---- runs --------------------------------------------------------------------------------------


def perf(
    cluster: Cluster, key: str, extra: list[str], args: argparse.Namespace, out: Path
) -> tuple[dict[str, Any] | None, dict[str, float] | None, str]:
    """One `amq perf run` against the cluster's state file; its JSON, the CPU window, and why it failed."""
    cmd = [
        sys.executable, "-m", "automq_cli.main", "perf", "run", "max-throughput",
        "--duration", args.duration, "--warmup", args.warmup,
        "--json-out", str(out), "--name", key, *extra,
    ]  # fmt: skip
    print(f"$ AMQ_HOME={cluster.home} amq {shlex.join(cmd[3:])}", flush=True)
    # The previous run leaves dirty pages behind (SeaweedFS does not fsync); written back during this
    # run they would stall its WAL syncs and measure the previous run.
    os.sync()
    time.sleep(2)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **cluster.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        stdin=subprocess.DEVNULL,
    )
    # Past --run-timeout: Ctrl-C (the run deletes its topics and exits), a minute later SIGKILL.
    timers = [
        threading.Timer(args.run_timeout, proc.send_signal, [signal.SIGINT]),
        threading.Timer(args.run_timeout + 60, proc.kill),
    ]
    for timer in timers:
        timer.daemon = True
        timer.start()
    last = _cpu_snapshot(proc.pid, cluster)
    window_start: dict[str, float] | None = None
    window_end: dict[str, float] | None = None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            m = INTERVAL_LINE.match(line)
            if m:
                # Each interval line arrives as its interval closes: the window runs from the close of
                # the last interval before `measure` to the close of the last `measure` interval.
                snap = _cpu_snapshot(proc.pid, cluster)
                if m.group(1) == "measure":
                    window_start = window_start or last
                    window_end = snap
                last = snap
        rc = proc.wait()
    finally:
        for timer in timers:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0 or not out.exists():
        return None, None, f"`amq perf run` exit {rc}"
    result: dict[str, Any] = json.loads(out.read_text())
    cpu = _cpu_window(window_start, window_end) if window_start and window_end else None
    return result, cpu, ""


def run_all(args: argparse.Namespace, sizes: list[Size], workdir: Path, out_dir: Path) -> None:
    """max-throughput then half-max on each size; half-max offers half of the 1-broker max rate."""
    half_rate: int | None = None
    for size in sizes:
        for key in WORKLOADS:
            extra: list[str] = []
            if key == "half-max":
                if not half_rate:
                    size.failures[key] = "no 1-broker max-throughput result to halve"
                    continue
                extra = ["--rate", str(half_rate)]
            print(f"\n=== {size.label}: {key} ===", flush=True)
            try:
                with amq_cluster(size.brokers, size.zones, args.wal, workdir, f"b{size.brokers}-{key}") as cluster:
                    result, cpu, why = perf(cluster, key, extra, args, out_dir / f"b{size.brokers}-{key}.json")
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                result, cpu, why = None, None, str(exc)
            if result is None:
                size.failures[key] = why
                continue
            size.results[key] = result
            if cpu is not None:
                size.cpu[key] = cpu
            if key == "max-throughput" and size.brokers == 1:
                rate = result.get("produce", {}).get("msg_per_s") or 0
                half_rate = int(rate / 2) or None


# ---- the table ---------------------------------------------------------------------------------


def _get(node: Any, path: str) -> float | None:
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _errors(result: dict[str, Any] | None) -> float | None:
    p, c = _get(result, "produce.errors"), _get(result, "consume.errors")
    return None if p is None and c is None else (p or 0) + (c or 0)


def _brokers_with_produce(result: dict[str, Any] | None) -> str:
    per = ((result or {}).get("cluster") or {}).get("per_broker") or []
    if not per:
        return "-"
    busy = sum(1 for b in per if (b.get("produce_bytes") or 0) > 0)
    return f"{busy} of {len(per)}"


def _other_cpu(result: dict[str, Any] | None, cpu: dict[str, float] | None) -> float | None:
    """Machine CPU not accounted for by the brokers, the load generator, SeaweedFS or the controller."""
    brokers = _get(result, "cluster.broker_cpu_percent")
    if cpu is None or brokers is None:
        return None
    used = brokers + cpu["loadgen_cpu_percent"] + cpu["s3_cpu_percent"] + cpu["controller_cpu_percent"]
    return max(0.0, cpu["machine_cpu_percent"] - used)


# (label, unit, how to read it from (result, cpu)); ratio: whether N/1 makes sense for this figure.
Figure = tuple[str, str, Any, bool]
FIGURES: list[Figure] = [
    ("offered rate", "msg/s", lambda r, c: _get(r, "workload.producerRate") or None, False),
    ("produce", "MiB/s", lambda r, c: _get(r, "produce.mib_per_s"), True),
    ("produce", "msg/s", lambda r, c: _get(r, "produce.msg_per_s"), True),
    ("consume", "MiB/s", lambda r, c: _get(r, "consume.mib_per_s"), True),
    ("publish p50", "ms", lambda r, c: _get(r, "publish_latency_ms.p50"), True),
    ("publish p99", "ms", lambda r, c: _get(r, "publish_latency_ms.p99"), True),
    ("end-to-end p50", "ms", lambda r, c: _get(r, "e2e_latency_ms.p50"), True),
    ("end-to-end p99", "ms", lambda r, c: _get(r, "e2e_latency_ms.p99"), True),
    ("brokers with produce traffic", "", lambda r, c: _brokers_with_produce(r), False),
    ("broker CPU, sum over brokers", "% of a core", lambda r, c: _get(r, "cluster.broker_cpu_percent"), True),
    ("broker peak RSS, largest broker", "MiB", lambda r, c: _mib(_get(r, "cluster.broker_rss_bytes")), True),
    ("broker peak RSS, all brokers", "MiB", lambda r, c: _mib(_get(r, "cluster.broker_rss_total_bytes")), True),
    ("load generator CPU", "% of a core", lambda r, c: c and c["loadgen_cpu_percent"], True),
    ("SeaweedFS CPU", "% of a core", lambda r, c: c and c["s3_cpu_percent"], True),
    ("other processes and kernel CPU", "% of a core", _other_cpu, False),
    ("machine CPU busy", "% of all cores", lambda r, c: c and c["machine_busy_percent"], True),
    ("S3 PUTs", "requests", lambda r, c: _get(r, "cluster.s3.put"), True),
    ("errors", "", lambda r, c: _errors(r), False),
]


def _mib(value: float | None) -> float | None:
    return None if value is None else value / MIB


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_tables(small: Size, large: Size, rates: dict[str, float | None]) -> list[str]:
    n = large.brokers
    lines: list[str] = []
    for key in WORKLOADS:
        r1, r3 = small.results.get(key), large.results.get(key)
        if r1 is None and r3 is None:
            continue
        c1, c3 = small.cpu.get(key), large.cpu.get(key)
        what = (
            "unthrottled"
            if key == "max-throughput"
            else f"offered {rates.get(key) or 0:,.0f} msg/s, half of the 1-broker max"
        )
        lines += [f"**{key}** ({what}; 1 KiB records, 16 partitions, 2 producers, 1 consumer)", ""]
        lines += [f"| figure | {small.label} | {large.label} | {n}/1 ratio |", "| --- | ---: | ---: | ---: |"]
        for label, unit, read, ratio_ok in FIGURES:
            a, b = read(r1, c1), read(r3, c3)
            if a is None and b is None:
                continue
            ratio = "-"
            if ratio_ok and isinstance(a, float) and isinstance(b, float) and a:
                ratio = f"{b / a:.2f}x"
            name = f"{label} ({unit})" if unit else label
            lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {ratio} |")
        lines.append("")
    return lines


def limits_paragraph(small: Size, large: Size) -> str:
    """What limits throughput here, in the figures' own terms."""
    key = "max-throughput"
    r1, r3 = small.results.get(key), large.results.get(key)
    p1, p3 = _get(r1, "produce.mib_per_s"), _get(r3, "produce.mib_per_s")
    if p1 is None or p3 is None or not p1:
        return "What limits it here: not evaluated (a max-throughput run did not complete)."
    cores = os.cpu_count() or 1
    n = large.brokers
    text = [
        f"What limits it here: this machine has {cores} cores, shared by the brokers, SeaweedFS, the controller "
        "and the load generator (the `amq perf` producer and consumer processes), so adding brokers adds no CPU. "
        f"At max-throughput, {n} brokers acknowledged {p3:.1f} MiB/s against {p1:.1f} MiB/s for 1 broker "
        f"({p3 / p1:.2f}x)."
    ]
    c1, c3 = small.cpu.get(key), large.cpu.get(key)
    b1, b3 = _get(r1, "cluster.broker_cpu_percent"), _get(r3, "cluster.broker_cpu_percent")
    if c1 and c3 and b1 is not None and b3 is not None:
        text.append(
            f"The machine's cores were {c1['machine_busy_percent']:.0f} % and {c3['machine_busy_percent']:.0f} % "
            f"busy in those two runs; of that (in % of one core), the brokers took {b1:.0f} and {b3:.0f}, the load "
            f"generator {c1['loadgen_cpu_percent']:.0f} and {c3['loadgen_cpu_percent']:.0f}, SeaweedFS "
            f"{c1['s3_cpu_percent']:.0f} and {c3['s3_cpu_percent']:.0f}."
        )
        o1, o3 = _other_cpu(r1, c1), _other_cpu(r3, c3)
        if o1 is not None and o3 is not None:
            text.append(
                f"Everything else on the machine (kernel threads, and any other work running at the time) took "
                f"{o1:.0f} and {o3:.0f}."
            )
        if min(c1["machine_busy_percent"], c3["machine_busy_percent"]) >= 90:
            text.append(
                f"Both runs used the whole machine, so the {n} brokers split the same cores that 1 broker had; "
                f"a {n}x ratio is not to be expected here."
            )
    h1, h3 = small.results.get("half-max"), large.results.get("half-max")
    q1, q3 = _get(h1, "publish_latency_ms.p99"), _get(h3, "publish_latency_ms.p99")
    e1, e3 = _get(h1, "e2e_latency_ms.p99"), _get(h3, "e2e_latency_ms.p99")
    a1, a3 = _get(h1, "produce.msg_per_s"), _get(h3, "produce.msg_per_s")
    if None not in (q1, q3, e1, e3, a1, a3):
        text.append(
            f"At half of the 1-broker max, both kept up ({a1:,.0f} and {a3:,.0f} msg/s acknowledged); publish p99 "
            f"was {q1:.1f} ms on 1 broker and {q3:.1f} ms on {n}, end-to-end p99 {e1:.1f} and {e3:.1f} ms."
        )
    return " ".join(text)


def _librdkafka() -> str:
    from confluent_kafka import libversion

    return str(libversion()[0])


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", type=int, default=3, help="brokers of the larger cluster (default 3)")
    p.add_argument("--zones", type=int, default=3, help="zones of the larger cluster (default 3)")
    p.add_argument("--wal", choices=("file", "nfs", "s3"), default="nfs", help="WAL kind of both clusters")
    p.add_argument("--duration", default="20s", help="measured window per run (default 20s)")
    p.add_argument("--warmup", default="5s", help="warmup per run (default 5s)")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="only print the table; leave BENCHMARKS.md alone")
    p.add_argument("--results-dir", type=Path, help="keep every run's JSON here (default: a temp dir)")
    p.add_argument("--run-timeout", type=float, default=600, help="seconds one perf run may take")
    args = p.parse_args(argv)
    if args.brokers < 2 or args.zones < 1:
        p.error("--brokers must be at least 2 and --zones at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python3 " + shlex.join(["benchmarks/cluster_scale.py", *(sys.argv[1:] if argv is None else argv)])
    workdir = Path(tempfile.mkdtemp(prefix="amq-cluster-scale-"))
    out_dir = args.results_dir or workdir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    small, large = Size(1, 1), Size(args.brokers, args.zones)
    try:
        run_all(args, [small, large], workdir, out_dir)
    finally:
        # The clusters' directories are gone already; the JSON results stay only with --results-dir.
        shutil.rmtree(workdir, ignore_errors=True)
    half = _get(small.results.get("half-max"), "workload.producerRate")
    tables = render_tables(small, large, {"half-max": half})
    body = [
        f"## Cluster scaling: 1 broker vs {large.label}",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        f"- Clusters: `amq cluster up --brokers 1 --zones 1 --wal {args.wal}` and `amq cluster up --brokers "
        f"{large.brokers} --zones {large.zones} --wal {args.wal}` (SeaweedFS on loopback), a fresh one for every "
        "run, in a temp directory with its own AMQ_HOME; client: `amq perf run max-throughput` "
        f"(librdkafka {_librdkafka()}), {args.warmup} warmup + {args.duration} measured; producers and consumers "
        "get every broker as bootstrap.",
        "- Broker CPU is summed over the brokers (100 = one core). Peak RSS: the largest broker's, and all "
        "brokers' added up. Load generator, SeaweedFS, other processes (anything else on the machine, kernel "
        "threads included) and machine CPU are sampled by this script over the measured window.",
        "",
        *tables,
        limits_paragraph(small, large),
        "",
    ]
    for size in (small, large):
        for key, why in size.failures.items():
            body.append(f"- {size.label} {key} did not complete: {why}")
    if any(s.failures for s in (small, large)):
        body.append("")
    print("\n" + "\n".join(body))
    if not args.no_write:
        write_section(args.out, BEGIN, END, body)
        print(f"wrote {args.out}")
    return 0 if not (small.failures or large.failures) else 1


if __name__ == "__main__":
    sys.exit(main())
