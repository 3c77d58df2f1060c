"""The Kafka wire codec: framing, headers, typed requests/responses, record batches.

Pure: no sockets, no asyncio, no storage. See docs/protocol.md.
"""

from engine.protocol.apis import (
    SUPPORTED_APIS,
    ApiKey,
    ApiSpec,
    request_header_version,
    response_header_version,
)
from engine.protocol.codec import (
    REQUEST_TYPES,
    RESPONSE_TYPES,
    Request,
    api_versions_response,
    decode_request,
    decode_response,
    encode_body,
    encode_request,
    encode_response,
    unsupported_version_response,
)
from engine.protocol.errors import (
    CorruptRecords,
    CorruptRequest,
    ErrorCode,
    FrameError,
    FrameTooLarge,
    InvalidFrameSize,
    ProtocolError,
    TruncatedFrame,
    UnknownApiKey,
    UnsupportedVersion,
)
from engine.protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder
from engine.protocol.headers import RequestHeader

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "SUPPORTED_APIS",
    "ApiKey",
    "ApiSpec",
    "CorruptRecords",
    "CorruptRequest",
    "ErrorCode",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "InvalidFrameSize",
    "ProtocolError",
    "Request",
    "RequestHeader",
    "TruncatedFrame",
    "UnknownApiKey",
    "UnsupportedVersion",
    "api_versions_response",
    "decode_request",
    "decode_response",
    "encode_body",
    "encode_request",
    "encode_response",
    "request_header_version",
    "response_header_version",
    "unsupported_version_response",
]
