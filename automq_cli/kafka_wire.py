"""A small synchronous Kafka client on amq's own codec, for CLI calls that librdkafka lacks
(AlterPartitionReassignments, ListPartitionReassignments).

It talks only the Kafka protocol, so it works against any amq cluster a bootstrap reaches.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from engine.protocol import RequestHeader, decode_response, encode_request, request_header_version

#: Metadata with real leaders, not the zone proxies of the zone router (docs/zones.md).
CLIENT_ID = "amq-cli&automq_route=leader"


class WireError(Exception):
    """One line for the user: the broker could not be reached or answered nonsense."""


class KafkaWire:
    def __init__(self, bootstrap: str, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._correlation = 0
        problems = []
        for address in [a.strip() for a in bootstrap.split(",") if a.strip()]:
            host, _, port = address.rpartition(":")
            try:
                self._sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
                self.address = address
                break
            except (OSError, ValueError) as e:
                problems.append(f"{address}: {e}")
        if self._sock is None:
            raise WireError("cannot reach a broker (" + "; ".join(problems or ["empty bootstrap"]) + ")")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> KafkaWire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, body: Any, version: int) -> Any:
        assert self._sock is not None
        self._correlation += 1
        key = body.API_KEY
        header = RequestHeader(key, version, self._correlation, CLIENT_ID, request_header_version(key, version))
        try:
            self._sock.sendall(encode_request(header, body))
            (size,) = struct.unpack(">i", self._recv(4))
            frame = self._recv(size)
        except (OSError, struct.error) as e:
            raise WireError(f"broker {self.address}: {e}") from None
        correlation, response = decode_response(key, version, frame)
        if correlation != self._correlation:
            raise WireError(f"broker {self.address} answered request {correlation}, expected {self._correlation}")
        return response

    def _recv(self, n: int) -> bytes:
        assert self._sock is not None
        chunks = []
        while n:
            chunk = self._sock.recv(min(n, 1 << 20))
            if not chunk:
                raise OSError("connection closed")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)
