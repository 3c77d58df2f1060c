"""Partition bookkeeping without storage: idempotence checks, time index, leader-epoch cache."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from engine.broker.errors import BrokerError
from engine.broker.image import TopicInfo
from engine.broker.partition import Partition
from engine.protocol import ErrorCode
from engine.protocol.records import Record, build_batch, read_batches
from engine.storage.objects.format import Batch


class FakeStream:
    """Just enough of engine.storage.Stream: offsets, appends that resolve at once, reads."""

    def __init__(self) -> None:
        self.start_offset = 0
        self.next_offset = 0
        self.end_offset = 0
        self.batches: list[Batch] = []

    def append(self, payload: bytes, count: int) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        base = self.next_offset
        self.next_offset += count
        self.end_offset = self.next_offset
        self.batches.append(Batch(base, count, payload))
        fut.set_result(base)
        return fut

    async def read(self, offset: int, max_bytes: int = 1 << 20) -> list[Batch]:
        return [b for b in self.batches if b.end_offset > offset]


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(fn())


def make_partition(timestamp_type: str = "CreateTime", epoch: int = 3) -> tuple[Partition, FakeStream]:
    topic = TopicInfo("t", uuid.uuid4(), False, 1, {"message.timestamp.type": timestamp_type})
    part = Partition(topic, 0, 1, epoch)
    stream = FakeStream()
    part.stream = stream  # type: ignore[assignment]
    part.epochs.append((epoch, 0))
    return part, stream


def batch(n: int = 1, *, pid: int = -1, epoch: int = -1, seq: int = -1, ts: int | None = 1000) -> bytearray:
    recs = [Record(b"k", f"v{i}".encode(), timestamp=None if ts is None else ts + i) for i in range(n)]
    return bytearray(build_batch(recs, producer_id=pid, producer_epoch=epoch, base_sequence=seq))


async def append(part: Partition, data: bytearray, now: int = 5000) -> tuple[int, bool]:
    mv = memoryview(data)
    result = part.append(mv, read_batches(mv), now)
    return await result.done, result.duplicate


def test_offsets_are_assigned_and_stamped_with_the_leader_epoch() -> None:
    async def go() -> None:
        part, stream = make_partition()
        assert await append(part, batch(3)) == (0, False)
        assert await append(part, batch(2)) == (3, False)
        stored = read_batches(stream.batches[1].payload)[0]
        assert (stored.base_offset, stored.partition_leader_epoch) == (3, 3)

    run(go)


def test_duplicate_batch_gets_the_original_offset_and_is_not_stored_twice() -> None:
    async def go() -> None:
        part, stream = make_partition()
        assert await append(part, batch(2, pid=7, epoch=0, seq=0)) == (0, False)
        assert await append(part, batch(3, pid=7, epoch=0, seq=2)) == (2, False)
        assert await append(part, batch(2, pid=7, epoch=0, seq=0)) == (0, True)
        assert await append(part, batch(3, pid=7, epoch=0, seq=2)) == (2, True)
        assert len(stream.batches) == 2 and stream.next_offset == 5

    run(go)


@pytest.mark.parametrize(
    ("second", "code"),
    [
        ({"pid": 7, "epoch": 0, "seq": 5}, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER),  # gap
        ({"pid": 7, "epoch": 0, "seq": 1}, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER),  # overlaps, not a duplicate
        ({"pid": 7, "epoch": 1, "seq": 3}, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER),  # new epoch not at 0
    ],
)
def test_sequence_errors(second: dict[str, int], code: ErrorCode) -> None:
    async def go() -> None:
        part, stream = make_partition()
        await append(part, batch(2, pid=7, epoch=0, seq=0))
        with pytest.raises(BrokerError) as e:
            await append(part, batch(2, **second))
        assert e.value.error_code == code
        assert stream.next_offset == 2  # nothing stored

    run(go)


def test_older_producer_epoch_is_fenced_and_new_epoch_restarts_sequences() -> None:
    async def go() -> None:
        part, _ = make_partition()
        await append(part, batch(1, pid=9, epoch=2, seq=0))
        with pytest.raises(BrokerError) as e:
            await append(part, batch(1, pid=9, epoch=1, seq=1))
        assert e.value.error_code == ErrorCode.INVALID_PRODUCER_EPOCH
        assert await append(part, batch(1, pid=9, epoch=3, seq=0)) == (1, False)
        assert await append(part, batch(1, pid=9, epoch=3, seq=1)) == (2, False)

    run(go)


def test_unknown_producer_is_accepted_at_any_sequence_like_kafka() -> None:
    async def go() -> None:
        part, _ = make_partition()
        assert await append(part, batch(1, pid=11, epoch=0, seq=42)) == (0, False)
        assert await append(part, batch(1, pid=11, epoch=0, seq=43)) == (1, False)

    run(go)


def test_producer_state_is_rebuilt_by_scanning_the_stream() -> None:
    async def go() -> None:
        part, stream = make_partition()
        await append(part, batch(2, pid=7, epoch=0, seq=0))
        await append(part, batch(2, pid=7, epoch=0, seq=2))
        reopened = Partition(part.topic, 0, 1, 4)
        reopened.stream = stream  # type: ignore[assignment]
        await reopened._scan()
        assert await append(reopened, batch(2, pid=7, epoch=0, seq=2)) == (2, True)
        with pytest.raises(BrokerError):
            await append(reopened, batch(1, pid=7, epoch=0, seq=9))
        assert await append(reopened, batch(1, pid=7, epoch=0, seq=4)) == (4, False)
        assert reopened.epochs == [(3, 0), (4, 4)]

    run(go)


def test_offset_for_timestamp_finds_the_first_record_at_or_after() -> None:
    async def go() -> None:
        part, _ = make_partition()
        await append(part, batch(3, ts=1000))  # offsets 0-2: 1000, 1001, 1002
        await append(part, batch(3, ts=2000))  # offsets 3-5
        assert await part.offset_for_timestamp(0) == (1000, 0)
        assert await part.offset_for_timestamp(1001) == (1001, 1)
        assert await part.offset_for_timestamp(1003) == (2000, 3)
        assert await part.offset_for_timestamp(2002) == (2002, 5)
        assert await part.offset_for_timestamp(2003) == (-1, -1)

    run(go)


def test_offset_for_timestamp_over_a_batch_that_cannot_be_inflated() -> None:
    """Found by benchmarks/fuzz.py (seed 7, the 6 handler errors of the 10^6-frame run): a zstd
    bomb with a valid CRC is stored as sent, and ListOffsets by timestamp inflated it, so the
    handler raised CorruptRecords and the connection closed. The answer is now the batch's first
    offset (its header says a record at or after the time is in it)."""
    from engine.devtools.fuzz import bomb_batch
    from engine.protocol.records import Compression

    async def go() -> None:
        part, _ = make_partition()
        bomb = bytearray(bomb_batch(Compression.ZSTD, record_count=3))
        assert read_batches(memoryview(bomb))[0].max_timestamp == 0
        await append(part, bomb)  # offsets 0-2, max timestamp 0
        await append(part, batch(2, ts=3000))  # offsets 3-4
        assert await part.offset_for_timestamp(0) == (0, 0)
        # Past the bomb's max timestamp it is skipped by its header, never inflated.
        assert await part.offset_for_timestamp(1) == (3000, 3)
        assert await part.offset_for_timestamp(3001) == (3001, 4)
        assert await part.list_offset(0) == (0, 0, 3)

    run(go)


def test_log_append_time_topic_stamps_batches() -> None:
    async def go() -> None:
        part, stream = make_partition("LogAppendTime")
        data = batch(2, ts=1000)
        mv = memoryview(data)
        result = part.append(mv, read_batches(mv), 777_000)
        assert result.log_append_time == 777_000
        stored = read_batches(stream.batches[0].payload)[0]  # CRC verified
        assert stored.max_timestamp == 777_000 and stored.timestamp_type == 1
        assert await part.offset_for_timestamp(700_000) == (777_000, 0)

    run(go)


def test_end_offset_for_epoch_follows_kafka() -> None:
    part, stream = make_partition(epoch=5)
    part.epochs = [(1, 0), (3, 10), (5, 20)]
    stream.next_offset = 30
    assert part.end_offset_for_epoch(5) == (5, 30)
    assert part.end_offset_for_epoch(3) == (3, 20)
    assert part.end_offset_for_epoch(2) == (1, 10)
    assert part.end_offset_for_epoch(0) == (0, 0)
    assert part.end_offset_for_epoch(7) == (-1, -1)
    assert part.epoch_for_offset(15) == 3


def test_leader_epoch_checks() -> None:
    part, _ = make_partition(epoch=4)
    part.check_leader_epoch(-1)
    part.check_leader_epoch(4)
    with pytest.raises(BrokerError) as e:
        part.check_leader_epoch(3)
    assert e.value.error_code == ErrorCode.FENCED_LEADER_EPOCH
    with pytest.raises(BrokerError) as e:
        part.check_leader_epoch(5)
    assert e.value.error_code == ErrorCode.UNKNOWN_LEADER_EPOCH


def test_a_batch_over_max_message_bytes_is_refused_whoever_appends_it() -> None:
    """The limit is the partition's (the topic's current config), so direct and relayed produce share it."""

    async def go() -> None:
        part, stream = make_partition()
        part.topic = TopicInfo("t", part.topic.id, False, 1, {"max.message.bytes": "100"})
        data = bytearray(build_batch([Record(value=b"x" * 200)]))
        with pytest.raises(BrokerError) as e:
            part.append(memoryview(data), read_batches(memoryview(data)), 5000)
        assert e.value.error_code == ErrorCode.MESSAGE_TOO_LARGE
        assert stream.batches == []

    run(go)
