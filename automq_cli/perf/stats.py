"""Latency histograms (HdrHistogram, microseconds) and their summaries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

# 1 µs .. 10 min at 3 significant digits: covers a loopback ack and a stalled broker alike.
LOWEST_US = 1
HIGHEST_US = 600_000_000
SIGNIFICANT_DIGITS = 3

# Summary keys, in the order they are printed and stored.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p75", 75.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p999", 99.9),
)
SUMMARY_KEYS = ("avg", *(k for k, _ in PERCENTILES), "max")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_many(hist: HdrHistogram, values_us: Iterable[int]) -> None:
    """Record a batch of latencies.

    HdrHistogram's record_value costs ~4 µs in Python, too much per message at
    100k msg/s; Counter (C) collapses equal values first, so the Python-level
    calls scale with distinct values, not messages.
    """
    for value, count in Counter(values_us).items():
        v = LOWEST_US if value < LOWEST_US else (HIGHEST_US if value > HIGHEST_US else value)
        hist.record_value(v, count)


def decode_into(hist: HdrHistogram, encoded: bytes | None) -> None:
    if encoded:
        hist.decode_and_add(encoded)


def summary_ms(hist: HdrHistogram) -> dict[str, float | None]:
    """avg, p50 .. p99.9, max in milliseconds; all None when nothing was recorded."""
    if hist.get_total_count() == 0:
        return dict.fromkeys(SUMMARY_KEYS)
    out: dict[str, float | None] = {"avg": round(hist.get_mean_value() / 1000.0, 3)}
    for key, pct in PERCENTILES:
        out[key] = round(hist.get_value_at_percentile(pct) / 1000.0, 3)
    out["max"] = round(hist.get_max_value() / 1000.0, 3)
    return out


def brief_ms(hist: HdrHistogram) -> dict[str, float | None]:
    """The per-interval subset: p50, p99, max (ms)."""
    if hist.get_total_count() == 0:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(hist.get_value_at_percentile(50.0) / 1000.0, 3),
        "p99": round(hist.get_value_at_percentile(99.0) / 1000.0, 3),
        "max": round(hist.get_max_value() / 1000.0, 3),
    }
