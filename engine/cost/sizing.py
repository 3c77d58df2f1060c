"""Capacity sizing: how many brokers, file systems and AKUs a workload needs.

Pure functions of throughput and the price table's instance specs. Every count
is a ceiling: half a broker is a whole broker on the bill.

Over-provisioning `p` means the fraction of provisioned capacity kept free, so
provisioned = needed / (1 - p). A disk "50 % over-provisioned" is twice the data;
"80 % disk watermark" is over-provisioning 0.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.cost.errors import CostError
from engine.cost.pricing import FsxOntap, FsxTier, Instance
from engine.cost.units import gbps_to_mib_s, mb_s_to_mib_s

# AutoMQ's published capacity unit, which users of managed diskless Kafka size by.
AKU_WRITE_MIB_S = 20.0
AKU_READ_MIB_S = 20.0
AKU_REQUESTS_PER_S = 800.0
AKU_PARTITIONS = 1125.0

# Floating-point noise must not add a broker: 1024 / (1024 / 8) is 8, not 8.000000001.
_EPS = 1e-9


def ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPS))


def headroom(over_provisioning: float) -> float:
    if not 0 <= over_provisioning < 1:
        raise CostError(f"over-provisioning must be in [0, 1), got {over_provisioning}")
    return 1.0 - over_provisioning


@dataclass(frozen=True)
class AkuSizing:
    akus: int
    by_write: float
    by_read: float
    by_requests: float | None
    by_partitions: float | None


def akus(write_mib_s: float, read_mib_s: float, requests_per_s: float | None = None,
         partitions: int | None = None) -> AkuSizing:
    """1 AKU = 20 MiB/s write, 20 MiB/s read, 800 requests/s, 1,125 partitions; the largest need wins."""
    by_write = write_mib_s / AKU_WRITE_MIB_S
    by_read = read_mib_s / AKU_READ_MIB_S
    by_req = None if requests_per_s is None else requests_per_s / AKU_REQUESTS_PER_S
    by_part = None if partitions is None else partitions / AKU_PARTITIONS
    needs = [by_write, by_read] + [x for x in (by_req, by_part) if x is not None]
    return AkuSizing(max(1, ceil(max(needs))), by_write, by_read, by_req, by_part)


@dataclass(frozen=True)
class FsxPlan:
    count: int
    tier: FsxTier

    @property
    def carries_mib_s(self) -> float:
        return self.count * self.tier.wal_write_mib_s


def fsx_plan(fsx: FsxOntap, peak_write_mib_s: float) -> FsxPlan:
    """Fewest file systems, all of one size, then the smallest size that still carries the peak.

    Same-size file systems keep brokers interchangeable: any broker can take any
    file system's share, so a broker failure never strands a slower one.
    """
    largest = max(fsx.throughput_tiers, key=lambda t: t.wal_write_mib_s)
    count = max(1, ceil(peak_write_mib_s / largest.wal_write_mib_s))
    tier = next(t for t in fsx.throughput_tiers if count * t.wal_write_mib_s >= peak_write_mib_s - _EPS)
    return FsxPlan(count, tier)


def network_mib_s(instance: Instance) -> float:
    return gbps_to_mib_s(instance.network_gbps)


def ebs_mib_s(instance: Instance) -> float:
    return mb_s_to_mib_s(instance.ebs_mbps)


@dataclass(frozen=True)
class BrokerNeed:
    """Why a cluster has the brokers it has: each bound, and the one that won."""

    brokers: int
    bounds: dict[str, int]

    @property
    def binding(self) -> str:
        return max(self.bounds, key=lambda k: self.bounds[k])


def brokers_for(bounds: dict[str, float], minimum: int) -> BrokerNeed:
    counts = {name: ceil(value) for name, value in bounds.items()}
    counts["minimum"] = minimum
    return BrokerNeed(max(counts.values()), counts)
