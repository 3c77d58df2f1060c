"""Fixed-bucket histograms for the metrics endpoint: latencies in seconds, sizes in bytes.

Buckets are fixed at creation and the same for every histogram of a kind, so a scraper can
add histograms of several brokers bucket by bucket. Latency buckets run from 50 µs to 30 s,
four per power of ten (1-2-3-5 steps, ratio 1.5-2); a quantile is interpolated inside its
bucket, so it is off by at most one bucket's width, and never above the largest value seen.
docs/perf.md ("Where time goes") lists the histograms, and why this class rather than
prometheus_client (its observe() costs several times more, measured there).

Observe on the event loop's thread only. Other threads hand their figures to the loop
instead (the file WAL's writer thread passes its fdatasync time along with the completion
callback it schedules on the loop anyway), so observe() needs no lock: a lock would double
its cost on every request, for the sake of one thread that can do without it.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter

#: The clock of every latency here: monotonic and fine-grained (uvloop's loop.time() has 1 ms steps).
now = perf_counter


def _decades(first: float, last: float, steps: Sequence[float] = (1, 2, 3, 5)) -> tuple[float, ...]:
    out: list[float] = []
    scale = 1e-6
    while scale <= last:
        for s in steps:
            # round() keeps labels short: 3e-05, not 3.0000000000000004e-05.
            v = round(s * scale, 12)
            if first <= v <= last:
                out.append(v)
        scale *= 10
    return tuple(out)


#: Seconds: 50 µs .. 30 s, 24 buckets (+Inf).
SECONDS: tuple[float, ...] = _decades(50e-6, 30.0)
#: Bytes: 256 B .. 64 MiB, powers of two, 19 buckets (+Inf).
BYTES: tuple[float, ...] = tuple(float(1 << n) for n in range(8, 27))


@dataclass(frozen=True)
class Snapshot:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  #: per bucket, not cumulative; one more than bounds (+Inf)
    sum: float
    max: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) by linear interpolation inside its bucket; None when empty."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lo = self.bounds[i - 1] if i > 0 else 0.0
                hi = self.bounds[i] if i < len(self.bounds) else self.max
                value = lo + (hi - lo) * max(rank - seen, 0.0) / n
                return min(value, self.max)
            seen += n
        return self.max

    def since(self, earlier: Snapshot) -> Snapshot:
        """What was observed after `earlier` (a snapshot of the same histogram). The maximum of a
        window is not known: the upper bound of its highest non-empty bucket stands in (capped by
        the overall maximum)."""
        counts = tuple(max(a - b, 0) for a, b in zip(self.counts, earlier.counts, strict=True))
        high = min(_top_bound(self.bounds, counts, self.max), self.max)
        return Snapshot(self.bounds, counts, max(self.sum - earlier.sum, 0.0), high)

    def cumulative(self) -> list[int]:
        out: list[int] = []
        running = 0
        for n in self.counts:
            running += n
            out.append(running)
        return out


class Histogram:
    """Counts of observations by bucket (`le` inclusive, as in Prometheus), with their sum and max."""

    __slots__ = ("_counts", "_max", "_sum", "bounds")

    def __init__(self, bounds: Sequence[float] = SECONDS) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._max = 0.0

    def observe(self, value: float) -> None:
        """On the event loop's thread (see the module's docstring)."""
        self._counts[bisect_left(self.bounds, value)] += 1
        self._sum += value
        if value > self._max:
            self._max = value

    def snapshot(self) -> Snapshot:
        return Snapshot(self.bounds, tuple(self._counts), self._sum, self._max)


def summary_seconds(s: Snapshot) -> dict[str, float | int | None]:
    """The JSON form of a latency histogram: {count, sum_s, p50_ms, p99_ms, max_ms}."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    count = s.count
    return {
        "count": count,
        "sum_s": round(s.sum, 6),
        "p50_ms": ms(s.quantile(0.5)),
        "p99_ms": ms(s.quantile(0.99)),
        "max_ms": ms(s.max) if count else None,
    }


def summary_bytes(s: Snapshot) -> dict[str, float | int | None]:
    """The JSON form of a size histogram: {count, sum_bytes, p50_bytes, p99_bytes, max_bytes}."""

    def b(v: float | None) -> int | None:
        return None if v is None else int(v)

    count = s.count
    return {
        "count": count,
        "sum_bytes": int(s.sum),
        "p50_bytes": b(s.quantile(0.5)),
        "p99_bytes": b(s.quantile(0.99)),
        "max_bytes": int(s.max) if count else None,
    }


def _number(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in pairs)


def prometheus_histogram(
    name: str, help_text: str, series: Sequence[tuple[Sequence[tuple[str, str]], Snapshot]]
) -> list[str]:
    """Text exposition lines of one histogram metric: HELP, TYPE, then each labelled series'
    `_bucket{le=...}` (cumulative, ending in +Inf), `_sum` and `_count`."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for labels, snap in series:
        base = _labels(labels)
        sep = "," if base else ""
        cumulative = snap.cumulative()
        for bound, n in zip(snap.bounds, cumulative, strict=False):
            out.append(f'{name}_bucket{{{base}{sep}le="{_number(bound)}"}} {n}')
        out.append(f'{name}_bucket{{{base}{sep}le="+Inf"}} {cumulative[-1]}')
        out.append(f"{name}_sum{{{base}}} {_number(snap.sum)}")
        out.append(f"{name}_count{{{base}}} {cumulative[-1]}")
    return out


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)_(?P<part>bucket|sum|count)\{(?P<labels>[^}]*)\} (?P<value>\S+)$"
)
_LE = re.compile(r'(?:^|,)le="([^"]+)"')


def parse_prometheus(text: str) -> dict[tuple[str, str], Snapshot]:
    """The histograms of a Prometheus text exposition (as prometheus_histogram writes them):
    {(metric, labels without le): Snapshot}. The maximum is not in the text: the upper bound of
    the highest non-empty bucket stands in for it."""
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
    sums: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = m["labels"]
        if m["part"] == "bucket":
            le = _LE.search(labels)
            if le is None:
                continue
            key = (m["name"], _LE.sub("", labels).strip(","))
            buckets.setdefault(key, []).append((float(le[1]), float(m["value"])))
        elif m["part"] == "sum":
            sums[(m["name"], labels)] = float(m["value"])
    out: dict[tuple[str, str], Snapshot] = {}
    for key, pairs in buckets.items():
        pairs.sort()
        bounds = tuple(le for le, _ in pairs if le != float("inf"))
        cumulative = [int(n) for _, n in pairs]
        counts = tuple(n - (cumulative[i - 1] if i else 0) for i, n in enumerate(cumulative))
        if len(counts) != len(bounds) + 1:
            continue  # no +Inf bucket: not a histogram this parser understands
        high = _top_bound(bounds, counts, bounds[-1] if bounds else 0.0)
        out[key] = Snapshot(bounds, counts, sums.get(key, 0.0), high)
    return out


def _top_bound(bounds: tuple[float, ...], counts: tuple[int, ...], beyond: float) -> float:
    """Upper bound of the highest non-empty bucket (`beyond` for +Inf), 0 when all are empty: what
    stands in for a maximum that was not kept."""
    top = max((i for i, n in enumerate(counts) if n), default=-1)
    if top < 0:
        return 0.0
    return bounds[top] if top < len(bounds) else beyond
