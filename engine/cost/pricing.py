"""Pricing tables: YAML in templates/pricing/, loaded into typed, validated objects.

A table is strict: an unknown key is an error (a typo must not silently price
something at a default), every price must resolve to a `source` and a `date`
(its own or its section's), and no price may be negative. `--price KEY=VALUE`
overrides use the same dotted keys as the file, e.g.
`s3_standard.usd_per_1000_put=0.0055` or `ec2.instances.m7g.large.usd_per_hour=0.07`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.cost.errors import CostError

REPO_ROOT = Path(__file__).resolve().parents[2]
PRICING_DIR = REPO_ROOT / "templates" / "pricing"
DEFAULT_PRICING = PRICING_DIR / "aws-us-east-1.yaml"


@dataclass(frozen=True)
class Instance:
    name: str
    usd_per_hour: float
    vcpu: int
    memory_gib: float
    network_gbps: float  # baseline, per direction
    ebs_mbps: float  # baseline EBS bandwidth, MB/s


@dataclass(frozen=True)
class Gp3:
    usd_per_gib_month: float
    usd_per_mbps_month: float
    usd_per_iops_month: float
    baseline_mbps: float
    baseline_iops: float
    max_mbps: float
    max_gib: float


@dataclass(frozen=True)
class S3Tier:
    up_to_gib: float  # math.inf for the last tier
    usd_per_gib_month: float


@dataclass(frozen=True)
class S3Prices:
    storage_tiers: tuple[S3Tier, ...]
    usd_per_1000_put: float
    usd_per_1000_get: float
    usd_per_1000_delete: float

    def storage_usd(self, gib: float) -> float:
        """Monthly price of `gib` GiB-months, walking the tiers like the bill does."""
        total, floor = 0.0, 0.0
        for tier in self.storage_tiers:
            in_tier = max(0.0, min(gib, tier.up_to_gib) - floor)
            total += in_tier * tier.usd_per_gib_month
            floor = tier.up_to_gib
            if gib <= floor:
                break
        return total


@dataclass(frozen=True)
class FsxTier:
    mbps: float
    wal_write_mib_s: float


@dataclass(frozen=True)
class FsxOntap:
    usd_per_mbps_month: float
    usd_per_ssd_gib_month: float
    min_ssd_gib: float
    throughput_tiers: tuple[FsxTier, ...]

    def file_system_usd(self, tier: FsxTier) -> float:
        return tier.mbps * self.usd_per_mbps_month + self.min_ssd_gib * self.usd_per_ssd_gib_month


@dataclass(frozen=True)
class PriceTable:
    name: str
    path: str
    currency: str
    hours_per_month: float
    instances: Mapping[str, Instance]
    gp3: Gp3
    s3: S3Prices
    cross_az_usd_per_gib_each_way: float
    fsx: FsxOntap
    sources: Mapping[str, tuple[str, str]]  # dotted price key -> (source, date)

    def instance(self, name: str) -> Instance:
        try:
            return self.instances[name]
        except KeyError:
            known = ", ".join(sorted(self.instances))
            raise CostError(f"unknown instance type {name!r} in pricing table {self.name} (known: {known})") from None

    @property
    def cross_az_usd_per_gib(self) -> float:
        # Both zones bill the transfer: out of one, into the other.
        return 2 * self.cross_az_usd_per_gib_each_way


# The shape of a table: section -> allowed keys. "*" marks a mapping of named items.
_META = {"source", "date"}
_INSTANCE_KEYS = {"usd_per_hour", "vcpu", "memory_gib", "network_gbps", "ebs_mbps"} | _META
_SCHEMA: dict[str, set[str]] = {
    "ec2": {"instances"} | _META,
    "ebs_gp3": {"usd_per_gib_month", "usd_per_mbps_month", "usd_per_iops_month", "baseline_mbps",
                "baseline_iops", "max_mbps", "max_gib"} | _META,
    "s3_standard": {"storage_tiers", "usd_per_1000_put", "usd_per_1000_get", "usd_per_1000_delete"} | _META,
    "network": {"cross_az_usd_per_gib_each_way"} | _META,
    "fsx_ontap_multi_az": {"usd_per_mbps_month", "usd_per_ssd_gib_month", "min_ssd_gib", "throughput_tiers"} | _META,
}
_TOP = {"name", "currency", "hours_per_month"} | set(_SCHEMA)


def load_pricing(path: str | Path | None = None, overrides: Mapping[str, str] | None = None) -> PriceTable:
    """Read, override and validate a pricing table; any problem is one CostError line."""
    path = Path(path) if path is not None else DEFAULT_PRICING
    if not path.exists() and not path.suffix:
        candidate = PRICING_DIR / f"{path}.yaml"
        path = candidate if candidate.exists() else path
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CostError(f"cannot read pricing table {str(path)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CostError(f"pricing table {str(path)!r} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise CostError(f"pricing table {str(path)!r} must be a mapping")
    raw = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    return _build(raw, str(path))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """['s3_standard.usd_per_1000_put=0.006'] -> {key: value}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise CostError(f"--price wants KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def _set_dotted(raw: dict[str, Any], key: str, value: str) -> None:
    node: Any = raw
    rest = key
    while True:
        if not isinstance(node, dict):
            raise CostError(f"unknown pricing key {key!r}")
        # Instance names contain dots (m7g.large), so match the longest key first.
        match = next((k for k in sorted(map(str, node), key=len, reverse=True)
                      if rest == k or rest.startswith(k + ".")), None)
        if match is None:
            raise CostError(f"unknown pricing key {key!r}")
        if rest == match:
            if not isinstance(node[match], int | float) or isinstance(node[match], bool):
                raise CostError(f"pricing key {key!r} is not a number and cannot be overridden")
            try:
                node[match] = float(value)
            except ValueError:
                raise CostError(f"pricing key {key!r} wants a number, got {value!r}") from None
            return
        node = node[match]
        rest = rest[len(match) + 1:]


def _check_keys(where: str, node: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise CostError(f"pricing key {where!r} must be a mapping")
    unknown = sorted(set(map(str, node)) - allowed)
    if unknown:
        key = unknown[0] if where == "<table>" else f"{where}.{unknown[0]}"
        raise CostError(f"unknown pricing key {key!r} (allowed under {where}: {', '.join(sorted(allowed))})")
    return node


def _num(where: str, node: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    if key not in node:
        raise CostError(f"pricing table is missing {where}.{key}")
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise CostError(f"pricing key {where}.{key} wants a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise CostError(f"pricing key {where}.{key} must be {'positive' if positive else 'non-negative'}, "
                        f"got {value}")
    return float(value)


def _provenance(where: str, node: Mapping[str, Any], parent: tuple[str, str] | None) -> tuple[str, str]:
    source = node.get("source", parent[0] if parent else None)
    date = node.get("date", parent[1] if parent else None)
    if not source or not date:
        raise CostError(f"pricing table: {where} has no source and date (every price must say where and when)")
    return str(source), str(date)


def _build(raw: dict[str, Any], path: str) -> PriceTable:
    _check_keys("<table>", raw, _TOP)
    for section, allowed in _SCHEMA.items():
        _check_keys(section, raw.get(section), allowed)
    sources: dict[str, tuple[str, str]] = {}

    ec2 = raw["ec2"]
    # Instances may each carry their own source and date instead of the section's.
    ec2_prov = (str(ec2["source"]), str(ec2["date"])) if ec2.get("source") and ec2.get("date") else None
    items = ec2.get("instances")
    if not isinstance(items, dict) or not items:
        raise CostError("pricing table: ec2.instances must list at least one instance type")
    instances: dict[str, Instance] = {}
    for name, spec in items.items():
        where = f"ec2.instances.{name}"
        spec = _check_keys(where, spec, _INSTANCE_KEYS)
        sources[where] = _provenance(where, spec, ec2_prov)
        instances[str(name)] = Instance(
            name=str(name),
            usd_per_hour=_num(where, spec, "usd_per_hour"),
            vcpu=int(_num(where, spec, "vcpu", positive=True)),
            memory_gib=_num(where, spec, "memory_gib", positive=True),
            network_gbps=_num(where, spec, "network_gbps", positive=True),
            ebs_mbps=_num(where, spec, "ebs_mbps", positive=True),
        )

    ebs = raw["ebs_gp3"]
    sources["ebs_gp3"] = _provenance("ebs_gp3", ebs, None)
    gp3 = Gp3(**{k: _num("ebs_gp3", ebs, k, positive=k.startswith(("max", "baseline")))
                 for k in _SCHEMA["ebs_gp3"] - _META})

    s3 = raw["s3_standard"]
    sources["s3_standard"] = _provenance("s3_standard", s3, None)
    tiers_raw = s3.get("storage_tiers")
    if not isinstance(tiers_raw, list) or not tiers_raw:
        raise CostError("pricing table: s3_standard.storage_tiers must be a non-empty list")
    tiers: list[S3Tier] = []
    for i, tier in enumerate(tiers_raw):
        where = f"s3_standard.storage_tiers[{i}]"
        tier = _check_keys(where, tier, {"up_to_gib", "usd_per_gib_month"})
        up_to = math.inf if tier.get("up_to_gib") is None else _num(where, tier, "up_to_gib", positive=True)
        if tiers and up_to <= tiers[-1].up_to_gib:
            raise CostError(f"pricing table: {where}.up_to_gib must grow from tier to tier")
        tiers.append(S3Tier(up_to, _num(where, tier, "usd_per_gib_month")))
    if tiers[-1].up_to_gib != math.inf:
        raise CostError("pricing table: the last s3_standard.storage_tiers entry must have up_to_gib: null")
    s3_prices = S3Prices(
        storage_tiers=tuple(tiers),
        usd_per_1000_put=_num("s3_standard", s3, "usd_per_1000_put"),
        usd_per_1000_get=_num("s3_standard", s3, "usd_per_1000_get"),
        usd_per_1000_delete=_num("s3_standard", s3, "usd_per_1000_delete"),
    )

    net = raw["network"]
    sources["network"] = _provenance("network", net, None)

    fsx = raw["fsx_ontap_multi_az"]
    sources["fsx_ontap_multi_az"] = _provenance("fsx_ontap_multi_az", fsx, None)
    fsx_tiers_raw = fsx.get("throughput_tiers")
    if not isinstance(fsx_tiers_raw, list) or not fsx_tiers_raw:
        raise CostError("pricing table: fsx_ontap_multi_az.throughput_tiers must be a non-empty list")
    fsx_tiers = []
    for i, tier in enumerate(fsx_tiers_raw):
        where = f"fsx_ontap_multi_az.throughput_tiers[{i}]"
        tier = _check_keys(where, tier, {"mbps", "wal_write_mib_s"})
        fsx_tiers.append(FsxTier(_num(where, tier, "mbps", positive=True),
                                 _num(where, tier, "wal_write_mib_s", positive=True)))
    fsx_tiers.sort(key=lambda t: t.wal_write_mib_s)

    return PriceTable(
        name=str(raw.get("name", Path(path).stem)),
        path=path,
        currency=str(raw.get("currency", "USD")),
        hours_per_month=_num("<table>", raw, "hours_per_month", positive=True),
        instances=instances,
        gp3=gp3,
        s3=s3_prices,
        cross_az_usd_per_gib_each_way=_num("network", net, "cross_az_usd_per_gib_each_way"),
        fsx=FsxOntap(
            usd_per_mbps_month=_num("fsx_ontap_multi_az", fsx, "usd_per_mbps_month"),
            usd_per_ssd_gib_month=_num("fsx_ontap_multi_az", fsx, "usd_per_ssd_gib_month"),
            min_ssd_gib=_num("fsx_ontap_multi_az", fsx, "min_ssd_gib"),
            throughput_tiers=tuple(fsx_tiers),
        ),
        sources=sources,
    )
