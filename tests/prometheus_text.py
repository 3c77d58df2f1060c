"""Reading Prometheus' text format in tests: histograms, checked for what a scraper relies on."""

from __future__ import annotations

import re
from typing import Any

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def parse_histograms(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Prometheus text -> {(metric, labels without le): {"buckets": [(le, n)], "sum": x, "count": n}}."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, value = m["name"], float(m["value"])
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and types.get(base) == "histogram":
                labels = [p for p in m["labels"].split(",") if not p.startswith("le=")]
                entry = out.setdefault((base, ",".join(labels)), {"buckets": []})
                if suffix == "_bucket":
                    le = re.search(r'le="([^"]+)"', m["labels"])
                    assert le
                    entry["buckets"].append((float(le[1]), value))
                else:
                    entry[suffix[1:]] = value
    return out


def check_histograms(parsed: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Buckets in le order, counts non-decreasing, ending at +Inf == _count; a _sum for each."""
    for key, h in parsed.items():
        les = [le for le, _ in h["buckets"]]
        counts = [n for _, n in h["buckets"]]
        assert les == sorted(les) and les[-1] == float("inf"), key
        assert counts == sorted(counts), key
        assert counts[-1] == h["count"], key
        assert "sum" in h, key
