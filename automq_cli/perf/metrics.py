"""The result's "cluster" block: counters the cluster publishes, plus broker CPU/RSS.

Counter source: each URL in cluster.json's "metrics" list answers GET with a
flat JSON object of monotonically increasing counters (one per broker, or
one for the whole cluster). The run reads every URL when the measured phase
starts and when it ends and records the difference, summed over URLs; with one
URL per broker (the endpoint's `broker_id`, or cluster.json's `metrics_port`,
says whose it is) a few counters are also kept per broker.
Broker CPU and RSS come from psutil, by the pids cluster.json lists.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from automq_cli.perf.target import Target
from engine.util.histogram import Snapshot, parse_prometheus, summary_seconds

# Counter name at the metrics endpoint -> where it lands in the result.
COUNTERS = (
    "s3_put_requests",
    "s3_put_bytes",
    "s3_get_requests",
    "s3_get_bytes",
    "s3_list_requests",
    "s3_delete_requests",
    "wal_bytes_written",
    "cross_zone_bytes",
    "cross_zone_pointer_bytes",
)
# Which broker an endpoint belongs to: an identity, never summed.
IDENTITY_KEYS = ("broker_id",)
# Counters also reported per broker (`per_broker`), to show how the load spread over the brokers.
PER_BROKER_COUNTERS = (
    "produce_bytes",
    "fetch_bytes",
    "wal_bytes_written",
    "s3_put_requests",
    "s3_put_bytes",
)
NO_SOURCE_NOTE = "no cluster metrics source (cluster.json lists no metrics URLs or broker pids); counters omitted"


def fetch_counters(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data = json.loads(resp.read().decode())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


@dataclass
class _Proc:
    pid: int
    broker_id: int | None
    zone: str | None
    handle: Any = None
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    rss_peak: int = 0
    alive: bool = True


@dataclass
class ClusterMetrics:
    target: Target
    warnings: list[str] = field(default_factory=list)
    _start: dict[str, dict[str, Any]] = field(default_factory=dict)
    _end: dict[str, dict[str, Any]] = field(default_factory=dict)
    _procs: list[_Proc] = field(default_factory=list)
    _t_start: float = 0.0
    _t_end: float = 0.0
    # Peak of the brokers' RSS summed at the same sampling moment.
    _rss_total_peak: int = 0
    # Each broker's latency histograms (Prometheus text) at the window's start and end.
    _hist_start: dict[str, dict[tuple[str, str], Snapshot]] = field(default_factory=dict)
    _hist_end: dict[str, dict[tuple[str, str], Snapshot]] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return bool(self.target.metrics_urls or self.target.broker_pids)

    def _read_all(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for url in self.target.metrics_urls:
            try:
                out[url] = fetch_counters(url)
            except (OSError, ValueError, urllib.error.URLError) as exc:
                self.warnings.append(f"metrics source {url} did not answer: {exc}")
        return out

    def _read_histograms(self) -> dict[str, dict[tuple[str, str], Snapshot]]:
        out: dict[str, dict[tuple[str, str], Snapshot]] = {}
        for url in self.target.metrics_urls:
            if not url.rstrip("/").endswith("/metrics"):
                continue  # not an amq broker's endpoint
            try:
                with urllib.request.urlopen(url.rstrip("/") + "/prometheus", timeout=2.0) as resp:
                    out[url] = parse_prometheus(resp.read().decode())
            except (OSError, ValueError, urllib.error.URLError):
                continue  # the counters' read says so already
        return out

    def start(self) -> None:
        import psutil

        self._t_start = time.monotonic()
        self._start = self._read_all()
        self._hist_start = self._read_histograms()
        self._procs = []
        self._rss_total_peak = 0
        for broker in self.target.brokers:
            if broker.pid is None:
                continue
            proc = _Proc(pid=broker.pid, broker_id=broker.id, zone=broker.zone)
            try:
                proc.handle = psutil.Process(broker.pid)
                times = proc.handle.cpu_times()
                proc.cpu_start = proc.cpu_end = times.user + times.system
                proc.rss_peak = proc.handle.memory_info().rss
            except (psutil.Error, OSError) as exc:
                proc.alive = False
                self.warnings.append(f"broker pid {broker.pid} cannot be sampled: {exc}")
            self._procs.append(proc)
        self._rss_total_peak = sum(p.rss_peak for p in self._procs if p.alive)

    def sample(self) -> dict[str, float] | None:
        """Per-interval CPU/RSS sample; also tracks each broker's peak RSS."""
        if not self._procs:
            return None
        import psutil

        rss_total = 0
        cpu_total = 0.0
        for proc in self._procs:
            if not proc.alive:
                continue
            try:
                times = proc.handle.cpu_times()
                rss = proc.handle.memory_info().rss
            except (psutil.Error, OSError):
                proc.alive = False
                self.warnings.append(f"broker pid {proc.pid} exited during the run")
                continue
            cpu_total += times.user + times.system
            proc.cpu_end = times.user + times.system
            proc.rss_peak = max(proc.rss_peak, rss)
            rss_total += rss
        self._rss_total_peak = max(self._rss_total_peak, rss_total)
        return {"broker_rss_bytes": rss_total, "broker_cpu_seconds": cpu_total}

    def finish(self) -> None:
        self.sample()
        self._t_end = time.monotonic()
        self._end = self._read_all()
        self._hist_end = self._read_histograms()

    def _broker_of(self, url: str) -> int | None:
        """The broker id behind a metrics URL: the endpoint's `broker_id`, else cluster.json's metrics_port."""
        for seen in (self._end.get(url), self._start.get(url)):
            bid = (seen or {}).get("broker_id")
            if isinstance(bid, int) and not isinstance(bid, bool):
                return bid
        try:
            port = urllib.parse.urlsplit(url).port
        except ValueError:
            return None
        for broker in self.target.brokers:
            if broker.id is not None and port is not None and broker.metrics_port == port:
                return broker.id
        return None

    def _per_broker(self, wall: float) -> list[dict[str, Any]]:
        """One entry per broker: CPU and peak RSS (by pid), and its own counters (by metrics URL)."""
        entries: dict[Any, dict[str, Any]] = {}
        for i, p in enumerate(self._procs):
            key = p.broker_id if p.broker_id is not None else f"pid-{i}"
            entries[key] = {
                "id": p.broker_id,
                "pid": p.pid,
                "zone": p.zone,
                "cpu_percent": round((p.cpu_end - p.cpu_start) / wall * 100.0, 1),
                "rss_peak_bytes": p.rss_peak,
            }
        zones = {b.id: b.zone for b in self.target.brokers if b.id is not None}
        for url in self.target.metrics_urls:
            begin, end = self._start.get(url), self._end.get(url)
            bid = self._broker_of(url)
            if begin is None or end is None or bid is None:
                continue
            entry = entries.setdefault(bid, {"id": bid, "pid": None, "zone": zones.get(bid) or end.get("zone")})
            for key in PER_BROKER_COUNTERS:
                # A counter appears at its first increment: absent at the start means 0 then.
                b, e = begin.get(key, 0), end.get(key)
                if isinstance(b, int | float) and isinstance(e, int | float):
                    entry[key] = int(entry.get(key, 0) + e - b)
        return sorted(entries.values(), key=lambda e: (e["id"] is None, e["id"] if e["id"] is not None else 0))

    def _latency(self) -> list[dict[str, Any]]:
        """Per broker, its latency histograms over the window (docs/perf.md, "Where time goes"):
        {"id", "latency": {"produce_durable": {count, p50_ms, p99_ms, max_ms}, ...}}; the max is
        the upper bound of the highest bucket reached."""
        out: list[dict[str, Any]] = []
        for url, end in self._hist_end.items():
            begin = self._hist_start.get(url, {})
            latency: dict[str, Any] = {}
            for (metric, labels), snap in end.items():
                if not metric.endswith("_seconds"):
                    continue
                before = begin.get((metric, labels))
                window = snap.since(before) if before is not None else snap
                latency[_histogram_key(metric, labels)] = summary_seconds(window)
            out.append({"id": self._broker_of(url), "latency": dict(sorted(latency.items()))})
        return sorted(out, key=lambda e: (e["id"] is None, e["id"] or 0))

    def _zone_traffic(self) -> list[dict[str, Any]]:
        total: dict[tuple[str, str, str], int] = {}
        for url in self.target.metrics_urls:
            begin, end = self._start.get(url), self._end.get(url)
            if begin is None or end is None:
                continue
            before = {(r["src"], r["dst"], r["kind"]): r["bytes"] for r in begin.get("zone_traffic") or []}
            for r in end.get("zone_traffic") or []:
                key = (r["src"], r["dst"], r["kind"])
                total[key] = total.get(key, 0) + int(r["bytes"]) - int(before.get(key, 0))
        return [{"src": s, "dst": d, "kind": k, "bytes": n} for (s, d, k), n in sorted(total.items()) if n]

    def result(self) -> dict[str, Any]:
        target = self.target
        if not self.available:
            return {"metrics_available": False, "note": NO_SOURCE_NOTE}
        wall = max(self._t_end - self._t_start, 1e-9)
        deltas: dict[str, float] = {}
        at_end: dict[str, float] = {}
        static: dict[str, Any] = {}
        for url in target.metrics_urls:
            begin, end = self._start.get(url), self._end.get(url)
            if begin is None or end is None:
                continue
            for key, value in end.items():
                if isinstance(value, bool) or key in IDENTITY_KEYS:
                    continue
                # A counter appears at its first increment: absent at the start means 0 then.
                if isinstance(value, int | float) and isinstance(begin.get(key, 0), int | float):
                    deltas[key] = deltas.get(key, 0) + (value - begin.get(key, 0))
                    at_end[key] = at_end.get(key, 0) + value
                elif isinstance(value, str):
                    static.setdefault(key, value)
        counters_seen = bool(self._start) and bool(self._end)
        traffic = self._zone_traffic()
        per_broker = self._per_broker(wall)
        sampled = [b for b in per_broker if b.get("pid") is not None]
        zones = target.zones or sorted({str(z) for z in [static.get("zone")] if z})
        out: dict[str, Any] = {
            "metrics_available": counters_seen,
            "wal_kind": target.wal_kind or static.get("wal_kind"),
            # Counts, as `amq cost --from-run` reads them; the names are kept beside.
            "zones": len(zones) or None,
            "zone_names": zones,
            "brokers": len(target.brokers) or len(per_broker) or len(target.metrics_urls) or None,
            "sources": list(target.metrics_urls),
        }
        if counters_seen:

            def count(key: str) -> int:
                return int(deltas.get(key, 0))

            out["s3"] = {
                "put": count("s3_put_requests"),
                "get": count("s3_get_requests"),
                "list": count("s3_list_requests"),
                "delete": count("s3_delete_requests"),
                "put_bytes": count("s3_put_bytes"),
                "get_bytes": count("s3_get_bytes"),
            }
            out["wal_bytes_written"] = count("wal_bytes_written")
            out["cross_zone_bytes"] = count("cross_zone_bytes")
            # The zone router's pointers (AppendRefs, Tail): not data, but they cross zones and are billed.
            out["cross_zone_pointer_bytes"] = count("cross_zone_pointer_bytes")
            # The brokers' zone ledger over the window (docs/zones.md): bytes by (from zone, to zone, kind).
            out["zone_traffic"] = traffic
            known = sum(r["bytes"] for r in traffic if r["kind"] == "client" and "unknown" not in (r["src"], r["dst"]))
            out["cross_zone_percent"] = round(100 * count("cross_zone_bytes") / known, 2) if known else None
            # What the cluster publishes beyond the documented counters, kept for whoever needs it:
            # the change over the window (right for counters) and the value at its end (right for
            # gauges such as cache or WAL usage).
            out["other_counters"] = {k: v for k, v in sorted(deltas.items()) if k not in COUNTERS}
            out["other_at_end"] = {k: v for k, v in sorted(at_end.items()) if k not in COUNTERS}
        elif target.metrics_urls:
            out["note"] = "no metrics URL answered; S3/WAL/cross-zone counters omitted"
        else:
            out["note"] = "no metrics URLs for this cluster (not an amq cluster?); S3/WAL/cross-zone counters omitted"
        if sampled:
            # cpu: sum over brokers (100 = one core busy); rss: the largest broker's peak,
            # because the memory goal is per broker; and the peak of all brokers together.
            out["broker_cpu_percent"] = round(sum(b["cpu_percent"] for b in sampled), 1)
            out["broker_rss_bytes"] = max(b["rss_peak_bytes"] for b in sampled)
            out["broker_rss_total_bytes"] = self._rss_total_peak
        if per_broker:
            out["per_broker"] = per_broker
        latency = self._latency()
        if latency:
            out["broker_latency"] = latency
        if self.warnings:
            out["warnings"] = list(dict.fromkeys(self.warnings))
        return out


def _histogram_key(metric: str, labels: str) -> str:
    """amq_produce_latency_seconds{...,phase="durable"} -> produce_durable, as the JSON endpoint
    names it; amq_s3_request_seconds{op="put"} -> s3_put; amq_wal_sync_seconds -> wal_sync."""
    name = metric.removeprefix("amq_")
    for suffix in ("_latency_seconds", "_request_seconds", "_seconds"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    pairs = (label.split("=", 1) for label in labels.split(",") if "=" in label)
    return "_".join([name, *(value.strip('"') for key, value in pairs if key not in ("broker", "zone"))])
