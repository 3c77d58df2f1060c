"""An in-memory stand-in for ``engine.storage.stream.Stream``, for tests of the coordinator.

Same contract as the real stream where the coordinator relies on it: offsets are
handed out at ``append`` time in call order, the future resolves once "durable",
``read`` returns whole batches from the one holding the offset, a failed append
fails every later one, ``trim`` moves the start. ``hold`` parks appends until
``release`` so a test can see what happens before durability.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from engine.storage.errors import FencedError, OffsetOutOfRange, StorageError


@dataclass(slots=True)
class MemoryBatch:
    base_offset: int
    record_count: int
    payload: bytes

    @property
    def end_offset(self) -> int:
        return self.base_offset + self.record_count


@dataclass(slots=True)
class DurableLog:
    """What survives a "restart": the durable batches and the start offset."""

    batches: list[MemoryBatch] = field(default_factory=list)
    start_offset: int = 0
    epoch: int = 0

    @property
    def end_offset(self) -> int:
        return self.batches[-1].end_offset if self.batches else self.start_offset


class MemoryStream:
    def __init__(self, durable: DurableLog | None = None) -> None:
        self.durable = durable if durable is not None else DurableLog()
        self.durable.epoch += 1
        self.epoch = self.durable.epoch
        self.next_offset = self.durable.end_offset
        self.hold = False
        self.fail_next: StorageError | None = None
        self._error: StorageError | None = None
        self._parked: list[tuple[asyncio.Future[int], MemoryBatch]] = []
        self.appends = 0

    @property
    def start_offset(self) -> int:
        return self.durable.start_offset

    @property
    def end_offset(self) -> int:
        return self.durable.end_offset

    def append(self, payload: bytes, record_count: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.durable.epoch != self.epoch and self._error is None:
            self._error = FencedError(f"epoch {self.epoch} fenced by {self.durable.epoch}")
        if self.fail_next is not None and self._error is None:
            self._error, self.fail_next = self.fail_next, None
        if self._error is not None:
            fut.set_exception(self._error)
            return fut
        self.appends += 1
        batch = MemoryBatch(self.next_offset, record_count, bytes(payload))
        self.next_offset += record_count
        self._parked.append((fut, batch))
        if not self.hold:
            asyncio.get_running_loop().call_soon(self.release)
        return fut

    def release(self) -> None:
        parked, self._parked = self._parked, []
        for fut, batch in parked:
            self.durable.batches.append(batch)
            if not fut.done():
                fut.set_result(batch.base_offset)

    async def read(self, offset: int, max_bytes: int = 1 << 20) -> list[MemoryBatch]:
        if offset < self.start_offset or offset > self.end_offset:
            raise OffsetOutOfRange(0, offset, self.start_offset, self.end_offset)
        out: list[MemoryBatch] = []
        size = 0
        for b in self.durable.batches:
            if b.end_offset <= offset:
                continue
            if out and size + len(b.payload) > max_bytes:
                break
            out.append(b)
            size += len(b.payload)
        return out

    async def trim(self, new_start: int) -> None:
        if new_start > self.end_offset:
            raise OffsetOutOfRange(0, new_start, self.start_offset, self.end_offset)
        self.durable.batches = [b for b in self.durable.batches if b.base_offset >= new_start]
        self.durable.start_offset = max(self.durable.start_offset, new_start)


class MemoryStreams:
    """``open_stream`` for a GroupCoordinator: one durable log per (topic, partition).

    Every open is a new incarnation at a new epoch, fencing the previous one, like a
    broker restart or a partition moving.
    """

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], DurableLog] = {}
        self.open: dict[tuple[str, int], MemoryStream] = {}
        self.opens = 0

    async def __call__(self, topic: str, partition: int) -> MemoryStream:
        self.opens += 1
        durable = self.logs.setdefault((topic, partition), DurableLog())
        stream = MemoryStream(durable)
        self.open[(topic, partition)] = stream
        return stream
