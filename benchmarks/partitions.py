#!/usr/bin/env python3
"""Many partitions: produce throughput, broker CPU and memory at 10 to 20,000 partitions, amq vs Tansu.

For each partition count N (default 10, 1,000, 5,000 and 20,000) and each system, a fresh broker
and a topic of N partitions: amq (one broker, file WAL, SeaweedFS, started with start_cluster in
a temp dir of its own) and Tansu with memory storage (tests/peers.py), one system at a time. Per N:

- create: from CreateTopics until the metadata shows a leader for all N partitions (amq takes at
  most 10,000 partitions per request: above that the topic grows with CreatePartitions);
- warm-up: one record to every partition, then flush (what a first produce costs, e.g. opening a
  partition, is paid once, here);
- `--rounds` measured rounds: one librdkafka producer (linger.ms=5, acks=all, a queue large enough
  never to be full) produces `--records` records of `--size` bytes round-robin (partition i % N),
  poll(0) every 1,000 records, then flush; msg/s = records / (flush end - first produce). Each
  round's producer first sends one record and flushes, so its connection and metadata are not
  timed. The producer runs in a process of its own (spawn), so this script's sampling never
  holds its GIL.

Over each round, the broker's CPU seconds (psutil, user + system) and its RSS after the round; for
amq also the produce requests and partitions from its metrics endpoint, hence CPU us per request
and records per request. Reported: the median msg/s of the rounds, the ratio to the smallest N, and
whether amq's 5,000 / 10 ratio is at least Tansu-in-memory's in the same run.

    python3 benchmarks/partitions.py                       # results into BENCHMARKS.md
    python3 benchmarks/partitions.py --partitions 10,1000 --records 20000 --rounds 1 --no-write
    python3 benchmarks/partitions.py --systems amq --json partitions.json --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from confluent_kafka import KafkaError, KafkaException, Producer, libversion
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from automq_cli.cluster import ClusterOptions, start_cluster, stop_cluster
from benchmarks.report import provenance, write_section
from tests.peers import Tansu

BEGIN, END = "<!-- partitions:begin -->", "<!-- partitions:end -->"
SYSTEMS = ("amq", "tansu")
LABEL = {"amq": "amq", "tansu": "Tansu (memory)"}
#: Partitions one CreateTopics / CreatePartitions request may add on amq (engine/controller/state.py).
CREATE_CHUNK = 10_000
MiB = 1 << 20


def quiet_logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


# ---- the systems ---------------------------------------------------------------------------------


@dataclass
class Broker:
    """A running broker: where clients go, its pid, and (amq) its metrics URL."""

    system: str
    bootstrap: str
    pid: int
    metrics_url: str | None = None


@contextlib.contextmanager
def amq(root: Path) -> Iterator[Broker]:
    opts = ClusterOptions(dir=str(root / "data"), port=0)
    state = start_cluster(opts, home=root / "home")
    try:
        yield Broker("amq", state["bootstrap"], int(state["brokers"][0]["pid"]), state["metrics"][0])
    finally:
        stop_cluster(state, timeout=30)


@contextlib.contextmanager
def tansu(root: Path) -> Iterator[Broker]:
    peer = Tansu(root / "tansu").start(timeout=60)
    try:
        assert peer.pid is not None
        yield Broker("tansu", peer.bootstrap, peer.pid)
    finally:
        peer.stop()


def metrics(url: str | None) -> dict[str, Any]:
    if url is None:
        return {}
    with urllib.request.urlopen(url, timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its children."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


class PeakRss:
    """The broker's highest RSS while the block runs, sampled every 0.25 s in a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, rss(self.pid))
            if self._stop.wait(0.25):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, rss(self.pid))


# ---- topic creation ------------------------------------------------------------------------------


def create_topic(bootstrap: str, topic: str, n: int, timeout: float) -> tuple[float, str]:
    """Create `topic` with n partitions and wait until every one has a leader: (seconds, how)."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": quiet_logger("partitions.admin")}
    admin = AdminClient(conf)
    started = time.monotonic()
    how = "one CreateTopics"
    first = min(n, CREATE_CHUNK)
    try:
        admin.create_topics([NewTopic(topic, n, 1)], request_timeout=timeout, operation_timeout=timeout)[topic].result(
            timeout
        )
    except KafkaException as e:
        err = e.args[0]
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.INVALID_PARTITIONS and n > CREATE_CHUNK):
            raise
        # Over the broker's limit per request: create in chunks, each chunk visible before the next.
        admin.create_topics([NewTopic(topic, first, 1)], request_timeout=timeout, operation_timeout=timeout)[
            topic
        ].result(timeout)
        wait_leaders(admin, topic, first, started + timeout)
        have = first
        while have < n:
            have = min(n, have + CREATE_CHUNK)
            admin.create_partitions([NewPartitions(topic, have)], request_timeout=timeout, operation_timeout=timeout)[
                topic
            ].result(timeout)
            wait_leaders(admin, topic, have, started + timeout)
        how = f"CreateTopics {first:,} + CreatePartitions to {n:,} in steps of {CREATE_CHUNK:,}"
    wait_leaders(admin, topic, n, started + timeout)
    return time.monotonic() - started, how


def wait_leaders(admin: AdminClient, topic: str, n: int, deadline: float) -> None:
    seen = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(KafkaException):
            md = admin.list_topics(topic=topic, timeout=max(1.0, min(60.0, deadline - time.monotonic())))
            t = md.topics.get(topic)
            if t is not None and t.error is None:
                seen = sum(1 for p in t.partitions.values() if p.leader >= 0 and p.error is None)
                if len(t.partitions) == n and seen == n:
                    return
        time.sleep(0.2)
    raise TimeoutError(f"{topic}: {seen:,} of {n:,} partitions have a leader after the timeout")


# ---- the producer, in a process of its own ---------------------------------------------------


def producer_config(bootstrap: str, records: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "queue.buffering.max.messages": max(100_000, 2 * records),
        "queue.buffering.max.kbytes": 4 * 1024 * 1024,
        "message.timeout.ms": 900_000,
        # Only failures call back into Python: the producer's own Python work stays per record
        # (produce) and does not become the bottleneck at 200,000 msg/s.
        "delivery.report.only.error": True,
        "logger": quiet_logger("partitions.producer"),
    }


def _worker(commands: Any, results: Any, bootstrap: str, topic: str, n: int, records: int, size: int) -> None:
    """Commands: ("warmup",) and ("round",) then ("go",); None ends the process."""
    errors = 0

    def failed(err: Any, _msg: Any) -> None:
        nonlocal errors
        if err is not None:
            errors += 1

    value = b"x" * size
    while (cmd := commands.get()) is not None:
        errors = 0
        conf = {**producer_config(bootstrap, records), "on_delivery": failed}
        p = Producer(conf)
        if cmd[0] == "warmup":
            started = time.monotonic()
            for i in range(n):
                p.produce(topic, value, partition=i)
                if i % 1000 == 999:
                    p.poll(0)
            left = p.flush(900)
            results.put({"seconds": time.monotonic() - started, "errors": errors + left})
            continue
        p.produce(topic, value, partition=0)  # connection and metadata, outside the timed part
        p.flush(300)
        errors = 0
        results.put({"ready": True})
        commands.get()  # ("go",): the parent has taken its snapshot
        queue_full = 0
        started = time.monotonic()
        for i in range(records):
            while True:
                try:
                    p.produce(topic, value, partition=i % n)
                    break
                except BufferError:
                    queue_full += 1
                    p.poll(0.01)
            if i % 1000 == 999:
                p.poll(0)
        left = p.flush(900)
        ended = time.monotonic()
        results.put({"seconds": ended - started, "errors": errors + left, "queue_full": queue_full})


@dataclass
class Round:
    msg_s: float
    seconds: float
    errors: int
    queue_full: int
    cpu_s: float
    #: CPU seconds of the producer's process (librdkafka's threads included): is the client the limit?
    producer_cpu_s: float
    rss_after: int
    rss_peak: int
    #: Deltas of the broker's counters over the round (amq); None when it has none (Tansu).
    produce_requests: int | None = None
    produce_partitions: int | None = None
    produce_batches: int | None = None


@dataclass
class Point:
    """One system at one partition count."""

    system: str
    partitions: int
    create_s: float = 0.0
    create_how: str = ""
    warmup_s: float = 0.0
    warmup_errors: int = 0
    rss_idle: int = 0
    rss_created: int = 0
    rss_warm: int = 0
    rounds: list[Round] = field(default_factory=list)
    requests_counter: str | None = None  # which metrics counter gave the produce requests
    error: str | None = None

    @property
    def msg_s(self) -> float:
        return statistics.median(r.msg_s for r in self.rounds) if self.rounds else 0.0

    def total(self, name: str) -> int | None:
        values = [getattr(r, name) for r in self.rounds]
        return None if not values or any(v is None for v in values) else sum(values)


def counters(m: dict[str, Any]) -> tuple[int | None, int | None, int | None, str | None]:
    """(produce requests, produce partitions, produce batches, the requests counter's name)."""
    if not m:
        return None, None, None, None
    name = "produce_requests" if "produce_requests" in m else "requests_produce" if "requests_produce" in m else None
    req = int(m[name]) if name else None
    parts = int(m["produce_partitions"]) if "produce_partitions" in m else None
    batches = int(m["produce_batches"]) if "produce_batches" in m else None
    return req, parts, batches, name


def measure(broker: Broker, n: int, args: argparse.Namespace, root: Path) -> Point:
    point = Point(broker.system, n, rss_idle=rss(broker.pid))
    topic = f"parts-{n}"
    print(f"[{broker.system}] N={n:,}: creating the topic", flush=True)
    point.create_s, point.create_how = create_topic(broker.bootstrap, topic, n, args.create_timeout)
    point.rss_created = rss(broker.pid)
    print(f"[{broker.system}] N={n:,}: created in {point.create_s:.1f} s ({point.create_how}); warming up", flush=True)
    ctx = multiprocessing.get_context("spawn")
    commands, results = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(
        target=_worker, args=(commands, results, broker.bootstrap, topic, n, args.records, args.size), daemon=True
    )
    proc.start()
    assert proc.pid is not None
    client = proc.pid
    try:
        commands.put(("warmup",))
        warm = results.get(timeout=1200)
        point.warmup_s, point.warmup_errors = warm["seconds"], warm["errors"]
        point.rss_warm = rss(broker.pid)
        print(f"[{broker.system}] N={n:,}: warm-up {point.warmup_s:.1f} s ({warm['errors']} errors)", flush=True)
        for k in range(args.rounds):
            commands.put(("round",))
            results.get(timeout=600)  # ready
            before_m = metrics(broker.metrics_url)
            with PeakRss(broker.pid) as peak:
                before_cpu, before_client = cpu_seconds(broker.pid), cpu_seconds(client)
                commands.put(("go",))
                res = results.get(timeout=1200)
                cpu = cpu_seconds(broker.pid) - before_cpu
                client_cpu = cpu_seconds(client) - before_client
            after_m = metrics(broker.metrics_url)
            b_req, b_parts, b_batches, _ = counters(before_m)
            a_req, a_parts, a_batches, name = counters(after_m)
            point.requests_counter = name

            def delta(a: int | None, b: int | None) -> int | None:
                return None if a is None or b is None else a - b

            r = Round(
                msg_s=args.records / res["seconds"],
                seconds=res["seconds"],
                errors=res["errors"],
                queue_full=res["queue_full"],
                cpu_s=cpu,
                producer_cpu_s=client_cpu,
                rss_after=rss(broker.pid),
                rss_peak=peak.peak,
                produce_requests=delta(a_req, b_req),
                produce_partitions=delta(a_parts, b_parts),
                produce_batches=delta(a_batches, b_batches),
            )
            point.rounds.append(r)
            requests = "-" if r.produce_requests is None else f"{r.produce_requests:,}"
            print(
                f"[{broker.system}] N={n:,} round {k + 1}: {r.msg_s:,.0f} msg/s in {r.seconds:.2f} s, broker CPU "
                f"{r.cpu_s:.2f} s, producer CPU {r.producer_cpu_s:.2f} s, {requests} produce requests, "
                f"RSS {r.rss_after / MiB:.0f} MiB, errors {r.errors}",
                flush=True,
            )
        commands.put(None)
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        commands.close()
        results.close()
    return point


def run_system(system: str, args: argparse.Namespace, root: Path) -> list[Point]:
    """A fresh broker for every N, so its RSS and CPU are those of one topic of N partitions."""
    start = amq if system == "amq" else tansu
    points: list[Point] = []
    for n in args.partitions:
        run_root = root / f"{system}-{n}"
        run_root.mkdir()
        try:
            with start(run_root) as broker:
                points.append(measure(broker, n, args, run_root))
        except Exception as e:  # one N failing (a timeout at 20,000) still reports the others
            print(f"[{system}] N={n:,}: failed: {e!r}", flush=True)
            points.append(Point(system, n, error=f"{type(e).__name__}: {e}"))
    return points


# ---- the report ----------------------------------------------------------------------------------


def ratio(points: list[Point], n: int) -> float | None:
    ok = [p for p in points if p.rounds]
    base = min(ok, key=lambda p: p.partitions, default=None)
    at = next((p for p in ok if p.partitions == n), None)
    return at.msg_s / base.msg_s if at and base and base.msg_s else None


def table(results: dict[str, list[Point]]) -> list[str]:
    columns = [
        "system", "partitions", "create (s)", "warm-up (s)", "msg/s (median)", "ratio to smallest N",
        "broker CPU (% of a core)", "producer CPU (% of a core)", "broker CPU us / record", "produce requests / round",
        "broker CPU us / request", "records / request", "partitions / request", "broker RSS idle -> after (MiB)",
        "errors",
    ]  # fmt: skip
    rows = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for system, points in results.items():
        for p in points:
            if p.error is not None:
                rows.append(
                    f"| {LABEL[system]} | {p.partitions:,} | failed: {p.error[:120]} |" + " |" * (len(columns) - 3)
                )
                continue
            records = sum(r.msg_s * r.seconds for r in p.rounds)
            cpu = sum(r.cpu_s for r in p.rounds)
            client = sum(r.producer_cpu_s for r in p.rounds)
            wall = sum(r.seconds for r in p.rounds)
            req = p.total("produce_requests")
            parts = p.total("produce_partitions")
            if parts is None:
                parts = p.total("produce_batches")  # one batch per partition per request from librdkafka
                parts_note = " (batches)" if parts is not None else ""
            else:
                parts_note = ""
            r = ratio(points, p.partitions)
            errors = sum(x.errors for x in p.rounds) + p.warmup_errors
            cells = [
                LABEL[system],
                f"{p.partitions:,}",
                f"{p.create_s:.1f}",
                f"{p.warmup_s:.1f}",
                f"{p.msg_s:,.0f}",
                "-" if r is None else f"{r:.2f}",
                f"{cpu / wall * 100:.0f}",
                f"{client / wall * 100:.0f}",
                f"{cpu / records * 1e6:.1f}",
                "-" if req is None else f"{req / len(p.rounds):,.0f}",
                "-" if not req else f"{cpu / req * 1e6:,.0f}",
                "-" if not req else f"{records / req:.1f}",
                "-" if not req or parts is None else f"{parts / req:.2f}{parts_note}",
                f"{p.rss_idle / MiB:.0f} -> {p.rounds[-1].rss_after / MiB:.0f}",
                str(errors),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def goal(results: dict[str, list[Point]], n: int = 5000) -> str:
    a = ratio(results.get("amq", []), n)
    t = ratio(results.get("tansu", []), n)
    smallest = {s: min((p.partitions for p in pts if p.rounds), default=None) for s, pts in results.items()}
    if a is None or t is None or smallest.get("amq") != smallest.get("tansu"):
        line = f"Goal not evaluated: it needs both systems measured at {n:,} partitions and at the same smallest N."
        common = {p.partitions for p in results.get("amq", []) if p.rounds} & {
            p.partitions for p in results.get("tansu", []) if p.rounds
        }
        if len(common) > 1 and smallest.get("amq") == smallest.get("tansu"):
            top = max(common)
            ra, rt = ratio(results["amq"], top), ratio(results["tansu"], top)
            line += f" At {top:,}/{smallest['amq']:,}: amq {ra:.2f}, Tansu-in-memory {rt:.2f}."
        return line
    met = "MET" if a >= t else "NOT MET"
    return f"amq {n:,}/{smallest['amq']:,} ratio {a:.2f} vs Tansu-in-memory {t:.2f}: {met}"


def notes(results: dict[str, list[Point]]) -> list[str]:
    out = []
    for points in results.values():
        for p in points:
            if p.create_how and p.create_how != "one CreateTopics":
                out.append(f"- {LABEL[p.system]} at {p.partitions:,} partitions: created with {p.create_how}.")
            if p.requests_counter and p.requests_counter != "produce_requests":
                out.append(
                    f"- {LABEL[p.system]}: produce requests from the `{p.requests_counter}` counter; partitions "
                    "per request from `produce_batches` (librdkafka puts one batch per partition in a request)."
                )
            full = sum(r.queue_full for r in p.rounds)
            if full:
                out.append(f"- {LABEL[p.system]} at {p.partitions:,}: the producer's queue was full {full:,} times.")
    return list(dict.fromkeys(out))


def write_report(args: argparse.Namespace, rows: list[str], load: str) -> None:
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    body = [
        "## Many partitions: produce throughput, broker CPU and memory at 10 to 20,000 partitions",
        "",
        *provenance("benchmarks/partitions.py"),
        f"- Load average when the run started: {load} (the machine is shared).",
        f"- librdkafka {libversion()[0]} (confluent-kafka): one producer in a process of its own, linger.ms=5, "
        f"acks=all, {args.records:,} records of {args.size:,} B round-robin over N partitions (partition i % N), "
        f"poll(0) every 1,000, flush; msg/s = records / (flush end - first produce), median of {args.rounds} "
        f"round{'s' if args.rounds != 1 else ''}. A fresh broker per N (amq: one broker, file WAL, SeaweedFS; Tansu: memory storage), one "
        "system at a time. Create = CreateTopics until the metadata shows a leader for every partition; "
        "warm-up = one record to every partition and flush, before the measured rounds.",
        "- Broker CPU = user + system of the broker process (psutil) over the measured rounds, per second of "
        "round (% of a core), per record and per produce request; producer CPU = the same for the producer's "
        "process (librdkafka's threads included), to tell when the client is the limit. RSS idle = "
        "the fresh broker before the topic, after = at the end of the last round. Requests, records and "
        "partitions per request from amq's metrics endpoint (Tansu has none: -). librdkafka sends one "
        "partition per ProduceRequest (partitions / request = 1.00), so the broker's work per request is its "
        "work per partition, and at N partitions a linger window of records becomes up to N requests.",
        "",
        *rows,
        "",
    ]
    write_section(path, BEGIN, END, body)
    print(f"wrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="amq,tansu", help="comma-separated: amq, tansu")
    ap.add_argument("--partitions", default="10,1000,5000,20000", help="comma-separated partition counts")
    ap.add_argument("--records", type=int, default=50_000, help="records per measured round")
    ap.add_argument("--size", type=int, default=1024, help="record value bytes")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per partition count (median reported)")
    ap.add_argument("--create-timeout", type=float, default=900.0, help="seconds topic creation may take")
    ap.add_argument("--json", type=Path, help="write every figure (all rounds) here")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        ap.error(f"--systems takes {', '.join(SYSTEMS)}")
    args.partitions = sorted({int(x.replace("_", "")) for x in args.partitions.split(",") if x.strip()})
    if not args.partitions or args.partitions[0] < 1:
        ap.error("--partitions takes positive counts")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the brokers and remove the temp dir.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    results: dict[str, list[Point]] = {}
    with tempfile.TemporaryDirectory(prefix="amq-partitions-") as tmp:
        for system in [s for s in SYSTEMS if s in args.systems]:
            results[system] = run_system(system, args, Path(tmp))
    rows = [*table(results), "", goal(results), *notes(results)]
    print()
    print("\n".join(rows))
    print(f"\n(load average at start {load}; {time.monotonic() - started:.0f} s in all)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "librdkafka": libversion()[0],
                    "load_average_at_start": load,
                    "args": {k: v for k, v in vars(args).items() if k != "json"},
                    "goal": goal(results),
                    "results": {
                        s: [{**asdict(p), "msg_s_median": p.msg_s, "ratio": ratio(pts, p.partitions)} for p in pts]
                        for s, pts in results.items()
                    },
                },
                indent=1,
            )
        )
    if not args.no_write:
        write_report(args, rows, load)
    failed = any(p.error or any(r.errors for r in p.rounds) or p.warmup_errors for v in results.values() for p in v)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
