"""An S3 fault proxy: HTTP between S3 clients and an endpoint, with faults switched at run time.

    python -m engine.devtools.s3proxy --upstream http://127.0.0.1:8333 --control faults.json --port-file p

It listens on 127.0.0.1 only and forwards each HTTP/1.1 request as it came (headers untouched,
so SigV4 signatures over the Host header still verify: the client signed the proxy's address
and the upstream checks what it receives). Faults come from the control file, a JSON object
re-read whenever it changes (`write_faults` writes it atomically; `amq chaos s3` uses it):

    latency_ms     added before each request is forwarded
    error_rate     0..1: answer 500, 503 or 503 SlowDown (S3's XML bodies) instead of forwarding
    hang_rate      0..1: read the request, then never answer (a client timeout must fire)
    torn_rate      0..1: forward, then send half the answer and close the connection
    down_until     epoch seconds: until then, a full outage (see down_mode)
    down_mode      "refuse": stop listening and drop every connection (connection refused);
                   "503": answer every request 503 ServiceUnavailable
    seed           for the random draws, so a run can be repeated

Anything missing or zero is no fault. Counters of what was done are written next to the
control file (`<control>.stats.json`) every second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_ERRORS = (
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "ServiceUnavailable", "Reduce your request rate."),
    (503, "SlowDown", "Please reduce your request rate."),
)
MAX_HEADER = 64 << 10


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    torn_rate: float = 0.0
    down_until: float = 0.0
    down_mode: str = "refuse"
    seed: int | None = None

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> Faults:
        known = Faults.__dataclass_fields__
        f = Faults(**{k: v for k, v in raw.items() if k in known})
        for rate in ("error_rate", "hang_rate", "torn_rate"):
            value = float(getattr(f, rate))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{rate} must be between 0 and 1, got {value}")
            setattr(f, rate, value)
        if float(f.latency_ms) < 0:
            raise ValueError(f"latency_ms must be >= 0, got {f.latency_ms}")
        if f.down_mode not in ("refuse", "503"):
            raise ValueError(f"down_mode must be refuse or 503, not {f.down_mode!r}")
        return f

    def down(self, now: float | None = None) -> bool:
        return self.down_until > (time.time() if now is None else now)

    def describe(self) -> str:
        parts = []
        if self.latency_ms:
            parts.append(f"latency {self.latency_ms:g} ms")
        if self.error_rate:
            parts.append(f"errors {self.error_rate:.0%}")
        if self.hang_rate:
            parts.append(f"hangs {self.hang_rate:.0%}")
        if self.torn_rate:
            parts.append(f"torn answers {self.torn_rate:.0%}")
        if self.down():
            parts.append(f"down ({self.down_mode}) for {self.down_until - time.time():.0f} s more")
        return ", ".join(parts) or "no faults"


def write_faults(path: str | os.PathLike[str], faults: Faults) -> None:
    """Atomically, so the proxy never reads half a file."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(asdict(faults)) + "\n")
    os.replace(tmp, p)


def read_faults(path: str | os.PathLike[str]) -> Faults:
    try:
        return Faults.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        return Faults()


@dataclass
class Stats:
    requests: int = 0
    forwarded: int = 0
    errors: int = 0
    hangs: int = 0
    torn: int = 0
    refused: int = 0
    delayed: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def _error_body(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<RequestId>amq-fault</RequestId></Error>"
    ).encode()


async def _read_message(
    reader: asyncio.StreamReader, *, no_body: bool = False, writer: asyncio.StreamWriter | None = None
) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message: (start line + headers, body as sent: Content-Length or chunked). None at EOF.

    With `writer` (a client's request), `Expect: 100-continue` is answered here and dropped from
    the header: the proxy needs the body before it decides, and boto3 would otherwise wait 1 s."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ConnectionError("connection closed inside a message header") from None
    except asyncio.LimitOverrunError:
        raise ConnectionError("message header too large") from None
    length = 0
    chunked = False
    close_delimited = False
    kept = []
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif key == b"expect" and writer is not None and b"100-continue" in value.lower():
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            continue
        kept.append(line)
    head = b"\r\n".join(kept)
    if no_body:
        return head, b""
    if chunked:
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    body += trailer
                    if trailer == b"\r\n":
                        return head, bytes(body)
            body += await reader.readexactly(size + 2)
    if close_delimited:  # pragma: no cover - S3 always sends a length or chunks
        return head, await reader.read()
    return head, await reader.readexactly(length) if length else b""


class S3FaultProxy:
    def __init__(self, upstream: str, control: str | os.PathLike[str], port: int = 0) -> None:
        u = urlparse(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.up_host = u.hostname
        self.up_port = u.port or 80
        self.control = Path(control)
        self.port = port
        self.faults = Faults()
        self.stats = Stats()
        self.rng = random.Random()
        self._mtime: float | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._seed: int | None = None

    def _reload(self) -> None:
        try:
            mtime = self.control.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self.faults = read_faults(self.control)
        except (OSError, ValueError) as e:
            print(f"s3proxy: ignoring control file: {e}", flush=True)
            return
        if self.faults.seed is not None and self.faults.seed != self._seed:
            self._seed = self.faults.seed
            self.rng.seed(self.faults.seed)
        print(f"s3proxy: {self.faults.describe()}", flush=True)

    async def start(self) -> int:
        self._reload()
        await self._listen()
        return self.port

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True, limit=MAX_HEADER
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def run_control_loop(self, stats_every: float = 1.0) -> None:
        """Watch the control file; open and close the listener as outages begin and end."""
        last_stats = 0.0
        stats_path = self.control.with_name(self.control.name + ".stats.json")
        while True:
            self._reload()
            down = self.faults.down() and self.faults.down_mode == "refuse"
            if down and self._server is not None:
                self._server.close()
                self._server = None
                for w in list(self._conns):
                    w.transport.abort()
            elif not down and self._server is None:
                try:
                    await self._listen()
                except OSError as e:  # the port is briefly busy: try again next round
                    print(f"s3proxy: cannot listen again yet: {e}", flush=True)
            now = time.monotonic()
            if now - last_stats >= stats_every:
                last_stats = now
                with contextlib.suppress(OSError):
                    tmp = stats_path.with_name(stats_path.name + ".tmp")
                    tmp.write_text(json.dumps(asdict(self.stats)) + "\n")
                    os.replace(tmp, stats_path)
            await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                msg = await _read_message(reader, writer=writer)
                if msg is None:
                    return
                head, body = msg
                self._reload()
                f = self.faults
                st = self.stats
                st.requests += 1
                if f.down():
                    if f.down_mode == "refuse":
                        st.refused += 1
                        writer.transport.abort()
                        return
                    await self._answer_error(writer, 503, "ServiceUnavailable", "amq chaos: S3 is down")
                    continue
                if f.latency_ms:
                    st.delayed += 1
                    await asyncio.sleep(f.latency_ms / 1000)
                draw = self.rng.random()
                if draw < f.hang_rate:
                    st.hangs += 1
                    while await reader.read(1 << 16):  # until the client gives up and closes
                        pass
                    return
                if draw < f.hang_rate + f.error_rate:
                    status, code, message = self.rng.choice(_ERRORS)
                    await self._answer_error(writer, status, code, message)
                    continue
                torn = draw < f.hang_rate + f.error_rate + f.torn_rate
                if upstream is None:
                    upstream = await asyncio.open_connection(self.up_host, self.up_port, limit=MAX_HEADER)
                ureader, uwriter = upstream
                uwriter.write(head + body)
                await uwriter.drain()
                method = head.split(b" ", 1)[0].upper()
                answer = await _read_message(ureader, no_body=method == b"HEAD")
                if answer is None:
                    raise ConnectionError("upstream closed the connection")
                ahead, abody = answer
                status_code = ahead.split(b" ", 2)[1].decode("latin-1", "replace") if b" " in ahead else "?"
                st.by_status[status_code] = st.by_status.get(status_code, 0) + 1
                data = ahead + abody
                if torn:
                    st.torn += 1
                    writer.write(data[: max(1, len(data) // 2)])
                    await writer.drain()
                    writer.transport.abort()
                    return
                st.forwarded += 1
                writer.write(data)
                await writer.drain()
                if b"connection: close" in ahead.lower():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            return
        finally:
            self._conns.discard(writer)
            writer.transport.abort()
            if upstream is not None:
                upstream[1].transport.abort()

    async def _answer_error(self, writer: asyncio.StreamWriter, status: int, code: str, message: str) -> None:
        self.stats.errors += 1
        body = _error_body(code, message)
        reason = {500: "Internal Server Error", 503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            f"x-amz-request-id: amq-fault\r\n\r\n".encode()
            + body
        )
        await writer.drain()


async def _main(args: argparse.Namespace) -> None:
    proxy = S3FaultProxy(args.upstream, args.control, args.port)
    port = await proxy.start()
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"s3proxy: 127.0.0.1:{port} -> {args.upstream}, control {args.control}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control = asyncio.create_task(proxy.run_control_loop())
    await stop.wait()
    control.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description="S3 fault proxy (loopback only)")
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--control", required=True, help="JSON file of faults (engine/devtools/s3proxy.py)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    asyncio.run(_main(ap.parse_args()))


if __name__ == "__main__":
    main()
