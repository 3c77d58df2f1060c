"""Which zone a client is in, and the ledger of bytes by (source zone, destination zone, kind).

A client names its zone in `client.id` (`automq_az=<zone>`, AutoMQ's marker, or
`diskless_az=<zone>`, Inkless's, anywhere in the id, query-string style:
`app1&automq_az=az2`), else a consumer's `client.rack` (Fetch rack_id). A zone name
the cluster does not have is ignored, with one log line per client id. Without either,
a client of a one-zone cluster is in that zone; otherwise its zone is unknown, and its
bytes are counted under "unknown" (never as cross-zone: the ledger only claims what it
knows).

The ledger counts what crosses the network by kind: `client` (Kafka data between clients
and brokers) and `storage` (WAL and S3 traffic; shared storage is regional, so it is
never cross-zone). Prometheus text exposes it (docs/zones.md).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
_MARKER = re.compile(r"(?:^|[&;,\s?])(?:automq_az|diskless_az)=([^&;,\s]+)", re.IGNORECASE)
_CACHE_MAX = 4096


_REAL_LEADERS = re.compile(r"(?:^|[&;,\s?])automq_route=leader(?:$|[&;,\s])", re.IGNORECASE)


def wants_real_leaders(client_id: str | None) -> bool:
    """`automq_route=leader` in client.id: Metadata names real leaders, not zone proxies (tools)."""
    return bool(client_id) and _REAL_LEADERS.search(client_id or "") is not None


def zone_marker(client_id: str | None) -> str | None:
    """The zone a client.id names (`automq_az=` or `diskless_az=`), else None."""
    if not client_id:
        return None
    m = _MARKER.search(client_id)
    return m.group(1) if m else None


class ZoneResolver:
    """A client's zone from its id and rack, checked against the cluster's zones."""

    def __init__(self, zones: Callable[[], Iterable[str]]) -> None:
        self._zones = zones
        self._cache: dict[tuple[str | None, str | None], str] = {}
        self._warned: set[str] = set()

    def client_zone(self, client_id: str | None, rack: str | None = None) -> str:
        key = (client_id, rack or None)
        found = self._cache.get(key)
        if found is not None:
            return found
        zones = set(self._zones())
        zone = UNKNOWN
        for source, name in (("client.id", zone_marker(client_id)), ("client.rack", rack or None)):
            if name is None:
                continue
            match = name if name in zones else next((z for z in zones if z.lower() == name.lower()), None)
            if match is not None:
                zone = match
                break
            if name not in self._warned:
                self._warned.add(name)
                log.info("client %r names zone %r in its %s, which this cluster does not have (zones: %s); ignored",
                         client_id, name, source, ", ".join(sorted(zones)))  # fmt: skip
        if zone == UNKNOWN and len(zones) == 1:
            zone = next(iter(zones))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = zone
        return zone


class ZoneLedger:
    """Bytes by (source zone, destination zone, kind); counted, never estimated."""

    def __init__(self) -> None:
        self.bytes: Counter[tuple[str, str, str]] = Counter()

    def add(self, src: str, dst: str, kind: str, n: int) -> None:
        if n:
            self.bytes[(src, dst, kind)] += n

    def cross_zone_bytes(self) -> int:
        """Data bytes that crossed from one known zone to another."""
        return sum(n for (s, d, k), n in self.bytes.items() if k == "client" and s != d and UNKNOWN not in (s, d))

    def cross_zone_pointer_bytes(self) -> int:
        """Broker-to-broker bytes (the zone router's pointers, no data) that crossed zones: billed too."""
        return sum(n for (s, d, k), n in self.bytes.items() if k == "broker" and s != d and UNKNOWN not in (s, d))

    def rows(self) -> list[dict[str, object]]:
        return [{"src": s, "dst": d, "kind": k, "bytes": n} for (s, d, k), n in sorted(self.bytes.items())]


def prometheus(rows: Iterable[dict[str, object]], counters: dict[str, int | str]) -> str:
    """The ledger and the numeric counters in Prometheus' text format."""
    out = [
        "# HELP amq_zone_traffic_bytes_total Bytes by source zone, destination zone and kind (client, storage).",
        "# TYPE amq_zone_traffic_bytes_total counter",
    ]
    for r in rows:
        out.append(f'amq_zone_traffic_bytes_total{{src="{r["src"]}",dst="{r["dst"]}",kind="{r["kind"]}"}} {r["bytes"]}')
    labels = f'broker="{counters.get("broker_id", "")}",zone="{counters.get("zone", "")}"'
    for name, value in sorted(counters.items()):
        if isinstance(value, int) and not isinstance(value, bool) and name != "broker_id":
            metric = "amq_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
            out.append(f"{metric}{{{labels}}} {value}")
    return "\n".join(out) + "\n"
