"""Units and the parsing of human-friendly quantities for the cost model.

Throughput is MiB/s everywhere inside the model; sizes are GiB; time is hours.
AWS writes "GB-month" but bills 2^30-byte GiB, and writes MB/s for gp3 and FSx
throughput, which it means as 10^6 bytes: the two conversions below are the
only places where decimal units enter.
"""

from __future__ import annotations

import re

from engine.cost.errors import CostError

MIB = 1024**2
GIB = 1024**3
TIB = 1024**4
MB_PER_MIB = MIB / 1e6  # 1.048576
SECONDS_PER_HOUR = 3600.0

_NUMBER = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z/]*)\s*$", re.IGNORECASE)

# Bytes per second for each accepted rate unit; a bare number is MiB/s.
_RATE_UNITS = {
    "": MIB,
    "mib/s": MIB,
    "mibps": MIB,
    "mib": MIB,
    "gib/s": GIB,
    "gibps": GIB,
    "gib": GIB,
    "kib/s": 1024,
    "mb/s": 1e6,
    "mbps": 1e6,
    "gb/s": 1e9,
    "gbps": 1e9,
    "kb/s": 1e3,
    "b/s": 1,
}
_DURATION_HOURS = {"": 1.0, "h": 1.0, "hour": 1.0, "hours": 1.0, "d": 24.0, "day": 24.0, "days": 24.0,
                   "w": 168.0, "week": 168.0, "weeks": 168.0, "m": 1 / 60, "min": 1 / 60}


def _split(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER.match(text)
    if not match:
        raise CostError(f"cannot read {what} {text!r}")
    return float(match.group(1)), match.group(2).lower()


def parse_rate_mib_s(text: str | float | int, what: str = "throughput") -> float:
    """'1GiB/s' -> 1024.0, '100MB/s' -> 95.37, '250' -> 250.0 (MiB/s). Never negative."""
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        value, unit = _split(text, what)
    if unit not in _RATE_UNITS:
        raise CostError(f"cannot read {what} {text!r}: unknown unit {unit!r} (use MiB/s, GiB/s, MB/s, GB/s)")
    if value < 0:
        raise CostError(f"{what} must not be negative, got {text!r}")
    return value * _RATE_UNITS[unit] / MIB


def parse_hours(text: str | float | int, what: str = "duration") -> float:
    """'3d' -> 72.0, '24h' -> 24.0, '1w' -> 168.0; a bare number is hours."""
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        value, unit = _split(text, what)
    if unit not in _DURATION_HOURS:
        raise CostError(f"cannot read {what} {text!r}: unknown unit {unit!r} (use h, d, w)")
    if value < 0:
        raise CostError(f"{what} must not be negative, got {text!r}")
    return value * _DURATION_HOURS[unit]


def mib_s_to_mb_s(mib_s: float) -> float:
    return mib_s * MB_PER_MIB


def gbps_to_mib_s(gbps: float) -> float:
    """Network bandwidth as AWS states it (decimal gigabits) to MiB/s."""
    return gbps * 1e9 / 8 / MIB


def mb_s_to_mib_s(mb_s: float) -> float:
    return mb_s / MB_PER_MIB
