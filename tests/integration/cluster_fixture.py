"""A real local cluster for tests, started by the same code as `amq cluster up`, stopped by pid.

    def test_x(broker_cluster: LocalCluster) -> None:
        producer = Producer({"bootstrap.servers": broker_cluster.bootstrap})

`broker_cluster` is shared by the whole session (topics get unique names);
`start_local_cluster(tmp)` gives a test a cluster of its own (kill -9 tests).
`KafkaWire` speaks the protocol by hand for what client libraries will not send.
"""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from automq_cli.cluster import (
    ClusterOptions,
    kill_pid,
    remove_state,
    start_broker,
    start_cluster,
    stop_cluster,
    write_state,
)
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
        return str(self.state["bootstrap"])

    @property
    def port(self) -> int:
        return int(self.bootstrap.rpartition(":")[2])

    @property
    def broker_pid(self) -> int:
        return int(self.state["pids"]["broker-0"])

    @property
    def metrics_url(self) -> str:
        return str(self.state["metrics"][0])

    @property
    def broker_log(self) -> Path:
        return Path(self.state["brokers"][0]["log"])

    def wire(self, timeout: float = 10.0) -> KafkaWire:
        return KafkaWire("127.0.0.1", self.port, timeout)

    def kill_broker(self) -> None:
        kill_pid(self.broker_pid)

    def restart_broker(self) -> None:
        start_broker(self.state, 0)
        write_state(self.state, self.home)

    def stop(self) -> None:
        stop_cluster(self.state, timeout=20)
        remove_state(self.home)


def start_local_cluster(tmp: Path, **options: Any) -> LocalCluster:
    """A cluster in `tmp` on free ports, with a small WAL and quick uploads."""
    opts = ClusterOptions(dir=str(tmp / "data"), port=0, wal_capacity=64 << 20, upload_interval_s=0.5, **options)
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
