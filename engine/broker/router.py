"""The zone router: clients talk only to brokers of their own zone; data crosses zones only as pointers.

Who does what (docs/zones.md has the whole picture):

- Metadata names, for every partition led in another zone, the partition's zone proxy: a
  broker of the client's zone picked by rendezvous hashing (stable, spread over the zone's
  brokers). A zone without live brokers gets the real leader.
- Produce to a proxy: the proxy writes the batches into a relay object in shared storage
  (engine/storage/relay.py) and sends the leader AppendRefs (where the bytes are). The leader
  reads them from shared storage, checks idempotence and ordering as for any produce, gives
  them offsets and writes only the reference into its WAL; it answers once that is durable.
- Fetch from a proxy: the proxy learns where the tail's batches are from the leader and reads
  the bytes from shared storage; what is already in S3 objects it reads from there itself.
  While its zone's consumers keep up, it Watches the partition: the leader pushes a notice
  (the new end and where its batches are) each time the end moves, one message per proxy
  for all the partitions that moved in a turn of its loop. Other offsets it asks with Tail.

Broker-to-broker messages travel on the Kafka port under a private API key (ROUTER_API_KEY)
that no Kafka client sends: msgpack bodies, answered in order per connection.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from engine.broker.errors import ANSWERED, BrokerError, error_code_for
from engine.protocol import CorruptRecords, ErrorCode
from engine.protocol.framing import frame
from engine.protocol.records import assign_offsets, read_batches
from engine.storage.errors import StorageError
from engine.storage.objects.format import Batch
from engine.storage.objects.store import ObjectStoreError
from engine.storage.relay import (
    ACCEPT_WINDOW_MS,
    Location,
    RefRecord,
    Relayed,
    RelayLog,
    RelayRef,
    RelayUnavailable,
    SharedReader,
)
from engine.util.futures import when_all
from engine.util.histogram import now

if TYPE_CHECKING:
    from engine.broker.broker import Broker
    from engine.broker.partition import AppendResult, Partition
    from engine.controller.api import BrokerRecord
    from engine.storage.stream import Stream

log = logging.getLogger(__name__)

#: Far above every Kafka API key; a Kafka client never sends it.
ROUTER_API_KEY = 32_001
#: What _start_reads began for an AppendRefs: a read per item (None: refused), the relay
#: objects counted in the relay floor meanwhile, and the time of arrival.
_Started = tuple[list["asyncio.Future[bytes] | None"], list[int], int]
_HEAD = struct.Struct(">hhi")  # api key, method, correlation id
_CORR = struct.Struct(">i")
APPEND_REFS = 1
TAIL = 2
OFFSETS = 3
WATCH = 4
LIST, EPOCH = 1, 2  # OffsetItem kinds: ListOffsets, OffsetForLeaderEpoch
# A Watch's notices are tails too: counted with them.
_METHOD_BYTES = {
    APPEND_REFS: "router_append_refs_bytes",
    TAIL: "router_tail_bytes",
    OFFSETS: "router_offsets_bytes",
    WATCH: "router_tail_bytes",
}
#: How long a leader keeps a Watch item without hearing of it again; a proxy renews the items its
#: consumers still wait on after _RENEW_S, so the two never disagree about one being watched.
WATCH_LEASE_S = 30.0
_RENEW_S = 10.0
#: Tail entries a proxy keeps per watched partition (for consumers a little behind the end; a
#: few KiB each, so thousands of partitions stay cheap).
_WINDOW_ENTRIES = 64
#: Bytes of tail batches a proxy keeps for its zone's consumers (all partitions).
TAIL_CACHE_BYTES = 64 << 20


# --- proxy choice -------------------------------------------------------------------------------


def proxy_for(topic: str, partition: int, zone: str, brokers: Iterable[BrokerRecord]) -> int | None:
    """The broker of `zone` that proxies this partition: highest rendezvous hash, so adding or
    removing a broker moves only the partitions it wins or held."""
    best: tuple[int, int] | None = None
    key = f"{topic}\x00{partition}\x00".encode()
    for b in brokers:
        if b.zone != zone:
            continue
        score = zlib.crc32(key + str(b.id).encode())
        if best is None or (score, -b.id) > best:
            best = (score, -b.id)
    return None if best is None else -best[1]


# --- messages ------------------------------------------------------------------------------------


class AppendRef(msgspec.Struct, array_like=True):
    topic: str
    partition: int
    leader_epoch: int  # the client's current leader epoch (-1: not sent)
    ref: RelayRef
    #: False: the proxy wrote the relay file without an fdatasync; the leader's WAL syncs it
    #: before the REF record (engine/storage/relay.py, RelayLog.leader_syncs).
    durable: bool = True


class AppendRefs(msgspec.Struct, array_like=True):
    items: list[AppendRef]
    timeout_ms: int


class RefResult(msgspec.Struct, array_like=True):
    error_code: int = 0
    message: str | None = None
    base_offset: int = -1
    log_append_time: int = -1
    log_start_offset: int = -1


class TailItem(msgspec.Struct, array_like=True):
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    max_bytes: int


class Tail(msgspec.Struct, array_like=True):
    items: list[TailItem]


class Watch(msgspec.Struct, array_like=True):
    """Proxy -> leader: push me where these partitions' tails are, from `offset` on, as they move.
    An item already watched (same leader epoch) is only renewed."""

    items: list[TailItem]


_KINDS = ("relay", "ring", "s3wal")


class TailEntry(msgspec.Struct, array_like=True, omit_defaults=True):
    """A durable batch and where its bytes are: a Location, its key an index into TailResult.keys
    (a tail's entries share a few keys; these are most of what crosses zones for a consumer)."""

    base_offset: int
    record_count: int
    kind: int  # index in _KINDS
    key: int
    offset: int
    length: int
    position: int = -1
    crc: int = 0
    leader_epoch: int = -1  # for relayed bytes: what the leader gave them (RefRecord)
    log_append_time: int = -1

    def location(self, keys: list[str]) -> Location:
        return Location(_KINDS[self.kind], keys[self.key], self.offset, self.length, self.position, self.crc)


class TailResult(msgspec.Struct, array_like=True):
    error_code: int = 0
    message: str | None = None
    high_watermark: int = -1
    log_start_offset: int = -1
    committed_offset: int = -1
    stream_id: int = -1
    leader_epoch: int = -1
    entries: list[TailEntry] = []
    keys: list[str] = []


class Moved(msgspec.Struct, array_like=True):
    """Leader -> proxy, in a Watch's notice: a partition's end moved (or its watch ended: an error)."""

    topic: str
    partition: int
    result: TailResult


class OffsetItem(msgspec.Struct, array_like=True):
    kind: int  # LIST: value is a timestamp; EPOCH: value is a leader epoch
    topic: str
    partition: int
    current_leader_epoch: int
    value: int


class OffsetResult(msgspec.Struct, array_like=True):
    error_code: int = 0
    timestamp: int = -1
    offset: int = -1
    leader_epoch: int = -1


_ENC = msgspec.msgpack.Encoder()
_DEC_OFFSETS = msgspec.msgpack.Decoder(list[OffsetItem])
_DEC_OFFSET_RESULTS = msgspec.msgpack.Decoder(list[OffsetResult])
_DEC_REFS = msgspec.msgpack.Decoder(AppendRefs)
_DEC_REF_RESULTS = msgspec.msgpack.Decoder(list[RefResult])
_DEC_TAIL = msgspec.msgpack.Decoder(Tail)
_DEC_TAIL_RESULTS = msgspec.msgpack.Decoder(list[TailResult])
_DEC_WATCH = msgspec.msgpack.Decoder(Watch)
_DEC_MOVED = msgspec.msgpack.Decoder(list[Moved])


def materialize(raw: bytes, base_offset: int, rec: RefRecord) -> bytes:
    """Relayed batches as the leader appended them: its offsets, leader epoch and append time."""
    buf = bytearray(raw)
    view = memoryview(buf)
    assign_offsets(
        view,
        read_batches(view, verify_crc=False),
        base_offset,
        log_append_time_ms=rec.log_append_time if rec.log_append_time >= 0 else None,
        partition_leader_epoch=rec.leader_epoch,
    )
    return bytes(buf)


# --- the client side of the channel -------------------------------------------------------------


class RouterClient:
    """One connection to another broker; requests leave in the order they are sent."""

    def __init__(self, host: str, port: int, on_bytes: Any, delay_s: float = 0.0) -> None:
        self.host = host
        self.port = port
        self._delay = delay_s  # --zone-latency-ms: both ways, before the request leaves
        self._delayed: list[tuple[float, bytes]] = []
        self._delayer: asyncio.Task[None] | None = None
        self._on_bytes = on_bytes  # (sent, received, method) -> None, for the zone ledger
        self._transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []
        self._waiting: OrderedDict[int, asyncio.Future[bytes]] = OrderedDict()
        self._methods: dict[int, int] = {}
        self._corr = 0
        # Every Watch of this connection shares one correlation id; its notices come back with it.
        self._watch_corr = -1
        self._on_notice: Callable[[bytes | BaseException], None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.closed = False

    def send(self, method: int, body: bytes) -> asyncio.Future[bytes]:
        """Queue a request now (order matters for idempotent producers); the answer's body later."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(ConnectionError("router client closed"))
            return fut
        corr = self._next_corr()
        self._waiting[corr] = fut
        self._methods[corr] = method
        self._queue(method, corr, body)
        return fut

    def watch(self, body: bytes, on_notice: Callable[[bytes | BaseException], None]) -> None:
        """Send a Watch; `on_notice` gets each notice's body, or the error that ends them all
        (the connection failed: the leader forgets this connection's watches)."""
        if self.closed:
            on_notice(ConnectionError("router client closed"))
            return
        self._on_notice = on_notice
        if self._watch_corr < 0:
            self._watch_corr = self._next_corr()
        self._queue(WATCH, self._watch_corr, body)

    def _next_corr(self) -> int:
        self._corr = (self._corr + 1) & 0x7FFFFFFF
        if self._corr == self._watch_corr:
            self._corr = (self._corr + 1) & 0x7FFFFFFF
        return self._corr

    def _queue(self, method: int, corr: int, body: bytes) -> None:
        data = _HEAD.pack(ROUTER_API_KEY, method, corr) + body
        msg = struct.pack(">i", len(data)) + data
        self._on_bytes(len(msg), 0, method)
        if self._delay:
            self._delayed.append((asyncio.get_running_loop().time() + self._delay, msg))
            if self._delayer is None or self._delayer.done():
                self._delayer = asyncio.get_running_loop().create_task(self._send_delayed())
        else:
            self._write(msg)

    async def _send_delayed(self) -> None:
        loop = asyncio.get_running_loop()
        while self._delayed:
            due, msg = self._delayed[0]
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            self._delayed.pop(0)
            self._write(msg)

    def _write(self, msg: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(msg)
        else:
            self._outbox.append(msg)
            if self._connecting is None or self._connecting.done():
                self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Answers(self), self.host, self.port), 5.0
            )
        except (OSError, TimeoutError) as e:
            self._fail(ConnectionError(f"broker {self.host}:{self.port} unreachable: {e}"))
            return
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        for msg in self._outbox:
            transport.write(msg)
        self._outbox.clear()

    def _answered(self, data: bytes) -> None:
        """One answer frame (without its size): resolves its request's future on the spot (a
        protocol callback, not a reader task: one turn of the loop less per answer)."""
        (corr,) = _CORR.unpack_from(data)
        if corr == self._watch_corr and self._on_notice is not None:
            self._on_bytes(0, len(data) + 4, WATCH)
            if self._delay:  # a notice crosses once: half of a request's round trip
                asyncio.get_running_loop().call_later(self._delay / 2, self._on_notice, data[4:])
            else:
                self._on_notice(data[4:])
            return
        self._on_bytes(0, len(data) + 4, self._methods.pop(corr, 0))
        fut = self._waiting.pop(corr, None)
        if fut is not None and not fut.done():
            fut.set_result(data[4:])

    def _fail(self, err: BaseException) -> None:
        waiting, self._waiting = self._waiting, OrderedDict()
        self._methods.clear()
        self._outbox.clear()
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(err)
        on_notice, self._on_notice, self._watch_corr = self._on_notice, None, -1
        if on_notice is not None:
            on_notice(err)
        if self._transport is not None:
            self._transport.close()
        self._transport = None

    async def close(self) -> None:
        self.closed = True
        self._fail(ConnectionError("router client closed"))
        for t in (self._connecting, self._delayer):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t


class _Answers(asyncio.Protocol):
    """The answers on a RouterClient's connection: size-prefixed frames, in any order."""

    def __init__(self, client: RouterClient) -> None:
        self.client = client
        self.buf = bytearray()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        at = 0
        while len(buf) - at >= 4:
            (n,) = struct.unpack_from(">i", buf, at)
            if len(buf) - at - 4 < n:
                break
            self.client._answered(bytes(buf[at + 4 : at + 4 + n]))
            at += 4 + n
        if at:
            del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        c = self.client
        if c._transport is not None and c._transport is not self.transport:
            return  # an older connection's end: the client has a newer one
        c._fail(ConnectionError(f"broker {c.host}:{c.port} closed the connection: {exc or 'EOF'}"))


# --- Watch: the leader's end pushed to zone proxies ---------------------------------------------


class _Watched:
    """A partition a proxy watches: the offset its next notice starts from."""

    __slots__ = ("expires", "leader_epoch", "max_bytes", "offset")

    def __init__(self, offset: int, leader_epoch: int, max_bytes: int, expires: float) -> None:
        self.offset = offset
        self.leader_epoch = leader_epoch
        self.max_bytes = max_bytes
        self.expires = expires


class _Watcher:
    """At a leader: one proxy connection's watched partitions, and those that moved since its last notice."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self.send = send
        self.corr = 0
        self.items: dict[tuple[str, int], _Watched] = {}
        self.pending: set[tuple[str, int]] = set()
        self.scheduled = False


class _Window:
    """At a proxy: what a partition's leader said of its tail (Tail answers and Watch notices):
    its end, and where the batches of the last stretch before it are."""

    def __init__(self, leader_id: int, leader_epoch: int) -> None:
        self.leader_id = leader_id
        self.leader_epoch = leader_epoch  # the epoch the leader checked, as the consumer sent it
        self.result: TailResult | None = None  # the last end, log start, committed end, stream (no entries)
        self.entries: list[TailEntry] = []  # contiguous, their keys indexes into self.keys
        self.keys: list[str] = []
        self.watching = False
        self.renewed = 0.0
        self.changed: asyncio.Future[None] | None = None

    def learn(self, res: TailResult) -> None:
        if res.error_code:
            self.watching = False
            self.result, self.entries, self.keys = None, [], []
            self.wake()
            return
        if self.result is not None and self.result.stream_id != res.stream_id:
            self.entries, self.keys = [], []
        elif self.result is not None and res.high_watermark < self.result.high_watermark:
            # Older than a notice already learned: a Tail's answer is read a turn of the loop after
            # it arrived, a notice at once. Its end would make a consumer wait for one already here.
            return
        self.result = TailResult(0, None, res.high_watermark, res.log_start_offset, res.committed_offset,
                                 res.stream_id, res.leader_epoch)  # fmt: skip
        if res.entries:
            last = self.entries[-1] if self.entries else None
            joins = last is not None and last.base_offset + last.record_count == res.entries[0].base_offset
            if not joins or len(res.entries) >= _WINDOW_ENTRIES:
                self.entries, self.keys = [], []
            if len(self.keys) > 64:  # keys of entries trimmed long ago
                self._rekey()
            # New entries, not the answer's changed: its caller reads them with the answer's keys.
            # (Entries once here are never changed either: a fetch may be reading a slice of them.)
            index = {k: i for i, k in enumerate(self.keys)}
            for e in res.entries[-_WINDOW_ENTRIES:]:  # a long answer (a consumer behind): its end only
                key = res.keys[e.key]
                at = index.get(key)
                if at is None:
                    at = index[key] = len(self.keys)
                    self.keys.append(key)
                self.entries.append(msgspec.structs.replace(e, key=at))
            if len(self.entries) > _WINDOW_ENTRIES:
                del self.entries[: len(self.entries) - _WINDOW_ENTRIES]
        self.wake()

    def _rekey(self) -> None:
        used = sorted({e.key for e in self.entries})
        remap = {old: new for new, old in enumerate(used)}
        self.keys = [self.keys[old] for old in used]
        self.entries = [msgspec.structs.replace(e, key=remap[e.key]) for e in self.entries]

    def result_at(self, offset: int) -> TailResult | None:
        """The tail from `offset` as a Tail answer would give it; None when that is not known here."""
        known = self.result
        if known is None or offset > known.high_watermark:
            return None
        if offset == known.high_watermark:
            return known
        entries = self.entries
        if not entries or offset < entries[0].base_offset:
            return None
        i = bisect.bisect_right(entries, offset, key=lambda e: e.base_offset) - 1
        e = entries[i]
        if offset >= e.base_offset + e.record_count:
            return None  # past the last entry known (the leader sent no more than max_bytes)
        return TailResult(0, None, known.high_watermark, known.log_start_offset, known.committed_offset,
                          known.stream_id, known.leader_epoch, entries[i : i + 256], self.keys)  # fmt: skip

    def wake(self) -> None:
        changed, self.changed = self.changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)


# --- the router ------------------------------------------------------------------------------


class Router:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        cfg = broker.config
        wal = cfg.storage.wal
        #: Off with the `file` WAL: nothing is shared to relay through (said at `amq cluster up`).
        self.enabled = cfg.zone_router and wal.kind in ("nfs", "s3")
        self.relay: RelayLog | None = None
        self._clients: dict[int, RouterClient] = {}
        self._inflight: dict[int, int] = {}  # created ms of references being appended -> count
        self._tail_cache: OrderedDict[tuple[int, int], Batch] = OrderedDict()
        self._tail_cache_bytes = 0
        # Proxy: what each partition's leader said of its tail (see watch()).
        self._windows: dict[tuple[str, int], _Window] = {}
        # Leader: proxies' watches, by their connection and by partition; the streams listened to.
        self._watchers: dict[Callable[[list[Any]], None], _Watcher] = {}
        self._watched_by: dict[tuple[str, int], set[_Watcher]] = {}
        self._armed: dict[tuple[str, int], tuple[Stream, asyncio.Future[None]]] = {}
        self.horizon_ms = -1
        self._tasks: set[asyncio.Task[None]] = set()
        #: The last AppendRefs step of each connection (by its answer callable), to append in order.
        self._chains: dict[Callable[[list[Any]], None], asyncio.Task[Any]] = {}
        # The routing brokers by id, for the metadata version (and this broker's epoch) they were
        # built from: every produce and fetch in another zone asks, and building it cost more than
        # the rest of leader_to_proxy (a profiled zones.py run).
        self._routing: tuple[tuple[int, int, int], list[BrokerRecord], dict[int, BrokerRecord]] | None = None

    async def start(self) -> None:
        if not self.enabled:
            return
        b = self.broker
        wal = b.config.storage.wal
        assert b._store is not None
        self.relay = RelayLog(wal.kind, b._store, wal.path if wal.kind == "nfs" else None, wal.wal_id)
        await self.relay.open()

    async def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        for t in list(self._tasks):
            t.cancel()
        for c in self._clients.values():
            await c.close()
        self._clients.clear()

    # --- who answers for a partition --------------------------------------------------------

    def _routing_brokers(self) -> list[BrokerRecord]:
        return self._routing_view()[0]

    def _routing_view(self) -> tuple[list[BrokerRecord], dict[int, BrokerRecord]]:
        b = self.broker
        key = (b.image.version, b.broker_epoch, b.advertised_port)
        if self._routing is None or self._routing[0] != key:
            brokers = [x for x in b.live_brokers() if x.state == "running"]
            self._routing = (key, brokers, {x.id: x for x in brokers})
        return self._routing[1], self._routing[2]

    def metadata_leader(self, topic: str, partition: int, leader: int, client_zone: str) -> int:
        """The broker a client of `client_zone` should see as this partition's leader."""
        if not self.enabled:
            return leader
        brokers = self._routing_brokers()
        real = next((x for x in brokers if x.id == leader), None)
        if real is None or real.zone == client_zone:
            return leader
        proxy = proxy_for(topic, partition, client_zone, brokers)
        return leader if proxy is None else proxy

    def leader_to_proxy(self, topic: str, partition: int) -> BrokerRecord | None:
        """The leader, when this broker should relay for the partition instead of leading it."""
        if not self.enabled or self.relay is None:
            return None
        t = self.broker.image.topics.get(topic)
        if t is None or not 0 <= partition < len(t.partitions):
            return None
        leader = t.partitions[partition].leader
        if leader == self.broker.node_id:
            return None
        return self._routing_view()[1].get(leader)

    def _client(self, b: BrokerRecord) -> RouterClient:
        c = self._clients.get(b.id)
        if c is None or c.closed or (c.host, c.port) != (b.host, b.port):
            zone = b.zone

            def count(sent: int, received: int, method: int, zone: str = zone) -> None:
                self.broker.ledger.add(self.broker.zone, zone, "broker", sent)
                self.broker.ledger.add(zone, self.broker.zone, "broker", received)
                self.broker.counters[_METHOD_BYTES.get(method, "router_other_bytes")] += sent + received

            ms = self.broker.config.zone_latency_ms if b.zone != self.broker.zone else 0
            c = RouterClient(b.host, b.port, count, 2 * ms / 1000)
            self._clients[b.id] = c
        return c

    # --- proxy: produce ---------------------------------------------------------------------

    def relay_produce(
        self,
        items: list[tuple[str, int, int, memoryview]],
        timeout_ms: int,
        deliver: Callable[[list[RefResult]], None],
    ) -> None:
        """Relay (topic, partition, leader epoch, records) to their leaders; `deliver(results)`,
        in item order, once each leader answered or the timeout passed (called once, from a
        callback: a future would cost a turn of the loop).

        Called in request order; the relay write and the AppendRefs to each leader keep that order.
        """
        assert self.relay is not None
        began = now()
        lat = self.broker.latency.relay
        written = self.relay.write([bytes(r) for _, _, _, r in items])
        self.broker.counters["relayed_batches"] += len(items)
        self.broker.counters["relayed_bytes"] += sum(len(r) for *_, r in items)

        def sent(refs_fut: asyncio.Future[Relayed]) -> None:
            # Runs in the order the relay writes finished, which is the order of the requests.
            lat["write"].observe(now() - began)
            if refs_fut.exception() is not None:
                failed = RefResult(int(ErrorCode.KAFKA_STORAGE_ERROR), f"relay write failed: {refs_fut.exception()}")
                deliver([failed] * len(items))
                return
            refs, durable = refs_fut.result()
            by_leader: dict[int, list[int]] = {}
            answers: dict[int, asyncio.Future[bytes]] = {}
            results: list[RefResult | None] = [None] * len(items)
            for i, (topic, partition, _, _) in enumerate(items):
                leader = self.leader_to_proxy(topic, partition)
                if leader is None:
                    results[i] = RefResult(int(ErrorCode.NOT_LEADER_OR_FOLLOWER), "the partition moved; ask again")
                    continue
                by_leader.setdefault(leader.id, []).append(i)
            for lid, idxs in by_leader.items():
                leader = self._routing_view()[1][lid]
                req = AppendRefs(
                    [AppendRef(items[i][0], items[i][1], items[i][2], refs[i], durable) for i in idxs], timeout_ms
                )
                answers[lid] = self._client(leader).send(APPEND_REFS, _ENC.encode(req))
            self._collect(by_leader, answers, results, deliver, timeout_ms / 1000 + 5)

        written.add_done_callback(sent)

    def _collect(
        self,
        by_leader: dict[int, list[int]],
        answers: dict[int, asyncio.Future[bytes]],
        results: list[RefResult | None],
        deliver: Callable[[list[RefResult]], None],
        timeout_s: float,
    ) -> None:
        """Each leader's answer into `results`, then `deliver`: no task (a relayed produce is on the
        produce path; each task costs turns of the loop)."""
        lat, sent_at = self.broker.latency.relay["leader"], now()
        for answer in answers.values():
            answer.add_done_callback(lambda _f: lat.observe(now() - sent_at))

        def finish() -> None:
            for lid, idxs in by_leader.items():
                answer = answers[lid]
                if not answer.done():
                    # A leader that never answers (paused, or a lost answer) must not hold the client for ever.
                    answer.add_done_callback(_retrieved)
                    got = [RefResult(int(ErrorCode.REQUEST_TIMED_OUT), f"leader {lid} did not answer")] * len(idxs)
                else:
                    try:
                        got = _DEC_REF_RESULTS.decode(answer.result())
                    except (ConnectionError, msgspec.DecodeError) as e:
                        got = [RefResult(int(ErrorCode.NOT_LEADER_OR_FOLLOWER), f"leader {lid}: {e}")] * len(idxs)
                for i, r in zip(idxs, got, strict=False):
                    results[i] = r
            deliver([r or RefResult(int(ErrorCode.UNKNOWN_SERVER_ERROR), "no answer") for r in results])

        when_all(list(answers.values()), timeout_s, finish)

    # --- leader: AppendRefs -------------------------------------------------------------------

    def relay_floor_ms(self) -> int:
        """The oldest relay object this broker may still need (heartbeats; see relay.py)."""
        b = self.broker
        if b.storage is None:
            return -1
        floor = int(time.time() * 1000) - ACCEPT_WINDOW_MS
        oldest = b.storage.uploader.oldest_relay_ms()
        if oldest is not None:
            floor = min(floor, oldest)
        if self._inflight:
            floor = min(floor, min(self._inflight))
        return floor

    async def horizon(self, horizon_ms: int) -> None:
        """The controller's relay horizon: relay objects before it are needed by nobody."""
        self.horizon_ms = horizon_ms
        if self.relay is not None and horizon_ms > 0:
            n = await self.relay.delete_before(horizon_ms)
            self.broker.counters["relay_objects_deleted"] += n

    def _start_reads(self, req: AppendRefs) -> _Started:
        """Start reading every referenced batch now (a request's reads overlap the appends of the
        requests before it); refuse references older than the accept window."""
        storage = self.broker.storage
        now_ms = int(time.time() * 1000)
        reads: list[asyncio.Future[bytes] | None] = []
        created: list[int] = []
        started, read_lat = now(), self.broker.latency.relay["read"]
        loop = asyncio.get_running_loop()
        for item in req.items:
            ms = item.ref.created_ms
            if storage is None or now_ms - ms > ACCEPT_WINDOW_MS:
                reads.append(None)
                continue
            # Counted in the relay floor from now on: the relay object must outlive this append.
            self._inflight[ms] = self._inflight.get(ms, 0) + 1
            created.append(ms)
            read: asyncio.Future[bytes]
            try:
                body = storage.shared.read_ref_now(item.ref)
            except RelayUnavailable as e:
                read = loop.create_future()
                read.set_exception(e)
            else:
                if body is not None:  # read on the loop: no task, no turn of the loop to wait for
                    read = loop.create_future()
                    read.set_result(body)
                    read_lat.observe(now() - started)
                else:
                    read = asyncio.ensure_future(storage.shared.read_ref(item.ref))
                    read.add_done_callback(lambda _f, t=started: read_lat.observe(now() - t))
            reads.append(read)
        return reads, created, now_ms

    def _append_now(self, req: AppendRefs, started: _Started, answer: Callable[[list[RefResult]], None]) -> bool:
        """Append on the spot when nothing has to be waited for (the connection's previous
        AppendRefs appended, every read done on the loop, every partition open): no task, no
        turn of the loop before the WAL has the REF records. False: take the async way."""
        reads = started[0]
        parts: list[Partition | None] = []
        for item, read in zip(req.items, reads, strict=True):
            if read is not None and not read.done():
                return False
            part = self.broker.partition_now(item.topic, item.partition)
            if part is None and read is not None:
                return False
            parts.append(part)
        self._when_durable(*self._append_items(req, started, parts), req.timeout_ms, answer)
        return True

    async def _append_refs(
        self,
        req: AppendRefs,
        started: _Started,
        before: asyncio.Task[Any] | None,
        answer: Callable[[list[RefResult]], None],
    ) -> None:
        """Append after the connection's previous AppendRefs (order is what idempotence checks)."""
        try:
            if before is not None and not before.done():
                await asyncio.wait([before])
            parts: list[Partition | BaseException | None] = []
            for item, read in zip(req.items, started[0], strict=True):
                if read is None:
                    parts.append(None)
                    continue
                try:
                    parts.append(await self.broker.partition(item.topic, item.partition))
                except (BrokerError, StorageError, ObjectStoreError) as e:
                    parts.append(e)
                with contextlib.suppress(Exception):  # the append reports it
                    await read
            self._when_durable(*self._append_items(req, started, parts), req.timeout_ms, answer)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # A bug, not a refusal: the proxy still gets an answer (its client retries).
            log.exception("AppendRefs failed")
            answer([RefResult(int(ErrorCode.UNKNOWN_SERVER_ERROR), str(e))] * len(req.items))

    def _append_items(
        self, req: AppendRefs, started: _Started, parts: Sequence[Partition | BaseException | None]
    ) -> tuple[list[RefResult], list[tuple[int, AppendResult]]]:
        """Append each item whose read is done and whose partition is open (`parts`); the results
        and the appends to wait for."""
        b = self.broker
        reads, created, now_ms = started
        results = [RefResult() for _ in req.items]
        pending: list[tuple[int, AppendResult]] = []
        try:
            for i, item in enumerate(req.items):
                res = results[i]
                read = reads[i]
                if read is None:
                    res.error_code = int(ErrorCode.REQUEST_TIMED_OUT)
                    res.message = "the relayed batch is older than the relay accept window"
                    continue
                try:
                    part = parts[i]
                    if isinstance(part, BaseException):
                        raise part
                    assert part is not None  # None only where the read was refused
                    part.check_leader_epoch(item.leader_epoch)
                    records = memoryview(bytearray(read.result()))
                    batches = read_batches(records)
                    assert b.storage is not None  # else the read was refused
                    sync = None if item.durable else b.storage.shared.relay_path(item.ref)
                    result = part.append(records, batches, now_ms, relay=item.ref, relay_sync=sync)
                    b.counters["relayed_appends"] += 1
                    b.counters["produce_bytes"] += len(records)
                    b.counters["produce_batches"] += len(batches)
                    res.base_offset = result.base_offset
                    res.log_append_time = result.log_append_time
                    res.log_start_offset = part.log_start_offset
                    pending.append((i, result))
                except RelayUnavailable as e:
                    res.error_code, res.message = int(ErrorCode.KAFKA_STORAGE_ERROR), str(e)
                except CorruptRecords as e:
                    res.error_code, res.message = int(e.error_code), str(e)
                except (BrokerError, StorageError, ObjectStoreError) as e:
                    res.error_code, res.message = int(error_code_for(e)), str(e)
        finally:
            for r in reads:
                if r is not None and not r.done():
                    r.cancel()
            for ms in created:
                n = self._inflight[ms] - 1
                if n:
                    self._inflight[ms] = n
                else:
                    del self._inflight[ms]
        return results, pending

    def _when_durable(
        self,
        results: list[RefResult],
        pending: list[tuple[int, AppendResult]],
        timeout_ms: int,
        answer: Callable[[list[RefResult]], None],
    ) -> None:
        """`answer(results)` once every append is durable or the timeout passed, as a direct
        produce waits (handlers/produce.py)."""
        if not pending:
            answer(results)
            return
        appended = now()

        def finish() -> None:
            self.broker.latency.relay["durable"].observe(now() - appended)
            for i, result in pending:
                res, fut = results[i], result.done
                if not fut.done():
                    res.error_code, res.message = int(ErrorCode.REQUEST_TIMED_OUT), "not durable in time"
                    res.base_offset = -1
                    fut.add_done_callback(_retrieved)
                elif fut.cancelled():
                    res.error_code, res.message = int(ErrorCode.NOT_LEADER_OR_FOLLOWER), "the partition closed"
                    res.base_offset = -1
                elif (exc := fut.exception()) is not None:
                    res.error_code, res.message, res.base_offset = int(error_code_for(exc)), str(exc), -1
            answer(results)

        when_all([result.done for _, result in pending], max(timeout_ms, 1) / 1000, finish)

    # --- leader: Tail ---------------------------------------------------------------------------

    async def _tail(self, req: Tail) -> list[TailResult]:
        """A Tail with a partition not open on the spot: opened (or refused) first."""
        parts: list[Partition | BaseException] = []
        for item in req.items:
            try:
                parts.append(await self.broker.partition(item.topic, item.partition))
            except ANSWERED as e:
                parts.append(e)
        return self._tail_pass(req.items, parts)

    def _tail_now(self, req: Tail) -> list[TailResult] | None:
        """The answer on the spot when every partition is open: no task. None: the async way."""
        found = [self.broker.partition_now(item.topic, item.partition) for item in req.items]
        parts = [p for p in found if p is not None]
        if len(parts) < len(found):
            return None
        return self._tail_pass(req.items, parts)

    def _tail_pass(self, items: list[TailItem], parts: Sequence[Partition | BaseException]) -> list[TailResult]:
        results: list[TailResult] = []
        for item, part in zip(items, parts, strict=True):
            try:
                if isinstance(part, BaseException):
                    raise part
                part.check_leader_epoch(item.leader_epoch)
                results.append(self._tail_from(part, part.ready, item.offset, item.max_bytes))
            except ANSWERED as e:
                results.append(TailResult(int(error_code_for(e)), str(e)))
        return results

    def _tail_from(self, part: Partition, stream: Stream, offset: int, max_bytes: int) -> TailResult:
        """The partition's end, and where its batches from `offset` are (none when at the end)."""
        end = stream.end_offset
        res = TailResult(0, None, end, stream.start_offset, stream.committed_offset, stream.stream_id,
                         part.leader_epoch)  # fmt: skip
        if offset < end:
            res.entries, res.keys = self._locations(stream.stream_id, offset, end, max_bytes)
        return res

    def _locations(self, stream_id: int, offset: int, end: int, max_bytes: int) -> tuple[list[TailEntry], list[str]]:
        storage = self.broker.storage
        assert storage is not None
        cache = storage.log_cache.streams.get(stream_id)
        keys: dict[str, int] = {}
        if cache is None:
            return [], []
        entries = cache.entries
        lo, hi = cache.head, len(entries)
        while lo < hi:  # the last entry whose base offset is <= offset
            mid = (lo + hi) // 2
            if entries[mid].batch.base_offset <= offset:
                lo = mid + 1
            else:
                hi = mid
        i = max(cache.head, lo - 1)
        out: list[TailEntry] = []
        size = 0
        while i < len(entries) and size < max_bytes:
            e = entries[i]
            i += 1
            batch = e.batch
            if batch.end_offset > end:
                break
            if batch.end_offset <= offset:
                continue
            if not out and batch.base_offset > offset:
                break  # the cache starts after `offset`: the proxy reads S3 objects
            found = storage.locate(e)
            if found is None:
                break
            loc, rec = found
            key = keys.setdefault(loc.key, len(keys))
            out.append(TailEntry(batch.base_offset, batch.record_count, _KINDS.index(loc.kind), key, loc.offset,
                                 loc.length, loc.position, loc.crc, rec.leader_epoch if rec else -1,
                                 rec.log_append_time if rec else -1))  # fmt: skip
            size += len(batch.payload)
        return out, list(keys)

    # --- leader: Watch ------------------------------------------------------------------------

    def _watch(self, req: Watch, corr: int, send: Callable[[list[Any]], None]) -> None:
        """Register (or renew) a proxy's watched partitions; what already moved is sent at once."""
        w = self._watchers.get(send)
        if w is None:
            w = self._watchers[send] = _Watcher(send)
            self._sweep_watches()  # a proxy that reconnected left its old connection's watcher
        w.corr = corr
        expires = time.monotonic() + WATCH_LEASE_S
        for it in req.items:
            key = (it.topic, it.partition)
            cur = w.items.get(key)
            if cur is not None and cur.leader_epoch == it.leader_epoch:
                cur.expires = expires
                continue
            w.items[key] = _Watched(it.offset, it.leader_epoch, it.max_bytes, expires)
            self._watched_by.setdefault(key, set()).add(w)
            w.pending.add(key)
        self._schedule(w)

    def _schedule(self, w: _Watcher) -> None:
        # One notice per proxy for every partition that moved in this turn of the loop (a WAL
        # group's appends all become durable in one turn).
        if w.pending and not w.scheduled:
            w.scheduled = True
            asyncio.get_running_loop().call_soon(self._notify, w)

    def _notify(self, w: _Watcher) -> None:
        w.scheduled = False
        pending, w.pending = w.pending, set()
        moved: list[Moved] = []
        t = time.monotonic()
        for key in pending:
            it = w.items.get(key)
            if it is None:
                continue
            if it.expires < t:
                self._unwatch(w, key)
                continue
            res = TailResult()
            part = self.broker.partition_now(*key)
            try:
                if part is None:
                    # Led elsewhere, or not open here this moment: the proxy asks a Tail, which waits for it.
                    raise BrokerError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "not open here now; ask again")
                part.check_leader_epoch(it.leader_epoch)
                stream = part.ready
                self._arm(key, stream)
                end = stream.end_offset
                if end <= it.offset:
                    continue
                res = self._tail_from(part, stream, it.offset, it.max_bytes)
                last = res.entries[-1] if res.entries else None
                it.offset = end if last is None else last.base_offset + last.record_count
                if it.offset < end:
                    w.pending.add(key)  # more than max_bytes moved: the rest in the next notice
            except ANSWERED as e:
                res.error_code, res.message = int(error_code_for(e)), str(e)
                self._unwatch(w, key)
            moved.append(Moved(key[0], key[1], res))
        if moved:
            w.send(frame([_CORR.pack(w.corr), _ENC.encode(moved)]))
        self._schedule(w)

    def _arm(self, key: tuple[str, int], stream: Stream) -> None:
        """Hear of the next move of `stream`'s end (or of it closing)."""
        armed = self._armed.get(key)
        if armed is not None and armed[0] is stream and not armed[1].done():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._armed[key] = (stream, fut)
        fut.add_done_callback(partial(self._end_moved, key))
        stream.add_data_waiter(fut)

    def _end_moved(self, key: tuple[str, int], fut: asyncio.Future[None]) -> None:
        armed = self._armed.get(key)
        if armed is not None and armed[1] is fut:
            del self._armed[key]
        for w in self._watched_by.get(key, ()):
            w.pending.add(key)
            self._schedule(w)

    def _unwatch(self, w: _Watcher, key: tuple[str, int]) -> None:
        w.items.pop(key, None)
        by = self._watched_by.get(key)
        if by is not None:
            by.discard(w)
            if not by:
                del self._watched_by[key]
        if not w.items and self._watchers.get(w.send) is w:
            del self._watchers[w.send]

    def _sweep_watches(self) -> None:
        t = time.monotonic()
        for w in list(self._watchers.values()):
            for key in [k for k, it in w.items.items() if it.expires < t]:
                self._unwatch(w, key)

    # --- proxy: fetch ----------------------------------------------------------------------------

    async def tail(self, leader: BrokerRecord, items: list[TailItem]) -> list[TailResult]:
        """Where the batches from each item's offset are, asked now (no waiting at the leader)."""
        asked = self._client(leader).send(TAIL, _ENC.encode(Tail(items)))
        try:
            body = await asyncio.wait_for(asked, 30)
        except TimeoutError:
            raise ConnectionError(f"broker {leader.id} did not answer a Tail") from None
        results = _DEC_TAIL_RESULTS.decode(body)
        for item, res in zip(items, results, strict=False):
            self._window(leader.id, item).learn(res)
        return results

    def _window(self, leader_id: int, item: TailItem) -> _Window:
        """The partition's window for this leader and leader epoch; another one's is replaced
        (its waiting fetches woken: they ask again)."""
        key = (item.topic, item.partition)
        w = self._windows.get(key)
        if w is None or w.leader_id != leader_id or w.leader_epoch != item.leader_epoch:
            if w is not None:
                w.wake()
            w = self._windows[key] = _Window(leader_id, item.leader_epoch)
        return w

    def known_tail(self, topic: str, partition: int, offset: int, leader_epoch: int) -> TailResult | None:
        """What a watched partition's notices say from `offset` (nothing to ask the leader), or
        None: ask it (not watched, another leader epoch, or `offset` outside what is known)."""
        w = self._windows.get((topic, partition))
        if w is None or not w.watching or time.monotonic() - w.renewed > WATCH_LEASE_S:
            return None
        if leader_epoch != w.leader_epoch and leader_epoch >= 0:
            return None
        return w.result_at(offset)

    def watch(self, leader: BrokerRecord, items: list[TailItem]) -> list[asyncio.Future[None]]:
        """A future per item that resolves when its partition's end moves past the item's offset
        (or its watch ends); the leader is asked to Watch the partitions not watched yet."""
        loop = asyncio.get_running_loop()
        t = time.monotonic()
        ask: list[TailItem] = []
        out: list[asyncio.Future[None]] = []
        for item in items:
            w = self._window(leader.id, item)
            if not w.watching or t - w.renewed > _RENEW_S:
                ask.append(item)
                w.watching, w.renewed = True, t
            if w.result is not None and w.result.high_watermark > item.offset:
                moved: asyncio.Future[None] = loop.create_future()
                moved.set_result(None)
                out.append(moved)
                continue
            if w.changed is None:
                w.changed = loop.create_future()
            out.append(w.changed)
        if ask:
            self._client(leader).watch(_ENC.encode(Watch(ask)), partial(self._noticed, leader.id))
        return out

    def _noticed(self, leader_id: int, body: bytes | BaseException) -> None:
        moved: list[Moved] = []
        if not isinstance(body, BaseException):
            try:
                moved = _DEC_MOVED.decode(body)
            except msgspec.DecodeError as e:
                log.warning("bad Watch notice from broker %d: %s", leader_id, e)
                body = e
        if isinstance(body, BaseException):
            for w in self._windows.values():
                if w.leader_id == leader_id:
                    w.watching = False
                    w.wake()
            return
        for m in moved:
            found = self._windows.get((m.topic, m.partition))
            if found is not None and found.leader_id == leader_id:
                found.learn(m.result)

    def forget(self, topic: str, partition: int) -> None:
        """What is known of a partition's tail led nowhere (its bytes were gone): ask again."""
        w = self._windows.pop((topic, partition), None)
        if w is not None:
            w.wake()

    async def read_tail(self, res: TailResult, offset: int, max_bytes: int) -> list[Batch]:
        """The batches `res` locates from `offset`, from this proxy's cache or shared storage; then,
        below the leader's log cache, from S3 objects."""
        storage = self.broker.storage
        assert storage is not None
        if res.entries and res.entries[0].base_offset <= offset:
            wanted: list[TailEntry] = []
            size = 0
            for e in res.entries:
                wanted.append(e)
                size += e.length
                if size >= max_bytes:
                    break
            # What can be read on the loop is read now; the rest all at once, one shared-storage
            # round trip.
            got: list[Batch | BaseException | None] = []
            for e in wanted:
                try:
                    got.append(self._cached_or_read_now(res.stream_id, e, res.keys))
                except Exception as exc:  # as gather(return_exceptions=True) would have it
                    got.append(exc)
            later = [i for i, g in enumerate(got) if g is None]
            if later:
                reads = (self._read_later(res.stream_id, wanted[i], res.keys) for i in later)
                for i, g in zip(later, await asyncio.gather(*reads, return_exceptions=True), strict=True):
                    got[i] = g
            out: list[Batch] = []
            for g in got:
                if isinstance(g, RelayUnavailable):
                    break  # uploaded and trimmed meanwhile: S3 has it, from the next read on
                if isinstance(g, BaseException):
                    raise g
                assert g is not None  # every None was read above
                out.append(g)
            if out:
                return out
        end = res.committed_offset
        if offset < end:
            return await storage.read_objects(res.stream_id, offset, max_bytes, end)
        return []

    def _cached_or_read_now(self, stream_id: int, e: TailEntry, keys: list[str]) -> Batch | None:
        """The entry's batch from this proxy's cache or read on the loop; None when the read must
        wait (a thread, or S3): _read_later does it then."""
        key = (stream_id, e.base_offset)
        got = self._tail_cache.get(key)
        if got is not None:
            self._tail_cache.move_to_end(key)
            return got
        shared = self._shared()
        loc = e.location(keys)
        body = shared.read_ref_now(_ref(loc)) if loc.kind == "relay" else shared.read_frame_now(loc)
        return None if body is None else self._entry_read(key, e, loc, body)

    async def _read_later(self, stream_id: int, e: TailEntry, keys: list[str]) -> Batch:
        shared = self._shared()
        loc = e.location(keys)
        body = await (shared.read_ref(_ref(loc)) if loc.kind == "relay" else shared.read_frame(loc))
        return self._entry_read((stream_id, e.base_offset), e, loc, body)

    def _entry_read(self, key: tuple[int, int], e: TailEntry, loc: Location, body: bytes) -> Batch:
        """A read entry as the leader's log holds it (a relayed one with the leader's offsets, epoch
        and append time), into this proxy's cache."""
        if loc.kind == "relay":
            body = materialize(body, e.base_offset, RefRecord(_ref(loc), e.leader_epoch, e.log_append_time))
        self.broker.counters["proxy_tail_reads"] += 1
        got = Batch(e.base_offset, e.record_count, body)
        self._cache_put(key, got)
        return got

    def _shared(self) -> SharedReader:
        storage = self.broker.storage
        assert storage is not None
        return storage.shared

    def _cache_put(self, key: tuple[int, int], batch: Batch) -> None:
        self._tail_cache[key] = batch
        self._tail_cache_bytes += len(batch.payload)
        while self._tail_cache_bytes > TAIL_CACHE_BYTES and self._tail_cache:
            _, old = self._tail_cache.popitem(last=False)
            self._tail_cache_bytes -= len(old.payload)

    # --- offsets (ListOffsets, OffsetForLeaderEpoch) through a proxy --------------------------------

    async def offsets(self, items: list[OffsetItem]) -> list[OffsetResult]:
        """Ask each item's leader; results in item order."""
        by_leader: dict[int, list[int]] = {}
        results = [OffsetResult(int(ErrorCode.NOT_LEADER_OR_FOLLOWER)) for _ in items]
        leaders: dict[int, BrokerRecord] = {}
        for i, it in enumerate(items):
            leader = self.leader_to_proxy(it.topic, it.partition)
            if leader is not None:
                leaders[leader.id] = leader
                by_leader.setdefault(leader.id, []).append(i)

        async def ask(lid: int, idxs: list[int]) -> None:
            try:
                asked = self._client(leaders[lid]).send(OFFSETS, _ENC.encode([items[i] for i in idxs]))
                body = await asyncio.wait_for(asked, 30)
                for i, r in zip(idxs, _DEC_OFFSET_RESULTS.decode(body), strict=True):
                    results[i] = r
            except (ConnectionError, msgspec.DecodeError, ValueError, TimeoutError) as e:
                log.info("offsets from broker %d: %s", lid, e)

        await asyncio.gather(*(ask(lid, idxs) for lid, idxs in by_leader.items()))
        return results

    async def _offsets(self, items: list[OffsetItem]) -> list[OffsetResult]:
        out = []
        for it in items:
            res = OffsetResult()
            out.append(res)
            try:
                part = await self.broker.partition(it.topic, it.partition)
                part.check_leader_epoch(it.current_leader_epoch)
                if it.kind == LIST:
                    res.timestamp, res.offset, res.leader_epoch = await part.list_offset(it.value)
                else:
                    res.leader_epoch, res.offset = part.end_offset_for_epoch(it.value)
            except ANSWERED as e:
                res.error_code = int(error_code_for(e))
        return out

    # --- the server side of the channel ------------------------------------------------------------

    async def process(self, data: memoryview, send: Callable[[list[Any]], None]) -> bool:
        """One router frame; `send` writes its answer whenever it is ready. False: a bad frame.

        AppendRefs of a connection are appended in the order they came (each waits for the one
        before, while its reads already run); answers, also of Tail and offsets, leave when ready.
        """
        if len(data) < _HEAD.size:
            return False
        _, method, corr = _HEAD.unpack_from(data)
        body = data[_HEAD.size :]
        try:
            if method == APPEND_REFS:
                req = _DEC_REFS.decode(body)
                started = self._start_reads(req)

                def answer(results: list[RefResult], corr: int = corr) -> None:
                    send(frame([_CORR.pack(corr), _ENC.encode(results)]))

                before = self._chains.get(send)
                if (before is None or before.done()) and self._append_now(req, started, answer):
                    return True
                step = asyncio.get_running_loop().create_task(self._append_refs(req, started, before, answer))
                self._chains[send] = step
                step.add_done_callback(lambda t, k=send: self._chains.pop(k) if self._chains.get(k) is t else None)
            elif method == TAIL:
                tail = _DEC_TAIL.decode(body)
                now_answered = self._tail_now(tail)
                if now_answered is not None:
                    send(frame([_CORR.pack(corr), _ENC.encode(now_answered)]))
                else:
                    self._spawn(self._answer_later(corr, self._tail(tail), send))
            elif method == WATCH:
                self._watch(_DEC_WATCH.decode(body), corr, send)
            elif method == OFFSETS:
                self._spawn(self._answer_later(corr, self._offsets(_DEC_OFFSETS.decode(body)), send))
            else:
                return False
        except msgspec.DecodeError as e:
            log.info("bad router frame: %s", e)
            return False
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_later(self, corr: int, rest: Awaitable[Any], send: Callable[[list[Any]], None]) -> None:
        try:
            result = await rest
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug: the asking broker times out and its client retries; this one keeps serving.
            log.exception("a router request failed")
            return
        send(frame([_CORR.pack(corr), _ENC.encode(result)]))


def _ref(loc: Location) -> RelayRef:
    return RelayRef(loc.key, loc.offset, loc.length, loc.crc)


def _retrieved(fut: asyncio.Future[Any]) -> None:
    # An answer nobody waits for any more may fail (its broker died): not worth a log line.
    if not fut.cancelled():
        fut.exception()
