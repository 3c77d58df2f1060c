"""The Kafka listener: framing, in-order handling per connection, concurrency across connections.

Kafka answers the requests of one connection in the order they came, and handles
them one at a time (it mutes the socket while a request is in progress). Here each
connection has a queue of complete frames and one worker task that handles them in
order; reading pauses while the queue is long, so a client that floods requests
without reading answers is throttled by TCP instead of filling memory. Anything
wrong with a connection's bytes ends that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from engine.broker.context import RequestContext
from engine.broker.router import ROUTER_API_KEY
from engine.protocol import (
    ApiKey,
    CorruptRequest,
    FrameDecoder,
    FrameError,
    UnknownApiKey,
    UnsupportedVersion,
    decode_request,
    encode_body,
    encode_response,
)
from engine.protocol._wire import Buffer
from engine.protocol.codec import Request
from engine.protocol.framing import frame
from engine.protocol.headers import RequestHeader, encode_response_header
from engine.protocol.messages import ApiVersionsResponse
from engine.util.histogram import now

if TYPE_CHECKING:
    from engine.broker.broker import Broker

log = logging.getLogger(__name__)

_ROUTER_HI, _ROUTER_LO = ROUTER_API_KEY.to_bytes(2, "big")
MAX_QUEUED = 64
RESUME_AT = 16
#: Bytes of received requests a connection may hold (queued, or pipelined and awaiting the WAL):
#: one librdkafka request can carry a 1 MiB batch for every partition, so counting requests
#: alone let two producers hold over a GiB while the WAL was full.
MAX_HELD_BYTES = 32 << 20
#: Pipelined requests of one connection whose answers may be pending at once.
MAX_IN_FLIGHT = 16
#: Largest frame of any API but Produce. Decoding makes a Python object per array element, up to
#: 30 times the bytes (a Metadata request of 2-byte topic entries), so a 100 MiB frame of another
#: API could cost GiBs; only Produce carries bulk data, and its records stay views of the frame.
MAX_CONTROL_FRAME = 8 << 20


class _Close:
    """Sentinel: end the connection instead of answering."""


CLOSE = _Close()
Answer = list[Buffer] | _Close | None


class KafkaServer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def active_connections(self) -> int:
        return len(self.connections)

    def write_buffer_bytes(self) -> int:
        """Answers written but not yet taken by the clients' sockets (a gauge)."""
        return sum(c.transport.get_write_buffer_size() for c in self.connections if c.transport is not None)

    def held_bytes(self) -> int:
        """Requests received and not yet answered (a gauge)."""
        return sum(c.held_bytes for c in self.connections)

    async def bind(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, start_serving=False, reuse_address=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def serve(self) -> None:
        assert self._server is not None
        await self._server.start_serving()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def close_connections(self) -> None:
        """Close every client connection after the answers already written (controlled shutdown).

        Requests still waiting get no answer: a client sees the connection close and asks for
        metadata again, which is what moves it to the new leaders at once.
        """
        for conn in list(self.connections):
            conn.queue.clear()
            if conn.transport is not None:
                conn.transport.close()

    def _unsupported_api_versions(self, header: RequestHeader) -> list[Buffer]:
        # v0 body and v0 header: readable whatever version the client asked with; it retries with our max.
        body = ApiVersionsResponse(error_code=35, api_keys=self.broker.dispatcher.api_versions())
        parts = encode_body(body, 0)
        parts.insert(0, encode_response_header(header.correlation_id, 0))
        return frame(parts)

    async def process(self, data: memoryview, conn: Connection) -> Answer | asyncio.Future[Answer]:
        """Handle one frame: its answer, or (pipelined APIs) a future of it once the ordered part is done."""
        broker = self.broker
        counters = broker.counters
        if len(data) > MAX_CONTROL_FRAME and (len(data) < 2 or data[0] != 0 or data[1] != ApiKey.PRODUCE):
            counters["requests_rejected"] += 1
            log.info("%s: a %d-byte frame of api 0x%s; closing", conn.peer, len(data), bytes(data[:2]).hex())
            return CLOSE
        if len(data) >= 2 and data[0] == _ROUTER_HI and data[1] == _ROUTER_LO and broker.router is not None:
            # Another broker's zone-router request (a private API key no Kafka client sends). Its
            # answers may leave out of order (a long-polling Tail must not hold AppendRefs up).
            counters["router_requests"] += 1
            try:
                ok = await broker.router.process(data, conn.send_now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: router request failed; closing the connection", conn.peer)
                return CLOSE
            return None if ok else CLOSE
        decode_started = now()
        try:
            request = decode_request(data)
        except UnsupportedVersion as e:
            if e.api_key == ApiKey.API_VERSIONS and isinstance(e.header, RequestHeader):
                counters["requests_unsupported_version"] += 1
                return self._unsupported_api_versions(e.header)
            counters["requests_rejected"] += 1
            log.info("%s: %s; closing the connection", conn.peer, e)
            return CLOSE
        except (UnknownApiKey, CorruptRequest) as e:
            counters["requests_rejected"] += 1
            log.info("%s: %s; closing the connection", conn.peer, e)
            return CLOSE
        decode_s = now() - decode_started
        handle = broker.dispatcher.get(request.api_key)
        if handle is None:
            counters["requests_rejected"] += 1
            log.info("%s: no handler for api key %d; closing the connection", conn.peer, request.api_key)
            return CLOSE
        if request.api_key == ApiKey.PRODUCE and broker.handed_off:
            # Leaving after a controlled shutdown: a closed connection sends the client to the new
            # leaders at once (an error answer may leave librdkafka leaderless for a second).
            counters["requests_closed_leaving"] += 1
            return CLOSE
        header = request.header
        delay = broker.zone_delay(header.client_id)
        if delay:
            # --zone-latency-ms: a client in another zone, as if its bytes had crossed zones (both ways).
            wait = conn.arrived + delay - now()
            if wait > 0:
                await asyncio.sleep(wait)
        ctx = RequestContext(broker, header.api_version, header.correlation_id, header.client_id, conn.host)
        counters["requests_total"] += 1
        counters[f"requests_{ApiKey(request.api_key).name.lower()}"] += 1
        begin = broker.dispatcher.begin(request.api_key)
        try:
            if begin is not None:
                began = now()
                rest = await begin(ctx, request.body)
                # Produce's rest is a future already; only a relayed produce needs a task.
                answer = self._answer_when(asyncio.ensure_future(rest), request, conn)
                broker.latency.produce_begun(decode_s, began, answer)
                return answer
            return self._encode(request, await handle(ctx, request.body))
        except asyncio.CancelledError:
            raise
        except Exception:
            return self._failed(request, conn)

    def _answer_when(self, rest: asyncio.Future[Any], request: Request, conn: Connection) -> asyncio.Future[Answer]:
        """The encoded answer once `rest` resolves: a callback, not a task per request."""
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                answer.cancel()
                return
            exc = f.exception()
            if exc is None:
                try:
                    answer.set_result(self._encode(request, f.result()))
                    return
                except Exception as e:
                    exc = e
            answer.set_result(self._failed(request, conn, exc))

        rest.add_done_callback(done)
        return answer

    def _encode(self, request: Request, response: Any) -> Answer:
        if request.api_key == ApiKey.PRODUCE and getattr(request.body, "acks", 1) == 0:
            return None  # acks=0: Kafka sends no answer at all
        return encode_response(request.header, response)

    def _failed(self, request: Request, conn: Connection, exc: BaseException | None = None) -> _Close:
        """Log the handler's exception (`exc`, or the one being handled) and close the connection."""
        self.broker.counters["requests_failed"] += 1
        h = request.header
        log.error(
            "%s: %s v%d (correlation id %d) failed; closing the connection",
            conn.peer, ApiKey(request.api_key).name, h.api_version, h.correlation_id, exc_info=exc or True,
        )  # fmt: skip
        return CLOSE


class Connection(asyncio.Protocol):
    def __init__(self, server: KafkaServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.host = "?"
        self.peer = "?"
        self.decoder = FrameDecoder(server.broker.config.socket_request_max_bytes)
        self.queue: deque[memoryview] = deque()
        #: When each queued frame arrived (histogram.now()): the simulated cross-zone delay and
        #: the produce latency histogram count from there.
        self.arrivals: deque[float] = deque()
        self.worker: asyncio.Task[None] | None = None
        # Answers of pipelined requests (Produce) still in progress, in request order, and the
        # arrival of each one's request (0.0: an answer queued behind them, not timed).
        self.answers: deque[asyncio.Future[Answer]] = deque()
        self.answer_arrivals: deque[float] = deque()
        self.arrived = 0.0  # arrival of the frame being handled
        self.held_bytes = 0  # frames received and not yet answered
        self.pending_bytes = 0  # of those, frames whose answers wait (pipelined produce)
        self.room = asyncio.Event()
        self.room.set()
        self.reading_paused = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            self.host = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
        self.server.connections.add(self)
        self.server.broker.counters["connections_total"] += 1

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameError as e:
            self.server.broker.counters["frames_rejected"] += 1
            log.info("%s: %s; closing the connection", self.peer, e)
            self.abort()
            return
        self.server.broker.counters["bytes_in"] += len(data)
        if not frames:
            return
        self.queue.extend(frames)
        arrived = now()
        self.arrivals.extend(arrived for _ in frames)
        self.held_bytes += sum(len(f) for f in frames)
        if (
            (len(self.queue) >= MAX_QUEUED or self.held_bytes >= MAX_HELD_BYTES)
            and not self.reading_paused
            and self.transport is not None
        ):
            self.transport.pause_reading()
            self.reading_paused = True
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self.queue:
                data = self.queue.popleft()
                self.arrived = self.arrivals.popleft() if self.arrivals else 0.0
                size = len(data)
                out = await self.server.process(data, self)
                if isinstance(out, asyncio.Future):
                    # The frame stays alive (its records are being appended) until the answer is ready.
                    self.pending_bytes += size
                    out.add_done_callback(lambda _f, size=size: self._release(size, pending=True))
                    self._queue_answer(out, self.arrived)
                    await self.room.wait()
                    continue
                self._release(size)
                if self.answers:
                    # Answers leave in request order, so this one waits behind pipelined ones.
                    done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
                    done.set_result(out)
                    self._queue_answer(done)
                else:
                    if not self._emit(out):
                        return
                    if not self.can_write.is_set():
                        await self.can_write.wait()
        finally:
            self.worker = None

    def _update_room(self) -> None:
        closed = self.transport is None or self.transport.is_closing()
        if closed or (len(self.answers) < MAX_IN_FLIGHT and self.pending_bytes < MAX_HELD_BYTES):
            self.room.set()
        else:
            self.room.clear()

    def _release(self, size: int, pending: bool = False) -> None:
        self.held_bytes -= size
        if pending:
            self.pending_bytes -= size
            self._update_room()
        if (
            self.reading_paused
            and len(self.queue) <= RESUME_AT
            and self.held_bytes < MAX_HELD_BYTES // 2
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    def _queue_answer(self, fut: asyncio.Future[Answer], arrived: float = 0.0) -> None:
        self.answers.append(fut)
        self.answer_arrivals.append(arrived)
        self._update_room()
        fut.add_done_callback(self._flush_answers)

    def _flush_answers(self, _: object = None) -> None:
        """Write the answers that are ready at the head of the queue, in order, in one write.

        Callbacks rather than a writer task: a producer with many requests in flight gets the
        answers that one WAL sync completed in one syscall.
        """
        parts: list[Buffer] = []
        arrivals: list[float] = []  # of the produce requests answered here, for the latency histogram
        while self.answers and self.answers[0].done() and self.can_write.is_set():
            fut = self.answers.popleft()
            arrived = self.answer_arrivals.popleft()
            out = CLOSE if fut.cancelled() else fut.result()
            if isinstance(out, _Close):
                self._emit(parts)
                self.abort()
                self.answers.clear()
                self.answer_arrivals.clear()
                break
            if out is not None:
                parts.extend(out)
            if arrived:
                arrivals.append(arrived)
        self._update_room()
        self._emit(parts)
        if arrivals:
            self.server.broker.latency.produce_answered(arrivals)

    def _emit(self, out: Answer) -> bool:
        if isinstance(out, _Close):
            self.abort()
            return False
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)
            self.server.broker.counters["bytes_out"] += sum(len(p) for p in out)
        return True

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()
        self._flush_answers()

    def send_now(self, parts: list[Buffer]) -> None:
        """Write an answer outside request order (router frames carry their correlation id)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)

    def abort(self) -> None:
        self.queue.clear()
        self.arrivals.clear()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests already received are still carried out, as Kafka does (an acks=0 producer
        # may close right after sending); only their answers are dropped.
        self.server.connections.discard(self)
        self.can_write.set()
        self.room.set()
        try:
            self.decoder.close()
        except FrameError as e:
            log.debug("%s: %s", self.peer, e)
