"""Kafka record batches, magic v2: parse, validate, patch in place, build, decode.

The broker's produce path touches only the 61-byte batch headers (``read_batches``,
``assign_offsets``): the records inside a batch, compressed or not, are stored as the
client sent them. ``build_batch`` and ``decode_records`` do per-record work and are
meant for the internal ``__consumer_offsets`` topic, tools and tests.

Batch layout (all big-endian)::

    0  base_offset int64          27 first_timestamp int64
    8  batch_length int32         35 max_timestamp int64
    12 partition_leader_epoch i32 43 producer_id int64
    16 magic int8                 51 producer_epoch int16
    17 crc uint32 (CRC32C of 21..end)   53 base_sequence int32
    21 attributes int16           57 record_count int32
    23 last_offset_delta int32    61 records...
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from crc32c import crc32c

from engine.protocol._wire import (
    INT16,
    INT64,
    UINT32,
    Buffer,
    DecodeError,
    read_varint,
    varint,
)
from engine.protocol.errors import CorruptRecords, ErrorCode

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LOG_OVERHEAD = 12  # base_offset + batch_length: the bytes batch_length does not count
MAGIC_OFFSET = 16
CRC_OFFSET = 17
ATTRIBUTES_OFFSET = 21
MAX_TIMESTAMP_OFFSET = 35
PARTITION_LEADER_EPOCH_OFFSET = 12
#: Smallest batch_length: a header with no records.
MIN_BATCH_LENGTH = HEADER_SIZE - LOG_OVERHEAD

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_BIT = 0x08
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20
DELETE_HORIZON_BIT = 0x40

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1
NO_TIMESTAMP = -1


class Compression(IntEnum):
    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


class TimestampType(IntEnum):
    CREATE_TIME = 0
    LOG_APPEND_TIME = 1


class LegacyMessageFormat(CorruptRecords):
    """A magic 0 or 1 message set: amq stores record batch v2 only."""

    error_code = ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT

    def __init__(self, magic: int, position: int) -> None:
        super().__init__(f"message format magic {magic} at byte {position}; only magic 2 is supported")
        self.magic = magic
        self.position = position


@dataclass(slots=True)
class RecordBatch:
    """The header of one batch, and where it sits in the blob it was read from."""

    position: int
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch takes, headers included."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def end(self) -> int:
        return self.position + self.batch_length + LOG_OVERHEAD

    @property
    def compression(self) -> Compression:
        return Compression(self.attributes & COMPRESSION_MASK)

    @property
    def timestamp_type(self) -> TimestampType:
        return TimestampType.LOG_APPEND_TIME if self.attributes & TIMESTAMP_TYPE_BIT else TimestampType.CREATE_TIME

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_BIT)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_BIT)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def last_sequence(self) -> int:
        """Sequence of the last record (wraps at 2**31 like Kafka's); -1 without one."""
        if self.base_sequence == NO_SEQUENCE:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) & 0x7FFFFFFF


def read_batches(records: Buffer, *, verify_crc: bool = True, allow_partial: bool = False) -> list[RecordBatch]:
    """Split a records blob into batch headers, validating each.

    ``allow_partial`` accepts a truncated last batch (fetch responses may end with
    one); produce data must be whole. Raises ``LegacyMessageFormat`` for magic 0/1
    and ``CorruptRecords`` for anything else wrong.
    """
    mv = records if isinstance(records, memoryview) else memoryview(records)
    n = len(mv)
    pos = 0
    out: list[RecordBatch] = []
    unpack = HEADER.unpack_from
    while pos < n:
        if n - pos < HEADER_SIZE:
            if n - pos > MAGIC_OFFSET and mv[pos + MAGIC_OFFSET] in (0, 1):
                raise LegacyMessageFormat(mv[pos + MAGIC_OFFSET], pos)
            if allow_partial:
                break
            raise CorruptRecords(f"{n - pos} trailing bytes at byte {pos} are not a whole record batch")
        h = unpack(mv, pos)
        magic = h[3]
        if magic != 2:
            if magic in (0, 1):
                raise LegacyMessageFormat(magic, pos)
            raise CorruptRecords(f"unknown magic {magic} at byte {pos}")
        length = h[1]
        if length < MIN_BATCH_LENGTH:
            raise CorruptRecords(f"batch length {length} at byte {pos} is below the minimum {MIN_BATCH_LENGTH}")
        end = pos + LOG_OVERHEAD + length
        if end > n:
            if allow_partial:
                break
            raise CorruptRecords(f"batch at byte {pos} claims {length} bytes, only {n - pos - LOG_OVERHEAD} remain")
        if h[12] < 0 or h[6] < 0:
            raise CorruptRecords(f"batch at byte {pos} has record count {h[12]}, last offset delta {h[6]}")
        if h[5] & COMPRESSION_MASK > 4:
            raise CorruptRecords(f"batch at byte {pos} has unknown compression codec {h[5] & COMPRESSION_MASK}")
        if verify_crc:
            actual = crc32c(mv[pos + ATTRIBUTES_OFFSET : end])
            if actual != h[4]:
                raise CorruptRecords(f"batch at byte {pos}: CRC {h[4]:#010x} != computed {actual:#010x}")
        out.append(RecordBatch(pos, *h))
        pos = end
    return out


def read_legacy_magic(records: Buffer) -> int | None:
    """Magic byte of the first entry in a blob (0/1 legacy message set, 2 batch), or None."""
    if len(records) <= MAGIC_OFFSET:
        return None
    return int(records[MAGIC_OFFSET])


# -- patching in place ------------------------------------------------------------------


def set_base_offset(buf: Buffer, batch: RecordBatch, base_offset: int) -> None:
    """Write the batch's base offset. Not covered by the CRC, so nothing else changes."""
    INT64.pack_into(buf, batch.position, base_offset)  # type: ignore[arg-type]
    batch.base_offset = base_offset


def set_partition_leader_epoch(buf: Buffer, batch: RecordBatch, epoch: int) -> None:
    """Also outside the CRC (the leader stamps it; the producer does not know it)."""
    struct.pack_into(">i", buf, batch.position + PARTITION_LEADER_EPOCH_OFFSET, epoch)  # type: ignore[arg-type]
    batch.partition_leader_epoch = epoch


def set_log_append_time(buf: Buffer, batch: RecordBatch, timestamp_ms: int) -> None:
    """Mark the batch LogAppendTime with ``timestamp_ms`` as its max timestamp and
    recompute the CRC, as Kafka does for topics with message.timestamp.type=LogAppendTime."""
    attributes = batch.attributes | TIMESTAMP_TYPE_BIT
    INT16.pack_into(buf, batch.position + ATTRIBUTES_OFFSET, attributes)  # type: ignore[arg-type]
    INT64.pack_into(buf, batch.position + MAX_TIMESTAMP_OFFSET, timestamp_ms)  # type: ignore[arg-type]
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    crc = crc32c(mv[batch.position + ATTRIBUTES_OFFSET : batch.end])
    UINT32.pack_into(buf, batch.position + CRC_OFFSET, crc)  # type: ignore[arg-type]
    batch.attributes = attributes
    batch.max_timestamp = timestamp_ms
    batch.crc = crc


def assign_offsets(
    buf: Buffer,
    batches: Sequence[RecordBatch],
    first_offset: int,
    *,
    log_append_time_ms: int | None = None,
    partition_leader_epoch: int | None = None,
) -> int:
    """Give ``batches`` (from ``read_batches(buf)``) consecutive offsets from
    ``first_offset``; returns the next offset. ``buf`` must be writable (a frame from a
    writable ``FrameDecoder``, or a bytearray). Per batch, not per record."""
    offset = first_offset
    for b in batches:
        INT64.pack_into(buf, b.position, offset)  # type: ignore[arg-type]
        b.base_offset = offset
        if partition_leader_epoch is not None:
            set_partition_leader_epoch(buf, b, partition_leader_epoch)
        if log_append_time_ms is not None:
            set_log_append_time(buf, b, log_append_time_ms)
        offset += b.last_offset_delta + 1
    return offset


# -- records: building and decoding (not on the hot path) ------------------------------


@dataclass(slots=True)
class Record:
    key: bytes | None = None
    value: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    #: Milliseconds since the epoch; None when building means "now".
    timestamp: int | None = None
    #: Absolute offset, filled in when decoding.
    offset: int = -1
    attributes: int = 0


def _encode_record(r: Record, offset_delta: int, timestamp_delta: int) -> bytes:
    body = bytearray()
    body.append(r.attributes & 0xFF)
    body += varint(timestamp_delta)
    body += varint(offset_delta)
    if r.key is None:
        body += b"\x01"  # varint(-1)
    else:
        body += varint(len(r.key))
        body += r.key
    if r.value is None:
        body += b"\x01"
    else:
        body += varint(len(r.value))
        body += r.value
    body += varint(len(r.headers))
    for hk, hv in r.headers:
        kb = hk.encode()
        body += varint(len(kb))
        body += kb
        if hv is None:
            body += b"\x01"
        else:
            body += varint(len(hv))
            body += hv
    return varint(len(body)) + bytes(body)


def build_batch(
    records: Sequence[Record],
    *,
    base_offset: int = 0,
    compression: Compression = Compression.NONE,
    timestamp_type: TimestampType = TimestampType.CREATE_TIME,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
    is_transactional: bool = False,
    is_control: bool = False,
    now_ms: int | None = None,
    keep_offsets: bool = False,
    last_offset_delta: int | None = None,
) -> bytes:
    """One v2 batch holding ``records`` at offsets ``base_offset``, ``base_offset+1``...

    Record timestamps left as None get ``now_ms`` (default: the wall clock). With
    ``keep_offsets`` each record keeps its ``offset`` (a compacted batch: gaps allowed), and
    ``last_offset_delta`` keeps the batch spanning the offsets it spanned before.
    """
    if not records:
        raise ValueError("a record batch needs at least one record")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    stamps = [now if r.timestamp is None else r.timestamp for r in records]
    first_ts = stamps[0]
    max_ts = max(stamps)
    deltas = [r.offset - base_offset for r in records] if keep_offsets else list(range(len(records)))
    payload = b"".join(_encode_record(r, d, ts - first_ts) for r, d, ts in zip(records, deltas, stamps, strict=True))
    if compression != Compression.NONE:
        payload = compress(compression, payload)
    attributes = int(compression) & COMPRESSION_MASK
    if timestamp_type == TimestampType.LOG_APPEND_TIME:
        attributes |= TIMESTAMP_TYPE_BIT
    if is_transactional:
        attributes |= TRANSACTIONAL_BIT
    if is_control:
        attributes |= CONTROL_BIT
    out = bytearray(HEADER_SIZE)
    HEADER.pack_into(
        out, 0, base_offset, HEADER_SIZE - LOG_OVERHEAD + len(payload), partition_leader_epoch, 2, 0,
        attributes, deltas[-1] if last_offset_delta is None else last_offset_delta, first_ts, max_ts, producer_id,
        producer_epoch, base_sequence, len(records),
    )  # fmt: skip
    out += payload
    UINT32.pack_into(out, CRC_OFFSET, crc32c(memoryview(out)[ATTRIBUTES_OFFSET:]))
    return bytes(out)


def iter_records(records: Buffer, *, verify_crc: bool = True) -> Iterator[Record]:
    """Every record of every batch in ``records``, decompressing as needed."""
    mv = records if isinstance(records, memoryview) else memoryview(records)
    for batch in read_batches(mv, verify_crc=verify_crc, allow_partial=True):
        yield from batch_records(mv, batch)


def decode_records(records: Buffer, *, verify_crc: bool = True) -> list[Record]:
    return list(iter_records(records, verify_crc=verify_crc))


def batch_records(buf: Buffer, batch: RecordBatch) -> list[Record]:
    """Decode the records of one batch of ``buf``."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    body: Buffer = mv[batch.position + HEADER_SIZE : batch.end]
    if batch.compression != Compression.NONE:
        body = memoryview(decompress(batch.compression, body))
    log_append = batch.timestamp_type == TimestampType.LOG_APPEND_TIME
    out: list[Record] = []
    pos = 0
    try:
        for _ in range(batch.record_count):
            length, pos = read_varint(body, pos)
            end = pos + length
            if length < 0 or end > len(body):
                raise DecodeError("record length runs past the batch")
            attributes = body[pos]
            ts_delta, p = read_varint(body, pos + 1)
            off_delta, p = read_varint(body, p)
            key, p = _read_varbytes(body, p)
            value, p = _read_varbytes(body, p)
            nh, p = read_varint(body, p)
            if nh < 0 or nh > end - p:
                raise DecodeError("bad header count")
            headers: list[tuple[str, bytes | None]] = []
            for _ in range(nh):
                hk, p = _read_varbytes(body, p)
                if hk is None:
                    raise DecodeError("null header key")
                hv, p = _read_varbytes(body, p)
                headers.append((hk.decode(), hv))
            if p != end:
                raise DecodeError("record length does not match its fields")
            out.append(
                Record(
                    key,
                    value,
                    headers,
                    batch.max_timestamp if log_append else batch.first_timestamp + ts_delta,
                    batch.base_offset + off_delta,
                    attributes,
                )
            )
            pos = end
    except (IndexError, ValueError, struct.error) as e:
        raise CorruptRecords(f"batch at byte {batch.position}: bad record: {e}") from None
    return out


def _read_varbytes(buf: Buffer, pos: int) -> tuple[bytes | None, int]:
    n, pos = read_varint(buf, pos)
    if n < 0:
        return None, pos
    end = pos + n
    if end > len(buf):
        raise DecodeError("field runs past the record")
    return bytes(buf[pos:end]), end


# -- compression ------------------------------------------------------------------------

_XERIAL_MAGIC = b"\x82SNAPPY\x00"


def compress(codec: Compression, data: Buffer) -> bytes:
    import cramjam

    if codec == Compression.GZIP:
        return bytes(cramjam.gzip.compress(data))
    if codec == Compression.SNAPPY:
        # Raw snappy, as librdkafka writes it; Java's SnappyInputStream reads both forms.
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == Compression.LZ4:
        return bytes(cramjam.lz4.compress(data))
    if codec == Compression.ZSTD:
        return bytes(cramjam.zstd.compress(data))
    if codec == Compression.NONE:
        return bytes(data)
    raise CorruptRecords(f"unknown compression codec {codec}")


#: Most bytes one batch may inflate to. A batch's compressed size is bounded by the frame, but
#: 32 KiB of zstd inflate to 1 GiB (a compression bomb); Kafka's batches are at most a few MiB
#: of records, so this leaves room for any real producer.
MAX_DECOMPRESSED = 64 << 20
#: First output buffer, as a multiple of the compressed size: real data fits, a bomb does not.
_FIRST_GUESS_RATIO = 8


def decompress(codec: Compression, data: Buffer, max_size: int = MAX_DECOMPRESSED) -> bytes:
    """Inflate one batch's records; ``CorruptRecords`` if they are corrupt or inflate past ``max_size``."""
    import cramjam

    try:
        if codec == Compression.SNAPPY:
            if bytes(data[:8]) == _XERIAL_MAGIC:
                return _xerial_decompress(data, max_size)
            # Raw snappy states its length up front: check it before allocating anything.
            if cramjam.snappy.decompress_raw_len(data) > max_size:
                raise CorruptRecords(f"SNAPPY batch inflates past {max_size} bytes")
            return bytes(cramjam.snappy.decompress_raw(data))
        module = {Compression.GZIP: cramjam.gzip, Compression.LZ4: cramjam.lz4, Compression.ZSTD: cramjam.zstd}.get(
            codec
        )
        if module is None:
            raise CorruptRecords(f"unknown compression codec {int(codec)}")
        # Into a bounded buffer: the decompressor stops when it is full instead of inflating a bomb.
        size = min(max_size, max(64 << 10, _FIRST_GUESS_RATIO * len(data)))
        while True:
            out = bytearray(size)
            try:
                n = module.decompress_into(data, out)
            except cramjam.DecompressionError as e:
                if "buffer" not in str(e):
                    raise
                if size >= max_size:
                    raise CorruptRecords(f"{codec.name} batch inflates past {max_size} bytes") from None
                size = min(max_size, size * 8)
                continue
            del out[n:]
            return bytes(out)
    except (cramjam.DecompressionError, ValueError) as e:
        raise CorruptRecords(f"cannot decompress {codec.name} batch: {e}") from None


def _xerial_decompress(data: Buffer, max_size: int) -> bytes:
    """Java's snappy framing: 16-byte header, then (int32 size, raw snappy block)*."""
    import cramjam

    mv = memoryview(data) if not isinstance(data, memoryview) else data
    pos = 16
    out = bytearray()
    while pos < len(mv):
        (size,) = struct.unpack_from(">i", mv, pos)
        pos += 4
        if size < 0 or pos + size > len(mv):
            raise CorruptRecords("truncated xerial snappy block")
        block = mv[pos : pos + size]
        if len(out) + cramjam.snappy.decompress_raw_len(block) > max_size:
            raise CorruptRecords(f"SNAPPY batch inflates past {max_size} bytes")
        out += bytes(cramjam.snappy.decompress_raw(block))
        pos += size
    return bytes(out)
