"""One `amq perf run`: topics, worker processes, the phase machine, and the result.

Phases, in order (each skipped when it has nothing to do):
  warmup   producers and consumers run; nothing is measured
  backlog  (catch-up mode) consumers are paused until N bytes are acknowledged
  catch-up (catch-up mode) consumers resume from where they paused, reading the backlog
  measure  the measured window: throughput and latency figures in the summary come from here
  drain    producers stop and flush; consumers read until every subscription has
           seen every acknowledged record (or --drain-timeout passes)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import platform
import queue
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from automq_cli.perf.errors import PerfError
from automq_cli.perf.metrics import ClusterMetrics
from automq_cli.perf.stats import brief_ms, decode_into, new_histogram, summary_ms
from automq_cli.perf.target import Target
from automq_cli.perf.worker import ConsumerSpec, ProducerSpec, consumer_main, producer_main
from automq_cli.perf.workload import Workload, load_payload

SCHEMA_VERSION = 1
MIB = 1024 * 1024

# Consumer defaults chosen so groups form quickly: librdkafka's 45 s session /
# 3 s heartbeat make some brokers (Tansu) take tens of seconds to assign
# partitions; 6 s is the smallest session Kafka accepts by default.
CONSUMER_DEFAULTS = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": "true",
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "500",
}
PRODUCER_DEFAULTS = {"acks": "all"}


class Display(Protocol):
    def status(self, text: str) -> None: ...
    def interval(self, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class RunOptions:
    workload: Workload
    target: Target
    interval_s: float = 1.0
    keep_topics: bool = False
    topic_prefix: str = "amq-perf"
    connect_timeout_s: float = 10.0
    ready_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    catch_up_timeout_s: float = 600.0
    command: str = ""
    #: Clients take these zones in turn and name theirs (client.id `automq_az=`, consumers' client.rack).
    zones: list[str] = field(default_factory=list)


@dataclass
class _Window:
    """Counters and histograms for a span of time (one interval or one phase)."""

    sent: int = 0
    acked: int = 0
    produced_bytes: int = 0
    produce_errors: int = 0
    consumed: int = 0
    consumed_bytes: int = 0
    consume_errors: int = 0
    seconds: float = 0.0
    start_s: float = 0.0
    publish: Any = field(default_factory=new_histogram)
    e2e: Any = field(default_factory=new_histogram)

    def absorb(self, other: _Window) -> None:
        self.sent += other.sent
        self.acked += other.acked
        self.produced_bytes += other.produced_bytes
        self.produce_errors += other.produce_errors
        self.consumed += other.consumed
        self.consumed_bytes += other.consumed_bytes
        self.consume_errors += other.consume_errors
        self.seconds += other.seconds
        self.publish.add(other.publish)
        self.e2e.add(other.e2e)

    def rates(self) -> dict[str, float]:
        s = max(self.seconds, 1e-9)
        return {
            "produce_msg_per_s": round(self.acked / s, 1),
            "produce_mib_per_s": round(self.produced_bytes / s / MIB, 3),
            "consume_msg_per_s": round(self.consumed / s, 1),
            "consume_mib_per_s": round(self.consumed_bytes / s / MIB, 3),
        }


def _client_logger() -> logging.Logger:
    logger = logging.getLogger("amq.perf.admin")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


class Runner:
    def __init__(self, options: RunOptions, display: Display) -> None:
        self.o = options
        self.w = options.workload
        self.display = display
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = [f"{options.topic_prefix}-{self.run_id}-{i}" for i in range(self.w.topics)]
        self.ctx = multiprocessing.get_context("spawn")
        self.reports: Any = self.ctx.Queue()
        self.produce_go = self.ctx.Event()
        self.produce_stop = self.ctx.Event()
        self.abort = self.ctx.Event()  # set when the run fails or is interrupted: workers skip their flush
        self.consume_paused = self.ctx.Event()
        self.consume_stop = self.ctx.Event()
        self.epoch = self.ctx.Value("d", 0.0)  # wall-clock start shared with workers for aligned reports
        self.procs: dict[int, Any] = {}
        self.roles: dict[int, str] = {}
        self.consumer_group: dict[int, tuple[int, int]] = {}
        self.ready: set[int] = set()
        self.done: set[int] = set()
        self.assignments: dict[int, set[int]] = {}
        self.last_error = {"producer": None, "consumer": None}
        # Whole-run totals, for the produced == consumed check.
        self.acked_per_topic = [0] * self.w.topics
        self.queued: dict[int, int] = {}  # per producer: records in its client queue at its last report
        self.received: dict[tuple[int, int], int] = {}
        self.high: dict[tuple[int, int], dict[int, int]] = {}
        self.low: dict[tuple[int, int], dict[int, int]] = {}
        self.total = _Window()
        self.current = _Window()
        self.phases: dict[str, _Window] = {}
        self.phase_order: list[str] = []
        self.intervals: list[dict[str, Any]] = []
        self.phase = "setup"
        self.metrics = ClusterMetrics(options.target)
        self.created_topics: list[str] = []
        self.t0 = 0.0
        self.catch_up: dict[str, Any] | None = None
        self.drained = False
        self.started_at = datetime.now(UTC)

    # ---- client configs ------------------------------------------------------------------

    def _common(self) -> dict[str, str]:
        return {"bootstrap.servers": self.o.target.bootstrap, **self.w.common_config}

    def _producer_config(self, worker: int) -> dict[str, str]:
        conf = {**self._common(), **PRODUCER_DEFAULTS, **self.w.producer_config}
        conf.setdefault("client.id", f"amq-perf-producer-{worker}")
        return self._in_zone(conf, worker)

    def _in_zone(self, conf: dict[str, str], worker: int) -> dict[str, str]:
        if self.o.zones:
            zone = self.o.zones[worker % len(self.o.zones)]
            conf["client.id"] = f"{conf['client.id']}&automq_az={zone}"
            if "group.id" in conf:
                conf.setdefault("client.rack", zone)
        return conf

    def _consumer_config(self, worker: int, group: str) -> dict[str, str]:
        conf = {**self._common(), **CONSUMER_DEFAULTS, **self.w.consumer_config, "group.id": group}
        conf.setdefault("client.id", f"amq-perf-consumer-{worker}")
        return self._in_zone(conf, worker)

    def _group(self, topic_index: int, sub: int) -> str:
        return f"{self.o.topic_prefix}-{self.run_id}-t{topic_index}-sub{sub}"

    # ---- setup ---------------------------------------------------------------------------

    def _check_client_configs(self) -> None:
        """Build each client once in this process so a bad property is one clear line, early."""
        from confluent_kafka import Consumer, KafkaException, Producer

        for what, build in (
            ("producerConfig", lambda: Producer({**self._producer_config(0), "logger": _client_logger()})),
            (
                "consumerConfig",
                lambda: Consumer({**self._consumer_config(0, "amq-perf-check"), "logger": _client_logger()}),
            ),
        ):
            try:
                client = build()
            except (KafkaException, ValueError, TypeError) as exc:
                raise PerfError(f"{what}/commonConfig: {_kafka_reason(exc)}") from None
            if what == "consumerConfig":
                client.close()
            del client

    def _admin(self) -> Any:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({**self._common(), "logger": _client_logger()})
        except (KafkaException, ValueError, TypeError) as exc:
            raise PerfError(f"commonConfig: {_kafka_reason(exc)}") from None
        try:
            admin.list_topics(timeout=self.o.connect_timeout_s)
        except KafkaException as exc:
            raise PerfError(
                f"cannot reach the Kafka bootstrap {self.o.target.bootstrap!r} within "
                f"{self.o.connect_timeout_s:g}s ({_kafka_reason(exc)}); is the broker running?"
            ) from None
        return admin

    def _create_topics(self, admin: Any) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic

        new = [
            NewTopic(
                name,
                num_partitions=self.w.partitions_per_topic,
                replication_factor=self.w.replication_factor,
                config=dict(self.w.topic_config),
            )
            for name in self.topics
        ]
        futures = admin.create_topics(new, operation_timeout=30, request_timeout=30)
        for name, fut in futures.items():
            try:
                fut.result()
                self.created_topics.append(name)
            except KafkaException as exc:
                raise PerfError(f"cannot create topic {name}: {_kafka_reason(exc)}") from None
        # Wait until every partition has a leader, so the first sends do not fail.
        deadline = time.monotonic() + 30
        while True:
            md = admin.list_topics(timeout=10)
            ok = all(
                name in md.topics
                and md.topics[name].error is None
                and len(md.topics[name].partitions) == self.w.partitions_per_topic
                and all(p.leader >= 0 for p in md.topics[name].partitions.values())
                for name in self.topics
            )
            if ok:
                return
            if time.monotonic() > deadline:
                raise PerfError("the created topics did not show leaders for all partitions within 30s")
            time.sleep(0.2)

    def _delete_topics(self, admin: Any) -> None:
        if not self.created_topics or self.o.keep_topics:
            return
        try:
            # An aborted run may be aborted because the broker is gone: do not wait long for it.
            timeout = 10 if self.abort.is_set() else 30
            futures = admin.delete_topics(list(self.created_topics), operation_timeout=timeout, request_timeout=timeout)
            for name, fut in futures.items():
                try:
                    fut.result()
                except Exception as exc:
                    self.display.status(f"warning: could not delete topic {name}: {_kafka_reason(exc)}")
        except Exception as exc:
            self.display.status(f"warning: could not delete topics: {_kafka_reason(exc)}")

    def _start_workers(self) -> None:
        payload = load_payload(self.w)
        n_producers = self.w.topics * self.w.producers_per_topic
        per_producer_rate = self.w.producer_rate / n_producers if self.w.producer_rate > 0 else 0.0
        worker = 0
        for ti, topic in enumerate(self.topics):
            for _ in range(self.w.producers_per_topic):
                spec = ProducerSpec(
                    worker=worker,
                    topic=topic,
                    topic_index=ti,
                    config=self._producer_config(worker),
                    rate=per_producer_rate,
                    payload=payload,
                    key_distributor=self.w.key_distributor,
                    interval_s=self.o.interval_s,
                    flush_timeout_s=max(self.o.drain_timeout_s, 1.0),
                )
                self._spawn(
                    worker,
                    "producer",
                    producer_main,
                    (spec, self.reports, self.produce_go, self.produce_stop, self.abort, self.epoch),
                )
                worker += 1
            for sub in range(self.w.subscriptions_per_topic):
                group = self._group(ti, sub)
                self.received[(ti, sub)] = 0
                self.high[(ti, sub)] = {}
                self.low[(ti, sub)] = {}
                for _ in range(self.w.consumer_per_subscription):
                    cspec = ConsumerSpec(
                        worker=worker,
                        topic=topic,
                        topic_index=ti,
                        subscription=sub,
                        config=self._consumer_config(worker, group),
                        interval_s=self.o.interval_s,
                    )
                    self.consumer_group[worker] = (ti, sub)
                    self._spawn(
                        worker,
                        "consumer",
                        consumer_main,
                        (cspec, self.reports, self.consume_paused, self.consume_stop, self.epoch),
                    )
                    worker += 1

    def _spawn(self, worker: int, role: str, fn: Any, args: tuple[Any, ...]) -> None:
        proc = self.ctx.Process(target=fn, args=(*args, os.getpid()), name=f"amq-perf-{role}-{worker}", daemon=True)
        proc.start()
        self.procs[worker] = proc
        self.roles[worker] = role

    # ---- reports -------------------------------------------------------------------------

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        w = msg["w"]
        if kind == "fatal":
            raise PerfError(f"{msg['role']} {w} failed: {msg['error']}")
        if kind == "ready":
            self.ready.add(w)
            return
        if kind == "assign":
            self.assignments[w] = set(msg["partitions"])
            return
        cur = self.current
        if kind == "p":
            cur.sent += msg["sent"]
            cur.acked += msg["acked"]
            cur.produced_bytes += msg["acked"] * self.w.message_size
            cur.produce_errors += msg["errors"]
            decode_into(cur.publish, msg["hist"])
            self.acked_per_topic[msg["topic"]] += msg["acked"]
            self.queued[w] = msg.get("queued", 0) if not msg.get("done") else 0
            if msg.get("last_error"):
                self.last_error["producer"] = msg["last_error"]
        elif kind == "c":
            key = (msg["topic"], msg["sub"])
            cur.consumed += msg["n"]
            cur.consumed_bytes += msg["bytes"]
            cur.consume_errors += msg["errors"]
            decode_into(cur.e2e, msg["hist"])
            self.received[key] += msg["n"]
            high, low = self.high[key], self.low[key]
            for part, off in msg["high"].items():
                if off > high.get(part, -1):
                    high[part] = off
            for part, off in msg["low"].items():
                if off < low.get(part, 1 << 62):
                    low[part] = off
            if msg.get("last_error"):
                self.last_error["consumer"] = msg["last_error"]
        if msg.get("done"):
            self.done.add(w)

    def _pump(self, until: float) -> None:
        """Handle reports until the monotonic deadline; notice workers that died."""
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            try:
                msg = self.reports.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                self._check_alive()
                continue
            self._handle(msg)

    def _drain_queue(self) -> None:
        while True:
            try:
                self._handle(self.reports.get_nowait())
            except queue.Empty:
                return

    def _check_alive(self) -> None:
        for w, proc in self.procs.items():
            if proc.exitcode is not None and w not in self.done:
                self._drain_queue()  # a fatal report explains it better than the exit code
                if w not in self.done:
                    raise PerfError(f"{self.roles[w]} {w} exited unexpectedly (exit code {proc.exitcode})")

    # ---- derived figures -----------------------------------------------------------------

    def _unique(self, key: tuple[int, int]) -> int:
        high, low = self.high[key], self.low[key]
        return sum(high[p] - low.get(p, high[p]) + 1 for p in high)

    def _backlog(self) -> int:
        """Acknowledged records not yet seen, summed over subscriptions."""
        total = 0
        for (ti, _sub), _n in self.received.items():
            total += max(0, self.acked_per_topic[ti] - self._unique((ti, _sub)))
        return total

    def _caught_up(self) -> bool:
        return all(self._unique(key) >= self.acked_per_topic[key[0]] for key in self.received)

    def _close_interval(self, seconds: float) -> dict[str, Any]:
        cur, self.current = self.current, _Window()
        cur.seconds = seconds
        cur.start_s = round(len(self.intervals) * self.o.interval_s, 3)
        phase = self.phases.setdefault(self.phase, _Window(start_s=cur.start_s))
        if self.phase not in self.phase_order:
            self.phase_order.append(self.phase)
        phase.absorb(cur)
        self.total.absorb(cur)
        row: dict[str, Any] = {
            "t": round((len(self.intervals) + 1) * self.o.interval_s, 3),
            "phase": self.phase,
            **cur.rates(),
            "backlog_messages": self._backlog(),
            # Sent but not yet acknowledged: grows when the broker cannot keep up with the offered rate.
            "producer_queue_messages": sum(self.queued.values()),
            "errors": cur.produce_errors + cur.consume_errors,
            "publish_latency_ms": brief_ms(cur.publish),
            "e2e_latency_ms": brief_ms(cur.e2e),
        }
        sample = self.metrics.sample() if self.phase == "measure" else None
        if sample:
            row["broker_rss_bytes"] = sample["broker_rss_bytes"]
        self.intervals.append(row)
        self.display.interval(row)
        return row

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._check_client_configs()
        admin = self._admin()
        try:
            self._create_topics(admin)
            n_prod = len(self.topics) * self.w.producers_per_topic
            n_cons = len(self.topics) * self.w.subscriptions_per_topic * self.w.consumer_per_subscription
            self.display.status(
                f"created {len(self.topics)} topic(s) x {self.w.partitions_per_topic} partitions on "
                f"{self.o.target.bootstrap}; starting {n_prod} producer and {n_cons} consumer processes"
            )
            self._start_workers()
            self._wait_ready()
            self._phases()
        except BaseException:
            self.abort.set()
            raise
        finally:
            self._stop_workers()
            self._delete_topics(admin)
        return self._result()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.o.ready_timeout_s
        consumers = [w for w, r in self.roles.items() if r == "consumer"]
        groups: dict[tuple[int, int], list[int]] = {}
        for w in consumers:
            groups.setdefault(self.consumer_group[w], []).append(w)
        want = min(self.w.consumer_per_subscription, self.w.partitions_per_topic)
        announced = False
        while True:
            self._pump(time.monotonic() + 0.2)
            all_ready = len(self.ready) == len(self.procs)
            assigned = all(
                set().union(*(self.assignments.get(w, set()) for w in ws)) == set(range(self.w.partitions_per_topic))
                and sum(1 for w in ws if self.assignments.get(w)) >= want
                for ws in groups.values()
            )
            if all_ready and assigned:
                return
            if all_ready and not announced:
                self.display.status(f"waiting for {len(consumers)} consumer(s) to join their groups")
                announced = True
            if time.monotonic() > deadline:
                what = "consumers got no partition assignment" if all_ready else "worker processes did not start"
                raise PerfError(
                    f"{what} within {self.o.ready_timeout_s:g}s; if the broker's group coordinator is slow, "
                    "try consumerConfig session.timeout.ms / heartbeat.interval.ms"
                )

    def _phases(self) -> None:
        w, o = self.w, self.o
        self.t0 = time.monotonic()
        self.epoch.value = time.time()
        tick = self.t0
        # Workers report on each interval boundary; closing the interval a little
        # later lets those reports arrive before it is summed up.
        grace = min(0.25, o.interval_s / 4)
        self.produce_go.set()

        def step() -> None:
            nonlocal tick
            tick += o.interval_s
            self._pump(tick + grace)
            self._close_interval(o.interval_s)

        def run_for(phase: str, seconds: float) -> float:
            self.phase = phase
            start = time.monotonic()
            # Whole intervals, so every interval belongs to exactly one phase.
            while time.monotonic() - start < seconds - 0.5 * o.interval_s:
                step()
            return time.monotonic() - start

        if w.warmup_duration_s > 0:
            run_for("warmup", w.warmup_duration_s)
        if w.catch_up:
            self._catch_up_phases(step)
        self.metrics.start()
        run_for("measure", w.test_duration_s)
        self.metrics.finish()
        self._drain(step)

    def _catch_up_phases(self, step: Any) -> None:
        w, o = self.w, self.o
        self.phase = "backlog"
        self.consume_paused.set()
        start = time.monotonic()
        base = self.total.produced_bytes + self.current.produced_bytes
        self.display.status(f"building a backlog of {w.consumer_backlog_size_bytes / MIB:.0f} MiB (consumers paused)")
        while self.total.produced_bytes + self.current.produced_bytes - base < w.consumer_backlog_size_bytes:
            step()
            if time.monotonic() - start > o.catch_up_timeout_s:
                raise PerfError(
                    f"the backlog did not reach {w.consumer_backlog_size_bytes / MIB:.0f} MiB within "
                    f"{o.catch_up_timeout_s:g}s; raise the rate or lower --backlog"
                )
        build_s = time.monotonic() - start
        # What the consumers have to read: the lag when they resume (records they
        # fetched just before the pause took effect are not part of it).
        backlog_msgs = self._backlog()
        backlog_bytes = backlog_msgs * w.message_size
        self.phase = "catch-up"
        self.consume_paused.clear()
        self.display.status(f"backlog built ({backlog_msgs} records); consumers catch up from where they paused")
        start = time.monotonic()
        caught_up = False
        while time.monotonic() - start < o.catch_up_timeout_s:
            step()
            last = self.intervals[-1]
            recent = last["produce_msg_per_s"] * o.interval_s * w.subscriptions_per_topic
            # Caught up once the lag is within one interval of production.
            if last["backlog_messages"] <= max(1.0, recent):
                caught_up = True
                break
        catch_s = time.monotonic() - start
        phase = self.phases["catch-up"]
        self.catch_up = {
            "backlog_target_bytes": w.consumer_backlog_size_bytes,
            "backlog_bytes": backlog_bytes,
            "backlog_messages": backlog_msgs,
            "build_s": round(build_s, 3),
            "catch_up_s": round(catch_s, 3),
            "caught_up": caught_up,
            "read_msg_per_s": round(phase.consumed / max(catch_s, 1e-9), 1),
            "read_mib_per_s": round(phase.consumed_bytes / max(catch_s, 1e-9) / MIB, 3),
            "publish_latency_ms_before": summary_ms(self.phases["backlog"].publish),
            "publish_latency_ms_during": summary_ms(phase.publish),
        }
        if not caught_up:
            self.display.status(f"warning: consumers did not catch up within {o.catch_up_timeout_s:g}s")

    def _drain(self, step: Any) -> None:
        self.phase = "drain"
        self.produce_stop.set()
        producers = {w for w, r in self.roles.items() if r == "producer"}
        deadline = time.monotonic() + self.o.drain_timeout_s
        while time.monotonic() < deadline:
            if producers <= self.done and self._caught_up():
                self.drained = True
                break
            step()
        else:
            self.drained = producers <= self.done and self._caught_up()
        if not self.drained:
            self.display.status(
                f"warning: consumers had not read every acknowledged record after {self.o.drain_timeout_s:g}s"
            )

    def _stop_workers(self) -> None:
        self.produce_stop.set()
        self.consume_stop.set()
        self.produce_go.set()  # release producers still waiting to start, so they exit
        # Producers flush for up to --drain-timeout in a normal ending, not at all when aborted.
        deadline = time.monotonic() + (5 if self.abort.is_set() else self.o.drain_timeout_s + 10)
        while any(p.is_alive() for p in self.procs.values()) and time.monotonic() < deadline:
            # Keep reading: a worker cannot exit while its queue feeder still holds reports.
            with contextlib.suppress(queue.Empty):
                self._handle_quietly(self.reports.get(timeout=0.1))
        self._drain_queue_quietly()
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM to that pid only
                proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join(3)
        self.reports.close()
        self.reports.cancel_join_thread()

    def _handle_quietly(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(PerfError):
            self._handle(msg)

    def _drain_queue_quietly(self) -> None:
        while True:
            try:
                self._handle_quietly(self.reports.get_nowait())
            except (queue.Empty, OSError, ValueError):
                return

    # ---- result --------------------------------------------------------------------------

    def _result(self) -> dict[str, Any]:
        from confluent_kafka import libversion

        measure = self.phases.get("measure", _Window())
        rates = measure.rates()
        subs = []
        for (ti, sub), received in sorted(self.received.items()):
            unique = self._unique((ti, sub))
            subs.append(
                {
                    "topic": self.topics[ti],
                    "subscription": self._group(ti, sub),
                    "received": received,
                    "unique": unique,
                    "expected": self.acked_per_topic[ti],
                    "duplicates": max(0, received - unique),
                }
            )
        cluster = self.metrics.result()
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "amq perf",
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "command": self.o.command,
            "bootstrap": self.o.target.bootstrap,
            "mode": "catch-up" if self.w.catch_up else "steady",
            "workload": self.w.to_omb(),
            "topics": list(self.topics),
            "interval_s": self.o.interval_s,
            "warmup_s": round(self.phases["warmup"].seconds, 3) if "warmup" in self.phases else 0.0,
            "duration_s": round(measure.seconds, 3),
            "produce": {
                "messages": measure.acked,
                "bytes": measure.produced_bytes,
                "msg_per_s": rates["produce_msg_per_s"],
                "mib_per_s": rates["produce_mib_per_s"],
                "errors": self.total.produce_errors,
                "total_messages": sum(self.acked_per_topic),
                "total_bytes": sum(self.acked_per_topic) * self.w.message_size,
                "last_error": self.last_error["producer"],
            },
            "consume": {
                "messages": measure.consumed,
                "bytes": measure.consumed_bytes,
                "msg_per_s": rates["consume_msg_per_s"],
                "mib_per_s": rates["consume_mib_per_s"],
                "errors": self.total.consume_errors,
                "total_messages": sum(self.received.values()),
                "drained": self.drained,
                "per_subscription": subs,
                "last_error": self.last_error["consumer"],
            },
            "publish_latency_ms": summary_ms(measure.publish),
            "e2e_latency_ms": summary_ms(measure.e2e),
            "catch_up": self.catch_up,
            "phases": [
                {
                    "name": name,
                    "start_s": round(self.phases[name].start_s, 3),
                    "duration_s": round(self.phases[name].seconds, 3),
                    **self.phases[name].rates(),
                    "publish_latency_ms": summary_ms(self.phases[name].publish),
                    "e2e_latency_ms": summary_ms(self.phases[name].e2e),
                }
                for name in self.phase_order
            ],
            "intervals": self.intervals,
            "cluster": cluster,
            "host": {
                "hostname": socket.gethostname(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "librdkafka": libversion()[0],
            },
        }


def _kafka_reason(exc: BaseException) -> str:
    """The human part of a librdkafka error, on one line."""
    arg = exc.args[0] if exc.args else exc
    text = arg.str() if hasattr(arg, "str") else str(arg)
    return " ".join(str(text).split())
