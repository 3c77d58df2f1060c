"""The latency histograms behind the metrics endpoint (engine/util/histogram.py, engine/broker/latency.py)."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from automq_cli.perf.metrics import _histogram_key
from engine.broker import latency
from engine.broker.latency import BrokerLatency
from engine.storage.objects.store import ObjectStoreError, ObjectStoreStats, _timed
from engine.storage.wal.base import Done, WalRecord
from engine.storage.wal.ring import RingWal
from engine.storage.wal.s3 import S3Wal
from engine.util.histogram import BYTES, SECONDS, Histogram, parse_prometheus, prometheus_histogram, summary_seconds
from tests.prometheus_text import check_histograms, parse_histograms


def test_latency_buckets_run_from_50us_to_30s_about_four_per_decade() -> None:
    assert SECONDS[0] == 50e-6 and SECONDS[-1] == 30.0
    assert list(SECONDS) == sorted(set(SECONDS))
    assert 20 <= len(SECONDS) <= 28
    assert all(1.4 < b / a <= 2.0 for a, b in itertools.pairwise(SECONDS))
    assert BYTES[0] == 256 and BYTES[-1] == 64 << 20


def test_a_value_on_a_bound_goes_in_that_bucket_as_prometheus_le_says() -> None:
    h = Histogram()
    for v in (0.0, 50e-6, 50.0001e-6, 1e-3, 30.0, 30.5):
        h.observe(v)
    s = h.snapshot()
    i_1ms = SECONDS.index(1e-3)
    assert s.counts[0] == 2  # 0 and exactly 50 µs: le="5e-05"
    assert s.counts[1] == 1  # just above 50 µs
    assert s.counts[i_1ms] == 1
    assert s.counts[len(SECONDS) - 1] == 1  # exactly 30 s: le="30"
    assert s.counts[-1] == 1  # above the last bound: +Inf only
    assert s.count == 6 and s.max == 30.5
    assert s.sum == pytest.approx(0 + 50e-6 + 50.0001e-6 + 1e-3 + 30 + 30.5)


def test_quantiles_fall_in_the_right_bucket_and_never_above_the_max() -> None:
    h = Histogram()
    assert h.snapshot().quantile(0.5) is None
    for _ in range(99):
        h.observe(0.0012)
    h.observe(2.5)
    s = h.snapshot()
    p50, p99, p999 = s.quantile(0.5), s.quantile(0.99), s.quantile(0.999)
    assert p50 is not None and p99 is not None and p999 is not None
    assert 1e-3 < p50 <= 2e-3  # the bucket (1 ms, 2 ms] holds the 1.2 ms values
    assert 1e-3 < p99 <= 2e-3
    assert 2.0 < p999 <= 2.5  # the one slow value: (2 s, 3 s], capped at the max seen
    one = Histogram()
    one.observe(0.004)
    assert one.snapshot().quantile(0.99) == pytest.approx(0.004)  # capped at the max, not the bound (5 ms)
    big = Histogram()
    big.observe(100.0)
    assert big.snapshot().quantile(0.5) == pytest.approx(65.0)  # in +Inf: between 30 s and the max


def test_quantiles_of_a_spread_are_within_one_bucket_of_the_truth() -> None:
    rng = random.Random(7)
    values = [10 ** rng.uniform(-4, 0) for _ in range(20_000)]  # 100 µs .. 1 s, log-uniform
    h = Histogram()
    for v in values:
        h.observe(v)
    values.sort()
    for q in (0.5, 0.9, 0.99):
        true = values[int(q * len(values)) - 1]
        est = h.snapshot().quantile(q)
        assert est is not None and true / 2 <= est <= true * 2, (q, true, est)


def test_json_summary_in_milliseconds() -> None:
    h = Histogram()
    assert summary_seconds(h.snapshot()) == {"count": 0, "sum_s": 0.0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    h.observe(0.002)
    h.observe(0.004)
    out = summary_seconds(h.snapshot())
    assert out["count"] == 2 and out["sum_s"] == pytest.approx(0.006) and out["max_ms"] == pytest.approx(4.0)
    assert 1.0 <= out["p50_ms"] <= 2.0 and 3.0 <= out["p99_ms"] <= 4.0  # type: ignore[operator]


def test_prometheus_text_is_a_histogram_that_parses() -> None:
    h = Histogram()
    for v in (0.0001, 0.0004, 0.02, 0.02, 45.0):
        h.observe(v)
    text = "\n".join(prometheus_histogram("amq_x_seconds", "X.", [((("phase", "a"),), h.snapshot())])) + "\n"
    assert "# TYPE amq_x_seconds histogram" in text
    assert 'amq_x_seconds_bucket{phase="a",le="5e-05"} 0' in text
    assert 'amq_x_seconds_bucket{phase="a",le="30"} 4' in text
    assert 'amq_x_seconds_bucket{phase="a",le="+Inf"} 5' in text
    assert 'amq_x_seconds_count{phase="a"} 5' in text
    parsed = parse_histograms(text)
    check_histograms(parsed)
    assert parsed[("amq_x_seconds", 'phase="a"')]["sum"] == pytest.approx(45.0405)


def test_a_window_of_a_scraped_histogram_is_what_was_observed_in_it() -> None:
    """`amq perf` scrapes the text at a window's start and end and reports the difference."""
    h = Histogram()
    for v in (0.0001, 0.0001, 0.5):
        h.observe(v)

    def scrape() -> dict[tuple[str, str], Any]:
        series = [((("broker", "1"), ("phase", "a")), h.snapshot()), ((), Histogram().snapshot())]
        return parse_prometheus("\n".join(prometheus_histogram("amq_x_seconds", "X.", series)))

    before = scrape()
    for v in (0.002, 0.002, 0.003, 0.004):
        h.observe(v)
    after = scrape()
    key = ("amq_x_seconds", 'broker="1",phase="a"')
    assert set(after) == {key, ("amq_x_seconds", "")}
    assert after[key].count == 7 and after[key].sum == pytest.approx(0.5112)
    window = after[key].since(before[key])
    assert window.count == 4 and window.sum == pytest.approx(0.011)
    assert 0.002 <= window.quantile(0.99) <= 0.005  # type: ignore[operator]  # the 0.5 s before it is gone
    assert window.max == 0.005  # the bucket's upper bound stands in for the unknown maximum
    assert after[("amq_x_seconds", "")].count == 0


def test_broker_series_json_and_prometheus() -> None:
    lat = BrokerLatency()
    lat.produce["durable"].observe(0.003)
    stats = SimpleNamespace(
        wal=SimpleNamespace(
            stats=SimpleNamespace(
                sync_seconds=Histogram(), group_bytes=Histogram(BYTES), relay_sync_seconds=Histogram()
            )
        ),
        store=SimpleNamespace(stats=ObjectStoreStats()),
    )
    stats.wal.stats.group_bytes.observe(5000)
    relay = SimpleNamespace(sync_seconds=Histogram())
    broker = SimpleNamespace(latency=lat, storage=stats, router=SimpleNamespace(relay=relay))
    lat.relay["leader"].observe(0.004)
    series = latency.series(broker)  # type: ignore[arg-type]
    objects = latency.json_objects(series)
    assert set(objects["latency"]) == {
        "produce_decode", "produce_append", "produce_durable", "produce_total",
        "fetch_read", "fetch_wait", "fetch_total", "loop_lag", "wal_sync",
        "relay_write", "relay_leader", "relay_read", "relay_durable", "relay_sync", "wal_relay_sync",
        "s3_put", "s3_get", "s3_list", "s3_delete",
    }  # fmt: skip
    assert objects["latency"]["relay_leader"]["count"] == 1
    assert objects["latency"]["produce_durable"]["count"] == 1
    assert objects["sizes"]["wal_group_bytes"]["max_bytes"] == 5000
    text = latency.prometheus(series, 3, "az2")
    assert 'amq_produce_latency_seconds_count{broker="3",zone="az2",phase="durable"} 1' in text
    assert 'amq_wal_group_bytes_bucket{broker="3",zone="az2",le="8192"} 1' in text
    assert text.count("# TYPE amq_produce_latency_seconds histogram") == 1
    assert 'amq_relay_latency_seconds_count{broker="3",zone="az2",phase="leader"} 1' in text
    # `amq perf` names what it scrapes as the JSON endpoint does, for every latency histogram.
    scraped = parse_prometheus(text)
    assert {_histogram_key(m, labels) for m, labels in scraped if m.endswith("_seconds")} == set(objects["latency"])
    check_histograms(parse_histograms(text))


def test_object_store_calls_are_timed_when_they_succeed() -> None:
    class Store:
        def __init__(self) -> None:
            self.stats = ObjectStoreStats()

        @_timed("get")
        async def get(self, key: str) -> bytes:
            await asyncio.sleep(0.01)
            if key == "bad":
                raise ObjectStoreError("no")
            return b"x"

    store = Store()
    assert asyncio.run(store.get("k")) == b"x"
    with pytest.raises(ObjectStoreError):
        asyncio.run(store.get("bad"))
    s = store.stats.latency["get"].snapshot()
    assert s.count == 1 and 0.009 <= s.sum < 1.0
    assert store.stats.latency["put"].snapshot().count == 0


def test_the_loop_lag_probe_sees_a_blocked_loop() -> None:
    async def main() -> BrokerLatency:
        lat = BrokerLatency()
        probe = asyncio.get_running_loop().create_task(lat.watch_loop(0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.12)  # the loop is blocked: the probe wakes ~120 ms late
        await asyncio.sleep(0.05)
        probe.cancel()
        return lat

    s = asyncio.run(main()).loop_lag.snapshot()
    assert s.count >= 3
    assert 0.1 <= s.max < 1.0
    p50 = s.quantile(0.5)
    assert p50 is not None and p50 < 0.05  # the other wake-ups were on time


def _resolver(fut: asyncio.Future[int]) -> Done:
    def done(end: int, err: BaseException | None) -> None:
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(end)

    return done


def test_the_file_wal_hands_its_sync_times_to_the_loop(tmp_path: Path) -> None:
    """The writer thread measures fdatasync; the histograms are only touched on the loop's thread."""
    seen: set[int] = set()
    observe = Histogram.observe

    def spy(self: Histogram, value: float) -> None:
        seen.add(threading.get_ident())
        observe(self, value)

    async def main() -> tuple[RingWal, int]:
        wal = RingWal(tmp_path / "wal", 4 << 20, "test")
        await wal.open()
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(200):
            fut: asyncio.Future[int] = loop.create_future()
            wal.append(WalRecord(1, 1, i, 1, b"x" * 1000), _resolver(fut))
            futures.append(fut)
            if i % 20 == 0:
                await asyncio.sleep(0.001)  # several groups
        await asyncio.gather(*futures)
        await wal.close()
        return wal, threading.get_ident()

    original = Histogram.observe
    Histogram.observe = spy  # type: ignore[method-assign]
    try:
        wal, loop_thread = asyncio.run(main())
    finally:
        Histogram.observe = original  # type: ignore[method-assign]
    sync, sizes = wal.stats.sync_seconds.snapshot(), wal.stats.group_bytes.snapshot()
    assert sync.count == wal.stats.syncs >= 1
    assert sizes.count == wal.stats.syncs and sizes.sum == wal.stats.bytes_written
    assert sync.sum > 0
    assert seen == {loop_thread}


def test_the_s3_wal_times_the_put_of_each_wal_object() -> None:
    class Store:
        def __init__(self) -> None:
            self.stats = ObjectStoreStats()
            self.objects: dict[str, bytes] = {}

        async def put(self, key: str, data: bytes) -> None:
            await asyncio.sleep(0.02)
            self.objects[key] = bytes(data)

        async def list(self, prefix: str) -> list[Any]:
            return []

    async def main() -> S3Wal:
        wal = S3Wal(Store(), "w", "test", batch_interval_s=0.01)  # type: ignore[arg-type]
        await wal.open()
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(30):
            fut: asyncio.Future[int] = loop.create_future()
            wal.append(WalRecord(1, 1, i, 1, b"y" * 500), _resolver(fut))
            futures.append(fut)
            if i % 10 == 9:
                await asyncio.sleep(0.015)
        await asyncio.gather(*futures)
        await wal.close()
        return wal

    wal = asyncio.run(main())
    sync, sizes = wal.stats.sync_seconds.snapshot(), wal.stats.group_bytes.snapshot()
    assert sync.count == wal.stats.syncs >= 2
    assert sizes.sum == wal.stats.bytes_written and sync.sum >= 0.02 * wal.stats.syncs
