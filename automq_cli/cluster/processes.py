"""Processes of a local cluster: spawn, liveness, stop by pid, port checks, the ApiVersions probe."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

_MARKERS = {"s3": "weed", "controller": "engine.controller", "broker": "engine.broker",
            "autoscaler": "automq_cli.autoscaler", "postgres": "postgres",
            "s3-proxy": "engine.devtools.s3proxy"}  # fmt: skip

StopOutcome = Literal["not-running", "exited", "killed"]


def _role(name: str) -> str:
    """broker-N -> broker, controller-N -> controller (the first controller is plain `controller`)."""
    for role in ("broker", "controller"):
        if name.startswith(role):
            return role
    return name


def controller_alive(pids: dict[str, object]) -> bool:
    """Whether any of the cluster's controllers runs (with PostgreSQL there may be several)."""
    return any(
        isinstance(pid, int) and pid_alive(pid, name) for name, pid in pids.items() if name.startswith("controller")
    )


def repo_env() -> dict[str, str]:
    import engine

    root = str(Path(engine.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    # Brokers churn through MiB-sized buffers on many threads. glibc's defaults (an arena per
    # thread, an mmap threshold that rises after frees) keep freed buffers in fragmented
    # heaps: RSS grew to 2.4 GiB at 75 MiB/s. A fixed threshold sends big buffers to mmap,
    # which returns them to the OS on free; two arenas bound the rest.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    return env


def pid_alive(pid: int, name: str | None = None) -> bool:
    """Alive, not a zombie, and (when `name` is given) still the program we started."""
    import psutil

    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if name is not None:
            return _MARKERS[_role(name)] in " ".join(p.cmdline())
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def rss_bytes(pid: int) -> int | None:
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive or `timeout` passes; the ones still alive."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in left if pid_alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def terminate_pids(pids: dict[str, int], timeout: float = 20.0) -> dict[str, StopOutcome]:
    """SIGTERM each process group at once, SIGKILL whatever still runs after `timeout`."""
    out: dict[str, StopOutcome] = {}
    running: dict[str, int] = {}
    for name, pid in pids.items():
        if pid_alive(pid, name):
            running[name] = pid
            _signal_group(pid, signal.SIGTERM)
        else:
            out[name] = "not-running"
    stuck = set(_wait_gone(running.values(), timeout))
    for pid in stuck:
        _signal_group(pid, signal.SIGKILL)
    _wait_gone(stuck, 5.0)
    for name, pid in running.items():
        out[name] = "killed" if pid in stuck else "exited"
    return out


def terminate_pid(pid: int, name: str | None = None, timeout: float = 20.0) -> StopOutcome:
    """SIGTERM the process group, SIGKILL after `timeout`."""
    if not pid_alive(pid, name):
        return "not-running"
    _signal_group(pid, signal.SIGTERM)
    if not _wait_gone([pid], timeout):
        return "exited"
    _signal_group(pid, signal.SIGKILL)
    _wait_gone([pid], 5.0)
    return "killed"


def stop_pid(pid: int, name: str | None = None, timeout: float = 20.0) -> bool:
    """SIGTERM the process group, SIGKILL after `timeout`; True if something was stopped."""
    return terminate_pid(pid, name, timeout) != "not-running"


def kill_pid(pid: int) -> None:
    """SIGKILL, as a crash would (tests, `amq broker kill`)."""
    _signal_group(pid, signal.SIGKILL)
    _wait_gone([pid], 5.0)


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A background process in a session of its own, output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**repo_env(), **(env or {})},
        )  # fmt: skip


def stop_postgres(pid: int, timeout: float = 20.0) -> bool:
    """PostgreSQL's fast shutdown (SIGINT to the postmaster alone: it ends its own children),
    SIGKILL to its group after `timeout`. True if it was running."""
    if not pid_alive(pid, "postgres"):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGINT)
    if _wait_gone([pid], timeout):
        _signal_group(pid, signal.SIGKILL)
        _wait_gone([pid], 5.0)
    return True


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on `port` now.

    SO_REUSEADDR, as the broker's own listener uses: connections of an earlier server still in
    TIME_WAIT (after kill -9, or `down` with clients connected) do not keep the port busy.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
            return True
        except OSError:
            return False


def free_ports_from(first: int, count: int, host: str = "127.0.0.1") -> list[int]:
    """`first` (which the caller checked) and the next `count - 1` free ports after it."""
    ports = [first]
    p = first
    while len(ports) < count:
        p += 1
        if p > 65535:
            raise OSError(f"no {count} free ports from {first} up")
        if port_free(p, host):
            ports.append(p)
    return ports


def api_versions_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """A real Kafka round trip: ApiVersions v0 answered with error code 0."""
    from engine.protocol import ApiKey, RequestHeader, decode_response, encode_request
    from engine.protocol.messages import ApiVersionsRequest

    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(encode_request(RequestHeader(ApiKey.API_VERSIONS, 0, 1, "amq-cli"), ApiVersionsRequest()))
            head = _recv(s, 4)
            (n,) = struct.unpack(">i", head)
            _, body = decode_response(ApiKey.API_VERSIONS, 0, _recv(s, n))
            return getattr(body, "error_code", -1) == 0
    except (OSError, ValueError, struct.error):
        return False


def _recv(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)
