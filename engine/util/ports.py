"""Free TCP ports on 127.0.0.1 for servers started by amq and its tests."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """Return n distinct ports that were free a moment ago.

    All sockets are held open until every port is chosen so the kernel cannot
    hand out the same port twice within one call.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
