"""Wire primitives shared by the generated codecs, headers, framing and record batches.

Readers take ``(buf, pos)`` and return ``(value, new_pos)``; ``buf`` is a memoryview of
format "B" (or bytes). They raise ``struct.error``/``IndexError``/``ValueError`` on
short or bad input; the callers turn those into typed protocol errors at one place
instead of checking every read.
"""

from __future__ import annotations

import struct
from typing import TypeAlias
from uuid import UUID

Buffer: TypeAlias = bytes | bytearray | memoryview
#: A records field: one buffer, or a list of buffers written back to back (no join).
Records: TypeAlias = Buffer | list[Buffer]

ZERO_UUID = UUID(int=0)

INT8 = struct.Struct(">b")
INT16 = struct.Struct(">h")
UINT16 = struct.Struct(">H")
INT32 = struct.Struct(">i")
UINT32 = struct.Struct(">I")
INT64 = struct.Struct(">q")
FLOAT64 = struct.Struct(">d")

#: One-byte encodings of unsigned varints 0..127, the overwhelmingly common case
#: (compact lengths, tag counts), so writers can skip the loop.
UVARINT_1 = tuple(bytes((i,)) for i in range(128))


class DecodeError(ValueError):
    """Raised by primitive readers for values that parse but make no sense."""


def read_uvarint(buf: Buffer, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    while True:
        pos += 1
        b = buf[pos]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 63:
            raise DecodeError("varint is too long")


def read_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """Zig-zag signed varint (record fields)."""
    u, pos = read_uvarint(buf, pos)
    return (u >> 1) ^ -(u & 1), pos


def uvarint(value: int) -> bytes:
    if value < 0x80:
        return UVARINT_1[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint(value: int) -> bytes:
    return uvarint((value << 1) ^ (value >> 63))


def varint_size(value: int) -> int:
    u = (value << 1) ^ (value >> 63)
    n = 1
    while u >= 0x80:
        u >>= 7
        n += 1
    return n


def _check(buf: Buffer, end: int) -> None:
    # Slicing a memoryview past its end silently truncates; a short read must fail.
    if end > len(buf):
        raise DecodeError("length runs past the end of the buffer")


# -- strings and bytes ---------------------------------------------------------------


def read_string(buf: Buffer, pos: int) -> tuple[str, int]:
    (n,) = INT16.unpack_from(buf, pos)
    pos += 2
    if n < 0:
        raise DecodeError("null in a non-nullable string")
    end = pos + n
    _check(buf, end)
    return str(buf[pos:end], "utf-8"), end


def read_nullable_string(buf: Buffer, pos: int) -> tuple[str | None, int]:
    (n,) = INT16.unpack_from(buf, pos)
    pos += 2
    if n < 0:
        return None, pos
    end = pos + n
    _check(buf, end)
    return str(buf[pos:end], "utf-8"), end


def read_compact_string(buf: Buffer, pos: int) -> tuple[str, int]:
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        raise DecodeError("null in a non-nullable string")
    end = pos + n - 1
    _check(buf, end)
    return str(buf[pos:end], "utf-8"), end


def read_compact_nullable_string(buf: Buffer, pos: int) -> tuple[str | None, int]:
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = pos + n - 1
    _check(buf, end)
    return str(buf[pos:end], "utf-8"), end


def read_bytes(buf: Buffer, pos: int) -> tuple[bytes | None, int]:
    (n,) = INT32.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        return None, pos
    end = pos + n
    _check(buf, end)
    return bytes(buf[pos:end]), end


def read_compact_bytes(buf: Buffer, pos: int) -> tuple[bytes | None, int]:
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = pos + n - 1
    _check(buf, end)
    return bytes(buf[pos:end]), end


def read_records(buf: memoryview, pos: int) -> tuple[memoryview | None, int]:
    # A view, not a copy: produce payloads go to the WAL as they came off the socket.
    (n,) = INT32.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        return None, pos
    end = pos + n
    _check(buf, end)
    return buf[pos:end], end


def read_compact_records(buf: memoryview, pos: int) -> tuple[memoryview | None, int]:
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = pos + n - 1
    _check(buf, end)
    return buf[pos:end], end


def read_uuid(buf: Buffer, pos: int) -> tuple[UUID, int]:
    end = pos + 16
    _check(buf, end)
    return UUID(bytes=bytes(buf[pos:end])), end


def read_array_len(buf: Buffer, pos: int) -> tuple[int, int]:
    """Legacy int32 array length; -1 is null. Bounded by the bytes left, so a forged
    count cannot make a decoder loop (or allocate) billions of times."""
    (n,) = INT32.unpack_from(buf, pos)
    if n > len(buf) - pos:
        raise DecodeError(f"array of {n} elements cannot fit in the frame")
    return n, pos + 4


def read_compact_array_len(buf: Buffer, pos: int) -> tuple[int, int]:
    """Compact array length, already minus one: -1 is null."""
    n, pos = read_uvarint(buf, pos)
    if n > len(buf) - pos + 1:
        raise DecodeError(f"array of {n - 1} elements cannot fit in the frame")
    return n - 1, pos


def skip_tagged_fields(buf: Buffer, pos: int) -> int:
    n, pos = read_uvarint(buf, pos)
    for _ in range(n):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
    _check(buf, pos)
    return pos


# -- writers -------------------------------------------------------------------------


def string(value: str) -> bytes:
    data = value.encode()
    return INT16.pack(len(data)) + data


def nullable_string(value: str | None) -> bytes:
    if value is None:
        return b"\xff\xff"
    data = value.encode()
    return INT16.pack(len(data)) + data


def compact_string(value: str | None) -> bytes:
    if value is None:
        return b"\x00"
    data = value.encode()
    n = len(data) + 1
    return (UVARINT_1[n] if n < 0x80 else uvarint(n)) + data


def bytes_field(value: Buffer | None) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"
    return INT32.pack(len(value)) + bytes(value)


def compact_bytes(value: Buffer | None) -> bytes:
    if value is None:
        return b"\x00"
    return uvarint(len(value) + 1) + bytes(value)


def records_size(value: Records) -> int:
    if isinstance(value, list):
        return sum(len(b) for b in value)
    return len(value)
