"""An idempotent acks=all load from real clients and the check of every acknowledged record.

Used by `amq chaos trials` and by the cluster tests (tests/integration/cluster_load.py):

- `Load`: a librdkafka producer (acks=all, idempotent) spreading sequence numbers over the
  partitions of a topic, recording each acknowledgement as (offset, seq) per partition and when
  it came. Several loads may share a topic if each has its own `key` (the message key).
- `GroupReader`: a consumer group member that commits as it goes.
- `read_records` / `read_back`: every record of the topic, from offset 0.
- `verify`: what the read-back says about every acknowledged record, as a `Verdict` (lost,
  duplicated, reordered, acknowledged-then-missing offsets) instead of an assertion, so a trial
  run can count violations and keep going.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

PARTITIONS = 12
#: Errors Kafka's clients classify as retriable (RetriableException) that a moving coordinator gives.
RETRIABLE = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
             KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD, KafkaError._TIMED_OUT,
             KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._NO_OFFSET}  # fmt: skip


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Load:
    """An idempotent acks=all producer spreading sequence numbers over the partitions."""

    bootstrap: str
    topic: str
    acked: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # partition -> (offset, seq)
    ack_times: dict[int, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: When each of `errors` came (time.monotonic()), to tell which fault caused it.
    error_times: list[float] = field(default_factory=list)
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: Spaces after each record's sequence number, to make the load heavier in bytes.
    pad: int = 0
    client_id: str = "rdkafka"
    #: The message key; loads sharing a topic need different keys (the check orders per key).
    key: bytes | None = None
    #: Records per second; 0: as fast as the client takes them.
    rate: float = 0.0
    partitions: int = PARTITIONS
    #: Records the client still held when the load finished (neither acknowledged nor failed).
    undelivered: int = 0
    #: More librdkafka settings (log_level, say).
    config: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Load:
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"load-{self.client_id}")
        self.thread.start()
        return self

    def _run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 5, "message.timeout.ms": 120_000, "client.id": self.client_id,
                      **self.config})  # fmt: skip

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
                self.error_times.append(time.monotonic())
                return
            self.acked.setdefault(msg.partition(), []).append((msg.offset(), int(msg.value())))
            self.ack_times.setdefault(msg.partition(), []).append(time.monotonic())

        began = time.monotonic()
        while not self.stop.is_set():
            if self.rate > 0 and self.sent >= self.rate * (time.monotonic() - began):
                p.poll(0.005)
                continue
            for _ in range(20):
                value = b"%d" % self.sent + b" " * self.pad
                try:
                    p.produce(self.topic, value=value, key=self.key, partition=self.sent % self.partitions,
                              on_delivery=on_delivery)  # fmt: skip
                except BufferError:
                    # The client's queue is full (the cluster stalls): wait for it, as applications do.
                    break
                self.sent += 1
            p.poll(0.005)
        self.undelivered = p.flush(120)

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(150)
        if self.thread.is_alive():
            raise TimeoutError(f"the producer {self.client_id} did not finish")
        if self.undelivered:
            self.errors.append(f"{self.undelivered} records neither acknowledged nor failed after 120 s")

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.acked.values())

    def gaps_after(self, t: float) -> dict[int, float]:
        """Per partition, the longest time without an acknowledgement after `t`."""
        out = {}
        for part, times in self.ack_times.items():
            later = [x for x in times if x >= t - 1.0]
            out[part] = max((b - a for a, b in itertools.pairwise(later)), default=0.0)
        return out

    def last_ack(self, part: int) -> float:
        times = self.ack_times.get(part)
        return times[-1] if times else float("-inf")


@dataclass
class GroupReader:
    """A consumer group member that commits as it goes; remembers what it saw and committed."""

    bootstrap: str
    topic: str
    group: str
    seen: list[int] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    client_id: str = "rdkafka"
    config: dict[str, Any] = field(default_factory=dict)

    def start(self) -> GroupReader:
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"group-{self.client_id}")
        self.thread.start()
        return self

    def _run(self) -> None:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "session.timeout.ms": 10_000,
                      "client.id": self.client_id, **self.config})  # fmt: skip
        c.subscribe([self.topic])
        try:
            while not self.stop.is_set():
                msgs = c.consume(2000, 0.2)
                for m in msgs:
                    if m.error() is None:
                        self.seen.append(int(m.value()))
                if msgs:
                    try:
                        for tp in c.commit(asynchronous=False) or []:
                            if tp.error is None and tp.offset >= 0:
                                self.committed[tp.partition] = max(self.committed.get(tp.partition, 0), tp.offset)
                    except KafkaException as e:
                        # A coordinator that moved answers retriable errors; the next commit carries the offsets.
                        err = e.args[0]
                        if not err.retriable() and err.code() not in RETRIABLE:
                            self.errors.append(str(err))
        finally:
            c.close()

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)


@dataclass(frozen=True)
class Record:
    offset: int
    key: bytes | None
    seq: int


class ReadBackError(Exception):
    """The read-back could not finish (an error from the client, or not every record in time)."""


def read_records(
    bootstrap: str,
    topic: str,
    partitions: int = PARTITIONS,
    timeout: float = 90.0,
    config: dict[str, Any] | None = None,
) -> dict[int, list[Record]]:
    """Every record of every partition, from offset 0 up to the end offsets at the start."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("verify"), "enable.auto.commit": False,
                  **(config or {})})  # fmt: skip
    out: dict[int, list[Record]] = {}
    try:
        ends = {p: _end_offset(c, topic, p, deadline=time.monotonic() + 60) for p in range(partitions)}
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while sum(len(v) for v in out.values()) < sum(ends.values()) and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error() is not None:
                    raise ReadBackError(f"reading {topic} back: {m.error()}")
                out.setdefault(m.partition(), []).append(Record(m.offset(), m.key(), int(m.value())))
    finally:
        c.close()
    return out


def _end_offset(c: Consumer, topic: str, partition: int, deadline: float) -> int:
    """The partition's end offset, asked again while the answer is retriable: right after a fault
    leadership may still be moving, and librdkafka's watermark query does not retry by itself."""
    while True:
        try:
            return int(c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        except KafkaException as e:
            err = e.args[0] if e.args else None
            retriable = isinstance(err, KafkaError) and (err.retriable() or err.code() in _MOVING)
            if not retriable or time.monotonic() >= deadline:
                raise ReadBackError(f"end offset of {topic}[{partition}]: {e}") from e
            time.sleep(0.5)


#: Answers that mean "ask again shortly": leadership is moving or a broker is starting.
_MOVING = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TRANSPORT,
)


def read_back(bootstrap: str, topic: str) -> dict[int, list[tuple[int, int]]]:
    """Every record of every partition, from offset 0, as (offset, seq)."""
    return {p: [(r.offset, r.seq) for r in recs] for p, recs in read_records(bootstrap, topic).items()}


@dataclass(frozen=True)
class Violation:
    """One acknowledged (or read) record that breaks a guarantee."""

    #: lost | duplicated | reordered | offset_missing | offset_changed
    kind: str
    partition: int
    offset: int
    key: str
    seq: int

    def describe(self) -> str:
        who = f"key {self.key} " if self.key else ""
        return f"{self.kind}: partition {self.partition} offset {self.offset} {who}seq {self.seq}"


@dataclass
class Verdict:
    """What the read-back says about every acknowledged record."""

    acked: int = 0
    read: int = 0
    #: Acknowledged, and read nowhere.
    lost: list[Violation] = field(default_factory=list)
    #: Read more than once (each extra copy).
    duplicated: list[Violation] = field(default_factory=list)
    #: Within a partition, a record of a producer read after one it sent later; or offsets not increasing.
    reordered: list[Violation] = field(default_factory=list)
    #: Acknowledged at an offset below the partition's end that the read-back skips (a hole).
    offset_missing: list[Violation] = field(default_factory=list)
    #: Acknowledged at an offset that now holds another record (the record may be read elsewhere).
    offset_changed: list[Violation] = field(default_factory=list)

    KINDS = ("lost", "duplicated", "reordered", "offset_missing", "offset_changed")

    @property
    def violations(self) -> list[Violation]:
        return [v for kind in self.KINDS for v in getattr(self, kind)]

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        return {kind: len(getattr(self, kind)) for kind in self.KINDS}

    def summary(self) -> str:
        if self.ok:
            return f"{self.acked} acknowledged records read back once and in order"
        parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in self.counts().items() if n)
        return f"{parts} (of {self.acked} acknowledged); e.g. " + "; ".join(v.describe() for v in self.violations[:3])


def _key(k: bytes | None) -> str:
    return "" if k is None else k.decode(errors="replace")


def verify(loads: Iterable[Load], got: dict[int, list[Record]]) -> Verdict:
    """Check every acknowledged record of `loads` against the read-back `got`.

    Records read but never acknowledged are fine (a send that failed or timed out may still have
    been written); every acknowledged one must be read exactly once, at the offset it was
    acknowledged at, and each producer's records must come in the order it sent them."""
    verdict = Verdict(read=sum(len(v) for v in got.values()))
    where: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (key, seq) -> [(partition, offset)]
    for part, recs in got.items():
        last_offset = -1
        last_seq: dict[str, int] = {}
        for r in recs:
            k = _key(r.key)
            if r.offset <= last_offset:
                verdict.reordered.append(Violation("reordered", part, r.offset, k, r.seq))
            last_offset = max(last_offset, r.offset)
            if r.seq < last_seq.get(k, -1):
                verdict.reordered.append(Violation("reordered", part, r.offset, k, r.seq))
            last_seq[k] = max(last_seq.get(k, -1), r.seq)
            copies = where.setdefault((k, r.seq), [])
            if copies:
                verdict.duplicated.append(Violation("duplicated", part, r.offset, k, r.seq))
            copies.append((part, r.offset))
    at: dict[tuple[int, int], Record] = {}
    for part, recs in got.items():
        for r in recs:
            # An offset read twice is counted as reordered above; the first read is what it holds.
            at.setdefault((part, r.offset), r)
    ends = {part: max((r.offset for r in recs), default=-1) for part, recs in got.items()}
    for load in loads:
        k = _key(load.key)
        for part, acks in load.acked.items():
            for offset, seq in acks:
                verdict.acked += 1
                if (k, seq) not in where:
                    verdict.lost.append(Violation("lost", part, offset, k, seq))
                r = at.get((part, offset))
                if r is None:
                    if offset <= ends.get(part, -1):
                        verdict.offset_missing.append(Violation("offset_missing", part, offset, k, seq))
                elif _key(r.key) != k or r.seq != seq:
                    verdict.offset_changed.append(Violation("offset_changed", part, offset, k, seq))
    return verdict


def check_exactly_once_in_order(load: Load, got: dict[int, list[tuple[int, int]]]) -> None:
    """Assert that every record `load` had acknowledged is in `got` once, in order, at its offset."""
    records = {p: [Record(o, load.key, s) for o, s in recs] for p, recs in got.items()}
    verdict = verify([load], records)
    assert verdict.ok, verdict.summary()


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
