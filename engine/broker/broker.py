"""The broker: storage engine + controller session + metadata image + partitions + Kafka listener.

Start order matters: the storage engine recovers its WAL into S3 first (streams at
their old epochs), then the broker registers with the controller (which bumps the
leader epochs of its partitions, fencing any older incarnation), then partitions open
lazily at those new epochs, and only then does the Kafka listener accept clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from engine.broker.config import BrokerConfig
from engine.broker.dispatch import Dispatcher
from engine.broker.errors import BrokerError
from engine.broker.image import MetadataImage, TopicInfo
from engine.broker.latency import BrokerLatency
from engine.broker.lifecycle import Lifecycle
from engine.broker.partition import Partition
from engine.broker.router import Router, materialize
from engine.broker.zones import UNKNOWN, ZoneLedger, ZoneResolver
from engine.controller import api
from engine.controller.api import BrokerRecord
from engine.controller.configs import OFFSETS_TOPIC
from engine.controller.rpc import ControllerClient, ControllerUnavailable, RpcError
from engine.protocol.errors import ErrorCode
from engine.storage.config import WalConfig
from engine.storage.engine import StorageEngine
from engine.storage.metadata import open_metadata_store
from engine.storage.objects.store import ObjectStore, make_object_store

if TYPE_CHECKING:
    from engine.broker.server import KafkaServer
    from engine.storage.stream import Stream

log = logging.getLogger(__name__)
#: How long Metadata keeps listing a broker after it stopped or was fenced (see listed_brokers).
LISTED_AFTER_LEAVING_S = 60.0


def java_string_hashcode(s: str) -> int:
    """Java's String.hashCode over UTF-16 code units, as a signed 32-bit int."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.node_id = config.node_id
        self.zone = config.zone
        self.host = config.advertised
        self.port = config.port
        #: What the controller, clients and other brokers are told (the bound port unless advertised_port).
        self.advertised_port = config.advertised_port or config.port
        self.metrics_port: int | None = None
        self.storage: StorageEngine | None = None  # type: ignore[assignment]
        self.groups: Any = None
        self.image = MetadataImage()
        self.controller = ControllerClient.from_address(config.controller)
        self.broker_epoch = -1
        self.dispatcher = Dispatcher()
        self.counters: Counter[str] = Counter()
        self.latency = BrokerLatency()
        self.zones = ZoneResolver(lambda: {b.zone for b in self.image.brokers.values()} | {self.zone})
        self.ledger = ZoneLedger()
        self.router = Router(self)
        self.started_at = time.time()
        self._store: ObjectStore | None = None
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[Partition]] = {}
        self._image_changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._takeovers: dict[int, asyncio.Task[None]] = {}
        self._server: KafkaServer | None = None
        self._metrics_server: asyncio.Server | None = None
        self._pid_next = 0
        self._pid_end = 0
        self._pid_lock = asyncio.Lock()
        self._stopping = False
        #: Set while this broker takes no appends: handing off (controlled shutdown) or rejoining.
        self._draining = False
        self._handed_off = asyncio.Event()
        self._joining = asyncio.Lock()
        self._rejoin_task: asyncio.Task[None] | None = None
        #: (leader, leader epoch) of each __consumer_offsets partition as last seen, to spot moves.
        self._offsets_leaders: list[tuple[int, int]] = []
        #: Partitions being given up (reassignment): requests for them wait until the move is done.
        self._releasing: dict[tuple[str, int], asyncio.Event] = {}
        #: Moves into this broker whose opening is reported (or being reported) to the controller.
        self._moves_in: set[int] = set()
        self._move_tasks: set[asyncio.Task[None]] = set()
        #: Byte counters of each open partition at the last load report, and when that was.
        self._load_marks: dict[tuple[str, int], tuple[int, int, int, int]] = {}
        self._load_at = time.monotonic()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        from engine.broker.metrics import start_metrics_server
        from engine.broker.server import KafkaServer

        cfg = self.config
        self._store = make_object_store(cfg.s3.object_store())
        self._server = KafkaServer(self)
        # Bound before registering, so the controller learns the real port even when configured as 0.
        self.port = await self._server.bind(cfg.host, cfg.port)
        self.advertised_port = cfg.advertised_port or self.port
        await self.router.start()
        loop = asyncio.get_running_loop()
        # Heartbeats run from the registration on: recovering a large WAL may outlast the session.
        self._tasks = [loop.create_task(self._heartbeat_loop()), loop.create_task(self.latency.watch_loop())]
        await self._join(timeout=30.0)
        self._tasks.append(loop.create_task(self._follow_metadata()))
        await self._start_groups()
        self._tasks.append(loop.create_task(Lifecycle(self).run()))
        if cfg.metrics_port >= 0:
            self._metrics_server, self.metrics_port = await start_metrics_server(self, cfg.host, cfg.metrics_port)
        await self._server.serve()
        log.info(
            "broker %d serving Kafka on %s:%d (zone %s, WAL %s), metrics on %s",
            self.node_id, cfg.host, self.port, cfg.zone, cfg.storage.wal.kind, self.metrics_port,
        )  # fmt: skip

    async def _join(self, timeout: float) -> None:
        """Register as a new incarnation, recover this broker's WAL, then take partitions.

        If this broker was fenced, a survivor may be uploading its WAL: recovering it at the
        same time would upload the same records twice, so the broker waits for that first.
        """
        async with self._joining:
            reg = await self._register(timeout)
            await self._refresh_image(wait_ms=0)
            deadline = time.monotonic() + max(timeout, 120.0)
            while reg.wal_taken_over and self._my_wal_taken_over():
                if time.monotonic() > deadline:
                    raise BrokerError(ErrorCode.BROKER_NOT_AVAILABLE, "a survivor never finished uploading our WAL")
                await self._refresh_image(wait_ms=500)
            cfg = self.config
            assert self._store is not None
            storage = StorageEngine(cfg.storage, self._store, open_metadata_store(cfg.metadata_path))
            storage.materialize = materialize  # our WAL may hold relayed batches (zone router)
            await storage.start()
            self.storage = storage
            ready = await self.controller.request(api.BrokerReady(self.node_id, self.broker_epoch))
            while self.image.version < ready.version:
                await self._refresh_image(wait_ms=100)
            self._draining = False
            self._handed_off.clear()
            self._start_moves(set(self.image.topics))  # moves the controller started before we joined

    @property
    def handed_off(self) -> bool:
        """True once this broker gave its partitions up (a controlled shutdown, or fenced and rejoining)."""
        return self._handed_off.is_set()

    def _my_wal_taken_over(self) -> bool:
        wal_id = self.config.storage.wal.wal_id
        return any(t.wal_id == wal_id and t.state == "pending" for t in self.image.takeovers.values())

    async def _start_groups(self) -> None:
        # A coordinator that cannot be imported or started is a broken broker, not a smaller one.
        from engine.broker.groups import GroupCoordinator

        self.groups = GroupCoordinator(self)
        await self.groups.start()

    async def stop(self, flush: bool = True) -> None:
        """Stop serving. With flush (SIGTERM, `amq broker stop`) this is a controlled shutdown:
        no more appends, everything the WAL holds goes to S3, the controller moves the
        partitions to other brokers, and only then does the listener close."""
        if self._stopping:
            return
        self._stopping = True
        if flush and self.storage is not None and self.broker_epoch >= 0:
            await self._hand_off()
        if self._server is not None:
            await self._server.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.groups is not None:
            try:
                await self.groups.stop()
            except Exception:
                log.exception("the group coordinator failed to stop cleanly")
        others = [t for t in (self._rejoin_task,) if t is not None]
        for t in [*self._tasks, *self._takeovers.values(), *others, *self._move_tasks]:
            t.cancel()
        for t in [*self._tasks, *self._takeovers.values(), *others, *self._move_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.router.close()
        await self._close_storage(flush=flush)
        if self._store is not None:
            await self._store.close()
        await self.controller.close()

    async def _close_storage(self, flush: bool) -> None:
        storage, self.storage = self.storage, None
        if storage is not None:
            await storage.close(flush=flush)
            await storage.metadata.close()

    async def _hand_off(self) -> None:
        started = time.monotonic()
        self._draining = True  # no more appends; requests wait for the new leaders, then go there
        assert self.storage is not None
        try:
            await asyncio.wait_for(self.storage.flush(), 60)
        except TimeoutError:
            log.warning("controlled shutdown: the upload did not finish in 60 s; the WAL keeps the rest")
            self._handed_off.set()
            return
        uploaded = time.monotonic()
        snapshots = [p.snapshot() for p in self._partitions.values() if p.stream is not None and p.failed is None]
        try:
            res = await self.controller.request(
                api.ControlledShutdown(self.node_id, self.broker_epoch, snapshots), timeout=10
            )
        except RpcError as e:
            log.warning("controlled shutdown: the controller did not move our partitions (%s)", e)
            self._handed_off.set()
            return
        with contextlib.suppress(Exception):
            await self.wait_for_metadata(res.version, timeout=2.0)
        moved = time.monotonic()
        # Requests held during the hand-off are not answered NOT_LEADER_OR_FOLLOWER: librdkafka
        # can apply the fresh metadata first and then the error, leaving the partition without a
        # leader until its 1 s refresh. A closed connection makes it ask for metadata and move.
        if self._server is not None:
            self._server.close_connections()
        self._handed_off.set()
        # The listener stays up a moment, so clients' metadata requests here learn the new leaders.
        await asyncio.sleep(self.config.shutdown_grace_ms / 1000)
        log.info("controlled shutdown: WAL uploaded in %.0f ms, %d partitions handed off in %.0f ms",
                 (uploaded - started) * 1000, res.moved, (moved - uploaded) * 1000)  # fmt: skip

    # --- controller session ----------------------------------------------------------------------

    async def _register(self, timeout: float) -> api.RegisterResult:
        deadline = time.monotonic() + timeout
        wal = self.config.storage.wal
        spec = api.WalSpec(wal.kind, wal.path, wal.wal_id)
        while True:
            try:
                res = await self.controller.request(
                    api.RegisterBroker(self.node_id, self.config.zone, self.host, self.advertised_port, spec)
                )
                self.broker_epoch = res.broker_epoch
                self.image.cluster_id = res.cluster_id
                return res
            except ControllerUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if self.broker_epoch < 0:
                continue
            # Heartbeats go on while the broker (re)joins: recovering a WAL may outlast the session.
            try:
                floor = self.router.relay_floor_ms() if not self._joining.locked() else -1
                hb = api.Heartbeat(self.node_id, self.broker_epoch, self._load_report(), floor)
                # Shorter than a session: a controller that stopped answering (paused) is left for
                # the next one of the list before the new leader counts this broker's session.
                res = await self.controller.request(hb, timeout=interval * 3)
                if res.relay_horizon_ms > 0:
                    await self.router.horizon(res.relay_horizon_ms)
            except ControllerUnavailable as e:
                log.warning("heartbeat: %s", e)
            except RpcError as e:
                if self._stopping:
                    return
                if self._joining.locked() or (self._rejoin_task is not None and not self._rejoin_task.done()):
                    continue  # a join under way registers a new incarnation
                # Fenced: survivors own our partitions and our WAL now. Start over as a new incarnation.
                log.warning("heartbeat refused (%s): rejoining as a new incarnation", e)
                self._rejoin_task = asyncio.get_running_loop().create_task(self._rejoin())

    def _load_report(self) -> list[api.LoadReport] | None:
        """Bytes/s in and out of each partition led here since the last report, when one is due."""
        now = time.monotonic()
        elapsed = now - self._load_at
        if elapsed * 1000 < self.config.load_report_interval_ms:
            return None
        marks: dict[tuple[str, int], tuple[int, int, int, int]] = {}
        out = []
        for key, part in self._partitions.items():
            marks[key] = (id(part), part.bytes_in, part.bytes_out, part.requests)
            same, was_in, was_out, was_req = self._load_marks.get(key, (0, 0, 0, 0))
            span = elapsed
            if same != id(part):
                # Opened since the last report: its counters started at 0 when it opened.
                was_in = was_out = was_req = 0
                span = max(1.0, min(elapsed, now - part.opened_at))
            rates = [(now_ - was) / span for now_, was in
                     ((part.bytes_in, was_in), (part.bytes_out, was_out), (part.requests, was_req))]  # fmt: skip
            if any(rates):
                out.append(api.LoadReport(key[0], key[1], *(round(r, 1) for r in rates)))
        self._load_marks, self._load_at = marks, now
        return out

    async def _rejoin(self) -> None:
        try:
            await self._start_over()
        except Exception:
            log.exception("rejoining failed; the next refused heartbeat tries again")

    async def _start_over(self) -> None:
        # Requests are refused at once (produce closes its connection) and clients move on.
        self._draining = True
        self._handed_off.set()
        for key in list(self._partitions):
            self._drop_partition(key)
        if self.groups is not None:
            for index in range(self.config.offsets_topic_num_partitions):
                self.groups.partition_moved(index)
        # As after a crash: what the WAL holds is recovered by whoever gets it, never uploaded twice.
        await self._close_storage(flush=False)
        await self._join(timeout=30.0)

    async def _refresh_image(self, wait_ms: int) -> None:
        changes = await self.controller.request(
            api.Metadata(since=self.image.version, wait_ms=wait_ms, broker_id=self.node_id), timeout=wait_ms / 1000 + 10
        )
        if changes.version <= self.image.version:
            return  # a concurrent refresh got here first: applying this would step back in time
        touched = self.image.apply(msgspec.to_builtins(changes))
        self._topics_changed(touched)
        self._start_takeovers()
        async with self._image_changed:
            self._image_changed.notify_all()

    async def _follow_metadata(self) -> None:
        while True:
            try:
                await self._refresh_image(wait_ms=5000)
            except ControllerUnavailable as e:
                log.warning("metadata: %s", e)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("metadata follower failed; retrying")
                await asyncio.sleep(1.0)

    async def wait_for_metadata(self, version: int, timeout: float = 10.0) -> None:
        """Until this broker's image includes controller version `version`."""
        if self.image.version >= version:
            return
        try:
            async with self._image_changed:
                await asyncio.wait_for(self._image_changed.wait_for(lambda: self.image.version >= version), timeout)
        except TimeoutError:
            await self._refresh_image(wait_ms=0)

    async def controller_call(self, method: str, **params: Any) -> Any:
        """A controller RPC whose metadata change is visible here when it returns."""
        try:
            res = await self.controller.call(method, **params)
        except ControllerUnavailable as e:
            raise BrokerError(ErrorCode.REQUEST_TIMED_OUT, str(e)) from None
        except RpcError as e:
            raise BrokerError(ErrorCode.UNKNOWN_SERVER_ERROR, str(e)) from None
        if isinstance(res, dict) and "version" in res:
            await self.wait_for_metadata(int(res["version"]))
        return res

    # --- WAL takeover --------------------------------------------------------------------------

    def _start_takeovers(self) -> None:
        for t in self.image.takeovers.values():
            if t.to_broker == self.node_id and t.state == "pending" and t.id not in self._takeovers:
                if self.storage is None or self._stopping:
                    continue
                task = asyncio.get_running_loop().create_task(self._take_over(t))
                self._takeovers[t.id] = task
                task.add_done_callback(lambda _t, tid=t.id: self._takeovers.pop(tid, None))

    async def _take_over(self, t: api.WalTakeover) -> None:
        """Upload a dead broker's WAL, then tell the controller, which reopens its partitions."""
        wal = WalConfig(kind=t.wal.kind, path=t.wal.path, wal_id=t.wal.wal_id)  # type: ignore[arg-type]
        while True:
            started = time.monotonic()
            storage = self.storage
            current = self.image.takeovers.get(t.id)
            if storage is None or current is None or current.to_broker != self.node_id:
                return
            try:
                records, epochs = await storage.take_over_wal(wal, dict(t.streams))
                await self.controller.request(
                    api.WalTakenOver(self.node_id, self.broker_epoch, t.id, epochs, records), timeout=10
                )
                log.info("took over WAL %s of broker %d: %d records uploaded in %.0f ms", t.wal_id, t.from_broker,
                         records, (time.monotonic() - started) * 1000)  # fmt: skip
                return
            except asyncio.CancelledError:
                raise
            except RpcError as e:
                if e.code in ("UNKNOWN_TAKEOVER", "STALE_BROKER_EPOCH"):
                    return  # given to someone else meanwhile
                log.warning("takeover of WAL %s: %s; retrying", t.wal_id, e)
            except Exception as e:
                log.warning("takeover of WAL %s failed (%s); retrying", t.wal_id, e, exc_info=True)
            await asyncio.sleep(0.5)

    def _topics_changed(self, names: set[str]) -> None:
        for key, part in list(self._partitions.items()):
            if key[0] not in names:
                continue
            topic = self.image.topics.get(key[0])
            info = topic.partitions[key[1]] if topic is not None and key[1] < len(topic.partitions) else None
            if topic is not None and info is not None:
                part.topic = topic  # configs may have changed
            if (
                info is None
                or info.leader != self.node_id
                or info.leader_epoch != part.leader_epoch
                or info.stream_id != part.stream_id
            ):
                self._drop_partition(key, close=info is None or info.leader != self.node_id)
        if OFFSETS_TOPIC in names and self.groups is not None:
            # A coordinator partition whose leader or epoch changed reloads from its stream on next use.
            topic = self.image.topics.get(OFFSETS_TOPIC)
            for index, (leader, epoch) in enumerate(self._offsets_leaders):
                now = topic.partitions[index] if topic is not None and index < len(topic.partitions) else None
                if now is None or (now.leader, now.leader_epoch) != (leader, epoch):
                    self.groups.partition_moved(index)
        topic = self.image.topics.get(OFFSETS_TOPIC)
        self._offsets_leaders = [(p.leader, p.leader_epoch) for p in topic.partitions] if topic is not None else []
        self._start_moves(names)

    # --- moves (reassignment) ---------------------------------------------------------------------

    def _start_moves(self, names: set[str]) -> None:
        """Release partitions the controller moves away from here; open those moved here."""
        if self.storage is None or self._stopping or self._draining:
            return
        release: list[tuple[str, int]] = []
        for name in names:
            topic = self.image.topics.get(name)
            for info in topic.partitions if topic is not None else ():
                key = (name, info.index)
                if info.leader != self.node_id:
                    continue
                if info.target >= 0 and info.target != self.node_id and key not in self._releasing:
                    self._releasing[key] = asyncio.Event()
                    release.append(key)
                elif info.target < 0 and info.move_id >= 0 and info.move_id not in self._moves_in:
                    self._moves_in.add(info.move_id)
                    self._spawn(self._open_moved(name, info.index, info.move_id, info.leader_epoch))
        if release:
            self._spawn(self._release(release))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._move_tasks.add(task)
        task.add_done_callback(self._move_tasks.discard)

    async def _release(self, keys: list[tuple[str, int]]) -> None:
        """Give partitions up: no more appends, their WAL tails into S3, then tell the controller.

        Requests for them wait meanwhile (see partition()) and are answered NOT_LEADER_OR_FOLLOWER
        once every broker knows the new leader, so the client's metadata refresh finds it.
        """
        try:
            for attempt in range(20):
                try:
                    await self._release_once(keys)
                    return
                except asyncio.CancelledError:
                    raise
                except RpcError as e:
                    if e.code == "STALE_BROKER_EPOCH":
                        return  # fenced: a survivor takes the WAL and the partitions
                    log.warning("releasing %s: %s; retrying", keys, e)
                except Exception as e:
                    log.warning("releasing %s failed (%s); retrying", keys, e, exc_info=attempt == 0)
                await asyncio.sleep(0.2)
            # Given up (the move stays pending at the controller; `amq reassign --cancel` ends it):
            # the partitions take appends again, reopened at the same epoch on the next request.
            log.error("could not release %s; serving them again", keys)
            for key in keys:
                self._drop_partition(key, close=False)
        finally:
            for key in keys:
                ev = self._releasing.pop(key, None)
                if ev is not None:
                    ev.set()

    async def _release_once(self, keys: list[tuple[str, int]]) -> None:
        storage = self.storage
        if storage is None:
            return
        parts: list[Partition] = []
        for key in keys:
            opening = self._opening.get(key)
            if opening is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(opening)
            part = self._partitions.get(key)
            if part is not None and part.stream is not None:
                parts.append(part)
        await asyncio.gather(*(p.drain() for p in parts))
        drained_ms = int(time.time() * 1000)
        uploaded = await storage.release_streams([p.stream_id for p in parts if p.failed is None])
        released_ms = int(time.time() * 1000)
        by_key = {(p.topic.name, p.index): p for p in parts}
        released = []
        for topic, index in keys:
            t = self.image.topics.get(topic)
            if t is None or index >= len(t.partitions):
                continue
            info = t.partitions[index]
            part = by_key.get((topic, index))
            ok = part is not None and part.failed is None and part.leader_epoch == info.leader_epoch
            released.append(
                api.Released(
                    topic, index, info.leader_epoch, drained_ms, released_ms,
                    uploaded.get(info.stream_id, 0), part.snapshot() if ok and part is not None else None,
                )
            )  # fmt: skip
        res = await self.controller.request(
            api.PartitionsReleased(self.node_id, self.broker_epoch, released), timeout=10
        )
        await self.wait_for_metadata(res.version, timeout=5.0)
        log.info("released %d partitions (%d bytes uploaded) in %d ms", len(released), sum(uploaded.values()),
                 released_ms - drained_ms)  # fmt: skip

    async def _open_moved(self, topic: str, index: int, move_id: int, leader_epoch: int) -> None:
        """Open a partition moved here at once (not on first request), and report when it was
        opened and when its first produce was acknowledged (`amq reassign --timeline`)."""
        try:
            part = await self.partition(topic, index)
            opened_ms = int(time.time() * 1000)
            first = part.watch_first_append()
            report = api.PartitionOpened(
                self.node_id, move_id, topic, index, leader_epoch, opened_ms, 0, part.from_snapshot
            )
            await self.controller.request(report)
            with contextlib.suppress(TimeoutError):
                report.first_append_ms = await asyncio.wait_for(first, 30.0)
                await self.controller.request(report)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.info("moved partition %s-%d not reported open: %s", topic, index, e)

    def _drop_partition(self, key: tuple[str, int], close: bool = True) -> None:
        part = self._partitions.pop(key, None)
        if part is not None and part.stream is not None and close:
            asyncio.get_running_loop().create_task(self._close_stream(part.stream))

    async def _close_stream(self, stream: Stream) -> None:
        try:
            await stream.close()
        except Exception as e:
            log.warning("closing stream %d: %s", stream.stream_id, e)

    # --- partitions ------------------------------------------------------------------------------

    def topic(self, name: str) -> TopicInfo | None:
        return self.image.topics.get(name)

    def partition_now(self, topic_name: str, index: int) -> Partition | None:
        """The partition when partition() would return it without waiting; else None (ask that)."""
        key = (topic_name, index)
        if key in self._releasing or self._draining or self.storage is None:
            return None
        part = self._partitions.get(key)
        return part if part is not None and part.failed is None else None

    async def partition(self, topic_name: str, index: int) -> Partition:
        """The open partition, or BrokerError with the Kafka code that explains why not."""
        key = (topic_name, index)
        releasing = self._releasing.get(key)
        if releasing is not None:
            # Answered after the move, with the new leader known everywhere (see _release).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(releasing.wait(), 10.0)
        if self._draining or self.storage is None:
            # Held until the controller has moved the partition: answered earlier, the client would
            # refresh metadata, still see this broker as leader and back off before it tries again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handed_off.wait(), 5.0)
            raise BrokerError(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"broker {self.node_id} is handing off its partitions")
        part = self._partitions.get(key)
        if part is not None and part.failed is None:
            return part
        topic = self.image.topics.get(topic_name)
        if topic is None or not 0 <= index < len(topic.partitions):
            raise BrokerError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic_name}-{index} does not exist")
        info = topic.partitions[index]
        if info.leader != self.node_id:
            raise BrokerError(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"broker {info.leader} leads {topic_name}-{index}")
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.get_running_loop().create_future()
            self._opening[key] = opening
            part = Partition(topic, index, info.stream_id, info.leader_epoch)
            try:
                snapshot = await self._snapshot_for(topic_name, index, info.snapshot_end)
                await part.open(self.storage, snapshot)  # type: ignore[arg-type]
            except BaseException as e:
                opening.set_exception(e)
                opening.exception()  # retrieved: waiters re-raise it, nobody else must log it
                raise
            finally:
                self._opening.pop(key, None)
            current = self.image.topics.get(topic_name)
            if current is not None and index < len(current.partitions):
                now = current.partitions[index]
                if now.leader_epoch == part.leader_epoch and now.stream_id == part.stream_id:
                    self._partitions[key] = part
            opening.set_result(part)
            return part
        return await asyncio.shield(opening)

    async def _snapshot_for(self, topic: str, index: int, snapshot_end: int) -> api.PartitionSnapshot | None:
        """The previous leader's snapshot, if the controller keeps one: saves scanning the stream."""
        if snapshot_end < 0:
            return None
        try:
            res = await self.controller.request(api.GetSnapshot(topic, index), timeout=2.0)
        except (ControllerUnavailable, RpcError) as e:
            log.info("no snapshot for %s-%d (%s): scanning its stream", topic, index, e)
            return None
        return res.snapshot

    @property
    def open_partitions(self) -> list[Partition]:
        return list(self._partitions.values())

    async def auto_create_topics(self, names: list[str]) -> dict[str, ErrorCode]:
        """Metadata's auto-creation: NONE for each topic that exists now, else the error to answer with."""
        out: dict[str, ErrorCode] = {}
        wanted = []
        for name in names:
            if not self.config.auto_create_topics_enable or name.startswith("__"):
                out[name] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            else:
                wanted.append(name)
        if wanted:
            rf = min(self.config.default_replication_factor, len(self.live_brokers()))
            res = await self.controller_call(
                "create_topics",
                topics=[{"name": n, "num_partitions": self.config.num_partitions, "replication_factor": rf}
                        for n in wanted],
            )  # fmt: skip
            for r in res["results"]:
                code = ErrorCode(r["error_code"])
                out[r["name"]] = ErrorCode.NONE if code == ErrorCode.TOPIC_ALREADY_EXISTS else code
        return out

    def listed_brokers(self) -> list[BrokerRecord]:
        """What Metadata lists: running brokers, and for a minute those that stopped or were fenced.

        A broker that vanishes from Metadata is torn down by librdkafka, which can undo the
        move of a partition it led to its new leader (seen: the producer then waits for its
        1 s metadata refresh). Partitions are never given to a broker that is not running, so
        listing it a while longer sends no traffic there."""
        now = time.time()
        return self._brokers_where(lambda b: b.alive or now - b.since < LISTED_AFTER_LEAVING_S)

    def live_brokers(self) -> list[BrokerRecord]:
        """Brokers the controller considers alive; this one always, with the port it really bound."""
        return self._brokers_where(lambda b: b.alive)

    def _brokers_where(self, keep: Callable[[BrokerRecord], bool]) -> list[BrokerRecord]:
        out = {b.id: b for b in self.image.brokers.values() if keep(b)}
        out[self.node_id] = BrokerRecord(self.node_id, self.zone, self.host, self.advertised_port, self.broker_epoch)
        return [out[k] for k in sorted(out)]

    # --- for the group coordinator (docs/broker.md) -------------------------------------------

    async def open_internal_stream(self, topic: str, partition: int) -> Stream:
        if topic not in self.image.topics:
            n = self.config.offsets_topic_num_partitions if topic == OFFSETS_TOPIC else 1
            try:
                res = await self.controller_call(
                    "create_topics",
                    topics=[{"name": topic, "num_partitions": n, "replication_factor": 1,
                             "configs": {"cleanup.policy": "compact"}}],
                    internal=True,
                )  # fmt: skip
            except BrokerError as e:
                raise BrokerError(ErrorCode.COORDINATOR_NOT_AVAILABLE, str(e)) from None
            r = res["results"][0]
            if r["error_code"] not in (ErrorCode.NONE, ErrorCode.TOPIC_ALREADY_EXISTS):
                raise BrokerError(ErrorCode(r["error_code"]), r["error_message"] or "")
            if topic not in self.image.topics:
                await self._refresh_image(wait_ms=0)
        part = await self.partition(topic, partition)
        return part.ready

    def offsets_partition_for(self, key: str) -> int:
        return abs(java_string_hashcode(key)) % self.config.offsets_topic_num_partitions

    def coordinator_for(self, key: str) -> tuple[int, str, int]:
        """(node_id, host, port) of the group's coordinator: the leader of its __consumer_offsets
        partition; this broker while the topic does not exist (the first group request creates it)."""
        topic = self.image.topics.get(OFFSETS_TOPIC)
        if topic is None:
            return self.node_id, self.host, self.advertised_port
        p = self.offsets_partition_for(key)
        if p >= len(topic.partitions):
            return self.node_id, self.host, self.advertised_port
        leader = topic.partitions[p].leader
        if leader == self.node_id:
            return self.node_id, self.host, self.advertised_port
        b = self.image.brokers.get(leader)
        if b is None or not b.alive:
            # Its broker died and the partition has not reopened elsewhere yet: retriable.
            raise BrokerError(ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{OFFSETS_TOPIC}-{p} has no live leader")
        return b.id, b.host, b.port

    # --- producer ids ----------------------------------------------------------------------------

    async def next_producer_id(self) -> int:
        async with self._pid_lock:
            if self._pid_next >= self._pid_end:
                try:
                    res = await self.controller.call(
                        "alloc_producer_ids", broker_id=self.node_id, count=self.config.producer_id_block
                    )
                except RpcError as e:
                    raise BrokerError(ErrorCode.COORDINATOR_NOT_AVAILABLE, str(e)) from None
                self._pid_next, self._pid_end = int(res["first"]), int(res["first"]) + int(res["count"])
            pid = self._pid_next
            self._pid_next += 1
            return pid

    # --- metrics ---------------------------------------------------------------------------------

    def count_client_bytes(self, client_id: str | None, rack: str | None, n: int, to_broker: bool) -> None:
        """Kafka data between a client and this broker, for the zone ledger."""
        client = self.zones.client_zone(client_id, rack)
        if to_broker:
            self.ledger.add(client, self.zone, "client", n)
        else:
            self.ledger.add(self.zone, client, "client", n)

    def zone_delay(self, client_id: str | None) -> float:
        """Seconds a request of this client waits (--zone-latency-ms, both ways) when it is in another zone."""
        ms = self.config.zone_latency_ms
        if not ms:
            return 0.0
        zone = self.zones.client_zone(client_id)
        return 2 * ms / 1000 if zone not in (UNKNOWN, self.zone) else 0.0

    def zone_traffic(self) -> list[dict[str, object]]:
        """The ledger's rows, with this broker's WAL and S3 traffic as `storage` rows."""
        rows = self.ledger.rows()
        if self.storage is not None:
            m = self.storage.metrics()
            wal = self.config.storage.wal.kind
            storage = [(self.zone, "s3", m["s3_put_bytes"]), ("s3", self.zone, m["s3_get_bytes"])]
            if wal == "nfs":  # a shared file system; a `file` WAL is this broker's own disk, no network
                relay = self.router.relay.bytes_written if self.router.relay is not None else 0
                storage.append((self.zone, "nfs", m["wal_bytes_written"] + relay))
                storage.append(("nfs", self.zone, self.storage.shared.bytes_read))
            rows += [{"src": s, "dst": d, "kind": "storage", "bytes": n} for s, d, n in storage if n]
        return rows

    def metrics(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {}
        if self.storage is not None:
            out.update(self.storage.metrics())
        out["cross_zone_bytes"] = self.ledger.cross_zone_bytes()
        out["cross_zone_pointer_bytes"] = self.ledger.cross_zone_pointer_bytes()
        out["zone_router"] = int(self.router.enabled)
        if self.router.relay is not None:
            out["relay_objects_written"] = self.router.relay.objects_written
            out["relay_bytes_written"] = self.router.relay.bytes_written
            out["relay_objects_kept"] = self.router.relay.objects_kept
        out["relay_horizon_ms"] = self.router.horizon_ms
        out.update(sorted(self.counters.items()))
        out["partitions_open"] = len(self._partitions)
        out["connections_active"] = self._server.active_connections if self._server else 0
        out["socket_write_buffer_bytes"] = self._server.write_buffer_bytes() if self._server else 0
        out["requests_held_bytes"] = self._server.held_bytes() if self._server else 0
        out["metadata_version"] = self.image.version
        out["broker_id"] = self.node_id
        out["wal_kind"] = self.config.storage.wal.kind
        out["zone"] = self.config.zone
        return out
