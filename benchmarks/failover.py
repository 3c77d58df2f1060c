#!/usr/bin/env python3
"""Failover benchmark: kill -9 (and controlled shutdown) of a broker under produce load.

For each WAL kind, one local cluster (`amq cluster up` code, temp dir, free ports):
nfs and s3 with 3 brokers in 3 zones; file with 4 brokers in 3 zones, so the killed
broker (in az1) has a same-zone survivor that may take its WAL over. Each trial makes
a new 12-partition topic (placed over every running broker), runs an idempotent
acks=all librdkafka producer, kills a broker that leads some of the partitions, keeps
producing until every partition took writes again, restarts the broker (it comes
back live and empty), and reads the topic back. Per trial it prints the time from
the kill until every partition the victim led acknowledged a produce again, and the
acknowledged / lost / duplicated counts; then p50 and max per kind. A few
SIGSTOP trials per kind measure the same for a broker that hangs (its
connections stay open, so only the session timeout fences it), and a few
controlled shutdowns (SIGTERM) the longest gap between acknowledgements of a
handed-off partition.

    python3 benchmarks/failover.py                      # 10 kills per kind, results into BENCHMARKS.md
    python3 benchmarks/failover.py --trials 2 --kinds nfs --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from automq_cli.cluster import ClusterOptions, kill_pid, start_broker, start_cluster, stop_cluster
from automq_cli.cluster.processes import stop_pid
from automq_cli.cluster.state import write_state
from benchmarks.report import machine, write_section

PARTITIONS = 12
BEGIN, END = "<!-- failover:begin -->", "<!-- failover:end -->"


@dataclass
class Load:
    bootstrap: str
    topic: str
    acked: dict[int, list[tuple[int, int, float]]] = field(default_factory=dict)  # partition -> (offset, seq, t)
    #: partition -> (sent, waited): when a record was produced (monotonic) and how long until its acknowledgement.
    waits: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    rate: int = 5000  # records/s offered

    def start(self) -> Load:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 5, "message.timeout.ms": 120_000})  # fmt: skip

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                now = time.monotonic()
                self.acked.setdefault(msg.partition(), []).append((msg.offset(), int(msg.value()), now))
                waited = time.time() - msg.timestamp()[1] / 1000  # the record's CreateTime is when it was produced
                self.waits.setdefault(msg.partition(), []).append((now - waited, waited))

        seq = 0
        started = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while seq < due:
                p.produce(self.topic, value=b"%d" % seq, partition=seq % PARTITIONS, on_delivery=on_delivery)
                seq += 1
            p.poll(0.002)
        p.flush(120)

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(150)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.acked.values())


def read_back(bootstrap: str, topic: str) -> dict[int, list[tuple[int, int]]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{topic}", "enable.auto.commit": False})
    out: dict[int, list[tuple[int, int]]] = {}
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(PARTITIONS)}
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 120
        while sum(len(v) for v in out.values()) < sum(ends.values()) and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error() is None:
                    out.setdefault(m.partition(), []).append((m.offset(), int(m.value())))
    finally:
        c.close()
    return out


def verify(load: Load, got: dict[int, list[tuple[int, int]]]) -> tuple[int, int, int]:
    """(lost, duplicated, partitions out of order)."""
    lost = dup = reordered = 0
    for part, recs in load.acked.items():
        have = dict(got.get(part, []))
        lost += sum(1 for o, s, _ in recs if have.get(o) != s)
    for recs in got.values():
        seqs = [s for _, s in recs]
        dup += len(seqs) - len(set(seqs))
        reordered += seqs != sorted(seqs)
    return lost, dup, reordered


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    md = (
        AdminClient({"bootstrap.servers": bootstrap, "client.id": "bench&automq_route=leader"})
        .list_topics(topic, timeout=10)
        .topics[topic]
        .partitions
    )
    return {p: md[p].leader for p in md}


def back_after(load: Load, parts: list[int], t: float) -> float | None:
    """Seconds from `t` until every partition in `parts` had an acknowledgement after it (None: never)."""
    if not parts:
        return 0.0
    firsts = []
    for p in parts:
        later = [ts for _, _, ts in load.acked.get(p, []) if ts > t + 0.2]
        if not later:
            return None
        firsts.append(min(later))
    return max(firsts) - t


def longest_wait(load: Load, parts: list[int], start: float, end: float, acked_by: float = float("inf")) -> float:
    """The longest a record of `parts` produced within [start, end] (and acknowledged by `acked_by`) waited."""
    return max(
        (w for p in parts for sent, w in load.waits.get(p, []) if start <= sent <= end and sent + w <= acked_by),
        default=0.0,
    )


def longest_gap(load: Load, parts: list[int], start: float, end: float) -> float:
    """The longest time between two acknowledgements of one of `parts` within [start, end]."""
    gaps = []
    for p in parts:
        ts = [x for _, _, x in load.acked.get(p, []) if start <= x <= end]
        gaps.append(max((b - a for a, b in itertools.pairwise(ts)), default=0.0))
    return max(gaps, default=0.0)


@dataclass
class Trial:
    kind: str
    action: str
    victim: int
    affected: int
    seconds: float | None
    normal_gap: float
    longest_wait: float
    normal_wait: float
    acked: int
    lost: int
    duplicated: int
    reordered: int
    errors: int


def run_trial(state: dict[str, Any], home: Path, kind: str, n: int, action: str, victims: list[int]) -> Trial:
    bootstrap = str(state["bootstrap"])
    topic = f"{action}-{kind}-{n}-{int(time.time())}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "bench&automq_route=leader"})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    before = leaders(bootstrap, topic)
    # Take turns, skipping a candidate that leads nothing of this topic.
    turn = victims[n % len(victims) :] + victims[: n % len(victims)]
    victim = next((v for v in turn if v in before.values()), turn[0])
    affected = [p for p, b in before.items() if b == victim]
    load = Load(bootstrap, topic).start()
    time.sleep(2.0)
    pid = int(state["pids"][f"broker-{victim}"])
    t = time.monotonic()
    if action == "kill":
        kill_pid(pid)
    elif action == "pause":
        os.kill(pid, signal.SIGSTOP)  # hangs with its connections open: only the session timeout fences it
    else:
        stop_pid(pid, f"broker-{victim}", timeout=30)
    reopened: float | None = None
    if action == "pause":
        # An idempotent producer does not move on while requests to the hung broker are in flight
        # (until it answers or request.timeout.ms passes, as with Kafka): measure the cluster side,
        # the moment the controller has reopened the partitions elsewhere, then wake the broker.
        deadline = time.monotonic() + 60
        while reopened is None and time.monotonic() < deadline:
            if _reopened(state, victim):
                reopened = time.monotonic() - t
            time.sleep(0.05)
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while back_after(load, affected, t) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    load.finish()
    if action == "pause":
        deadline = time.monotonic() + 60  # it finds itself fenced and rejoins, empty; then restart it like the others
        while not _rejoined(state, victim) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop_pid(pid, f"broker-{victim}", timeout=30)
    # Acknowledgements come in batches (an s3 WAL writes every 250 ms): the gap before the event is the baseline.
    normal = longest_gap(load, affected, t - 1.5, t)
    waited = longest_wait(load, affected, t, t + 10)
    normal_wait = longest_wait(load, affected, t - 1.5, t - 0.3, acked_by=t)
    if action == "stop":
        seconds: float | None = longest_gap(load, affected, t - 0.1, t + 10)
    elif action == "pause":
        seconds = reopened
    else:
        seconds = back_after(load, affected, t)
    lost, dup, reordered = verify(load, read_back(bootstrap, topic))
    start_broker(state, victim)
    write_state(state, home)
    return Trial(kind, action, victim, len(affected), seconds, normal, waited, normal_wait, load.total, lost, dup,
                 reordered, len(load.errors))  # fmt: skip


def _status(state: dict[str, Any]) -> Any:
    from engine.controller import api
    from engine.controller.rpc import RpcError, request_sync

    try:
        return request_sync(str(state["controller"]), api.Status(), timeout=2.0)
    except (RpcError, OSError):
        return None


def _rejoined(state: dict[str, Any], broker: int) -> bool:
    status = _status(state)
    return status is not None and any(b.id == broker and b.state == "running" for b in status.brokers)


def _reopened(state: dict[str, Any], broker: int) -> bool:
    """The broker is fenced, its WAL uploaded and every partition has a running leader."""
    status = _status(state)
    return (
        status is not None
        and any(b.id == broker and b.state == "fenced" for b in status.brokers)
        and not status.wal_takeovers
        and status.offline_partitions == 0
    )


def start(kind: str, root: Path, session_timeout: float) -> tuple[dict[str, Any], Path]:
    directory = root / kind
    opts = ClusterOptions(dir=str(directory / "data"), port=0, wal=kind, wal_capacity=64 << 20, upload_interval_s=0.5)
    opts.brokers = 4 if kind == "file" else 3
    opts.zones = ["az1", "az2", "az3"]
    opts.session_timeout = session_timeout
    home = directory / "home"
    return start_cluster(opts, home=home), home


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="kill -9 trials per WAL kind")
    ap.add_argument("--shutdowns", type=int, default=3, help="controlled shutdowns per WAL kind")
    ap.add_argument("--pauses", type=int, default=3, help="SIGSTOP trials per WAL kind (fenced by the session timeout)")
    ap.add_argument("--kinds", default="nfs,s3,file")
    ap.add_argument("--session-timeout", type=float, default=3.0)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = ap.parse_args()
    trials: list[Trial] = []
    print(
        "| WAL | action | trial | victim | partitions affected | unavailable (s) | normal gap before (s) | "
        "longest wait of a record produced after (s) | acked | lost | duplicated | reordered | client errors |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="amq-failover-") as tmp:
        for kind in args.kinds.split(","):
            state, home = start(kind, Path(tmp), args.session_timeout)
            try:
                # file: the victims are az1's brokers (0 and 3), which can take each other's WAL over.
                victims = [0, 3] if kind == "file" else [0, 1, 2]
                plan = [("kill", i) for i in range(args.trials)] + [("stop", i) for i in range(args.shutdowns)]
                plan += [("pause", i) for i in range(args.pauses)]
                for n, (action, i) in enumerate(plan):
                    tr = run_trial(state, home, kind, n, action, victims)
                    trials.append(tr)
                    secs = "never" if tr.seconds is None else f"{tr.seconds:.2f}"
                    print(f"| {kind} | {action} | {i + 1} | {tr.victim} | {tr.affected} | {secs} | {tr.normal_gap:.2f} | "
                          f"{tr.longest_wait:.2f} | {tr.acked:,} | {tr.lost} | {tr.duplicated} | {tr.reordered} | {tr.errors} |",
                          flush=True)  # fmt: skip
            finally:
                stop_cluster(state, timeout=20)
    summary = [
        "| WAL | kill -9: p50 unavailable (s) | max (s) | SIGSTOP: p50 unavailable (s) | max (s) | "
        "controlled shutdown: p50 gap (s) | max gap (s) | longest wait of a record produced after it (s) | "
        "normal gap between acks (s) | normal longest wait (s) | acked | lost | duplicated | reordered | "
        "client errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in args.kinds.split(","):
        mine = [t for t in trials if t.kind == kind]
        kills = [t.seconds for t in mine if t.action == "kill" and t.seconds is not None]
        never = sum(1 for t in mine if t.action == "kill" and t.seconds is None)
        stops = [t.seconds or 0.0 for t in mine if t.action == "stop"]
        pauses = [t.seconds for t in mine if t.action == "pause" and t.seconds is not None]

        def fmt(values: list[float], f: Any) -> str:
            return f"{f(values):.2f}" if values else "-"

        mx = fmt(kills, max) + (f" ({never} never)" if never else "")
        summary.append(
            f"| {kind} | {fmt(kills, statistics.median)} | {mx} | {fmt(pauses, statistics.median)} | "
            f"{fmt(pauses, max)} | {fmt(stops, statistics.median)} | {fmt(stops, max)} | "
            f"{fmt([t.longest_wait for t in mine if t.action == 'stop'], max)} | "
            f"{fmt([t.normal_gap for t in mine], statistics.median)} | "
            f"{fmt([t.normal_wait for t in mine], statistics.median)} | {sum(t.acked for t in mine):,} | "
            f"{sum(t.lost for t in mine)} | {sum(t.duplicated for t in mine)} | {sum(t.reordered for t in mine)} | "
            f"{sum(t.errors for t in mine)} |"
        )
    print()
    print("\n".join(summary))
    bad = sum(t.lost + t.duplicated + t.reordered for t in trials)
    if not args.no_write:
        write_report(args, summary)
    return 1 if bad else 0


def write_report(args: argparse.Namespace, summary: list[str]) -> None:
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    cmd = "python3 benchmarks/failover.py" + ("" if sys.argv[1:] == [] else " " + " ".join(sys.argv[1:]))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "## Failover: kill -9 and controlled shutdown under load",
        "",
        f"- Date: {now}",
        f"- Machine: {machine()}",
        f"- Command: `{cmd}`",
        f"- Per WAL kind one local cluster: nfs and s3 with 3 brokers in 3 zones, file with 4 brokers in 3 zones "
        f"(the victim, in az1, has a same-zone survivor). Session timeout {args.session_timeout:g} s, heartbeats "
        "every 1 s. Each trial: a new 12-partition topic, an idempotent acks=all librdkafka producer at 5,000 "
        "records/s round robin, kill -9 (or SIGTERM) of a broker leading some partitions, then everything is read "
        "back and checked record by record.",
        "- Unavailable = from the kill (or SIGSTOP) until every partition the victim led acknowledged a produce "
        "again. The controller fences a broker 1.5 s after its connection closed (a killed process closes it); a "
        "SIGSTOP'd broker keeps its connections open and is fenced by the session timeout, counted from its last "
        "heartbeat (up to 1 s before the pause); its column is the time until the controller had reopened its "
        "partitions elsewhere (an idempotent producer with requests in flight to the hung broker waits for them "
        "until the broker answers or request.timeout.ms passes, as with Kafka; the trial then sends SIGCONT, and "
        "the broker finds itself fenced, answers, and rejoins). Controlled "
        "shutdown = the longest gap between two acknowledgements of a handed-off partition; the normal gap is the "
        "longest one in the 1.5 s before (an s3 WAL acknowledges in 250 ms batches); the longest wait is the most "
        "any record produced after the SIGTERM waited for its acknowledgement (its CreateTime to its delivery "
        "report), the time a partition was unavailable to a record; the normal longest wait is the same for records "
        "produced 1.5 to 0.3 s before and acknowledged before it.",
        "",
        *summary,
        "",
    ]
    write_section(path, BEGIN, END, body)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
