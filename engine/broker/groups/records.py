"""Keys and values of the __consumer_offsets records, in Apache Kafka's own schema.

Using Kafka's layout (rather than a private one) means the internal topic can be
read with Kafka's tools (``kafka-console-consumer --formatter
org.apache.kafka.tools.consumer.OffsetsMessageFormatter``) and a dump from Kafka
could be replayed here. All integers are big-endian; strings are int16-length
prefixed (-1 = null), bytes int32-length prefixed, arrays int32-counted.

Keys (the leading int16 is the key version, which also says what the record is):

    0/1  offset commit:  group string, topic string, partition int32
    2    group metadata: group string

Values (leading int16 = value version). Offsets are written as v3, groups as v3;
every older version Kafka ever wrote is read. A null value is a tombstone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

OFFSET_KEY_VERSION = 1
GROUP_KEY_VERSION = 2
OFFSET_VALUE_VERSION = 3
GROUP_VALUE_VERSION = 3

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class RecordFormatError(ValueError):
    """A key or value that is not a record this module knows how to read."""


@dataclass(frozen=True, slots=True)
class OffsetKey:
    group: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class GroupKey:
    group: str


@dataclass(slots=True)
class OffsetValue:
    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_timestamp: int = -1


@dataclass(slots=True)
class MemberValue:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    subscription: bytes
    assignment: bytes


@dataclass(slots=True)
class GroupValue:
    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    current_state_timestamp: int = -1
    members: list[MemberValue] = field(default_factory=list)


# -- writing ---------------------------------------------------------------------------


class _Writer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def i16(self, v: int) -> None:
        self.buf += _I16.pack(v)

    def i32(self, v: int) -> None:
        self.buf += _I32.pack(v)

    def i64(self, v: int) -> None:
        self.buf += _I64.pack(v)

    def string(self, v: str | None) -> None:
        if v is None:
            self.i16(-1)
            return
        b = v.encode()
        self.i16(len(b))
        self.buf += b

    def bytes_(self, v: bytes) -> None:
        self.i32(len(v))
        self.buf += v


def encode_offset_key(group: str, topic: str, partition: int) -> bytes:
    w = _Writer()
    w.i16(OFFSET_KEY_VERSION)
    w.string(group)
    w.string(topic)
    w.i32(partition)
    return bytes(w.buf)


def encode_group_key(group: str) -> bytes:
    w = _Writer()
    w.i16(GROUP_KEY_VERSION)
    w.string(group)
    return bytes(w.buf)


def encode_offset_value(v: OffsetValue) -> bytes:
    w = _Writer()
    w.i16(OFFSET_VALUE_VERSION)
    w.i64(v.offset)
    w.i32(v.leader_epoch)
    w.string(v.metadata)
    w.i64(v.commit_timestamp)
    return bytes(w.buf)


def encode_group_value(v: GroupValue) -> bytes:
    w = _Writer()
    w.i16(GROUP_VALUE_VERSION)
    w.string(v.protocol_type)
    w.i32(v.generation)
    w.string(v.protocol)
    w.string(v.leader)
    w.i64(v.current_state_timestamp)
    w.i32(len(v.members))
    for m in v.members:
        w.string(m.member_id)
        w.string(m.group_instance_id)
        w.string(m.client_id)
        w.string(m.client_host)
        w.i32(m.rebalance_timeout_ms)
        w.i32(m.session_timeout_ms)
        w.bytes_(m.subscription)
        w.bytes_(m.assignment)
    return bytes(w.buf)


# -- reading ---------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, st: struct.Struct) -> int:
        if self.pos + st.size > len(self.data):
            raise RecordFormatError("record ends early")
        (v,) = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return int(v)

    def i16(self) -> int:
        return self._take(_I16)

    def i32(self) -> int:
        return self._take(_I32)

    def i64(self) -> int:
        return self._take(_I64)

    def nullable_string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        if self.pos + n > len(self.data):
            raise RecordFormatError("string runs past the record")
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def string(self) -> str:
        s = self.nullable_string()
        if s is None:
            raise RecordFormatError("null where a string is required")
        return s

    def bytes_(self) -> bytes:
        n = self.i32()
        if n < 0:
            return b""
        if self.pos + n > len(self.data):
            raise RecordFormatError("bytes run past the record")
        b = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return b


def decode_key(key: bytes) -> OffsetKey | GroupKey:
    r = _Reader(key)
    try:
        version = r.i16()
        if version in (0, 1):
            return OffsetKey(r.string(), r.string(), r.i32())
        if version == 2:
            return GroupKey(r.string())
    except UnicodeDecodeError as e:
        raise RecordFormatError(f"bad string in key: {e}") from None
    raise RecordFormatError(f"unknown key version {version}")


def decode_offset_value(value: bytes) -> OffsetValue:
    r = _Reader(value)
    try:
        version = r.i16()
        if version == 0:
            return OffsetValue(offset=r.i64(), metadata=r.string(), commit_timestamp=r.i64())
        if version == 1:
            v = OffsetValue(offset=r.i64(), metadata=r.string(), commit_timestamp=r.i64())
            r.i64()  # expire timestamp: Kafka 2.1+ ignores it too
            return v
        if version == 2:
            return OffsetValue(offset=r.i64(), metadata=r.string(), commit_timestamp=r.i64())
        if version == 3:
            return OffsetValue(offset=r.i64(), leader_epoch=r.i32(), metadata=r.string(), commit_timestamp=r.i64())
    except UnicodeDecodeError as e:
        raise RecordFormatError(f"bad string in offset value: {e}") from None
    raise RecordFormatError(f"unknown offset value version {version}")


def decode_group_value(value: bytes) -> GroupValue:
    r = _Reader(value)
    try:
        version = r.i16()
        if not 0 <= version <= 3:
            raise RecordFormatError(f"unknown group value version {version}")
        protocol_type = r.string()
        generation = r.i32()
        protocol = r.nullable_string()
        leader = r.nullable_string()
        ts = r.i64() if version >= 2 else -1
        members: list[MemberValue] = []
        for _ in range(r.i32()):
            member_id = r.string()
            instance_id = r.nullable_string() if version >= 3 else None
            client_id = r.string()
            client_host = r.string()
            session_timeout = rebalance_timeout = 0
            if version >= 1:
                rebalance_timeout = r.i32()
            session_timeout = r.i32()
            if version == 0:
                rebalance_timeout = session_timeout
            members.append(
                MemberValue(
                    member_id,
                    instance_id,
                    client_id,
                    client_host,
                    rebalance_timeout,
                    session_timeout,
                    r.bytes_(),
                    r.bytes_(),
                )
            )
    except UnicodeDecodeError as e:
        raise RecordFormatError(f"bad string in group value: {e}") from None
    return GroupValue(protocol_type, generation, protocol, leader, ts, members)
