"""Where time goes in a broker: latency histograms on the metrics endpoint (docs/perf.md,
"Where time goes: latency histograms").

The broker's own histograms (produce and fetch phases, event-loop lag) live here with the
few helpers the Kafka server and the fetch handler call, so their code keeps one line per
probe. The storage layer keeps its own (WAL group sync and size in WalStats, S3 calls in
ObjectStoreStats); `series()` collects every histogram under one naming scheme, for the JSON
`latency`/`sizes` objects and the Prometheus text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.util.histogram import (
    Histogram,
    Snapshot,
    now,
    prometheus_histogram,
    summary_bytes,
    summary_seconds,
)

if TYPE_CHECKING:
    from engine.broker.broker import Broker

PRODUCE_PHASES = ("decode", "append", "durable", "total")
FETCH_PHASES = ("read", "wait", "total")
#: A relayed produce (zone router, docs/zones.md): at the proxy, its relay write and the AppendRefs
#: round trip to the leader; at the leader, waiting for the batch's bytes from shared storage and
#: for its REF record to be durable.
RELAY_PHASES = ("write", "leader", "read", "durable")
S3_OPS = ("put", "get", "list", "delete")
#: How often the loop-lag probe wakes. Each wake-up of an idle broker costs ~0.1 ms of CPU here
#: (mostly the wake-up itself), so 10 a second stay near 0.1 % of a core; 600 samples a minute
#: are enough for a p99, and a sample's lateness does not depend on the interval.
LOOP_LAG_INTERVAL_S = 0.1


class BrokerLatency:
    """Produce and fetch phases and event-loop lag, observed on the broker's event loop."""

    def __init__(self) -> None:
        self.produce = {p: Histogram() for p in PRODUCE_PHASES}
        self.fetch = {p: Histogram() for p in FETCH_PHASES}
        self.relay = {p: Histogram() for p in RELAY_PHASES}
        self.loop_lag = Histogram()

    def produce_begun(self, decode_s: float, began: float, answer: asyncio.Future[Any]) -> None:
        """A Produce request's records are with the WAL (begin returned): its decode and append
        phases are known now, its durable phase when its answer resolves (the WAL wait)."""
        returned = now()
        self.produce["decode"].observe(decode_s)
        self.produce["append"].observe(returned - began)
        durable = self.produce["durable"]
        answer.add_done_callback(lambda _f: durable.observe(now() - returned))

    def produce_answered(self, arrivals: Iterable[float]) -> None:
        """Produce answers went to the transport; `arrivals`: when each one's frame was read (now())."""
        total = self.produce["total"]
        written = now()
        for arrived in arrivals:
            total.observe(written - arrived)

    def fetched(self, started: float, read_s: float, wait_s: float | None) -> None:
        """A Fetch request was answered; wait_s is None when it did not long-poll."""
        self.fetch["total"].observe(now() - started)
        self.fetch["read"].observe(read_s)
        if wait_s is not None:
            self.fetch["wait"].observe(wait_s)

    async def watch_loop(self, interval: float = LOOP_LAG_INTERVAL_S) -> None:
        """Sleep `interval` over and over and observe how late each wake-up is: the time callbacks
        and requests wait for the loop. uvloop's timers have 1 ms steps and may fire early: a
        wake-up that is early counts as 0."""
        while True:
            slept = now()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(now() - slept - interval, 0.0))


@dataclass(frozen=True)
class Series:
    """One histogram as the endpoint shows it."""

    key: str  #: in the JSON `latency` (seconds) or `sizes` (bytes) object
    metric: str  #: the Prometheus metric name
    labels: tuple[tuple[str, str], ...]  #: its labels beside broker and zone
    snapshot: Snapshot
    seconds: bool = True


_HELP = {
    "amq_produce_latency_seconds": "Produce requests by phase: decode, append (to the WAL), durable (WAL wait), "
    "total (frame read to answer written).",
    "amq_fetch_latency_seconds": "Fetch requests by phase: read (assembling data), wait (long poll), total.",
    "amq_relay_latency_seconds": "Relayed produce (zone router) by phase: write (relay object durable, at the "
    "proxy), leader (AppendRefs round trip, at the proxy), read (batch bytes from shared storage, at the leader), "
    "durable (REF record durable, at the leader).",
    "amq_loop_lag_seconds": f"How late the event loop ran a {int(LOOP_LAG_INTERVAL_S * 1000)} ms timer.",
    "amq_wal_sync_seconds": "Time for a WAL group to become durable: fdatasync (file, nfs) or the PUT (s3).",
    "amq_relay_sync_seconds": "Time for a relay group commit's fdatasync at the proxy (zone router, nfs WAL on a "
    "remote or slow file system).",
    "amq_wal_relay_sync_seconds": "Time for the leader's WAL to fdatasync the relay files a group's REF records "
    "point to (zone router, nfs WAL on a local file system), before the group.",
    "amq_wal_group_bytes": "Bytes per WAL group made durable.",
    "amq_s3_request_seconds": "Successful object store calls by operation (a multipart upload is one put).",
}


def series(broker: Broker) -> list[Series]:
    """Every histogram of this broker, in the order the endpoint lists them."""
    lat = broker.latency
    out = [Series(f"produce_{p}", "amq_produce_latency_seconds", (("phase", p),), lat.produce[p].snapshot())
           for p in PRODUCE_PHASES]  # fmt: skip
    out += [Series(f"fetch_{p}", "amq_fetch_latency_seconds", (("phase", p),), lat.fetch[p].snapshot())
            for p in FETCH_PHASES]  # fmt: skip
    relay = broker.router.relay  # None unless this broker can relay (zone router, nfs or s3 WAL)
    if relay is not None:
        out += [Series(f"relay_{p}", "amq_relay_latency_seconds", (("phase", p),), lat.relay[p].snapshot())
                for p in RELAY_PHASES]  # fmt: skip
    out.append(Series("loop_lag", "amq_loop_lag_seconds", (), lat.loop_lag.snapshot()))
    storage = broker.storage
    if storage is not None:
        wal = storage.wal.stats
        out.append(Series("wal_sync", "amq_wal_sync_seconds", (), wal.sync_seconds.snapshot()))
        if relay is not None:
            out.append(Series("relay_sync", "amq_relay_sync_seconds", (), relay.sync_seconds.snapshot()))
            out.append(Series("wal_relay_sync", "amq_wal_relay_sync_seconds", (), wal.relay_sync_seconds.snapshot()))
        out.append(Series("wal_group_bytes", "amq_wal_group_bytes", (), wal.group_bytes.snapshot(), seconds=False))
        s3 = storage.store.stats.latency
        out += [Series(f"s3_{op}", "amq_s3_request_seconds", (("op", op),), s3[op].snapshot()) for op in S3_OPS]
    return out


def json_objects(all_series: list[Series]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """{"latency": {key: {count, sum_s, p50_ms, p99_ms, max_ms}}, "sizes": {key: {count, sum_bytes, ...}}}."""
    latency = {s.key: summary_seconds(s.snapshot) for s in all_series if s.seconds}
    sizes = {s.key: summary_bytes(s.snapshot) for s in all_series if not s.seconds}
    return {"latency": latency, "sizes": sizes}


def prometheus(all_series: list[Series], broker_id: int, zone: str) -> str:
    """Prometheus histograms (`_bucket{le=...}`, `_sum`, `_count`), labelled like the counters."""
    by_metric: dict[str, list[tuple[tuple[tuple[str, str], ...], Snapshot]]] = {}
    base = (("broker", str(broker_id)), ("zone", zone))
    for s in all_series:
        by_metric.setdefault(s.metric, []).append((base + s.labels, s.snapshot))
    lines: list[str] = []
    for metric, items in by_metric.items():
        lines += prometheus_histogram(metric, _HELP[metric], items)
    return "\n".join(lines) + "\n" if lines else ""
