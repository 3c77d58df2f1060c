"""Kafka framing: a 4-byte big-endian size, then that many bytes.

``FrameDecoder`` turns the bytes a socket delivers, in whatever pieces, into complete
request frames; it never allocates more than what actually arrived, so a forged size
prefix costs nothing. ``frame`` assembles a response from its header and body parts.
"""

from __future__ import annotations

from engine.protocol._wire import INT32, Buffer
from engine.protocol.errors import FrameError, FrameTooLarge, InvalidFrameSize, TruncatedFrame

DEFAULT_MAX_FRAME_SIZE = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
#: api_key + api_version + correlation_id: nothing shorter is a request.
MIN_REQUEST_SIZE = 8


class FrameDecoder:
    """Incremental request framer, one per connection (h11 style: no I/O).

    ``feed(data)`` returns the frames completed by ``data`` as memoryviews without the
    size prefix. With ``writable=True`` (the default) every frame is backed by a
    private bytearray, so the broker can patch record batches (base offset,
    LogAppendTime) in place; that costs one copy per frame, done as the frame is
    assembled. Bad sizes raise a ``FrameError`` subclass; the stream cannot be
    resynchronised after that, so the decoder stays failed and the connection
    should be closed.
    """

    __slots__ = ("_failed", "_max", "_min", "_need", "_pending", "_pending_len", "_writable")

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        *,
        min_frame_size: int = MIN_REQUEST_SIZE,
        writable: bool = True,
    ) -> None:
        self._max = max_frame_size
        self._min = min_frame_size
        self._writable = writable
        self._pending: list[Buffer] = []
        self._pending_len = 0
        self._need = 4  # bytes needed in _pending before parsing can make progress
        self._failed: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._pending_len

    def feed(self, data: Buffer) -> list[memoryview]:
        if self._failed is not None:
            raise self._failed
        n = len(data)
        if not n:
            return []
        if not isinstance(data, bytes):
            # A caller's bytearray/memoryview may be reused for the next read.
            data = bytes(data)
        owned = False
        if self._pending:
            self._pending.append(data)
            self._pending_len += n
            if self._pending_len < self._need:
                return []
            # One join for the whole frame, however many reads it took.
            data = (bytearray if self._writable else bytes)().join(self._pending)
            self._pending = []
            self._pending_len = 0
            self._need = 4
            n = len(data)
            owned = True
        mv = memoryview(data)
        frames: list[memoryview] = []
        pos = 0
        copy = self._writable and not owned
        unpack = INT32.unpack_from
        while n - pos >= 4:
            (size,) = unpack(mv, pos)
            if size < self._min or size > self._max:
                self._failed = (
                    FrameTooLarge(size, self._max) if size > self._max else InvalidFrameSize(size)
                )
                raise self._failed
            end = pos + 4 + size
            if end > n:
                self._need = 4 + size
                break
            frames.append(memoryview(bytearray(mv[pos + 4 : end])) if copy else mv[pos + 4 : end])
            pos = end
        if pos < n:
            # Keep a view, not a copy: a frame's first part may be most of it.
            self._pending.append(mv[pos:])
            self._pending_len = n - pos
        return frames

    def close(self) -> None:
        """Call at end of stream: raises ``TruncatedFrame`` if a frame was cut short."""
        if self._pending_len and self._failed is None:
            self._failed = TruncatedFrame(self._pending_len)
            raise self._failed


def frame(parts: list[Buffer]) -> list[Buffer]:
    """Prefix ``parts`` (header and body, in order) with their total size.

    Small leading parts are merged with the prefix so a typical response is one or two
    buffers; large payloads stay as they are (no copy).
    """
    size = 0
    for p in parts:
        size += len(p)
    head = bytearray(INT32.pack(size))
    out: list[Buffer] = [head]
    for p in parts:
        if len(p) < 4096 and out[-1] is head:
            head += p
        else:
            out.append(p)
    return out


def join(parts: list[Buffer]) -> bytes:
    """The parts as one bytes object (tests, small responses, plain ``write``)."""
    return b"".join(parts)
