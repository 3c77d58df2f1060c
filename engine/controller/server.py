"""The controller process: cluster metadata behind a small JSON RPC (docs/broker.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from engine.controller import api
from engine.controller.autobalance import AutoBalancer, BalancerSettings, result
from engine.controller.lease import Lease
from engine.controller.rpc import NOT_LEADER, Handler, RpcError, serve_connection
from engine.controller.state import ControllerState
from engine.controller.store import NotLeader, PostgresControllerStore
from engine.postgres import PgError, is_postgres_url

log = logging.getLogger(__name__)
T = TypeVar("T")


class ControllerServer:
    """The controller's RPC server.

    On SQLite (the default) it leads from the start. On PostgreSQL any number of controller
    processes share the database: each starts as a standby that answers NOT_LEADER (naming
    the leader), and the one holding the lease (lease.py) loads the state and leads; every
    write it makes checks the lease epoch (store.py). A leader that lost the lease, or could
    not renew it within the TTL, drops its state and its connections and becomes a standby.
    """

    def __init__(
        self,
        directory: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        session_timeout_ms: int = 3000,
        lost_grace_ms: int = 1500,
        balancer: BalancerSettings | None = None,
        metadata: str = "",
        lease_ttl_ms: int = 3000,
        advertise: str = "",
    ) -> None:
        """metadata: a postgresql:// URL for the cluster's state; empty: controller.db in `directory`.
        advertise: host:port that brokers reach this controller at (default: host and bound port)."""
        self.directory = Path(directory)
        self.metadata = metadata
        self.replicated = is_postgres_url(metadata)
        self.host = host
        self.requested_port = port
        self.port = port
        self.advertise = advertise
        self.session_timeout_s = session_timeout_ms / 1000
        self.lost_grace_s = lost_grace_ms / 1000
        self.lease_ttl_s = lease_ttl_ms / 1000
        self.settings = balancer or BalancerSettings()
        self.state: ControllerState
        self.balancer: AutoBalancer
        #: True while this process leads (always on SQLite).
        self.leading = False
        self.lease_epoch = 0
        #: The leader's address as the lease row names it (for NOT_LEADER answers).
        self.leader_address = ""
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not self.replicated:
            self.state = ControllerState(metadata or self.directory / "controller.db")
            self.balancer = AutoBalancer(self.state, self.settings)
            self.leading = True
        self._balancing: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        #: The metadata version each broker has applied (the `since` of its latest metadata call).
        self._applied: dict[int, int] = {}
        self._server: asyncio.Server | None = None
        self._liveness: asyncio.Task[None] | None = None
        self._leasing: asyncio.Task[None] | None = None
        self._lease: Lease | None = None
        self._lease_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")
        self._writers: set[asyncio.StreamWriter] = set()
        methods: dict[str, Handler] = {
            "ping": self.ping,
            "register_broker": self.register_broker,
            "broker_ready": self.broker_ready,
            "heartbeat": self.heartbeat,
            "controlled_shutdown": self.controlled_shutdown,
            "cluster_shutdown": self.cluster_shutdown,
            "wal_taken_over": self.wal_taken_over,
            "metadata": self.metadata_changes,
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
        self.methods = {name: self._guarded(h) for name, h in methods.items()}

    @property
    def address(self) -> str:
        return self.advertise or f"{self.host}:{self.port}"

    def _not_leader(self) -> RpcError:
        where = f"the leader is at {self.leader_address}" if self.leader_address else "no leader is known yet"
        return RpcError(NOT_LEADER, f"this controller is a standby; {where}", self.leader_address)

    def _guarded(self, handler: Handler) -> Handler:
        async def call(p: Any) -> Any:
            if not self.leading:
                raise self._not_leader()
            try:
                out = await handler(p)
            except NotLeader as e:
                self._step_down(str(e))
                raise self._not_leader() from None
            if not self.leading:
                raise self._not_leader()  # stepped down meanwhile: the answer may come from a stale state
            return out

        return call

    async def start(self) -> None:
        def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Any:
            self._writers.add(w)

            def lost(ids: set[int]) -> None:
                self._writers.discard(w)
                if self.leading:
                    self.state.connection_lost(ids)

            return serve_connection(r, w, self.methods, lost)

        self._server = await asyncio.start_server(connected, self.host, self.requested_port)
        self.port = self._server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        if self.replicated:
            self._lease = Lease(self.metadata, self.holder, self.address, self.lease_ttl_s)
            # The schema is checked before anything listens for real: a bad URL is one line at start.
            await loop.run_in_executor(self._lease_pool, self._lease.current)
            self._leasing = loop.create_task(self._lease_loop())
            log.info("controller %s on %s:%d, standing by for the lease (TTL %.1fs)", self.holder, self.host,
                     self.port, self.lease_ttl_s)  # fmt: skip
        else:
            self._start_leading_tasks()
            log.info("controller %s listening on %s:%d", self.state.cluster_id, self.host, self.port)

    def _start_leading_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self._liveness = loop.create_task(self._liveness_loop())
        self._balancing = loop.create_task(self._balance_loop())

    async def _lease_loop(self) -> None:
        assert self._lease is not None
        lease, loop = self._lease, asyncio.get_running_loop()
        poll = min(0.25, self.lease_ttl_s / 6)
        renew_every = self.lease_ttl_s / 3
        last_renewed = 0.0  # monotonic start of the last renewal the database confirmed
        complained = 0.0
        while True:
            try:
                if not self.leading:
                    epoch = await loop.run_in_executor(self._lease_pool, lease.try_acquire)
                    if epoch is None:
                        info = await loop.run_in_executor(self._lease_pool, lease.current)
                        self.leader_address = "" if info.expired else info.address
                        await asyncio.sleep(poll)
                        continue
                    started = time.monotonic()
                    await self._lead(epoch)
                    last_renewed = started
                    continue
                await asyncio.sleep(renew_every)
                started = time.monotonic()
                budget = self.lease_ttl_s * 0.8 - (started - last_renewed)
                try:
                    held = await asyncio.wait_for(
                        loop.run_in_executor(self._lease_pool, lease.renew, self.lease_epoch), max(0.05, budget)
                    )
                except TimeoutError:
                    held = None
                if held:
                    last_renewed = started
                elif held is False:
                    self._step_down(f"the lease moved on from epoch {self.lease_epoch}")
                elif time.monotonic() - last_renewed > self.lease_ttl_s * 0.8:
                    self._step_down("the lease could not be renewed in time")
            except asyncio.CancelledError:
                raise
            except PgError as e:
                if self.leading and time.monotonic() - last_renewed > self.lease_ttl_s * 0.8:
                    self._step_down(f"the lease could not be renewed: {e}")
                if time.monotonic() - complained > 10:
                    log.warning("%s", e)
                    complained = time.monotonic()
                await asyncio.sleep(poll)
            except Exception:
                log.exception("controller lease loop failed; retrying")
                if self.leading:
                    self._step_down("the lease loop failed")
                await asyncio.sleep(poll)

    async def _lead(self, epoch: int) -> None:
        """Load the state under the new lease epoch and start leading."""
        loop = asyncio.get_running_loop()

        def load() -> ControllerState:
            store = PostgresControllerStore(self.metadata, lease_epoch=epoch)
            try:
                return ControllerState(store, new_term=True, session_grace_s=self.session_timeout_s)
            except BaseException:
                store.close()
                raise

        try:
            state = await loop.run_in_executor(self._lease_pool, load)
        except NotLeader as e:
            log.warning("took the lease at epoch %d but lost it while loading: %s", epoch, e)
            return
        self.state = state
        self.balancer = AutoBalancer(state, self.settings)
        self._applied.clear()
        self.lease_epoch = epoch
        self.leader_address = self.address
        self.leading = True
        self._start_leading_tasks()
        log.info("controller %s leads at lease epoch %d: cluster %s, metadata version %d, %d brokers", self.holder,
                 epoch, state.cluster_id, state.version, len(state.brokers))  # fmt: skip

    def _step_down(self, reason: str) -> None:
        """Stop acting as leader at once (synchronously: no other request runs on the old state)."""
        if not self.leading:
            return
        self.leading = False
        self.leader_address = ""
        log.warning("controller %s stops leading: %s", self.holder, reason)
        for task in (self._liveness, self._balancing):
            if task is not None:
                task.cancel()
        self._liveness = self._balancing = None
        with contextlib.suppress(Exception):
            self.state.close()
        # Brokers reconnect, are told NOT_LEADER and move to the new leader.
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def stop(self) -> None:
        for task in (self._leasing, self._liveness, self._balancing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self.leading:
            self.state.close()
        if self._lease is not None:
            if self.leading:
                # A standby takes over at its next poll instead of after the TTL.
                with contextlib.suppress(PgError):
                    await asyncio.get_running_loop().run_in_executor(
                        self._lease_pool, self._lease.release, self.lease_epoch
                    )
            self._lease.close()
        self.leading = False
        self._lease_pool.shutdown(wait=False)

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
            except NotLeader as e:
                self._step_down(str(e))
                return
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
            except NotLeader as e:
                self._step_down(str(e))
                return
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
        b = await self._mutate(
            lambda: self.state.heartbeat(p.broker_id, p.broker_epoch, p.loads, p.relay_floor_ms)
        )
        return api.HeartbeatResult(self.state.version, b.state, self.state.relay_horizon())

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

    async def metadata_changes(self, p: api.Metadata) -> api.MetadataChanges:
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
