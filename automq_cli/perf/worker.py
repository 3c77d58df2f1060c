"""Producer and consumer worker processes (started with multiprocessing's spawn).

Each worker owns one librdkafka client and reports to the parent over a
queue once per interval: counters as deltas, latencies as an encoded
HdrHistogram of that interval. The parent merges them, so no latency sample
ever crosses the process boundary one by one.

A send timestamp (wall-clock ns, big-endian) fills the first 8 bytes of each
record's value; the consumer subtracts it from its receive time, which is
only meaningful when producer and consumer share a clock (same host or
NTP-synced hosts).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

TIMESTAMP_BYTES = 8


@dataclass
class ProducerSpec:
    worker: int
    topic: str
    topic_index: int
    config: dict[str, str]
    rate: float  # messages/s for this producer; 0 = as fast as the client accepts
    payload: bytes
    key_distributor: str = "NO_KEY"
    interval_s: float = 1.0
    flush_timeout_s: float = 30.0


@dataclass
class ConsumerSpec:
    worker: int
    topic: str
    topic_index: int
    subscription: int  # index within the topic's subscriptions
    config: dict[str, str] = field(default_factory=dict)
    interval_s: float = 1.0


def _quiet_logger(name: str) -> logging.Logger:
    # librdkafka otherwise prints its own connection chatter to stderr, which
    # would bury the one-line errors and the live display.
    logger = logging.getLogger(f"amq.perf.{name}")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; only the parent handles it and
    # stops the workers in order, so a half-flushed producer is never lost.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _orphaned(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


def _next_boundary(epoch: float, interval: float, now: float) -> float:
    """The next wall-clock multiple of the interval after the parent's epoch.

    Every worker reports on the same boundaries, and the parent closes each
    interval a little after one, so an interval holds exactly its own data.
    """
    if now < epoch:
        return epoch + interval
    return epoch + (int((now - epoch) / interval) + 1) * interval


def producer_main(
    spec: ProducerSpec, reports: Any, go: Any, stop: Any, abort: Any, epoch: Any, parent_pid: int
) -> None:
    _ignore_sigint()
    try:
        _produce(spec, reports, go, stop, abort, epoch, parent_pid)
    except BaseException as exc:  # report, never die silently: the parent aborts the run
        reports.put(
            {"kind": "fatal", "w": spec.worker, "role": "producer", "error": f"{type(exc).__name__}: {exc}"}
        )


def _produce(
    spec: ProducerSpec, reports: Any, go: Any, stop: Any, abort: Any, epoch: Any, parent_pid: int
) -> None:
    from confluent_kafka import Producer

    from automq_cli.perf.ratelimit import TokenBucket
    from automq_cli.perf.stats import new_histogram, record_many

    conf: dict[str, Any] = dict(spec.config)
    conf["logger"] = _quiet_logger(f"producer{spec.worker}")
    errors_seen: list[str] = []

    def on_error(err: Any) -> None:
        errors_seen[:] = [str(err)]

    conf["error_cb"] = on_error
    latencies: list[int] = []
    counts = {"acked": 0, "errors": 0}
    last_error: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            counts["acked"] += 1
            seconds = msg.latency()
            if seconds is not None:
                latencies.append(int(seconds * 1_000_000))
        else:
            counts["errors"] += 1
            last_error[:] = [str(err)]

    # Set on the client, not per produce() call: one argument fewer on the hot path.
    conf["on_delivery"] = on_delivery
    producer = Producer(conf)
    reports.put({"kind": "ready", "w": spec.worker, "role": "producer"})

    while not go.is_set():
        if stop.is_set() or _orphaned(parent_pid):
            return
        producer.poll(0.05)

    hist = new_histogram()
    reported = {"sent": 0, "acked": 0, "errors": 0}
    sent = 0

    def report(done: bool) -> None:
        record_many(hist, latencies)
        latencies.clear()
        reports.put(
            {
                "kind": "p",
                "w": spec.worker,
                "topic": spec.topic_index,
                "sent": sent - reported["sent"],
                "queued": len(producer),  # in the client, not yet acknowledged
                "acked": counts["acked"] - reported["acked"],
                "errors": counts["errors"] - reported["errors"],
                "hist": hist.encode() if hist.get_total_count() else None,
                "done": done,
                "last_error": last_error[0] if last_error else (errors_seen[-1] if errors_seen else None),
            }
        )
        hist.reset()
        reported.update(sent=sent, acked=counts["acked"], errors=counts["errors"])

    tail = spec.payload[TIMESTAMP_BYTES:]
    topic = spec.topic
    produce = producer.produce
    poll = producer.poll
    time_ns = time.time_ns
    if spec.key_distributor == "KEY_ROUND_ROBIN":
        keys: Any = itertools.cycle([str(i).encode() for i in range(10_000)])
    elif spec.key_distributor == "RANDOM_NANO":
        keys = iter(lambda: str(random.getrandbits(63)).encode(), None)
    else:
        keys = None

    clock = time.time
    next_report = _next_boundary(epoch.value, spec.interval_s, clock())
    bucket = TokenBucket(spec.rate, time.perf_counter()) if spec.rate > 0 else None
    while not stop.is_set():
        if clock() >= next_report:
            report(False)
            next_report = _next_boundary(epoch.value, spec.interval_s, clock())
            if _orphaned(parent_pid):
                return
        if bucket is not None:
            n = bucket.available(time.perf_counter())
            if n < 1:
                # Sleep in librdkafka's poll so delivery callbacks run meanwhile;
                # its timeout has 1 ms resolution, so never ask for less.
                poll(min(max(bucket.wait_s(), 0.001), 0.05))
                continue
        else:
            n = 1000
        done_now = 0
        try:
            if keys is None:
                for _ in range(n):
                    produce(topic, time_ns().to_bytes(TIMESTAMP_BYTES, "big") + tail)
                    done_now += 1
            else:
                for _ in range(n):
                    produce(topic, time_ns().to_bytes(TIMESTAMP_BYTES, "big") + tail, key=next(keys))
                    done_now += 1
        except BufferError:
            # librdkafka's queue is full: the broker is the bottleneck, wait for acks.
            poll(0.005)
        sent += done_now
        if bucket is not None:
            bucket.spend(done_now)
        poll(0)

    # An aborted run (Ctrl-C, a failed worker) does not wait for a slow broker.
    undelivered = producer.flush(0 if abort.is_set() else spec.flush_timeout_s)
    if undelivered:
        # Still queued in the client: the broker did not keep up with the offered rate.
        # Purge them (their delivery reports count them as errors) rather than let
        # the client's destructor wait for them.
        producer.purge()
        deadline = time.monotonic() + 5
        while len(producer) and time.monotonic() < deadline:
            producer.poll(0.1)
        last_error[:] = [f"{undelivered} records still undelivered after a {spec.flush_timeout_s:g}s flush"]
    report(True)


def consumer_main(
    spec: ConsumerSpec, reports: Any, paused: Any, stop: Any, epoch: Any, parent_pid: int
) -> None:
    _ignore_sigint()
    try:
        _consume(spec, reports, paused, stop, epoch, parent_pid)
    except BaseException as exc:
        reports.put(
            {"kind": "fatal", "w": spec.worker, "role": "consumer", "error": f"{type(exc).__name__}: {exc}"}
        )


def _consume(spec: ConsumerSpec, reports: Any, paused: Any, stop: Any, epoch: Any, parent_pid: int) -> None:
    from confluent_kafka import Consumer, KafkaError

    from automq_cli.perf.stats import new_histogram, record_many

    conf: dict[str, Any] = dict(spec.config)
    conf["logger"] = _quiet_logger(f"consumer{spec.worker}")
    errors_seen: list[str] = []
    conf["error_cb"] = lambda err: errors_seen.__setitem__(slice(None), [str(err)])
    cooperative = "cooperative" in str(conf.get("partition.assignment.strategy", ""))
    consumer = Consumer(conf)
    owned: set[int] = set()
    state = {"paused": False}

    def announce() -> None:
        reports.put({"kind": "assign", "w": spec.worker, "partitions": sorted(owned)})

    def on_assign(c: Any, parts: list[Any]) -> None:
        if cooperative:
            c.incremental_assign(parts)
        else:
            c.assign(parts)
        # A rebalance hands over partitions unpaused; keep them paused while the backlog builds.
        if state["paused"] and parts:
            c.pause(parts)
        owned.update(p.partition for p in parts)
        announce()

    def on_revoke(c: Any, parts: list[Any]) -> None:
        if cooperative:
            c.incremental_unassign(parts)
        else:
            c.unassign()
        owned.difference_update(p.partition for p in parts)
        announce()

    consumer.subscribe([spec.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    reports.put({"kind": "ready", "w": spec.worker, "role": "consumer"})

    hist = new_histogram()
    latencies: list[int] = []
    received = 0
    nbytes = 0
    errors = 0
    reported = {"n": 0, "bytes": 0, "errors": 0}
    high: dict[int, int] = {}
    low: dict[int, int] = {}
    last_error: list[str] = []

    def report(done: bool) -> None:
        record_many(hist, latencies)
        latencies.clear()
        reports.put(
            {
                "kind": "c",
                "w": spec.worker,
                "topic": spec.topic_index,
                "sub": spec.subscription,
                "n": received - reported["n"],
                "bytes": nbytes - reported["bytes"],
                "errors": errors - reported["errors"],
                "hist": hist.encode() if hist.get_total_count() else None,
                "high": dict(high),
                "low": dict(low),
                "done": done,
                "last_error": last_error[0] if last_error else (errors_seen[-1] if errors_seen else None),
            }
        )
        hist.reset()
        reported.update(n=received, bytes=nbytes, errors=errors)

    eof = KafkaError._PARTITION_EOF
    time_ns = time.time_ns
    clock = time.time
    next_report = float("inf")  # no reports before the parent starts the clock
    while not stop.is_set():
        want_paused = paused.is_set()
        if want_paused != state["paused"]:
            parts = consumer.assignment()
            if parts:
                (consumer.pause if want_paused else consumer.resume)(parts)
            state["paused"] = want_paused
        # poll() returns as soon as one message is there (like OMB's Java poll); then take what
        # else is already fetched without waiting. consume(n, timeout) would wait the whole
        # timeout for n messages and add up to that much to every end-to-end latency.
        # The short timeout keeps reports and the stop signal timely at low rates.
        first = consumer.poll(0.05)
        msgs = [] if first is None else [first, *consumer.consume(999, 0)]
        if msgs:
            # One receive time per batch: the whole batch reached the application at once.
            now_us = time_ns() // 1000
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() != eof:
                        errors += 1
                        last_error[:] = [str(err)]
                    continue
                value = m.value()
                received += 1
                if value is None:
                    continue
                nbytes += len(value)
                if len(value) >= TIMESTAMP_BYTES:
                    latencies.append(now_us - int.from_bytes(value[:TIMESTAMP_BYTES], "big") // 1000)
                part = m.partition()
                off = m.offset()
                if off > high.get(part, -1):
                    high[part] = off
                if off < low.get(part, 1 << 62):
                    low[part] = off
        now = clock()
        if now >= next_report:
            report(False)
            next_report = _next_boundary(epoch.value, spec.interval_s, now)
            if _orphaned(parent_pid):
                break
        elif next_report == float("inf") and epoch.value:
            next_report = _next_boundary(epoch.value, spec.interval_s, now)
    report(True)
    # Closing is best effort: the counts are already reported.
    with contextlib.suppress(Exception):
        consumer.close()
