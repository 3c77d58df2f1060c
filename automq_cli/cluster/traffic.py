"""`amq cluster traffic`: the brokers' zone ledgers, summed into one matrix."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

UNKNOWN = "unknown"


def collect(state: dict[str, Any]) -> dict[str, Any]:
    """{"rows": [{src, dst, kind, bytes}], "brokers_read": n, "errors": [...], summary figures}."""
    total: Counter[tuple[str, str, str]] = Counter()
    errors: list[str] = []
    read = 0
    for url in state.get("metrics") or []:
        try:
            with urllib.request.urlopen(str(url), timeout=2) as resp:
                data = json.loads(resp.read().decode())
        except (OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
            continue
        read += 1
        for r in data.get("zone_traffic") or []:
            total[(str(r["src"]), str(r["dst"]), str(r["kind"]))] += int(r["bytes"])
    data_bytes = sum(n for (_, _, k), n in total.items() if k == "client")
    known = sum(n for (s, d, k), n in total.items() if k == "client" and UNKNOWN not in (s, d))
    cross = sum(n for (s, d, k), n in total.items() if k == "client" and s != d and UNKNOWN not in (s, d))
    return {
        "rows": [{"src": s, "dst": d, "kind": k, "bytes": n} for (s, d, k), n in sorted(total.items())],
        "data_bytes": data_bytes,
        "data_bytes_known_zones": known,
        "cross_zone_data_bytes": cross,
        "cross_zone_percent": round(100 * cross / known, 2) if known else None,
        "brokers_read": read,
        "errors": errors,
    }


def _fmt(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(info: dict[str, Any]) -> Group:
    rows = info["rows"]
    client = [r for r in rows if r["kind"] == "client"]
    zones = sorted({r["src"] for r in client} | {r["dst"] for r in client}, key=lambda z: (z == UNKNOWN, z))
    matrix = Table(title="client data (Kafka produce and fetch bytes), from zone (rows) to zone (columns)")
    matrix.add_column("from \\ to")
    for z in zones:
        matrix.add_column(z, justify="right")
    cell = {(r["src"], r["dst"]): r["bytes"] for r in client}
    for s in zones:
        matrix.add_row(s, *[(f"[red]{_fmt(cell[(s, d)])}[/red]" if s != d and UNKNOWN not in (s, d)
                             else _fmt(cell[(s, d)])) if (s, d) in cell else "-" for d in zones])  # fmt: skip
    storage = Table(title="shared storage (regional: never cross-zone)")
    for col in ("from", "to", "bytes"):
        storage.add_column(col, justify="right" if col == "bytes" else "left")
    for r in rows:
        if r["kind"] == "storage":
            storage.add_row(r["src"], r["dst"], _fmt(r["bytes"]))
    pct = info["cross_zone_percent"]
    line = (
        f"cross-zone data: {_fmt(info['cross_zone_data_bytes'])} of {_fmt(info['data_bytes_known_zones'])} between "
        f"known zones ({'-' if pct is None else f'{pct:.1f} %'}); {info['brokers_read']} brokers read"
    )
    unknown = info["data_bytes"] - info["data_bytes_known_zones"]
    if unknown:
        line += (f"; {_fmt(unknown)} from clients of unknown zone (name it: client.id "
                 "'...&automq_az=<zone>' or client.rack)")  # fmt: skip
    parts: list[Any] = [matrix, storage, Text(line)]
    parts += [Text(f"not read: {e}", style="yellow") for e in info["errors"]]
    return Group(*parts)
