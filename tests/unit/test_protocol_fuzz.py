"""Fuzzed request frames against the codec in-process: every input decodes or raises our errors.

Never another exception, never more than a bounded amount of memory or time per frame. The
same frames go to a live broker in tests/integration/test_protocol_fuzz_live.py and
benchmarks/fuzz.py.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from typing import Any

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.devtools.fuzz import FrameFuzzer, bomb_batch
from engine.protocol import SUPPORTED_APIS, ProtocolError, codegen, decode_request, encode_request
from engine.protocol.errors import CorruptRecords
from engine.protocol.headers import RequestHeader
from engine.protocol.records import (
    MAX_DECOMPRESSED,
    Compression,
    Record,
    batch_records,
    build_batch,
    decompress,
    read_batches,
)
from tests.unit.test_protocol_codec import message_strategy

#: Decoding makes Python objects per array element: up to ~30 bytes of memory per frame byte.
MEMORY_PER_BYTE = 64
MEMORY_SLACK = 256 << 10
SECONDS_PER_FRAME = 1.0


@pytest.fixture(scope="module", autouse=True)
def _compiled_decoders() -> None:
    # Compiling a decoder (once per api and version) is not what a frame costs; do it up front.
    for s in SUPPORTED_APIS.values():
        for v in range(s.min_version, s.max_version + 1):
            codegen.decoder(f"{s.name}Request", v)


def _records_of(body: Any) -> list[Any]:
    out = []
    for td in getattr(body, "topic_data", None) or []:
        for pd in td.partition_data or []:
            if pd.records is not None:
                out.append(pd.records)
    return out


def check_frame(frame: bytes) -> None:
    """The property: decode (and, for produce, parse every batch's records) or raise ours, within bounds."""
    data = memoryview(bytearray(frame[4:]))
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        request = decode_request(data)
    except ProtocolError:
        request = None
    if request is not None:
        for records in _records_of(request.body):
            try:
                for b in read_batches(records):
                    batch_records(records, b)
            except CorruptRecords:
                pass
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    assert elapsed < SECONDS_PER_FRAME, f"{elapsed:.2f}s for a {len(frame)}-byte frame"
    # A bomb's output buffer is bounded by MAX_DECOMPRESSED, not by the frame.
    assert peak <= MEMORY_PER_BYTE * len(frame) + MEMORY_SLACK + 2 * MAX_DECOMPRESSED, (peak, len(frame))


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_frames_decode_or_raise_protocol_errors(seed: int) -> None:
    fz = FrameFuzzer(seed, bombs=seed == 0)
    tracemalloc.start()
    try:
        for _ in range(1500):
            what, frame = fz.frame()
            try:
                check_frame(frame)
            except Exception as e:
                raise AssertionError(f"seed {seed} frame {fz.count} ({what}): {type(e).__name__}: {e}") from e
    finally:
        tracemalloc.stop()


def _damage(data: bytearray, ops: list[tuple[int, int, int]]) -> bytes:
    for kind, where, value in ops:
        if len(data) <= 5:
            break
        i = 4 + where % (len(data) - 4)
        if kind == 0:
            data[i] ^= 1 << (value % 8)
        elif kind == 1:
            del data[i:]
        elif kind == 2 and i + 4 <= len(data):
            struct.pack_into(">i", data, i, value)
        elif kind == 3:
            data[i:i] = bytes([0xFF]) * (1 + value % 9)
    struct.pack_into(">i", data, 0, len(data) - 4)
    return bytes(data)


CASES = [(int(s.key), v) for s in SUPPORTED_APIS.values() for v in range(s.min_version, s.max_version + 1)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_valid_requests(data: st.DataObject) -> None:
    """hypothesis's own objects (tests/unit/test_protocol_codec.py), damaged by hypothesis-chosen edits."""
    key, version = data.draw(st.sampled_from(CASES))
    body = data.draw(message_strategy(f"{SUPPORTED_APIS[key].name}Request", version))
    frame = bytearray(encode_request(RequestHeader(key, version, 1, "h"), body))
    ops = data.draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.sampled_from([-1, 0, 2**31 - 1, -(2**31), 7])),
            min_size=1,
            max_size=4,
        )
    )
    tracemalloc.start()
    try:
        check_frame(_damage(frame, ops))
    finally:
        tracemalloc.stop()


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    tracemalloc.start()
    try:
        check_frame(struct.pack(">i", len(raw)) + raw)
    finally:
        tracemalloc.stop()


# -- compression bombs (found by the fuzzer: 32 KiB of zstd made the broker allocate 1 GiB) -----


@pytest.mark.parametrize("codec", [Compression.GZIP, Compression.ZSTD, Compression.LZ4])
def test_a_compression_bomb_is_refused_in_bounded_memory_and_time(codec: Compression) -> None:
    batch = bomb_batch(codec)
    (rb,) = read_batches(batch)  # the header and CRC are fine: only inflating tells
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CorruptRecords, match="inflates past"):
            batch_records(batch, rb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 3 * MAX_DECOMPRESSED


def test_snappy_bombs_are_refused_before_inflating() -> None:
    raw = bytes(cramjam.snappy.compress_raw(bytes(8 << 20)))
    with pytest.raises(CorruptRecords, match="inflates past"):
        decompress(Compression.SNAPPY, raw, max_size=1 << 20)
    xerial = b"\x82SNAPPY\x00" + bytes(8) + struct.pack(">i", len(raw)) + raw
    with pytest.raises(CorruptRecords, match="inflates past"):
        decompress(Compression.SNAPPY, xerial, max_size=1 << 20)


@pytest.mark.parametrize("codec", list(Compression)[1:])
def test_highly_compressible_real_batches_still_decode(codec: Compression) -> None:
    # 8 MiB of records that compress 20-1000:1: above the first output guess, below the cap.
    recs = [Record(key=b"k%d" % i, value=bytes(8192)) for i in range(1024)]
    batch = build_batch(recs, compression=codec)
    assert len(batch) * 8 < 8 << 20  # beyond the first output buffer: the retry path decodes it
    (rb,) = read_batches(batch)
    assert [r.key for r in batch_records(batch, rb)] == [r.key for r in recs]


def test_corrupt_compressed_data_is_corrupt_records() -> None:
    for codec in list(Compression)[1:]:
        with pytest.raises(CorruptRecords):
            decompress(codec, b"\x00\x01garbage" * 10)
