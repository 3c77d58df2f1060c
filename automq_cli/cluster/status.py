"""`amq cluster status`: what the controller says, combined with the processes this machine sees."""

from __future__ import annotations

import json
from typing import Any

from automq_cli.cluster.processes import api_versions_ok, pid_alive, rss_bytes

_STORAGE_KEYS = ("wal_used_bytes", "wal_bytes_written", "s3_put_bytes", "objects_uploaded", "uploads",
                 "partitions_open", "connections_active", "zone_router", "relayed_batches", "relay_objects_kept",
                 "relay_bytes_written")  # fmt: skip


def _controller_status(address: str) -> dict[str, Any]:
    from engine.controller.rpc import RpcError, call_sync

    try:
        result = call_sync(address, "status", timeout=2.0)
    except (RpcError, OSError, TimeoutError) as e:
        return {"error": str(e) or type(e).__name__}
    return result if isinstance(result, dict) else {"error": f"unexpected answer {result!r}"}


def _broker_state(process_alive: bool, answering: bool, ctl: dict[str, Any] | None, ctl_ok: bool) -> str:
    if not process_alive:
        return "stopped"
    if not ctl_ok:
        return "running" if answering else "starting"
    if ctl is None:
        return "registering"
    said = ctl.get("state")
    if said == "fenced" or (said is None and ctl.get("alive") is False):
        return "fenced"
    if said == "shutdown":
        return "shutting down"
    if said not in (None, "running"):
        return str(said)
    return "running" if answering else "not answering"


def _metrics(urls: list[str]) -> dict[str, Any]:
    import urllib.request

    total: dict[str, Any] = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                data = json.loads(r.read())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for k in _STORAGE_KEYS:
            v = data.get(k)
            if isinstance(v, int | float):
                total[k] = total.get(k, 0) + v
    return total


def cluster_status(state: dict[str, Any]) -> dict[str, Any]:
    """One dict for `status --json` and the tables."""
    pids: dict[str, Any] = state.get("pids") or {}
    ctl_address = state.get("controller")
    ctl_pid = pids.get("controller")
    ctl_alive = isinstance(ctl_pid, int) and pid_alive(ctl_pid, "controller")
    ctl = _controller_status(ctl_address) if ctl_address and ctl_alive else {"error": "the controller is not running"}
    ctl_ok = "error" not in ctl
    by_id = {b.get("id"): b for b in ctl.get("brokers") or [] if isinstance(b, dict)} if ctl_ok else {}
    brokers: list[dict[str, Any]] = []
    for entry in sorted(state.get("brokers") or [], key=lambda b: b.get("id", 0)):
        bid = entry.get("id")
        pid = pids.get(f"broker-{bid}", entry.get("pid"))
        alive = isinstance(pid, int) and pid_alive(pid, f"broker-{bid}")
        port = entry.get("port")
        answering = bool(alive and port and api_versions_ok("127.0.0.1", int(port), timeout=1.0))
        c = by_id.get(bid)
        wal = (c or {}).get("wal") or {}
        brokers.append(
            {
                "id": bid,
                "zone": entry.get("zone") or (c or {}).get("zone"),
                "address": f"127.0.0.1:{port}" if port else None,
                "state": _broker_state(alive, answering, c, ctl_ok),
                "process_alive": alive,
                "answering": answering,
                "controller_state": (c or {}).get("state"),
                "controller_alive": (c or {}).get("alive"),
                "epoch": (c or {}).get("epoch"),
                "partitions_led": (c or {}).get("partitions_led"),
                "bytes_in_per_s": (c or {}).get("bytes_in_per_s"),
                "bytes_out_per_s": (c or {}).get("bytes_out_per_s"),
                "draining": (c or {}).get("draining"),
                "requests_per_s": (c or {}).get("requests_per_s"),
                "wal_kind": wal.get("kind") or state.get("wal_kind"),
                "wal_id": wal.get("wal_id") or f"broker-{bid}",
                "pid": pid,
                "rss_bytes": rss_bytes(pid) if alive and isinstance(pid, int) else None,
                "metrics": f"http://127.0.0.1:{entry['metrics_port']}/metrics" if entry.get("metrics_port") else None,
            }
        )
    s3_pid = pids.get("s3")
    takeovers = [t for t in ctl.get("wal_takeovers") or [] if isinstance(t, dict)] if ctl_ok else []
    out: dict[str, Any] = {
        "dir": state.get("dir"),
        "wal_kind": state.get("wal_kind"),
        "zones": state.get("zones") or sorted({str(b["zone"]) for b in brokers if b.get("zone")}),
        "bootstrap": state.get("bootstrap"),
        "bootstrap_by_zone": state.get("bootstrap_by_zone") or {},
        "kafka_ready": any(b["answering"] for b in brokers),
        "brokers": brokers,
        "controller": {"address": ctl_address, "pid": ctl_pid, "alive": ctl_alive, "status": ctl},
        "s3": {
            "endpoint": state.get("s3_endpoint"),
            "pid": s3_pid,
            "alive": isinstance(s3_pid, int) and pid_alive(s3_pid, "s3"),
            "embedded": isinstance(s3_pid, int),
        },
        "wal_takeovers": takeovers,
        "waiting": [
            f"partitions of broker {t.get('from_broker')} wait for it to come back: {t.get('reason') or 'no reason'}"
            for t in takeovers
            if t.get("state") == "waiting"
        ],
        "processes": [{"name": n, "pid": p, "alive": isinstance(p, int) and pid_alive(p, n)} for n, p in pids.items()],
        "started_at": state.get("started_at"),
        "logs": state.get("logs"),
    }
    from automq_cli.autoscaler import read_journal

    journal = read_journal(state["dir"]) if state.get("dir") and "autoscaler" in pids else None
    if journal is not None:
        out["autoscaler"] = {**journal, "alive": isinstance(pids.get("autoscaler"), int)
                             and pid_alive(pids["autoscaler"], "autoscaler")}  # fmt: skip
    storage = _metrics([b["metrics"] for b in brokers if b["metrics"] and b["process_alive"]])
    if storage:
        out["storage"] = storage
    return out
