#!/usr/bin/env python3
"""Scaling and auto-balancer benchmark: scale out 1 -> 3, scale in 3 -> 2, and a cluster with every partition on one broker.

Two local clusters, one after the other, in one run (temp dirs, free ports, `nfs` WAL by default; SeaweedFS,
the controller and the brokers are real processes, the clients librdkafka):

1. Scale out and in. One broker, a 24-partition topic, an idempotent acks=all producer (a few MiB/s of 1 KiB
   records) and a committing consumer group. `amq scale out --brokers 2 --json` adds two brokers; the time
   until they carry their share is taken from the CLI (`seconds_after_register`), from the controller's move
   records (last first produce accepted by a new leader) and from the client: from the later of the two
   registrations (first seen in the controller's Status) until every broker leads 8 +- 1 of the topic's
   partitions and every partition that moved has acknowledged a produce on its new broker. Then
   `amq scale in --broker 2 --json` drains broker 2 (time, partitions moved, the longest wait of a record
   produced meanwhile), and everything is read back: acknowledged / lost / duplicated, and what the group saw.
2. Balancer. Three brokers (three zones), auto-balancer on with its defaults (a round every 5 s, 60 s cooldown,
   loads reported every 5 s). A 24-partition topic with a skewed load (6 partitions carry 4x the others) and a
   consumer group; every partition, `__consumer_offsets` included, is moved to broker 0 with the controller's
   Reassign (what AutoMQ's users saw after restarts). Time from then until balanced: partition counts (all
   partitions) within the mean +- 1 per broker and, while the cluster carries >= 1 MiB/s, max broker throughput
   (in + out, as the brokers report it to the controller) / mean <= 1.2. Then the load runs steady for
   `--steady-s` seconds and every move the balancer makes in that time is counted (goal 0).

    python3 benchmarks/scale.py                                  # results into BENCHMARKS.md
    python3 benchmarks/scale.py --steady-s 20 --no-write         # quick
    python3 benchmarks/scale.py --only balancer --steady-s 30 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from automq_cli.cluster import ClusterOptions, parse_zones, start_cluster, stop_cluster
from automq_cli.cluster.processes import pid_alive, terminate_pids
from automq_cli.cluster.state import find_state
from benchmarks.report import machine, write_section
from engine.controller import api
from engine.controller.rpc import request_sync

BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
PARTITIONS = 24
RECORD = 1024
OFFSETS = "__consumer_offsets"
MIB = float(1 << 20)


# ---------------------------------------------------------------------------------------------- clients


@dataclass
class Load:
    """An idempotent acks=all producer: `rate` records/s of RECORD bytes, partition p gets weights[p] shares."""

    bootstrap: str
    topic: str
    rate: int
    weights: list[int]
    acked: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # partition -> (offset, seq)
    ack_times: dict[int, list[float]] = field(default_factory=dict)  # partition -> wall-clock ack times
    waits: list[tuple[float, float]] = field(default_factory=list)  # (produced at, waited s), wall clock
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    unflushed: int = 0

    def start(self) -> Load:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 5, "message.timeout.ms": 120_000})  # fmt: skip
        schedule = [part for part, w in enumerate(self.weights) for _ in range(w)]
        # Interleave the schedule so a heavy partition's records do not come in bursts.
        schedule = [x for _, x in sorted((i / self.weights[x] + x * 1e-6, x) for i, x in _ranks(schedule))]

        def on_delivery(err: Any, msg: Any) -> None:
            now = time.time()
            if err is not None:
                self.errors.append(str(err))
                return
            part = msg.partition()
            self.acked.setdefault(part, []).append((msg.offset(), int(msg.value()[:12])))
            self.ack_times.setdefault(part, []).append(now)
            waited = now - msg.timestamp()[1] / 1000  # CreateTime: when it was produced
            self.waits.append((now - waited, waited))

        pad = b" " * (RECORD - 12)
        started = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                part = schedule[self.sent % len(schedule)]
                try:
                    p.produce(self.topic, value=b"%012d" % self.sent + pad, partition=part, on_delivery=on_delivery)
                except BufferError:
                    break
                self.sent += 1
            p.poll(0.005)
        self.unflushed = p.flush(120)

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(150)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.acked.values())

    def longest_wait(self, start: float, end: float) -> float:
        """The longest a record produced between start and end (wall clock) waited for its acknowledgement."""
        return max((w for sent, w in self.waits if start <= sent <= end), default=0.0)

    def longest_ack_gap(self, start: float, end: float) -> float:
        """Per partition, the longest time without an acknowledgement between start and end; the max over partitions."""
        worst = 0.0
        for times in self.ack_times.values():
            inside = [start] + [t for t in times if start <= t <= end] + [end]
            worst = max(worst, max(b - a for a, b in itertools.pairwise(inside)))
        return worst


def _ranks(schedule: list[int]) -> list[tuple[int, int]]:
    seen: Counter[int] = Counter()
    out = []
    for x in schedule:
        out.append((seen[x], x))
        seen[x] += 1
    return out


@dataclass
class GroupReader:
    """A consumer group member that commits after each batch; remembers the sequence numbers it saw."""

    bootstrap: str
    topic: str
    group: str
    seen: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    assigned: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    commit_failures: int = 0

    def start(self) -> GroupReader:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "session.timeout.ms": 10_000})  # fmt: skip
        c.subscribe([self.topic], on_assign=lambda _c, _parts: self.assigned.set())
        try:
            while not self.stop.is_set():
                msgs = c.consume(2000, 0.2)
                for m in msgs:
                    if m.error() is None:
                        self.seen.append(int(m.value()[:12]))
                if msgs:
                    try:
                        c.commit(asynchronous=False)
                    except KafkaException as e:
                        # A coordinator that moved answers retriable errors; the next commit carries the offsets.
                        self.commit_failures += 1
                        err = e.args[0]
                        if not err.retriable():
                            self.errors.append(str(err))
        finally:
            c.close()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)


def read_back(bootstrap: str, topic: str) -> dict[int, list[tuple[int, int]]]:
    """Every record of every partition from offset 0, as (offset, seq)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{topic}", "enable.auto.commit": False,
                  "fetch.max.bytes": 8 << 20})  # fmt: skip
    out: dict[int, list[tuple[int, int]]] = {}
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(PARTITIONS)}
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 300
        while sum(len(v) for v in out.values()) < sum(ends.values()) and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error() is None:
                    out.setdefault(m.partition(), []).append((m.offset(), int(m.value()[:12])))
    finally:
        c.close()
    return out


@dataclass
class Check:
    acked: int
    lost: int
    duplicated: int
    reordered: int
    group_missed: int
    group_reread: int
    examples: list[str]

    def line(self) -> str:
        return (f"acknowledged {self.acked:,}, lost {self.lost}, duplicated {self.duplicated}, partitions out of order "
                f"{self.reordered}; the group missed {self.group_missed} and re-read {self.group_reread}")  # fmt: skip


def verify(load: Load, reader: GroupReader, got: dict[int, list[tuple[int, int]]]) -> Check:
    lost = dup = reordered = 0
    examples: list[str] = []
    for part, recs in load.acked.items():
        have = dict(got.get(part, []))
        missing = [(o, s, have.get(o)) for o, s in recs if have.get(o) != s]
        lost += len(missing)
        if missing:
            examples.append(f"partition {part}: {len(missing)} of {len(recs)} not read back as acknowledged, "
                            f"e.g. (offset, seq, read) {missing[:3]}; read {len(have)}")  # fmt: skip
    for recs in got.values():
        seqs = [s for _, s in recs]
        dup += len(seqs) - len(set(seqs))
        reordered += seqs != sorted(seqs)
    acked_seqs = {s for recs in load.acked.values() for _, s in recs}
    seen = set(reader.seen)
    return Check(load.total, lost, dup, reordered, len(acked_seqs - seen), len(reader.seen) - len(seen), examples)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "client.id": "bench&automq_route=leader"}
    )  # kept until the result: its handle must outlive the call
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def leaders(admin: AdminClient, topic: str) -> dict[int, int]:
    md = admin.list_topics(topic, timeout=10).topics[topic].partitions
    return {p: int(md[p].leader) for p in md}


def status(state: dict[str, Any]) -> api.StatusResult:
    return request_sync(str(state["controller"]), api.Status())


def moves(state: dict[str, Any]) -> list[api.MoveRecord]:
    return request_sync(str(state["controller"]), api.ListMoves()).moves


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def within_one(counts: list[int]) -> bool:
    mean = sum(counts) / len(counts)
    return all(mean - 1 <= c <= mean + 1 for c in counts)


# ---------------------------------------------------------------------------------------------- clusters


class Cluster:
    """A local cluster in a temp dir, stopped by pid at the end, brokers the CLI added or removed included."""

    def __init__(self, root: Path, name: str, opts: ClusterOptions) -> None:
        self.home = root / f"{name}-home"
        opts.dir = str(root / name)
        opts.port = 0
        self.state: dict[str, Any] = {}
        self.known: dict[str, int] = {}
        self.state = start_cluster(opts, home=self.home)
        self._remember()

    def _remember(self) -> None:
        self.known |= {n: p for n, p in (self.state.get("pids") or {}).items() if isinstance(p, int)}

    @property
    def bootstrap(self) -> str:
        return str(self.state["bootstrap"])

    def amq(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AMQ_HOME": str(self.home)}
        cmd = [sys.executable, "-m", "automq_cli.main", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)

    def reload(self) -> None:
        fresh = find_state(self.home, self.state["dir"])
        if fresh is not None:
            self.state = fresh
            self._remember()

    def stop(self) -> None:
        self.reload()
        stop_cluster(self.state, timeout=30)
        # Brokers the fresh state no longer names (removed by `amq scale in`, or left by a failed command).
        left = {n: p for n, p in self.known.items() if pid_alive(p, n)}
        if left:
            terminate_pids(left, timeout=10)


class Poller:
    """Samples the controller's Status (and optionally a topic's leaders) every `every` seconds in a thread."""

    def __init__(self, state: dict[str, Any], every: float, topic: str | None = None) -> None:
        self.state, self.every, self.topic = state, every, topic
        self.status: list[tuple[float, api.StatusResult]] = []
        self.leaders: list[tuple[float, dict[int, int]]] = []
        #: Status sample time -> the topic's leaders fetched right after it.
        self.leaders_at: dict[float, dict[int, int]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def _run(self) -> None:
        admin = (
            AdminClient({"bootstrap.servers": str(self.state["bootstrap"]), "client.id": "bench&automq_route=leader"})
            if self.topic
            else None
        )
        while not self._stop.is_set():
            t = time.time()
            try:
                self.status.append((t, status(self.state)))
                if admin is not None and self.topic is not None:
                    lead = leaders(admin, self.topic)
                    self.leaders.append((time.time(), lead))
                    self.leaders_at[t] = lead
            except Exception as e:  # a sample lost is not a failure of the run
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(max(0.0, self.every - (time.time() - t)))

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(30)


# ---------------------------------------------------------------------------------------------- 1: scale out/in


@dataclass
class ScaleResult:
    mibps: float
    cli_out: dict[str, Any]
    registered_s: dict[int, float]  # broker -> seconds after the command started
    share_client_s: float | None
    share_server_s: float | None
    out_moves: Counter[str]
    led_after_out: dict[int, int]
    out_gap_ms: float
    between_moves: Counter[str]
    between_s: float
    cli_in: dict[str, Any]
    in_moves: Counter[str]
    in_gap_ms: float
    in_ack_gap_ms: float
    normal_wait_ms: float
    leftovers: list[str]
    check: Check
    errors: list[str]


def run_scale(root: Path, args: argparse.Namespace) -> ScaleResult:
    cluster = Cluster(root, "scale", ClusterOptions(brokers=1, wal=args.wal))
    try:
        return _scale(cluster, args)
    finally:
        cluster.stop()


def _scale(cluster: Cluster, args: argparse.Namespace) -> ScaleResult:
    topic = "scale"
    create_topic(cluster.bootstrap, topic, PARTITIONS)
    rate = int(args.scale_mibps * MIB / RECORD)
    load = Load(cluster.bootstrap, topic, rate, [1] * PARTITIONS).start()
    reader = GroupReader(cluster.bootstrap, topic, "scale-group").start()
    try:
        wait_until(lambda: reader.assigned.is_set() and len(reader.seen) > 1000 and load.total > 2 * rate, 90,
                   "the producer and the group to run")  # fmt: skip
        time.sleep(args.warmup_s)
        errors: list[str] = []

        # Scale out 1 -> 3.
        poller = Poller(cluster.state, 0.1, topic).start()
        t_out = time.time()
        out = cluster.amq("scale", "out", "--brokers", "2", "--json")
        t_out_end = time.time()
        time.sleep(3)  # the last moves' first acknowledgements, seen from the client
        poller.finish()
        if out.returncode != 0:
            raise RuntimeError(f"amq scale out failed ({out.returncode}): {out.stderr.strip()}")
        cli_out = json.loads(out.stdout)
        cluster.reload()
        new = [int(b) for b in cli_out["added"]]
        registered = {b: min((t for t, s in poller.status if any(x.id == b for x in s.brokers)), default=float("nan"))
                      for b in new}  # fmt: skip
        t_reg = max(registered.values())
        share_client = _share_time(poller.leaders, load, new, t_reg)
        recs = [
            m for m in moves(cluster.state) if m.requested_ms >= t_out * 1000 and m.requested_ms <= t_out_end * 1000
        ]
        out_moves = Counter(m.cause for m in recs)
        firsts = [m.first_append_ms or m.opened_ms for m in recs if m.target in new]
        share_server = (max(firsts) / 1000 - t_reg) if firsts and all(firsts) else None
        led = Counter(poller.leaders[-1][1].values()) if poller.leaders else Counter()
        out_gap = load.longest_wait(t_out, t_out_end)
        errors += [f"status poll: {e}" for e in poller.errors[:3]]
        print(f"scale out: {cli_out}; registered {[round(t - t_out, 2) for t in registered.values()]} s after the "
              f"command; share (client) {share_client}, (moves) {share_server}; topic leaders {dict(led)}", flush=True)  # fmt: skip

        time.sleep(args.between_s)

        # Scale in 3 -> 2.
        pid2 = (cluster.state.get("pids") or {}).get("broker-2")
        t_in = time.time()
        res = cluster.amq("scale", "in", "--broker", "2", "--json")
        t_in_end = time.time()
        if res.returncode != 0:
            raise RuntimeError(f"amq scale in failed ({res.returncode}): {res.stderr.strip()}")
        cli_in = json.loads(res.stdout)
        cluster.reload()
        all_recs = moves(cluster.state)
        in_recs = [m for m in all_recs if t_in * 1000 <= m.requested_ms <= t_in_end * 1000]
        between = Counter(m.cause for m in all_recs if t_out_end * 1000 < m.requested_ms < t_in * 1000)
        in_moves = Counter(m.cause for m in in_recs)
        leftovers = _leftovers(cluster, topic, pid2)
        print(f"scale in: {cli_in}; moves {dict(in_moves)}; leftovers {leftovers or 'none'}", flush=True)
        time.sleep(3)
    finally:
        load.finish()
    # The group reads up to what was acknowledged, then stops.
    acked_seqs = {s for recs in load.acked.values() for _, s in recs}
    with contextlib.suppress(RuntimeError):
        wait_until(lambda: set(reader.seen) >= acked_seqs, 120, "the group to catch up")
    reader.finish()
    in_gap = load.longest_wait(t_in - 0.2, t_in_end)
    in_ack_gap = load.longest_ack_gap(t_in, t_in_end)
    waits = sorted(w for _, w in load.waits)
    check = verify(load, reader, read_back(cluster.bootstrap, topic))
    errors += load.errors[:3] + reader.errors[:3] + check.examples[:5]
    if load.unflushed:
        errors.append(f"{load.unflushed} records were still unacknowledged when the producer stopped")
    return ScaleResult(
        args.scale_mibps, cli_out, {b: t - t_out for b, t in registered.items()}, share_client, share_server,
        out_moves, dict(sorted(led.items())), out_gap * 1000, between, t_in - t_out_end, cli_in, in_moves, in_gap * 1000, in_ack_gap * 1000,
        waits[len(waits) // 2] * 1000, leftovers, check, errors,
    )  # fmt: skip


def _share_time(samples: list[tuple[float, dict[int, int]]], load: Load, new: list[int], t_reg: float) -> float | None:
    """Seconds from t_reg until (client view) every broker leads the mean +- 1 of the topic's partitions and every
    partition on a new broker acknowledged a produce after the client saw it there. None: never in the samples."""
    if not samples:
        return None
    final = samples[-1][1]
    # From which sample on the counts stayed within bounds, and each partition stayed on its final leader.
    counts_ok: float | None = None
    for t, lead in samples:
        ok = set(lead.values()) >= {0, *new} and within_one(list(Counter(lead.values()).values()))
        if ok and counts_ok is None:
            counts_ok = t
        elif not ok:
            counts_ok = None
    if counts_ok is None:
        return None
    ready = counts_ok
    for part, broker in final.items():
        if broker not in new:
            continue
        # The first sample of the last run of samples that show it on its final broker.
        last_other = max((i for i, (_, lead) in enumerate(samples) if lead.get(part) != broker), default=-1)
        seen_at = samples[last_other + 1][0]
        acks = [t for t in load.ack_times.get(part, []) if t > seen_at]
        if not acks:
            return None
        ready = max(ready, acks[0])
    return ready - t_reg


def _leftovers(cluster: Cluster, topic: str, pid2: Any) -> list[str]:
    """What scale in left behind: the removed broker's process, its entry in the controller or in metadata."""
    out = []
    if isinstance(pid2, int) and pid_alive(pid2, "broker-2"):
        out.append(f"broker 2's process ({pid2}) still runs")
    st = status(cluster.state)
    if any(b.id == 2 for b in st.brokers):
        out.append("the controller still lists broker 2")
    if st.offline_partitions:
        out.append(f"{st.offline_partitions} partitions offline")
    if st.moves_in_progress:
        out.append(f"{st.moves_in_progress} moves in progress")
    md = AdminClient({"bootstrap.servers": cluster.bootstrap, "client.id": "bench&automq_route=leader"}).list_topics(
        timeout=10
    )
    if 2 in md.brokers:
        out.append("Metadata still lists broker 2")
    on2 = [
        p
        for p, b in leaders(
            AdminClient({"bootstrap.servers": cluster.bootstrap, "client.id": "bench&automq_route=leader"}), topic
        ).items()
        if b == 2
    ]
    if on2:
        out.append(f"partitions {on2} still led by broker 2")
    if any(b.get("id") == 2 for b in cluster.state.get("brokers") or []):
        out.append("the cluster state file still lists broker 2")
    return out


# ---------------------------------------------------------------------------------------------- 2: balancer


@dataclass
class Spread:
    counts: dict[int, int]
    mibps: dict[int, float]

    @property
    def max_over_mean(self) -> float:
        total = sum(self.mibps.values())
        return max(self.mibps.values()) / (total / len(self.mibps)) if total > 0 else 0.0

    def text(self) -> str:
        c = "/".join(str(self.counts[b]) for b in sorted(self.counts))
        m = "/".join(f"{self.mibps[b]:.2f}" for b in sorted(self.mibps))
        return f"{c} partitions, {m} MiB/s (max/mean {self.max_over_mean:.2f})"


def spread(st: api.StatusResult) -> Spread:
    live = [b for b in st.brokers if b.alive]
    return Spread({b.id: b.partitions_led for b in live},
                  {b.id: (b.bytes_in_per_s + b.bytes_out_per_s) / MIB for b in live})  # fmt: skip


def balanced(st: api.StatusResult) -> bool:
    s = spread(st)
    if len(s.counts) < 3 or st.moves_in_progress or not within_one(list(s.counts.values())):
        return False
    # The load offered is >= 1 MiB/s: the throughput bound applies, once the brokers have reported it.
    return sum(s.mibps.values()) >= 1.0 and s.max_over_mean <= 1.2


@dataclass
class BalancerResult:
    mibps: float
    skew: str
    before: Spread
    true_first_s: float | None  # by offered load per partition and Metadata leaders
    true_s: float | None
    first_s: float | None  # first sample within bounds after everything was on broker 0
    at_first: Spread | None
    balanced_s: float | None  # start of the first run of samples within bounds for >= hold_s
    at_balanced: Spread | None
    hold_s: float
    moves_to_balance: int
    rounds_to_balance: int
    steady_s: float
    steady_moves: list[api.MoveRecord]
    steady_from: float
    steady_samples: int
    steady_in_bounds: int
    steady_worst: float
    timeline: list[tuple[float, Spread]]  # (seconds into the steady phase, spread)
    end: Spread
    early_moves: int
    check: Check
    decisions: list[str]
    errors: list[str]


def run_balancer(root: Path, args: argparse.Namespace) -> BalancerResult:
    opts = ClusterOptions(brokers=3, wal=args.wal)
    opts.zones = parse_zones(3)
    cluster = Cluster(root, "balancer", opts)
    try:
        return _balancer(cluster, args)
    finally:
        cluster.stop()


def _stable_from(samples: list[tuple[float, api.StatusResult]], t0: float, hold: float, ok: Any = None) -> float | None:
    """The first sample time after t0 from which every sample for `hold` seconds was within bounds (`ok(t, st)`)."""
    ok = ok or (lambda _t, st: balanced(st))
    start: float | None = None
    for t, st in samples:
        if t <= t0:
            continue
        if not ok(t, st):
            start = None
            continue
        if start is None:
            start = t
        if t - start >= hold:
            return start
    return None


def _balancer(cluster: Cluster, args: argparse.Namespace) -> BalancerResult:
    topic = "skewed"
    create_topic(cluster.bootstrap, topic, PARTITIONS)
    reader = GroupReader(cluster.bootstrap, topic, "balancer-group").start()
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "client.id": "bench&automq_route=leader"})
    wait_until(reader.assigned.is_set, 60, "the group to get its partitions")
    wait_until(lambda: status(cluster.state).internal_topics >= 1, 30, f"{OFFSETS} to exist")
    weights = [args.hot_weight if p < args.hot else 1 for p in range(PARTITIONS)]
    rate = int(args.balancer_mibps * MIB / RECORD)
    load = Load(cluster.bootstrap, topic, rate, weights).start()
    errors: list[str] = []
    poller: Poller | None = None
    try:
        # The load runs (and is reported) before everything lands on broker 0, as after a restart under traffic.
        time.sleep(args.prewarm_s)
        warm = spread(status(cluster.state))
        print(f"before the move to broker 0: {warm.text()}", flush=True)
        t_move = time.time()
        every = [(t, p, 0) for t in (topic, OFFSETS) for p, b in leaders(admin, t).items() if b != 0]
        res = request_sync(str(cluster.state["controller"]), api.Reassign(every))
        refused = [r for r in res.results if r[2]]
        if refused:
            raise RuntimeError(f"Reassign refused: {refused[:5]}")
        mine = set(res.moves)

        def all_moved() -> bool:
            # Moved = the controller made broker 0 the leader (moved_ms); "done" needs the new leader's report too.
            recs = [m for m in moves(cluster.state) if m.id in mine]
            return len(recs) == len(mine) and all(m.moved_ms > 0 for m in recs)

        try:
            wait_until(all_moved, 60, "every partition to move to broker 0")
            t0 = max(m.moved_ms for m in moves(cluster.state) if m.id in mine) / 1000
        except RuntimeError:
            # Reported, not fatal: the balancer then waits for the move (the cluster is not settled).
            late = [m for m in moves(cluster.state) if m.id in mine and not m.moved_ms]
            errors.append(f"{len(late)} of the {len(mine)} moves to broker 0 had not moved 60 s after the request, e.g. "
                          + ", ".join(f"move {m.id} {m.topic}-{m.partition} {m.source}->0 {m.state} {m.reason}".strip()
                                      for m in late[:5]))  # fmt: skip
            print(errors[-1], flush=True)
            t0 = time.time()
        total = sum(warm.counts.values())
        before = Spread({b: (total if b == 0 else 0) for b in warm.counts},
                        {b: (sum(warm.mibps.values()) if b == 0 else 0.0) for b in warm.mibps})  # fmt: skip
        print(f"{len(mine)} partitions moved to broker 0 in {t0 - t_move:.1f} s: {before.text()}", flush=True)

        poller = Poller(cluster.state, 0.5, topic).start()
        deadline = time.time() + args.balance_timeout_s
        t_bal: float | None = None
        while time.time() < deadline and t_bal is None:
            time.sleep(0.5)
            t_bal = _stable_from(list(poller.status), t0, args.hold_s)
        samples = list(poller.status)
        # The truth, independent of load reports: each partition's offered load (in + out) on its leader in Metadata.
        offered = {p: 2 * rate * RECORD * w / sum(weights) / MIB for p, w in enumerate(weights)}

        def truly(t: float, st: api.StatusResult) -> bool:
            lead = poller.leaders_at.get(t) if poller is not None else None
            if lead is None or st.moves_in_progress:
                return False
            counts = [b.partitions_led for b in st.brokers if b.alive]
            per = Counter({b.id: 0.0 for b in st.brokers if b.alive})
            for part, b in lead.items():
                per[b] += offered[part]
            return len(counts) == 3 and within_one(counts) and max(per.values()) / (sum(per.values()) / 3) <= 1.2

        t_true_first = next((t for t, st in samples if t > t0 and truly(t, st)), None)
        t_true = _stable_from(samples, t0, args.hold_s, truly)
        t_first = next((t for t, st in samples if t > t0 and balanced(st)), None)
        at_first = next((spread(st) for t, st in samples if t == t_first), None)
        at_bal = next((spread(st) for t, st in samples if t == t_bal), None)
        start_steady = t_bal if t_bal is not None else time.time()
        print(f"offered load within bounds after {fmt(None if t_true_first is None else t_true_first - t0)}, "
              f"held from {fmt(None if t_true is None else t_true - t0)}", flush=True)  # fmt: skip
        print(f"first within bounds after {fmt(None if t_first is None else t_first - t0)}: "
              f"{at_first.text() if at_first else '-'}; held {args.hold_s:g} s from "
              f"{fmt(None if t_bal is None else t_bal - t0)}: {at_bal.text() if at_bal else '-'}", flush=True)  # fmt: skip
        for line in status(cluster.state).balancer:
            print(f"  {line}", flush=True)

        next_print = time.time() + 30
        while time.time() < start_steady + args.steady_s:
            time.sleep(0.5)
            if time.time() >= next_print:
                next_print += 30
                n = sum(
                    1 for m in moves(cluster.state) if m.cause == "balancer" and m.requested_ms > start_steady * 1000
                )
                print(f"steady {time.time() - start_steady:.0f}/{args.steady_s:.0f} s: {spread(status(cluster.state)).text()}; "
                      f"balancer moves so far {n}", flush=True)  # fmt: skip
        poller.finish()
        all_moves = moves(cluster.state)
        st_end = status(cluster.state)
        bal = [m for m in all_moves if m.cause == "balancer"]
        early = [m for m in bal if m.requested_ms < t0 * 1000]
        to_balance = [m for m in bal if t0 * 1000 <= m.requested_ms <= start_steady * 1000]
        steady = [m for m in bal if m.requested_ms > start_steady * 1000]
        steady_samples = [(t, st) for t, st in poller.status if start_steady < t <= start_steady + args.steady_s]
        in_bounds = sum(1 for _, st in steady_samples if balanced(st))
        worst = max((spread(st).max_over_mean for _, st in steady_samples), default=float("nan"))
        timeline: list[tuple[float, Spread]] = []
        for t, st in steady_samples:
            if not timeline or t - start_steady >= timeline[-1][0] + args.steady_s / 10:
                timeline.append((t - start_steady, spread(st)))
        errors += [f"status poll: {e}" for e in poller.errors[:3]]
        decisions = list(st_end.balancer)
        stuck = [
            m for m in all_moves if m.state not in ("done", "cancelled") and m.requested_ms < (time.time() - 30) * 1000
        ]
        if stuck:
            errors.append(f"{len(stuck)} moves not done 30 s after they were asked for, e.g. " + ", ".join(
                f"move {m.id} {m.topic}-{m.partition} {m.source}->{m.target} ({m.cause}) {m.state} {m.reason}".strip()
                for m in stuck[:5]))  # fmt: skip
    finally:
        if poller is not None:
            poller.finish()
        load.finish()
    acked_seqs = {s for recs in load.acked.values() for _, s in recs}
    with contextlib.suppress(RuntimeError):
        wait_until(lambda: set(reader.seen) >= acked_seqs, 180, "the group to catch up")
    reader.finish()
    check = verify(load, reader, read_back(cluster.bootstrap, topic))
    errors += load.errors[:3] + reader.errors[:3] + check.examples[:5]
    return BalancerResult(
        args.balancer_mibps, f"{args.hot} of {PARTITIONS} partitions at {args.hot_weight}x the others", before,
        None if t_true_first is None else t_true_first - t0, None if t_true is None else t_true - t0,
        None if t_first is None else t_first - t0, at_first, None if t_bal is None else t_bal - t0, at_bal,
        args.hold_s, len(to_balance), len({m.requested_ms // 1000 for m in to_balance}), args.steady_s, steady,
        start_steady, len(steady_samples), in_bounds, worst, timeline, spread(st_end), len(early), check, decisions,
        errors,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- report


def fmt(x: float | None, unit: str = "s", digits: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f} {unit}"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def section(args: argparse.Namespace, sc: ScaleResult | None, bl: BalancerResult | None) -> list[str]:
    cmd = "python3 benchmarks/scale.py" + (f" --wal {args.wal}" if args.wal != "nfs" else "") + (
        f" --steady-s {args.steady_s:g}" if args.steady_s != 300 else "") + (f" --only {args.only}" if args.only else "")  # fmt: skip
    body = [
        "",
        "## Scaling out and in, and the auto-balancer",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {machine()}; `{args.wal}` WAL, SeaweedFS on loopback, "
        f"controller and brokers as separate processes, librdkafka clients (confluent-kafka). Command: `{cmd}`.",
        "",
    ]
    if sc is not None:
        share = [
            x for x in (sc.share_client_s, sc.share_server_s, sc.cli_out.get("seconds_after_register")) if x is not None
        ]
        out_ok = bool(share) and len(share) == 3 and max(share) < 10
        body += [
            f"**Scale out 1 -> 3, then in 3 -> 2**, one cluster, under an idempotent acks=all producer ({sc.mibps:g} MiB/s "
            f"of 1 KiB records over a {PARTITIONS}-partition topic) and a consumer group committing after every batch. "
            "`amq scale out --brokers 2 --json`, then `amq scale in --broker 2 --json`. Share after registration: the "
            "CLI's `seconds_after_register` (from both brokers answering until its last move finished); from the "
            "controller's move records (until the last partition moved to a new broker acknowledged its first produce); "
            "and as the client saw it (from the later of the two registrations in the controller until every broker led "
            f"{PARTITIONS // 3} +- 1 of the topic's partitions in Metadata and every moved partition had acknowledged a "
            "produce on its new broker). Produce gap: the longest a record produced during the command waited for its "
            f"acknowledgement (normal p50 wait here: {sc.normal_wait_ms:.1f} ms).",
            "",
            "| | figure |",
            "|---|---|",
            f"| scale out: command took | {fmt(sc.cli_out.get('seconds'))} (brokers registered {', '.join(fmt(t) for t in sc.registered_s.values())} after it started) |",
            f"| scale out: share after registration, CLI | {fmt(sc.cli_out.get('seconds_after_register'), digits=2)} |",
            f"| scale out: share after registration, move records | {fmt(sc.share_server_s, digits=2)} |",
            f"| scale out: share after registration, client | {fmt(sc.share_client_s, digits=2)} |",
            f"| scale out: partitions moved | {sc.cli_out.get('partitions_moved')} (move records: {_causes(sc.out_moves)}) |",
            f"| scale out: partitions led after (all, incl. {OFFSETS}) | {_led(sc.cli_out.get('partitions_led') or {})}; topic: {_led(sc.led_after_out)} |",
            f"| scale out: produce gap | {sc.out_gap_ms:.0f} ms |",
            f"| moves between the two commands ({sc.between_s:.0f} s, the auto-balancer on) | {_causes(sc.between_moves)} |",
            f"| scale in: drained in | {fmt(sc.cli_in.get('drained_seconds'), digits=2)} (command: {fmt(sc.cli_in.get('seconds'), digits=2)}, incl. stopping and forgetting broker 2) |",
            f"| scale in: partitions moved | {sc.cli_in.get('partitions_moved')} (move records: {_causes(sc.in_moves)}) |",
            f"| scale in: produce gap | {sc.in_gap_ms:.0f} ms (longest time without an acknowledgement on a partition: {sc.in_ack_gap_ms:.0f} ms) |",
            f"| scale in: left behind | {', '.join(sc.leftovers) or 'nothing (process gone, not in Status or Metadata, no partition offline)'} |",
            f"| records | {sc.check.line()} |",
            "",
            f"Goal: new brokers carry their share < 10 s after they register: {met(out_ok)} "
            f"(worst of the three measures: {fmt(max(share) if share else None, digits=2)}). "
            f"Scale in: 0 lost: {met(sc.check.lost == 0)}.",
            "",
        ]
        if sc.errors:
            body += ["Problems seen: " + "; ".join(sc.errors), ""]
    if bl is not None:
        goal_bal = bl.balanced_s is not None and bl.balanced_s < 30
        timeline = "; ".join(f"+{t:.0f} s {sp.text()}" for t, sp in bl.timeline)
        steady_moves = ", ".join(
            f"{m.topic}-{m.partition} {m.source}->{m.target} at +{m.requested_ms / 1000 - bl.steady_from:.0f} s"
            for m in bl.steady_moves[:8]
        ) + (f" and {len(bl.steady_moves) - 8} more" if len(bl.steady_moves) > 8 else "")
        body += [
            f"**Auto-balancer**, a second cluster: 3 brokers in 3 zones, the balancer on with its defaults (a round every "
            f"5 s, at most 32 moves a round, 60 s cooldown per partition it moved; brokers report loads every 5 s). "
            f"A {PARTITIONS}-partition topic with a skewed load ({bl.skew}; {bl.mibps:g} MiB/s in, read by a consumer "
            f"group, so about {2 * bl.mibps:g} MiB/s in + out) runs for a while, then every partition, {OFFSETS} included, "
            "is moved to broker 0 with the controller's Reassign. Within bounds = every broker's partition count (all "
            "partitions) within the mean +- 1 and, the cluster carrying >= 1 MiB/s, max broker throughput (in + out, as "
            "the brokers report it to the controller) / mean <= 1.2, no move under way (Status, sampled every 0.5 s). "
            f"Balanced = within bounds and staying so for {bl.hold_s:g} s (two load reports: a moved partition's load "
            "reaches the controller only with its new leader's next reports, so a first sample within bounds can be "
            "computed from loads that are not yet reported). Times from the moment every partition was on broker 0.",
            "",
            "| | figure |",
            "|---|---|",
            f"| before (brokers 0/1/2) | {bl.before.text()} |",
            f"| first sample within bounds | {fmt(bl.first_s)}: {bl.at_first.text() if bl.at_first else 'never'} |",
            f"| time until balanced | {fmt(bl.balanced_s)} |",
            f"| the same by the offered load (each partition's offered MiB/s on its leader in Metadata, no reports): first within bounds, balanced | {fmt(bl.true_first_s)}, {fmt(bl.true_s)} |",
            f"| moves it took (seconds with moves requested) | {bl.moves_to_balance} ({bl.rounds_to_balance}) |",
            f"| at the balanced point | {bl.at_balanced.text() if bl.at_balanced else 'not reached'} |",
            f"| steady load afterwards | {bl.steady_s:g} s |",
            f"| balancer moves in that time | {len(bl.steady_moves)}{': ' + steady_moves if bl.steady_moves else ''} |",
            f"| samples within bounds | {bl.steady_in_bounds}/{bl.steady_samples}; worst max/mean {bl.steady_worst:.2f} |",
            f"| at the end | {bl.end.text()} |",
            f"| records | {bl.check.line()} |",
            "",
            f"Over the steady phase: {timeline}.",
            "",
            "The balancer's rounds with moves (its decisions as `amq cluster status` lists them, until the end of the "
            "steady phase): " + ("; ".join(bl.decisions) or "none") + ".",
            "",
            f"Goals: balanced < 30 s: {met(goal_bal)}; no moves for {bl.steady_s:g} s of steady load: "
            f"{met(not bl.steady_moves)}" + (" (shorter than the 5 minutes the goal names)" if bl.steady_s < 300 else "") + ".",
            "",
        ]  # fmt: skip
        if bl.early_moves:
            body += [
                f"The balancer moved {bl.early_moves} partitions before everything was on broker 0 (not counted).",
                "",
            ]
        if bl.errors:
            body += ["Problems seen: " + "; ".join(bl.errors), ""]
    body += [
        "For comparison (seed reports, not measured here): AutoMQ open source shipped its auto-balancer off by default, and "
        "its users saw every partition stay on one node after restarting brokers; its planner takes about 200 ms for 100k "
        "partitions on 20 brokers. amq's balancer is on by default: the broker-0 start above is that situation, evened out "
        "by the balancer alone.",
    ]
    return body


def _causes(c: Counter[str]) -> str:
    return ", ".join(f"{n} {cause}" for cause, n in sorted(c.items())) or "none"


def _led(led: dict[Any, int]) -> str:
    return "/".join(str(n) for _, n in sorted(((int(b), n) for b, n in led.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wal", default="nfs", choices=["nfs", "s3", "file"])
    ap.add_argument("--only", choices=["scale", "balancer"], help="Run one part only.")
    ap.add_argument("--scale-mibps", type=float, default=2.0, help="Produce rate during scale out/in (MiB/s).")
    ap.add_argument("--balancer-mibps", type=float, default=1.5, help="Produce rate of the balancer trial (MiB/s).")
    ap.add_argument("--hot", type=int, default=6, help="Heavy partitions in the balancer trial.")
    ap.add_argument("--hot-weight", type=int, default=4, help="How much more a heavy partition carries.")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--between-s", type=float, default=10.0, help="Load between scale out and scale in.")
    ap.add_argument("--prewarm-s", type=float, default=12.0, help="Load before everything moves to broker 0.")
    ap.add_argument(
        "--hold-s", type=float, default=10.0, help="Balanced = within bounds for this long (2 load reports)."
    )
    ap.add_argument("--balance-timeout-s", type=float, default=180.0)
    ap.add_argument("--steady-s", type=float, default=300.0, help="Steady load after the balanced point.")
    ap.add_argument("--keep", metavar="DIR", help="Run in DIR and keep it (logs, data) instead of a temp dir.")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sc: ScaleResult | None = None
    bl: BalancerResult | None = None
    keep = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="amq-scale-")
    with keep as tmp:
        if args.only in (None, "scale"):
            sc = run_scale(Path(tmp), args)
        if args.only in (None, "balancer"):
            bl = run_balancer(Path(tmp), args)
    body = section(args, sc, bl)
    print("\n".join(body))
    if not args.no_write:
        write_section(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", BEGIN, END, body)


if __name__ == "__main__":
    main()
