"""The controller process: cluster metadata behind a small JSON RPC (docs/broker.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from engine.controller import api
from engine.controller.autobalance import AutoBalancer, BalancerSettings, result
from engine.controller.rpc import Handler, RpcError, serve_connection
from engine.controller.state import ControllerState

log = logging.getLogger(__name__)
T = TypeVar("T")


class ControllerServer:
    def __init__(
        self,
        directory: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        session_timeout_ms: int = 3000,
        lost_grace_ms: int = 1500,
        balancer: BalancerSettings | None = None,
        metadata: str = "",
    ) -> None:
        """metadata: a postgresql:// URL for the cluster's state; empty: controller.db in `directory`."""
        self.directory = Path(directory)
        self.metadata = metadata
        self.host = host
        self.requested_port = port
        self.port = port
        self.session_timeout_s = session_timeout_ms / 1000
        self.lost_grace_s = lost_grace_ms / 1000
        self.state = ControllerState(metadata or self.directory / "controller.db")
        self.balancer = AutoBalancer(self.state, balancer or BalancerSettings())
        self._balancing: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        #: The metadata version each broker has applied (the `since` of its latest metadata call).
        self._applied: dict[int, int] = {}
        self._server: asyncio.Server | None = None
        self._liveness: asyncio.Task[None] | None = None
        self.methods: dict[str, Handler] = {
            "ping": self.ping,
            "register_broker": self.register_broker,
            "broker_ready": self.broker_ready,
            "heartbeat": self.heartbeat,
            "controlled_shutdown": self.controlled_shutdown,
            "cluster_shutdown": self.cluster_shutdown,
            "wal_taken_over": self.wal_taken_over,
            "metadata": self.metadata,
            "create_topics": self.create_topics,
            "delete_topics": self.delete_topics,
            "create_partitions": self.create_partitions,
            "alter_configs": self.alter_configs,
            "alloc_producer_ids": self.alloc_producer_ids,
            "status": self.status,
            "reassign": self.reassign,
            "partitions_released": self.partitions_released,
            "partition_opened": self.partition_opened,
            "get_snapshot": self.get_snapshot,
            "list_moves": self.list_moves,
            "balance": self.balance,
            "forget_broker": self.forget_broker,
        }

    async def start(self) -> None:
        def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Any:
            return serve_connection(r, w, self.methods, self.state.connection_lost)

        self._server = await asyncio.start_server(connected, self.host, self.requested_port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._liveness = asyncio.get_running_loop().create_task(self._liveness_loop())
        self._balancing = asyncio.get_running_loop().create_task(self._balance_loop())
        log.info("controller %s listening on %s:%d", self.state.cluster_id, self.host, self.port)

    async def stop(self) -> None:
        for task in (self._liveness, self._balancing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self.state.close()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _liveness_loop(self) -> None:
        # A fine tick: the time from a crash to failover is the session timeout plus at most this.
        tick = min(0.1, self.session_timeout_s / 10)
        while True:
            await asyncio.sleep(tick)
            before = self.state.version
            try:
                dead = self.state.expire(self.session_timeout_s, self.lost_grace_s)
            except Exception:
                log.exception("liveness check failed")
                continue
            for bid in dead:
                log.warning("broker %d is gone (no heartbeat within %.1fs, or %.1fs after its connection closed): "
                            "fenced", bid, self.session_timeout_s, self.lost_grace_s)  # fmt: skip
            for t in self.state.takeovers.values():
                if t.state == "waiting" and t.reason and self.state.version != before:
                    log.warning("WAL %s of broker %d waits: %s", t.wal_id, t.from_broker, t.reason)
                elif self.state.version != before:
                    log.info("broker %d takes over WAL %s of broker %d", t.to_broker, t.wal_id, t.from_broker)
            if self.state.version != before:
                await self._notify()

    async def _balance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.balancer.settings.interval_s)
            try:
                moves = self.balancer.tick()
                if moves:
                    log.info(self.balancer.decisions[-1])
                    await self._mutate(lambda m=moves: self.state.reassign(m, "balancer"))  # type: ignore[misc]
            except Exception:
                log.exception("balancer round failed")

    async def _mutate(self, fn: Callable[[], T]) -> T:
        before = self.state.version
        try:
            out = fn()
        except KeyError as e:
            raise RpcError(str(e.args[0]), "refused") from None
        if self.state.version != before:
            await self._notify()
        return out

    # --- methods -------------------------------------------------------------------------------

    async def ping(self, p: api.Ping) -> api.PingResult:
        return api.PingResult(self.state.cluster_id, self.state.version)

    async def register_broker(self, p: api.RegisterBroker) -> api.RegisterResult:
        b, busy = await self._mutate(lambda: self.state.register_broker(p.broker_id, p.zone, p.host, p.port, p.wal))
        log.info("broker %d registered at %s:%d (zone %s, %s WAL), epoch %d%s", b.id, b.host, b.port, b.zone,
                 b.wal.kind, b.epoch, "; a survivor is still uploading its WAL" if busy else "")  # fmt: skip
        return api.RegisterResult(b.epoch, self.state.cluster_id, self.state.version, busy)

    async def broker_ready(self, p: api.BrokerReady) -> api.VersionResult:
        n = await self._mutate(lambda: self.state.broker_ready(p.broker_id, p.broker_epoch))
        log.info("broker %d is running; it leads %d partitions again", p.broker_id, n)
        return api.VersionResult(self.state.version)

    async def heartbeat(self, p: api.Heartbeat) -> api.HeartbeatResult:
        b = await self._mutate(lambda: self.state.heartbeat(p.broker_id, p.broker_epoch, p.loads))
        return api.HeartbeatResult(self.state.version, b.state)

    async def controlled_shutdown(self, p: api.ControlledShutdown) -> api.ShutdownResult:
        moved = await self._mutate(lambda: self.state.controlled_shutdown(p.broker_id, p.broker_epoch, p.snapshots))
        # The leaving broker sends its clients to the others next: they should know the new leaders by then.
        await self._followed(self.state.version, exclude=p.broker_id, timeout=1.0)
        log.info("broker %d shut down; %d partitions moved to other brokers", p.broker_id, moved)
        return api.ShutdownResult(self.state.version, moved)

    async def cluster_shutdown(self, p: api.ClusterShutdown) -> api.VersionResult:
        self.state.stopping = True
        log.info("the whole cluster is stopping: brokers keep their partitions")
        return api.VersionResult(self.state.version)

    async def wal_taken_over(self, p: api.WalTakenOver) -> api.VersionResult:
        moved = await self._mutate(
            lambda: self.state.wal_taken_over(p.broker_id, p.broker_epoch, p.takeover_id, p.stream_epochs)
        )
        log.info("broker %d uploaded takeover %d (%d WAL records); %d partitions reopen", p.broker_id,
                 p.takeover_id, p.records, moved)  # fmt: skip
        return api.VersionResult(self.state.version)

    async def reassign(self, p: api.Reassign) -> api.ReassignResult:
        results, started = await self._mutate(lambda: self.state.reassign(p.moves, p.cause))
        for mid in started:
            m = self.state.moves[mid]
            log.info("move %d: %s-%d from broker %d to broker %d (%s)", m.id, m.topic, m.partition, m.source,
                     m.target, m.cause)  # fmt: skip
        return api.ReassignResult(results, self.state.version, started)

    async def partitions_released(self, p: api.PartitionsReleased) -> api.VersionResult:
        moved = await self._mutate(lambda: self.state.partitions_released(p.broker_id, p.broker_epoch, p.released))
        if moved:
            # The old leader answers its held requests next: the new leader should know by then.
            await self._followed(self.state.version, exclude=p.broker_id, timeout=0.5)
        return api.VersionResult(self.state.version)

    async def partition_opened(self, p: api.PartitionOpened) -> api.VersionResult:
        await self._mutate(
            lambda: self.state.partition_opened(p.broker_id, p.move_id, p.topic, p.partition, p.leader_epoch,
                                                p.opened_ms, p.first_append_ms, p.from_snapshot)
        )  # fmt: skip
        return api.VersionResult(self.state.version)

    async def balance(self, p: api.Balance) -> api.BalanceResult:
        exclude = set(p.exclude)
        unknown = sorted(exclude - set(self.state.brokers))
        if unknown:
            raise RpcError("UNKNOWN_BROKER", f"no broker {unknown[0]} in this cluster")
        why = self.balancer.settled()
        if why is not None and not p.dry_run:
            raise RpcError("NOT_SETTLED", f"not now: {why}")
        # Asked for by a user: the cooldown (which keeps the automatic rounds from flapping) does not apply.
        plan = self.balancer.plan(exclude, p.max_moves or None, cooldown=False)
        out = result(plan)
        if not p.dry_run:
            self.balancer.draining |= exclude
            if plan.moves:
                moves = [(m.key[0], m.key[1], m.target) for m in plan.moves]
                self.balancer.note(f"asked: {len(moves)} moves" + (f", draining {sorted(exclude)}" if exclude else ""))
                _, out.started = await self._mutate(
                    lambda: self.state.reassign(moves, "scale-in" if exclude else "balance")
                )
        out.version = self.state.version
        return out

    async def forget_broker(self, p: api.ForgetBroker) -> api.VersionResult:
        await self._mutate(lambda: self.state.forget_broker(p.broker_id))
        self.balancer.draining.discard(p.broker_id)
        log.info("broker %d left the cluster", p.broker_id)
        return api.VersionResult(self.state.version)

    async def get_snapshot(self, p: api.GetSnapshot) -> api.SnapshotResult:
        return api.SnapshotResult(self.state.snapshots.get((p.topic, p.partition)))

    async def list_moves(self, p: api.ListMoves) -> api.MovesResult:
        moves = self.state.moves
        if p.ids:
            return api.MovesResult([moves[i] for i in p.ids if i in moves])
        return api.MovesResult(list(moves.values()))

    async def _followed(self, version: int, exclude: int, timeout: float) -> None:
        """Until every running broker but `exclude` has asked for metadata after `version`
        (so it has applied it), or `timeout`."""

        def caught_up() -> bool:
            return all(self._applied.get(b.id, -1) >= version for b in self.state.alive_brokers() if b.id != exclude)

        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(caught_up), timeout)

    async def metadata(self, p: api.Metadata) -> api.MetadataChanges:
        if p.broker_id >= 0 and p.since > self._applied.get(p.broker_id, -1):
            self._applied[p.broker_id] = p.since
            await self._notify()
        since = p.since
        wait_s = max(0, min(p.wait_ms, 30_000)) / 1000
        if since == self.state.version and wait_s > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.state.version != since), wait_s)
        return msgspec.convert(self.state.changes_since(since), api.MetadataChanges)

    async def _topics(self, fn: Callable[[], list[dict[str, Any]]]) -> api.TopicResults:
        results = await self._mutate(fn)
        return api.TopicResults(results, self.state.version)

    async def create_topics(self, p: api.CreateTopics) -> api.TopicResults:
        return await self._topics(lambda: self.state.create_topics(p.topics, p.validate_only, p.internal))

    async def delete_topics(self, p: api.DeleteTopics) -> api.TopicResults:
        return await self._topics(lambda: self.state.delete_topics(p.names))

    async def create_partitions(self, p: api.CreatePartitions) -> api.TopicResults:
        return await self._topics(lambda: self.state.create_partitions(p.topics, p.validate_only))

    async def alter_configs(self, p: api.AlterConfigs) -> api.TopicResults:
        return await self._topics(lambda: self.state.alter_configs(p.resources, p.incremental, p.validate_only))

    async def alloc_producer_ids(self, p: api.AllocProducerIds) -> api.ProducerIds:
        return api.ProducerIds(self.state.alloc_producer_ids(p.count), max(1, min(p.count, 1_000_000)))

    async def status(self, p: api.Status) -> api.StatusResult:
        topics = list(self.state.topics.values())
        led = self.state.partitions_led()
        loads = self.state.broker_loads()
        return api.StatusResult(
            cluster_id=self.state.cluster_id,
            version=self.state.version,
            session_timeout_ms=int(self.session_timeout_s * 1000),
            brokers=[
                api.BrokerStatus(
                    b.id,
                    b.zone,
                    b.host,
                    b.port,
                    b.epoch,
                    b.alive,
                    b.state,
                    led[b.id],
                    b.wal,
                    *loads.get(b.id, (0.0, 0.0, 0.0))[:2],
                    b.id in self.balancer.draining,
                    loads.get(b.id, (0.0, 0.0, 0.0))[2],
                )
                for b in sorted(self.state.brokers.values(), key=lambda b: b.id)
            ],
            topics=len([t for t in topics if not t.internal]),
            internal_topics=len([t for t in topics if t.internal]),
            partitions=sum(len(t.partitions) for t in topics),
            offline_partitions=sum(1 for t in topics for p in t.partitions if not self.state.running(p.leader)),
            wal_takeovers=list(self.state.takeovers.values()),
            auto_balance=self.balancer.settings.enabled,
            balancer=list(self.balancer.decisions),
            moves_in_progress=len(self.state.moves_in_progress()),
        )
