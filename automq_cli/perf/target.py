"""Which cluster a run talks to, and where its metrics come from.

A running local amq cluster publishes `$AMQ_HOME/cluster.json` (AMQ_HOME
defaults to ~/.amq). The fields read here (all but `bootstrap` optional):

    {"bootstrap": "127.0.0.1:9092,127.0.0.1:9093",             # every broker
     "metrics": ["http://127.0.0.1:9644/metrics.json", ...],   # JSON counters, one URL per broker
     "brokers": [{"id": 0, "pid": 1234, "zone": "az1",         # pids for CPU/RSS sampling;
                  "metrics_port": 9644}, ...],                 # metrics_port ties a URL to its broker
     "wal_kind": "file",                                        # file | nfs | s3
     "zones": ["az1", "az2"]}

`amq cluster up` writes it (automq_cli/cluster/state.py is its one reader and
writer); docs/perf.md documents it for the broker team.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automq_cli.cluster import state as cluster_state
from automq_cli.perf.errors import PerfError

NO_CLUSTER = "no local amq cluster is running; start one with `amq cluster up` or pass --bootstrap"


@dataclass
class BrokerInfo:
    id: int | None = None
    pid: int | None = None
    zone: str | None = None
    metrics_port: int | None = None


@dataclass
class Target:
    """Where to connect, plus the optional sources for the result's "cluster" block."""

    bootstrap: str
    metrics_urls: list[str] = field(default_factory=list)
    brokers: list[BrokerInfo] = field(default_factory=list)
    wal_kind: str | None = None
    zones: list[str] = field(default_factory=list)
    state_file: str | None = None

    @property
    def broker_pids(self) -> list[int]:
        return [b.pid for b in self.brokers if b.pid is not None]


def amq_home() -> Path:
    return cluster_state.amq_home()


def cluster_state_path() -> Path:
    return cluster_state.state_path()


def _brokers(raw: Any) -> list[BrokerInfo]:
    out: list[BrokerInfo] = []
    for item in raw or []:
        if isinstance(item, int):  # a bare pid list is accepted too
            out.append(BrokerInfo(pid=item))
        elif isinstance(item, dict):
            pid = item.get("pid")
            bid = item.get("id", item.get("broker_id"))
            mport = item.get("metrics_port")
            out.append(
                BrokerInfo(
                    id=int(bid) if isinstance(bid, int) else None,
                    pid=int(pid) if isinstance(pid, int) else None,
                    zone=str(item["zone"]) if item.get("zone") is not None else None,
                    metrics_port=int(mport) if isinstance(mport, int) else None,
                )
            )
    return out


def load_cluster_state(path: str | Path | None = None) -> Target:
    """Read cluster.json; a missing or unusable file is the one-line NO_CLUSTER error."""
    p = Path(path).expanduser() if path else cluster_state_path()
    try:
        data = cluster_state.load_state_file(p)
    except FileNotFoundError:
        raise PerfError(NO_CLUSTER) from None
    except (OSError, ValueError) as exc:
        raise PerfError(
            f"cannot read the cluster state {str(p)!r} ({exc}); pass --bootstrap instead"
        ) from None
    if not isinstance(data.get("bootstrap"), str) or not data["bootstrap"]:
        raise PerfError(f"the cluster state {str(p)!r} names no bootstrap; pass --bootstrap instead")
    metrics = data.get("metrics") or []
    if isinstance(metrics, str):
        metrics = [metrics]
    brokers = _brokers(data.get("brokers"))
    if not brokers and data.get("pids"):
        brokers = _brokers(data.get("pids"))
    zones = data.get("zones") or sorted({b.zone for b in brokers if b.zone})
    return Target(
        bootstrap=data["bootstrap"],
        metrics_urls=[str(u) for u in metrics],
        brokers=brokers,
        wal_kind=str(data["wal_kind"]) if data.get("wal_kind") else None,
        zones=[str(z) for z in zones],
        state_file=str(p),
    )


def _addresses(bootstrap: str) -> set[str]:
    return {a.strip() for a in bootstrap.split(",") if a.strip()}


def resolve_target(
    bootstrap: str | None,
    state_file: str | Path | None = None,
    metrics_urls: list[str] | None = None,
    broker_pids: list[int] | None = None,
) -> Target:
    """--bootstrap wins; otherwise the local cluster's state file must exist.

    With --bootstrap, the state file still supplies metrics when it describes
    the same cluster (a broker address in common), so `amq perf run --bootstrap <local>`
    loses nothing. Explicit --metrics-url / --broker-pid add to whatever was found.
    """
    target: Target
    if bootstrap:
        target = Target(bootstrap=bootstrap)
        try:
            local = load_cluster_state(state_file)
        except PerfError:
            local = None
        if local is not None and _addresses(local.bootstrap) & _addresses(bootstrap):
            target = local
    else:
        target = load_cluster_state(state_file)
    for url in metrics_urls or []:
        if url not in target.metrics_urls:
            target.metrics_urls.append(url)
    known = set(target.broker_pids)
    for pid in broker_pids or []:
        if pid not in known:
            target.brokers.append(BrokerInfo(pid=pid))
    return target
