"""The cluster state file: the one place that reads and writes it.

`amq cluster up` records what it started in `$AMQ_HOME/cluster.json` (AMQ_HOME defaults to
~/.amq) and in `<dir>/cluster-state.json`, so a cluster can be found both by the user's home
and by its directory (`--dir`). Keys (docs/perf.md):

    {"dir": "/path", "pids": {"s3": 1, "controller": 2, "broker-0": 3, ...},
     "s3_endpoint": "http://127.0.0.1:8333", "controller": "127.0.0.1:40001",
     "wal_kind": "file", "zones": ["az1", "az2"],
     "brokers": [{"id": 0, "zone": "az1", "config": "...", "log": "...", "pid": 3,
                  "port": 9092, "metrics_port": 40002}, ...],
     "bootstrap": "127.0.0.1:9092,127.0.0.1:9093",
     "bootstrap_by_zone": {"az1": "127.0.0.1:9092", "az2": "127.0.0.1:9093"},
     "metrics": ["http://127.0.0.1:40002/metrics", ...], "started_at": "...", "logs": "/path/logs"}
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

STATE_FILE = "cluster.json"
#: The same state, kept in the cluster directory, so `--dir X` finds the cluster.
DIR_STATE_FILE = "cluster-state.json"
#: The options `up` was given, kept in the cluster directory for the next `up`.
SETTINGS_FILE = "cluster-settings.json"


def amq_home() -> Path:
    return Path(os.environ.get("AMQ_HOME") or Path.home() / ".amq").expanduser()


def state_path(home: Path | None = None) -> Path:
    return (home or amq_home()) / STATE_FILE


def dir_state_path(directory: str | Path) -> Path:
    return Path(directory).expanduser().resolve() / DIR_STATE_FILE


def load_state_file(path: str | Path) -> dict[str, Any]:
    """The state in `path`; raises FileNotFoundError, OSError or ValueError (not JSON, not an object)."""
    data = json.loads(Path(path).expanduser().read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return load_state_file(path)
    except (OSError, ValueError):
        return None


def read_state(home: Path | None = None) -> dict[str, Any] | None:
    """The state in `$AMQ_HOME/cluster.json`, or None."""
    return _read(state_path(home))


def _same_dir(state: dict[str, Any] | None, directory: str | Path) -> bool:
    if not state or not state.get("dir"):
        return False
    return Path(str(state["dir"])).expanduser().resolve() == Path(directory).expanduser().resolve()


def find_state(home: Path | None = None, directory: str | Path | None = None) -> dict[str, Any] | None:
    """The cluster of `directory` (its cluster-state.json, else the home state if it is that cluster), or the home's."""
    if directory is None:
        return read_state(home)
    found = _read(dir_state_path(directory))
    if found is not None:
        return found
    home_state = read_state(home)
    return home_state if _same_dir(home_state, directory) else None


def _write(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def write_state(state: dict[str, Any], home: Path | None = None, *, claim_home: bool = True) -> Path:
    """Write `$AMQ_HOME/cluster.json` and `<dir>/cluster-state.json`.

    With claim_home=False the home file is written only when it already describes this cluster
    (or is absent), so acting on a cluster by `--dir` never hides another one from the home.
    """
    path = state_path(home)
    if state.get("dir"):
        with contextlib.suppress(OSError):
            _write(dir_state_path(str(state["dir"])), state)
    current = read_state(home)
    if claim_home or current is None or _same_dir(current, str(state.get("dir") or "")):
        _write(path, state)
    return path


def remove_state(home: Path | None = None, directory: str | Path | None = None) -> None:
    """Forget a stopped cluster: the home's (and its directory's) state, or the one of `directory`."""
    home_state = read_state(home)
    if directory is None:
        with contextlib.suppress(FileNotFoundError):
            state_path(home).unlink()
        if home_state and home_state.get("dir"):
            with contextlib.suppress(OSError):
                dir_state_path(str(home_state["dir"])).unlink(missing_ok=True)
        return
    with contextlib.suppress(OSError):
        dir_state_path(directory).unlink(missing_ok=True)
    if _same_dir(home_state, directory):
        with contextlib.suppress(FileNotFoundError):
            state_path(home).unlink()


def load_settings(directory: Path) -> dict[str, Any]:
    """The options of the previous `up` in `directory` ({} if none)."""
    try:
        data = json.loads((directory / SETTINGS_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_settings(directory: Path, settings: dict[str, Any]) -> None:
    _write(directory / SETTINGS_FILE, settings)


def broker_entry(state: dict[str, Any], node_id: int) -> dict[str, Any] | None:
    return next((b for b in state.get("brokers") or [] if b.get("id") == node_id), None)


def broker_ids(state: dict[str, Any]) -> list[int]:
    return sorted(int(b["id"]) for b in state.get("brokers") or [] if isinstance(b.get("id"), int))


def refresh_bootstrap(state: dict[str, Any]) -> None:
    """`bootstrap` (every broker, by id) and `bootstrap_by_zone` from the brokers' ports."""
    brokers = sorted((b for b in state.get("brokers") or [] if b.get("port")), key=lambda b: b["id"])
    state["bootstrap"] = ",".join(f"127.0.0.1:{b['port']}" for b in brokers)
    by_zone: dict[str, list[str]] = {z: [] for z in state.get("zones") or []}
    for b in brokers:
        by_zone.setdefault(str(b.get("zone")), []).append(f"127.0.0.1:{b['port']}")
    state["bootstrap_by_zone"] = {z: ",".join(a) for z, a in by_zone.items() if a}
    state["metrics"] = [f"http://127.0.0.1:{b['metrics_port']}/metrics" for b in brokers if b.get("metrics_port")]
