"""Faults on a local cluster, by pid and by file: the library behind `amq chaos` and its trials.

Each function acts on the cluster state (automq_cli/cluster/state.py) and returns one line
saying what it did; a `FaultError` is a one-line refusal (bad input, nothing running).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from automq_cli.cluster.processes import kill_pid, pid_alive
from automq_cli.cluster.state import broker_entry, broker_ids


class FaultError(Exception):
    """One line for the user; the CLI prints it and exits non-zero."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(text: str) -> float:
    """`10s`, `500ms`, `2m` or a plain number of seconds -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise FaultError(f"{text!r} is not a duration (10s, 500ms, 2m)")
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "ms" else value * 60 if m.group(2) == "m" else value


def stamp() -> str:
    return time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"


def process_pid(state: dict[str, Any], name: str) -> int:
    """The pid of `broker-N`, `controller`, `s3` or `s3-proxy`, if it runs."""
    pid = (state.get("pids") or {}).get(name)
    if not isinstance(pid, int):
        known = ", ".join(sorted(state.get("pids") or {})) or "none"
        raise FaultError(f"this cluster has no process {name!r} (it has: {known})")
    if not pid_alive(pid, name):
        raise FaultError(f"{name} (pid {pid}) is not running")
    return pid


def target_name(kind: str, node: int | None, state: dict[str, Any]) -> str:
    """`broker 1` -> broker-1; `controller`, `s3` as they are."""
    kind = kind.lower()
    if kind == "broker":
        if node is None:
            raise FaultError("say which broker: `broker N` (see `amq cluster status`)")
        if broker_entry(state, node) is None:
            raise FaultError(f"no broker {node} in this cluster (brokers: {broker_ids(state)})")
        return f"broker-{node}"
    if kind in ("controller", "s3", "s3-proxy"):
        if node is not None:
            raise FaultError(f"{kind} takes no number")
        return kind
    raise FaultError(f"cannot target {kind!r}: use broker N, controller or s3")


def kill(state: dict[str, Any], name: str) -> str:
    pid = process_pid(state, name)
    kill_pid(pid)
    if pid_alive(pid, name):
        raise FaultError(f"{name} (pid {pid}) is still alive after SIGKILL")
    return f"{stamp()} killed {name} (pid {pid}) with SIGKILL"


def pause(state: dict[str, Any], name: str, seconds: float, say: Any = None) -> str:
    """SIGSTOP the process group, wait, SIGCONT (also when interrupted)."""
    pid = process_pid(state, name)
    os.killpg(pid, signal.SIGSTOP)
    if say is not None:
        say(f"{stamp()} paused {name} (pid {pid}) with SIGSTOP for {seconds:g} s")
    try:
        time.sleep(seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
    return f"{stamp()} resumed {name} (pid {pid}) with SIGCONT"


def zone_brokers(state: dict[str, Any], zone: str) -> list[int]:
    zones = [str(z) for z in state.get("zones") or []]
    if zone not in zones:
        raise FaultError(f"no zone {zone!r} in this cluster (zones: {', '.join(zones)})")
    return sorted(int(b["id"]) for b in state.get("brokers") or [] if b.get("zone") == zone)


def zone_down(state: dict[str, Any], zone: str) -> tuple[list[int], str]:
    """SIGKILL every running broker of `zone`."""
    killed = []
    for n in zone_brokers(state, zone):
        pid = (state.get("pids") or {}).get(f"broker-{n}")
        if isinstance(pid, int) and pid_alive(pid, f"broker-{n}"):
            kill_pid(pid)
            killed.append(n)
    if not killed:
        raise FaultError(f"no broker of zone {zone} is running")
    return killed, f"{stamp()} zone {zone} down: killed broker(s) {', '.join(map(str, killed))} with SIGKILL"


# -- the S3 fault proxy ---------------------------------------------------------------------------


def s3_control(state: dict[str, Any]) -> Path:
    path = state.get("s3_faults")
    if not path:
        raise FaultError("this cluster runs without the S3 fault proxy; start it with `amq cluster up --s3-faults`")
    return Path(str(path))


def set_s3_faults(state: dict[str, Any], clear: bool = False, down_s: float | None = None, **changes: Any) -> str:
    """Merge `changes` into the proxy's faults (or clear them); returns what is now in force."""
    from engine.devtools.s3proxy import Faults, read_faults, write_faults

    control = s3_control(state)
    try:
        faults = Faults() if clear else read_faults(control)
        merged = {**faults.__dict__, **{k: v for k, v in changes.items() if v is not None}}
        if down_s is not None:
            merged["down_until"] = time.time() + down_s
        faults = Faults.from_dict(merged)
    except (ValueError, TypeError) as e:
        raise FaultError(str(e)) from None
    write_faults(control, faults)
    return f"{stamp()} S3 faults: {faults.describe()}"


# -- WAL tail tear ----------------------------------------------------------------------------------


def wal_dir(state: dict[str, Any], node: int) -> Path:
    entry = broker_entry(state, node)
    if entry is None:
        raise FaultError(f"no broker {node} in this cluster (brokers: {broker_ids(state)})")
    kind = state.get("wal_kind")
    if kind not in ("file", "nfs"):
        raise FaultError(f"wal-tear works on the file and nfs WALs (a ring file); this cluster's WAL is {kind}")
    cfg = json.loads(Path(entry["config"]).read_text())
    wal = cfg["storage"]["wal"]
    path = Path(wal["path"])
    return path / str(wal.get("wal_id") or f"broker-{node}") if kind == "nfs" else path


def _last_frame(directory: Path) -> tuple[int, int, int, int] | None:
    """(start, size, next position, epoch) of the ring's last intact frame, scanning from the trim hint."""
    from engine.storage.wal.base import HEADER_SIZE, KIND_PAD, decode_frame

    header = json.loads((directory / "wal.header").read_text())
    capacity = int(header["capacity"])
    trim = 0
    with contextlib.suppress(FileNotFoundError, ValueError):
        trim = int((directory / "wal.trim").read_text())
    data = (directory / "wal.ring").read_bytes()
    pos, last, last_epoch = trim, None, 0
    while pos - trim < capacity:
        phys = pos % capacity
        lap_left = capacity - phys
        if lap_left < HEADER_SIZE:
            pos += lap_left
            continue
        frame = decode_frame(data, phys, pos)
        if frame is None or frame.wal_epoch < last_epoch:
            break
        last_epoch = frame.wal_epoch
        if frame.kind == KIND_PAD:
            pos += lap_left
            continue
        last = (pos, frame.size, pos + frame.size, frame.wal_epoch)
        pos += frame.size
    if last is None:
        return None
    return last


def wal_tear(state: dict[str, Any], node: int, mode: str = "tail", seed: int | None = None) -> str:
    """Damage a stopped broker's WAL where a crash would.

    `tail`: write the first part of one more frame after the last intact one (a write cut short
    by the crash; nothing acknowledged is touched; recovery must stop there and keep the rest).
    `last`: cut the last intact frame in half (destroys its records: a disk that lost a synced write).
    """
    import random

    from engine.storage.wal.base import WalRecord, encode_frame

    if mode not in ("tail", "last"):
        raise FaultError(f"--mode must be tail or last, not {mode!r}")
    pid = (state.get("pids") or {}).get(f"broker-{node}")
    directory = wal_dir(state, node)
    if isinstance(pid, int) and pid_alive(pid, f"broker-{node}"):
        raise FaultError(f"broker {node} is running; stop it first (`amq chaos kill broker {node}`)")
    if not (directory / "wal.ring").exists():
        raise FaultError(f"broker {node} has no WAL ring at {directory}")
    rng = random.Random(seed)
    last = _last_frame(directory)
    capacity = int(json.loads((directory / "wal.header").read_text())["capacity"])
    with open(directory / "wal.ring", "r+b") as f:
        if mode == "last":
            if last is None:
                raise FaultError(f"broker {node}'s WAL holds no frame beyond its trim point: nothing to cut")
            start, size, _, _ = last
            cut = rng.randint(1, size - 1)
            f.seek(start % capacity + cut)
            f.write(bytes(size - cut))
            what = f"cut its last frame (position {start}, {size} bytes) at byte {cut}: zeroed {size - cut} bytes"
        else:
            at = last[2] if last is not None else 0
            epoch = last[3] if last is not None else 1
            frame = encode_frame(WalRecord(1, 1, 0, 1, rng.randbytes(rng.randint(64, 4096))), at, epoch)
            keep = rng.randint(8, len(frame) - 1)
            phys = at % capacity
            keep = min(keep, capacity - phys)
            f.seek(phys)
            f.write(frame[:keep])
            what = f"wrote {keep} of a {len(frame)}-byte frame at position {at}, after the last intact frame"
        f.flush()
        os.fsync(f.fileno())
    return f"{stamp()} tore broker {node}'s WAL ({directory}): {what}"
