"""Request header parsing (v0/v1/v2) and response header encoding (v0/v1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.protocol._wire import INT16, INT32, Buffer, skip_tagged_fields
from engine.protocol.apis import SUPPORTED_APIS, request_header_version, response_header_version

_HEAD = struct.Struct(">hhi")
# Header v2 from this version on, by api key (same rule as apis.request_header_version).
_FIRST_FLEXIBLE = {int(k): s.first_flexible for k, s in SUPPORTED_APIS.items() if s.first_flexible is not None}


@dataclass(slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None = None
    #: 0, 1 or 2, as chosen by ``apis.request_header_version``.
    header_version: int = 1


def parse_request_header(frame: Buffer, header_version: int | None = None) -> tuple[RequestHeader, int]:
    """Parse the header at the start of ``frame``; return it and where the body starts.

    The header version follows from (api_key, api_version) unless ``header_version``
    forces one (0 has no client_id; only ControlledShutdown v0 ever used it).
    Raises ``struct.error``/``IndexError``/``ValueError`` on a short or bad header; use
    ``codec.decode_request`` for typed errors.
    """
    api_key, api_version, correlation_id = _HEAD.unpack_from(frame, 0)
    if header_version is None:
        first_flexible = _FIRST_FLEXIBLE.get(api_key)
        hv = 2 if first_flexible is not None and api_version >= first_flexible else 1
    elif header_version == 0:
        return RequestHeader(api_key, api_version, correlation_id, None, 0), 8
    else:
        hv = header_version
    # client_id is a legacy (non-compact) nullable string even in header v2, so that any
    # broker can read it before knowing whether the api version is flexible.
    (n,) = INT16.unpack_from(frame, 8)
    if n < 0:
        client_id = None
        pos = 10
    else:
        pos = 10 + n
        if pos > len(frame):
            raise ValueError("client_id runs past the end of the frame")
        client_id = str(frame[10:pos], "utf-8")
    if hv == 2:
        if frame[pos]:
            pos = skip_tagged_fields(frame, pos)
        else:
            pos += 1
    return RequestHeader(api_key, api_version, correlation_id, client_id, hv), pos


def peek_api(frame: Buffer) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) of a frame, for logging and error replies."""
    return _HEAD.unpack_from(frame, 0)  # type: ignore[return-value]


def encode_response_header(correlation_id: int, header_version: int) -> bytes:
    # v1 adds an (always empty, for amq) tagged-field section.
    if header_version >= 1:
        return INT32.pack(correlation_id) + b"\x00"
    return INT32.pack(correlation_id)


def response_header_for(header: RequestHeader) -> bytes:
    return encode_response_header(
        header.correlation_id, response_header_version(header.api_key, header.api_version)
    )


def encode_request_header(header: RequestHeader) -> bytes:
    """Client side of the header; used by tests and tools that talk to a broker."""
    out = bytearray(_HEAD.pack(header.api_key, header.api_version, header.correlation_id))
    hv = request_header_version(header.api_key, header.api_version)
    if hv >= 1:
        if header.client_id is None:
            out += b"\xff\xff"
        else:
            cid = header.client_id.encode()
            out += INT16.pack(len(cid)) + cid
    if hv >= 2:
        out.append(0)
    return bytes(out)
