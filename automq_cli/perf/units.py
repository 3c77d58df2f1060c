"""Parsing of the human-friendly quantities used by flags and workload files."""

from __future__ import annotations

import re

from automq_cli.perf.errors import PerfError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6}
_NUMBER = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def _split(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER.match(str(text))
    if not match:
        raise PerfError(f"cannot read {what} {text!r}")
    return float(match.group(1)), match.group(2).lower()


def parse_size(text: str | int | float, what: str = "size") -> int:
    """'64KiB' -> 65536, '1MB' -> 1000000, 512 -> 512 (bytes)."""
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        value, unit = _split(text, what)
    if unit not in _SIZE_UNITS:
        raise PerfError(
            f"cannot read {what} {text!r}: unknown unit {unit!r} (use B, KiB, MiB, GiB, KB, MB, GB)"
        )
    return int(value * _SIZE_UNITS[unit])


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """'10s' -> 10.0, '2m' -> 120.0, '500ms' -> 0.5; a bare number is seconds."""
    if isinstance(text, int | float):
        return float(text)
    value, unit = _split(text, what)
    if unit not in _DURATION_UNITS:
        raise PerfError(f"cannot read {what} {text!r}: unknown unit {unit!r} (use ms, s, m, h)")
    return value * _DURATION_UNITS[unit]


def parse_count(text: str | int | float, what: str = "count") -> float:
    """'50k' -> 50000.0, '1.5m' -> 1500000.0 (a rate in messages per second)."""
    if isinstance(text, int | float):
        return float(text)
    value, unit = _split(text, what)
    if unit not in _COUNT_UNITS:
        raise PerfError(f"cannot read {what} {text!r}: unknown suffix {unit!r} (use k or m)")
    return value * _COUNT_UNITS[unit]


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
