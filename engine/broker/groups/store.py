"""One partition of __consumer_offsets: a stream of Kafka record batches of key/value records.

The log is the durable truth; the coordinator's in-memory groups are rebuilt from
it by replaying from the stream's start. Kafka keeps such a log small with log
compaction; here the same effect comes from snapshot-and-trim: ``live`` mirrors
what compaction would keep (the latest value of every key, tombstoned keys
dropped, including appends not yet durable). When the stream holds many more
records than ``live``, the whole of ``live`` is appended in one synchronous burst
(so no other append can land between its batches, and everything appended
before it is reflected in it) and, once durable, the stream is trimmed to where
the snapshot starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from engine.protocol.errors import ProtocolError
from engine.protocol.records import Record, build_batch, iter_records

log = logging.getLogger(__name__)

#: One record to append: key, and value or None for a tombstone.
KV = tuple[bytes, bytes | None]


class BatchLike(Protocol):
    base_offset: int
    record_count: int
    payload: bytes


class StreamLike(Protocol):
    """What the coordinator needs of ``engine.storage.stream.Stream``."""

    @property
    def start_offset(self) -> int: ...
    @property
    def end_offset(self) -> int: ...

    def append(self, payload: bytes, record_count: int) -> asyncio.Future[int]: ...

    async def read(self, offset: int, max_bytes: int = ...) -> Sequence[BatchLike]: ...


class OffsetsLog:
    def __init__(
        self,
        stream: StreamLike,
        *,
        now_ms: Callable[[], int],
        compact_min_records: int = 10_000,
        compact_ratio: float = 4.0,
        snapshot_batch_bytes: int = 512 << 10,
    ) -> None:
        self.stream = stream
        self.live: dict[bytes, bytes] = {}
        self._now_ms = now_ms
        self._compact_min_records = compact_min_records
        self._compact_ratio = compact_ratio
        self._snapshot_batch_bytes = snapshot_batch_bytes
        self._compaction: asyncio.Task[None] | None = None
        self.snapshots = 0

    def _next_offset(self) -> int:
        # Stream hands out offsets at append() time, in call order, so the offset the
        # next append gets is known here; writing it into the batch header makes the
        # stored batches real Kafka batches with true offsets.
        return int(getattr(self.stream, "next_offset", self.stream.end_offset))

    async def replay(self, read_bytes: int = 1 << 20) -> list[tuple[bytes, bytes | None, int]]:
        """Every record from the stream's start to its end: (key, value, offset); fills ``live``."""
        out: list[tuple[bytes, bytes | None, int]] = []
        offset = self.stream.start_offset
        end = self.stream.end_offset
        while offset < end:
            batches = await self.stream.read(offset, read_bytes)
            if not batches:
                break
            for b in batches:
                try:
                    for r in iter_records(b.payload):
                        if r.key is None:
                            continue
                        out.append((r.key, r.value, r.offset if r.offset >= 0 else b.base_offset))
                except (ValueError, ProtocolError) as e:
                    # Not ours (something produced into the internal topic) or damaged: the
                    # rest of the partition is still worth loading.
                    log.warning("skipping unreadable batch at offset %d of __consumer_offsets: %s", b.base_offset, e)
            offset = batches[-1].base_offset + batches[-1].record_count
        self.live.clear()
        for k, v, _ in out:
            if v is None:
                self.live.pop(k, None)
            else:
                self.live[k] = v
        return out

    def append(self, records: Sequence[KV]) -> asyncio.Future[int]:
        """Append ``records`` as one batch (atomically); resolves to its base offset once durable."""
        base = self._next_offset()
        payload = build_batch([Record(k, v) for k, v in records], base_offset=base, now_ms=self._now_ms())
        fut = self.stream.append(payload, len(records))
        for k, v in records:
            if v is None:
                self.live.pop(k, None)
            else:
                self.live[k] = v
        self._maybe_compact()
        return fut

    def _maybe_compact(self) -> None:
        if self._compaction is not None or not hasattr(self.stream, "trim"):
            return
        size = self._next_offset() - self.stream.start_offset
        if size < max(self._compact_min_records, self._compact_ratio * len(self.live)):
            return
        self._compaction = asyncio.get_running_loop().create_task(self._compact())
        self._compaction.add_done_callback(self._compaction_done)

    def _compaction_done(self, task: asyncio.Task[None]) -> None:
        self._compaction = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("__consumer_offsets snapshot failed: %s", task.exception())

    async def _compact(self) -> None:
        # No await until every snapshot batch is appended: see the module docstring.
        first = self._next_offset()
        futures: list[asyncio.Future[int]] = []
        chunk: list[Record] = []
        size = 0
        now = self._now_ms()
        for k, v in self.live.items():
            chunk.append(Record(k, v))
            size += len(k) + len(v) + 16
            if size >= self._snapshot_batch_bytes:
                futures.append(self._append_chunk(chunk, now))
                chunk, size = [], 0
        if chunk:
            futures.append(self._append_chunk(chunk, now))
        if futures:
            await asyncio.gather(*futures)
        elif self.stream.end_offset < first:
            # Nothing is live, but appends are in flight; the next append retries.
            return
        stream: Any = self.stream
        await stream.trim(first)
        self.snapshots += 1
        log.info("__consumer_offsets snapshot: %d live records, trimmed to offset %d", len(self.live), first)

    def _append_chunk(self, chunk: list[Record], now: int) -> asyncio.Future[int]:
        payload = build_batch(chunk, base_offset=self._next_offset(), now_ms=now)
        return self.stream.append(payload, len(chunk))

    def cancel(self) -> None:
        if self._compaction is not None:
            self._compaction.cancel()
