"""A real local cluster for tests, started by the same code as `amq cluster up`, stopped by pid.

    def test_x(broker_cluster: LocalCluster) -> None:
        producer = Producer({"bootstrap.servers": broker_cluster.bootstrap})

`broker_cluster` is shared by the whole session (one broker; topics get unique names);
`start_local_cluster(tmp)` gives a test a cluster of its own (kill -9 tests), and
`start_local_cluster(tmp, brokers=3, zones=3, wal="nfs")` one of several brokers in zones.
`KafkaWire` speaks the protocol by hand for what client libraries will not send.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from automq_cli.cluster import (
    ClusterOptions,
    kill_pid,
    parse_zones,
    remove_state,
    start_broker,
    start_cluster,
    stop_cluster,
    stop_pid,
    write_state,
)
from automq_cli.cluster.processes import terminate_pids
from automq_cli.cluster.state import find_state
from engine.protocol import RequestHeader, decode_response, encode_request


class KafkaWire:
    """A blocking, one-request-at-a-time Kafka connection built on engine.protocol."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._cid = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> KafkaWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, api_key: int, version: int, body: Any, client_id: str | None = "wire") -> int:
        self._cid += 1
        self.sock.sendall(encode_request(RequestHeader(int(api_key), version, self._cid, client_id), body))
        return self._cid

    def recv_frame(self) -> bytes:
        (n,) = struct.unpack(">i", self._read(4))
        return self._read(n)

    def recv(self, api_key: int, version: int) -> Any:
        cid, body = decode_response(int(api_key), version, self.recv_frame())
        assert cid == self._cid
        return body

    def call(self, api_key: int, version: int, body: Any) -> Any:
        self.send(api_key, version, body)
        return self.recv(api_key, version)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the broker has closed the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
        return bytes(buf)


@dataclass
class LocalCluster:
    home: Path
    state: dict[str, Any]

    @property
    def bootstrap(self) -> str:
        """Every broker, comma separated (what clients take as bootstrap.servers)."""
        return str(self.state["bootstrap"])

    @property
    def bootstraps(self) -> list[str]:
        """One address per broker, by broker id."""
        return [f"127.0.0.1:{self.broker_port(n)}" for n in self.broker_ids]

    @property
    def broker_ids(self) -> list[int]:
        return sorted(int(b["id"]) for b in self.state["brokers"])

    @property
    def port(self) -> int:
        """Broker 0's port."""
        return self.broker_port(0)

    def _entry(self, n: int) -> dict[str, Any]:
        return next(b for b in self.state["brokers"] if b["id"] == n)

    def broker_port(self, n: int = 0) -> int:
        return int(self._entry(n)["port"])

    def broker_pid(self, n: int = 0) -> int:
        return int(self.state["pids"][f"broker-{n}"])

    def broker_zone(self, n: int = 0) -> str:
        return str(self._entry(n)["zone"])

    @property
    def metrics_url(self) -> str:
        """Broker 0's metrics endpoint."""
        return f"http://127.0.0.1:{self._entry(0)['metrics_port']}/metrics"

    @property
    def metrics_urls(self) -> list[str]:
        return [str(u) for u in self.state.get("metrics") or []]

    @property
    def broker_log(self) -> Path:
        return Path(self._entry(0)["log"])

    def wire(self, timeout: float = 10.0, broker: int = 0) -> KafkaWire:
        return KafkaWire("127.0.0.1", self.broker_port(broker), timeout)

    def kill_broker(self, n: int = 0) -> None:
        """SIGKILL, as a crash would."""
        kill_pid(self.broker_pid(n))

    def stop_broker(self, n: int = 0, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown); wait until it exits (SIGKILL after `timeout`)."""
        stop_pid(self.broker_pid(n), f"broker-{n}", timeout=timeout)

    def restart_broker(self, n: int = 0) -> None:
        """Start it again from its saved config, on the same port."""
        start_broker(self.state, n)
        write_state(self.state, self.home)

    def amq(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the `amq` CLI against this cluster (found through its AMQ_HOME)."""
        env = {**os.environ, "AMQ_HOME": str(self.home)}
        cmd = [sys.executable, "-m", "automq_cli.main", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)

    def reload(self) -> None:
        """Read the state the CLI wrote (after `amq scale`, say)."""
        fresh = find_state(self.home, self.state["dir"])
        if fresh is not None:
            self.state = fresh

    def stop(self) -> None:
        known = {n: p for n, p in (self.state.get("pids") or {}).items() if isinstance(p, int)}
        self.reload()
        stop_cluster(self.state, timeout=20)
        # Processes the fresh state no longer names (a broker removed by `amq scale in`) too.
        forgotten = {n: p for n, p in known.items() if n not in (self.state.get("pids") or {})}
        terminate_pids(forgotten, timeout=10)
        remove_state(self.home)
        # A private PostgreSQL kept outside the cluster directory (running as root) goes too.
        pg_dir = self.state.get("postgres_dir")
        if pg_dir and not Path(pg_dir).is_relative_to(self.state["dir"]):
            shutil.rmtree(pg_dir, ignore_errors=True)


def start_local_cluster(
    tmp: Path,
    brokers: int | None = None,
    zones: int | str | list[str] | None = None,
    session_timeout: float | None = None,
    **options: Any,
) -> LocalCluster:
    """A cluster in `tmp` on free ports, with a small WAL and quick uploads.

    brokers/zones as `amq cluster up --brokers/--zones` (zones: a count, "a,b,c" or a list);
    other options are ClusterOptions fields (wal, num_partitions, extra_broker, ...).
    """
    opts = ClusterOptions(dir=str(tmp / "data"), port=0, wal_capacity=64 << 20, upload_interval_s=0.5, **options)
    opts.brokers = brokers
    if zones is not None:
        opts.zones = parse_zones(zones)
    if session_timeout is not None:
        opts.session_timeout = session_timeout
    home = tmp / "home"
    return LocalCluster(home, start_cluster(opts, home=home))


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def broker_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_local_cluster(tmp_path_factory.mktemp("amq-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
