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
from typing import TYPE_CHECKING, Any

from engine.broker.config import BrokerConfig
from engine.broker.dispatch import Dispatcher
from engine.broker.errors import BrokerError
from engine.broker.image import BrokerInfo, MetadataImage, TopicInfo
from engine.broker.partition import Partition
from engine.controller.configs import OFFSETS_TOPIC
from engine.controller.rpc import ControllerClient, ControllerUnavailable, RpcError
from engine.protocol.errors import ErrorCode
from engine.storage.engine import StorageEngine
from engine.storage.metadata_sqlite import SqliteMetadataStore
from engine.storage.objectstore import make_object_store

if TYPE_CHECKING:
    from engine.broker.server import KafkaServer
    from engine.storage.stream import Stream

log = logging.getLogger(__name__)


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
        self.host = config.advertised
        self.port = config.port
        self.metrics_port: int | None = None
        self.storage: StorageEngine | None = None  # type: ignore[assignment]
        self.groups: Any = None
        self.image = MetadataImage()
        self.controller = ControllerClient.from_address(config.controller)
        self.broker_epoch = -1
        self.dispatcher = Dispatcher()
        self.counters: Counter[str] = Counter()
        self.started_at = time.time()
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[Partition]] = {}
        self._image_changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: KafkaServer | None = None
        self._metrics_server: asyncio.Server | None = None
        self._pid_next = 0
        self._pid_end = 0
        self._pid_lock = asyncio.Lock()
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        from engine.broker.metrics import start_metrics_server
        from engine.broker.server import KafkaServer

        cfg = self.config
        store = make_object_store(cfg.s3.object_store())
        self.storage = StorageEngine(cfg.storage, store, SqliteMetadataStore(cfg.metadata_path))
        await self.storage.start()
        self._server = KafkaServer(self)
        # Bound before registering, so the controller learns the real port even when configured as 0.
        self.port = await self._server.bind(cfg.host, cfg.port)
        await self._register(timeout=30.0)
        await self._refresh_image(wait_ms=0)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow_metadata()), loop.create_task(self._heartbeat_loop())]
        await self._start_groups()
        if cfg.metrics_port >= 0:
            self._metrics_server, self.metrics_port = await start_metrics_server(self, cfg.host, cfg.metrics_port)
        await self._server.serve()
        log.info(
            "broker %d serving Kafka on %s:%d (zone %s, WAL %s), metrics on %s",
            self.node_id, cfg.host, self.port, cfg.zone, cfg.storage.wal.kind, self.metrics_port,
        )  # fmt: skip

    async def _start_groups(self) -> None:
        try:
            from engine.broker.groups import GroupCoordinator
        except ModuleNotFoundError as e:
            if e.name not in ("engine.broker.groups", "engine.broker.groups.GroupCoordinator"):
                log.exception("the group coordinator failed to import; running without consumer groups")
            self.groups = None
            return
        except Exception:
            log.exception("the group coordinator failed to import; running without consumer groups")
            self.groups = None
            return
        try:
            self.groups = GroupCoordinator(self)
            start = getattr(self.groups, "start", None)
            if start is not None:
                await start()
        except Exception:
            log.exception("the group coordinator failed to start; running without consumer groups")
            self.groups = None

    async def stop(self, flush: bool = True) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            await self._server.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.groups is not None:
            stop = getattr(self.groups, "stop", None)
            if stop is not None:
                try:
                    await stop()
                except Exception:
                    log.exception("the group coordinator failed to stop cleanly")
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.storage is not None:
            await self.storage.close(flush=flush)
            await self.storage.metadata.close()
            await self.storage.store.close()
        with contextlib.suppress(RpcError, OSError):
            await self.controller.call(
                "unregister_broker", timeout=2.0, broker_id=self.node_id, broker_epoch=self.broker_epoch
            )
        await self.controller.close()

    # --- controller session ----------------------------------------------------------------------

    async def _register(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                res = await self.controller.call(
                    "register_broker", broker_id=self.node_id, zone=self.config.zone, host=self.host, port=self.port
                )
                self.broker_epoch = int(res["broker_epoch"])
                self.image.cluster_id = str(res["cluster_id"])
                return
            except ControllerUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.controller.call(
                    "heartbeat", timeout=interval * 5, broker_id=self.node_id, broker_epoch=self.broker_epoch
                )
            except ControllerUnavailable as e:
                log.warning("heartbeat: %s", e)
            except RpcError as e:
                # Superseded (or the controller lost us): register again; partitions reopen at new epochs.
                log.warning("heartbeat refused (%s); registering again", e)
                with contextlib.suppress(RpcError):
                    await self._register(timeout=interval * 5)

    async def _refresh_image(self, wait_ms: int) -> None:
        changes = await self.controller.call(
            "metadata", timeout=wait_ms / 1000 + 10, since=self.image.version, wait_ms=wait_ms
        )
        if int(changes.get("version", 0)) <= self.image.version:
            return  # a concurrent refresh got here first: applying this would step back in time
        touched = self.image.apply(changes)
        self._topics_changed(touched)
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
                or topic is None
                or info.leader != self.node_id
                or info.leader_epoch != part.leader_epoch
                or info.stream_id != part.stream_id
            ):
                del self._partitions[key]
                if part.stream is not None and (info is None or info.leader != self.node_id):
                    stream = part.stream
                    asyncio.get_running_loop().create_task(self._close_stream(stream))

    async def _close_stream(self, stream: Stream) -> None:
        try:
            await stream.close()
        except Exception as e:
            log.warning("closing stream %d: %s", stream.stream_id, e)

    # --- partitions ------------------------------------------------------------------------------

    def topic(self, name: str) -> TopicInfo | None:
        return self.image.topics.get(name)

    async def partition(self, topic_name: str, index: int) -> Partition:
        """The open partition, or BrokerError with the Kafka code that explains why not."""
        key = (topic_name, index)
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
                await part.open(self.storage)  # type: ignore[arg-type]
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

    def live_brokers(self) -> list[BrokerInfo]:
        """Brokers the controller considers alive; this one always, with the port it really bound."""
        out = {b.id: b for b in self.image.brokers.values() if b.alive}
        out[self.node_id] = BrokerInfo(self.node_id, self.config.zone, self.host, self.port, self.broker_epoch, True)
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
        topic = self.image.topics.get(OFFSETS_TOPIC)
        if topic is not None:
            p = self.offsets_partition_for(key)
            if p < len(topic.partitions):
                b = self.image.brokers.get(topic.partitions[p].leader)
                if b is not None and b.alive:
                    return b.id, b.host, b.port
        return self.node_id, self.host, self.port

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

    def metrics(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {}
        if self.storage is not None:
            out.update(self.storage.metrics())
        out["cross_zone_bytes"] = 0
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
