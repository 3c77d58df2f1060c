"""Stated inputs as plain mappings (a templates/cost/*.yaml scenario, CLI flags) -> typed model inputs.

A scenario file has the sections `workload`, `amq`, `kafka` and optionally
`pricing`, `prices` (overrides), `title`, `source`, `notes` and `published`
(the figures it reproduces, read by the tests). Flags are merged into the same
mapping before it is built, so a flag and a file key are validated by one path.
Unknown keys are errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from engine.cost.errors import CostError
from engine.cost.model import (
    WAL_KINDS,
    AmqOptions,
    KafkaOptions,
    WalKind,
    Workload,
    assumptions_from,
)
from engine.cost.pricing import REPO_ROOT
from engine.cost.units import parse_hours, parse_rate_mib_s

SCENARIO_DIR = REPO_ROOT / "templates" / "cost"

_SECTIONS = {"title", "source", "notes", "pricing", "prices", "workload", "amq", "kafka", "published"}
_WORKLOAD_KEYS = {"write", "read", "read_fanout", "retention", "zones", "profile", "partitions", "requests_per_s"}
_AMQ_KEYS = {"wal", "instance_type", "instances", "over_provisioning", "assumptions"}
_KAFKA_KEYS = {"instance_type", "instances", "replication_factor", "over_provisioning", "ebs_throughput",
               "rack_aware_fetch"}

DEFAULT_SCENARIO: dict[str, Any] = {
    "title": "Default: 100 MiB/s in, 100 MiB/s out, 3 days, 3 zones",
    "workload": {"write": "100MiB/s", "read_fanout": 1, "retention": "3d", "zones": 3},
    "amq": {"wal": "all", "instance_type": "m7g.large", "instances": "auto", "over_provisioning": 0.2},
    "kafka": {"instance_type": "r5.xlarge", "instances": "auto", "over_provisioning": 0.5},
}


@dataclass(frozen=True)
class Inputs:
    title: str
    workload: Workload
    amq: tuple[AmqOptions, ...]
    kafka: KafkaOptions
    pricing: str | None
    price_overrides: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def list_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))


def scenario_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    candidate = SCENARIO_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if candidate.exists():
        return candidate
    known = ", ".join(p.stem for p in list_scenarios()) or "none"
    raise CostError(f"no scenario {name_or_path!r} (not a file; templates/cost has: {known})")


def load_scenario(name_or_path: str) -> dict[str, Any]:
    path = scenario_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CostError(f"cannot read scenario {str(path)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CostError(f"scenario {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise CostError(f"scenario {str(path)!r} must be a mapping")
    unknown = sorted(set(map(str, raw)) - _SECTIONS)
    if unknown:
        raise CostError(f"scenario {path.name}: unknown section {unknown[0]!r} (known: {', '.join(sorted(_SECTIONS))})")
    return raw


def _section(spec: Mapping[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    node = spec.get(name) or {}
    if not isinstance(node, dict):
        raise CostError(f"scenario section {name!r} must be a mapping")
    unknown = sorted(set(map(str, node)) - allowed)
    if unknown:
        raise CostError(f"unknown {name} input {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return node


def _count(what: str, value: Any) -> int | None:
    """'auto' or None -> None (size it); otherwise a whole number >= 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CostError(f"{what} wants a whole number or 'auto', got {value!r}") from None
    if number != int(number) or number < 1:
        raise CostError(f"{what} wants a whole number >= 1 or 'auto', got {value!r}")
    return int(number)


def _whole(what: str, value: Any) -> int:
    number = _float(what, value)
    if number != int(number) or number < 1:
        raise CostError(f"{what} wants a whole number >= 1, got {value!r}")
    return int(number)


def _float(what: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CostError(f"{what} wants a number, got {value!r}") from None


def _bool(what: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise CostError(f"{what} wants true or false, got {value!r}")


def parse_profile(value: Any) -> tuple[float, ...]:
    """A list of hourly rates, or a comma-separated string of them ('24,24,48,1GiB/s')."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise CostError(f"a traffic profile is a list of hourly write rates, got {value!r}")
    return tuple(parse_rate_mib_s(item.strip() if isinstance(item, str) else item, "traffic profile value")
                 for item in items)


def build_workload(spec: Mapping[str, Any]) -> Workload:
    w = _section(spec, "workload", _WORKLOAD_KEYS)
    if "read" in w and "read_fanout" in w:
        raise CostError("give either read (MiB/s) or read_fanout, not both")
    kwargs: dict[str, Any] = {
        "retention_hours": parse_hours(w.get("retention", "3d"), "retention"),
        "zones": _whole("zones", w.get("zones", 3)),
    }
    if w.get("partitions") is not None:
        kwargs["partitions"] = _whole("partitions", w["partitions"])
    if w.get("requests_per_s") is not None:
        kwargs["requests_per_s"] = _float("requests_per_s", w["requests_per_s"])
    if w.get("profile") is not None:
        if w.get("write") is not None:
            raise CostError("give either a write rate or a traffic profile, not both (the profile's peak is the write)")
        profile = parse_profile(w["profile"])
        peak = max(profile)
    else:
        profile = None
        peak = parse_rate_mib_s(w.get("write", "100MiB/s"), "write throughput")
    if "read" in w:
        read = parse_rate_mib_s(w["read"], "read throughput")
        if peak == 0 and read > 0:
            raise CostError("a read throughput needs a write throughput above 0")
        fanout = read / peak if peak > 0 else 0.0
    else:
        fanout = _float("read fan-out", w.get("read_fanout", 1.0))
        if fanout < 0:
            raise CostError(f"read fan-out must not be negative, got {fanout:g}")
    if profile is not None:
        return Workload.with_profile(profile, read_fanout=fanout, **kwargs)
    return Workload(write_mib_s=peak, read_fanout=fanout, **kwargs)


def _wal_kinds(value: Any) -> list[WalKind]:
    items = value if isinstance(value, list) else [value]
    kinds: list[WalKind] = []
    for item in items:
        text = str(item).strip().lower()
        if text == "all":
            kinds.extend(k for k in WAL_KINDS if k not in kinds)
        elif text in WAL_KINDS:
            if text not in kinds:
                kinds.append(cast(WalKind, text))
        else:
            raise CostError(f"unknown WAL kind {item!r} (use s3, file, nfs or all)")
    return kinds


def build_amq(spec: Mapping[str, Any]) -> tuple[AmqOptions, ...]:
    a = _section(spec, "amq", _AMQ_KEYS)
    assumptions = a.get("assumptions") or {}
    if not isinstance(assumptions, dict):
        raise CostError("amq.assumptions must be a mapping")
    common = {
        "instance_type": str(a.get("instance_type", "m7g.large")),
        "instances": _count("amq instances", a.get("instances")),
        "over_provisioning": _float("amq over-provisioning", a.get("over_provisioning", 0.2)),
        "assumptions": assumptions_from(assumptions),
    }
    return tuple(AmqOptions(wal=kind, **common) for kind in _wal_kinds(a.get("wal", "all")))


def build_kafka(spec: Mapping[str, Any]) -> KafkaOptions:
    k = _section(spec, "kafka", _KAFKA_KEYS)
    ebs: Any = k.get("ebs_throughput", "instance")
    if not (isinstance(ebs, str) and ebs in ("baseline", "instance", "needed")):
        ebs = _float("kafka ebs_throughput", ebs)
    rf = _float("replication factor", k.get("replication_factor", 3))
    if rf != int(rf):
        raise CostError(f"replication factor wants a whole number, got {k.get('replication_factor')!r}")
    return KafkaOptions(
        instance_type=str(k.get("instance_type", "r5.xlarge")),
        instances=_count("Kafka instances", k.get("instances")),
        replication_factor=int(rf),
        over_provisioning=_float("Kafka over-provisioning", k.get("over_provisioning", 0.5)),
        ebs_throughput=ebs,
        rack_aware_fetch=_bool("rack_aware_fetch", k.get("rack_aware_fetch", False)),
    )


def build_inputs(spec: Mapping[str, Any]) -> Inputs:
    prices = spec.get("prices") or {}
    if not isinstance(prices, dict):
        raise CostError("scenario section 'prices' must map pricing keys to numbers")
    notes = spec.get("notes") or []
    return Inputs(
        title=str(spec.get("title", "")),
        workload=build_workload(spec),
        amq=build_amq(spec),
        kafka=build_kafka(spec),
        pricing=None if spec.get("pricing") is None else str(spec["pricing"]),
        price_overrides={str(k): str(v) for k, v in prices.items()},
        notes=tuple(str(n) for n in notes) if isinstance(notes, list) else (str(notes),),
    )
