"""Errors of the storage layer; callers map them to their own protocol's codes."""

from __future__ import annotations


class StorageError(RuntimeError):
    pass


class FencedError(StorageError):
    """A newer owner opened the stream (or took over the WAL): this owner may no longer write."""


class OffsetOutOfRange(StorageError):
    def __init__(self, stream_id: int, offset: int, start: int, end: int) -> None:
        super().__init__(f"stream {stream_id}: offset {offset} is outside [{start}, {end})")
        self.stream_id = stream_id
        self.offset = offset
        self.start = start
        self.end = end


class StreamClosed(StorageError):
    pass


class WalCorrupt(StorageError):
    pass
