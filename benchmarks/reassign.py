#!/usr/bin/env python3
"""Reassignment benchmark: moving a 10 MiB and a 2 GiB partition, side by side, under produce load.

One local cluster (2 brokers, `nfs` WAL by default, temp dir, free ports). Two topics of one
partition each are filled to 10 MiB and 2 GiB on broker 0. Then an idempotent acks=all
librdkafka producer writes to both at a steady rate while each partition is moved 20 times
(alternating small and big, back and forth between the brokers) with
AlterPartitionReassignments. Per move it records, as the client sees it, the longest time a
record produced around the move waited for its acknowledgement (the unavailability: the
client retries its NOT_LEADER_OR_FOLLOWER errors itself), and from the controller the
phases of the move and the bytes uploaded. Prints p50/p99 per size and the ratio
2 GiB / 10 MiB; checks every acknowledged record afterwards.

    python3 benchmarks/reassign.py                    # results into BENCHMARKS.md
    python3 benchmarks/reassign.py --big-mib 256 --moves 5 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from automq_cli.cluster import ClusterOptions, start_cluster, stop_cluster
from automq_cli.kafka_wire import KafkaWire
from benchmarks.report import machine, write_section
from engine.controller import api
from engine.controller.rpc import request_sync
from engine.protocol.messages import AlterPartitionReassignmentsRequest as Alter

BEGIN, END = "<!-- reassign:begin -->", "<!-- reassign:end -->"


def fill(bootstrap: str, topic: str, mib: int) -> float:
    """Write `mib` MiB of 16 KiB records to partition 0; returns seconds taken."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 20, "batch.size": 1 << 20,
                  "queue.buffering.max.kbytes": 256 << 10})  # fmt: skip
    value = b"x" * (16 << 10)
    started = time.monotonic()
    for _ in range(mib * 64):
        while True:
            try:
                p.produce(topic, value=value, partition=0)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(300) == 0, "the fill did not finish"
    return time.monotonic() - started


@dataclass
class Load:
    """Idempotent acks=all records to partition 0 of each topic; remembers each record's wait."""

    bootstrap: str
    topics: list[str]
    rate: int = 200  # records/s per topic
    waits: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # topic -> (sent, waited)
    acked: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # topic -> (offset, seq)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Load:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 1, "message.timeout.ms": 120_000})  # fmt: skip

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
                return
            waited = time.time() - msg.timestamp()[1] / 1000
            self.waits.setdefault(msg.topic(), []).append((time.monotonic() - waited, waited))
            self.acked.setdefault(msg.topic(), []).append((msg.offset(), int(msg.value()[:12])))

        seq = 0
        started = time.monotonic()
        pad = b" " * 1000
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while seq < due:
                for t in self.topics:
                    p.produce(t, value=b"%012d" % seq + pad, partition=0, on_delivery=on_delivery)
                seq += 1
            p.poll(0.002)
        p.flush(120)

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(150)

    def longest_wait(self, topic: str, start: float, end: float) -> float:
        return max((w for sent, w in self.waits.get(topic, []) if start <= sent <= end), default=0.0)


def leader(bootstrap: str, topic: str) -> int:
    md = (
        AdminClient({"bootstrap.servers": bootstrap, "client.id": "bench&automq_route=leader"})
        .list_topics(topic, timeout=10)
        .topics[topic]
    )
    return int(md.partitions[0].leader)


def move(bootstrap: str, topic: str, to: int) -> None:
    req = Alter(topics=[Alter.ReassignableTopic(topic, [Alter.ReassignablePartition(0, [to])])])
    with KafkaWire(bootstrap) as w:
        res = w.request(req, 0)
    code = res.responses[0].partitions[0].error_code
    assert code == 0, res


def check(bootstrap: str, load: Load) -> tuple[int, int, int]:
    """(acknowledged, lost, duplicated) over both topics, reading the load's records back."""
    acked = lost = dup = 0
    for topic, recs in load.acked.items():
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "enable.auto.commit": False})
        first = min(o for o, _ in recs)
        end = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
        c.assign([TopicPartition(topic, 0, first)])
        got: dict[int, int] = {}
        seqs: list[int] = []
        deadline = time.monotonic() + 120
        while (not got or max(got) < end - 1) and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error() is None:
                    got[m.offset()] = int(m.value()[:12])
                    seqs.append(got[m.offset()])
        c.close()
        acked += len(recs)
        missing = [(o, s, got.get(o)) for o, s in recs if got.get(o) != s]
        if missing:
            print(f"{topic}: {len(missing)} of {len(recs)} acknowledged records not read back as acknowledged, "
                  f"e.g. (offset, seq, read) {missing[:5]}; read {len(got)} records up to {max(got, default=-1)}, "
                  f"end {end}", flush=True)  # fmt: skip
        lost += len(missing)
        dup += len(seqs) - len(set(seqs))
    return acked, lost, dup


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wal", default="nfs", choices=["nfs", "s3", "file"])
    ap.add_argument("--small-mib", type=int, default=10)
    ap.add_argument("--big-mib", type=int, default=2048)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="amq-reassign-") as tmp:
        home = Path(tmp) / "home"
        opts = ClusterOptions(dir=str(Path(tmp) / "c"), brokers=2, wal=args.wal, port=0)
        state = start_cluster(opts, home=home)
        try:
            run(state, args)
        finally:
            stop_cluster(state)


def run(state: dict[str, Any], args: argparse.Namespace) -> None:
    bootstrap = str(state["bootstrap"])
    sizes = {"small": args.small_mib, "big": args.big_mib}
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "bench&automq_route=leader"})
    for name in sizes:
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
        if leader(bootstrap, name) != 0:
            move(bootstrap, name, 0)
    for name, mib in sizes.items():
        took = fill(bootstrap, name, mib)
        print(f"filled {name}: {mib} MiB in {took:.1f} s", flush=True)
    load = Load(bootstrap, list(sizes)).start()
    time.sleep(3)
    since_ms = int(time.time() * 1000)
    windows: dict[str, list[tuple[float, float]]] = {n: [] for n in sizes}
    for i in range(args.moves):
        for name in sizes:
            to = 1 - leader(bootstrap, name)
            t = time.monotonic()
            move(bootstrap, name, to)
            deadline = t + 30
            while leader(bootstrap, name) != to and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(1.0)
            windows[name].append((t - 0.2, t + 1.0))
        print(f"round {i + 1}/{args.moves} done", flush=True)
    time.sleep(1)
    load.finish()
    moves = request_sync(str(state["controller"]), api.ListMoves()).moves
    acked, lost, dup = check(bootstrap, load)
    normal = statistics.median(w for ws in load.waits.values() for _, w in ws)
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for name, mib in sizes.items():
        unavail = [load.longest_wait(name, a, b) * 1000 for a, b in windows[name]]
        mine = [m for m in moves if m.topic == name and m.state == "done" and m.requested_ms >= since_ms]
        opened = [m.opened_ms - m.requested_ms for m in mine]
        uploaded = [m.uploaded_bytes for m in mine]
        snap = sum(m.from_snapshot for m in mine)
        summary[name] = {"p50": pct(unavail, 0.5), "p99": pct(unavail, 0.99), "open_p50": pct(opened, 0.5)}
        size = f"{mib} MiB" if mib < 1024 else f"{mib / 1024:g} GiB"
        rows.append(
            f"| {size} | {len(mine)} | {pct(unavail, 0.5):.0f} | {pct(unavail, 0.99):.0f} | {max(unavail):.0f} | "
            f"{pct(opened, 0.5):.0f} | {pct(opened, 0.99):.0f} | {max(uploaded) / 1024:.0f} KiB | {snap}/{len(mine)} |"
        )
    ratio50 = summary["big"]["p50"] / summary["small"]["p50"]
    ratio99 = summary["big"]["p99"] / summary["small"]["p99"]
    body = [
        "",
        "## Reassignment: size-independent moves",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {machine()}; `{args.wal}` WAL, 2 brokers, SeaweedFS on "
        f"loopback. Command: `python3 benchmarks/reassign.py{' --wal ' + args.wal if args.wal != 'nfs' else ''}`.",
        "",
        f"Each partition moved {args.moves} times between the two brokers (AlterPartitionReassignments) while an "
        "idempotent acks=all librdkafka producer wrote 200 records/s of 1 KiB to each. Unavailability = the longest "
        "a record produced around the move waited for its acknowledgement, as the client saw it (its "
        f"NOT_LEADER_OR_FOLLOWER retries included; a record's normal wait here is {normal * 1000:.1f} ms, p50). "
        "Open = from the request until the new leader had opened the partition (controller's move record).",
        "",
        "| partition | moves | unavailable p50 ms | p99 ms | max ms | open p50 ms | open p99 ms | max uploaded | "
        "opened from snapshot |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Ratio {args.big_mib / 1024:g} GiB / {args.small_mib} MiB: p50 {ratio50:.2f}, p99 {ratio99:.2f} "
        "(goal <= 1.2). Goal p99 < 500 ms at both sizes: "
        f"{'met' if max(s['p99'] for s in summary.values()) < 500 else 'not met'}. "
        f"Acknowledged {acked:,} records, lost {lost}, duplicated {dup}.",
        "",
        "Most of the unavailability is the client's own retry: after the NOT_LEADER_OR_FOLLOWER answer librdkafka "
        "waits retry.backoff.ms (100 ms by default) before it resends to the new leader, which had the partition "
        "open after the 'open' column's time.",
        "",
        "For comparison (seed figures, not measured here): Kafka moves a partition by copying it, 12 minutes for "
        "30 GiB; AutoMQ moves by metadata in about 2.2 s. amq's move uploads only what the old leader's WAL holds for "
        "that stream (the max uploaded column) and hands the producer state over as a snapshot, so the new leader "
        "reads nothing of the partition's history.",
    ]
    print("\n".join(body))
    if not args.no_write:
        write_section(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", BEGIN, END, body)


if __name__ == "__main__":
    main()
