"""Record batch v2: build, parse, CRC, patch in place; kafka-python and aiokafka as oracles."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.protocol.errors import CorruptRecords, ErrorCode, ProtocolError
from engine.protocol.records import (
    Compression,
    LegacyMessageFormat,
    Record,
    TimestampType,
    assign_offsets,
    build_batch,
    decode_records,
    read_batches,
    set_log_append_time,
)

NOW = 1_700_000_000_000

records_st = st.lists(
    st.builds(
        Record,
        key=st.none() | st.binary(max_size=20),
        value=st.none() | st.binary(max_size=200),
        headers=st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3),
        timestamp=st.integers(NOW - 10**6, NOW + 10**6),
    ),
    min_size=1,
    max_size=20,
)


def _same(got: list[Record], want: list[Record], base_offset: int = 0) -> None:
    assert [(r.key, r.value, r.headers, r.timestamp) for r in got] == [
        (r.key, r.value, r.headers, r.timestamp) for r in want
    ]
    assert [r.offset for r in got] == list(range(base_offset, base_offset + len(want)))


@settings(max_examples=60, deadline=None)
@given(recs=records_st, codec=st.sampled_from(list(Compression)), base=st.integers(0, 2**40))
def test_build_parse_decode_round_trip(recs: list[Record], codec: Compression, base: int) -> None:
    blob = build_batch(recs, base_offset=base, compression=codec, producer_id=7, producer_epoch=3, base_sequence=11)
    (b,) = read_batches(blob)
    assert b.magic == 2 and b.position == 0 and b.size == len(blob)
    assert b.base_offset == base and b.record_count == len(recs) and b.last_offset_delta == len(recs) - 1
    assert b.compression == codec and b.timestamp_type == TimestampType.CREATE_TIME
    assert (b.producer_id, b.producer_epoch, b.base_sequence) == (7, 3, 11)
    assert b.last_sequence == 11 + len(recs) - 1
    assert b.first_timestamp == recs[0].timestamp
    assert b.max_timestamp == max(r.timestamp for r in recs if r.timestamp is not None)
    assert b.next_offset == base + len(recs)
    _same(decode_records(blob), recs, base)


def test_several_batches_and_a_partial_tail() -> None:
    b1 = build_batch([Record(b"a", b"1")], now_ms=NOW)
    b2 = build_batch([Record(b"b", b"2"), Record(b"c", b"3")], base_offset=1, now_ms=NOW)
    blob = b1 + b2
    batches = read_batches(blob)
    assert [(b.position, b.base_offset, b.record_count) for b in batches] == [(0, 0, 1), (len(b1), 1, 2)]
    with pytest.raises(CorruptRecords):
        read_batches(blob + b2[:30])
    with pytest.raises(CorruptRecords):
        read_batches(blob + b2[:-1])
    assert len(read_batches(blob + b2[:-1], allow_partial=True)) == 2  # fetch responses may end mid-batch
    assert [r.value for r in decode_records(blob + b2[:70])] == [b"1", b"2", b"3"]


def test_crc_mismatch_is_corrupt() -> None:
    blob = bytearray(build_batch([Record(b"k", b"value")], now_ms=NOW))
    blob[-1] ^= 0xFF
    with pytest.raises(CorruptRecords) as info:
        read_batches(blob)
    assert info.value.error_code == ErrorCode.CORRUPT_MESSAGE
    assert read_batches(blob, verify_crc=False)[0].record_count == 1


def test_bad_header_fields() -> None:
    blob = bytearray(build_batch([Record(b"k", b"v")], now_ms=NOW))
    short = bytearray(blob)
    struct.pack_into(">i", short, 8, 10)  # batch_length below the header size
    with pytest.raises(CorruptRecords):
        read_batches(short)
    bad_magic = bytearray(blob)
    bad_magic[16] = 7
    with pytest.raises(CorruptRecords):
        read_batches(bad_magic)


def test_assign_offsets_patches_in_place_without_touching_the_crc() -> None:
    blob = bytearray(
        build_batch([Record(b"a", b"1"), Record(b"b", b"2")], now_ms=NOW)
        + build_batch([Record(b"c", b"3")], now_ms=NOW)
    )
    crcs = bytes(blob[17:21])
    batches = read_batches(blob)
    frame = memoryview(blob)  # like a writable FrameDecoder frame
    assert assign_offsets(frame, batches, 1000, partition_leader_epoch=4) == 1003
    assert bytes(blob[17:21]) == crcs
    again = read_batches(blob)  # CRC still valid
    assert [(b.base_offset, b.partition_leader_epoch) for b in again] == [(1000, 4), (1002, 4)]
    assert [r.offset for r in decode_records(blob)] == [1000, 1001, 1002]


def test_log_append_time_sets_attribute_max_timestamp_and_fixes_crc() -> None:
    recs = [Record(b"a", b"1", timestamp=NOW - 5), Record(b"b", b"2", timestamp=NOW - 1)]
    blob = bytearray(build_batch(recs, compression=Compression.GZIP))
    (b,) = read_batches(blob)
    set_log_append_time(blob, b, NOW + 123)
    (b2,) = read_batches(blob)  # verifies the new CRC
    assert b2.timestamp_type == TimestampType.LOG_APPEND_TIME and b2.max_timestamp == NOW + 123
    assert b2.compression == Compression.GZIP and b2.crc == b.crc
    assert [r.timestamp for r in decode_records(blob)] == [NOW + 123, NOW + 123]
    blob2 = bytearray(build_batch(recs))
    assert assign_offsets(blob2, read_batches(blob2), 5, log_append_time_ms=NOW) == 7
    (b3,) = read_batches(blob2)
    assert b3.base_offset == 5 and b3.timestamp_type == TimestampType.LOG_APPEND_TIME


def test_readonly_buffers_cannot_be_patched() -> None:
    blob = build_batch([Record(b"a", b"1")], now_ms=NOW)
    with pytest.raises(TypeError):
        assign_offsets(blob, read_batches(blob), 1)


def test_empty_batch_is_refused_by_the_builder() -> None:
    with pytest.raises(ValueError):
        build_batch([])


# -- legacy message sets ------------------------------------------------------------------------

kafka_records = pytest.importorskip("kafka.record")


@pytest.mark.parametrize("magic", [0, 1])
def test_magic_0_and_1_are_detected(magic: int) -> None:
    from kafka.record.legacy_records import LegacyRecordBatchBuilder

    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
    builder.append(0, timestamp=NOW if magic else None, key=b"k", value=b"v" * 100)
    blob = bytes(builder.build())
    with pytest.raises(LegacyMessageFormat) as info:
        read_batches(blob)
    assert info.value.magic == magic
    assert info.value.error_code == ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT
    small = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
    small.append(0, timestamp=NOW if magic else None, key=None, value=b"")
    with pytest.raises(LegacyMessageFormat):  # shorter than a v2 header, still recognised
        read_batches(bytes(small.build()))


# -- oracles: batches built by the clients' own builders -----------------------------------------

_KP_CODECS = [Compression.NONE, Compression.GZIP, Compression.LZ4, Compression.ZSTD]


def _kafka_python_batch(recs: list[Record], codec: Compression, **kw: int) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(
        magic=2, compression_type=int(codec), is_transactional=False,
        producer_id=kw.get("producer_id", -1), producer_epoch=kw.get("producer_epoch", -1),
        base_sequence=kw.get("base_sequence", -1), batch_size=1 << 24,
    )
    for i, r in enumerate(recs):
        b.append(i, timestamp=r.timestamp, key=r.key, value=r.value, headers=r.headers)
    return bytes(b.build())


@settings(max_examples=40, deadline=None)
@given(recs=records_st, codec=st.sampled_from(_KP_CODECS))
def test_kafka_python_batches_parse_and_decode(recs: list[Record], codec: Compression) -> None:
    blob = _kafka_python_batch(recs, codec, producer_id=42, producer_epoch=1, base_sequence=100)
    (b,) = read_batches(blob)  # CRC checked
    # kafka-python sends uncompressed when compression does not pay.
    assert b.compression in (codec, Compression.NONE) and b.record_count == len(recs)
    assert (b.producer_id, b.producer_epoch, b.base_sequence) == (42, 1, 100)
    _same(decode_records(blob), recs)


@settings(max_examples=40, deadline=None)
@given(recs=records_st, codec=st.sampled_from(_KP_CODECS))
def test_our_batches_read_by_kafka_python(recs: list[Record], codec: Compression) -> None:
    from kafka.record.default_records import DefaultRecordBatch

    blob = build_batch(recs, base_offset=500, compression=codec)
    theirs = DefaultRecordBatch(bytearray(blob))
    assert theirs.validate_crc()
    assert theirs.compression_type == int(codec)
    got = [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in theirs]
    assert got == [(500 + i, r.key, r.value, r.headers, r.timestamp) for i, r in enumerate(recs)]


def test_patched_batches_read_by_kafka_python() -> None:
    from kafka.record.default_records import DefaultRecordBatch

    recs = [Record(b"k%d" % i, b"v" * i, timestamp=NOW + i) for i in range(5)]
    blob = bytearray(_kafka_python_batch(recs, Compression.ZSTD))
    assign_offsets(blob, read_batches(blob), 77, log_append_time_ms=NOW + 1000)
    theirs = DefaultRecordBatch(blob)
    assert theirs.validate_crc()
    assert theirs.timestamp_type == 1
    assert [(r.offset, r.timestamp) for r in theirs] == [(77 + i, NOW + 1000) for i in range(5)]


aiokafka_records = pytest.importorskip("aiokafka.record.default_records")


@pytest.mark.parametrize("codec", list(Compression))
def test_aiokafka_batches_including_snappy(codec: Compression) -> None:
    builder = aiokafka_records.DefaultRecordBatchBuilder(2, int(codec), False, -1, -1, -1, 1 << 24)
    recs = [Record(b"key-%d" % i, b"value " * (i + 1), [("h", b"x")], NOW + i) for i in range(30)]
    for i, r in enumerate(recs):
        builder.append(i, timestamp=r.timestamp, key=r.key, value=r.value, headers=r.headers)
    blob = bytes(builder.build())
    (b,) = read_batches(blob)
    assert b.compression == codec
    _same(decode_records(blob), recs)


# -- garbage --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_batches_only_raise_corrupt_records(data: st.DataObject) -> None:
    codec = data.draw(st.sampled_from(list(Compression)))
    blob = bytearray(build_batch([Record(b"k", b"v" * 50), Record(None, None)], compression=codec, now_ms=NOW))
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        decode_records(blob, verify_crc=data.draw(st.booleans()))


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=300))
def test_random_bytes_only_raise_corrupt_records(blob: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_records(blob, verify_crc=False)
