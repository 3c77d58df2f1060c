"""The controller process: cluster metadata behind a small JSON RPC (docs/broker.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from engine.controller.rpc import Handler, RpcError, serve_connection
from engine.controller.state import ControllerState

log = logging.getLogger(__name__)


class ControllerServer:
    def __init__(
        self, directory: str | Path, host: str = "127.0.0.1", port: int = 0, session_timeout_ms: int = 9000
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self.requested_port = port
        self.port = port
        self.session_timeout_s = session_timeout_ms / 1000
        self.state = ControllerState(self.directory / "controller.db")
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._liveness: asyncio.Task[None] | None = None
        self.methods: dict[str, Handler] = {
            "ping": self.ping,
            "register_broker": self.register_broker,
            "heartbeat": self.heartbeat,
            "unregister_broker": self.unregister_broker,
            "metadata": self.metadata,
            "create_topics": self.create_topics,
            "delete_topics": self.delete_topics,
            "create_partitions": self.create_partitions,
            "alter_configs": self.alter_configs,
            "alloc_producer_ids": self.alloc_producer_ids,
            "status": self.status,
        }

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            lambda r, w: serve_connection(r, w, self.methods), self.host, self.requested_port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._liveness = asyncio.get_running_loop().create_task(self._liveness_loop())
        log.info("controller %s listening on %s:%d", self.state.cluster_id, self.host, self.port)

    async def stop(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._liveness
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self.state.close()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.session_timeout_s / 4))
            dead = self.state.expire(self.session_timeout_s)
            if dead:
                log.warning("brokers %s missed their heartbeats: marked not alive", dead)
                await self._notify()

    # --- methods -------------------------------------------------------------------------------

    async def ping(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"cluster_id": self.state.cluster_id, "version": self.state.version}

    async def register_broker(self, p: dict[str, Any]) -> dict[str, Any]:
        b = self.state.register_broker(int(p["broker_id"]), str(p.get("zone") or ""), str(p["host"]), int(p["port"]))
        log.info("broker %d registered at %s:%d (zone %s), epoch %d", b.id, b.host, b.port, b.zone, b.epoch)
        await self._notify()
        return {"broker_epoch": b.epoch, "cluster_id": self.state.cluster_id, "version": self.state.version}

    async def heartbeat(self, p: dict[str, Any]) -> dict[str, Any]:
        before = self.state.version
        try:
            self.state.heartbeat(int(p["broker_id"]), int(p["broker_epoch"]))
        except KeyError as e:
            raise RpcError(str(e.args[0]), f"broker {p.get('broker_id')} epoch {p.get('broker_epoch')}") from None
        if self.state.version != before:
            await self._notify()
        return {"version": self.state.version}

    async def unregister_broker(self, p: dict[str, Any]) -> dict[str, Any]:
        if self.state.set_alive(int(p["broker_id"]), False, int(p["broker_epoch"])):
            await self._notify()
        return {"version": self.state.version}

    async def metadata(self, p: dict[str, Any]) -> dict[str, Any]:
        since = int(p.get("since", 0))
        wait_s = max(0, min(int(p.get("wait_ms", 0)), 30_000)) / 1000
        if since == self.state.version and wait_s > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.state.version != since), wait_s)
        return self.state.changes_since(since)

    async def _mutate(self, fn: Any) -> dict[str, Any]:
        before = self.state.version
        results = fn()
        if self.state.version != before:
            await self._notify()
        return {"results": results, "version": self.state.version}

    async def create_topics(self, p: dict[str, Any]) -> dict[str, Any]:
        return await self._mutate(
            lambda: self.state.create_topics(
                list(p.get("topics") or []), bool(p.get("validate_only")), bool(p.get("internal"))
            )
        )

    async def delete_topics(self, p: dict[str, Any]) -> dict[str, Any]:
        return await self._mutate(lambda: self.state.delete_topics([str(n) for n in p.get("names") or []]))

    async def create_partitions(self, p: dict[str, Any]) -> dict[str, Any]:
        return await self._mutate(
            lambda: self.state.create_partitions(list(p.get("topics") or []), bool(p.get("validate_only")))
        )

    async def alter_configs(self, p: dict[str, Any]) -> dict[str, Any]:
        return await self._mutate(
            lambda: self.state.alter_configs(
                list(p.get("resources") or []), bool(p.get("incremental")), bool(p.get("validate_only"))
            )
        )

    async def alloc_producer_ids(self, p: dict[str, Any]) -> dict[str, Any]:
        count = int(p.get("count", 1000))
        first = self.state.alloc_producer_ids(count)
        return {"first": first, "count": count}

    async def status(self, p: dict[str, Any]) -> dict[str, Any]:
        topics = [t for t in self.state.topics.values()]
        return {
            "cluster_id": self.state.cluster_id,
            "version": self.state.version,
            "brokers": [b.to_dict() for b in sorted(self.state.brokers.values(), key=lambda b: b.id)],
            "topics": len([t for t in topics if not t.internal]),
            "internal_topics": len([t for t in topics if t.internal]),
            "partitions": sum(len(t.partitions) for t in topics),
        }
