"""Request decoding and response encoding: the codec's entry points for the broker.

    decoder = FrameDecoder()
    for frame in decoder.feed(data):
        try:
            request = decode_request(frame)
        except UnsupportedVersion as e:   # ApiVersions: answer in v0 so the client can retry
            if e.api_key == ApiKey.API_VERSIONS and e.header is not None:
                transport.writelines(unsupported_version_response(e.header))
            ...
        match request.body:
            case ProduceRequest(): ...
        transport.writelines(encode_response(request.header, response))
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from engine.protocol import codegen, messages
from engine.protocol._wire import Buffer, skip_tagged_fields
from engine.protocol.apis import SUPPORTED_APIS, ApiKey, response_header_version
from engine.protocol.errors import CorruptRequest, ErrorCode, UnknownApiKey, UnsupportedVersion
from engine.protocol.framing import frame
from engine.protocol.headers import (
    RequestHeader,
    encode_request_header,
    encode_response_header,
    parse_request_header,
)
from engine.protocol.messages import AnyRequest, AnyResponse, ApiVersionsResponse

#: Request and response classes by api key.
REQUEST_TYPES: dict[int, type[Any]] = {s.key: getattr(messages, f"{s.name}Request") for s in SUPPORTED_APIS.values()}
RESPONSE_TYPES: dict[int, type[Any]] = {
    s.key: getattr(messages, f"{s.name}Response") for s in SUPPORTED_APIS.values()
}

# What malformed input makes the generated decoders raise (DecodeError and
# UnicodeDecodeError are ValueErrors).
_DECODE_ERRORS = (struct.error, IndexError, ValueError, OverflowError)


@dataclass(slots=True)
class Request:
    header: RequestHeader
    body: AnyRequest

    @property
    def api_key(self) -> int:
        return self.header.api_key

    @property
    def api_version(self) -> int:
        return self.header.api_version


def decode_request(frame_data: Buffer) -> Request:
    """Parse one request frame (without its size prefix) into header and typed body.

    Raises ``UnknownApiKey``, ``UnsupportedVersion`` (both carry the parsed header) or
    ``CorruptRequest``; nothing else escapes for any input.
    """
    buf = frame_data if isinstance(frame_data, memoryview) else memoryview(frame_data)
    try:
        header, pos = parse_request_header(buf)
    except _DECODE_ERRORS as e:
        raise CorruptRequest(f"bad request header: {e}") from None
    decode = _request_decoders.get((header.api_key, header.api_version))
    if decode is None:
        decode = _request_decoder(header)
    try:
        body, _ = decode(buf, pos)
    except _DECODE_ERRORS as e:
        raise CorruptRequest(
            f"bad {type(e).__name__} in api {header.api_key} v{header.api_version} request body: {e}", header
        ) from None
    return Request(header, body)


_request_decoders: dict[tuple[int, int], codegen.Decoder] = {}


def _request_decoder(header: RequestHeader) -> codegen.Decoder:
    spec = SUPPORTED_APIS.get(header.api_key)
    if spec is None:
        raise UnknownApiKey(header.api_key, header)
    if not spec.supports(header.api_version):
        raise UnsupportedVersion(header.api_key, header.api_version, header)
    decode = codegen.decoder(f"{spec.name}Request", header.api_version)
    _request_decoders[(header.api_key, header.api_version)] = decode
    return decode


def encode_body(body: AnyRequest | AnyResponse, version: int) -> list[Buffer]:
    """Encode a request or response body at ``version``; no header, no size prefix."""
    out = bytearray()
    parts: list[Buffer] = []
    codegen.encoder(type(body).__name__, version)(body, out, parts)
    parts.append(out)
    return parts


def encode_response(header: RequestHeader, body: AnyResponse) -> list[Buffer]:
    """A complete response frame (size prefix, header, body) for ``header``'s request.

    The result is a list of buffers for ``transport.writelines``: record payloads of
    ``codegen.ZERO_COPY_MIN`` bytes or more are the caller's own objects, not copies,
    so they must not be modified until written.
    """
    hv = response_header_version(header.api_key, header.api_version)
    parts = encode_body(body, header.api_version)
    parts.insert(0, encode_response_header(header.correlation_id, hv))
    return frame(parts)


def api_versions_response(
    error_code: int = ErrorCode.NONE, throttle_time_ms: int = 0
) -> ApiVersionsResponse:
    """The ApiVersions answer: every API in ``SUPPORTED_APIS`` with its range."""
    return ApiVersionsResponse(
        error_code=int(error_code),
        api_keys=[
            ApiVersionsResponse.ApiVersion(int(s.key), s.min_version, s.max_version)
            for s in SUPPORTED_APIS.values()
        ],
        throttle_time_ms=throttle_time_ms,
    )


def unsupported_version_response(header: RequestHeader) -> list[Buffer]:
    """Answer to an ApiVersions request of a version amq does not know.

    Kafka answers in v0 format (which every version can read: the response header is
    v0 for ApiVersions, and the body starts with the error code and the api list) with
    UNSUPPORTED_VERSION; the client then retries with the highest version listed.
    """
    body = api_versions_response(ErrorCode.UNSUPPORTED_VERSION)
    parts = encode_body(body, 0)
    parts.insert(0, encode_response_header(header.correlation_id, 0))
    return frame(parts)


# -- client side (tests, tools, benchmarks) -------------------------------------------


def encode_request(header: RequestHeader, body: AnyRequest) -> bytes:
    """A complete request frame, as a client would send it."""
    parts = encode_body(body, header.api_version)
    parts.insert(0, encode_request_header(header))
    return b"".join(frame(parts))


def decode_response(api_key: int, api_version: int, frame_data: Buffer) -> tuple[int, AnyResponse]:
    """Parse a response frame (without size prefix): (correlation_id, body)."""
    buf = frame_data if isinstance(frame_data, memoryview) else memoryview(frame_data)
    (correlation_id,) = struct.unpack_from(">i", buf, 0)
    pos = 4
    if response_header_version(api_key, api_version) >= 1:
        pos = skip_tagged_fields(buf, pos)
    name = SUPPORTED_APIS[ApiKey(api_key)].name
    body, _ = codegen.decoder(f"{name}Response", api_version)(buf, pos)
    return correlation_id, body


def decode_request_body(api_key: int, api_version: int, data: Buffer) -> AnyRequest:
    """Decode just a request body (no header) at a given version."""
    buf = data if isinstance(data, memoryview) else memoryview(data)
    name = SUPPORTED_APIS[ApiKey(api_key)].name
    body, _ = codegen.decoder(f"{name}Request", api_version)(buf, 0)
    return body  # type: ignore[no-any-return]


def decode_response_body(api_key: int, api_version: int, data: Buffer) -> AnyResponse:
    """Decode just a response body (no header) at a given version."""
    buf = data if isinstance(data, memoryview) else memoryview(data)
    name = SUPPORTED_APIS[ApiKey(api_key)].name
    body, _ = codegen.decoder(f"{name}Response", api_version)(buf, 0)
    return body  # type: ignore[no-any-return]
