"""A partition led by this broker: its storage stream plus what Kafka keeps beside a log.

Beside the stream, a partition keeps in memory what a Kafka log keeps in its index
files: producer state (idempotence), a time index (ListOffsets by timestamp) and the
leader-epoch cache (OffsetForLeaderEpoch). None of it is persisted by the broker:
opening a partition rebuilds it by scanning the batch headers of the stream, so a
broker holds nothing that the WAL, S3 and the controller cannot give back.

A leader that gives a partition up (reassignment, controlled shutdown) hands the
controller a snapshot of its producer state and epoch cache; the next leader loads it
and scans only what came after it, so a move costs the same for any partition size.
The time index below the snapshot is rebuilt on the first ListOffsets by time.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.broker.errors import BrokerError
from engine.controller.api import PartitionSnapshot, ProducerSnapshot
from engine.protocol.errors import CorruptRecords, ErrorCode
from engine.protocol.records import (
    NO_PRODUCER_ID,
    RecordBatch,
    assign_offsets,
    batch_records,
    read_batches,
)
from engine.storage.relay import RefRecord, RelayRef

if TYPE_CHECKING:
    from engine.broker.image import TopicInfo
    from engine.storage.engine import StorageEngine
    from engine.storage.stream import Stream

log = logging.getLogger(__name__)

#: Batches per producer remembered for duplicate detection (Kafka's max.in.flight limit for idempotence).
DEDUP_WINDOW = 5
SCAN_CHUNK = 4 << 20
INT32_MAX = 0x7FFFFFFF
LATEST, EARLIEST = -1, -2  # ListOffsets' special timestamps


@dataclass(slots=True)
class BatchMeta:
    first_seq: int
    last_seq: int
    base_offset: int
    #: Resolves once durable; None for batches found by the scan (durable by definition).
    done: asyncio.Future[int] | None = None
    log_append_time: int = -1


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    batches: deque[BatchMeta] = field(default_factory=lambda: deque(maxlen=DEDUP_WINDOW))

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1


def _in_sequence(last: int, nxt: int) -> bool:
    return nxt == last + 1 or (nxt == 0 and last == INT32_MAX)


@dataclass(slots=True)
class AppendResult:
    base_offset: int
    #: Resolves to base_offset once durable.
    done: asyncio.Future[int]
    log_append_time: int = -1
    duplicate: bool = False


class Partition:
    def __init__(self, topic: TopicInfo, index: int, stream_id: int, leader_epoch: int) -> None:
        self.topic = topic
        self.index = index
        self.stream_id = stream_id
        self.leader_epoch = leader_epoch
        self.stream: Stream | None = None
        self.producers: dict[int, ProducerEntry] = {}
        # Time index: the running max timestamp where it grows, and the batch base offset there.
        self._ts = array("q")
        self._ts_offsets = array("q")
        # Leader-epoch cache: (epoch, first offset written in that epoch), epochs increasing.
        self.epochs: list[tuple[int, int]] = []
        self.failed: BaseException | None = None
        #: Set while the partition is being given up: no more appends.
        self.draining = False
        self._last_done: asyncio.Future[int] | None = None
        #: Offsets below this are missing from the time index (opened from a snapshot); -1: none.
        self._ts_gap_end = -1
        self._ts_lock = asyncio.Lock()
        self.from_snapshot = False
        self._first_append: asyncio.Future[int] | None = None
        #: Bytes produced to and fetched from this partition here (the balancer's load reports).
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0
        self.opened_at = time.monotonic()

    def __repr__(self) -> str:
        return f"Partition({self.topic.name}-{self.index}, stream {self.stream_id}, epoch {self.leader_epoch})"

    # --- opening -------------------------------------------------------------------------------

    async def open(self, storage: StorageEngine, snapshot: PartitionSnapshot | None = None) -> None:
        self.stream = await storage.open_stream(self.stream_id, self.leader_epoch)
        start = self.stream.start_offset
        if (
            snapshot is not None
            and snapshot.stream_id == self.stream_id
            and snapshot.end_offset <= self.stream.end_offset
        ):
            self._load(snapshot)
            start = max(start, snapshot.end_offset)
            self._ts_gap_end = start
            self.from_snapshot = True
        await self._scan(start)
        if not self.epochs or self.epochs[-1][0] < self.leader_epoch:
            self.epochs.append((self.leader_epoch, self.stream.end_offset))

    def _load(self, snap: PartitionSnapshot) -> None:
        for p in snap.producers:
            entry = ProducerEntry(p.epoch)
            for first, last, base, append_time in p.batches:
                entry.batches.append(BatchMeta(first, last, base, None, append_time))
            self.producers[p.producer_id] = entry
        self.epochs = [(e, o) for e, o in snap.epochs]

    def snapshot(self) -> PartitionSnapshot:
        """Producer state and epoch cache up to the stream's end (call once no appends are in flight)."""
        stream = self.ready
        producers = [
            ProducerSnapshot(pid, e.epoch, [(b.first_seq, b.last_seq, b.base_offset, b.log_append_time)
                                            for b in e.batches])
            for pid, e in self.producers.items()
        ]  # fmt: skip
        return PartitionSnapshot(
            self.topic.name, self.index, self.stream_id, self.leader_epoch, stream.end_offset, producers,
            list(self.epochs),
        )  # fmt: skip

    def watch_first_append(self) -> asyncio.Future[int]:
        """Resolves to the wall-clock ms at which the next append became durable."""
        if self._first_append is None:
            self._first_append = asyncio.get_running_loop().create_future()
        return self._first_append

    def _first_durable(self, fut: asyncio.Future[int]) -> None:
        w = self._first_append
        if w is not None and not w.done() and not fut.cancelled() and fut.exception() is None:
            w.set_result(int(time.time() * 1000))

    async def drain(self) -> None:
        """Take no more appends and wait until those in flight are durable (or failed)."""
        self.draining = True
        last = self._last_done
        if last is not None and not last.done():
            await asyncio.wait([last])

    async def _scan(self, start: int | None = None) -> None:
        """Rebuild producer state, time index and epoch cache from the stream's batch headers."""
        stream = self.stream
        assert stream is not None
        scanned = 0
        async for rb, size in self._batches(stream.start_offset if start is None else start, stream.end_offset):
            self._index(rb, None)
            scanned += size
        if scanned:
            log.info("%r: scanned %d bytes, %d producers", self, scanned, len(self.producers))

    async def _batches(self, offset: int, end: int) -> AsyncIterator[tuple[RecordBatch, int]]:
        """The batch headers in [offset, end), each with its share of the bytes read."""
        stream = self.ready
        while offset < end:
            chunk = await stream.read(offset, SCAN_CHUNK)
            if not chunk:
                break
            for b in chunk:
                if b.base_offset >= end:
                    return
                try:
                    batches = read_batches(b.payload, verify_crc=False)
                except CorruptRecords:
                    continue  # not Kafka batches (an internal stream's own format): nothing to index
                for rb in batches:
                    yield rb, len(b.payload) // len(batches)
            offset = chunk[-1].end_offset

    async def _fill_time_index(self) -> None:
        """The time index below a loaded snapshot, built on first use."""
        async with self._ts_lock:
            if self._ts_gap_end < 0:
                return
            stream = self.ready
            ts, offsets = array("q"), array("q")
            async for rb, _ in self._batches(stream.start_offset, self._ts_gap_end):
                if not ts or rb.max_timestamp > ts[-1]:
                    ts.append(rb.max_timestamp)
                    offsets.append(rb.base_offset)
            for t, o in zip(self._ts, self._ts_offsets, strict=True):
                if not ts or t > ts[-1]:
                    ts.append(t)
                    offsets.append(o)
            self._ts, self._ts_offsets = ts, offsets
            self._ts_gap_end = -1

    def _index(self, rb: RecordBatch, done: asyncio.Future[int] | None) -> None:
        if not self._ts or rb.max_timestamp > self._ts[-1]:
            self._ts.append(rb.max_timestamp)
            self._ts_offsets.append(rb.base_offset)
        e = rb.partition_leader_epoch
        if e >= 0 and (not self.epochs or e > self.epochs[-1][0]):
            self.epochs.append((e, rb.base_offset))
        if rb.producer_id != NO_PRODUCER_ID and rb.base_sequence >= 0:
            entry = self.producers.get(rb.producer_id)
            if entry is None or rb.producer_epoch != entry.epoch:
                entry = ProducerEntry(rb.producer_epoch)
                self.producers[rb.producer_id] = entry
            entry.batches.append(BatchMeta(rb.base_sequence, rb.last_sequence, rb.base_offset, done))

    # --- offsets -------------------------------------------------------------------------------

    @property
    def ready(self) -> Stream:
        if self.stream is None:
            raise BrokerError(ErrorCode.LEADER_NOT_AVAILABLE, f"{self!r} is not open")
        return self.stream

    @property
    def high_watermark(self) -> int:
        return self.ready.end_offset

    @property
    def log_start_offset(self) -> int:
        return self.ready.start_offset

    def check_leader_epoch(self, current_leader_epoch: int) -> None:
        if current_leader_epoch < 0 or current_leader_epoch == self.leader_epoch:
            return
        if current_leader_epoch > self.leader_epoch:
            raise BrokerError(ErrorCode.UNKNOWN_LEADER_EPOCH, "the client knows a newer leader epoch")
        raise BrokerError(ErrorCode.FENCED_LEADER_EPOCH, "the client's leader epoch is stale")

    def epoch_for_offset(self, offset: int) -> int:
        i = bisect.bisect_right([o for _, o in self.epochs], offset) - 1
        return self.epochs[i][0] if i >= 0 else -1

    def end_offset_for_epoch(self, requested: int) -> tuple[int, int]:
        """Kafka's LeaderEpochFileCache.endOffsetFor: (epoch, end offset) for OffsetForLeaderEpoch."""
        leo = self.ready.next_offset
        if requested < 0:
            return -1, -1
        if self.epochs and self.epochs[-1][0] == requested:
            return requested, leo
        higher = next(((e, o) for e, o in self.epochs if e > requested), None)
        if higher is None:
            return -1, -1
        floor = [(e, o) for e, o in self.epochs if e <= requested]
        if not floor:
            return requested, higher[1]
        return floor[-1][0], higher[1]

    async def list_offset(self, timestamp: int) -> tuple[int, int, int]:
        """ListOffsets for one timestamp: latest (-1), earliest (-2) or a time; (timestamp, offset, epoch)."""
        stream = self.ready
        if timestamp == LATEST:
            return -1, stream.end_offset, self.leader_epoch
        if timestamp == EARLIEST:
            return -1, stream.start_offset, self.epoch_for_offset(stream.start_offset)
        if timestamp < 0:
            raise BrokerError(ErrorCode.INVALID_REQUEST, f"unknown special timestamp {timestamp}")
        ts, offset = await self.offset_for_timestamp(timestamp)
        return ts, offset, self.epoch_for_offset(offset) if offset >= 0 else -1

    async def offset_for_timestamp(self, target: int) -> tuple[int, int]:
        """(timestamp, offset) of the first record at or after `target` ms, or (-1, -1)."""
        stream = self.ready
        if self._ts_gap_end >= 0:
            await self._fill_time_index()
        i = bisect.bisect_left(self._ts, target)
        if i >= len(self._ts):
            return -1, -1
        # Every record before this batch is older than target; the answer is in it or after it.
        offset = max(self._ts_offsets[i], stream.start_offset)
        while offset < stream.end_offset:
            chunk = await stream.read(offset, 1 << 20)
            if not chunk:
                break
            for b in chunk:
                try:
                    batches = read_batches(b.payload, verify_crc=False)
                except CorruptRecords:
                    continue
                for rb in batches:
                    if rb.max_timestamp < target or rb.next_offset <= offset:
                        continue
                    try:
                        records = batch_records(b.payload, rb)
                    except CorruptRecords:
                        # Stored as a client sent it (Produce does not inflate batches), e.g. one
                        # that inflates past the bound: its header says a record at or after
                        # `target` is in it, so the batch's first offset is the earliest answer
                        # that skips nothing.
                        first = max(rb.base_offset, offset)
                        return (-1, -1) if first >= stream.end_offset else (rb.max_timestamp, first)
                    for r in records:
                        if r.offset >= offset and r.timestamp is not None and r.timestamp >= target:
                            if r.offset >= stream.end_offset:
                                return -1, -1
                            return r.timestamp, r.offset
            offset = chunk[-1].end_offset
        return -1, -1

    # --- appending -----------------------------------------------------------------------------

    def append(
        self,
        records: memoryview,
        batches: list[RecordBatch],
        now_ms: int,
        relay: RelayRef | None = None,
        relay_sync: str | None = None,
    ) -> AppendResult:
        """Validate producer state, give the batches offsets and hand them to the stream.

        `relay`: the bytes are in a zone proxy's relay object (engine/broker/router.py); the
        WAL gets only a reference to them (and makes the file `relay_sync` durable first).

        Synchronous up to stream.append, so batches of concurrent requests cannot interleave
        between the sequence check and the offset assignment.
        """
        stream = self.ready
        if self.failed is not None:
            raise BrokerError(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"{self!r} failed: {self.failed}")
        if self.draining:
            raise BrokerError(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"{self!r} is moving to another broker")
        limit = int(self.topic.config("max.message.bytes"))
        for rb in batches:
            if rb.size > limit:
                raise BrokerError(
                    ErrorCode.MESSAGE_TOO_LARGE, f"batch of {rb.size} bytes is over max.message.bytes {limit}"
                )
        dup = self._check_producer(batches)
        if dup is not None:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            if dup.done is None:
                fut.set_result(dup.base_offset)
            else:
                dup.done.add_done_callback(lambda f: _chain(f, fut))
            return AppendResult(dup.base_offset, fut, dup.log_append_time, duplicate=True)
        log_append = self.topic.config("message.timestamp.type") == "LogAppendTime"
        first = stream.next_offset
        end = assign_offsets(
            records,
            batches,
            first,
            log_append_time_ms=now_ms if log_append else None,
            partition_leader_epoch=self.leader_epoch,
        )
        self.bytes_in += len(records)
        self.requests += 1
        ref = None
        if relay is not None:
            ref = RefRecord(relay, self.leader_epoch, now_ms if log_append else -1)
        done = (
            stream.append(bytes(records), end - first)
            if ref is None
            else stream.append(bytes(records), end - first, ref, relay_sync)
        )
        done.add_done_callback(self._append_done)
        self._last_done = done
        if self._first_append is not None and not self._first_append.done():
            done.add_done_callback(self._first_durable)
        for rb in batches:
            self._index(rb, done)
            if log_append and rb.producer_id != NO_PRODUCER_ID:
                self.producers[rb.producer_id].batches[-1].log_append_time = now_ms
        return AppendResult(first, done, now_ms if log_append else -1)

    def _append_done(self, fut: asyncio.Future[int]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and self.failed is None:
            # The stream takes no more appends; the partition is reopened (and rescanned) on next use.
            self.failed = exc
            log.warning("%r: append failed: %s", self, exc)

    def _check_producer(self, batches: list[RecordBatch]) -> BatchMeta | None:
        """Kafka's ProducerAppendInfo checks; returns the original of a duplicate batch."""
        seen: dict[int, tuple[int, int]] = {}  # pid -> (epoch, last seq) within this request
        for n, rb in enumerate(batches):
            pid = rb.producer_id
            if pid == NO_PRODUCER_ID or rb.base_sequence < 0:
                continue
            entry = self.producers.get(pid)
            if pid in seen:
                epoch, last = seen[pid]
            elif entry is not None:
                epoch, last = entry.epoch, entry.last_seq
            else:
                epoch, last = -1, -1
            if epoch >= 0 and rb.producer_epoch < epoch:
                raise BrokerError(
                    ErrorCode.INVALID_PRODUCER_EPOCH,
                    f"producer {pid} epoch {rb.producer_epoch} is older than the current epoch {epoch}",
                )
            if entry is not None and rb.producer_epoch == entry.epoch and pid not in seen:
                for meta in entry.batches:
                    if meta.first_seq == rb.base_sequence and meta.last_seq == rb.last_sequence:
                        if len(batches) != 1:
                            raise BrokerError(
                                ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, "a duplicate batch among new ones"
                            )
                        return meta
            if rb.producer_epoch != epoch:
                # A new epoch starts at sequence 0; an unknown producer (state trimmed away, or
                # never seen) is accepted at any sequence, as Kafka does.
                if rb.base_sequence != 0 and epoch >= 0:
                    raise BrokerError(
                        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                        f"producer {pid}: new epoch {rb.producer_epoch} must start at sequence 0, "
                        f"got {rb.base_sequence}",
                    )
            elif not _in_sequence(last, rb.base_sequence):
                raise BrokerError(
                    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                    f"producer {pid} epoch {epoch}: expected sequence {last + 1}, got {rb.base_sequence} (batch {n})",
                )
            seen[pid] = (rb.producer_epoch, rb.last_sequence)
        return None


def _chain(src: asyncio.Future[int], dst: asyncio.Future[int]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())  # type: ignore[arg-type]
    else:
        dst.set_result(src.result())
