"""__consumer_offsets persistence: record encoding (Kafka's schema), the log, snapshot-and-trim, replay."""

from __future__ import annotations

import asyncio
import struct

import pytest

from engine.broker.groups import GroupConfig, GroupCoordinator, GroupState, ManualTimers, OffsetCommitEntry
from engine.broker.groups.coordinator import java_string_hash, partition_for
from engine.broker.groups.records import (
    GroupKey,
    GroupValue,
    MemberValue,
    OffsetKey,
    OffsetValue,
    RecordFormatError,
    decode_group_value,
    decode_key,
    decode_offset_value,
    encode_group_key,
    encode_group_value,
    encode_offset_key,
    encode_offset_value,
)
from engine.broker.groups.store import OffsetsLog
from engine.broker.groups.testing import DurableLog, MemoryStream, MemoryStreams
from engine.protocol.records import Record, build_batch, decode_records, read_batches
from tests.unit.test_groups import Harness, form_group, run


def _s(v: str | None) -> bytes:
    if v is None:
        return struct.pack(">h", -1)
    b = v.encode()
    return struct.pack(">h", len(b)) + b


def _b(v: bytes) -> bytes:
    return struct.pack(">i", len(v)) + v


# -- placement ----------------------------------------------------------------------------------


def test_java_string_hash_matches_java() -> None:
    assert java_string_hash("") == 0
    assert java_string_hash("a") == 97
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("polygenelubricants") == -(2**31)  # Integer.MIN_VALUE
    assert java_string_hash("é") == 233
    assert java_string_hash("😀") == 0xD83D * 31 + 0xDE00  # UTF-16 surrogate pair


def test_partition_for_agrees_with_the_broker() -> None:
    from engine.broker.broker import java_string_hashcode

    for key in ["", "g", "group-1", "polygenelubricants", "énorme", "😀x", *[f"k{i}" for i in range(200)]]:
        assert java_string_hash(key) == java_string_hashcode(key)
        assert partition_for(key, 50) == abs(java_string_hashcode(key)) % 50
        assert 0 <= partition_for(key, 7) < 7 or key == "polygenelubricants"


# -- records ------------------------------------------------------------------------------------


def test_offset_key_and_value_round_trip() -> None:
    key = encode_offset_key("grp", "topic", 7)
    assert key == struct.pack(">h", 1) + _s("grp") + _s("topic") + struct.pack(">i", 7)
    assert decode_key(key) == OffsetKey("grp", "topic", 7)
    v = OffsetValue(offset=123, leader_epoch=4, metadata="m", commit_timestamp=1_700)
    raw = encode_offset_value(v)
    assert raw == struct.pack(">hqi", 3, 123, 4) + _s("m") + struct.pack(">q", 1_700)
    assert decode_offset_value(raw) == v


def test_group_key_and_value_round_trip() -> None:
    assert decode_key(encode_group_key("grp")) == GroupKey("grp")
    v = GroupValue(
        protocol_type="consumer",
        generation=5,
        protocol="range",
        leader="m1",
        current_state_timestamp=99,
        members=[
            MemberValue("m1", None, "c1", "/h1", 300_000, 10_000, b"sub1", b"asg1"),
            MemberValue("m2", "inst-2", "c2", "/h2", 300_000, 45_000, b"", b"asg2"),
        ],
    )
    assert decode_group_value(encode_group_value(v)) == v
    empty = GroupValue("consumer", 6, None, None, 100, [])
    assert decode_group_value(encode_group_value(empty)) == empty


def test_older_value_versions_are_read() -> None:
    v0 = struct.pack(">hq", 0, 5) + _s("meta") + struct.pack(">q", 11)
    assert decode_offset_value(v0) == OffsetValue(5, -1, "meta", 11)
    v1 = struct.pack(">hq", 1, 6) + _s("") + struct.pack(">qq", 12, 99)
    assert decode_offset_value(v1) == OffsetValue(6, -1, "", 12)
    g0 = (
        struct.pack(">h", 0) + _s("consumer") + struct.pack(">i", 3) + _s("range") + _s("m")
        + struct.pack(">i", 1) + _s("m") + _s("cid") + _s("/h") + struct.pack(">i", 6000) + _b(b"s") + _b(b"a")
    )  # fmt: skip
    assert decode_group_value(g0) == GroupValue(
        "consumer", 3, "range", "m", -1, [MemberValue("m", None, "cid", "/h", 6000, 6000, b"s", b"a")]
    )
    g2 = (
        struct.pack(">h", 2) + _s("consumer") + struct.pack(">i", 3) + _s(None) + _s(None) + struct.pack(">q", 77)
        + struct.pack(">i", 1) + _s("m") + _s("cid") + _s("/h") + struct.pack(">ii", 9000, 6000) + _b(b"") + _b(b"")
    )  # fmt: skip
    assert decode_group_value(g2) == GroupValue(
        "consumer", 3, None, None, 77, [MemberValue("m", None, "cid", "/h", 9000, 6000, b"", b"")]
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        struct.pack(">h", 9) + _s("g"),
        struct.pack(">h", 1) + _s("g"),
        struct.pack(">h", 0) + b"\x00\x09ab",
    ],
)
def test_bad_keys_raise_record_format_error(raw: bytes) -> None:
    with pytest.raises(RecordFormatError):
        decode_key(raw)


def test_bad_values_raise_record_format_error() -> None:
    with pytest.raises(RecordFormatError):
        decode_offset_value(struct.pack(">h", 7))
    with pytest.raises(RecordFormatError):
        decode_group_value(struct.pack(">h", 4))
    with pytest.raises(RecordFormatError):
        decode_offset_value(struct.pack(">hq", 3, 1))


# -- the log ------------------------------------------------------------------------------------


@run
async def test_log_writes_real_kafka_batches_at_their_offsets() -> None:
    stream = MemoryStream()
    olog = OffsetsLog(stream, now_ms=lambda: 1234)
    assert await olog.append([(b"k1", b"v1"), (b"k2", b"v2")]) == 0
    assert await olog.append([(b"k1", None)]) == 2
    assert [b.base_offset for b in stream.durable.batches] == [0, 2]
    for b in stream.durable.batches:
        (batch,) = read_batches(b.payload)
        assert batch.base_offset == b.base_offset and batch.record_count == b.record_count
    recs = decode_records(stream.durable.batches[0].payload)
    assert [(r.key, r.value, r.offset, r.timestamp) for r in recs] == [(b"k1", b"v1", 0, 1234), (b"k2", b"v2", 1, 1234)]
    assert olog.live == {b"k2": b"v2"}
    again = OffsetsLog(MemoryStream(stream.durable), now_ms=lambda: 0)
    assert await again.replay() == [(b"k1", b"v1", 0), (b"k2", b"v2", 1), (b"k1", None, 2)]
    assert again.live == {b"k2": b"v2"}


@run
async def test_snapshot_and_trim_keeps_latest_values_only() -> None:
    stream = MemoryStream()
    olog = OffsetsLog(stream, now_ms=lambda: 0, compact_min_records=20, compact_ratio=2.0)
    for i in range(60):
        await olog.append([(b"k%d" % (i % 3), b"v%d" % i)])
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert olog.snapshots >= 1
    assert stream.start_offset > 0
    assert stream.end_offset - stream.start_offset < 25
    replayed = OffsetsLog(MemoryStream(stream.durable), now_ms=lambda: 0)
    await replayed.replay()
    assert replayed.live == {b"k0": b"v57", b"k1": b"v58", b"k2": b"v59"}


@run
async def test_snapshot_covers_appends_still_in_flight() -> None:
    stream = MemoryStream()
    olog = OffsetsLog(stream, now_ms=lambda: 0, compact_min_records=5, compact_ratio=1.0)
    for i in range(4):
        await olog.append([(b"k", b"old%d" % i)])
    stream.hold = True
    pending = olog.append([(b"k", b"new")])  # not durable yet; this append also starts a snapshot
    await asyncio.sleep(0)
    stream.hold = False
    stream.release()
    assert await pending == 4
    for _ in range(5):
        await asyncio.sleep(0)
    assert olog.snapshots == 1 and stream.start_offset == 5
    replayed = OffsetsLog(MemoryStream(stream.durable), now_ms=lambda: 0)
    await replayed.replay()
    assert replayed.live == {b"k": b"new"}


@run
async def test_replay_skips_foreign_and_unreadable_records() -> None:
    streams = MemoryStreams()
    h = Harness(streams=streams)
    p = h.c.partition_for("g")
    durable = streams.logs.setdefault(("__consumer_offsets", p), DurableLog())
    stream = MemoryStream(durable)
    stream.append(build_batch([Record(b"\x00\x09junk", b"x"), Record(None, b"no key")]), 2)
    stream.append(b"not a record batch at all, but long enough to look like a header..........", 1)
    good = encode_offset_key("g", "t", 0), encode_offset_value(OffsetValue(42, -1, "", 1))
    stream.append(build_batch([Record(*good)], base_offset=3), 1)
    await asyncio.sleep(0)
    await h.start()
    _, rows = await h.c.fetch_offsets(group_id="g", partitions=[("t", 0)])
    assert rows[0][2] is not None and rows[0][2].offset == 42


@run
async def test_coordinator_compacts_its_partition_and_replays_the_same_state() -> None:
    timers = ManualTimers()
    streams = MemoryStreams()
    config = GroupConfig(offsets_topic_partitions=1, compact_min_records=30, compact_ratio=2.0)
    c = GroupCoordinator(config=config, timers=timers, open_stream=streams, is_local=lambda _k: True)
    await c.start()
    h = Harness(streams=streams, timers=timers)
    h.c = c
    (a, b), gen = await form_group(h, 2)
    for i in range(40):
        codes = await c.commit_offsets(
            group_id="g", generation_id=gen, member_id=a, group_instance_id=None,
            offsets=[OffsetCommitEntry("t", i % 2, i)],
        )  # fmt: skip
        assert codes == [0]
    await asyncio.sleep(0.01)
    olog = c.log_of(0)
    assert olog is not None and olog.snapshots >= 1
    c2 = GroupCoordinator(config=config, timers=timers, open_stream=streams, is_local=lambda _k: True)
    await c2.start()
    await c2.wait_loaded()
    g = c2.group("g")
    assert g is not None and g.state is GroupState.STABLE and set(g.members) == {a, b} and g.generation_id == gen
    assert {tp: co.offset for tp, co in g.offsets.items()} == {("t", 0): 38, ("t", 1): 39}
