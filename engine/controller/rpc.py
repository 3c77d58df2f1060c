"""The controller's RPC: length-prefixed JSON over TCP (see docs/broker.md).

    request  {"id": n, "method": "create_topics", "params": {...}}
    answer   {"id": n, "result": {...}}  or  {"id": n, "error": {"code": "...", "message": "..."}}

One connection carries many requests at once; answers are matched by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from engine.controller.api import REQUESTS, Request

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
MAX_MESSAGE = 64 << 20


class RpcError(Exception):
    """The controller answered with an error, or could not be reached."""

    def __init__(self, code: str, message: str, leader: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: With NOT_LEADER: the leading controller's address, when the standby knows it.
        self.leader = leader


#: A standby controller (or one that just lost its lease) answers every call with this code.
NOT_LEADER = "NOT_LEADER"


class ControllerUnavailable(RpcError):
    def __init__(self, message: str) -> None:
        super().__init__("UNAVAILABLE", message)
        #: True when the request never left this process (no controller could be reached).
        self.unsent = False


R = TypeVar("R")


def encode(obj: dict[str, Any]) -> bytes:
    body = msgspec.json.encode(obj)
    return _LEN.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes is over the limit")
    body = await reader.readexactly(n)
    try:
        msg = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg


#: Takes the typed request of its method (engine/controller/api.py), returns its typed response.
Handler = Callable[[Any], Awaitable[Any]]


def decode_params(method: str, params: Any) -> Request[Any]:
    """The typed request of a call; RpcError BAD_REQUEST when the params do not fit it."""
    cls = REQUESTS.get(method)
    if cls is None:
        raise RpcError("UNKNOWN_METHOD", f"no method {method!r}")
    try:
        return msgspec.convert(params or {}, cls, strict=False)
    except msgspec.ValidationError as e:
        raise RpcError("BAD_REQUEST", f"{method}: {e}") from None


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    methods: dict[str, Handler],
    on_close: Callable[[set[int]], None] | None = None,
) -> None:
    """Answer requests of one connection, each in its own task (long polls do not block the rest).

    `on_close` gets the ids of the brokers whose session calls (register, heartbeat) came on
    this connection, once it ends: the process behind it may have died.
    """
    tasks: set[asyncio.Task[None]] = set()
    lock = asyncio.Lock()
    brokers: set[int] = set()

    async def answer(msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        name = str(msg.get("method"))
        method = methods.get(name)
        out: dict[str, Any]
        if method is None:
            out = {"id": rid, "error": {"code": "UNKNOWN_METHOD", "message": f"no method {name!r}"}}
        else:
            try:
                request = decode_params(name, msg.get("params"))
                if request.session:
                    brokers.add(int(request.broker_id))  # type: ignore[attr-defined]
                out = {"id": rid, "result": msgspec.to_builtins(await method(request))}
            except RpcError as e:
                err: dict[str, Any] = {"code": e.code, "message": e.message}
                if e.leader:
                    err["leader"] = e.leader
                out = {"id": rid, "error": err}
            except Exception as e:
                log.exception("controller method %s failed", msg.get("method"))
                out = {"id": rid, "error": {"code": "INTERNAL", "message": f"{type(e).__name__}: {e}"}}
        async with lock:
            if writer.is_closing():
                return  # the connection was dropped (say, this controller stopped leading)
            try:
                writer.write(encode(out))
                await writer.drain()
            except (ConnectionError, RuntimeError):
                return

    try:
        while True:
            try:
                msg = await read_message(reader)
            except (ValueError, ConnectionError) as e:
                log.warning("dropping controller connection: %s", e)
                break
            if msg is None:
                break
            task = asyncio.get_running_loop().create_task(answer(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for t in list(tasks):
            t.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        if on_close is not None and brokers:
            on_close(brokers)


def parse_addresses(spec: str) -> list[tuple[str, int]]:
    """`h1:p1,h2:p2` (one or more controllers) -> [(host, port)]; ValueError names a bad entry."""
    out: list[tuple[str, int]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"controller address {part!r} is not host:port")
        out.append((host or "127.0.0.1", int(port)))
    if not out:
        raise ValueError("no controller address given")
    return out


class ControllerClient:
    """A reconnecting client of one or more controllers; it follows the leader.

    A call goes to the controller that answered last. A standby answers NOT_LEADER (with the
    leader's address when it knows it): the call was not applied, so it is sent again to that
    leader, or to the next controller of the list, until `timeout`. A controller that cannot
    be reached is skipped the same way. A call whose connection broke after it was sent fails
    with ControllerUnavailable: it may have been applied, and only the caller knows whether
    sending it again is safe.
    """

    def __init__(
        self, host: str | list[tuple[str, int]], port: int = 0, *, connect_timeout: float = 3.0, follow: bool = True
    ) -> None:
        """follow=False: ask exactly this controller (`amq cluster status` asks each whether it leads)."""
        self.addresses: list[tuple[str, int]] = [(host, port)] if isinstance(host, str) else list(host)
        self.follow = follow
        self._current = 0
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    @property
    def host(self) -> str:
        return self.addresses[self._current][0]

    @property
    def port(self) -> int:
        return self.addresses[self._current][1]

    @classmethod
    def from_address(cls, address: str) -> ControllerClient:
        """`host:port`, or `h1:p1,h2:p2` for controllers that fail over."""
        return cls(parse_addresses(address))

    def _move_to(self, leader: str) -> None:
        """Use the named leader next (added to the list if new), else the next controller."""
        self._drop_connection()
        if leader:
            with contextlib.suppress(ValueError):
                target = parse_addresses(leader)[0]
                if target not in self.addresses:
                    self.addresses.append(target)
                self._current = self.addresses.index(target)
                return
        self._current = (self._current + 1) % len(self.addresses)

    def _drop_connection(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if self._closed:
                raise ControllerUnavailable("client is closed")
            errors = []
            for _ in range(len(self.addresses)):
                host, port = self.addresses[self._current]
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
                except (OSError, TimeoutError) as e:
                    errors.append(f"{host}:{port}: {e or type(e).__name__}")
                    self._current = (self._current + 1) % len(self.addresses)
                    continue
                self._writer = writer
                self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader, writer))
                return writer
            raise ControllerUnavailable(f"cannot reach the controller at {'; '.join(errors)}")

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                msg = await read_message(reader)
                if msg is None:
                    break
                fut = self._pending.pop(msg.get("id", -1), None)
                if fut is None or fut.done():
                    continue
                if "error" in msg:
                    err = msg["error"] or {}
                    fut.set_exception(
                        RpcError(str(err.get("code")), str(err.get("message")), str(err.get("leader") or ""))
                    )
                else:
                    fut.set_result(msg.get("result"))
        except (ValueError, ConnectionError, asyncio.IncompleteReadError) as e:
            log.warning("controller connection lost: %s", e)
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            # Requests sent on this connection will never be answered.
            for rid, fut in list(self._pending.items()):
                if getattr(fut, "_amq_writer", None) is writer:
                    self._pending.pop(rid, None)
                    if not fut.done():
                        fut.set_exception(ControllerUnavailable("connection to the controller lost"))

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._call_once(method, max(0.05, left), params)
            except RpcError as e:
                retry = e.code == NOT_LEADER or (isinstance(e, ControllerUnavailable) and e.unsent)
                if not retry or not self.follow or (len(self.addresses) == 1 and e.code != NOT_LEADER):
                    raise
                if time.monotonic() + 0.1 >= deadline:
                    raise ControllerUnavailable(f"no leading controller answered {method} within {timeout:.0f}s: "
                                                f"{e.message}") from None  # fmt: skip
                self._move_to(e.leader)
                # Without a named leader the standbys are waiting for the lease: do not spin.
                await asyncio.sleep(0.02 if e.leader else 0.1)

    async def _call_once(self, method: str, timeout: float, params: dict[str, Any]) -> Any:
        try:
            writer = await self._connect()
        except ControllerUnavailable as e:
            e.unsent = True
            raise
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut._amq_writer = writer  # type: ignore[attr-defined]
        self._pending[rid] = fut
        try:
            writer.write(encode({"id": rid, "method": method, "params": params}))
            await writer.drain()
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:  # before OSError, of which it is a subclass
            # A controller that stopped answering (paused, cut off) may hold every call on this
            # connection: the next call goes elsewhere.
            if len(self.addresses) > 1 and self._writer is writer:
                self._move_to("")
            raise ControllerUnavailable(f"controller did not answer {method} within {timeout:.0f}s") from None
        except (ConnectionError, OSError) as e:
            raise ControllerUnavailable(f"controller connection failed: {e}") from None
        finally:
            self._pending.pop(rid, None)

    async def request(self, req: Request[R], timeout: float = 30.0) -> R:
        """A typed call: the request struct in, its response struct out."""
        result = await self.call(req.method, timeout=timeout, **msgspec.to_builtins(req))
        try:
            out: R = msgspec.convert(result, req.response, strict=False)
        except msgspec.ValidationError as e:
            raise RpcError("BAD_RESPONSE", f"{req.method}: {e}") from None
        return out

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task


def call_sync(address: str, method: str, timeout: float = 5.0, **params: Any) -> Any:
    """One call from synchronous code (the CLI); the result as plain JSON values."""

    async def run() -> Any:
        client = ControllerClient.from_address(address)
        try:
            return await client.call(method, timeout=timeout, **params)
        finally:
            await client.close()

    return asyncio.run(run())


def request_sync(address: str, req: Request[R], timeout: float = 5.0) -> R:
    """One typed call from synchronous code (the CLI)."""

    async def run() -> R:
        client = ControllerClient.from_address(address)
        try:
            return await client.request(req, timeout=timeout)
        finally:
            await client.close()

    return asyncio.run(run())
