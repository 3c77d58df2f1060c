"""The log cleaner's record decisions, on real Kafka batches (no broker, no S3)."""

from __future__ import annotations

from crc32c import crc32c

from engine.broker.log_cleaner import KeyCleaner
from engine.devtools.fuzz import bomb_batch
from engine.protocol.records import CRC_OFFSET, UINT32, Compression, Record, build_batch, decode_records, read_batches
from engine.storage.objects.format import Batch


def batch(base: int, kvs: list[tuple[bytes | None, bytes | None]], codec: Compression = Compression.NONE) -> Batch:
    payload = build_batch([Record(k, v) for k, v in kvs], base_offset=base, compression=codec, producer_id=7,
                          producer_epoch=0, base_sequence=base, now_ms=1000)  # fmt: skip
    return Batch(base, len(kvs), payload)


def clean(batches: list[Batch], now_ms: int = 10_000, delete_retention_ms: int = 0, data_ms: int = 0) -> list[Batch]:
    c = KeyCleaner(now_ms, delete_retention_ms)
    for b in batches:
        c.observe(b)
    out = [c.rewrite(b, data_ms, last=i == len(batches) - 1) for i, b in enumerate(batches)]
    return [b for b in out if b is not None]


def records(batches: list[Batch]) -> list[tuple[int, bytes | None, bytes | None]]:
    return [(r.offset, r.key, r.value) for b in batches for r in decode_records(b.payload)]


def test_latest_value_per_key_keeps_offsets_and_batch_span() -> None:
    src = [
        batch(0, [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")], Compression.LZ4),
        batch(3, [(b"b", b"2"), (None, b"keyless"), (b"c", b"1")]),
    ]
    out = clean(src)
    assert records(out) == [(2, b"a", b"2"), (3, b"b", b"2"), (4, None, b"keyless"), (5, b"c", b"1")]
    first = read_batches(out[0].payload)[0]
    # The rebuilt batch keeps its base offset, last offset, codec and producer sequence range.
    assert (first.base_offset, first.last_offset, first.compression, first.base_sequence) == (0, 2, Compression.LZ4, 0)
    assert (out[0].base_offset, out[0].end_offset) == (0, 3)
    assert out[1] is src[1]  # nothing dropped: the stored bytes are kept as they are


def test_tombstones_go_after_delete_retention_and_empty_batches_leave_a_gap() -> None:
    src = [batch(0, [(b"a", b"1")]), batch(1, [(b"a", None)]), batch(2, [(b"b", b"1")])]
    # Uploaded at 9 s, now 10 s: with 5 s of delete.retention.ms the tombstone stays.
    kept = clean(src, now_ms=10_000, delete_retention_ms=5_000, data_ms=9_000)
    assert records(kept) == [(1, b"a", None), (2, b"b", b"1")]
    gone = clean(src, now_ms=10_000, delete_retention_ms=5_000, data_ms=1_000)
    assert records(gone) == [(2, b"b", b"1")]
    assert [b.base_offset for b in gone] == [2]


def test_the_last_batch_of_the_stream_always_stays() -> None:
    src = [batch(0, [(b"a", b"1")]), batch(1, [(b"a", None)])]
    assert records(clean(src)) == [(1, b"a", None)]


def test_non_kafka_payloads_are_kept_as_they_are() -> None:
    raw = Batch(0, 1, b"not a record batch")
    assert clean([raw]) == [raw]


def test_a_batch_whose_records_do_not_inflate_is_kept_as_it_is() -> None:
    """Produce stores batches without inflating them, so a compression bomb (benchmarks/fuzz.py)
    can sit in a compacted topic; compaction used to raise CorruptRecords on it at every pass."""
    bomb = bytearray(bomb_batch(Compression.ZSTD, record_count=2))
    bomb[:8] = (2).to_bytes(8, "big")  # base offset 2
    UINT32.pack_into(bomb, CRC_OFFSET, crc32c(memoryview(bomb)[21:]))
    src = [batch(0, [(b"a", b"1"), (b"a", b"2")]), Batch(2, 2, bytes(bomb)), batch(4, [(b"b", b"1")])]
    out = clean(src)
    assert out[1] is src[1]
    assert records([out[0], out[2]]) == [(1, b"a", b"2"), (4, b"b", b"1")]
