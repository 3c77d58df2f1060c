"""Reading an `amq perf` result JSON for `amq cost --from-run` (fields documented in docs/cost.md).

Read: duration_s; produce.{bytes, mib_per_s}; consume.{bytes, mib_per_s};
cluster.{wal_kind, zones, brokers, s3.{put, get, list, delete, put_bytes,
get_bytes}, wal_bytes_written, cross_zone_bytes, broker_cpu_percent,
broker_rss_bytes}. Any `cluster` key may be absent (a run against another
system has none); the model's assumption is used instead and a note says so.
Counts are turned into rates per MiB produced so they scale to a target
throughput: a run that made 3 PUTs per MiB prices 3 PUTs per MiB at 1 GiB/s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.cost.errors import CostError
from engine.cost.model import WAL_KINDS, Measured
from engine.cost.units import MIB


@dataclass(frozen=True)
class Run:
    path: str
    duration_s: float
    produce_mib_s: float
    consume_mib_s: float
    wal_kind: str | None
    zones: int | None
    brokers: int | None
    measured: Measured
    broker_cpu_percent: float | None
    broker_rss_bytes: float | None
    missing: tuple[str, ...]  # cluster fields the run did not have

    @property
    def read_fanout(self) -> float:
        return self.consume_mib_s / self.produce_mib_s


def _num(where: str, node: Mapping[str, Any], key: str) -> float | None:
    if key not in node or node[key] is None:
        return None
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise CostError(f"run file: {where}.{key} must be a number >= 0, got {value!r}")
    return float(value)


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CostError(f"run file: {where} must be an object")
    return value


def _rate(where: str, node: Mapping[str, Any], duration_s: float | None) -> float | None:
    rate = _num(where, node, "mib_per_s")
    if rate is not None:
        return rate
    total = _num(where, node, "bytes")
    if total is not None and duration_s:
        return total / MIB / duration_s
    return None


def load_run(path: str | Path) -> Run:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise CostError(f"cannot read run file {str(path)!r}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CostError(f"run file {str(path)!r} is not JSON: {exc}") from None
    return parse_run(raw, str(path))


def parse_run(raw: Any, source: str = "run") -> Run:
    if not isinstance(raw, dict):
        raise CostError(f"run file {source!r} must hold a JSON object")
    duration = _num("<run>", raw, "duration_s")
    produce = _mapping("produce", raw.get("produce"))
    consume = _mapping("consume", raw.get("consume"))
    produce_rate = _rate("produce", produce, duration)
    if not produce_rate:
        raise CostError(f"run file {source!r} has no produce throughput (produce.mib_per_s or produce.bytes "
                        f"with duration_s)")
    consume_rate = _rate("consume", consume, duration) or 0.0
    if duration is None:
        produced = _num("produce", produce, "bytes")
        duration = produced / MIB / produce_rate if produced else 0.0
    produced_mib = produce_rate * duration if duration else None

    cluster = _mapping("cluster", raw.get("cluster"))
    s3 = _mapping("cluster.s3", cluster.get("s3"))
    missing: list[str] = []

    def per_mib(value: float | None, name: str) -> float | None:
        if value is None or not produced_mib:
            missing.append(name)
            return None
        return value / produced_mib

    put = per_mib(_num("cluster.s3", s3, "put"), "s3.put")
    get = per_mib(_num("cluster.s3", s3, "get"), "s3.get")
    lst = per_mib(_num("cluster.s3", s3, "list"), "s3.list")
    cross = _num("cluster", cluster, "cross_zone_bytes")
    if cross is not None:
        # Billed like data: what the zone router sends between zones instead of the data.
        cross += _num("cluster", cluster, "cross_zone_pointer_bytes") or 0
    if cross is None or not produced_mib:
        missing.append("cross_zone_bytes")
        cross_per_byte = None
    else:
        cross_per_byte = cross / (produced_mib * MIB)

    wal_kind = cluster.get("wal_kind")
    if wal_kind is not None and wal_kind not in WAL_KINDS:
        # A run against another system (a Kafka peer, say) names its own storage:
        # its counts are not amq's, so they are dropped rather than priced as amq.
        missing.append(f"an amq wal_kind (the run says {wal_kind!r}; its counts are not used)")
        wal_kind = None
        put = get = lst = cross_per_byte = None
    zones = _num("cluster", cluster, "zones")
    brokers = _num("cluster", cluster, "brokers")
    return Run(
        path=source,
        duration_s=duration or 0.0,
        produce_mib_s=produce_rate,
        consume_mib_s=consume_rate,
        wal_kind=wal_kind,
        zones=None if zones is None else max(1, int(zones)),
        brokers=None if brokers is None else int(brokers),
        measured=Measured(source=Path(source).name, wal_kind=wal_kind, s3_put_per_mib=put, s3_get_per_mib=get,
                          s3_list_per_mib=lst, cross_zone_bytes_per_byte=cross_per_byte),
        broker_cpu_percent=_num("cluster", cluster, "broker_cpu_percent"),
        broker_rss_bytes=_num("cluster", cluster, "broker_rss_bytes"),
        missing=tuple(missing),
    )
