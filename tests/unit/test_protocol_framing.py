"""Framing, headers, dispatch and malformed input: bad bytes give typed errors, nothing else."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.protocol import (
    SUPPORTED_APIS,
    ApiKey,
    CorruptRequest,
    ErrorCode,
    FrameDecoder,
    FrameTooLarge,
    InvalidFrameSize,
    ProtocolError,
    RequestHeader,
    TruncatedFrame,
    UnknownApiKey,
    UnsupportedVersion,
    api_versions_response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    request_header_version,
    response_header_version,
    unsupported_version_response,
)
from engine.protocol import messages as m
from engine.protocol.framing import frame, join
from engine.protocol.headers import parse_request_header
from engine.protocol.schema import load_message

# -- framing ------------------------------------------------------------------------------


def _frames(*bodies: bytes) -> bytes:
    return b"".join(struct.pack(">i", len(b)) + b for b in bodies)


@given(
    bodies=st.lists(st.binary(min_size=8, max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    writable=st.booleans(),
)
def test_frames_survive_any_split(bodies: list[bytes], cuts: list[int], writable: bool) -> None:
    stream = _frames(*bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder(writable=writable)
    got: list[bytes] = []
    for a, b in itertools.pairwise(points):
        got += [bytes(f) for f in dec.feed(stream[a:b])]
    assert got == bodies
    assert dec.buffered == 0
    dec.close()


def test_frames_are_writable_and_private() -> None:
    chunk = bytearray(_frames(b"A" * 10, b"B" * 10))
    dec = FrameDecoder()
    f1, f2 = dec.feed(chunk)
    chunk[4:14] = b"x" * 10  # the caller reuses its read buffer
    assert bytes(f1) == b"A" * 10
    f1[0] = ord("Z")  # patchable in place (base offsets, LogAppendTime)
    assert bytes(f2) == b"B" * 10


def test_one_frame_in_many_reads_is_joined_once() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    stream = _frames(body)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(stream), 65536):
        out += dec.feed(stream[i : i + 65536])
    assert len(out) == 1 and bytes(out[0]) == body
    assert not out[0].readonly


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        (b"\x7f\xff\xff\xff", FrameTooLarge),  # 2 GiB - 1
        (b"\x80\x00\x00\x00", InvalidFrameSize),  # "2 GiB": negative as int32
        (b"\xff\xff\xff\xff", InvalidFrameSize),  # -1
        (b"\x00\x00\x00\x00", InvalidFrameSize),  # empty frame: not even a header
        (struct.pack(">i", 100 * 1024 * 1024 + 1), FrameTooLarge),
    ],
)
def test_bad_size_prefix_is_a_typed_error_without_allocation(prefix: bytes, error: type[Exception]) -> None:
    dec = FrameDecoder()
    with pytest.raises(error) as info:
        dec.feed(prefix + b"\x00" * 16)
    assert isinstance(info.value, ProtocolError)
    assert dec.buffered < 64  # nothing sized after the prefix was reserved
    with pytest.raises(error):  # stays failed: the stream cannot be resynchronised
        dec.feed(b"\x00\x00\x00\x08" + bytes(8))


def test_size_prefix_split_across_reads_is_checked() -> None:
    dec = FrameDecoder(max_frame_size=1000)
    assert dec.feed(b"\x00\x00") == []
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x10\x00")


def test_truncated_frame_is_reported_at_close() -> None:
    dec = FrameDecoder()
    assert dec.feed(struct.pack(">i", 100) + b"x" * 50) == []
    with pytest.raises(TruncatedFrame) as info:
        dec.close()
    assert info.value.pending == 54


def test_frame_helper_keeps_big_parts_uncopied() -> None:
    big = bytes(100_000)
    parts = frame([b"head", big, b"tail"])
    assert parts[1] is big
    assert join(parts) == struct.pack(">i", 100_008) + b"head" + big + b"tail"


# -- headers --------------------------------------------------------------------------------


def test_header_versions_follow_kafka() -> None:
    assert request_header_version(ApiKey.PRODUCE, 8) == 1
    assert request_header_version(ApiKey.PRODUCE, 9) == 2
    assert request_header_version(ApiKey.API_VERSIONS, 3) == 2
    assert request_header_version(ApiKey.API_VERSIONS, 2) == 1
    assert response_header_version(ApiKey.PRODUCE, 9) == 1
    assert response_header_version(ApiKey.FETCH, 11) == 0
    # ApiVersions responses are always header v0, whatever the request version.
    assert response_header_version(ApiKey.API_VERSIONS, 4) == 0
    assert request_header_version(999, 0) == 1


@pytest.mark.parametrize("spec", list(SUPPORTED_APIS.values()), ids=lambda s: s.name)
def test_flexible_versions_match_the_schemas(spec: object) -> None:
    from engine.protocol.apis import ApiSpec

    assert isinstance(spec, ApiSpec)
    for kind in ("Request", "Response"):
        msg = load_message(spec.name + kind)
        assert msg.api_key == spec.key
        assert msg.flexible.lo == (spec.first_flexible if spec.first_flexible is not None else -1)
        # Every advertised version is one Kafka still defines, except Produce v0-2
        # (advertised for librdkafka, see apis.py).
        lo = 0 if spec.key == ApiKey.PRODUCE else msg.valid.lo
        assert lo <= spec.min_version and spec.max_version in msg.valid


def test_request_header_v2_with_client_id_and_tags() -> None:
    h = RequestHeader(ApiKey.METADATA, 9, 77, "my-client")
    data = encode_request(h, m.MetadataRequest(topics=None))
    hdr, _pos = parse_request_header(memoryview(data)[4:])
    assert (hdr.api_key, hdr.api_version, hdr.correlation_id, hdr.client_id, hdr.header_version) == (
        3, 9, 77, "my-client", 2,
    )
    # Tagged fields in the header are skipped.
    raw = bytearray(data[4:])
    tag_at = 8 + 2 + len("my-client")
    raw[tag_at : tag_at + 1] = b"\x01\x05\x02hi"  # one tag (5) of two bytes
    req = decode_request(raw)
    assert req.header.correlation_id == 77 and isinstance(req.body, m.MetadataRequest)


def test_forced_header_versions() -> None:
    raw = struct.pack(">hhi", 7, 0, 99) + b"body"
    hdr, pos = parse_request_header(raw, header_version=0)
    assert (hdr.api_key, hdr.correlation_id, hdr.client_id, hdr.header_version, pos) == (7, 99, None, 0, 8)
    raw = struct.pack(">hhih", ApiKey.PRODUCE, 3, 5, 2) + b"id" + b"\x00rest"
    hdr, pos = parse_request_header(raw, header_version=2)
    assert (hdr.client_id, hdr.header_version, raw[pos:]) == ("id", 2, b"rest")


def test_null_client_id() -> None:
    data = encode_request(RequestHeader(ApiKey.HEARTBEAT, 0, 1, None), m.HeartbeatRequest("g", 1, "m"))
    req = decode_request(memoryview(data)[4:])
    assert req.header.client_id is None
    assert req.body == m.HeartbeatRequest("g", 1, "m")


# -- dispatch and replies ---------------------------------------------------------------------


def test_decode_request_gives_typed_body_and_response_roundtrips() -> None:
    body = m.FindCoordinatorRequest(key="group-1", key_type=0)
    data = encode_request(RequestHeader(ApiKey.FIND_COORDINATOR, 3, 5, "c"), body)
    req = decode_request(memoryview(data)[4:])
    assert req.api_key == ApiKey.FIND_COORDINATOR and req.api_version == 3
    match req.body:
        case m.FindCoordinatorRequest(key=key):
            assert key == "group-1"
        case _:  # pragma: no cover
            pytest.fail("wrong type")
    resp = m.FindCoordinatorResponse(node_id=1, host="h", port=9092)
    out = join(encode_response(req.header, resp))
    corr, decoded = decode_response(ApiKey.FIND_COORDINATOR, 3, out[4:])
    assert corr == 5 and decoded == resp


def test_unknown_api_key_and_unsupported_version_carry_the_header() -> None:
    raw = struct.pack(">hhih", 999, 0, 42, -1)
    with pytest.raises(UnknownApiKey) as e1:
        decode_request(raw)
    assert e1.value.api_key == 999 and e1.value.header is not None
    raw = struct.pack(">hhih", ApiKey.FETCH, 3, 43, -1)
    with pytest.raises(UnsupportedVersion) as e2:
        decode_request(raw)
    assert e2.value.error_code == ErrorCode.UNSUPPORTED_VERSION
    assert e2.value.header is not None and e2.value.header.correlation_id == 43


def test_api_versions_unsupported_version_gets_a_v0_reply() -> None:
    # A client from the future asks with ApiVersions v9 (flexible: header v2).
    raw = struct.pack(">hhih", ApiKey.API_VERSIONS, 9, 11, 3) + b"cli" + b"\x00" + b"\x02x\x021\x00"
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(raw)
    assert info.value.header is not None
    out = join(unsupported_version_response(info.value.header))
    assert struct.unpack_from(">i", out, 0)[0] == len(out) - 4
    corr, body = decode_response(ApiKey.API_VERSIONS, 0, out[4:])
    assert corr == 11
    assert isinstance(body, m.ApiVersionsResponse)
    assert body.error_code == ErrorCode.UNSUPPORTED_VERSION
    assert {(k.api_key, k.min_version, k.max_version) for k in body.api_keys} == {
        (s.key, s.min_version, s.max_version) for s in SUPPORTED_APIS.values()
    }


def test_api_versions_response_lists_every_supported_api() -> None:
    resp = api_versions_response()
    keys = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
    assert keys[ApiKey.PRODUCE] == (0, 9)
    assert keys[ApiKey.FETCH][1] <= 12  # no topic IDs in fetch
    assert keys[ApiKey.API_VERSIONS] == (0, 4)
    for v in range(5):
        h = RequestHeader(ApiKey.API_VERSIONS, v, 1, "c")
        out = join(encode_response(h, resp))
        _, back = decode_response(ApiKey.API_VERSIONS, v, out[4:])
        assert isinstance(back, m.ApiVersionsResponse)
        assert [(k.api_key, k.max_version) for k in back.api_keys] == [
            (k.api_key, k.max_version) for k in resp.api_keys
        ]


def test_error_codes_have_kafka_numbers() -> None:
    assert ErrorCode.UNKNOWN_SERVER_ERROR == -1
    assert ErrorCode.NONE == 0
    assert ErrorCode.OFFSET_OUT_OF_RANGE == 1
    assert ErrorCode.CORRUPT_MESSAGE == 2
    assert ErrorCode.UNKNOWN_TOPIC_OR_PARTITION == 3
    assert ErrorCode.NOT_LEADER_OR_FOLLOWER == 6
    assert ErrorCode.INVALID_TOPIC_EXCEPTION == 17
    assert ErrorCode.UNSUPPORTED_VERSION == 35
    assert ErrorCode.TOPIC_ALREADY_EXISTS == 36
    assert ErrorCode.INVALID_PARTITIONS == 37
    assert ErrorCode.INVALID_REPLICATION_FACTOR == 38
    assert ErrorCode.INVALID_CONFIG == 40
    assert ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER == 45
    assert ErrorCode.DUPLICATE_SEQUENCE_NUMBER == 46
    assert ErrorCode.INVALID_PRODUCER_EPOCH == 47
    assert ErrorCode.UNKNOWN_PRODUCER_ID == 59
    assert ErrorCode.GROUP_ID_NOT_FOUND == 69
    assert ErrorCode.FENCED_INSTANCE_ID == 82
    assert ErrorCode.UNKNOWN_MEMBER_ID.retriable is False
    assert ErrorCode.NOT_COORDINATOR.retriable is True


# -- malformed input ----------------------------------------------------------------------------

_PRODUCE = encode_request(
    RequestHeader(ApiKey.PRODUCE, 9, 1, "c"),
    m.ProduceRequest(
        acks=-1,
        timeout_ms=1000,
        topic_data=[m.ProduceRequest.TopicProduceData("t", [m.ProduceRequest.PartitionProduceData(0, b"x" * 70)])],
    ),
)[4:]


def test_every_truncation_of_a_request_is_a_typed_error() -> None:
    for cut in range(len(_PRODUCE)):
        with pytest.raises(ProtocolError):
            decode_request(_PRODUCE[:cut])


def test_forged_array_length_does_not_loop() -> None:
    body = struct.pack(">hhih", ApiKey.METADATA, 1, 1, -1) + struct.pack(">i", 2**31 - 1)
    with pytest.raises(CorruptRequest) as info:
        decode_request(body)
    assert info.value.header is not None and info.value.header.correlation_id == 1


def test_forged_string_length() -> None:
    body = struct.pack(">hhih", ApiKey.METADATA, 1, 1, -1) + struct.pack(">ih", 1, 30000) + b"abc"
    with pytest.raises(CorruptRequest):
        decode_request(body)


def test_bad_utf8_is_corrupt_request() -> None:
    body = struct.pack(">hhih", ApiKey.METADATA, 1, 1, -1) + struct.pack(">ih", 1, 2) + b"\xff\xfe"
    with pytest.raises(CorruptRequest):
        decode_request(body)


@settings(max_examples=300, deadline=None)
@given(
    api=st.sampled_from(sorted(SUPPORTED_APIS)),
    version=st.integers(0, 12),
    garbage=st.binary(max_size=200),
)
def test_garbage_bodies_only_raise_protocol_errors(api: int, version: int, garbage: bytes) -> None:
    raw = struct.pack(">hhi", api, version, 9) + garbage
    with contextlib.suppress(ProtocolError):
        decode_request(raw)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_requests_only_raise_protocol_errors(data: st.DataObject) -> None:
    raw = bytearray(_PRODUCE)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        decode_request(raw)
